"""limner's data dir, database, blobs and key file are for limner's user alone, whatever the umask."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import anyio.to_thread
import pytest

from limner.backends.base import ImageOutput
from limner.library import Provenance
from limner.runtime import Runtime
from tests import images
from tests.conftest import create_user, make_settings


@pytest.fixture
def loose_umask() -> Iterator[None]:
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def _readable_by_others(root: Path) -> list[str]:
    found = []
    for path in [root, *root.rglob("*")]:
        mode = path.lstat().st_mode
        if not stat.S_ISLNK(mode) and mode & 0o077:
            found.append(f"{path.relative_to(root.parent)} {stat.filemode(mode)}")
    return found


async def _start_and_save(data_dir: Path, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, data_dir=data_dir)
    async with Runtime.open(settings, with_tools=False) as runtime:
        user_id, _ = await create_user(runtime, "alice")
        await runtime.library.save(user_id, [ImageOutput(data=images.png(40, 30))], Provenance(source="uploaded"))


@pytest.mark.usefixtures("loose_umask")
async def test_a_fresh_data_dir_is_private(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    await _start_and_save(data_dir, tmp_path)
    assert any(p.is_file() for p in (data_dir / "blobs").rglob("*")), "the upload wrote a blob"
    assert (data_dir / "limner.db").exists()
    assert await anyio.to_thread.run_sync(_readable_by_others, data_dir) == []


@pytest.mark.usefixtures("loose_umask")
async def test_a_data_dir_left_readable_is_repaired_at_start(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    await _start_and_save(data_dir, tmp_path)

    def loosen() -> None:
        for path in [data_dir, *data_dir.rglob("*")]:
            os.chmod(path, 0o755 if path.is_dir() else 0o644)

    await anyio.to_thread.run_sync(loosen)
    assert await anyio.to_thread.run_sync(_readable_by_others, data_dir) != []
    await _start_and_save(data_dir, tmp_path)
    assert await anyio.to_thread.run_sync(_readable_by_others, data_dir) == []
