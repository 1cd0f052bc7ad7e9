"""``/api/tools``: every tool family with its schemas and availability; run a tool as the caller."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body

from limner.api.deps import CurrentUser, RuntimeDep
from limner.api.errors import ERROR_RESPONSES
from limner.api.schemas import FamilyOut, ImageOut, ProbeOut, ToolOut, ToolResultOut, ToolsOut, probe_out
from limner.tools.base import ToolSpec, run_tool
from limner.tools.family import FamilyStatus

__all__ = ["router"]

router = APIRouter(prefix="/api/tools", tags=["tools"], responses=ERROR_RESPONSES)


@router.get("", summary="Every tool family: schemas, availability and why not.")
async def list_tools(runtime: RuntimeDep, user: CurrentUser) -> ToolsOut:
    """Families in a stable order; the library tools first."""
    stored = await runtime.keyring.stored(user.id)
    grouped: dict[str, tuple[FamilyStatus | None, list[ToolSpec[Any]]]] = {}
    for spec, status in runtime.all_tools():
        grouped.setdefault(spec.family, (status, []))[1].append(spec)
    families = [
        _family(fid, st, specs, fid in stored, probe_out(runtime.probes.result(fid)))
        for fid, (st, specs) in grouped.items()
    ]
    return ToolsOut(families=families)


def _family(
    family_id: str, status: FamilyStatus | None, specs: list[ToolSpec[Any]], has_key: bool, provider: ProbeOut | None
) -> FamilyOut:
    available = status.available if status else True
    tools = [
        ToolOut(
            name=s.name,
            title=s.title,
            description=s.description,
            parameters=s.json_schema(),
            available=available,
        )
        for s in specs
    ]
    return FamilyOut(
        id=family_id,
        title=status.title if status else "Image library",
        available=available,
        reason=status.reason if status else None,
        is_sandbox=status.is_sandbox if status else False,
        accepts_user_key=status.accepts_user_key if status else False,
        has_user_key=has_key,
        backend=status.backend if status else None,
        model=status.model if status else None,
        provider=provider,
        tools=tools,
    )


@router.post("/{name}", summary="Run a tool as the caller with the JSON arguments an LLM would send.")
async def call_tool(
    runtime: RuntimeDep,
    user: CurrentUser,
    name: str,
    arguments: dict[str, Any] = Body(default_factory=dict, examples=[{"prompt": "a lighthouse at dusk"}]),  # noqa: B008
) -> ToolResultOut:
    """Errors come back in the one error shape with the status of their class."""
    spec = runtime.tool(name)
    result = await run_tool(spec, arguments, runtime.tool_context(user.id))
    return ToolResultOut(text=result.text, images=[ImageOut.of(r) for r in result.images], metadata=result.metadata)
