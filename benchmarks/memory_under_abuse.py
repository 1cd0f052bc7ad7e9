"""Resident memory of ``limner serve`` under abusive image workloads, this checkout beside an earlier commit.

A PNG of one colour at 6300x6300 is about 150 KB on the wire and 150 MB once decoded, so a few requests
that each decode it can take a small server's memory. This script starts the emulators (``limner
sandbox``) in one child process and ``limner serve`` in another, configured as an operator would
(``IMAGE_GEN_OAI_API_KEY``/``IMAGE_GEN_OAI_BASEURL`` at the emulator, ``LIMNER_SANDBOX=off``, a temporary
``LIMNER_DATA_DIR``), so that the server's memory is limner's alone: the emulator decoding an edit's
inputs is another process. It then runs, one after the other, over HTTP with httpx2:

- ``uploads x16``: 16 concurrent uploads of the 6300x6300 PNG (each is decoded in full to check it);
- ``thumbnail x8, one image``: 8 concurrent first thumbnails of one of those images;
- ``thumbnails, 8 images``: the first thumbnail of 8 different 6300x6300 images at once;
- ``edit, 1 ID x16 (150 KB)``: ``image_edit_oai`` with the same image ID 16 times;
- ``edit, 1 ID x16 (5 MB)``: the same with a 5 MB (noise) PNG, where reading the input 16 times shows.

Each workload gets a fresh server (a heap grown by one workload would hide the next one's growth), and
its setup (the uploads it needs) runs before measuring. Then the server's peak resident size is reset
(``/proc/PID/clear_refs``, 5), the workload runs, and its peak (``VmHWM``) and resident size after
(``VmRSS``) are read from ``/proc/PID/status``: printed as resident before → peak → resident after, in
MiB. Linux only.

``--baseline-ref REF`` runs the same workloads against commit REF too (the commit before a change, say),
checked out into a temporary git worktree and started with the same interpreter and ``PYTHONPATH`` set to
its ``src``; the emulators are this checkout's for both, so both servers talk to the same upstream.
Machines differ: compare the two columns of one run, not numbers across machines.

    python benchmarks/memory_under_abuse.py                          # this checkout alone, about a minute
    python benchmarks/memory_under_abuse.py --baseline-ref b89dfb6   # and the commit before issue 24's fix
    python benchmarks/memory_under_abuse.py --json                   # machine-readable results on stdout
    python benchmarks/memory_under_abuse.py --workload "uploads x16" --server-env LIMNER_DECODE_MEMORY_MB=256
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx2
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SIDE = 6300
READY_TIMEOUT = 60.0
TIMEOUT = 600.0
MIB = 1024 * 1024


@dataclass(frozen=True)
class Measurement:
    """One workload on a fresh server: resident size before, peak during, resident size after (MiB)."""

    workload: str
    rss_before: float
    peak: float
    rss_after: float
    seconds: float
    statuses: dict[int, int]


# ------------------------------------------------------------------------------------------------
# Images
# ------------------------------------------------------------------------------------------------


def flat_png(color: tuple[int, int, int], side: int = SIDE) -> bytes:
    """A large PNG of one colour with a few bars: tiny on the wire, ``side`` x ``side`` x 4 bytes decoded."""
    im = Image.new("RGB", (side, side), color)
    for i in range(0, side, side // 8):
        im.paste((255 - color[0], color[1], 255 - color[2]), (i, 0, i + 40, side))
    out = io.BytesIO()
    im.save(out, format="PNG", optimize=True)
    return out.getvalue()


def noisy_png(side: int) -> bytes:
    """A PNG that does not compress (noise): its file is about its decoded size."""
    out = io.BytesIO()
    Image.effect_noise((side, side), 80).convert("RGB").save(out, format="PNG", compress_level=1)
    return out.getvalue()


# ------------------------------------------------------------------------------------------------
# Processes
# ------------------------------------------------------------------------------------------------


def _env(src: Path, **extra: str) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("LIMNER_", "IMAGE_", "DALLE", "FLUX_", "SD_"))}
    return {**keep, "PYTHONPATH": str(src), "COLUMNS": "200", **extra}


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _end(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def sandbox(workdir: Path) -> Iterator[str]:
    """``limner sandbox`` of this checkout; yields the OpenAI emulator's base URL."""
    port, log = _free_port(), workdir / "sandbox.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "limner", "sandbox", "--port", str(port)],
            env=_env(ROOT / "src"),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while "Press Ctrl+C" not in log.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("limner sandbox did not start:\n" + log.read_text(errors="replace"))
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/openai/v1"
    finally:
        _end(proc)


@contextlib.contextmanager
def server(
    src: Path, workdir: Path, openai_url: str, extra: dict[str, str]
) -> Iterator[tuple[subprocess.Popen[bytes], str, str]]:
    """``limner serve`` from ``src`` with its own data dir and a token: (process, base URL, token)."""
    env = _env(
        src,
        LIMNER_DATA_DIR=str(workdir / "data"),
        LIMNER_SANDBOX="off",
        IMAGE_GEN_OAI_API_KEY="sk-bench",
        IMAGE_GEN_OAI_BASEURL=openai_url,
        LIMNER_LOG_LEVEL="WARNING",
        LIMNER_SWEEP_INTERVAL="0",
        **extra,
    )
    made = subprocess.run(
        [sys.executable, "-m", "limner", "tokens", "create", "--user", "bench"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    token = made.stdout.split()[-1]
    port, log = _free_port(), workdir / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "limner", "serve", "--port", str(port)],
            env=env,
            cwd=workdir,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("limner serve did not start:\n" + log.read_text(errors="replace"))
            try:
                httpx2.get(f"{url}/api/health", timeout=2).raise_for_status()
                break
            except httpx2.HTTPError:
                time.sleep(0.1)
        yield proc, url, token
    finally:
        _end(proc)


@contextlib.contextmanager
def worktree(ref: str) -> Iterator[Path]:
    """``ref`` checked out into a temporary worktree of this repository, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="limner-baseline-") as tmp:
        path = Path(tmp) / "tree"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), ref], check=True)
        try:
            yield path
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(path)], check=True)


# ------------------------------------------------------------------------------------------------
# Memory of a process
# ------------------------------------------------------------------------------------------------


def _status_kib(pid: int, field: str) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    found = re.search(rf"^{field}:\s+(\d+) kB", text, re.M)
    assert found is not None, field
    return int(found.group(1))


def reset_peak(pid: int) -> None:
    """Set the process's peak resident size (VmHWM) to its current one (Linux ``clear_refs``, 5)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def mib(kib: int) -> float:
    return round(kib / 1024, 1)


async def measure(pid: int, name: str, work: Callable[[], Awaitable[list[int]]]) -> Measurement:
    reset_peak(pid)
    before = _status_kib(pid, "VmRSS")
    started = time.perf_counter()
    statuses = await work()
    seconds = time.perf_counter() - started
    peak, after = _status_kib(pid, "VmHWM"), _status_kib(pid, "VmRSS")
    counted: dict[int, int] = {}
    for status in statuses:
        counted[status] = counted.get(status, 0) + 1
    return Measurement(name, mib(before), mib(peak), mib(after), round(seconds, 2), counted)


# ------------------------------------------------------------------------------------------------
# Workloads: each on a fresh server, after its own setup (uploads), so that none inherits another's heap
# ------------------------------------------------------------------------------------------------


class Client:
    """The calls the workloads make, as the bench user."""

    def __init__(self, http: httpx2.AsyncClient) -> None:
        self.http = http

    async def upload(self, data: bytes) -> httpx2.Response:
        return await self.http.post("/api/images", files={"file": ("big.png", data, "image/png")})

    async def upload_id(self, data: bytes) -> str:
        answer = await self.upload(data)
        answer.raise_for_status()
        return str(answer.json()["id"])

    async def uploads(self, many: list[bytes]) -> list[int]:
        return [r.status_code for r in await asyncio.gather(*(self.upload(d) for d in many))]

    async def thumbnails(self, ids: list[str]) -> list[int]:
        answers = await asyncio.gather(*(self.http.get(f"/api/images/{i}/thumbnail") for i in ids))
        return [r.status_code for r in answers]

    async def edit(self, image_id: str) -> list[int]:
        args = {"image_ids": [image_id] * 16, "prompt": "the same picture, sixteen times"}
        return [(await self.http.post("/api/tools/image_edit_oai", json=args)).status_code]


@dataclass(frozen=True)
class Images:
    """The workloads' images, made once."""

    big: bytes
    others: list[bytes]
    heavy: bytes

    @classmethod
    def make(cls) -> Images:
        others = [flat_png((10 + 25 * i, 200 - 20 * i, 90)) for i in range(8)]
        return cls(big=flat_png((30, 120, 200)), others=others, heavy=noisy_png(1300))


Workload = Callable[[Client, Images], Awaitable[Callable[[], Awaitable[list[int]]]]]
"""Does its setup, returns the work to measure."""


async def _uploads(client: Client, images: Images) -> Callable[[], Awaitable[list[int]]]:
    return lambda: client.uploads([images.big] * 16)


async def _one_thumbnail(client: Client, images: Images) -> Callable[[], Awaitable[list[int]]]:
    image_id = await client.upload_id(images.big)
    return lambda: client.thumbnails([image_id] * 8)


async def _eight_thumbnails(client: Client, images: Images) -> Callable[[], Awaitable[list[int]]]:
    ids = [await client.upload_id(data) for data in images.others]
    return lambda: client.thumbnails(ids)


async def _edit_light(client: Client, images: Images) -> Callable[[], Awaitable[list[int]]]:
    image_id = await client.upload_id(images.big)
    return lambda: client.edit(image_id)


async def _edit_heavy(client: Client, images: Images) -> Callable[[], Awaitable[list[int]]]:
    image_id = await client.upload_id(images.heavy)
    return lambda: client.edit(image_id)


WORKLOADS: dict[str, Workload] = {
    "uploads x16": _uploads,
    "thumbnail x8, one image": _one_thumbnail,
    "thumbnails, 8 images": _eight_thumbnails,
    "edit, 1 ID x16 (150 KB)": _edit_light,
    "edit, 1 ID x16 (5 MB)": _edit_heavy,
}


async def run_workload(name: str, images: Images, pid: int, url: str, token: str) -> Measurement:
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx2.AsyncClient(base_url=url, headers=headers, timeout=TIMEOUT) as http:
        client = Client(http)
        warm = await client.upload_id(flat_png((1, 2, 3), 64))  # imports and first allocations, before measuring
        await client.thumbnails([warm])
        work = await WORKLOADS[name](client, images)
        return await measure(pid, name, work)


def run_side(src: Path, openai_url: str, images: Images, names: list[str], env: dict[str, str]) -> list[Measurement]:
    results = []
    for name in names:
        with (
            tempfile.TemporaryDirectory(prefix="limner-memory-") as tmp,
            server(src, Path(tmp), openai_url, env) as run,
        ):
            proc, url, token = run
            results.append(asyncio.run(run_workload(name, images, proc.pid, url, token)))
    return results


# ------------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------------


def _cell(m: Measurement) -> str:
    failed = sorted(status for status in m.statuses if status >= 400)
    note = f", failed: {failed}" if failed else ""
    return f"{m.rss_before:.0f} → **{m.peak:.0f}** → {m.rss_after:.0f} ({m.seconds:.1f} s{note})"


def report(sides: dict[str, list[Measurement]]) -> str:
    names = list(sides)
    workloads = [m.workload for m in sides[names[0]]]
    lines = [
        "Resident size before → peak during → resident size after each workload (MiB; a fresh server each), wall time.",
        "",
        "| workload | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for i, name in enumerate(workloads):
        lines.append(f"| {name} | " + " | ".join(_cell(sides[n][i]) for n in names) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline-ref", help="also measure this commit (checked out in a temporary worktree)")
    parser.add_argument("--json", action="store_true", help="print the measurements as JSON")
    parser.add_argument("--workload", action="append", choices=list(WORKLOADS), help="only these (repeatable)")
    parser.add_argument(
        "--server-env", action="append", default=[], metavar="NAME=VALUE", help="a setting for both servers"
    )
    args = parser.parse_args()
    names = args.workload or list(WORKLOADS)
    env = dict(item.split("=", 1) for item in args.server_env)
    sides: dict[str, list[Measurement]] = {}
    images = Images.make()
    with tempfile.TemporaryDirectory(prefix="limner-sandbox-") as tmp, sandbox(Path(tmp)) as openai_url:
        if args.baseline_ref:
            with worktree(args.baseline_ref) as tree:
                sides[f"baseline {args.baseline_ref}"] = run_side(tree / "src", openai_url, images, names, env)
        sides["this checkout"] = run_side(ROOT / "src", openai_url, images, names, env)
    if args.json:
        print(json.dumps({name: [asdict(m) for m in ms] for name, ms in sides.items()}, indent=2))
    else:
        print(report(sides))


if __name__ == "__main__":
    main()
