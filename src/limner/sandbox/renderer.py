"""Deterministic pictures for the sandbox emulators.

The emulators stand in for real image services, so their output has to be a real image a person
(and a test) can tell apart from the others: colours and shapes come from a hash of the prompt
and a variant index, the prompt's words are drawn on top, and an edit visibly transforms the
images it was given. Everything here is synchronous CPU work; callers on an event loop must run
it in a worker thread.

PNG outputs carry a ``tEXt`` chunk named ``limner-sandbox`` holding JSON that says what produced
the picture (prompt, kind, sha256 of every input, whether a mask was used, variant), so tests
anywhere in the project can check which inputs reached the upstream with :func:`read_stamp`.

This module imports nothing from limner outside ``limner.sandbox``.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import threading
from dataclasses import dataclass
from typing import Any, Literal

from PIL import Image, ImageChops, ImageDraw, ImageFont, PngImagePlugin

OutputFormat = Literal["png", "jpeg", "webp"]

STAMP_KEY = "limner-sandbox"
_PIL_FORMATS: dict[str, str] = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}
_BANNER_FILL = (16, 16, 24, 200)


@dataclass(frozen=True)
class ImageProbe:
    """What the emulators need to know about an uploaded image before rendering with it."""

    format: str | None
    width: int
    height: int
    mode: str
    has_transparency: bool


def probe_image(data: bytes) -> ImageProbe | None:
    """Decode just enough of ``data`` to validate it; None when Pillow cannot read it at all.

    The pixel data is loaded too, because a truncated file only fails at decode time and the
    real service reports that as an invalid image rather than failing later.
    """
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            has_alpha = img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info
            return ImageProbe(img.format, img.width, img.height, img.mode, has_alpha)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


def render_generation(
    prompt: str,
    width: int,
    height: int,
    fmt: OutputFormat,
    *,
    transparent: bool = False,
    variant: int = 0,
    quality: int | None = None,
    coarseness: int = 1,
) -> bytes:
    """Draw the picture a generation of ``prompt`` returns, identical for identical arguments.

    ``coarseness`` above 1 pixelates the result by that block size, which is how the emulators
    produce the lower-detail partial images of a stream.
    """
    _check_transparency(fmt, transparent)
    canvas = _compose_generation(prompt, width, height, transparent=transparent, variant=variant)
    canvas = _pixelate(canvas, coarseness)
    stamp = _stamp("generation", prompt, [], mask=False, variant=variant, coarseness=coarseness)
    return _encode(canvas, fmt, quality=quality, stamp=stamp, transparent=transparent)


def render_edit(
    inputs: list[bytes],
    prompt: str,
    width: int,
    height: int,
    fmt: OutputFormat,
    *,
    mask: bytes | None = None,
    variant: int = 0,
    transparent: bool = False,
    quality: int | None = None,
    coarseness: int = 1,
) -> bytes:
    """Draw an edit that shows which inputs it used.

    The first input, resized, is the base; inside the mask's fully transparent pixels (or over
    the whole base when there is no mask) its colours are inverted; every further input appears
    untouched as a tile along the bottom edge, so its mean colour can be compared; the edit
    prompt sits on a banner at the top.
    """
    if not inputs:
        raise ValueError("render_edit needs at least one input image")
    _check_transparency(fmt, transparent)
    base = _decode_rgba(inputs[0]).resize((width, height), Image.Resampling.BILINEAR)
    base = _invert_region(base, _edit_region(mask, width, height))
    _paste_tiles(base, [_decode_rgba(data) for data in inputs[1:]])
    _draw_banner(base, prompt, variant)
    canvas = base if transparent else _flatten(base)
    canvas = _pixelate(canvas, coarseness)
    stamp = _stamp("edit", prompt, inputs, mask=mask is not None, variant=variant, coarseness=coarseness)
    return _encode(canvas, fmt, quality=quality, stamp=stamp, transparent=transparent)


def read_stamp(png_bytes: bytes) -> dict[str, Any] | None:
    """Return the ``limner-sandbox`` JSON of a sandbox PNG, or None for anything else."""
    try:
        with Image.open(io.BytesIO(png_bytes)) as img:
            if img.format != "PNG":
                return None
            raw = img.info.get(STAMP_KEY)
    except (OSError, ValueError):
        return None
    if not isinstance(raw, str):
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _check_transparency(fmt: OutputFormat, transparent: bool) -> None:
    if fmt not in _PIL_FORMATS:
        raise ValueError(f"unsupported output format {fmt!r}")
    if transparent and fmt == "jpeg":
        raise ValueError("jpeg cannot carry a transparent background")


def _seeded(prompt: str, variant: int) -> random.Random:
    """A generator seeded by the prompt and variant only, so renders never depend on the process."""
    digest = hashlib.sha256(f"{prompt}\x00{variant}".encode()).digest()
    return random.Random(int.from_bytes(digest[:16], "big"))  # noqa: S311 - pictures, not secrets


def _colour(rng: random.Random, low: int = 0, high: int = 255) -> tuple[int, int, int]:
    return (rng.randint(low, high), rng.randint(low, high), rng.randint(low, high))


def _compose_generation(prompt: str, width: int, height: int, *, transparent: bool, variant: int) -> Image.Image:
    rng = _seeded(prompt, variant)
    background = _colour(rng, 40, 215)
    mode = "RGBA" if transparent else "RGB"
    fill: tuple[int, ...] = (0, 0, 0, 0) if transparent else background
    canvas = Image.new(mode, (width, height), fill)
    draw = ImageDraw.Draw(canvas)
    for _ in range(rng.randint(3, 6)):
        _draw_shape(draw, rng, width, height)
    _draw_caption(draw, prompt, width, height, variant)
    return canvas


def _draw_shape(draw: ImageDraw.ImageDraw, rng: random.Random, width: int, height: int) -> None:
    """One circle, rectangle or polygon; sizes are relative so every resolution looks alike."""
    colour = (*_colour(rng), 255)
    span = min(width, height)
    cx, cy = rng.randint(0, width), rng.randint(0, height)
    radius = rng.randint(span // 10, span // 3)
    kind = rng.choice(("circle", "rect", "polygon"))
    if kind == "circle":
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=colour)
    elif kind == "rect":
        half_w, half_h = radius, rng.randint(span // 12, span // 4)
        draw.rectangle((cx - half_w, cy - half_h, cx + half_w, cy + half_h), fill=colour)
    else:
        sides = rng.randint(3, 6)
        draw.regular_polygon((cx, cy, radius), sides, rotation=rng.randint(0, 359), fill=colour)


_fonts = threading.local()


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Fonts are cached per thread: a FreeType face must not be used by two threads at once."""
    cache: dict[int, ImageFont.FreeTypeFont | ImageFont.ImageFont] | None = getattr(_fonts, "cache", None)
    if cache is None:
        cache = _fonts.cache = {}
    if size not in cache:
        cache[size] = ImageFont.load_default(size=size)
    return cache[size]


def _wrap(text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont, max_width: int) -> list[str]:
    """Greedy word wrap; a single word wider than the line is cut rather than overflowing."""
    lines: list[str] = []
    current = ""
    for word in text.split():
        candidate = f"{current} {word}".strip()
        if font.getlength(candidate) <= max_width or not current:
            current = candidate
            continue
        lines.append(current)
        current = word
    if current:
        lines.append(current)
    return [_clip(line, font, max_width) for line in lines]


def _clip(line: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont, max_width: int) -> str:
    while len(line) > 1 and font.getlength(line) > max_width:
        line = line[:-2] + "~"
    return line


def _draw_caption(draw: ImageDraw.ImageDraw, prompt: str, width: int, height: int, variant: int) -> None:
    """The prompt in large outlined text, centred, as many lines as fit; then the variant number."""
    size = max(10, min(width, height) // 16)
    font = _font(size)
    margin = max(4, width // 20)
    line_height = int(size * 1.25)
    max_lines = max(1, (height - 2 * margin) // line_height - 1)
    lines = _wrap(prompt or "(empty prompt)", font, width - 2 * margin)
    if len(lines) > max_lines:
        lines = [*lines[: max_lines - 1], lines[max_lines - 1] + " ..."]
    top = max(margin, (height - line_height * len(lines)) // 2)
    stroke = max(1, size // 12)
    for index, line in enumerate(lines):
        x = (width - font.getlength(line)) / 2
        draw.text(
            (x, top + index * line_height),
            line,
            font=font,
            fill=(255, 255, 255, 255),
            stroke_width=stroke,
            stroke_fill=(0, 0, 0, 255),
        )
    label_font = _font(max(8, size // 2))
    draw.text(
        (margin // 2, margin // 2),
        f"#{variant + 1}",
        font=label_font,
        fill=(255, 255, 255, 255),
        stroke_width=1,
        stroke_fill=(0, 0, 0, 255),
    )


def _decode_rgba(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as img:
        return img.convert("RGBA")


def _edit_region(mask: bytes | None, width: int, height: int) -> Image.Image | None:
    """An ``L`` image that is 255 where the edit applies: the mask's alpha-0 pixels, else None."""
    if mask is None:
        return None
    alpha = _decode_rgba(mask).getchannel("A").resize((width, height), Image.Resampling.NEAREST)
    return alpha.point(lambda value: 255 if value == 0 else 0)


def _invert_region(base: Image.Image, region: Image.Image | None) -> Image.Image:
    """Invert colours (never alpha) inside ``region``, or everywhere when there is none."""
    red, green, blue, alpha = base.split()
    inverted_rgb = ImageChops.invert(Image.merge("RGB", (red, green, blue)))
    inverted = Image.merge("RGBA", (*inverted_rgb.split(), alpha))
    if region is None:
        return inverted
    return Image.composite(inverted, base, region)


def _paste_tiles(base: Image.Image, tiles: list[Image.Image]) -> None:
    """Lay the extra inputs along the bottom edge, unmodified apart from scaling."""
    if not tiles:
        return
    gap = max(2, base.width // 128)
    side = min(base.height // 4, (base.width - gap * (len(tiles) + 1)) // len(tiles))
    side = max(side, 1)
    top = base.height - side - gap
    for index, tile in enumerate(tiles):
        left = gap + index * (side + gap)
        base.paste(tile.resize((side, side), Image.Resampling.BILINEAR), (left, top))


def _draw_banner(base: Image.Image, prompt: str, variant: int) -> None:
    size = max(10, min(base.width, base.height) // 24)
    font = _font(size)
    margin = max(4, base.width // 40)
    lines = _wrap(f"edit #{variant + 1}: {prompt}", font, base.width - 2 * margin)[:3]
    line_height = int(size * 1.25)
    banner = Image.new("RGBA", (base.width, line_height * len(lines) + margin), _BANNER_FILL)
    draw = ImageDraw.Draw(banner)
    for index, line in enumerate(lines):
        draw.text((margin, margin // 2 + index * line_height), line, font=font, fill=(255, 255, 255, 255))
    base.alpha_composite(banner, (0, 0))


def _flatten(image: Image.Image) -> Image.Image:
    """Put an RGBA picture on white, as an opaque output has no alpha to keep."""
    if image.mode != "RGBA":
        return image.convert("RGB")
    backdrop = Image.new("RGB", image.size, (255, 255, 255))
    backdrop.paste(image, mask=image.getchannel("A"))
    return backdrop


def _pixelate(image: Image.Image, coarseness: int) -> Image.Image:
    if coarseness <= 1:
        return image
    small = (max(1, image.width // coarseness), max(1, image.height // coarseness))
    return image.resize(small, Image.Resampling.BOX).resize(image.size, Image.Resampling.NEAREST)


def _stamp(kind: str, prompt: str, inputs: list[bytes], *, mask: bool, variant: int, coarseness: int) -> str:
    payload: dict[str, Any] = {
        "prompt": prompt,
        "kind": kind,
        "inputs": [hashlib.sha256(data).hexdigest() for data in inputs],
        "mask": mask,
        "variant": variant,
    }
    if coarseness > 1:
        payload["coarseness"] = coarseness
    return json.dumps(payload, ensure_ascii=False, sort_keys=True)


def _encode(image: Image.Image, fmt: OutputFormat, *, quality: int | None, stamp: str, transparent: bool) -> bytes:
    """Encode fast rather than small: the sandbox is measured for overhead, not bandwidth."""
    if not transparent and image.mode != "RGB":
        image = _flatten(image)
    buffer = io.BytesIO()
    if fmt == "png":
        info = PngImagePlugin.PngInfo()
        info.add_text(STAMP_KEY, stamp)
        image.save(buffer, "PNG", compress_level=1, pnginfo=info)
    elif fmt == "jpeg":
        image.save(buffer, "JPEG", quality=_clamp_quality(quality, 90))
    else:
        image.save(buffer, "WEBP", quality=_clamp_quality(quality, 80), method=0)
    return buffer.getvalue()


def _clamp_quality(quality: int | None, default: int) -> int:
    if quality is None:
        return default
    return max(1, min(95, quality))
