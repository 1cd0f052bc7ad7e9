"""BFL tasks: the status machine behind ``get_result``, the store that counts active tasks, prompt triggers.

A task answers ``Pending`` for its first ``pending_polls`` polls (and until ``ready_at``), then settles on
its outcome for good: ``Ready``, ``Request Moderated``, ``Content Moderated`` or ``Error`` (the complete
status enum of ``shared/apis/flux.md`` §3.2, with ``Task not found`` for ids the store does not know).
A task is *active* until it settles (on the first poll that finds it due), which is what the 429 limit on
active tasks counts; a task nobody polls stays active, which tests of that limit rely on.

Prompt triggers script one request end to end without code:

==============================  ===========================================================
``[[sandbox:moderation]]``      the task ends ``Request Moderated``
``[[sandbox:content_moderated]]``  the task ends ``Content Moderated``
``[[sandbox:error]]``           the task ends ``Error``
``[[sandbox:not_found]]``       polls answer ``Task not found``
``[[sandbox:credits]]``         the submit answers 402
``[[sandbox:busy]]``            the submit answers 429
``[[sandbox:status=503]]``      the submit answers that status
``[[sandbox:slow=N]]``          N extra ``Pending`` polls (1 without a number)
``[[sandbox:delay=S]]``         the submit answers after S seconds
``[[sandbox:hang]]``            the submit never answers
==============================  ===========================================================
"""

from __future__ import annotations

import re
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

import anyio

from limner.sandbox.bfl_jobs import Job

__all__ = ["Task", "TaskStatus", "TaskStore", "Triggers", "parse_triggers"]

_TRIGGER = re.compile(r"\[\[sandbox:([a-z_]+)(?:=([^\]]*))?\]\]")
DEFAULT_TASK_LIMIT = 1000


class TaskStatus(StrEnum):
    """The ``status`` values of ``get_result``, spelled exactly as the API spells them."""

    PENDING = "Pending"
    READY = "Ready"
    REQUEST_MODERATED = "Request Moderated"
    CONTENT_MODERATED = "Content Moderated"
    ERROR = "Error"
    NOT_FOUND = "Task not found"


TERMINAL_OUTCOMES = frozenset(set(TaskStatus) - {TaskStatus.PENDING})


@dataclass
class Task:
    """One submitted job and where it is in its life."""

    key: str
    endpoint: str
    job: Job
    outcome: TaskStatus
    pending_polls: int
    ready_at: float
    clock: Callable[[], float]
    cost: float
    input_mp: float
    output_mp: float
    details: dict[str, Any] | None = None
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    submitted_at: float = field(default_factory=time.time)
    pending_answered: int = 0
    status: TaskStatus = TaskStatus.PENDING
    settled_at: float | None = None
    result: dict[str, Any] | None = None
    lock: anyio.Lock = field(default_factory=anyio.Lock)

    def advance(self) -> TaskStatus:
        """The status for this poll: ``Pending`` until both the poll count and the time allow, then the outcome."""
        if self.status is TaskStatus.PENDING:
            if self.pending_answered < self.pending_polls or self.clock() < self.ready_at:
                self.pending_answered += 1
                return TaskStatus.PENDING
            self.settle()
        return self.status

    def settle(self) -> None:
        """Reach the outcome now; the task stops counting as active."""
        self.status = self.outcome
        self.settled_at = time.time()


class TaskStore:
    """Tasks by id, oldest dropped first past ``limit`` (a dropped id then reads ``Task not found``)."""

    def __init__(self, limit: int = DEFAULT_TASK_LIMIT) -> None:
        self._tasks: OrderedDict[str, Task] = OrderedDict()
        self._limit = limit

    def add(self, task: Task) -> None:
        """Keep ``task``; a task whose outcome is ``Task not found`` is settled at once."""
        if task.outcome is TaskStatus.NOT_FOUND:
            task.settle()
        self._tasks[task.id] = task
        while len(self._tasks) > self._limit:
            self._tasks.popitem(last=False)

    def get(self, task_id: str, key: str) -> Task | None:
        """The task, for the key that submitted it only: another account's id is not found."""
        task = self._tasks.get(task_id)
        return task if task is not None and task.key == key else None

    def active(self, key: str, endpoint: str | None = None) -> int:
        """Unsettled tasks of ``key`` (on one endpoint when given)."""
        return sum(
            1
            for task in self._tasks.values()
            if task.key == key and task.status is TaskStatus.PENDING and endpoint in (None, task.endpoint)
        )

    def all(self) -> list[Task]:
        """Every stored task, oldest first."""
        return list(self._tasks.values())

    def clear(self) -> None:
        """Forget every task."""
        self._tasks.clear()


@dataclass(frozen=True)
class Triggers:
    """What the ``[[sandbox:...]]`` markers of one prompt ask for."""

    outcome: TaskStatus | None = None
    extra_polls: int = 0
    http_status: int | None = None
    delay: float = 0.0
    hang: bool = False


def _number(name: str, argument: str | None, default: float) -> float:
    if argument is None or argument == "":
        return default
    try:
        return float(argument)
    except ValueError:
        raise ValueError(f"the argument of sandbox trigger {name!r} must be a number, not {argument!r}") from None


def _apply(found: Triggers, name: str, argument: str | None) -> Triggers:
    outcomes = {
        "moderation": TaskStatus.REQUEST_MODERATED,
        "content_moderated": TaskStatus.CONTENT_MODERATED,
        "error": TaskStatus.ERROR,
        "not_found": TaskStatus.NOT_FOUND,
    }
    statuses = {"credits": 402, "busy": 429}
    if name in outcomes:
        return replace(found, outcome=outcomes[name])
    if name in statuses:
        return replace(found, http_status=statuses[name])
    if name == "status":
        return replace(found, http_status=int(_number(name, argument, 500)))
    if name == "slow":
        return replace(found, extra_polls=found.extra_polls + int(_number(name, argument, 1)))
    if name == "delay":
        return replace(found, delay=_number(name, argument, 1.0))
    if name == "hang":
        return replace(found, hang=True)
    known = [*outcomes, *statuses, "status", "slow", "delay", "hang"]
    raise ValueError(f"unknown sandbox trigger {name!r}; known: {', '.join(sorted(known))}")


def parse_triggers(prompt: str) -> Triggers:
    """Every marker in ``prompt`` combined; raises ValueError for an unknown one, so typos are not ignored."""
    found = Triggers()
    for match in _TRIGGER.finditer(prompt):
        found = _apply(found, match.group(1), match.group(2))
    return found
