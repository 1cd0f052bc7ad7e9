"""OpenAI Image Tools: ``image_gen_oai`` and ``image_edit_oai``, with LibreChat's parameter names.

Enums in the schemas come from the configured model's profile, so the LLM is only offered what the model
accepts. Unlike LibreChat, prompts are sent untouched (quotes kept), every one of ``n`` images is kept,
and every image ID the LLM passes must resolve for the caller, or the call fails naming the ID.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, create_model

from limner.backends.base import EditRequest, GenerateRequest, ModelProfile
from limner.backends.openai_images import OpenAIEndpoint, OpenAIImagesBackend, SettingNames
from limner.backends.openai_profiles import permissive_profile
from limner.config import Settings
from limner.keys import KeySource
from limner.tools.base import ToolContext, ToolResult, ToolSpec
from limner.tools.family import SANDBOX_KEY, BackendFamily, BuildContext, available_status, unavailable_status

__all__ = ["OpenAIDescriptions", "OpenAIImageFamily", "build", "configured"]

log = logging.getLogger(__name__)

FAMILY_ID = "image_gen_oai"
GEN_TOOL = "image_gen_oai"
EDIT_TOOL = "image_edit_oai"

GEN_DESCRIPTION = (
    "Creates brand-new images from a text description only. Use it when the user asks for a new picture "
    "that does not start from an existing image. Do not use it to change, extend or combine existing or "
    "uploaded images: use image_edit_oai for that. Every image it makes gets an image ID (img_...) in the "
    "result; keep those IDs to edit the images later."
)
GEN_PROMPT_DESCRIPTION = (
    "A detailed description of the image, in layers: the main subject; composition and placement; lighting "
    "and mood; style, medium or camera details; important features (age, expression, clothing, materials); "
    "background. Say what to include rather than what to avoid; give counts and traits. Put any text that "
    "must appear in the image in quotes, exactly as it should be written."
)
EDIT_DESCRIPTION = (
    "Creates new images from one or more existing images plus a text instruction: modify, extend, restyle, "
    "remix or combine images the user uploaded or that were generated earlier in the conversation. Pass their "
    "IDs in image_ids. Use it whenever the user refers to an existing image; use image_gen_oai for brand-new "
    "images. The result lists the new image IDs and the referenced IDs."
)
EDIT_PROMPT_DESCRIPTION = (
    "What to change, in layers: the main transformation; specific edits or composition; style, mood or "
    "technique; what to keep, change or add. Say what to include rather than what to avoid."
)
IMAGE_IDS_DESCRIPTION = (
    "IDs (img_...) of the images to edit or combine, in the order the user refers to them; the first is the "
    "main image (the mask applies to it). Use only IDs seen in this conversation or returned by image_list; "
    "never invent one."
)


class OpenAIDescriptions(BaseModel):
    """Operator overrides of the texts the LLM reads (LibreChat's four variables)."""

    model_config = ConfigDict(frozen=True)

    generate: str | None = None
    generate_prompt: str | None = None
    edit: str | None = None
    edit_prompt: str | None = None


def _enum(values: tuple[str, ...]) -> Any:
    return Literal[values] if values else str  # a Literal of a tuple unpacks into the enum


def _optional_choice(values: tuple[str, ...], description: str) -> tuple[Any, Any]:
    if not values:
        return (None, Field(None, description="Not supported by this model.", exclude=True))
    return (_enum(values) | None, Field(None, description=f"{description} One of: {', '.join(values)}."))


def _size_field(profile: ModelProfile) -> tuple[Any, Any]:
    listed = ", ".join(profile.sizes)
    if profile.size_rule is None:
        return (_enum(profile.sizes) | None, Field(None, description=f"Image size. One of: {listed}."))
    rule = profile.size_rule
    return (
        str | None,
        Field(
            None,
            pattern=r"^(auto|\d{2,5}x\d{2,5})$",
            description=(
                f"Image size: one of {listed}, or a custom WIDTHxHEIGHT with both sides multiples of "
                f"{rule.multiple}, the longest edge at most {rule.max_edge} and an aspect ratio at most "
                f"{rule.max_aspect:g}:1."
            ),
        ),
    )


def generate_args_model(profile: ModelProfile, prompt_description: str) -> type[BaseModel]:
    """The ``image_gen_oai`` argument model for one model's profile."""
    return create_model(
        "ImageGenOaiArgs",
        __config__=ConfigDict(extra="forbid"),
        prompt=(
            str,
            Field(min_length=1, max_length=profile.max_prompt_chars, description=prompt_description),
        ),
        background=_optional_choice(profile.backgrounds, "Background; transparent needs png or webp output."),
        quality=_optional_choice(profile.qualities, "Rendering quality; higher is slower and costs more."),
        size=_size_field(profile),
        n=(int, Field(1, ge=1, le=profile.max_n, description="How many images to make (each gets an ID).")),
    )


def edit_args_model(profile: ModelProfile, prompt_description: str) -> type[BaseModel]:
    """The ``image_edit_oai`` argument model for one model's profile."""
    mask: tuple[Any, Any] = (
        (
            str | None,
            Field(
                None,
                description=(
                    "Optional ID of a PNG mask image: its fully transparent pixels mark where the first image "
                    "may change."
                ),
            ),
        )
        if profile.supports_mask
        else (None, Field(None, exclude=True))
    )
    return create_model(
        "ImageEditOaiArgs",
        __config__=ConfigDict(extra="forbid"),
        image_ids=(
            list[str],
            Field(min_length=1, max_length=profile.max_input_images, description=IMAGE_IDS_DESCRIPTION),
        ),
        prompt=(
            str,
            Field(min_length=1, max_length=profile.max_prompt_chars, description=prompt_description),
        ),
        quality=_optional_choice(profile.qualities, "Rendering quality."),
        size=_size_field(profile),
        background=_optional_choice(profile.backgrounds, "Background; transparent needs png or webp output."),
        n=(int, Field(1, ge=1, le=profile.max_n, description="How many variants to make (each gets an ID).")),
        mask_image_id=mask,
    )


class OpenAIImageFamily(BackendFamily):
    """The OpenAI Image Tools family, bound to one backend and model."""

    id = FAMILY_ID
    title = "OpenAI Image Tools"
    enable_hint = "Set IMAGE_GEN_OAI_API_KEY (or user_provided, for each user to enter theirs) to enable them."
    url_setting = "IMAGE_GEN_OAI_BASEURL"

    def __init__(self, *, descriptions: OpenAIDescriptions, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.descriptions = descriptions

    def profile(self) -> ModelProfile:
        """The configured model's profile (the permissive one for unknown names)."""
        if self.backend is not None:
            return self.backend.profile(self.model)
        return OpenAIImagesBackend.profiles.get(self.model) or permissive_profile(self.model)

    def _build_tools(self) -> list[ToolSpec[Any]]:
        profile, d = self.profile(), self.descriptions
        return [
            ToolSpec(
                name=GEN_TOOL,
                family=FAMILY_ID,
                title="Generate an image (OpenAI)",
                description=d.generate or GEN_DESCRIPTION,
                args=generate_args_model(profile, d.generate_prompt or GEN_PROMPT_DESCRIPTION),
                run=self._generate,
            ),
            ToolSpec(
                name=EDIT_TOOL,
                family=FAMILY_ID,
                title="Edit images (OpenAI)",
                description=d.edit or EDIT_DESCRIPTION,
                args=edit_args_model(profile, d.edit_prompt or EDIT_PROMPT_DESCRIPTION),
                run=self._edit,
            ),
        ]

    async def _generate(self, args: Any, ctx: ToolContext) -> ToolResult:
        backend = self.ready()
        key = await self.api_key(ctx)
        params = args.model_dump(exclude_none=True)
        outputs = await backend.generate(
            GenerateRequest(model=self.model, **params), api_key=key, progress=ctx.progress
        )
        records = await self.save(ctx, outputs, tool=GEN_TOOL, prompt=args.prompt, params=params)
        return self.result(records, referenced=[], action="Generated", edit_tool=EDIT_TOOL)

    async def _edit(self, args: Any, ctx: ToolContext) -> ToolResult:
        backend = self.ready()
        key = await self.api_key(ctx)
        edit = await self.inputs(ctx, args.image_ids, args.mask_image_id)
        params = args.model_dump(exclude_none=True, exclude={"image_ids", "mask_image_id"})
        request = EditRequest(model=self.model, images=edit.images, mask=edit.mask, **params)
        outputs = await backend.edit(request, api_key=key, progress=ctx.progress)
        parents = edit.parents()
        records = await self.save(ctx, outputs, tool=EDIT_TOOL, prompt=args.prompt, params=params, parents=parents)
        return self.result(records, referenced=edit.referenced, action="Edited", edit_tool=EDIT_TOOL)


def configured(settings: Settings) -> bool:
    """A key (even ``user_provided``) or a base URL means the operator chose this family."""
    return settings.image_gen_oai_api_key is not None or settings.image_gen_oai_baseurl is not None


async def build(ctx: BuildContext) -> OpenAIImageFamily:
    """The family from the settings: the emulator, the configured endpoint, or unavailable."""
    settings = ctx.settings
    descriptions = OpenAIDescriptions(
        generate=settings.image_gen_oai_description,
        generate_prompt=settings.image_gen_oai_prompt_description,
        edit=settings.image_edit_oai_description,
        edit_prompt=settings.image_edit_oai_prompt_description,
    )
    model = settings.image_gen_oai_model
    common: dict[str, Any] = {"model": model, "descriptions": descriptions}
    if ctx.sandbox is not None:
        source = KeySource(FAMILY_ID, "IMAGE_GEN_OAI_API_KEY", "the OpenAI Image Tools", SecretStr(SANDBOX_KEY))
        backend = await _backend(ctx, OpenAIEndpoint.resolve(ctx.sandbox.urls["openai"], None, _NAMES), sandbox=True)
        status = available_status(OpenAIImageFamily, backend, model, source, reason=ctx.sandbox_reason())
        policy = ctx.fetch_policy(sandbox=True)
        return OpenAIImageFamily(backend=backend, key_source=source, status=status, fetch_policy=policy, **common)
    source = KeySource(FAMILY_ID, "IMAGE_GEN_OAI_API_KEY", "the OpenAI Image Tools", settings.image_gen_oai_api_key)
    if not configured(settings):
        reason = "IMAGE_GEN_OAI_API_KEY is not set (set a key, or user_provided to let each user enter theirs)"
        status = unavailable_status(OpenAIImageFamily, reason, model)
        return OpenAIImageFamily(backend=None, key_source=source, status=status, **common)
    endpoint = OpenAIEndpoint.resolve(settings.image_gen_oai_baseurl, settings.image_gen_oai_azure_api_version, _NAMES)
    backend = await _backend(ctx, endpoint, sandbox=False)
    warn_if_retired(backend, model, "IMAGE_GEN_OAI_MODEL")
    status = available_status(OpenAIImageFamily, backend, model, source, reason=None)
    return OpenAIImageFamily(
        backend=backend, key_source=source, status=status, fetch_policy=ctx.fetch_policy(sandbox=False), **common
    )


_NAMES = SettingNames()


async def _backend(ctx: BuildContext, endpoint: OpenAIEndpoint, *, sandbox: bool) -> OpenAIImagesBackend:
    settings = ctx.settings
    return OpenAIImagesBackend(
        endpoint=endpoint,
        http_client=await ctx.http_client(sandbox),
        timeout=settings.provider_timeout,
        max_retries=settings.provider_max_retries,
        partial_images=settings.partial_images,
        setting_names=_NAMES,
        is_sandbox=sandbox,
    )


def warn_if_retired(backend: OpenAIImagesBackend, model: str, variable: str) -> None:
    """Say at start when the configured model is retired or deprecated."""
    status = backend.profile(model).status
    if status != "available":
        log.warning("%s=%s: %s", variable, model, status)
