"""``/api/health``: liveness, and whether the sandbox stands in for the providers."""

from __future__ import annotations

from fastapi import APIRouter

from limner import __version__
from limner.api.deps import RuntimeDep
from limner.api.schemas import HealthOut

__all__ = ["router"]

router = APIRouter(tags=["health"])


@router.get("/api/health", summary="Liveness, sandbox mode and tool family availability.")
async def health(runtime: RuntimeDep) -> HealthOut:
    """No authentication: it reveals configuration shape, never keys or users."""
    sandbox = runtime.sandbox
    families = [
        {"id": f.status.id, "available": f.status.available, "is_sandbox": f.status.is_sandbox}
        for f in runtime.families.values()
    ]
    return HealthOut(
        status="ok",
        version=__version__,
        sandbox={
            "active": sandbox is not None,
            "reason": sandbox.reason if sandbox else None,
            "base_url": sandbox.base_url if sandbox else None,
        },
        families=families,
    )
