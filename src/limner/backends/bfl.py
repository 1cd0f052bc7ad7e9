"""Black Forest Labs (BFL) FLUX backend: submit a task, poll its ``polling_url``, fetch the result at once.

Wire facts come from ``shared/apis/flux.md``. What we deliberately do differently from LibreChat (its §14):
polling ends on every terminal status (moderation and not-found included), under an overall ``deadline``
and with exponential backoff; ``safety_tolerance: 0`` is sent as 0; ``aspect_ratio`` is sent; the
``polling_url`` the submit answer names is followed exactly (the global API may poll on another cluster).

The ``x-key`` goes only to the configured base URL's host, to BFL's API hosts, or (for the sandbox) between
loopback names: a ``polling_url`` anywhere else is refused rather than handed the key. Result links are
fetched with :func:`limner.net.safe_fetch` under the caller's :class:`~limner.net.FetchPolicy` (whose
``allowed_hosts`` should be :data:`BFL_DELIVERY_HOSTS` in production), widened by :func:`allowed_result_hosts`: the
base URL's own host, since a gateway in front of BFL hands out links on itself, and the operator's
``LIMNER_FLUX_RESULT_HOSTS``. A link elsewhere is refused with a hint naming its host and that setting.
Every failure is mapped in :meth:`BFLBackend._map_error` with hints naming ``FLUX_API_KEY`` and
``FLUX_API_BASE_URL``.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any, ClassVar
from urllib.parse import quote, urljoin, urlsplit

import httpx2

from limner.backends.base import (
    Backend,
    EditRequest,
    GenerateRequest,
    ImageOutput,
    ModelProfile,
    Progress,
    ProgressCallback,
    SizeRule,
)
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
    UnsafeURLError,
    UnsupportedOperationError,
    redact,
)
from limner.imaging import sniff_media_type
from limner.net import FetchPolicy, host_matches, refused_host, safe_fetch

__all__ = ["BFL_API_HOSTS", "BFL_DELIVERY_HOSTS", "BFL_PROFILES", "BFLBackend", "FluxSizeRule", "allowed_result_hosts"]

BFL_DELIVERY_HOSTS: frozenset[str] = frozenset({"*.bfl.ai", "*.bfl.ml"})
"""Where ``result.sample`` links point (``delivery-eu1.bfl.ai``, ``delivery.*.bfl.ai``; region names change)."""
BFL_API_HOSTS: frozenset[str] = frozenset({"api.bfl.ai", "api.bfl.ml", "*.bfl.ai", "*.bfl.ml"})
"""Hosts a ``polling_url`` may name (clusters such as ``api.eu2.bfl.ai`` appear in no docs)."""

_KEY_SETTING, _URL_SETTING, _HOSTS_SETTING = "FLUX_API_KEY", "FLUX_API_BASE_URL", "LIMNER_FLUX_RESULT_HOSTS"
_PENDING = frozenset({"Pending", "Processing"})  # "Processing" is not in the enum; some clients saw it
_MODERATED = {"Request Moderated": "the prompt or an input image", "Content Moderated": "the generated image"}
_FAILED = frozenset({"Error", "Failed"})
_MAX_POLL_FAILURES = 3
_RATIO = re.compile(r"^(\d+):(\d+)$")


def allowed_result_hosts(base_url: str, extra: Iterable[str] = ()) -> frozenset[str]:
    """Hosts a result link may name beyond the fetch policy's own: the base URL's host, and ``extra``.

    Behind a gateway (``FLUX_API_BASE_URL`` pointing at a proxy of BFL) the links are rewritten to the
    gateway's host, which the operator chose by setting that URL; ``extra`` holds host names or ``*.domain``
    patterns from ``LIMNER_FLUX_RESULT_HOSTS`` for links on yet another host (a gateway's storage).
    """
    host = (urlsplit(base_url).hostname or "").lower().rstrip(".")
    return frozenset({host, *extra} - {""})


@dataclass(frozen=True, slots=True)
class FluxSizeRule(SizeRule):
    """:class:`SizeRule` plus the shortest edge BFL accepts (FLUX.1: 256 px, FLUX.2: 64 px)."""

    min_edge: int = 256

    def problem(self, width: int, height: int) -> str | None:
        """Why ``width`` x ``height`` breaks the rule, or None when it is fine."""
        if min(width, height) < self.min_edge:
            return f"width and height must be at least {self.min_edge}"
        return SizeRule.problem(self, width, height)


_FLUX1_RULE = FluxSizeRule(32, 1440 / 256, 1440, 256 * 256, 1440 * 1440, 256)
_FLUX2_RULE = FluxSizeRule(16, 64.0, 4096, 64 * 64, 4 * 1024 * 1024, 64)
_RATIOS = ("21:9", "16:9", "3:2", "4:3", "5:4", "1:1", "4:5", "3:4", "2:3", "9:16", "9:21")
_BASE = ModelProfile(
    name="flux-pro-1.1",
    family="flux",
    sizes=("1024x768", "768x1024", "1024x1024", "1344x768", "768x1344"),
    size_rule=_FLUX1_RULE,
    qualities=(),
    backgrounds=(),
    transparent_formats=(),
    output_formats=("jpeg", "png", "webp"),
    max_n=1,
    supports_edit=False,
    supports_mask=False,
    max_input_images=0,
    max_input_bytes=20 * 1024 * 1024,
    input_fidelities=(),
    supports_streaming=False,
    returns_revised_prompt=True,
    extra_params=("seed",),
    option_keys=("prompt_upsampling", "safety_tolerance"),
)
_ULTRA = replace(_BASE, sizes=_RATIOS, size_rule=None, notes=("size is an aspect ratio; output is about 4 MP",))
_KONTEXT = replace(
    _ULTRA,
    supports_edit=True,
    max_input_images=4,
    option_keys=(*_BASE.option_keys, "aspect_ratio"),
    notes=("size is an aspect ratio; output is about 1 MP", "input images 2 to 4 are experimental"),
)
_FLUX2 = replace(
    _BASE,
    sizes=("1024x1024", "1536x1024", "1024x1536", "2048x2048"),
    size_rule=_FLUX2_RULE,
    supports_edit=True,
    max_input_images=8,
    returns_revised_prompt=False,
    option_keys=("safety_tolerance",),
)
_DIFFUSION = ("seed", "steps", "guidance")
_UPSAMPLING = _BASE.option_keys
_FINETUNE = ("finetune_id", "finetune_strength")
_LEGACY_PRO = replace(_BASE, status="legacy: deprecated by BFL on 2025-10-31", extra_params=_DIFFUSION)


def _named(base: ModelProfile, *names: str, **changes: Any) -> dict[str, ModelProfile]:
    return {name: replace(base, name=name, **changes) for name in names}


BFL_PROFILES: dict[str, ModelProfile] = {
    **_named(_BASE, "flux-pro-1.1"),
    **_named(_ULTRA, "flux-pro-1.1-ultra", option_keys=(*_UPSAMPLING, "raw", "aspect_ratio")),
    **_named(_BASE, "flux-dev", extra_params=_DIFFUSION),
    **_named(_LEGACY_PRO, "flux-pro", option_keys=(*_UPSAMPLING, "interval")),
    **_named(_KONTEXT, "flux-kontext-pro"),
    **_named(_KONTEXT, "flux-kontext-max", notes=(*_KONTEXT.notes, "6 active tasks at a time")),
    **_named(_FLUX2, "flux-2-pro", "flux-2-pro-preview", "flux-2-max"),
    **_named(_FLUX2, "flux-2-flex", extra_params=_DIFFUSION, option_keys=_UPSAMPLING, returns_revised_prompt=True),
    **_named(_FLUX2, "flux-2-klein-4b", "flux-2-klein-9b", "flux-2-klein-9b-preview", max_input_images=4),
    **_named(_LEGACY_PRO, "flux-pro-finetuned", option_keys=(*_UPSAMPLING, *_FINETUNE)),
    **_named(_ULTRA, "flux-pro-1.1-ultra-finetuned", option_keys=(*_UPSAMPLING, "aspect_ratio", *_FINETUNE)),
}
"""One profile per endpoint; the model name is the path without ``/v1/``."""

# Option types and ranges (flux.md §5); safety_tolerance stops at 5 on FLUX.2.
_OPTION_RULES: dict[str, tuple[type, tuple[float, float] | None]] = {
    "prompt_upsampling": (bool, None),
    "raw": (bool, None),
    "safety_tolerance": (int, (0, 6)),
    "aspect_ratio": (str, None),
    "finetune_id": (str, None),
    "finetune_strength": (float, (0, 2)),
    "interval": (float, (1, 4)),
}
_STEP_RANGES: dict[str, dict[str, tuple[float, float]]] = {
    "flux-dev": {"steps": (1, 50), "guidance": (1.5, 5)},
    "flux-pro": {"steps": (1, 50), "guidance": (1.5, 5)},
    "flux-pro-finetuned": {"steps": (1, 50), "guidance": (1.5, 5)},
    "flux-2-flex": {"steps": (1, 50), "guidance": (1.5, 10)},
}


_AUTH_ERROR = (
    ProviderAuthError,
    "{who} rejected the API key (HTTP {status}: {detail}).",
    f"Check {_KEY_SETTING}, or the key you entered in Settings.",
)
_STATUS_ERRORS: dict[int, tuple[type[ProviderError], str, str]] = {
    401: _AUTH_ERROR,
    403: _AUTH_ERROR,
    402: (
        ProviderQuotaError,
        "{who} says the account is out of credits: {detail}",
        f"Add credits at https://dashboard.bfl.ai for the account of the key in use ({_KEY_SETTING} or your own "
        "key in Settings).",
    ),
    429: (
        ProviderRateLimitError,
        "{who} refused a new task: too many active tasks ({detail}).",
        "Wait for running generations to finish, then try again (BFL allows 24 active tasks per account, 6 for "
        "flux-kontext-max).",
    ),
    404: (
        ProviderRequestError,
        "{who} has no endpoint {path} ({detail}).",
        f"Check {_URL_SETTING} (for example https://api.bfl.ai); legacy models such as flux-pro were deprecated "
        "on 2025-10-31 and may be gone.",
    ),
    500: (ProviderUnavailableError, "{who} failed with HTTP {status}: {detail}", "Try again in a moment."),
    400: (
        ProviderRequestError,
        "{who} rejected the request (HTTP {status}): {detail}",
        "Change the parameter(s) named; the model's limits are in the tool's schema.",
    ),
}
"""Status to (error, message, hint); 500 stands for every 5xx and 408, 400 for any other 4xx."""


class _BFLStatusError(Exception):
    """A non-2xx answer, kept raw until :meth:`BFLBackend._map_error` turns it into a limner error."""

    def __init__(self, response: httpx2.Response, stage: str, path: str) -> None:
        super().__init__(response.status_code, stage)
        self.status = response.status_code
        self.detail = _detail(response)
        self.retry_after = retry_after(response.headers)
        self.stage = stage
        self.path = path


@dataclass(frozen=True, slots=True)
class _Submitted:
    id: str
    polling_url: str
    details: dict[str, Any]


class BFLBackend(Backend):
    """FLUX models through BFL's asynchronous API; one image per call (``max_n=1``)."""

    name: ClassVar[str] = "bfl"
    profiles: ClassVar[dict[str, ModelProfile]] = BFL_PROFILES

    def __init__(
        self,
        *,
        base_url: str,
        http_client: httpx2.AsyncClient,
        fetch_policy: FetchPolicy,
        poll_interval: float = 0.5,
        max_poll_interval: float = 4.0,
        deadline: float = 300.0,
        is_sandbox: bool = False,
        result_hosts: Iterable[str] = (),
        max_retries: int = 2,
    ) -> None:
        """``result_hosts`` widens ``fetch_policy``'s allow-list, if it has one (see :func:`allowed_result_hosts`)."""
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigurationError(
                f"{_URL_SETTING} must be an http(s) URL.",
                hint="For example https://api.bfl.ai or https://api.us1.bfl.ai.",
            )
        if not 0 < poll_interval <= max_poll_interval or deadline <= 0:
            raise ValueError("BFLBackend needs 0 < poll_interval <= max_poll_interval and deadline > 0.")
        super().__init__(endpoint=base_url, is_sandbox=is_sandbox)
        self.base_url = base_url.rstrip("/")
        self.http_client = http_client
        allowed = fetch_policy.allowed_hosts
        widened = None if allowed is None else allowed | allowed_result_hosts(base_url, result_hosts)
        self.fetch_policy = replace(fetch_policy, allowed_hosts=widened)
        self.retries = RetryPolicy(max_retries=max_retries)
        self.poll_interval = poll_interval
        self.max_poll_interval = max_poll_interval
        self.deadline = deadline
        self.display_name = "limner's sandbox BFL emulator" if is_sandbox else "BFL"

    # --- generate and edit ---------------------------------------------------------------------

    async def _generate(
        self, req: GenerateRequest, *, api_key: str | None, progress: ProgressCallback | None
    ) -> list[ImageOutput]:
        body = json.dumps(self._body(req)).encode()
        return await self._run(req.model, req.prompt, body, api_key, progress)

    async def _edit(
        self, req: EditRequest, *, api_key: str | None, progress: ProgressCallback | None
    ) -> list[ImageOutput]:
        fields = self._body(req)
        # base64 and JSON of megabytes of input are CPU work: off the event loop.
        body = await asyncio.to_thread(_with_images, fields, [image.data for image in req.images])
        return await self._run(req.model, req.prompt, body, api_key, progress)

    def _body(self, req: GenerateRequest | EditRequest) -> dict[str, Any]:
        """The JSON fields BFL documents for this endpoint; checked here, before any request."""
        profile = self.profile(req.model)
        _check_options(profile, req)
        body: dict[str, Any] = {"prompt": req.prompt}
        body.update(_size_fields(profile, req.size, req.options.get("aspect_ratio")))
        for name in ("seed", "steps", "guidance"):
            value = getattr(req, name, None)
            if value is not None:
                body[name] = value
        if req.output_format is not None:
            body["output_format"] = req.output_format
        if getattr(req, "output_compression", None) is not None:
            raise UnsupportedOperationError(f"{profile.name} does not take output_compression.")
        body.update({key: value for key, value in req.options.items() if key != "aspect_ratio"})
        if "finetune_id" in profile.option_keys and not body.get("finetune_id"):
            raise UnsupportedOperationError(
                f"{profile.name} needs options.finetune_id; list the account's fine-tunes with list_finetunes."
            )
        return body

    async def _run(
        self, model: str, prompt: str, body: bytes, api_key: str | None, progress: ProgressCallback | None
    ) -> list[ImageOutput]:
        """Submit and poll under one deadline, then fetch the result at once (its link expires)."""
        deadline = asyncio.timeout(self.deadline)
        submitted: _Submitted | None = None
        try:
            async with deadline:
                submitted = await self._submit(model, body, api_key)
                result = await self._poll(submitted, api_key, progress)
        except TimeoutError as exc:
            if not deadline.expired():
                raise
            task = f" (task {submitted.id})" if submitted else ""
            raise self._unavailable(
                f"{self.display_name} did not finish the image{task}: timed out after {self.deadline:g} s."
            ) from exc
        data = await self._fetch_sample(result)
        return [self._output(data, result, prompt, submitted)]

    async def _submit(self, model: str, body: bytes, api_key: str | None) -> _Submitted:
        path = f"/v1/{model}"
        headers = {**self._headers(api_key), "Content-Type": "application/json"}

        async def submit() -> dict[str, Any]:
            response = await self.http_client.post(self.base_url + path, content=body, headers=headers)
            return self._json(response, "submit", path)

        # A task costs credits once BFL accepts it: repeated only when BFL certainly did not (retries.py).
        data = await call_with_retries(
            submit, policy=self.retries, idempotent=False, classify=_retry_outcome, what=self.display_name
        )
        task_id = data.get("id")
        if not isinstance(task_id, str) or not task_id:
            raise self._bad_response("a submit answer without a task id")
        given = data.get("polling_url")
        # Without polling_url (webhook answers, old hosts) the official SDK falls back to the base URL.
        url = given if isinstance(given, str) and given else f"{self.base_url}/v1/get_result?id={quote(task_id)}"
        details = {key: data[key] for key in ("cost", "input_mp", "output_mp") if data.get(key) is not None}
        return _Submitted(task_id, self._checked_polling_url(url), {"id": task_id, "endpoint": model, **details})

    async def _poll(self, task: _Submitted, api_key: str | None, progress: ProgressCallback | None) -> dict[str, Any]:
        """Poll until a terminal status, backing off from poll_interval to max_poll_interval."""
        delay, failures = self.poll_interval, 0
        while True:
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.max_poll_interval)
            try:
                response = await self.http_client.get(task.polling_url, headers=self._headers(api_key))
                data = self._json(response, "poll", "/v1/get_result")
            except (httpx2.TransportError, _BFLStatusError) as exc:
                failures += 1
                if failures >= _MAX_POLL_FAILURES or not _is_transient(exc):
                    raise
                continue
            failures = 0
            status = data.get("status")
            if status == "Ready":
                return self._ready_result(data)
            if status not in _PENDING:
                raise self._terminal(str(status), data, task)
            if progress is not None:
                fraction = data.get("progress")
                fraction = float(fraction) if isinstance(fraction, int | float) else None
                await progress(Progress(fraction=fraction, message=f"{self.display_name} task {status.lower()}"))

    def _ready_result(self, data: dict[str, Any]) -> dict[str, Any]:
        result = data.get("result")
        if not isinstance(result, dict) or not isinstance(result.get("sample"), str) or not result["sample"]:
            raise self._bad_response("a Ready status without result.sample")
        return result

    async def _fetch_sample(self, result: dict[str, Any]) -> bytes:
        """Download ``result.sample`` through the safe fetcher; an expired link is the service's failure."""
        refused = refused_host(result["sample"], self.fetch_policy)
        if refused is not None:
            allowed = ", ".join(sorted(self.fetch_policy.allowed_hosts or ()))
            raise self._bad_response(
                f"a result link on the host '{refused}', which limner does not fetch Flux results from",
                hint=f"If '{refused}' serves your results (a gateway or proxy in front of BFL), add it to "
                f"{_HOSTS_SETTING} (comma-separated host names or *.domain patterns). Allowed now: {allowed}.",
            )
        try:
            fetched = await safe_fetch(
                result["sample"], policy=self.fetch_policy, client=self.http_client, provider=self.name
            )
        except UnsafeURLError as exc:
            raise self._bad_response(f"a result link limner will not fetch ({exc.message})") from exc
        except ProviderUnavailableError as exc:
            if exc.status_code is not None and 400 <= exc.status_code < 500:
                raise self._unavailable(
                    f"The result link from {self.display_name} was refused with HTTP {exc.status_code}: it has "
                    "expired or is invalid.",
                    hint="Try again; result links last about 10 minutes and limner fetches them at once, so check "
                    "the machine's clock and the proxy (PROXY).",
                    status_code=exc.status_code,
                ) from exc
            raise
        return fetched.data

    def _output(self, data: bytes, result: dict[str, Any], prompt: str, task: _Submitted | None) -> ImageOutput:
        media_type = sniff_media_type(data)
        if media_type is None:
            raise self._bad_response("a result that is not a PNG, JPEG or WebP image")
        used = result.get("prompt")
        seed = result.get("seed")
        return ImageOutput(
            data=data,
            media_type=media_type,
            seed=seed if isinstance(seed, int) and not isinstance(seed, bool) else None,
            revised_prompt=used if isinstance(used, str) and used and used != prompt else None,
            provider_details=task.details if task else {},
        )

    # --- fine-tunes -----------------------------------------------------------------------------

    async def list_finetunes(self, api_key: str) -> list[dict[str, Any]]:
        """The account's fine-tunes with their details; a detail that fails is reported on its item only."""
        with self._errors(api_key):
            response = await self.http_client.get(f"{self.base_url}/v1/my_finetunes", headers=self._headers(api_key))
            ids = self._json(response, "finetunes", "/v1/my_finetunes").get("finetunes")
            if not isinstance(ids, list) or not all(isinstance(item, str) for item in ids):
                raise self._bad_response("a fine-tune list that is not a list of ids")
            return list(await asyncio.gather(*(self._finetune(item, api_key) for item in ids)))

    async def _finetune(self, finetune_id: str, api_key: str) -> dict[str, Any]:
        try:
            response = await self.http_client.get(
                f"{self.base_url}/v1/finetune_details",
                params={"finetune_id": finetune_id},
                headers=self._headers(api_key),
            )
            details = self._json(response, "finetunes", "/v1/finetune_details").get("finetune_details")
            if not isinstance(details, dict):
                raise self._bad_response("fine-tune details that are not an object")
        except Exception as exc:  # one broken item must not hide the others
            mapped = exc if isinstance(exc, LimnerError) else self._map_error(exc)
            if mapped is None:
                raise
            return {"id": finetune_id, "error": redact(mapped.message, secrets=(api_key,))}
        return {**details, "id": finetune_id}

    # --- wire helpers ---------------------------------------------------------------------------

    def _headers(self, api_key: str | None) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if api_key:
            headers["x-key"] = api_key
        return headers

    def _json(self, response: httpx2.Response, stage: str, path: str) -> dict[str, Any]:
        if not response.is_success:
            raise _BFLStatusError(response, stage, path)
        try:
            data = response.json()
        except ValueError:
            raise self._bad_response("a body that is not JSON") from None
        if not isinstance(data, dict):
            raise self._bad_response("JSON that is not an object")
        return data

    def _checked_polling_url(self, url: str) -> str:
        """Follow ``polling_url`` as given, but only to hosts that may see the key (module docstring)."""
        url = urljoin(self.base_url + "/", url)
        polled, base = urlsplit(url), urlsplit(self.base_url)
        host, base_host = (polled.hostname or "").lower(), (base.hostname or "").lower()
        downgrade = base.scheme == "https" and polled.scheme != "https"
        trusted = (
            host == base_host or host_matches(host, BFL_API_HOSTS) or (_is_loopback(host) and _is_loopback(base_host))
        )
        if polled.scheme in ("http", "https") and trusted and not downgrade:
            return url
        raise self._bad_response(
            f"a polling URL on an unexpected host ({polled.scheme}://{host}); the API key was not sent there",
            hint=f"Check {_URL_SETTING}: it should point at BFL (for example https://api.bfl.ai).",
        )

    def _terminal(self, status: str, data: dict[str, Any], task: _Submitted) -> ProviderError:
        """The error of a terminal status other than Ready; unknown statuses are surfaced, never polled forever."""
        detail = _details_text(data.get("details"))
        common: dict[str, Any] = {"provider": self.name, "endpoint": self.endpoint, "request_id": task.id}
        if status in _MODERATED:
            return ContentPolicyError(
                f"{self.display_name}'s moderation blocked {_MODERATED[status]} ({status}){detail}.",
                hint="Rephrase the prompt or use other input images; do not retry unchanged. A higher "
                "safety_tolerance (up to 6, or 5 on FLUX.2; 2 is the default) makes moderation less strict.",
                **common,
            )
        if status in _FAILED:
            return ProviderUnavailableError(
                f"{self.display_name} failed to generate the image (task {task.id}){detail}.",
                hint="Try again; if it keeps failing, try another model or check BFL's status page.",
                **common,
            )
        if status == "Task not found":
            return self._task_not_found(task.id)
        return self._bad_response(f"the unknown task status {redact(status, limit=60)!r}")

    def _task_not_found(self, task_id: str | None) -> ProviderResponseError:
        return ProviderResponseError(
            f"{self.display_name} no longer knows the task{f' {task_id}' if task_id else ''} (Task not found).",
            provider=self.name,
            endpoint=self.endpoint,
            request_id=task_id,
            hint=f"Try again; if it persists, check {_URL_SETTING} (a poll sent to the wrong cluster looks like this).",
        )

    def _bad_response(self, what: str, hint: str | None = None) -> ProviderResponseError:
        return ProviderResponseError(
            f"{self.display_name} answered with {what}.",
            provider=self.name,
            endpoint=self.endpoint,
            hint=hint or f"Try again; if it persists, check that {_URL_SETTING} points at the BFL API.",
        )

    def _unavailable(self, message: str, hint: str | None = None, **extra: Any) -> ProviderUnavailableError:
        return ProviderUnavailableError(
            message,
            provider=self.name,
            endpoint=self.endpoint,
            hint=hint or "Try again in a moment; if it keeps failing, check BFL's status and the proxy (PROXY).",
            **extra,
        )

    # --- error mapping --------------------------------------------------------------------------

    def _map_error(self, exc: Exception) -> LimnerError | None:
        """The one place where HTTP client failures and BFL's error answers become limner errors."""
        if isinstance(exc, _BFLStatusError):
            return self._map_status(exc)
        if isinstance(exc, httpx2.TimeoutException):
            return self._unavailable(f"{self.display_name} did not answer in time.")
        if isinstance(exc, httpx2.TransportError):
            return self._unavailable(f"Could not connect to {self.display_name} ({urlsplit(self.base_url).netloc}).")
        return None

    def _map_status(self, exc: _BFLStatusError) -> ProviderError:
        """Status to error class, message and hint (flux.md §9); a 404 on a poll is an unknown task."""
        if exc.status == 404 and exc.stage == "poll":
            return self._task_not_found(None)
        default = _STATUS_ERRORS[500 if exc.status >= 500 or exc.status == 408 else 400]
        error, message, hint = _STATUS_ERRORS.get(exc.status, default)
        text = message.format(who=self.display_name, status=exc.status, detail=exc.detail, path=exc.path)
        return error(
            text,
            hint=hint,
            provider=self.name,
            endpoint=self.endpoint,
            status_code=exc.status,
            retry_after=exc.retry_after,
        )


# --- pure helpers -------------------------------------------------------------------------------


def _check_options(profile: ModelProfile, req: GenerateRequest | EditRequest) -> None:
    """Types and ranges of the options and diffusion parameters, so a bad value never costs a request."""
    checks: list[tuple[str, Any, type, tuple[float, float] | None]] = [
        (key, value, *_OPTION_RULES[key]) for key, value in req.options.items()
    ]
    for key, step_range in _STEP_RANGES.get(profile.name, {}).items():
        if getattr(req, key, None) is not None:
            checks.append((key, getattr(req, key), float, step_range))
    for key, value, kind, rule in checks:
        bounds = (0, 5) if key == "safety_tolerance" and profile.name.startswith("flux-2") else rule
        if not _is_type(value, kind):
            raise UnsupportedOperationError(f"{profile.name}: {key} must be a {kind.__name__}, not {value!r}.")
        if bounds is not None and not bounds[0] <= value <= bounds[1]:
            low, high = bounds
            raise UnsupportedOperationError(
                f"{profile.name}: {key} must be between {low:g} and {high:g}; got {value!r}."
            )
    ratio = req.options.get("aspect_ratio")
    if ratio is not None:
        _check_ratio(profile.name, ratio)


def _is_type(value: Any, kind: type) -> bool:
    """JSON-ish typing: a bool is not a number, an int is a float, a float is not an int."""
    if kind is bool or isinstance(value, bool):
        return kind is bool and isinstance(value, bool)
    if kind is float:
        return isinstance(value, int | float)
    return isinstance(value, kind)


def _check_ratio(model: str, ratio: str) -> None:
    match = _RATIO.match(ratio)
    if match is None or int(match[2]) == 0 or not 9 / 21 <= int(match[1]) / int(match[2]) <= 21 / 9:
        raise UnsupportedOperationError(
            f"{model}: aspect_ratio must be 'W:H' between 21:9 and 9:21 (for example 16:9); got {ratio!r}."
        )


def _size_fields(profile: ModelProfile, size: str | None, ratio: str | None) -> dict[str, Any]:
    """``size`` as width/height, or as ``aspect_ratio`` for the models that take a ratio."""
    if profile.size_rule is None:
        if size is not None and ratio is not None and size != ratio:
            raise UnsupportedOperationError(f"{profile.name}: size {size!r} and aspect_ratio {ratio!r} disagree.")
        chosen = size or ratio
        return {"aspect_ratio": chosen} if chosen else {}
    if size is None:
        return {}
    width, _, height = size.partition("x")
    return {"width": int(width), "height": int(height)}


def _with_images(fields: dict[str, Any], images: list[bytes]) -> bytes:
    """The edit body: raw base64 (BFL's safe choice) in input_image, input_image_2, ... (runs in a thread)."""
    body = dict(fields)
    for index, data in enumerate(images, start=1):
        body["input_image" if index == 1 else f"input_image_{index}"] = base64.b64encode(data).decode("ascii")
    return json.dumps(body).encode()


def _is_transient(exc: Exception) -> bool:
    """Poll failures worth another poll: whatever the one policy repeats for an idempotent GET (retries.py)."""
    decision = _retry_outcome(exc)
    return decision is not None and RetryPolicy().allows(decision[0], idempotent=True)


def _retry_outcome(exc: BaseException) -> tuple[Outcome, float | None] | None:
    """What a failed request says about whether BFL did the work (retries.py)."""
    if isinstance(exc, _BFLStatusError):
        return status_outcome(exc.status), exc.retry_after
    outcome = transport_outcome(exc)
    return None if outcome is None else (outcome, None)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _detail(response: httpx2.Response) -> str:
    """The message of an error body: ``detail``, then ``message``, then ``error`` (as the official SDK does)."""
    try:
        body = response.json()
    except ValueError:
        return "no details" if not response.text.strip() else redact(response.text.strip(), limit=200)
    value = next(
        (body[key] for key in ("detail", "message", "error") if isinstance(body, dict) and body.get(key)), body
    )
    if isinstance(value, list):
        return redact("; ".join(_validation_item(item) for item in value), limit=1000)
    return redact(value if isinstance(value, str) else json.dumps(value), limit=500)


def _validation_item(item: Any) -> str:
    """``width: Input should be a multiple of 32`` from a 422 item (the ``body`` prefix dropped)."""
    if not isinstance(item, dict):
        return str(item)
    loc = [str(part) for part in item.get("loc") or [] if part not in ("body", "query")]
    message = str(item.get("msg") or item.get("type") or "invalid")
    return f"{'.'.join(loc)}: {message}" if loc else message


def _details_text(details: Any) -> str:
    """``: <message>`` from a status's ``details`` object, or nothing."""
    if not details:
        return ""
    text = details.get("message") if isinstance(details, dict) else None
    return f": {redact(text if isinstance(text, str) else json.dumps(details), limit=300)}"
