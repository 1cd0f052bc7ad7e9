"""Blob stores: where image bytes live. Records live in the database; this layer knows only keys.

A store never decides ownership: keys are content addresses handed out by the library (per owner, so no
blob is shared between users), and every read reaches a store only after an owner-scoped database query
found the key.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Protocol

from limner.storage.local import LocalBlobStore, make_private

__all__ = ["BlobStore", "LocalBlobStore", "make_private"]


class BlobStore(Protocol):
    """What the library needs from a store; writes are atomic (all or nothing)."""

    async def put(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key`` atomically; an existing identical blob is left as is."""
        ...

    async def get(self, key: str) -> bytes:
        """The blob's bytes; ``StorageError`` when it is missing."""
        ...

    async def delete(self, key: str) -> None:
        """Remove the blob; a missing blob is not an error."""
        ...

    async def exists(self, key: str) -> bool:
        """Whether the blob exists."""
        ...

    async def ensure(self, key: str, data: bytes) -> None:
        """Write the blob unless it exists; an existing one is marked fresh (a concurrent sweep keeps it)."""
        ...

    async def modified(self, key: str) -> float | None:
        """The blob's modification time, or None when it is missing."""
        ...

    def local_path(self, key: str) -> Path | None:
        """A file path to stream from, when the store is local (None otherwise)."""
        ...

    def iter_keys(self) -> AsyncIterator[tuple[str, float]]:
        """Every stored key with its modification time, for the orphan sweep."""
        ...

    async def remove_stale_temporaries(self, min_age: float) -> int:
        """Delete temporary files left by a crash mid-write; returns how many were removed."""
        ...
