"""Database tables (SQLAlchemy 2.0 declarative). Image bytes are never here: only their storage keys.

Changing a table means writing an Alembic migration in ``migrations/versions``; a test compares these
models with the migrated schema.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

__all__ = [
    "Agent",
    "ApiToken",
    "Base",
    "ChatMessage",
    "Conversation",
    "Credential",
    "Image",
    "ImageParent",
    "User",
    "WebSession",
    "utcnow",
]


def utcnow() -> datetime:
    """Timezone-aware now; every timestamp is UTC."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """SQLite drops time zones; this puts UTC back so comparisons and JSON output are consistent."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return value.astimezone(UTC) if value is not None and value.tzinfo else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


class Base(DeclarativeBase):
    """Declarative base of every table."""

    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON(), list[str]: JSON(), list[Any]: JSON()}


class User(Base):
    """A person or the CLI's local user; owns images, tokens and credentials.

    ``name`` is stored lower-cased (:func:`limner.db.repositories.normalize_name`): names are
    case-insensitive, so ``Alice`` and ``alice`` are one account.
    """

    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    password_hash: Mapped[str | None] = mapped_column(String(255), default=None)


class ApiToken(Base):
    """A bearer token; only the SHA-256 of the token is stored, with its first characters to recognise it."""

    __tablename__ = "api_tokens"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100), default="")
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(default=None)
    expires_at: Mapped[datetime | None] = mapped_column(default=None, index=True)
    prefix: Mapped[str | None] = mapped_column(String(16), default=None)


class Image(Base):
    """The record of DESIGN §4: who owns it, where it came from, what it is, where its bytes are."""

    __tablename__ = "images"
    __table_args__ = (Index("ix_images_owner_created", "owner_id", "id"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    owner_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    source: Mapped[str] = mapped_column(String(20))
    backend: Mapped[str | None] = mapped_column(String(40), default=None)
    endpoint: Mapped[str | None] = mapped_column(String(500), default=None)
    model: Mapped[str | None] = mapped_column(String(200), default=None)
    tool: Mapped[str | None] = mapped_column(String(200), default=None)
    prompt: Mapped[str | None] = mapped_column(Text, default=None)
    revised_prompt: Mapped[str | None] = mapped_column(Text, default=None)
    parameters: Mapped[dict[str, Any]] = mapped_column(default=dict)
    usage: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    conversation_id: Mapped[str | None] = mapped_column(String(40), default=None, index=True)
    message_id: Mapped[str | None] = mapped_column(String(40), default=None)
    is_sandbox: Mapped[bool] = mapped_column(Boolean, default=False)
    original_name: Mapped[str | None] = mapped_column(String(255), default=None)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    media_type: Mapped[str] = mapped_column(String(40))
    byte_size: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    storage_key: Mapped[str] = mapped_column(String(200), index=True)


class ImageParent(Base):
    """Edit lineage. ``parent_id`` has no foreign key on purpose: lineage outlives a deleted parent."""

    __tablename__ = "image_parents"

    image_id: Mapped[str] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    parent_id: Mapped[str] = mapped_column(String(40), index=True)
    role: Mapped[str] = mapped_column(String(20), default="input")


class Credential(Base):
    """A user's own provider key, encrypted (see ``limner.keys``); never returned once saved."""

    __tablename__ = "credentials"
    __table_args__ = (UniqueConstraint("user_id", "provider", name="uq_credentials_user_provider"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    provider: Mapped[str] = mapped_column(String(40))
    ciphertext: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Agent(Base):
    """A named chat configuration of one user: instructions, chat model, tool families, vision handoff."""

    __tablename__ = "agents"
    __table_args__ = (UniqueConstraint("owner_id", "name", name="uq_agents_owner_name"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    owner_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    instructions: Mapped[str] = mapped_column(Text, default="")
    chat_model: Mapped[str | None] = mapped_column(String(200), default=None)
    tool_families: Mapped[list[str] | None] = mapped_column(JSON, default=None)
    vision_handoff: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Conversation(Base):
    """A chat: its messages are the history the LLM gets back when the conversation continues."""

    __tablename__ = "conversations"
    __table_args__ = (Index("ix_conversations_owner_updated", "owner_id", "updated_at"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    owner_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    agent_id: Mapped[str | None] = mapped_column(ForeignKey("agents.id", ondelete="SET NULL"), default=None)
    title: Mapped[str] = mapped_column(String(200), default="New conversation")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class ChatMessage(Base):
    """One turn's messages, as the LLM library serialises them, with images replaced by their IDs."""

    __tablename__ = "chat_messages"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    conversation_id: Mapped[str] = mapped_column(ForeignKey("conversations.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    role: Mapped[str] = mapped_column(String(20))
    text: Mapped[str] = mapped_column(Text, default="")
    image_ids: Mapped[list[str]] = mapped_column(JSON, default=list)
    payload: Mapped[list[Any]] = mapped_column(JSON, default=list)


class WebSession(Base):
    """A browser session: the cookie holds a random token, only its hash is stored, with a CSRF token."""

    __tablename__ = "web_sessions"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(index=True)
