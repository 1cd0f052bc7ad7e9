"""The registry of tool families: which exist, whether the operator configured them, how to build them.

A new family is one module with ``configured(settings)`` and ``build(ctx)``, listed here; the runtime, the
API, the CLI and the agent pick it up from this list.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from limner.config import Settings
from limner.tools import dalle, flux, openai, stable_diffusion
from limner.tools.family import BuildContext, Family

__all__ = ["FAMILIES", "FamilyEntry", "any_configured", "build_families"]


@dataclass(frozen=True, slots=True)
class FamilyEntry:
    """One family: its id, whether settings configure it, and its builder."""

    id: str
    configured: Callable[[Settings], bool]
    build: Callable[[BuildContext], Awaitable[Family]]


FAMILIES: tuple[FamilyEntry, ...] = (
    FamilyEntry("image_gen_oai", openai.configured, openai.build),
    FamilyEntry("dalle", dalle.configured, dalle.build),
    FamilyEntry("stable-diffusion", stable_diffusion.configured, stable_diffusion.build),
    FamilyEntry("flux", flux.configured, flux.build),
)


def any_configured(settings: Settings) -> bool:
    """Whether the operator configured any image provider (then ``LIMNER_SANDBOX=auto`` stays off)."""
    return any(entry.configured(settings) for entry in FAMILIES)


async def build_families(ctx: BuildContext) -> list[Family]:
    """Every family, available or not (so ``GET /api/tools`` can say why not)."""
    return [await entry.build(ctx) for entry in FAMILIES]
