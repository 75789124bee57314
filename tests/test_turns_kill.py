"""A process killed (SIGKILL) between storing the user message and storing the reply.

The child (tests/turn_child.py) sends a turn to the fake's loopback server,
scripted to stall; once the user message and the pending run are in the
database, the child is killed. Resending the same idempotency key completes
the turn: one user message, one reply. A killed process cannot record its
own end, so its run stays ``pending`` (nothing else marks it: a run that is
pending long after its ``created_at`` is how a crash shows in the records).
On SQLite (a file) and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from convo import AsyncChat, AsyncOpenAIClient, AsyncStore, Chat, OpenAIClient, Store
from convo.testing import FakeBackend

CHILD = Path(__file__).with_name("turn_child.py")


def _state(engine: sa.Engine, cid: str) -> tuple[int, int]:
    """(user messages, pending runs) of the conversation."""
    query = sa.text(
        "SELECT (SELECT count(*) FROM messages WHERE conversation_id = :c AND role = 'user'),"
        " (SELECT count(*) FROM runs WHERE conversation_id = :c AND status = 'pending')"
    )
    with engine.connect() as conn:
        users, pending = conn.execute(query, {"c": cid}).one()
    return int(users), int(pending)


async def _send_async(db_url: sa.URL, base_url: str, cid: str) -> Any:
    store = AsyncStore(db_url)
    try:
        async with AsyncOpenAIClient(api_key="sk-test", base_url=base_url) as client:
            return await AsyncChat(store, client, model="gpt-4o-mini").send(
                cid, "Are you there?", idempotency_key="turn-1", owner="alice"
            )
    finally:
        await store.close()


def test_a_killed_turn_is_completed_by_the_same_key(db_url: sa.URL) -> None:
    store = Store(db_url)
    cid = store.create_conversation(owner="alice").id
    engine = sa.create_engine(db_url, poolclass=sa.NullPool)
    fake = FakeBackend()
    fake.timeout(seconds=30)  # the first request hangs: the child is killed while it waits
    with fake.serve() as server:
        url = db_url.render_as_string(hide_password=False)
        child = subprocess.Popen(
            [sys.executable, str(CHILD), url, server.base_url, cid, "turn-1", "Are you there?"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=os.environ.copy(),
        )
        try:
            deadline = time.monotonic() + 120  # a bound on a hung child, not a timing check
            while _state(engine, cid) != (1, 1) or not fake.requests:
                assert child.poll() is None, child.communicate()[1].decode()[-2000:]
                assert time.monotonic() < deadline, "the child never reached the request"
                time.sleep(0.02)
            child.send_signal(signal.SIGKILL)
            child.wait()
        finally:
            child.kill()
            child.communicate()
        assert child.returncode == -signal.SIGKILL

        [killed] = store.list_runs(cid).items
        assert killed.status == "pending" and killed.finished_at is None
        assert killed.idempotency_key == "turn-1" and killed.owner == "alice"
        assert killed.request.encode() == fake.requests[0].body
        assert [m.role for m in store.messages(cid)] == ["user"]

        with OpenAIClient(api_key="sk-test", base_url=server.base_url) as client:
            chat = Chat(store, client, model="gpt-4o-mini")
            result = chat.send(cid, "Are you there?", idempotency_key="turn-1", owner="alice")
        assert result.text == "You said: Are you there?" and not result.from_store
        messages = store.messages(cid)
        assert [(m.seq, m.role) for m in messages] == [(1, "user"), (2, "assistant")]
        assert store.get_conversation(cid).last_seq == 2
        assert [(r.id, r.status) for r in reversed(store.list_runs(cid).items)] == [
            (killed.id, "pending"), (result.run.id, "ok"),
        ]
        assert result.run.request.encode() == fake.requests[1].body == fake.requests[0].body

        # Async, the same key again: the stored turn, no model call.
        again = asyncio.run(_send_async(db_url, server.base_url, cid))
        assert again.from_store and again.reply == result.reply
        assert len(fake.requests) == 2
    engine.dispose()
    store.close()
