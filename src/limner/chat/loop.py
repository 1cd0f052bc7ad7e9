"""The agent loop: one user turn, from the message to the model's answer, with tools and vision handoff.

pydantic-ai drives the model and runs tool calls (in parallel when the model asks for several); limner's
ToolSpecs are its tools. Each tool call runs as the caller, reports what happens as events (started,
progress, image ready, failed), and returns the tool's text. Right after a tool made images, the model's
next call carries them as image input when the model can see and the agent allows it, downscaled; else
the text names the IDs and says the model cannot see them. That happens once: the stored history keeps
only the IDs (``history.py``), and ``image_view`` brings an image back.

Two wire styles exist for the handoff, and the loop uses the one the model's API has: an image inside the
tool result (Anthropic) or a user message right after the tool results (OpenAI chat completions, which
does not take images in tool messages).
"""

from __future__ import annotations

import base64
import itertools
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic_ai import Agent, RunContext, Tool
from pydantic_ai.exceptions import UsageLimitExceeded
from pydantic_ai.messages import (
    BinaryContent,
    FunctionToolResultEvent,
    ModelMessage,
    PartDeltaEvent,
    PartStartEvent,
    TextPart,
    TextPartDelta,
    ToolReturn,
    UserContent,
)
from pydantic_ai.models.anthropic import AnthropicModel
from pydantic_ai.run import AgentRunResultEvent
from pydantic_ai.usage import UsageLimits

from limner.backends.base import Progress
from limner.chat.errors import map_model_error
from limner.chat.models import ChatModelChoice
from limner.errors import InputError
from limner.imaging import vision_copy
from limner.keys import KeyRing
from limner.library import ImageLibrary, ImageRecord
from limner.tools.base import ToolContext, ToolResult, ToolSpec, failed_result, run_tool

__all__ = ["DEFAULT_INSTRUCTIONS", "AgentConfig", "ChatRunner", "Emit", "TurnOutcome"]

log = logging.getLogger(__name__)

Emit = Callable[[str, dict[str, Any]], Awaitable[None]]
"""Receives each event of a turn: its type and its JSON-ready data."""

DEFAULT_INSTRUCTIONS = (
    "You are an assistant that makes and edits pictures with the image tools you have. When the user asks for "
    "a new picture, call a generation tool with a detailed prompt. When they want to change, restyle or combine "
    "images, call an editing tool with the images' IDs (img_...) exactly as they appear in this conversation; "
    "never invent an ID, and use image_list to find older ones. Images you make are shown to the user "
    "automatically: do not paste links or describe them at length. If a tool fails, tell the user what went "
    "wrong and what to do, in one or two sentences."
)
_MAX_HANDOFF_IMAGES = 4


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """How an agent behaves: its instructions, its tool families (None: all available), vision handoff."""

    name: str = "default"
    instructions: str = DEFAULT_INSTRUCTIONS
    tool_families: tuple[str, ...] | None = None
    vision_handoff: bool = True


@dataclass(slots=True)
class TurnOutcome:
    """What a turn produced: the model's text, the new images, the messages to store, token usage."""

    text: str = ""
    image_ids: list[str] = field(default_factory=list)
    new_messages: list[ModelMessage] = field(default_factory=list)
    usage: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class _Turn:
    user_id: str
    agent: AgentConfig
    emit: Emit
    conversation_id: str | None
    message_id: str | None
    outcome: TurnOutcome


class ChatRunner:
    """Runs turns for one chat model over the tools it is given."""

    def __init__(
        self,
        *,
        choice: ChatModelChoice,
        library: ImageLibrary,
        keyring: KeyRing,
        tools: Callable[[AgentConfig], Sequence[ToolSpec[Any]]],
        vision_max_side: int = 1024,
        max_tool_rounds: int = 8,
    ) -> None:
        self.choice = choice
        self.library = library
        self.keyring = keyring
        self._tools = tools
        self.vision_max_side = vision_max_side
        self.max_tool_rounds = max_tool_rounds

    def sees_images(self, agent: AgentConfig) -> bool:
        """Whether images go to the model as images for this agent."""
        return self.choice.supports_vision and agent.vision_handoff

    async def run_turn(
        self,
        *,
        user_id: str,
        text: str,
        attachments: Sequence[ImageRecord] = (),
        history: Sequence[ModelMessage] = (),
        agent: AgentConfig | None = None,
        emit: Emit,
        conversation_id: str | None = None,
        message_id: str | None = None,
        outcome: TurnOutcome | None = None,
    ) -> TurnOutcome:
        """One turn; events go to ``emit`` as they happen. Cancelling the task cancels the tool calls too.

        ``outcome`` is filled as the turn runs (new image IDs at once), so a caller still knows what a
        stopped or failed turn made.
        """
        config = agent or AgentConfig()
        turn = _Turn(user_id, config, emit, conversation_id, message_id, outcome or TurnOutcome())
        specs = self._tools(config)
        runner: Agent[None, str] = Agent(
            self.choice.model,
            instructions=config.instructions,
            tools=[self._tool(spec, turn) for spec in specs],
        )
        prompt = await self._prompt(text, attachments, turn)
        limits = UsageLimits(request_limit=self.max_tool_rounds)
        try:
            await self._stream(runner, prompt, list(history), limits, turn)
        except UsageLimitExceeded as exc:
            raise InputError(
                f"The agent stopped after {self.max_tool_rounds} rounds of model calls without an answer.",
                hint="Ask again more specifically, or raise LIMNER_MAX_TOOL_ROUNDS.",
            ) from exc
        except Exception as exc:
            mapped = map_model_error(exc, self.choice.name)
            if mapped is None:
                raise
            raise mapped from exc
        return turn.outcome

    async def _stream(
        self,
        runner: Agent[None, str],
        prompt: list[UserContent],
        history: list[ModelMessage],
        limits: UsageLimits,
        turn: _Turn,
    ) -> None:
        async with runner.run_stream_events(prompt, message_history=history, usage_limits=limits) as events:
            async for event in events:
                await self._on_event(event, turn)

    async def _on_event(self, event: Any, turn: _Turn) -> None:
        if isinstance(event, PartStartEvent) and isinstance(event.part, TextPart) and event.part.content:
            await turn.emit("text_delta", {"text": event.part.content})
        elif isinstance(event, PartDeltaEvent) and isinstance(event.delta, TextPartDelta):
            await turn.emit("text_delta", {"text": event.delta.content_delta})
        elif isinstance(event, FunctionToolResultEvent):
            await turn.emit("tool_finished", {"tool_call_id": event.part.tool_call_id, "tool": event.part.tool_name})
        elif isinstance(event, AgentRunResultEvent):
            result = event.result
            usage = result.usage
            turn.outcome.text = str(result.output)
            turn.outcome.new_messages = list(result.new_messages())
            turn.outcome.usage = {
                "requests": usage.requests,
                "input_tokens": usage.input_tokens or 0,
                "output_tokens": usage.output_tokens or 0,
            }

    async def _prompt(self, text: str, attachments: Sequence[ImageRecord], turn: _Turn) -> list[UserContent]:
        """The user's text, the attached images' IDs (what they are), and the images when the model sees."""
        parts: list[UserContent] = [text]
        if not attachments:
            return parts
        lines = ["Images attached to this message (use these IDs in image_ids to edit them):"]
        lines += [
            f"- {r.id}: {r.source} {r.original_name or r.prompt or ''} ({r.width}x{r.height})" for r in attachments
        ]
        parts.append("\n".join(lines))
        if self.sees_images(turn.agent):
            parts += await self._image_parts(turn.user_id, attachments)
        return parts

    async def _image_parts(self, owner_id: str, records: Sequence[ImageRecord]) -> list[UserContent]:
        parts: list[UserContent] = []
        found = await self.library.read_many(owner_id, [r.id for r in records[:_MAX_HANDOFF_IMAGES]])
        for record, data in found:
            copy, media_type = await vision_copy(data, self.vision_max_side)
            parts += [f"Image {record.id}:", BinaryContent(copy, media_type=media_type, identifier=record.id)]
        return parts

    def _tool(self, spec: ToolSpec[Any], turn: _Turn) -> Tool[None]:
        async def call(run: RunContext[None], /, **arguments: Any) -> Any:  # a "run" argument stays an argument
            call_id = run.tool_call_id or f"call_{next(_counter)}"
            await turn.emit("tool_call_started", {"tool_call_id": call_id, "tool": spec.name, "arguments": arguments})
            result = await self._run_tool(spec, arguments, turn, call_id)
            return await self._tool_return(result, turn)

        return Tool.from_schema(
            call, name=spec.name, description=spec.description, json_schema=spec.json_schema(), takes_ctx=True
        )

    async def _run_tool(self, spec: ToolSpec[Any], arguments: dict[str, Any], turn: _Turn, call_id: str) -> ToolResult:
        async def progress(update: Progress) -> None:
            await turn.emit("progress", _progress_data(call_id, update))

        ctx = ToolContext(
            user_id=turn.user_id,
            library=self.library,
            keyring=self.keyring,
            conversation_id=turn.conversation_id,
            message_id=turn.message_id,
            progress=progress,
        )
        try:
            result = await run_tool(spec, arguments, ctx)
        except Exception as exc:  # the model gets to adapt: a failed result, never an exception
            failed = failed_result(exc, spec.name)
            error = failed.metadata["error"]
            await turn.emit("tool_failed", {"tool_call_id": call_id, "tool": spec.name, **error})
            return failed
        if spec.read_only:  # image_view shows the model an existing image: nothing new for the user
            return result
        for record in result.images:
            await turn.emit("image_ready", {"tool_call_id": call_id, "tool": spec.name, "image": _image_data(record)})
            turn.outcome.image_ids.append(record.id)
        return result

    async def _tool_return(self, result: ToolResult, turn: _Turn) -> Any:
        """Text for the model, plus the images as image input once, in the wire style of its API."""
        if not result.images or result.is_error:
            return result.text
        if not self.sees_images(turn.agent):
            reason = (
                "this model cannot see images" if not self.choice.supports_vision else "vision is off for this agent"
            )
            return f"{result.text}\n(The images are not shown to you: {reason}. Refer to them by ID.)"
        images = await self._image_parts(turn.user_id, result.images)
        if isinstance(self.choice.model, AnthropicModel):
            return [result.text, *images]  # inside the tool result
        return ToolReturn(return_value=result.text, content=images)  # a user message after the tool results


_counter = itertools.count(1)


def _progress_data(call_id: str, update: Progress) -> dict[str, Any]:
    partial = None
    if update.partial_image is not None:
        encoded = base64.b64encode(update.partial_image).decode()
        partial = f"data:{update.partial_media_type or 'image/png'};base64,{encoded}"
    return {"tool_call_id": call_id, "fraction": update.fraction, "message": update.message, "partial_image": partial}


def _image_data(record: ImageRecord) -> dict[str, Any]:
    base = f"/api/images/{record.id}"
    return {
        "id": record.id,
        "width": record.width,
        "height": record.height,
        "media_type": record.media_type,
        "source": record.source,
        "is_sandbox": record.is_sandbox,
        "content_url": f"{base}/content",
        "thumbnail_url": f"{base}/thumbnail",
    }
