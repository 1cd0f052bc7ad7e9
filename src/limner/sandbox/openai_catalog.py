"""What each OpenAI image model accepts, as of the wire reference's snapshot.

Models fall into families that share one capability row of the reference's matrix (section 2).
Validation in :mod:`limner.sandbox.openai_params` reads only this table, so a model change on
the real service is a one-line change here. Token counts are realistic, not exact: OpenAI
publishes a table for the gpt-image-1 family and nothing authoritative for the others.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum


class Family(StrEnum):
    """Rows of the capability matrix."""

    DALL_E_2 = "dall-e-2"
    DALL_E_3 = "dall-e-3"
    GPT_IMAGE_1 = "gpt-image-1"
    GPT_IMAGE_2 = "gpt-image-2"
    GPT_IMAGE_25 = "gpt-image-2.5"


MODEL_FAMILIES: dict[str, Family] = {
    "dall-e-2": Family.DALL_E_2,
    "dall-e-3": Family.DALL_E_3,
    "gpt-image-1": Family.GPT_IMAGE_1,
    "gpt-image-1-mini": Family.GPT_IMAGE_1,
    "gpt-image-1.5": Family.GPT_IMAGE_1,
    "chatgpt-image-latest": Family.GPT_IMAGE_1,
    "gpt-image-2": Family.GPT_IMAGE_2,
    "gpt-image-2-2026-04-21": Family.GPT_IMAGE_2,
    "gpt-image-2.5-sunburst": Family.GPT_IMAGE_25,
    "gpt-image-2.5-sunburst-2026-09-08": Family.GPT_IMAGE_25,
    "gpt-image-2.5-flare": Family.GPT_IMAGE_25,
    "gpt-image-2.5-flare-2026-09-08": Family.GPT_IMAGE_25,
    "gpt-image-2.6-sunburst": Family.GPT_IMAGE_25,
    "gpt-image-2.6-flare": Family.GPT_IMAGE_25,
}
KNOWN_MODELS: frozenset[str] = frozenset(MODEL_FAMILIES)
DEFAULT_RETIRED_MODELS: frozenset[str] = frozenset({"dall-e-2", "dall-e-3", "gpt-image-1"})
DEFAULT_EDIT_MODEL = "gpt-image-1.5"
DEFAULT_GPT_GENERATION_MODEL = "gpt-image-1.5"

GPT_STANDARD_SIZES = ["1024x1024", "1024x1536", "1536x1024", "auto"]
GPT_QUALITIES = ["low", "medium", "high", "auto"]
OUTPUT_FORMATS = ["png", "jpeg", "webp"]


@dataclass(frozen=True)
class Capabilities:
    """One row of the reference's capability matrix."""

    endpoints: frozenset[str]
    prompt_limit: int
    max_n: int
    sizes: tuple[str, ...]
    default_size: str
    qualities: tuple[str, ...]
    is_gpt: bool
    arbitrary_sizes: bool = False
    supports_transparency: bool = True
    styles: tuple[str, ...] = ()


_GPT_ENDPOINTS = frozenset({"generations", "edits"})
CAPABILITIES: dict[Family, Capabilities] = {
    Family.DALL_E_2: Capabilities(
        endpoints=frozenset({"generations", "edits", "variations"}),
        prompt_limit=1000,
        max_n=10,
        sizes=("256x256", "512x512", "1024x1024"),
        default_size="1024x1024",
        qualities=("standard", "auto"),
        is_gpt=False,
    ),
    Family.DALL_E_3: Capabilities(
        endpoints=frozenset({"generations"}),
        prompt_limit=4000,
        max_n=1,
        sizes=("1024x1024", "1792x1024", "1024x1792"),
        default_size="1024x1024",
        qualities=("standard", "hd", "auto"),
        is_gpt=False,
        styles=("vivid", "natural"),
    ),
    Family.GPT_IMAGE_1: Capabilities(
        endpoints=_GPT_ENDPOINTS,
        prompt_limit=32000,
        max_n=10,
        sizes=tuple(GPT_STANDARD_SIZES),
        default_size="auto",
        qualities=tuple(GPT_QUALITIES),
        is_gpt=True,
    ),
    Family.GPT_IMAGE_2: Capabilities(
        endpoints=_GPT_ENDPOINTS,
        prompt_limit=32000,
        max_n=10,
        sizes=tuple(GPT_STANDARD_SIZES),
        default_size="auto",
        qualities=tuple(GPT_QUALITIES),
        is_gpt=True,
        arbitrary_sizes=True,  # transparent backgrounds: "in preview" (the SDK's docstring), accepted
    ),
    Family.GPT_IMAGE_25: Capabilities(
        endpoints=_GPT_ENDPOINTS,
        prompt_limit=32000,
        max_n=10,
        sizes=tuple(GPT_STANDARD_SIZES),
        default_size="auto",
        qualities=(*GPT_QUALITIES[:3], "xhigh", "max", "auto"),
        is_gpt=True,
        arbitrary_sizes=True,
    ),
}

# Parameters only GPT image models take; DALL·E answers them with unknown_parameter.
GPT_ONLY_PARAMS = frozenset(
    {
        "output_format",
        "output_compression",
        "background",
        "moderation",
        "stream",
        "partial_images",
        "input_fidelity",
        "complexity",
        "frame_count",
        "frame_duration_ms",
        "svg",
        "markup",
    }
)
DALL_E_ONLY_PARAMS = frozenset({"response_format"})

# Output tokens per image of the gpt-image-1 family at 1024x1024 (OpenAI's published table);
# other sizes scale with pixel area, which reproduces the table's 1024x1536 column exactly.
_SQUARE_OUTPUT_TOKENS: dict[Family, dict[str, int]] = {
    Family.GPT_IMAGE_1: {"low": 272, "medium": 1056, "high": 4160},
    Family.GPT_IMAGE_2: {"low": 459, "medium": 1783, "high": 7024},
    Family.GPT_IMAGE_25: {"low": 459, "medium": 1783, "high": 7024, "xhigh": 10536, "max": 14048},
}
# OpenAI's table for the gpt-image-1 family, used verbatim for the three standard sizes.
_PUBLISHED_OUTPUT_TOKENS: dict[tuple[str, int, int], int] = {
    ("low", 1024, 1024): 272,
    ("low", 1024, 1536): 408,
    ("low", 1536, 1024): 400,
    ("medium", 1024, 1024): 1056,
    ("medium", 1024, 1536): 1584,
    ("medium", 1536, 1024): 1568,
    ("high", 1024, 1024): 4160,
    ("high", 1024, 1536): 6240,
    ("high", 1536, 1024): 6208,
}
PARTIAL_IMAGE_TOKENS = 100
_MIN_PIXELS = 655_360
_MAX_PIXELS = 8_294_400
_MAX_EDGE = 3840


def family_of(model: str) -> Family | None:
    """The family of a known model id, or None for anything else."""
    return MODEL_FAMILIES.get(model)


def resolve_quality(model: str, family: Family, quality: str) -> str:
    """What ``auto`` turns into; Azure documents medium for the mini model and high otherwise."""
    if quality != "auto":
        return quality
    if family in (Family.DALL_E_2, Family.DALL_E_3):
        return "standard"
    return "medium" if model == "gpt-image-1-mini" else "high"


def parse_size(size: str) -> tuple[int, int] | None:
    """``"WxH"`` as integers, or None when it is not of that shape."""
    width, sep, height = size.partition("x")
    if not sep or not width.isdigit() or not height.isdigit():
        return None
    return int(width), int(height)


def arbitrary_size_problem(width: int, height: int) -> str | None:
    """Why a custom gpt-image-2 size is refused, or None when it meets every rule."""
    if width % 16 or height % 16:
        return "Width and height must both be multiples of 16."
    if max(width, height) > _MAX_EDGE:
        return f"The longest edge must be at most {_MAX_EDGE} pixels."
    if max(width, height) > 3 * min(width, height):
        return "The aspect ratio must be between 1:3 and 3:1."
    pixels = width * height
    if not _MIN_PIXELS <= pixels <= _MAX_PIXELS:
        return f"The total number of pixels must be between {_MIN_PIXELS} and {_MAX_PIXELS}."
    return None


def auto_edit_size(width: int, height: int) -> str:
    """The standard size closest in shape to the first input image, used for ``size=auto`` edits."""
    ratio = width / height if height else 1.0
    if ratio >= 1.25:
        return "1536x1024"
    if ratio <= 0.8:
        return "1024x1536"
    return "1024x1024"


def output_tokens(family: Family, quality: str, width: int, height: int) -> int:
    """Output tokens for one image; DALL·E has no token usage at all."""
    table = _SQUARE_OUTPUT_TOKENS.get(family)
    if table is None:
        return 0
    published = _PUBLISHED_OUTPUT_TOKENS.get((quality, width, height)) if family is Family.GPT_IMAGE_1 else None
    if published is not None:
        return published
    square = table.get(quality, table["high"])
    return max(1, round(square * (width * height) / (1024 * 1024)))


def text_tokens(prompt: str) -> int:
    """Roughly one token per word, at least one."""
    return max(1, len(prompt.split()))


def input_image_tokens(width: int, height: int, *, high_fidelity: bool) -> int:
    """Tokens for one input image, following the tile arithmetic of OpenAI's vision pricing."""
    fit = min(1.0, 2048 / max(width, height))
    scaled_w, scaled_h = width * fit, height * fit
    shrink = min(1.0, 768 / min(scaled_w, scaled_h))
    tiles = math.ceil(scaled_w * shrink / 512) * math.ceil(scaled_h * shrink / 512)
    tokens = 65 + 129 * tiles
    return tokens + 4096 if high_fidelity else tokens
