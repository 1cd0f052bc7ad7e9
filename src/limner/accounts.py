"""Accounts: sign up and sign in with a password, browser sessions, CSRF tokens, sign-in throttling.

Passwords are hashed with pwdlib's recommended hasher (Argon2) in a worker thread (hashing is meant to
be slow), at most ``hash_concurrency`` at a time: Argon2 costs CPU and memory, and eight clients signing
in at once must not slow every other request down. A session cookie carries a random token; the
database keeps only its SHA-256 and a CSRF token the page must echo on every change made with the
cookie.

The first account that can sign in (has a password) becomes the administrator: users the CLI created on
the fly (``limner tokens create --user me``, ``limner generate``) have no password and do not count.
``limner users admin NAME`` makes someone administrator later.

A wrong name and a wrong password get the same answer, in the same time (an unknown name is checked
against a dummy hash). Failed sign-ins are counted per account name and per client address
(:mod:`limner.throttle`); past the limit, sign-in answers 429 with the seconds to wait, even for the
right password, without hashing anything. Names are case-insensitive.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import re
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, TypeVar

import anyio
import anyio.to_thread
from pwdlib import PasswordHash
from sqlalchemy import delete, select

from limner.db.models import User, WebSession, utcnow
from limner.db.repositories import UserRepository, normalize_name, sweep_expired
from limner.db.session import Database
from limner.errors import (
    InputError,
    RegistrationClosedError,
    SignInFailedError,
    TooManyAttemptsError,
)
from limner.ids import hash_token, new_row_id
from limner.periodic import repeating
from limner.throttle import AttemptCounter, MemoryAttemptCounter

if TYPE_CHECKING:
    from limner.config import Settings

__all__ = ["Accounts", "SignedIn", "check_credentials"]

log = logging.getLogger(__name__)
T = TypeVar("T")

_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,100}$")
_MIN_PASSWORD = 8
_hasher = PasswordHash.recommended()
_SWEEP_INTERVAL = 3600.0


@functools.cache
def _dummy_hash() -> str:
    """Verifying against this keeps a sign-in with an unknown name as slow as one with a wrong password."""
    return _hasher.hash("not a real password")


@dataclass(frozen=True, slots=True)
class SignedIn:
    """A session: the user, the cookie's token (shown once) and the CSRF token."""

    user: User
    token: str
    csrf_token: str


class Accounts:
    """Users with passwords and their browser sessions."""

    def __init__(
        self,
        db: Database,
        *,
        allow_registration: bool,
        session_days: int,
        name_attempts: AttemptCounter | None = None,
        address_attempts: AttemptCounter | None = None,
        hash_concurrency: int = 2,
    ) -> None:
        self.db = db
        self.allow_registration = allow_registration
        self.session_lifetime = timedelta(days=session_days)
        self.name_attempts: AttemptCounter = name_attempts or MemoryAttemptCounter(limit=10, window=900.0)
        self.address_attempts: AttemptCounter = address_attempts or MemoryAttemptCounter(limit=50, window=900.0)
        self._hashing = anyio.Semaphore(hash_concurrency)

    @classmethod
    def from_settings(cls, db: Database, settings: Settings) -> Accounts:
        """Accounts with the throttle and hashing bound of the settings (in-process counters)."""
        return cls(
            db,
            allow_registration=settings.allow_registration,
            session_days=settings.session_days,
            name_attempts=MemoryAttemptCounter(limit=settings.signin_max_failures, window=settings.signin_window),
            address_attempts=MemoryAttemptCounter(
                limit=settings.signin_max_failures_per_address, window=settings.signin_window
            ),
            hash_concurrency=settings.password_hash_concurrency,
        )

    async def _hash_work(self, work: Callable[[], T]) -> T:
        """Run a password hash in a worker thread, at most ``hash_concurrency`` at once (the rest queue)."""
        async with self._hashing:
            return await anyio.to_thread.run_sync(work)

    async def sign_up(self, name: str, password: str) -> SignedIn:
        """A new user (the first one that can sign in is the administrator) and a session for them."""
        if not self.allow_registration:
            raise RegistrationClosedError(
                "Registration is closed on this server.", hint="Ask the administrator for an account."
            )
        check_credentials(name, password)
        hashed = await self.hash_password(password)
        async with self.db.unit_of_work(write=True) as session:
            repo = UserRepository(session)
            if await repo.by_name(name) is not None:
                raise InputError(f"The name {normalize_name(name)!r} is taken.", hint="Choose another name.")
            first = not await repo.has_sign_in_account()
            user = await repo.create(name, is_admin=first, password_hash=hashed)
        return await self._open(user)

    async def hash_password(self, password: str) -> str:
        """The stored form of a password (for sign-up and ``limner users create --password``)."""
        return await self._hash_work(lambda: _hasher.hash(password))

    async def sign_in(self, name: str, password: str, *, address: str | None = None) -> SignedIn:
        """A session for a user whose password matches; 429 after too many failures for the name or address."""
        name_key = f"name:{normalize_name(name)}"
        address_key = f"address:{address}" if address else None
        await self._check_throttle(name_key, address_key)
        async with self.db.unit_of_work() as session:
            user = await UserRepository(session).by_name(name)
        stored = user.password_hash if user is not None and user.password_hash else None
        valid = await self._hash_work(lambda: _hasher.verify(password, stored or _dummy_hash()))
        if user is None or not user.password_hash or not valid:
            await self.name_attempts.failed(name_key)
            if address_key is not None:
                await self.address_attempts.failed(address_key)
            raise SignInFailedError("Wrong name or password.", hint="Check both and try again.")
        await self.name_attempts.reset(name_key)  # the address keeps its count: one good account must not
        return await self._open(user)  # launder guesses at others

    async def _check_throttle(self, name_key: str, address_key: str | None) -> None:
        by_name = await self.name_attempts.blocked_for(name_key)
        by_address = await self.address_attempts.blocked_for(address_key) if address_key else 0.0
        wait = max(by_name, by_address)
        if wait > 0:
            seconds = math.ceil(wait)
            where = "for this name" if by_name >= by_address else "from your address"
            raise TooManyAttemptsError(
                f"Too many failed sign-ins {where}.",
                hint=f"Wait {seconds} seconds and try again, or ask the administrator to check the account.",
                retry_after=wait,
            )

    async def _open(self, user: User) -> SignedIn:
        token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(24)
        row = WebSession(
            id=new_row_id("ses"),
            user_id=user.id,
            token_hash=hash_token(token),
            csrf_token=csrf,
            expires_at=utcnow() + self.session_lifetime,
        )
        async with self.db.unit_of_work(write=True) as session:
            session.add(row)
        return SignedIn(user=user, token=token, csrf_token=csrf)

    async def session(self, token: str) -> tuple[User, str] | None:
        """The user and CSRF token of a live session, or None."""
        stmt = (
            select(User, WebSession)
            .join(WebSession, WebSession.user_id == User.id)
            .where(WebSession.token_hash == hash_token(token), WebSession.expires_at > utcnow())
        )
        async with self.db.unit_of_work() as session:
            row = (await session.execute(stmt)).one_or_none()
        return None if row is None else (row[0], row[1].csrf_token)

    async def sign_out(self, token: str) -> None:
        """End a session."""
        async with self.db.unit_of_work(write=True) as session:
            await session.execute(delete(WebSession).where(WebSession.token_hash == hash_token(token)))

    async def sweep_expired(self) -> tuple[int, int]:
        """Delete expired sessions and API tokens: (sessions, tokens) removed. Lookups already refuse them;
        this keeps the tables from growing forever.
        """
        async with self.db.unit_of_work(write=True) as session:
            return await sweep_expired(session)

    @contextlib.asynccontextmanager
    async def sweeping(self, interval: float = _SWEEP_INTERVAL) -> AsyncIterator[None]:
        """Sweep now, then every ``interval`` seconds until the block ends (the runtime's lifetime)."""
        await self.sweep_expired()
        warmed = False

        async def chore() -> None:
            nonlocal warmed
            if warmed:
                await self.sweep_expired()
            else:  # the first round, right after start: the dummy hash, ready before the first unknown name
                await self._hash_work(_dummy_hash)
                warmed = True

        async with repeating(chore, interval, name="sweep of expired sessions and tokens"):
            yield


def check_credentials(name: str, password: str) -> None:
    """A name limner accepts and a long enough password (the web UI and `limner users create --password`)."""
    if not _NAME.match(name):
        raise InputError(
            "A name is 1 to 100 letters, digits or . _ - @.", hint="Choose a name without spaces or other signs."
        )
    if len(password) < _MIN_PASSWORD:
        raise InputError(f"A password needs at least {_MIN_PASSWORD} characters.", hint="Choose a longer one.")
