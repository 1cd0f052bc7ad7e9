"""Turn a ``txt2img``/``img2img`` JSON body into a job, the way the web UI's request models do.

Every field is optional and leniently typed (a numeric string is a number); unknown keys are
ignored; a value of the wrong type is a FastAPI 422 in the flavour's Pydantic style. The defaults
are the flavour's (§3, §4, §8, §9 of ``shared/apis/a1111.md``), and ``parameters`` echoes every
field of the request model, defaults included. Input images are decoded and checked here, so this
module's :func:`build_job` is CPU work: run it in a worker thread.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import ipaddress
import math
import random
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

from PIL import Image, ImageChops

from limner.sandbox.a1111_catalog import (
    Checkpoint,
    FlavourSpec,
    Sampler,
    find_checkpoint,
    resolve_a1111_sampler,
    resolve_sdnext_sampler,
)
from limner.sandbox.a1111_errors import (
    A1111Error,
    http_exception,
    server_exception,
    validation_error,
    validation_item,
)
from limner.sandbox.recorder import RecordedFile
from limner.sandbox.renderer import probe_image

JobKind = Literal["txt2img", "img2img"]
SEED_LIMIT = 4294967294
MAX_SIDE = 8192
MAX_IMAGES = 64
_INT, _FLOAT, _BOOL, _STR, _LIST, _DICT, _PROMPT = "int", "float", "bool", "str", "list", "dict", "prompt"
_INT_OR_STR = "int_or_str"
_TRUE = frozenset({"true", "1", "yes", "on", "t", "y"})
_FALSE = frozenset({"false", "0", "no", "off", "f", "n"})

_SHARED: dict[str, tuple[str, Any]] = {
    "prompt": (_PROMPT, ""),
    "negative_prompt": (_PROMPT, ""),
    "styles": (_LIST, None),
    "seed": (_INT, -1),
    "subseed": (_INT, -1),
    "subseed_strength": (_FLOAT, 0.0),
    "seed_resize_from_h": (_INT, -1),
    "seed_resize_from_w": (_INT, -1),
    "sampler_name": (_STR, None),
    "scheduler": (_STR, None),
    "batch_size": (_INT, 1),
    "n_iter": (_INT, 1),
    "steps": (_INT, 50),
    "cfg_scale": (_FLOAT, 7.0),
    "width": (_INT, 512),
    "height": (_INT, 512),
    "restore_faces": (_BOOL, None),
    "tiling": (_BOOL, None),
    "do_not_save_samples": (_BOOL, False),
    "do_not_save_grid": (_BOOL, False),
    "eta": (_FLOAT, None),
    "denoising_strength": (_FLOAT, None),
    "s_min_uncond": (_FLOAT, None),
    "s_churn": (_FLOAT, None),
    "s_tmax": (_FLOAT, None),
    "s_tmin": (_FLOAT, None),
    "s_noise": (_FLOAT, None),
    "override_settings": (_DICT, None),
    "override_settings_restore_afterwards": (_BOOL, True),
    "refiner_checkpoint": (_STR, None),
    "refiner_switch_at": (_FLOAT, None),
    "disable_extra_networks": (_BOOL, False),
    "firstpass_image": (_STR, None),
    "comments": (_DICT, None),
    "sampler_index": (_STR, "Euler"),
    "script_name": (_STR, None),
    "script_args": (_LIST, []),
    "send_images": (_BOOL, True),
    "save_images": (_BOOL, False),
    "alwayson_scripts": (_DICT, {}),
    "force_task_id": (_STR, None),
    "infotext": (_STR, None),
}
_TXT2IMG: dict[str, tuple[str, Any]] = {
    "enable_hr": (_BOOL, False),
    "denoising_strength": (_FLOAT, 0.75),
    "firstphase_width": (_INT, 0),
    "firstphase_height": (_INT, 0),
    "hr_scale": (_FLOAT, 2.0),
    "hr_upscaler": (_STR, None),
    "hr_second_pass_steps": (_INT, 0),
    "hr_resize_x": (_INT, 0),
    "hr_resize_y": (_INT, 0),
    "hr_checkpoint_name": (_STR, None),
    "hr_sampler_name": (_STR, None),
    "hr_scheduler": (_STR, None),
    "hr_prompt": (_STR, ""),
    "hr_negative_prompt": (_STR, ""),
}
_IMG2IMG: dict[str, tuple[str, Any]] = {
    "init_images": (_LIST, None),
    "resize_mode": (_INT, 0),
    "image_cfg_scale": (_FLOAT, None),
    "mask": (_STR, None),
    "mask_blur_x": (_INT, 4),
    "mask_blur_y": (_INT, 4),
    "mask_blur": (_INT, None),
    "mask_round": (_BOOL, True),
    "inpainting_fill": (_INT, 0),
    "inpaint_full_res": (_BOOL, True),
    "inpaint_full_res_padding": (_INT, 0),
    "inpainting_mask_invert": (_INT, 0),
    "initial_noise_multiplier": (_FLOAT, None),
    "latent_mask": (_STR, None),
    "denoising_strength": (_FLOAT, 0.75),
    "include_init_images": (_BOOL, False),
}
_FORGE: dict[str, tuple[str, Any]] = {"distilled_cfg_scale": (_FLOAT, 3.5)}
_FORGE_TXT2IMG: dict[str, tuple[str, Any]] = {
    "hr_cfg": (_FLOAT, 1.0),
    "hr_distilled_cfg": (_FLOAT, 3.5),
    "hr_additional_modules": (_LIST, None),
}
_SDNEXT: dict[str, tuple[str, Any]] = {
    "steps": (_INT, 20),
    "width": (_INT, 1024),
    "height": (_INT, 1024),
    "cfg_scale": (_FLOAT, 6.0),
    "cfg_end": (_FLOAT, 1.0),
    "sampler_name": (_STR, "Default"),
    "sampler_index": (_INT_OR_STR, 0),  # Union[int, str]: clients such as webuiapi send a name
    "sd_model_checkpoint": (_STR, None),
    "detailer": (_BOOL, False),
}
_SDNEXT_IMG2IMG: dict[str, tuple[str, Any]] = {
    "denoising_strength": (_FLOAT, 0.5),
    "inpaint_full_res": (_BOOL, False),
    "inpainting_fill": (_INT, 1),
}


def request_fields(spec: FlavourSpec, kind: JobKind) -> dict[str, tuple[str, Any]]:
    """The request model of ``kind`` for this flavour: field name to (type, default)."""
    fields = dict(_SHARED)
    fields.update(_TXT2IMG if kind == "txt2img" else _IMG2IMG)
    if spec.name == "forge":
        fields.update(_FORGE)
        if kind == "txt2img":
            fields.update(_FORGE_TXT2IMG)
    if spec.name == "sdnext":
        del fields["scheduler"]
        fields.update(_SDNEXT)
        if kind == "img2img":
            fields.update(_SDNEXT_IMG2IMG)
    return fields


@dataclass(frozen=True)
class JobContext:
    """The server state a request is interpreted against."""

    spec: FlavourSpec
    samplers: tuple[Sampler, ...]
    models: tuple[Checkpoint, ...]
    checkpoint: Checkpoint
    fix_img2img_steps: bool


@dataclass(frozen=True)
class JobSpec:
    """One generation as the web UI will run it: effective values, inputs, and the echo."""

    kind: JobKind
    prompts: tuple[str, ...]
    negative_prompts: tuple[str, ...]
    seeds: tuple[int, ...]
    subseeds: tuple[int, ...]
    subseed_strength: float
    width: int
    height: int
    steps: int
    sampling_steps: int
    cfg_scale: float
    batch_size: int
    n_iter: int
    sampler: str
    scheduler: str | None
    checkpoint: Checkpoint
    denoising_strength: float | None
    mask_blur: int | None
    send_images: bool
    save_images: bool
    task_id: str | None
    init_images: tuple[bytes, ...]
    mask: bytes | None
    """In the renderer's convention: alpha 0 where the web UI repaints."""
    parameters: dict[str, Any]

    @property
    def total(self) -> int:
        """Images the job makes: ``batch_size × n_iter``."""
        return self.batch_size * self.n_iter


def build_job(data: dict[str, Any], kind: JobKind, ctx: JobContext) -> tuple[JobSpec, list[RecordedFile]]:
    """Validate ``data`` and work out the job; raises :class:`A1111Error` as the web UI answers."""
    fields = request_fields(ctx.spec, kind)
    values = coerce_fields(data, fields, ctx.spec)
    effective = {name: default if values.get(name) is None else values[name] for name, (_, default) in fields.items()}
    _check_scripts(effective, ctx.spec)
    sampler, scheduler = _sampler(effective, ctx)
    inputs, mask, files = _inputs(effective, kind, ctx.spec) if kind == "img2img" else ((), None, [])
    batch_size, n_iter = max(1, effective["batch_size"]), max(1, effective["n_iter"])
    if len(inputs) > batch_size:
        raise server_exception(ctx.spec, f"bad number of images passed: {len(inputs)}; expecting {batch_size} or less")
    total = batch_size * n_iter
    _check_workload(effective["width"], effective["height"], total, ctx.spec)
    strength = effective["denoising_strength"] if kind == "img2img" else None
    job = JobSpec(
        kind=kind,
        prompts=_per_image(effective["prompt"], total),
        negative_prompts=_per_image(effective["negative_prompt"], total),
        seeds=_seeds(effective["seed"], total),
        subseeds=_seeds(effective["subseed"], total),
        subseed_strength=effective["subseed_strength"],
        width=effective["width"],
        height=effective["height"],
        steps=effective["steps"],
        sampling_steps=_sampling_steps(effective["steps"], strength, ctx.fix_img2img_steps),
        cfg_scale=effective["cfg_scale"],
        batch_size=batch_size,
        n_iter=n_iter,
        sampler=sampler,
        scheduler=scheduler,
        checkpoint=_checkpoint(effective, ctx),
        denoising_strength=strength,
        mask_blur=_mask_blur(effective) if mask is not None else None,
        send_images=effective["send_images"],
        save_images=effective["save_images"],
        task_id=effective["force_task_id"],
        init_images=inputs,
        mask=mask,
        parameters=_echo(data, values, fields, kind),
    )
    return job, files


# -- validation ----------------------------------------------------------------------------------


class _Invalid(ValueError):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


def coerce_fields(
    data: dict[str, Any],
    fields: dict[str, tuple[str, Any]],
    spec: FlavourSpec,
    problems: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The fields of ``data`` that are set, coerced leniently to their kinds; a 422 naming every bad one.

    Given a ``problems`` list, bad fields are added to it instead, for a caller with more rules to check.
    """
    values: dict[str, Any] = {}
    collect = problems is not None
    problems = problems if problems is not None else []
    for name, (kind, _) in fields.items():
        if name not in data or data[name] is None:
            continue
        try:
            values[name] = _coerce(kind, data[name], spec.pydantic_v2)
        except _Invalid as exc:
            problems.append(validation_item(spec, ["body", name], exc.kind, exc.message, data[name]))
    if problems and not collect:
        raise validation_error(problems)
    return values


def _coerce(kind: str, value: Any, v2: bool) -> Any:
    coercers = {
        _INT: _to_int,
        _FLOAT: _to_float,
        _BOOL: _to_bool,
        _STR: _to_str,
        _LIST: _to_list,
        _DICT: _to_dict,
        _PROMPT: _to_prompt,
        _INT_OR_STR: _to_int_or_str,
    }
    return coercers[kind](value, v2)


def _fail(v2: bool, v2_kind: str, v2_msg: str, v1_kind: str, v1_msg: str) -> _Invalid:
    return _Invalid(v2_kind, v2_msg) if v2 else _Invalid(v1_kind, v1_msg)


def _to_int(value: Any, v2: bool) -> int:
    if isinstance(value, bool | int):
        return int(value)
    if isinstance(value, float) and math.isfinite(value) and (value.is_integer() or not v2):
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
        raise _fail(
            v2,
            "int_parsing",
            "Input should be a valid integer, unable to parse string as an integer",
            "type_error.integer",
            "value is not a valid integer",
        )
    if isinstance(value, float):
        raise _fail(
            v2,
            "int_from_float",
            "Input should be a valid integer, got a number with a fractional part",
            "type_error.integer",
            "value is not a valid integer",
        )
    raise _fail(v2, "int_type", "Input should be a valid integer", "type_error.integer", "value is not a valid integer")


def _to_float(value: Any, v2: bool) -> float:
    if isinstance(value, bool | int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            pass
        raise _fail(
            v2,
            "float_parsing",
            "Input should be a valid number, unable to parse string as a number",
            "type_error.float",
            "value is not a valid float",
        )
    raise _fail(v2, "float_type", "Input should be a valid number", "type_error.float", "value is not a valid float")


def _to_bool(value: Any, v2: bool) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise _fail(
        v2,
        "bool_parsing",
        "Input should be a valid boolean, unable to interpret input",
        "type_error.bool",
        "value could not be parsed to a boolean",
    )


def _to_str(value: Any, v2: bool) -> str:
    if isinstance(value, str):
        return value
    if not v2 and isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)  # Pydantic v1 turns numbers into strings
    raise _fail(v2, "string_type", "Input should be a valid string", "type_error.str", "str type expected")


def _to_int_or_str(value: Any, v2: bool) -> int | str:
    """``Union[int, str]`` in Pydantic's smart mode: an int or a string stays what it is."""
    if isinstance(value, str):
        return value
    return _to_int(value, v2)


def _to_list(value: Any, v2: bool) -> list[Any]:
    if isinstance(value, list):
        return value
    raise _fail(v2, "list_type", "Input should be a valid list", "type_error.list", "value is not a valid list")


def _to_dict(value: Any, v2: bool) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    raise _fail(v2, "dict_type", "Input should be a valid dictionary", "type_error.dict", "value is not a valid dict")


def _to_prompt(value: Any, v2: bool) -> str | list[str]:
    """A prompt is a string, or a list with one string per image."""
    if isinstance(value, list) and value and all(isinstance(item, str) for item in value):
        return value
    return _to_str(value, v2)


def _check_scripts(effective: dict[str, Any], spec: FlavourSpec) -> None:
    """The emulator has no scripts: naming one is the web UI's 422 for an unknown script."""
    name = effective["script_name"]
    if name:
        raise http_exception(spec, 422, f"Script '{name}' not found")
    for title in effective["alwayson_scripts"]:
        raise http_exception(spec, 422, f"always on script {title} not found")


# -- effective values ----------------------------------------------------------------------------


def _check_workload(width: int, height: int, total: int, spec: FlavourSpec) -> None:
    """Sizes and counts a GPU could never hold fail as they would there, before the renderer tries."""
    if not (8 <= width <= MAX_SIDE and 8 <= height <= MAX_SIDE) or total > MAX_IMAGES:
        message = f"CUDA out of memory. Tried to allocate a {width}x{height} batch of {total} (sandbox limit)"
        raise server_exception(spec, message, "OutOfMemoryError")


def _sampler(effective: dict[str, Any], ctx: JobContext) -> tuple[str, str | None]:
    if ctx.spec.strict_samplers:
        found = resolve_sdnext_sampler(ctx.samplers, effective["sampler_name"])
        if found is None:
            raise http_exception(ctx.spec, 404, "Sampler not found")
        return found, None
    name = effective["sampler_name"] or effective["sampler_index"]
    return resolve_a1111_sampler(ctx.samplers, name, effective["scheduler"])


def _checkpoint(effective: dict[str, Any], ctx: JobContext) -> Checkpoint:
    """``override_settings.sd_model_checkpoint`` (or SD.Next's field) for this call; unknown names are dropped."""
    overrides = effective["override_settings"] or {}
    for candidate in (effective.get("sd_model_checkpoint"), overrides.get("sd_model_checkpoint")):
        found = find_checkpoint(ctx.models, candidate)
        if found is not None:
            return found
    return ctx.checkpoint


def _per_image(prompt: str | list[str], total: int) -> tuple[str, ...]:
    if isinstance(prompt, list):
        return tuple(prompt[index % len(prompt)] for index in range(total))
    return (prompt,) * total


def _seeds(seed: int, total: int) -> tuple[int, ...]:
    """-1 draws a random seed; image k uses ``seed + k``."""
    first = random.randrange(SEED_LIMIT) if seed == -1 else seed  # noqa: S311 - seeds, not secrets
    return tuple(first + index for index in range(total))


def _sampling_steps(steps: int, strength: float | None, fix_steps: bool) -> int:
    """img2img samples only ``denoising_strength × steps`` of the schedule unless ``img2img_fix_steps``."""
    if strength is None or fix_steps:
        return max(0, steps)
    return max(0, int(min(strength, 0.999) * steps)) + 1


def _mask_blur(effective: dict[str, Any]) -> int:
    blur = effective.get("mask_blur")
    return int(blur) if blur is not None else int(effective.get("mask_blur_x", 4))


def _echo(
    data: dict[str, Any], values: dict[str, Any], fields: dict[str, tuple[str, Any]], kind: JobKind
) -> dict[str, Any]:
    """``parameters``: every field, as sent (explicit nulls stay null) or its default."""
    echo = {name: values.get(name) if name in data else default for name, (_, default) in fields.items()}
    if kind == "img2img" and not echo.get("include_init_images"):
        echo["init_images"] = None
        echo["mask"] = None
    return echo


# -- input images --------------------------------------------------------------------------------


def _inputs(
    effective: dict[str, Any], kind: JobKind, spec: FlavourSpec
) -> tuple[tuple[bytes, ...], bytes | None, list[RecordedFile]]:
    encoded = effective["init_images"]
    if encoded is None:
        if spec.name == "sdnext":
            raise A1111Error(400, {"error": "Init image is none"})
        raise http_exception(spec, 404, "Init image not found")
    images = tuple(decode_image(spec, item) for item in encoded)
    files = [record_file(f"init_images[{index}]", data) for index, data in enumerate(images)]
    if effective["mask"] is None:
        return images, None, files
    raw_mask = decode_image(spec, effective["mask"])
    files.append(record_file("mask", raw_mask))
    mask = renderer_mask(raw_mask, round_=effective["mask_round"], invert=bool(effective["inpainting_mask_invert"]))
    return images, mask, files


def decode_image(spec: FlavourSpec, value: Any) -> bytes:
    """A base64 image (a ``data:`` prefix is stripped), refused as the web UI refuses it."""
    if not isinstance(value, str):
        raise http_exception(spec, 500, "Invalid encoded image")
    if value.startswith(("http://", "https://")):
        host = urlsplit(value).hostname or ""
        if _is_local(host):
            raise http_exception(spec, 500, "Request to local resource not allowed")
        raise http_exception(spec, 500, "Invalid image url")  # the sandbox never fetches from outside
    if value.startswith("data:image/"):
        value = value.split(";", 1)[1].split(",", 1)[-1]
    try:
        data = base64.b64decode(value)
    except (binascii.Error, ValueError):
        raise http_exception(spec, 500, "Invalid encoded image") from None
    if probe_image(data) is None:
        raise http_exception(spec, 500, "Invalid encoded image")
    return data


def _is_local(host: str) -> bool:
    if host in ("localhost", ""):
        return True
    try:
        return not ipaddress.ip_address(host.strip("[]")).is_global
    except ValueError:
        return False


def binary_mask(data: bytes, *, round_: bool) -> Image.Image:
    """A1111's ``create_binary_mask``: white repaints. An RGBA mask that is not fully opaque is read
    from its alpha channel (so an opaque pixel repaints there), anything else from its grey level.
    """
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        if image.mode == "RGBA" and image.getextrema()[-1] != (255, 255):
            grey = image.getchannel("A").convert("L")
        else:
            grey = image.convert("L")
    return grey.point(lambda value: 255 if value > 128 else 0) if round_ else grey


def renderer_mask(data: bytes, *, round_: bool = True, invert: bool = False) -> bytes:
    """The web UI's mask in the renderer's convention: alpha 0 where the web UI would repaint."""
    white = binary_mask(data, round_=round_)
    if invert:
        white = ImageChops.invert(white)
    keep = white.point(lambda value: 0 if value > 128 else 255)
    rgba = Image.new("RGBA", white.size, (0, 0, 0, 255))
    rgba.putalpha(keep)
    out = io.BytesIO()
    rgba.save(out, "PNG", compress_level=1)
    return out.getvalue()


def record_file(field: str, data: bytes) -> RecordedFile:
    """How the request log shows an image that arrived as base64: its size, type and sha256."""
    probe = probe_image(data)
    content_type = f"image/{probe.format.lower()}" if probe is not None and probe.format else None
    return RecordedFile(field, None, content_type, len(data), hashlib.sha256(data).hexdigest())
