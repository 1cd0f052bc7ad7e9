"""Time from a user's chat message to the first ``image_ready`` event, and limner's own share of it.

Three processes: the emulators (`limner sandbox`), limner (`limner serve`, configured to use them as a
real OpenAI-compatible chat model and image service, not as its sandbox), and this client. Per iteration,
interleaved:

  B  limner: POST /api/conversations/{id}/messages over HTTP, streamed; time to the first `image_ready`
     event (and to `done`).
  A  baseline: the same upstream work done directly with the `openai` SDK: one chat completion with the
     generation tool offered (the emulator answers with the tool call), then the image generation and its
     base64 decode.

B - A is limner's share: the agent loop, pydantic-ai, the tool layer, storage and the event stream.
This is a benchmark, not a test: compare within one run.

    python benchmarks/chat_first_image.py [--n 40] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx2
import openai

GEN_TOOL = {
    "type": "function",
    "function": {
        "name": "image_gen_oai",
        "description": "Creates brand-new images from a text description.",
        "parameters": {"type": "object", "properties": {"prompt": {"type": "string"}}, "required": ["prompt"]},
    },
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx2.get(url, timeout=1)
            return
        except httpx2.TransportError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


@contextmanager
def processes(data_dir: Path) -> Iterator[tuple[str, str, str]]:
    """Start the emulators and limner; yield (limner URL, emulators URL, API token)."""
    emu_port, limner_port = free_port(), free_port()
    emu_url, limner_url = f"http://127.0.0.1:{emu_port}", f"http://127.0.0.1:{limner_port}"
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("LIMNER_", "IMAGE_", "OPENAI_"))}
    env = {
        **base_env,
        "LIMNER_DATA_DIR": str(data_dir),
        "LIMNER_SANDBOX": "off",
        "IMAGE_GEN_OAI_BASEURL": f"{emu_url}/openai/v1",
        "IMAGE_GEN_OAI_API_KEY": "sk-bench",
        "LIMNER_CHAT_BASE_URL": f"{emu_url}/chat/v1",
        "LIMNER_CHAT_MODEL": "sandbox-vision",
        "LIMNER_CHAT_API_KEY": "sk-bench",
        "LIMNER_LOG_LEVEL": "WARNING",
    }
    cmd = [sys.executable, "-m", "limner"]
    emu = subprocess.Popen([*cmd, "sandbox", "--port", str(emu_port)], env=env, stdout=subprocess.DEVNULL)
    server = None
    try:
        wait_http(emu_url + "/")
        out = subprocess.run(
            [*cmd, "tokens", "create", "--user", "bench"], env=env, capture_output=True, text=True, check=True
        )
        token = out.stdout.split()[-1]
        server = subprocess.Popen(
            [*cmd, "serve", "--port", str(limner_port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_http(limner_url + "/api/health")
        yield limner_url, emu_url, token
    finally:
        for proc in (server, emu):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                proc.wait(timeout=20)


async def limner_turn(
    client: httpx2.AsyncClient, url: str, headers: dict[str, str], prompt: str
) -> tuple[float, float]:
    conversation = (await client.post(f"{url}/api/conversations", headers=headers, json={})).json()["id"]
    start = time.perf_counter()
    first_image = done = 0.0
    body = {"text": prompt, "image_ids": []}
    async with client.stream(
        "POST", f"{url}/api/conversations/{conversation}/messages", headers=headers, json=body
    ) as response:
        async for line in response.aiter_lines():
            if line == "event: image_ready" and not first_image:
                first_image = time.perf_counter() - start
            elif line == "event: done":
                done = time.perf_counter() - start
            elif line == "event: error":
                raise RuntimeError("the turn failed")
    return first_image, done


async def baseline_turn(sdk: openai.AsyncOpenAI, prompt: str) -> float:
    start = time.perf_counter()
    chat = await sdk.chat.completions.create(
        model="sandbox-vision",
        messages=[{"role": "user", "content": prompt}],
        tools=[GEN_TOOL],  # type: ignore[list-item]
    )
    call = (chat.choices[0].message.tool_calls or [])[0]
    arguments = json.loads(call.function.arguments)  # type: ignore[union-attr]
    image = await sdk.images.generate(model="gpt-image-1.5", prompt=arguments["prompt"])
    base64.b64decode(image.data[0].b64_json or "")  # type: ignore[index]
    return time.perf_counter() - start


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * 1000


async def run(n: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp, processes(Path(tmp)) as (url, emu, token):
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx2.AsyncClient(timeout=60) as client, httpx2.AsyncClient(timeout=60) as sdk_http:
            sdk = openai.AsyncOpenAI(base_url=f"{emu}/openai/v1", api_key="sk-bench", http_client=sdk_http)
            chat_sdk = openai.AsyncOpenAI(base_url=f"{emu}/chat/v1", api_key="sk-bench", http_client=sdk_http)
            sdk.chat = chat_sdk.chat  # one client object for both upstreams
            for i in range(5):  # warm-up
                await limner_turn(client, url, headers, f"draw warm-up picture {i}")
                await baseline_turn(sdk, f"draw warm-up picture {i}")
            first, done, base = [], [], []
            for i in range(n):
                prompt = f"draw a lighthouse number {i}"
                if i % 2:
                    base.append(await baseline_turn(sdk, prompt))
                    f, d = await limner_turn(client, url, headers, prompt)
                else:
                    f, d = await limner_turn(client, url, headers, prompt)
                    base.append(await baseline_turn(sdk, prompt))
                first.append(f)
                done.append(d)
    added = [f - b for f, b in zip(first, base, strict=True)]
    return {
        "n": n,
        "baseline_ms": {"p50": pct(base, 0.5), "p99": pct(base, 0.99)},
        "first_image_ready_ms": {"p50": pct(first, 0.5), "p99": pct(first, 0.99)},
        "done_ms": {"p50": pct(done, 0.5), "p99": pct(done, 0.99)},
        "limner_share_ms": {"p50": pct(added, 0.5), "p99": pct(added, 0.99), "mean": statistics.mean(added) * 1000},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=40)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = asyncio.run(run(args.n))
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"chat: user message to first image_ready, N={result['n']} interleaved (ms)      p50      p99")
    rows = (
        ("A  direct: chat completion with the tool + image generation", result["baseline_ms"]),
        ("B  limner: POST .../messages, first image_ready event", result["first_image_ready_ms"]),
        ("   limner: to the done event (the model's answer after the image)", result["done_ms"]),
        ("B - A  limner's share (paired)", result["limner_share_ms"]),
    )
    for label, row in rows:
        print(f"  {label:<66} {row['p50']:8.1f} {row['p99']:8.1f}")


if __name__ == "__main__":
    main()
