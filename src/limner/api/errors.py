"""The HTTP edge of the error tree: one table from error classes to statuses, one JSON shape.

Every error answer is ``{"error": {"code", "message", "hint", "provider"}}``. A provider's auth failure is
a 502, never a 401: a 401 from limner means the caller's own token is wrong and would sign them out.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from limner.api.schemas import ErrorResponse
from limner.errors import (
    AccessError,
    AgentNotFoundError,
    ConfigurationError,
    ContentPolicyError,
    ConversationNotFoundError,
    ImageNotFoundError,
    ImageTooLargeError,
    InputError,
    LimnerError,
    MissingCredentialsError,
    ProviderError,
    ProviderRateLimitError,
    ProviderUnavailableError,
    SignInFailedError,
    StorageError,
    StoredKeyUnreadableError,
    TokenNotFoundError,
    ToolNotFoundError,
    TooManyAttemptsError,
    TurnInProgressError,
    UnknownProviderError,
    UnsupportedImageError,
)

__all__ = ["ERROR_RESPONSES", "STATUS_TABLE", "error_body", "install_error_handlers", "status_for"]

log = logging.getLogger(__name__)

# Most specific first: the first matching class decides.
STATUS_TABLE: tuple[tuple[type[LimnerError], int], ...] = (
    (SignInFailedError, 401),
    (TooManyAttemptsError, 429),
    (AccessError, 403),
    (ImageNotFoundError, 404),
    (ToolNotFoundError, 404),
    (ConversationNotFoundError, 404),
    (AgentNotFoundError, 404),
    (TokenNotFoundError, 404),
    (TurnInProgressError, 409),
    (UnknownProviderError, 404),
    (ImageTooLargeError, 413),
    (UnsupportedImageError, 415),
    (InputError, 400),
    (MissingCredentialsError, 400),
    (StoredKeyUnreadableError, 400),
    (ConfigurationError, 503),
    (ProviderRateLimitError, 429),
    (ContentPolicyError, 422),
    (ProviderUnavailableError, 503),
    (ProviderError, 502),
    (StorageError, 500),
    (LimnerError, 500),
)

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in (
        (400, "Invalid input, or a provider key is missing"),
        (401, "No valid API token"),
        (404, "Unknown or foreign ID (the same answer for both), or unknown tool or provider"),
        (413, "Image too large"),
        (415, "Not an accepted image"),
        (422, "Malformed request body, or refused by the provider's content policy"),
        (429, "Too many failed sign-ins (see Retry-After), or the provider is rate limiting"),
        (500, "Storage or internal failure"),
        (502, "The provider failed (rejected key, quota, bad answer)"),
        (503, "Not configured, or the provider is unavailable"),
    )
}
"""The error answers every authenticated route can give, for the OpenAPI document."""

_HTTP_CODES = {
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "image_too_large",
}


def status_for(exc: LimnerError) -> int:
    """The HTTP status of a limner error."""
    return next(status for cls, status in STATUS_TABLE if isinstance(exc, cls))


def error_body(code: str, message: str, hint: str | None = None, provider: str | None = None) -> dict[str, object]:
    """The one error shape."""
    return {"error": {"code": code, "message": message, "hint": hint, "provider": provider}}


async def _limner_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, LimnerError)
    status = status_for(exc)
    headers = {}
    if isinstance(exc, ProviderError) and exc.retry_after:
        headers["Retry-After"] = str(max(1, round(exc.retry_after)))
    if isinstance(exc, TooManyAttemptsError):
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))  # never early: it would be refused
    if status >= 500 and not isinstance(exc, ProviderError | ConfigurationError):
        log.error("request failed: %s", exc.code, exc_info=exc)
    return JSONResponse({"error": exc.to_dict()}, status_code=status, headers=headers)


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    broken_json = next((err for err in errors if err.get("type") == "json_invalid"), None)
    if broken_json is not None:
        body = error_body("invalid_request", _json_problem(broken_json), "Send the body as one JSON object.")
        return JSONResponse(body, status_code=422)
    parts = []
    for err in errors:
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "request"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    message, hint = "Invalid request: " + "; ".join(parts), "Change the named fields (the API is described at /docs)."
    body = error_body("invalid_request", message, hint)
    return JSONResponse(body, status_code=422)


def _json_problem(err: Mapping[str, Any]) -> str:
    """FastAPI says "10: JSON decode error"; a person wants what is wrong and where."""
    position = next((p for p in err.get("loc", ()) if isinstance(p, int)), None)
    reason = str((err.get("ctx") or {}).get("error") or "").strip()
    where = f" at character {position}" if position is not None else ""
    return f"The request body is not valid JSON{where}" + (f": {reason[:1].lower()}{reason[1:]}." if reason else ".")


_HTTP_HINTS = {
    401: "Sign in to the web UI, or send an API token as 'Authorization: Bearer <token>' "
    "(`limner tokens create --user NAME` makes one).",
    404: "Check the address; the API is described at /docs.",
    405: "The Allow header lists the methods this address takes.",
}


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    headers = dict(exc.headers or {})
    if exc.status_code == 405:  # Starlette names only the first route that matched the path
        allowed = _allowed_methods(request) or [m.strip() for m in headers.get("Allow", "").split(",") if m.strip()]
        if request.method == "OPTIONS":  # RFC 9110: OPTIONS asks what the resource supports
            return Response(status_code=204, headers={"Allow": ", ".join([*allowed, "OPTIONS"])})
        headers["Allow"] = ", ".join(allowed)
    body = error_body(code, str(exc.detail), _HTTP_HINTS.get(exc.status_code))
    return JSONResponse(body, status_code=exc.status_code, headers=headers)


async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled error", exc_info=exc)
    body = error_body("internal_error", "Something went wrong inside limner.", "Try again; the log has details.")
    return JSONResponse(body, status_code=500)


def _allowed_methods(request: Request) -> list[str]:
    """Every method the API documents at this path (GET and POST of ``/api/images`` are two routes), read
    from the app's own OpenAPI document, so the answer and the document cannot disagree.
    """
    methods: set[str] = set()
    for template, item in request.app.openapi().get("paths", {}).items():
        if re.fullmatch(re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template)), request.url.path):
            methods |= {method.upper() for method in item if method.upper() in _METHOD_ORDER}
    return sorted(methods, key=_METHOD_ORDER.index)


_METHOD_ORDER = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]


def install_error_handlers(app: FastAPI) -> None:
    """Route every exception to the one error shape."""
    app.add_exception_handler(LimnerError, _limner_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
