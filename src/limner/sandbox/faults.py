"""Fault knobs: make an emulator misbehave the way the real service sometimes does.

A test queues :class:`Fault` objects on an emulator (``emulator.faults.add(Fault.rate_limit(),
times=2)``) or, from another process, posts the same fields as JSON to ``/_sandbox/faults``.
Each request takes at most one fault, the first queued one whose filter matches, so a queue of
faults plays out in order over consecutive requests.

Prompt triggers give the same faults end to end without any code: a prompt containing one of
these markers makes that single request fail (or stall) accordingly.

==============================  ===============================================================
``[[sandbox:moderation]]``      400 ``moderation_blocked`` (``content_policy_violation`` for DALL·E)
``[[sandbox:content_policy]]``  400 ``content_policy_violation``
``[[sandbox:error=500]]``       that status with the matching preset (500, 503, 401, 403, 404,
                                429) or a generic envelope for any other status
``[[sandbox:rate_limit]]``      429 ``rate_limit_exceeded``, ``retry-after: 1``
                                (``[[sandbox:rate_limit=5]]`` for another number of seconds)
``[[sandbox:quota]]``           429 ``insufficient_quota`` with ``x-should-retry: false``
``[[sandbox:overloaded]]``      503 ``server_is_overloaded``
``[[sandbox:delay=2.5]]``       answer normally after 2.5 seconds
``[[sandbox:hang]]``            never answer (until the client leaves or the sandbox stops)
``[[sandbox:empty]]``           200 with ``"data": []`` (``[[sandbox:no_data]]`` omits the key)
``[[sandbox:malformed]]``       200 whose body is not JSON
``[[sandbox:url]]``             a ``url`` served by the emulator instead of ``b64_json``
``[[sandbox:stream_error]]``    an error event after the first partial image (streams only)
==============================  ===============================================================
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from limner.sandbox.openai_errors import (
    AZURE_DEPLOYMENT_MISSING_MESSAGE,
    REQUEST_ID_PLACEHOLDER,
    azure_body,
    mask_key,
    openai_body,
)

HANG_SECONDS = 24 * 3600.0
_TRIGGER = re.compile(r"\[\[sandbox:([a-z_]+)(?:=([^\]]*))?\]\]")


class FaultKind(StrEnum):
    """How a request goes wrong."""

    ERROR = "error"
    DELAY = "delay"
    HANG = "hang"
    MALFORMED_JSON = "malformed_json"
    EMPTY_DATA = "empty_data"
    URL_INSTEAD_OF_B64 = "url_instead_of_b64"
    STREAM_ERROR = "stream_error"


@dataclass(frozen=True)
class Fault:
    """One misbehaviour; use the classmethods rather than filling the fields by hand.

    ``body`` is the whole JSON error body for ``ERROR`` and the inner error object for
    ``STREAM_ERROR``; the text ``{request_id}`` anywhere in it is replaced by the request's id.
    ``seconds`` is the pause of ``DELAY`` and ``HANG``. ``omit_data_key`` makes ``EMPTY_DATA``
    leave out ``data`` instead of sending an empty list.
    """

    kind: FaultKind
    status: int = 500
    body: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    omit_data_key: bool = False

    @classmethod
    def error(
        cls,
        status: int,
        message: str,
        *,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Fault:
        """Any status with the OpenAI envelope."""
        return cls(FaultKind.ERROR, status, openai_body(message, type_, param, code), dict(headers or {}))

    @classmethod
    def raw_error(cls, status: int, body: Mapping[str, Any], headers: Mapping[str, str] | None = None) -> Fault:
        """Any status with any JSON body, for shapes the presets do not cover."""
        return cls(FaultKind.ERROR, status, dict(body), dict(headers or {}))

    @classmethod
    def moderation_blocked(cls, categories: tuple[str, ...] = ("violence",)) -> Fault:
        """GPT image moderation refusal; the message cites the request id like the real one."""
        message = (
            "Your request was rejected by the safety system. If you believe this is an error, contact "
            f"us at help.openai.com and include the request ID {REQUEST_ID_PLACEHOLDER}. "
            f"safety_violations=[{', '.join(categories)}]."
        )
        return cls.error(400, message, type_="image_generation_user_error", code="moderation_blocked")

    @classmethod
    def content_policy_violation(cls) -> Fault:
        """DALL·E's safety refusal."""
        message = (
            "Your request was rejected as a result of our safety system. Your prompt may contain "
            "text that is not allowed by our safety system."
        )
        return cls.error(400, message, code="content_policy_violation")

    @classmethod
    def invalid_api_key(cls, key: str = "sk-sandbox-revoked-key") -> Fault:
        """401 as for a revoked key."""
        message = (
            f"Incorrect API key provided: {mask_key(key)}. You can find your API key at "
            "https://platform.openai.com/account/api-keys."
        )
        return cls.error(401, message, code="invalid_api_key")

    @classmethod
    def permission_denied(cls, model: str = "gpt-image-1.5") -> Fault:
        """403 as for an organisation not verified for GPT image models."""
        message = (
            f"Your organization must be verified to use the model `{model}`. Please go to: "
            "https://platform.openai.com/settings/organization/general and click on Verify "
            "Organization. If you just verified, it can take up to 15 minutes for access to propagate."
        )
        return cls.error(403, message)

    @classmethod
    def model_not_found(cls, model: str = "gpt-image-1.5") -> Fault:
        """404 for a model the account cannot use."""
        message = f"The model '{model}' does not exist or you do not have access to it."
        return cls.error(404, message, param="model", code="model_not_found")

    @classmethod
    def azure_deployment_not_found(cls) -> Fault:
        """Azure's 404 for a missing deployment."""
        return cls.raw_error(404, azure_body("DeploymentNotFound", AZURE_DEPLOYMENT_MISSING_MESSAGE))

    @classmethod
    def azure_resource_not_found(cls) -> Fault:
        """Azure's 404 for a wrong path or api-version."""
        return cls.raw_error(404, azure_body("404", "Resource not found"))

    @classmethod
    def invalid_value(cls, param: str = "size", message: str | None = None) -> Fault:
        """A 400 validation error on ``param``."""
        text = message or f"Invalid value for '{param}'."
        return cls.error(400, text, param=param, code="invalid_value")

    @classmethod
    def rate_limit(cls, retry_after: float = 1.0, model: str = "gpt-image-1.5") -> Fault:
        """429 ``rate_limit_exceeded`` with ``retry-after`` in seconds."""
        seconds = _seconds_text(retry_after)
        message = (
            f"Rate limit reached for {model} in organization org-sandbox on images per minute (IPM): "
            f"Limit 5, Used 5, Requested 1. Please try again in {seconds}s. Visit "
            "https://platform.openai.com/account/rate-limits to learn more."
        )
        return cls.error(429, message, type_="requests", code="rate_limit_exceeded", headers={"retry-after": seconds})

    @classmethod
    def azure_rate_limit(cls, retry_after: float = 1.0) -> Fault:
        """Azure's 429, with ``retry-after`` and ``retry-after-ms``."""
        seconds = _seconds_text(retry_after)
        message = (
            "Requests to the Images_Generations Operation under Azure OpenAI API have exceeded call "
            f"rate limit of your current pricing tier. Please retry after {seconds} seconds. Please "
            "go here: https://aka.ms/oai/quotaincrease if you would like to further increase the "
            "default rate limit."
        )
        headers = {"retry-after": seconds, "retry-after-ms": str(round(retry_after * 1000))}
        return cls.raw_error(429, azure_body("429", message), headers)

    @classmethod
    def insufficient_quota(cls) -> Fault:
        """429 for billing; ``x-should-retry: false`` because retrying cannot help."""
        message = (
            "You exceeded your current quota, please check your plan and billing details. For more "
            "information on this error, read the docs: "
            "https://platform.openai.com/docs/guides/error-codes/api-errors."
        )
        return cls.error(
            429,
            message,
            type_="insufficient_quota",
            code="insufficient_quota",
            headers={"x-should-retry": "false"},
        )

    @classmethod
    def server_error(cls) -> Fault:
        """500 with code null."""
        message = "The server had an error while processing your request. Sorry about that!"
        return cls.error(500, message, type_="server_error")

    @classmethod
    def overloaded(cls, retry_after: float = 1.0) -> Fault:
        """503 ``server_is_overloaded`` with ``retry-after``."""
        return cls.error(
            503,
            "The server is overloaded or not ready yet.",
            type_="service_unavailable_error",
            code="server_is_overloaded",
            headers={"retry-after": _seconds_text(retry_after)},
        )

    @classmethod
    def delay(cls, seconds: float) -> Fault:
        """Answer normally, but only after ``seconds``."""
        return cls(FaultKind.DELAY, 200, seconds=seconds)

    @classmethod
    def hang(cls, seconds: float = HANG_SECONDS) -> Fault:
        """Never answer in practice; ends early when the client leaves or the sandbox stops."""
        return cls(FaultKind.HANG, 200, seconds=seconds)

    @classmethod
    def malformed_json(cls) -> Fault:
        """200 whose body is cut off mid-JSON."""
        return cls(FaultKind.MALFORMED_JSON, 200)

    @classmethod
    def empty_data(cls, *, omit_data_key: bool = False) -> Fault:
        """200 with no images: ``"data": []``, or no ``data`` key at all."""
        return cls(FaultKind.EMPTY_DATA, 200, omit_data_key=omit_data_key)

    @classmethod
    def url_instead_of_b64(cls) -> Fault:
        """GPT image models answer with a ``url`` (served by the emulator) instead of bytes."""
        return cls(FaultKind.URL_INSTEAD_OF_B64, 200)

    @classmethod
    def stream_error(cls, message: str = "An error occurred while generating the image.") -> Fault:
        """An ``error`` event after the first partial image of a stream."""
        inner = {"type": "server_error", "code": "server_error", "message": message, "param": None}
        return cls(FaultKind.STREAM_ERROR, 200, body=inner)

    def to_json(self) -> dict[str, Any]:
        """The JSON form used by ``/_sandbox/faults``."""
        data = asdict(self)
        data["kind"] = self.kind.value
        return data


PRESETS: dict[str, Callable[..., Fault]] = {
    "moderation_blocked": Fault.moderation_blocked,
    "content_policy_violation": Fault.content_policy_violation,
    "invalid_api_key": Fault.invalid_api_key,
    "permission_denied": Fault.permission_denied,
    "model_not_found": Fault.model_not_found,
    "azure_deployment_not_found": Fault.azure_deployment_not_found,
    "azure_resource_not_found": Fault.azure_resource_not_found,
    "invalid_value": Fault.invalid_value,
    "rate_limit": Fault.rate_limit,
    "azure_rate_limit": Fault.azure_rate_limit,
    "insufficient_quota": Fault.insufficient_quota,
    "server_error": Fault.server_error,
    "overloaded": Fault.overloaded,
    "delay": Fault.delay,
    "hang": Fault.hang,
    "malformed_json": Fault.malformed_json,
    "empty_data": Fault.empty_data,
    "url_instead_of_b64": Fault.url_instead_of_b64,
    "stream_error": Fault.stream_error,
}
_FAULT_FIELDS = ("status", "body", "headers", "seconds", "omit_data_key")


def fault_from_json(data: Mapping[str, Any]) -> Fault:
    """Build a fault from ``{"preset": name, ...kwargs}`` or ``{"kind": ..., fields...}``.

    Raises ValueError with a readable reason, which the control route returns as a 400.
    """
    if "preset" in data:
        preset = PRESETS.get(str(data["preset"]))
        if preset is None:
            raise ValueError(f"unknown preset {data['preset']!r}; known: {', '.join(sorted(PRESETS))}")
        kwargs = dict(data.get("args") or {})
        if "categories" in kwargs:
            kwargs["categories"] = tuple(kwargs["categories"])
        try:
            return preset(**kwargs)
        except TypeError as exc:
            raise ValueError(f"bad arguments for preset {data['preset']!r}: {exc}") from exc
    try:
        kind = FaultKind(str(data.get("kind")))
    except ValueError as exc:
        raise ValueError(f"'kind' must be one of {[k.value for k in FaultKind]} (or give 'preset')") from exc
    fields = {name: data[name] for name in _FAULT_FIELDS if name in data}
    return Fault(kind, **fields)


@dataclass
class _QueuedFault:
    fault: Fault
    remaining: int | None
    path_contains: str | None


class FaultQueue:
    """The faults waiting for requests; first match wins, ``times=None`` lasts until cleared."""

    def __init__(self) -> None:
        self._entries: list[_QueuedFault] = []

    def add(self, fault: Fault, *, times: int | None = 1, path_contains: str | None = None) -> None:
        """Queue ``fault`` for the next ``times`` matching requests."""
        if times is not None and times < 1:
            raise ValueError("times must be at least 1, or None for 'until cleared'")
        self._entries.append(_QueuedFault(fault, times, path_contains))

    def clear(self) -> None:
        """Forget every queued fault."""
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

    def take(self, path: str, *, streaming: bool) -> Fault | None:
        """Consume one use of the first fault that applies to this request.

        A stream error only applies to streaming requests; it waits in the queue otherwise.
        """
        for entry in self._entries:
            if entry.path_contains is not None and entry.path_contains not in path:
                continue
            if entry.fault.kind is FaultKind.STREAM_ERROR and not streaming:
                continue
            if entry.remaining is not None:
                entry.remaining -= 1
                if entry.remaining == 0:
                    self._entries.remove(entry)
            return entry.fault
        return None

    def describe(self) -> list[dict[str, Any]]:
        """The queue as JSON, for ``GET /_sandbox/faults``."""
        return [
            {
                "fault": entry.fault.to_json(),
                "remaining": entry.remaining,
                "path_contains": entry.path_contains,
            }
            for entry in self._entries
        ]


def trigger_fault(prompt: str, *, azure: bool, dall_e: bool) -> Fault | None:
    """The fault a ``[[sandbox:...]]`` marker in ``prompt`` asks for, or None without a marker.

    Raises ValueError for a marker it does not know, so a typo is not silently ignored.
    """
    match = _TRIGGER.search(prompt)
    if match is None:
        return None
    name, argument = match.group(1), match.group(2)
    builder = _TRIGGERS.get(name)
    if builder is None:
        raise ValueError(f"unknown sandbox trigger {name!r}; known: {', '.join(sorted(_TRIGGERS))}")
    return builder(argument, azure, dall_e)


def _float_argument(argument: str | None, default: float) -> float:
    if argument is None or argument == "":
        return default
    try:
        return float(argument)
    except ValueError as exc:
        raise ValueError(f"sandbox trigger argument {argument!r} is not a number") from exc


def _moderation_trigger(argument: str | None, azure: bool, dall_e: bool) -> Fault:
    return Fault.content_policy_violation() if dall_e else Fault.moderation_blocked()


def _rate_limit_trigger(argument: str | None, azure: bool, dall_e: bool) -> Fault:
    seconds = _float_argument(argument, 1.0)
    return Fault.azure_rate_limit(seconds) if azure else Fault.rate_limit(seconds)


def _status_trigger(argument: str | None, azure: bool, dall_e: bool) -> Fault:
    status = int(_float_argument(argument, 500))
    by_status: dict[int, Callable[[], Fault]] = {
        500: Fault.server_error,
        503: Fault.overloaded,
        401: Fault.invalid_api_key,
        403: Fault.permission_denied,
        404: Fault.model_not_found,
        429: lambda: _rate_limit_trigger(None, azure, dall_e),
    }
    preset = by_status.get(status)
    if preset is not None:
        return preset()
    kind = "server_error" if status >= 500 else "invalid_request_error"
    return Fault.error(status, f"Sandbox error {status} requested by the prompt.", type_=kind)


_TRIGGERS: dict[str, Callable[[str | None, bool, bool], Fault]] = {
    "moderation": _moderation_trigger,
    "content_policy": lambda arg, azure, dall_e: Fault.content_policy_violation(),
    "error": _status_trigger,
    "rate_limit": _rate_limit_trigger,
    "quota": lambda arg, azure, dall_e: Fault.insufficient_quota(),
    "overloaded": lambda arg, azure, dall_e: Fault.overloaded(_float_argument(arg, 1.0)),
    "delay": lambda arg, azure, dall_e: Fault.delay(_float_argument(arg, 1.0)),
    "hang": lambda arg, azure, dall_e: Fault.hang(_float_argument(arg, HANG_SECONDS)),
    "empty": lambda arg, azure, dall_e: Fault.empty_data(),
    "no_data": lambda arg, azure, dall_e: Fault.empty_data(omit_data_key=True),
    "malformed": lambda arg, azure, dall_e: Fault.malformed_json(),
    "url": lambda arg, azure, dall_e: Fault.url_instead_of_b64(),
    "stream_error": lambda arg, azure, dall_e: Fault.stream_error(),
}


def _seconds_text(seconds: float) -> str:
    return str(int(seconds)) if float(seconds).is_integer() else str(seconds)
