"""Memory under abuse (issue 24): each distinct input read once, a cap per call, decodes within the budget."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

from limner import library as library_module
from limner.backends.base import ImageOutput
from limner.errors import ImageTooLargeError
from limner.imaging import decode_budget
from limner.library import Provenance
from limner.runtime import Runtime
from limner.tools.base import run_tool
from tests import images
from tests.conftest import create_user, make_settings

UPLOAD = Provenance(source="uploaded")


def count_reads(runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every blob the library reads from its store, by key."""
    store, reads = runtime.library.store, []
    original = store.get

    async def get(key: str) -> bytes:
        reads.append(key)
        return await original(key)

    monkeypatch.setattr(store, "get", get)
    return reads


async def until(condition: Callable[[], bool]) -> None:
    """Wait for a state other tasks reach in worker threads (polled, with a deadline)."""
    with anyio.fail_after(30):
        while not condition():
            await anyio.sleep(0.005)


async def test_an_id_named_sixteen_times_is_read_once(runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    owner, _ = await create_user(runtime, "ann")
    (record,) = await runtime.library.save(owner, [ImageOutput(data=images.png(40, 30))], UPLOAD)
    reads = count_reads(runtime, monkeypatch)
    found = await runtime.library.read_many(owner, [record.id] * 16)
    assert len(reads) == 1
    assert [r.id for r, _ in found] == [record.id] * 16
    assert len({id(data) for _, data in found}) == 1  # one copy of the bytes, shared


async def test_an_edit_naming_one_image_sixteen_times_reads_it_once(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    owner, _ = await create_user(runtime, "ann")
    (source,) = await runtime.library.save(owner, [ImageOutput(data=images.png(64, 64))], UPLOAD)
    (mask,) = await runtime.library.save(owner, [ImageOutput(data=images.mask_png(64, 64))], UPLOAD)
    reads = count_reads(runtime, monkeypatch)
    args = {"image_ids": [source.id] * 16, "mask_image_id": mask.id, "prompt": "the same, sixteen times"}
    result = await run_tool(runtime.tool("image_edit_oai"), args, runtime.tool_context(owner))
    assert len(reads) == len(set(reads)) == 2  # the image once, the mask once
    (edited,) = result.images
    parents = await runtime.library.parents(owner, edited.id)
    assert [(p.id, p.role) for p in parents] == [(source.id, "input")] * 16 + [(mask.id, "mask")]


async def test_inputs_over_the_per_call_cap_are_refused_before_any_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    big = images.noisy_png(200, 200)
    async with Runtime.open(make_settings(tmp_path, max_upload_bytes=2 * len(big))) as runtime:
        owner, _ = await create_user(runtime, "ann")
        (record,) = await runtime.library.save(owner, [ImageOutput(data=big)], UPLOAD)
        reads = count_reads(runtime, monkeypatch)
        assert len(await runtime.library.read_inputs(owner, [record.id] * 8)) == 8  # 8 x size = 4 x the upload cap
        with pytest.raises(ImageTooLargeError) as caught:
            await runtime.library.read_inputs(owner, [record.id] * 9)
        assert reads == [reads[0]]  # the refused call read nothing
        cap = 4 * 2 * len(big)
        assert caught.value.message == (
            f"The 9 input images of this call total {9 * len(big):,} bytes; one call may send at most {cap:,} "
            "bytes (4 x LIMNER_MAX_UPLOAD_BYTES), an image counted each time it is named."
        )
        assert "LIMNER_MAX_UPLOAD_BYTES" in (caught.value.hint or "")
        args = {"image_ids": [record.id] * 9, "prompt": "too much"}
        with pytest.raises(ImageTooLargeError, match="one call may send at most"):
            await run_tool(runtime.tool("image_edit_oai"), args, runtime.tool_context(owner))
        assert len(reads) == 1


async def test_an_upload_check_waits_while_the_decode_budget_is_used(runtime: Runtime) -> None:
    owner, _ = await create_user(runtime, "ann")
    budget, saved = decode_budget(), []

    async def upload() -> None:
        saved.extend(await runtime.library.save(owner, [ImageOutput(data=images.png(300, 200))], UPLOAD))

    async with anyio.create_task_group() as tg:
        async with budget.reserve(budget.limit_bytes):  # other decodes hold all of it
            tg.start_soon(upload)
            await until(lambda: budget.waiting == 1)
            assert saved == [] and await runtime.library.recent(owner) == []
            # a provider's PNG gets the structural check only: no decode, so it does not wait
            generated = Provenance(source="generated")
            (made,) = await runtime.library.save(owner, [ImageOutput(data=images.png(30, 20))], generated)
        await until(lambda: bool(saved))
    assert {r.id for r in await runtime.library.recent(owner)} == {saved[0].id, made.id}


async def test_a_first_thumbnail_waits_while_the_decode_budget_is_used(runtime: Runtime) -> None:
    owner, _ = await create_user(runtime, "ann")
    (record,) = await runtime.library.save(owner, [ImageOutput(data=images.png(600, 300))], UPLOAD)
    budget, thumbs = decode_budget(), []

    async def thumbnail() -> None:
        thumbs.append(await runtime.library.thumbnail(owner, record.id))

    async with anyio.create_task_group() as tg, budget.reserve(budget.limit_bytes):
        tg.start_soon(thumbnail)
        await until(lambda: budget.waiting == 1)
        assert thumbs == []
    assert images.size_of(thumbs[0]) == (256, 128)


async def test_the_same_first_thumbnail_asked_for_eight_times_at_once_is_made_once(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    owner, _ = await create_user(runtime, "ann")
    (record,) = await runtime.library.save(owner, [ImageOutput(data=images.png(600, 300))], UPLOAD)
    made = []
    original = library_module.make_thumbnail

    async def counting(data: bytes, max_side: int = 256) -> bytes:
        made.append(max_side)
        return await original(data, max_side)

    monkeypatch.setattr(library_module, "make_thumbnail", counting)
    thumbs: list[bytes] = []

    async def thumbnail() -> None:
        thumbs.append(await runtime.library.thumbnail(owner, record.id))

    async with anyio.create_task_group() as tg:
        for _ in range(8):
            tg.start_soon(thumbnail)
    assert made == [256]
    assert len(thumbs) == 8 and len(set(thumbs)) == 1


async def test_the_setting_sizes_the_process_budget(tmp_path: Path) -> None:
    async with Runtime.open(make_settings(tmp_path, decode_memory_mb=64), with_tools=False):
        assert decode_budget().limit_bytes == 64 * 1024 * 1024
    async with Runtime.open(make_settings(tmp_path), with_tools=False):
        assert decode_budget().limit_bytes == 512 * 1024 * 1024
