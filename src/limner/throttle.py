"""Counting failed attempts (sign-ins) per key, behind a small interface.

:class:`AttemptCounter` is what :class:`limner.accounts.Accounts` needs: how long a key is still blocked,
note a failure, forget a key. :class:`MemoryAttemptCounter` keeps the counts in this process, which is
right for one server; several replicas need a shared store (a Redis implementation of the same three
methods), or each replica would allow its own share of guesses.

The rule is a sliding window: a key with ``limit`` failures in the last ``window`` seconds is blocked
until the oldest of them is ``window`` seconds old. The clock is injectable so tests need not wait.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

__all__ = ["AttemptCounter", "MemoryAttemptCounter"]


class AttemptCounter(Protocol):
    """Failed attempts per key (an account name, a client address)."""

    async def blocked_for(self, key: str) -> float:
        """Seconds until ``key`` may try again; 0 when it may try now."""
        ...

    async def failed(self, key: str) -> None:
        """Note one failed attempt of ``key``."""
        ...

    async def reset(self, key: str) -> None:
        """Forget ``key``'s failures (after a success)."""
        ...


class MemoryAttemptCounter:
    """An in-process :class:`AttemptCounter` (a sliding window of failure times per key).

    Memory is bounded: at most ``limit`` times are kept per key, and at most ``max_keys`` keys (the
    least recently failed are dropped first, which can only ever unblock a key early).
    """

    def __init__(
        self,
        *,
        limit: int,
        window: float,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 100_000,
    ) -> None:
        self.limit = limit
        self.window = window
        self.clock = clock
        self.max_keys = max_keys
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, key: str) -> deque[float] | None:
        times = self._failures.get(key)
        if times is None:
            return None
        cutoff = self.clock() - self.window
        while times and times[0] <= cutoff:
            times.popleft()
        if not times:
            del self._failures[key]
            return None
        return times

    async def blocked_for(self, key: str) -> float:
        """Seconds until the oldest counted failure leaves the window, when ``limit`` are counted."""
        times = self._recent(key)
        if times is None or len(times) < self.limit:
            return 0.0
        return max(0.0, times[0] + self.window - self.clock())

    async def failed(self, key: str) -> None:
        """Count a failure now (keeping only the newest ``limit``)."""
        times = self._recent(key)
        if times is None:
            times = deque(maxlen=self.limit)
        else:
            del self._failures[key]  # re-inserted below: dict order is "least recently failed first"
        times.append(self.clock())
        self._failures[key] = times
        while len(self._failures) > self.max_keys:
            del self._failures[next(iter(self._failures))]

    async def reset(self, key: str) -> None:
        """Forget a key."""
        self._failures.pop(key, None)
