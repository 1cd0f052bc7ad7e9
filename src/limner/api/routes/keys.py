"""``/api/keys``: the caller's own provider keys. Stored encrypted; never returned once saved."""

from __future__ import annotations

from fastapi import APIRouter, Response

from limner.api.deps import CurrentUser, RuntimeDep
from limner.api.errors import ERROR_RESPONSES
from limner.api.schemas import KeyIn, KeysOut, KeyStatusOut
from limner.errors import UnknownProviderError
from limner.keys import KeySource
from limner.runtime import Runtime

__all__ = ["router"]

router = APIRouter(prefix="/api/keys", tags=["keys"], responses=ERROR_RESPONSES)


def _source(runtime: Runtime, provider: str) -> KeySource:
    sources = runtime.key_sources()
    if provider not in sources:
        raise UnknownProviderError(
            f"No provider named {provider!r} takes a key.",
            hint=f"Known providers: {', '.join(sources) or 'none'}.",
        )
    return sources[provider]


@router.get("", summary="Which of the caller's provider keys are set (never the keys).")
async def list_keys(runtime: RuntimeDep, user: CurrentUser) -> KeysOut:
    """One entry per provider that takes a key."""
    stored = await runtime.keyring.stored(user.id)
    keys = [
        KeyStatusOut(
            provider=provider,
            is_set=provider in stored,
            updated_at=stored.get(provider),
            has_operator_key=source.operator_key is not None,
            accepts_user_key=source.operator_key is None,
        )
        for provider, source in runtime.key_sources().items()
    ]
    return KeysOut(keys=keys)


@router.put("/{provider}", status_code=204, summary="Store or replace the caller's key for a provider.")
async def put_key(runtime: RuntimeDep, user: CurrentUser, provider: str, body: KeyIn) -> Response:
    """The key is encrypted at rest and used when the operator set none."""
    _source(runtime, provider)
    await runtime.keyring.set(user.id, provider, body.key.strip())
    return Response(status_code=204)


@router.delete("/{provider}", status_code=204, summary="Remove the caller's key for a provider.")
async def delete_key(runtime: RuntimeDep, user: CurrentUser, provider: str) -> Response:
    """Idempotent."""
    _source(runtime, provider)
    await runtime.keyring.remove(user.id, provider)
    return Response(status_code=204)
