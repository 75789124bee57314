"""The keyword parameters of the client methods, typed once for both clients.

``chat(..., **params: Unpack[ChatParams])``: type checkers see every
parameter; at run time the core sends the set ones (None means "not sent"),
rejects unknown names with a TypeError, as a normal signature would, and a
value of the wrong type (``temperature="hot"``, ``n=True``, ``stop=[1]``, a
NaN) with a :class:`~convo.ConfigurationError` before anything is sent.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypedDict

import httpx
from pydantic import BaseModel

from .._exceptions import ConfigurationError

__all__ = [
    "CHAT_KEYS",
    "COMPLETION_KEYS",
    "ChatParams",
    "CompletionParams",
    "RequestOptions",
    "TimeoutTypes",
    "check_params",
]

TimeoutTypes = float | httpx.Timeout | None


class RequestOptions(TypedDict, total=False):
    """Per-call options, accepted by every client method."""

    extra_body: Mapping[str, Any]  # merged into the JSON body (server-specific fields)
    extra_headers: Mapping[str, str | None]  # None removes a header
    extra_query: Mapping[str, str]
    timeout: TimeoutTypes  # None: no timeout
    max_retries: int
    stream_idle_timeout: float | None  # streams: longest wait for a data event (pings do not count)
    stream_timeout: float | None  # streams: a total deadline for the whole stream
    max_response_bytes: int | None  # the largest body (or whole stream) accepted
    max_event_bytes: int | None  # the largest server-sent event (or line) accepted


class _SamplingParams(RequestOptions, total=False):
    temperature: float
    top_p: float
    n: int
    stop: str | Sequence[str]
    max_tokens: int
    frequency_penalty: float
    presence_penalty: float
    logit_bias: Mapping[str, int]
    seed: int
    user: str
    stream_options: Mapping[str, Any]


class ChatParams(_SamplingParams, total=False):
    """Keyword parameters of ``chat`` / ``chat_stream``; unset or None means "not sent"."""

    max_completion_tokens: int
    logprobs: bool
    top_logprobs: int
    response_format: Mapping[str, Any]  # {"type": "text" | "json_object" | "json_schema", ...}
    tools: Sequence[Mapping[str, Any]]
    tool_choice: str | Mapping[str, Any]
    parallel_tool_calls: bool
    metadata: Mapping[str, str]
    service_tier: str
    reasoning_effort: str
    store: bool


class CompletionParams(_SamplingParams, total=False):
    """Keyword parameters of ``complete`` / ``complete_stream``; unset or None means "not sent"."""

    logprobs: int
    suffix: str
    echo: bool
    best_of: int


OPTIONS = frozenset(RequestOptions.__annotations__)
CHAT_KEYS = frozenset(ChatParams.__annotations__) - OPTIONS
COMPLETION_KEYS = frozenset(CompletionParams.__annotations__) - OPTIONS


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _integer(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _object(v: Any) -> bool:
    return isinstance(v, Mapping | BaseModel)


def _stop(v: Any) -> bool:
    if isinstance(v, str):
        return True
    return (
        isinstance(v, Sequence)
        and not isinstance(v, bytes | bytearray)
        and all(isinstance(s, str) for s in v)
    )


def _objects(v: Any) -> bool:
    return isinstance(v, Sequence) and not isinstance(v, str | bytes) and all(map(_object, v))


def _bias(v: Any) -> bool:
    return isinstance(v, Mapping) and all(
        isinstance(k, str | int) and not isinstance(k, bool) and _number(b) for k, b in v.items()
    )


_Check = tuple[str, Callable[[Any], bool]]
_NUMBER: _Check = ("a finite number", _number)
_INTEGER: _Check = ("an integer", _integer)
_BOOL: _Check = ("True or False", lambda v: isinstance(v, bool))
_STRING: _Check = ("a string", lambda v: isinstance(v, str))
_OBJECT: _Check = ("a mapping", _object)

_COMMON: dict[str, _Check] = {
    "temperature": _NUMBER,
    "top_p": _NUMBER,
    "frequency_penalty": _NUMBER,
    "presence_penalty": _NUMBER,
    "n": _INTEGER,
    "max_tokens": _INTEGER,
    "seed": _INTEGER,
    "stop": ("a string or a list of strings", _stop),
    "logit_bias": ("a mapping of token ids to numbers", _bias),
    "user": _STRING,
    "stream_options": _OBJECT,
}
_CHECKS: dict[str, dict[str, _Check]] = {
    "chat": {
        **_COMMON,
        "max_completion_tokens": _INTEGER,
        "logprobs": _BOOL,
        "top_logprobs": _INTEGER,
        "response_format": _OBJECT,
        "tools": ("a list of mappings", _objects),
        "tool_choice": ("a string or a mapping", lambda v: isinstance(v, str) or _object(v)),
        "parallel_tool_calls": _BOOL,
        "metadata": _OBJECT,
        "service_tier": _STRING,
        "reasoning_effort": _STRING,
        "store": _BOOL,
    },
    "completion": {
        **_COMMON,
        "logprobs": _INTEGER,
        "suffix": _STRING,
        "echo": _BOOL,
        "best_of": _INTEGER,
    },
}


def check_params(params: Mapping[str, Any], endpoint: str) -> None:
    """Refuse a value of the wrong type for one of OpenAI's parameters (None is "not sent")."""
    checks = _CHECKS[endpoint]
    for name, value in params.items():
        check = checks.get(name)
        if check is not None and value is not None and not check[1](value):
            raise ConfigurationError(
                f"{name} must be {check[0]}, got {type(value).__name__}"
                + (f" {value!r}" if isinstance(value, int | float) else "")
            )
