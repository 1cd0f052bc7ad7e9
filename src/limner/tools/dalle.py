"""DALL·E: the ``dalle`` tool, with LibreChat's parameters, over the same OpenAI Images backend.

OpenAI retired the DALL·E models in May 2026; the family remains for reverse proxies
(``DALLE_REVERSE_PROXY``) and Azure resources (``DALLE3_BASEURL``) that still serve them. When an
upstream answers that the model does not exist, the error says so and points to the OpenAI Image Tools.
Unlike LibreChat, ``DALLE3_SYSTEM_PROMPT`` works (it is the tool's description) and every image gets an
ID the LLM can pass to an editing tool.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, create_model

from limner.backends.base import GenerateRequest, ModelProfile
from limner.backends.openai_images import OpenAIEndpoint, OpenAIImagesBackend, SettingNames
from limner.backends.openai_profiles import DALLE_PROFILES, OPENAI_PROFILES
from limner.config import Settings
from limner.keys import KeySource
from limner.tools.base import ToolContext, ToolResult, ToolSpec
from limner.tools.family import SANDBOX_KEY, BackendFamily, BuildContext, available_status, unavailable_status
from limner.tools.openai import EDIT_TOOL, warn_if_retired

__all__ = ["DalleFamily", "build", "configured"]

FAMILY_ID = "dalle"
TOOL = "dalle"

DESCRIPTION = (
    "Creates images from a text description with DALL·E. Write the prompt in English, in detail: the kind of "
    "image (photo, oil painting, illustration...), the subject, composition, lighting and style. One image per "
    "call. Every image gets an image ID (img_...) in the result; to change an image later, pass its ID to an "
    "editing tool."
)
_NAMES = SettingNames(
    api_key="DALLE3_API_KEY",
    base_url="DALLE_REVERSE_PROXY or DALLE3_BASEURL",
    api_version="DALLE3_AZURE_API_VERSION",
    model="LIMNER_DALLE_MODEL",
    retired_hint=(
        "OpenAI retired DALL·E on 2026-05-12: use the OpenAI Image Tools (image_gen_oai, IMAGE_GEN_OAI_API_KEY) "
        "instead, or point DALLE_REVERSE_PROXY at a service that still serves DALL·E."
    ),
)


def args_model(profile: ModelProfile) -> type[BaseModel]:
    """LibreChat's four parameters, with enums from the model's profile."""
    fields: dict[str, Any] = {
        "prompt": (
            str,
            Field(min_length=1, max_length=profile.max_prompt_chars, description="A detailed description, in English."),
        ),
        "quality": _choice(profile.qualities, "hd gives finer detail and costs more."),
        "size": _choice(
            profile.sizes, "Square by default; 1792x1024 for wide scenes, 1024x1792 for full-length portraits."
        ),
    }
    if profile.styles:
        fields["style"] = _choice(profile.styles, "vivid is hyper-real and dramatic; natural is less so.")
    if profile.max_n > 1:
        fields["n"] = (int, Field(1, ge=1, le=profile.max_n, description="How many images (each gets an ID)."))
    return create_model("DalleArgs", __config__=ConfigDict(extra="forbid"), **fields)


def _choice(values: tuple[str, ...], description: str) -> tuple[Any, Any]:
    return (Literal[values] | None, Field(None, description=f"{description} One of: {', '.join(values)}."))


class DalleFamily(BackendFamily):
    """The ``dalle`` tool bound to one backend and model."""

    id = FAMILY_ID
    title = "DALL·E"
    enable_hint = "Set DALLE3_API_KEY or DALLE_API_KEY (or user_provided), and DALLE_REVERSE_PROXY or DALLE3_BASEURL."
    url_setting = "DALLE_REVERSE_PROXY or DALLE3_BASEURL"

    def __init__(self, *, description: str | None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.description = description

    def profile(self) -> ModelProfile:
        """The configured model's profile (DALL·E 3's for unknown deployment names)."""
        return OPENAI_PROFILES.get(self.model) or DALLE_PROFILES["dall-e-3"]

    def _build_tools(self) -> list[ToolSpec[Any]]:
        return [
            ToolSpec(
                name=TOOL,
                family=FAMILY_ID,
                title="Generate an image (DALL·E)",
                description=self.description or DESCRIPTION,
                args=args_model(self.profile()),
                run=self._generate,
            )
        ]

    async def _generate(self, args: Any, ctx: ToolContext) -> ToolResult:
        backend = self.ready()
        params = args.model_dump(exclude_none=True)
        request = GenerateRequest(model=self.model, **params)
        outputs = await backend.generate(request, api_key=await self.api_key(ctx), progress=ctx.progress)
        records = await self.save(ctx, outputs, tool=TOOL, prompt=args.prompt, params=params)
        return self.result(records, referenced=[], action="Generated", edit_tool=EDIT_TOOL)


def configured(settings: Settings) -> bool:
    """A key (even ``user_provided``), a reverse proxy or an Azure URL means the operator chose DALL·E."""
    return any(
        value is not None for value in (settings.dalle_api_key, settings.dalle_reverse_proxy, settings.dalle3_baseurl)
    )


async def build(ctx: BuildContext) -> DalleFamily:
    """The family from the settings: the emulator, Azure, a reverse proxy, OpenAI, or unavailable."""
    settings = ctx.settings
    model = settings.dalle_model
    common: dict[str, Any] = {"model": model, "description": settings.dalle3_system_prompt}
    if ctx.sandbox is not None:
        source = KeySource(FAMILY_ID, "DALLE3_API_KEY", "DALL·E", SecretStr(SANDBOX_KEY))
        backend = await _backend(ctx, OpenAIEndpoint.resolve(ctx.sandbox.urls["openai"], None, _NAMES), sandbox=True)
        status = available_status(DalleFamily, backend, model, source, reason=ctx.sandbox_reason())
        return DalleFamily(
            backend=backend, key_source=source, status=status, fetch_policy=ctx.fetch_policy(sandbox=True), **common
        )
    source = KeySource(FAMILY_ID, "DALLE3_API_KEY", "DALL·E", settings.dalle_api_key)
    if not configured(settings):
        reason = "DALLE3_API_KEY / DALLE_API_KEY is not set (OpenAI retired DALL·E; use the OpenAI Image Tools)"
        return DalleFamily(
            backend=None, key_source=source, status=unavailable_status(DalleFamily, reason, model), **common
        )
    if settings.dalle3_baseurl:
        endpoint = OpenAIEndpoint.resolve(settings.dalle3_baseurl, settings.dalle3_azure_api_version, _NAMES)
    else:
        endpoint = OpenAIEndpoint.resolve(settings.dalle_reverse_proxy, None, _NAMES)
    backend = await _backend(ctx, endpoint, sandbox=False)
    warn_if_retired(backend, model, "LIMNER_DALLE_MODEL")
    status = available_status(DalleFamily, backend, model, source, reason=None)
    return DalleFamily(
        backend=backend, key_source=source, status=status, fetch_policy=ctx.fetch_policy(sandbox=False), **common
    )


async def _backend(ctx: BuildContext, endpoint: OpenAIEndpoint, *, sandbox: bool) -> OpenAIImagesBackend:
    settings = ctx.settings
    return OpenAIImagesBackend(
        endpoint=endpoint,
        http_client=await ctx.http_client(sandbox),
        timeout=settings.provider_timeout,
        max_retries=settings.provider_max_retries,
        setting_names=_NAMES,
        is_sandbox=sandbox,
    )
