"""Local blob store: content-addressed files under the data dir, written atomically.

A write goes to a temporary file in the destination folder, is fsynced, then renamed over the final
name, and the folder is fsynced: a crash leaves either the whole blob or a stray ``.tmp`` file that
:meth:`LocalBlobStore.remove_stale_temporaries` clears, never a half-written blob under a real key.
All file work runs in worker threads.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio.to_thread

from limner.crashpoints import crash_point_sync
from limner.errors import StorageError

__all__ = ["LocalBlobStore"]

# kind / owner part (32 hex; absent in keys written before keys were per owner) / fan-out / sha256 [.suffix]
_KEY_RE = re.compile(r"^[a-z]+(?:/[0-9a-f]{32})?(?:/[0-9a-f]{2})*/[0-9a-f]{64}(?:\.[a-z0-9_]+)?$")
_TMP_SUFFIX = ".tmp"


class LocalBlobStore:
    """Blobs as files under ``root``; keys look like ``images/<owner part>/ab/<sha256>`` (older: ``images/ab/...``)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: str) -> Path:
        if not _KEY_RE.match(key):  # keys come from the library, but never trust a path
            raise StorageError(f"Invalid storage key {key!r}.")
        return self.root / key

    def local_path(self, key: str) -> Path | None:
        """The file of ``key``: the API streams it with range support instead of loading it."""
        return self._path(key)

    async def put(self, key: str, data: bytes) -> None:
        """Write atomically; see the module docstring."""
        path = self._path(key)
        try:
            await anyio.to_thread.run_sync(lambda: _write_atomic(path, data))
        except OSError as exc:
            raise StorageError(
                "The image could not be written to storage.",
                hint="Check free disk space and permissions of LIMNER_DATA_DIR.",
            ) from exc

    async def get(self, key: str) -> bytes:
        """Read a blob; a missing file is a StorageError (the record exists but its bytes are gone)."""
        path = self._path(key)
        try:
            return await anyio.to_thread.run_sync(path.read_bytes)
        except FileNotFoundError as exc:
            raise StorageError("The image's file is missing from storage.") from exc
        except OSError as exc:
            raise StorageError("The image could not be read from storage.") from exc

    async def delete(self, key: str) -> None:
        """Remove a blob if present."""
        path = self._path(key)
        await anyio.to_thread.run_sync(lambda: path.unlink(missing_ok=True))

    async def exists(self, key: str) -> bool:
        """Whether the blob's file exists."""
        path = self._path(key)
        return await anyio.to_thread.run_sync(path.is_file)

    async def ensure(self, key: str, data: bytes) -> None:
        """One thread hop: refresh the mtime of an existing blob, or write it atomically."""
        path = self._path(key)

        def _ensure() -> None:
            try:
                os.utime(path)
            except FileNotFoundError:
                _write_atomic(path, data)

        try:
            await anyio.to_thread.run_sync(_ensure)
        except OSError as exc:
            raise StorageError(
                "The image could not be written to storage.",
                hint="Check free disk space and permissions of LIMNER_DATA_DIR.",
            ) from exc

    async def modified(self, key: str) -> float | None:
        """The file's mtime, or None when it is missing."""
        path = self._path(key)

        def _mtime() -> float | None:
            try:
                return path.stat().st_mtime
            except FileNotFoundError:
                return None

        return await anyio.to_thread.run_sync(_mtime)

    async def iter_keys(self) -> AsyncIterator[tuple[str, float]]:
        """Every blob key with its mtime (temporary files excluded)."""
        entries = await anyio.to_thread.run_sync(self._scan)
        for key, mtime in entries:
            yield key, mtime

    def _scan(self) -> list[tuple[str, float]]:
        if not self.root.exists():
            return []
        found = []
        for path in self.root.rglob("*"):
            if path.name.endswith(_TMP_SUFFIX):
                continue
            key = path.relative_to(self.root).as_posix()
            try:
                if _KEY_RE.match(key) and path.is_file():
                    found.append((key, path.stat().st_mtime))
            except FileNotFoundError:  # renamed or removed while we walked
                continue
        return found

    async def remove_stale_temporaries(self, min_age: float) -> int:
        """Delete ``.tmp`` files older than ``min_age`` seconds (left by a crash mid-write)."""
        return await anyio.to_thread.run_sync(lambda: self._remove_tmp(min_age))

    def _remove_tmp(self, min_age: float) -> int:
        if not self.root.exists():
            return 0
        cutoff, removed = time.time() - min_age, 0
        for path in self.root.rglob(f"*{_TMP_SUFFIX}"):
            try:
                if path.stat().st_mtime <= cutoff:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:  # finished (renamed) or removed meanwhile
                continue
        return removed


PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


def make_private(root: Path) -> None:
    """Create ``root`` for limner's user alone and take group and other bits off everything inside.

    Run once at start (in a thread): new files are created private whatever the umask, and this walk
    repairs what an earlier version, a restore or a hand-copied database left readable by others.
    """
    make_private_dirs(root)
    os.chmod(root, PRIVATE_DIR_MODE)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            _chmod_if_not_link(Path(dirpath, name), PRIVATE_DIR_MODE)
        for name in filenames:
            _chmod_if_not_link(Path(dirpath, name), PRIVATE_FILE_MODE)


def _chmod_if_not_link(path: Path, mode: int) -> None:
    try:
        if not path.is_symlink():
            os.chmod(path, mode)
    except FileNotFoundError:  # removed while we walked
        pass


def make_private_dirs(path: Path) -> None:
    """``mkdir -p`` where every folder it creates is private (``Path.mkdir`` gives only the last one the mode)."""
    missing = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    for folder in reversed(missing):
        folder.mkdir(mode=PRIVATE_DIR_MODE, exist_ok=True)


def _write_atomic(path: Path, data: bytes) -> None:
    make_private_dirs(path.parent)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{time.monotonic_ns()}{_TMP_SUFFIX}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE)
        with open(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        crash_point_sync("storage.temporary_written")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
