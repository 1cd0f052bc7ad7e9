"""Accounts: sign up and sign in with a password, browser sessions, CSRF tokens.

Passwords are hashed with pwdlib's recommended hasher (Argon2) in a worker thread (hashing is meant to
be slow). A session cookie carries a random token; the database keeps only its SHA-256 and a CSRF token
the page must echo on every change made with the cookie. The first user to sign up becomes the
administrator. A wrong name and a wrong password get the same answer.
"""

from __future__ import annotations

import functools
import re
import secrets
from dataclasses import dataclass
from datetime import timedelta

import anyio.to_thread
from pwdlib import PasswordHash
from sqlalchemy import delete, func, select

from limner.db.models import User, WebSession, utcnow
from limner.db.repositories import UserRepository
from limner.db.session import Database
from limner.errors import InputError, RegistrationClosedError, SignInFailedError
from limner.ids import hash_token, new_row_id

__all__ = ["Accounts", "SignedIn"]

_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,100}$")
_MIN_PASSWORD = 8
_hasher = PasswordHash.recommended()


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

    def __init__(self, db: Database, *, allow_registration: bool, session_days: int) -> None:
        self.db = db
        self.allow_registration = allow_registration
        self.session_lifetime = timedelta(days=session_days)

    async def sign_up(self, name: str, password: str) -> SignedIn:
        """A new user (the first one is the administrator) and a session for them."""
        if not self.allow_registration:
            raise RegistrationClosedError(
                "Registration is closed on this server.", hint="Ask the administrator for an account."
            )
        _check_credentials(name, password)
        hashed = await anyio.to_thread.run_sync(lambda: _hasher.hash(password))
        async with self.db.unit_of_work(write=True) as session:
            repo = UserRepository(session)
            if await repo.by_name(name) is not None:
                raise InputError(f"The name {name!r} is taken.", hint="Choose another name.")
            count = (await session.execute(select(func.count()).select_from(User))).scalar_one()
            user = await repo.create(name, is_admin=count == 0, password_hash=hashed)
        return await self._open(user)

    async def sign_in(self, name: str, password: str) -> SignedIn:
        """A session for a user whose password matches."""
        async with self.db.unit_of_work() as session:
            user = await UserRepository(session).by_name(name)
        stored = user.password_hash if user is not None and user.password_hash else None
        valid = await anyio.to_thread.run_sync(lambda: _hasher.verify(password, stored or _dummy_hash()))
        if user is None or not user.password_hash or not valid:
            raise SignInFailedError("Wrong name or password.", hint="Check both and try again.")
        return await self._open(user)

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
        """End a session (and sweep expired ones while at it)."""
        async with self.db.unit_of_work(write=True) as session:
            await session.execute(delete(WebSession).where(WebSession.token_hash == hash_token(token)))
            await session.execute(delete(WebSession).where(WebSession.expires_at <= utcnow()))


def _check_credentials(name: str, password: str) -> None:
    if not _NAME.match(name):
        raise InputError(
            "A name is 1 to 100 letters, digits or . _ - @.", hint="Choose a name without spaces or other signs."
        )
    if len(password) < _MIN_PASSWORD:
        raise InputError(f"A password needs at least {_MIN_PASSWORD} characters.", hint="Choose a longer one.")
