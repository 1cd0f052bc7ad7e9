"""Run every emulator behind one loopback port, inside whatever event loop is already running.

:func:`serve_sandbox` starts uvicorn as a task of the current loop on a socket it binds itself,
so port 0 works and the real port is known before the caller gets control. The sandbox is meant
to live inside other programs (limner's own server, a test), so the embedded server never
installs signal handlers, never reconfigures logging and writes no access log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Generator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import anyio
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route
from starlette.types import ASGIApp
from uvicorn.protocols.http.h11_impl import H11Protocol

from limner.sandbox.a1111 import A1111Emulator
from limner.sandbox.bfl import BFLEmulator
from limner.sandbox.chat import ChatEmulator
from limner.sandbox.openai_images import OpenAIImagesEmulator

_SHUTDOWN_GRACE_SECONDS = 5
_STOP_TIMEOUT_SECONDS = 10.0


class Emulator(Protocol):
    """What the runner needs from an emulator; every upstream emulator implements it."""

    def mounts(self) -> dict[str, ASGIApp]:
        """Prefix (no slashes) → app; one app may be served under several prefixes.

        The prefix ``""`` serves the app at the sandbox's root, for an upstream whose own client keeps only
        the host of its base URL; it is tried after every prefixed mount, and one emulator at most has it.
        """
        ...

    def public_urls(self, base_url: str) -> dict[str, str]:
        """Client base URLs, keyed by name, for a sandbox served at ``base_url``."""
        ...

    def close(self) -> None:
        """Release stalled requests so the server can stop."""
        ...


class Sandbox:
    """The set of emulators served together; each is mounted under its own prefix."""

    def __init__(
        self,
        *,
        openai: OpenAIImagesEmulator | None = None,
        a1111: A1111Emulator | None = None,
        bfl: BFLEmulator | None = None,
        chat: ChatEmulator | None = None,
    ) -> None:
        self.openai = openai or OpenAIImagesEmulator()
        self.a1111 = a1111 or A1111Emulator()
        self.bfl = bfl or BFLEmulator()
        self.chat = chat or ChatEmulator()

    def emulators(self) -> dict[str, Emulator]:
        """Name → emulator."""
        return {"openai": self.openai, "a1111": self.a1111, "bfl": self.bfl, "chat": self.chat}

    def urls(self, base_url: str) -> dict[str, str]:
        """Every client base URL of every emulator, for a sandbox served at ``base_url``."""
        urls: dict[str, str] = {}
        for emulator in self.emulators().values():
            urls.update(emulator.public_urls(base_url.rstrip("/")))
        return urls

    def close(self) -> None:
        """Release stalled requests in every emulator."""
        for emulator in self.emulators().values():
            emulator.close()

    def app(self) -> Starlette:
        """One app: a JSON index at ``/``, each emulator under its prefixes, then the one root mount if any."""
        routes: list[Route | Mount] = [Route("/", self._index, methods=["GET"])]
        root: list[Route | Mount] = []
        for emulator in self.emulators().values():
            for prefix, app in emulator.mounts().items():
                (routes if prefix else root).append(Mount(f"/{prefix}" if prefix else "", app=app))
        if len(root) > 1:
            raise ValueError("only one emulator can be served at the sandbox's root")
        return Starlette(routes=routes + root)

    async def _index(self, request: Request) -> JSONResponse:
        base = str(request.base_url).rstrip("/")
        emulators = {
            name: {"mounts": [f"{base}/{prefix}" for prefix in emulator.mounts()], "urls": emulator.public_urls(base)}
            for name, emulator in self.emulators().items()
        }
        return JSONResponse({"emulators": emulators, "urls": self.urls(base)})


@dataclass(frozen=True)
class RunningSandbox:
    """A sandbox being served: where to reach it, and its emulators for fault knobs."""

    sandbox: Sandbox
    host: str
    port: int
    base_url: str
    urls: dict[str, str]


class _QuietH11Protocol(H11Protocol):
    """h11 without the access log, decided per connection so global logging stays untouched."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.access_log = False


_UVICORN_LOG = logging.getLogger("uvicorn.error")


class _QuietStartFilter(logging.Filter):
    """Drops uvicorn's "running on ... (Press CTRL+C to quit)" line for the sandbox's own port.

    The sandbox runs inside another program (``limner serve``, the CLI, a test) that announces the
    addresses itself; Ctrl+C belongs to that program. Only the line naming this port is dropped, so the
    host program's own uvicorn keeps its message.
    """

    def __init__(self, port: int) -> None:
        super().__init__()
        self.port = port

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (message.startswith("Uvicorn running on") and f":{self.port} " in message)


class _EmbeddedServer(uvicorn.Server):
    """uvicorn that leaves signals to its host program and stops as soon as it is asked."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = asyncio.Event()
        self._stop = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        """Install nothing: SIGINT and SIGTERM belong to the program that hosts the sandbox."""
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """Start, then tell :func:`serve_sandbox` it may hand out the address."""
        await super().startup(sockets=sockets)
        self.ready.set()

    async def main_loop(self) -> None:
        """Wake on :meth:`stop` instead of polling every 100 ms, so tests do not wait for ticks."""
        counter = 0
        while not await self.on_tick(counter):
            counter = (counter + 10) % 864000
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=1.0)

    def stop(self) -> None:
        """Ask the server to shut down gracefully."""
        self.should_exit = True
        self._stop.set()


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY on accepted sockets only when the listening
    # socket says it is TCP; without it small answers stall ~40 ms on Nagle plus delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


@asynccontextmanager
async def serve_sandbox(
    sandbox: Sandbox | None = None, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[RunningSandbox]:
    """Serve ``sandbox`` (a fresh one by default) on ``host:port`` for the duration of the block."""
    sandbox = sandbox or Sandbox()
    sock = _bind(host, port)
    real_port = sock.getsockname()[1]
    config = uvicorn.Config(
        sandbox.app(),
        host=host,
        port=real_port,
        log_config=None,
        lifespan="off",
        http=_QuietH11Protocol,
        ws="none",
        timeout_graceful_shutdown=_SHUTDOWN_GRACE_SECONDS,
    )
    server = _EmbeddedServer(config)
    quiet = _QuietStartFilter(real_port)
    _UVICORN_LOG.addFilter(quiet)
    task = asyncio.create_task(server.serve(sockets=[sock]), name=f"limner-sandbox:{real_port}")
    try:
        try:
            try:
                await _wait_ready(server, task)
            finally:
                _UVICORN_LOG.removeFilter(quiet)
            url_host = f"[{host}]" if ":" in host else host
            base_url = f"http://{url_host}:{real_port}"
            yield RunningSandbox(sandbox, host, real_port, base_url, sandbox.urls(base_url))
        except BaseException:
            await _stop(server, task, sandbox)
            raise
        failure = await _stop(server, task, sandbox)
        if failure is not None:
            raise RuntimeError("the sandbox server failed") from failure
    finally:
        sock.close()


async def _wait_ready(server: _EmbeddedServer, task: asyncio.Task[None]) -> None:
    ready = asyncio.ensure_future(server.ready.wait())
    try:
        await asyncio.wait({ready, task}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        ready.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ready
    if not server.ready.is_set():
        exc = task.exception() if task.done() and not task.cancelled() else None
        raise RuntimeError("the sandbox server did not start") from exc


async def _stop(server: _EmbeddedServer, task: asyncio.Task[None], sandbox: Sandbox) -> BaseException | None:
    """Stop even when the caller is being cancelled (a leaked server leaks its socket).

    Returns the server task's own failure, if it had one, for the caller to report.
    """
    with anyio.CancelScope(shield=True):
        sandbox.close()
        server.stop()
        with anyio.move_on_after(_STOP_TIMEOUT_SECONDS):
            await asyncio.wait({task})
        if not task.done():
            task.cancel()
            await asyncio.wait({task})
    if task.cancelled():
        return None
    return task.exception()
