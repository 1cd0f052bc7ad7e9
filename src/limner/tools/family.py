"""Tool families: a configured backend plus the tools it offers, and whether it is available and why.

A family is what an operator configures (``image_gen_oai``, later ``dalle``, ``stable-diffusion``,
``flux``, MCP servers) and what a user may need a key for; its ``id`` is also the provider name of the
user's stored key (``PUT /api/keys/{id}``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from limner.keys import KeySource
from limner.tools.base import ToolSpec

__all__ = ["Family", "FamilyStatus"]


@dataclass(frozen=True, slots=True)
class FamilyStatus:
    """What ``GET /api/tools`` and the UI say about a family."""

    id: str
    title: str
    available: bool
    reason: str | None = None
    is_sandbox: bool = False
    accepts_user_key: bool = False
    has_operator_key: bool = False
    backend: str | None = None
    endpoint: str | None = None
    model: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


class Family(Protocol):
    """A tool family as the registry sees it."""

    id: str
    title: str

    @property
    def status(self) -> FamilyStatus:
        """Availability and why."""
        ...

    @property
    def key_source(self) -> KeySource | None:
        """Where keys come from, or None when the upstream takes no key."""
        ...

    def tools(self) -> list[ToolSpec[Any]]:
        """The tools of this family (also when unavailable, so their schemas can be listed)."""
        ...
