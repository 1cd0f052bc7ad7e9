"""``/api/health``: liveness, and whether the sandbox stands in for the providers."""

from __future__ import annotations

from fastapi import APIRouter

from limner import __version__
from limner.api.deps import RuntimeDep
from limner.api.schemas import FamilyHealthOut, HealthOut, SandboxOut, probe_out

__all__ = ["router"]

router = APIRouter(tags=["health"])


@router.get("/api/health", summary="Liveness, sandbox mode and tool family availability.")
async def health(runtime: RuntimeDep) -> HealthOut:
    """No authentication: it reveals the configuration's shape, never keys, users or addresses."""
    sandbox = runtime.sandbox
    families = [
        FamilyHealthOut(
            id=f.status.id,
            available=f.status.available,
            is_sandbox=f.status.is_sandbox,
            provider=probe_out(runtime.probes.result(f.status.id)),
        )
        for f in runtime.families.values()
    ]
    return HealthOut(
        status="ok",
        version=__version__,
        sandbox=SandboxOut(
            active=sandbox is not None and sandbox.reason is not None,
            reason=sandbox.reason if sandbox else None,
            chat=sandbox is not None and sandbox.chat,
        ),
        families=families,
    )
