"""Scrubbing secrets out of what a server sends back, before it reaches an error or a log.

Servers echo keys: OpenAI's 401 repeats part of the key, gateways repeat the
whole ``Authorization`` header, proxies put it in a request id. A
:class:`Redactor` masks, in any text, every piece of at least
:data:`FRAGMENT` consecutive characters of a secret (and shorter secrets
whole), so a key cut in two by an excerpt, or only partly echoed, is masked
as well as a complete one. Text that escapes characters the way JSON does
(``\\/``, ``\\u002d``, doubled backslashes of JSON inside JSON) is matched
as it reads once unescaped, so an escaped echo is masked too.

The redactor runs last: after a body is decoded, after an excerpt is cut,
on the final message, the request id and every string of an error body.

httpx and httpcore log what a server sends too (the reason phrase at INFO,
every response header at DEBUG). While a request is in flight, the shells
set :data:`in_flight` to the request's redactor, and :func:`watch_library_logs`
installs a filter on those libraries' loggers that masks secrets in their
records (records logged outside a convo request are left alone).
"""

from __future__ import annotations

import bisect
import functools
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from contextvars import ContextVar
from typing import Any

__all__ = [
    "FRAGMENT",
    "MASK",
    "Redactor",
    "in_flight",
    "is_secret_name",
    "watch_library_logs",
]

MASK = "***"
# A run of this many characters of a secret is a leak; below it, text is too
# common to mask without mangling messages ("sk-", "Bearer").
FRAGMENT = 8
# Secrets shorter than this are not secrets worth the noise of masking.
_MIN_SECRET = 4

# Header and query parameter names whose values are credentials.
_SECRET_NAME = re.compile(r"auth|key|token|secret|passw|cookie|signature|credential", re.IGNORECASE)

# A run of backslashes, optionally closing a \uXXXX escape.
_ESCAPE = re.compile(r"\\+(?:u([0-9a-fA-F]{4}))?")


def is_secret_name(name: str) -> bool:
    """Whether a header or query parameter named ``name`` carries a credential."""
    return _SECRET_NAME.search(name) is not None


class Redactor:
    """Masks secrets in texts and JSON values.

    Args:
        secrets: the values to mask; those shorter than 4 characters are ignored.
    """

    __slots__ = ("_pieces", "_secrets")

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        kept = frozenset(s for s in secrets if isinstance(s, str) and len(s) >= _MIN_SECRET)
        self._secrets = kept
        pieces: set[str] = set()
        for secret in kept:
            if len(secret) <= FRAGMENT:
                pieces.add(secret)
            else:
                pieces.update(secret[i : i + FRAGMENT] for i in range(len(secret) - FRAGMENT + 1))
        self._pieces = tuple(pieces)

    def __bool__(self) -> bool:
        return bool(self._pieces)

    def __repr__(self) -> str:  # never the secrets themselves
        return f"<Redactor of {len(self._secrets)} secrets>"

    def with_secrets(self, more: Iterable[str]) -> Redactor:
        """A redactor masking these secrets as well (``self`` when they add nothing)."""
        extra = {s for s in more if len(s) >= _MIN_SECRET} - self._secrets
        return Redactor(self._secrets | extra) if extra else self

    def __call__(self, text: str) -> str:
        """``text`` with every secret, piece of one, or escaped form of either masked."""
        if not self._pieces or not text:
            return text
        if "\\" not in text:
            spans = self._find(text)
        else:
            view = _Unescaped(text)
            spans = [view.original(a, b) for a, b in self._find(view.text)]
        if not spans:
            return text
        out = []
        pos = 0
        for start, end in _merge(spans):
            out.append(text[pos:start])
            out.append(MASK)
            pos = end
        out.append(text[pos:])
        return "".join(out)

    def deep(self, value: Any) -> Any:
        """A JSON value (decoded) with every string in it, keys too, redacted."""
        if not self._pieces:
            return value
        if isinstance(value, str):
            return self(value)
        if isinstance(value, Mapping):
            return {self(k) if isinstance(k, str) else k: self.deep(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.deep(v) for v in value]
        return value

    def _find(self, text: str) -> list[tuple[int, int]]:
        spans = []
        for piece in self._pieces:
            i = text.find(piece)
            while i >= 0:
                spans.append((i, i + len(piece)))
                i = text.find(piece, i + 1)
        return spans


def _merge(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Overlapping or touching spans joined (the pieces of one key overlap)."""
    spans.sort()
    merged = [spans[0]]
    for start, end in spans[1:]:
        last_start, last_end = merged[-1]
        if start <= last_end:
            merged[-1] = (last_start, max(last_end, end))
        else:
            merged.append((start, end))
    return merged


class _Unescaped:
    """A text read with JSON-style escapes undone, mapped back to the original positions.

    Every run of backslashes is dropped and ``\\uXXXX`` (behind any number of
    backslashes) becomes its character: enough to see a key through one or
    several levels of JSON escaping. The view is only for finding secrets;
    what is masked is the original text.
    """

    __slots__ = ("_ends", "_starts", "_view_at", "_widths", "text")

    def __init__(self, text: str) -> None:
        parts: list[str] = []
        self._view_at: list[int] = []  # where each escape sits in the view
        self._starts: list[int] = []  # ... and in the original text
        self._ends: list[int] = []
        self._widths: list[int] = []  # 1 for \uXXXX, 0 for a dropped run of backslashes
        pos = 0
        size = 0
        for match in _ESCAPE.finditer(text):
            start, end = match.span()
            parts.append(text[pos:start])
            size += start - pos
            self._view_at.append(size)
            self._starts.append(start)
            self._ends.append(end)
            code = match.group(1)
            if code is None:
                self._widths.append(0)
            else:
                parts.append(chr(int(code, 16)))
                self._widths.append(1)
                size += 1
            pos = end
        parts.append(text[pos:])
        self.text = "".join(parts)

    def _span_of(self, i: int) -> tuple[int, int]:
        """The original span of view character ``i``."""
        # view_at is strictly increasing: after a run of backslashes comes another character.
        k = bisect.bisect_right(self._view_at, i) - 1
        if k < 0:
            return i, i + 1
        if self._widths[k] == 1 and self._view_at[k] == i:
            return self._starts[k], self._ends[k]
        at = self._ends[k] + (i - self._view_at[k] - self._widths[k])
        return at, at + 1

    def original(self, start: int, end: int) -> tuple[int, int]:
        """The original span of view span ``[start, end)``."""
        return self._span_of(start)[0], self._span_of(end - 1)[1]


# The redactor of the request the current thread or task is sending (made on
# demand: most requests log nothing).
in_flight: ContextVar[Callable[[], Redactor] | None] = ContextVar(
    "convo_client_in_flight", default=None
)

# Every logger httpx and httpcore write to (httpcore logs per module; a filter
# on a parent logger does not see its children's records).
_LIBRARY_LOGGERS = (
    "httpx",
    "httpcore.connection",
    "httpcore.http11",
    "httpcore.http2",
    "httpcore.proxy",
    "httpcore.socks",
)


class _LibraryLogFilter(logging.Filter):
    """Masks the in-flight request's secrets in a library's log record."""

    def filter(self, record: logging.LogRecord) -> bool:
        make = in_flight.get()
        if make is not None:
            message = record.getMessage()
            clean = make()(message)
            if clean != message:
                record.msg = clean
                record.args = None
        return True


@functools.cache
def watch_library_logs() -> None:
    """Install the filter on httpx's and httpcore's loggers (once per process)."""
    log_filter = _LibraryLogFilter()
    for name in _LIBRARY_LOGGERS:
        logging.getLogger(name).addFilter(log_filter)
