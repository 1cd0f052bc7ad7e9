"""What limner adds to an image generation, measured against a direct client call in the same run.

Three processes take part, so that neither memory nor CPU of one pollutes the other's numbers:

- the **emulators** (limner's sandbox: OpenAI Images, A1111 web UI and BFL emulators, upstream stand-ins)
  in a child process, behind a thin ASGI wrapper that notes the wall-clock time of BFL polls and result
  deliveries (``/_bench/bfl_timeline``);
- **limner** in a second child process: the real app (``create_app``) on real uvicorn over loopback,
  configured like an operator would (``IMAGE_GEN_OAI_*``, ``DALLE_REVERSE_PROXY``/``DALLE3_API_KEY``,
  ``SD_WEBUI_URL``, ``FLUX_API_KEY``/``FLUX_API_BASE_URL`` at the emulators, ``LIMNER_SANDBOX=off``, a
  temporary ``LIMNER_DATA_DIR``), with a user and API token made through the runtime. A thin ASGI wrapper
  around the app adds ``/_bench/*`` control routes (tracemalloc, counters) and per-phase timers; it never
  touches limner's own code;
- this process, the **client**: per backend, the baseline (the upstream's natural client: the ``openai``
  SDK for OpenAI and DALL·E, a plain httpx2 POST for A1111, a plain httpx2 submit/poll/fetch for BFL) and
  limner's path (``POST /api/tools/<tool>`` with httpx2).

Per backend (``--backend``): warm-up; N interleaved pairs (A = baseline, B = limner; the order inside a
pair alternates, and both calls of a pair send the same prompt and seed, so the emulator does the same
work for both, while every pair's prompt is new, so limner's content-addressed store never skips a write).
The OpenAI section also measures throughput at a fixed concurrency and memory per in-flight image in
limner's process. For Flux, the time from the emulator marking the task Ready to limner's stored image is
read from wall clocks (``time.time()``) of the emulator and limner processes on the same machine. Machines
are noisy: read the ratios and the paired differences, not the absolute times.

    python benchmarks/tool_overhead.py                     # every backend, about 2-3 minutes
    python benchmarks/tool_overhead.py --backend openai    # the OpenAI section alone (--n 200 --concurrency 50)
    python benchmarks/tool_overhead.py --json              # machine-readable results on stdout
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import contextvars
import functools
import inspect
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
import zlib
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

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
JPEG_MAGIC = b"\xff\xd8\xff"

BACKENDS: Final = ("openai", "dalle", "a1111", "bfl")
DALLE_MODEL: Final = "dall-e-3"
DALLE_QUALITY: Final = "standard"
DALLE_KEY = "sk-bench-dalle"
BFL_LIMNER_KEY = "bfl-bench-limner"  # two keys, so the emulator's tasks say which path submitted them
BFL_DIRECT_KEY = "bfl-bench-direct"
SD_SECONDS_PER_STEP = 0.001  # the A1111 emulator's simulated sampling time: small, and the same for both paths
# How many pairs (and warm-up pairs) each backend gets when --n (--warmup) is not given: --backend all stays
# near 2-3 minutes on 2 CPUs; a Flux call waits BFLBackend's first poll interval (0.5 s) on both paths.
DEFAULT_N: Final = {"openai": 200, "dalle": 100, "a1111": 100, "bfl": 50}
DEFAULT_WARMUP: Final = {"openai": 20, "dalle": 10, "a1111": 5, "bfl": 3}


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


class EmulatorHarness:
    """ASGI wrapper around the sandbox app: wall-clock times of BFL polls and result deliveries.

    ``GET /_bench/bfl_timeline`` returns, per finished BFL task, when the emulator marked it Ready
    (``Task.settled_at``, ``time.time()``), when the poll that answered Ready was sent, and when each GET
    of its delivery link arrived and was sent; then forgets them (and the emulator's tasks and files).
    """

    def __init__(self, app: Any, sandbox: Any) -> None:
        self.app = app
        self.sandbox = sandbox
        self.events: list[tuple[str, str, float, float]] = []  # kind, task id or file name, start, end

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        path: str = scope.get("path", "")
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if path == "/_bench/bfl_timeline":
            payload = json.dumps(self._timeline()).encode()
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": payload})
            return
        if path.startswith("/bfl/v1/get_result"):
            kind, ident = "poll", parse_qs(scope.get("query_string", b"").decode()).get("id", [""])[0]
        elif path.startswith("/bfl/delivery/results/"):
            kind, ident = "deliver", path.rsplit("/", 1)[-1]
        else:
            await self.app(scope, receive, send)
            return
        start = time.time()

        async def timed_send(message: Any) -> None:
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                self.events.append((kind, ident, start, time.time()))

        await self.app(scope, receive, timed_send)

    def _timeline(self) -> dict[str, Any]:
        polls: dict[str, list[tuple[float, float]]] = {}
        deliveries: dict[str, list[tuple[float, float]]] = {}
        for kind, ident, start, end in self.events:
            (polls if kind == "poll" else deliveries).setdefault(ident, []).append((start, end))
        tasks = []
        for task in self.sandbox.bfl.tasks:
            if task.result is None or task.settled_at is None:
                continue
            name = urlsplit(task.result["sample"]).path.rsplit("/", 1)[-1]
            ready = task.settled_at
            settling = [p for p in polls.get(task.id, []) if p[0] <= ready <= p[1]]
            tasks.append(
                {
                    "key": task.key,
                    "prompt": task.job.prompt,
                    "ready": ready,
                    "ready_poll": settling[-1] if settling else None,
                    "polls": len(polls.get(task.id, [])),
                    "deliveries": deliveries.get(name, []),
                }
            )
        self.events.clear()
        self.sandbox.bfl.reset()
        return {"tasks": tasks}


def run_emulator_child(sd_seconds_per_step: float) -> None:
    from limner.sandbox.a1111 import A1111Emulator
    from limner.sandbox.bfl import BFLEmulator
    from limner.sandbox.openai_images import OpenAIImagesEmulator
    from limner.sandbox.server import Sandbox

    async def main() -> None:
        sandbox = Sandbox(
            # DALL·E must answer (OpenAI retired it; the emulator's default says so): as default_sandbox() does.
            openai=OpenAIImagesEmulator(retired_models={"gpt-image-1"}),
            a1111=A1111Emulator(seconds_per_step=sd_seconds_per_step),
            # Ready at the first poll, whenever it comes: no extra Pending polls, no minimum time.
            bfl=BFLEmulator(pending_polls=0, ready_after=0.0),
        )
        sock = _tcp_socket()
        base = f"http://127.0.0.1:{sock.getsockname()[1]}"
        _announce({"base_url": base, "urls": sandbox.urls(base), "timeline": True})
        await _serve(EmulatorHarness(sandbox.app(), sandbox), sock)

    asyncio.run(main())


# ================================================================================================
# Child process: limner, with phase timers and /_bench control routes
# ================================================================================================

_RECORD: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("bench_record", default=None)


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
    owner: Any,
    attr: str,
    label: str,
    *,
    mark_start: str | None = None,
    mark_end: str | None = None,
    wall_end: str | None = None,
) -> None:
    """``wall_end`` also notes ``time.time()`` at the end, to compare with the emulator process's clock."""
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
            wall = time.time()
            _add(label, end - start)
            record = _RECORD.get()
            if record is not None:
                if mark_end is not None:
                    record[mark_end] = end
                if wall_end is not None:
                    record[wall_end] = wall

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


def _note_prompt(owner: Any, attr: str) -> None:
    """Keep the request's prompt in the record, to match limner's timers with the emulator's tasks."""
    original = getattr(owner, attr, None)
    if original is None:
        return

    @functools.wraps(original)
    async def noted(self: Any, req: Any, *args: Any, **kwargs: Any) -> Any:
        if (record := _RECORD.get()) is not None:
            record["_prompt"] = getattr(req, "prompt", None)
        return await original(self, req, *args, **kwargs)

    setattr(owner, attr, noted)


def _instrument() -> None:
    """Wrap a few limner methods with perf_counter timers (a few µs per call in total)."""
    import limner.api.routes.tools as tool_routes
    import limner.backends.a1111 as a1111
    from limner.backends.bfl import BFLBackend
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
    _time_async(a1111.A1111Backend, "_generate", "backend_generate")
    _time_async(a1111.A1111Backend, "_post_watched", "a1111.post")
    _time_sync(a1111, "_parse_generation", "a1111.parse")  # a module global, read at each call
    _time_async(BFLBackend, "_generate", "backend_generate")
    _note_prompt(BFLBackend, "_generate")
    _time_async(BFLBackend, "_submit", "bfl.submit")
    _time_async(BFLBackend, "_poll", "bfl.poll", wall_end="_poll_done_wall")
    _time_async(BFLBackend, "_fetch_sample", "bfl.fetch", wall_end="_fetch_done_wall")
    _time_async(ImageLibrary, "save", "save", wall_end="_saved_wall")
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
        self.records: list[dict[str, Any]] = []
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
        record: dict[str, Any] = {"_start": time.perf_counter()}
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


def _allow_loopback_delivery() -> None:
    """Let the flux family fetch its result links from the emulator on 127.0.0.1.

    Configured for a real provider (not ``LIMNER_SANDBOX``), the family only fetches result links from
    ``*.bfl.ai`` and ``*.bfl.ml``, and the emulator's links name 127.0.0.1. The allow-list the family is
    built with is replaced by ``{"127.0.0.1"}`` in this process before the runtime builds it (with
    ``LIMNER_FETCH_ALLOW_LOOPBACK=true``): ``safe_fetch`` still runs every check it runs in production; only
    the name resolution is skipped, as the link holds an IP address.
    """
    import limner.tools.flux as flux

    flux.BFL_DELIVERY_HOSTS = frozenset({"127.0.0.1"})


def run_limner_child() -> None:
    from limner.api import create_app
    from limner.config import load_settings
    from limner.db.repositories import UserRepository
    from limner.ids import new_api_token
    from limner.runtime import Runtime

    _instrument()
    _allow_loopback_delivery()
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
    prefixes = ("LIMNER_", "IMAGE_GEN_", "IMAGE_EDIT_", "DALLE", "SD_WEBUI", "FLUX_", "CREDS_KEY", "PROXY")
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


def _seed(prompt: str) -> int:
    """The seed both calls of a pair send: the same prompt and seed make the emulator do the same work."""
    return zlib.crc32(prompt.encode()) & 0x7FFFFFFF


@dataclass(frozen=True)
class Upstream:
    """What the A1111 and BFL baselines send, read from limner's own defaults so the work stays equal."""

    sd_body: dict[str, Any]  # everything but prompt and seed, as A1111Backend sends it with default settings
    flux_model: str  # LIMNER_FLUX_MODEL's default: the endpoint both paths submit to
    poll_interval: float  # BFLBackend's first wait before polling, doubled after each poll ...
    max_poll_interval: float  # ... up to this


def _upstream() -> Upstream:
    from limner.backends.bfl import BFLBackend
    from limner.config import Settings

    fields = Settings.model_fields
    sd_body = {
        "negative_prompt": "",
        "cfg_scale": fields["sd_cfg_scale"].default,
        "steps": fields["sd_steps"].default,
        "width": fields["sd_width"].default,
        "height": fields["sd_height"].default,
    }
    poll = inspect.signature(BFLBackend.__init__).parameters
    return Upstream(
        sd_body=sd_body,
        flux_model=str(fields["flux_model"].default),
        poll_interval=float(poll["poll_interval"].default),
        max_poll_interval=float(poll["max_poll_interval"].default),
    )


@dataclass
class Clients:
    sdk: openai.AsyncOpenAI
    sdk_http: httpx2.AsyncClient
    limner: httpx2.AsyncClient
    control: httpx2.AsyncClient
    direct: httpx2.AsyncClient  # the plain client of the A1111 and BFL baselines (and the emulator's /_bench)
    emulator: dict[str, Any]  # base_url, urls, timeline (whether /_bench/bfl_timeline exists)
    upstream: Upstream
    bfl_in_hand: dict[str, float] = field(default_factory=dict)  # prompt -> time.time() the direct path had the bytes
    bfl_phases: dict[str, list[float]] = field(default_factory=dict)  # the direct path's submit, poll, fetch (ms)

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

    async def call_tool(self, name: str, arguments: dict[str, Any], media_type: str) -> int:
        """One ``POST /api/tools/<name>``; returns the stored image's size."""
        answer = await self.limner.post(f"/api/tools/{name}", json=arguments)
        if answer.status_code != 200:
            raise RuntimeError(f"limner answered {answer.status_code}: {answer.text[:500]}")
        (image,) = answer.json()["images"]
        assert image["media_type"] == media_type, image
        return int(image["byte_size"])

    # --- DALL·E: the openai SDK, as limner's backend calls it (b64_json, n=1) ---------------------

    async def dalle_baseline(self, prompt: str) -> int:
        response = await self.sdk.images.generate(
            model=DALLE_MODEL, prompt=prompt, n=1, size=SIZE, quality=DALLE_QUALITY, response_format="b64_json"
        )
        assert response.data
        b64 = response.data[0].b64_json
        assert b64 is not None
        data = base64.b64decode(b64, validate=True)
        assert data.startswith(PNG_MAGIC)
        return len(data)

    async def dalle_tool(self, prompt: str) -> int:
        return await self.call_tool("dalle", {"prompt": prompt, "size": SIZE, "quality": DALLE_QUALITY}, "image/png")

    # --- A1111: one POST /sdapi/v1/txt2img with limner's default body, JSON, base64 decode ---------

    async def a1111_baseline(self, prompt: str) -> int:
        body = {"prompt": prompt, **self.upstream.sd_body, "seed": _seed(prompt)}
        answer = await self.direct.post(f"{self.emulator['urls']['a1111']}/sdapi/v1/txt2img", json=body)
        answer.raise_for_status()
        data = base64.b64decode(answer.json()["images"][0], validate=True)
        assert data.startswith(PNG_MAGIC)
        return len(data)

    async def a1111_tool(self, prompt: str) -> int:
        return await self.call_tool("stable-diffusion", {"prompt": prompt, "seed": _seed(prompt)}, "image/png")

    # --- BFL: submit, poll polling_url on BFLBackend's schedule, GET the sample --------------------

    async def bfl_baseline(self, prompt: str) -> int:
        up = self.upstream
        headers = {"x-key": BFL_DIRECT_KEY, "accept": "application/json"}
        body = {"prompt": prompt, "seed": _seed(prompt)}
        start = time.perf_counter()
        submitted = await self.direct.post(
            f"{self.emulator['urls']['bfl']}/v1/{up.flux_model}", json=body, headers=headers
        )
        submitted.raise_for_status()
        polling_url = submitted.json()["polling_url"]
        polling = time.perf_counter()
        delay = up.poll_interval
        while True:
            await asyncio.sleep(delay)
            delay = min(delay * 2, up.max_poll_interval)
            polled = await self.direct.get(polling_url, headers=headers)
            polled.raise_for_status()
            state = polled.json()
            if state["status"] == "Ready":
                break
            if state["status"] not in ("Pending", "Processing"):
                raise RuntimeError(f"the BFL emulator answered {state['status']!r}")
        fetching = time.perf_counter()
        sample = await self.direct.get(state["result"]["sample"])
        sample.raise_for_status()
        data = sample.content
        self.bfl_in_hand[prompt] = time.time()
        done = time.perf_counter()
        for phase, seconds in (("submit", polling - start), ("poll", fetching - polling), ("fetch", done - fetching)):
            self.bfl_phases.setdefault(phase, []).append(seconds * 1000)
        assert data.startswith(JPEG_MAGIC)
        return len(data)

    async def bfl_tool(self, prompt: str) -> int:
        return await self.call_tool("flux", {"prompt": prompt, "seed": _seed(prompt)}, "image/jpeg")

    def paths(self, backend: str) -> tuple[Callable[[str], Awaitable[int]], Callable[[str], Awaitable[int]]]:
        """(baseline, limner) calls of one backend."""
        return {
            "openai": (self.baseline, self.tool),
            "dalle": (self.dalle_baseline, self.dalle_tool),
            "a1111": (self.a1111_baseline, self.a1111_tool),
            "bfl": (self.bfl_baseline, self.bfl_tool),
        }[backend]

    async def bench(self, command: str) -> dict[str, Any]:
        answer = await self.control.post(f"/_bench/{command}")
        answer.raise_for_status()
        result: dict[str, Any] = answer.json()
        return result

    async def bfl_timeline(self) -> dict[str, Any] | None:
        """The emulator's BFL timeline since the last call (None with ``--emulator cli``)."""
        if not self.emulator.get("timeline"):
            return None
        answer = await self.direct.get(f"{self.emulator['base_url']}/_bench/bfl_timeline")
        answer.raise_for_status()
        result: dict[str, Any] = answer.json()
        return result

    async def aclose(self) -> None:
        await self.sdk.close()
        await self.sdk_http.aclose()
        await self.limner.aclose()
        await self.control.aclose()
        await self.direct.aclose()


def _clients(emulator: dict[str, Any], limner_port: int, token: str) -> Clients:
    timeout = httpx2.Timeout(TIMEOUT, connect=10.0)
    sdk_http = httpx2.AsyncClient(timeout=timeout, limits=LIMITS, trust_env=False)
    sdk = openai.AsyncOpenAI(base_url=emulator["urls"]["openai"], api_key=API_KEY, http_client=sdk_http, max_retries=0)
    base = f"http://127.0.0.1:{limner_port}"
    auth = {"Authorization": f"Bearer {token}"}
    limner = httpx2.AsyncClient(base_url=base, headers=auth, timeout=timeout, limits=LIMITS, trust_env=False)
    control = httpx2.AsyncClient(base_url=base, timeout=timeout, trust_env=False)
    direct = httpx2.AsyncClient(timeout=timeout, limits=LIMITS, trust_env=False)
    return Clients(
        sdk=sdk,
        sdk_http=sdk_http,
        limner=limner,
        control=control,
        direct=direct,
        emulator=emulator,
        upstream=_upstream(),
    )


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


async def sequential_pairs(
    baseline: Callable[[str], Awaitable[int]],
    tool: Callable[[str], Awaitable[int]],
    prompts: Prompts,
    n: int,
    tag: str = "seq",
) -> dict[str, Any]:
    """N pairs, order alternating inside the pair; both calls of a pair use the same prompt."""
    base_ms: list[float] = []
    tool_ms: list[float] = []
    base_cpu = 0.0
    sizes: list[int] = []
    tool_sizes: list[int] = []
    for i in range(n):
        prompt = prompts.next(tag)
        if i % 2 == 1:
            b, tool_size = await _timed(tool, prompt)
        cpu0 = time.process_time()
        a, size = await _timed(baseline, prompt)
        cpu_a = time.process_time() - cpu0
        if i % 2 == 0:
            b, tool_size = await _timed(tool, prompt)
        base_cpu += cpu_a
        base_ms.append(a * 1000)
        tool_ms.append(b * 1000)
        sizes.append(size)
        tool_sizes.append(tool_size)
    return {
        "baseline_ms": base_ms,
        "tool_ms": tool_ms,
        "png_bytes": sizes,
        "tool_bytes": tool_sizes,
        "baseline_client_cpu_s": base_cpu,
    }


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


def breakdown(records: list[dict[str, Any]], client_ms: list[float] | None) -> list[tuple[str, dict[str, float]]]:
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


async def _limner_setup(workdir: Path, urls: dict[str, str], backends: list[str]) -> tuple[Child, dict[str, Any]]:
    """limner configured like an operator would, for the selected backends only."""
    extra = {"LIMNER_SANDBOX": "off", "LIMNER_DATA_DIR": str(workdir / "data"), "LIMNER_LOG_LEVEL": "WARNING"}
    if "openai" in backends:
        extra |= {"IMAGE_GEN_OAI_BASEURL": urls["openai"], "IMAGE_GEN_OAI_API_KEY": API_KEY}
    if "dalle" in backends:
        extra |= {"DALLE_REVERSE_PROXY": urls["openai"], "DALLE3_API_KEY": DALLE_KEY}
    if "a1111" in backends:
        extra |= {"SD_WEBUI_URL": urls["a1111"]}
    if "bfl" in backends:
        extra |= {
            "FLUX_API_KEY": BFL_LIMNER_KEY,
            "FLUX_API_BASE_URL": urls["bfl"],
            "LIMNER_FETCH_ALLOW_LOOPBACK": "true",
        }
    argv = [sys.executable, str(SCRIPT), "--role", "limner"]
    return await _start_child("limner", argv, _child_env(extra), workdir)


async def _emulator_setup(workdir: Path, args: argparse.Namespace) -> tuple[Child, dict[str, Any]]:
    if args.emulator == "cli":
        return await _start_emulator_cli(workdir)
    argv = [sys.executable, str(SCRIPT), "--role", "emulator", "--sd-seconds-per-step", str(args.sd_seconds_per_step)]
    return await _start_child("emulator", argv, _child_env({}), workdir)


def _environment() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "openai": version("openai"),
        "httpx2": version("httpx2"),
        "uvicorn": version("uvicorn"),
    }


async def run(args: argparse.Namespace, log: Callable[[str], None]) -> dict[str, Any]:
    prompts = Prompts()
    children: list[Child] = []
    with tempfile.TemporaryDirectory(prefix="limner-bench-") as tmp:
        workdir = Path(tmp)
        try:
            emulator, emu = await _emulator_setup(workdir, args)
            children.append(emulator)
            limner, info = await _limner_setup(workdir, emu["urls"], args.backends)
            children.append(limner)
            clients = _clients(emu, info["port"], info["token"])
            results: dict[str, Any] = {}
            try:
                for backend in args.backends:
                    n = args.n if args.n is not None else DEFAULT_N[backend]
                    warmup = args.warmup if args.warmup is not None else DEFAULT_WARMUP[backend]
                    if backend == "openai":
                        log("openai: image_gen_oai")
                        results[backend] = await _measure(args, clients, prompts, log, n, warmup)
                    else:
                        results[backend] = await _measure_family(backend, args, clients, prompts, log, n, warmup)
            finally:
                await clients.aclose()
            return {"environment": _environment(), "emulator": emu["base_url"], "backends": results}
        finally:
            for child in reversed(children):
                await child.stop()


async def _measure(
    args: argparse.Namespace, clients: Clients, prompts: Prompts, log: Callable[[str], None], n: int, warmup: int
) -> dict[str, Any]:
    """The OpenAI section: latency, phases, throughput and memory of ``image_gen_oai``."""
    log(f"warm-up: {warmup} pairs and one burst of {args.concurrency} per path")
    await sequential_pairs(clients.baseline, clients.tool, prompts, warmup)
    await _all_at_once(clients.baseline, prompts, "warm", args.concurrency)
    await _all_at_once(clients.tool, prompts, "warm", args.concurrency)

    log(f"sequential: {n} interleaved pairs")
    cpu_before = (await clients.bench("cpu"))["cpu"]
    await clients.bench("records_on")
    seq = await sequential_pairs(clients.baseline, clients.tool, prompts, n)
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
            "n": n,
            "warmup": warmup,
            "concurrency": args.concurrency,
            "throughput_requests": args.throughput_requests,
            "throughput_rounds": args.throughput_rounds,
            "memory_rounds": args.memory_rounds,
            "emulator_runner": args.emulator,
            "model": MODEL,
            "size": SIZE,
            "quality": QUALITY,
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
            "baseline_client": seq["baseline_client_cpu_s"] * 1000 / n,
            "limner_process": limner_cpu * 1000 / n,
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


FAMILY_TITLES: Final = {
    "dalle": ("dalle", "DALL·E over the OpenAI Images emulator"),
    "a1111": ("stable-diffusion", "Stable Diffusion over the A1111 web UI emulator"),
    "bfl": ("flux", "Flux over the BFL emulator"),
}
BASELINE_LABELS: Final = {
    "dalle": "A  direct openai SDK call (b64_json) + base64 decode",
    "a1111": "A  direct httpx2 POST txt2img + JSON + base64 decode",
    "bfl": "A  direct httpx2 submit, poll, GET the sample",
}


def _family_config(backend: str, args: argparse.Namespace, clients: Clients) -> dict[str, Any]:
    up = clients.upstream
    if backend == "dalle":
        return {"model": DALLE_MODEL, "size": SIZE, "quality": DALLE_QUALITY}
    if backend == "a1111":
        sd = up.sd_body
        per_step = args.sd_seconds_per_step if args.emulator == "uvicorn" else "limner sandbox default"
        return {
            "size": f"{sd['width']}x{sd['height']}",
            "steps": sd["steps"],
            "cfg_scale": sd["cfg_scale"],
            "emulator_seconds_per_step": per_step,
        }
    return {
        "model": up.flux_model,
        "poll_interval_s": up.poll_interval,
        "max_poll_interval_s": up.max_poll_interval,
        "emulator": "pending_polls=0, ready_after=0" if args.emulator == "uvicorn" else "limner sandbox defaults",
    }


async def _measure_family(
    backend: str,
    args: argparse.Namespace,
    clients: Clients,
    prompts: Prompts,
    log: Callable[[str], None],
    n: int,
    warmup: int,
) -> dict[str, Any]:
    """One backend other than OpenAI: sequential interleaved pairs, phases, and (Flux) Ready → stored."""
    baseline, tool = clients.paths(backend)
    tool_name = FAMILY_TITLES[backend][0]
    log(f"{backend}: {tool_name}, warm-up {warmup} pairs, then {n} interleaved pairs")
    await sequential_pairs(baseline, tool, prompts, warmup, tag=f"warm-{backend}")
    if backend == "bfl":
        await clients.bfl_timeline()  # forget the warm-up's tasks
        clients.bfl_in_hand.clear()
        clients.bfl_phases.clear()
    cpu_before = (await clients.bench("cpu"))["cpu"]
    await clients.bench("records_on")
    seq = await sequential_pairs(baseline, tool, prompts, n, tag=f"seq-{backend}")
    records = (await clients.bench("records_off"))["records"]
    limner_cpu = (await clients.bench("cpu"))["cpu"] - cpu_before

    diffs = [b - a for a, b in zip(seq["baseline_ms"], seq["tool_ms"], strict=True)]
    base, tool_stats, added = summary(seq["baseline_ms"]), summary(seq["tool_ms"]), summary(diffs)
    result: dict[str, Any] = {
        "config": {"n": n, "warmup": warmup, "tool": tool_name, **_family_config(backend, args, clients)},
        "image_bytes_p50": pct([float(size) for size in seq["png_bytes"]], 50),
        "same_bytes_pairs": sum(a == b for a, b in zip(seq["png_bytes"], seq["tool_bytes"], strict=True)),
        "latency_ms": {"baseline": base, "limner": tool_stats},
        "added_ms": {
            "paired": added,
            "paired_p50_ci95": bootstrap_median_ci(diffs),
            "p50_minus_p50": tool_stats["p50"] - base["p50"],
            "p99_minus_p99": tool_stats["p99"] - base["p99"],
        },
        "ratio": {"p50": tool_stats["p50"] / base["p50"], "p99": tool_stats["p99"] / base["p99"]},
        "cpu_ms_per_call": {
            "baseline_client": seq["baseline_client_cpu_s"] * 1000 / n,
            "limner_process": limner_cpu * 1000 / n,
        },
        "breakdown_ms": family_breakdown(backend, records, seq["tool_ms"]),
    }
    if backend == "bfl":
        labels = {"submit": "A  submit POST", "poll": "A  poll: wait poll_interval + GET get_result"}
        result["baseline_phases_ms"] = [
            (labels.get(phase, "A  GET the sample"), summary(values)) for phase, values in clients.bfl_phases.items()
        ]
        timeline = await clients.bfl_timeline()
        result["ready_to_stored"] = (
            ready_to_stored(timeline, records, clients.bfl_in_hand) if timeline is not None else None
        )
    return result


def family_breakdown(
    backend: str, records: list[dict[str, Any]], client_ms: list[float]
) -> list[tuple[str, dict[str, float]]]:
    """Per-phase times (ms) of one backend's sequential tool calls, from the timers in limner's process."""
    columns: dict[str, list[float]] = {}

    def put(label: str, seconds: float) -> None:
        columns.setdefault(label, []).append(seconds * 1000)

    for index, record in enumerate(records):
        if "_end" not in record or "_tool_end" not in record or "_run_tool_at" not in record:
            continue
        server = record["_end"] - record["_start"]
        generate, save = record.get("backend_generate", 0.0), record.get("save", 0.0)
        if index < len(client_ms):
            put("outside the app: loopback HTTP, uvicorn, client", client_ms[index] / 1000 - server)
        put("request in: routing, body, auth", record.get("_handler_at", record["_run_tool_at"]) - record["_start"])
        put("tool: lookup, args, key, checks, result text", record["run_tool"] - generate - save)
        if backend == "dalle":
            decode, build = record.get("b64_decode", 0.0), record.get("sdk_client_build", 0.0)
            upstream = generate - build - decode
            put("SDK client build", build)
            put("upstream call via SDK (emulator + transport + parse)", upstream)
            put("base64 decode (also in the baseline)", decode)
        elif backend == "a1111":
            upstream, parse = record.get("a1111.post", 0.0), record.get("a1111.parse", 0.0)
            put("upstream POST txt2img (emulator + transport)", upstream)
            put("JSON parse + base64 decode, in a thread", parse)
            put("backend: body, queue lock, thread hops", generate - upstream - parse)
        else:
            submit, poll, fetch = (record.get(k, 0.0) for k in ("bfl.submit", "bfl.poll", "bfl.fetch"))
            upstream = submit + poll + fetch
            put("submit POST", submit)
            put("poll: wait poll_interval + GET get_result", poll)
            put("fetch the result link (safe_fetch)", fetch)
            put("backend: body, checks, sniff", generate - upstream)
        put("save: validate + sha256, in a thread", record.get("save.validate_hash", 0.0))
        put("save: blob write + fsync", record.get("save.blob_write", 0.0))
        put("save: DB insert + commit", record.get("save.db_insert", 0.0))
        put("save: rest (locks, records)", save - sum(v for k, v in record.items() if k.startswith("save.")))
        put("response out: schema, JSON, send", record["_end"] - record["_tool_end"])
        put("= server total (ASGI in → last byte out)", server)
        put("  server total minus the upstream calls above", server - upstream)
    return [(label, summary(values)) for label, values in columns.items()]


def ready_to_stored(
    timeline: dict[str, Any], records: list[dict[str, Any]], in_hand: dict[str, float]
) -> dict[str, Any]:
    """Flux: from the emulator marking a task Ready to limner's stored image (and to the direct client's bytes).

    Wall-clock ``time.time()`` of three processes on one machine: the emulator's (Ready, its answers sent,
    the result link's GET), limner's (its poll parsed, the fetch returned, ``ImageLibrary.save`` returned) and
    this one's (the direct client has the bytes). Pairs are matched by prompt and API key.
    """
    limner = {r["_prompt"]: r for r in records if r.get("_prompt") and "_saved_wall" in r}
    columns: dict[str, list[float]] = {}
    totals: dict[str, dict[str, float]] = {"limner": {}, "direct": {}}
    polls: list[int] = []

    def put(label: str, seconds: float) -> None:
        columns.setdefault(label, []).append(seconds * 1000)

    for task in timeline["tasks"]:
        prompt, ready, poll, deliveries = task["prompt"], task["ready"], task["ready_poll"], task["deliveries"]
        polls.append(task["polls"])
        if task["key"] == BFL_LIMNER_KEY and prompt in limner:
            rec = limner[prompt]
            totals["limner"][prompt] = rec["_saved_wall"] - ready
            if poll is None or not deliveries:
                continue
            put("B  emulator: Ready → its Ready answer sent (renders the JPEG)", poll[1] - ready)
            put("B  limner: answer sent → poll parsed (_poll returned)", rec["_poll_done_wall"] - poll[1])
            put("B  limner: poll parsed → result GET reaches the emulator", deliveries[0][0] - rec["_poll_done_wall"])
            put("B  emulator: serves the result", deliveries[-1][1] - deliveries[0][0])
            put("B  limner: result sent → fetch returned (body read)", rec["_fetch_done_wall"] - deliveries[-1][1])
            put("B  limner: fetch returned → stored (ImageLibrary.save)", rec["_saved_wall"] - rec["_fetch_done_wall"])
        elif task["key"] == BFL_DIRECT_KEY and prompt in in_hand:
            totals["direct"][prompt] = in_hand[prompt] - ready
            if poll is None or not deliveries:
                continue
            put("A  emulator: Ready → its Ready answer sent (renders the JPEG)", poll[1] - ready)
            put("A  direct: answer sent → result GET reaches the emulator", deliveries[0][0] - poll[1])
            put("A  emulator: serves the result", deliveries[-1][1] - deliveries[0][0])
            put("A  direct: result sent → bytes in hand", in_hand[prompt] - deliveries[-1][1])
    both = sorted(set(totals["limner"]) & set(totals["direct"]))
    diffs = [(totals["limner"][k] - totals["direct"][k]) * 1000 for k in both]
    return {
        "limner_ms": summary([v * 1000 for v in totals["limner"].values()]),
        "direct_ms": summary([v * 1000 for v in totals["direct"].values()]),
        "paired_added_ms": summary(diffs),
        "paired_added_p50_ci95": bootstrap_median_ci(diffs) if diffs else (math.nan, math.nan),
        "pairs": len(both),
        "polls_per_task": summary([float(p) for p in polls]),
        "segments_ms": [  # limner's path first, then the direct client's
            (label, summary(values)) for label, values in sorted(columns.items(), key=lambda item: item[0][0] != "B")
        ],
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


_WIDE = 64


def _head(title: str) -> str:
    return f"  {title:<{_WIDE}}{_HEAD}"


def render_all(result: dict[str, Any]) -> str:
    """The OpenAI section as before, then one compact section per other backend."""
    env, backends = result["environment"], result["backends"]
    parts: list[str] = []
    if "openai" in backends:
        parts.append(render({**backends["openai"], "environment": env}))
    else:
        parts.append(
            f"limner tool overhead: python {env['python']}, {env['cpus']} CPUs, openai {env['openai']}, "
            f"httpx2 {env['httpx2']}, uvicorn {env['uvicorn']}; emulators and limner each in their own process; "
            f"limner at {env.get('limner_git', 'unknown')}"
        )
    parts += [render_family(backend, backends[backend]) for backend in BACKENDS[1:] if backend in backends]
    return "\n\n".join(parts)


def render_family(backend: str, r: dict[str, Any]) -> str:
    cfg = r["config"]
    tool, title = FAMILY_TITLES[backend]
    details = ", ".join(f"{key}={value}" for key, value in cfg.items() if key not in ("n", "warmup", "tool"))
    added, ratio, cpu = r["added_ms"], r["ratio"], r["cpu_ms_per_call"]
    low, high = added["paired_p50_ci95"]
    lines = [
        f"{tool}: {title} ({details})",
        f"  N={cfg['n']} pairs after {cfg['warmup']} warm-up pairs; image {r['image_bytes_p50'] / 1024:.1f} KiB (p50);"
        f" same bytes on both paths in {r['same_bytes_pairs']} of {cfg['n']} pairs",
        _head("latency, sequential, A/B interleaved (ms)"),
        _row(BASELINE_LABELS[backend], r["latency_ms"]["baseline"], _WIDE),
        _row(f"B  limner POST /api/tools/{tool} over HTTP", r["latency_ms"]["limner"], _WIDE),
        _row("B - A, paired per iteration", added["paired"], _WIDE),
        f"  added at p50: {added['paired']['p50']:.2f} ms paired (95% CI {low:.2f} to {high:.2f}); at p99: "
        f"{added['paired']['p99']:.2f} ms paired; ratio B/A {ratio['p50']:.2f}x at p50, {ratio['p99']:.2f}x at p99",
        f"  CPU per call: baseline client {cpu['baseline_client']:.2f} ms; "
        f"limner's process {cpu['limner_process']:.2f} ms",
        _head("where a limner call spends its time (ms, timers in limner)"),
    ]
    lines += [_row(label, stats, _WIDE) for label, stats in r["breakdown_ms"]]
    if backend == "bfl":
        lines.append(_head("the direct client's same steps (ms, timers in this process)"))
        lines += [_row(label, stats, _WIDE) for label, stats in r["baseline_phases_ms"]]
        lines += _render_ready(r.get("ready_to_stored"))
    return "\n".join(lines)


def _render_ready(ready: dict[str, Any] | None) -> list[str]:
    if ready is None:
        return ["  Ready → stored: not measured (--emulator cli has no timeline route)"]
    low, high = ready["paired_added_p50_ci95"]
    added = ready["paired_added_ms"]
    lines = [
        _head("Flux: emulator marks the task Ready → image stored (ms)"),
        _row("B  limner: Ready → stored (ImageLibrary.save returned)", ready["limner_ms"], _WIDE),
        _row("A  direct: Ready → image bytes in hand", ready["direct_ms"], _WIDE),
        _row("B - A, paired by prompt", added, _WIDE),
        f"  Ready → stored adds {added['p50']:.2f} ms at p50 over the direct client (95% CI {low:.2f} to {high:.2f}),"
        f" {added['p99']:.2f} ms at p99; {ready['pairs']} pairs, {ready['polls_per_task']['p50']:.0f} poll(s) per task",
    ]
    lines += [_row(label, stats, _WIDE) for label, stats in ready["segments_ms"]]
    lines += [
        "  method: wall clocks (time.time()) of three processes on the same machine: the emulator notes when it",
        "  marks the task Ready (Task.settled_at) and when it sends the Ready answer and the result (an ASGI",
        "  wrapper in its process); limner's process notes when _poll, _fetch_sample and ImageLibrary.save",
        "  return; this process notes when the direct client has the bytes. Same clock, different processes.",
    ]
    return lines


def _jsonable(result: dict[str, Any]) -> dict[str, Any]:
    """Tables (lists of label, stats) as objects."""
    for backend, r in result["backends"].items():
        r["breakdown_ms"] = dict(r["breakdown_ms"])
        if backend == "openai":
            r["throughput"]["breakdown_ms"] = dict(r["throughput"]["breakdown_ms"])
        if "baseline_phases_ms" in r:
            r["baseline_phases_ms"] = dict(r["baseline_phases_ms"])
        if r.get("ready_to_stored"):
            r["ready_to_stored"]["segments_ms"] = dict(r["ready_to_stored"]["segments_ms"])
    return result


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
    parser.add_argument(
        "--backend",
        choices=(*BACKENDS, "all"),
        default="all",
        help="which tool family to measure: openai (image_gen_oai), dalle, a1111 (stable-diffusion), "
        "bfl (flux), or all (default)",
    )
    defaults = ", ".join(f"{name} {count}" for name, count in DEFAULT_N.items())
    parser.add_argument("--n", type=int, default=None, help=f"sequential A/B pairs per backend (default: {defaults})")
    parser.add_argument(
        "--concurrency", type=int, default=50, help="in-flight calls for throughput and memory (openai)"
    )
    warmups = ", ".join(f"{name} {count}" for name, count in DEFAULT_WARMUP.items())
    parser.add_argument("--warmup", type=int, default=None, help=f"warm-up pairs per backend (default: {warmups})")
    parser.add_argument("--throughput-requests", type=int, default=400, help="requests per path at concurrency")
    parser.add_argument("--throughput-rounds", type=int, default=4, help="alternating rounds per path (default 4)")
    parser.add_argument("--memory-rounds", type=int, default=3, help="bursts per memory measure (median)")
    parser.add_argument(
        "--sd-seconds-per-step",
        type=float,
        default=SD_SECONDS_PER_STEP,
        help=f"the A1111 emulator's time per sampling step, the same for both paths (default {SD_SECONDS_PER_STEP})",
    )
    parser.add_argument(
        "--emulator",
        choices=("uvicorn", "cli"),
        default="uvicorn",
        help="uvicorn: the emulators on plain uvicorn (TCP_NODELAY, like any server), with this benchmark's knobs; "
        "cli: `python -m limner sandbox` as shipped (its own knobs, no Flux Ready → stored timeline)",
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of the tables")
    parser.add_argument("--role", choices=("client", "emulator", "limner"), default="client", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if (args.n is not None and args.n < 2) or (args.warmup is not None and args.warmup < 0):
        parser.error("--n must be at least 2 and --warmup at least 0")
    if min(args.concurrency, args.memory_rounds, args.throughput_rounds) < 1 or args.sd_seconds_per_step < 0:
        parser.error("--concurrency, --memory-rounds, --throughput-rounds at least 1; --sd-seconds-per-step >= 0")
    args.backends = list(BACKENDS) if args.backend == "all" else [args.backend]
    return args


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    if args.role == "emulator":
        run_emulator_child(args.sd_seconds_per_step)
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
        print(json.dumps(_jsonable(result), indent=2))
    else:
        print(render_all(result))
        print(f"  (run took {result['elapsed_s']:.0f} s)")


if __name__ == "__main__":
    main()
