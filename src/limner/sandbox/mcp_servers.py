"""An emulated MCP image server, built with the official SDK's ``MCPServer``, covering every way real
servers hand back images (``shared/apis/mcp.md`` §10): the MCP client is tested against it.

One server, ``images``, with one tool per case:

=============================  ====================================================================
``generate_image``             a proper ``image`` content block (PNG from the sandbox renderer),
                               reporting progress on the way (everything server, §10.1)
``generate_image_url``         text ``Generated image URL: <url>`` (replicate-flux, §10.4); the URL is
                               served by this app's ``GET /files/{name}`` route over HTTP; over stdio
                               it is built from ``--public-url``, and the PNG is written to
                               ``--output-dir``, which an HTTP emulator sharing that directory serves
``generate_image_data_uri``    text carrying a ``data:image/png;base64,...`` URI (puppeteer ``encoded``)
``generate_image_file``        writes the PNG to the output directory and answers
                               ``Image saved to: <path>`` (or a ``file://`` URI); MiniMax local mode
``generate_image_resource``    an embedded resource holding the PNG as a ``blob``
``generate_image_link``        a ``resource_link`` to ``sandbox://images/<name>``, readable with
                               ``resources/read``
``generate_image_structured``  ``structuredContent`` with the image URL nested inside, plus its JSON
                               in a text block as the spec asks
``generate_large_image``       an incompressible PNG of about ``megabytes`` MB (default 2), after a
                               progress report, to exercise the SDK's 1 MiB SSE event limit
``echo_text``                  answers the given text verbatim: a knob for URLs, paths and base64
                               shapes no real tool here produces
``whoami``                     the serving process's ID, so a test can see a restart
``fail``                       a tool error (``isError: true``, via ``ToolError``)
``protocol_error``             a JSON-RPC error instead of a result (gongrzhe's image-gen-server)
``hang``                       sleeps until the client cancels the request
``crash``                      (stdio only) exits the process mid-call, like a server that dies
=============================  ====================================================================

Running it: ``python -m limner.sandbox.mcp_servers images`` speaks stdio (``--public-url``,
``--output-dir``; ``--transport streamable-http|sse --port N`` serves HTTP instead), and
:class:`MCPImagesEmulator` is the ASGI form that the sandbox runner (or uvicorn) can serve. Like every
emulator this module imports nothing from limner outside ``limner.sandbox``.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import logging
import os
import random
import re
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import anyio.to_thread
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.shared.exceptions import MCPError
from mcp.types import (
    BlobResourceContents,
    CallToolResult,
    EmbeddedResource,
    ImageContent,
    ResourceLink,
    TextContent,
)
from PIL import Image
from starlette.requests import Request
from starlette.responses import Response

from limner.sandbox.renderer import render_generation

__all__ = [
    "BASE_PATH_SCOPE_KEY",
    "RESOURCE_PREFIX",
    "SERVER_NAMES",
    "ImageStore",
    "ImagesServerState",
    "build_images_server",
    "main",
]

SERVER_NAMES = ("images",)
RESOURCE_PREFIX = "sandbox://images/"
BASE_PATH_SCOPE_KEY = "limner.sandbox.mcp_base_path"
_STORE_LIMIT = 64
_HANG_SECONDS = 24 * 3600.0
_INTERNAL_ERROR = -32603


class ImageStore:
    """The images this server made, by name, for the file route and ``resources/read``.

    Bounded (oldest dropped first) so a long-running sandbox does not grow without limit; thread-safe
    because renders finish in worker threads.
    """

    def __init__(self, limit: int = _STORE_LIMIT) -> None:
        self._items: OrderedDict[str, bytes] = OrderedDict()
        self._limit = limit
        self._lock = threading.Lock()

    def put(self, data: bytes, suffix: str = "png") -> str:
        """Keep ``data`` and return its name (content-addressed, so repeats share a name)."""
        name = f"{hashlib.sha256(data).hexdigest()[:20]}.{suffix}"
        with self._lock:
            self._items[name] = data
            self._items.move_to_end(name)
            while len(self._items) > self._limit:
                self._items.popitem(last=False)
        return name

    def get(self, name: str) -> bytes | None:
        """The bytes stored under ``name``, or None."""
        with self._lock:
            return self._items.get(name)


@dataclass
class ImagesServerState:
    """What the tools need to know about where they run, and what tests may observe of them.

    ``public_url`` is the base of an HTTP server hosting ``/files`` (only needed over stdio: over HTTP
    the request's own address is used). ``allow_crash`` registers ``crash``, which ends the process:
    only for a server in its own process, never one embedded in a host program.
    """

    store: ImageStore = field(default_factory=ImageStore)
    public_url: str | None = None
    output_dir: Path | None = None
    allow_crash: bool = False
    cancelled_hangs: int = 0


async def _render(prompt: str, width: int, height: int) -> bytes:
    """The sandbox picture for ``prompt``, drawn in a worker thread (Pillow is CPU work)."""
    if not (16 <= width <= 2048 and 16 <= height <= 2048):
        raise ToolError("width and height must be between 16 and 2048")
    return await anyio.to_thread.run_sync(lambda: render_generation(prompt, width, height, "png"))


def _noise_png(size_bytes: int, seed: int) -> bytes:
    """An incompressible PNG of roughly ``size_bytes`` bytes: random RGB pixels, stored uncompressed."""
    side = max(16, int((size_bytes / 3) ** 0.5))
    pixels = random.Random(seed).randbytes(side * side * 3)  # noqa: S311 - test data, not secrets
    buffer = io.BytesIO()
    Image.frombytes("RGB", (side, side), pixels).save(buffer, format="PNG", compress_level=0)
    return buffer.getvalue()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _base_url(ctx: Context, config: ImagesServerState) -> str:
    """Where this server's ``/files`` route is reachable: the HTTP request's own base, else the
    ``--public-url`` given on the command line (stdio has no address of its own).
    """
    request = getattr(ctx.request_context, "request", None)
    if isinstance(request, Request):
        # Not base_url: it stops at the outermost app, and this one may be mounted; the ASGI wrapper
        # records where it is mounted before the SDK's own routes extend root_path.
        root = request.scope.get(BASE_PATH_SCOPE_KEY, request.scope.get("root_path", ""))
        return f"{request.url.scheme}://{request.url.netloc}{root}".rstrip("/")
    if config.public_url:
        return config.public_url.rstrip("/")
    raise ToolError("This server has no HTTP address; start it with --public-url to get image URLs.")


def _write_file(directory: Path, name: str, data: bytes) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_bytes(data)
    return path.resolve()


async def _publish(png: bytes, store: ImageStore, config: ImagesServerState) -> str:
    """Keep an image for the ``/files`` route; over stdio also in the output directory, which an HTTP
    emulator sharing it serves (a stdio server has no HTTP address of its own).
    """
    name = store.put(png)
    if config.output_dir is not None:
        await anyio.to_thread.run_sync(_write_file, config.output_dir, name, png)
    return name


def _register_inline(server: MCPServer, store: ImageStore) -> None:
    """The tools whose answers carry the image bytes themselves, in each shape real servers use."""

    @server.tool(description="Generate an image; answers with an image content block.")
    async def generate_image(prompt: str, ctx: Context, width: int = 256, height: int = 256) -> CallToolResult:
        await ctx.report_progress(0, 2, "rendering")
        png = await _render(prompt, width, height)
        store.put(png)
        await ctx.report_progress(1, 2, "encoding")
        return CallToolResult(
            content=[
                TextContent(text="Here's the image you requested:"),
                ImageContent(data=_b64(png), mime_type="image/png"),
                TextContent(text=f"The image above shows: {prompt}"),
            ]
        )

    @server.tool(description="Generate an image; answers with a data: URI in text.", structured_output=False)
    async def generate_image_data_uri(prompt: str, width: int = 64, height: int = 64) -> str:
        png = await _render(prompt, width, height)
        return f"Screenshot of '{prompt}' taken at {width}x{height}\ndata:image/png;base64,{_b64(png)}"

    @server.tool(description="Generate an image; answers with an embedded resource holding the PNG.")
    async def generate_image_resource(prompt: str, width: int = 128, height: int = 128) -> CallToolResult:
        png = await _render(prompt, width, height)
        name = store.put(png)
        blob = BlobResourceContents(uri=f"{RESOURCE_PREFIX}{name}", mime_type="image/png", blob=_b64(png))
        return CallToolResult(
            content=[TextContent(text=f"Rendered {prompt!r}."), EmbeddedResource(type="resource", resource=blob)]
        )

    @server.tool(description="Generate an image; answers with a resource link to read.")
    async def generate_image_link(prompt: str, width: int = 128, height: int = 128) -> CallToolResult:
        png = await _render(prompt, width, height)
        name = store.put(png)
        link = ResourceLink(
            type="resource_link", uri=f"{RESOURCE_PREFIX}{name}", name=name, mime_type="image/png", size=len(png)
        )
        return CallToolResult(content=[TextContent(text=f"Image ready: {name}"), link])

    @server.tool(description="Generate a large, incompressible PNG (about `megabytes` MB).")
    async def generate_large_image(ctx: Context, megabytes: float = 2.0, seed: int = 0) -> CallToolResult:
        if not 0 < megabytes <= 64:
            raise ToolError("megabytes must be between 0 and 64")
        await ctx.report_progress(0, 1, "rendering noise")
        png = await anyio.to_thread.run_sync(_noise_png, int(megabytes * 1_000_000), seed)
        return CallToolResult(content=[ImageContent(data=_b64(png), mime_type="image/png")])

    @server.resource(f"{RESOURCE_PREFIX}{{name}}", mime_type="image/png", description="An image this server made.")
    def read_image(name: str) -> bytes:
        data = store.get(name)
        if data is None:
            raise MCPError(-32602, f"Resource not found: {RESOURCE_PREFIX}{name}")
        return data


def _register_linked(server: MCPServer, store: ImageStore, config: ImagesServerState) -> None:
    """The tools whose answers point at the image (URL, local file) instead of carrying it."""

    @server.tool(description="Generate an image; answers with its URL in text.", structured_output=False)
    async def generate_image_url(prompt: str, ctx: Context, width: int = 256, height: int = 256) -> str:
        name = await _publish(await _render(prompt, width, height), store, config)
        return f"Generated image URL: {_base_url(ctx, config)}/files/{name}\nGenerated by the sandbox with: {prompt}"

    @server.tool(
        description="Generate an image into the output directory; answers with its local path.", structured_output=False
    )
    async def generate_image_file(prompt: str, as_uri: bool = False, width: int = 64, height: int = 64) -> str:
        if config.output_dir is None:
            raise ToolError("This server has no output directory; start it with --output-dir.")
        png = await _render(prompt, width, height)
        name = store.put(png)
        path = await anyio.to_thread.run_sync(_write_file, config.output_dir, name, png)
        return f"Success. Image saved to: {path.as_uri() if as_uri else path}"

    @server.tool(description="Generate an image; answers with its URL in structuredContent.")
    async def generate_image_structured(
        prompt: str, ctx: Context, width: int = 128, height: int = 128
    ) -> CallToolResult:
        name = await _publish(await _render(prompt, width, height), store, config)
        data = {
            "prompt": prompt,
            "result": {"images": [{"url": f"{_base_url(ctx, config)}/files/{name}", "width": width}]},
        }
        return CallToolResult(content=[TextContent(text=json.dumps(data))], structured_content=data)


def _register_faults(server: MCPServer, config: ImagesServerState) -> None:
    """The tools that misbehave: error channels, a hang, a crash, and a free-text knob."""

    @server.tool(description="Say which process serves this call (tests check restarts).")
    def whoami() -> dict[str, int]:
        return {"pid": os.getpid()}

    @server.tool(description="Answer with exactly the given text.", structured_output=False)
    def echo_text(text: str) -> str:
        return text

    @server.tool(description="Fail as a tool error (isError: true).")
    def fail(message: str = "the sandbox failed on request") -> str:
        raise ToolError(f"Image generation failed: {message}")

    @server.tool(description="Fail with a JSON-RPC error instead of a result.")
    def protocol_error(message: str = "upstream exploded") -> str:
        raise MCPError(_INTERNAL_ERROR, f"Image generation failed: {message}")

    @server.tool(description="Never answer; sleeps until the request is cancelled.", structured_output=False)
    async def hang(seconds: float = _HANG_SECONDS) -> str:
        try:
            await anyio.sleep(seconds)
        except anyio.get_cancelled_exc_class():
            config.cancelled_hangs += 1
            raise
        return "woke up"

    if config.allow_crash:

        @server.tool(description="Exit the server process in the middle of the call.")
        def crash(code: int = 3) -> str:
            os._exit(code)


@contextmanager
def _logging_untouched() -> Iterator[None]:
    """``MCPServer()`` calls ``logging.basicConfig``; a placeholder handler makes that a no-op, so an
    emulator built inside a host program (a test, limner's server) never reconfigures its logging.
    """
    root = logging.getLogger()
    placeholder = logging.NullHandler()
    root.addHandler(placeholder)
    try:
        yield
    finally:
        root.removeHandler(placeholder)


_FILE_NAME = re.compile(r"[0-9a-f]{20}\.png")


async def _stored_file(state: ImagesServerState, name: str) -> bytes | None:
    """An image from the store, else from the output directory (written there by a stdio twin)."""
    data = state.store.get(name)
    if data is not None or state.output_dir is None or not _FILE_NAME.fullmatch(name):
        return data
    path = state.output_dir / name
    return await anyio.to_thread.run_sync(lambda: path.read_bytes() if path.is_file() else None)


def build_images_server(state: ImagesServerState | None = None) -> MCPServer:
    """The ``images`` server, its tools reading and recording through ``state``."""
    state = state or ImagesServerState()
    with _logging_untouched():
        server = MCPServer(
            "limner-sandbox-images",
            version="1.0.0",
            instructions="Emulated image server of the limner sandbox.",
            log_level="WARNING",
        )
    _register_inline(server, state.store)
    _register_linked(server, state.store, state)
    _register_faults(server, state)

    async def serve_file(request: Request) -> Response:
        data = await _stored_file(state, request.path_params["name"])
        if data is None:
            return Response("Not Found", status_code=404, media_type="text/plain")
        return Response(data, media_type="image/png")

    server.custom_route("/files/{name}", methods=["GET"])(serve_file)
    return server


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m limner.sandbox.mcp_servers", description="Run an emulated MCP image server."
    )
    parser.add_argument("name", choices=SERVER_NAMES)
    parser.add_argument("--transport", choices=("stdio", "streamable-http", "sse"), default="stdio")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--public-url", help="base URL of an HTTP server hosting /files (stdio image URLs)")
    parser.add_argument("--output-dir", type=Path, help="where generate_image_file writes")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry: serve one emulated server over stdio (default) or HTTP until stopped."""
    args = _parse_args(argv)
    stdio = args.transport == "stdio"
    state = ImagesServerState(
        public_url=args.public_url.rstrip("/") if args.public_url else None,
        output_dir=args.output_dir,
        allow_crash=stdio,
    )
    server = build_images_server(state)
    if stdio:
        server.run("stdio")
    elif args.transport == "sse":
        server.run("sse", host=args.host, port=args.port)
    else:
        server.run("streamable-http", host=args.host, port=args.port)


if __name__ == "__main__":
    main()
