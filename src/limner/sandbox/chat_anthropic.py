"""Anthropic Messages on the wire: request checks, answers and SSE events as the real API sends them.

Checked against ``anthropic.types`` of the installed SDK (``anthropic`` 2.14). Anthropic is the other
vision style: a tool's images travel inside its ``tool_result`` block, not in a following user
message; the log records which style a request used. The checks are those an agent loop can trip:
``tool_use`` without its ``tool_result`` in the next message, ``tool_result`` for no ``tool_use``,
image data that is not what its ``media_type`` says, and (emulator-specific, since every Claude model
sees) images sent to a model that cannot see.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from limner.sandbox.chat_conversation import (
    ChatModel,
    Conversation,
    ImagePart,
    Message,
    Placement,
    ToolCall,
    ToolChoice,
    ToolOffer,
    argument_pieces,
    text_pieces,
)
from limner.sandbox.chat_wire import (
    IMAGE_MEDIA_TYPES,
    Answer,
    Frame,
    ParsedRequest,
    compact,
    decode_base64_image,
    redact,
    sse_event,
)
from limner.sandbox.faults import Fault
from limner.sandbox.openai_errors import EmulatedError, fill_request_id
from limner.sandbox.openai_wire import bearer_token

TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,128}$")
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
_STOP_REASONS = {"tool_calls": "tool_use", "stop": "end_turn", "length": "max_tokens"}
_MALFORMED = b'{"id": "msg_sandbox", "type": "message", "role": "assistant", "content": [{"type": "te'


def anthropic_body(type_: str, message: str, request_id: str | None = None) -> dict[str, Any]:
    """Anthropic's error envelope; use with ``Fault.raw_error`` for Anthropic-specific faults."""
    body: dict[str, Any] = {"type": "error", "error": {"type": type_, "message": message}}
    if request_id is not None:
        body["request_id"] = request_id
    return body


def anthropic_error(status: int, message: str, type_: str | None = None) -> EmulatedError:
    """An error answer; the type follows the status as on the real API."""
    return EmulatedError(status, anthropic_body(type_ or ERROR_TYPES.get(status, "api_error"), message))


def invalid(message: str) -> EmulatedError:
    """The 400 behind every validation failure; Anthropic names the field path in the message."""
    return anthropic_error(400, message)


@dataclass(frozen=True)
class _Where:
    """Where an image block sits: message and top-level block, the vision style, its tool call."""

    message: int
    part: int
    placement: Placement
    call_id: str | None = None


@dataclass
class _Walk:
    model: ChatModel
    messages: list[Message] = field(default_factory=list)
    images: list[ImagePart] = field(default_factory=list)
    roles: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)


class AnthropicWire:
    """The Messages API: ``POST /v1/messages`` with ``x-api-key`` and ``anthropic-version``."""

    api = "anthropic"

    def authenticate(self, headers: Mapping[str, str], accepts: set[str] | None) -> None:
        """401 for a missing or unknown key; 400 without ``anthropic-version``."""
        key = headers.get("x-api-key") or bearer_token(headers.get("authorization"))
        if not key:
            raise anthropic_error(401, "x-api-key header is required")
        if accepts is not None and key not in accepts:
            raise anthropic_error(401, "invalid x-api-key")
        if not headers.get("anthropic-version"):
            raise invalid("anthropic-version: header is required")

    def parse(self, body: bytes, models: Mapping[str, ChatModel]) -> ParsedRequest:
        """Check the request the way the real API does, then build the conversation."""
        data = _json_object(body)
        model = _model(data, models)
        if not isinstance(data.get("max_tokens"), int):
            raise invalid("max_tokens: Field required")
        raw_messages = data.get("messages")
        if not isinstance(raw_messages, list) or not raw_messages:
            raise invalid(
                "messages: Field required" if raw_messages is None else "messages: at least one message is required"
            )
        tools = _tools(data.get("tools"))
        choice = _choice(data.get("tool_choice"), tools, "tools" in data)
        walk = _Walk(model)
        system = _system_text(data.get("system"))
        if system:
            walk.messages.append(Message("system", system))
        for index, raw in enumerate(raw_messages):
            _read_message(walk, index, raw)
        if walk.pending:
            raise _unanswered(len(raw_messages) - 1, walk.pending)
        conversation = Conversation(
            model=model,
            messages=tuple(walk.messages),
            tools=tuple(tools),
            choice=choice,
            images=tuple(walk.images),
            stream=data.get("stream") is True,
            include_usage=True,
            max_output_tokens=int(data["max_tokens"]),
        )
        return ParsedRequest(conversation, redact(data), walk.roles, data.get("tool_choice"))

    def call_id(self, number: int) -> str:
        """``toolu_<n>``, counting the conversation's earlier calls, so IDs never repeat within it."""
        return f"toolu_{number}"

    def answer_id(self) -> str:
        """A fresh ``msg_`` ID, random like the real one."""
        return f"msg_{uuid.uuid4().hex[:24]}"

    def body(self, answer: Answer) -> dict[str, Any]:
        """The ``message`` object."""
        return {**_message(answer, _STOP_REASONS[answer.finish_reason]), "content": _blocks(answer)}

    def frames(self, answer: Answer, conversation: Conversation) -> Iterator[Frame]:
        """message_start, ping, one content block per text or tool call, message_delta, message_stop."""
        start = {**_message(answer, None), "content": []}
        start["usage"] = {**start["usage"], "output_tokens": 1}
        yield Frame(sse_event({"type": "message_start", "message": start}))
        yield Frame(sse_event({"type": "ping"}))
        if answer.reply.calls:
            yield from _tool_frames(answer)
        else:
            yield from _text_frames(answer.reply.text)
        delta = {"stop_reason": _STOP_REASONS[answer.finish_reason], "stop_sequence": None}
        usage = {"output_tokens": answer.completion_tokens}
        yield Frame(sse_event({"type": "message_delta", "delta": delta, "usage": usage}))
        yield Frame(sse_event({"type": "message_stop"}))

    def empty_body(self, answer: Answer) -> dict[str, Any]:
        """A message with no content blocks."""
        return {**_message(answer, "end_turn"), "content": []}

    def empty_frames(self, answer: Answer) -> Iterator[Frame]:
        """A stream that starts and stops a message with nothing in it."""
        yield Frame(sse_event({"type": "message_start", "message": {**_message(answer, None), "content": []}}))
        delta = {"stop_reason": "end_turn", "stop_sequence": None}
        yield Frame(sse_event({"type": "message_delta", "delta": delta, "usage": {"output_tokens": 0}}))
        yield Frame(sse_event({"type": "message_stop"}))

    def malformed_body(self) -> bytes:
        """Cut-off JSON."""
        return _MALFORMED

    def malformed_frame(self) -> bytes:
        """An event whose JSON is cut off."""
        return b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_sa\n\n'

    def stream_error_frame(self, error: Mapping[str, Any]) -> bytes:
        """An ``error`` event, which the SDK raises as an ``APIStatusError``."""
        message = str(error.get("message") or "Overloaded")
        return sse_event(anthropic_body("overloaded_error", message))

    def error(self, exc: EmulatedError, request_id: str) -> EmulatedError:
        """Any error in Anthropic's envelope, with the request id; OpenAI-shaped bodies are converted."""
        body = exc.body
        status = exc.status
        if body.get("type") != "error":
            raw_inner = body.get("error")
            inner: dict[str, Any] = raw_inner if isinstance(raw_inner, dict) else {}
            status = 529 if status == 503 else status
            body = anthropic_body(ERROR_TYPES.get(status, "api_error"), str(inner.get("message") or "Error"))
        return EmulatedError(status, {**body, "request_id": request_id}, exc.headers)

    def fault_error(self, fault: Fault, request_id: str) -> EmulatedError:
        """The fault's error, converted to Anthropic's envelope unless it already is in it."""
        exc = EmulatedError(fault.status, fill_request_id(fault.body or {}, request_id), fault.headers)
        return self.error(exc, request_id)

    def headers(self, request_id: str, started: float) -> dict[str, str]:
        """Anthropic's ``request-id`` header (the SDK reads it into ``_request_id``)."""
        return {"request-id": request_id}


def _message(answer: Answer, stop_reason: str | None) -> dict[str, Any]:
    return {
        "id": answer.id,
        "type": "message",
        "role": "assistant",
        "model": answer.model,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {
            "input_tokens": answer.prompt_tokens,
            "output_tokens": answer.completion_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "service_tier": "standard",
        },
    }


def _blocks(answer: Answer) -> list[dict[str, Any]]:
    if not answer.reply.calls:
        return [{"type": "text", "text": answer.reply.text}]
    return [
        {"type": "tool_use", "id": call_id, "name": call.name, "input": call.arguments}
        for call, call_id in zip(answer.reply.calls, answer.call_ids, strict=True)
    ]


def _text_frames(text: str) -> Iterator[Frame]:
    yield Frame(sse_event({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}))
    for piece in text_pieces(text):
        delta = {"type": "text_delta", "text": piece}
        yield Frame(sse_event({"type": "content_block_delta", "index": 0, "delta": delta}), paced=True)
    yield Frame(sse_event({"type": "content_block_stop", "index": 0}))


def _tool_frames(answer: Answer) -> Iterator[Frame]:
    calls = zip(answer.reply.calls, answer.call_ids, answer.arguments, strict=True)
    for index, (call, call_id, arguments) in enumerate(calls):
        block = {"type": "tool_use", "id": call_id, "name": call.name, "input": {}}
        yield Frame(sse_event({"type": "content_block_start", "index": index, "content_block": block}), paced=True)
        for piece in ["", *argument_pieces(arguments)]:
            delta = {"type": "input_json_delta", "partial_json": piece}
            yield Frame(sse_event({"type": "content_block_delta", "index": index, "delta": delta}), paced=True)
        yield Frame(sse_event({"type": "content_block_stop", "index": index}))


# -- request checks ------------------------------------------------------------------------------


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise invalid("There was an error parsing the body of your request: invalid JSON.") from exc
    if not isinstance(data, dict):
        raise invalid("Input should be an object")
    return data


def _model(data: Mapping[str, Any], models: Mapping[str, ChatModel]) -> ChatModel:
    name = data.get("model")
    if not isinstance(name, str) or not name:
        raise invalid("model: Field required")
    model = models.get(name)
    if model is None:
        raise anthropic_error(404, f"model: {name}")
    return model


def _system_text(system: Any) -> str:
    if isinstance(system, str):
        return system
    if isinstance(system, list):
        return "\n".join(str(block.get("text") or "") for block in system if isinstance(block, dict))
    return ""


def _tools(raw: Any) -> list[ToolOffer]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise invalid("tools: Input should be a valid list")
    offers: list[ToolOffer] = []
    for index, tool in enumerate(raw):
        if not isinstance(tool, dict):
            raise invalid(f"tools.{index}: Input should be a valid dictionary")
        if tool.get("type") not in (None, "custom"):
            continue  # server tools (web search, code execution) run at Anthropic, never as our calls
        name = tool.get("name")
        if not isinstance(name, str) or not TOOL_NAME.match(name):
            raise invalid(f"tools.{index}.custom.name: String should match pattern '^[a-zA-Z0-9_-]{{1,128}}$'")
        schema = tool.get("input_schema")
        if not isinstance(schema, dict):
            raise invalid(f"tools.{index}.custom.input_schema: Field required")
        offers.append(ToolOffer(name, str(tool.get("description") or ""), schema))
    return offers


def _choice(raw: Any, tools: list[ToolOffer], has_tools: bool) -> ToolChoice:
    if raw is None:
        return ToolChoice("auto" if tools else "none")
    if not has_tools:
        raise invalid("tool_choice may only be specified while providing tools.")
    kind = raw.get("type") if isinstance(raw, dict) else None
    parallel = not (isinstance(raw, dict) and raw.get("disable_parallel_tool_use") is True)
    if kind == "auto":
        return ToolChoice("auto", None, parallel)
    if kind == "any":
        return ToolChoice("required", None, parallel)
    if kind == "none":
        return ToolChoice("none", None, parallel)
    if kind == "tool":
        name = raw.get("name")
        if name not in {tool.name for tool in tools}:
            raise invalid(f"tool_choice.tool.name: Tool '{name}' not found in provided tools")
        return ToolChoice("required", (str(name),), parallel)
    raise invalid("tool_choice: Input tag does not match any of the expected tags: 'auto', 'any', 'tool', 'none'")


def _unanswered(index: int, ids: list[str]) -> EmulatedError:
    return invalid(
        f"messages.{index}: `tool_use` ids were found without `tool_result` blocks immediately after: "
        f"{', '.join(ids)}. Each `tool_use` block must have a corresponding `tool_result` block in the next message."
    )


def _read_message(walk: _Walk, index: int, raw: Any) -> None:
    role = raw.get("role") if isinstance(raw, dict) else None
    if role not in ("user", "assistant"):
        raise invalid(f"messages.{index}.role: Input should be 'user' or 'assistant'")
    walk.roles.append(str(role))
    content = raw.get("content")
    blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
    if not isinstance(blocks, list):
        raise invalid(f"messages.{index}.content: Input should be a valid list")
    if role == "assistant":
        if walk.pending:
            raise _unanswered(index - 1, walk.pending)
        _assistant(walk, blocks)
    else:
        _user(walk, index, blocks)


def _assistant(walk: _Walk, blocks: list[Any]) -> None:
    texts = [str(b.get("text") or "") for b in blocks if isinstance(b, dict) and b.get("type") == "text"]
    calls = tuple(
        ToolCall(str(b.get("id")), str(b.get("name")), compact(b.get("input") or {}))
        for b in blocks
        if isinstance(b, dict) and b.get("type") == "tool_use"
    )
    walk.pending = [call.id for call in calls]
    walk.messages.append(Message("assistant", "\n".join(texts), calls=calls))


def _user(walk: _Walk, index: int, blocks: list[Any]) -> None:
    expected = set(walk.pending)
    has_results = any(isinstance(b, dict) and b.get("type") == "tool_result" for b in blocks)
    texts: list[str] = []
    images = 0
    for position, block in enumerate(blocks):
        kind = block.get("type") if isinstance(block, dict) else None
        path = f"messages.{index}.content.{position}"
        if kind == "tool_result":
            walk.messages.append(_tool_result(walk, path, block, _Where(index, position, "tool_result"), expected))
        elif kind == "text":
            texts.append(str(block.get("text") or ""))
        elif kind == "image":
            placement: Placement = "user_after_tool" if has_results else "user"
            walk.images.append(_image(walk, path, block, _Where(index, position, placement)))
            images += 1
    if walk.pending:
        raise _unanswered(index - 1, walk.pending)
    if texts or images:
        walk.messages.append(Message("user", "\n".join(texts), images))


def _tool_result(walk: _Walk, path: str, block: Mapping[str, Any], where: _Where, expected: set[str]) -> Message:
    call_id = str(block.get("tool_use_id") or "")
    if call_id not in expected:
        raise invalid(
            f"{path}: unexpected `tool_use_id` found in `tool_result` blocks: {call_id}. Each `tool_result` block "
            "must have a corresponding `tool_use` block in the previous message."
        )
    walk.pending = [pending for pending in walk.pending if pending != call_id]
    content = block.get("content")
    parts = [{"type": "text", "text": content}] if isinstance(content, str) else content or []
    texts: list[str] = []
    images = 0
    for inner, part in enumerate(parts):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            texts.append(str(part.get("text") or ""))
        elif kind == "image":
            placed = _Where(where.message, where.part, "tool_result", call_id)
            walk.images.append(_image(walk, f"{path}.content.{inner}", part, placed))
            images += 1
    return Message("tool", "\n".join(texts), images, call_id, block.get("is_error") is True)


def _image(walk: _Walk, path: str, block: Mapping[str, Any], where: _Where) -> ImagePart:
    if not walk.model.supports_vision:
        raise invalid(f"{path}: the model {walk.model.name} does not support image input.")
    raw_source = block.get("source")
    source: dict[str, Any] = raw_source if isinstance(raw_source, dict) else {}
    if source.get("type") == "url":
        url = str(source.get("url"))
        return ImagePart(where.message, where.part, "user", where.placement, None, 0, None, url, where.call_id)
    media_type = source.get("media_type")
    if media_type not in IMAGE_MEDIA_TYPES:
        raise invalid(
            f"{path}.image.source.base64.media_type: Input should be 'image/jpeg', 'image/png', 'image/gif' or "
            "'image/webp'"
        )
    decoded = decode_base64_image(str(source.get("data") or ""))
    if decoded is None:
        raise invalid(f"{path}.image.source.base64.data: The image data is not valid base64.")
    if decoded.media_type != media_type:
        raise invalid(f"{path}.image.source.base64: Image does not match the provided media type {media_type}")
    return ImagePart(
        where.message,
        where.part,
        "user",
        where.placement,
        media_type,
        decoded.size,
        decoded.sha256,
        None,
        where.call_id,
    )
