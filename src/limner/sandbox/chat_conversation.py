"""The chat emulator's neutral view of a request, shared by its OpenAI and Anthropic wire formats.

Both wire modules turn a request into a :class:`Conversation`; the rules in
:mod:`limner.sandbox.chat_rules` read only this view and answer with a :class:`Reply`, which the wire
modules render again. Keeping the rules away from either wire format is what lets one set of rules
serve both APIs identically. :class:`RecordedChat` is the request log entry tests assert on.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from limner.sandbox.faults import Fault, trigger_fault
from limner.sandbox.recorder import RecordedRequest

Role = Literal["system", "user", "assistant", "tool"]
Placement = Literal["user", "user_after_tool", "tool_result"]
ChoiceMode = Literal["auto", "none", "required"]

IMAGE_ID = re.compile(r"(?<![0-9A-Za-z_])img_[0-9A-HJKMNP-TV-Z]{26}(?![0-9A-Za-z])")
CHAT_TRIGGER = re.compile(r"\[\[sandbox:chat_([a-z_]+)(?:=([^\]]*))?\]\]")
IMAGE_TOKENS = 85  # what a low-detail image costs on the real APIs; only for plausible usage numbers


@dataclass(frozen=True)
class ChatModel:
    """A model name the emulator serves, and what it can take as input."""

    name: str
    supports_vision: bool
    description: str = ""


DEFAULT_MODELS: tuple[ChatModel, ...] = (
    ChatModel("sandbox-vision", True, "Sees images: image parts, and images inside Anthropic tool results."),
    ChatModel("sandbox-text", False, "Cannot see: any image part is a 400, as from a text-only model."),
)


@dataclass(frozen=True)
class ImagePart:
    """Where one image sat in the request (for the log); its bytes are summarised, never kept."""

    message: int
    part: int
    role: str
    placement: Placement
    media_type: str | None
    size: int
    sha256: str | None
    url: str | None = None
    tool_call_id: str | None = None


@dataclass(frozen=True)
class ToolCall:
    """A tool call the assistant made earlier in the conversation."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class Message:
    """One turn in neutral form; an Anthropic ``tool_result`` block becomes its own ``tool`` message."""

    role: Role
    text: str
    images: int = 0
    tool_call_id: str | None = None
    is_error: bool = False
    calls: tuple[ToolCall, ...] = ()


@dataclass(frozen=True)
class ToolOffer:
    """A callable tool offered in the request, with its JSON schema."""

    name: str
    description: str
    schema: dict[str, Any] = field(compare=False, hash=False)


@dataclass(frozen=True)
class ToolChoice:
    """``tool_choice`` and parallel-call settings of either API, reduced to what the rules need."""

    mode: ChoiceMode = "auto"
    names: tuple[str, ...] | None = None
    parallel: bool = True


@dataclass(frozen=True)
class Conversation:
    """Everything the rules and the renderers need from one request."""

    model: ChatModel
    messages: tuple[Message, ...]
    tools: tuple[ToolOffer, ...]
    choice: ToolChoice
    images: tuple[ImagePart, ...]
    stream: bool
    include_usage: bool = False
    max_output_tokens: int | None = None

    def prior_calls(self) -> int:
        """How many tool calls the conversation already holds; new call IDs continue from there."""
        return sum(len(message.calls) for message in self.messages)

    def last_user_text(self) -> str:
        """The newest user text, where prompt triggers are looked for."""
        for message in reversed(self.messages):
            if message.role == "user" and message.text.strip():
                return message.text
        return ""

    def call_names(self) -> dict[str, str]:
        """Tool call ID → tool name, so a tool result can be named in the answer."""
        return {call.id: call.name for message in self.messages for call in message.calls}


@dataclass(frozen=True)
class PlannedCall:
    """A tool call the emulator decided to make; arguments already fit the tool's schema."""

    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class Reply:
    """The emulator's answer: text, or tool calls; ``rule`` names the rule that chose it."""

    rule: str
    text: str = ""
    calls: tuple[PlannedCall, ...] = ()
    truncated: bool = False


@dataclass
class RecordedChat(RecordedRequest):
    """A chat request as received, with the summary tests assert on.

    ``roles`` are the wire roles in order; ``turns`` the neutral ones (an Anthropic tool result
    counts as a ``tool`` turn). ``images`` says where each image part was: in a user message
    (``user``), in a user message right after tool results (``user_after_tool``, OpenAI's vision
    handoff) or inside a tool result (``tool_result``, Anthropic's). ``tool_calls`` are the calls
    this answer made.
    """

    api: str = ""
    model: str | None = None
    stream: bool = False
    roles: list[str] = field(default_factory=list)
    turns: list[str] = field(default_factory=list)
    images: list[ImagePart] = field(default_factory=list)
    tools_offered: list[str] = field(default_factory=list)
    tool_choice: Any = None
    rule: str | None = None
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    text: str | None = None
    finish_reason: str | None = None

    @property
    def image_placements(self) -> list[str]:
        """Just the placements, the usual thing to assert on."""
        return [image.placement for image in self.images]


def image_ids(text: str) -> list[str]:
    """The image IDs in ``text``, in order of appearance, without repeats."""
    return list(dict.fromkeys(IMAGE_ID.findall(text)))


def without_chat_triggers(text: str) -> str:
    """``text`` without ``[[sandbox:chat_...]]`` markers, so they never reach an image tool's prompt."""
    return " ".join(CHAT_TRIGGER.sub(" ", text).split())


@dataclass(frozen=True)
class ChatTriggers:
    """What markers in the latest user text ask of this request."""

    fault: Fault | None = None
    seconds_per_token: float | None = None


def chat_triggers(text: str) -> ChatTriggers:
    """Read ``[[sandbox:chat_NAME=ARG]]`` markers: ``chat_slow`` paces streaming, the rest are faults.

    The ``chat_`` prefix keeps the image emulators' own markers (``[[sandbox:moderation]]``) out of
    the chat request, so they travel on in the prompt the emulator puts into a tool call. Raises
    ValueError for a marker that is not known.
    """
    fault: Fault | None = None
    slow: float | None = None
    for match in CHAT_TRIGGER.finditer(text):
        name, argument = match.group(1), match.group(2)
        if name == "slow":
            slow = _seconds(argument)
        elif fault is None:
            marker = f"[[sandbox:{name}" + (f"={argument}" if argument is not None else "") + "]]"
            fault = trigger_fault(marker, azure=False, dall_e=False)
    return ChatTriggers(fault, slow)


def _seconds(argument: str | None) -> float:
    try:
        return float(argument or "0.05")
    except ValueError as exc:
        raise ValueError(f"sandbox trigger argument {argument!r} is not a number") from exc


def text_pieces(text: str) -> list[str]:
    """Word-sized stream deltas: each word with the space before it, as real token streams look."""
    return re.findall(r"\s*\S+", text) or ([text] if text else [])


def argument_pieces(arguments: str) -> list[str]:
    """Token-like pieces of a JSON arguments string, so clients must join partial JSON."""
    return re.findall(r"\s*\w+|\s*[^\w\s]+|\s+", arguments)


def prompt_tokens(conversation: Conversation) -> int:
    """A deterministic, plausible prompt token count: about four characters a token."""
    chars = sum(len(message.text) for message in conversation.messages)
    chars += sum(len(offer.name) + len(offer.description) + len(str(offer.schema)) for offer in conversation.tools)
    return max(1, math.ceil(chars / 4)) + IMAGE_TOKENS * len(conversation.images)


def completion_tokens(reply: Reply, arguments: list[str]) -> int:
    """Output tokens: one a word of text, plus the pieces of every arguments string."""
    count = len(text_pieces(reply.text)) + sum(len(argument_pieces(text)) for text in arguments)
    return max(1, count)


def limit_reply(reply: Reply, max_tokens: int | None) -> Reply:
    """Cut a text answer at ``max_tokens`` words, as a model stops at its output limit."""
    if max_tokens is None or reply.calls:
        return reply
    pieces = text_pieces(reply.text)
    if len(pieces) <= max_tokens:
        return reply
    return Reply(reply.rule, "".join(pieces[:max_tokens]), truncated=True)
