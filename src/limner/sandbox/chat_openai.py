"""OpenAI Chat Completions on the wire: request checks, answers and SSE chunks as the real API sends them.

Checked against ``openai.types.chat`` of the installed SDK. The checks are the ones an agent loop can
get wrong and that the real API rejects with a 400: images in a tool message (they must follow in a
user message), image parts for a model that cannot see, tool messages that answer no tool call, tool
calls left unanswered, tool names outside ``^[a-zA-Z0-9_-]{1,64}$``, ``tool_choice`` without tools.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from limner.sandbox.chat_conversation import (
    ChatModel,
    ChoiceMode,
    Conversation,
    ImagePart,
    Message,
    Placement,
    Role,
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
    decode_base64_image,
    redact,
    split_data_url,
    sse_data,
)
from limner.sandbox.faults import Fault
from limner.sandbox.openai_errors import (
    INVALID_JSON_MESSAGE,
    EmulatedError,
    fill_request_id,
    invalid_api_key,
    invalid_choice,
    invalid_request,
    missing_api_key,
    missing_parameter,
    openai_body,
)
from limner.sandbox.openai_wire import bearer_token

FINGERPRINT = "fp_sandbox01"
TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]+$")
ROLES = ("system", "assistant", "user", "function", "tool", "developer")
_PART_TYPES: dict[str, tuple[str, ...]] = {
    "user": ("text", "image_url", "input_audio", "file"),
    "assistant": ("text", "refusal"),
    "system": ("text",),
    "developer": ("text",),
    "tool": ("text",),
    "function": ("text",),
}
UNSUPPORTED_IMAGE = (
    "You uploaded an unsupported image. Please make sure your image is below 20 MB in size and is of one "
    "the following formats: ['png', 'jpeg', 'gif', 'webp']."
)
_MALFORMED = b'{"id": "chatcmpl-sandbox", "object": "chat.completion", "choices": [{"index": 0, "message": {"ro'


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise invalid_request(INVALID_JSON_MESSAGE) from exc
    if not isinstance(data, dict):
        raise invalid_request(INVALID_JSON_MESSAGE)
    return data


@dataclass
class _Walk:
    """State while reading the messages: what was built, and which tool calls await answers."""

    model: ChatModel
    messages: list[Message] = field(default_factory=list)
    images: list[ImagePart] = field(default_factory=list)
    roles: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    pending_from: int = 0
    answered: set[str] = field(default_factory=set)


class OpenAIChatWire:
    """The Chat Completions API: ``POST /v1/chat/completions`` with ``Authorization: Bearer``."""

    api = "openai"

    def authenticate(self, headers: Mapping[str, str], accepts: set[str] | None) -> None:
        """401 without a bearer token, or with one the emulator does not accept."""
        token = bearer_token(headers.get("authorization"))
        if not token:
            raise missing_api_key()
        if accepts is not None and token not in accepts:
            raise invalid_api_key(token)

    def parse(self, body: bytes, models: Mapping[str, ChatModel]) -> ParsedRequest:
        """Check the request the way the real API does, then build the conversation."""
        data = _json_object(body)
        model = _model(data, models)
        raw_messages = _message_list(data)
        tools = _tools(data.get("tools"))
        choice = _choice(data, tools)
        stream = data.get("stream") is True
        if data.get("stream_options") is not None and not stream:
            raise invalid_request(
                "The 'stream_options' parameter is only allowed when 'stream' is enabled.", "stream_options"
            )
        if data.get("n") not in (None, 1):
            raise invalid_request("The sandbox chat emulator answers with one choice; 'n' must be 1.", "n")
        walk = _Walk(model)
        for index, raw in enumerate(raw_messages):
            _read_message(walk, index, raw)
        if walk.pending:
            _unanswered(walk)
        conversation = Conversation(
            model=model,
            messages=tuple(walk.messages),
            tools=tuple(tools),
            choice=choice,
            images=tuple(walk.images),
            stream=stream,
            include_usage=stream and bool((data.get("stream_options") or {}).get("include_usage")),
            max_output_tokens=_max_tokens(data),
        )
        return ParsedRequest(conversation, redact(data), walk.roles, data.get("tool_choice"))

    def call_id(self, number: int) -> str:
        """``call_<n>``, counting the conversation's earlier calls, so IDs never repeat within it."""
        return f"call_{number}"

    def answer_id(self) -> str:
        """A fresh ``chatcmpl-`` ID, random like the real one."""
        return f"chatcmpl-{uuid.uuid4().hex[:29]}"

    def body(self, answer: Answer) -> dict[str, Any]:
        """The ``chat.completion`` object."""
        message: dict[str, Any] = {
            "role": "assistant",
            "content": None if answer.reply.calls else answer.reply.text,
            "refusal": None,
            "annotations": [],
        }
        if answer.reply.calls:
            message["tool_calls"] = [
                {"id": call_id, "type": "function", "function": {"name": call.name, "arguments": arguments}}
                for call, call_id, arguments in zip(answer.reply.calls, answer.call_ids, answer.arguments, strict=True)
            ]
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": answer.finish_reason}
        return {**_envelope(answer, "chat.completion"), "choices": [choice], "usage": _usage(answer)}

    def frames(self, answer: Answer, conversation: Conversation) -> Iterator[Frame]:
        """Role first, then word-sized content deltas or tool calls with their arguments in pieces."""
        usage_key = {"usage": None} if conversation.include_usage else {}
        head = _envelope(answer, "chat.completion.chunk")

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return sse_data({**head, "choices": [choice], **usage_key})

        if answer.reply.calls:
            yield Frame(chunk({"role": "assistant", "content": None, "refusal": None}))
            yield from _call_frames(answer, chunk)
        else:
            yield Frame(chunk({"role": "assistant", "content": "", "refusal": None}))
            for piece in text_pieces(answer.reply.text):
                yield Frame(chunk({"content": piece}), paced=True)
        yield Frame(chunk({}, answer.finish_reason))
        if conversation.include_usage:
            yield Frame(sse_data({**head, "choices": [], "usage": _usage(answer)}))
        yield Frame(sse_data("[DONE]"))

    def empty_body(self, answer: Answer) -> dict[str, Any]:
        """``choices: []``: a 2xx without the expected shape."""
        return {**_envelope(answer, "chat.completion"), "choices": [], "usage": _usage(answer)}

    def empty_frames(self, answer: Answer) -> Iterator[Frame]:
        """Nothing but ``[DONE]``."""
        yield Frame(sse_data("[DONE]"))

    def malformed_body(self) -> bytes:
        """Cut-off JSON."""
        return _MALFORMED

    def malformed_frame(self) -> bytes:
        """A chunk whose JSON is cut off."""
        return b'data: {"id":"chatcmpl-sandbox","object":"chat.completion.chu\n\n'

    def stream_error_frame(self, error: Mapping[str, Any]) -> bytes:
        """A ``data:`` line with a top-level ``error``, which the SDK raises as ``APIError``."""
        return sse_data({"error": dict(error)})

    def error(self, exc: EmulatedError, request_id: str) -> EmulatedError:
        """OpenAI errors are already in OpenAI's envelope."""
        return exc

    def fault_error(self, fault: Fault, request_id: str) -> EmulatedError:
        """The fault's body as given, with the request id filled in."""
        return EmulatedError(fault.status, fill_request_id(fault.body or {}, request_id), fault.headers)

    def headers(self, request_id: str, started: float) -> dict[str, str]:
        """The headers the real API adds (``x-request-id`` comes from the middleware)."""
        elapsed = max(1, round((time.monotonic() - started) * 1000))
        return {"openai-processing-ms": str(elapsed), "openai-version": "2020-10-01"}


def _envelope(answer: Answer, kind: str) -> dict[str, Any]:
    return {
        "id": answer.id,
        "object": kind,
        "created": answer.created,
        "model": answer.model,
        "service_tier": "default",
        "system_fingerprint": FINGERPRINT,
    }


def _usage(answer: Answer) -> dict[str, Any]:
    return {
        "prompt_tokens": answer.prompt_tokens,
        "completion_tokens": answer.completion_tokens,
        "total_tokens": answer.prompt_tokens + answer.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _call_frames(answer: Answer, chunk: Any) -> Iterator[Frame]:
    calls = zip(answer.reply.calls, answer.call_ids, answer.arguments, strict=True)
    for index, (call, call_id, arguments) in enumerate(calls):
        header = {"index": index, "id": call_id, "type": "function", "function": {"name": call.name, "arguments": ""}}
        yield Frame(chunk({"tool_calls": [header]}), paced=True)
        for piece in argument_pieces(arguments):
            yield Frame(chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]}), paced=True)


# -- request checks ------------------------------------------------------------------------------


def _model(data: Mapping[str, Any], models: Mapping[str, ChatModel]) -> ChatModel:
    name = data.get("model")
    if not isinstance(name, str) or not name:
        raise invalid_request("you must provide a model parameter")
    model = models.get(name)
    if model is None:
        message = f"The model `{name}` does not exist or you do not have access to it."
        raise EmulatedError(404, openai_body(message, "invalid_request_error", None, "model_not_found"))
    return model


def _message_list(data: Mapping[str, Any]) -> list[Any]:
    messages = data.get("messages")
    if messages is None:
        raise missing_parameter("messages")
    if not isinstance(messages, list):
        raise invalid_request("Invalid type for 'messages': expected an array.", "messages", "invalid_type")
    if not messages:
        raise invalid_request(
            "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an empty array instead.",
            "messages",
            "empty_array",
        )
    return messages


def _max_tokens(data: Mapping[str, Any]) -> int | None:
    for key in ("max_completion_tokens", "max_tokens"):
        value = data.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def _tools(raw: Any) -> list[ToolOffer]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise invalid_request("Invalid type for 'tools': expected an array.", "tools", "invalid_type")
    if not raw:
        raise invalid_request(
            "Invalid 'tools': empty array. Expected an array with minimum length 1, but got an empty array instead.",
            "tools",
            "empty_array",
        )
    return [offer for index, item in enumerate(raw) if (offer := _tool(index, item)) is not None]


def _tool(index: int, item: Any) -> ToolOffer | None:
    if not isinstance(item, dict) or item.get("type") not in ("function", "custom"):
        got = item.get("type") if isinstance(item, dict) else item
        raise invalid_choice(f"tools[{index}].type", got, ["function", "custom"])
    if item["type"] == "custom":
        return None  # free-form custom tools take text, not JSON; the rules never call them
    function = item.get("function")
    if not isinstance(function, dict):
        raise missing_parameter(f"tools[{index}].function")
    name = function.get("name")
    param = f"tools[{index}].function.name"
    if not isinstance(name, str) or not name:
        raise missing_parameter(param)
    if len(name) > 64:
        raise invalid_request(
            f"Invalid '{param}': string too long. Expected a string with maximum length 64, but got a string "
            f"with length {len(name)} instead.",
            param,
            "string_above_max_length",
        )
    if not TOOL_NAME.match(name):
        raise invalid_request(
            f"Invalid '{param}': string does not match pattern. Expected a string that matches the pattern "
            "'^[a-zA-Z0-9_-]+$'.",
            param,
            "invalid_value",
        )
    schema = function.get("parameters") or {"type": "object", "properties": {}}
    if not isinstance(schema, dict) or schema.get("type") != "object":
        got = schema.get("type") if isinstance(schema, dict) else type(schema).__name__
        raise invalid_request(
            f"Invalid schema for function '{name}': schema must be a JSON Schema of 'type: \"object\"', got "
            f"'type: \"{got}\"'.",
            f"tools[{index}].function.parameters",
            "invalid_function_parameters",
        )
    return ToolOffer(name, str(function.get("description") or ""), schema)


def _choice(data: Mapping[str, Any], tools: list[ToolOffer]) -> ToolChoice:
    raw = data.get("tool_choice")
    parallel = data.get("parallel_tool_calls")
    for key, value in (("tool_choice", raw), ("parallel_tool_calls", parallel)):
        if value is not None and "tools" not in data:
            raise invalid_request(
                f"Invalid value for '{key}': '{key}' is only allowed when 'tools' are specified.", key
            )
    allow_parallel = parallel is not False
    if raw is None or raw == "auto":
        return ToolChoice("auto" if tools else "none", None, allow_parallel)
    if raw == "none":
        return ToolChoice("none", None, allow_parallel)
    if raw == "required":
        return ToolChoice("required", None, allow_parallel)
    if isinstance(raw, dict) and raw.get("type") == "function":
        name = (raw.get("function") or {}).get("name")
        _check_named(name, tools)
        return ToolChoice("required", (str(name),), allow_parallel)
    if isinstance(raw, dict) and raw.get("type") == "allowed_tools":
        allowed = raw.get("allowed_tools") or {}
        names = tuple(str((tool.get("function") or {}).get("name")) for tool in allowed.get("tools") or [])
        mode: ChoiceMode = "required" if allowed.get("mode") == "required" else "auto"
        return ToolChoice(mode, names, allow_parallel)
    got = raw.get("type") if isinstance(raw, dict) else raw
    raise invalid_choice("tool_choice", got, ["none", "auto", "required"])


def _check_named(name: Any, tools: list[ToolOffer]) -> None:
    if name not in {tool.name for tool in tools}:
        raise invalid_request(
            f"Invalid value for 'tool_choice': no function named '{name}' was specified in the 'tools' parameter.",
            "tool_choice",
            "invalid_value",
        )


def _read_message(walk: _Walk, index: int, raw: Any) -> None:
    if not isinstance(raw, dict):
        raise invalid_request(f"Invalid type for 'messages[{index}]': expected an object.", f"messages[{index}]")
    role = raw.get("role")
    if role not in ROLES:
        raise invalid_choice(f"messages[{index}].role", role, list(ROLES))
    if role not in ("tool", "function") and walk.pending:
        _unanswered(walk)
    walk.roles.append(str(role))
    text, images = _content(walk, index, str(role), raw.get("content"))
    if role in ("system", "developer"):
        walk.messages.append(Message("system", text))
    elif role == "user":
        walk.messages.append(Message("user", text, images))
    elif role == "assistant":
        walk.messages.append(_assistant(walk, index, raw, text))
    else:
        walk.messages.append(_tool_message(walk, index, raw, text))


def _assistant(walk: _Walk, index: int, raw: Mapping[str, Any], text: str) -> Message:
    calls: list[ToolCall] = []
    for call in raw.get("tool_calls") or []:
        function = call.get("function") or {} if isinstance(call, dict) else {}
        calls.append(ToolCall(str(call.get("id")), str(function.get("name")), str(function.get("arguments") or "")))
    walk.pending = [call.id for call in calls]
    walk.pending_from = index
    walk.answered = set()
    return Message("assistant", text, calls=tuple(calls))


def _tool_message(walk: _Walk, index: int, raw: Mapping[str, Any], text: str) -> Message:
    role: Role = "tool"
    call_id = raw.get("tool_call_id")
    if raw.get("role") == "tool":
        if not isinstance(call_id, str) or not call_id:
            raise invalid_request(
                "Missing parameter 'tool_call_id': messages with role 'tool' must have a 'tool_call_id'.",
                f"messages.[{index}].tool_call_id",
            )
        if call_id not in walk.pending:
            raise invalid_request(
                "Invalid parameter: messages with role 'tool' must be a response to a preceeding message with "
                "'tool_calls'.",
                f"messages.[{index}].role",
            )
        walk.answered.add(call_id)
        if walk.answered.issuperset(walk.pending):
            walk.pending = []
    return Message(role, text, tool_call_id=call_id if isinstance(call_id, str) else None)


def _unanswered(walk: _Walk) -> None:
    missing = [call_id for call_id in walk.pending if call_id not in walk.answered]
    raise invalid_request(
        "An assistant message with 'tool_calls' must be followed by tool messages responding to each "
        f"'tool_call_id'. The following tool_call_ids did not have response messages: {', '.join(missing)}",
        f"messages.[{walk.pending_from}].role",
    )


def _content(walk: _Walk, index: int, role: str, content: Any) -> tuple[str, int]:
    if content is None:
        if role == "assistant":
            return "", 0
        raise invalid_request(
            "Invalid value for 'content': expected a string, got null.", f"messages.[{index}].content"
        )
    if isinstance(content, str):
        return content, 0
    if not isinstance(content, list):
        raise invalid_request(
            f"Invalid type for 'messages[{index}].content': expected one of a string or array of objects.",
            f"messages[{index}].content",
            "invalid_type",
        )
    texts: list[str] = []
    images = 0
    for part_index, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in _PART_TYPES[role]:
            raise invalid_choice(f"messages[{index}].content[{part_index}].type", kind, list(_PART_TYPES[role]))
        if kind in ("text", "refusal"):
            texts.append(str(part.get(kind) or ""))
        elif kind == "image_url":
            walk.images.append(_image(walk, index, part_index, part))
            images += 1
    return "\n".join(texts), images


def _image(walk: _Walk, index: int, part_index: int, part: Mapping[str, Any]) -> ImagePart:
    if not walk.model.supports_vision:
        raise invalid_request(
            "Invalid content type. image_url is only supported by certain models.",
            f"messages.[{index}].content.[{part_index}].type",
        )
    url = str((part.get("image_url") or {}).get("url") or "")
    after_tool = bool(walk.roles[:-1]) and walk.roles[-2] == "tool"
    placement: Placement = "user_after_tool" if after_tool else "user"
    if url.startswith(("http://", "https://")):
        return ImagePart(index, part_index, "user", placement, None, 0, None, url=url)
    split = split_data_url(url)
    param = f"messages[{index}].content[{part_index}].image_url.url"
    if split is None or split[0] not in IMAGE_MEDIA_TYPES:
        got = split[0] if split else url[:30]
        raise invalid_request(
            f"Invalid '{param}'. Expected a base64-encoded data URL with an image MIME type (e.g. "
            f"'data:image/png;base64,aW1nIGJ5dGVzIGhlcmU='), but got unsupported MIME type '{got}'.",
            param,
            "invalid_value",
        )
    decoded = decode_base64_image(split[1])
    if decoded is None or decoded.media_type is None:
        raise invalid_request(UNSUPPORTED_IMAGE, None, "invalid_image_format")
    return ImagePart(index, part_index, "user", placement, decoded.media_type, decoded.size, decoded.sha256)
