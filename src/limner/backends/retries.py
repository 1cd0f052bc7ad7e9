"""One retry policy for every upstream call: retry what certainly was not done, never repeat a paid
request whose outcome is unknown.

An image generation costs money (or GPU minutes) the moment the service accepts it. So the question
before a retry is not "did it fail?" but "could it have been done?":

- **not sent**: the connection was refused, the name did not resolve, the pool had no slot: the service
  never saw the request. Always safe to retry.
- **refused**: the service answered that it did not do it (429 rate limit, 503 overloaded). Safe to
  retry after the ``Retry-After`` it gave, or a backoff.
- **unknown**: the request left and the answer did not come back whole (a read timeout, a dropped
  connection, a 500, 502 or 504 that a gateway may have sent after the work was done). Retried only for
  idempotent requests (a poll, a listing); a paid request fails with its error, which says so.
- **failed**: a definite answer that a retry would repeat (400, 401, 402, 404, a content refusal).

The SDKs' own retries are turned off (the ``openai`` SDK retries timeouts and 5xx on a paid POST), so this
is the one place that decides; ``LIMNER_PROVIDER_MAX_RETRIES`` is its ``max_retries`` for every upstream.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import TypeVar

import httpx2

__all__ = [
    "Outcome",
    "RetryPolicy",
    "call_with_retries",
    "retry_after",
    "status_outcome",
    "transport_outcome",
]

log = logging.getLogger(__name__)

T = TypeVar("T")


class Outcome(StrEnum):
    """What a failed attempt says about whether the upstream did the work."""

    NOT_SENT = "not_sent"
    REFUSED = "refused"
    UNKNOWN = "unknown"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how long to wait; :meth:`allows` is the rule of the module docstring."""

    max_retries: int = 2
    base_delay: float = 0.5
    max_delay: float = 8.0
    max_retry_after: float = 60.0
    """A ``Retry-After`` longer than this is not waited for: the error reports it to the caller instead."""

    def allows(self, outcome: Outcome, *, idempotent: bool) -> bool:
        """Whether an attempt with this outcome may be repeated."""
        return outcome in (Outcome.NOT_SENT, Outcome.REFUSED) or (outcome is Outcome.UNKNOWN and idempotent)

    def delay(self, retry: int, retry_after: float | None) -> float:
        """The wait before retry number ``retry`` (0-based): the service's word, else exponential backoff
        with jitter, so that many callers refused at once do not come back at once.
        """
        if retry_after is not None:
            return max(0.0, retry_after)
        backoff: float = min(self.max_delay, self.base_delay * 2**retry)
        return backoff * random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not a secret


Classifier = Callable[[BaseException], tuple[Outcome, float | None] | None]
"""An exception to (outcome, Retry-After seconds), or None for one this policy does not know (re-raised)."""


async def call_with_retries(
    call: Callable[[], Awaitable[T]],
    *,
    policy: RetryPolicy,
    idempotent: bool,
    classify: Classifier,
    what: str = "request",
) -> T:
    """Run ``call``; on a failure that :meth:`RetryPolicy.allows`, wait and run it again, up to the limit.

    The last failure propagates unchanged, so each backend's error mapping still turns it into the message
    a person reads.
    """
    retry = 0
    while True:
        try:
            return await call()
        except Exception as exc:
            decision = classify(exc)
            if decision is None or retry >= policy.max_retries:
                raise
            outcome, asked = decision
            if not policy.allows(outcome, idempotent=idempotent):
                raise
            if asked is not None and asked > policy.max_retry_after:
                raise
            wait = policy.delay(retry, asked)
            log.info(
                "%s: %s (%s); retry %d of %d in %.2f s",
                what,
                type(exc).__name__,
                outcome,
                retry + 1,
                policy.max_retries,
                wait,
            )
            await asyncio.sleep(wait)
            retry += 1


def transport_outcome(exc: BaseException) -> Outcome | None:
    """The outcome of an ``httpx2`` transport failure: connecting (or waiting for a pooled connection)
    failed before anything was sent, anything later may have reached the service.
    """
    if isinstance(exc, httpx2.ConnectError | httpx2.ConnectTimeout | httpx2.PoolTimeout):
        return Outcome.NOT_SENT
    if isinstance(exc, httpx2.TransportError):
        return Outcome.UNKNOWN
    return None


def status_outcome(status: int) -> Outcome:
    """The outcome of an HTTP error status (see the module docstring)."""
    if status in (429, 503):
        return Outcome.REFUSED
    if status in (500, 502, 504) or status >= 500:
        return Outcome.UNKNOWN
    return Outcome.FAILED


def retry_after(headers: Mapping[str, str]) -> float | None:
    """The wait an answer asks for, in seconds: ``retry-after-ms`` (OpenAI, Azure), else ``retry-after``;
    None when neither is a number (an HTTP date is not honoured: no upstream of ours sends one).
    """
    for header, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(header)
        if value:
            try:
                return max(0.0, float(value) * scale)
            except ValueError:
                continue
    return None
