"""Error bodies, fault presets and request reading of the BFL emulator, as FastAPI would produce them.

BFL's API is FastAPI: every error body is ``{"detail": ...}``, a string for ``HTTPException``s (auth, 402,
429, 404) and a list of Pydantic error items for 422. The texts of the 402 and 429 bodies were never
captured (``shared/apis/flux.md`` §14), so ours are plausible stand-ins; clients must not depend on them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from starlette.requests import Request

from limner.sandbox.faults import Fault, FaultKind, fault_from_json
from limner.sandbox.openai_errors import EmulatedError

__all__ = [
    "BFL_FAULTS",
    "MALFORMED_BODY",
    "SUPPORTED_FAULT_KINDS",
    "active_tasks_exceeded",
    "bfl_fault_from_json",
    "detail_error",
    "insufficient_credits",
    "loggable",
    "missing_query",
    "not_authenticated",
    "read_body",
    "status_error",
    "validation_error",
]

NOT_AUTHENTICATED = "Not authenticated"
INVALID_KEY = "Not authenticated - Invalid Authentication"
CREDITS_MESSAGE = "Insufficient credits. Add credits at https://dashboard.bfl.ai to continue."
MALFORMED_BODY = b'{"id": "5b0f3c1e-7d2a-4c55-9e0a-1f2b3c4d5e6f", "status": "Rea'
_IMAGE_FIELD_PREFIXES = ("input_image", "image", "mask")


def detail_error(status: int, detail: str, headers: Mapping[str, str] | None = None) -> EmulatedError:
    """An ``HTTPException`` answer: ``{"detail": "<text>"}``."""
    return EmulatedError(status, {"detail": detail}, headers)


def validation_error(items: list[dict[str, Any]]) -> EmulatedError:
    """A 422 with Pydantic's error items, as FastAPI's ``RequestValidationError`` handler sends it."""
    return EmulatedError(422, {"detail": items})


def missing_query(name: str) -> EmulatedError:
    """422 for a required query parameter that was not sent."""
    return validation_error([{"type": "missing", "loc": ["query", name], "msg": "Field required", "input": None}])


def not_authenticated(*, missing: bool, status: int) -> EmulatedError:
    """403 (or 401 when the emulator is told to) for a missing or unknown ``x-key``."""
    return detail_error(status, NOT_AUTHENTICATED if missing else INVALID_KEY)


def active_tasks_exceeded(limit: int) -> EmulatedError:
    """429 when the account already has ``limit`` unfinished tasks."""
    return detail_error(429, f"Too many active tasks: the limit is {limit}. Wait for running tasks to finish.")


def insufficient_credits() -> EmulatedError:
    """402 when the balance does not cover the job."""
    return detail_error(402, CREDITS_MESSAGE)


def status_error(status: int) -> EmulatedError:
    """Any status a trigger or preset asks for, with the body FastAPI would give it."""
    if status == 402:
        return insufficient_credits()
    if status == 429:
        return active_tasks_exceeded(24)
    texts = {401: NOT_AUTHENTICATED, 403: INVALID_KEY, 404: "Not Found", 500: "Internal Server Error"}
    return detail_error(status, texts.get(status, f"Sandbox error {status} requested."))


async def read_body(request: Request) -> Any:
    """The JSON body, or FastAPI's 422: ``missing`` for no body, ``json_invalid`` with the error position."""
    raw = await request.body()
    if not raw.strip():
        raise validation_error([{"type": "missing", "loc": ["body"], "msg": "Field required", "input": None}])
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        item = {
            "type": "json_invalid",
            "loc": ["body", exc.pos],
            "msg": "JSON decode error",
            "input": {},
            "ctx": {"error": exc.msg},
        }
        raise validation_error([item]) from exc


def loggable(body: Any) -> Any:
    """The body for the request log: image fields shortened to their length (they can be megabytes)."""
    if not isinstance(body, dict):
        return body
    shown: dict[str, Any] = {}
    for key, value in body.items():
        is_image = key.startswith(_IMAGE_FIELD_PREFIXES) or key == "image_prompt"
        if is_image and isinstance(value, str) and len(value) > 256:
            shown[key] = f"{value[:24]}...<{len(value)} chars>"
        else:
            shown[key] = value
    return shown


def _error_preset(status: int, detail: str) -> Callable[..., Fault]:
    def build(retry_after: float | None = None) -> Fault:
        headers = {"retry-after": f"{retry_after:g}"} if retry_after is not None else {}
        return Fault.raw_error(status, {"detail": detail}, headers)

    return build


BFL_FAULTS: dict[str, Callable[..., Fault]] = {
    "unauthorized": _error_preset(401, NOT_AUTHENTICATED),
    "forbidden": _error_preset(403, INVALID_KEY),
    "credits": _error_preset(402, CREDITS_MESSAGE),
    "busy": _error_preset(429, "Too many active tasks: the limit is 24. Wait for running tasks to finish."),
    "not_found": _error_preset(404, "Not Found"),
    "server_error": _error_preset(500, "Internal Server Error"),
    "bad_gateway": _error_preset(502, "Bad Gateway"),
    "unavailable": _error_preset(503, "Service Unavailable"),
    "delay": Fault.delay,
    "hang": Fault.hang,
    "malformed_json": Fault.malformed_json,
    "empty_body": Fault.empty_data,
}
"""Fault presets with BFL's body shapes; ``empty_body`` answers 200 ``{}`` (no id, no status)."""

SUPPORTED_FAULT_KINDS = frozenset(
    {FaultKind.ERROR, FaultKind.DELAY, FaultKind.HANG, FaultKind.MALFORMED_JSON, FaultKind.EMPTY_DATA}
)


def bfl_fault_from_json(data: Mapping[str, Any]) -> Fault:
    """``{"preset": name, "args": {...}}`` with a BFL preset, or the generic ``{"kind": ...}`` form."""
    if "preset" in data:
        preset = BFL_FAULTS.get(str(data["preset"]))
        if preset is None:
            raise ValueError(f"unknown preset {data['preset']!r}; known: {', '.join(sorted(BFL_FAULTS))}")
        try:
            return preset(**dict(data.get("args") or {}))
        except TypeError as exc:
            raise ValueError(f"bad arguments for preset {data['preset']!r}: {exc}") from exc
    fault = fault_from_json(data)
    if fault.kind not in SUPPORTED_FAULT_KINDS:
        raise ValueError(f"fault kind {fault.kind.value!r} does not apply to the BFL API")
    return fault
