"""Rendering a validated job and shaping what the Images API sends back.

GPT image models answer with base64 (no line breaks), the resolved ``background``,
``output_format``, ``quality`` and ``size`` (never ``auto``) and token ``usage``; DALL·E answers
with a ``url`` or ``b64_json`` and, for dall-e-3, a ``revised_prompt``; Azure's DALL·E items also
carry content-filter annotations. Streaming events follow section 7 of the wire reference.
Rendering functions are CPU-bound and must run in a worker thread.
"""

from __future__ import annotations

import base64
from typing import Any

from limner.sandbox import openai_catalog as catalog
from limner.sandbox.openai_catalog import Family
from limner.sandbox.openai_params import ImageJob
from limner.sandbox.renderer import render_edit, render_generation

MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
_SAFE = {"filtered": False, "severity": "safe"}


def render_image(job: ImageJob, variant: int, coarseness: int = 1) -> bytes:
    """One output image of ``job``; ``coarseness`` > 1 gives a lower-detail partial image."""
    transparent = job.background == "transparent"
    if job.inputs is None:
        return render_generation(
            job.prompt,
            job.width,
            job.height,
            job.output_format,
            transparent=transparent,
            variant=variant,
            quality=job.compression,
            coarseness=coarseness,
        )
    mask = job.inputs.mask.data if job.inputs.mask is not None else None
    return render_edit(
        [image.data for image in job.inputs.images],
        job.prompt,
        job.width,
        job.height,
        job.output_format,
        mask=mask,
        variant=variant,
        transparent=transparent,
        quality=job.compression,
        coarseness=coarseness,
    )


def render_all(job: ImageJob, *, with_b64: bool) -> list[tuple[bytes, str | None]]:
    """Every output image with its base64 form when the answer carries bytes."""
    images = [render_image(job, variant) for variant in range(job.n)]
    return [(data, b64(data) if with_b64 else None) for data in images]


def render_partial(job: ImageJob, variant: int, index: int) -> str:
    """Partial image ``index`` of a stream, coarser the earlier it is, as base64."""
    coarseness = 2 ** (job.partial_images - index + 2)
    return b64(render_image(job, variant, coarseness))


def b64(data: bytes) -> str:
    """Standard base64 without line breaks, as the API sends it."""
    return base64.b64encode(data).decode("ascii")


def usage(job: ImageJob, *, images: int, partials: int = 0) -> dict[str, Any]:
    """Token usage for ``images`` outputs (plus streamed partials) of ``job``."""
    text = catalog.text_tokens(job.prompt)
    image_in = 0
    if job.inputs is not None:
        high = job.input_fidelity == "high"
        image_in = sum(
            catalog.input_image_tokens(item.probe.width, item.probe.height, high_fidelity=high)
            for item in job.inputs.images
        )
    per_image = catalog.output_tokens(job.family, job.quality, job.width, job.height)
    output = images * per_image + partials * catalog.PARTIAL_IMAGE_TOKENS
    return {
        "input_tokens": text + image_in,
        "input_tokens_details": {"text_tokens": text, "image_tokens": image_in},
        "output_tokens": output,
        "output_tokens_details": {"image_tokens": output, "text_tokens": 0},
        "total_tokens": text + image_in + output,
    }


def revised_prompt(job: ImageJob) -> str:
    """dall-e-3 rewrites prompts; the emulator's rewrite is deterministic and recognisable."""
    style = job.style or "vivid"
    return f"A {style}, detailed illustration of the following scene: {job.prompt.strip()}"


def data_item(job: ImageJob, *, url: str | None, b64_json: str | None, azure: bool) -> dict[str, Any]:
    """One entry of ``data``."""
    item: dict[str, Any] = {"url": url} if url is not None else {"b64_json": b64_json}
    if job.family is Family.DALL_E_3:
        item["revised_prompt"] = revised_prompt(job)
    if azure and not job.is_gpt:
        item["content_filter_results"] = {name: dict(_SAFE) for name in ("hate", "self_harm", "sexual", "violence")}
        item["prompt_filter_results"] = {
            **{name: dict(_SAFE) for name in ("hate", "self_harm", "sexual", "violence")},
            "profanity": {"detected": False, "filtered": False},
            "jailbreak": {"detected": False, "filtered": False},
        }
    return item


def images_body(job: ImageJob, items: list[dict[str, Any]], created: int) -> dict[str, Any]:
    """The ``ImagesResponse`` of a non-streaming answer."""
    body: dict[str, Any] = {"created": created, "data": items}
    if job.is_gpt:
        body.update(_resolved(job))
        body["usage"] = usage(job, images=len(items))
        if job.safety_identifier:
            body["safety_identifier"] = job.safety_identifier
    return body


def partial_event(job: ImageJob, b64_json: str, index: int, created: int) -> dict[str, Any]:
    """A ``*.partial_image`` event; it describes the settings as requested, ``auto`` included."""
    return {
        "type": f"{_event_prefix(job)}.partial_image",
        "b64_json": b64_json,
        "created_at": created,
        "size": job.requested_size,
        "quality": job.requested_quality,
        "background": job.requested_background,
        "output_format": job.output_format,
        "partial_image_index": index,
    }


def completed_event(
    job: ImageJob, *, b64_json: str | None, url: str | None, created: int, partials: int
) -> dict[str, Any]:
    """A ``*.completed`` event for one image, with that image's usage."""
    event: dict[str, Any] = {"type": f"{_event_prefix(job)}.completed"}
    if url is not None:
        event["url"] = url
    else:
        event["b64_json"] = b64_json
    event["created_at"] = created
    event.update(_resolved(job))
    event["usage"] = usage(job, images=1, partials=partials)
    if job.safety_identifier:
        event["safety_identifier"] = job.safety_identifier
    return event


def _resolved(job: ImageJob) -> dict[str, Any]:
    return {
        "background": job.background,
        "output_format": job.output_format,
        "quality": job.quality,
        "size": job.size,
    }


def _event_prefix(job: ImageJob) -> str:
    return "image_generation" if job.route.endpoint == "generations" else "image_edit"
