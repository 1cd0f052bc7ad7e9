"""The one retry policy (backends/retries.py): retry what was not done, never a paid call of unknown outcome."""

from __future__ import annotations

import httpx2
import pytest

from limner.backends.retries import Outcome, RetryPolicy, call_with_retries, status_outcome, transport_outcome

FAST = RetryPolicy(max_retries=3, base_delay=0.0, max_delay=0.0)


@pytest.mark.parametrize(
    ("outcome", "idempotent", "allowed"),
    [
        (Outcome.NOT_SENT, False, True),
        (Outcome.REFUSED, False, True),
        (Outcome.UNKNOWN, False, False),  # a paid call that may have been done is never repeated
        (Outcome.UNKNOWN, True, True),
        (Outcome.FAILED, True, False),
    ],
)
def test_the_rule(outcome: Outcome, idempotent: bool, allowed: bool) -> None:
    assert FAST.allows(outcome, idempotent=idempotent) is allowed


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (429, Outcome.REFUSED),
        (503, Outcome.REFUSED),
        (500, Outcome.UNKNOWN),
        (502, Outcome.UNKNOWN),
        (504, Outcome.UNKNOWN),
        (400, Outcome.FAILED),
        (401, Outcome.FAILED),
        (402, Outcome.FAILED),
    ],
)
def test_statuses(status: int, outcome: Outcome) -> None:
    assert status_outcome(status) is outcome


def test_transport_failures_before_sending_are_not_sent() -> None:
    assert transport_outcome(httpx2.ConnectError("refused")) is Outcome.NOT_SENT
    assert transport_outcome(httpx2.ConnectTimeout("slow")) is Outcome.NOT_SENT
    assert transport_outcome(httpx2.PoolTimeout("busy")) is Outcome.NOT_SENT
    assert transport_outcome(httpx2.ReadTimeout("slow")) is Outcome.UNKNOWN
    assert transport_outcome(httpx2.RemoteProtocolError("dropped")) is Outcome.UNKNOWN
    assert transport_outcome(ValueError("not ours")) is None


class Flaky:
    def __init__(self, failures: list[BaseException]) -> None:
        self.failures, self.calls = failures, 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return "done"


def classify(exc: BaseException) -> tuple[Outcome, float | None] | None:
    outcome = transport_outcome(exc)
    return None if outcome is None else (outcome, None)


async def test_not_sent_is_retried_until_it_works() -> None:
    call = Flaky([httpx2.ConnectError("x"), httpx2.ConnectError("x")])
    assert await call_with_retries(call, policy=FAST, idempotent=False, classify=classify) == "done"
    assert call.calls == 3


async def test_unknown_outcome_of_a_paid_call_is_raised_at_once() -> None:
    call = Flaky([httpx2.ReadTimeout("x")])
    with pytest.raises(httpx2.ReadTimeout):
        await call_with_retries(call, policy=FAST, idempotent=False, classify=classify)
    assert call.calls == 1


async def test_the_limit_and_unknown_exceptions() -> None:
    call = Flaky([httpx2.ConnectError("x")] * 5)
    with pytest.raises(httpx2.ConnectError):
        await call_with_retries(call, policy=FAST, idempotent=True, classify=classify)
    assert call.calls == 4  # the first try and three retries
    odd = Flaky([KeyError("x")])
    with pytest.raises(KeyError):
        await call_with_retries(odd, policy=FAST, idempotent=True, classify=classify)
    assert odd.calls == 1


async def test_a_long_retry_after_is_reported_not_waited_for() -> None:
    call = Flaky([httpx2.ConnectError("x")])
    with pytest.raises(httpx2.ConnectError):
        await call_with_retries(
            call, policy=FAST, idempotent=True, classify=lambda _exc: (Outcome.REFUSED, FAST.max_retry_after + 1)
        )
    assert call.calls == 1
    assert FAST.delay(0, 2.5) == 2.5
    assert 0.25 <= RetryPolicy(base_delay=0.5).delay(0, None) <= 0.5  # backoff with jitter


def test_retry_after_reads_milliseconds_first_and_ignores_dates() -> None:
    from limner.backends.retries import retry_after

    assert retry_after({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    assert retry_after({"retry-after": "3"}) == 3.0
    assert retry_after({"retry-after": "Wed, 21 Oct 2026 07:28:00 GMT"}) is None
    assert retry_after({}) is None
