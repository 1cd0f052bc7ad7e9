"""``/api/tokens``: the caller's own API tokens: list, create, revoke.

A token is shown once, when it is created; afterwards only its ID, name, first characters (``prefix``),
times and expiry are. Only SHA-256 hashes are stored. A caller sees and revokes only their own tokens:
another user's token ID answers 404 ``token_not_found``, like an unknown one.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from limner.api.deps import CurrentUser, RuntimeDep, TokenCache
from limner.api.errors import ERROR_RESPONSES
from limner.db.models import ApiToken, utcnow
from limner.db.repositories import TokenRepository
from limner.errors import TokenNotFoundError
from limner.ids import new_api_token

__all__ = ["TokenCreatedOut", "TokenIn", "TokenOut", "TokensOut", "router"]

router = APIRouter(prefix="/api/tokens", tags=["tokens"], responses=ERROR_RESPONSES)


def _whole_number(value: object) -> object:
    """JSON Schema counts 30.0 as an integer, and so do we; strict mode still refuses "30" and 30.5."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


class TokenIn(BaseModel):
    """A new token's label and optional lifetime."""

    model_config = ConfigDict(strict=True, extra="forbid")

    name: str = Field("", max_length=100, description="A label to recognise the token by.")
    expires_in_days: Annotated[int, Field(ge=1, le=3650), BeforeValidator(_whole_number)] | None = Field(
        None, description="Days until the token stops working; null: it never expires."
    )


class TokenOut(BaseModel):
    """An API token, never its secret."""

    id: str
    name: str
    prefix: str | None = Field(
        description="The token's first characters; null for tokens made before prefixes were stored."
    )
    created_at: datetime
    last_used_at: datetime | None = Field(description="Updated at most once a minute.")
    expires_at: datetime | None

    @classmethod
    def of(cls, row: ApiToken) -> TokenOut:
        """From a row."""
        return cls(
            id=row.id,
            name=row.name,
            prefix=row.prefix,
            created_at=row.created_at,
            last_used_at=row.last_used_at,
            expires_at=row.expires_at,
        )


class TokenCreatedOut(TokenOut):
    """A new token, with its secret: shown only in this answer."""

    token: str = Field(description="Send as 'Authorization: Bearer <token>'. It is not shown again.")


class TokensOut(BaseModel):
    """The caller's tokens, newest first."""

    tokens: list[TokenOut]


@router.get("", summary="The caller's API tokens (never the secrets).")
async def list_tokens(runtime: RuntimeDep, user: CurrentUser) -> TokensOut:
    """Expired tokens stay listed until the hourly sweep removes them."""
    async with runtime.db.unit_of_work() as session:
        rows = await TokenRepository(session, user.id).all()
    return TokensOut(tokens=[TokenOut.of(row) for row in rows])


@router.post("", status_code=201, summary="Create an API token for the caller (shown once).")
async def create_token(runtime: RuntimeDep, user: CurrentUser, body: TokenIn) -> TokenCreatedOut:
    """The answer is the only place the token appears."""
    token = new_api_token()
    expires_at = utcnow() + timedelta(days=body.expires_in_days) if body.expires_in_days else None
    async with runtime.db.unit_of_work(write=True) as session:
        row = await TokenRepository(session, user.id).add(token, body.name, expires_at=expires_at)
    return TokenCreatedOut(**TokenOut.of(row).model_dump(), token=token)


@router.delete(
    "/{token_id}",
    status_code=204,
    summary="Revoke one of the caller's API tokens.",
    responses={404: {"description": "token_not_found: unknown, or not the caller's token (one answer for both)"}},
)
async def revoke_token(runtime: RuntimeDep, user: CurrentUser, token_id: str, request: Request) -> Response:
    """The token stops working at once on this server (another process forgets it within 30 seconds)."""
    async with runtime.db.unit_of_work(write=True) as session:
        row = await TokenRepository(session, user.id).revoke(token_id)
    if row is None:
        raise TokenNotFoundError(f"No API token with ID {token_id!r} was found.", hint="GET /api/tokens lists yours.")
    cache: TokenCache = request.app.state.token_cache
    cache.forget(row.token_hash)
    return Response(status_code=204)
