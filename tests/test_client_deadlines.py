"""Deadlines against a real server that trickles: ``timeout=`` is a total, streams go idle.

The server (``convo.testing.TricklingServer``) sends headers or a body one
byte at a time, or a stream of ``: ping`` comments: bytes keep coming, so no
per-operation socket timeout ever fires, and before the deadlines a call with
``timeout=2.0`` ran past 20 s. Each test asserts the *type* of what is raised;
the only clock in the assertions is a generous guard (``GUARD`` seconds): a
call still running by then is reported as a hang (the server is closed to
free it) instead of blocking the suite.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from convo import APITimeoutError, AsyncOpenAIClient, ConfigurationError, OpenAIClient
from convo._client.config import check_timeout
from convo._client.deadline import enforced
from convo.testing import TricklingServer

GUARD = 15.0  # seconds: a hang guard, not a speed assertion
HI = [{"role": "user", "content": "Hi"}]


@pytest.fixture(params=["sync", "async"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def outcome(
    kind: str, server: TricklingServer, method: str, client: dict[str, Any], call: dict[str, Any]
) -> BaseException | None:
    """Run one call against ``server``; what it raised (None if nothing). Fails on a hang."""
    settings = {"base_url": server.base_url, "api_key": "sk-test", "max_retries": 0, **client}
    if kind == "sync":
        box: list[BaseException | None] = []

        def run() -> None:
            try:
                with OpenAIClient(**settings) as c:
                    result = getattr(c, method)(model="m", messages=HI, **call)
                    if method == "chat_stream":
                        with result:
                            for _ in result:
                                pass
            except BaseException as exc:  # noqa: BLE001 - handed to the test
                box.append(exc)
            else:
                box.append(None)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        thread.join(GUARD)
        if thread.is_alive():
            server.close()  # frees the client
            thread.join(GUARD)
            pytest.fail(f"the sync call was still running after {GUARD} s: no deadline")
        return box[0]

    async def run_async() -> None:
        async with AsyncOpenAIClient(**settings) as c:
            result = await getattr(c, method)(model="m", messages=HI, **call)
            if method == "chat_stream":
                async with result:
                    async for _ in result:
                        pass

    async def guarded() -> BaseException | None:
        try:
            await asyncio.wait_for(run_async(), GUARD)
        except TimeoutError:
            pytest.fail(f"the async call was still running after {GUARD} s: no deadline")
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            return exc
        return None

    return asyncio.run(guarded())


@pytest.mark.parametrize(
    ("server", "method", "client", "call", "expected"),
    [
        pytest.param(
            TricklingServer.headers, "chat", {"timeout": 0.5}, {}, "deadline of an attempt",
            id="headers one byte at a time",
        ),
        pytest.param(
            TricklingServer.body, "chat", {"timeout": 0.5}, {}, "deadline of an attempt",
            id="body one byte at a time",
        ),
        pytest.param(
            TricklingServer.body, "chat", {"timeout": 60.0}, {"timeout": 0.5},
            "deadline of an attempt", id="per-call timeout",
        ),
        pytest.param(
            TricklingServer.body, "chat", {"timeout": httpx.Timeout(0.5, connect=0.25)}, {},
            "deadline of an attempt", id="httpx.Timeout",
        ),
        pytest.param(
            TricklingServer.headers, "chat_stream", {"timeout": 0.5}, {}, "answer headers",
            id="stream headers one byte at a time",
        ),
        pytest.param(
            TricklingServer.pings, "chat_stream", {"timeout": 0.5}, {}, "no data event",
            id="pings only, idle from the timeout",
        ),
        pytest.param(
            TricklingServer.pings, "chat_stream", {"timeout": 60.0, "stream_idle_timeout": 0.5},
            {}, "no data event", id="pings only, stream_idle_timeout",
        ),
        pytest.param(
            TricklingServer.pings, "chat_stream", {"timeout": 60.0},
            {"stream_idle_timeout": 0.5}, "no data event", id="per-call stream_idle_timeout",
        ),
        pytest.param(
            TricklingServer.stream, "chat_stream", {"timeout": 60.0, "stream_timeout": 0.5}, {},
            "stream did not end", id="data that never ends, stream_timeout",
        ),
        pytest.param(
            TricklingServer.stream, "chat_stream", {"timeout": 60.0}, {"stream_timeout": 0.5},
            "stream did not end", id="per-call stream_timeout",
        ),
    ],
)
def test_a_trickling_server_cannot_outlast_the_deadline(
    kind: str,
    server: Callable[..., TricklingServer],
    method: str,
    client: dict[str, Any],
    call: dict[str, Any],
    expected: str,
) -> None:
    with server(interval=0.1) as trickle:
        started = time.monotonic()
        exc = outcome(kind, trickle, method, client, call)
        assert time.monotonic() - started < GUARD
    assert isinstance(exc, APITimeoutError), repr(exc)
    assert expected in str(exc)


def test_a_deadline_timeout_is_retried(kind: str) -> None:
    with TricklingServer.body(interval=0.2) as trickle:
        exc = outcome(kind, trickle, "chat", {"timeout": 0.5, "max_retries": 1}, {})
        assert isinstance(exc, APITimeoutError)
        assert trickle.requests == 2  # like any timeout: retried, then raised


def test_a_passed_sync_client_is_bounded_between_chunks() -> None:
    # convo cannot reach the sockets of an httpx.Client it did not build; it still
    # checks the deadline each time a piece of the body arrives.
    with TricklingServer.body(interval=0.2) as trickle, httpx.Client() as http:
        exc = outcome("sync", trickle, "chat", {"timeout": 1.0, "http_client": http}, {})
    assert isinstance(exc, APITimeoutError) and "deadline of an attempt" in str(exc)


def test_a_passed_sync_client_is_bounded_between_pings() -> None:
    # Keep-alive pings arrive before any socket deadline of convo's own could fire; with a
    # client convo did not build there is none: only the check after each piece of the
    # stream sees that no data event came in time.
    with TricklingServer.pings(interval=0.1) as trickle, httpx.Client() as http:
        exc = outcome("sync", trickle, "chat_stream",
                      {"timeout": 60.0, "stream_idle_timeout": 0.5, "http_client": http}, {})
        url = f"{trickle.base_url}/chat/completions"
    assert isinstance(exc, APITimeoutError), repr(exc)
    assert str(exc).startswith(f"timeout on POST {url}: ") and "no data event" in str(exc)


def test_the_sync_client_bounds_its_own_sockets() -> None:
    # The socket-level deadline rests on httpx/httpcore internals: an upgrade that
    # moves them must fail here, not silently lose the deadline on trickled headers.
    with OpenAIClient(base_url="http://x/v1") as client:
        assert enforced(client._http._transport)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("timeout", "total", "read"),
    [
        (2.0, 2.0, 2.0),
        (httpx.Timeout(60.0, connect=3.0), 60.0, 60.0),
        (httpx.Timeout(connect=5.0, read=30.0, write=60.0, pool=5.0), 60.0, 30.0),
        (httpx.Timeout(5.0, read=None), None, None),
        (None, None, None),
    ],
)
def test_what_a_timeout_means(timeout: Any, total: float | None, read: float | None) -> None:
    timeouts = check_timeout(timeout)
    assert (timeouts.total, timeouts.read) == (total, read)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"timeout": 0},
        {"timeout": -1.0},
        {"timeout": float("nan")},
        {"timeout": float("inf")},
        {"timeout": "10"},
        {"timeout": True},
        {"timeout": httpx.Timeout(5.0, connect=-1.0)},
        {"stream_idle_timeout": 0},
        {"stream_timeout": -5},
        {"stream_timeout": "1"},
    ],
)
def test_bad_deadlines_are_configuration_errors(kind: str, kwargs: dict[str, Any]) -> None:
    cls = OpenAIClient if kind == "sync" else AsyncOpenAIClient
    with pytest.raises(ConfigurationError):
        cls(base_url="http://x/v1", **kwargs)


def test_concurrent_attempts_each_keep_their_own_deadline() -> None:
    # One timer serves every waiting task of an async client: each still fails at its
    # own deadline, and a fast request alongside is not disturbed.
    from convo.testing import FakeBackend

    async def main() -> list[BaseException | str]:
        with TricklingServer.body(interval=0.1) as trickle, FakeBackend().serve() as fast:
            async with AsyncOpenAIClient(
                base_url=trickle.base_url, api_key="k", max_retries=0
            ) as slow, AsyncOpenAIClient(base_url=fast.base_url, api_key="k") as quick:
                calls = [slow.chat(model="m", messages=HI, timeout=t) for t in (0.9, 0.3, 0.6)]
                calls.append(quick.chat(model="gpt-4o-mini", messages=HI))
                done = await asyncio.wait_for(
                    asyncio.gather(*calls, return_exceptions=True), GUARD
                )
        return [r if isinstance(r, BaseException) else r.text for r in done]

    *timeouts, reply = asyncio.run(main())
    assert all(isinstance(t, APITimeoutError) for t in timeouts), timeouts
    assert [str(t).split("within the ")[1][:6] for t in timeouts] == ["0.9 s ", "0.3 s ", "0.6 s "]
    assert reply == "You said: Hi"


def test_a_cancellation_from_outside_stays_a_cancellation() -> None:
    async def main() -> None:
        with TricklingServer.pings(interval=0.05) as trickle:
            async with AsyncOpenAIClient(
                base_url=trickle.base_url, api_key="k", stream_idle_timeout=30.0
            ) as client:

                async def consume() -> None:
                    async with await client.chat_stream(model="m", messages=HI) as stream:
                        async for _ in stream:
                            pass

                with pytest.raises(TimeoutError):  # wait_for's, not convo's
                    await asyncio.wait_for(consume(), 0.5)
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(client.chat(model="m", messages=HI), 0.5)

    asyncio.run(main())
