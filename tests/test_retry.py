"""Retry decisions and delays: table-driven over the pure functions of convo._client.retry."""

from __future__ import annotations

import email.utils

import httpx
import pytest

from convo._client.constants import (
    INITIAL_RETRY_DELAY,
    MAX_RETRY_AFTER,
    MAX_RETRY_DELAY,
    RETRY_JITTER,
)
from convo._client.retry import backoff_delay, parse_retry_after, retry_delay, should_retry_status

NOW = 1_700_000_000.0


def http_date(offset: float) -> str:
    return email.utils.formatdate(NOW + offset, usegmt=True)


def no_jitter() -> float:
    return 0.0


def full_jitter() -> float:
    return 0.999999


# (retries_done, max_retries, status (None = transport error), headers, expected delay or None)
CASES: list[tuple[str, int, int, int | None, dict[str, str], float | None]] = [
    ("connection error, first retry", 0, 2, None, {}, 0.5),
    ("connection error, second retry", 1, 2, None, {}, 1.0),
    ("budget exhausted", 2, 2, None, {}, None),
    ("no retries allowed", 0, 0, 500, {}, None),
    ("408 retried", 0, 2, 408, {}, 0.5),
    ("409 retried", 0, 2, 409, {}, 0.5),
    ("429 retried", 0, 2, 429, {}, 0.5),
    ("500 retried", 0, 2, 500, {}, 0.5),
    ("503 retried, third retry", 2, 5, 503, {}, 2.0),
    ("backoff capped", 10, 20, 502, {}, MAX_RETRY_DELAY),
    ("400 not retried", 0, 2, 400, {}, None),
    ("401 not retried", 0, 2, 401, {}, None),
    ("403 not retried", 0, 2, 403, {}, None),
    ("404 not retried", 0, 2, 404, {}, None),
    ("422 not retried", 0, 2, 422, {}, None),
    ("x-should-retry true on 400", 0, 2, 400, {"x-should-retry": "true"}, 0.5),
    ("x-should-retry false on 500", 0, 2, 500, {"x-should-retry": "false"}, None),
    ("x-should-retry is case-insensitive", 0, 2, 503, {"X-Should-Retry": "FALSE"}, None),
    ("x-should-retry junk ignored", 0, 2, 503, {"x-should-retry": "maybe"}, 0.5),
    ("retry-after seconds", 0, 2, 429, {"retry-after": "0.05"}, 0.05),
    ("retry-after integer", 1, 2, 429, {"retry-after": "3"}, 3.0),
    ("retry-after-ms wins", 0, 2, 429, {"retry-after-ms": "250", "retry-after": "9"}, 0.25),
    ("bad retry-after-ms falls back", 0, 2, 429, {"retry-after-ms": "x", "retry-after": "2"}, 2.0),
    ("retry-after http date", 0, 2, 503, {"retry-after": http_date(10)}, 10.0),
    ("retry-after date in the past", 0, 2, 503, {"retry-after": http_date(-10)}, 0.5),
    ("retry-after zero uses backoff", 0, 2, 429, {"retry-after": "0"}, 0.5),
    ("retry-after at the cap", 0, 2, 429, {"retry-after": str(MAX_RETRY_AFTER)}, MAX_RETRY_AFTER),
    ("retry-after beyond the cap", 0, 2, 429, {"retry-after": "3600"}, None),
    ("retry-after garbage", 0, 2, 429, {"retry-after": "soon"}, 0.5),
    ("retry-after on 400 is no reason", 0, 2, 400, {"retry-after": "1"}, None),
]


@pytest.mark.parametrize(
    ("retries_done", "max_retries", "status", "headers", "expected"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_retry_delay_table(
    retries_done: int,
    max_retries: int,
    status: int | None,
    headers: dict[str, str],
    expected: float | None,
) -> None:
    got = retry_delay(
        retries_done,
        max_retries,
        status_code=status,
        headers=httpx.Headers(headers) if status is not None else None,
        rand=no_jitter,
        now=NOW,
    )
    if expected is None:
        assert got is None
    else:
        assert got == pytest.approx(expected)


@pytest.mark.parametrize("retry", range(6))
def test_backoff_jitter_bounds(retry: int) -> None:
    base = min(INITIAL_RETRY_DELAY * 2**retry, MAX_RETRY_DELAY)
    assert backoff_delay(retry, rand=no_jitter) == base
    assert backoff_delay(retry, rand=full_jitter) == pytest.approx(base * (1 - RETRY_JITTER))
    for _ in range(50):  # the real random source stays within the bounds
        assert base * (1 - RETRY_JITTER) <= backoff_delay(retry) <= base


def test_parse_retry_after_absent_and_forms() -> None:
    assert parse_retry_after(httpx.Headers({})) is None
    assert parse_retry_after(httpx.Headers({"retry-after": "1.5"})) == 1.5
    assert parse_retry_after(httpx.Headers({"retry-after-ms": "20"})) == 0.02
    assert parse_retry_after(httpx.Headers({"retry-after": http_date(5)}), now=NOW) == 5.0
    assert parse_retry_after(httpx.Headers({"retry-after": "not a date"})) is None


@pytest.mark.parametrize(
    ("status", "headers", "expected"),
    [
        (429, {}, True),
        (599, {}, True),
        (418, {}, False),
        (418, {"x-should-retry": "true"}, True),
        (502, {"x-should-retry": "false"}, False),
    ],
)
def test_should_retry_status(status: int, headers: dict[str, str], expected: bool) -> None:
    assert should_retry_status(status, httpx.Headers(headers)) is expected


# The documented numbers themselves (docs/client.md, OpenAI's SDK): 0.5 s doubling, capped
# at 8 s, minus up to 25% jitter. Literals on purpose: a test that compares against the
# constants cannot notice the constants changing.
DOCUMENTED_BACKOFF = [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]


def test_backoff_follows_the_documented_numbers() -> None:
    assert [backoff_delay(n, rand=no_jitter) for n in range(7)] == DOCUMENTED_BACKOFF
    assert backoff_delay(1000, rand=no_jitter) == 8.0
    assert [backoff_delay(n, rand=full_jitter) for n in range(7)] == pytest.approx(
        [0.75 * d for d in DOCUMENTED_BACKOFF]
    )
    assert backoff_delay(2, rand=lambda: 0.5) == pytest.approx(2.0 * 0.875)
    assert (INITIAL_RETRY_DELAY, MAX_RETRY_DELAY, RETRY_JITTER, MAX_RETRY_AFTER) == (0.5, 8.0, 0.25, 60.0)


def test_the_client_sleeps_the_documented_backoff() -> None:
    from convo import InternalServerError, Message, OpenAIClient
    from convo.testing import FakeBackend

    fake = FakeBackend()
    for _ in range(7):
        fake.fail(500)
    sleeps: list[float] = []
    client = OpenAIClient(base_url="http://fake/v1", api_key="k", transport=fake.transport(),
                          max_retries=6, sleep=sleeps.append)
    with client, pytest.raises(InternalServerError):
        client.chat(model="gpt-4o-mini", messages=[Message.user("hi")])
    assert len(sleeps) == 6 and len(fake.requests) == 7
    for slept, documented in zip(sleeps, DOCUMENTED_BACKOFF, strict=False):
        assert 0.75 * documented <= slept <= documented


def test_http_date_retry_after_is_measured_from_the_clock_by_default() -> None:
    # Without ``now`` the wait is the date minus the current time: a date 30 s ahead
    # (formatted to the second) reads as at most 30 s, and more than 0 unless the
    # machine stalls for half a minute between the two lines.
    import time

    ahead = email.utils.formatdate(time.time() + 30, usegmt=True)
    wait = parse_retry_after(httpx.Headers({"retry-after": ahead}))
    assert wait is not None and 0.0 < wait <= 30.0
