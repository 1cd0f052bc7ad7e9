"""The web UI's postprocessing and interrogation: ``extra-single-image``, ``extra-batch-images``, ``interrogate``.

Facts from §2 of ``shared/apis/a1111.md`` and A1111's own ``modules/api/models.py`` (the request models),
``modules/postprocessing.py`` and ``scripts/postprocessing_upscale.py`` (what happens to the image).
Bodies are checked as those Pydantic models check them (types, ranges, ``resize_mode`` 0 or 1), then the
upscaler names as the upscale script asserts them. An image is sized exactly as A1111's ``Upscaler.upscale``
sizes it (the target rounded down to a multiple of 8; in "upscale to" mode the factor that covers the
canvas, then a centred crop onto it), with a Pillow filter standing in for the upscaler's model; the upscaler
"None" leaves the image as it is, as there. Face restoration is accepted and not applied. The result keeps the
input's PNG text chunks (the renderer's stamp, a generation's ``parameters``) and adds ``postprocessing``.

A caption comes from what an image says about itself: the sandbox renderer's stamp, else a web UI
infotext, gives the prompt it was made from; anything else is described by its shape and main colour.
``deepdanbooru`` answers in tags. Everything here is CPU work on images: run it in a worker thread.
"""

from __future__ import annotations

import html
import io
import re
from dataclasses import dataclass
from typing import Any

from PIL import Image, ImageStat, PngImagePlugin

from limner.sandbox.a1111_catalog import UPSCALERS, FlavourSpec
from limner.sandbox.a1111_errors import http_exception, server_exception, validation_error
from limner.sandbox.a1111_jobs import output_format, parse_infotext, quote
from limner.sandbox.a1111_params import MAX_SIDE, coerce_fields, decode_image, record_file
from limner.sandbox.recorder import RecordedFile
from limner.sandbox.renderer import read_stamp

__all__ = [
    "INTERROGATE_MODELS",
    "ExtrasRequest",
    "caption",
    "check_interrogation",
    "extras_request",
    "html_info",
    "postprocess",
]

INTERROGATE_MODELS = ("clip", "deepdanbooru")
_FIELDS: dict[str, tuple[str, Any]] = {
    "resize_mode": ("literal", 0),
    "show_extras_results": ("bool", True),
    "gfpgan_visibility": ("float", 0.0),
    "codeformer_visibility": ("float", 0.0),
    "codeformer_weight": ("float", 0.0),
    "upscaling_resize": ("float", 2.0),
    "upscaling_resize_w": ("int", 512),
    "upscaling_resize_h": ("int", 512),
    "upscaling_crop": ("bool", True),
    "upscaler_1": ("str", "None"),
    "upscaler_2": ("str", "None"),
    "extras_upscaler_2_visibility": ("float", 0.0),
    "upscale_first": ("bool", False),
}
_RANGES: dict[str, tuple[int | None, int | None]] = {
    "gfpgan_visibility": (0, 1),
    "codeformer_visibility": (0, 1),
    "codeformer_weight": (0, 1),
    "upscaling_resize": (1, 8),
    "upscaling_resize_w": (1, None),
    "upscaling_resize_h": (1, None),
    "extras_upscaler_2_visibility": (0, 1),
}
_FILTERS = {"Nearest": Image.Resampling.NEAREST}  # every other upscaler: Lanczos stands in for its model
_PIL_FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}
_STOPWORDS = frozenset({"a", "an", "the", "of", "in", "on", "at", "with", "and", "to", "for", "by", "is"})
_TRIGGER = re.compile(r"\[\[sandbox:[^\]]*\]\]")
_COLOURS: dict[str, tuple[int, int, int]] = {
    "black": (0, 0, 0),
    "white": (255, 255, 255),
    "grey": (128, 128, 128),
    "red": (220, 30, 30),
    "orange": (240, 140, 20),
    "yellow": (235, 220, 40),
    "green": (40, 170, 60),
    "cyan": (40, 200, 210),
    "blue": (30, 80, 220),
    "purple": (130, 50, 180),
    "pink": (240, 130, 180),
    "brown": (120, 75, 40),
}


@dataclass(frozen=True)
class ExtrasRequest:
    """A checked extras body: the upscale settings and the images, in order, with their names."""

    resize_mode: int
    upscaling_resize: float
    upscaling_resize_w: int
    upscaling_resize_h: int
    upscaling_crop: bool
    upscaler_1: str
    upscaler_2: str
    extras_upscaler_2_visibility: float
    images: tuple[tuple[str, bytes], ...]
    files: tuple[RecordedFile, ...]


def extras_request(data: dict[str, Any], spec: FlavourSpec, *, batch: bool) -> ExtrasRequest:
    """Check an extras body as the web UI does: a 422 for the model's rules, a 500 for an undecodable image."""
    problems: list[dict[str, Any]] = []
    values: dict[str, Any] = {}
    for name, (kind, _) in _FIELDS.items():  # in the model's order, as Pydantic reports them
        if kind == "literal":
            problems += _mode_problems(data, spec)
            continue
        values.update(coerce_fields(data, {name: (kind, None)}, spec, problems))
        problems += _range_problems(name, values.get(name), spec)
    if batch:
        listed = _image_list(data, spec, problems)
    else:
        listed = [("image", str(coerce_fields(data, {"image": ("str", "")}, spec, problems).get("image", "")))]
    if problems:
        raise validation_error(problems)
    effective = {name: values.get(name, default) for name, (_, default) in _FIELDS.items()}
    images = tuple((name, decode_image(spec, value)) for name, value in listed)
    files = tuple(record_file(f"imageList[{i}]" if batch else "image", d) for i, (_, d) in enumerate(images))
    return ExtrasRequest(
        resize_mode=int(data.get("resize_mode", 0)),
        upscaling_resize=float(effective["upscaling_resize"]),
        upscaling_resize_w=int(effective["upscaling_resize_w"]),
        upscaling_resize_h=int(effective["upscaling_resize_h"]),
        upscaling_crop=bool(effective["upscaling_crop"]),
        upscaler_1=str(effective["upscaler_1"]),
        upscaler_2=str(effective["upscaler_2"]),
        extras_upscaler_2_visibility=float(effective["extras_upscaler_2_visibility"]),
        images=images,
        files=files,
    )


def _item(
    spec: FlavourSpec, loc: list[str | int], v2: tuple[str, str], v1: tuple[str, str], value: Any, **ctx: Any
) -> dict[str, Any]:
    """One 422 item in the flavour's Pydantic style; ``v2``/``v1`` are (type, message), ``ctx`` as sent."""
    if spec.pydantic_v2:
        item: dict[str, Any] = {"type": v2[0], "loc": loc, "msg": v2[1], "input": value}
        return {**item, "ctx": ctx} if ctx else item
    item = {"loc": loc, "msg": v1[1], "type": v1[0]}
    return {**item, "ctx": ctx} if ctx else item


def _range_problems(name: str, value: Any, spec: FlavourSpec) -> list[dict[str, Any]]:
    """The ``ge``/``le`` bounds of one field of the request model."""
    low, high = _RANGES.get(name, (None, None))
    if value is None:
        return []
    loc: list[str | int] = ["body", name]
    if low is not None and value < low:
        v2 = ("greater_than_equal", f"Input should be greater than or equal to {low}")
        v1 = ("value_error.number.not_ge", f"ensure this value is greater than or equal to {low}")
        return [_item(spec, loc, v2, v1, value, **({"ge": low} if spec.pydantic_v2 else {"limit_value": low}))]
    if high is not None and value > high:
        v2 = ("less_than_equal", f"Input should be less than or equal to {high}")
        v1 = ("value_error.number.not_le", f"ensure this value is less than or equal to {high}")
        return [_item(spec, loc, v2, v1, value, **({"le": high} if spec.pydantic_v2 else {"limit_value": high}))]
    return []


def _mode_problems(data: dict[str, Any], spec: FlavourSpec) -> list[dict[str, Any]]:
    """``resize_mode`` is ``Literal[0, 1]``: no coercion, so ``"1"`` is refused as well as 2."""
    mode = data.get("resize_mode", 0)
    if isinstance(mode, int) and mode in (0, 1):
        return []
    v2 = ("literal_error", "Input should be 0 or 1")
    v1 = ("value_error.const", "unexpected value; permitted: 0, 1")
    context = {"expected": "0 or 1"} if spec.pydantic_v2 else {"given": mode, "permitted": [0, 1]}
    return [_item(spec, ["body", "resize_mode"], v2, v1, mode, **context)]


def _image_list(data: dict[str, Any], spec: FlavourSpec, problems: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """``imageList``: a required list of ``{"data", "name"}``; problems are added to ``problems``."""
    listed = data.get("imageList")
    if not isinstance(listed, list):
        if listed is None:
            problems.append(_item(spec, ["body", "imageList"], ("missing", "Field required"), _V1_MISSING, data))
        else:
            v2, v1 = ("list_type", "Input should be a valid list"), ("type_error.list", "value is not a valid list")
            problems.append(_item(spec, ["body", "imageList"], v2, v1, listed))
        return []
    found: list[tuple[str, str]] = []
    for index, entry in enumerate(listed):
        if not isinstance(entry, dict):
            v2 = ("model_attributes_type", "Input should be a valid dictionary or object to extract fields from")
            v1 = ("type_error.dict", "value is not a valid dict")
            problems.append(_item(spec, ["body", "imageList", index], v2, v1, entry))
            continue
        missing = [key for key in ("data", "name") if not isinstance(entry.get(key), str)]
        for key in missing:
            loc: list[str | int] = ["body", "imageList", index, key]
            problems.append(_item(spec, loc, ("missing", "Field required"), _V1_MISSING, entry))
        if not missing:
            found.append((entry["name"], entry["data"]))
    return found


_V1_MISSING = ("value_error.missing", "field required")


# -- upscaling -----------------------------------------------------------------------------------


def postprocess(data: bytes, req: ExtrasRequest, spec: FlavourSpec, samples_format: object) -> tuple[bytes, str]:
    """The image after the extras tab's upscale step, encoded per ``samples_format``, and its infotext."""
    names = {str(item["name"]) for item in UPSCALERS}
    first = None if req.upscaler_1 == "None" else req.upscaler_1
    if first is not None and first not in names:
        raise server_exception(spec, f"could not find upscaler named {first}", "AssertionError")
    with Image.open(io.BytesIO(data)) as opened:
        opened.load()
        kept = {key: value for key, value in opened.info.items() if isinstance(key, str) and isinstance(value, str)}
        image = opened if opened.mode in ("RGB", "RGBA") else opened.convert("RGB")
        info: dict[str, Any] = {}
        if first is not None:
            image = _upscale_step(image, req, first, info, spec)
    text = ", ".join(key if key == value else f"{key}: {quote(value)}" for key, value in info.items())
    return _encode(image, {**kept, "postprocessing": text}, output_format(samples_format)), text


def _upscale_step(
    image: Image.Image, req: ExtrasRequest, first: str, info: dict[str, Any], spec: FlavourSpec
) -> Image.Image:
    second = None if req.upscaler_2 == "None" else req.upscaler_2
    if second is not None and second not in {str(item["name"]) for item in UPSCALERS if item["name"] != "None"}:
        raise server_exception(spec, f"could not find upscaler named {second}", "AssertionError")
    upscaled = _upscale(image, req, first, info, spec)
    info["Postprocess upscaler"] = first
    if second is not None and req.extras_upscaler_2_visibility > 0:
        other = _upscale(image, req, second, info, spec)
        upscaled = Image.blend(upscaled, other.convert(upscaled.mode), req.extras_upscaler_2_visibility)
        info["Postprocess upscaler 2"] = second
    return upscaled


def _upscale(image: Image.Image, req: ExtrasRequest, name: str, info: dict[str, Any], spec: FlavourSpec) -> Image.Image:
    """A1111's arithmetic: factor (or the factor covering the canvas), target ×8 rounded down, then the crop."""
    width, height = req.upscaling_resize_w, req.upscaling_resize_h
    if req.resize_mode == 1:
        factor = max(width / image.width, height / image.height)
        info["Postprocess upscale to"] = f"{width}x{height}"
    else:
        factor = req.upscaling_resize
        info["Postprocess upscale by"] = factor
    target = (int(image.width * factor // 8 * 8), int(image.height * factor // 8 * 8))
    if min(target) < 1:
        raise server_exception(spec, "height and width must be > 0", "ValueError")
    if max(target) > MAX_SIDE or (req.resize_mode == 1 and max(width, height) > MAX_SIDE):
        raise server_exception(
            spec, f"CUDA out of memory. Tried to upscale to {target[0]}x{target[1]} (sandbox limit)", "OutOfMemoryError"
        )
    result = image if image.size == target else image.resize(target, _FILTERS.get(name, Image.Resampling.LANCZOS))
    if req.resize_mode == 1 and req.upscaling_crop:
        canvas = Image.new("RGB", (width, height))
        canvas.paste(result, (width // 2 - result.width // 2, height // 2 - result.height // 2))
        result = canvas
        info["Postprocess crop to"] = f"{width}x{height}"
    return result


def _encode(image: Image.Image, text: dict[str, str], fmt: str) -> bytes:
    """PNG with every text chunk, as the web UI's encoder writes it; JPEG and WebP without them."""
    out = io.BytesIO()
    if fmt == "png":
        chunks = PngImagePlugin.PngInfo()
        for key, value in text.items():
            chunks.add_text(key, value)
        image.save(out, "PNG", pnginfo=chunks, compress_level=1)
    else:
        image.convert("RGB").save(out, _PIL_FORMATS[fmt], quality=90)
    return out.getvalue()


def html_info(text: str) -> str:
    """The web UI's ``plaintext_to_html``: each line escaped, joined by ``<br>``, in one paragraph."""
    return "<p>" + "<br>\n".join(html.escape(line) for line in text.split("\n")) + "</p>"


# -- interrogation -------------------------------------------------------------------------------


def caption(data: bytes, model: str) -> str:
    """What ``model`` would say the picture shows: its prompt when the picture names one, else its look."""
    prompt = _told_prompt(data)
    if model == "deepdanbooru":
        if prompt:
            words = re.findall(r"[a-z0-9]+", prompt.lower())
            return ", ".join(dict.fromkeys(word for word in words if word not in _STOPWORDS))
        return f"no_humans, simple_background, {_main_colour(data)}_theme"
    if prompt:
        return prompt
    return f"a {_main_colour(data)} {_shape(data)} picture"


def _told_prompt(data: bytes) -> str:
    """The prompt from the renderer's stamp or a web UI infotext, sandbox triggers removed."""
    stamp = read_stamp(data)
    told = stamp.get("prompt") if stamp is not None else None
    if not isinstance(told, str):
        with Image.open(io.BytesIO(data)) as image:
            parameters = image.info.get("parameters")
        told = parse_infotext(parameters).get("Prompt") if isinstance(parameters, str) else None
    return " ".join(_TRIGGER.sub(" ", told).split()) if isinstance(told, str) else ""


def _main_colour(data: bytes) -> str:
    with Image.open(io.BytesIO(data)) as image:
        mean = ImageStat.Stat(image.convert("RGB")).mean
    return min(_COLOURS, key=lambda name: sum((a - b) ** 2 for a, b in zip(mean, _COLOURS[name], strict=True)))


def _shape(data: bytes) -> str:
    with Image.open(io.BytesIO(data)) as image:
        width, height = image.size
    return "square" if abs(width - height) <= min(width, height) // 10 else "wide" if width > height else "tall"


def check_interrogation(data: dict[str, Any], spec: FlavourSpec) -> tuple[bytes, str, list[RecordedFile]]:
    """The image and model of an ``interrogate`` body: 500 for an undecodable image, then 404 for a model."""
    values = coerce_fields(data, {"image": ("str", ""), "model": ("str", "clip")}, spec)
    image = decode_image(spec, values.get("image", ""))
    model = str(values.get("model", "clip"))
    if model not in INTERROGATE_MODELS:
        raise http_exception(spec, 404, "Model not found")
    return image, model, [record_file("image", image)]
