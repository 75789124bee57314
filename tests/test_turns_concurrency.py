"""Concurrent turns: many conversations at once, many turns on one conversation, one key twice.

AsyncChat over AsyncStore with asyncio.gather, against the fake's loopback
server, on PostgreSQL and SQLite; the same-key race four ways (threads for
the sync Chat, tasks for AsyncChat).
"""

# ruff: noqa: F811 - the env/path fixtures are imported, then named as test arguments

from __future__ import annotations

import asyncio
import json
import threading
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
import sqlalchemy as sa
from turns_support import MODEL, Env, Tap, env, path  # noqa: F401 - fixtures

from convo import AsyncChat, AsyncOpenAIClient, AsyncStore
from convo.testing import FakeBackend


class Served:
    def __init__(self, store: AsyncStore, fake: FakeBackend, chat: AsyncChat) -> None:
        self.store, self.fake, self.chat = store, fake, chat


@pytest.fixture
async def served(db_url: sa.URL) -> AsyncIterator[Served]:
    """AsyncChat on an AsyncStore (pool sized for the crowd) and the fake on loopback."""
    store = AsyncStore(db_url, pool_size=20) if db_url.get_backend_name() == "postgresql" else (
        AsyncStore(db_url)
    )
    fake = FakeBackend()
    with fake.serve() as server:
        async with AsyncOpenAIClient(api_key="sk-test", base_url=server.base_url) as client:
            yield Served(store, fake, AsyncChat(store, client, model=MODEL))
    await store.close()


async def check_conversation(store: AsyncStore, cid: str, results: list[Any]) -> None:
    """Seqs 1..n, each turn's user message and reply stored once, one ok run per request."""
    messages = await store.messages(cid)
    assert [m.seq for m in messages] == list(range(1, len(messages) + 1))
    assert (await store.get_conversation(cid)).last_seq == len(messages)
    assert len(messages) == 2 * len(results)
    by_id = {m.id: m for m in messages}
    for result in results:
        assert by_id[result.user.id] == result.user and by_id[result.reply.id] == result.reply
        assert result.run.status == "ok" and result.run.reply_message_id == result.reply.id
        assert result.user.seq in result.run.kept_seqs
    runs = (await store.list_runs(cid, limit=1000)).items
    assert sorted(r.id for r in runs) == sorted(r.run.id for r in results)
    assert all(r.status == "ok" for r in runs)


async def test_50_turns_on_50_conversations_at_once(served: Served) -> None:
    convs = [await served.store.create_conversation() for _ in range(50)]
    results = await asyncio.gather(*(
        served.chat.send(c.id, f"hello {i}", idempotency_key=f"k{i}") for i, c in enumerate(convs)
    ))
    assert len(served.fake.requests) == 50
    for i, (conv, result) in enumerate(zip(convs, results, strict=True)):
        assert result.conversation_id == conv.id and result.text == f"You said: hello {i}"
        await check_conversation(served.store, conv.id, [result])
    bodies = Counter(r.body for r in served.fake.requests)
    assert bodies == Counter(r.run.request.encode() for r in results)


async def test_20_turns_on_one_conversation_at_once(served: Served) -> None:
    conv = await served.store.create_conversation()
    results = await asyncio.gather(*(
        served.chat.send(conv.id, f"turn {i}") for i in range(20)
    ))
    assert len(served.fake.requests) == 20
    await check_conversation(served.store, conv.id, list(results))
    users = sorted(r.user.content for r in results)
    assert users == sorted(f"turn {i}" for i in range(20))
    bodies = Counter(r.body for r in served.fake.requests)
    assert bodies == Counter(r.run.request.encode() for r in results)
    # Each request carried its own user message (and what others had stored by then:
    # its run's kept_seqs say exactly which).
    for result in results:
        sent = json.loads(result.run.request)["messages"]
        assert result.user.content in [m["content"] for m in sent if m["role"] == "user"]
        assert len(sent) == len(result.run.kept_seqs)


async def test_two_sends_of_one_key_at_once_store_one_reply(env: Env) -> None:
    """Both sends are held until both requests are in flight: two model calls, one reply."""
    if env.is_async:
        barrier = asyncio.Barrier(2)
        tap = Tap(env.fake.transport(), abefore=barrier.wait)
    else:
        sync_barrier = threading.Barrier(2, timeout=30)
        tap = Tap(env.fake.transport(), before=sync_barrier.wait)
    chat = env.chat(client_options={"transport": tap})
    conv = await env.store.create_conversation()

    if env.is_async:
        a, b = await asyncio.gather(*(
            chat.send(conv.id, "Hi", idempotency_key="same") for _ in range(2)
        ))
    else:
        send = chat.raw.send
        a, b = await asyncio.gather(*(
            asyncio.to_thread(send, conv.id, "Hi", idempotency_key="same") for _ in range(2)
        ))

    assert len(env.model_requests()) == 2
    winner, loser = (a, b) if not a.duplicate else (b, a)
    assert not winner.duplicate and loser.duplicate
    assert loser.reply == winner.reply and loser.user == winner.user
    assert loser.run.status == "cancelled" and loser.run.error_type == "DuplicateTurn"
    assert loser.run.reply_message_id == winner.reply.id
    assert winner.run.status == "ok"
    assert [m.role for m in await env.thread(conv.id)] == ["user", "assistant"]
    runs = await env.runs(conv.id)
    assert sorted(r.status for r in runs) == ["cancelled", "ok"]
    # Afterwards the key is one finished turn.
    again = await chat.send(conv.id, "Hi", idempotency_key="same")
    assert again.from_store and again.reply == winner.reply
    assert len(env.model_requests()) == 2


async def test_another_turns_reply_after_a_keyed_user_message_is_not_its_answer(env: Env) -> None:
    """Two keyed turns interleaved on one conversation: B's user message, A's user
    message, B's reply. A's send (first or retried) must call the model for its own
    reply, not take B's reply as its answer (that shortcut is for a regenerate's
    branch, where the user message is inherited)."""
    chat = env.chat()
    conv = await env.store.create_conversation()
    await env.store.append(conv.id, {"role": "user", "content": "from B"}, idempotency_key="kB")
    await env.store.append(conv.id, {"role": "user", "content": "from A"}, idempotency_key="kA")
    b = await chat.send(conv.id, "from B", idempotency_key="kB")  # B's retry: its reply at seq 3
    assert b.reply.seq == 3 and not b.from_store
    a = await chat.send(conv.id, "from A", idempotency_key="kA")
    assert not a.from_store and a.run is not None and a.run.status == "ok"
    assert a.reply.id != b.reply.id and a.reply.idempotency_key == "kA#r0"
    assert len(env.model_requests()) == 2
    assert [m.idempotency_key for m in await env.thread(conv.id)] == ["kB", "kA", "kB#r0", "kA#r0"]
