"""Request dependencies: the runtime, and the caller resolved from a bearer API token."""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from datetime import datetime
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from limner.db.models import User, utcnow
from limner.db.repositories import UserRepository
from limner.errors import CSRFError
from limner.ids import hash_token
from limner.runtime import Runtime

__all__ = ["SESSION_COOKIE", "CurrentUser", "RuntimeDep", "TokenCache", "get_runtime"]

_bearer = HTTPBearer(auto_error=False, description="An API token from `limner tokens create`.")


class TokenCache:
    """Recently seen tokens, so that a burst of requests (a grid of thumbnails) costs one query.

    Entries live ``ttl`` seconds, never past the token's own expiry: a token deleted from the database by
    another process (``limner tokens revoke``) stops working within that time; one revoked through this
    process's API is forgotten at once (:meth:`forget`). Keys are token hashes, never tokens.
    """

    def __init__(self, ttl: float = 30.0, size: int = 1024) -> None:
        self.ttl = ttl
        self.size = size
        self._entries: OrderedDict[str, tuple[float, User]] = OrderedDict()

    def get(self, token: str) -> User | None:
        """The cached user of a token, if fresh."""
        key = hash_token(token)
        entry = self._entries.get(key)
        if entry is None or entry[0] < time.monotonic():
            self._entries.pop(key, None)
            return None
        self._entries.move_to_end(key)
        return entry[1]

    def put(self, token: str, user: User, *, expires_at: datetime | None = None) -> None:
        """Remember a verified token (until ``ttl`` from now or its expiry, whichever comes first)."""
        ttl = self.ttl if expires_at is None else min(self.ttl, (expires_at - utcnow()).total_seconds())
        self._entries[hash_token(token)] = (time.monotonic() + ttl, user)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def forget(self, token_hash: str) -> None:
        """Drop a revoked token, by its stored hash."""
        self._entries.pop(token_hash, None)


async def get_runtime(request: Request) -> Runtime:
    """The runtime opened by the lifespan (async: a sync dependency would cost a thread hop)."""
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


SESSION_COOKIE = "limner_session"
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


async def _session_user(request: Request, runtime: Runtime) -> User | None:
    """The user of the session cookie; changes must carry the session's CSRF token in X-CSRF-Token."""
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        return None
    found = await runtime.accounts.session(token)
    if found is None:
        return None
    user, csrf = found
    if request.method not in _SAFE_METHODS and not secrets.compare_digest(
        request.headers.get("x-csrf-token", ""), csrf
    ):
        raise CSRFError("The request lacks the page's CSRF token.", hint="Reload the page and try again.")
    return user


async def current_user(
    request: Request,
    runtime: RuntimeDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> User:
    """The caller: a bearer API token, else the browser session cookie; 401 otherwise."""
    if credentials is None:
        session_user = await _session_user(request, runtime)
        if session_user is not None:
            return session_user
    if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials:
        raise HTTPException(
            401,
            "Not signed in, and no API token was sent.",
            headers={"WWW-Authenticate": "Bearer"},
        )
    cache: TokenCache = request.app.state.token_cache
    user = cache.get(credentials.credentials)
    if user is not None:
        return user
    async with runtime.db.unit_of_work() as session:
        found = await UserRepository(session).verify_token(credentials.credentials)
    if found is None:
        raise HTTPException(
            401, "The API token is not valid (mistyped, revoked or expired).", headers={"WWW-Authenticate": "Bearer"}
        )
    user, row = found
    cache.put(credentials.credentials, user, expires_at=row.expires_at)
    return user


CurrentUser = Annotated[User, Depends(current_user)]
