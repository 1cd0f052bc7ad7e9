"""``/api/conversations`` and ``/api/agents``: chats that stream their answers as server-sent events.

``POST /api/conversations/{id}/messages`` answers with ``text/event-stream``. Each event is
``event: <type>`` + ``data: <json>``; the types and their fields are listed in the README. A client that
disconnects, or ``POST .../stop``, cancels the turn: its tool calls are cancelled with it, and nothing
more is written to the library.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from limner.api.deps import CurrentUser, RuntimeDep
from limner.api.errors import ERROR_RESPONSES
from limner.api.schemas import ErrorResponse
from limner.chat.conversations import DEFAULT_AGENT_ID, AgentFields
from limner.chat.loop import DEFAULT_INSTRUCTIONS
from limner.db.models import Agent, ChatMessage, Conversation
from limner.errors import LimnerError, TurnInProgressError
from limner.runtime import Runtime

__all__ = ["agents_router", "router"]

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api/conversations", tags=["conversations"], responses=ERROR_RESPONSES)
agents_router = APIRouter(prefix="/api/agents", tags=["agents"], responses=ERROR_RESPONSES)

_HEARTBEAT = 15.0


class ConversationIn(BaseModel):
    """A new conversation."""

    model_config = ConfigDict(extra="forbid")

    title: str | None = Field(None, max_length=200)
    agent_id: str | None = Field(None, description="One of your agents; omitted: the default agent.")


class ConversationPatch(BaseModel):
    """A rename."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    title: str = Field(min_length=1, max_length=200)


class ConversationOut(BaseModel):
    """A conversation without its messages."""

    id: str
    title: str
    agent_id: str
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, conversation: Conversation) -> ConversationOut:
        """From the row."""
        return cls(
            id=conversation.id,
            title=conversation.title,
            agent_id=conversation.agent_id or DEFAULT_AGENT_ID,
            created_at=conversation.created_at,
            updated_at=conversation.updated_at,
        )


class MessageOut(BaseModel):
    """A stored message: who said it, the text, the images (by ID)."""

    id: str
    role: str
    text: str
    image_ids: list[str]
    created_at: datetime

    @classmethod
    def of(cls, message: ChatMessage) -> MessageOut:
        """From the row."""
        return cls(
            id=message.id,
            role=message.role,
            text=message.text,
            image_ids=message.image_ids,
            created_at=message.created_at,
        )


class ConversationDetailOut(ConversationOut):
    """A conversation with its messages, oldest first."""

    messages: list[MessageOut]


class MessageIn(BaseModel):
    """A user message: text, and the IDs of images attached to it (the user's own)."""

    model_config = ConfigDict(extra="forbid")

    text: str = Field(min_length=1, max_length=32_000)
    image_ids: list[str] = Field(default_factory=list, max_length=16)


class AgentIn(BaseModel):
    """An agent's fields; on update, omitted fields are kept. Strict: ``"yes"`` is not a boolean."""

    model_config = ConfigDict(extra="forbid", strict=True)

    name: str | None = Field(None, min_length=1, max_length=100)
    instructions: str | None = Field(None, max_length=20_000)
    chat_model: str | None = Field(None, description="pydantic-ai provider:model; omitted: the configured model.")
    tool_families: list[str] | None = Field(None, description="Tool families to offer; omitted: every available one.")
    vision_handoff: bool | None = Field(None, description="Hand new images to the model as image input.")


class AgentOut(BaseModel):
    """An agent."""

    id: str
    name: str
    instructions: str
    chat_model: str | None
    tool_families: list[str] | None
    vision_handoff: bool

    @classmethod
    def of(cls, agent: Agent) -> AgentOut:
        """From the row."""
        return cls(
            id=agent.id,
            name=agent.name,
            instructions=agent.instructions,
            chat_model=agent.chat_model,
            tool_families=agent.tool_families,
            vision_handoff=agent.vision_handoff,
        )


DEFAULT_AGENT = AgentOut(
    id=DEFAULT_AGENT_ID,
    name="default",
    instructions=DEFAULT_INSTRUCTIONS,
    chat_model=None,
    tool_families=None,
    vision_handoff=True,
)


# --- conversations ------------------------------------------------------------------------------------


@router.post("", status_code=201, summary="Start a conversation.")
async def create_conversation(runtime: RuntimeDep, user: CurrentUser, body: ConversationIn) -> ConversationOut:
    """An empty conversation; messages are sent to it with POST .../messages."""
    return ConversationOut.of(await runtime.chat.create(user.id, title=body.title, agent_id=body.agent_id))


@router.get("", summary="Your conversations, most recently active first.")
async def list_conversations(runtime: RuntimeDep, user: CurrentUser) -> list[ConversationOut]:
    """Without their messages."""
    return [ConversationOut.of(c) for c in await runtime.chat.recent(user.id)]


@router.get("/{conversation_id}", summary="A conversation and its messages.")
async def get_conversation(runtime: RuntimeDep, user: CurrentUser, conversation_id: str) -> ConversationDetailOut:
    """Someone else's conversation answers like a missing one (404)."""
    conversation, messages = await runtime.chat.get(user.id, conversation_id)
    out = ConversationOut.of(conversation)
    return ConversationDetailOut(**out.model_dump(), messages=[MessageOut.of(m) for m in messages])


@router.patch("/{conversation_id}", summary="Rename a conversation.")
async def rename_conversation(
    runtime: RuntimeDep, user: CurrentUser, conversation_id: str, body: ConversationPatch
) -> ConversationOut:
    """Only the title changes."""
    return ConversationOut.of(await runtime.chat.rename(user.id, conversation_id, body.title))


@router.delete("/{conversation_id}", status_code=204, summary="Delete a conversation (its images stay).")
async def delete_conversation(runtime: RuntimeDep, user: CurrentUser, conversation_id: str) -> Response:
    """Images made in it stay in the library."""
    await runtime.chat.delete(user.id, conversation_id)
    return Response(status_code=204)


@router.post(
    "/{conversation_id}/messages",
    summary="Send a message; the answer streams as server-sent events.",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "The event stream (see the README)."},
        409: {"model": ErrorResponse, "description": "turn_in_progress: the conversation is answering a message."},
    },
)
async def send_message(
    runtime: RuntimeDep, user: CurrentUser, conversation_id: str, body: MessageIn, request: Request
) -> StreamingResponse:
    """Checks the conversation and the attached IDs first (404 before any stream), then streams."""
    await runtime.chat.get(user.id, conversation_id)
    await runtime.library.get_many(user.id, body.image_ids)
    if conversation_id in runtime.running_turns:
        raise TurnInProgressError(
            "An answer is still being written in this conversation.",
            hint="Wait for it, or stop it with POST /api/conversations/{id}/stop.",
        )
    stream = _turn_events(runtime, user.id, conversation_id, body)
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(stream, media_type="text/event-stream", headers=headers)


@router.post("/{conversation_id}/stop", status_code=204, summary="Stop the answer being written.")
async def stop_turn(runtime: RuntimeDep, user: CurrentUser, conversation_id: str) -> Response:
    """Cancels the running turn of an owned conversation (no-op when none runs)."""
    await runtime.chat.get(user.id, conversation_id)
    task = runtime.running_turns.get(conversation_id)
    if task is not None and not task.cancelling():
        task.cancel()
    return Response(status_code=204)


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, default=str)}\n\n".encode()


async def _turn_events(runtime: Runtime, user_id: str, conversation_id: str, body: MessageIn) -> AsyncIterator[bytes]:
    """Run the turn in a task and relay its events; cancelling this generator cancels the turn."""
    queue: asyncio.Queue[bytes | None] = asyncio.Queue()

    async def emit(event: str, data: dict[str, Any]) -> None:
        await queue.put(_sse(event, data))

    async def turn() -> None:
        try:
            outcome = await runtime.chat.send(
                user_id, conversation_id, text=body.text, image_ids=body.image_ids, emit=emit
            )
            await emit("done", {"text": outcome.text, "image_ids": outcome.image_ids, "usage": outcome.usage})
        except LimnerError as exc:
            await emit("error", exc.to_dict())
        except asyncio.CancelledError:
            await emit("stopped", {"message": "The answer was stopped."})
            raise
        except Exception:
            log.exception("chat turn failed")
            error = {"code": "internal_error", "message": "Something went wrong inside limner.", "hint": None}
            await emit("error", {**error, "provider": None})
        finally:
            await queue.put(None)

    task = asyncio.create_task(turn())
    running = runtime.running_turns
    running[conversation_id] = task
    task.add_done_callback(
        lambda done: running.pop(conversation_id, None) if running.get(conversation_id) is done else None
    )
    try:
        while True:
            try:
                item = await asyncio.wait_for(queue.get(), timeout=_HEARTBEAT)
            except TimeoutError:
                yield b": keep-alive\n\n"
                continue
            if item is None:
                break
            yield item
    finally:
        if not task.done() and not task.cancelling():
            task.cancel()
        # Shielded: this generator may itself be cancelled (the client left); the turn must still finish
        # storing what it did.
        await asyncio.shield(asyncio.gather(task, return_exceptions=True))


# --- agents ---------------------------------------------------------------------------------------------


@agents_router.get("", summary="Your agents, the built-in default first.")
async def list_agents(runtime: RuntimeDep, user: CurrentUser) -> list[AgentOut]:
    """The default agent has every available tool family and vision handoff on."""
    return [DEFAULT_AGENT, *(AgentOut.of(a) for a in await runtime.chat.agents(user.id))]


@agents_router.post("", status_code=201, summary="Create an agent.")
async def create_agent(runtime: RuntimeDep, user: CurrentUser, body: AgentIn) -> AgentOut:
    """Names are unique per user."""
    return AgentOut.of(await runtime.chat.create_agent(user.id, AgentFields(**body.model_dump())))


@agents_router.get("/{agent_id}", summary="An agent.")
async def get_agent(runtime: RuntimeDep, user: CurrentUser, agent_id: str) -> AgentOut:
    """One of yours, or the default."""
    if agent_id == DEFAULT_AGENT_ID:
        return DEFAULT_AGENT
    return AgentOut.of(await runtime.chat.agent(user.id, agent_id))


@agents_router.patch("/{agent_id}", summary="Change an agent.")
async def update_agent(runtime: RuntimeDep, user: CurrentUser, agent_id: str, body: AgentIn) -> AgentOut:
    """Omitted fields are kept."""
    return AgentOut.of(await runtime.chat.update_agent(user.id, agent_id, AgentFields(**body.model_dump())))


@agents_router.delete("/{agent_id}", status_code=204, summary="Delete an agent.")
async def delete_agent(runtime: RuntimeDep, user: CurrentUser, agent_id: str) -> Response:
    """Its conversations continue with the default agent."""
    await runtime.chat.delete_agent(user.id, agent_id)
    return Response(status_code=204)
