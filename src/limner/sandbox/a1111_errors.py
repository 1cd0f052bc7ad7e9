"""The error bodies of the A1111-style web UIs, and the faults and prompt triggers that produce them.

A1111 and Forge install one exception handler for every exception, so most errors share
``{"error", "detail", "body", "errors"}`` (SD.Next adds ``code``); request validation keeps FastAPI's
``{"detail": [...]}``; an unknown route (or the whole API when ``--api`` is off) is FastAPI's plain
``{"detail": "Not Found"}``. See §7 of ``shared/apis/a1111.md``.

Prompt triggers (one request each; the generic fault queue is in :mod:`limner.sandbox.faults`):

==============================  ================================================================
``[[sandbox:error=500]]``       500 ``OutOfMemoryError`` as a CUDA OOM is reported; 401 the auth
                                body; 404 the plain "Not Found"; 422 a validation error on the
                                prompt; any other status an ``HTTPException`` with that code
``[[sandbox:delay=2.5]]``       answer normally after 2.5 seconds (holding the generation queue)
``[[sandbox:hang]]``            never answer (until the client leaves or the sandbox stops)
``[[sandbox:empty]]``           200 with ``"images": []``
``[[sandbox:malformed]]``       200 whose body is not JSON
==============================  ================================================================
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from limner.sandbox.a1111_catalog import FlavourSpec
from limner.sandbox.faults import HANG_SECONDS, Fault, FaultKind, fault_from_json

_TRIGGER = re.compile(r"\[\[sandbox:([a-z_]+)(?:=([^\]]*))?\]\]")
OOM_MESSAGE = (
    "CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 8.00 GiB total capacity; 6.20 GiB already "
    "allocated; 1.10 GiB free; 6.50 GiB reserved in total by PyTorch)"
)
SUPPORTED_FAULTS = frozenset(
    {FaultKind.ERROR, FaultKind.DELAY, FaultKind.HANG, FaultKind.MALFORMED_JSON, FaultKind.EMPTY_DATA}
)


class A1111Error(Exception):
    """An answer the emulated web UI gives instead of a result."""

    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.body = body


def exception_body(spec: FlavourSpec, status: int, error: str, detail: str, errors: str) -> dict[str, Any]:
    """The shared handler's body; SD.Next puts ``code`` right after ``error``."""
    body: dict[str, Any] = {"error": error}
    if spec.error_code_field:
        body["code"] = status
    body.update({"detail": detail, "body": "", "errors": errors})
    return body


def http_exception(spec: FlavourSpec, status: int, detail: str) -> A1111Error:
    """An ``HTTPException`` raised by a route: ``errors`` is ``"<code>: <detail>"``."""
    return A1111Error(status, exception_body(spec, status, "HTTPException", detail, f"{status}: {detail}"))


def server_exception(spec: FlavourSpec, message: str, error: str = "RuntimeError") -> A1111Error:
    """Any other exception: always 500, empty ``detail``, the message in ``errors``."""
    return A1111Error(500, exception_body(spec, 500, error, "", message))


def plain_not_found() -> A1111Error:
    """FastAPI's own 404: an unknown route, or every ``/sdapi`` route without ``--api``."""
    return A1111Error(404, {"detail": "Not Found"})


def unauthorised(spec: FlavourSpec, *, missing: bool) -> A1111Error:
    """401 for Basic auth; the handler drops ``WWW-Authenticate``, so no header is sent."""
    return http_exception(spec, 401, spec.auth_missing_detail if missing else spec.auth_wrong_detail)


def validation_error(items: list[dict[str, Any]]) -> A1111Error:
    """FastAPI's 422, which bypasses the shared handler."""
    return A1111Error(422, {"detail": items})


def validation_item(spec: FlavourSpec, loc: list[str | int], kind: str, message: str, value: Any) -> dict[str, Any]:
    """One 422 item; ``kind`` and ``message`` must already be in the flavour's Pydantic style."""
    if spec.pydantic_v2:
        return {"type": kind, "loc": loc, "msg": message, "input": value}
    return {"loc": loc, "msg": message, "type": kind}


# -- faults ------------------------------------------------------------------------------------


def error_fault(spec: FlavourSpec, status: int, detail: str) -> Fault:
    """A fault answering ``status`` with an ``HTTPException`` body."""
    error = http_exception(spec, status, detail)
    return Fault.raw_error(status, error.body)


def exception_fault(spec: FlavourSpec, message: str, error: str = "RuntimeError") -> Fault:
    """A fault answering 500 as an exception during generation does."""
    return Fault.raw_error(500, server_exception(spec, message, error).body)


def out_of_memory_fault(spec: FlavourSpec) -> Fault:
    """The 500 of a CUDA out-of-memory error."""
    return exception_fault(spec, OOM_MESSAGE, "OutOfMemoryError")


def unauthorised_fault(spec: FlavourSpec) -> Fault:
    """The 401 of wrong credentials."""
    return Fault.raw_error(401, unauthorised(spec, missing=False).body)


def api_disabled_fault() -> Fault:
    """The plain 404 a web UI started without ``--api`` gives."""
    return Fault.raw_error(404, plain_not_found().body)


def validation_fault(spec: FlavourSpec, field: str = "steps") -> Fault:
    """A 422 on ``field`` as for a value that is not an integer."""
    kind, message = (
        ("int_parsing", "Input should be a valid integer, unable to parse string as an integer")
        if spec.pydantic_v2
        else ("type_error.integer", "value is not a valid integer")
    )
    return Fault.raw_error(422, {"detail": [validation_item(spec, ["body", field], kind, message, "x")]})


PRESETS: dict[str, Callable[..., Fault]] = {
    "error": error_fault,
    "exception": exception_fault,
    "out_of_memory": out_of_memory_fault,
    "unauthorised": unauthorised_fault,
    "api_disabled": lambda spec: api_disabled_fault(),
    "validation": validation_fault,
    "delay": lambda spec, seconds=1.0: Fault.delay(seconds),
    "hang": lambda spec, seconds=HANG_SECONDS: Fault.hang(seconds),
    "malformed_json": lambda spec: Fault.malformed_json(),
    "empty_images": lambda spec, omit_key=False: Fault.empty_data(omit_data_key=omit_key),
}


def fault_from_request(spec: FlavourSpec, data: Mapping[str, Any]) -> Fault:
    """``POST /_sandbox/faults``: ``{"preset": name, "args": {...}}`` or the generic ``{"kind": ...}``.

    Raises ValueError with a readable reason, which the control route returns as a 400.
    """
    name = data.get("preset")
    if name is not None:
        preset = PRESETS.get(str(name))
        if preset is None:
            raise ValueError(f"unknown preset {name!r}; known: {', '.join(sorted(PRESETS))}")
        try:
            return preset(spec, **dict(data.get("args") or {}))
        except TypeError as exc:
            raise ValueError(f"bad arguments for preset {name!r}: {exc}") from exc
    fault = fault_from_json(data)
    if fault.kind not in SUPPORTED_FAULTS:
        raise ValueError(f"fault kind {fault.kind.value!r} does not exist for an A1111 web UI")
    return fault


def trigger_fault(spec: FlavourSpec, prompt: str) -> Fault | None:
    """The fault a ``[[sandbox:...]]`` marker in ``prompt`` asks for; None without a marker.

    Raises ValueError for a marker it does not know, so a typo is not silently ignored.
    """
    match = _TRIGGER.search(prompt)
    if match is None:
        return None
    name, argument = match.group(1), match.group(2)
    if name == "error":
        return _status_fault(spec, int(_number(argument, 500)))
    if name == "delay":
        return Fault.delay(_number(argument, 1.0))
    if name == "hang":
        return Fault.hang(_number(argument, HANG_SECONDS))
    if name == "empty":
        return Fault.empty_data()
    if name == "malformed":
        return Fault.malformed_json()
    raise ValueError(f"unknown sandbox trigger {name!r}; known: delay, empty, error, hang, malformed")


def _status_fault(spec: FlavourSpec, status: int) -> Fault:
    if status == 500:
        return out_of_memory_fault(spec)
    if status == 401:
        return unauthorised_fault(spec)
    if status == 404:
        return api_disabled_fault()
    if status == 422:
        return validation_fault(spec, "prompt")
    return error_fault(spec, status, f"Sandbox error {status} requested by the prompt.")


def _number(argument: str | None, default: float) -> float:
    if argument is None or argument == "":
        return default
    try:
        return float(argument)
    except ValueError as exc:
        raise ValueError(f"sandbox trigger argument {argument!r} is not a number") from exc
