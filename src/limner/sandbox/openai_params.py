"""Turning a raw Images API request into a validated :class:`ImageJob`, or the service's 400.

JSON bodies and multipart forms arrive with different typing (form values are all text, and some
clients send ``""`` for "not given"), so both go through :class:`Fields`, which applies the real
API's typing rules and messages. The checks follow the capability matrix in
:mod:`limner.sandbox.openai_catalog`; the order of checks decides which error a request with
several problems gets, and mirrors what clients observe (unknown parameters first, then the
model, then values). Building a job decodes input images, so :func:`build_job` must run in a
worker thread.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from limner.sandbox import openai_catalog as catalog
from limner.sandbox.openai_catalog import Capabilities, Family
from limner.sandbox.openai_errors import (
    integer_out_of_range,
    invalid_choice,
    invalid_request,
    invalid_type,
    missing_parameter,
    model_not_found,
    string_too_long,
    unknown_parameter,
)
from limner.sandbox.openai_inputs import (
    EditInputs,
    UploadedFile,
    collect_form_files,
    dall_e_2_inputs,
    decode_image_refs,
    gpt_edit_inputs,
    reject_form_text_images,
)
from limner.sandbox.renderer import OutputFormat

Endpoint = Literal["generations", "edits", "variations"]
Surface = Literal["openai", "azure", "azure_v1"]

_GENERATION_PARAMS = frozenset(
    {
        "prompt",
        "model",
        "n",
        "quality",
        "response_format",
        "output_format",
        "output_compression",
        "stream",
        "partial_images",
        "size",
        "moderation",
        "background",
        "style",
        "user",
        "safety_identifier",
        "complexity",
        "frame_count",
        "frame_duration_ms",
        "svg",
    }
)
_FORM_EDIT_PARAMS = (_GENERATION_PARAMS - {"style"}) | {"input_fidelity"}
_JSON_EDIT_PARAMS = frozenset(
    {
        "images",
        "prompt",
        "mask",
        "model",
        "n",
        "quality",
        "input_fidelity",
        "size",
        "output_format",
        "output_compression",
        "moderation",
        "background",
        "stream",
        "partial_images",
        "user",
        "safety_identifier",
        "complexity",
    }
)
_VARIATION_PARAMS = frozenset({"model", "n", "response_format", "size", "user"})
_GPT_25_ONLY = frozenset({"frame_count", "frame_duration_ms", "svg", "markup"})
_GATED_FORMATS = ("gif", "svg")


@dataclass(frozen=True)
class RawCall:
    """A request body before validation: JSON values, or form text plus file parts."""

    fields: dict[str, Any]
    files: list[UploadedFile] = field(default_factory=list)
    from_form: bool = False


@dataclass(frozen=True)
class Route:
    """Where a request arrived; ``model`` is fixed by the Azure deployment when there is one."""

    endpoint: Endpoint
    surface: Surface
    model: str | None = None


@dataclass(frozen=True)
class ModelPolicy:
    """Emulator settings that decide which models and formats a route accepts."""

    retired: frozenset[str]
    azure_output_formats: frozenset[str]


@dataclass(frozen=True)
class ImageJob:
    """A validated request: everything needed to render and to shape the response."""

    route: Route
    model: str
    family: Family
    prompt: str
    n: int
    width: int
    height: int
    requested_size: str
    quality: str
    requested_quality: str
    output_format: OutputFormat
    compression: int | None
    background: Literal["transparent", "opaque"]
    requested_background: str
    response_format: Literal["url", "b64_json"]
    style: str | None
    stream: bool
    partial_images: int
    input_fidelity: str | None
    safety_identifier: str | None
    inputs: EditInputs | None = None

    @property
    def size(self) -> str:
        """The resolved size as the response reports it."""
        return f"{self.width}x{self.height}"

    @property
    def is_gpt(self) -> bool:
        """GPT image models answer with bytes, usage and resolved settings; DALL·E does not."""
        return catalog.CAPABILITIES[self.family].is_gpt


class Fields:
    """Typed access to request fields with the real API's rules for absent and mistyped values."""

    def __init__(self, values: dict[str, Any], *, from_form: bool) -> None:
        self._values = values
        self._from_form = from_form

    def present(self, name: str) -> bool:
        """Null (JSON) and empty text (forms) count as not given."""
        value = self._values.get(name)
        return value is not None and not (self._from_form and value == "")

    def names(self) -> list[str]:
        """The names of every given field."""
        return [name for name in self._values if self.present(name)]

    def text(self, name: str) -> str | None:
        """A string field, or None when absent."""
        if not self.present(name):
            return None
        value = self._values[name]
        if not isinstance(value, str):
            raise invalid_type(name, "a string", value)
        return value

    def integer(self, name: str) -> int | None:
        """An integer field; form text must spell a whole number."""
        if not self.present(name):
            return None
        value = self._values[name]
        if self._from_form and isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise invalid_type(name, "an integer", value)
        return value

    def boolean(self, name: str) -> bool | None:
        """A boolean field; forms send ``true``/``false``."""
        if not self.present(name):
            return None
        value = self._values[name]
        if self._from_form and isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if not isinstance(value, bool):
            raise invalid_type(name, "a boolean", value)
        return value

    def choice(self, name: str, allowed: list[str] | tuple[str, ...], default: str) -> str:
        """A field from a closed set; the error lists the allowed values."""
        value = self.text(name)
        if value is None:
            return default
        if value not in allowed:
            raise invalid_choice(name, value, list(allowed))
        return value

    def bounded(self, name: str, low: int, high: int, default: int) -> int:
        """An integer within ``low..high``."""
        value = self.integer(name)
        if value is None:
            return default
        if not low <= value <= high:
            raise integer_out_of_range(name, value, low, high)
        return value


def build_job(raw: RawCall, route: Route, policy: ModelPolicy) -> ImageJob:
    """Validate ``raw`` for ``route`` or raise the :class:`EmulatedError` the service would send."""
    values = dict(raw.fields)
    if raw.from_form:
        values = _fold_bracket_fields(values)
        reject_form_text_images(values)
    fields = Fields(values, from_form=raw.from_form)
    json_edit = route.endpoint == "edits" and not raw.from_form
    _check_known(fields, route, json_edit=json_edit)
    prompt = _prompt(fields, route)
    model = _model(fields, route, policy)
    family = catalog.MODEL_FAMILIES[model]
    caps = catalog.CAPABILITIES[family]
    _check_model_fits(fields, route, model, family, caps, json_edit=json_edit)
    if len(prompt) > caps.prompt_limit:
        raise string_too_long("prompt", len(prompt), caps.prompt_limit)
    inputs = _inputs(raw, route, family, json_edit=json_edit) if route.endpoint != "generations" else None
    return _assemble(
        fields,
        route=route,
        policy=policy,
        model=model,
        family=family,
        caps=caps,
        prompt=prompt,
        inputs=inputs,
    )


def _fold_bracket_fields(values: dict[str, Any]) -> dict[str, Any]:
    """``svg[model]`` and friends are one nested parameter, ``svg``, for validation purposes."""
    folded: dict[str, Any] = {}
    for name, value in values.items():
        base = name.split("[", 1)[0] if "[" in name and not name.startswith("image") else name
        folded[base] = value if base == name else {name: value}
    return folded


def _check_known(fields: Fields, route: Route, *, json_edit: bool) -> None:
    if route.endpoint == "generations":
        known = _GENERATION_PARAMS
    elif route.endpoint == "variations":
        known = _VARIATION_PARAMS
    else:
        known = _JSON_EDIT_PARAMS if json_edit else _FORM_EDIT_PARAMS
    for name in fields.names():
        if name not in known:
            raise unknown_parameter(name)


def _prompt(fields: Fields, route: Route) -> str:
    if route.endpoint == "variations":
        return "variation"
    prompt = fields.text("prompt")
    if prompt is None:
        raise missing_parameter("prompt")
    if not prompt:
        message = (
            "Invalid 'prompt': empty string. Expected a string with minimum length 1, but got an empty string instead."
        )
        raise invalid_request(message, "prompt", "empty_string")
    return prompt


def _model(fields: Fields, route: Route, policy: ModelPolicy) -> str:
    """The model to use: the Azure deployment's, else the body's, else the endpoint default."""
    if route.model is not None:
        return route.model
    model = fields.text("model") or _default_model(fields, route)
    if model in policy.retired:
        raise model_not_found(model, retired=True)
    if catalog.family_of(model) is None:
        raise model_not_found(model, retired=False)
    return model


def _default_model(fields: Fields, route: Route) -> str:
    """The spec's defaults: dall-e-2 for generations unless a GPT-only field is given."""
    if route.endpoint == "edits":
        return catalog.DEFAULT_EDIT_MODEL
    if route.endpoint == "generations" and any(fields.present(name) for name in catalog.GPT_ONLY_PARAMS):
        return catalog.DEFAULT_GPT_GENERATION_MODEL
    return "dall-e-2"


def _check_model_fits(
    fields: Fields, route: Route, model: str, family: Family, caps: Capabilities, *, json_edit: bool
) -> None:
    """The model must offer the endpoint and take every given parameter."""
    if route.endpoint not in caps.endpoints:
        message = f"Invalid value: '{model}'. The model does not support image {route.endpoint}."
        raise invalid_request(message, "model", "invalid_value")
    if json_edit and not caps.is_gpt:
        message = (
            f"The JSON body for image edits is only supported for GPT image models, not '{model}'. "
            "Use multipart/form-data."
        )
        raise invalid_request(message, "model", "invalid_value")
    given = set(fields.names())
    wrong_family = catalog.DALL_E_ONLY_PARAMS if caps.is_gpt else catalog.GPT_ONLY_PARAMS - {"stream"}
    if family is not Family.GPT_IMAGE_25:
        wrong_family = wrong_family | _GPT_25_ONLY
    if family is not Family.DALL_E_3:
        wrong_family = wrong_family | {"style"}
    unexpected = sorted(given & wrong_family)
    if unexpected:
        raise unknown_parameter(unexpected[0])
    if not caps.is_gpt and fields.boolean("stream"):
        raise unknown_parameter("stream")


def _inputs(raw: RawCall, route: Route, family: Family, *, json_edit: bool) -> EditInputs:
    if json_edit:
        images, mask = decode_image_refs(raw.fields)
        markup = None
    else:
        images, mask, markup = collect_form_files(raw.files)
    if family is Family.DALL_E_2:
        return dall_e_2_inputs(images, mask, require_alpha=route.endpoint == "edits")
    return gpt_edit_inputs(images, mask, markup, supports_markup=family is Family.GPT_IMAGE_25)


def _assemble(
    fields: Fields,
    *,
    route: Route,
    policy: ModelPolicy,
    model: str,
    family: Family,
    caps: Capabilities,
    prompt: str,
    inputs: EditInputs | None,
) -> ImageJob:
    n = fields.bounded("n", 1, 10, 1)
    if n > caps.max_n:
        raise invalid_request("You must provide n=1 for this model.", "n", "invalid_value")
    requested_size = fields.text("size") or caps.default_size
    width, height = _size(requested_size, caps, inputs)
    requested_quality = fields.choice("quality", caps.qualities, "auto")
    output_format = _output_format(fields, route, policy, family)
    stream = bool(fields.boolean("stream"))
    _check_extras(fields)
    return ImageJob(
        route=route,
        model=model,
        family=family,
        prompt=prompt,
        n=n,
        width=width,
        height=height,
        requested_size=requested_size,
        quality=catalog.resolve_quality(model, family, requested_quality),
        requested_quality=requested_quality,
        output_format=output_format,
        compression=_compression(fields, output_format),
        background=_background(fields, family, output_format),
        requested_background=fields.text("background") or "auto",
        response_format=_response_format(fields, caps),
        style=_style(fields, family),
        stream=stream,
        partial_images=fields.bounded("partial_images", 0, 3, 0),
        input_fidelity=_input_fidelity(fields, model, family),
        safety_identifier=_safety_identifier(fields),
        inputs=inputs,
    )


def _check_extras(fields: Fields) -> None:
    """Validate the fields that do not change the output."""
    fields.choice("moderation", ("low", "auto"), "auto")
    fields.choice("complexity", ("low", "medium", "high"), "medium")
    fields.text("user")
    for name in ("frame_count", "frame_duration_ms", "svg"):
        if fields.present(name):
            target = "gif" if name.startswith("frame") else "svg"
            message = f"'{name}' is only supported with output_format '{target}'."
            raise invalid_request(message, name, "invalid_value")


def _size(requested: str, caps: Capabilities, inputs: EditInputs | None) -> tuple[int, int]:
    if requested == "auto" and "auto" in caps.sizes:
        if inputs is None:
            requested = "1024x1024"
        else:
            first = inputs.images[0].probe
            requested = catalog.auto_edit_size(first.width, first.height)
    if requested in caps.sizes:
        parsed = catalog.parse_size(requested)
        assert parsed is not None  # every listed size is WxH
        return parsed
    if not caps.is_gpt:
        raise invalid_request("The size is not supported by this model.", None, "invalid_size")
    parsed = catalog.parse_size(requested)
    if not caps.arbitrary_sizes or parsed is None:
        allowed = list(caps.sizes) if not caps.arbitrary_sizes else [*caps.sizes, "WIDTHxHEIGHT"]
        raise invalid_choice("size", requested, allowed)
    problem = catalog.arbitrary_size_problem(*parsed)
    if problem is not None:
        raise invalid_request(f"Invalid size '{requested}'. {problem}", "size", "invalid_value")
    return parsed


def _output_format(fields: Fields, route: Route, policy: ModelPolicy, family: Family) -> OutputFormat:
    value = fields.text("output_format") or "png"
    if value in _GATED_FORMATS and family is Family.GPT_IMAGE_25:
        message = f"The '{value}' output format is not available to this organization."
        raise invalid_request(message, "output_format", "invalid_value")
    allowed = catalog.OUTPUT_FORMATS
    if route.surface != "openai":
        allowed = [item for item in allowed if item in policy.azure_output_formats]
    if value not in allowed:
        raise invalid_choice("output_format", value, allowed)
    if value == "png":
        return "png"
    return "jpeg" if value == "jpeg" else "webp"


def _compression(fields: Fields, output_format: str) -> int | None:
    value = fields.bounded("output_compression", 0, 100, -1)
    if value < 0:
        return None
    if output_format == "png":
        message = (
            "Invalid 'output_compression': compression is only supported for the 'jpeg' and 'webp' output formats."
        )
        raise invalid_request(message, "output_compression", "invalid_value")
    return value


def _background(fields: Fields, family: Family, output_format: str) -> Literal["transparent", "opaque"]:
    value = fields.choice("background", ("transparent", "opaque", "auto"), "auto")
    if value != "transparent":
        return "opaque"
    if not catalog.CAPABILITIES[family].supports_transparency:
        message = "Invalid 'background': transparent backgrounds are not supported for this model."
        raise invalid_request(message, "background", "invalid_value")
    if output_format == "jpeg":
        message = "Invalid 'background': 'transparent' requires output_format 'png' or 'webp', not 'jpeg'."
        raise invalid_request(message, "background", "invalid_value")
    return "transparent"


def _response_format(fields: Fields, caps: Capabilities) -> Literal["url", "b64_json"]:
    if caps.is_gpt:
        return "b64_json"
    return "b64_json" if fields.choice("response_format", ("url", "b64_json"), "url") == "b64_json" else "url"


def _style(fields: Fields, family: Family) -> str | None:
    if family is not Family.DALL_E_3:
        return None
    return fields.choice("style", ("vivid", "natural"), "vivid")


def _input_fidelity(fields: Fields, model: str, family: Family) -> str | None:
    value = fields.choice("input_fidelity", ("high", "low"), "")
    if not value:
        return None
    if family is Family.GPT_IMAGE_2:
        message = (
            f"'input_fidelity' is not supported for model '{model}'; inputs are always processed at high fidelity."
        )
        raise invalid_request(message, "input_fidelity", "invalid_value")
    if model == "gpt-image-1-mini" and value == "high":
        raise invalid_choice("input_fidelity", value, ["low"])
    return value


def _safety_identifier(fields: Fields) -> str | None:
    return fields.text("safety_identifier") or fields.text("user")
