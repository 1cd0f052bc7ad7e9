"""The Backend base class, model profiles, and the requests and outputs every backend speaks.

A backend is a wire adapter: it receives bytes and parameters (never image IDs), checks them against the
model's :class:`ModelProfile` before any network call, talks to its upstream through a shared HTTP client,
and maps every foreign failure to a :class:`~limner.errors.LimnerError` in one place
(:meth:`Backend._map_error`). It knows nothing of users, the database or storage.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, model_validator

from limner.errors import LimnerError, UnsupportedOperationError, redact

__all__ = [
    "Backend",
    "EditRequest",
    "GenerateRequest",
    "ImageOutput",
    "InputImage",
    "ModelProfile",
    "Progress",
    "ProgressCallback",
    "SizeRule",
    "public_url",
]

log = logging.getLogger(__name__)

_SIZE_RE = re.compile(r"^(\d{2,5})x(\d{2,5})$")


@dataclass(frozen=True, slots=True)
class SizeRule:
    """Arbitrary ``WxH`` sizes (gpt-image-2 and later): multiples, aspect, edge and pixel bounds."""

    multiple: int = 16
    max_aspect: float = 3.0
    max_edge: int = 3840
    min_pixels: int = 655_360
    max_pixels: int = 8_294_400

    def problem(self, width: int, height: int) -> str | None:
        """Why ``width`` x ``height`` breaks the rule, or None when it is fine."""
        if width % self.multiple or height % self.multiple:
            return f"width and height must be multiples of {self.multiple}"
        if max(width, height) > self.max_edge:
            return f"the longest edge may be at most {self.max_edge}"
        if max(width, height) / min(width, height) > self.max_aspect:
            return f"the aspect ratio may be at most {self.max_aspect:g}:1"
        if not self.min_pixels <= width * height <= self.max_pixels:
            return f"width x height must be between {self.min_pixels:,} and {self.max_pixels:,} pixels"
        return None


@dataclass(frozen=True, slots=True)
class ModelProfile:
    """What one model accepts. Checked before any request; nothing unsupported is dropped silently."""

    name: str
    family: str
    status: str = "available"
    sizes: tuple[str, ...] = ("auto", "1024x1024", "1536x1024", "1024x1536")
    size_rule: SizeRule | None = None
    qualities: tuple[str, ...] = ("auto", "low", "medium", "high")
    styles: tuple[str, ...] = ()
    backgrounds: tuple[str, ...] = ("auto", "transparent", "opaque")
    transparent_formats: tuple[str, ...] = ("png", "webp")
    output_formats: tuple[str, ...] = ("png", "jpeg", "webp")
    max_n: int = 10
    max_prompt_chars: int = 32_000
    supports_edit: bool = True
    supports_mask: bool = True
    max_input_images: int = 16
    input_media_types: tuple[str, ...] = ("image/png", "image/jpeg", "image/webp")
    max_input_bytes: int = 50 * 1024 * 1024
    input_fidelities: tuple[str, ...] = ("high", "low")
    supports_streaming: bool = True
    returns_revised_prompt: bool = False
    extra_params: tuple[str, ...] = ()
    """Which of negative_prompt, seed, steps, guidance, strength the model takes."""
    option_keys: tuple[str, ...] = ()
    """Backend-specific ``options`` keys the model takes."""
    notes: tuple[str, ...] = field(default_factory=tuple)

    def check_size(self, size: str | None) -> None:
        """Listed sizes, or any size the model's rule allows."""
        if size is None or size in self.sizes:
            return
        match = _SIZE_RE.match(size)
        if self.size_rule is not None and match:
            problem = self.size_rule.problem(int(match[1]), int(match[2]))
            if problem is None:
                return
            raise UnsupportedOperationError(f"{self.name} cannot make a {size} image: {problem}.")
        allowed = ", ".join(self.sizes) + (" or a custom WxH" if self.size_rule else "")
        raise UnsupportedOperationError(f"{self.name} does not support size {size!r}; use one of: {allowed}.")

    def check_generate(self, req: GenerateRequest) -> None:
        """Raise UnsupportedOperationError naming what is allowed, for the first problem found."""
        self._check_common(
            prompt=req.prompt,
            n=req.n,
            size=req.size,
            quality=req.quality,
            background=req.background,
            fmt=req.output_format,
        )
        _check_choice(self.name, "style", req.style, self.styles)
        self._check_compression(req.output_format, req.output_compression)
        self._check_extras(req)

    def check_edit(self, req: EditRequest) -> None:
        """As check_generate, plus the edit-only limits (inputs, mask, fidelity)."""
        if not self.supports_edit:
            raise UnsupportedOperationError(f"{self.name} cannot edit images; use a model that supports edits.")
        self._check_common(
            prompt=req.prompt,
            n=req.n,
            size=req.size,
            quality=req.quality,
            background=req.background,
            fmt=req.output_format,
        )
        self._check_inputs(req)
        _check_choice(self.name, "input_fidelity", req.input_fidelity, self.input_fidelities)
        self._check_extras(req)

    def _check_common(
        self,
        *,
        prompt: str,
        n: int,
        size: str | None,
        quality: str | None,
        background: str | None,
        fmt: str | None,
    ) -> None:
        if len(prompt) > self.max_prompt_chars:
            raise UnsupportedOperationError(
                f"The prompt has {len(prompt):,} characters; {self.name} accepts at most {self.max_prompt_chars:,}."
            )
        if n > self.max_n:
            raise UnsupportedOperationError(f"{self.name} makes at most {self.max_n} image(s) per request; got n={n}.")
        self.check_size(size)
        _check_choice(self.name, "quality", quality, self.qualities)
        _check_choice(self.name, "background", background, self.backgrounds)
        _check_choice(self.name, "output_format", fmt, self.output_formats)
        if background == "transparent" and (fmt or "png") not in self.transparent_formats:
            raise UnsupportedOperationError(
                f"A transparent background needs output_format {' or '.join(self.transparent_formats)}."
            )

    def _check_extras(self, req: GenerateRequest | EditRequest) -> None:
        for name in ("negative_prompt", "seed", "steps", "guidance", "strength"):
            if getattr(req, name, None) is not None and name not in self.extra_params:
                raise UnsupportedOperationError(f"{self.name} does not take the {name} parameter.")
        unknown = sorted(set(req.options) - set(self.option_keys))
        if unknown:
            raise UnsupportedOperationError(f"{self.name} does not take the option(s) {', '.join(unknown)}.")

    def _check_compression(self, fmt: str | None, compression: int | None) -> None:
        if compression is not None and (fmt or "png") not in ("jpeg", "webp"):
            raise UnsupportedOperationError("output_compression applies only to jpeg and webp output.")

    def _check_inputs(self, req: EditRequest) -> None:
        if len(req.images) > self.max_input_images:
            raise UnsupportedOperationError(
                f"{self.name} accepts at most {self.max_input_images} input image(s); got {len(req.images)}."
            )
        for image in req.images:
            if image.media_type not in self.input_media_types:
                raise UnsupportedOperationError(
                    f"{self.name} cannot take {image.media_type} input; accepted: {', '.join(self.input_media_types)}."
                )
            if len(image.data) > self.max_input_bytes:
                raise UnsupportedOperationError(
                    f"An input image is larger than the {self.max_input_bytes // 1024 // 1024} MB {self.name} accepts."
                )
        if req.mask is not None and not self.supports_mask:
            raise UnsupportedOperationError(f"{self.name} does not support masks.")


def _check_choice(model: str, name: str, value: str | None, allowed: tuple[str, ...]) -> None:
    if value is None or value in allowed:
        return
    if not allowed:
        raise UnsupportedOperationError(f"{model} does not take the {name} parameter.")
    raise UnsupportedOperationError(f"{model} does not support {name}={value!r}; use one of: {', '.join(allowed)}.")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class GenerateRequest(_Frozen):
    """A text-to-image request; ``None`` means "the model's default" and is not sent.

    The first block is the OpenAI Images vocabulary; the second serves diffusion backends (A1111, BFL);
    ``options`` carries what only one backend knows (a Flux fine-tune ID, an A1111 sampler), and each
    backend documents the keys it reads and rejects the ones it does not.
    """

    model: str
    prompt: str = Field(min_length=1)
    n: int = Field(1, ge=1, le=10)
    size: str | None = None
    quality: str | None = None
    background: str | None = None
    style: str | None = None
    output_format: str | None = None
    output_compression: int | None = Field(None, ge=0, le=100)

    negative_prompt: str | None = None
    seed: int | None = None
    steps: int | None = Field(None, ge=1, le=150)
    guidance: float | None = Field(None, ge=0)
    options: dict[str, Any] = Field(default_factory=dict)


class InputImage(_Frozen):
    """Bytes of an owner-checked input image; backends never see image IDs."""

    data: bytes = Field(repr=False)
    media_type: str
    name: str = "image.png"


class EditRequest(_Frozen):
    """An edit of one or several images, with an optional mask applied to the first."""

    model: str
    prompt: str = Field(min_length=1)
    images: tuple[InputImage, ...] = Field(min_length=1)
    mask: InputImage | None = None
    n: int = Field(1, ge=1, le=10)
    size: str | None = None
    quality: str | None = None
    background: str | None = None
    output_format: str | None = None
    input_fidelity: str | None = None

    negative_prompt: str | None = None
    seed: int | None = None
    steps: int | None = Field(None, ge=1, le=150)
    guidance: float | None = Field(None, ge=0)
    strength: float | None = Field(None, ge=0, le=1)
    """How far an img2img edit may move from the input (A1111 ``denoising_strength``)."""
    options: dict[str, Any] = Field(default_factory=dict)


class ImageOutput(_Frozen):
    """One image from an upstream: bytes, or a URL to fetch through the safe fetcher."""

    data: bytes | None = Field(None, repr=False)
    url: str | None = None
    media_type: str | None = None
    revised_prompt: str | None = None
    seed: int | None = None
    provider_details: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_source(self) -> ImageOutput:
        if (self.data is None) == (self.url is None):
            raise ValueError("an ImageOutput has exactly one of data or url")
        return self


@dataclass(frozen=True, slots=True)
class Progress:
    """A progress report from a running generation: a fraction and/or a partial image."""

    fraction: float | None = None
    message: str | None = None
    partial_image: bytes | None = None
    partial_media_type: str | None = None


ProgressCallback = Callable[[Progress], Awaitable[None]]


class Backend:
    """Base of every wire adapter. Subclasses implement ``_generate``, ``_edit`` and ``_map_error``."""

    name: ClassVar[str] = "backend"
    profiles: ClassVar[dict[str, ModelProfile]] = {}

    def __init__(self, *, endpoint: str, is_sandbox: bool = False) -> None:
        self.endpoint = public_url(endpoint)
        self.is_sandbox = is_sandbox
        self.backend_name: str = self.name
        """Recorded with each image and named in errors (``azure`` for the OpenAI backend on Azure)."""

    def profile(self, model: str) -> ModelProfile:
        """The profile of ``model``; subclasses decide what an unknown model gets."""
        try:
            return self.profiles[model]
        except KeyError:
            raise UnsupportedOperationError(
                f"Unknown model {model!r} for {self.name}; known: {', '.join(self.profiles)}."
            ) from None

    async def generate(
        self, req: GenerateRequest, *, api_key: str | None, progress: ProgressCallback | None = None
    ) -> list[ImageOutput]:
        """Check against the profile, then call upstream inside the error mapping."""
        self.profile(req.model).check_generate(req)
        with self._errors(api_key):
            return await self._generate(req, api_key=api_key, progress=progress)

    async def edit(
        self, req: EditRequest, *, api_key: str | None, progress: ProgressCallback | None = None
    ) -> list[ImageOutput]:
        """Check against the profile, then call upstream inside the error mapping."""
        self.profile(req.model).check_edit(req)
        with self._errors(api_key):
            return await self._edit(req, api_key=api_key, progress=progress)

    async def _generate(
        self, req: GenerateRequest, *, api_key: str | None, progress: ProgressCallback | None
    ) -> list[ImageOutput]:
        raise NotImplementedError

    async def _edit(
        self, req: EditRequest, *, api_key: str | None, progress: ProgressCallback | None
    ) -> list[ImageOutput]:
        raise UnsupportedOperationError(f"{self.name} cannot edit images.")

    def _map_error(self, exc: Exception) -> LimnerError | None:
        """Translate a foreign exception; None lets it propagate (a bug, logged by the tool layer)."""
        return None

    @contextmanager
    def _errors(self, api_key: str | None) -> Iterator[None]:
        """The one place foreign exceptions become LimnerErrors; the call's key is scrubbed from them."""
        secrets = (api_key,) if api_key else ()
        try:
            yield
        except LimnerError as exc:
            _scrub(exc, secrets)
            raise
        except Exception as exc:
            mapped = self._map_error(exc)
            if mapped is None:
                raise
            _scrub(mapped, secrets)
            log.info("%s: %s (%s)", self.name, mapped.code, type(exc).__name__)
            raise mapped from exc


def _scrub(exc: LimnerError, secrets: tuple[str, ...]) -> None:
    exc.message = redact(exc.message, secrets=secrets, limit=2000)
    if exc.hint:
        exc.hint = redact(exc.hint, secrets=secrets, limit=2000)
    exc.args = (exc.message,)


def public_url(url: str) -> str:
    """A URL fit for messages and records: no user name, password, query or fragment."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
