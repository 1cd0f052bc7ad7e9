"""Conversations and agents: owner-checked, persisted, and the one place a user turn is run and stored.

A turn stores two rows: the user's message (text and attached image IDs) and the assistant's (its text,
the new image IDs, and the pydantic-ai messages of the turn with images replaced by their IDs). Continuing
a conversation replays those messages to the model. A turn that fails or is stopped still stores the
user's message and says what happened, so the conversation shows it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from limner.chat.history import dump_messages, load_messages
from limner.chat.loop import DEFAULT_INSTRUCTIONS, AgentConfig, ChatRunner, Emit, TurnOutcome
from limner.db.models import Agent, ChatMessage, Conversation
from limner.db.repositories import AgentRepository, ConversationRepository
from limner.db.session import Database
from limner.errors import AgentNotFoundError, ConversationNotFoundError, InputError, LimnerError
from limner.ids import new_row_id
from limner.library import ImageLibrary

__all__ = ["DEFAULT_AGENT_ID", "AgentFields", "ChatService"]

log = logging.getLogger(__name__)

DEFAULT_AGENT_ID = "default"
_TITLE_CHARS = 60


@dataclass(frozen=True, slots=True)
class AgentFields:
    """The editable fields of an agent (None: leave as is, on update)."""

    name: str | None = None
    instructions: str | None = None
    chat_model: str | None = None
    tool_families: list[str] | None = None
    vision_handoff: bool | None = None


class ChatService:
    """Conversations and agents of users, and their turns."""

    def __init__(
        self,
        db: Database,
        library: ImageLibrary,
        runner: Callable[[str | None], ChatRunner],
        *,
        allowed_models: Sequence[str] = (),
        families: Callable[[], Sequence[str]] = tuple,
    ) -> None:
        self.db = db
        self.library = library
        self._runner = runner
        self.allowed_models = list(allowed_models)
        self._families = families

    def _check_fields(self, fields: AgentFields) -> None:
        """Agents may only use models the operator allowed and tool families that exist."""
        if fields.name is not None and fields.name == DEFAULT_AGENT_ID:
            raise InputError("The name 'default' belongs to the built-in agent.", hint="Choose another name.")
        if fields.chat_model is not None and fields.chat_model not in self.allowed_models:
            allowed = ", ".join(self.allowed_models) or "none (the operator can list some in LIMNER_CHAT_MODELS)"
            raise InputError(f"The chat model {fields.chat_model!r} is not allowed here.", hint=f"Allowed: {allowed}.")
        unknown = sorted(set(fields.tool_families or ()) - set(self._families()))
        if unknown:
            known = ", ".join(self._families())
            raise InputError(f"Unknown tool families: {', '.join(unknown)}.", hint=f"Known: {known}.")

    # --- agents ------------------------------------------------------------------------------------

    async def agents(self, owner_id: str) -> list[Agent]:
        """The owner's agents (the built-in default is not stored)."""
        async with self.db.unit_of_work() as session:
            return await AgentRepository(session, owner_id).all()

    async def agent(self, owner_id: str, agent_id: str) -> Agent:
        """One owned agent."""
        async with self.db.unit_of_work() as session:
            agent = await AgentRepository(session, owner_id).get(agent_id)
        if agent is None:
            raise AgentNotFoundError(f"No agent with ID {agent_id!r} was found.", hint="GET /api/agents lists them.")
        return agent

    async def create_agent(self, owner_id: str, fields: AgentFields) -> Agent:
        """A new agent; the name must be new for this owner."""
        self._check_fields(fields)
        agent = Agent(
            id=new_row_id("agt"),
            name=fields.name or "agent",
            instructions=fields.instructions or DEFAULT_INSTRUCTIONS,
            chat_model=fields.chat_model,
            tool_families=fields.tool_families,
            vision_handoff=True if fields.vision_handoff is None else fields.vision_handoff,
        )
        async with self.db.unit_of_work(write=True) as session:
            repo = AgentRepository(session, owner_id)
            if await repo.by_name(agent.name) is not None:
                raise InputError(f"You already have an agent named {agent.name!r}.", hint="Choose another name.")
            return await repo.add(agent)

    async def update_agent(self, owner_id: str, agent_id: str, fields: AgentFields) -> Agent:
        """Change the given fields of an owned agent."""
        self._check_fields(fields)
        async with self.db.unit_of_work(write=True) as session:
            repo = AgentRepository(session, owner_id)
            agent = await repo.get(agent_id)
            if agent is None:
                raise AgentNotFoundError(f"No agent with ID {agent_id!r} was found.")
            if fields.name is not None and fields.name != agent.name and await repo.by_name(fields.name):
                raise InputError(f"You already have an agent named {fields.name!r}.", hint="Choose another name.")
            for name in ("name", "instructions", "chat_model", "tool_families", "vision_handoff"):
                value = getattr(fields, name)
                if value is not None:
                    setattr(agent, name, value)
            await session.flush()
            return agent

    async def delete_agent(self, owner_id: str, agent_id: str) -> None:
        """Delete an owned agent (its conversations fall back to the default agent)."""
        async with self.db.unit_of_work(write=True) as session:
            if not await AgentRepository(session, owner_id).delete(agent_id):
                raise AgentNotFoundError(f"No agent with ID {agent_id!r} was found.")

    # --- conversations -------------------------------------------------------------------------------

    async def create(self, owner_id: str, *, title: str | None = None, agent_id: str | None = None) -> Conversation:
        """A new, empty conversation, optionally with one of the owner's agents."""
        if agent_id is not None and agent_id != DEFAULT_AGENT_ID:
            await self.agent(owner_id, agent_id)
        conversation = Conversation(
            id=new_row_id("cnv"),
            title=title or "New conversation",
            agent_id=None if agent_id == DEFAULT_AGENT_ID else agent_id,
        )
        async with self.db.unit_of_work(write=True) as session:
            return await ConversationRepository(session, owner_id).add(conversation)

    async def recent(self, owner_id: str, *, limit: int = 50) -> list[Conversation]:
        """The owner's conversations, most recently active first."""
        async with self.db.unit_of_work() as session:
            return await ConversationRepository(session, owner_id).recent(limit=limit)

    async def get(self, owner_id: str, conversation_id: str) -> tuple[Conversation, list[ChatMessage]]:
        """An owned conversation with its messages."""
        async with self.db.unit_of_work() as session:
            repo = ConversationRepository(session, owner_id)
            conversation = await repo.get(conversation_id)
            if conversation is None:
                raise _not_found(conversation_id)
            return conversation, await repo.messages(conversation_id)

    async def rename(self, owner_id: str, conversation_id: str, title: str) -> Conversation:
        """Set an owned conversation's title."""
        async with self.db.unit_of_work(write=True) as session:
            conversation = await ConversationRepository(session, owner_id).get(conversation_id)
            if conversation is None:
                raise _not_found(conversation_id)
            conversation.title = title
            await session.flush()
            return conversation

    async def delete(self, owner_id: str, conversation_id: str) -> None:
        """Delete an owned conversation (its images stay in the library)."""
        async with self.db.unit_of_work(write=True) as session:
            if not await ConversationRepository(session, owner_id).delete(conversation_id):
                raise _not_found(conversation_id)

    # --- turns ---------------------------------------------------------------------------------------

    async def send(
        self, owner_id: str, conversation_id: str, *, text: str, image_ids: Sequence[str], emit: Emit
    ) -> TurnOutcome:
        """Run one turn and store it. Foreign or unknown IDs fail before the model is called."""
        conversation, messages = await self.get(owner_id, conversation_id)
        attachments = await self.library.get_many(owner_id, list(image_ids))
        config, chat_model = await self._agent_config(owner_id, conversation.agent_id)
        history = [m for row in messages if row.role == "assistant" for m in load_messages(row.payload)]
        user_row = ChatMessage(id=new_row_id("msg"), role="user", text=text, image_ids=[a.id for a in attachments])
        await emit("message_start", {"conversation_id": conversation.id, "message_id": user_row.id})
        outcome = TurnOutcome()  # filled as the turn runs, so a stopped turn still records its images
        error: str | None = None
        try:
            await self._runner(chat_model).run_turn(
                user_id=owner_id, text=text, attachments=attachments, history=history, agent=config,
                emit=emit, conversation_id=conversation.id, message_id=user_row.id, outcome=outcome,
            )  # fmt: skip
        except LimnerError as exc:
            error = f"{exc.message} {exc.hint or ''}".strip()
            raise
        except asyncio.CancelledError:
            error = "The answer was stopped."
            raise
        except Exception:
            error = "Something went wrong inside limner; the answer is incomplete."
            raise
        finally:
            # Its own task, shielded: a second cancellation (a client gone, then a stop) must not cut it short.
            store = asyncio.ensure_future(
                self._store(owner_id, conversation, user_row, outcome, error, first=not messages)
            )
            await _finish(store)
        return outcome

    async def _agent_config(self, owner_id: str, agent_id: str | None) -> tuple[AgentConfig, str | None]:
        if agent_id is None:
            return AgentConfig(), None
        async with self.db.unit_of_work() as session:
            agent = await AgentRepository(session, owner_id).get(agent_id)
        if agent is None:
            return AgentConfig(), None
        families = tuple(agent.tool_families) if agent.tool_families is not None else None
        config = AgentConfig(
            name=agent.name,
            instructions=agent.instructions,
            tool_families=families,
            vision_handoff=agent.vision_handoff,
        )
        return config, agent.chat_model

    async def _store(
        self,
        owner_id: str,
        conversation: Conversation,
        user_row: ChatMessage,
        outcome: TurnOutcome,
        error: str | None,
        *,
        first: bool,
    ) -> None:
        reply = ChatMessage(
            id=new_row_id("msg"),
            role="assistant",
            text=outcome.text if error is None else (outcome.text + "\n\n" + error).strip(),
            image_ids=list(outcome.image_ids),
            payload=dump_messages(outcome.new_messages) if error is None else [],
        )
        try:
            async with self.db.unit_of_work(write=True) as session:
                repo = ConversationRepository(session, owner_id)
                current = await repo.get(conversation.id)
                if current is None:  # deleted while the turn ran
                    return
                if first and current.title == "New conversation":
                    current.title = _title(user_row.text)
                await repo.append(current, [user_row, reply])
        except Exception:
            log.exception("could not store a chat turn")


async def _finish(task: asyncio.Future[None]) -> None:
    """Wait for ``task`` even if this coroutine is cancelled meanwhile (then re-raise the cancellation)."""
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.done():
                raise
            continue
    task.result()


def _title(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= _TITLE_CHARS else line[: _TITLE_CHARS - 1] + "…"


def _not_found(conversation_id: str) -> ConversationNotFoundError:
    return ConversationNotFoundError(
        f"No conversation with ID {conversation_id!r} was found.", hint="GET /api/conversations lists yours."
    )
