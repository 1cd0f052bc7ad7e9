"""HTTP plumbing of the A1111 emulator: the ``x-process-time`` header, FastAPI's body errors, the
request log's view of a body, and the generation answer's encoding.

Kept apart from :mod:`limner.sandbox.a1111` so that module stays about behaviour.
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

MALFORMED_BODY = b'{"images": ["iVBORw0KGgoAAAANSUhEUgAA'
_BASE64_FIELDS = frozenset({"init_images", "mask", "image", "firstpass_image", "latent_mask", "data"})


class ProcessTime:
    """ASGI middleware: every answer carries ``x-process-time`` in seconds, as the web UI's does."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Time the request and add the header to whatever response starts."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()

        async def send_with_time(message: Message) -> None:
            if message["type"] == "http.response.start":
                elapsed = str(time.perf_counter() - started).encode()
                message = {**message, "headers": [*message.get("headers", []), (b"x-process-time", elapsed)]}
            await send(message)

        await self.app(scope, receive, send_with_time)


def json_error(exc: ValueError, v2: bool) -> dict[str, Any]:
    """FastAPI's 422 item for a body that is not JSON, in Pydantic v1 or v2 style."""
    position = getattr(exc, "pos", 0)
    reason = getattr(exc, "msg", str(exc))
    if v2:
        return {
            "type": "json_invalid",
            "loc": ["body", position],
            "msg": "JSON decode error",
            "input": {},
            "ctx": {"error": reason},
        }
    return {
        "loc": ["body", position],
        "msg": str(exc),
        "type": "value_error.jsondecode",
        "ctx": {"msg": reason, "pos": position},
    }


def loggable(value: Any, key: str | None = None) -> Any:
    """The request log keeps base64 images as their length only."""
    if isinstance(value, str) and key in _BASE64_FIELDS and len(value) > 64:
        return f"<base64: {len(value)} chars>"
    if isinstance(value, dict):
        return {k: loggable(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [loggable(item, key) for item in value]
    return value


def generation_body(images: list[bytes], parameters: dict[str, Any], info: dict[str, Any], omit: bool) -> bytes:
    """The JSON answer (CPU work on megabytes of base64: run in a thread)."""
    body: dict[str, Any] = {}
    if not omit:
        body["images"] = [base64.b64encode(data).decode("ascii") for data in images]
    body["parameters"] = parameters
    body["info"] = json.dumps(info)
    return json.dumps(body).encode()


def extras_body(images: list[bytes], html_info: str, *, batch: bool) -> bytes:
    """The extras answer, ``html_info`` first as the web UI's response models order it (run in a thread)."""
    encoded = [base64.b64encode(data).decode("ascii") for data in images]
    body: dict[str, Any] = {"html_info": html_info}
    if batch:
        body["images"] = encoded
    else:
        body["image"] = encoded[0]
    return json.dumps(body).encode()
