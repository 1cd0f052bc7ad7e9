"""ImageLibrary: the only code that writes images, and the owner-checked way to read them.

Saving validates the bytes by content, writes the blob atomically under its content address, then inserts
the rows in one unit of work: a crash between the two leaves at most a blob without a row, which
:meth:`ImageLibrary.sweep` removes; never a row without its blob. Every read starts from the owner: an ID
that is unknown and an ID that belongs to someone else raise the same ``ImageNotFoundError``.

Content addresses are per owner (``images/<owner part>/ab/<sha256>``, thumbnails likewise): the same bytes
saved by two owners are two blobs, so neither the time a save takes nor the time a first thumbnail takes
can tell one user that another stored the same image. Rows written before keep their shared key
(``images/ab/<sha256>``), which stays readable and is swept by the rule it was written under.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import httpx2
from pydantic import BaseModel, ConfigDict

from limner.backends.base import ImageOutput
from limner.crashpoints import crash_point
from limner.db.models import Image
from limner.db.repositories import ImageRepository, StorageKeyRepository
from limner.db.session import Database
from limner.errors import ImageNotFoundError, ImageTooLargeError
from limner.ids import is_image_id, new_image_id, normalise_image_id
from limner.imaging import ImageInfo, make_thumbnail, validate_image
from limner.net import FetchPolicy, safe_fetch
from limner.storage import BlobStore

__all__ = ["ImageLibrary", "ImageLimits", "ImageRecord", "ParentLink", "Provenance", "SweepReport"]

log = logging.getLogger(__name__)

_LOCK_STRIPES = 64
THUMBNAIL_SIDE = 256
INPUT_BYTES_FACTOR = 4
"""One call's input images together may have this many times ``LIMNER_MAX_UPLOAD_BYTES``."""


class ImageRecord(BaseModel):
    """What callers see of a stored image (the storage key stays inside the library)."""

    model_config = ConfigDict(from_attributes=True, frozen=True)

    id: str
    owner_id: str
    created_at: datetime
    source: str
    backend: str | None
    endpoint: str | None
    model: str | None
    tool: str | None
    prompt: str | None
    revised_prompt: str | None
    parameters: dict[str, Any]
    usage: dict[str, Any] | None
    conversation_id: str | None
    message_id: str | None
    is_sandbox: bool
    original_name: str | None
    width: int
    height: int
    media_type: str
    byte_size: int
    sha256: str


class ParentLink(BaseModel):
    """One step of edit lineage; ``image`` is None when the parent was deleted since."""

    id: str
    role: str
    image: ImageRecord | None


@dataclass(frozen=True, slots=True)
class Provenance:
    """Where images come from; stored with each record."""

    source: str
    tool: str | None = None
    backend: str | None = None
    endpoint: str | None = None
    model: str | None = None
    prompt: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    parent_ids: tuple[str, ...] = ()
    parent_roles: tuple[str, ...] = ()
    conversation_id: str | None = None
    message_id: str | None = None
    is_sandbox: bool = False
    original_name: str | None = None


@dataclass(frozen=True, slots=True)
class ImageLimits:
    """Caps applied to every image that enters the library."""

    max_bytes: int
    max_pixels: int

    @property
    def max_call_input_bytes(self) -> int:
        """What one edit may read and send upstream in all (its inputs counted as often as they are named)."""
        return INPUT_BYTES_FACTOR * self.max_bytes


@dataclass(frozen=True, slots=True)
class SweepReport:
    """What a sweep removed or found."""

    orphan_blobs_removed: int
    temporaries_removed: int
    rows_missing_blobs: list[str]


@dataclass(frozen=True, slots=True)
class _Prepared:
    info: ImageInfo
    output: ImageOutput


class ImageLibrary:
    """Saves, reads, lists and deletes images, always on behalf of one owner."""

    def __init__(
        self,
        db: Database,
        store: BlobStore,
        limits: ImageLimits,
        fetch_policy: FetchPolicy,
        fetch_client: httpx2.AsyncClient | None = None,
    ) -> None:
        self.db = db
        self.store = store
        self.limits = limits
        self.fetch_policy = fetch_policy
        self.fetch_client = fetch_client
        self._locks = [asyncio.Lock() for _ in range(_LOCK_STRIPES)]
        # one maker per thumbnail: the same first thumbnail asked for eight times at once is made once
        self._thumbnail_makers: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    # --- writing -------------------------------------------------------------------------------

    async def save(
        self,
        owner_id: str,
        outputs: Sequence[ImageOutput],
        provenance: Provenance,
        *,
        fetch_policy: FetchPolicy | None = None,
    ) -> list[ImageRecord]:
        """Validate and store every output (all or none); returns the new records in order."""
        policy, provider = fetch_policy or self.fetch_policy, provenance.backend or "url"
        prepared = [await self._prepare(output, policy, provider, provenance.source) for output in outputs]
        keys = [_storage_key(owner_id, p.info.sha256) for p in prepared]
        async with self._locked(keys):
            for item, key in zip(prepared, keys, strict=True):
                await self.store.ensure(key, item.info.data)
            await crash_point("library.blobs_stored")
            try:
                rows = await self._insert(owner_id, prepared, keys, provenance)
            except BaseException:
                await self._forget_unreferenced(keys)
                raise
        return [ImageRecord.model_validate(row) for row in rows]

    async def _prepare(self, output: ImageOutput, policy: FetchPolicy, provider: str, source: str) -> _Prepared:
        data = output.data
        if data is None:
            assert output.url is not None  # guaranteed by ImageOutput's validator
            fetched = await safe_fetch(output.url, policy=policy, client=self.fetch_client, provider=provider)
            data = fetched.data
        limits = self.limits
        info = await validate_image(
            data, max_bytes=limits.max_bytes, max_pixels=limits.max_pixels, thorough=_needs_full_decode(source)
        )
        return _Prepared(info=info, output=output)

    async def _insert(
        self, owner_id: str, prepared: list[_Prepared], keys: list[str], provenance: Provenance
    ) -> list[Image]:
        rows = []
        async with self.db.unit_of_work(write=True) as session:
            repo = ImageRepository(session, owner_id)
            for item, key in zip(prepared, keys, strict=True):
                row = _new_row(item, key, provenance)
                await repo.add(row, provenance.parent_ids, provenance.parent_roles)
                rows.append(row)
            await crash_point("library.rows_uncommitted")
        return rows

    async def _forget_unreferenced(self, keys: Sequence[str]) -> None:
        """After a failed insert, remove blobs that no row points at (best effort; the sweep is the net).

        Shielded: this also runs when the save was cancelled (a client went away mid-save).
        """
        with anyio.CancelScope(shield=True):
            await self._forget_unreferenced_now(keys)

    async def _forget_unreferenced_now(self, keys: Sequence[str]) -> None:
        try:
            async with self.db.unit_of_work() as session:
                refs = StorageKeyRepository(session)
                unreferenced = [key for key in set(keys) if await refs.references(key) == 0]
            for key in unreferenced:
                await self.store.delete(key)
        except Exception:
            log.exception("could not clean up blobs after a failed save; the sweep will")

    # --- reading -------------------------------------------------------------------------------

    async def get(self, owner_id: str, image_id: str) -> ImageRecord:
        """One owned image's record."""
        return (await self.get_many(owner_id, [image_id]))[0]

    async def get_many(self, owner_id: str, image_ids: Sequence[str]) -> list[ImageRecord]:
        """Owned records in the order asked; the first unknown or foreign ID raises ImageNotFoundError."""
        return [ImageRecord.model_validate(row) for row in await self._rows(owner_id, image_ids)]

    async def _rows(self, owner_id: str, image_ids: Sequence[str]) -> list[Image]:
        wanted = [normalise_image_id(i) for i in image_ids]
        for raw, image_id in zip(image_ids, wanted, strict=True):
            if not is_image_id(image_id):
                raise ImageNotFoundError(raw)
        async with self.db.unit_of_work() as session:
            found = await ImageRepository(session, owner_id).get_many(wanted)
        for image_id in wanted:
            if image_id not in found:
                raise ImageNotFoundError(image_id)
        return [found[image_id] for image_id in wanted]

    async def read_many(
        self, owner_id: str, image_ids: Sequence[str], *, max_total_bytes: int | None = None
    ) -> list[tuple[ImageRecord, bytes]]:
        """Owned records with their bytes, in the order asked; each distinct blob is read once and shared.

        ``max_total_bytes`` refuses the whole read before any blob is loaded when the images, counted as
        often as they are named, add up to more.
        """
        rows = await self._rows(owner_id, image_ids)
        if max_total_bytes is not None:
            _check_input_total(rows, max_total_bytes)
        blobs: dict[str, bytes] = {}
        for row in rows:
            if row.storage_key not in blobs:
                blobs[row.storage_key] = await self.store.get(row.storage_key)
        return [(ImageRecord.model_validate(row), blobs[row.storage_key]) for row in rows]

    async def read_inputs(self, owner_id: str, image_ids: Sequence[str]) -> list[tuple[ImageRecord, bytes]]:
        """:meth:`read_many` for one call's inputs, within :attr:`ImageLimits.max_call_input_bytes`."""
        return await self.read_many(owner_id, image_ids, max_total_bytes=self.limits.max_call_input_bytes)

    async def content_path(self, owner_id: str, image_id: str) -> tuple[ImageRecord, Path | None, bytes | None]:
        """Where to stream an owned image from: a local path when the store has one, else its bytes."""
        row = (await self._rows(owner_id, [image_id]))[0]
        path = self.store.local_path(row.storage_key)
        data = None if path is not None else await self.store.get(row.storage_key)
        return ImageRecord.model_validate(row), path, data

    async def recent(
        self, owner_id: str, *, limit: int = 20, before: str | None = None, source: str | None = None
    ) -> list[ImageRecord]:
        """Newest first, paginated by the last ID of the previous page."""
        async with self.db.unit_of_work() as session:
            rows = await ImageRepository(session, owner_id).recent(limit=limit, before=before, source=source)
        return [ImageRecord.model_validate(row) for row in rows]

    async def parents(self, owner_id: str, image_id: str) -> list[ParentLink]:
        """The lineage of an owned image (raises ImageNotFoundError when not owned)."""
        await self._rows(owner_id, [image_id])
        async with self.db.unit_of_work() as session:
            links = await ImageRepository(session, owner_id).parents(normalise_image_id(image_id))
        return [
            ParentLink(id=pid, role=role, image=None if row is None else ImageRecord.model_validate(row))
            for pid, role, row in links
        ]

    async def thumbnail(self, owner_id: str, image_id: str) -> bytes:
        """A WebP thumbnail, made on first request and kept for this owner (never shared with another).

        Requests for the same thumbnail at once wait for the first to make it, then read it.
        """
        row = (await self._rows(owner_id, [image_id]))[0]
        key = _thumbnail_key(owner_id, row.sha256)
        maker = self._thumbnail_makers.setdefault(key, asyncio.Lock())
        async with maker:
            if await self.store.exists(key):
                return await self.store.get(key)
            thumb = await make_thumbnail(await self.store.get(row.storage_key), THUMBNAIL_SIDE)
            # under the lock, so that a delete in between does not leave the thumbnail behind
            async with self._locked([row.storage_key]), self.db.unit_of_work() as session:
                if await ImageRepository(session, owner_id).get(row.id) is not None:
                    await self.store.put(key, thumb)
        return thumb

    # --- deleting ------------------------------------------------------------------------------

    async def delete(self, owner_id: str, image_id: str) -> None:
        """Delete an owned image; its blob goes when no other record points at it (only the owner's can,
        except for a blob of the shared layout written before per-owner keys).
        """
        row = (await self._rows(owner_id, [image_id]))[0]
        async with self._locked([row.storage_key]):
            async with self.db.unit_of_work(write=True) as session:
                await ImageRepository(session, owner_id).delete(row.id)
                remaining = await StorageKeyRepository(session).references(row.storage_key)
            shared = _is_shared_layout(row.storage_key)
            if remaining == 0 or shared:  # the owner's thumbnail (remade if another of theirs has these bytes)
                await self.store.delete(_thumbnail_key(owner_id, row.sha256))
            if remaining == 0:
                await self.store.delete(row.storage_key)
                if shared:
                    await self.store.delete(_shared_thumbnail_key(row.sha256))

    async def sweep(self, min_age: float = 3600.0) -> SweepReport:
        """Remove blobs and thumbnails no row needs (older than ``min_age`` s, so in-flight saves are safe).

        A row needs its blob and its owner's thumbnail. A key of the shared layout (written before
        per-owner keys) keeps the rule it was written under: spared while any row holds the same bytes.
        Each candidate is re-checked under its stripe lock, against a fresh reference count and a fresh
        modification time, just before it is deleted: a save that reused the blob meanwhile wins.
        """
        async with self.db.unit_of_work() as session:
            holders = await StorageKeyRepository(session).holders()
        referenced = {key for _, _, key in holders}
        needed = referenced | {_thumbnail_key(owner_id, sha) for owner_id, sha, _ in holders}
        held_shas = {sha for _, sha, _ in holders}
        cutoff, removed, seen = time.time() - min_age, 0, set()
        async for key, mtime in self.store.iter_keys():
            seen.add(key)
            if key in needed or mtime > cutoff or (_is_shared_layout(key) and _sha_of(key) in held_shas):
                continue
            removed += await self._remove_if_orphan(key, cutoff)
        temporaries = await self.store.remove_stale_temporaries(min_age)
        missing = sorted(referenced - seen)
        if missing:
            log.error("%d image records point at missing blobs", len(missing))
        return SweepReport(orphan_blobs_removed=removed, temporaries_removed=temporaries, rows_missing_blobs=missing)

    async def _remove_if_orphan(self, key: str, cutoff: float) -> int:
        image_key = _image_key_of(key)  # a thumbnail is checked, and locked, by its blob's key
        async with self._locked([image_key]):
            async with self.db.unit_of_work() as session:
                referenced = await StorageKeyRepository(session).references(image_key)
            if referenced:
                return 0
            modified = await self.store.modified(key)
            if modified is None or modified > cutoff:
                return 0
            await self.store.delete(key)
            return 1

    async def sweep_and_report(self) -> SweepReport:
        """:meth:`sweep` with its default age, logged when it removed something (the scheduled sweep)."""
        report = await self.sweep()
        if report.orphan_blobs_removed or report.temporaries_removed:
            log.info(
                "sweep removed %d stored files without a record and %d temporary files",
                report.orphan_blobs_removed,
                report.temporaries_removed,
            )
        return report

    def _locked(self, keys: Sequence[str]) -> _MultiLock:
        stripes = sorted({hash(key) % _LOCK_STRIPES for key in keys})
        return _MultiLock([self._locks[i] for i in stripes])


class _MultiLock:
    """Acquire several stripe locks in a fixed order (no deadlock between concurrent saves)."""

    def __init__(self, locks: list[asyncio.Lock]) -> None:
        self.locks = locks

    async def __aenter__(self) -> None:
        for lock in self.locks:
            await lock.acquire()

    async def __aexit__(self, *exc: object) -> None:
        for lock in reversed(self.locks):
            lock.release()


def _needs_full_decode(source: str) -> bool:
    """Bytes from people or arbitrary MCP servers get a full decode; an image service's own output (PNG)
    gets the structural check, which catches truncation and corruption at a fraction of the cost.
    """
    return source not in ("generated", "edited")


def _owner_part(owner_id: str) -> str:
    """The owner's folder in the store: hex of fixed length whatever the ID looks like (keys are checked)."""
    return hashlib.sha256(owner_id.encode()).hexdigest()[:32]


def _storage_key(owner_id: str, sha256: str) -> str:
    return f"images/{_owner_part(owner_id)}/{sha256[:2]}/{sha256}"


def _thumbnail_key(owner_id: str, sha256: str) -> str:
    """Per owner for every row, also those whose blob has a shared-layout key."""
    return f"thumbs/{_owner_part(owner_id)}/{sha256[:2]}/{sha256}.w{THUMBNAIL_SIDE}"


def _shared_thumbnail_key(sha256: str) -> str:
    """Where thumbnails were kept before per-owner keys (only deleted now)."""
    return f"thumbs/{sha256[:2]}/{sha256}.w{THUMBNAIL_SIDE}"


def _is_shared_layout(key: str) -> bool:
    """``images/ab/<sha256>`` or ``thumbs/ab/<sha256>.w256``: written before keys were per owner."""
    return key.count("/") == 2


def _sha_of(key: str) -> str:
    return key.rsplit("/", 1)[-1].split(".", 1)[0]


def _image_key_of(key: str) -> str:
    """The blob key a stored key belongs to: itself, or for ``thumbs/<path>.w256`` ``images/<path>``."""
    _kind, _, path = key.partition("/")
    return "images/" + path.split(".", 1)[0]


def _check_input_total(rows: Sequence[Image], max_total_bytes: int) -> None:
    total = sum(row.byte_size for row in rows)
    if total > max_total_bytes:
        raise ImageTooLargeError(
            f"The {len(rows)} input images of this call total {total:,} bytes; one call may send at most "
            f"{max_total_bytes:,} bytes ({INPUT_BYTES_FACTOR} x LIMNER_MAX_UPLOAD_BYTES), an image counted "
            "each time it is named.",
            hint="Name fewer or smaller images, or ask the operator to raise LIMNER_MAX_UPLOAD_BYTES.",
        )


def _new_row(item: _Prepared, key: str, provenance: Provenance) -> Image:
    usage = item.output.provider_details.get("usage")
    return Image(
        id=new_image_id(),
        source=provenance.source,
        backend=provenance.backend,
        endpoint=provenance.endpoint,
        model=provenance.model,
        tool=provenance.tool,
        prompt=provenance.prompt,
        revised_prompt=item.output.revised_prompt,
        parameters=dict(provenance.parameters),
        usage=usage if isinstance(usage, dict) else None,
        conversation_id=provenance.conversation_id,
        message_id=provenance.message_id,
        is_sandbox=provenance.is_sandbox,
        original_name=provenance.original_name,
        width=item.info.width,
        height=item.info.height,
        media_type=item.info.media_type,
        byte_size=len(item.info.data),
        sha256=item.info.sha256,
        storage_key=key,
    )
