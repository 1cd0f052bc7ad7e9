"""``create_app(settings)``: the FastAPI application, its lifespan and its middleware.

The lifespan opens one :class:`~limner.runtime.Runtime` (database migrated, emulators started when
needed) and closes it on shutdown. Nothing here reads the environment.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from limner import __version__
from limner.api.deps import TokenCache
from limner.api.errors import error_body, install_error_handlers
from limner.api.routes import auth, conversations, health, images, keys, tokens, tools
from limner.config import Settings
from limner.mcp_server import MCPHTTPApp
from limner.runtime import Runtime

__all__ = ["create_app"]


def create_app(settings: Settings, *, runtime: Runtime | None = None) -> FastAPI:
    """The app; pass ``runtime`` to share one already opened (tests, the CLI's in-process server)."""
    from limner import web  # imported here, not at the top: limner.web builds on limner.api.deps

    token_cache = TokenCache()
    mcp_endpoint = MCPHTTPApp(token_cache=token_cache)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if runtime is not None:
            async with mcp_endpoint.running(runtime):
                yield
            return
        async with Runtime.open(settings) as opened, opened.chores(), mcp_endpoint.running(opened):
            app.state.runtime = opened
            yield

    app = FastAPI(
        title="limner",
        version=__version__,
        summary="Image generation and editing as tools for AI agents.",
        lifespan=lifespan,
        docs_url=None,  # served by limner.web from the package: FastAPI's page loads Swagger UI from a CDN
        redoc_url=None,  # the same for ReDoc; /docs is the one documentation page
    )
    if runtime is not None:
        app.state.runtime = runtime
    app.state.token_cache = token_cache
    install_error_handlers(app)
    for module in (health, auth, images, tools, keys, conversations, tokens):
        app.include_router(module.router)
    app.include_router(conversations.agents_router)
    app.include_router(web.router)  # the chat web UI: / and /signin
    app.mount("/static", web.static_files(), name="static")
    app.router.routes.extend(mcp_endpoint.routes("/mcp"))  # limner's MCP server over streamable HTTP
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_upload_bytes + 256 * 1024)
    return app


class BodyLimitMiddleware:
    """Refuse request bodies over the cap while they stream in (no Content-Length needed)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await _too_large(send, self.max_bytes)
            return
        await self.app(scope, self._counting(receive), send)

    def _counting(self, receive: Receive) -> Receive:
        seen = 0

        async def wrapped() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLargeError()
            return message

        return wrapped


class BodyTooLargeError(HTTPException):
    """Raised inside the app when a streamed body passes the cap. An HTTPException, so that FastAPI's
    body parsing lets it through as a 413 instead of turning it into a generic 400.
    """

    def __init__(self) -> None:
        super().__init__(413, "The request body is larger than the upload limit (LIMNER_MAX_UPLOAD_BYTES).")


async def _too_large(send: Send, limit: int) -> None:
    body = json.dumps(
        error_body(
            "image_too_large",
            f"The request body is larger than {limit:,} bytes.",
            "Send a smaller image or ask the operator to raise LIMNER_MAX_UPLOAD_BYTES.",
        )
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
