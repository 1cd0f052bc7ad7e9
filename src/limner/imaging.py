"""Image bytes: content sniffing, validation, orientation, thumbnails and masks.

Every image that enters limner (an upload, a provider's answer, an MCP result, a fetched URL) passes
:func:`validate_image` before it is stored: the decision is made from the bytes, never from a file name
or a declared type. The pixel cap is checked from the header before any pixel is decoded, so a
decompression bomb costs nothing. All Pillow work is CPU work and runs in a worker thread through the
``async`` wrappers; the ``*_sync`` functions exist for those threads and for tests.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass

import anyio.to_thread
from PIL import Image, ImageOps, UnidentifiedImageError

from limner.errors import ImageTooLargeError, UnsupportedImageError
from limner.imaging_structure import check_gif, check_png

log = logging.getLogger(__name__)

__all__ = [
    "ACCEPTED_MEDIA_TYPES",
    "ImageInfo",
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


@dataclass(frozen=True, slots=True)
class ImageInfo:
    """A validated image: the bytes to store (re-oriented if they needed it) and what they are."""

    data: bytes
    media_type: str
    width: int
    height: int


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
    media_type = _sniff_checked(data, max_bytes)
    data, frames = _check_structure(data, media_type)
    if not thorough and media_type == "image/png":
        with _open(data, media_type) as im:
            _check_pixels(im.width, im.height, max_pixels)
        # No EXIF orientation here: reading a PNG's EXIF decodes the pixels, and image services
        # do not rotate their output through EXIF.
        return ImageInfo(data=data, media_type=media_type, width=im.width, height=im.height)
    with _open(data, media_type) as im:
        _check_pixels(im.width, im.height, max_pixels)
        frames = frames if frames is not None else _frames_to_decode(im)
        _check_frame_budget(media_type, frames, im.width, im.height, max_pixels)
        _decode_fully(im, media_type, frames)
        # An animation keeps its bytes: an upright copy would be its first frame alone.
        rotated = _apply_orientation(im, media_type) if frames == 1 else None
        width, height = (rotated.width, rotated.height) if rotated is not None else im.size
    stored = _encode_like(rotated, media_type) if rotated is not None else data
    return ImageInfo(data=stored, media_type=media_type, width=width, height=height)


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


async def validate_image(data: bytes, *, max_bytes: int, max_pixels: int, thorough: bool = True) -> ImageInfo:
    """:func:`validate_image_sync` in a worker thread (decoding must not block the event loop)."""
    return await anyio.to_thread.run_sync(
        lambda: validate_image_sync(data, max_bytes=max_bytes, max_pixels=max_pixels, thorough=thorough)
    )


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


def _thumbnail_sync(data: bytes, max_side: int) -> bytes:
    with Image.open(io.BytesIO(data)) as im:
        im.draft("RGB", (max_side, max_side))  # JPEG decodes at a reduced scale: much faster
        frame = im.convert("RGBA") if im.mode in ("P", "LA", "PA", "RGBA") else im.convert("RGB")
        frame.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
        out = io.BytesIO()
        frame.save(out, format="WEBP", quality=80, method=4)
        return out.getvalue()


async def make_thumbnail(data: bytes, max_side: int = 256) -> bytes:
    """A small WebP for listings and the side panel, made in a worker thread."""
    return await anyio.to_thread.run_sync(lambda: _thumbnail_sync(data, max_side))


def _vision_copy_sync(data: bytes, max_side: int) -> tuple[bytes, str]:
    with Image.open(io.BytesIO(data)) as im:
        im.draft("RGB", (max_side, max_side))
        has_alpha = im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info)
        frame = im.convert("RGBA" if has_alpha else "RGB")
        frame.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
        out = io.BytesIO()
        if has_alpha:
            frame.save(out, format="PNG", compress_level=3)
            return out.getvalue(), "image/png"
        frame.save(out, format="JPEG", quality=85)
        return out.getvalue(), "image/jpeg"


async def vision_copy(data: bytes, max_side: int) -> tuple[bytes, str]:
    """A copy for a chat model's eyes: at most ``max_side`` px, JPEG (PNG when transparent)."""
    return await anyio.to_thread.run_sync(lambda: _vision_copy_sync(data, max_side))


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


async def prepare_mask(mask: bytes, size: tuple[int, int]) -> bytes:
    """An RGBA PNG mask of exactly ``size``: providers require it to match the first image."""
    return await anyio.to_thread.run_sync(lambda: _mask_sync(mask, size))
