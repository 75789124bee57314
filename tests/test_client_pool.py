"""The async client's pooled transport, against a real loopback server."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from test_client_helpers import closed_port

from convo import APIConnectionError, AsyncOpenAIClient, Message
from convo._client.constants import DEFAULT_CONNECTION_LIMITS, POOL_SHARDS
from convo._client.pool import PooledAsyncTransport, pooled_async_transport
from convo.testing import FakeBackend

HI = [Message.user("Hi")]


@pytest.fixture
def base_url() -> Iterator[str]:
    with FakeBackend().serve() as server:
        yield server.base_url


def pools(client: AsyncOpenAIClient) -> PooledAsyncTransport:
    transport = client._http._transport
    assert isinstance(transport, PooledAsyncTransport)
    return transport


def open_connections(transport: PooledAsyncTransport) -> list[int]:
    return [len(pool._pool.connections) for pool in transport._pools]


async def test_sequential_requests_share_one_connection(base_url: str) -> None:
    async with AsyncOpenAIClient(base_url=base_url) as client:
        for _ in range(5):
            assert (await client.chat(model="gpt-4o-mini", messages=HI)).text == "You said: Hi"
        transport = pools(client)
        assert open_connections(transport) == [1] + [0] * (POOL_SHARDS - 1)
        assert transport._busy == [0] * POOL_SHARDS


async def test_concurrent_requests_spread_over_the_pools(base_url: str) -> None:
    async with AsyncOpenAIClient(base_url=base_url) as client:
        transport = pools(client)
        # Streams hold their connection until closed: 2 per pool are in flight at once.
        streams = [
            await client.chat_stream(model="gpt-4o-mini", messages=HI)
            for _ in range(2 * POOL_SHARDS)
        ]
        assert transport._busy == [2] * POOL_SHARDS
        assert open_connections(transport) == [2] * POOL_SHARDS
        for stream in streams:
            assert (await stream.final()).text == "You said: Hi"
        assert transport._busy == [0] * POOL_SHARDS
        early = await client.chat_stream(model="gpt-4o-mini", messages=HI)
        assert sum(transport._busy) == 1
        await early.close()
        assert transport._busy == [0] * POOL_SHARDS
    assert all(pool._pool.connections == [] for pool in transport._pools)  # closed with the client


async def test_failed_requests_release_their_pool() -> None:
    async with AsyncOpenAIClient(
        base_url=f"http://127.0.0.1:{closed_port()}/v1", max_retries=0
    ) as client:
        with pytest.raises(APIConnectionError):
            await client.chat(model="m", messages=HI)
        assert pools(client)._busy == [0] * POOL_SHARDS


def test_proxy_environment_keeps_httpx_default_transport(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    assert pooled_async_transport(DEFAULT_CONNECTION_LIMITS) is None
    client = AsyncOpenAIClient(base_url="https://api.example.com/v1")
    assert not isinstance(client._http._transport, PooledAsyncTransport)
    # httpx mounted the proxy for https:// URLs, which a custom transport would have disabled.
    assert any(isinstance(t, httpx.AsyncHTTPTransport) for t in client._http._mounts.values() if t)


def test_limits_are_split_between_pools() -> None:
    transport = PooledAsyncTransport(
        limits=httpx.Limits(max_connections=100, max_keepalive_connections=20), shards=4
    )
    pool = transport._pools[0]._pool
    assert (pool._max_connections, pool._max_keepalive_connections) == (25, 5)
    # One TLS context shared by the pools (each one costs a CA-bundle load).
    assert len({id(p._pool._ssl_context) for p in transport._pools}) == 1
