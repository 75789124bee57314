"""Checks of the client's settings, whether given to the constructor or per call.

Each check turns a bad value into a :class:`~convo.ConfigurationError` that
says what is wrong *before* anything is sent, instead of an httpx or h11
error later (``httpx.InvalidURL``, ``LocalProtocolError: Illegal header value
b'Bearer sk-...\\n'``, which also printed the key). A message names the
setting and never shows a value that could be a credential.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any, NamedTuple

import httpx

from .._exceptions import ConfigurationError
from .redact import is_secret_name

__all__ = [
    "BaseURL",
    "Timeouts",
    "check_api_key",
    "check_bytes",
    "check_header_value",
    "check_headers",
    "check_max_retries",
    "check_query",
    "check_seconds",
    "check_timeout",
    "parse_base_url",
]

# RFC 9110 token characters: what a header name may contain.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# A header value convo sends: visible ASCII, spaces and tabs inside (httpx encodes
# values as ASCII; CR, LF or NUL would split or end the header).
_HEADER_VALUE = re.compile(r"[\x21-\x7e]([\x20-\x7e\t]*[\x21-\x7e])?")
_QUERY_TYPES = (str, int, float)


class BaseURL(NamedTuple):
    """A base URL taken apart: where requests go, its query, and secrets in it."""

    url: str  # scheme, host, port and path, without a trailing slash, query or fragment
    query: dict[str, Any]  # its query parameters (a list for a repeated name)
    secrets: tuple[str, ...]  # a password in it, values of key-like query parameters


def _shown(text: str) -> str:
    """A URL for a message: no userinfo, no query (either may hold a key), cut short."""
    text = re.sub(r"//[^/?#@]*@", "//***@", text.split("?", 1)[0].split("#", 1)[0])
    text = text.encode("ascii", "backslashreplace").decode("ascii")
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text if len(text) <= 120 else text[:117] + "..."


def parse_base_url(value: object) -> BaseURL:
    """Check a base URL and take it apart.

    A query in it (``https://gw/openai/v1?api-version=2024-06-01``, as Azure-style
    gateways want) is kept as the query of every request; a fragment is an error.
    """
    if isinstance(value, httpx.URL):
        value = str(value)
    if not isinstance(value, str):
        raise ConfigurationError(f"base_url must be a string, got {type(value).__name__}")
    if not value.isprintable() or value != value.strip() or " " in value:
        raise ConfigurationError(
            f"base_url contains whitespace or control characters: {_shown(value)!r}"
        )
    try:
        url = httpx.URL(value)
        host, port = url.host, url.port  # the host is IDNA-decoded here, and may fail
    except (httpx.InvalidURL, ValueError, TypeError, UnicodeError) as exc:
        reason = str(exc).split(":", 1)[0] if isinstance(exc, httpx.InvalidURL) else "invalid"
        raise ConfigurationError(
            f"base_url is not a valid URL ({reason}): {_shown(value)!r}"
        ) from None
    if port is not None and not 0 < port < 65536:
        raise ConfigurationError(f"base_url has a port out of range: {_shown(value)!r}")
    if url.scheme not in ("http", "https") or not host:
        raise ConfigurationError(
            f"base_url must be an http:// or https:// URL, got {_shown(value)!r}"
        )
    if "#" in value:
        raise ConfigurationError(
            f"base_url must not have a fragment ('#...'): {_shown(value)!r}; "
            "a server never sees it"
        )
    query: dict[str, Any] = {}
    secrets = []
    for name, item in url.params.multi_items():
        if name in query:
            previous = query[name]
            query[name] = [*previous, item] if isinstance(previous, list) else [previous, item]
        else:
            query[name] = item
        if is_secret_name(name) and item:
            secrets.append(item)
    if url.password:
        secrets.append(url.password)
    base = str(url.copy_with(query=None, fragment=None)).rstrip("/")
    return BaseURL(base, query, tuple(secrets))


def check_api_key(value: object, source: str) -> str | None:
    """The API key, or None for none; ``source`` names where it came from."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ConfigurationError(f"{source} must be a string, got {type(value).__name__}")
    if not _HEADER_VALUE.fullmatch(value) or " " in value or "\t" in value:
        raise ConfigurationError(
            f"{source} contains whitespace, a control character or a non-ASCII character "
            "(a trailing newline from a file?); the key is not shown here"
        )
    return value


def check_header_value(name: str, value: object, where: str) -> str:
    """One header value, checked; the message names the header, never the value."""
    if not isinstance(value, str):
        raise ConfigurationError(
            f"{where}: the value of header {name!r} must be a string, got {type(value).__name__}"
        )
    if value and not _HEADER_VALUE.fullmatch(value):
        raise ConfigurationError(
            f"{where}: the value of header {name!r} contains a line break, a control "
            "character or a non-ASCII character, or starts or ends with whitespace "
            "(the value is not shown: it may be a key)"
        )
    return value


def check_headers(headers: object, where: str, *, allow_none: bool) -> dict[str, str | None]:
    """A mapping of header names to values (None removes a header, where allowed)."""
    if not isinstance(headers, Mapping):
        raise ConfigurationError(f"{where} must be a mapping, got {type(headers).__name__}")
    out: dict[str, str | None] = {}
    for name, value in headers.items():
        if not isinstance(name, str) or not _TOKEN.fullmatch(name):
            raise ConfigurationError(f"{where}: {_repr(name)} is not a valid header name")
        if value is None:
            if not allow_none:
                raise ConfigurationError(f"{where}: the value of header {name!r} is None")
            out[name] = None
        else:
            out[name] = check_header_value(name, value, where)
    return out


def check_query(query: object, where: str) -> dict[str, Any]:
    """A mapping of query parameter names to strings or numbers (or lists of them)."""
    if not isinstance(query, Mapping):
        raise ConfigurationError(f"{where} must be a mapping, got {type(query).__name__}")
    out: dict[str, Any] = {}
    for name, value in query.items():
        if not isinstance(name, str) or not name:
            raise ConfigurationError(f"{where}: {_repr(name)} is not a query parameter name")
        items = value if isinstance(value, list | tuple) else [value]
        for item in items:
            if not isinstance(item, _QUERY_TYPES) or isinstance(item, bool) or (
                isinstance(item, float) and not math.isfinite(item)
            ):
                raise ConfigurationError(
                    f"{where}: the value of {name!r} must be a string or a finite number, "
                    f"got {type(item).__name__}"
                )
        out[name] = list(value) if isinstance(value, list | tuple) else value
    return out


def check_max_retries(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ConfigurationError(f"max_retries must be an integer >= 0, got {_repr(value)}")
    return value


def check_seconds(value: object, name: str) -> float | None:
    """A duration: None (no limit) or a finite number of seconds > 0."""
    if value is None:
        return None
    if (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ConfigurationError(
            f"{name} must be a number of seconds > 0 or None, got {_repr(value)}"
        )
    return float(value)


def check_bytes(value: object, name: str) -> int | None:
    """A size limit: None (no limit) or an integer number of bytes > 0."""
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigurationError(f"{name} must be an integer number of bytes > 0 or None, "
                                 f"got {_repr(value)}")
    return value


class Timeouts(NamedTuple):
    """What a ``timeout`` setting means for one attempt."""

    httpx: httpx.Timeout | None  # the per-operation timeouts handed to httpx
    total: float | None  # wall-clock deadline of an attempt (connect, headers, body)
    read: float | None  # streams: the longest wait for the next data event


def check_timeout(value: object, name: str = "timeout") -> Timeouts:
    """A ``timeout``: None, seconds, or an ``httpx.Timeout``.

    The total of an attempt is the largest of the timeout's values, or none if
    any of them is None (no limit on that phase means no limit on the whole).
    """
    if value is None:
        return Timeouts(None, None, None)
    if isinstance(value, httpx.Timeout):
        phases = (value.connect, value.read, value.write, value.pool)
        for phase in phases:
            if phase is not None:
                check_seconds(phase, f"{name} (an httpx.Timeout)")
        total = None if any(p is None for p in phases) else max(p for p in phases if p is not None)
        return Timeouts(value, total, value.read)
    seconds = check_seconds(value, name)
    return Timeouts(httpx.Timeout(seconds), seconds, seconds)


def _repr(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
