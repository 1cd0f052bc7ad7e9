"""OpenAI Image Tools: ``image_gen_oai`` and ``image_edit_oai``, with LibreChat's parameter names.

Enums in the schemas come from the configured model's profile, so the LLM is only offered what the model
accepts. Unlike LibreChat, prompts are sent untouched (quotes kept), every one of ``n`` images is kept,
and every image ID the LLM passes must resolve for the caller, or the call fails naming the ID.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from limner.backends.base import EditRequest, GenerateRequest, InputImage, ModelProfile
from limner.backends.openai_images import OpenAIImagesBackend
from limner.backends.openai_profiles import permissive_profile
from limner.errors import ConfigurationError
from limner.imaging import extension_for, prepare_mask
from limner.keys import KeySource
from limner.library import ImageRecord, Provenance
from limner.net import FetchPolicy
from limner.tools.base import ToolContext, ToolResult, ToolSpec
from limner.tools.family import FamilyStatus
from limner.tools.texts import describe_new_images

__all__ = ["OpenAIDescriptions", "OpenAIImageFamily"]

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


class OpenAIImageFamily:
    """The OpenAI Image Tools family, bound to one backend and model."""

    id = FAMILY_ID
    title = "OpenAI Image Tools"

    def __init__(
        self,
        *,
        backend: OpenAIImagesBackend | None,
        model: str,
        key_source: KeySource,
        descriptions: OpenAIDescriptions,
        status: FamilyStatus,
        fetch_policy: FetchPolicy | None = None,
    ) -> None:
        self.backend = backend
        self.model = model
        self._key_source = key_source
        self.descriptions = descriptions
        self._status = status
        self.fetch_policy = fetch_policy
        self._tools: list[ToolSpec[Any]] | None = None

    @property
    def status(self) -> FamilyStatus:
        """Availability and why."""
        return self._status

    @property
    def key_source(self) -> KeySource:
        """The operator's IMAGE_GEN_OAI_API_KEY, else the user's key for ``image_gen_oai``."""
        return self._key_source

    def profile(self) -> ModelProfile:
        """The configured model's profile (the permissive one for unknown names)."""
        if self.backend is not None:
            return self.backend.profile(self.model)
        return OpenAIImagesBackend.profiles.get(self.model) or permissive_profile(self.model)

    def tools(self) -> list[ToolSpec[Any]]:
        """Both tools, with the operator's descriptions when set (built once: schemas cost time)."""
        if self._tools is None:
            self._tools = self._build_tools()
        return self._tools

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

    def _ready(self) -> OpenAIImagesBackend:
        if self.backend is None:
            raise ConfigurationError(
                f"{self.title} are not available: {self._status.reason}",
                hint="Set IMAGE_GEN_OAI_API_KEY (or user_provided) to enable them.",
            )
        return self.backend

    async def _generate(self, args: Any, ctx: ToolContext) -> ToolResult:
        backend = self._ready()
        key = await ctx.keyring.resolve(ctx.user_id, self.key_source)
        params = args.model_dump(exclude_none=True)
        request = GenerateRequest(model=self.model, **params)
        outputs = await backend.generate(request, api_key=key, progress=ctx.progress)
        records = await self._save(ctx, outputs, prompt=args.prompt, params=params, source="generated")
        return self._result(records, referenced=[], action="Generated")

    async def _edit(self, args: Any, ctx: ToolContext) -> ToolResult:
        backend = self._ready()
        key = await ctx.keyring.resolve(ctx.user_id, self.key_source)
        inputs = await ctx.library.read_many(ctx.user_id, args.image_ids)
        mask_record, mask = (
            (await self._mask(ctx, args.mask_image_id, inputs[0][0])) if args.mask_image_id else (None, None)
        )
        params = args.model_dump(exclude_none=True, exclude={"image_ids", "mask_image_id"})
        request = EditRequest(
            model=self.model,
            images=tuple(InputImage(data=data, media_type=rec.media_type, name=_name(rec)) for rec, data in inputs),
            mask=mask,
            **params,
        )
        outputs = await backend.edit(request, api_key=key, progress=ctx.progress)
        referenced = [rec.id for rec, _ in inputs]
        roles = ["input"] * len(referenced)
        if mask_record is not None:
            referenced.append(mask_record.id)
            roles.append("mask")
        records = await self._save(
            ctx, outputs, prompt=args.prompt, params=params, source="edited", parents=referenced, roles=roles
        )
        return self._result(records, referenced=[rec.id for rec, _ in inputs], action="Edited")

    async def _mask(
        self, ctx: ToolContext, mask_id: str | None, first: ImageRecord
    ) -> tuple[ImageRecord | None, InputImage | None]:
        """The mask as an RGBA PNG of the first image's size, and its record (for lineage)."""
        if mask_id is None:
            return None, None
        ((record, data),) = await ctx.library.read_many(ctx.user_id, [mask_id])
        png = await prepare_mask(data, (first.width, first.height))
        return record, InputImage(data=png, media_type="image/png", name="mask.png")

    async def _save(
        self,
        ctx: ToolContext,
        outputs: list[Any],
        *,
        prompt: str,
        params: dict[str, Any],
        source: str,
        parents: list[str] | None = None,
        roles: list[str] | None = None,
    ) -> list[ImageRecord]:
        backend = self._ready()
        provenance = Provenance(
            source=source,
            tool=GEN_TOOL if source == "generated" else EDIT_TOOL,
            backend=backend.backend_name,
            endpoint=backend.endpoint,
            model=self.model,
            prompt=prompt,
            parameters={k: v for k, v in params.items() if k != "prompt"},
            parent_ids=tuple(parents or ()),
            parent_roles=tuple(roles or ()),
            conversation_id=ctx.conversation_id,
            message_id=ctx.message_id,
            is_sandbox=backend.is_sandbox,
        )
        return await ctx.library.save(ctx.user_id, outputs, provenance, fetch_policy=self.fetch_policy)

    def _result(self, records: list[ImageRecord], *, referenced: list[str], action: str) -> ToolResult:
        text = describe_new_images(records, action=action, model=self.model, referenced=referenced, edit_tool=EDIT_TOOL)
        metadata = {
            "tool_family": FAMILY_ID,
            "model": self.model,
            "image_ids": [r.id for r in records],
            "referenced_image_ids": referenced,
            "is_sandbox": self._status.is_sandbox,
        }
        return ToolResult(text=text, images=records, metadata=metadata)


def _name(record: ImageRecord) -> str:
    return f"{record.id}.{extension_for(record.media_type)}"
