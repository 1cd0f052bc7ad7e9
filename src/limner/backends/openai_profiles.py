"""Model profiles of the OpenAI Images API (from shared/apis/openai-images.md, §2).

A profile lists what a model accepts so that a bad value fails before any network call with a message
naming what is allowed. Models that are shut down keep their profile (a compatible server or an old
Azure resource may still serve them) and say so in ``status``.
"""

from __future__ import annotations

from dataclasses import replace

from limner.backends.base import ModelProfile, SizeRule
from limner.config import DEFAULT_OAI_MODEL

__all__ = ["DALLE_PROFILES", "DEFAULT_MODEL", "OPENAI_PROFILES", "permissive_profile"]

DEFAULT_MODEL = DEFAULT_OAI_MODEL

_GPT_IMAGE_1 = ModelProfile(name="gpt-image-1", family="gpt-image", status="shut down 2026-10-23")
_GPT_IMAGE_2 = replace(
    _GPT_IMAGE_1,
    name="gpt-image-2",
    status="available",
    size_rule=SizeRule(),
    backgrounds=("auto", "opaque", "transparent"),
    input_fidelities=(),
    notes=("transparent backgrounds are in preview (OpenAI's SDK documents them for gpt-image-2)",),
)
_GPT_IMAGE_25 = replace(
    _GPT_IMAGE_2,
    name="gpt-image-2.5",
    qualities=("auto", "low", "medium", "high", "xhigh", "max"),
    backgrounds=("opaque", "transparent"),
    output_formats=("png", "jpeg", "webp", "gif"),
    notes=("SVG output is not offered: limner stores raster images only",),
)


def _named(base: ModelProfile, *names: str, **changes: object) -> dict[str, ModelProfile]:
    return {name: replace(base, name=name, **changes) for name in names}  # type: ignore[arg-type]


OPENAI_PROFILES: dict[str, ModelProfile] = {
    **_named(_GPT_IMAGE_1, "gpt-image-1"),
    **_named(_GPT_IMAGE_1, "gpt-image-1-mini", status="deprecated", input_fidelities=("low",)),
    **_named(_GPT_IMAGE_1, "gpt-image-1.5", "chatgpt-image-latest", status="available"),
    **_named(_GPT_IMAGE_2, "gpt-image-2", "gpt-image-2-2026-04-21"),
    **_named(
        _GPT_IMAGE_25,
        "gpt-image-2.5-sunburst",
        "gpt-image-2.5-sunburst-2026-09-08",
        "gpt-image-2.5-flare",
        "gpt-image-2.5-flare-2026-09-08",
        "gpt-image-2.6-sunburst",
        "gpt-image-2.6-flare",
    ),
}


DALLE_PROFILES: dict[str, ModelProfile] = {
    "dall-e-3": ModelProfile(
        name="dall-e-3",
        family="dall-e",
        status="retired on OpenAI 2026-05-12 (reverse proxies and older Azure resources may still serve it)",
        sizes=("1024x1024", "1792x1024", "1024x1792"),
        qualities=("standard", "hd"),
        styles=("vivid", "natural"),
        backgrounds=(),
        output_formats=(),
        max_n=1,
        max_prompt_chars=4000,
        supports_edit=False,
        supports_mask=False,
        max_input_images=0,
        input_fidelities=(),
        supports_streaming=False,
        returns_revised_prompt=True,
    ),
    "dall-e-2": ModelProfile(
        name="dall-e-2",
        family="dall-e",
        status="retired on OpenAI 2026-05-12 (reverse proxies may still serve it)",
        sizes=("256x256", "512x512", "1024x1024"),
        qualities=("standard",),
        backgrounds=(),
        output_formats=(),
        max_n=10,
        max_prompt_chars=1000,
        supports_edit=True,
        supports_mask=True,
        max_input_images=1,
        input_media_types=("image/png",),
        max_input_bytes=4 * 1024 * 1024,
        input_fidelities=(),
        supports_streaming=False,
    ),
}
"""DALL·E, for the ``dalle`` family: shut down on OpenAI, still served by some proxies and Azure resources."""

OPENAI_PROFILES.update(DALLE_PROFILES)


def permissive_profile(model: str) -> ModelProfile:
    """For a name we do not know (an Azure deployment, a gateway alias): the broad GPT image profile.

    Listed sizes stay the standard ones plus the gpt-image-2 size rule, so the checks only stop what no
    GPT image model accepts; the upstream decides the rest and its refusal is mapped like any other.
    """
    return replace(
        _GPT_IMAGE_1,
        name=model,
        status="unknown model: sent as given",
        size_rule=SizeRule(),
        qualities=_GPT_IMAGE_25.qualities,
        backgrounds=("auto", "opaque", "transparent"),
    )
