from __future__ import annotations

import pytest

from limner.backends.base import EditRequest, GenerateRequest, InputImage
from limner.backends.openai_profiles import DEFAULT_MODEL, OPENAI_PROFILES, permissive_profile
from limner.errors import UnsupportedOperationError

MODELS_IN_REFERENCE = [
    "gpt-image-1",
    "gpt-image-1-mini",
    "gpt-image-1.5",
    "chatgpt-image-latest",
    "gpt-image-2",
    "gpt-image-2-2026-04-21",
    "gpt-image-2.5-sunburst",
    "gpt-image-2.5-sunburst-2026-09-08",
    "gpt-image-2.5-flare",
    "gpt-image-2.5-flare-2026-09-08",
    "gpt-image-2.6-sunburst",
    "gpt-image-2.6-flare",
]


def test_every_gpt_image_model_has_a_profile() -> None:
    assert set(MODELS_IN_REFERENCE) <= set(OPENAI_PROFILES)
    assert OPENAI_PROFILES[DEFAULT_MODEL].status == "available"
    assert OPENAI_PROFILES["gpt-image-1"].status.startswith("shut down")


def gen(model: str, **kw: object) -> GenerateRequest:
    return GenerateRequest(model=model, prompt="a kite", **kw)  # type: ignore[arg-type]


def test_gpt_image_2_accepts_custom_sizes_within_its_rules() -> None:
    profile = OPENAI_PROFILES["gpt-image-2"]
    profile.check_generate(gen("gpt-image-2", size="2048x1152"))
    with pytest.raises(UnsupportedOperationError, match="multiples of 16"):
        profile.check_generate(gen("gpt-image-2", size="1000x1000"))
    with pytest.raises(UnsupportedOperationError, match="aspect"):
        profile.check_generate(gen("gpt-image-2", size="3840x1024"))


def test_fixed_size_models_name_the_allowed_sizes() -> None:
    with pytest.raises(UnsupportedOperationError, match="1536x1024"):
        OPENAI_PROFILES["gpt-image-1.5"].check_generate(gen("gpt-image-1.5", size="2048x2048"))


def test_transparency_needs_png_or_webp() -> None:
    profile = OPENAI_PROFILES["gpt-image-1.5"]
    profile.check_generate(gen("gpt-image-1.5", background="transparent", output_format="webp"))
    with pytest.raises(UnsupportedOperationError, match="png or webp"):
        profile.check_generate(gen("gpt-image-1.5", background="transparent", output_format="jpeg"))


def test_gpt_image_2_takes_transparency_in_png_or_webp() -> None:
    """OpenAI's SDK documents transparent backgrounds for gpt-image-2 (in preview)."""
    profile = OPENAI_PROFILES["gpt-image-2"]
    profile.check_generate(gen("gpt-image-2", background="transparent", output_format="png"))
    with pytest.raises(UnsupportedOperationError, match="png or webp"):
        profile.check_generate(gen("gpt-image-2", background="transparent", output_format="jpeg"))


def test_edit_input_limits() -> None:
    profile = OPENAI_PROFILES["gpt-image-1.5"]
    image = InputImage(data=b"x", media_type="image/png")
    too_many = EditRequest(model="gpt-image-1.5", prompt="p", images=tuple([image] * 17))
    with pytest.raises(UnsupportedOperationError, match="at most 16"):
        profile.check_edit(too_many)
    gif = EditRequest(model="gpt-image-1.5", prompt="p", images=(InputImage(data=b"x", media_type="image/gif"),))
    with pytest.raises(UnsupportedOperationError, match="image/gif"):
        profile.check_edit(gif)


def test_mini_accepts_only_low_fidelity() -> None:
    image = InputImage(data=b"x", media_type="image/png")
    request = EditRequest(model="gpt-image-1-mini", prompt="p", images=(image,), input_fidelity="high")
    with pytest.raises(UnsupportedOperationError, match="input_fidelity"):
        OPENAI_PROFILES["gpt-image-1-mini"].check_edit(request)


def test_unknown_model_gets_a_permissive_profile() -> None:
    profile = permissive_profile("my-azure-deployment")
    profile.check_generate(gen("my-azure-deployment", size="2048x1152", quality="high"))
    with pytest.raises(UnsupportedOperationError):
        profile.check_generate(gen("my-azure-deployment", quality="ultra"))
