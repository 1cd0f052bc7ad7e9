"""A loopback chat model emulator: OpenAI Chat Completions and Anthropic Messages, deterministic rules.

It lets limner's agent loop run end to end offline: real ``openai`` and ``anthropic`` SDK clients talk
to it as to the real services (non-streaming and SSE streaming, tools and ``tool_choice``, parallel
tool calls, images as data URLs or base64 blocks, error envelopes), and it answers by the simple rules
of :mod:`limner.sandbox.chat_rules`, calling only tools the request offered, with arguments that fit
their schemas. Routes, relative to where the app is mounted (the sandbox mounts it at ``/chat``):

- ``POST /v1/chat/completions``: OpenAI, ``Authorization: Bearer``; OpenAI base URL ``.../chat/v1``.
- ``POST /v1/messages``: Anthropic, ``x-api-key`` and ``anthropic-version``; base URL ``.../chat``.
- ``GET /v1/models``: the served models (Anthropic's shape when ``anthropic-version`` is sent).
- ``/_sandbox/faults`` (``GET``, ``POST``, ``DELETE``), ``/_sandbox/requests`` (``GET``, ``DELETE``)
  and ``/_sandbox/settings`` (``GET``, ``POST`` ``{"seconds_per_token": ..., "delay": ...}``).

Models (``models=`` replaces them): ``sandbox-vision`` takes image parts; ``sandbox-text`` cannot see,
and answers any image part with the 400 a text-only model gives, so an agent must not send it images.

Faults: the queue and presets of :mod:`limner.sandbox.faults` (on the Anthropic route an OpenAI-shaped
error body is converted to Anthropic's envelope, 503 becoming 529 ``overloaded_error``), and prompt
markers prefixed ``chat_`` in the latest user message, which affect every request of that turn:
``[[sandbox:chat_error=500]]``, ``chat_rate_limit``, ``chat_delay=2``, ``chat_hang``, ``chat_malformed``,
``chat_empty``, ``chat_stream_error``, ..., and ``[[sandbox:chat_slow=0.2]]`` for seconds per streamed
token. Unprefixed markers (``[[sandbox:moderation]]``) are left alone: they reach the image emulators
inside the prompt of the tool call. The emulator imports nothing from limner outside ``limner.sandbox``.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from typing import Any

import anyio
import anyio.to_thread
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp

from limner.sandbox.chat_anthropic import AnthropicWire
from limner.sandbox.chat_conversation import (
    DEFAULT_MODELS,
    ChatModel,
    ChatTriggers,
    Conversation,
    RecordedChat,
    Reply,
    chat_triggers,
    completion_tokens,
    limit_reply,
    prompt_tokens,
)
from limner.sandbox.chat_openai import OpenAIChatWire
from limner.sandbox.chat_rules import decide
from limner.sandbox.chat_wire import Answer, ChatWire, Frame, ParsedRequest, compact
from limner.sandbox.faults import Fault, FaultKind, FaultQueue, fault_from_json
from limner.sandbox.openai_errors import EmulatedError, invalid_request, invalid_url, mask_key, openai_body
from limner.sandbox.openai_wire import RequestIds, request_id, route_path, stall
from limner.sandbox.recorder import DEFAULT_LOG_LIMIT, RequestLog

__all__ = ["DEFAULT_MODELS", "ChatEmulator", "ChatModel", "RecordedChat"]

PARSE_IN_THREAD_OVER = 64 * 1024
_SECRET_HEADERS = ("authorization", "x-api-key", "api-key")


class ChatEmulator:
    """State and knobs of one emulated chat service (both APIs share models, faults and the log).

    ``accepted_keys`` None accepts any non-empty key. ``seconds_per_token`` paces every streamed delta
    (so a test has time to cancel a stream); ``delay`` stalls every answer. Both may be changed at any
    time, also from another process through ``/_sandbox/settings``.
    """

    def __init__(
        self,
        *,
        models: Iterable[ChatModel] | None = None,
        accepted_keys: set[str] | None = None,
        seconds_per_token: float = 0.0,
        delay: float = 0.0,
        request_log_limit: int = DEFAULT_LOG_LIMIT,
    ) -> None:
        self.models = {model.name: model for model in (DEFAULT_MODELS if models is None else models)}
        self.accepted_keys = accepted_keys
        self.seconds_per_token = seconds_per_token
        self.delay = delay
        self.faults = FaultQueue()
        self._log = RequestLog(request_log_limit)
        self._pauses: set[anyio.CancelScope] = set()
        self._openai = OpenAIChatWire()
        self._anthropic = AnthropicWire()

    @property
    def requests(self) -> list[RecordedChat]:
        """The recorded chat requests, oldest first (a copy; :meth:`reset` clears)."""
        return [entry for entry in self._log.snapshot() if isinstance(entry, RecordedChat)]

    def reset(self) -> None:
        """Forget queued faults and recorded requests."""
        self.faults.clear()
        self._log.clear()

    def close(self) -> None:
        """Release stalled requests and paced streams, so a server can stop promptly."""
        for scope in list(self._pauses):
            scope.cancel()

    def mounts(self) -> dict[str, ASGIApp]:
        """Served at ``/chat``: both APIs under one prefix, as their paths do not collide."""
        return {"chat": self.app()}

    def public_urls(self, base_url: str) -> dict[str, str]:
        """Base URLs for ``openai.AsyncOpenAI`` (``chat``) and ``anthropic.AsyncAnthropic`` (``anthropic``)."""
        root = base_url.rstrip("/")
        return {"chat": f"{root}/chat/v1", "anthropic": f"{root}/chat"}

    def app(self) -> ASGIApp:
        """The Starlette app serving every route of this emulator."""
        routes = [
            Route("/v1/chat/completions", self._chat_completions, methods=["POST"]),
            Route("/v1/messages", self._messages, methods=["POST"]),
            Route("/v1/models", self._list_models, methods=["GET"]),
            Route("/_sandbox/faults", self._control_faults, methods=["GET", "POST", "DELETE"]),
            Route("/_sandbox/requests", self._control_requests, methods=["GET", "DELETE"]),
            Route("/_sandbox/settings", self._control_settings, methods=["GET", "POST"]),
        ]
        handlers = {404: self._not_found, 405: self._not_found}
        return RequestIds(Starlette(routes=routes, exception_handlers=handlers))

    # -- the request pipeline ----------------------------------------------------------------

    async def _chat_completions(self, request: Request) -> Response:
        return await self._handle(request, self._openai)

    async def _messages(self, request: Request) -> Response:
        return await self._handle(request, self._anthropic)

    async def _handle(self, request: Request, wire: ChatWire) -> Response:
        started = time.monotonic()
        record = self._record(request, wire)
        try:
            wire.authenticate(request.headers, self.accepted_keys)
            parsed = await self._parse(wire, await request.body())
            _note_request(record, parsed)
            triggers = _triggers(parsed.conversation)
            streaming = parsed.conversation.stream
            fault = self.faults.take(request.url.path, streaming=streaming) or triggers.fault
            response = await self._answer(
                request, wire, parsed.conversation, fault=fault, triggers=triggers, record=record
            )
        except EmulatedError as exc:
            error = wire.error(exc, request_id(request))
            response = JSONResponse(error.body, status_code=error.status, headers=error.headers)
        response.headers.update(wire.headers(request_id(request), started))
        record.status = response.status_code
        return response

    async def _parse(self, wire: ChatWire, body: bytes) -> ParsedRequest:
        """Parse on the loop when small; a body with images is decoded and hashed in a worker thread."""
        if len(body) > PARSE_IN_THREAD_OVER:
            return await anyio.to_thread.run_sync(wire.parse, body, self.models)
        return wire.parse(body, self.models)

    async def _answer(
        self,
        request: Request,
        wire: ChatWire,
        conversation: Conversation,
        *,
        fault: Fault | None,
        triggers: ChatTriggers,
        record: RecordedChat,
    ) -> Response:
        kind = fault.kind if fault is not None else None
        if fault is not None and kind is FaultKind.ERROR:
            raise wire.fault_error(fault, request_id(request))
        if kind is FaultKind.URL_INSTEAD_OF_B64:
            raise EmulatedError(
                500, openai_body("The fault 'url_instead_of_b64' does not apply to chat.", "server_error")
            )
        stall = fault.seconds if fault is not None and kind in (FaultKind.DELAY, FaultKind.HANG) else 0.0
        for seconds in (stall, self.delay):
            if seconds > 0:
                await self._stall(request, seconds)
        answer = self._decide(wire, conversation)
        _note_answer(record, answer)
        if conversation.stream:
            pace = self.seconds_per_token if triggers.seconds_per_token is None else triggers.seconds_per_token
            return self._stream(wire, answer, conversation, fault, pace)
        if kind is FaultKind.MALFORMED_JSON:
            return Response(wire.malformed_body(), media_type="application/json")
        body = wire.empty_body(answer) if kind is FaultKind.EMPTY_DATA else wire.body(answer)
        return JSONResponse(body)

    def _decide(self, wire: ChatWire, conversation: Conversation) -> Answer:
        reply: Reply = limit_reply(decide(conversation), conversation.max_output_tokens)
        first = conversation.prior_calls() + 1
        arguments = tuple(compact(call.arguments) for call in reply.calls)
        return Answer(
            reply=reply,
            id=wire.answer_id(),
            created=int(time.time()),
            model=conversation.model.name,
            call_ids=tuple(wire.call_id(first + offset) for offset in range(len(reply.calls))),
            arguments=arguments,
            prompt_tokens=prompt_tokens(conversation),
            completion_tokens=completion_tokens(reply, list(arguments)),
        )

    def _stream(
        self, wire: ChatWire, answer: Answer, conversation: Conversation, fault: Fault | None, pace: float
    ) -> Response:
        kind = fault.kind if fault is not None else None
        frames: Iterator[Frame]
        if kind is FaultKind.MALFORMED_JSON:
            frames = iter([Frame(wire.malformed_frame())])
        elif kind is FaultKind.EMPTY_DATA:
            frames = wire.empty_frames(answer)
        else:
            frames = wire.frames(answer, conversation)
        error = fault.body if fault is not None and kind is FaultKind.STREAM_ERROR else None
        events = self._paced(wire, frames, error, pace)
        return StreamingResponse(
            events, media_type="text/event-stream; charset=utf-8", headers={"cache-control": "no-cache"}
        )

    async def _paced(
        self, wire: ChatWire, frames: Iterator[Frame], error: Mapping[str, Any] | None, pace: float
    ) -> AsyncIterator[bytes]:
        """Send frames, waiting ``pace`` before each content frame; a stream error cuts in after the first."""
        for frame in frames:
            if frame.paced and pace > 0 and not await self._pause(pace):
                return
            yield frame.data
            if error is not None and frame.paced:
                yield wire.stream_error_frame(error)
                return

    async def _pause(self, seconds: float) -> bool:
        """Sleep; False when :meth:`close` cut the pause short (the stream then just ends)."""
        with anyio.CancelScope() as scope:
            self._pauses.add(scope)
            try:
                await anyio.sleep(seconds)
            finally:
                self._pauses.discard(scope)
        return not scope.cancelled_caught

    async def _stall(self, request: Request, seconds: float) -> None:
        """Sleep before answering, but give up when the client leaves or the emulator is closed."""
        outcome = await stall(request.receive, seconds, self._pauses)
        if outcome == "closed":
            raise EmulatedError(503, openai_body("The sandbox is shutting down.", "service_unavailable_error"))
        if outcome == "disconnected":
            raise EmulatedError(499, openai_body("Client closed the request.", "invalid_request_error"))

    def _record(self, request: Request, wire: ChatWire) -> RecordedChat:
        headers = {key.lower(): value for key, value in request.headers.items()}
        for name in _SECRET_HEADERS:
            if name in headers:
                scheme, _, token = headers[name].rpartition(" ")
                headers[name] = f"{scheme} {mask_key(token)}".strip()
        record = RecordedChat(
            method=request.method,
            path=request.url.path,
            query=dict(request.query_params),
            headers=headers,
            request_id=request_id(request),
            api=wire.api,
        )
        self._log.append(record)
        return record

    # -- other routes ------------------------------------------------------------------------

    async def _list_models(self, request: Request) -> Response:
        anthropic = "anthropic-version" in request.headers
        wire: ChatWire = self._anthropic if anthropic else self._openai
        try:
            wire.authenticate(request.headers, self.accepted_keys)
        except EmulatedError as exc:
            error = wire.error(exc, request_id(request))
            return JSONResponse(error.body, status_code=error.status)
        names = sorted(self.models)
        if anthropic:
            data = [
                {"type": "model", "id": name, "display_name": name, "created_at": "2026-01-01T00:00:00Z"}
                for name in names
            ]
            first, last = (names[0], names[-1]) if names else (None, None)
            return JSONResponse({"data": data, "has_more": False, "first_id": first, "last_id": last})
        listing = [
            {"id": name, "object": "model", "created": 1767225600, "owned_by": "limner-sandbox"} for name in names
        ]
        return JSONResponse({"object": "list", "data": listing})

    async def _control_faults(self, request: Request) -> Response:
        if request.method == "DELETE":
            self.faults.clear()
            return JSONResponse({"faults": []})
        if request.method == "POST":
            try:
                data = await request.json()
                fault = fault_from_json(data)
                self.faults.add(fault, times=data.get("times", 1), path_contains=data.get("path_contains"))
            except (ValueError, TypeError, AttributeError) as exc:
                return JSONResponse({"error": f"invalid fault: {exc}"}, status_code=400)
        return JSONResponse({"faults": self.faults.describe()}, status_code=201 if request.method == "POST" else 200)

    async def _control_requests(self, request: Request) -> Response:
        if request.method == "DELETE":
            self._log.clear()
        return JSONResponse({"requests": [entry.to_json() for entry in self._log.snapshot()]})

    async def _control_settings(self, request: Request) -> Response:
        if request.method == "POST":
            try:
                data = await request.json()
                updates = {key: float(data[key]) for key in ("seconds_per_token", "delay") if key in data}
            except (ValueError, TypeError, AttributeError) as exc:
                return JSONResponse({"error": f"invalid settings: {exc}"}, status_code=400)
            for key, value in updates.items():
                setattr(self, key, value)
        return JSONResponse({"seconds_per_token": self.seconds_per_token, "delay": self.delay})

    async def _not_found(self, request: Request, exc: Exception) -> Response:
        path = route_path(request.scope)
        if isinstance(exc, HTTPException) and exc.status_code == 405:
            error = EmulatedError(
                405, openai_body(f"Invalid method for URL ({request.method} {path})", "invalid_request_error")
            )
        else:
            error = invalid_url(request.method, path)
        if "anthropic-version" in request.headers:
            error = self._anthropic.error(error, request_id(request))
        return JSONResponse(error.body, status_code=error.status)


def _triggers(conversation: Conversation) -> ChatTriggers:
    try:
        return chat_triggers(conversation.last_user_text())
    except ValueError as exc:
        raise invalid_request(str(exc), "messages", "invalid_value") from exc


def _note_request(record: RecordedChat, parsed: ParsedRequest) -> None:
    conversation = parsed.conversation
    record.json = parsed.logged_json
    record.model = conversation.model.name
    record.stream = conversation.stream
    record.roles = parsed.roles
    record.turns = [message.role for message in conversation.messages]
    record.images = list(conversation.images)
    record.tools_offered = [offer.name for offer in conversation.tools]
    record.tool_choice = parsed.tool_choice


def _note_answer(record: RecordedChat, answer: Answer) -> None:
    record.rule = answer.reply.rule
    record.text = None if answer.reply.calls else answer.reply.text
    record.finish_reason = answer.finish_reason
    record.tool_calls = [
        {"id": call_id, "name": call.name, "arguments": call.arguments}
        for call, call_id in zip(answer.reply.calls, answer.call_ids, strict=True)
    ]
