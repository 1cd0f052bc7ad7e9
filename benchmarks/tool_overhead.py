"""What limner adds to an image generation, measured against a direct SDK call in the same run.

Three processes take part, so that neither memory nor CPU of one pollutes the other's numbers:

- the **emulator** (limner's OpenAI Images emulator, an upstream stand-in) in a child process;
- **limner** in a second child process: the real app (``create_app``) on real uvicorn over loopback,
  configured like an operator would (``IMAGE_GEN_OAI_BASEURL`` at the emulator, ``IMAGE_GEN_OAI_API_KEY``,
  ``LIMNER_SANDBOX=off``, a temporary ``LIMNER_DATA_DIR``), with a user and API token made through the
  runtime. A thin ASGI wrapper around the app adds ``/_bench/*`` control routes (tracemalloc, counters)
  and per-phase timers; it never touches limner's own code;
- this process, the **client**: the baseline (``openai.AsyncOpenAI(...).images.generate`` plus the base64
  decode every client has to do anyway) and limner's path (``POST /api/tools/image_gen_oai`` with httpx2).

Phases: warm-up; N interleaved pairs (A = baseline, B = limner; the order inside a pair alternates, and
both calls of a pair use the same prompt, so the deterministic emulator does the same work for both,
while every pair's prompt is new, so limner's content-addressed store never skips a write); throughput
at a fixed concurrency for both paths; memory per in-flight image in limner's process at that
concurrency. Machines are noisy: read the ratios and the paired differences, not the absolute times.

    python benchmarks/tool_overhead.py                 # defaults: --n 200 --concurrency 50
    python benchmarks/tool_overhead.py --json          # machine-readable results on stdout
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import contextvars
import functools
import json
import math
import os
import platform
import random
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any, Final

import httpx2
import openai

MODEL: Final = "gpt-image-1.5"
SIZE: Final = "1024x1024"
QUALITY: Final = "low"
TOOL = "image_gen_oai"
API_KEY = "sk-bench"
TIMEOUT = 120.0
READY_TIMEOUT = 60.0
# The same limits limner's upstream client uses (limner.net.create_http_client), for a fair baseline.
LIMITS = httpx2.Limits(max_connections=100, max_keepalive_connections=20)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SCRIPT = Path(__file__).resolve()
TARGET_ADDED_P50_MS = 10.0
TARGET_COPIES = 2.0
PILLOW_BYTES_PER_PIXEL = 4  # Pillow stores RGB and RGBA pixels in 32 bits


# ================================================================================================
# Child process: the emulator
# ================================================================================================


def _tcp_socket() -> socket.socket:
    """A loopback listening socket on a free port, created with IPPROTO_TCP.

    asyncio only sets TCP_NODELAY on accepted sockets whose ``proto`` is IPPROTO_TCP; a socket made
    with ``socket.socket(AF_INET, SOCK_STREAM)`` has proto 0, and its responses then stall ~40 ms on
    Nagle + delayed ACK. uvicorn binding by host and port (``limner serve``) gets IPPROTO_TCP from
    getaddrinfo; this reproduces that while letting the child pick the port.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def _announce(info: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(info) + "\n")
    sys.stdout.flush()


async def _serve(app: Any, sock: socket.socket) -> None:
    import uvicorn

    config = uvicorn.Config(
        app, log_level="warning", access_log=False, lifespan="on", ws="none", timeout_keep_alive=120
    )
    await uvicorn.Server(config).serve(sockets=[sock])


def _run_like_limner_serve(coro: Any) -> None:
    """The event loop `limner serve` gets: uvicorn picks uvloop when it is installed (and httptools for
    HTTP parsing, which uvicorn.Config's default `http="auto"` already does here)."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)
    else:
        uvloop.run(coro)


def run_emulator_child() -> None:
    from limner.sandbox.server import Sandbox

    async def main() -> None:
        sandbox = Sandbox()
        sock = _tcp_socket()
        base = f"http://127.0.0.1:{sock.getsockname()[1]}"
        _announce({"base_url": base, "urls": sandbox.urls(base)})
        await _serve(sandbox.app(), sock)

    asyncio.run(main())


# ================================================================================================
# Child process: limner, with phase timers and /_bench control routes
# ================================================================================================

_RECORD: contextvars.ContextVar[dict[str, float] | None] = contextvars.ContextVar("bench_record", default=None)


@dataclass
class _DecodeGauge:
    """How many full image validations (Pillow decodes) run at once: their pixel buffers are C memory
    that tracemalloc cannot see."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    now: int = 0
    peak: int = 0
    pixels: int = 0

    @contextlib.contextmanager
    def inflight(self) -> Iterator[None]:
        with self.lock:
            self.now += 1
            self.peak = max(self.peak, self.now)
        try:
            yield
        finally:
            with self.lock:
                self.now -= 1


_DECODES = _DecodeGauge()


def _add(label: str, seconds: float) -> None:
    record = _RECORD.get()
    if record is not None:
        record[label] = record.get(label, 0.0) + seconds


def _time_async(
    owner: Any, attr: str, label: str, *, mark_start: str | None = None, mark_end: str | None = None
) -> None:
    original = getattr(owner, attr, None)
    if original is None:  # limner changed; that phase then simply reads as zero
        return

    @functools.wraps(original)
    async def timed(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        if mark_start is not None and (record := _RECORD.get()) is not None:
            record.setdefault(mark_start, start)
        try:
            return await original(*args, **kwargs)
        finally:
            end = time.perf_counter()
            _add(label, end - start)
            record = _RECORD.get()
            if mark_end is not None and record is not None:
                record[mark_end] = end

    setattr(owner, attr, timed)


def _time_sync(owner: Any, attr: str, label: str, *, mark_start: str | None = None) -> None:
    original = getattr(owner, attr, None)
    if original is None:
        return

    @functools.wraps(original)
    def timed(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        record = _RECORD.get()
        if mark_start is not None and record is not None:
            record.setdefault(mark_start, start)
        try:
            return original(*args, **kwargs)
        finally:
            _add(label, time.perf_counter() - start)

    setattr(owner, attr, timed)


def _instrument() -> None:
    """Wrap a few limner methods with perf_counter timers (a few µs per call in total)."""
    import limner.api.routes.tools as tool_routes
    from limner.backends.openai_images import OpenAIImagesBackend
    from limner.db.repositories import UserRepository
    from limner.library import ImageLibrary
    from limner.runtime import Runtime
    from limner.storage.local import LocalBlobStore

    _time_async(UserRepository, "by_token", "auth.query")
    lookup = "tool" if hasattr(Runtime, "tool") else "tools"  # the route calls Runtime.tool(name) when it exists
    _time_sync(Runtime, lookup, "tool_lookup", mark_start="_handler_at")
    _time_async(tool_routes, "run_tool", "run_tool", mark_start="_run_tool_at", mark_end="_tool_end")
    _time_sync(OpenAIImagesBackend, "_client", "sdk_client_build")
    _time_async(OpenAIImagesBackend, "_generate", "backend_generate")
    _time_sync(OpenAIImagesBackend, "_outputs", "b64_decode")
    _time_async(ImageLibrary, "save", "save")
    _time_async(ImageLibrary, "_insert", "save.db_insert")
    _time_async(LocalBlobStore, "ensure", "save.blob_write")

    original = getattr(ImageLibrary, "_validate_and_hash", None)
    if original is None:
        return

    def validate(self: Any, data: bytes, *args: Any) -> Any:
        start = time.perf_counter()
        thorough = bool(args[0]) if args else True  # provider PNGs get a structural check, no decode
        if thorough:
            with _DECODES.inflight():
                info, digest = original(self, data, *args)
            _DECODES.pixels = max(_DECODES.pixels, info.width * info.height)
        else:
            info, digest = original(self, data, *args)
        _add("save.validate_hash", time.perf_counter() - start)
        return info, digest

    ImageLibrary._validate_and_hash = validate  # type: ignore[method-assign]


class BenchHarness:
    """ASGI wrapper: ``/_bench/<command>`` control routes, and a timing record per tool call."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.collect = False
        self.records: list[dict[str, float]] = []
        self.commands: dict[str, Callable[[], dict[str, Any]]] = {
            "records_on": self._records_on,
            "records_off": self._records_off,
            "cpu": lambda: {"cpu": time.process_time()},
            "tm_start": self._tm_start,
            "tm_mark": self._tm_mark,
            "tm_read": self._tm_read,
            "tm_stop": self._tm_stop,
        }

    def _records_on(self) -> dict[str, Any]:
        self.records = []
        self.collect = True
        return {}

    def _records_off(self) -> dict[str, Any]:
        self.collect = False
        records, self.records = self.records, []
        return {"records": records}

    @staticmethod
    def _tm_start() -> dict[str, Any]:
        tracemalloc.start(1)
        return BenchHarness._tm_mark()

    @staticmethod
    def _tm_mark() -> dict[str, Any]:
        tracemalloc.reset_peak()
        _DECODES.peak = 0
        return {"current": tracemalloc.get_traced_memory()[0]}

    @staticmethod
    def _tm_read() -> dict[str, Any]:
        current, peak = tracemalloc.get_traced_memory()
        return {"current": current, "peak": peak, "decode_peak": _DECODES.peak, "decode_pixels": _DECODES.pixels}

    @staticmethod
    def _tm_stop() -> dict[str, Any]:
        tracemalloc.stop()
        return {}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if path.startswith("/_bench/"):
            await self._control(path.removeprefix("/_bench/"), send)
            return
        if not (self.collect and path.startswith("/api/tools/")):
            await self.app(scope, receive, send)
            return
        record: dict[str, float] = {"_start": time.perf_counter()}
        token = _RECORD.set(record)

        async def timed_send(message: Any) -> None:
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                record["_end"] = time.perf_counter()

        try:
            await self.app(scope, receive, timed_send)
        finally:
            _RECORD.reset(token)
            self.records.append(record)

    async def _control(self, command: str, send: Any) -> None:
        handler = self.commands.get(command)
        status, body = (200, handler()) if handler else (404, {"error": f"unknown command {command}"})
        payload = json.dumps(body).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})


def run_limner_child() -> None:
    from limner.api import create_app
    from limner.config import load_settings
    from limner.db.repositories import UserRepository
    from limner.ids import new_api_token
    from limner.runtime import Runtime

    _instrument()
    settings = load_settings(env_file=None)

    async def main() -> None:
        async with Runtime.open(settings) as runtime:
            token = new_api_token()
            async with runtime.db.unit_of_work() as session:
                repo = UserRepository(session)
                await repo.add_token(await repo.get_or_create("bench"), token, "tool_overhead benchmark")
            sock = _tcp_socket()
            _announce({"port": sock.getsockname()[1], "token": token})
            await _serve(BenchHarness(create_app(settings, runtime=runtime)), sock)

    _run_like_limner_serve(main())


# ================================================================================================
# The client (this process)
# ================================================================================================


@dataclass
class Child:
    """A child process started by this benchmark, stopped by its own PID at the end."""

    name: str
    proc: asyncio.subprocess.Process
    log: Path

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 15)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()

    def log_tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-3000:]
        except OSError:
            return ""


def _open_log(path: Path) -> Any:
    return open(path, "wb")


def _child_env(extra: dict[str, str]) -> dict[str, str]:
    """The parent's environment without any limner or provider settings, plus ``extra``."""
    prefixes = ("LIMNER_", "IMAGE_GEN_", "IMAGE_EDIT_", "DALLE", "CREDS_KEY", "PROXY")
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(prefixes)}
    env.update(extra)
    env["PYTHONUNBUFFERED"] = "1"
    return env


async def _start_child(name: str, argv: list[str], env: dict[str, str], workdir: Path) -> tuple[Child, dict[str, Any]]:
    log = workdir / f"{name}.log"
    with _open_log(log) as err:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=err, env=env, cwd=workdir
        )
    child = Child(name, proc, log)
    assert proc.stdout is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), READY_TIMEOUT)
        info: dict[str, Any] = json.loads(line)
    except (TimeoutError, ValueError) as exc:
        await child.stop()
        raise RuntimeError(f"the {name} process did not start:\n{child.log_tail()}") from exc
    return child, info


async def _start_emulator_cli(workdir: Path) -> tuple[Child, dict[str, Any]]:
    """``python -m limner sandbox`` as shipped (its socket lacks TCP_NODELAY; see the README)."""
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    log = workdir / "emulator.log"
    with _open_log(log) as err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "limner", "sandbox", "--port", str(port),
            stdout=asyncio.subprocess.DEVNULL, stderr=err, env=_child_env({}), cwd=workdir,
        )  # fmt: skip
    child = Child("emulator", proc, log)
    base = f"http://127.0.0.1:{port}"
    async with httpx2.AsyncClient(trust_env=False) as client:
        for _ in range(int(READY_TIMEOUT * 10)):
            with contextlib.suppress(httpx2.TransportError):
                answer = await client.get(base + "/")
                if answer.status_code == 200:
                    return child, {"base_url": base, "urls": answer.json()["urls"]}
            await asyncio.sleep(0.1)
    await child.stop()
    raise RuntimeError(f"the emulator did not start:\n{child.log_tail()}")


@dataclass
class Clients:
    sdk: openai.AsyncOpenAI
    sdk_http: httpx2.AsyncClient
    limner: httpx2.AsyncClient
    control: httpx2.AsyncClient

    async def baseline(self, prompt: str) -> int:
        """One direct SDK generation, decoded as every client must; returns the PNG's size."""
        response = await self.sdk.images.generate(model=MODEL, prompt=prompt, size=SIZE, quality=QUALITY)
        assert response.data
        b64 = response.data[0].b64_json
        assert b64 is not None
        data = base64.b64decode(b64, validate=True)
        assert data.startswith(PNG_MAGIC)
        return len(data)

    async def tool(self, prompt: str) -> int:
        """One ``POST /api/tools/image_gen_oai``; returns the stored image's size."""
        answer = await self.limner.post(f"/api/tools/{TOOL}", json={"prompt": prompt, "size": SIZE, "quality": QUALITY})
        if answer.status_code != 200:
            raise RuntimeError(f"limner answered {answer.status_code}: {answer.text[:500]}")
        (image,) = answer.json()["images"]
        assert image["width"] == 1024
        assert image["media_type"] == "image/png"
        return int(image["byte_size"])

    async def bench(self, command: str) -> dict[str, Any]:
        answer = await self.control.post(f"/_bench/{command}")
        answer.raise_for_status()
        result: dict[str, Any] = answer.json()
        return result

    async def aclose(self) -> None:
        await self.sdk.close()
        await self.sdk_http.aclose()
        await self.limner.aclose()
        await self.control.aclose()


def _clients(sdk_base_url: str, limner_port: int, token: str) -> Clients:
    timeout = httpx2.Timeout(TIMEOUT, connect=10.0)
    sdk_http = httpx2.AsyncClient(timeout=timeout, limits=LIMITS, trust_env=False)
    sdk = openai.AsyncOpenAI(base_url=sdk_base_url, api_key=API_KEY, http_client=sdk_http, max_retries=0)
    base = f"http://127.0.0.1:{limner_port}"
    auth = {"Authorization": f"Bearer {token}"}
    limner = httpx2.AsyncClient(base_url=base, headers=auth, timeout=timeout, limits=LIMITS, trust_env=False)
    control = httpx2.AsyncClient(base_url=base, timeout=timeout, trust_env=False)
    return Clients(sdk=sdk, sdk_http=sdk_http, limner=limner, control=control)


# ------------------------------------------------------------------------------------------------
# statistics
# ------------------------------------------------------------------------------------------------


def pct(values: list[float], p: float) -> float:
    """Percentile with linear interpolation between closest ranks."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    rank = (len(ordered) - 1) * p / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summary(values: list[float]) -> dict[str, float]:
    return {
        "p50": pct(values, 50),
        "p90": pct(values, 90),
        "p99": pct(values, 99),
        "mean": sum(values) / len(values) if values else math.nan,
    }


def bootstrap_median_ci(values: list[float], rounds: int = 2000, seed: int = 0) -> tuple[float, float]:
    rng = random.Random(seed)
    medians = sorted(pct(rng.choices(values, k=len(values)), 50) for _ in range(rounds))
    return pct(medians, 2.5), pct(medians, 97.5)


# ------------------------------------------------------------------------------------------------
# phases
# ------------------------------------------------------------------------------------------------


@dataclass
class Prompts:
    nonce: str = field(default_factory=lambda: secrets.token_hex(4))
    counter: int = 0

    def next(self, tag: str) -> str:
        self.counter += 1
        return f"a lighthouse on a cliff at dusk, watercolour ({tag} {self.nonce} {self.counter:06d})"


async def _timed(call: Callable[[str], Awaitable[int]], prompt: str) -> tuple[float, int]:
    start = time.perf_counter()
    size = await call(prompt)
    return time.perf_counter() - start, size


async def sequential_pairs(clients: Clients, prompts: Prompts, n: int) -> dict[str, Any]:
    """N pairs, order alternating inside the pair; both calls of a pair use the same prompt."""
    base_ms: list[float] = []
    tool_ms: list[float] = []
    base_cpu = 0.0
    sizes: list[int] = []
    for i in range(n):
        prompt = prompts.next("seq")
        if i % 2 == 1:
            b, _ = await _timed(clients.tool, prompt)
        cpu0 = time.process_time()
        a, size = await _timed(clients.baseline, prompt)
        cpu_a = time.process_time() - cpu0
        if i % 2 == 0:
            b, _ = await _timed(clients.tool, prompt)
        base_cpu += cpu_a
        base_ms.append(a * 1000)
        tool_ms.append(b * 1000)
        sizes.append(size)
    return {"baseline_ms": base_ms, "tool_ms": tool_ms, "png_bytes": sizes, "baseline_client_cpu_s": base_cpu}


async def burst(
    call: Callable[[str], Awaitable[int]], prompts: Prompts, tag: str, total: int, concurrency: int
) -> dict[str, Any]:
    """``total`` calls with at most ``concurrency`` in flight; returns wall time and latencies."""
    gate = asyncio.Semaphore(concurrency)
    latencies: list[float] = []

    async def one() -> None:
        async with gate:
            elapsed, _ = await _timed(call, prompts.next(tag))
            latencies.append(elapsed * 1000)

    start = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(total)))
    wall = time.perf_counter() - start
    return {"wall_s": wall, "latencies_ms": latencies, "requests": total}


async def throughput(clients: Clients, prompts: Prompts, total: int, concurrency: int, rounds: int) -> dict[str, Any]:
    """``rounds`` rounds per path, the order flipping every round (A B, B A, ...) so drift hits both alike."""
    per_round = max(concurrency, total // rounds)
    runs: dict[str, list[dict[str, Any]]] = {"baseline": [], "limner": []}
    await clients.bench("records_on")
    for index in range(rounds):
        for path in ("baseline", "limner") if index % 2 == 0 else ("limner", "baseline"):
            call = clients.baseline if path == "baseline" else clients.tool
            runs[path].append(await burst(call, prompts, f"tp-{path}", per_round, concurrency))
    records = (await clients.bench("records_off"))["records"]
    result: dict[str, Any] = {"rounds": rounds, "per_round": per_round}
    for path, parts in runs.items():
        latencies = [ms for part in parts for ms in part["latencies_ms"]]
        requests = sum(part["requests"] for part in parts)
        result[path] = {
            "requests": requests,
            "images_per_s": requests / sum(part["wall_s"] for part in parts),
            "rounds_images_per_s": [part["requests"] / part["wall_s"] for part in parts],
            "latency_ms": summary(latencies),
        }
    result["ratio"] = result["limner"]["images_per_s"] / result["baseline"]["images_per_s"]
    result["breakdown_ms"] = breakdown(records, None)
    return result


async def _all_at_once(call: Callable[[str], Awaitable[int]], prompts: Prompts, tag: str, count: int) -> None:
    await asyncio.gather(*(call(prompts.next(tag)) for _ in range(count)))


async def limner_memory(clients: Clients, prompts: Prompts, concurrency: int, rounds: int) -> dict[str, Any]:
    """tracemalloc in limner's process: peak minus the level before, per burst of ``concurrency``."""
    per_burst: list[float] = []
    decodes: list[int] = []
    pixels = 0
    await clients.bench("tm_start")
    try:
        for _ in range(rounds):
            before = (await clients.bench("tm_mark"))["current"]
            await _all_at_once(clients.tool, prompts, "mem", concurrency)
            read = await clients.bench("tm_read")
            per_burst.append((read["peak"] - before) / concurrency)
            decodes.append(read["decode_peak"])
            pixels = read["decode_pixels"]
        single: list[float] = []
        for _ in range(rounds * 2):
            before = (await clients.bench("tm_mark"))["current"]
            await clients.tool(prompts.next("mem1"))
            single.append((await clients.bench("tm_read"))["peak"] - before)
    finally:
        await clients.bench("tm_stop")
    return {
        "per_inflight_bytes": pct(per_burst, 50),
        "per_inflight_bytes_max": max(per_burst),
        "single_request_bytes": pct(single, 50),
        "peak_concurrent_decodes": max(decodes),
        "decoded_pixels": pixels,
    }


async def baseline_memory(clients: Clients, prompts: Prompts, concurrency: int, rounds: int) -> dict[str, Any]:
    """The same measures for the bare SDK client in this process: the floor limner builds on."""
    per_burst: list[float] = []
    single: list[float] = []
    tracemalloc.start(1)
    try:
        for _ in range(rounds):
            tracemalloc.reset_peak()
            before = tracemalloc.get_traced_memory()[0]
            await _all_at_once(clients.baseline, prompts, "mem-base", concurrency)
            per_burst.append((tracemalloc.get_traced_memory()[1] - before) / concurrency)
        for _ in range(rounds * 2):
            tracemalloc.reset_peak()
            before = tracemalloc.get_traced_memory()[0]
            await clients.baseline(prompts.next("mem1-base"))
            single.append(tracemalloc.get_traced_memory()[1] - before)
    finally:
        tracemalloc.stop()
    return {"per_inflight_bytes": pct(per_burst, 50), "single_request_bytes": pct(single, 50)}


def breakdown(records: list[dict[str, float]], client_ms: list[float] | None) -> list[tuple[str, dict[str, float]]]:
    """Per-phase times (ms) of tool calls, from the timers in limner's process; with the client's own
    times of the same calls (sequential calls only), also the time spent outside the app."""
    columns: dict[str, list[float]] = {}

    def put(label: str, seconds: float) -> None:
        columns.setdefault(label, []).append(seconds * 1000)

    for index, record in enumerate(records):
        if "_end" not in record or "_tool_end" not in record or "_run_tool_at" not in record:
            continue
        handler_at = record.get("_handler_at", record["_run_tool_at"])
        server = record["_end"] - record["_start"]
        generate = record.get("backend_generate", 0.0)
        save = record.get("save", 0.0)
        save_parts = sum(v for k, v in record.items() if k.startswith("save."))
        upstream = generate - record.get("sdk_client_build", 0.0) - record.get("b64_decode", 0.0)
        if client_ms is not None and index < len(client_ms):
            put("outside the app: loopback HTTP, uvicorn, client", client_ms[index] / 1000 - server)
        put("request in: routing, body, auth (session + commit)", handler_at - record["_start"])
        put("  of which token query (UserRepository.by_token)", record.get("auth.query", 0.0))
        put("tool lookup: Runtime.tool(name)", record.get("tool_lookup", 0.0))
        put("args, key, checks, result text", record["run_tool"] - generate - save)
        put("SDK client build", record.get("sdk_client_build", 0.0))
        put("upstream call via SDK (emulator + transport + parse)", upstream)
        put("base64 decode (also in the baseline)", record.get("b64_decode", 0.0))
        put("save: validate + sha256, in a thread", record.get("save.validate_hash", 0.0))
        put("save: blob write + fsync (or refresh)", record.get("save.blob_write", 0.0))
        put("save: DB insert + commit", record.get("save.db_insert", 0.0))
        put("save: rest (locks, records)", save - save_parts)
        put("response out: schema, JSON, send", record["_end"] - record["_tool_end"])
        put("= server total (ASGI in → last byte out)", server)
        put("  server total minus upstream call and decode", server - upstream - record.get("b64_decode", 0.0))
    return [(label, summary(values)) for label, values in columns.items()]


# ------------------------------------------------------------------------------------------------
# the run
# ------------------------------------------------------------------------------------------------


async def _limner_setup(workdir: Path, emulator_openai_url: str) -> tuple[Child, dict[str, Any]]:
    env = _child_env(
        {
            "IMAGE_GEN_OAI_BASEURL": emulator_openai_url,
            "IMAGE_GEN_OAI_API_KEY": API_KEY,
            "LIMNER_SANDBOX": "off",
            "LIMNER_DATA_DIR": str(workdir / "data"),
            "LIMNER_LOG_LEVEL": "WARNING",
        }
    )
    argv = [sys.executable, str(SCRIPT), "--role", "limner"]
    return await _start_child("limner", argv, env, workdir)


async def _emulator_setup(workdir: Path, runner: str) -> tuple[Child, dict[str, Any]]:
    if runner == "cli":
        return await _start_emulator_cli(workdir)
    argv = [sys.executable, str(SCRIPT), "--role", "emulator"]
    return await _start_child("emulator", argv, _child_env({}), workdir)


async def run(args: argparse.Namespace, log: Callable[[str], None]) -> dict[str, Any]:
    prompts = Prompts()
    children: list[Child] = []
    with tempfile.TemporaryDirectory(prefix="limner-bench-") as tmp:
        workdir = Path(tmp)
        try:
            emulator, emu = await _emulator_setup(workdir, args.emulator)
            children.append(emulator)
            limner, info = await _limner_setup(workdir, emu["urls"]["openai"])
            children.append(limner)
            clients = _clients(emu["urls"]["openai"], info["port"], info["token"])
            try:
                return await _measure(args, clients, prompts, log) | {"emulator": emu["base_url"]}
            finally:
                await clients.aclose()
        finally:
            for child in reversed(children):
                await child.stop()


async def _measure(
    args: argparse.Namespace, clients: Clients, prompts: Prompts, log: Callable[[str], None]
) -> dict[str, Any]:
    log(f"warm-up: {args.warmup} pairs and one burst of {args.concurrency} per path")
    await sequential_pairs(clients, prompts, args.warmup)
    await _all_at_once(clients.baseline, prompts, "warm", args.concurrency)
    await _all_at_once(clients.tool, prompts, "warm", args.concurrency)

    log(f"sequential: {args.n} interleaved pairs")
    cpu_before = (await clients.bench("cpu"))["cpu"]
    await clients.bench("records_on")
    seq = await sequential_pairs(clients, prompts, args.n)
    records = (await clients.bench("records_off"))["records"]
    limner_cpu = (await clients.bench("cpu"))["cpu"] - cpu_before

    log(f"throughput: {args.throughput_requests} requests per path at concurrency {args.concurrency}")
    tput = await throughput(clients, prompts, args.throughput_requests, args.concurrency, args.throughput_rounds)

    log(f"memory: {args.memory_rounds} bursts of {args.concurrency} simultaneous calls per measure")
    mem = await limner_memory(clients, prompts, args.concurrency, args.memory_rounds)
    base_mem = await baseline_memory(clients, prompts, args.concurrency, args.memory_rounds)

    diffs = [b - a for a, b in zip(seq["baseline_ms"], seq["tool_ms"], strict=True)]
    base, tool, added = summary(seq["baseline_ms"]), summary(seq["tool_ms"]), summary(diffs)
    png = pct([float(s) for s in seq["png_bytes"]], 50)
    return {
        "config": {
            "n": args.n,
            "warmup": args.warmup,
            "concurrency": args.concurrency,
            "throughput_requests": args.throughput_requests,
            "throughput_rounds": args.throughput_rounds,
            "memory_rounds": args.memory_rounds,
            "emulator_runner": args.emulator,
            "model": MODEL,
            "size": SIZE,
            "quality": QUALITY,
        },
        "environment": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "openai": version("openai"),
            "httpx2": version("httpx2"),
            "uvicorn": version("uvicorn"),
        },
        "png_bytes_p50": png,
        "latency_ms": {"baseline": base, "limner": tool},
        "added_ms": {
            "paired": added,
            "paired_p50_ci95": bootstrap_median_ci(diffs),
            "p50_minus_p50": tool["p50"] - base["p50"],
            "p99_minus_p99": tool["p99"] - base["p99"],
        },
        "ratio": {"p50": tool["p50"] / base["p50"], "p99": tool["p99"] / base["p99"]},
        "cpu_ms_per_call": {
            "baseline_client": seq["baseline_client_cpu_s"] * 1000 / args.n,
            "limner_process": limner_cpu * 1000 / args.n,
        },
        "breakdown_ms": breakdown(records, seq["tool_ms"]),
        "throughput": tput,
        "memory": mem
        | {
            "baseline_per_inflight_bytes": base_mem["per_inflight_bytes"],
            "baseline_single_request_bytes": base_mem["single_request_bytes"],
        },
        "targets": {
            "added_p50_ms_under": TARGET_ADDED_P50_MS,
            "added_p50_met": added["p50"] < TARGET_ADDED_P50_MS,
            "copies_at_most": TARGET_COPIES,
            "copies_per_inflight_met": mem["per_inflight_bytes"] / png <= TARGET_COPIES,
            "copies_single_request_met": mem["single_request_bytes"] / png <= TARGET_COPIES,
        },
    }


# ------------------------------------------------------------------------------------------------
# output
# ------------------------------------------------------------------------------------------------


_HEAD = "".join(f"{name:>8}" for name in ("p50", "p90", "p99", "mean"))


def _row(label: str, stats: dict[str, float], width: int = 56, fmt: str = "{:8.2f}") -> str:
    cells = "".join(fmt.format(stats[k]) for k in ("p50", "p90", "p99", "mean"))
    return f"  {label:<{width}}{cells}"


def render(result: dict[str, Any]) -> str:
    cfg, env = result["config"], result["environment"]
    png = result["png_bytes_p50"]
    lines = [
        f"limner tool overhead: {TOOL}, {SIZE} PNG, quality={QUALITY}, model={MODEL}",
        f"  python {env['python']}, {env['cpus']} CPUs, openai {env['openai']}, httpx2 {env['httpx2']}, "
        f"uvicorn {env['uvicorn']}; emulator ({cfg['emulator_runner']}) and limner each in their own process",
        f"  limner at {env.get('limner_git', 'unknown')}; PNG from the emulator: {png / 1024:.1f} KiB (p50); "
        f"N={cfg['n']} pairs after {cfg['warmup']} warm-up pairs",
        "",
        f"  {'latency, sequential, A/B interleaved (ms)':<56}{_HEAD}",
        _row("A  direct openai SDK call + base64 decode (baseline)", result["latency_ms"]["baseline"]),
        _row(f"B  limner POST /api/tools/{TOOL} over HTTP", result["latency_ms"]["limner"]),
        _row("B - A, paired per iteration", result["added_ms"]["paired"]),
    ]
    added, ratio = result["added_ms"], result["ratio"]
    low, high = added["paired_p50_ci95"]
    lines += [
        f"  added at p50: {added['paired']['p50']:.2f} ms paired (95% CI {low:.2f} to {high:.2f}), "
        f"{added['p50_minus_p50']:.2f} ms p50(B)-p50(A); at p99: {added['paired']['p99']:.2f} ms paired, "
        f"{added['p99_minus_p99']:.2f} ms p99(B)-p99(A)",
        f"  ratio B/A: {ratio['p50']:.2f}x at p50, {ratio['p99']:.2f}x at p99",
        f"  CPU per call: baseline client {result['cpu_ms_per_call']['baseline_client']:.2f} ms; "
        f"limner's process {result['cpu_ms_per_call']['limner_process']:.2f} ms (all threads)",
        "",
        f"  {'where a limner call spends its time (ms, timers in limner)':<56}{_HEAD}",
    ]
    lines += [_row(label, stats) for label, stats in result["breakdown_ms"]]
    lines += ["", *_render_throughput(result), "", *_render_memory(result), "", *_render_targets(result)]
    return "\n".join(lines)


def _render_throughput(result: dict[str, Any]) -> list[str]:
    tput, conc = result["throughput"], result["config"]["concurrency"]
    lines = [
        f"  throughput at concurrency {conc}: {tput['rounds']} rounds of {tput['per_round']} requests per path,"
        " order flipped every round",
        f"  {'':<26}{'images/s':>9}{'rounds (min-max)':>20}{'latency p50':>14}{'p99':>9}",
    ]
    for key, label in (("baseline", "A  direct SDK + decode"), ("limner", "B  limner tool call")):
        t = tput[key]
        rates = t["rounds_images_per_s"]
        lines.append(
            f"    {label:<24}{t['images_per_s']:9.1f}{min(rates):13.1f} - {max(rates):5.1f}"
            f"{t['latency_ms']['p50']:11.0f} ms{t['latency_ms']['p99']:6.0f} ms"
        )
    lines += [
        f"    {'B / A':<24}{tput['ratio']:8.2f}x",
        "",
        f"  {f'where a limner call spends its time at concurrency {conc} (ms)':<56}{_HEAD}",
    ]
    lines += [_row(label, stats) for label, stats in tput["breakdown_ms"]]
    return lines


def _render_memory(result: dict[str, Any]) -> list[str]:
    mem, png, conc = result["memory"], result["png_bytes_p50"], result["config"]["concurrency"]
    pillow = mem["peak_concurrent_decodes"] * mem["decoded_pixels"] * PILLOW_BYTES_PER_PIXEL

    def row(label: str, value: float, extra: str = "") -> str:
        return f"    {label:<54}{value / 1024:8.1f} KiB = {value / png:5.2f} copies{extra}"

    return [
        f"  memory per in-flight image (1 copy = the PNG, {png / 1024:.1f} KiB; tracemalloc peak - level before)",
        row(
            f"B  limner, {conc} calls at once, peak / {conc}",
            mem["per_inflight_bytes"],
            f"   (worst burst {mem['per_inflight_bytes_max'] / png:.2f})",
        ),
        row(f"A  bare SDK + decode, {conc} calls at once, peak / {conc}", mem["baseline_per_inflight_bytes"]),
        row("B  limner, one call alone", mem["single_request_bytes"]),
        row("A  bare SDK + decode, one call alone", mem["baseline_single_request_bytes"]),
        f"    Pillow pixel buffers, not seen by tracemalloc: {mem['peak_concurrent_decodes']} full decodes at once"
        f" x {mem['decoded_pixels'] * PILLOW_BYTES_PER_PIXEL / 2**20:.1f} MiB = {pillow / conc / 1024:.0f} KiB"
        " per in-flight image",
        "    method: tracemalloc runs in limner's own process (A: in this one) only for these bursts, after",
        "    warm-up; it counts Python allocations (bytes, str, objects), not Pillow's C buffers. At concurrency",
        "    the calls are staggered (most wait on the emulator or the database), so peak / N is below the",
        "    one-call peak. The Pillow line is the most full decodes seen at once times their pixel size.",
    ]


def _render_targets(result: dict[str, Any]) -> list[str]:
    t, mem, png = result["targets"], result["memory"], result["png_bytes_p50"]
    added = result["added_ms"]["paired"]["p50"]
    yes = {True: "met", False: "NOT met"}
    return [
        f"  target: limner adds < {t['added_p50_ms_under']:g} ms at p50: {added:.2f} ms, {yes[t['added_p50_met']]}",
        f"  target: <= {t['copies_at_most']:g} copies of an image's bytes per request: "
        f"{mem['per_inflight_bytes'] / png:.2f} per in-flight image at concurrency, "
        f"{yes[t['copies_per_inflight_met']]}; {mem['single_request_bytes'] / png:.2f} for one call alone, "
        f"{yes[t['copies_single_request_met']]} (the bare SDK alone: {mem['baseline_single_request_bytes'] / png:.2f})",
        "  (a benchmark, not a test: numbers vary between machines and runs; compare within one run)",
    ]


def _git(*args: str) -> str:
    done = subprocess.run(["git", *args], cwd=SCRIPT.parent.parent, capture_output=True, text=True, check=True)
    return done.stdout.strip()


def _git_state() -> str:
    """The commit the run measured, and whether ``src`` had uncommitted changes."""
    try:
        head, dirty = _git("rev-parse", "--short", "HEAD"), _git("status", "--porcelain", "--", "src")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head} (src modified)" if dirty else head


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200, help="sequential A/B pairs (default 200)")
    parser.add_argument("--concurrency", type=int, default=50, help="in-flight calls for throughput and memory")
    parser.add_argument("--warmup", type=int, default=20, help="warm-up pairs (default 20)")
    parser.add_argument("--throughput-requests", type=int, default=400, help="requests per path at concurrency")
    parser.add_argument("--throughput-rounds", type=int, default=4, help="alternating rounds per path (default 4)")
    parser.add_argument("--memory-rounds", type=int, default=3, help="bursts per memory measure (median)")
    parser.add_argument(
        "--emulator",
        choices=("uvicorn", "cli"),
        default="uvicorn",
        help="uvicorn: the emulator app on plain uvicorn (TCP_NODELAY, like any server); "
        "cli: `python -m limner sandbox` as shipped",
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of the table")
    parser.add_argument("--role", choices=("client", "emulator", "limner"), default="client", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.n < 2 or min(args.concurrency, args.memory_rounds, args.throughput_rounds) < 1 or args.warmup < 0:
        parser.error("--n must be at least 2; --concurrency, --memory-rounds, --throughput-rounds at least 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    if args.role == "emulator":
        run_emulator_child()
        return
    if args.role == "limner":
        run_limner_child()
        return

    def log(message: str) -> None:
        print(f"... {message}", file=sys.stderr, flush=True)

    started = time.perf_counter()
    result = asyncio.run(run(args, log))
    result["elapsed_s"] = time.perf_counter() - started
    result["environment"]["limner_git"] = _git_state()
    if args.json:
        result["breakdown_ms"] = dict(result["breakdown_ms"])
        result["throughput"]["breakdown_ms"] = dict(result["throughput"]["breakdown_ms"])
        print(json.dumps(result, indent=2))
    else:
        print(render(result))
        print(f"  (run took {result['elapsed_s']:.0f} s)")


if __name__ == "__main__":
    main()
