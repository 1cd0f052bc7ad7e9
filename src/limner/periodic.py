"""Background chores that repeat for the lifetime of the runtime (sweeps of expired or orphaned data).

One shape for every chore: it runs in its own task, first right after start (off the start-up path, so
a large sweep never delays serving) and then every ``interval`` seconds; a failure is logged and the
next round tries again, because a database that is locked now is no reason to stop sweeping later.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

__all__ = ["repeating"]

log = logging.getLogger(__name__)


@contextlib.asynccontextmanager
async def repeating(chore: Callable[[], Awaitable[object]], interval: float, *, name: str) -> AsyncIterator[None]:
    """Run ``chore`` now and every ``interval`` seconds until the block ends; ``interval <= 0``: never."""
    if interval <= 0:
        yield
        return

    async def rounds() -> None:
        while True:
            try:
                await chore()
            except Exception:
                log.warning("%s failed; trying again in %g s", name, interval, exc_info=True)
            await asyncio.sleep(interval)

    task = asyncio.create_task(rounds(), name=f"limner-{name}")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
