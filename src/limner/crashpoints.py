"""Crash points: named places where a crash-safety test holds this process until it kills it.

A test that proves "a SIGKILL here loses nothing" must kill at the moment it means, on any machine: a
sleep before the kill lands early on a slow machine and late on a fast one. So the code marks the
dangerous moments (a blob on disk without its row, a migration half applied) with :func:`crash_point`,
and a test starts limner with ``LIMNER_CRASH_POINT=<name>`` (or ``<name>@<n>``: let ``n - 1`` arrivals
pass, hold from the ``n``-th on). The holding arrival writes ``limner: crash point <name> reached`` to
standard error, then waits for the signal the test sends; later arrivals are held as well. With
``<name>@<n>:kill`` the ``n``-th arrival kills its own process with SIGKILL instead, at exactly that
moment: the way to crash a short command (``limner db upgrade``) at its hundredth statement.

This is test plumbing, not a setting: it is read from the process environment when first needed, it is
not in the configuration table, and unset it costs one comparison per point.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from functools import cache

import anyio

__all__ = ["ENV_NAME", "crash_point", "crash_point_sync"]

ENV_NAME = "LIMNER_CRASH_POINT"

_lock = threading.Lock()
_arrivals: dict[str, int] = {}


@cache
def _armed() -> tuple[str, int, bool] | None:
    raw = os.environ.get(ENV_NAME, "").strip()
    if not raw:
        return None
    raw, _, action = raw.partition(":")
    name, _, nth = raw.partition("@")
    return name, int(nth) if nth else 1, action == "kill"


def _should_hold(name: str) -> bool:
    armed = _armed()
    if armed is None or armed[0] != name:
        return False
    with _lock:
        _arrivals[name] = _arrivals.get(name, 0) + 1
        arrival = _arrivals[name]
    if arrival < armed[1]:
        return False
    if arrival == armed[1]:
        sys.stderr.write(f"limner: crash point {name} reached\n")
        sys.stderr.flush()
        if armed[2]:
            os.kill(os.getpid(), signal.SIGKILL)
    return True


async def crash_point(name: str) -> None:
    """Hold the calling task for good when the test armed ``name`` (see the module docstring)."""
    if _should_hold(name):
        await anyio.sleep_forever()


def crash_point_sync(name: str) -> None:
    """The same, for code that runs in a worker thread or before the event loop (migrations)."""
    if _should_hold(name):
        threading.Event().wait()
