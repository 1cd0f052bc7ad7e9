"""Stable Diffusion: ``stable-diffusion`` (LibreChat's tool) and ``stable-diffusion-edit`` (img2img by ID).

Any AUTOMATIC1111-compatible web UI (A1111, Forge, SD.Next) at ``SD_WEBUI_URL``. LibreChat's fixed values
(cfg 4.5, 22 steps, 1024×1024) are operator settings here (``LIMNER_SD_*``), with those values as defaults.
Progress from ``/sdapi/v1/progress`` reaches the tool's progress channel, and every image gets an ID, so
Stable Diffusion images can be edited like any other, by this family's img2img tool or another's.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from limner.backends.a1111 import A1111Backend, SDDefaults
from limner.backends.base import EditRequest, GenerateRequest
from limner.config import Settings, operator_key
from limner.tools.base import ToolContext, ToolResult, ToolSpec
from limner.tools.family import BackendFamily, BuildContext, available_status, unavailable_status

__all__ = ["StableDiffusionFamily", "build", "configured"]

FAMILY_ID = "stable-diffusion"
GEN_TOOL = "stable-diffusion"
EDIT_TOOL = "stable-diffusion-edit"
MODEL = "stable-diffusion"

_SIZE = Field(
    None,
    pattern=r"^\d{2,4}x\d{2,4}$",
    description="Optional WIDTHxHEIGHT, both multiples of 8 (default set by the operator, usually 1024x1024).",
)
_NEGATIVE = Field(
    "",
    description="Comma-separated keywords of what must not appear (e.g. blurry, extra fingers, watermark).",
)


class StableDiffusionArgs(BaseModel):
    """Arguments of ``stable-diffusion`` (LibreChat's two, plus optional size and seed)."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(
        min_length=1,
        description=(
            "Comma-separated keywords and short phrases describing the image: subject, style, lighting, "
            "composition, quality terms. Seven or more keywords work best."
        ),
    )
    negative_prompt: str = _NEGATIVE
    size: str | None = _SIZE
    seed: int | None = Field(None, ge=-1, description="A seed to reproduce an image (-1 or omitted: random).")


class StableDiffusionEditArgs(BaseModel):
    """Arguments of ``stable-diffusion-edit``: img2img (and inpainting with a mask) of one image by ID."""

    model_config = ConfigDict(extra="forbid")

    image_ids: list[str] = Field(
        min_length=1, max_length=1, description="The ID (img_...) of the one image to transform."
    )
    prompt: str = Field(min_length=1, description="Keywords describing the image as it should become.")
    negative_prompt: str = _NEGATIVE
    denoising_strength: float | None = Field(
        None, ge=0, le=1, description="How far to move from the input: 0.3 subtle, 0.75 strong (default), 1 ignores it."
    )
    mask_image_id: str | None = Field(
        None, description="Optional ID of a PNG mask whose fully transparent pixels mark the area to repaint."
    )
    size: str | None = _SIZE
    seed: int | None = Field(None, ge=-1, description="A seed to reproduce a result.")


class StableDiffusionFamily(BackendFamily):
    """The Stable Diffusion tools bound to one web UI."""

    id = FAMILY_ID
    title = "Stable Diffusion"
    enable_hint = "Set SD_WEBUI_URL to a web UI started with --api (A1111, Forge or SD.Next)."
    url_setting = "SD_WEBUI_URL"

    def _build_tools(self) -> list[ToolSpec[Any]]:
        return [
            ToolSpec(
                name=GEN_TOOL,
                family=FAMILY_ID,
                title="Generate an image (Stable Diffusion)",
                description=(
                    "Generates images from keyword prompts with Stable Diffusion. Describe the subject and style "
                    "in the prompt and list what to avoid in negative_prompt. Every image gets an ID (img_...); "
                    f"to change an image later, call {EDIT_TOOL} or another editing tool with it."
                ),
                args=StableDiffusionArgs,
                run=self._generate,
            ),
            ToolSpec(
                name=EDIT_TOOL,
                family=FAMILY_ID,
                title="Edit an image (Stable Diffusion)",
                description=(
                    "Transforms one existing image by ID with Stable Diffusion img2img: restyle it, change its "
                    "content, or repaint only a masked area. The result lists the new and the referenced IDs."
                ),
                args=StableDiffusionEditArgs,
                run=self._edit,
            ),
        ]

    async def _generate(self, args: StableDiffusionArgs, ctx: ToolContext) -> ToolResult:
        backend = self.ready()
        params = args.model_dump(exclude_none=True)
        request = GenerateRequest(model=MODEL, **{**params, "negative_prompt": args.negative_prompt or None})
        outputs = await backend.generate(request, api_key=None, progress=ctx.progress)
        records = await self.save(ctx, outputs, tool=GEN_TOOL, prompt=args.prompt, params=params)
        return self.result(records, referenced=[], action="Generated", edit_tool=EDIT_TOOL)

    async def _edit(self, args: StableDiffusionEditArgs, ctx: ToolContext) -> ToolResult:
        backend = self.ready()
        edit = await self.inputs(ctx, args.image_ids, args.mask_image_id)
        params = args.model_dump(exclude_none=True, exclude={"image_ids", "mask_image_id"})
        request = EditRequest(
            model=MODEL,
            prompt=args.prompt,
            images=edit.images,
            mask=edit.mask,
            negative_prompt=args.negative_prompt or None,
            strength=args.denoising_strength,
            size=args.size,
            seed=args.seed,
        )
        outputs = await backend.edit(request, api_key=None, progress=ctx.progress)
        parents = edit.parents()
        records = await self.save(ctx, outputs, tool=EDIT_TOOL, prompt=args.prompt, params=params, parents=parents)
        return self.result(records, referenced=edit.referenced, action="Edited", edit_tool=EDIT_TOOL)


def configured(settings: Settings) -> bool:
    """``SD_WEBUI_URL`` set means the operator chose this family."""
    return settings.sd_webui_url is not None


def _defaults(settings: Settings) -> SDDefaults:
    return SDDefaults(
        steps=settings.sd_steps,
        cfg_scale=settings.sd_cfg_scale,
        width=settings.sd_width,
        height=settings.sd_height,
        sampler=settings.sd_sampler,
        scheduler=settings.sd_scheduler,
        checkpoint=settings.sd_checkpoint,
        denoising_strength=settings.sd_denoising_strength,
    )


def _auth(settings: Settings) -> tuple[str, str] | None:
    value = operator_key(settings.sd_auth)
    if value is None:
        return None
    user, _, password = value.partition(":")
    return user, password


async def build(ctx: BuildContext) -> StableDiffusionFamily:
    """The family from the settings: the emulator, the configured web UI, or unavailable."""
    settings = ctx.settings
    if ctx.sandbox is not None:
        url, sandbox, auth = ctx.sandbox.urls["a1111"], True, None
    elif settings.sd_webui_url in (None, "user_provided"):
        reason = (
            "SD_WEBUI_URL is not set"
            if settings.sd_webui_url is None
            else "SD_WEBUI_URL=user_provided is not supported: an operator must set the web UI's URL"
        )
        status = unavailable_status(StableDiffusionFamily, reason, MODEL)
        return StableDiffusionFamily(backend=None, model=MODEL, key_source=None, status=status)
    else:
        url, sandbox, auth = settings.sd_webui_url, False, _auth(settings)
    backend = A1111Backend(
        base_url=url,
        http_client=await ctx.http_client(sandbox),
        defaults=_defaults(settings),
        auth=auth,
        timeout=settings.provider_timeout,
        progress_interval=0.1 if sandbox else 1.0,  # the emulator's jobs are short: poll often enough to show
        max_retries=settings.provider_max_retries,
        is_sandbox=sandbox,
    )
    status = available_status(
        StableDiffusionFamily, backend, MODEL, None, reason=ctx.sandbox_reason() if sandbox else None
    )
    return StableDiffusionFamily(backend=backend, model=MODEL, key_source=None, status=status)
