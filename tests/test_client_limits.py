"""Size limits: a server cannot make the client hold more than it was told to.

``max_response_bytes`` bounds a body and the sum of a stream's bytes;
``max_event_bytes`` bounds one server-sent event or line. Past either,
reading stops and :class:`~convo.APIResponseTooLargeError` is raised (an
``APIError``: a remote failure, not retried). An error body is only read for
its message: at most 1 MiB of it, and the status error is raised as usual.
Bodies here are generated lazily and record how much of them was read.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from test_client_helpers import Api, Server, chat_json

from convo import (
    APIError,
    APIResponseTooLargeError,
    InternalServerError,
    Message,
    OpenAIClient,
)
from convo._client.constants import (
    DEFAULT_MAX_EVENT_BYTES,
    DEFAULT_MAX_RESPONSE_BYTES,
    MAX_ERROR_BODY_BYTES,
)
from convo.testing import TricklingServer

HI = [Message.user("Hi")]
PIECE = 64 * 1024


@pytest.fixture(params=["sync", "async"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class Endless(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A body of ``first`` then ``piece`` repeated (``count`` times, or forever); counts reads."""

    def __init__(self, first: bytes, piece: bytes, count: int | None = None) -> None:
        self.first = first
        self.piece = piece
        self.count = count
        self.read = 0

    def __iter__(self) -> Iterator[bytes]:
        self.read += len(self.first)
        yield self.first
        n = 0
        while self.count is None or n < self.count:
            n += 1
            self.read += len(self.piece)
            yield self.piece

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for part in self:
            yield part


def event(payload: Any) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


CHUNK = {
    "id": "c",
    "object": "chat.completion.chunk",
    "created": 1,
    "model": "m",
    "choices": [{"index": 0, "delta": {"content": "x" * 200}, "finish_reason": None}],
}


async def test_a_declared_length_over_the_limit_is_refused_unread(kind: str) -> None:
    body = Endless(b"", b"x" * PIECE, count=100)
    response = httpx.Response(
        200, stream=body, headers={"content-length": str(100 * PIECE), "x-request-id": "req_1"}
    )
    api = Api(kind, server=Server(response), max_response_bytes=PIECE)
    with pytest.raises(APIResponseTooLargeError) as info:
        await api.call("chat", model="m", messages=HI)
    exc = info.value
    assert (exc.limit, exc.status_code, exc.request_id) == (PIECE, 200, "req_1")
    assert str(exc) == ("the body from http://fake.test/v1/chat/completions is larger than 65536 "
                        "bytes; reading stopped (raise the limit if this answer is legitimate)")
    assert body.read == 0
    assert len(api.server.requests) == 1  # not retried


async def test_an_endless_body_stops_at_the_limit(kind: str) -> None:
    body = Endless(b'{"id": "', b"x" * PIECE)  # no length, never ends
    api = Api(kind, server=Server(httpx.Response(200, stream=body)), max_response_bytes=PIECE * 4)
    with pytest.raises(APIResponseTooLargeError):
        await api.call("chat", model="m", messages=HI)
    assert body.read <= PIECE * 5 + 8


async def test_per_call_limit_and_none(kind: str) -> None:
    payload = json.dumps(chat_json("y" * 5000)).encode()
    api = Api(kind, server=Server(*(httpx.Response(200, content=payload) for _ in range(3))))
    with pytest.raises(APIResponseTooLargeError):
        await api.call("chat", model="m", messages=HI, max_response_bytes=1000)
    assert (await api.call("chat", model="m", messages=HI)).text == "y" * 5000
    reply = await api.call("chat", model="m", messages=HI, max_response_bytes=None)
    assert reply.text == "y" * 5000


async def test_a_stream_stops_at_the_total_limit(kind: str) -> None:
    body = Endless(b"", event(CHUNK))  # a stream that never finishes
    api = Api(kind, server=Server(httpx.Response(200, stream=body)), max_response_bytes=50_000)
    stream = await api.call("chat_stream", model="m", messages=HI)
    received = []
    with pytest.raises(APIResponseTooLargeError, match="the stream from") as info:
        async for chunk in _chunks(api, stream):
            received.append(chunk)
    assert received  # what came before the limit was delivered
    assert stream.error is info.value
    assert body.read <= 50_000 + len(event(CHUNK))
    assert len(stream.snapshot().text) == 200 * len(received)


async def too_large(api: Api, what: str, limit: int) -> None:
    """A stream from ``api`` ends in the error for ``what`` over ``limit``, said in full."""
    stream = await api.call("chat_stream", model="m", messages=HI)
    with pytest.raises(APIResponseTooLargeError) as info:
        await api.chunks(stream)
    assert str(info.value) == (
        f"{what} from http://fake.test/v1/chat/completions is larger than {limit} bytes; "
        "reading stopped (raise the limit if this answer is legitimate)")
    assert (info.value.limit, info.value.status_code) == (limit, 200)


class Pieces(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A body of these pieces, with no declared length (so the stream itself is counted)."""

    def __init__(self, *pieces: bytes) -> None:
        self.pieces = pieces

    def __iter__(self) -> Iterator[bytes]:
        yield from self.pieces

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for piece in self.pieces:
            yield piece


async def test_a_stream_of_exactly_the_limit_is_read_and_one_byte_more_is_not(kind: str) -> None:
    last = {**CHUNK, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    pieces = (event(CHUNK), event(CHUNK), event(last))  # counted across reads
    size = sum(map(len, pieces))
    api = Api(kind, server=Server(httpx.Response(200, stream=Pieces(*pieces))),
              max_response_bytes=size)
    stream = await api.call("chat_stream", model="m", messages=HI)
    assert len(await api.chunks(stream)) == 3
    api = Api(kind, server=Server(httpx.Response(200, stream=Pieces(*pieces))),
              max_response_bytes=size - 1)
    await too_large(api, "the stream", size - 1)


async def test_one_event_over_the_event_limit(kind: str) -> None:
    body = Endless(event(CHUNK), b"data: " + b"z" * PIECE)  # a line that never ends
    api = Api(kind, server=Server(httpx.Response(200, stream=body)), max_event_bytes=PIECE * 2)
    await too_large(api, "a server-sent event", PIECE * 2)
    assert body.read <= PIECE * 4


async def test_an_error_body_is_cut_not_refused(kind: str) -> None:
    message = json.dumps({"error": {"message": "overloaded"}}).encode()
    body = Endless(message, b" " * PIECE)  # an endless error body
    api = Api(kind, server=Server(httpx.Response(500, stream=body)), max_retries=0)
    with pytest.raises(InternalServerError) as info:
        await api.call("chat", model="m", messages=HI)
    assert body.read <= MAX_ERROR_BODY_BYTES + PIECE + len(message)
    assert str(info.value).startswith("500 Internal Server Error")


async def test_too_large_is_an_api_error_and_not_retried(kind: str) -> None:
    big = httpx.Response(200, content=b"x" * 2000)
    api = Api(kind, server=Server(big, big, big), max_response_bytes=1000)
    with pytest.raises(APIError):
        await api.call("chat", model="m", messages=HI)
    assert len(api.server.requests) == 1 and api.sleeps == []


def test_over_a_real_connection() -> None:
    payload = b'{"id": "' + b"x" * (2 * 1024 * 1024) + b'"}'
    head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n"  # no length: until close
    with TricklingServer(lambda: [head, payload], interval=0) as server, OpenAIClient(
        base_url=server.base_url, max_response_bytes=1024 * 1024, max_retries=0
    ) as client, pytest.raises(APIResponseTooLargeError):
        client.chat(model="m", messages=HI)


def test_defaults() -> None:
    client = OpenAIClient(base_url="http://x/v1")
    limits = client._core.chat_request("m", HI, {}, stream=True).limits
    assert limits.max_body == DEFAULT_MAX_RESPONSE_BYTES == 64 * 1024 * 1024
    assert limits.max_event == DEFAULT_MAX_EVENT_BYTES == 16 * 1024 * 1024
    assert (limits.total, limits.idle, limits.stream_total) == (600.0, 600.0, None)
    client.close()


async def _chunks(api: Api, stream: Any) -> AsyncIterator[Any]:
    if api.kind == "sync":
        for chunk in stream:
            yield chunk
    else:
        async for chunk in stream:
            yield chunk
