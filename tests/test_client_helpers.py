"""Shared drivers for the client tests: one test body drives the sync or the async client.

Not a test module by content (no tests); named test_client_* to stay in the client's files.
"""

from __future__ import annotations

import inspect
import json
import socket
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx

from convo import AsyncOpenAIClient, OpenAIClient

SECRET = "sk-test-SECRET-0123456789"
BASE = "http://fake.test/v1"


class Body(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A response body delivered in the given pieces; records how far it was read and closing."""

    def __init__(self, parts: list[bytes], *, fail_after: int | None = None) -> None:
        self.parts = parts
        self.fail_after = fail_after
        self.sent = 0
        self.closed = False

    def _next_parts(self) -> Iterator[bytes]:
        for part in self.parts:
            if self.fail_after is not None and self.sent >= self.fail_after:
                raise httpx.ReadError("connection reset by peer")
            self.sent += 1
            yield part

    def __iter__(self) -> Iterator[bytes]:
        yield from self._next_parts()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for part in self._next_parts():
            yield part

    def close(self) -> None:
        self.closed = True

    async def aclose(self) -> None:
        self.closed = True


Item = httpx.Response | Exception | Callable[[httpx.Request], httpx.Response]


class Server:
    """A MockTransport handler answering from a queue (default: a chat completion)."""

    def __init__(self, *items: Item) -> None:
        self.queue: deque[Item] = deque(items)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        item = self.queue.popleft() if self.queue else ok()
        if isinstance(item, Exception):
            raise item
        return item(request) if callable(item) else item

    def body(self, i: int = -1) -> Any:
        return json.loads(self.requests[i].content)


def chat_json(text: str | None = "Hello!", **extra: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "gpt-test",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11},
        "system_fingerprint": "fp_1",
        **extra,
    }


def ok(payload: dict[str, Any] | None = None, **headers: str) -> httpx.Response:
    return httpx.Response(200, json=payload or chat_json(), headers=headers)


def error(status: int, message: str = "nope", **headers: str) -> httpx.Response:
    body = {
        "error": {"message": message, "type": "invalid_request_error", "param": "x", "code": "c"}
    }
    return httpx.Response(status, json=body, headers=headers)


class Api:
    """Drives the sync or the async client with one test body (sync calls simply block)."""

    def __init__(self, kind: str, server: Server | None = None, **kw: Any) -> None:
        self.kind = kind
        self.server = server if server is not None else Server()
        self.sleeps: list[float] = []
        kw.setdefault("base_url", BASE)
        if "http_client" not in kw:
            kw.setdefault("transport", httpx.MockTransport(self.server))
        self.client: OpenAIClient | AsyncOpenAIClient
        if kind == "sync":
            self.client = OpenAIClient(sleep=self.sleeps.append, **kw)
        else:

            async def sleep(delay: float) -> None:
                self.sleeps.append(delay)

            self.client = AsyncOpenAIClient(sleep=sleep, **kw)

    async def call(self, name: str, **kw: Any) -> Any:
        result = getattr(self.client, name)(**kw)
        return await result if inspect.isawaitable(result) else result

    async def chunks(self, stream: Any) -> list[Any]:
        if self.kind == "sync":
            return list(stream)
        return [chunk async for chunk in stream]

    async def next(self, stream: Any) -> Any:
        return next(stream) if self.kind == "sync" else await anext(stream)

    async def do(self, obj: Any, name: str) -> Any:
        result = getattr(obj, name)()
        return await result if inspect.isawaitable(result) else result


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
