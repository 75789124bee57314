"""Store plumbing: URLs and engines, SQLite locking, query plans, schema checks."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from convo._exceptions import ConfigurationError, NotMigratedError
from convo._store.async_store import AsyncStore
from convo._store.engine import create_engine, resolve_url
from convo._store.store import Store

# --- URLs ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url, sync_driver, async_driver",
    [
        ("sqlite:///x.db", "sqlite+pysqlite", "sqlite+aiosqlite"),
        ("sqlite+aiosqlite:///x.db", "sqlite+pysqlite", "sqlite+aiosqlite"),
        ("sqlite+pysqlite:///x.db", "sqlite+pysqlite", "sqlite+aiosqlite"),
        ("postgresql://u@h/db", "postgresql+psycopg", "postgresql+psycopg"),
        ("postgres://u@h/db", "postgresql+psycopg", "postgresql+psycopg"),
        ("postgresql+psycopg://u@h/db", "postgresql+psycopg", "postgresql+psycopg"),
    ],
)
def test_url_drivers(url, sync_driver, async_driver):
    assert resolve_url(url).drivername == sync_driver
    assert resolve_url(url, asynchronous=True).drivername == async_driver
    assert resolve_url(url).database == sa.make_url(url).database


@pytest.mark.parametrize(
    "url", ["mysql://u:hunter2@h/db", "postgresql+asyncpg://u:hunter2@h/db", "not a url", "", "://"]
)
def test_bad_urls_are_configuration_errors(url, monkeypatch):
    monkeypatch.setenv("CONVO_DATABASE_URL", url)  # "" falls back to the default: fine
    if url == "":
        assert resolve_url(url).drivername == "sqlite+pysqlite"
        return
    for make in (Store, AsyncStore):
        with pytest.raises(ConfigurationError) as info:
            make(url)
        assert "hunter2" not in str(info.value)


@pytest.mark.parametrize(
    "url",
    ["sqlite:///a\x00b.db", "sqlite:///\ud800.db", "postgresql://u:hunter2@h/d\x00b",
     "postgresql://u:hunter2\udc80@h/db"],
)
def test_urls_no_driver_can_take_are_configuration_errors(url, tmp_path):
    # a NUL or a lone surrogate: refused where the URL is parsed, for the primary
    # and for a read replica alike, without the password in the message
    for make in (Store, AsyncStore):
        with pytest.raises(ConfigurationError) as info:
            make(url)
        assert "hunter2" not in str(info.value)
    store = Store(f"sqlite:///{tmp_path}/p.db", read_url=url)
    try:
        store.migrate()
        with pytest.raises(ConfigurationError) as info:
            store.search("x")
        assert "hunter2" not in str(info.value)
    finally:
        store.close()


def test_default_url_comes_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("CONVO_DATABASE_URL", f"sqlite:///{tmp_path}/env.db")
    assert resolve_url().database == f"{tmp_path}/env.db"
    monkeypatch.delenv("CONVO_DATABASE_URL")
    assert resolve_url().database == "convo.db"


def test_repr_hides_password():
    store = Store("postgresql://user:s3cret@localhost/db")  # no connection is made
    try:
        assert "s3cret" not in repr(store) and "***" in repr(store)
    finally:
        store.close()


async def test_engines_of_the_wrong_kind_are_refused(tmp_path):
    sync_engine = sa.create_engine(f"sqlite:///{tmp_path}/a.db")
    async_engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path}/a.db")
    try:
        with pytest.raises(ConfigurationError):
            Store(async_engine)  # type: ignore[arg-type]
        with pytest.raises(ConfigurationError):
            AsyncStore(sync_engine)  # type: ignore[arg-type]
    finally:
        sync_engine.dispose()
        await async_engine.dispose()


def test_store_on_a_callers_engine(db_url):
    engine = sa.create_engine(db_url)
    with Store(engine) as store:
        store.create_conversation()
        assert store.engine is engine
    with engine.connect() as conn:  # closing the store left the caller's engine usable
        assert conn.execute(sa.text("SELECT count(*) FROM conversations")).scalar() == 1
    engine.dispose()


# --- SQLite connection setup and locking -------------------------------------------------------


def test_sqlite_pragmas(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path}/p.db")
    with engine.connect() as conn:
        pragmas = {
            name: conn.exec_driver_sql(f"PRAGMA {name}").scalar()
            for name in ("journal_mode", "foreign_keys", "busy_timeout", "synchronous")
        }
    engine.dispose()
    assert pragmas == {"journal_mode": "wal", "foreign_keys": 1, "busy_timeout": 30000, "synchronous": 1}


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_sqlite_writes_begin_immediate_and_reads_take_no_lock(mode, make_db):
    url = make_db("sqlite")
    raw: Any = Store(url) if mode == "sync" else AsyncStore(url)
    engine = raw.engine if mode == "sync" else raw.engine.sync_engine
    seen: list[str] = []
    sa.event.listen(engine, "before_cursor_execute", lambda c, cur, stmt, *a: seen.append(stmt))

    async def call(name: str, *args: Any, **kw: Any) -> Any:
        result = getattr(raw, name)(*args, **kw)
        return await result if mode == "async" else result

    try:
        conv = await call("create_conversation")
        seen.clear()
        await call("append", conv.id, {"role": "user", "content": "x"})
        assert seen[0] == "BEGIN IMMEDIATE"
        seen.clear()
        await call("messages", conv.id)
        assert seen and not any(s.startswith("BEGIN") for s in seen)  # reads take no lock
        seen.clear()  # the engine's other users keep real transactions
        if mode == "sync":
            with raw.engine.connect() as conn:
                conn.exec_driver_sql("SELECT 1")
        else:
            async with raw.engine.connect() as aconn:
                await aconn.exec_driver_sql("SELECT 1")
        assert seen[0] == "BEGIN"
    finally:
        await raw.close() if mode == "async" else raw.close()


def test_sqlite_reads_are_not_blocked_by_a_writer(make_db):
    url = make_db("sqlite")
    with Store(url) as store:
        conv = store.create_conversation()
        store.append(conv.id, {"role": "user", "content": "before"})
        blocker = sqlite3.connect(url.database, isolation_level=None)
        try:
            blocker.execute("BEGIN IMMEDIATE")  # another process holds the write lock
            blocker.execute("UPDATE conversations SET title = 'locked'")
            start = time.perf_counter()
            assert [m.text for m in store.messages(conv.id)] == ["before"]
            assert store.get_conversation(conv.id).title is None  # snapshot, no dirty read
            assert time.perf_counter() - start < 5  # never waited for busy_timeout
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()


def test_sqlite_writers_wait_for_the_lock_instead_of_failing(make_db):
    url = make_db("sqlite")
    with Store(url) as store:
        conv = store.create_conversation()
        blocker = sqlite3.connect(url.database, isolation_level=None, check_same_thread=False)
        blocker.execute("BEGIN IMMEDIATE")
        release = threading.Timer(0.3, lambda: blocker.execute("COMMIT"))
        release.start()
        try:
            start = time.perf_counter()
            stored = store.append(conv.id, {"role": "user", "content": "waited"})
            assert time.perf_counter() - start >= 0.25
            assert stored.seq == 1
        finally:
            release.join()
            blocker.close()


# --- query plans: the hot paths use their indexes ----------------------------------------------


def test_hot_reads_use_indexes(db_url):
    """EXPLAIN the very statements tail() and pinned() run: index range scans, no sort."""
    with Store(db_url) as store:
        conv = store.create_conversation()
        store.append_many(conv.id, [{"role": "user", "content": str(i)} for i in range(2000)])
        sqlite = store.engine.dialect.name == "sqlite"
        if not sqlite:
            # The shared test database keeps the planner statistics of earlier tests (and
            # autovacuum refreshes them at random moments): with stale statistics that say this
            # conversation has one row, a bitmap scan plus a sort looks as cheap as the index
            # walk. Fresh statistics for a thread of 2,000 rows make the choice the real one.
            with store.engine.begin() as conn:
                conn.exec_driver_sql("ANALYZE messages")
                conn.exec_driver_sql("ANALYZE message_tokens")
        captured: list[tuple[str, Any]] = []

        def record(conn: Any, cursor: Any, statement: str, parameters: Any, *a: Any) -> None:
            if "FROM messages" in statement:
                captured.append((statement, parameters))

        sa.event.listen(store.engine, "before_cursor_execute", record)
        store.tail(conv.id, encoding="e", limit=5)
        store.pinned(conv.id, encoding="e")
        sa.event.remove(store.engine, "before_cursor_execute", record)
        assert len(captured) == 2
        # SQLite names the index behind UNIQUE(conversation_id, seq) itself.
        unique_index = "uq_messages_conversation_id_seq"
        if sqlite:
            with store.engine.connect() as conn:
                indexes = conn.exec_driver_sql("PRAGMA index_list(messages)").all()
                unique_index = next(
                    name for _, name, unique, *_ in indexes
                    if unique and [r[2] for r in conn.exec_driver_sql(f"PRAGMA index_info({name})")]
                    == ["conversation_id", "seq"]
                )
        for (statement, parameters), index in zip(
            captured, [unique_index, "ix_messages_pinned"], strict=True
        ):
            with store.engine.connect() as conn:
                if sqlite:
                    rows = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters)
                    plan = "\n".join(str(r[-1]) for r in rows)
                else:
                    conn.exec_driver_sql("SET LOCAL enable_seqscan = off")  # small table
                    conn.exec_driver_sql("SET LOCAL enable_bitmapscan = off")
                    rows = conn.exec_driver_sql("EXPLAIN " + statement, parameters)
                    plan = "\n".join(str(r[0]) for r in rows)
                conn.rollback()
            assert index in plan, plan
            assert "TEMP B-TREE" not in plan and "Sort" not in plan, plan


# --- schema checks --------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_not_migrated_and_behind(backend, mode, make_db):
    url = make_db(backend, migrated=False)
    raw: Any = Store(url) if mode == "sync" else AsyncStore(url)

    async def call(name: str, *args: Any, on: Any = None, **kw: Any) -> Any:
        result = getattr(on or raw, name)(*args, **kw)
        return await result if mode == "async" else result

    try:
        assert await call("current_revision") is None
        for name, args, kw in [
            ("create_conversation", (), {}),
            ("list_conversations", (), {}),
            ("messages", ("x",), {}),
            ("append", ("x", {"role": "user", "content": "hi"}), {}),
        ]:
            with pytest.raises(NotMigratedError, match="convo db upgrade"):
                await call(name, *args, **kw)
        await call("migrate")
        assert await call("is_migrated")
        conv = await call("create_conversation")
        # A database behind (or ahead of) this convo's revision is refused too.
        engine = sa.create_engine(url, poolclass=sa.NullPool)
        with engine.begin() as conn:
            conn.exec_driver_sql("UPDATE alembic_version SET version_num = '0000_older'")
        engine.dispose()
        fresh: Any = Store(url) if mode == "sync" else AsyncStore(url)
        try:
            with pytest.raises(NotMigratedError, match="0000_older"):
                await call("get_conversation", conv.id, on=fresh)
        finally:
            await call("close", on=fresh)
    finally:
        await call("close")


def test_sqlite_file_is_created_where_the_url_says(tmp_path: Path):
    path = tmp_path / "sub.db"
    with Store(f"sqlite:///{path}") as store:
        store.migrate()
        assert store.is_migrated()
    assert path.exists()


# --- the pure core: recovery paths no live race reaches --------------------------------------------


def _row(**values: Any) -> Any:
    from convo._store.rows import MESSAGE_COLUMNS

    defaults = dict.fromkeys(MESSAGE_COLUMNS)
    defaults.update(pinned=False, metadata=None, created_at=None)
    defaults.update(values)
    return tuple(defaults[c] for c in MESSAGE_COLUMNS)


def test_core_append_recovers_from_a_duplicate_key_insert():
    """If the insert hits the unique key anyway, the plan rolls back and returns the stored row."""
    from sqlalchemy.exc import IntegrityError

    from convo._store import core
    plan = core.append("c" * 32, {"role": "user", "content": "hi"}, idempotency_key="k",
                       pinned=None, reply=None, owner=None, dialect="sqlite")
    assert "UPDATE conversations" in str(next(plan).stmt)
    assert "idempotency_key" in str(plan.send(7).stmt)  # the key check ...
    insert = plan.send(None).stmt  # ... found nothing: insert
    assert isinstance(insert, sa.Insert) and insert.table.name == "messages"
    assert plan.throw(IntegrityError("INSERT", {}, Exception("duplicate key"))) is core.ROLLBACK
    assert "idempotency_key" in str(plan.send(None).stmt)
    winner = _row(id=3, conversation_id="c" * 32, seq=6, role="user", content="first", idempotency_key="k")
    with pytest.raises(StopIteration) as done:
        plan.send(winner)
    assert (done.value.value.id, done.value.value.text) == (3, "first")

    plain = core.append("c" * 32, {"role": "user", "content": "hi"}, idempotency_key=None,
                        pinned=None, reply=None, owner=None, dialect="sqlite")
    next(plain)
    plain.send(7)
    with pytest.raises(IntegrityError):  # without a key there is nothing to recover
        plain.throw(IntegrityError("INSERT", {}, Exception("duplicate seq")))
