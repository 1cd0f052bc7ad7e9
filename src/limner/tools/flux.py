"""Flux: the ``flux`` tool (Black Forest Labs), with LibreChat's actions plus editing by image ID.

Actions ``generate``, ``generate_finetuned`` and ``list_finetunes`` take LibreChat's parameters;
``edit`` (which LibreChat lacks) sends images by ID to FLUX Kontext or FLUX.2 as references. Unlike
LibreChat: polling has a deadline, ``safety_tolerance: 0`` is sent as 0, ``aspect_ratio`` is sent, and
every image gets an ID the LLM can pass to any editing tool.
"""

from __future__ import annotations

import json
import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from limner.backends.base import EditRequest, GenerateRequest, ModelProfile
from limner.backends.bfl import BFL_DELIVERY_HOSTS, BFLBackend
from limner.config import Settings
from limner.errors import UnsupportedOperationError
from limner.keys import KeySource
from limner.tools.base import ToolContext, ToolResult, ToolSpec
from limner.tools.family import SANDBOX_KEY, BackendFamily, BuildContext, available_status, unavailable_status

__all__ = ["FluxArgs", "FluxFamily", "build", "configured"]

FAMILY_ID = "flux"
TOOL = "flux"
FINETUNED_MODELS = ("flux-pro-finetuned", "flux-pro-1.1-ultra-finetuned")

DESCRIPTION = (
    "Generates images with Black Forest Labs' FLUX models, edits images by ID with FLUX Kontext, and lists "
    "the user's fine-tunes. action=generate: a new image from a detailed prompt (several sentences about "
    "subject, composition, lighting, mood and style). action=edit: change or combine existing images; pass "
    "their IDs in image_ids. action=generate_finetuned: use a fine-tune (finetune_id from list_finetunes). "
    "One image per call. Every image gets an ID (img_...) for later edits."
)


class FluxArgs(BaseModel):
    """LibreChat's ``flux`` parameters (all optional), plus ``image_ids`` for ``action=edit``."""

    model_config = ConfigDict(extra="forbid")

    action: Literal["generate", "generate_finetuned", "list_finetunes", "edit"] = Field(
        "generate", description="What to do (default generate)."
    )
    prompt: str | None = Field(
        None, description="What to draw, or for edit what to change. Required except for list_finetunes."
    )
    image_ids: list[str] | None = Field(
        None, min_length=1, description="For action=edit: IDs of the images to edit or combine, main image first."
    )
    width: int | None = Field(None, ge=256, le=2048, description="Width in pixels, a multiple of 32 (default 1024).")
    height: int | None = Field(None, ge=256, le=2048, description="Height in pixels, a multiple of 32 (default 768).")
    aspect_ratio: str | None = Field(
        None,
        pattern=r"^\d{1,2}:\d{1,2}$",
        description="For ultra and Kontext models instead of width/height, e.g. 16:9.",
    )
    prompt_upsampling: bool | None = Field(None, description="Let Flux expand the prompt for more detail.")
    steps: int | None = Field(None, ge=1, le=50, description="Diffusion steps where the model takes them.")
    seed: int | None = Field(None, ge=0, description="A seed to reproduce a result.")
    safety_tolerance: int | None = Field(
        None, ge=0, le=6, description="Moderation: 0 is the strictest, 6 the least strict."
    )
    endpoint: str | None = Field(
        None, description="Model endpoint, e.g. /v1/flux-pro-1.1, /v1/flux-pro-1.1-ultra, /v1/flux-kontext-pro."
    )
    raw: bool | None = Field(None, description="Less processed, more natural look (flux-pro-1.1-ultra only).")
    finetune_id: str | None = Field(None, description="For generate_finetuned: the fine-tune to use.")
    finetune_strength: float | None = Field(None, ge=0, le=2, description="Fine-tune strength, typically 0.1-1.2.")
    guidance: float | None = Field(None, ge=0, description="Guidance scale where the model takes it.")

    @model_validator(mode="after")
    def _needs(self) -> FluxArgs:
        if self.action != "list_finetunes" and not self.prompt:
            raise ValueError(f"prompt is required for action={self.action}")
        if self.action == "generate_finetuned" and not self.finetune_id:
            raise ValueError("finetune_id is required for generate_finetuned (see action=list_finetunes)")
        if self.action == "edit" and not self.image_ids:
            raise ValueError("image_ids is required for action=edit")
        return self


_OPTION_FIELDS = ("prompt_upsampling", "safety_tolerance", "raw", "aspect_ratio", "finetune_id", "finetune_strength")


class FluxFamily(BackendFamily):
    """The ``flux`` tool bound to one BFL host."""

    id = FAMILY_ID
    title = "Flux"
    enable_hint = "Set FLUX_API_KEY (or user_provided, for each user to enter theirs)."
    url_setting = "FLUX_API_BASE_URL"

    def __init__(self, *, edit_model: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.edit_model = edit_model

    def _build_tools(self) -> list[ToolSpec[Any]]:
        return [
            ToolSpec(
                name=TOOL,
                family=FAMILY_ID,
                title="Flux: generate, edit, fine-tunes",
                description=DESCRIPTION,
                args=FluxArgs,
                run=self._run,
            )
        ]

    def _model(self, args: FluxArgs) -> str:
        if args.endpoint:
            model = args.endpoint.strip().removeprefix("/").removeprefix("v1/")
            if model not in BFLBackend.profiles:
                known = ", ".join(f"/v1/{name}" for name in BFLBackend.profiles)
                raise UnsupportedOperationError(f"Unknown Flux endpoint {args.endpoint!r}; use one of: {known}.")
            return model
        if args.action == "generate_finetuned":
            return FINETUNED_MODELS[0]
        return self.edit_model if args.action == "edit" else self.model

    async def _run(self, args: FluxArgs, ctx: ToolContext) -> ToolResult:
        backend = self.ready()
        if args.action == "list_finetunes":
            assert isinstance(backend, BFLBackend)
            finetunes = await backend.list_finetunes(api_key=await self.api_key(ctx) or "")
            text = (
                "Flux fine-tunes available with this key:\n" + json.dumps(finetunes, indent=2)
                if finetunes
                else "No fine-tunes."
            )
            return ToolResult(text=text, metadata={"finetunes": finetunes})
        model = self._model(args)
        common = _request_fields(args, backend.profile(model))
        params = args.model_dump(exclude_none=True, exclude={"image_ids"})
        if args.action == "edit":
            assert args.image_ids is not None
            edit = await self.inputs(ctx, args.image_ids)
            request = EditRequest(model=model, images=edit.images, **common)
            outputs = await backend.edit(request, api_key=await self.api_key(ctx), progress=ctx.progress)
            records = await self.save(
                ctx, outputs, tool=TOOL, prompt=common["prompt"], params=params, parents=edit.parents(), model=model
            )
            return self._result(records, model, edit.referenced, "Edited")
        outputs = await backend.generate(
            GenerateRequest(model=model, **common), api_key=await self.api_key(ctx), progress=ctx.progress
        )
        records = await self.save(ctx, outputs, tool=TOOL, prompt=common["prompt"], params=params, model=model)
        return self._result(records, model, [], "Generated")

    def _result(self, records: list[Any], model: str, referenced: list[str], action: str) -> ToolResult:
        return self.result(records, referenced=referenced, action=action, edit_tool="flux (action=edit)", model=model)


def _request_fields(args: FluxArgs, profile: ModelProfile) -> dict[str, Any]:
    """Tool arguments to a request: size from width/height (as the nearest aspect ratio for the models that
    take one), the rest as extras and backend options.
    """
    fields: dict[str, Any] = {"prompt": args.prompt}
    options = {k: getattr(args, k) for k in _OPTION_FIELDS if getattr(args, k) is not None}
    if args.width or args.height:
        width, height = args.width or 1024, args.height or 768
        ratios = [size for size in profile.sizes if ":" in size]
        if ratios and "aspect_ratio" not in options:
            options["aspect_ratio"] = _nearest_ratio(width, height, ratios)
        elif not ratios:
            fields["size"] = f"{width}x{height}"
    for name in ("seed", "steps", "guidance"):
        if getattr(args, name) is not None:
            fields[name] = getattr(args, name)
    fields["options"] = options
    return fields


def _nearest_ratio(width: int, height: int, ratios: list[str]) -> str:
    def value(ratio: str) -> float:
        w, _, h = ratio.partition(":")
        return int(w) / int(h)

    return min(ratios, key=lambda ratio: abs(math.log(value(ratio) / (width / height))))


def configured(settings: Settings) -> bool:
    """A key (even ``user_provided``) means the operator chose Flux."""
    return settings.flux_api_key is not None


async def build(ctx: BuildContext) -> FluxFamily:
    """The family from the settings: the emulator, BFL, or unavailable."""
    settings = ctx.settings
    common: dict[str, Any] = {"model": settings.flux_model, "edit_model": settings.flux_edit_model}
    if ctx.sandbox is not None:
        source = KeySource(FAMILY_ID, "FLUX_API_KEY", "Flux", SecretStr(SANDBOX_KEY))
        url, sandbox = ctx.sandbox.urls["bfl"], True
    else:
        source = KeySource(FAMILY_ID, "FLUX_API_KEY", "Flux", settings.flux_api_key)
        url, sandbox = settings.flux_api_base_url, False
        if not configured(settings):
            reason = "FLUX_API_KEY is not set (set a key, or user_provided to let each user enter theirs)"
            status = unavailable_status(FluxFamily, reason, settings.flux_model)
            return FluxFamily(backend=None, key_source=source, status=status, **common)
    backend = BFLBackend(
        base_url=url,
        http_client=await ctx.http_client(sandbox),
        fetch_policy=ctx.fetch_policy(sandbox=sandbox, allowed_hosts=BFL_DELIVERY_HOSTS),
        deadline=settings.flux_deadline,
        is_sandbox=sandbox,
        result_hosts=settings.flux_result_hosts,
        max_retries=settings.provider_max_retries,
    )
    status = available_status(
        FluxFamily, backend, settings.flux_model, source, reason=ctx.sandbox_reason() if sandbox else None
    )
    return FluxFamily(backend=backend, key_source=source, status=status, **common)
