"""limner's own MCP server: every available ToolSpec as an MCP tool, over stdio or streamable HTTP.

A front end (DESIGN §2): it turns MCP requests into :func:`~limner.tools.base.run_tool` calls on behalf of
one user and turns each :class:`~limner.tools.base.ToolResult` into an MCP result. Who the user is never
comes from the client's messages: stdio serves the one user the command was started for; HTTP resolves the
user from limner's API bearer token on every request (:class:`MCPHTTPApp`), and the library checks the
owner of every image ID a call names, so another user's ID fails exactly like a missing one.

What a result carries:
- a text block: the tool's text for the model (it always names the image IDs);
- one ``image`` block per image the tool shows (new images, ``image_view``): the stored bytes, base64.
  Over HTTP the whole result travels as one SSE event when the server streams (progress, long calls), and
  the Python SDK's client refuses events over 1 MiB, so a result's images share a byte budget
  (:data:`HTTP_INLINE_BUDGET`): an image over its share is sent as a smaller copy (or not at all when even
  the smallest copy does not fit), the text says so, and the original stays readable as the resource
  ``limner://images/{id}``;
- ``structuredContent`` matching :data:`OUTPUT_SCHEMA`, published as every tool's ``outputSchema``.
Tool failures are ``isError`` results with the error's message and hint; an unknown tool is a protocol error.
"""

from __future__ import annotations

import base64
import copy
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol

import anyio.to_thread
from mcp import MCPError, types
from mcp.server import Server
from mcp.server.context import ServerRequestContext
from mcp.server.stdio import stdio_server
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from limner import __version__
from limner.backends.base import Progress, ProgressCallback
from limner.db.models import User
from limner.db.repositories import UserRepository
from limner.errors import ImageNotFoundError, InputError, LimnerError, ToolNotFoundError
from limner.imaging import extension_for, vision_copy
from limner.library import ImageRecord
from limner.runtime import Runtime
from limner.tools.base import ToolResult, ToolSpec, failed_result, run_tool

__all__ = [
    "HTTP_INLINE_BUDGET",
    "IMAGE_URI_PREFIX",
    "OUTPUT_SCHEMA",
    "MCPHTTPApp",
    "TokenCacheLike",
    "UserResolver",
    "build_mcp_server",
    "create_mcp_http_app",
    "serve_stdio",
    "stdio_user_id",
]

log = logging.getLogger(__name__)

SERVER_NAME = "limner"
IMAGE_URI_PREFIX = "limner://images/"
HTTP_INLINE_BUDGET = 720 * 1024
"""Raw image bytes per HTTP result: base64 (4/3) plus the texts stay under the SDK client's 1 MiB SSE event."""
_SHRINK_SIDES = (1024, 768, 512, 384, 256)
_THREAD_BASE64_BYTES = 256 * 1024
_RESOURCE_PAGE = 50
_USER_STATE_KEY = "limner_mcp_user_id"

INSTRUCTIONS = (
    "limner generates and edits images and keeps each one under an ID (img_...). To change an image, pass its "
    "ID to an edit tool; image_list finds the user's images and their IDs; image_view shows one again. Images "
    f"are also resources: {IMAGE_URI_PREFIX}{{image_id}} gives the original bytes."
)

ShownAs = Literal["original", "downscaled", "omitted"]

OUTPUT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "text": {"type": "string", "description": "What the model reads (the same as the text block)."},
        "image_ids": {
            "type": "array",
            "items": {"type": "string"},
            "description": "Every image the result names: new images, the viewed image, or the listed images.",
        },
        "images": {
            "type": "array",
            "description": "The images this result shows, in the order of its image blocks.",
            "items": {
                "type": "object",
                "properties": {
                    "id": {"type": "string"},
                    "width": {"type": "integer"},
                    "height": {"type": "integer"},
                    "media_type": {"type": "string"},
                    "byte_size": {"type": "integer"},
                    "uri": {"type": "string", "description": "Read this resource for the original bytes."},
                    "shown": {
                        "enum": ["original", "downscaled", "omitted"],
                        "description": "Whether the image block holds the original, a smaller copy, or nothing.",
                    },
                },
                "required": ["id", "width", "height", "media_type", "byte_size", "uri", "shown"],
            },
        },
    },
    "required": ["text", "image_ids", "images"],
}
"""The ``outputSchema`` of every tool (written out, without ``$ref``, so that every client can read it)."""

Context = ServerRequestContext[Any, Any]
UserResolver = Callable[[Context], Awaitable[str]]
"""Who a request acts for: a fixed user on stdio, the token's owner on HTTP. Never read from the message."""


@dataclass(frozen=True, slots=True)
class _Shown:
    record: ImageRecord
    block: types.ImageContent | None
    shown: ShownAs
    max_side: int | None = None


class _Handlers:
    """The request handlers of one server; every handler resolves its user first."""

    def __init__(self, runtime: Runtime, user_for: UserResolver, inline_budget: int | None) -> None:
        self.runtime = runtime
        self.user_for = user_for
        self.inline_budget = inline_budget

    # --- tools ----------------------------------------------------------------------------------

    async def list_tools(self, ctx: Context, params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        """The tools that can run now (an unconfigured family's tools are not offered)."""
        return types.ListToolsResult(tools=[_tool(spec) for spec in self.runtime.tools().values()])

    def input_schema(self, name: str) -> dict[str, Any] | None:
        """For the SDK's 2026 header checks, without running the list handler."""
        spec = self.runtime.tools().get(name)
        return spec.json_schema() if spec is not None else None

    async def call_tool(self, ctx: Context, params: types.CallToolRequestParams) -> types.CallToolResult:
        """Run as the request's user; a failure is a result the model can read, never a protocol error."""
        try:
            spec = self.runtime.tool(params.name)
        except ToolNotFoundError:
            raise MCPError(types.INVALID_PARAMS, f"Unknown tool: {params.name}") from None
        except LimnerError as exc:  # known but unavailable: say what to configure
            return _failure(failed_result(exc, params.name))
        user_id = await self.user_for(ctx)
        tool_ctx = self.runtime.tool_context(user_id, progress=_progress_reporter(ctx))
        try:
            result = await run_tool(spec, params.arguments or {}, tool_ctx)
            if result.is_error:
                return _failure(result)
            return await self._success(user_id, result)
        except Exception as exc:  # failed_result logs what is not ours; the model gets a fixed text
            return _failure(failed_result(exc, params.name))

    async def _success(self, user_id: str, result: ToolResult) -> types.CallToolResult:
        shown = await self._show(user_id, result.images)
        notes = [_note(item) for item in shown if item.shown != "original"]
        text = "\n".join([result.text, *notes])
        content: list[types.ContentBlock] = [types.TextContent(text=text)]
        content += [item.block for item in shown if item.block is not None]
        named = result.metadata.get("image_ids")
        image_ids = [str(i) for i in named] if isinstance(named, list) else [r.id for r in result.images]
        structured = {"text": text, "image_ids": image_ids, "images": [_image_entry(item) for item in shown]}
        return types.CallToolResult(content=content, structured_content=structured)

    async def _show(self, user_id: str, records: Sequence[ImageRecord]) -> list[_Shown]:
        """The images as blocks, within the budget; read again for this owner (never by ID alone)."""
        if not records:
            return []
        found = await self.runtime.library.read_many(user_id, [r.id for r in records])
        share = None if self.inline_budget is None else self.inline_budget // len(found)
        return [await _inline(record, data, share) for record, data in found]

    # --- resources: the originals, by URI -------------------------------------------------------

    async def list_resources(
        self, ctx: Context, params: types.PaginatedRequestParams | None
    ) -> types.ListResourcesResult:
        """The user's images, newest first; the cursor is the last ID of the previous page."""
        user_id = await self.user_for(ctx)
        cursor = params.cursor if params is not None else None
        records = await self.runtime.library.recent(user_id, limit=_RESOURCE_PAGE, before=cursor)
        next_cursor = records[-1].id if len(records) == _RESOURCE_PAGE else None
        return types.ListResourcesResult(resources=[_resource(r) for r in records], next_cursor=next_cursor)

    async def list_resource_templates(
        self, ctx: Context, params: types.PaginatedRequestParams | None
    ) -> types.ListResourceTemplatesResult:
        """One template: any of the user's images by ID."""
        template = types.ResourceTemplate(
            name="image",
            title="An image by ID",
            uri_template=IMAGE_URI_PREFIX + "{image_id}",
            description="One of your images (img_...), in its stored format and size.",
        )
        return types.ListResourceTemplatesResult(resource_templates=[template])

    async def read_resource(self, ctx: Context, params: types.ReadResourceRequestParams) -> types.ReadResourceResult:
        """An owned image's bytes; unknown, foreign and malformed URIs are the same protocol error."""
        user_id = await self.user_for(ctx)
        image_id = params.uri.removeprefix(IMAGE_URI_PREFIX) if params.uri.startswith(IMAGE_URI_PREFIX) else ""
        try:
            ((record, data),) = await self.runtime.library.read_many(user_id, [image_id])
        except ImageNotFoundError as exc:
            raise MCPError(types.INVALID_PARAMS, f"Resource not found: {exc.message}") from None
        blob = types.BlobResourceContents(uri=params.uri, mime_type=record.media_type, blob=await _base64(data))
        return types.ReadResourceResult(contents=[blob])


def build_mcp_server(
    runtime: Runtime, user_id_for_request: UserResolver, *, inline_budget: int | None = HTTP_INLINE_BUDGET
) -> Server[Any]:
    """The SDK's low-level server over the runtime's tools (low-level, so that each tool keeps its own JSON
    schema and every result is built exactly as documented above).

    ``user_id_for_request`` decides who each request acts for; ``inline_budget`` caps the raw image bytes
    per result (None: always the originals, for stdio, which has no message size limit).
    """
    handlers = _Handlers(runtime, user_id_for_request, inline_budget)
    return Server(
        SERVER_NAME,
        version=__version__,
        title="limner",
        description="Image generation and editing with durable, owner-checked image IDs.",
        instructions=INSTRUCTIONS,
        get_tool_input_schema=handlers.input_schema,
        on_list_tools=handlers.list_tools,
        on_call_tool=handlers.call_tool,
        on_list_resources=handlers.list_resources,
        on_list_resource_templates=handlers.list_resource_templates,
        on_read_resource=handlers.read_resource,
    )


# --- tool definitions and results ----------------------------------------------------------------


def _tool(spec: ToolSpec[Any]) -> types.Tool:
    """Generators make new images and never change or delete one, so they are not destructive; they reach
    an outside service (open world) and give a different image each time (not idempotent).
    """
    title = spec.title or spec.name
    annotations = types.ToolAnnotations(
        title=title,
        read_only_hint=spec.read_only,
        destructive_hint=False,
        idempotent_hint=spec.read_only,
        open_world_hint=not spec.read_only,
    )
    return types.Tool(
        name=spec.name,
        title=title,
        description=spec.description,
        input_schema=spec.json_schema(),
        output_schema=copy.deepcopy(OUTPUT_SCHEMA),
        annotations=annotations,
    )


def _failure(result: ToolResult) -> types.CallToolResult:
    """``isError`` with the message and hint as text; the error's fields in ``_meta`` for programs."""
    error = result.metadata.get("error")
    meta = {"limner/error": error} if isinstance(error, dict) else None
    return types.CallToolResult(content=[types.TextContent(text=result.text)], is_error=True, meta=meta)


async def _inline(record: ImageRecord, data: bytes, share: int | None) -> _Shown:
    """The original when it fits its share; else the largest smaller copy that does; else nothing."""
    if share is None or len(data) <= share:
        return _Shown(record, types.ImageContent(data=await _base64(data), mime_type=record.media_type), "original")
    longest = max(record.width, record.height)
    for side in sorted({min(s, longest) for s in _SHRINK_SIDES}, reverse=True):
        smaller, media_type = await vision_copy(data, side)
        if len(smaller) <= share:
            block = types.ImageContent(data=await _base64(smaller), mime_type=media_type)
            return _Shown(record, block, "downscaled", side)
    return _Shown(record, None, "omitted")


async def _base64(data: bytes) -> str:
    """Large images are encoded in a worker thread, so that a big original never stalls the event loop."""
    if len(data) <= _THREAD_BASE64_BYTES:
        return base64.b64encode(data).decode("ascii")
    return await anyio.to_thread.run_sync(lambda: base64.b64encode(data).decode("ascii"))


def _note(item: _Shown) -> str:
    record, uri = item.record, IMAGE_URI_PREFIX + item.record.id
    original = f"{record.width}x{record.height} {record.media_type}, {record.byte_size:,} bytes"
    if item.shown == "downscaled":
        return f"{record.id} is shown as a smaller copy (at most {item.max_side} px); the original ({original}): {uri}."
    return f"{record.id} is too large to show here; the original ({original}): {uri}."


def _image_entry(item: _Shown) -> dict[str, Any]:
    record = item.record
    return {
        "id": record.id,
        "width": record.width,
        "height": record.height,
        "media_type": record.media_type,
        "byte_size": record.byte_size,
        "uri": IMAGE_URI_PREFIX + record.id,
        "shown": item.shown,
    }


def _resource(record: ImageRecord) -> types.Resource:
    prompt = (record.prompt or record.original_name or "").replace("\n", " ")
    return types.Resource(
        uri=IMAGE_URI_PREFIX + record.id,
        name=f"{record.id}.{extension_for(record.media_type)}",
        title=prompt[:80] or None,
        description=f"{record.source} image, {record.width}x{record.height}",
        mime_type=record.media_type,
        size=record.byte_size,
    )


def _progress_reporter(ctx: Context) -> ProgressCallback:
    """Backend progress as MCP progress in percent. The SDK sends nothing when the client sent no
    progressToken (and does not tell a 2026-era handler whether one came, so the callback is always given);
    values only ever rise (the spec requires it), so updates without a fraction or with a lower one are
    dropped. Progress is best effort: a client gone away must not fail the generation.
    """
    last = -1.0

    async def report(update: Progress) -> None:
        nonlocal last
        if update.fraction is None:
            return
        value = round(min(max(update.fraction, 0.0), 1.0) * 100, 1)
        if value <= last:
            return
        last = value
        try:
            await ctx.session.report_progress(value, 100.0, update.message)
        except Exception:
            log.debug("could not send a progress notification", exc_info=True)

    return report


# --- stdio ---------------------------------------------------------------------------------------


async def stdio_user_id(runtime: Runtime, name: str | None = None) -> str:
    """The user ``limner mcp`` acts for: the named one (who must exist), else the CLI's local user."""
    async with runtime.db.unit_of_work(write=name is None) as session:
        repo = UserRepository(session)
        user = await repo.get_or_create(runtime.settings.local_user) if name is None else await repo.by_name(name)
    if user is None:
        raise InputError(f"There is no user named {name!r}.", hint="`limner users` lists and creates users.")
    return user.id


async def serve_stdio(runtime: Runtime, user_id: str) -> None:
    """Serve MCP on stdin/stdout as ``user_id`` until the client closes stdin. Images go as originals:
    stdio has no message size limit. While serving, the SDK points fd 1 at stderr, so stray prints cannot
    corrupt the protocol.
    """

    async def fixed_user(_ctx: Context) -> str:
        return user_id

    server = build_mcp_server(runtime, fixed_user, inline_budget=None)
    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())


# --- streamable HTTP -----------------------------------------------------------------------------


class TokenCacheLike(Protocol):
    """What :class:`limner.api.deps.TokenCache` offers; passing the API's cache shares verified tokens."""

    def get(self, token: str) -> User | None:
        """The cached user of a token, if fresh."""
        ...

    def put(self, token: str, user: User, *, expires_at: datetime | None = None) -> None:
        """Remember a verified token (not past its expiry)."""
        ...


async def _user_from_request(ctx: Context) -> str:
    """The user :class:`MCPHTTPApp` put into this request's ASGI scope after checking its token."""
    scope = getattr(ctx.request, "scope", None)
    state = scope.get("state") if isinstance(scope, dict) else None
    user_id = state.get(_USER_STATE_KEY) if isinstance(state, dict) else None
    if not isinstance(user_id, str):
        raise MCPError(types.INTERNAL_ERROR, "The request reached the MCP server without an authenticated user.")
    return user_id


class MCPHTTPApp:
    """The ASGI endpoint for streamable HTTP: checks limner's API bearer token on every request (401 without
    a valid one), then hands the request to the SDK's transport with the token's user in the ASGI scope.

    It runs stateless (every POST is self-contained): a session would outlive the request that opened it,
    and in stateless mode no request can reach a server loop that another user's token opened. Enter
    :meth:`running` in the host app's lifespan; until then requests get a 503.
    """

    def __init__(
        self,
        *,
        token_cache: TokenCacheLike | None = None,
        inline_budget: int | None = HTTP_INLINE_BUDGET,
        transport_security: TransportSecuritySettings | None = None,
    ) -> None:
        """``transport_security`` (Host/Origin checks) is off by default: limner serves on any host name
        its operator picks, and a page that rebinds DNS still has no token to send.
        """
        self.token_cache = token_cache
        self.inline_budget = inline_budget
        self.transport_security = transport_security
        self._runtime: Runtime | None = None
        self._manager: StreamableHTTPSessionManager | None = None
        self._path = "/mcp"

    @asynccontextmanager
    async def running(self, runtime: Runtime) -> AsyncIterator[None]:
        """Serve with this runtime while the context is open (a fresh SDK session manager each time)."""
        server = build_mcp_server(runtime, _user_from_request, inline_budget=self.inline_budget)
        manager = StreamableHTTPSessionManager(app=server, stateless=True, security_settings=self.transport_security)
        async with manager.run():
            self._runtime, self._manager = runtime, manager
            try:
                yield
            finally:
                self._runtime, self._manager = None, None

    def routes(self, path: str = "/mcp") -> list[Route]:
        """The endpoint (a Route, not a Mount: a Mount would redirect ``/mcp``) and its protected resource
        metadata (RFC 9728), where an MCP client that met a 401 looks for how to get a token.
        """
        self._path = path

        async def metadata(request: Request) -> JSONResponse:
            return JSONResponse(_resource_metadata(_base_url(request.scope), path))

        return [
            Route(path, endpoint=self, methods=["GET", "POST", "DELETE"]),
            Route(_METADATA_PREFIX + path, endpoint=metadata, methods=["GET"]),
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Authenticate, then delegate; the user travels in the scope's state, out of the client's reach."""
        if scope["type"] != "http":
            return
        runtime, manager = self._runtime, self._manager
        if runtime is None or manager is None:
            await _error(503, "unavailable", "The MCP endpoint is not running.")(scope, receive, send)
            return
        token = _bearer_token(scope)
        user = await self._user(runtime, token) if token else None
        if user is None:
            await _unauthorized(scope, self._path, token_sent=token is not None)(scope, receive, send)
            return
        state = dict(scope.get("state") or {})
        state[_USER_STATE_KEY] = user.id
        await manager.handle_request({**scope, "state": state}, receive, send)

    async def _user(self, runtime: Runtime, token: str) -> User | None:
        cached = self.token_cache.get(token) if self.token_cache is not None else None
        if cached is not None:
            return cached
        async with runtime.db.unit_of_work() as session:
            found = await UserRepository(session).verify_token(token)
        if found is None:
            return None
        user, row = found
        if self.token_cache is not None:
            self.token_cache.put(token, user, expires_at=row.expires_at)
        return user


def create_mcp_http_app(
    runtime: Runtime, *, path: str = "/mcp", token_cache: TokenCacheLike | None = None
) -> Starlette:
    """A standalone Starlette app serving only the MCP endpoint, for a separate port or a test."""
    endpoint = MCPHTTPApp(token_cache=token_cache)

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        async with endpoint.running(runtime):
            yield

    return Starlette(routes=endpoint.routes(path), lifespan=lifespan)


def _bearer_token(scope: Scope) -> str | None:
    for key, value in scope.get("headers", []):
        if key == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() != "bearer":
                return None
            return token.strip() or None
    return None


def _error(
    status: int, code: str, message: str, hint: str | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    """The one error shape of limner's API."""
    body = {"error": {"code": code, "message": message, "hint": hint, "provider": None}}
    return JSONResponse(body, status_code=status, headers=headers)


_METADATA_PREFIX = "/.well-known/oauth-protected-resource"
_HOW_TO_AUTHENTICATE = (
    "limner takes its own API tokens, not OAuth: create one with `limner tokens create --user NAME` and send "
    "it as 'Authorization: Bearer <token>' (in an MCP client's configuration: a header or bearer token)."
)


def _unauthorized(scope: Scope, path: str, *, token_sent: bool) -> JSONResponse:
    """A 401 as the MCP authorization spec has it: the Bearer challenge points at the resource metadata.

    limner runs no authorization server, so the metadata lists none; a client that reads the challenge
    (or the ``error_description``) learns that it needs a token from the operator instead of starting an
    OAuth flow that cannot succeed.
    """
    challenge = f'Bearer realm="limner", resource_metadata="{_base_url(scope)}{_METADATA_PREFIX}{path}"'
    if token_sent:
        challenge += ', error="invalid_token", error_description="The API token is not valid."'
        message = "The API token is not valid (mistyped, revoked or expired)."
    else:
        challenge += ', error_description="Send a limner API token as a Bearer token."'
        message = "No API token was sent."
    return _error(401, "unauthorized", message, _HOW_TO_AUTHENTICATE, headers={"WWW-Authenticate": challenge})


def _resource_metadata(base_url: str, path: str) -> dict[str, object]:
    """OAuth 2.0 Protected Resource Metadata (RFC 9728) of the MCP endpoint: bearer tokens in the header,
    issued by no authorization server (limner's API tokens come from the operator or the user).
    """
    return {
        "resource": f"{base_url}{path}",
        "resource_name": "limner",
        "authorization_servers": [],
        "bearer_methods_supported": ["header"],
        "resource_documentation": f"{base_url}/docs",
        "scopes_supported": [],
    }


def _base_url(scope: Scope) -> str:
    return str(Request(scope).base_url).rstrip("/")
