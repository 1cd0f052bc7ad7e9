"""Model profiles of the OpenAI Images API (from shared/apis/openai-images.md, §2).

A profile lists what a model accepts so that a bad value fails before any network call with a message
naming what is allowed. Models that are shut down keep their profile (a compatible server or an old
Azure resource may still serve them) and say so in ``status``.
"""

from __future__ import annotations

from dataclasses import replace

from limner.backends.base import ModelProfile, SizeRule
from limner.config import DEFAULT_OAI_MODEL

__all__ = ["DEFAULT_MODEL", "OPENAI_PROFILES", "permissive_profile"]

DEFAULT_MODEL = DEFAULT_OAI_MODEL

_GPT_IMAGE_1 = ModelProfile(name="gpt-image-1", family="gpt-image", status="shut down 2026-10-23")
_GPT_IMAGE_2 = replace(
    _GPT_IMAGE_1,
    name="gpt-image-2",
    status="available",
    size_rule=SizeRule(),
    backgrounds=("auto", "opaque"),
    input_fidelities=(),
    notes=("transparent backgrounds are in preview and not offered",),
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
