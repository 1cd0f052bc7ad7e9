"""The BFL endpoint catalogue as the emulator serves it: request schemas, prices and output sizes.

The real API is FastAPI with Pydantic v2, so the schemas are Pydantic models with the ranges, multiples,
enums and defaults of ``shared/apis/flux.md`` §5; validating against them yields exactly the 422 ``detail``
items the real service sends (``type``, ``loc``, ``msg``, ``input``, ``ctx``). Unknown fields are ignored,
as the OpenAPI sets no ``additionalProperties: false``. Prices follow §12 (1 credit = US$0.01).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

__all__ = [
    "ENDPOINTS",
    "EndpointKind",
    "EndpointSpec",
    "OutputFormat",
    "aspect_size",
    "cost_of",
    "fastapi_errors",
    "flux2_size",
    "megapixels",
    "validate_body",
]

EndpointKind = Literal["flux1", "ultra", "kontext", "flux2", "fill", "expand"]
ULTRA_PIXELS = 4 * 1024 * 1024
KONTEXT_PIXELS = 1024 * 1024
FLUX2_MAX_PIXELS = 4 * 1024 * 1024
_RATIO = re.compile(r"^(\d+):(\d+)$")
_MIN_RATIO, _MAX_RATIO = 9 / 21, 21 / 9


class OutputFormat(StrEnum):
    """An enum (not a Literal) so a bad value fails with Pydantic's ``enum`` error type, as upstream."""

    JPEG = "jpeg"
    PNG = "png"
    WEBP = "webp"


class _Inputs(BaseModel):
    """Fields shared by every generation endpoint (§5.1)."""

    model_config = ConfigDict(extra="ignore")

    seed: int | None = None
    safety_tolerance: int = Field(2, ge=0, le=6)
    output_format: OutputFormat | None = OutputFormat.JPEG
    webhook_url: str | None = Field(None, min_length=1, max_length=2083)
    webhook_secret: str | None = None


class _Upsampling(_Inputs):
    prompt_upsampling: bool = False


class FluxPro11Inputs(_Upsampling):
    """``/v1/flux-pro-1.1`` (§5.2)."""

    prompt: str | None = ""
    image_prompt: str | None = None
    width: int = Field(1024, ge=256, le=1440, multiple_of=32)
    height: int = Field(768, ge=256, le=1440, multiple_of=32)


class FluxDevInputs(FluxPro11Inputs):
    """``/v1/flux-dev`` (§5.4)."""

    steps: int | None = Field(28, ge=1, le=50)
    guidance: float | None = Field(3.0, ge=1.5, le=5)


class FluxProInputs(FluxPro11Inputs):
    """Legacy ``/v1/flux-pro`` (§5.5)."""

    steps: int | None = Field(40, ge=1, le=50)
    guidance: float | None = Field(2.5, ge=1.5, le=5)
    interval: float | None = Field(2.0, ge=1, le=4)


def _check_ratio(value: str | None) -> str | None:
    """``W:H`` between 21:9 and 9:21; the message is ours (the real wording was not captured)."""
    if value is None:
        return None
    match = _RATIO.match(value)
    if match is None or int(match[2]) == 0:
        raise ValueError("aspect_ratio must look like 'W:H', for example '16:9'")
    if not _MIN_RATIO <= int(match[1]) / int(match[2]) <= _MAX_RATIO:
        raise ValueError("aspect ratio must be between 21:9 and 9:21")
    return value


class FluxUltraInputs(_Upsampling):
    """``/v1/flux-pro-1.1-ultra`` (§5.3)."""

    prompt: str | None = ""
    aspect_ratio: str = "16:9"
    raw: bool = False
    image_prompt: str | None = None
    image_prompt_strength: float = Field(0.1, ge=0, le=1)

    _ratio = field_validator("aspect_ratio")(_check_ratio)


class FluxKontextInputs(_Upsampling):
    """``/v1/flux-kontext-pro`` and ``-max`` (§5.6); up to four input images."""

    prompt: str
    input_image: str | None = None
    input_image_2: str | None = None
    input_image_3: str | None = None
    input_image_4: str | None = None
    aspect_ratio: str | None = None
    output_format: OutputFormat | None = OutputFormat.PNG

    _ratio = field_validator("aspect_ratio")(_check_ratio)


class _Flux2Base(_Inputs):
    prompt: str
    input_image: str | None = None
    input_image_2: str | None = None
    input_image_3: str | None = None
    input_image_4: str | None = None
    width: int | None = Field(None, ge=64)
    height: int | None = Field(None, ge=64)
    safety_tolerance: int = Field(2, ge=0, le=5)


class Flux2KleinInputs(_Flux2Base):
    """FLUX.2 [klein] (§5.7): four references at most."""


class Flux2Inputs(_Flux2Base):
    """FLUX.2 [pro], [pro] preview and [max] (§5.7): eight references."""

    input_image_5: str | None = None
    input_image_6: str | None = None
    input_image_7: str | None = None
    input_image_8: str | None = None


class Flux2FlexInputs(Flux2Inputs):
    """FLUX.2 [flex] (§5.7): steps, guidance and prompt upsampling (on by default)."""

    steps: int | None = Field(50, ge=1, le=50)
    guidance: float | None = Field(5.0, ge=1.5, le=10)
    prompt_upsampling: bool = True


class FluxFillInputs(_Upsampling):
    """``/v1/flux-pro-1.0-fill`` (§5.8): white mask pixels are repainted."""

    image: str
    mask: str | None = None
    prompt: str | None = ""
    steps: int | None = Field(50, ge=15, le=50)
    guidance: float | None = Field(60, ge=1.5, le=100)


class FluxExpandInputs(_Upsampling):
    """``/v1/flux-pro-1.0-expand`` (§5.9)."""

    image: str
    top: int = Field(0, ge=0, le=2048)
    bottom: int = Field(0, ge=0, le=2048)
    left: int = Field(0, ge=0, le=2048)
    right: int = Field(0, ge=0, le=2048)
    prompt: str | None = ""
    steps: int | None = Field(50, ge=15, le=50)
    guidance: float | None = Field(60, ge=1.5, le=100)


class _Finetuned(BaseModel):
    finetune_id: str
    finetune_strength: float = Field(1.1, ge=0, le=2)


class FluxUltraFinetunedInputs(_Finetuned, _Upsampling):
    """``/v1/flux-pro-1.1-ultra-finetuned`` (§5.11): the Ultra fields without ``raw``."""

    finetune_strength: float = Field(1.2, ge=0, le=2)
    prompt: str | None = ""
    aspect_ratio: str = "16:9"
    image_prompt: str | None = None
    image_prompt_strength: float = Field(0.1, ge=0, le=1)

    _ratio = field_validator("aspect_ratio")(_check_ratio)


class FluxProFinetunedInputs(_Finetuned, FluxPro11Inputs):
    """Legacy ``/v1/flux-pro-finetuned`` (§5.11)."""

    steps: int | None = Field(40, ge=1, le=50)
    guidance: float | None = Field(2.5, ge=1.5, le=5)


class FluxFillFinetunedInputs(_Finetuned, FluxFillInputs):
    """``/v1/flux-pro-1.0-fill-finetuned`` (§5.11)."""


@dataclass(frozen=True)
class EndpointSpec:
    """One POST endpoint: its schema, how its output is sized, and what it costs.

    ``price`` is flat credits per image; FLUX.2 endpoints bill per megapixel instead (``mp_prices`` is the
    first megapixel and each further one, in credits). ``active_limit`` overrides the account's limit of
    active tasks (Kontext [max] allows six). ``image_fields`` are the base64/URL image inputs in order.
    """

    name: str
    schema: type[BaseModel]
    kind: EndpointKind
    price: float = 0.0
    mp_prices: tuple[float, float] | None = None
    active_limit: int | None = None
    finetuned: bool = False
    legacy: bool = False

    @property
    def image_fields(self) -> tuple[str, ...]:
        """The image fields of the schema, in the order the renderer should use them."""
        fields = self.schema.model_fields
        ordered = ("input_image", *(f"input_image_{n}" for n in range(2, 9)), "image")
        return tuple(name for name in ordered if name in fields)


def _spec(name: str, schema: type[BaseModel], kind: EndpointKind, **extra: Any) -> tuple[str, EndpointSpec]:
    return name, EndpointSpec(name, schema, kind, **extra)


ENDPOINTS: dict[str, EndpointSpec] = dict(
    [
        _spec("flux-pro-1.1", FluxPro11Inputs, "flux1", price=4),
        _spec("flux-pro-1.1-ultra", FluxUltraInputs, "ultra", price=6),
        _spec("flux-dev", FluxDevInputs, "flux1", price=2.5),
        _spec("flux-pro", FluxProInputs, "flux1", price=5, legacy=True),
        _spec("flux-kontext-pro", FluxKontextInputs, "kontext", price=4),
        _spec("flux-kontext-max", FluxKontextInputs, "kontext", price=8, active_limit=6),
        _spec("flux-pro-1.0-fill", FluxFillInputs, "fill", price=5),
        _spec("flux-pro-1.0-expand", FluxExpandInputs, "expand", price=5),
        _spec("flux-2-pro", Flux2Inputs, "flux2", mp_prices=(3, 1.5)),
        _spec("flux-2-pro-preview", Flux2Inputs, "flux2", mp_prices=(3, 1.5)),
        _spec("flux-2-max", Flux2Inputs, "flux2", mp_prices=(7, 3)),
        _spec("flux-2-flex", Flux2FlexInputs, "flux2", mp_prices=(6, 6)),
        _spec("flux-2-klein-4b", Flux2KleinInputs, "flux2", mp_prices=(1.4, 0.1)),
        _spec("flux-2-klein-9b", Flux2KleinInputs, "flux2", mp_prices=(1.5, 0.2)),
        _spec("flux-2-klein-9b-preview", Flux2KleinInputs, "flux2", mp_prices=(1.5, 0.2)),
        _spec("flux-pro-1.1-ultra-finetuned", FluxUltraFinetunedInputs, "ultra", price=7, finetuned=True),
        _spec("flux-pro-finetuned", FluxProFinetunedInputs, "flux1", price=6, finetuned=True, legacy=True),
        _spec("flux-pro-1.0-fill-finetuned", FluxFillFinetunedInputs, "fill", price=6, finetuned=True),
    ]
)


def fastapi_errors(exc: ValidationError, where: str = "body") -> list[dict[str, Any]]:
    """Pydantic's errors as FastAPI serialises them: ``loc`` prefixed, no ``url``, exceptions in ``ctx`` as ``{}``.

    FastAPI passes ``ctx`` through ``jsonable_encoder``, which turns the ``ValueError`` of a custom validator
    into an empty object; we do the same so clients meet the real shape.
    """
    items: list[dict[str, Any]] = []
    for error in exc.errors(include_url=False):
        item: dict[str, Any] = {
            "type": error["type"],
            "loc": [where, *error["loc"]],
            "msg": error["msg"],
            "input": error.get("input"),
        }
        if "ctx" in error:
            item["ctx"] = {key: {} if isinstance(value, Exception) else value for key, value in error["ctx"].items()}
        items.append(item)
    return items


def validate_body(spec: EndpointSpec, body: Any) -> dict[str, Any] | list[dict[str, Any]]:
    """The validated fields with defaults filled in, or the 422 ``detail`` items."""
    try:
        return spec.schema.model_validate(body).model_dump(mode="json")
    except ValidationError as exc:
        return fastapi_errors(exc)


def megapixels(width: int, height: int) -> float:
    """Megapixels as BFL reports them (``input_mp``/``output_mp``): decimal, two places."""
    return round(width * height / 1_000_000, 2)


def cost_of(spec: EndpointSpec, output_mp: float, input_mp: float) -> float:
    """Credits for one job: flat for FLUX.1, per megapixel for FLUX.2 (§12)."""
    if spec.mp_prices is None:
        return float(spec.price)
    first, extra = spec.mp_prices
    return round(first + max(0.0, output_mp - 1) * extra + input_mp * extra, 2)


def _round_to(value: float, multiple: int) -> int:
    return max(multiple, round(value / multiple) * multiple)


def aspect_size(ratio: str, pixels: int, multiple: int = 32) -> tuple[int, int]:
    """A ``W:H`` ratio at about ``pixels`` pixels, sides a multiple of ``multiple`` (Ultra: 4 MP, Kontext: 1 MP)."""
    match = _RATIO.match(ratio)
    value = int(match[1]) / int(match[2]) if match and int(match[2]) else 1.0
    return _round_to(math.sqrt(pixels * value), multiple), _round_to(math.sqrt(pixels / value), multiple)


def flux2_size(width: int | None, height: int | None, first_input: tuple[int, int] | None) -> tuple[int, int]:
    """FLUX.2 output: the asked size (or the first input's, or 1024x1024), in multiples of 16, at most 4 MP.

    A missing side keeps the other's proportion to the input (or square); larger requests are scaled down
    rather than refused, as the docs describe.
    """
    base_w, base_h = first_input or (1024, 1024)
    if width is None:
        width = base_w if height is None else round(height * base_w / base_h)
    if height is None:
        height = round(width * base_h / base_w)
    scale = min(1.0, math.sqrt(FLUX2_MAX_PIXELS / (width * height)))
    return max(64, int(width * scale) // 16 * 16), max(64, int(height * scale) // 16 * 16)
