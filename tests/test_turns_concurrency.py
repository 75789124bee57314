"""Concurrent turns: many conversations at once, many turns on one conversation.

AsyncChat over AsyncStore with asyncio.gather, against the fake's loopback
server, on PostgreSQL and SQLite. (The same-key race, and two keyed turns interleaved on
one conversation, are in test_turns_failures.py, with the other idempotency tests.)
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
import sqlalchemy as sa
from turns_support import MODEL

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
