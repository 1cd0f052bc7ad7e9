"""No store or cache shared across owners (DESIGN §12, issue 24 item 8): blobs and thumbnails are per owner.

Were the same bytes of two owners one blob, saving them (or making their first thumbnail) would be
faster for whoever comes second: timing would tell a user that someone else stored that image.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from sqlalchemy import update

from limner import library as library_module
from limner.backends.base import ImageOutput
from limner.db.models import Image
from limner.library import Provenance
from limner.runtime import Runtime
from tests import images
from tests.conftest import create_user

UPLOAD = Provenance(source="uploaded")


async def stored(runtime: Runtime) -> dict[str, Path]:
    """Every key in the blob store and its file."""
    root = runtime.settings.data_dir / "blobs"
    return {key: root / key async for key, _ in runtime.library.store.iter_keys()}


def fingerprint(path: Path) -> tuple[int, int, bytes]:
    """Inode, modification time and content: a file nobody touched keeps all three."""
    st = path.stat()
    return st.st_ino, st.st_mtime_ns, path.read_bytes()


def age(path: Path, seconds: float) -> None:
    old = time.time() - seconds
    os.utime(path, (old, old))


async def test_the_same_bytes_saved_by_two_owners_are_two_blobs(runtime: Runtime) -> None:
    ann, _ = await create_user(runtime, "ann")
    ben, _ = await create_user(runtime, "ben")
    data = images.png(color=(3, 1, 4))
    (a,) = await runtime.library.save(ann, [ImageOutput(data=data)], UPLOAD)
    before = await stored(runtime)
    (b,) = await runtime.library.save(ben, [ImageOutput(data=data)], UPLOAD)
    after = await stored(runtime)
    assert a.sha256 == b.sha256
    assert len(before) == 1 and len(after) == 2  # ben's save wrote a file of its own
    (ann_key,) = before
    (ben_key,) = set(after) - set(before)
    assert after[ann_key].read_bytes() == after[ben_key].read_bytes() == data
    assert ann_key.startswith("images/") and ann_key.endswith(a.sha256) and ben_key.endswith(b.sha256)
    _, ann_path, _ = await runtime.library.content_path(ann, a.id)
    _, ben_path, _ = await runtime.library.content_path(ben, b.id)
    assert {ann_path, ben_path} == {after[ann_key], after[ben_key]}


async def test_one_owner_keeps_the_same_bytes_once(runtime: Runtime) -> None:
    ann, _ = await create_user(runtime, "ann")
    data = images.png(color=(2, 7, 1))
    await runtime.library.save(ann, [ImageOutput(data=data), ImageOutput(data=data)], UPLOAD)
    (a,) = await runtime.library.save(ann, [ImageOutput(data=data)], UPLOAD)
    assert len(await stored(runtime)) == 1  # dedup within one owner stays
    await runtime.library.delete(ann, a.id)
    assert len(await stored(runtime)) == 1  # two records still point at it


async def test_deleting_one_owners_image_never_touches_the_others(runtime: Runtime) -> None:
    ann, _ = await create_user(runtime, "ann")
    ben, _ = await create_user(runtime, "ben")
    data = images.png(600, 300, color=(9, 9, 9))
    (a,) = await runtime.library.save(ann, [ImageOutput(data=data)], UPLOAD)
    (b,) = await runtime.library.save(ben, [ImageOutput(data=data)], UPLOAD)
    await runtime.library.thumbnail(ann, a.id)
    await runtime.library.thumbnail(ben, b.id)
    files = await stored(runtime)
    assert len(files) == 4  # two blobs, two thumbnails
    _, ben_blob, _ = await runtime.library.content_path(ben, b.id)
    bens = {key: fingerprint(path) for key, path in files.items() if path == ben_blob or key.startswith("thumbs/")}
    await runtime.library.delete(ann, a.id)
    left = await stored(runtime)
    assert len(left) == 2  # ann's blob and thumbnail went with her record, though ben has the same bytes
    ben_files = {key: fingerprint(path) for key, path in left.items()}
    assert ben_files == {key: bens[key] for key in left}  # ben's two files, untouched
    assert images.size_of(await runtime.library.thumbnail(ben, b.id)) == (256, 128)
    ((_, blob),) = await runtime.library.read_many(ben, [b.id])
    assert blob == data


async def test_thumbnails_are_made_and_kept_per_owner(runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    ann, _ = await create_user(runtime, "ann")
    ben, _ = await create_user(runtime, "ben")
    data = images.png(600, 300, color=(5, 5, 5))
    (a,) = await runtime.library.save(ann, [ImageOutput(data=data)], UPLOAD)
    (b,) = await runtime.library.save(ben, [ImageOutput(data=data)], UPLOAD)
    made: list[bytes] = []
    original = library_module.make_thumbnail

    async def counting(source: bytes, max_side: int = 256) -> bytes:
        made.append(source)
        return await original(source, max_side)

    monkeypatch.setattr(library_module, "make_thumbnail", counting)
    first = await runtime.library.thumbnail(ann, a.id)
    assert await runtime.library.thumbnail(ann, a.id) == first and len(made) == 1  # kept for ann
    assert await runtime.library.thumbnail(ben, b.id) == first and len(made) == 2  # made again for ben
    assert len([key for key in await stored(runtime) if key.startswith("thumbs/")]) == 2


async def test_the_sweep_removes_an_owners_orphan_though_another_owner_has_the_same_bytes(runtime: Runtime) -> None:
    ann, _ = await create_user(runtime, "ann")
    ben, _ = await create_user(runtime, "ben")
    data = images.png(600, 300, color=(6, 6, 6))
    (a,) = await runtime.library.save(ann, [ImageOutput(data=data)], UPLOAD)
    await runtime.library.thumbnail(ann, a.id)
    anns = await stored(runtime)
    (b,) = await runtime.library.save(ben, [ImageOutput(data=data)], UPLOAD)
    await runtime.library.thumbnail(ben, b.id)
    bens = {key: path for key, path in (await stored(runtime)).items() if key not in anns}
    assert len(anns) == len(bens) == 2
    async with runtime.db.unit_of_work(write=True) as session:  # ann's row gone, as if a crash lost it
        await session.execute(Image.__table__.delete().where(Image.id == a.id))
    for path in [*anns.values(), *bens.values()]:
        age(path, 7200)
    report = await runtime.library.sweep(min_age=3600)
    assert report.orphan_blobs_removed == 2  # ann's blob and her thumbnail
    assert await stored(runtime) == bens
    assert images.size_of(await runtime.library.thumbnail(ben, b.id)) == (256, 128)


async def test_the_sweep_spares_needed_thumbnails_and_young_files(runtime: Runtime) -> None:
    ann, _ = await create_user(runtime, "ann")
    (a,) = await runtime.library.save(ann, [ImageOutput(data=images.png(600, 300))], UPLOAD)
    await runtime.library.thumbnail(ann, a.id)
    for path in (await stored(runtime)).values():
        age(path, 7200)
    orphan_thumb = "thumbs/" + "0" * 32 + "/ab/" + "ab" * 32 + ".w256"
    await runtime.library.store.put(orphan_thumb, b"a thumbnail whose image is gone")
    assert (await runtime.library.sweep(min_age=3600)).orphan_blobs_removed == 0  # young: maybe in flight
    age(runtime.settings.data_dir / "blobs" / orphan_thumb, 7200)
    assert (await runtime.library.sweep(min_age=3600)).orphan_blobs_removed == 1
    assert len(await stored(runtime)) == 2  # ann's blob and thumbnail


async def test_records_of_the_shared_layout_stay_readable_and_are_cleaned_up(runtime: Runtime) -> None:
    """Rows written before per-owner keys keep their ``images/ab/<sha256>`` blob: no migration needed."""
    ann, _ = await create_user(runtime, "ann")
    ben, _ = await create_user(runtime, "ben")
    data = images.png(600, 300, color=(8, 8, 8))
    (a,) = await runtime.library.save(ann, [ImageOutput(data=data)], UPLOAD)
    (b,) = await runtime.library.save(ben, [ImageOutput(data=data)], UPLOAD)
    shared_key = f"images/{a.sha256[:2]}/{a.sha256}"
    shared_thumb = f"thumbs/{a.sha256[:2]}/{a.sha256}.w256"
    for path in (await stored(runtime)).values():
        path.unlink()
    await runtime.library.store.put(shared_key, data)  # as an earlier limner stored both
    await runtime.library.store.put(shared_thumb, b"an earlier limner's shared thumbnail")
    async with runtime.db.unit_of_work(write=True) as session:
        await session.execute(update(Image).where(Image.id.in_([a.id, b.id])).values(storage_key=shared_key))
    for record, owner in ((a, ann), (b, ben)):
        ((_, blob),) = await runtime.library.read_many(owner, [record.id])
        assert blob == data
        assert images.size_of(await runtime.library.thumbnail(owner, record.id)) == (256, 128)
    keys = set(await stored(runtime))
    assert len([k for k in keys if k.startswith("thumbs/") and k != shared_thumb]) == 2  # per owner, even here
    for path in (await stored(runtime)).values():
        age(path, 7200)
    assert (await runtime.library.sweep(min_age=3600)).orphan_blobs_removed == 0
    await runtime.library.delete(ann, a.id)
    assert shared_key in await stored(runtime)  # ben's record still points at it
    await runtime.library.delete(ben, b.id)
    assert await stored(runtime) == {}
