"""What the chat emulator needs from each wire format, and the helpers both formats share.

:class:`ChatWire` is implemented once for OpenAI Chat Completions and once for Anthropic Messages;
the emulator drives either the same way (authenticate, parse in a worker thread, decide, render), so
faults, pacing and the request log behave identically on both. Image bytes are checked here by their
magic numbers, as the real services do, and only their size and hash are kept.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from limner.sandbox.chat_conversation import ChatModel, Conversation, Reply
from limner.sandbox.faults import Fault
from limner.sandbox.openai_errors import EmulatedError

IMAGE_MEDIA_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp")
_REDACT_OVER = 256


@dataclass(frozen=True)
class Frame:
    """One SSE frame; ``paced`` frames carry content and wait ``seconds_per_token`` before going out."""

    data: bytes
    paced: bool = False


@dataclass(frozen=True)
class ParsedRequest:
    """A request understood: the neutral conversation plus what the log keeps of the wire form."""

    conversation: Conversation
    logged_json: Any
    roles: list[str]
    tool_choice: Any


@dataclass(frozen=True)
class Answer:
    """A decided reply with everything needed to render it identically on every path."""

    reply: Reply
    id: str
    created: int
    model: str
    call_ids: tuple[str, ...]
    arguments: tuple[str, ...]
    prompt_tokens: int
    completion_tokens: int

    @property
    def finish_reason(self) -> str:
        """OpenAI's finish reason; Anthropic maps it to its stop reason."""
        if self.reply.calls:
            return "tool_calls"
        return "length" if self.reply.truncated else "stop"


class ChatWire(Protocol):
    """One chat API's wire format: authentication, parsing, answers, errors."""

    api: str

    def authenticate(self, headers: Mapping[str, str], accepts: set[str] | None) -> None:
        """Raise the API's 401 (or 400 for a missing required header)."""
        ...

    def parse(self, body: bytes, models: Mapping[str, ChatModel]) -> ParsedRequest:
        """Validate like the real API and build the conversation; CPU-bound, runs in a thread."""
        ...

    def call_id(self, number: int) -> str:
        """A deterministic tool call ID: the same conversation gets the same IDs."""
        ...

    def answer_id(self) -> str:
        """A fresh response ID (``chatcmpl-...`` or ``msg_...``)."""
        ...

    def body(self, answer: Answer) -> dict[str, Any]:
        """The non-streaming answer."""
        ...

    def frames(self, answer: Answer, conversation: Conversation) -> Iterator[Frame]:
        """The streaming answer, frame by frame."""
        ...

    def empty_body(self, answer: Answer) -> dict[str, Any]:
        """A 200 without the expected content (the ``empty_data`` fault)."""
        ...

    def empty_frames(self, answer: Answer) -> Iterator[Frame]:
        """A stream without content (the ``empty_data`` fault)."""
        ...

    def malformed_body(self) -> bytes:
        """A 200 whose JSON is cut off."""
        ...

    def malformed_frame(self) -> bytes:
        """A stream frame whose JSON is cut off."""
        ...

    def stream_error_frame(self, error: Mapping[str, Any]) -> bytes:
        """A mid-stream error event."""
        ...

    def error(self, exc: EmulatedError, request_id: str) -> EmulatedError:
        """``exc`` in this API's envelope (faults and shared errors are built in OpenAI's)."""
        ...

    def fault_error(self, fault: Fault, request_id: str) -> EmulatedError:
        """The error a queued or triggered fault stands for."""
        ...

    def headers(self, request_id: str, started: float) -> dict[str, str]:
        """Headers every answer of this API carries."""
        ...


@dataclass(frozen=True)
class DecodedImage:
    """An image's summary: what the bytes really are, how many, their hash."""

    media_type: str | None
    size: int
    sha256: str


def sniff_image(data: bytes) -> str | None:
    """The media type the bytes really have, among the four the chat APIs accept."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def decode_base64_image(text: str) -> DecodedImage | None:
    """Decode base64 image data; None when it is not base64 at all."""
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
    return DecodedImage(sniff_image(data), len(data), hashlib.sha256(data).hexdigest())


def split_data_url(url: str) -> tuple[str, str] | None:
    """``data:<type>;base64,<data>`` → (type, data); None for anything else."""
    if not url.startswith("data:"):
        return None
    header, comma, payload = url[5:].partition(",")
    if not comma or not header.endswith(";base64"):
        return None
    return header[: -len(";base64")].lower(), payload


def redact(value: Any) -> Any:
    """The request as logged: long data URLs and base64 image data shortened to their length."""
    if isinstance(value, str) and len(value) > _REDACT_OVER and (value.startswith("data:") or " " not in value):
        return f"{value[:40]}...<{len(value)} chars>"
    if isinstance(value, dict):
        return {key: redact(item) for key, item in value.items()}
    if isinstance(value, list):
        return [redact(item) for item in value]
    return value


def compact(value: Any) -> str:
    """JSON as the real APIs write arguments: no spaces, non-ASCII kept."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def sse_data(payload: Mapping[str, Any] | str) -> bytes:
    """An SSE frame with only a ``data:`` line (OpenAI's style)."""
    text = payload if isinstance(payload, str) else compact(payload)
    return f"data: {text}\n\n".encode()


def sse_event(payload: Mapping[str, Any]) -> bytes:
    """An SSE frame whose ``event:`` line repeats the payload's type (Anthropic's style)."""
    return f"event: {payload['type']}\ndata: {compact(payload)}\n\n".encode()
