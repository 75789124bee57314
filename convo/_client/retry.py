"""Retry decisions and backoff: pure functions, the same for the sync and async clients.

The rules follow the official SDK:

* transport failures (connection errors, timeouts) are retried;
* statuses 408, 409, 429 and >= 500 are retried, every other status is not;
* ``x-should-retry: true`` / ``false`` from the server overrides the status rule;
* the wait is the server's ``retry-after-ms``, else ``retry-after`` (seconds or an
  HTTP date) when ``0 < wait <= MAX_RETRY_AFTER``; a longer advertised wait means
  "not soon", so the error is raised at once instead of hammering the server;
* otherwise exponential backoff, ``INITIAL_RETRY_DELAY * 2**n`` capped at
  ``MAX_RETRY_DELAY``, shortened by a random jitter of up to ``RETRY_JITTER``.

The shells own sleeping; these functions only say whether and how long.
"""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Callable, Mapping

from .constants import INITIAL_RETRY_DELAY, MAX_RETRY_AFTER, MAX_RETRY_DELAY, RETRY_JITTER

__all__ = ["backoff_delay", "parse_retry_after", "retry_delay", "should_retry_status"]

_RETRYABLE = frozenset({408, 409, 429})


def parse_retry_after(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """The wait in seconds a response advertises, or None when it advertises none.

    ``retry-after-ms`` wins over ``retry-after``; ``retry-after`` may be seconds
    (fractions allowed, as OpenAI-compatible servers send them) or an HTTP date.

    Args:
        headers: response headers (case-insensitive, like ``httpx.Headers``).
        now: the current time as a Unix timestamp (injectable for tests).
    """
    value = headers.get("retry-after-ms")
    if value is not None:
        try:
            return float(value) / 1000.0
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_tz(value)
        if when is None:
            return None
        stamp = email.utils.mktime_tz(when)
    except (TypeError, ValueError, OverflowError):
        return None
    return float(stamp - (time.time() if now is None else now))


def should_retry_status(status_code: int, headers: Mapping[str, str]) -> bool:
    """Whether an error status is worth another attempt (``x-should-retry`` wins)."""
    override = headers.get("x-should-retry")
    if override is not None:
        override = override.strip().lower()
        if override == "true":
            return True
        if override == "false":
            return False
    return status_code in _RETRYABLE or status_code >= 500


def backoff_delay(retry: int, *, rand: Callable[[], float] = random.random) -> float:
    """Exponential backoff for the ``retry``-th retry (0-based), with jitter.

    Args:
        retry: how many retries were already made.
        rand: a source of floats in [0, 1) (injectable for tests).
    """
    base = min(INITIAL_RETRY_DELAY * 2.0 ** min(retry, 64), MAX_RETRY_DELAY)
    return base * (1.0 - RETRY_JITTER * rand())


def retry_delay(
    retries_done: int,
    max_retries: int,
    *,
    status_code: int | None = None,
    headers: Mapping[str, str] | None = None,
    rand: Callable[[], float] = random.random,
    now: float | None = None,
) -> float | None:
    """How long to wait before the next attempt, or None to give up.

    Args:
        retries_done: retries already made for this request (0 after the first attempt).
        max_retries: the retry budget of this request.
        status_code: the error status, or None for a transport failure
            (connection error, timeout), which is always retryable.
        headers: the error response's headers (None for a transport failure).
        rand: jitter source in [0, 1).
        now: the current Unix time, for HTTP-date ``retry-after`` values.
    """
    if retries_done >= max_retries:
        return None
    advertised: float | None = None
    if headers is not None:
        advertised = parse_retry_after(headers, now=now)
        if advertised is not None and advertised > MAX_RETRY_AFTER:
            return None
    if status_code is not None and not should_retry_status(status_code, headers or {}):
        return None
    if advertised is not None and advertised > 0:
        return advertised
    return backoff_delay(retries_done, rand=rand)
