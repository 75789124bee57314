"""Several connection pools behind one async transport, for many concurrent requests.

httpcore's connection pool rescans its connections (and the idle ones among
them) every time a request is queued or a response is closed: its cost per
request grows with the square of the number of open connections. At 32
concurrent requests that bookkeeping is over half of the client's CPU time.
Splitting the connections over a few independent pools, each request going to
the least busy one, keeps every pool small: the same requests cost about four
times less CPU (``bench/bench_client.py``, async x32). A single caller
awaiting one request at a time always lands on the first pool, so it reuses
one connection exactly as a plain ``httpx.AsyncClient`` would.

Only the async client's own transport is pooled this way; a ``transport`` or
``http_client`` passed in is used as given, and so is httpx's default when
proxy environment variables are set (httpx honours them only for its default
transport).
"""

from __future__ import annotations

import math
import urllib.request
from collections.abc import AsyncIterator

import httpx

from .constants import POOL_SHARDS

__all__ = ["PooledAsyncTransport", "pooled_async_transport"]


class _Release(httpx.AsyncByteStream):
    """A response body that tells its pool when it is closed (once)."""

    __slots__ = ("_busy", "_index", "_open", "_stream")

    def __init__(self, stream: httpx.AsyncByteStream, busy: list[int], index: int) -> None:
        self._stream = stream
        self._busy = busy
        self._index = index
        self._open = True

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._stream:
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            if self._open:
                self._open = False
                self._busy[self._index] -= 1


class PooledAsyncTransport(httpx.AsyncBaseTransport):
    """``shards`` independent ``httpx.AsyncHTTPTransport`` pools; each request uses the least busy.

    Args:
        limits: the limits of the whole transport, split evenly between the pools.
        shards: how many pools.
    """

    def __init__(self, *, limits: httpx.Limits, shards: int = POOL_SHARDS) -> None:
        def split(value: int | None) -> int | None:
            return None if value is None else max(1, math.ceil(value / shards))

        per_pool = httpx.Limits(
            max_connections=split(limits.max_connections),
            max_keepalive_connections=split(limits.max_keepalive_connections),
            keepalive_expiry=limits.keepalive_expiry,
        )
        # One TLS context for all pools: building one loads the CA bundle (tens of ms).
        ssl_context = httpx.create_ssl_context()
        self._pools = [
            httpx.AsyncHTTPTransport(verify=ssl_context, limits=per_pool) for _ in range(shards)
        ]
        self._busy = [0] * shards  # requests in flight per pool, until their body is closed

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        busy = self._busy
        index = busy.index(min(busy))  # ties go to the first pool: sequential use stays on one
        busy[index] += 1
        try:
            response = await self._pools[index].handle_async_request(request)
        except BaseException:
            busy[index] -= 1
            raise
        assert isinstance(response.stream, httpx.AsyncByteStream)
        response.stream = _Release(response.stream, busy, index)
        return response

    async def aclose(self) -> None:
        for pool in self._pools:
            await pool.aclose()


def pooled_async_transport(limits: httpx.Limits) -> PooledAsyncTransport | None:
    """The transport for convo's own async client, or None to let httpx choose (proxies set)."""
    if urllib.request.getproxies():
        return None
    return PooledAsyncTransport(limits=limits)
