"""Request reading and response writing shared by the sandbox's HTTP emulators.

Kept apart from the emulator logic so each emulator module stays about behaviour: request ids on
every answer, body parsing with the real service's error for broken JSON, multipart parsing
without Starlette's 1 MB part cap, SSE framing, and waiting for a client to go away.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.routing import BaseRoute
from starlette.types import Message, Receive, Scope, Send

from limner.sandbox.openai_errors import INVALID_JSON_MESSAGE, invalid_request
from limner.sandbox.openai_inputs import UploadedFile
from limner.sandbox.openai_params import RawCall
from limner.sandbox.recorder import RecordedFile

REQUEST_ID_KEY = "limner.sandbox.request_id"
MAX_FORM_FILES = 64
MAX_FORM_FIELDS = 256
MAX_PART_BYTES = 64 * 1024 * 1024


class RequestIds:
    """ASGI middleware: every answer carries ``x-request-id`` (and Azure's ``apim-request-id``).

    The id is chosen before routing so handlers can quote it (moderation messages do).
    """

    def __init__(self, app: Starlette) -> None:
        self.app = app

    @property
    def routes(self) -> list[BaseRoute]:
        """Exposed so ``url_for`` finds the file route when this app is mounted."""
        return self.app.routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pick the id, then add the headers to whatever response the app starts."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = f"req_{uuid.uuid4().hex}"
        scope[REQUEST_ID_KEY] = request_id
        azure = route_path(scope).startswith("/openai/")

        async def send_with_ids(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                if azure:
                    headers.append((b"apim-request-id", str(uuid.uuid4()).encode()))
                    headers.append((b"x-ms-region", b"Sandbox"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_ids)


def request_id(request: Request) -> str:
    """The id :class:`RequestIds` chose for this request; error messages may quote it."""
    value = request.scope.get(REQUEST_ID_KEY)
    return value if isinstance(value, str) else "req_unknown"


def route_path(scope: Scope) -> str:
    """The path below the mount point, whatever the app is mounted under."""
    path: str = scope.get("path", "")
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


def bearer_token(header: str | None) -> str:
    """The token of ``Authorization: Bearer <token>``; empty for any other scheme."""
    if not header:
        return ""
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


async def read_json(request: Request) -> dict[str, Any]:
    """The JSON object body, or the exact 400 OpenAI sends for a body it cannot parse."""
    body = await request.body()
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise invalid_request(INVALID_JSON_MESSAGE) from exc
    if not isinstance(data, dict):
        raise invalid_request(INVALID_JSON_MESSAGE)
    return data


async def read_form(request: Request) -> RawCall:
    """Multipart fields as text plus file parts; Starlette's 1 MB part cap is lifted."""
    fields: dict[str, Any] = {}
    files: list[UploadedFile] = []
    try:
        async with request.form(
            max_files=MAX_FORM_FILES, max_fields=MAX_FORM_FIELDS, max_part_size=MAX_PART_BYTES
        ) as form:
            for name, value in form.multi_items():
                if isinstance(value, UploadFile):
                    files.append(UploadedFile(name, value.filename, value.content_type, await value.read()))
                else:
                    fields[name] = value
    except HTTPException as exc:
        raise invalid_request(f"Invalid multipart/form-data body: {exc.detail}") from exc
    return RawCall(fields, files, from_form=True)


def summarise_files(raw: RawCall) -> list[RecordedFile]:
    """File parts for the request log: hashes, not bytes (CPU-bound; run in a thread)."""
    return [
        RecordedFile(
            item.field,
            item.filename,
            item.content_type,
            len(item.data),
            hashlib.sha256(item.data).hexdigest(),
        )
        for item in raw.files
    ]


def redact_data_urls(value: Any) -> Any:
    """Keep the request log small: data URLs are replaced by their length."""
    if isinstance(value, str) and value.startswith("data:") and len(value) > 256:
        return f"{value[:40]}...<{len(value)} chars>"
    if isinstance(value, dict):
        return {key: redact_data_urls(item) for key, item in value.items()}
    if isinstance(value, list):
        return [redact_data_urls(item) for item in value]
    return value


async def wait_for_disconnect(receive: Receive) -> None:
    """Return once the client has gone; only valid after the body has been read."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def stall(receive: Receive, seconds: float, pauses: set[anyio.CancelScope]) -> str:
    """Sleep ``seconds``, but stop early when the client leaves or the emulator cancels ``pauses``.

    Returns ``"done"``, ``"disconnected"`` or ``"closed"``; each emulator answers the last two in its own
    error shape. Shared by the emulators' delay and hang faults.
    """
    outcome = "closed"
    with anyio.CancelScope() as scope:
        pauses.add(scope)
        try:
            async with anyio.create_task_group() as group:

                async def watch_client() -> None:
                    nonlocal outcome
                    await wait_for_disconnect(receive)
                    outcome = "disconnected"
                    scope.cancel()

                group.start_soon(watch_client)
                await anyio.sleep(seconds)
                outcome = "done"
                scope.cancel()
        finally:
            pauses.discard(scope)
    return outcome


async def single_chunk(chunk: bytes) -> AsyncIterator[bytes]:
    """A stream body of one chunk (or none), for the faulty-stream answers."""
    if chunk:
        yield chunk


def sse(event: dict[str, Any]) -> bytes:
    """One SSE frame whose ``event:`` line repeats the payload's ``type``, as the API does."""
    return f"event: {event['type']}\ndata: {json.dumps(event, separators=(',', ':'))}\n\n".encode()


def sse_error(error: dict[str, Any]) -> bytes:
    """A mid-stream error frame; the SDK raises ``APIError`` on its top-level ``error`` object."""
    payload = json.dumps({"type": "error", "error": error}, separators=(",", ":"))
    return f"event: error\ndata: {payload}\n\n".encode()
