"""The emulated MCP image server as one ASGI app: Streamable HTTP, legacy HTTP+SSE and the file route.

Routes, relative to where the app is mounted (:meth:`MCPImagesEmulator.mounts` suggests
``/mcp-images``):

- ``/mcp``: Streamable HTTP (both protocol eras, as ``MCPServer`` serves them);
- ``GET /sse`` + ``POST /messages/``: the legacy HTTP+SSE transport of 2024-11-05;
- ``GET /files/{name}``: the images the tools made, for the URLs they answer with.

The SDK's Streamable HTTP app needs its session manager running, which it normally arranges in its
lifespan. The sandbox runner serves with the lifespan off (it mounts several emulators), so this app
starts the session manager on its first request instead, and also honours a lifespan when a server
runs one (uvicorn serving this app directly); :meth:`MCPImagesEmulator.close` or the lifespan's
shutdown stops it. This module imports nothing from limner outside ``limner.sandbox``.
"""

from __future__ import annotations

import asyncio
import contextlib

from mcp.server.mcpserver import MCPServer
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from starlette.applications import Starlette
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from limner.sandbox.mcp_servers import BASE_PATH_SCOPE_KEY, ImagesServerState, build_images_server

__all__ = ["MCPImagesEmulator"]

MOUNT_PREFIX = "mcp-images"


class _SessionManagerRunner:
    """Runs the SDK's session manager in a task of its own, started on first need, stopped on request.

    ``StreamableHTTPSessionManager.run()`` may be entered once per manager and must stay entered while
    requests are served, so it lives in a dedicated task rather than in any request's task.
    """

    def __init__(self, manager: StreamableHTTPSessionManager) -> None:
        self._manager = manager
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._stop = asyncio.Event()
        self._lock = asyncio.Lock()

    async def ensure_started(self) -> None:
        """Start the manager unless it runs already; return once it accepts requests."""
        if self._ready.is_set():
            return
        async with self._lock:
            if self._task is None:
                self._task = asyncio.create_task(self._run(), name="limner-sandbox:mcp-session-manager")
        ready = asyncio.ensure_future(self._ready.wait())
        try:
            await asyncio.wait({ready, self._task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ready.cancel()
        if not self._ready.is_set():
            raise RuntimeError("the MCP session manager did not start") from self._task.exception()

    async def _run(self) -> None:
        async with self._manager.run():
            self._ready.set()
            await self._stop.wait()

    def stop(self) -> None:
        """Ask the manager to stop (its sessions are cancelled); safe to call at any time."""
        self._stop.set()

    async def wait_stopped(self) -> None:
        """Stop, and wait until the manager's task has finished."""
        self.stop()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class MCPImagesEmulator:
    """The ``images`` MCP server over HTTP, following the sandbox's emulator protocol.

    ``state`` is shared with the tools (the image store, ``cancelled_hangs``). ``transport_security``
    is the SDK's DNS-rebinding guard; its default admits loopback host names only, so serving the
    sandbox under another name needs ``TransportSecuritySettings(allowed_hosts=[...])``.
    """

    def __init__(
        self,
        *,
        state: ImagesServerState | None = None,
        transport_security: TransportSecuritySettings | None = None,
    ) -> None:
        self.state = state or ImagesServerState()
        self.server: MCPServer = build_images_server(self.state)
        streamable = self.server.streamable_http_app(streamable_http_path="/mcp", transport_security=transport_security)
        legacy = self.server.sse_app(sse_path="/sse", message_path="/messages/", transport_security=transport_security)
        self._runner = _SessionManagerRunner(self.server.session_manager)
        self._inner = Starlette(routes=_merge_routes(streamable.routes, legacy.routes))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve a request, starting the session manager first when it is not running yet."""
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] == "http":
            await self._runner.ensure_started()
            scope = {**scope, BASE_PATH_SCOPE_KEY: scope.get("root_path", "")}
        await self._inner(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self._runner.ensure_started()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self._runner.wait_stopped()
                await send({"type": "lifespan.shutdown.complete"})
                return

    def mounts(self) -> dict[str, ASGIApp]:
        """Prefix → app, for the sandbox runner."""
        return {MOUNT_PREFIX: self}

    def public_urls(self, base_url: str) -> dict[str, str]:
        """The endpoints a client configures, for the app mounted at ``base_url/mcp-images``."""
        root = f"{base_url.rstrip('/')}/{MOUNT_PREFIX}"
        return {"mcp_images": f"{root}/mcp", "mcp_images_sse": f"{root}/sse"}

    def close(self) -> None:
        """Stop the session manager so open streams end and the server can shut down."""
        self._runner.stop()

    async def aclose(self) -> None:
        """As :meth:`close`, and wait until the manager has finished."""
        await self._runner.wait_stopped()


def _merge_routes(*route_lists: list[BaseRoute]) -> list[BaseRoute]:
    """Both SDK apps carry the custom ``/files`` route; keep the first route of each path."""
    merged: list[BaseRoute] = []
    seen: set[str] = set()
    for routes in route_lists:
        for route in routes:
            path = route.path if isinstance(route, Route | Mount) else repr(route)
            if path not in seen:
                seen.add(path)
                merged.append(route)
    return merged
