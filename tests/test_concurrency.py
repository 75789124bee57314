"""Concurrent appends to one conversation: never a duplicate or missing sequence number.

8 processes (each with its own Store, as separate app servers would) and
8 threads (sharing one Store, as a threaded web server would) x 200 appends,
on SQLite and on PostgreSQL; plus 8 asyncio tasks sharing one AsyncStore.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import threading
from typing import Any

import pytest
import sqlalchemy as sa

from convo._store.async_store import AsyncStore
from convo._store.store import Store

WORKERS = 8
APPENDS = 200
TOTAL = WORKERS * APPENDS


def _append_worker(url: str, conversation_id: str, worker: int, barrier: Any, out: Any) -> None:
    try:
        with Store(url) as store:
            store.check_schema()  # connect and check before the race starts
            barrier.wait(timeout=60)
            seqs = [
                store.append(conversation_id, {"role": "user", "content": f"w{worker}-{i}"}).seq
                for i in range(APPENDS)
            ]
        out.put((worker, seqs, None))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        out.put((worker, [], repr(exc)))


def _check(url: Any, conversation_id: str, per_worker: dict[int, list[int]]) -> None:
    # Each worker's own appends are ordered, and together they are 1..TOTAL.
    for seqs in per_worker.values():
        assert len(seqs) == APPENDS and seqs == sorted(seqs)
    returned = sorted(s for seqs in per_worker.values() for s in seqs)
    assert returned == list(range(1, TOTAL + 1))
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT seq, content FROM messages WHERE conversation_id = :c ORDER BY seq"),
            {"c": conversation_id},
        ).all()
        last_seq = conn.execute(
            sa.text("SELECT last_seq FROM conversations WHERE id = :c"), {"c": conversation_id}
        ).scalar()
    engine.dispose()
    assert [r.seq for r in rows] == list(range(1, TOTAL + 1))
    assert len({r.content for r in rows}) == TOTAL  # every append stored exactly once
    assert last_seq == TOTAL


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_processes_append_without_duplicates(backend, make_db):
    url = make_db(backend)
    with Store(url) as store:
        conversation_id = store.create_conversation().id
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(WORKERS)
    out = ctx.Queue()
    text_url = url.render_as_string(hide_password=False)
    procs = [
        ctx.Process(target=_append_worker, args=(text_url, conversation_id, w, barrier, out))
        for w in range(WORKERS)
    ]
    for p in procs:
        p.start()
    results = [out.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    out.close()
    out.join_thread()
    errors = [err for _, _, err in results if err]
    assert not errors, errors
    assert all(p.exitcode == 0 for p in procs)
    _check(url, conversation_id, {w: seqs for w, seqs, _ in results})


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_threads_append_without_duplicates(backend, make_db):
    url = make_db(backend)
    with Store(url) as store:  # one store (one pool) shared by all threads
        conversation_id = store.create_conversation().id
        store.check_schema()
        barrier = threading.Barrier(WORKERS)
        per_worker: dict[int, list[int]] = {}
        errors: list[BaseException] = []

        def work(w: int) -> None:
            try:
                barrier.wait(timeout=60)
                per_worker[w] = [
                    store.append(conversation_id, {"role": "user", "content": f"t{w}-{i}"}).seq
                    for i in range(APPENDS)
                ]
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(w,)) for w in range(WORKERS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors, errors
    _check(url, conversation_id, per_worker)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_async_tasks_append_without_duplicates(backend, make_db):
    url = make_db(backend)
    async with AsyncStore(url) as store:
        conversation_id = (await store.create_conversation()).id

        async def work(w: int) -> list[int]:
            return [
                (await store.append(conversation_id, {"role": "user", "content": f"a{w}-{i}"})).seq
                for i in range(APPENDS)
            ]

        results = await asyncio.gather(*(work(w) for w in range(WORKERS)))
    _check(url, conversation_id, dict(enumerate(results)))
