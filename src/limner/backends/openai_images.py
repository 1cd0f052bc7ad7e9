"""OpenAI Images backend over the official ``openai`` SDK: OpenAI, Azure OpenAI, compatible base URLs.

The SDK gets the backend's one shared ``httpx2`` client (timeouts, limits and ``PROXY`` live there); an
SDK client object is built per call because the key can differ per user (it costs about 50 µs). Input
images go out as ``(name, bytes, media type)`` tuples: raw bytes would be labelled
``application/octet-stream``, which the service rejects, and tuples keep edits retryable.

Every SDK exception is mapped in :meth:`OpenAIImagesBackend._map_error`, to the most specific error of
DESIGN §5, with hints that name the settings to fix (the names come from the caller, so the DALL·E family
can reuse this class with its own variables).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ClassVar, TypeVar
from urllib.parse import urlsplit

import httpx2
import openai
from openai.types import ImagesResponse

from limner.backends.base import (
    Backend,
    EditRequest,
    GenerateRequest,
    ImageOutput,
    ModelProfile,
    Progress,
    ProgressCallback,
    public_url,
)
from limner.backends.openai_profiles import OPENAI_PROFILES, permissive_profile
from limner.backends.retries import (
    Outcome,
    RetryPolicy,
    call_with_retries,
    retry_after,
    status_outcome,
    transport_outcome,
)
from limner.errors import (
    ConfigurationError,
    ContentPolicyError,
    LimnerError,
    ProviderAuthError,
    ProviderError,
    ProviderQuotaError,
    ProviderRateLimitError,
    ProviderRequestError,
    ProviderResponseError,
    ProviderUnavailableError,
    redact,
)

__all__ = ["EndpointKind", "OpenAIEndpoint", "OpenAIImagesBackend", "SettingNames"]

T = TypeVar("T")

_AZURE_HOST_SUFFIXES = (".openai.azure.com", ".cognitiveservices.azure.com", ".services.ai.azure.com")
_QUOTA_CODES = frozenset(
    {
        "insufficient_quota",
        "credit_balance_exhausted",
        "organization_spend_limit_exceeded",
        "project_spend_limit_exceeded",
        "organization_usage_limit_exceeded",
        "billing_hard_limit_reached",
    }
)
_POLICY_CODES = frozenset(
    {
        "moderation_blocked",
        "content_policy_violation",
        "contentFilter",
        "content_filter",
        "ResponsibleAIPolicyViolation",
    }
)
_GENERATE_FIELDS = {
    "model",
    "prompt",
    "n",
    "size",
    "quality",
    "background",
    "style",
    "output_format",
    "output_compression",
}
_EDIT_FIELDS = {"model", "prompt", "n", "size", "quality", "background", "output_format", "input_fidelity"}
_MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp", "gif": "image/gif"}


class EndpointKind(StrEnum):
    """How the SDK must address the service."""

    OPENAI = "openai"
    """OpenAI itself or any OpenAI-compatible base URL: Bearer auth, ``/images/...`` under the base."""
    AZURE_DEPLOYMENT = "azure_deployment"
    """A full Azure deployment URL (``.../openai/deployments/DEP``) plus ``api-version``."""
    AZURE_RESOURCE = "azure_resource"
    """An Azure resource endpoint plus ``api-version``; the model setting is the deployment name."""
    AZURE_V1 = "azure_v1"
    """Azure's v1 API (``.../openai/v1``): OpenAI-style paths, ``api-key`` auth, model = deployment."""


@dataclass(frozen=True, slots=True)
class SettingNames:
    """The environment variables a hint should name for this family."""

    api_key: str = "IMAGE_GEN_OAI_API_KEY"
    base_url: str = "IMAGE_GEN_OAI_BASEURL"
    api_version: str = "IMAGE_GEN_OAI_AZURE_API_VERSION"
    model: str = "IMAGE_GEN_OAI_MODEL"
    retired_hint: str | None = None
    """Said instead of 'pick a current model' when the upstream does not know the model (DALL·E)."""


@dataclass(frozen=True, slots=True)
class OpenAIEndpoint:
    """A resolved endpoint: where to send requests and how to authenticate."""

    kind: EndpointKind
    base_url: str
    api_version: str | None = None

    @classmethod
    def resolve(cls, base_url: str | None, api_version: str | None, names: SettingNames) -> OpenAIEndpoint:
        """Decide the endpoint kind from the settings, failing fast on impossible combinations."""
        if not base_url:
            return cls(EndpointKind.OPENAI, "https://api.openai.com/v1")
        url = base_url.rstrip("/")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigurationError(
                f"{names.base_url} must be an http(s) URL; got {public_url(base_url)!r}.",
                hint="For example https://api.openai.com/v1 or https://RES.openai.azure.com/openai/deployments/DEP.",
            )
        path = parts.path.rstrip("/")
        is_azure_host = parts.hostname is not None and parts.hostname.endswith(_AZURE_HOST_SUFFIXES)
        if path.endswith("/openai/v1") and (is_azure_host or api_version):
            return cls(EndpointKind.AZURE_V1, url, api_version)
        if "/deployments/" in path:
            if not api_version:
                raise ConfigurationError(
                    f"{names.base_url} is an Azure deployment URL but {names.api_version} is not set.",
                    hint=f"Set {names.api_version}, for example to 2025-04-01-preview.",
                )
            return cls(EndpointKind.AZURE_DEPLOYMENT, url, api_version)
        if api_version or is_azure_host:
            if not api_version:
                raise ConfigurationError(
                    f"{names.base_url} is an Azure endpoint but {names.api_version} is not set.",
                    hint=f"Set {names.api_version}, or use the v1 URL https://RES.openai.azure.com/openai/v1.",
                )
            return cls(EndpointKind.AZURE_RESOURCE, url.removesuffix("/openai"), api_version)
        return cls(EndpointKind.OPENAI, url)

    @property
    def is_azure(self) -> bool:
        """Azure's errors and auth differ from OpenAI's."""
        return self.kind is not EndpointKind.OPENAI

    @property
    def display_name(self) -> str:
        """How messages name this provider."""
        if self.is_azure:
            return "Azure OpenAI"
        host = urlsplit(self.base_url).hostname or self.base_url
        return "OpenAI" if host == "api.openai.com" else f"the OpenAI-compatible service at {host}"


class OpenAIImagesBackend(Backend):
    """GPT image models (and, for the DALL·E family, DALL·E) through the Images API."""

    name: ClassVar[str] = "openai"
    profiles: ClassVar[dict[str, ModelProfile]] = OPENAI_PROFILES

    def __init__(
        self,
        *,
        endpoint: OpenAIEndpoint,
        http_client: httpx2.AsyncClient,
        timeout: float = 300.0,
        max_retries: int = 2,
        partial_images: int = 0,
        setting_names: SettingNames | None = None,
        is_sandbox: bool = False,
    ) -> None:
        super().__init__(endpoint=endpoint.base_url, is_sandbox=is_sandbox)
        self.target = endpoint
        self.http_client = http_client
        self.timeout = timeout
        self.retries = RetryPolicy(max_retries=max_retries)
        self.partial_images = partial_images
        self.names = setting_names or SettingNames()
        self.backend_name = "azure" if endpoint.is_azure else "openai"
        self.display_name = "limner's sandbox OpenAI emulator" if is_sandbox else endpoint.display_name

    def profile(self, model: str) -> ModelProfile:
        """Known models get their profile; an unknown name (an Azure deployment, a proxy's alias) is sent
        as given with the broad GPT image profile, and the upstream has the last word.
        """
        return self.profiles.get(model) or permissive_profile(model)

    def _client(self, api_key: str | None) -> openai.AsyncOpenAI:
        common: dict[str, Any] = {
            "http_client": self.http_client,
            "timeout": self.timeout,
            "max_retries": 0,  # limner's one policy decides (retries.py): the SDK would repeat a timed-out paid call
        }
        key = api_key or "missing"
        match self.target.kind:
            case EndpointKind.AZURE_DEPLOYMENT:
                return openai.AsyncAzureOpenAI(
                    base_url=self.target.base_url, api_version=self.target.api_version, api_key=key, **common
                )
            case EndpointKind.AZURE_RESOURCE:
                return openai.AsyncAzureOpenAI(
                    azure_endpoint=self.target.base_url,
                    api_version=self.target.api_version,
                    api_key=key,
                    **common,
                )
            case EndpointKind.AZURE_V1:
                query = {"api-version": self.target.api_version} if self.target.api_version else None
                return openai.AsyncOpenAI(
                    base_url=self.target.base_url,
                    api_key=key,
                    default_headers={"api-key": key},
                    default_query=query,
                    **common,
                )
            case _:
                return openai.AsyncOpenAI(base_url=self.target.base_url, api_key=key, **common)

    async def _generate(
        self, req: GenerateRequest, *, api_key: str | None, progress: ProgressCallback | None
    ) -> list[ImageOutput]:
        params = req.model_dump(include=_GENERATE_FIELDS, exclude_none=True)  # field names are the API's
        if self.profile(req.model).family == "dall-e":
            params["response_format"] = "b64_json"
        client = self._client(api_key)
        if self._streams(req.model, progress):
            stream = await self._paid(
                lambda: client.images.generate(stream=True, partial_images=self.partial_images, **params)
            )
            return await self._consume(stream, req.n, progress)
        return self._outputs(await self._paid(lambda: client.images.generate(**params)), req.output_format)

    async def _edit(
        self, req: EditRequest, *, api_key: str | None, progress: ProgressCallback | None
    ) -> list[ImageOutput]:
        files = [(image.name, image.data, image.media_type) for image in req.images]
        params = req.model_dump(include=_EDIT_FIELDS, exclude_none=True)
        if req.mask is not None:
            params["mask"] = (req.mask.name, req.mask.data, req.mask.media_type)
        image_param: Any = files[0] if len(files) == 1 else files
        client = self._client(api_key)
        if self._streams(req.model, progress):
            stream = await self._paid(
                lambda: client.images.edit(image=image_param, stream=True, partial_images=self.partial_images, **params)
            )
            return await self._consume(stream, req.n, progress)
        return self._outputs(
            await self._paid(lambda: client.images.edit(image=image_param, **params)), req.output_format
        )

    async def _paid(self, call: Callable[[], Awaitable[T]]) -> T:
        """A generation or edit: retried only when it certainly was not done (see retries.py)."""
        return await call_with_retries(
            call, policy=self.retries, idempotent=False, classify=_retry_outcome, what=self.display_name
        )

    def _streams(self, model: str, progress: ProgressCallback | None) -> bool:
        """Stream only when someone watches and partial images are wanted (each costs output tokens)."""
        return progress is not None and self.partial_images > 0 and self.profile(model).supports_streaming

    async def _consume(self, stream: Any, n: int, progress: ProgressCallback | None) -> list[ImageOutput]:
        """Read a stream: partial images go to ``progress``, completed events become the outputs."""
        outputs: list[ImageOutput] = []
        events, expected = 0, n * (self.partial_images + 1)
        async with stream:  # closes the connection even when a progress listener fails
            async for event in stream:
                events += 1
                if event.type.endswith("partial_image") and progress is not None:
                    partial = base64.b64decode(event.b64_json)
                    fmt = _MEDIA_TYPES.get(event.output_format or "png")
                    fraction = min(events / expected, 0.99)
                    await progress(Progress(fraction=fraction, partial_image=partial, partial_media_type=fmt))
                elif event.type.endswith("completed"):
                    usage = event.usage.model_dump(exclude_none=True) if event.usage else None
                    details = _drop_none(
                        size=event.size, quality=event.quality, background=event.background, usage=usage
                    )
                    outputs.append(self._one_output(event, event.output_format or "png", details))
        if not outputs:
            raise self._bad_response("a stream without a completed image")
        return outputs

    def _outputs(self, response: ImagesResponse, requested_format: str | None) -> list[ImageOutput]:
        if not isinstance(response, ImagesResponse) or not response.data:
            raise ProviderResponseError(
                f"{self.display_name} answered without any image data.",
                provider=self.backend_name,
                endpoint=self.endpoint,
                hint="Try again; if it persists, the service or the base URL may not be an OpenAI Images API.",
            )
        fmt = response.output_format or requested_format or "png"
        usage = response.usage.model_dump(exclude_none=True) if response.usage else None
        details: dict[str, Any] = _drop_none(
            size=response.size, quality=response.quality, background=response.background, usage=usage
        )
        return [self._one_output(item, fmt, details) for item in response.data]

    def _one_output(self, item: Any, fmt: str, details: dict[str, Any]) -> ImageOutput:
        common: dict[str, Any] = {
            "media_type": _MEDIA_TYPES.get(fmt),
            "revised_prompt": getattr(item, "revised_prompt", None),
            "provider_details": details,
        }
        if item.b64_json:
            try:
                return ImageOutput(data=base64.b64decode(item.b64_json, validate=True), **common)
            except (binascii.Error, ValueError) as exc:
                raise self._bad_response("an image that is not valid base64") from exc
        if getattr(item, "url", None):
            return ImageOutput(url=item.url, **common)
        raise self._bad_response("an entry with neither b64_json nor url")

    def _bad_response(self, what: str) -> ProviderResponseError:
        return ProviderResponseError(
            f"{self.display_name} answered with {what}.",
            provider=self.backend_name,
            endpoint=self.endpoint,
            hint="Try again; if it persists, check that the base URL points at an OpenAI Images API.",
        )

    # --- error mapping -------------------------------------------------------------------------

    def _map_error(self, exc: Exception) -> LimnerError | None:
        """The one place where SDK and transport exceptions become limner errors."""
        if isinstance(exc, openai.APITimeoutError):
            return self._unavailable(f"{self.display_name} did not answer within {self.timeout:g} s.")
        if isinstance(exc, openai.APIConnectionError):
            return self._unreachable(f"Could not connect to {self.display_name} ({_host(self.endpoint)}).")
        if isinstance(exc, openai.APIResponseValidationError | json.JSONDecodeError):
            return self._bad_response("a body that is not valid JSON of the Images API")
        if isinstance(exc, openai.APIError):  # status errors, and errors sent inside a stream
            return self._map_api_error(exc)
        if isinstance(exc, openai.OpenAIError):  # raised by the SDK before any request (client setup)
            return ConfigurationError(
                f"The OpenAI client could not be set up: {exc}",
                hint=f"Check {self.names.base_url}, {self.names.api_version} and {self.names.api_key}.",
            )
        if isinstance(exc, httpx2.TransportError):
            return self._unreachable(f"The connection to {self.display_name} failed.")
        if isinstance(exc, binascii.Error):
            return self._bad_response("an image that is not valid base64")
        return None

    def _unavailable(self, message: str, **extra: Any) -> ProviderUnavailableError:
        return ProviderUnavailableError(
            message,
            provider=self.backend_name,
            endpoint=self.endpoint,
            hint="Try again in a moment; if it keeps failing, check the service status and the proxy (PROXY).",
            **extra,
        )

    def _unreachable(self, message: str) -> ProviderUnavailableError:
        """No answer at all: most often the address itself (a typo, a service that is not running)."""
        return ProviderUnavailableError(
            message,
            provider=self.backend_name,
            endpoint=self.endpoint,
            hint=f"Check {self.names.base_url} (now {public_url(self.endpoint)}) and the proxy (PROXY); "
            "if both are right, the service may be down: try again in a moment.",
        )

    def _map_api_error(self, exc: openai.APIError) -> ProviderError:
        status = exc.status_code if isinstance(exc, openai.APIStatusError) else None
        request_id = exc.request_id if isinstance(exc, openai.APIStatusError) else None
        code = str(exc.code or "")
        common: dict[str, Any] = {
            "provider": self.backend_name,
            "endpoint": self.endpoint,
            "status_code": status,
            "request_id": request_id,
        }
        upstream = _upstream_message(exc)
        who = self.display_name
        if code in _POLICY_CODES or _is_azure_filter(exc):
            return ContentPolicyError(
                f"{who} refused the request on content policy grounds: {upstream}",
                hint="Rephrase the prompt or use different input images; do not retry the same request.",
                **common,
            )
        if code in _QUOTA_CODES:
            return ProviderQuotaError(
                f"{who} says the account is out of quota or credits: {upstream}",
                hint="Add credits or raise the spending limit in the provider's billing settings.",
                **common,
            )
        if not isinstance(exc, openai.APIStatusError):
            return ProviderUnavailableError(
                f"{who} failed while generating: {upstream}", hint="Try again in a moment.", **common
            )
        return self._map_status(exc, upstream, common)

    def _map_status(self, exc: openai.APIStatusError, upstream: str, common: dict[str, Any]) -> ProviderError:
        status, who = exc.status_code, self.display_name
        if status in (401, 403):
            return self._auth_error(status, upstream, common)
        if status == 404:
            return self._not_found(upstream, str(exc.code or ""), common)
        if status == 429:
            return ProviderRateLimitError(
                f"{who} is rate limiting requests: {upstream}",
                hint="Wait a little and try again.",
                retry_after=retry_after(exc.response.headers),
                **common,
            )
        if status >= 500 or status == 408:
            return ProviderUnavailableError(
                f"{who} failed with HTTP {status}: {upstream}",
                hint="Try again in a moment.",
                retry_after=retry_after(exc.response.headers),
                **common,
            )
        param = getattr(exc, "param", None)
        if param:
            return ProviderRequestError(
                f"{who} rejected the request (parameter {param}): {upstream}",
                hint="Change that parameter; the model's allowed values are in the tool's schema.",
                **common,
            )
        names = self.names
        return ProviderRequestError(
            f"{who} rejected the request: {upstream}",
            hint=(
                f"If the request looks right, the configured model may not serve it: check {names.model}, "
                f"{names.base_url}" + (f" and {names.api_version}." if self.target.is_azure else ".")
            ),
            **common,
        )

    def _auth_error(self, status: int, upstream: str, common: dict[str, Any]) -> ProviderAuthError:
        who = self.display_name
        if status == 401:
            message = f"{who} rejected the API key: {upstream}"
            hint = f"Check {self.names.api_key}, or the key you entered in Settings."
            if self.target.is_azure:
                hint += f" Azure also answers this way for a wrong endpoint: check {self.names.base_url}."
        else:
            message = f"{who} refused access: {upstream}"
            hint = "The key is valid but lacks access to this model or region; check the account's permissions."
        return ProviderAuthError(message, hint=hint, **common)

    def _not_found(self, upstream: str, code: str, common: dict[str, Any]) -> ProviderRequestError:
        names = self.names
        if self.target.is_azure:
            return ProviderRequestError(
                f"Azure OpenAI answered 404 ({code or 'not found'}): the deployment or the api-version "
                f"{self.target.api_version!r} does not exist at {_host(self.endpoint)}. {upstream}",
                hint=(
                    f"Check {names.base_url} (https://RES.openai.azure.com/openai/deployments/DEPLOYMENT, or the "
                    f"resource endpoint with {names.model} set to the deployment name) and "
                    f"{names.api_version} (for example 2025-04-01-preview)."
                ),
                **common,
            )
        return ProviderRequestError(
            f"{self.display_name} says the model does not exist or has been retired: {upstream}",
            hint=names.retired_hint
            or f"Set {names.model} to a current model, for example gpt-image-1.5 or gpt-image-2.",
            **common,
        )


def _drop_none(**values: Any) -> dict[str, Any]:
    return {key: value for key, value in values.items() if value is not None}


def _upstream_message(exc: openai.APIError) -> str:
    body = exc.body
    text = body.get("message") if isinstance(body, dict) else None
    return redact(str(text or exc.message or "no message"))


def _is_azure_filter(exc: openai.APIError) -> bool:
    body = exc.body if isinstance(exc.body, dict) else {}
    inner = body.get("inner_error") or body.get("innererror") or {}
    return isinstance(inner, dict) and inner.get("code") == "ResponsibleAIPolicyViolation"


def _host(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port}" if parts.port else parts.hostname or url


def _retry_outcome(exc: BaseException) -> tuple[Outcome, float | None] | None:
    """What a failed SDK call says about whether the upstream did the work (retries.py)."""
    if isinstance(exc, openai.APIConnectionError):  # timeouts too: the cause tells connect from read
        cause = exc.__cause__
        return (transport_outcome(cause) if cause is not None else None) or Outcome.UNKNOWN, None
    if isinstance(exc, openai.APIStatusError):
        if str(exc.code or "") == "insufficient_quota":  # a 429 that waiting does not cure
            return Outcome.FAILED, None
        return status_outcome(exc.status_code), retry_after(exc.response.headers)
    return None
