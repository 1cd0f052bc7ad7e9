"""Repositories: every query about a user's things starts from one owner-scoped base statement.

There is deliberately no method that fetches an image, a credential or a token by ID alone: the owner
is part of the repository, so forgetting the ownership check is not possible. The few global queries
(blob reference counts for the sweep, token lookup at sign-in, the operator's token list in the CLI)
return no user data beyond what their caller needs, and are named for that purpose.

User names are case-insensitive: :func:`normalize_name` is applied by every method that takes a name,
so sign-up, sign-in and the CLI cannot disagree.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import Select, delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from limner.db.models import (
    Agent,
    ApiToken,
    ChatMessage,
    Conversation,
    Credential,
    Image,
    ImageParent,
    User,
    WebSession,
    utcnow,
)
from limner.ids import hash_token, new_row_id, new_user_id

_TOKEN_TOUCH_INTERVAL = timedelta(minutes=1)
_PREFIX_LENGTH = 10  # "lm_" and 7 random characters: enough to recognise a token, far too few to guess it

__all__ = [
    "AgentRepository",
    "ConversationRepository",
    "CredentialRepository",
    "ImageRepository",
    "StorageKeyRepository",
    "TokenRepository",
    "UserRepository",
    "normalize_name",
    "sweep_expired",
]


def normalize_name(name: str) -> str:
    """The stored form of a user name: surrounding space removed, lower-cased (names are case-insensitive)."""
    return name.strip().lower()


class ImageRepository:
    """One owner's images."""

    def __init__(self, session: AsyncSession, owner_id: str) -> None:
        self.session = session
        self.owner_id = owner_id

    def _base(self) -> Select[Image]:
        return select(Image).where(Image.owner_id == self.owner_id)

    async def get(self, image_id: str) -> Image | None:
        """The image if it exists and belongs to this owner; None either way otherwise."""
        return (await self.session.execute(self._base().where(Image.id == image_id))).scalar_one_or_none()

    async def get_many(self, image_ids: Sequence[str]) -> dict[str, Image]:
        """The owned images among ``image_ids``, keyed by ID (missing ones are simply absent)."""
        if not image_ids:
            return {}
        rows = await self.session.execute(self._base().where(Image.id.in_(list(image_ids))))
        return {image.id: image for image in rows.scalars()}

    async def recent(self, *, limit: int, before: str | None = None, source: str | None = None) -> list[Image]:
        """Newest first; ``before`` is the last ID of the previous page (IDs sort by time)."""
        stmt = self._base().order_by(Image.id.desc()).limit(limit)
        if before:
            stmt = stmt.where(Image.id < before)
        if source:
            stmt = stmt.where(Image.source == source)
        return list((await self.session.execute(stmt)).scalars())

    async def add(self, image: Image, parent_ids: Sequence[str] = (), roles: Sequence[str] = ()) -> None:
        """Insert an image (forced to this owner) and its lineage."""
        image.owner_id = self.owner_id
        self.session.add(image)
        for position, parent_id in enumerate(parent_ids):
            role = roles[position] if position < len(roles) else "input"
            self.session.add(ImageParent(image_id=image.id, position=position, parent_id=parent_id, role=role))
        await self.session.flush()

    async def parents(self, image_id: str) -> list[tuple[str, str, Image | None]]:
        """Lineage of an owned image: (parent ID, role, the parent if it still exists and is owned)."""
        if await self.get(image_id) is None:
            return []
        stmt = select(ImageParent).where(ImageParent.image_id == image_id).order_by(ImageParent.position)
        links = list((await self.session.execute(stmt)).scalars())
        found = await self.get_many([link.parent_id for link in links])
        return [(link.parent_id, link.role, found.get(link.parent_id)) for link in links]

    async def delete(self, image_id: str) -> Image | None:
        """Delete an owned image's row; returns it (for its storage key) or None if not owned."""
        image = await self.get(image_id)
        if image is None:
            return None
        await self.session.execute(delete(ImageParent).where(ImageParent.image_id == image_id))
        await self.session.delete(image)
        await self.session.flush()
        return image


class StorageKeyRepository:
    """Global, content-free queries over storage keys for blob reference counting and the sweep."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def references(self, storage_key: str) -> int:
        """How many rows (of any owner) point at a blob: content addressing shares blobs."""
        stmt = select(func.count()).select_from(Image).where(Image.storage_key == storage_key)
        return int((await self.session.execute(stmt)).scalar_one())

    async def all_keys(self) -> set[str]:
        """Every storage key referenced by a row."""
        return set((await self.session.execute(select(Image.storage_key).distinct())).scalars())

    async def holders(self) -> set[tuple[str, str, str]]:
        """(owner ID, SHA-256, storage key) of every row: what the sweep needs to know which blobs and
        per-owner thumbnails are still wanted (no image data, no user data beyond the owner's ID).
        """
        stmt = select(Image.owner_id, Image.sha256, Image.storage_key).distinct()
        return {(owner_id, sha, key) for owner_id, sha, key in (await self.session.execute(stmt)).all()}


class UserRepository:
    """Users, and the lookup of a bearer token's user."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def by_name(self, name: str) -> User | None:
        """A user by name (case-insensitive)."""
        stmt = select(User).where(User.name == normalize_name(name))
        return (await self.session.execute(stmt)).scalar_one_or_none()

    async def create(self, name: str, *, is_admin: bool = False, password_hash: str | None = None) -> User:
        """A new user; the name must be free (the unique constraint enforces it)."""
        user = User(id=new_user_id(), name=normalize_name(name), is_admin=is_admin, password_hash=password_hash)
        self.session.add(user)
        await self.session.flush()
        return user

    async def get_or_create(self, name: str) -> User:
        """The CLI's local user appears on first use."""
        return await self.by_name(name) or await self.create(name)

    async def all(self) -> list[User]:
        """Every user, by name (for the operator's CLI)."""
        return list((await self.session.execute(select(User).order_by(User.name))).scalars())

    async def has_sign_in_account(self) -> bool:
        """Whether any account can sign in (has a password): the first such account becomes the administrator."""
        stmt = select(func.count()).select_from(User).where(User.password_hash.is_not(None))
        return int((await self.session.execute(stmt)).scalar_one()) > 0

    async def add_token(
        self, user: User, token: str, name: str = "", *, expires_at: datetime | None = None
    ) -> ApiToken:
        """Store a token's hash and prefix; the token itself is only ever shown once, by the caller."""
        return await TokenRepository(self.session, user.id).add(token, name, expires_at=expires_at)

    async def verify_token(self, token: str) -> tuple[User, ApiToken] | None:
        """The user and row of a live (unexpired) bearer token (one query), noting when it was last used."""
        now = utcnow()
        stmt = (
            select(User, ApiToken)
            .join(ApiToken, ApiToken.user_id == User.id)
            .where(
                ApiToken.token_hash == hash_token(token),
                (ApiToken.expires_at.is_(None)) | (ApiToken.expires_at > now),
            )
        )
        row = (await self.session.execute(stmt)).one_or_none()
        if row is None:
            return None
        user, api_token = row
        if api_token.last_used_at is None or now - api_token.last_used_at > _TOKEN_TOUCH_INTERVAL:
            api_token.last_used_at = now  # at most once a minute: reads must not all become writes
        return user, api_token

    async def by_token(self, token: str) -> User | None:
        """The user a live bearer token belongs to."""
        found = await self.verify_token(token)
        return None if found is None else found[0]

    async def all_tokens_for_operator(self) -> list[tuple[ApiToken, str]]:
        """Every token row with its user's name, newest first: the CLI operator's view (no secrets in rows)."""
        stmt = select(ApiToken, User.name).join(User, User.id == ApiToken.user_id).order_by(ApiToken.created_at.desc())
        return [(token, name) for token, name in (await self.session.execute(stmt)).all()]

    async def revoke_token_for_operator(self, token_id: str) -> ApiToken | None:
        """Delete any user's token by ID (the CLI operator's revoke); the deleted row, or None."""
        row = (await self.session.execute(select(ApiToken).where(ApiToken.id == token_id))).scalar_one_or_none()
        if row is not None:
            await self.session.delete(row)
            await self.session.flush()
        return row


class TokenRepository:
    """One user's API tokens."""

    def __init__(self, session: AsyncSession, user_id: str) -> None:
        self.session = session
        self.user_id = user_id

    def _base(self) -> Select[ApiToken]:
        return select(ApiToken).where(ApiToken.user_id == self.user_id)

    async def add(self, token: str, name: str = "", *, expires_at: datetime | None = None) -> ApiToken:
        """Store a token's hash and its first characters."""
        row = ApiToken(
            id=new_row_id("tok"),
            user_id=self.user_id,
            name=name,
            token_hash=hash_token(token),
            prefix=token[:_PREFIX_LENGTH],
            expires_at=expires_at,
        )
        self.session.add(row)
        await self.session.flush()
        return row

    async def all(self) -> list[ApiToken]:
        """The user's tokens, newest first (expired ones too, until the sweep removes them)."""
        return list((await self.session.execute(self._base().order_by(ApiToken.created_at.desc()))).scalars())

    async def revoke(self, token_id: str) -> ApiToken | None:
        """Delete one of the user's tokens; the deleted row (its hash evicts caches), or None if not theirs."""
        row = (await self.session.execute(self._base().where(ApiToken.id == token_id))).scalar_one_or_none()
        if row is not None:
            await self.session.delete(row)
            await self.session.flush()
        return row


async def sweep_expired(session: AsyncSession) -> tuple[int, int]:
    """Delete expired browser sessions and API tokens of every user: (sessions, tokens) removed.

    Global on purpose: it reads nothing and only removes rows that no request can use any more.
    """
    now = utcnow()
    sessions = await session.execute(delete(WebSession).where(WebSession.expires_at <= now))
    tokens = await session.execute(delete(ApiToken).where(ApiToken.expires_at.is_not(None), ApiToken.expires_at <= now))
    return int(getattr(sessions, "rowcount", 0) or 0), int(getattr(tokens, "rowcount", 0) or 0)


class CredentialRepository:
    """One user's encrypted provider keys."""

    def __init__(self, session: AsyncSession, user_id: str) -> None:
        self.session = session
        self.user_id = user_id

    def _base(self) -> Select[Credential]:
        return select(Credential).where(Credential.user_id == self.user_id)

    async def get(self, provider: str) -> Credential | None:
        """The stored credential of ``provider`` for this user."""
        stmt = self._base().where(Credential.provider == provider)
        return (await self.session.execute(stmt)).scalar_one_or_none()

    async def put(self, provider: str, ciphertext: str) -> None:
        """Insert or replace."""
        existing = await self.get(provider)
        if existing is None:
            self.session.add(
                Credential(id=new_row_id("crd"), user_id=self.user_id, provider=provider, ciphertext=ciphertext)
            )
        else:
            existing.ciphertext = ciphertext
            existing.updated_at = utcnow()
        await self.session.flush()

    async def remove(self, provider: str) -> bool:
        """Delete; whether there was one."""
        result = await self.session.execute(
            delete(Credential).where(Credential.user_id == self.user_id, Credential.provider == provider)
        )
        return bool(getattr(result, "rowcount", 0))

    async def providers(self) -> dict[str, datetime]:
        """Which providers have a stored key, with when it was last set (never the key)."""
        rows = await self.session.execute(self._base())
        return {row.provider: row.updated_at for row in rows.scalars()}


class AgentRepository:
    """One user's agents."""

    def __init__(self, session: AsyncSession, owner_id: str) -> None:
        self.session = session
        self.owner_id = owner_id

    def _base(self) -> Select[Agent]:
        return select(Agent).where(Agent.owner_id == self.owner_id)

    async def get(self, agent_id: str) -> Agent | None:
        """An owned agent."""
        return (await self.session.execute(self._base().where(Agent.id == agent_id))).scalar_one_or_none()

    async def by_name(self, name: str) -> Agent | None:
        """An owned agent by its unique name."""
        return (await self.session.execute(self._base().where(Agent.name == name))).scalar_one_or_none()

    async def all(self) -> list[Agent]:
        """Every agent of the owner, by name."""
        return list((await self.session.execute(self._base().order_by(Agent.name))).scalars())

    async def add(self, agent: Agent) -> Agent:
        """Insert (forced to this owner)."""
        agent.owner_id = self.owner_id
        self.session.add(agent)
        await self.session.flush()
        return agent

    async def delete(self, agent_id: str) -> bool:
        """Delete an owned agent; whether it existed."""
        agent = await self.get(agent_id)
        if agent is None:
            return False
        await self.session.delete(agent)
        await self.session.flush()
        return True


class ConversationRepository:
    """One user's conversations and their messages."""

    def __init__(self, session: AsyncSession, owner_id: str) -> None:
        self.session = session
        self.owner_id = owner_id

    def _base(self) -> Select[Conversation]:
        return select(Conversation).where(Conversation.owner_id == self.owner_id)

    async def get(self, conversation_id: str) -> Conversation | None:
        """An owned conversation."""
        stmt = self._base().where(Conversation.id == conversation_id)
        return (await self.session.execute(stmt)).scalar_one_or_none()

    async def recent(self, *, limit: int, before: datetime | None = None) -> list[Conversation]:
        """Most recently updated first."""
        stmt = self._base().order_by(Conversation.updated_at.desc(), Conversation.id.desc()).limit(limit)
        if before is not None:
            stmt = stmt.where(Conversation.updated_at < before)
        return list((await self.session.execute(stmt)).scalars())

    async def add(self, conversation: Conversation) -> Conversation:
        """Insert (forced to this owner)."""
        conversation.owner_id = self.owner_id
        self.session.add(conversation)
        await self.session.flush()
        return conversation

    async def delete(self, conversation_id: str) -> bool:
        """Delete an owned conversation and its messages; whether it existed."""
        conversation = await self.get(conversation_id)
        if conversation is None:
            return False
        await self.session.execute(delete(ChatMessage).where(ChatMessage.conversation_id == conversation_id))
        await self.session.delete(conversation)
        await self.session.flush()
        return True

    async def messages(self, conversation_id: str) -> list[ChatMessage]:
        """The messages of an owned conversation, oldest first (empty when not owned)."""
        stmt = (
            select(ChatMessage)
            .join(Conversation, Conversation.id == ChatMessage.conversation_id)
            .where(Conversation.owner_id == self.owner_id, ChatMessage.conversation_id == conversation_id)
            .order_by(ChatMessage.id)
        )
        return list((await self.session.execute(stmt)).scalars())

    async def append(self, conversation: Conversation, messages: Sequence[ChatMessage]) -> None:
        """Add messages to an owned conversation and mark it updated."""
        if conversation.owner_id != self.owner_id:
            raise ValueError("conversation of another owner")
        for message in messages:
            message.conversation_id = conversation.id
            self.session.add(message)
        conversation.updated_at = utcnow()
        await self.session.flush()
