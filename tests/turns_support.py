"""Shared drivers for the turn tests: one test body drives ``Chat`` or ``AsyncChat``.

Not a test module (no tests). The ``env`` fixture is parametrized over
SQLite / PostgreSQL x sync / async; each test module imports it. ``env.chat()``
gives a :class:`ChatHandle` whose methods are all awaited: the sync ``Chat``
is called directly (not in a thread), so the sync path is exactly what users
run. HTTP goes to a :class:`~convo.testing.FakeBackend` through its httpx
transport, or (tests parametrized with ``path="server"``) its loopback server.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import StoreHandle, _clean_db

from convo import (
    AsyncChat,
    AsyncOpenAIClient,
    AsyncStore,
    AsyncTurnStream,
    Chat,
    OpenAIClient,
    Store,
    TurnStream,
)
from convo.testing import FakeBackend, FakeServer

MODEL = "gpt-4o-mini"
COMBOS = [(b, k) for b in ("sqlite", "postgresql") for k in ("sync", "async")]


async def _maybe(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


class _Tracked(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A response body that records whether it was closed."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.closed = False

    def __iter__(self) -> Iterator[bytes]:
        yield from self.inner

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for part in self.inner:
            yield part

    def close(self) -> None:
        self.closed = True
        self.inner.close()

    async def aclose(self) -> None:
        self.closed = True
        await self.inner.aclose()


class Tap(httpx.BaseTransport, httpx.AsyncBaseTransport):
    """Wraps the fake's transport: runs a hook before each request and tracks bodies.

    ``before`` (sync clients) / ``abefore`` (async clients) can hold requests back,
    e.g. on a barrier so that two sends are in flight at once.
    """

    def __init__(
        self,
        inner: httpx.MockTransport,
        *,
        before: Callable[[], None] | None = None,
        abefore: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.inner = inner
        self.before = before
        self.abefore = abefore
        self.bodies: list[_Tracked] = []

    def _track(self, response: httpx.Response) -> httpx.Response:
        body = _Tracked(response.stream)
        response.stream = body
        self.bodies.append(body)
        return response

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if self.before is not None:
            self.before()
        return self._track(self.inner.handle_request(request))

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.abefore is not None:
            await self.abefore()
        return self._track(await self.inner.handle_async_request(request))

    @property
    def all_closed(self) -> bool:
        return all(b.closed for b in self.bodies)


class StreamHandle:
    """A :class:`TurnStream` or :class:`AsyncTurnStream`, driven with ``await``."""

    def __init__(self, raw: TurnStream | AsyncTurnStream) -> None:
        self.raw = raw

    async def next(self) -> Any:
        """The next event, or None at the end."""
        if isinstance(self.raw, AsyncTurnStream):
            try:
                return await self.raw.__anext__()
            except StopAsyncIteration:
                return None
        try:
            return next(self.raw)
        except StopIteration:
            return None

    async def events(self, limit: int | None = None) -> list[Any]:
        out: list[Any] = []
        while limit is None or len(out) < limit:
            event = await self.next()
            if event is None:
                break
            out.append(event)
        return out

    async def result(self) -> Any:
        return await _maybe(self.raw.result())

    async def close(self) -> None:
        if isinstance(self.raw, AsyncTurnStream):
            await self.raw.aclose()
        else:
            self.raw.close()


class ChatHandle:
    """One awaited API over ``Chat`` and ``AsyncChat``."""

    def __init__(self, raw: Chat | AsyncChat) -> None:
        self.raw = raw

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.raw, name)
        if not callable(attr):
            return attr

        async def call(*args: Any, **kwargs: Any) -> Any:
            return await _maybe(attr(*args, **kwargs))

        return call

    def stream(self, *args: Any, **kwargs: Any) -> StreamHandle:
        return StreamHandle(self.raw.stream(*args, **kwargs))


class Env:
    """A store, a fake backend and the clients made for one test."""

    def __init__(self, store: StoreHandle, fake: FakeBackend, base_url: str, path: str) -> None:
        self.store = store
        self.fake = fake
        self.base_url = base_url
        self.path = path
        self.backend = store.backend
        self.is_async = store.is_async
        self.sleeps: list[float] = []
        self._clients: list[Any] = []

    def __repr__(self) -> str:
        return f"<Env {self.backend} {'async' if self.is_async else 'sync'} {self.path}>"

    def client(self, **options: Any) -> OpenAIClient | AsyncOpenAIClient:
        """A client to the fake; retries do not sleep (their delays are kept in ``sleeps``)."""
        options.setdefault("api_key", "sk-test-turns-0123456789")
        options.setdefault("max_retries", 2)
        if self.path == "transport":
            options.setdefault("transport", self.fake.transport())
        client: OpenAIClient | AsyncOpenAIClient
        if self.is_async:
            async def asleep(seconds: float) -> None:
                self.sleeps.append(seconds)

            client = AsyncOpenAIClient(base_url=self.base_url, sleep=asleep, **options)
        else:
            client = OpenAIClient(base_url=self.base_url, sleep=self.sleeps.append, **options)
        self._clients.append(client)
        return client

    def chat(self, client_options: dict[str, Any] | None = None, **kw: Any) -> ChatHandle:
        """A Chat (sync env) or AsyncChat (async env) on this env's store and fake."""
        kw.setdefault("model", MODEL)
        client = self.client(**(client_options or {}))
        if isinstance(client, AsyncOpenAIClient):
            assert isinstance(self.store.raw, AsyncStore)
            return ChatHandle(AsyncChat(self.store.raw, client, **kw))
        assert isinstance(self.store.raw, Store)
        return ChatHandle(Chat(self.store.raw, client, **kw))

    # --- assertions ---------------------------------------------------------------------

    async def thread(self, conversation_id: str) -> list[Any]:
        """The conversation's messages; checks that seqs are 1..n and match ``last_seq``."""
        messages = await self.store.messages(conversation_id)
        conversation = await self.store.get_conversation(conversation_id)
        assert [m.seq for m in messages] == list(range(1, len(messages) + 1))
        assert conversation.last_seq == len(messages)
        return list(messages)

    async def roles(self, conversation_id: str) -> list[str]:
        return [m.role for m in await self.thread(conversation_id)]

    async def runs(self, conversation_id: str) -> list[Any]:
        """Every run of the conversation, oldest first (read through keyset pages)."""
        out: list[Any] = []
        cursor = None
        while True:
            page = await self.store.list_runs(conversation_id, limit=50, cursor=cursor)
            out.extend(page.items)
            cursor = page.next_cursor
            if cursor is None:
                return out[::-1]

    def model_requests(self) -> list[Any]:
        """The requests the fake received for a model (chat or completions)."""
        return [r for r in self.fake.requests if r.method == "POST"]

    def last_body(self) -> bytes:
        return bytes(self.model_requests()[-1].body)

    async def close(self) -> None:
        for client in self._clients:
            await _maybe(client.close())
        await self.store.aclose()


@pytest.fixture
def path() -> str:
    """How HTTP reaches the fake; tests parametrize it with ``["transport", "server"]``."""
    return "transport"


@pytest.fixture(params=COMBOS, ids=lambda p: f"{p[0]}-{p[1]}")
async def env(request: pytest.FixtureRequest, tmp_path: Path, path: str) -> AsyncIterator[Env]:
    """A migrated empty store, a fake backend and chats on it, four ways (x the path)."""
    backend, kind = request.param
    url = _clean_db(request, backend, tmp_path)
    raw: Store | AsyncStore = Store(url) if kind == "sync" else AsyncStore(url)
    fake = FakeBackend(created=1700000000)
    server: FakeServer | None = None
    base_url = "http://fake/v1"
    if path == "server":
        server = fake.serve()
        base_url = server.base_url
    e = Env(StoreHandle(raw, backend, url), fake, base_url, path)
    try:
        yield e
    finally:
        await e.close()
        if server is not None:
            server.close()


__all__ = ["MODEL", "ChatHandle", "Env", "StreamHandle", "Tap", "env", "path"]


#: A minimal chat body, for tests that start runs by hand.
RUN_BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}]}


def start_run(store: Any, cid: str, **kw: Any) -> Any:
    """``store.start_run`` of a chat request with :data:`RUN_BODY`, ``kw`` overriding."""
    args: dict[str, Any] = {
        "endpoint": "chat.completions", "mode": "chat", "model": "gpt-4o-mini", "request": RUN_BODY,
    }
    args.update(kw)
    return store.start_run(cid, **args)
