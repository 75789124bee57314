"""The keyword parameters of the client methods, typed once for both clients.

``chat(..., **params: Unpack[ChatParams])``: type checkers see every
parameter; at run time the core sends the set ones (None means "not sent")
and rejects unknown names with a TypeError, as a normal signature would.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypedDict

import httpx

__all__ = [
    "CHAT_KEYS",
    "COMPLETION_KEYS",
    "ChatParams",
    "CompletionParams",
    "RequestOptions",
    "TimeoutTypes",
]

TimeoutTypes = float | httpx.Timeout | None


class RequestOptions(TypedDict, total=False):
    """Per-call options, accepted by every client method."""

    extra_body: Mapping[str, Any]  # merged into the JSON body (server-specific fields)
    extra_headers: Mapping[str, str | None]  # None removes a header
    extra_query: Mapping[str, str]
    timeout: TimeoutTypes  # None: no timeout
    max_retries: int


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
