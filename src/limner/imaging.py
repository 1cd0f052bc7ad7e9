"""Image bytes: content sniffing, validation, orientation, thumbnails and masks.

Every image that enters limner (an upload, a provider's answer, an MCP result, a fetched URL) passes
:func:`validate_image` before it is stored: the decision is made from the bytes, never from a file name
or a declared type. The pixel cap is checked from the header before any pixel is decoded, so a
decompression bomb costs nothing. All Pillow work is CPU work and runs in a worker thread through the
``async`` wrappers; the ``*_sync`` functions exist for those threads and for tests.

Decoded pixels are what costs memory (a 150 KB PNG of 6300x6300 is 150 MB once decoded), so every
``async`` function here reads the header first, estimates the decoded bytes, and waits for room in the
process's :class:`DecodeBudget` (``LIMNER_DECODE_MEMORY_MB``) before it decodes: a burst of uploads or
thumbnails queues instead of holding them all at once. Thumbnails and vision copies never hold a second
full-size copy: a JPEG is decoded at a reduced scale (``draft``), other formats are reduced stripe by
stripe from the one decode Pillow makes.
"""

from __future__ import annotations

import ctypes
import hashlib
import io
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import cache
from typing import TypeVar

import anyio
import anyio.to_thread
from PIL import Image, ImageOps, UnidentifiedImageError

from limner.config import Settings
from limner.errors import ImageTooLargeError, UnsupportedImageError
from limner.imaging_structure import check_gif, check_png

log = logging.getLogger(__name__)

__all__ = [
    "ACCEPTED_MEDIA_TYPES",
    "DecodeBudget",
    "ImageInfo",
    "decode_budget",
    "extension_for",
    "make_thumbnail",
    "prepare_mask",
    "sniff_media_type",
    "validate_image",
    "validate_image_sync",
    "vision_copy",
]

ACCEPTED_MEDIA_TYPES = ("image/png", "image/jpeg", "image/webp", "image/gif")
_PIL_FORMATS = {
    "PNG": "image/png",
    "JPEG": "image/jpeg",
    # Multi-Picture JPEG (phone photos, gain-map HDR photos): a JPEG whose first picture every viewer shows.
    "MPO": "image/jpeg",
    "WEBP": "image/webp",
    "GIF": "image/gif",
}
_EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp", "image/gif": "gif"}
_ORIENTATION_TAG = 0x0112
# Checking an animation decodes every frame; these bound that work (a repeated frame costs a few bytes).
_MAX_ANIMATION_FRAMES = 10_000
_ANIMATION_PIXELS_FACTOR = 10  # all frames together: at most this many times LIMNER_MAX_IMAGE_PIXELS
_MIB = 1024 * 1024
_REDUCING_GAP = 2  # as Pillow's thumbnail(): reduce by an integer factor, then resample at least 2x down
_STRIPE_BYTES = 4 * _MIB  # converted rows held at once while reducing a large image
_TRIM_AFTER_BYTES = 64 * _MIB  # decoded since the last time freed memory was handed back to the system

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ImageInfo:
    """A validated image: the bytes to store (re-oriented if they needed it) and what they are."""

    data: bytes
    media_type: str
    width: int
    height: int
    sha256: str
    """Of ``data``: the content address the library stores it under (hashed in the same worker thread)."""


class DecodeBudget:
    """How many bytes of decoded pixels this process may hold at once; further decodes wait their turn.

    Waiters are served first come, first served, so a large decode is not starved by a stream of small
    ones. A decode larger than the whole budget runs when nothing else holds any, and alone. When the
    budget falls idle after large decodes, freed memory is handed back to the system (glibc keeps freed
    heap pages otherwise, and the server's resident size would stay at its peak). All methods run on the
    event loop; the estimate is an estimate (Pillow's own buffers and the encoders' are not counted).
    """

    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = limit_bytes
        self._in_use = 0
        self._queue: deque[_Waiter] = deque()
        self._since_trim = 0

    @property
    def in_use(self) -> int:
        """Bytes reserved by decodes running now."""
        return self._in_use

    @property
    def waiting(self) -> int:
        """How many decodes are waiting for room."""
        return len(self._queue)

    def set_limit(self, limit_bytes: int) -> None:
        """A new limit (``LIMNER_DECODE_MEMORY_MB`` at start); waiters that now fit go ahead."""
        self.limit_bytes = limit_bytes
        self._grant()

    @asynccontextmanager
    async def reserve(self, nbytes: int) -> AsyncIterator[None]:
        """Hold ``nbytes`` of the budget for the block, waiting until they fit."""
        await self._acquire(nbytes)
        try:
            yield
        finally:
            self._release(nbytes)
            if self._in_use == 0 and self._since_trim >= _TRIM_AFTER_BYTES:
                self._since_trim = 0
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(_give_back_memory)

    async def _acquire(self, nbytes: int) -> None:
        if not self._queue and self._fits(nbytes):
            self._take(nbytes)
            return
        waiter = _Waiter(nbytes, anyio.Event())
        self._queue.append(waiter)
        try:
            await waiter.granted.wait()
        except BaseException:  # cancelled while waiting, or just after being let in
            if waiter.granted.is_set():
                self._release(nbytes)
            else:
                self._queue.remove(waiter)
                self._grant()  # it may have been the one holding the others back
            raise

    def _fits(self, nbytes: int) -> bool:
        return self._in_use == 0 or self._in_use + nbytes <= self.limit_bytes

    def _take(self, nbytes: int) -> None:
        self._in_use += nbytes
        self._since_trim += nbytes

    def _release(self, nbytes: int) -> None:
        self._in_use -= nbytes
        self._grant()

    def _grant(self) -> None:
        while self._queue and self._fits(self._queue[0].nbytes):
            waiter = self._queue.popleft()
            self._take(waiter.nbytes)
            waiter.granted.set()


@dataclass(frozen=True, slots=True)
class _Waiter:
    nbytes: int
    granted: anyio.Event


_process_budget = DecodeBudget(Settings.model_fields["decode_memory_mb"].default * _MIB)


def decode_budget() -> DecodeBudget:
    """The process's budget: memory is per process, so every decode here shares it (the runtime sizes it)."""
    return _process_budget


@cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        trim: Callable[[int], int] = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to call
        return None
    return trim


def _give_back_memory() -> None:
    """Return freed heap pages to the system (glibc's ``malloc_trim``; elsewhere nothing to do).

    Pillow allocates pixels in 16 MB blocks; after the first is freed, glibc raises its mmap threshold
    and serves the next ones from the heap, which it does not shrink by itself.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


async def _budgeted(estimate: Callable[[], int], work: Callable[[], T], budget: DecodeBudget | None) -> T:
    """Estimate in a worker thread (reads the header only), wait for room, then work in a worker thread."""
    cost = await anyio.to_thread.run_sync(estimate)
    async with (budget or _process_budget).reserve(cost):
        return await anyio.to_thread.run_sync(work)


def sniff_media_type(data: bytes) -> str | None:
    """The media type from the magic bytes, or None when it is not one we accept."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def extension_for(media_type: str) -> str:
    """File extension for an accepted media type (for exports and downloads)."""
    return _EXTENSIONS.get(media_type, "bin")


def validate_image_sync(data: bytes, *, max_bytes: int, max_pixels: int, thorough: bool = True) -> ImageInfo:
    """Check bytes by content and return what to store; raise a specific InputError otherwise.

    A PNG's chunks and a GIF's blocks are walked first (:mod:`limner.imaging_structure`): a cut file is
    refused, and damage browsers tolerate (a bad CRC in an ancillary PNG chunk, a GIF's missing trailer)
    is repaired, so what is stored is what browsers show and a strict decoder reads. ``thorough`` then
    decodes every pixel of every frame. Without it (bytes from a provider, not from a person), a PNG
    stops at the chunk walk, which has checked every CRC and the final IEND: truncation and corruption
    in transit are caught at a few percent of the cost of a full decode (0.6 ms against 15 ms for a
    2.6 MB 1024x1024 PNG), though compressed data an encoder got wrong behind valid CRCs is not. Other
    formats are always decoded in full.
    """
    plan = _inspect(data, max_bytes=max_bytes, max_pixels=max_pixels, thorough=thorough)
    return plan.checked if plan.checked is not None else _decode_checked(plan)


async def validate_image(
    data: bytes, *, max_bytes: int, max_pixels: int, thorough: bool = True, budget: DecodeBudget | None = None
) -> ImageInfo:
    """:func:`validate_image_sync` in worker threads, the full decode within the decode budget."""
    plan = await anyio.to_thread.run_sync(
        lambda: _inspect(data, max_bytes=max_bytes, max_pixels=max_pixels, thorough=thorough)
    )
    if plan.checked is not None:
        return plan.checked
    async with (budget or _process_budget).reserve(plan.decoded_bytes):
        return await anyio.to_thread.run_sync(lambda: _decode_checked(plan))


@dataclass(frozen=True, slots=True)
class _Plan:
    """What the header and the structure walk said: enough to size the decode before it starts."""

    data: bytes
    media_type: str
    frames: int
    decoded_bytes: int
    checked: ImageInfo | None
    """Set when no decode is needed (a provider's PNG): the answer itself."""


def _inspect(data: bytes, *, max_bytes: int, max_pixels: int, thorough: bool) -> _Plan:
    """Sniff, walk the structure and read the header; every check that needs no pixel decoded."""
    media_type = _sniff_checked(data, max_bytes)
    data, frames = _check_structure(data, media_type)
    with _open(data, media_type) as im:
        _check_pixels(im.width, im.height, max_pixels)
        if not thorough and media_type == "image/png":
            # No EXIF orientation here: reading a PNG's EXIF decodes the pixels, and image services
            # do not rotate their output through EXIF.
            info = _info(data, media_type, im.width, im.height)
            return _Plan(data=data, media_type=media_type, frames=1, decoded_bytes=0, checked=info)
        frames = frames if frames is not None else _frames_to_decode(im)
        _check_frame_budget(media_type, frames, im.width, im.height, max_pixels)
        cost = _decode_cost(im, media_type, frames)
    return _Plan(data=data, media_type=media_type, frames=frames, decoded_bytes=cost, checked=None)


def _decode_checked(plan: _Plan) -> ImageInfo:
    """Decode every frame (damage a strict decoder refuses fails here) and turn a still image upright."""
    with _open(plan.data, plan.media_type) as im:
        _decode_fully(im, plan.media_type, plan.frames)
        # An animation keeps its bytes: an upright copy would be its first frame alone.
        rotated = _apply_orientation(im, plan.media_type) if plan.frames == 1 else None
        width, height = (rotated.width, rotated.height) if rotated is not None else im.size
    stored = _encode_like(rotated, plan.media_type) if rotated is not None else plan.data
    return _info(stored, plan.media_type, width, height)


def _info(data: bytes, media_type: str, width: int, height: int) -> ImageInfo:
    sha256 = hashlib.sha256(data).hexdigest()
    return ImageInfo(data=data, media_type=media_type, width=width, height=height, sha256=sha256)


def _sniff_checked(data: bytes, max_bytes: int) -> str:
    """The media type of bytes that are not empty, not over the size cap, and one of the accepted formats."""
    if not data:
        raise UnsupportedImageError("The file is empty.", hint="Send a PNG, JPEG, WebP or GIF image.")
    if len(data) > max_bytes:
        raise ImageTooLargeError(
            f"The image is {len(data):,} bytes; the limit is {max_bytes:,} bytes.",
            hint="Send a smaller image or ask the operator to raise LIMNER_MAX_UPLOAD_BYTES.",
        )
    media_type = sniff_media_type(data)
    if media_type is None:
        raise UnsupportedImageError(
            "The file is not a PNG, JPEG, WebP or GIF image (checked by content, not by name).",
            hint="Send one of the accepted image formats.",
        )
    return media_type


def _check_structure(data: bytes, media_type: str) -> tuple[bytes, int | None]:
    """The bytes to go on with (repaired where browsers repair them) and the frame count when known."""
    if media_type == "image/png":
        checked = check_png(data)
        if checked.dropped:  # not silent: the operator can see that stored bytes differ from those sent
            log.info("PNG stored without its damaged ancillary chunks %s (browsers skip them too)", checked.dropped)
        return checked.data, None
    if media_type == "image/gif":
        return check_gif(data)
    return data, None


def _pixel_bytes(mode: str) -> int:
    """Bytes Pillow keeps per pixel of ``mode`` (RGB is stored in four)."""
    if mode in ("1", "L", "P"):
        return 1
    return 2 if mode.startswith("I;16") else 4


def _decoder_extra(im: Image.Image, full: tuple[int, int]) -> int:
    """Bytes a decoder holds beside the image it fills, as measured with Pillow 13: libwebp's canvas and
    Pillow's copies of it (three more images' worth), a progressive JPEG's coefficients (6 bytes a pixel of
    the whole picture at 4:4:4, about 2 when ``draft`` decodes it at a reduced scale).
    """
    if im.format == "WEBP":
        return 3 * 4 * im.width * im.height
    if im.format in ("JPEG", "MPO") and "progressive" in im.info:
        return (6 if im.size == full else 2) * full[0] * full[1]
    return 0


def _decode_cost(im: Image.Image, media_type: str, frames: int) -> int:
    """Estimated peak bytes of decoding ``im``: an animation holds its frame, the previous one and a canvas
    (four bytes a pixel whatever the palette); a still image needs a second copy when it must be turned.
    """
    pixels, extra = im.width * im.height, _decoder_extra(im, im.size)
    if frames > 1:
        return 3 * 4 * pixels + extra
    if media_type == "image/png":  # a PNG's EXIF after the pixel data is only seen by decoding
        turns = "exif" in im.info
    else:
        turns = media_type != "image/gif" and im.getexif().get(_ORIENTATION_TAG, 1) not in (None, 1)
    return pixels * _pixel_bytes(im.mode) * (2 if turns else 1) + extra


def _open(data: bytes, media_type: str) -> Image.Image:
    try:
        im = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow's own guard fires above ~89 million pixels; ours (checked next) is usually lower.
        raise ImageTooLargeError(
            "The image has far too many pixels (a decompression bomb?).",
            hint="Send a smaller image.",
        ) from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise UnsupportedImageError(
            f"The {_format_name(media_type)} image could not be read: it is damaged or incomplete.",
            hint="Send the complete, undamaged file.",
        ) from exc
    if _PIL_FORMATS.get(im.format or "") != media_type:
        im.close()
        raise UnsupportedImageError(
            "The image's content does not match its format.", hint="Send an undamaged PNG, JPEG, WebP or GIF."
        )
    return im


def _check_pixels(width: int, height: int, max_pixels: int) -> None:
    if width <= 0 or height <= 0:
        raise UnsupportedImageError("The image has no pixels.", hint="Send a PNG, JPEG, WebP or GIF image.")
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"The image is {width}x{height} ({width * height:,} pixels); the limit is {max_pixels:,} pixels.",
            hint="Send a smaller image or ask the operator to raise LIMNER_MAX_IMAGE_PIXELS.",
        )


def _frames_to_decode(im: Image.Image) -> int:
    """Every frame of an animation; a multi-picture JPEG's first picture only (the one viewers show)."""
    return 1 if im.format == "MPO" else int(getattr(im, "n_frames", 1))


def _check_frame_budget(media_type: str, frames: int, width: int, height: int, max_pixels: int) -> None:
    """Refuse an animation too costly to check: every frame is decoded, and frames cost no bytes to repeat."""
    budget = _ANIMATION_PIXELS_FACTOR * max_pixels
    if frames > _MAX_ANIMATION_FRAMES or frames * width * height > budget:
        raise ImageTooLargeError(
            f"The {_format_name(media_type)} animation has {frames:,} frames of {width}x{height} "
            f"({frames * width * height:,} pixels in all); limner checks at most {_MAX_ANIMATION_FRAMES:,} "
            f"frames and {budget:,} pixels in all frames ({_ANIMATION_PIXELS_FACTOR} x LIMNER_MAX_IMAGE_PIXELS).",
            hint="Send a shorter or smaller animation, or ask the operator to raise LIMNER_MAX_IMAGE_PIXELS.",
        )


def _decode_fully(im: Image.Image, media_type: str, frames: int) -> None:
    """Decode every pixel of every frame: a truncated or corrupt file fails here rather than in a viewer later."""
    index = 0
    try:
        for index in range(frames):
            im.seek(index)
            im.load()
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        where = f"frame {index + 1} of {frames:,}" if frames > 1 else "its pixel data"
        raise UnsupportedImageError(
            f"The {_format_name(media_type)} image is damaged or truncated: {where} cannot be decoded.",
            hint="Send the complete, undamaged file.",
        ) from exc


def _format_name(media_type: str) -> str:
    return {"image/png": "PNG", "image/jpeg": "JPEG", "image/webp": "WebP", "image/gif": "GIF"}[media_type]


def _apply_orientation(im: Image.Image, media_type: str) -> Image.Image | None:
    """Return an upright copy when EXIF says the pixels are rotated, else None (keep the bytes)."""
    if media_type == "image/gif":
        return None
    orientation = im.getexif().get(_ORIENTATION_TAG, 1)
    if orientation in (None, 1):
        return None
    return ImageOps.exif_transpose(im)


def _encode_like(im: Image.Image, media_type: str) -> bytes:
    out = io.BytesIO()
    fmt = {"image/png": "PNG", "image/jpeg": "JPEG", "image/webp": "WEBP"}[media_type]
    options: dict[str, object] = {"quality": 95} if fmt in ("JPEG", "WEBP") else {}
    im.save(out, format=fmt, **options)
    return out.getvalue()


async def make_thumbnail(data: bytes, max_side: int = 256, *, budget: DecodeBudget | None = None) -> bytes:
    """A small WebP for listings and the side panel, made in worker threads within the decode budget."""
    return await _budgeted(lambda: _shrink_cost(data, max_side), lambda: _thumbnail_sync(data, max_side), budget)


def _thumbnail_sync(data: bytes, max_side: int) -> bytes:
    with Image.open(io.BytesIO(data)) as im:
        _draft(im, max_side)
        frame = _shrunk(im, max_side, "RGBA" if im.mode in ("P", "LA", "PA", "RGBA") else "RGB")
    out = io.BytesIO()
    frame.save(out, format="WEBP", quality=80, method=4)
    return out.getvalue()


async def vision_copy(data: bytes, max_side: int, *, budget: DecodeBudget | None = None) -> tuple[bytes, str]:
    """A copy for a chat model's eyes: at most ``max_side`` px, JPEG (PNG when transparent)."""
    return await _budgeted(lambda: _shrink_cost(data, max_side), lambda: _vision_copy_sync(data, max_side), budget)


def _vision_copy_sync(data: bytes, max_side: int) -> tuple[bytes, str]:
    with Image.open(io.BytesIO(data)) as im:
        _draft(im, max_side)
        has_alpha = im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info)
        frame = _shrunk(im, max_side, "RGBA" if has_alpha else "RGB")
    out = io.BytesIO()
    if has_alpha:
        frame.save(out, format="PNG", compress_level=3)
        return out.getvalue(), "image/png"
    frame.save(out, format="JPEG", quality=85)
    return out.getvalue(), "image/jpeg"


def _fitted(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    """``size`` scaled down to at most ``max_side`` on its longest side, keeping the aspect ratio."""
    width, height = size
    scale = min(1.0, max_side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def _draft(im: Image.Image, max_side: int) -> None:
    """A JPEG decodes at 1/2, 1/4 or 1/8 scale, still at least twice the target: the full size never exists."""
    width, height = _fitted(im.size, max_side)
    im.draft("RGB", (width * _REDUCING_GAP, height * _REDUCING_GAP))


def _reduce_factor(size: tuple[int, int], target: tuple[int, int]) -> int:
    return max(1, min(size[0] // (target[0] * _REDUCING_GAP), size[1] // (target[1] * _REDUCING_GAP)))


def _stripe_rows(width: int, factor: int) -> int:
    return factor * max(1, _STRIPE_BYTES // (4 * width * factor))


def _shrink_cost(data: bytes, max_side: int) -> int:
    """Estimated peak bytes of :func:`_shrunk` from the header (after ``draft``, which decodes nothing)."""
    with Image.open(io.BytesIO(data)) as im:
        full = im.size
        _draft(im, max_side)
        width, height = im.size
        factor = _reduce_factor(im.size, _fitted(im.size, max_side))
        frames = 2 if getattr(im, "is_animated", False) else 1  # the frame and the one before
        decoded = width * height * _pixel_bytes(im.mode) * frames + _decoder_extra(im, full)
    if factor == 1:
        return decoded + 4 * width * height  # converted whole: it is small enough
    stripe = 2 * 4 * width * min(height, _stripe_rows(width, factor))  # a stripe cropped, then converted
    reduced = 2 * 4 * -(-width // factor) * -(-height // factor)  # the reduced copy, then resampled
    return decoded + stripe + reduced


def _shrunk(im: Image.Image, max_side: int, mode: str) -> Image.Image:
    """A ``mode`` copy of ``im`` at most ``max_side`` px, beside the one full-size decode Pillow makes.

    Converting (a palette to RGBA, RGBA to premultiplied alpha for resampling) copies the whole image, so
    a large one is reduced by an integer factor stripe by stripe first, then resampled (Lanczos) from
    the reduced copy, as ``Image.thumbnail(reducing_gap=2)`` does without the full-size copies.
    """
    target = _fitted(im.size, max_side)
    factor = _reduce_factor(im.size, target)
    small = _reduced(im, factor, mode) if factor > 1 else im.convert(mode)
    return small if small.size == target else small.resize(target, Image.Resampling.LANCZOS)


def _reduced(im: Image.Image, factor: int, mode: str) -> Image.Image:
    width, height = im.size
    out = Image.new(mode, (-(-width // factor), -(-height // factor)))
    rows = _stripe_rows(width, factor)
    for top in range(0, height, rows):
        stripe = im.crop((0, top, width, min(height, top + rows)))  # the first crop decodes the image
        if stripe.mode != mode:
            stripe = stripe.convert(mode)
        out.paste(stripe.reduce(factor), (0, top // factor))
    return out


async def prepare_mask(mask: bytes, size: tuple[int, int], *, budget: DecodeBudget | None = None) -> bytes:
    """An RGBA PNG mask of exactly ``size``: providers require it to match the first image."""
    return await _budgeted(lambda: _mask_cost(mask, size), lambda: _mask_sync(mask, size), budget)


def _mask_cost(mask: bytes, size: tuple[int, int]) -> int:
    with Image.open(io.BytesIO(mask)) as im:
        decoded = im.width * im.height * (_pixel_bytes(im.mode) + 4)  # as decoded, then as RGBA
    return decoded + 4 * size[0] * size[1]


def _mask_sync(mask: bytes, size: tuple[int, int]) -> bytes:
    with Image.open(io.BytesIO(mask)) as im:
        has_alpha = im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info)
        if not has_alpha:
            raise UnsupportedImageError(
                "The mask has no transparency: the area to edit must be fully transparent (alpha 0).",
                hint="Send a PNG whose transparent pixels mark where the image may change.",
            )
        rgba = im.convert("RGBA")
    if rgba.size != size:
        rgba = rgba.resize(size, Image.Resampling.NEAREST)
    out = io.BytesIO()
    rgba.save(out, format="PNG", compress_level=1)
    return out.getvalue()
