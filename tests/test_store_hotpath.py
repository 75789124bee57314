"""The turn's hot path: statements on the DBAPI cursor, the direct SQLite path,
one lineage query and one page per build, the run's writes folded together.

These pieces trade SQLAlchemy's general machinery for less work per turn; the
tests check that what is written and read stays exactly what SQLAlchemy would
write and read, and that nothing the store promised (not found, owner scope,
no half-written rows, tracing) changed on the way.
"""

from __future__ import annotations

import json
import math
import random
import threading
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from sqlalchemy.dialects import sqlite
from turns_support import RUN_BODY as BODY
from turns_support import start_run as _start

from convo import (
    ContextBuilder,
    ConversationNotFound,
    Message,
    MessageNotFound,
    ReplyInfo,
    StoreInputError,
)
from convo._messages import FunctionCall, ImagePart, ImageURL, TextPart, ToolCall
from convo._records import StoredMessage
from convo._store import driver, sql
from convo._store.engine import WRITE_OPTION, _sqlite_begin, _sqlite_checkout, create_engine
from convo._store.rows import message_params
from convo._store.runs import SerializedRequest
from convo._store.schema import UTCDateTime
from convo._store.store import Store

# --- the cursor path writes what SQLAlchemy writes ------------------------------------------


def test_cursor_writes_store_what_sqlalchemy_stores(db_url: sa.URL) -> None:
    """One message with every kind of column, inserted through SQLAlchemy Core and
    through the cursor path: the stored rows are identical, byte for byte."""
    store = Store(db_url)
    try:
        a, b = store.create_conversation(), store.create_conversation()
        message = Message(
            role="user",
            content=[TextPart(text="look: é ✓"), ImagePart(image_url=ImageURL(url="data:,x"))],
            name="ann",
            metadata={"k": [1, 2.5, None, {"ü": True}], "big": 2**62},
        )
        info = ReplyInfo(model="m", finish_reason="stop", usage={"total_tokens": 3}, seed=-7)
        values = message_params(message, pinned=True, idempotency_key="key", reply=info)
        values.update(seq=1, created_at=datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC))
        engine = store.engine
        with engine.begin() as conn:
            conn.execute(sql.insert_new_message(engine.dialect.name, False),
                         {**values, "conversation_id": a.id})
        with engine.begin() as conn:
            dbapi = conn.connection.dbapi_connection
            driver.execute_dbapi(engine.dialect, dbapi, sql.insert_new_message(engine.dialect.name, False),
                                 {**values, "conversation_id": b.id}, "none")
        with engine.begin() as conn:  # (the counters: the inserts above bypassed them)
            conn.exec_driver_sql("UPDATE conversations SET last_seq = 1")
        with engine.connect() as conn:
            rows = {
                cid: conn.exec_driver_sql(
                    "SELECT role, content, parts, name, tool_calls, refusal, tool_call_id, "
                    "metadata, pinned, idempotency_key, model, finish_reason, usage, "
                    "system_fingerprint, seed, created_at, seq FROM messages "
                    f"WHERE conversation_id = '{cid}'"
                ).all()
                for cid in (a.id, b.id)
            }
        assert rows[a.id] == rows[b.id] and len(rows[a.id]) == 1
        # and both read back as the same values
        assert store.messages(a.id)[0].model_dump(exclude={"id", "conversation_id"}) == (
            store.messages(b.id)[0].model_dump(exclude={"id", "conversation_id"})
        )
    finally:
        store.close()


async def test_runs_read_back_through_sqlalchemy_as_the_store_returned_them(store: Any) -> None:
    """start_run and finish_run write on the cursor path (and return values they
    did not read back): SQLAlchemy's own reading of the rows gives the same runs."""
    from convo._store.runs import R, run_from_row

    conv = await store.create_conversation(owner="alice")
    user = await store.append(conv.id, {"role": "user", "content": "Hi"}, owner="alice")
    run = await store.start_run(
        conv.id, endpoint="chat.completions", mode="chat", model="gpt-4o-mini",
        request=json.dumps(BODY), settings={"budget": 1000, "profile": {"a": [1, None]}},
        kept_seqs=[user.seq], input_seq=user.seq, stream=True, owner="alice",
        metadata={"trace": "t-1"},
    )
    done = await store.finish_run(
        run.id, status="ok", reply={"role": "assistant", "content": "Hello ✓"},
        reply_info=ReplyInfo(model="m", usage={"prompt_tokens": 9}), started=run, attempts=2,
        ttfb_ms=1.25, latency_ms=4.5, usage={"prompt_tokens": 9, "details": {"x": 0}},
        response={"id": "chatcmpl-1", "choices": [{"index": 0}]}, owner="alice",
    )
    plain = sa.create_engine(store.url, poolclass=sa.NullPool)  # SQLAlchemy, not the store
    with plain.connect() as conn:
        row = conn.execute(sa.select(R).where(R.c.id == run.id)).one()
    plain.dispose()
    assert run_from_row(row) == done.run == await store.get_run(run.id)
    assert done.run.owner == "alice" and done.run.reply_message_id == done.reply.id


# --- processors on SQLite -------------------------------------------------------------------


def test_utc_datetime_processors_match_sqlalchemys_general_route() -> None:
    """The one-call SQLite processors of UTCDateTime give what SQLAlchemy's DATETIME
    plus process_bind_param / process_result_value give."""
    dialect = sqlite.dialect()
    t = UTCDateTime()
    bind = t._cached_bind_processor(dialect)
    result = t._cached_result_processor(dialect, None)
    sa_bind = sqlite.DATETIME().bind_processor(dialect)
    sa_result = sqlite.DATETIME().result_processor(dialect, None)
    rng = random.Random(7)
    for _ in range(2000):
        value = datetime(
            rng.randint(1, 9999), rng.randint(1, 12), rng.randint(1, 28), rng.randint(0, 23),
            rng.randint(0, 59), rng.randint(0, 59), rng.choice([0, rng.randint(0, 999_999)]),
            tzinfo=rng.choice([UTC, None, timezone(timedelta(hours=-5))]),
        )
        text = bind(value)
        assert text == sa_bind(t.process_bind_param(value, dialect))
        assert result(text) == t.process_result_value(sa_result(text), dialect)
    assert bind(None) is None and result(None) is None


def test_json_columns_decode_as_json_loads_does() -> None:
    """The cursor path decodes SQLite JSON text with a faster parser: the values are
    json.loads' values, text it refuses included (json.loads then decides)."""
    type_ = sa.JSON(none_as_null=True)
    decode = driver._result_processor(sqlite.dialect(), type_)
    texts = [
        '{"a": 1, "a": 2}', "123456789012345678901234567890", '"\\ud800"', '{"k": "é\\n"}',
        "-0.0", "[1E-7, 5e-324, 1.7976931348623157e308]", '{"nested": [[], {}, [null]]}',
    ]
    for text in texts:
        assert repr(decode(text)) == repr(json.loads(text)), text
    nan = decode("[NaN, Infinity]")
    assert math.isnan(nan[0]) and nan[1] == math.inf
    with pytest.raises(ValueError):
        decode("{not json")
    assert decode(5) == 5  # SQLite hands numbers back as numbers


# --- a build's reads ---------------------------------------------------------------------------


async def test_a_later_page_of_a_deleted_conversation_is_not_found(store: Any) -> None:
    """A build reads the lineage once and pages with it; a conversation deleted in
    between is still reported as not found, as when each page read the lineage."""
    conv = await store.create_conversation()
    await store.append_many(conv.id, [Message.user(f"m{i}") for i in range(10)])
    _pinned, page, lineage = await store._context_open(conv.id, encoding="o200k_base", limit=4)
    assert [m.seq for m, _ in page] == [10, 9, 8, 7]
    older = await store._tail_of(lineage, encoding="o200k_base", before=7, limit=4)
    assert [m.seq for m, _ in older] == [6, 5, 4, 3]
    oldest = await store._tail_of(lineage, encoding="o200k_base", before=3, limit=4)
    assert [m.seq for m, _ in oldest] == [2, 1]  # the lineage starts at seq 1
    await store.delete_conversation(conv.id)
    with pytest.raises(ConversationNotFound) as err:
        await store._tail_of(lineage, encoding="o200k_base", before=7, limit=4)
    assert str(err.value) == f"conversation {conv.id!r} not found"


async def test_a_later_page_of_a_deleted_fork_names_the_fork(store: Any) -> None:
    """The same for a fork, whose build reads its lineage from the fork's row: the
    later page pages through the parent's rows too, and once the fork is deleted
    the error names the fork (the lineage's own conversation), not its parent."""
    conv = await store.create_conversation(owner="alice")
    await store.append_many(conv.id, [Message.user(f"m{i}") for i in range(6)], owner="alice")
    child = await store.fork(conv.id, at=4, owner="alice")
    await store.append_many(child.id, [Message.user(f"f{i}") for i in range(3)], owner="alice")
    _pinned, page, lineage = await store._context_open(child.id, encoding="o200k_base", limit=3,
                                                       owner="alice")
    assert [(m.conversation_id, m.seq) for m, _ in page] == [(child.id, s) for s in (7, 6, 5)]
    older = await store._tail_of(lineage, encoding="o200k_base", before=5, limit=3,
                                 owner="alice")
    assert [(m.conversation_id, m.seq) for m, _ in older] == [(conv.id, s) for s in (4, 3, 2)]
    await store.delete_conversation(child.id, owner="alice")
    # (the parent's rows are still there: a page that held only those would not notice)
    with pytest.raises(ConversationNotFound) as err:
        await store._tail_of(lineage, encoding="o200k_base", before=7, limit=10, owner="alice")
    assert str(err.value) == f"conversation {child.id!r} not found for owner 'alice'"
    assert err.value.conversation_id == child.id


async def test_tail_of_takes_only_a_lineage(store: Any) -> None:
    with pytest.raises(StoreInputError, match="lineage"):
        await store._tail_of(("c", 0, 3), encoding="o200k_base", before=3, limit=2)


def test_the_next_build_of_a_conversation_reads_one_page(make_db: Any) -> None:
    """The builder remembers how many rows a conversation's build needed: the next
    build reads them in its first page, and decides the same."""
    with Store(make_db("sqlite")) as store:
        conv = store.create_conversation()
        msgs = [Message.system("Be brief.")]
        for k in range(40):
            msgs += [Message.user(f"question {k} " + "w " * 30),
                     Message.assistant(f"answer {k} " + "t " * 30)]
        store.append_many(conv.id, msgs)
        builder = ContextBuilder(store, model="gpt-4o-mini", budget=1500)

        def pages() -> tuple[Any, int]:
            seen: list[str] = []

            def record(*args: Any) -> None:
                seen.append(str(args[2]))

            sa.event.listen(store.engine, "before_cursor_execute", record)
            try:
                ctx = builder.build(conv.id)
            finally:
                sa.event.remove(store.engine, "before_cursor_execute", record)
            reads = [s for s in seen if "FROM messages" in s and "LIMIT" in s]  # (not pinned)
            return ctx, len(reads)

        first, first_reads = pages()
        again, again_reads = pages()
        fresh = ContextBuilder(store, model="gpt-4o-mini", budget=1500).build(conv.id)
        assert first_reads == 2 and again_reads == 1
        assert again.report.kept_seqs == first.report.kept_seqs == fresh.report.kept_seqs
        assert again.report.counted == 0


# --- run records -------------------------------------------------------------------------------


async def test_start_run_stores_the_builds_token_counts_with_the_run(store: Any) -> None:
    conv = await store.create_conversation(owner="alice")
    m = await store.append(conv.id, {"role": "user", "content": "Hi"}, owner="alice")
    before = store.snapshot()
    with pytest.raises(ConversationNotFound):
        await _start(store, conv.id, owner="bob", token_counts=("o200k_base", {m.id: 5}))
    with pytest.raises(ConversationNotFound):
        await _start(store, "0" * 32, token_counts=("o200k_base", {m.id: 5}))
    with pytest.raises(StoreInputError, match="token_counts"):
        await _start(store, conv.id, token_counts={m.id: 5})
    assert store.snapshot() == before  # nothing half-written
    run = await _start(store, conv.id, owner="alice", token_counts=("o200k_base", {m.id: 5}))
    assert run.owner == "alice"
    rows = store.sql("SELECT message_id, encoding, tokens FROM message_tokens")
    assert [tuple(r) for r in rows] == [(m.id, "o200k_base", 5)]


async def test_token_counts_for_a_message_the_conversation_lacks_are_not_found(store: Any) -> None:
    """A build's counts name (conversation, message): a pair no message has is the message
    not found (the conversation is there), and the run goes with the refused counts."""
    conv, other = await store.create_conversation(), await store.create_conversation()
    m = await store.append(conv.id, {"role": "user", "content": "Hi"})
    theirs = await store.append(other.id, {"role": "user", "content": "Hi"})
    before = store.snapshot()
    for counts in ({(conv.id, m.id): 5, (conv.id, theirs.id): 6}, {(other.id, m.id): 5}):
        with pytest.raises(MessageNotFound) as info:
            await _start(store, conv.id, token_counts=("o200k_base", counts))
        assert info.value.args == ("token counts given for a message id its conversation does not hold",)
    assert store.snapshot() == before


async def test_start_run_takes_counts_by_conversation_and_id_or_by_id_alone(store: Any) -> None:
    """The build's form ``(conversation id, message id)`` is written as checked (no
    lookup); ids alone have their conversation looked up; a bad count in either form
    is refused before anything is written."""
    conv = await store.create_conversation()
    a = await store.append(conv.id, {"role": "user", "content": "Hi"})
    b = await store.append(conv.id, {"role": "assistant", "content": "Hello"})
    before = store.snapshot()
    for bad in ({(conv.id, a.id): -1}, {(conv.id, a.id): 2, b.id: 1.5},
                {("c\x00", a.id): 2}, {(conv.id, "1"): 2}):
        with pytest.raises(StoreInputError):
            await _start(store, conv.id, token_counts=("o200k_base", bad))
    assert store.snapshot() == before
    await _start(store, conv.id, token_counts=("o200k_base", {(conv.id, a.id): 7}))
    await _start(store, conv.id, token_counts=("cl100k_base", {(conv.id, a.id): 8, b.id: 9}))
    rows = store.sql("SELECT conversation_id, message_id, encoding, tokens FROM message_tokens"
                     " ORDER BY encoding, message_id")
    assert [tuple(r) for r in rows] == [
        (conv.id, a.id, "cl100k_base", 8), (conv.id, b.id, "cl100k_base", 9),
        (conv.id, a.id, "o200k_base", 7),
    ]


async def test_finish_run_with_the_started_run_is_what_the_store_holds(store: Any) -> None:
    conv = await store.create_conversation()
    run, other = await _start(store, conv.id), await _start(store, conv.id)
    with pytest.raises(StoreInputError, match="started"):
        await store.finish_run(run.id, status="failed", started=other)
    done = await store.finish_run(run.id, status="failed", error_type="X", error_message="x",
                                  latency_ms=3.0, started=run)
    assert done.run == await store.get_run(run.id)
    assert (done.run.status, done.run.error_type, done.run.latency_ms) == ("failed", "X", 3.0)
    with pytest.raises(StoreInputError, match="already finished"):
        await store.finish_run(run.id, status="ok", started=run)


async def test_serialized_request_text_is_checked_for_what_to_json_can_write(store: Any) -> None:
    conv = await store.create_conversation()
    text = '{"model":"m","messages":[],"temperature":0.5}'
    run = await _start(store, conv.id, request=SerializedRequest(text))
    assert run.request == text and type(run.request) is str
    assert (await store.get_run(run.id)).request == text
    for bad in ('{"temperature":NaN}', '{"temperature":Infinity}', '{"t":[-Infinity]}'):
        with pytest.raises(StoreInputError, match="^run request is not valid JSON text$"):
            await _start(store, conv.id, request=SerializedRequest(bad))
    # the words in a string are no constants: parsed, found fine, kept as given
    for text in ('{"stop":["NaN"]}', '{"stop":["Infinity"]}'):
        run = await _start(store, conv.id, request=SerializedRequest(text))
        assert run.request == text == (await store.get_run(run.id)).request


# --- the user message on the thread's current branch --------------------------------------------


async def test_append_current_goes_to_the_current_branch_in_scope(store: Any) -> None:
    conv = await store.create_conversation(owner="alice")
    await store.append(conv.id, {"role": "user", "content": "q"}, idempotency_key="t1",
                       owner="alice")
    cid, first = await store._append_current(conv.id, Message.user("a"), owner="alice")
    assert (cid, first.seq) == (conv.id, 2)
    branch = await store.create_branch(conv.id, at=1, owner="alice")
    with pytest.raises(ConversationNotFound):
        await store._append_current(conv.id, Message.user("x"), owner="bob")
    with pytest.raises(ConversationNotFound):
        await store._append_current("0" * 32, Message.user("x"))
    cid, second = await store._append_current(conv.id, Message.user("b"), owner="alice")
    assert (cid, second.seq) == (branch.id, 2)
    # a key stored before the branch was made is found through the inherited rows
    before = store.snapshot()
    cid, again = await store._append_current(conv.id, Message.user("q"), idempotency_key="t1",
                                             owner="alice")
    assert (cid, again.seq, again.conversation_id) == (branch.id, 1, conv.id)
    assert store.snapshot() == before


async def test_append_current_on_a_thread_without_branches(store: Any) -> None:
    """The plain case of append_current (no branch): the key is stored and a re-sent key
    writes nothing; what it returns is what a read gives (PostgreSQL's one-statement
    path too); the ids follow as an append's do; a missing or hidden conversation is
    named, on both paths (with a key and without)."""
    conv = await store.create_conversation(owner="alice")
    cid, keyed = await store._append_current(conv.id, Message.user("a"), idempotency_key="k1",
                                             owner="alice")
    assert cid == conv.id and keyed.idempotency_key == "k1"
    assert keyed == await store.get_message(conv.id, keyed.seq, owner="alice")
    before = store.snapshot()
    cid, again = await store._append_current(conv.id, Message.user("b"), idempotency_key="k1",
                                             owner="alice")
    assert (cid, again) == (conv.id, keyed) and store.snapshot() == before
    cid, plain = await store._append_current(conv.id, Message.user("c"), owner="alice")
    assert cid == conv.id and plain == await store.get_message(conv.id, 2, owner="alice")
    cid, second = await store._append_current(conv.id, Message.user("d"), idempotency_key="k2",
                                              owner="alice")
    after = await store.append(conv.id, Message.user("e"), owner="alice")
    assert keyed.id < plain.id < second.id < after.id and after.seq == 4
    for key in (None, "k3"):
        with pytest.raises(ConversationNotFound) as info:
            await store._append_current(conv.id, Message.user("x"), idempotency_key=key,
                                        owner="bob")
        assert str(info.value) == f"conversation '{conv.id}' not found for owner 'bob'"
        with pytest.raises(ConversationNotFound) as info:
            await store._append_current("0" * 32, Message.user("x"), idempotency_key=key)
        assert str(info.value) == f"conversation '{'0' * 32}' not found"
    assert [m.seq for m in await store.messages(conv.id)] == [1, 2, 3, 4]


async def test_an_append_without_a_key_is_one_autocommitted_statement_on_postgresql(
    store: Any,
) -> None:
    """Without a key, append and append_current are one statement on PostgreSQL, run in
    autocommit (no BEGIN / COMMIT round trips); with a key they are a transaction, whose
    rollback undoes the counter bump of a retried send. SQLite runs both as writes."""
    conv = await store.create_conversation()
    seen: list[tuple[str, Any, Any]] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        options = conn.get_execution_options()
        seen.append((statement, options.get("isolation_level"), options.get(WRITE_OPTION)))

    engine = store.sync_engine
    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        calls = [
            lambda: store.append(conv.id, Message.user("a")),
            lambda: store._append_current(conv.id, Message.user("b")),
            lambda: store.append(conv.id, Message.user("c"), idempotency_key="k1"),
            lambda: store._append_current(conv.id, Message.user("d"), idempotency_key="k2"),
        ]
        ran, counts = [], []
        for call in calls:
            seen.clear()
            await call()
            ran.append({(level, write) for _statement, level, write in seen})
            counts.append(len(seen))
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)
    if store.backend == "postgresql":
        assert ran == [{("AUTOCOMMIT", None)}] * 2 + [{(None, None)}] * 2
        # one statement: two in autocommit could leave a counter bumped without its message
        assert counts[:2] == [1, 1]
    else:
        assert ran == [{(None, True)}] * 4
    # a retried keyed send in that transaction leaves the counter as it was
    before = store.snapshot()
    await store.append(conv.id, Message.user("c"), idempotency_key="k1")
    await store._append_current(conv.id, Message.user("d"), idempotency_key="k2")
    assert store.snapshot() == before
    assert [m.text for m in await store.messages(conv.id)] == ["a", "b", "c", "d"]


async def test_keyed_and_plain_appends_take_ids_in_turn(store: Any) -> None:
    """A keyed append's INSERT takes its id as a plain append does (PostgreSQL: from the
    sequence), so the appends after it, keyed or not, fit: ids grow with seq."""
    conv = await store.create_conversation()
    stored = []
    for i, key in enumerate(["k1", None, "k2", "k3", None, None, "k4"]):
        stored.append(await store.append(conv.id, Message.user(f"m{i}"), idempotency_key=key))
    assert [m.seq for m in stored] == list(range(1, 8))
    assert sorted(m.id for m in stored) == [m.id for m in stored]
    assert await store.messages(conv.id) == stored


async def test_an_append_to_a_missing_or_hidden_conversation_names_it(store: Any) -> None:
    """On every path: PostgreSQL's one statement (no key), the counter update (a key),
    a batch's counter update, an empty batch's read."""
    conv = await store.create_conversation(owner="alice")
    before = store.snapshot()
    for key in (None, "k"):
        for cid, owner, scope in ((conv.id, "bob", " for owner 'bob'"), ("0" * 32, None, "")):
            with pytest.raises(ConversationNotFound) as err:
                await store.append(cid, Message.user("x"), idempotency_key=key, owner=owner)
            assert str(err.value) == f"conversation {cid!r} not found{scope}"
            assert (err.value.conversation_id, err.value.owner) == (cid, owner)
    for cid, owner, scope in ((conv.id, "bob", " for owner 'bob'"), ("0" * 32, None, "")):
        for batch in ([], [Message.user("x"), Message.user("y")]):  # (none: a read says it)
            with pytest.raises(ConversationNotFound) as err:
                await store.append_many(cid, batch, owner=owner)
            assert str(err.value) == f"conversation {cid!r} not found{scope}"
            assert (err.value.conversation_id, err.value.owner) == (cid, owner)
    assert store.snapshot() == before


# --- the direct path --------------------------------------------------------------------------


def test_the_direct_path_steps_aside_when_statements_are_observed(make_db: Any) -> None:
    """With a cursor listener, every statement goes through SQLAlchemy (and is seen);
    without one, the same calls run on the thread's own connection and agree."""
    url = make_db("sqlite")
    with Store(url) as traced, Store(url) as direct:
        seen: list[str] = []
        sa.event.listen(traced.engine, "before_cursor_execute",
                        lambda c, cur, stmt, *a: seen.append(stmt))
        conv = traced.create_conversation()
        traced.append(conv.id, Message.user("hi"))
        seen.clear()
        got = traced.messages(conv.id)
        traced.append(conv.id, Message.assistant("hello"))
        assert any("FROM messages" in s for s in seen) and "BEGIN IMMEDIATE" in seen
        assert getattr(traced._direct, "fairy", None) is None  # never took the direct path
        assert direct.messages(conv.id)[:1] == got
        assert direct._direct.fairy.dbapi_connection is not None


def test_the_direct_path_sees_listeners_on_the_engine_class(make_db: Any) -> None:
    """A listener on the Engine class (not on this engine), added after the store took
    the direct path: its quick check reads SQLAlchemy's class-level lists, so every
    later statement is seen; once removed, the direct path is taken again."""
    url = make_db("sqlite")
    with Store(url) as store:
        conv = store.create_conversation()
        store.append(conv.id, Message.user("before"))
        assert store._direct.fairy.dbapi_connection is not None  # took the direct path
        seen: list[str] = []

        def record(conn: Any, cursor: Any, stmt: str, *args: Any) -> None:
            seen.append(stmt)

        sa.event.listen(sa.engine.Engine, "before_cursor_execute", record)
        try:
            assert not driver.direct_ok(store.engine, _sqlite_begin, _sqlite_checkout)
            store.append(conv.id, Message.user("after"))
            store.messages(conv.id)
        finally:
            sa.event.remove(sa.engine.Engine, "before_cursor_execute", record)
        assert any("INSERT INTO messages" in s for s in seen)
        assert any("FROM messages" in s for s in seen)
        seen.clear()
        assert driver.direct_ok(store.engine, _sqlite_begin, _sqlite_checkout)
        store.append(conv.id, Message.user("removed"))
        assert not seen
        assert [m.text for m in store.messages(conv.id)] == ["before", "after", "removed"]


def test_the_direct_path_sees_a_listener_added_to_the_engine_after_it_was_taken(
    make_db: Any,
) -> None:
    """The quick check remembers the engine's event collections it found unheard; a
    listener added to this engine afterwards replaces its event's collection, so the
    next call sees it (and every statement goes through SQLAlchemy), and once it is
    removed the direct path is taken again."""
    with Store(make_db("sqlite")) as store:
        conv = store.create_conversation()
        store.append(conv.id, Message.user("before"))
        store.append(conv.id, Message.user("again"))  # (the check's memory in use)
        assert driver.direct_ok(store.engine, _sqlite_begin, _sqlite_checkout)
        seen: list[Any] = []

        def record(*args: Any) -> None:
            seen.append(args)

        for event in ("before_cursor_execute", "after_cursor_execute", "commit"):
            sa.event.listen(store.engine, event, record)
            try:
                assert not driver.direct_ok(store.engine, _sqlite_begin, _sqlite_checkout), event
                store.append(conv.id, Message.user(event))
            finally:
                sa.event.remove(store.engine, event, record)
            assert seen, event
            seen.clear()
            assert driver.direct_ok(store.engine, _sqlite_begin, _sqlite_checkout), event
            store.append(conv.id, Message.user("direct"))
            assert not seen, event


def test_the_direct_path_steps_aside_for_dialect_listeners(make_db: Any) -> None:
    """A dialect event listened to on the engine (SQLAlchemy marks the dialect, which
    the quick check reads first) turns the direct path off, and removing it back on."""
    with Store(make_db("sqlite")) as store:
        assert driver.direct_ok(store.engine, _sqlite_begin, _sqlite_checkout)

        def fn(cursor: Any, stmt: str, params: Any, context: Any) -> None:
            pass

        sa.event.listen(store.engine, "do_execute", fn)
        try:
            assert not driver.direct_ok(store.engine, _sqlite_begin, _sqlite_checkout)
        finally:
            sa.event.remove(store.engine, "do_execute", fn)
        assert driver.direct_ok(store.engine, _sqlite_begin, _sqlite_checkout)


@pytest.mark.parametrize("event", ["checkout", "checkin", "reset"])
def test_the_direct_path_steps_aside_for_pool_listeners(make_db: Any, event: str) -> None:
    """The thread's connection is checked out once, so a pool listener added later
    (on the engine's pool, or on the Pool class) would miss the direct path's calls:
    the next call goes through SQLAlchemy, where the listener runs; once removed,
    the direct path is taken again."""
    with Store(make_db("sqlite")) as store:
        conv = store.create_conversation()
        store.append(conv.id, Message.user("before"))
        store.append(conv.id, Message.user("again"))  # (the check's memory in use)
        assert driver.direct_ok(store.engine, _sqlite_begin, _sqlite_checkout)
        seen: list[Any] = []

        def record(*args: Any) -> None:
            seen.append(args)

        for target in (store.engine.pool, sa.pool.Pool):
            sa.event.listen(target, event, record)
            try:
                assert not driver.direct_ok(store.engine, _sqlite_begin, _sqlite_checkout)
                store.append(conv.id, Message.user(event))
            finally:
                sa.event.remove(target, event, record)
            assert seen, (target, event)
            seen.clear()
            assert driver.direct_ok(store.engine, _sqlite_begin, _sqlite_checkout)
            store.append(conv.id, Message.user("direct"))
            assert not seen


def test_the_direct_path_sees_a_listener_on_the_pool_of_a_disposed_engine(make_db: Any) -> None:
    """``dispose()`` gives the engine a new pool (its listeners copied): a listener
    added to that pool is seen too."""
    with Store(make_db("sqlite")) as store:
        conv = store.create_conversation()
        store.append(conv.id, Message.user("x"))
        assert driver.direct_ok(store.engine, _sqlite_begin, _sqlite_checkout)
        store.engine.dispose()

        def record(*args: Any) -> None:
            pass

        sa.event.listen(store.engine.pool, "checkin", record)
        assert not driver.direct_ok(store.engine, _sqlite_begin, _sqlite_checkout)
        sa.event.remove(store.engine.pool, "checkin", record)
        assert driver.direct_ok(store.engine, _sqlite_begin, _sqlite_checkout)
        store.append(conv.id, Message.user("y"))
        assert [m.text for m in store.messages(conv.id)] == ["x", "y"]


def test_the_direct_path_checks_convos_own_hooks_each_call(make_db: Any) -> None:
    """A second listener on convo's own events (begin, checkout), on the collections
    the quick check already holds, turns the direct path off at the next call; so
    does a listener that replaced convo's hook (the same count, another function)."""
    with Store(make_db("sqlite")) as store:
        conv = store.create_conversation()
        store.append(conv.id, Message.user("x"))

        def other(*args: Any) -> None:
            pass

        for target, event, own in ((store.engine, "begin", _sqlite_begin),
                                   (store.engine, "checkout", _sqlite_checkout)):
            assert driver.direct_ok(store.engine, _sqlite_begin, _sqlite_checkout)
            sa.event.listen(target, event, other)
            try:
                assert not driver.direct_ok(store.engine, _sqlite_begin, _sqlite_checkout)
            finally:
                sa.event.remove(target, event, other)
            assert driver.direct_ok(store.engine, _sqlite_begin, _sqlite_checkout)
            # replaced between two calls: one listener again, but not convo's
            sa.event.remove(target, event, own)
            sa.event.listen(target, event, other)
            try:
                assert not driver.direct_ok(store.engine, _sqlite_begin, _sqlite_checkout)
            finally:
                sa.event.remove(target, event, other)
                sa.event.listen(target, event, own)
            assert driver.direct_ok(store.engine, _sqlite_begin, _sqlite_checkout)


def test_the_direct_path_sees_a_listener_on_an_event_listened_to_before(make_db: Any) -> None:
    """An event listened to and left empty keeps its collection on the engine: a
    listener added to it later joins that collection in place, and is seen."""
    with Store(make_db("sqlite")) as store:
        conv = store.create_conversation()

        def record(*args: Any) -> None:
            pass

        sa.event.listen(store.engine, "before_cursor_execute", record)
        sa.event.remove(store.engine, "before_cursor_execute", record)
        store.append(conv.id, Message.user("x"))
        assert driver.direct_ok(store.engine, _sqlite_begin, _sqlite_checkout)
        assert driver.direct_ok(store.engine, _sqlite_begin, _sqlite_checkout)
        sa.event.listen(store.engine, "before_cursor_execute", record)
        try:
            assert not driver.direct_ok(store.engine, _sqlite_begin, _sqlite_checkout)
        finally:
            sa.event.remove(store.engine, "before_cursor_execute", record)
        assert driver.direct_ok(store.engine, _sqlite_begin, _sqlite_checkout)


def test_the_direct_path_steps_aside_when_echo_is_turned_on(make_db: Any) -> None:
    with Store(make_db("sqlite")) as store:
        store.create_conversation()
        assert driver.direct_ok(store.engine, _sqlite_begin, _sqlite_checkout)
        assert driver.direct_ok(store.engine, _sqlite_begin, _sqlite_checkout)
        store.engine.echo = True
        try:
            assert not driver.direct_ok(store.engine, _sqlite_begin, _sqlite_checkout)
        finally:
            store.engine.echo = False
        assert driver.direct_ok(store.engine, _sqlite_begin, _sqlite_checkout)


def test_thread_connections_close_with_the_store(make_db: Any) -> None:
    url = make_db("sqlite")
    store = Store(url)
    conv = store.create_conversation()
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            for i in range(5):
                store.append(conv.id, Message.user(f"{k}-{i}"))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert store.count_messages(conv.id) == 20
    held = list(store._direct_all)
    assert held and all(f.dbapi_connection is not None for f in held)
    store.close()
    assert all(f.dbapi_connection is None for f in held)
    assert store.count_messages(conv.id) == 20  # a closed store opens again on use
    store.close()


def test_sqlite_file_pools_hand_out_the_last_used_connection_first(tmp_path: Any) -> None:
    file_engine = create_engine(f"sqlite:///{tmp_path / 'x.db'}")
    assert file_engine.pool._pool.use_lifo  # type: ignore[attr-defined]
    memory = create_engine("sqlite://")  # a pool without an order: nothing to set
    chosen = create_engine(f"sqlite:///{tmp_path / 'y.db'}", poolclass=sa.NullPool)
    assert isinstance(chosen.pool, sa.NullPool)
    for engine in (file_engine, memory, chosen):
        engine.dispose()


def test_tool_calls_written_on_the_cursor_path_read_back(make_db: Any) -> None:
    with Store(make_db("sqlite")) as store:
        conv = store.create_conversation()
        call = ToolCall(id="c1", function=FunctionCall(name="f", arguments='{"x": 1}'))
        stored = store.append(conv.id, Message.assistant(tool_calls=[call]))
        assert store.messages(conv.id) == [stored]


def test_closing_the_store_leaves_a_call_in_flight_its_connection(make_db: Any) -> None:
    """close() closes the threads' idle connections; one in a call at that moment
    is closed by its thread when the call ends (as the pool leaves checked-out
    connections alone), and the next call takes a new one."""
    store = Store(make_db("sqlite"))
    conv = store.create_conversation()
    store.append(conv.id, Message.user("hi"))
    mine = store._direct.fairy
    closed: list[bool] = []

    def close_once() -> int:
        # SQLite calls this while it runs a statement of the call below
        if not closed:
            closed.append(True)
            store.close()
        return 0  # go on

    mine.dbapi_connection.set_progress_handler(close_once, 1)
    stored = store.append(conv.id, Message.user("in flight"))  # completes
    assert closed and stored.seq == 2
    assert mine.dbapi_connection is None  # closed when the call ended
    assert [m.text for m in store.messages(conv.id)] == ["hi", "in flight"]
    assert store._direct.fairy is not mine
    store.close()


def test_an_in_memory_store_keeps_its_one_database() -> None:
    """In-memory SQLite lives in the pool's one connection per thread: the direct
    path must not take it away (the rest of the store would see an empty database)."""
    with Store("sqlite://") as store:
        store.migrate()
        conv = store.create_conversation()  # through SQLAlchemy
        store.append(conv.id, Message.user("hi"))  # the direct path
        assert [c.id for c in store.list_conversations().items] == [conv.id]  # SQLAlchemy
        assert [m.text for m in store.messages(conv.id)] == ["hi"]  # the direct path
        assert getattr(store._direct, "fairy", None) is None


def test_a_store_without_pooling_keeps_no_connection(make_db: Any) -> None:
    with Store(make_db("sqlite"), poolclass=sa.NullPool) as store:
        conv = store.create_conversation()
        store.append(conv.id, Message.user("hi"))
        assert [m.text for m in store.messages(conv.id)] == ["hi"]
        assert getattr(store._direct, "fairy", None) is None


# --- the opening read of a build -----------------------------------------------------------


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_build_opens_with_one_statement_unless_the_conversation_is_a_fork(
    make_db: Any, backend: str
) -> None:
    """A conversation that is not a fork is read in one statement (its row, its pinned
    and its newest messages); a fork reads its lineage first and sees its parent's
    pinned system prompt; a wrong owner is refused on both paths."""
    with Store(make_db(backend)) as store:
        conv = store.create_conversation(owner="alice")
        msgs = [Message.system("Be brief.")]
        for k in range(6):  # 13 messages: all in the first page of a build
            msgs += [Message.user(f"question {k}"), Message.assistant(f"answer {k}")]
        store.append_many(conv.id, msgs, owner="alice")
        fork = store.fork(conv.id, at=9, owner="alice")
        store.append(fork.id, Message.user("a fork question"), owner="alice")

        def build(cid: str) -> tuple[Any, list[str]]:
            seen: list[str] = []

            def record(*args: Any) -> None:
                seen.append(str(args[2]))

            sa.event.listen(store.engine, "before_cursor_execute", record)
            try:
                ctx = ContextBuilder(store, model="gpt-4o-mini", budget=1500).build(
                    cid, owner="alice"
                )
            finally:
                sa.event.remove(store.engine, "before_cursor_execute", record)
            return ctx, [s for s in seen if s.lstrip().upper().startswith(("SELECT", "WITH"))]

        ctx, reads = build(conv.id)
        assert len(reads) == 1, reads
        assert ctx.report.kept_seqs == list(range(1, 14)) and ctx.messages[0].role == "system"
        fork_ctx, fork_reads = build(fork.id)
        assert len(fork_reads) > 1
        assert fork_ctx.report.kept_seqs == list(range(1, 11))
        assert [m.content for m in fork_ctx.messages][:1] == ["Be brief."]
        assert fork_ctx.messages[-1].content == "a fork question"
        for cid in (conv.id, fork.id):
            with pytest.raises(ConversationNotFound):
                ContextBuilder(store, model="gpt-4o-mini", budget=1500).build(cid, owner="bob")


def test_rows_read_share_one_fields_set_that_model_copy_leaves_alone(make_db: Any) -> None:
    """Messages read from the store share one pydantic fields set (see
    ``_store_rows.construct``): copying one with an update must not change the others'."""
    with Store(make_db("sqlite")) as store:
        conv = store.create_conversation()
        store.append_many(conv.id, [Message.user("a"), Message.assistant("b")])
        (b, _), (a, _) = store.tail(conv.id, encoding="o200k_base")
        before = set(a.model_fields_set)
        assert a.model_fields_set is b.model_fields_set  # (what the test is about)
        copied = b.model_copy(update={"content": "c"})
        assert copied.content == "c" and b.content == "b"
        assert a.model_fields_set == before == b.model_fields_set
        assert a == StoredMessage.model_validate(a.model_dump())


def test_a_builds_messages_each_hold_their_own_values(make_db: Any) -> None:
    """The compact read copies one dict of a plain message's values per row
    (``_store_rows.compact_messages``): every message gets its own values, and its
    own ``metadata`` dict, equal to what validating the message gives."""
    with Store(make_db("sqlite")) as store:
        conv = store.create_conversation()
        store.append_many(conv.id, [
            Message.system("s"), Message.user("a"), Message.assistant("b"), Message.user("c"),
        ])
        ctx = ContextBuilder(store, model="gpt-4o-mini", budget=1500).build(conv.id)
        msgs = ctx.messages
        assert [m.content for m in msgs] == ["s", "a", "b", "c"]
        assert [m.seq for m in msgs] == [1, 2, 3, 4]
        assert len({m.id for m in msgs}) == 4 and [m.pinned for m in msgs] == [True] + [False] * 3
        assert len({id(m.metadata) for m in msgs}) == 4  # not one dict shared by all
        msgs[1].metadata["k"] = "v"
        assert msgs[2].metadata == {} and msgs[3].metadata == {}
        for m in msgs:
            assert m.__dict__ is not msgs[0].__dict__ or m is msgs[0]
            assert m == StoredMessage.model_validate(m.model_dump())


# --- the text-only append: fast routes equal the general ones --------------------------------


def _outcome(make: Any) -> Any:
    try:
        return make()
    except StoreInputError as exc:
        return ("refused", str(exc))


_TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=12)


@settings(max_examples=300, deadline=None)
@given(
    role=st.sampled_from(["system", "developer", "user", "assistant"]),
    content=st.one_of(_TEXT, st.sampled_from(["a\x00b", "\ud800", "é\x00", "é\udfff"]),
                      st.none()),
    extra=st.sampled_from([{}, {"name": "n"}, {"name": "n" * 256}, {"metadata": {"k": 1}},
                           {"metadata": {}}, {"refusal": "no"}]),
    pinned=st.sampled_from([None, False, True]),
    key=st.sampled_from([None, "k", "k\x00"]),
    reply=st.sampled_from([None, ReplyInfo(model="m", finish_reason="stop")]),
)
def test_text_only_message_values_are_the_general_routes(role: str, content: Any,
                                                          extra: dict[str, Any], pinned: Any,
                                                          key: Any, reply: Any) -> None:
    """``message_values`` of a text-only message without key or reply takes a short
    route (``_text_only_values``); every message gets the general route's values, in
    the same order, or its error, and nothing but a text-only message takes the
    short route."""
    from convo._store.rows import _message_values, _text_only_values, message_values

    if content is None:  # (a message without content is an assistant's refusal)
        extra = {**extra, "refusal": "no"}
    if "refusal" in extra:
        role = "assistant"
    message = Message.model_validate({"role": role, "content": content, **extra})
    kw = {"pinned": pinned, "idempotency_key": key, "reply": reply}
    fast = _outcome(lambda: message_values(message, **kw))
    general = _outcome(lambda: _message_values(message, **kw))
    assert fast == general
    if isinstance(fast, dict):
        assert list(fast.items()) == list(general.items())
    short = _text_only_values(message, pinned)
    plain = _outcome(lambda: _message_values(message, pinned=pinned, idempotency_key=None,
                                             reply=None))
    text_only = type(content) is str and not message.metadata and set(extra) <= {"metadata"}
    if short is not None:
        assert text_only and short == plain
    elif text_only:  # refused text goes the general way, which names the column
        assert "\x00" in content or any("\ud800" <= c <= "\udfff" for c in content)
        assert plain[0] == "refused" and "message content" in plain[1]


@settings(max_examples=200, deadline=None)
@given(
    role=st.sampled_from(["system", "developer", "user", "assistant"]),
    content=_TEXT,
    extra=st.sampled_from([{}, {"name": "n"}, {"metadata": {"k": [1]}}]),
    pinned=st.sampled_from([None, False, True]),
    key=st.sampled_from([None, "k"]),
    reply=st.sampled_from([None, ReplyInfo(model="m", usage={"total_tokens": 3}, seed=1)]),
)
def test_the_stored_message_of_an_append_is_the_validated_value(
    role: str, content: str, extra: dict[str, Any], pinned: Any, key: Any, reply: Any
) -> None:
    """``stored_message`` (a plain message's short route shares one fields set; the
    others build theirs) gives what validating the stored row's values gives."""
    from convo._store.inputs import bad_index
    from convo._store.rows import message_values, stored_message

    assume(bad_index(content) < 0)
    message = Message.model_validate({"role": role, "content": content, **extra})
    values = message_values(message, pinned=pinned, idempotency_key=key, reply=reply)
    stamp = datetime.now(UTC)
    got = stored_message(message, values, id=7, conversation_id="c", seq=3, created_at=stamp)
    want = StoredMessage.model_validate({
        **message.model_dump(), "id": 7, "conversation_id": "c", "seq": 3, "created_at": stamp,
        "pinned": values["pinned"], "idempotency_key": key, "reply": reply,
    })
    assert got == want and got.__dict__ == want.__dict__
    assert got.model_fields_set == want.model_fields_set
    assert got.model_dump_json() == want.model_dump_json()
    copied = got.model_copy(update={"content": "other"})  # a shared fields set stays as it was
    assert got.model_fields_set == want.model_fields_set and copied.content == "other"
