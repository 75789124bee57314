"""Every constant of the HTTP client in one place (defaults follow the official SDK)."""

from __future__ import annotations

from typing import Final

import httpx

__all__ = [
    "DEFAULT_BASE_URL",
    "DEFAULT_CONNECTION_LIMITS",
    "DEFAULT_MAX_EVENT_BYTES",
    "DEFAULT_MAX_RESPONSE_BYTES",
    "DEFAULT_MAX_RETRIES",
    "DEFAULT_TIMEOUT",
    "ENV_API_KEY",
    "ENV_BASE_URL",
    "ENV_ORG_ID",
    "ENV_PROJECT_ID",
    "ERROR_EXCERPT_CHARS",
    "INITIAL_RETRY_DELAY",
    "MAX_ERROR_BODY_BYTES",
    "MAX_RETRY_AFTER",
    "MAX_RETRY_DELAY",
    "POOL_SHARDS",
    "REQUEST_ID_CHARS",
    "RETRY_JITTER",
]

DEFAULT_BASE_URL: Final = "https://api.openai.com/v1"

# Environment variables read when the constructor argument is None.
ENV_API_KEY: Final = "OPENAI_API_KEY"
ENV_BASE_URL: Final = "OPENAI_BASE_URL"
ENV_ORG_ID: Final = "OPENAI_ORG_ID"
ENV_PROJECT_ID: Final = "OPENAI_PROJECT_ID"

# Ten minutes in total, like the SDK: long completions are slow, but a server
# that does not accept the connection within 5 s is not going to. The total is
# a wall-clock deadline per attempt (connect, headers and the whole body); for
# streams its read value is the longest wait for the next data event.
DEFAULT_TIMEOUT: Final = httpx.Timeout(timeout=600.0, connect=5.0)
DEFAULT_MAX_RETRIES: Final = 2
# Many concurrent requests to one host are normal for a chatbot backend.
DEFAULT_CONNECTION_LIMITS: Final = httpx.Limits(max_connections=1000, max_keepalive_connections=100)
# The async client's own transport splits its connections over this many pools
# (see _client/pool.py: httpcore's per-request cost grows with its pool size).
POOL_SHARDS: Final = 8

# Backoff: INITIAL_RETRY_DELAY * 2**retry, capped, minus up to RETRY_JITTER of it.
INITIAL_RETRY_DELAY: Final = 0.5
MAX_RETRY_DELAY: Final = 8.0
RETRY_JITTER: Final = 0.25
# A server-advertised wait (retry-after-ms / retry-after) is honoured when
# 0 < wait <= MAX_RETRY_AFTER; a longer one means "not soon": no retry.
MAX_RETRY_AFTER: Final = 60.0

# How much of an unexpected body goes into an error message.
ERROR_EXCERPT_CHARS: Final = 200
# A request id longer than this is not one; it is cut in messages.
REQUEST_ID_CHARS: Final = 200

# What a server may make the client hold in memory. A chat completion is
# kilobytes; 64 MiB leaves room for n > 1 with logprobs on long replies. One
# server-sent event is one delta (bytes to kilobytes); 16 MiB leaves room for
# servers that send a whole reply in one event.
DEFAULT_MAX_RESPONSE_BYTES: Final = 64 * 1024 * 1024
DEFAULT_MAX_EVENT_BYTES: Final = 16 * 1024 * 1024
# An error body is read only for its message: at most this much of it.
MAX_ERROR_BODY_BYTES: Final = 1024 * 1024
