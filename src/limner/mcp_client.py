"""Connections to the configured MCP servers: discovery, calls, and results as text plus ImageOutputs.

Boundary: an adapter, like a backend. It knows nothing of the image library, the database or users;
the tools layer stores the :class:`~limner.backends.base.ImageOutput` bytes it returns and fills the
``{{image:N}}`` placeholders with the new image IDs. The pieces live in three modules and are all
exported here: :mod:`limner.mcp_client_config` (the servers file, tool names),
:mod:`limner.mcp_client_results` (normalising results) and this one (connections).

Each server gets one SDK :class:`mcp.Client`, opened on first use and shared by every caller (JSON-RPC
multiplexes concurrent requests). The client lives in a task of its own, because the SDK's transports
hold anyio task groups that must be entered and left by the same task while calls come from many. A
stdio server whose process dies is noticed when its output ends; the next call starts it again. The
SDK's 1 MiB SSE event cap is raised to ``max_response_bytes`` so that multi-megabyte images survive
Streamable HTTP (``shared/apis/mcp.md`` §8.2).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from dataclasses import dataclass, field
from pathlib import PurePath
from types import TracebackType
from typing import Any, Self, TextIO, cast

import httpx2
from mcp.client.client import Client
from mcp.client.sse import sse_client
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.dispatcher import ProgressFnT
from mcp.shared.exceptions import MCPError
from mcp.types import CallToolResult, Implementation, ReadResourceResult
from mcp_types import CONNECTION_CLOSED, INVALID_REQUEST, REQUEST_TIMEOUT
from pydantic import ValidationError

from limner import __version__
from limner.backends.base import Progress, ProgressCallback
from limner.errors import ProviderResponseError, ProviderUnavailableError, ToolNotFoundError, redact
from limner.mcp_client_config import (
    DEFAULT_INIT_TIMEOUT,
    DEFAULT_TIMEOUT,
    MCPServerConfig,
    MCPTransport,
    load_mcp_config,
    parse_mcp_servers,
    qualified_name,
)
from limner.mcp_client_results import (
    PLACEHOLDER_PATTERN,
    MCPToolOutput,
    ResourceReader,
    fill_image_placeholders,
    normalise_result,
    placeholder,
)
from limner.net import FetchPolicy, create_http_client

__all__ = [
    "DEFAULT_INIT_TIMEOUT",
    "DEFAULT_MAX_RESPONSE_BYTES",
    "DEFAULT_TIMEOUT",
    "PLACEHOLDER_PATTERN",
    "MCPConnections",
    "MCPServerConfig",
    "MCPToolInfo",
    "MCPToolOutput",
    "MCPTransport",
    "ResourceReader",
    "fill_image_placeholders",
    "load_mcp_config",
    "normalise_result",
    "parse_mcp_servers",
    "placeholder",
    "qualified_name",
]

log = logging.getLogger(__name__)

# The SDK imports jsonschema on the first result with an output schema, and that import reads schema
# files from disk: done here, at import time, it never blocks the event loop in the middle of a call.
importlib.import_module("jsonschema")

PROVIDER = "mcp"
DEFAULT_MAX_RESPONSE_BYTES = 64 * 1024 * 1024
_MAX_TOOL_PAGES = 100
_HTTP_CONNECT_TIMEOUT = 10.0
_STOP_TIMEOUT = 10.0
# What the SDK raises (as RuntimeError) for structured content that breaks the tool's output schema.
_OUTPUT_SCHEMA_FAILURE = re.compile(r"Tool .+ has an output schema but|Invalid (schema|structured content)")


@dataclass(frozen=True)
class MCPToolInfo:
    """One tool a server offers, as ``tools/list`` described it."""

    server: str
    name: str
    description: str
    input_schema: dict[str, Any]
    title: str | None = None

    @property
    def qualified_name(self) -> str:
        """The collision-free, LLM-safe name (see :func:`qualified_name`)."""
        return qualified_name(self.server, self.name)


# --- one connection --------------------------------------------------------------------------------


class _WatchedReadStream:
    """The transport's read stream, reporting when it ends (for stdio: the server process is gone)."""

    def __init__(self, inner: Any, on_end: asyncio.Event) -> None:
        self._inner = inner
        self._on_end = on_end

    @property
    def last_context(self) -> Any:
        """Passed through: the SDK's dispatcher reads the sender's contextvars from it."""
        return getattr(self._inner, "last_context", None)

    async def receive(self) -> Any:
        try:
            return await self._inner.receive()
        except asyncio.CancelledError:
            raise
        except BaseException:
            self._on_end.set()
            raise

    async def aclose(self) -> None:
        await self._inner.aclose()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Any:
        try:
            return await self._inner.__anext__()
        except asyncio.CancelledError:
            raise
        except BaseException:
            self._on_end.set()
            raise

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


@contextlib.asynccontextmanager
async def _watched(transport: AbstractAsyncContextManager[Any], ended: asyncio.Event) -> AsyncIterator[Any]:
    async with transport as (read_stream, write_stream):
        yield _WatchedReadStream(read_stream, ended), write_stream


class _Connection:
    """One open SDK client, owned by a dedicated task from opening to closing."""

    def __init__(self, config: MCPServerConfig, max_response_bytes: int) -> None:
        self.config = config
        self._max_response_bytes = max_response_bytes
        self._ready = asyncio.Event()
        self._stop = asyncio.Event()
        self._ended = asyncio.Event()
        self._client: Client | None = None
        self._failure: BaseException | None = None
        self._task: asyncio.Task[None] | None = None
        self.stale = False

    @property
    def usable(self) -> bool:
        """Open, and neither ended nor found broken by a call."""
        return self._client is not None and not self._ended.is_set() and not self._stop.is_set() and not self.stale

    @property
    def client(self) -> Client:
        """The open client; only valid after :meth:`open` returned."""
        assert self._client is not None
        return self._client

    async def open(self) -> None:
        """Start the owner task and wait until the handshake is done (it gives up after ``init_timeout``).

        If the caller is cancelled meanwhile, the owner is told to stop and does so once its bounded
        start is over, so an abandoned start never leaves a server process behind.
        """
        self._task = asyncio.create_task(self._own(), name=f"limner-mcp:{self.config.name}")
        try:
            await _first(self._task, self._ready.wait())
        except asyncio.CancelledError:
            self._stop.set()
            raise
        if self._client is None:
            await self.close()
            if isinstance(self._failure, TimeoutError):
                raise _unavailable(
                    self.config,
                    f"did not finish starting within {self.config.init_timeout:g} s",
                    "Check that it starts on its own, or raise its initTimeout.",
                )
            raise _start_failure(self.config, self._failure)

    async def _own(self) -> None:
        try:
            async with AsyncExitStack() as stack:
                async with asyncio.timeout(self.config.init_timeout):
                    transport = await _transport(self.config, stack, self._max_response_bytes)
                    client = Client(
                        _watched(transport, self._ended),
                        cache=None,
                        client_info=Implementation(name="limner", version=__version__),
                    )
                    await stack.enter_async_context(client)
                self._client = client
                self._ready.set()
                await _first(self._stop.wait(), self._ended.wait())
        except Exception as exc:
            self._failure = exc
            if self._client is not None:
                log.info("MCP server %r: connection ended: %s", self.config.name, redact(str(exc), limit=200))
        finally:
            self._ended.set()

    async def close(self) -> None:
        """Ask the owner task to leave the client (which stops a stdio server) and wait for it."""
        self._stop.set()
        if self._task is None:
            return
        done, _ = await asyncio.wait({self._task}, timeout=_STOP_TIMEOUT)
        if not done:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


async def _first(*awaitables: Awaitable[Any]) -> None:
    """Wait until the first of ``awaitables`` completes; the others are cancelled (tasks given are not)."""
    futures = [asyncio.ensure_future(a) for a in awaitables]
    owned = [f for f, a in zip(futures, awaitables, strict=True) if f is not a]
    try:
        await asyncio.wait(futures, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for future in owned:
            future.cancel()


async def _transport(
    config: MCPServerConfig, stack: AsyncExitStack, max_response_bytes: int
) -> AbstractAsyncContextManager[Any]:
    """The SDK transport for ``config``; HTTP clients are built off the event loop (CA bundle loading)."""
    if config.transport == "stdio":
        assert config.command is not None
        params = StdioServerParameters(
            command=config.command, args=list(config.args), env=dict(config.env) or None, cwd=config.cwd
        )
        errlog = cast(TextIO, subprocess.DEVNULL) if config.stderr == "ignore" else sys.stderr
        return stdio_client(params, errlog=errlog)
    assert config.url is not None
    http = await asyncio.to_thread(
        create_http_client,
        timeout=config.timeout + _HTTP_CONNECT_TIMEOUT,
        connect_timeout=_HTTP_CONNECT_TIMEOUT,
        proxy=config.proxy,
        headers=config.headers,
    )
    if config.transport == "sse":
        # sse_client enters (and closes) the client its factory returns; aclose is idempotent, so the
        # callback only matters when the transport fails before taking it over.
        stack.push_async_callback(http.aclose)

        def factory(
            headers: dict[str, str] | None = None,
            timeout: httpx2.Timeout | None = None,
            auth: httpx2.Auth | None = None,
        ) -> httpx2.AsyncClient:
            return http

        return cast(
            AbstractAsyncContextManager[Any],
            sse_client(config.url, httpx_client_factory=factory, sse_read_timeout=config.timeout + 30),
        )
    await stack.enter_async_context(http)
    return streamable_http_client(config.url, http_client=http, max_sse_event_size=max_response_bytes)


def _unavailable(config: MCPServerConfig, what: str, hint: str, tool: str | None = None) -> ProviderUnavailableError:
    subject = f"The MCP server {config.name!r}" + (f" (tool {tool!r})" if tool else "")
    return ProviderUnavailableError(f"{subject} {what}.", provider=PROVIDER, endpoint=config.name, hint=hint)


def _start_failure(config: MCPServerConfig, failure: BaseException | None) -> ProviderUnavailableError:
    leaves = list(_leaf_exceptions(failure)) if failure is not None else []
    reason = "; ".join(dict.fromkeys(redact(str(e) or type(e).__name__, limit=200) for e in leaves)) or "no reason"
    where = f"command {config.command!r}" if config.transport == "stdio" else f"URL {_safe_url(config.url)}"
    return _unavailable(
        config,
        f"could not be started or reached ({reason})",
        f"Check its {where} and the rest of its entry in the MCP servers file.",
    )


def _leaf_exceptions(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaf_exceptions(inner)]
    return [exc]


def _safe_url(url: str | None) -> str:
    """Scheme and host only: some servers carry their key in the URL's path or query."""
    if not url:
        return "(none)"
    parsed = httpx2.URL(url)
    return f"{parsed.scheme}://{parsed.netloc.decode('ascii', 'replace')}/..."


# --- the set of connections ------------------------------------------------------------------------


@dataclass
class _ServerState:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    connection: _Connection | None = None
    tools: list[MCPToolInfo] | None = None


class MCPConnections:
    """Lazily opened, shared, self-healing clients for the configured servers; close with :meth:`aclose`.

    Safe for concurrent use by many callers: calls on one server share its client, opening is
    serialised per server, and a hung call affects only its own caller (it times out and is cancelled).
    """

    def __init__(
        self, servers: Mapping[str, MCPServerConfig], *, max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES
    ) -> None:
        self._configs = dict(servers)
        self._states = {name: _ServerState() for name in self._configs}
        self._max_response_bytes = max_response_bytes
        self._closed = False

    @property
    def servers(self) -> Mapping[str, MCPServerConfig]:
        """The configured servers, by name."""
        return self._configs

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close every connection (stdio servers are stopped); later calls fail."""
        self._closed = True
        connections = [s.connection for s in self._states.values() if s.connection is not None]
        for state in self._states.values():
            state.connection = None
        await asyncio.gather(*(c.close() for c in connections))

    async def list_tools(self, server: str, *, refresh: bool = False) -> list[MCPToolInfo]:
        """The server's tools (every page), cached until ``refresh`` or a restart of the server."""
        state = self._state(server)
        if state.tools is not None and not refresh:
            return state.tools
        config = self._configs[server]
        tools: list[MCPToolInfo] = []
        cursor: str | None = None
        client = await self._client(server)
        async with self._guard(config, None, config.timeout, "listing its tools"):
            for _page in range(_MAX_TOOL_PAGES):
                page = await client.list_tools(cursor=cursor)
                tools += [
                    MCPToolInfo(server, t.name, t.description or "", dict(t.input_schema), t.title) for t in page.tools
                ]
                cursor = page.next_cursor
                if cursor is None:
                    break
        state.tools = tools
        return tools

    async def call_tool(
        self,
        server: str,
        tool: str,
        arguments: Mapping[str, Any] | None = None,
        *,
        timeout_seconds: float | None = None,
        progress: ProgressCallback | None = None,
    ) -> CallToolResult:
        """Call a tool; the raw result. Every failure is a :class:`LimnerError` naming server and tool:
        :class:`ProviderUnavailableError` for timeouts and dead or unreachable servers,
        :class:`ProviderResponseError` for JSON-RPC errors and results that break the protocol.
        """
        try:
            return await self._call(server, tool, arguments, timeout_seconds, progress)
        except MCPError as exc:
            raise _response_error(self._configs[server], tool, exc) from exc

    async def run_tool(
        self,
        server: str,
        tool: str,
        arguments: Mapping[str, Any] | None = None,
        *,
        fetch_policy: FetchPolicy,
        allowed_paths: Sequence[PurePath | str] | None = None,
        timeout_seconds: float | None = None,
        progress: ProgressCallback | None = None,
        max_image_bytes: int | None = None,
        http_client: httpx2.AsyncClient | None = None,
    ) -> MCPToolOutput:
        """Call a tool and normalise its result (see :func:`normalise_result`).

        A JSON-RPC error answer becomes an output with ``is_error=True`` (the model can adapt to it,
        as to an ``isError`` result); a timeout or a dead server raises, as in :meth:`call_tool`.
        ``allowed_paths`` defaults to the server's ``allowedPaths``.
        """
        config = self._state_config(server)
        try:
            result = await self._call(server, tool, arguments, timeout_seconds, progress)
        except MCPError as exc:
            return MCPToolOutput(text=_response_error(config, tool, exc).message, images=[], is_error=True)
        except ProviderResponseError as exc:
            return MCPToolOutput(text=exc.message, images=[], is_error=True)

        async def read(uri: str) -> ReadResourceResult:
            return await self.read_resource(server, uri, timeout_seconds=timeout_seconds)

        return await normalise_result(
            result,
            server=server,
            tool=tool,
            fetch_policy=fetch_policy,
            allowed_paths=config.allowed_paths if allowed_paths is None else allowed_paths,
            read_resource=read,
            max_image_bytes=max_image_bytes,
            http_client=http_client,
        )

    async def read_resource(self, server: str, uri: str, *, timeout_seconds: float | None = None) -> ReadResourceResult:
        """``resources/read`` on ``server``; failures are LimnerErrors naming the server."""
        config = self._state_config(server)
        client = await self._client(server)
        async with self._guard(config, None, timeout_seconds or config.timeout, f"reading {uri}"):
            try:
                return await client.read_resource(uri)
            except MCPError as exc:
                raise ProviderResponseError(
                    f"The MCP server {server!r} could not read the resource {uri}: {redact(exc.message, limit=300)}",
                    provider=PROVIDER,
                    endpoint=server,
                ) from exc

    async def _call(
        self,
        server: str,
        tool: str,
        arguments: Mapping[str, Any] | None,
        timeout_seconds: float | None,
        progress: ProgressCallback | None,
    ) -> CallToolResult:
        config = self._state_config(server)
        client = await self._client(server)
        limit = timeout_seconds or config.timeout
        callback = _progress_forwarder(progress, server, tool) if progress is not None else None
        async with self._guard(config, tool, limit, "answering"):
            return await client.call_tool(tool, dict(arguments or {}), progress_callback=callback)

    @contextlib.asynccontextmanager
    async def _guard(self, config: MCPServerConfig, tool: str | None, limit: float, doing: str) -> AsyncIterator[None]:
        """One deadline and one translation of transport failures for a request to ``config``'s server."""
        try:
            async with asyncio.timeout(limit):
                yield
        except TimeoutError:
            raise _unavailable(
                config,
                f"did not finish {doing} within {limit:g} s; the request was cancelled",
                "Try again; if it keeps happening, the server may be stuck, or its timeout too short.",
                tool,
            ) from None
        except MCPError as exc:
            if exc.code in (CONNECTION_CLOSED, REQUEST_TIMEOUT) or _session_lost(exc):
                self._mark_stale(config.name)
                raise _unavailable(
                    config,
                    f"lost the connection ({redact(exc.message, limit=200)})",
                    "It will be restarted or reconnected on the next call.",
                    tool,
                ) from exc
            raise
        except ValidationError as exc:
            raise _protocol_violation(config, tool, f"{exc.error_count()} problem(s)") from exc
        except RuntimeError as exc:
            if not _OUTPUT_SCHEMA_FAILURE.match(str(exc)):
                raise
            raise _protocol_violation(config, tool, redact(str(exc), limit=300)) from exc

    def _state(self, server: str) -> _ServerState:
        if server not in self._states:
            known = ", ".join(sorted(self._states)) or "none"
            raise ToolNotFoundError(f"No MCP server named {server!r} is configured (configured: {known}).")
        return self._states[server]

    def _state_config(self, server: str) -> MCPServerConfig:
        self._state(server)
        return self._configs[server]

    def _mark_stale(self, server: str) -> None:
        connection = self._states[server].connection
        if connection is not None:
            connection.stale = True

    async def _client(self, server: str) -> Client:
        """The server's open client, (re)starting it when there is none or the last one died."""
        if self._closed:
            raise self._closed_error(server)
        state = self._state(server)
        current = state.connection
        if current is not None and current.usable:
            return current.client
        async with state.lock:
            current = state.connection
            if current is not None and current.usable:
                return current.client
            if current is not None:
                log.info("MCP server %r: restarting after its connection ended", server)
                state.connection = None
                state.tools = None
                await current.close()
            connection = _Connection(self._configs[server], self._max_response_bytes)
            await connection.open()
            if self._closed:  # aclose() ran while this one was starting
                await connection.close()
                raise self._closed_error(server)
            state.connection = connection
            return connection.client

    @staticmethod
    def _closed_error(server: str) -> ProviderUnavailableError:
        return ProviderUnavailableError(
            "The MCP connections are closed (limner is shutting down).",
            provider=PROVIDER,
            endpoint=server,
            hint="Try again once limner has restarted.",
        )


def _protocol_violation(config: MCPServerConfig, tool: str | None, detail: str) -> ProviderResponseError:
    subject = f"The MCP server {config.name!r}" + (f" (tool {tool!r})" if tool else "")
    return ProviderResponseError(
        f"{subject} sent an answer that does not follow the MCP protocol ({detail}).",
        provider=PROVIDER,
        endpoint=config.name,
        hint="The server may be outdated or faulty; check its version.",
    )


def _session_lost(exc: MCPError) -> bool:
    return exc.code == INVALID_REQUEST and "Session terminated" in exc.message


def _response_error(config: MCPServerConfig, tool: str, exc: MCPError) -> ProviderResponseError:
    message = redact(exc.message, limit=500)
    return ProviderResponseError(
        f"The MCP tool {tool!r} of server {config.name!r} failed: {message} (JSON-RPC error {exc.code}).",
        provider=PROVIDER,
        endpoint=config.name,
        hint="Check the arguments; if they are right, the server itself failed.",
    )


def _progress_forwarder(callback: ProgressCallback, server: str, tool: str) -> ProgressFnT:
    """Adapt MCP progress notifications to limner's :class:`Progress`; a failing callback is logged only."""

    async def forward(progress: float, total: float | None, message: str | None) -> None:
        fraction = min(1.0, max(0.0, progress / total)) if total else None
        try:
            await callback(Progress(fraction=fraction, message=message))
        except Exception:
            log.exception("progress callback failed for MCP tool %r of %r", tool, server)

    return forward
