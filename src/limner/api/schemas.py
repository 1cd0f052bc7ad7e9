"""Response and request bodies of the HTTP API (they make the OpenAPI document complete)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from limner.library import ImageRecord
from limner.probes import ProbeResult

__all__ = [
    "ErrorBody",
    "ErrorResponse",
    "FamilyHealthOut",
    "FamilyOut",
    "HealthOut",
    "ImageDetailOut",
    "ImageListOut",
    "ImageOut",
    "KeyIn",
    "KeyStatusOut",
    "KeysOut",
    "ParentOut",
    "ProbeOut",
    "SandboxOut",
    "ToolOut",
    "ToolResultOut",
    "ToolsOut",
]


class ErrorBody(BaseModel):
    """What went wrong, and what to do."""

    code: str = Field(description="Stable snake_case code, e.g. image_not_found, provider_auth_failed.")
    message: str
    hint: str | None = None
    provider: str | None = Field(None, description="The upstream that failed, for provider errors.")


class ErrorResponse(BaseModel):
    """Every error answer has this shape."""

    error: ErrorBody


class ImageOut(BaseModel):
    """An image record as the API shows it, with links to its bytes."""

    id: str
    created_at: datetime
    source: str = Field(description="generated, edited, uploaded or mcp")
    tool: str | None
    backend: str | None
    model: str | None
    prompt: str | None
    revised_prompt: str | None
    parameters: dict[str, Any]
    usage: dict[str, Any] | None
    conversation_id: str | None
    is_sandbox: bool = Field(description="Made by the built-in emulators, not a real image model.")
    original_name: str | None
    width: int
    height: int
    media_type: str
    byte_size: int
    sha256: str
    content_url: str
    thumbnail_url: str

    @classmethod
    def of(cls, record: ImageRecord) -> ImageOut:
        """From a library record."""
        base = f"/api/images/{record.id}"
        data = record.model_dump(exclude={"owner_id", "endpoint", "message_id"})
        return cls(**data, content_url=f"{base}/content", thumbnail_url=f"{base}/thumbnail")


class ParentOut(BaseModel):
    """A parent in the lineage; ``image`` is null when it was deleted."""

    id: str
    role: str = Field(description="input or mask")
    image: ImageOut | None


class ImageDetailOut(ImageOut):
    """An image with its parents (edit lineage)."""

    parents: list[ParentOut]


class ImageListOut(BaseModel):
    """A page of images, newest first."""

    images: list[ImageOut]
    next_before: str | None = Field(description="Pass as `before` to get the next page; null at the end.")


class ToolOut(BaseModel):
    """One tool as the LLM sees it."""

    name: str
    title: str
    description: str
    parameters: dict[str, Any] = Field(description="JSON schema of the arguments.")
    available: bool


class ProbeOut(BaseModel):
    """The last probe of a configured provider (none for emulators and MCP servers)."""

    state: Literal["unknown", "answering", "not_answering"] = Field(
        description="unknown: not probed yet (the first probe runs just after start)."
    )
    checked_at: datetime | None
    detail: str | None = Field(description="Why it is not answering (never an address).")
    hint: str | None = Field(description="The setting to check.")


class FamilyOut(BaseModel):
    """A tool family, whether it can run, and why not."""

    id: str
    title: str
    available: bool
    reason: str | None
    is_sandbox: bool
    accepts_user_key: bool
    has_user_key: bool
    backend: str | None
    model: str | None
    provider: ProbeOut | None = Field(description="Whether the configured provider answers (see /api/health).")
    tools: list[ToolOut]


class ToolsOut(BaseModel):
    """Every tool family."""

    families: list[FamilyOut]


class ToolResultOut(BaseModel):
    """What a tool returned: the LLM's text, the images, and metadata for UIs."""

    text: str
    images: list[ImageOut]
    metadata: dict[str, Any]


class KeyIn(BaseModel):
    """A provider key to store (encrypted; never returned).

    The limits apply to the key as sent, so the schema and the server agree (a padded key over the length
    is refused, a blank one too); surrounding whitespace is removed before the key is stored.
    """

    key: str = Field(min_length=1, max_length=4096, pattern=r"\S", description="The key; not only whitespace.")


class KeyStatusOut(BaseModel):
    """Whether a key is set, never the key."""

    provider: str
    is_set: bool
    updated_at: datetime | None
    has_operator_key: bool
    accepts_user_key: bool


class KeysOut(BaseModel):
    """The caller's key status per provider."""

    keys: list[KeyStatusOut]


class SandboxOut(BaseModel):
    """Whether the built-in emulators stand in for the providers, and why."""

    active: bool = Field(description="The image emulators stand in for the image providers.")
    reason: str | None
    chat: bool = Field(description="The rule-based sandbox chat model answers (no LIMNER_CHAT_MODEL).")


class FamilyHealthOut(BaseModel):
    """One tool family's availability."""

    id: str
    available: bool
    is_sandbox: bool
    provider: ProbeOut | None = Field(
        None, description="The last probe of the configured provider; null for emulators, MCP and unconfigured."
    )


class HealthOut(BaseModel):
    """Liveness and what is configured."""

    status: str
    version: str
    sandbox: SandboxOut
    families: list[FamilyHealthOut]


def probe_out(result: ProbeResult | None) -> ProbeOut | None:
    """The API form of a probe result."""
    if result is None:
        return None
    checked = datetime.fromtimestamp(result.checked_at, UTC) if result.checked_at is not None else None
    return ProbeOut(state=result.state, checked_at=checked, detail=result.detail, hint=result.hint)
