"""MCP tool results turned into text for the LLM plus :class:`ImageOutput` bytes, whatever the server sent.

Part of the :mod:`limner.mcp_client` adapter; import from there. Servers hand images back in every
shape ``shared/apis/mcp.md`` §10.5 lists: image blocks, embedded blobs, resource links, ``data:`` URIs,
bare URLs in prose or JSON, local paths, URLs inside ``structuredContent``. Each becomes a *slot* at the
place it appeared; slots are resolved concurrently (URLs only through :func:`limner.net.safe_fetch`,
local files only inside the allowed directories, every image under the byte cap), and each slot's text
becomes the placeholder ``{{image:N}}`` (N indexes :attr:`MCPToolOutput.images`), a note saying why the
image could not be used, or, for a link that held no image, the link as it was. Base64 never reaches the
text. Trust the bytes, not the declared type: media types come from :func:`limner.imaging.sniff_media_type`.

Unlike LibreChat (``librechat-behaviour.md`` §6): blob resources and resource links become images,
URL images are fetched and stored, ``isError`` is reported, and a bad image costs a note, not the call.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import os
import re
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePath
from typing import Any, TypeAlias

import httpx2
from mcp.types import (
    AudioContent,
    BlobResourceContents,
    CallToolResult,
    ContentBlock,
    EmbeddedResource,
    ImageContent,
    ReadResourceResult,
    ResourceLink,
    TextContent,
    TextResourceContents,
)

from limner.backends.base import ImageOutput, public_url
from limner.errors import ImageTooLargeError, LimnerError, UnsafeURLError, UnsupportedImageError, redact
from limner.imaging import sniff_media_type
from limner.net import FetchPolicy, safe_fetch

__all__ = [
    "PLACEHOLDER_PATTERN",
    "MCPToolOutput",
    "ResourceReader",
    "fill_image_placeholders",
    "normalise_result",
    "placeholder",
]

ResourceReader: TypeAlias = Callable[[str], Awaitable[ReadResourceResult]]

PLACEHOLDER_PATTERN = re.compile(r"\{\{image:(\d+)\}\}")
_THREAD_DECODE_BYTES = 256 * 1024
_CONCURRENT_LOADS = 4
_URL_CHARS = r"[^\s\"'<>()\[\]{}\\`|^]"
_PATH_CHARS = r"[^\s\"'<>()\[\]{}\\`|^/]"
_SCAN = re.compile(
    r"(?P<data>data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?:;[\w.+-]+=[\w.+-]+)*;base64,(?P<payload>[A-Za-z0-9+/]+={0,2}))"
    rf"|(?P<url>https?://{_URL_CHARS}+)"
    rf"|(?P<file>file://{_URL_CHARS}+)"
    rf"|(?P<path>(?<![\w:/.~-])/(?:{_PATH_CHARS}+/)*{_PATH_CHARS}+\.(?:png|jpe?g|webp|gif))(?![\w/])"
    r"|(?P<b64>(?<![A-Za-z0-9+/])[A-Za-z0-9+/]{256,}={0,2})",
    re.IGNORECASE,
)
_IMAGE_WORD_WINDOW = 24
_NOT_AN_IMAGE = "it is not a PNG, JPEG, WebP or GIF image"
_JSON_SCAN_LIMIT = 1024 * 1024
_THREAD_SCAN_CHARS = 64 * 1024
_TRAILING = ".,;:!?'\""
_IMAGE_SUFFIX = re.compile(r"\.(png|jpe?g|webp|gif)$", re.IGNORECASE)
_IMAGE_WORDS = re.compile(r"(?i)\b(image|img|picture|photo|screenshot|render(ed|ing)?|generated)\w*\b")
_IMAGE_KEYS = re.compile(r"(?i)(image|img|picture|photo|thumb|url|uri|src|href|link|output|file)")
_PLACEHOLDER_LOOKALIKE = re.compile(r"\{\{(\s*image\s*:)", re.IGNORECASE)


def placeholder(index: int) -> str:
    """The placeholder standing for ``images[index]`` in :attr:`MCPToolOutput.text`."""
    return f"{{{{image:{index}}}}}"


def fill_image_placeholders(
    text: str, image_ids: Sequence[str], render: Callable[[str], str] = lambda image_id: f"[image {image_id}]"
) -> str:
    """Replace each ``{{image:N}}`` with ``render(image_ids[N])`` once the caller has stored the images."""

    def replace_one(match: re.Match[str]) -> str:
        index = int(match.group(1))
        return render(image_ids[index]) if index < len(image_ids) else match.group(0)

    return PLACEHOLDER_PATTERN.sub(replace_one, text)


@dataclass(frozen=True)
class MCPToolOutput:
    """What one MCP tool call gave: text for the LLM (with placeholders), images, and whether it failed.

    ``warnings`` lists images that could not be used, for logs and the UI; the text says so as well.
    """

    text: str
    images: list[ImageOutput]
    is_error: bool
    warnings: tuple[str, ...] = ()


@dataclass
class _Slot:
    """One place in the result where an image may be; resolved once, rendered in the text by outcome."""

    key: str
    label: str
    source: str
    load: Callable[[], Awaitable[bytes]]
    origin: str | None = None
    fallback: str | None = None
    """Text to keep when the slot turns out to hold no image (a link that was a web page)."""
    data: bytes | None = None
    digest: str | None = None
    media_type: str | None = None
    error: str | None = None
    index: int | None = None

    @property
    def keeps_fallback(self) -> bool:
        """A link that held something other than an image stays in the text as it was."""
        return self.fallback is not None and self.error == _NOT_AN_IMAGE


@dataclass
class _Context:
    server: str
    tool: str
    policy: FetchPolicy
    allowed_paths: tuple[PurePath, ...]
    read_resource: ResourceReader | None
    max_bytes: int
    http_client: httpx2.AsyncClient | None
    slots: dict[str, _Slot] = field(default_factory=dict)
    json_urls: set[str] = field(default_factory=set)
    warnings: list[str] = field(default_factory=list)
    inline_count: int = 0

    def slot(self, key: str, make: Callable[[], _Slot]) -> _Slot:
        """The slot for ``key``: the same source named twice (text and structuredContent) is one image."""
        if key not in self.slots:
            self.slots[key] = make()
        return self.slots[key]


Piece: TypeAlias = str | _Slot


async def normalise_result(
    result: CallToolResult,
    *,
    server: str,
    tool: str,
    fetch_policy: FetchPolicy,
    allowed_paths: Sequence[PurePath | str] = (),
    read_resource: ResourceReader | None = None,
    max_image_bytes: int | None = None,
    max_images: int = 16,
    http_client: httpx2.AsyncClient | None = None,
) -> MCPToolOutput:
    """Turn a ``CallToolResult`` into text with ``{{image:N}}`` placeholders and the images they name.

    ``read_resource`` reads resource links with custom schemes from the same server; ``allowed_paths``
    are the directories local files may come from (none: local paths stay plain text). The byte cap is
    ``max_image_bytes``, by default ``fetch_policy.max_bytes`` (fetched URLs never exceed the policy's);
    at most ``max_images`` images are loaded. Never raises for a bad image: it becomes a note in the text
    and an entry in ``warnings``.
    """
    cap = max_image_bytes or fetch_policy.max_bytes
    ctx = _Context(
        server=server,
        tool=tool,
        policy=replace(fetch_policy, max_bytes=min(cap, fetch_policy.max_bytes)),
        allowed_paths=tuple(PurePath(p) for p in allowed_paths),
        read_resource=read_resource,
        max_bytes=cap,
        http_client=http_client,
    )
    if _text_size(result) > _THREAD_SCAN_CHARS:  # regex scanning of megabytes is CPU work
        blocks = await asyncio.to_thread(_collect, result, ctx)
    else:
        blocks = _collect(result, ctx)
    await _resolve(list(ctx.slots.values()), ctx, max_images)
    images = _number(list(ctx.slots.values()), ctx)
    text = "\n\n".join(part for part in (_render(pieces) for pieces in blocks) if part.strip())
    if result.is_error:
        text = f"The MCP tool {tool!r} of server {server!r} reported an error: {text or '(no message)'}"
    elif not text:
        text = "(The tool returned no content.)"
    return MCPToolOutput(text=text, images=images, is_error=bool(result.is_error), warnings=tuple(ctx.warnings))


def _collect(result: CallToolResult, ctx: _Context) -> list[list[Piece]]:
    """Every block as text runs and slots, in order; no I/O, so it may run in a worker thread."""
    structured = result.structured_content
    if structured is not None:
        ctx.json_urls.update(_json_image_urls(structured))
    blocks = [_block_pieces(block, ctx) for block in result.content]
    if structured is not None:
        blocks.append(_structured_pieces(structured, ctx, text_seen=any(_has_text(b) for b in blocks)))
    return blocks


def _text_size(result: CallToolResult) -> int:
    size = 0
    for block in result.content:
        if isinstance(block, TextContent):
            size += len(block.text)
        elif isinstance(block, EmbeddedResource) and isinstance(block.resource, TextResourceContents):
            size += len(block.resource.text)
    return size


def _maybe_json(text: str) -> Any:
    """The JSON value a text block holds (servers often answer with JSON), or None."""
    stripped = text.strip()
    if len(stripped) > _JSON_SCAN_LIMIT or not stripped.startswith(("[", "{")):
        return None
    try:
        return json.loads(stripped)
    except ValueError:
        return None


def _has_text(pieces: list[Piece]) -> bool:
    return any(isinstance(piece, str) and piece.strip() for piece in pieces)


# --- one mapper per content type -----------------------------------------------------------------


def _block_pieces(block: ContentBlock, ctx: _Context) -> list[Piece]:
    if isinstance(block, TextContent):
        ctx.json_urls.update(_json_image_urls(_maybe_json(block.text)))
        return _scan_text(block.text, ctx)
    if isinstance(block, ImageContent):
        return [_inline_slot(block.data, block.mime_type, "an image content block", "image_content", ctx)]
    if isinstance(block, EmbeddedResource):
        return _embedded_pieces(block, ctx)
    if isinstance(block, ResourceLink):
        return _link_pieces(block, ctx)
    if isinstance(block, AudioContent):
        return [f"[audio content ({block.mime_type}) omitted]"]
    return [f"[{getattr(block, 'type', 'unknown')} content omitted]"]


def _embedded_pieces(block: EmbeddedResource, ctx: _Context) -> list[Piece]:
    resource = block.resource
    mime = (resource.mime_type or "").lower()
    if isinstance(resource, BlobResourceContents):
        if mime.startswith("image/") or not mime:
            label = f"the embedded resource {_display(resource.uri)}"
            return [_inline_slot(resource.blob, mime or None, label, "embedded_resource", ctx, origin=resource.uri)]
        return [f"[embedded resource {_display(resource.uri)} ({mime}) omitted]"]
    text_pieces = _scan_text(resource.text, ctx)
    if mime.startswith("image/"):  # a text resource describing an image it points to (Stability AI)
        link = _uri_slot(resource.uri, f"the resource {_display(resource.uri)}", "embedded_resource", ctx)
        return text_pieces if any(piece is link for piece in text_pieces) else [*text_pieces, "\n", link]
    return text_pieces


def _link_pieces(block: ResourceLink, ctx: _Context) -> list[Piece]:
    mime = (block.mime_type or "").lower()
    if mime and not mime.startswith("image/"):
        return [f"[resource {block.name}: {_display(block.uri)} ({mime})]"]
    return [_uri_slot(block.uri, f"the linked resource {_display(block.uri)}", "resource_link", ctx)]


def _structured_pieces(structured: Any, ctx: _Context, *, text_seen: bool) -> list[Piece]:
    """Without text blocks the structured content is the text; otherwise only its new images are added."""
    if not text_seen:
        return _scan_text(json.dumps(structured, ensure_ascii=False), ctx)
    pieces: list[Piece] = []
    for value in _strings(structured):
        if value.startswith("data:") or value in ctx.json_urls:
            known = set(ctx.slots)
            for piece in _scan_text(value, ctx):
                if isinstance(piece, _Slot) and piece.key not in known:
                    pieces += ["\n", piece] if pieces else [piece]
    return pieces


# --- text scanning ---------------------------------------------------------------------------------


def _scan_text(text: str, ctx: _Context) -> list[Piece]:
    """Split text into plain runs and slots for the image sources it names (see the module docstring)."""
    pieces: list[Piece] = []
    position = 0
    for match in _SCAN.finditer(text):
        found = _match_piece(match, text, ctx)
        if found is None:
            continue
        piece, end = found
        pieces.append(_neutralise(text[position : match.start()]))
        pieces.append(piece)
        position = end
    pieces.append(_neutralise(text[position:]))
    return [p for p in pieces if not isinstance(p, str) or p]


def _match_piece(match: re.Match[str], text: str, ctx: _Context) -> tuple[Piece, int] | None:
    kind = match.lastgroup
    if kind == "data":
        return _data_uri_piece(match, ctx), match.end()
    if kind == "b64":
        return _base64_piece(match.group("b64"), ctx), match.end()
    raw = match.group(kind or "")
    value = raw.rstrip(_TRAILING)
    end = match.start() + len(value)
    if kind == "url":
        if not _looks_like_image_url(value, text, match.start(), ctx):
            return None
        return _uri_slot(value, _display(value), "text_url", ctx, fallback=value), end
    if kind in ("file", "path"):
        if not ctx.allowed_paths:
            ctx.warnings.append(f"{_display(value)}: local files are not allowed for the MCP server {ctx.server!r}.")
            return None
        return _uri_slot(value, f"the local file {value}", "local_file", ctx), end
    return None


def _looks_like_image_url(url: str, text: str, start: int, ctx: _Context) -> bool:
    """An image extension, a JSON key that names images, or an image word right before it
    ("Image URL: ...", "Generated image URL: ...", "Image URLs: ['...").
    """
    if url in ctx.json_urls or _IMAGE_SUFFIX.search(httpx2.URL(url).path if _valid_url(url) else url):
        return True
    line_start = text.rfind("\n", 0, start) + 1
    return _IMAGE_WORDS.search(text[max(line_start, start - _IMAGE_WORD_WINDOW) : start]) is not None


def _valid_url(url: str) -> bool:
    try:
        httpx2.URL(url)
    except httpx2.InvalidURL:
        return False
    return True


def _data_uri_piece(match: re.Match[str], ctx: _Context) -> Piece:
    mime = (match.group("mime") or "").lower()
    payload = match.group("payload")
    if mime and not mime.startswith("image/"):
        return f"[a data: URI of {mime} ({_decoded_size(payload):,} bytes) omitted]"
    return _inline_slot(payload, mime or None, "a data: URI", "data_uri", ctx)


def _base64_piece(payload: str, ctx: _Context) -> Piece:
    """A long base64 run: an image if it decodes to one, otherwise dropped from the text."""
    try:
        head = base64.b64decode(payload[:64] + "=" * (-len(payload[:64]) % 4))
    except binascii.Error:
        head = b""
    if sniff_media_type(head) is None:
        return f"[{_decoded_size(payload):,} bytes of base64 data omitted]"
    return _inline_slot(payload, None, "base64 image data in the text", "text_base64", ctx)


def _neutralise(text: str) -> str:
    """A server cannot forge our placeholders: its own ``{{image:`` loses the second brace."""
    return _PLACEHOLDER_LOOKALIKE.sub(r"{ {\1", text)


def _json_image_urls(value: Any, key_hint: bool = False, depth: int = 0) -> Iterator[str]:
    """http(s) strings in JSON that sit under an image-like key, in a top-level list, or look like images."""
    if depth > 20:
        return
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _json_image_urls(item, key_hint or bool(_IMAGE_KEYS.search(str(key))), depth + 1)
    elif isinstance(value, list):
        for item in value:
            yield from _json_image_urls(item, key_hint or depth == 0, depth + 1)
    elif (
        isinstance(value, str)
        and value.startswith(("http://", "https://"))
        and (key_hint or _IMAGE_SUFFIX.search(value.split("?", 1)[0]))
    ):
        yield value


def _strings(value: Any, depth: int = 0) -> Iterator[str]:
    if depth > 20:
        return
    if isinstance(value, dict):
        for item in value.values():
            yield from _strings(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item, depth + 1)
    elif isinstance(value, str):
        yield value


# --- slots and their loaders -----------------------------------------------------------------------


def _inline_slot(
    payload: str, mime: str | None, label: str, source: str, ctx: _Context, *, origin: str | None = None
) -> _Slot:
    payload = re.sub(r"^data:[^,]*,", "", payload.strip())  # an accidental data: prefix (mcp.md §10.5)
    ctx.inline_count += 1
    key = f"inline:{ctx.inline_count}"  # never merged by key: identical bytes are merged after decoding

    async def load() -> bytes:
        return await _decode_capped(payload, ctx.max_bytes, label)

    return ctx.slot(key, lambda: _Slot(key=key, label=label, source=source, load=load, origin=origin))


def _uri_slot(uri: str, label: str, source: str, ctx: _Context, fallback: str | None = None) -> _Slot:
    def make() -> _Slot:
        return _Slot(
            key=uri, label=label, source=source, load=lambda: _load_uri(uri, ctx), origin=uri, fallback=fallback
        )

    return ctx.slot(uri, make)


async def _load_uri(uri: str, ctx: _Context) -> bytes:
    scheme = uri.split(":", 1)[0].lower() if ":" in uri else ""
    if scheme in ("http", "https"):
        fetched = await safe_fetch(uri, policy=ctx.policy, client=ctx.http_client, provider=f"mcp:{ctx.server}")
        return fetched.data
    if scheme == "data":
        return await _decode_capped(uri, ctx.max_bytes, "a data: URI")
    if scheme == "file" or uri.startswith("/"):
        if not ctx.allowed_paths:
            raise UnsafeURLError(f"Refused to read the local file {uri}: local files are not allowed for this server.")
        return await asyncio.to_thread(_read_local, uri, ctx.allowed_paths, ctx.max_bytes)
    if ctx.read_resource is None:
        raise UnsafeURLError(f"Cannot read the resource {_display(uri)}: no connection to its server.")
    return await _read_resource(uri, ctx)


async def _read_resource(uri: str, ctx: _Context) -> bytes:
    assert ctx.read_resource is not None
    result = await ctx.read_resource(uri)
    for contents in result.contents:
        if isinstance(contents, BlobResourceContents):
            return await _decode_capped(contents.blob, ctx.max_bytes, f"the resource {_display(uri)}")
    if any(isinstance(c, TextResourceContents) for c in result.contents):
        raise UnsupportedImageError(f"The resource {_display(uri)} holds text, not an image.")
    raise UnsupportedImageError(f"The resource {_display(uri)} is empty.")


def _read_local(uri: str, allowed: tuple[PurePath, ...], max_bytes: int) -> bytes:
    """Read a local image only from inside an allowed directory, after resolving every symlink.

    Runs in a worker thread (file system calls). ``..`` is refused outright, before resolving, so a path
    that climbs out and back in is refused too: such a path is never what a well-behaved server writes.
    """
    raw = httpx2.URL(uri).path if uri.lower().startswith("file://") else uri
    path = PurePath(raw)
    if not path.is_absolute() or ".." in path.parts:
        raise UnsafeURLError(f"Refused to read {raw}: only absolute paths without '..' are accepted.")
    resolved = Path(path).resolve()
    roots = [Path(root).resolve() for root in allowed]
    if not any(resolved.is_relative_to(root) for root in roots):
        raise UnsafeURLError(f"Refused to read {raw}: it is outside the directories allowed for this server.")
    try:
        with open(resolved, "rb") as handle:  # one open handle, so the size checked is the file read
            if os.fstat(handle.fileno()).st_size > max_bytes:
                raise _too_large(f"the file {raw}", max_bytes)
            data = handle.read(max_bytes + 1)
    except OSError as exc:
        raise UnsupportedImageError(f"Cannot read {raw}: {exc.strerror or type(exc).__name__}.") from exc
    if len(data) > max_bytes:
        raise _too_large(f"the file {raw}", max_bytes)
    return data


async def _decode_capped(payload: str, max_bytes: int, label: str) -> bytes:
    """Decode base64 after checking its decoded size against the cap, in a thread when it is large."""
    payload = re.sub(r"^data:[^,]*,", "", payload.strip())
    size = _decoded_size(payload)
    if size > max_bytes:
        raise _too_large(label, max_bytes, size)
    try:
        if len(payload) > _THREAD_DECODE_BYTES:
            return await asyncio.to_thread(base64.b64decode, payload)
        return base64.b64decode(payload)
    except (binascii.Error, ValueError) as exc:
        raise UnsupportedImageError(f"{label.capitalize()} is not valid base64.") from exc


def _decoded_size(payload: str) -> int:
    stripped = payload.rstrip("=")
    return len(stripped) * 3 // 4


def _too_large(label: str, limit: int, size: int | None = None) -> ImageTooLargeError:
    actual = f" ({size:,} bytes)" if size is not None else ""
    return ImageTooLargeError(
        f"{label.capitalize()} is larger than the limit of {limit:,} bytes{actual}.",
        hint="Ask for a smaller image, or ask the operator to raise the size limit.",
    )


async def _resolve(slots: list[_Slot], ctx: _Context, max_images: int) -> None:
    """Load every slot (a few at a time); failures become the slot's error, never an exception."""
    limiter = asyncio.Semaphore(_CONCURRENT_LOADS)

    async def one(slot: _Slot, position: int) -> None:
        if position >= max_images:
            slot.error = f"more than {max_images} images in one result; the rest were not loaded"
            return
        async with limiter:
            try:
                data = await slot.load()
            except LimnerError as exc:
                slot.error = redact(exc.message, limit=300)
                return
        slot.media_type = sniff_media_type(data)
        if slot.media_type is None:
            slot.error = _NOT_AN_IMAGE
            return
        slot.data = data
        if len(data) > _THREAD_DECODE_BYTES:
            slot.digest = await asyncio.to_thread(lambda: hashlib.sha256(data).hexdigest())
        else:
            slot.digest = hashlib.sha256(data).hexdigest()

    await asyncio.gather(*(one(slot, i) for i, slot in enumerate(slots)))


def _number(slots: list[_Slot], ctx: _Context) -> list[ImageOutput]:
    """Give each distinct image an index (identical bytes from two sources are one image)."""
    images: list[ImageOutput] = []
    by_digest: dict[str, int] = {}
    for slot in slots:
        if slot.data is None or slot.digest is None:
            if not slot.keeps_fallback:
                ctx.warnings.append(f"{slot.label}: {slot.error}")
            continue
        digest = slot.digest
        if digest not in by_digest:
            by_digest[digest] = len(images)
            images.append(_image_output(slot, ctx))
        slot.index = by_digest[digest]
    return images


def _image_output(slot: _Slot, ctx: _Context) -> ImageOutput:
    details: dict[str, Any] = {"mcp_server": ctx.server, "mcp_tool": ctx.tool, "source": slot.source}
    if slot.origin is not None and not slot.origin.startswith("data:"):
        details["origin"] = public_url(slot.origin) if slot.origin.startswith("http") else slot.origin
    return ImageOutput(data=slot.data, media_type=slot.media_type, provider_details=details)


def _render(pieces: list[Piece]) -> str:
    parts: list[str] = []
    for piece in pieces:
        if isinstance(piece, str):
            parts.append(piece)
        elif piece.index is not None:
            parts.append(placeholder(piece.index))
        elif piece.keeps_fallback and piece.fallback is not None:
            parts.append(piece.fallback)
        else:
            parts.append(f"[image from {piece.label} not used: {piece.error}]")
    return "".join(parts)


def _display(uri: str) -> str:
    """A URI fit for the text: http(s) links lose their path and query (signed links carry secrets)."""
    if uri.lower().startswith(("http://", "https://")) and _valid_url(uri):
        url = httpx2.URL(uri)
        return f"{url.scheme}://{url.netloc.decode('ascii', 'replace')}/..."
    return uri if len(uri) <= 120 else uri[:117] + "..."
