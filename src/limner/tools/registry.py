"""The registry of tool families: which exist, whether the operator configured them, how to build them.

A new family is one module with ``configured(settings)`` and ``build(ctx)``, listed here; the runtime, the
API, the CLI and the agent pick it up from this list.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from limner.config import Settings
from limner.tools import dalle, flux, mcp, openai, stable_diffusion
from limner.tools.family import BuildContext, Family

__all__ = ["FAMILIES", "FamilyEntry", "any_configured", "build_families"]


@dataclass(frozen=True, slots=True)
class FamilyEntry:
    """One family: its id, whether settings configure it, and its builder."""

    id: str
    configured: Callable[[Settings], bool]
    build: Callable[[BuildContext], Awaitable[Family | list[Family]]]
    """One family, or several (one per MCP server)."""
    counts_as_provider: bool = True
    """Whether configuring it keeps ``LIMNER_SANDBOX=auto`` off (MCP servers are not image providers)."""


FAMILIES: tuple[FamilyEntry, ...] = (
    FamilyEntry("image_gen_oai", openai.configured, openai.build),
    FamilyEntry("dalle", dalle.configured, dalle.build),
    FamilyEntry("stable-diffusion", stable_diffusion.configured, stable_diffusion.build),
    FamilyEntry("flux", flux.configured, flux.build),
    FamilyEntry("mcp", mcp.configured, mcp.build, counts_as_provider=False),
)


def any_configured(settings: Settings) -> bool:
    """Whether the operator configured any image provider (then ``LIMNER_SANDBOX=auto`` stays off)."""
    return any(entry.configured(settings) for entry in FAMILIES if entry.counts_as_provider)


async def build_families(ctx: BuildContext) -> list[Family]:
    """Every family, available or not (so ``GET /api/tools`` can say why not)."""
    families: list[Family] = []
    for entry in FAMILIES:
        built = await entry.build(ctx)
        families.extend(built if isinstance(built, list) else [built])
    return families
