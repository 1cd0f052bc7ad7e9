"""The decode budget: decodes wait for room, first come first served; one larger than the budget runs alone."""

from __future__ import annotations

from collections.abc import Callable

import anyio
import pytest

from limner import imaging
from limner.imaging import DecodeBudget

MIB = 1024 * 1024


async def until(condition: Callable[[], bool]) -> None:
    """Let the other tasks run until ``condition`` holds (every step here is on the event loop: no thread)."""
    with anyio.fail_after(10):
        while not condition():
            await anyio.lowlevel.checkpoint()


class Holder:
    """A task that reserves ``nbytes``, says when it got them, and holds them until told to let go."""

    def __init__(self, budget: DecodeBudget, nbytes: int, log: list[str], name: str) -> None:
        self.budget, self.nbytes, self.log, self.name = budget, nbytes, log, name
        self.holding, self.release = anyio.Event(), anyio.Event()

    async def run(self) -> None:
        async with self.budget.reserve(self.nbytes):
            self.log.append(self.name)
            self.holding.set()
            await self.release.wait()


async def test_decodes_that_fit_run_together_and_the_next_waits_for_room() -> None:
    budget, log = DecodeBudget(100), []
    a, b, c = Holder(budget, 60, log, "a"), Holder(budget, 40, log, "b"), Holder(budget, 30, log, "c")
    async with anyio.create_task_group() as tg:
        for holder in (a, b, c):
            tg.start_soon(holder.run)
        await a.holding.wait()
        await b.holding.wait()
        await until(lambda: budget.waiting == 1)
        assert (log, budget.in_use) == (["a", "b"], 100)  # c (30) does not fit beside 100
        b.release.set()
        await c.holding.wait()
        assert (log, budget.in_use) == (["a", "b", "c"], 90)
        a.release.set()
        c.release.set()
    assert (budget.in_use, budget.waiting) == (0, 0)


async def test_first_come_first_served_a_large_decode_is_not_overtaken() -> None:
    budget, log = DecodeBudget(100), []
    small, large, later = (
        Holder(budget, 50, log, "small"),
        Holder(budget, 80, log, "large"),
        Holder(budget, 30, log, "later"),
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(small.run)
        await small.holding.wait()
        tg.start_soon(large.run)
        await until(lambda: budget.waiting == 1)
        tg.start_soon(later.run)
        await until(lambda: budget.waiting == 2)
        assert log == ["small"]  # "later" would fit (80 of 100), but "large" came first
        small.release.set()
        await large.holding.wait()
        await until(lambda: budget.waiting == 1)
        assert log == ["small", "large"]
        large.release.set()
        await later.holding.wait()
        later.release.set()
    assert log == ["small", "large", "later"]


async def test_a_decode_larger_than_the_whole_budget_runs_alone() -> None:
    budget, log = DecodeBudget(100), []
    first, huge, small = (
        Holder(budget, 10, log, "first"),
        Holder(budget, 500, log, "huge"),
        Holder(budget, 1, log, "small"),
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(first.run)
        await first.holding.wait()
        tg.start_soon(huge.run)
        await until(lambda: budget.waiting == 1)
        assert log == ["first"]  # waits until nothing else holds any
        first.release.set()
        await huge.holding.wait()
        tg.start_soon(small.run)
        await until(lambda: budget.waiting == 1)
        assert (log, budget.in_use) == (["first", "huge"], 500)  # and nothing runs beside it
        huge.release.set()
        await small.holding.wait()
        small.release.set()
    assert budget.in_use == 0


async def test_a_cancelled_waiter_leaves_the_queue_and_lets_the_next_in() -> None:
    budget, log = DecodeBudget(100), []
    holder, blocked, behind = (
        Holder(budget, 70, log, "holder"),
        Holder(budget, 90, log, "blocked"),
        Holder(budget, 20, log, "behind"),
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(holder.run)
        await holder.holding.wait()
        async with anyio.create_task_group() as inner:
            inner.start_soon(blocked.run)
            await until(lambda: budget.waiting == 1)
            tg.start_soon(behind.run)
            await until(lambda: budget.waiting == 2)
            inner.cancel_scope.cancel()  # the head of the queue gives up
        await behind.holding.wait()  # 70 + 20 fits: it no longer waits behind the cancelled one
        assert (log, budget.waiting, budget.in_use) == (["holder", "behind"], 0, 90)
        holder.release.set()
        behind.release.set()
    assert budget.in_use == 0


async def test_raising_the_limit_lets_waiters_in() -> None:
    budget, log = DecodeBudget(100), []
    a, b = Holder(budget, 80, log, "a"), Holder(budget, 80, log, "b")
    async with anyio.create_task_group() as tg:
        tg.start_soon(a.run)
        await a.holding.wait()
        tg.start_soon(b.run)
        await until(lambda: budget.waiting == 1)
        budget.set_limit(200)
        await b.holding.wait()
        a.release.set()
        b.release.set()


async def test_memory_is_handed_back_when_the_budget_falls_idle_after_large_decodes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[str] = []
    monkeypatch.setattr(imaging, "_give_back_memory", lambda: calls.append("trim"))
    budget = DecodeBudget(1024 * MIB)
    async with budget.reserve(MIB):
        pass
    assert calls == []  # small decodes leave little behind: not worth a walk of the heap
    async with budget.reserve(40 * MIB):
        async with budget.reserve(40 * MIB):
            pass
        assert calls == []  # not while a decode still runs
    assert calls == ["trim"]
    async with budget.reserve(MIB):
        pass
    assert calls == ["trim"]  # counted afresh after each hand-back


def test_handing_memory_back_works_here() -> None:
    imaging._give_back_memory()  # glibc's malloc_trim, or nothing on another C library; never an error
