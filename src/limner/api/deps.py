"""Request dependencies: the runtime, and the caller resolved from a bearer API token."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from limner.db.models import User
from limner.db.repositories import UserRepository
from limner.runtime import Runtime

__all__ = ["CurrentUser", "RuntimeDep", "get_runtime"]

_bearer = HTTPBearer(auto_error=False, description="An API token from `limner tokens create`.")


def get_runtime(request: Request) -> Runtime:
    """The runtime opened by the lifespan."""
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


async def current_user(
    runtime: RuntimeDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> User:
    """The token's owner; 401 with a WWW-Authenticate challenge otherwise."""
    if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials:
        raise HTTPException(
            401,
            "Sign in: send an API token as 'Authorization: Bearer <token>'.",
            headers={"WWW-Authenticate": "Bearer"},
        )
    async with runtime.db.unit_of_work() as session:
        user = await UserRepository(session).by_token(credentials.credentials)
    if user is None:
        raise HTTPException(401, "The API token is not valid.", headers={"WWW-Authenticate": "Bearer"})
    return user


CurrentUser = Annotated[User, Depends(current_user)]
