"""What one BFL task renders: input images decoded and checked, the output size, and the picture itself.

Everything here is synchronous CPU work (base64, Pillow); the emulator runs it in a worker thread.
Kontext and FLUX.2 ``input_image*`` fields take base64 (with or without a ``data:`` prefix) or an http(s)
URL; the sandbox never fetches a URL (it has no business reaching out), so such a task ends in ``Error``
with a detail saying so. ``image``, ``mask`` and ``image_prompt`` are base64 only, as in the schemas.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import re
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from limner.sandbox.bfl_catalog import (
    KONTEXT_PIXELS,
    ULTRA_PIXELS,
    EndpointSpec,
    aspect_size,
    flux2_size,
)
from limner.sandbox.recorder import RecordedFile
from limner.sandbox.renderer import OutputFormat, probe_image, render_edit, render_generation

__all__ = ["DecodedInputs", "InputProblem", "Job", "decode_inputs", "output_size", "render_job", "upsample"]

_DATA_URL = re.compile(r"^data:(image/[a-z0-9.+-]+)?(;[a-z0-9=-]+)*;base64,", re.IGNORECASE)
_BASE64_ONLY = ("image", "mask", "image_prompt")
_UPSAMPLED_SUFFIX = ", rendered in rich detail with soft natural light"


class InputProblem(Exception):
    """A request whose image fields cannot be used; carries the 422 ``detail`` items."""

    def __init__(self, detail: list[dict[str, Any]]) -> None:
        super().__init__(detail)
        self.detail = detail


@dataclass(frozen=True)
class DecodedInputs:
    """The usable images of a request, in field order, and what the request log should say about them."""

    images: tuple[bytes, ...] = ()
    sizes: tuple[tuple[int, int], ...] = ()
    mask: bytes | None = None
    image_prompt: bytes | None = None
    url_fields: tuple[str, ...] = ()
    recorded: list[RecordedFile] = field(default_factory=list)

    @property
    def input_pixels(self) -> int:
        """Pixels of every input image, for ``input_mp`` and FLUX.2 billing."""
        return sum(width * height for width, height in self.sizes)


@dataclass(frozen=True)
class Job:
    """Everything needed to draw a task's output, fixed when the task is submitted."""

    spec: EndpointSpec
    prompt: str
    inputs: tuple[bytes, ...]
    mask: bytes | None
    width: int
    height: int
    output_format: OutputFormat
    seed: int


def _problem(name: str, value: str, message: str) -> InputProblem:
    shown = value if len(value) <= 64 else f"{value[:61]}..."
    item = {"type": "value_error", "loc": ["body", name], "msg": f"Value error, {message}", "input": shown}
    return InputProblem([{**item, "ctx": {"error": {}}}])


def _decode_one(name: str, value: str) -> tuple[bytes, tuple[int, int], RecordedFile]:
    data_url = _DATA_URL.match(value)
    payload = value[data_url.end() :] if data_url else value
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise _problem(name, value, f"{name} is neither a URL nor valid base64") from None
    probe = probe_image(data)
    if probe is None:
        raise _problem(name, value, f"{name} does not decode to an image")
    media_type = f"image/{(probe.format or 'unknown').lower()}"
    record = RecordedFile(name, None, media_type, len(data), hashlib.sha256(data).hexdigest())
    return data, (probe.width, probe.height), record


def decode_inputs(spec: EndpointSpec, params: dict[str, Any]) -> DecodedInputs:
    """Decode and check every image field that was sent; raises :class:`InputProblem` for a bad one."""
    images: list[bytes] = []
    sizes: list[tuple[int, int]] = []
    recorded: list[RecordedFile] = []
    urls: list[str] = []
    extras: dict[str, bytes] = {}
    for name in (*spec.image_fields, "mask", "image_prompt"):
        value = params.get(name)
        if not isinstance(value, str):
            continue
        if value.startswith(("http://", "https://")):
            if name in _BASE64_ONLY:
                raise _problem(name, value, f"{name} must be base64-encoded")
            urls.append(name)
            continue
        data, size, record = _decode_one(name, value)
        recorded.append(record)
        if name in ("mask", "image_prompt"):
            extras[name] = data
        else:
            images.append(data)
            sizes.append(size)
    return DecodedInputs(
        tuple(images), tuple(sizes), extras.get("mask"), extras.get("image_prompt"), tuple(urls), recorded
    )


def output_size(spec: EndpointSpec, params: dict[str, Any], inputs: DecodedInputs) -> tuple[int, int]:
    """The size the endpoint would produce for these parameters (§5: ×32, aspect rules, 4 MP caps)."""
    first = inputs.sizes[0] if inputs.sizes else None
    match spec.kind:
        case "flux1":
            return int(params["width"]), int(params["height"])
        case "ultra":
            return aspect_size(str(params["aspect_ratio"]), ULTRA_PIXELS)
        case "kontext":
            ratio = params.get("aspect_ratio") or (f"{first[0]}:{first[1]}" if first else "1:1")
            return aspect_size(str(ratio), KONTEXT_PIXELS)
        case "flux2":
            return flux2_size(params.get("width"), params.get("height"), first)
        case "fill":
            return first or (1024, 1024)
        case "expand":
            width, height = first or (1024, 1024)
            return width + params["left"] + params["right"], height + params["top"] + params["bottom"]
    raise ValueError(f"unknown endpoint kind {spec.kind!r}")


def upsample(prompt: str) -> str:
    """What "prompt upsampling" makes of a prompt here: visibly different, so clients can show it."""
    return prompt + _UPSAMPLED_SUFFIX


def _renderer_mask(mask: bytes) -> bytes:
    """BFL masks repaint white pixels; the renderer edits where alpha is 0, so white becomes transparent."""
    with Image.open(io.BytesIO(mask)) as img:
        grey = img.convert("L")
    alpha = grey.point(lambda value: 0 if value >= 128 else 255)
    out = Image.new("RGBA", grey.size, (0, 0, 0, 255))
    out.putalpha(alpha)
    buffer = io.BytesIO()
    out.save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


def render_job(job: Job) -> bytes:
    """Draw the output: a generation, or an edit that shows which inputs it used (PNG outputs are stamped)."""
    if not job.inputs:
        return render_generation(job.prompt, job.width, job.height, job.output_format)
    mask = _renderer_mask(job.mask) if job.mask is not None else None
    return render_edit(list(job.inputs), job.prompt, job.width, job.height, job.output_format, mask=mask)
