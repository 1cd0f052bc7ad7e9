from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from limner.backends.base import ImageOutput
from limner.errors import ImageNotFoundError, UnsupportedImageError
from limner.library import Provenance, SweepReport
from limner.runtime import Runtime
from tests import images
from tests.conftest import create_user, make_settings

UPLOAD = Provenance(source="uploaded")


async def test_save_and_read_back(runtime: Runtime) -> None:
    owner, _ = await create_user(runtime, "ann")
    data = images.png(32, 16)
    (record,) = await runtime.library.save(owner, [ImageOutput(data=data)], UPLOAD)
    assert record.id.startswith("img_")
    assert (record.width, record.height, record.media_type, record.byte_size) == (32, 16, "image/png", len(data))
    ((again, blob),) = await runtime.library.read_many(owner, [record.id])
    assert again == record
    assert blob == data


async def test_ids_are_owner_scoped_and_foreign_looks_missing(runtime: Runtime) -> None:
    ann, _ = await create_user(runtime, "ann")
    ben, _ = await create_user(runtime, "ben")
    (record,) = await runtime.library.save(ann, [ImageOutput(data=images.png())], UPLOAD)
    missing = "img_01JD0000000000000000000000"
    errors = []
    for image_id in (record.id, missing):
        with pytest.raises(ImageNotFoundError) as caught:
            await runtime.library.get(ben, image_id)
        errors.append(caught.value)
    assert [type(e) for e in errors] == [ImageNotFoundError, ImageNotFoundError]
    assert errors[0].message.replace(record.id, "X") == errors[1].message.replace(missing, "X")
    assert await runtime.library.recent(ben) == []
    with pytest.raises(ImageNotFoundError):
        await runtime.library.delete(ben, record.id)
    assert await runtime.library.get(ann, record.id) == record


async def test_malformed_ids_are_not_found_without_a_query(runtime: Runtime) -> None:
    owner, _ = await create_user(runtime, "ann")
    for bad in ("", "img_", "../../etc/passwd", "img_' OR 1=1 --", "x" * 500):
        with pytest.raises(ImageNotFoundError):
            await runtime.library.get(owner, bad)


async def test_llm_style_ids_are_normalised(runtime: Runtime) -> None:
    owner, _ = await create_user(runtime, "ann")
    (record,) = await runtime.library.save(owner, [ImageOutput(data=images.png())], UPLOAD)
    assert (await runtime.library.get(owner, f' "{record.id.lower()}" ')).id == record.id


async def test_a_bad_output_stores_nothing(runtime: Runtime) -> None:
    owner, _ = await create_user(runtime, "ann")
    good, bad = ImageOutput(data=images.png()), ImageOutput(data=b"not an image")
    with pytest.raises(UnsupportedImageError):
        await runtime.library.save(owner, [good, bad], UPLOAD)
    assert await runtime.library.recent(owner) == []
    assert [key async for key in runtime.library.store.iter_keys()] == []


async def test_listing_is_newest_first_and_paginates(runtime: Runtime) -> None:
    owner, _ = await create_user(runtime, "ann")
    ids = []
    for shade in range(5):
        (r,) = await runtime.library.save(owner, [ImageOutput(data=images.png(color=(shade, 0, 0)))], UPLOAD)
        ids.append(r.id)
    first = await runtime.library.recent(owner, limit=3)
    second = await runtime.library.recent(owner, limit=3, before=first[-1].id)
    assert [r.id for r in first + second] == list(reversed(ids))


async def test_lineage_survives_deleting_the_parent(runtime: Runtime) -> None:
    owner, _ = await create_user(runtime, "ann")
    (parent,) = await runtime.library.save(owner, [ImageOutput(data=images.png(color=(1, 2, 3)))], UPLOAD)
    child_prov = Provenance(source="edited", parent_ids=(parent.id,), parent_roles=("input",))
    (child,) = await runtime.library.save(owner, [ImageOutput(data=images.png(color=(4, 5, 6)))], child_prov)
    links = await runtime.library.parents(owner, child.id)
    assert [(link.id, link.role, link.image) for link in links] == [(parent.id, "input", parent)]
    await runtime.library.delete(owner, parent.id)
    links = await runtime.library.parents(owner, child.id)
    assert [(link.id, link.image) for link in links] == [(parent.id, None)]


async def test_shared_blob_outlives_one_owners_delete(runtime: Runtime) -> None:
    ann, _ = await create_user(runtime, "ann")
    ben, _ = await create_user(runtime, "ben")
    data = images.png(color=(9, 9, 9))
    (a,) = await runtime.library.save(ann, [ImageOutput(data=data)], UPLOAD)
    (b,) = await runtime.library.save(ben, [ImageOutput(data=data)], UPLOAD)
    assert a.sha256 == b.sha256
    await runtime.library.delete(ann, a.id)
    ((_, blob),) = await runtime.library.read_many(ben, [b.id])
    assert blob == data
    await runtime.library.delete(ben, b.id)
    assert [key async for key in runtime.library.store.iter_keys()] == []


async def test_sweep_removes_orphan_blobs_and_temporaries(runtime: Runtime) -> None:
    owner, _ = await create_user(runtime, "ann")
    (kept,) = await runtime.library.save(owner, [ImageOutput(data=images.png())], UPLOAD)
    store = runtime.library.store
    orphan_key = "images/ab/" + "ab" * 32
    await store.put(orphan_key, b"left by a crash")
    root = runtime.settings.data_dir / "blobs"
    tmp = root / "images" / "ab" / "x.123.tmp"
    tmp.write_bytes(b"half")
    old = time.time() - 10
    os.utime(tmp, (old, old))
    young = await runtime.library.sweep(min_age=3600)
    assert young.orphan_blobs_removed == 0  # too recent: might be an in-flight save
    report = await runtime.library.sweep(min_age=0)
    assert report.orphan_blobs_removed == 1
    assert report.temporaries_removed == 1
    assert report.rows_missing_blobs == []
    assert not await store.exists(orphan_key)
    assert (await runtime.library.get(owner, kept.id)).id == kept.id


async def test_thumbnail_is_made_once(runtime: Runtime) -> None:
    owner, _ = await create_user(runtime, "ann")
    (record,) = await runtime.library.save(owner, [ImageOutput(data=images.png(600, 300))], UPLOAD)
    first = await runtime.library.thumbnail(owner, record.id)
    assert images.size_of(first) == (256, 128)
    assert await runtime.library.thumbnail(owner, record.id) == first


async def test_reusing_an_old_orphan_blob_protects_it_from_the_sweep(runtime: Runtime) -> None:
    owner, _ = await create_user(runtime, "ann")
    data = images.png(color=(7, 7, 7))
    (first,) = await runtime.library.save(owner, [ImageOutput(data=data)], UPLOAD)
    await runtime.library.delete(owner, first.id)
    key = "images/" + first.sha256[:2] + "/" + first.sha256
    await runtime.library.store.put(key, data)  # an orphan left by a crash, say
    path = runtime.settings.data_dir / "blobs" / key
    old = time.time() - 7200
    os.utime(path, (old, old))
    (second,) = await runtime.library.save(owner, [ImageOutput(data=data)], UPLOAD)  # reuses the blob
    report = await runtime.library.sweep(min_age=3600)
    assert report.orphan_blobs_removed == 0
    ((_, blob),) = await runtime.library.read_many(owner, [second.id])
    assert blob == data


async def test_a_server_sweeps_orphans_on_a_schedule_and_spares_young_files(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, sweep_interval=0.05)
    async with Runtime.open(settings) as runtime:
        store = runtime.library.store
        old_orphan, young_orphan = "images/ab/" + "ab" * 32, "images/cd/" + "cd" * 32
        await store.put(old_orphan, b"left by a crash two hours ago")
        await store.put(young_orphan, b"an in-flight save's blob, its row not yet written")
        old = time.time() - 7200
        os.utime(settings.data_dir / "blobs" / old_orphan, (old, old))
        async with runtime.chores():  # what `limner serve` runs beside serving
            async with asyncio.timeout(60):
                while await store.exists(old_orphan):
                    await asyncio.sleep(0.02)
        assert await store.exists(young_orphan)  # younger than an hour: a save in flight may still need it


async def test_no_sweep_when_the_interval_is_zero(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, sweep_interval=0)
    async with Runtime.open(settings) as runtime:
        calls = 0

        async def counting() -> SweepReport:
            nonlocal calls
            calls += 1
            return SweepReport(0, 0, [])

        runtime.library.sweep_and_report = counting  # type: ignore[method-assign]
        async with runtime.chores():
            await asyncio.sleep(0)
        assert calls == 0
