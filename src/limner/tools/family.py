"""Tool families: a configured backend plus the tools it offers, and whether it is available and why.

A family is what an operator configures (``image_gen_oai``, ``dalle``, ``stable-diffusion``, ``flux``, MCP
servers) and what a user may need a key for; its ``id`` is also the provider name of the user's stored key
(``PUT /api/keys/{id}``). :class:`BackendFamily` holds what every image family does the same way: resolve
the key, read input images for the caller, save outputs with their provenance, and write the text the LLM
reads. Subclasses only declare their tools.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx2

from limner.backends.base import Backend, ImageOutput, InputImage
from limner.config import Settings
from limner.errors import ConfigurationError
from limner.imaging import extension_for, prepare_mask
from limner.keys import KeySource
from limner.library import ImageRecord, Provenance
from limner.net import FetchPolicy
from limner.tools.base import ToolContext, ToolResult, ToolSpec
from limner.tools.texts import describe_new_images

__all__ = [
    "SANDBOX_KEY",
    "BackendFamily",
    "BuildContext",
    "EditInputs",
    "Family",
    "FamilyStatus",
    "SandboxURLs",
    "available_status",
    "unavailable_status",
]

SANDBOX_KEY = "sk-sandbox"
"""The key families send to the emulators (which accept any non-empty key)."""


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


@dataclass(frozen=True, slots=True)
class SandboxURLs:
    """Where the built-in emulators answer, when they stand in for the providers, and why."""

    urls: dict[str, str]
    reason: str


@dataclass(frozen=True, slots=True)
class BuildContext:
    """What a family builder needs: the settings, the emulators (when they stand in), an HTTP client factory
    (the runtime owns and closes what it makes; ``sandbox=True`` gives one without the proxy).
    """

    settings: Settings
    sandbox: SandboxURLs | None
    http_client: Callable[[bool], Awaitable[httpx2.AsyncClient]]
    on_close: Callable[[Callable[[], Awaitable[None]]], None] = lambda _callback: None
    """Registers a cleanup the runtime runs when it closes (MCP connections, say)."""

    def sandbox_reason(self) -> str:
        """How the status explains that the emulators answer."""
        assert self.sandbox is not None
        return f"sandbox: {self.sandbox.reason}"

    def fetch_policy(self, *, sandbox: bool, allowed_hosts: frozenset[str] | None = None) -> FetchPolicy:
        """The safe-fetch policy for a family's result URLs (the emulators live on loopback)."""
        settings = self.settings
        return FetchPolicy(
            max_bytes=settings.max_upload_bytes,
            allow_loopback=sandbox or settings.fetch_allow_loopback,
            allowed_hosts=None if sandbox else allowed_hosts,
            proxy=None if sandbox else settings.proxy,
        )


def available_status(
    family: type[BackendFamily], backend: Backend, model: str, source: KeySource | None, *, reason: str | None
) -> FamilyStatus:
    """The status of a family that can run."""
    operator = source.operator_key if source is not None else None
    return FamilyStatus(
        id=family.id,
        title=family.title,
        available=True,
        reason=reason,
        is_sandbox=backend.is_sandbox,
        accepts_user_key=source is not None and not backend.is_sandbox and operator is None,
        has_operator_key=operator is not None,
        backend=backend.backend_name,
        endpoint=backend.endpoint,
        model=model,
        details={"model_status": backend.profile(model).status},
    )


def unavailable_status(family: type[BackendFamily], reason: str, model: str | None = None) -> FamilyStatus:
    """The status of a family that is not configured."""
    return FamilyStatus(id=family.id, title=family.title, available=False, reason=reason, model=model)


@dataclass(frozen=True, slots=True)
class EditInputs:
    """An edit's input images as the backend takes them, with their records (for lineage and the LLM's text)."""

    records: list[ImageRecord]
    images: tuple[InputImage, ...]
    mask_record: ImageRecord | None = None
    mask: InputImage | None = None

    @property
    def referenced(self) -> list[str]:
        """The input images' IDs, in the order asked."""
        return [rec.id for rec in self.records]

    def parents(self) -> list[tuple[str, str]]:
        """(image ID, role) pairs for the lineage of what the edit makes."""
        parents = [(rec.id, "input") for rec in self.records]
        return parents if self.mask_record is None else [*parents, (self.mask_record.id, "mask")]


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


class BackendFamily:
    """A family backed by one image backend and model; subclasses define ``_build_tools``."""

    id: str = "family"
    title: str = "Family"
    enable_hint: str = ""
    """What an operator sets to enable the family, for the 'not available' error."""
    url_setting: str = ""
    """The setting that says where the provider answers, named when the probe finds nobody there."""

    def __init__(
        self,
        *,
        backend: Backend | None,
        model: str,
        key_source: KeySource | None,
        status: FamilyStatus,
        fetch_policy: FetchPolicy | None = None,
    ) -> None:
        self.backend = backend
        self.model = model
        self._key_source = key_source
        self._status = status
        self.fetch_policy = fetch_policy
        self._tools: list[ToolSpec[Any]] | None = None

    @property
    def status(self) -> FamilyStatus:
        """Availability and why."""
        return self._status

    @property
    def key_source(self) -> KeySource | None:
        """The operator's key variable, else the user's stored key for this family."""
        return self._key_source

    def tools(self) -> list[ToolSpec[Any]]:
        """The family's tools, built once (schemas are pydantic models made at run time)."""
        if self._tools is None:
            self._tools = self._build_tools()
        return self._tools

    def _build_tools(self) -> list[ToolSpec[Any]]:
        raise NotImplementedError

    # --- helpers for the tools -------------------------------------------------------------------

    def ready(self) -> Backend:
        """The backend, or the reason the family cannot run."""
        if self.backend is None:
            raise ConfigurationError(f"{self.title} are not available: {self._status.reason}", hint=self.enable_hint)
        return self.backend

    async def api_key(self, ctx: ToolContext) -> str | None:
        """The key for this call (operator's, else the caller's), or None when the upstream takes none."""
        if self._key_source is None:
            return None
        return await ctx.keyring.resolve(ctx.user_id, self._key_source)

    async def inputs(self, ctx: ToolContext, image_ids: Sequence[str], mask_id: str | None = None) -> EditInputs:
        """The caller's images (and mask) by ID as backend inputs; an unknown or foreign ID fails the call.

        One read for all of them: each distinct image is loaded once however often it is named (an LLM may
        repeat an ID sixteen times), and the call is refused before anything is loaded when its inputs
        together exceed the library's per-call cap. The mask becomes an RGBA PNG of the first image's size.
        """
        ids = [*image_ids, *([mask_id] if mask_id is not None else [])]
        found = await ctx.library.read_inputs(ctx.user_id, ids)
        shared: dict[str, InputImage] = {}
        for rec, data in found[: len(image_ids)]:
            if rec.id not in shared:
                shared[rec.id] = InputImage(data=data, media_type=rec.media_type, name=_name(rec))
        records = [rec for rec, _ in found[: len(image_ids)]]
        images = tuple(shared[rec.id] for rec in records)
        if mask_id is None:
            return EditInputs(records=records, images=images)
        mask_record, data = found[-1]
        png = await prepare_mask(data, (records[0].width, records[0].height))
        mask = InputImage(data=png, media_type="image/png", name="mask.png")
        return EditInputs(records=records, images=images, mask_record=mask_record, mask=mask)

    async def save(
        self,
        ctx: ToolContext,
        outputs: list[ImageOutput],
        *,
        tool: str,
        prompt: str,
        params: dict[str, Any],
        parents: Sequence[tuple[str, str]] = (),
        model: str | None = None,
    ) -> list[ImageRecord]:
        """Store outputs with their provenance; ``parents`` are (image ID, role) pairs for lineage."""
        backend = self.ready()
        provenance = Provenance(
            source="edited" if parents else "generated",
            tool=tool,
            backend=backend.backend_name,
            endpoint=backend.endpoint,
            model=model or self.model,
            prompt=prompt,
            parameters={k: v for k, v in params.items() if k != "prompt"},
            parent_ids=tuple(pid for pid, _ in parents),
            parent_roles=tuple(role for _, role in parents),
            conversation_id=ctx.conversation_id,
            message_id=ctx.message_id,
            is_sandbox=backend.is_sandbox,
        )
        return await ctx.library.save(ctx.user_id, outputs, provenance, fetch_policy=self.fetch_policy)

    def result(
        self,
        records: list[ImageRecord],
        *,
        referenced: Sequence[str],
        action: str,
        edit_tool: str,
        model: str | None = None,
    ) -> ToolResult:
        """The success result: the LLM's text names every ID; metadata is for UIs."""
        used = model or self.model
        text = describe_new_images(records, action=action, model=used, referenced=list(referenced), edit_tool=edit_tool)
        metadata = {
            "tool_family": self.id,
            "model": used,
            "image_ids": [r.id for r in records],
            "referenced_image_ids": list(referenced),
            "is_sandbox": self._status.is_sandbox,
        }
        return ToolResult(text=text, images=records, metadata=metadata)


def _name(record: ImageRecord) -> str:
    return f"{record.id}.{extension_for(record.media_type)}"
