"""Rows changed outside convo (edited by hand, or damaged) are refused on read with
``StoredDataError``: a ``StoreError`` that names the table, the row and the column,
never the stored value (a damaged row may hold anything, a secret included), and
nothing is written by the call that raised it.

Each damage is made with raw SQL on a separate connection. SQLite stores what it is
given whatever the column's type (text in a timestamp or an integer column, text
that is not JSON in a JSON column), so most damages are SQLite's; PostgreSQL's types
refuse those at write time, and what it allows (a role outside the known ones, JSON
of another shape than convo writes, in a JSONB column) is tested on both.
"""

# ruff: noqa: F811 - the env/path fixtures are imported, then named as test arguments

from __future__ import annotations

import traceback
from pathlib import Path
from typing import Any

import pytest
from conftest import StoreHandle, _clean_db
from turns_support import Env, env, path  # noqa: F401 - the env fixtures

from convo import (
    AsyncContextBuilder,
    AsyncStore,
    ContextBuilder,
    Message,
    MessageNotFound,
    ReplayItem,
    ReplyInfo,
    Store,
    StoredDataError,
    StoreError,
)

#: the marker every damaged value carries: it must appear in no error
SECRET = "SECRETx"


@pytest.fixture(params=["sync", "async"])
async def sqlite_store(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """A migrated, empty SQLite store, sync and async (the damages only SQLite takes)."""
    url = _clean_db(request, "sqlite", tmp_path)
    raw: Store | AsyncStore = Store(url) if request.param == "sync" else AsyncStore(url)
    handle = StoreHandle(raw, "sqlite", url)
    yield handle
    await handle.aclose()


async def _conversation(store: Any) -> Any:
    """A conversation with one message of each kind (seq 1..7), and a run."""
    conv = await store.create_conversation(title="t", metadata={"a": 1})
    await store.append(conv.id, Message.system("Be brief."))
    await store.append(conv.id, {"role": "user", "content": "hi", "metadata": {"k": "v"}})
    await store.append(conv.id, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]})
    await store.append(conv.id, {"role": "tool", "tool_call_id": "c1", "content": "r"})
    await store.append(conv.id, {"role": "user", "content": [{"type": "text", "text": "look"}]})
    await store.append(conv.id, {"role": "assistant", "content": "ok"},
                       reply=ReplyInfo(model="m", usage={"total_tokens": 3}))
    await store.append(conv.id, {"role": "user", "content": "next"})
    return conv


async def _build(store: Any, cid: str) -> Any:
    if store.is_async:
        return await AsyncContextBuilder(store.raw, model="gpt-4o-mini", budget=5000).build(cid)
    return ContextBuilder(store.raw, model="gpt-4o-mini", budget=5000).build(cid)


def _check(exc: StoredDataError, table: str, column: str | None, cid: str | None) -> None:
    """The error names the table, the column (when known) and the conversation, says the
    row was changed outside convo, and holds the value nowhere (nor does its traceback)."""
    assert isinstance(exc, StoreError)
    text = str(exc)
    assert f"a row of {table}" in text and "changed outside convo or is damaged" in text
    assert (exc.table, exc.column) == (table, column)
    if column is not None:
        assert f"its column {column!r} holds a " in text
    if cid is not None:
        assert exc.conversation_id == cid and f"conversation {cid!r}" in text
    shown = "".join(traceback.format_exception(exc))
    assert SECRET not in shown and SECRET not in repr(exc)


# --- messages ------------------------------------------------------------------------------

#: (name, UPDATE ... SET, the seq damaged, the column named): taken by both databases
BOTH = [
    ("role", f"role = '{SECRET}wiz'", 2, "role", "str"),
    ("tool_calls", f"tool_calls = '[1, \"{SECRET}\"]'", 3, "tool_calls", "list"),
    ("parts", f"parts = '[\"{SECRET}\"]'", 5, "parts", "list"),
    ("metadata shape", f"metadata = '[\"{SECRET}\"]'", 2, "metadata", "list"),
    ("usage shape", f"usage = '[\"{SECRET}\"]'", 6, "usage", "list"),
]
#: the same, for what only SQLite stores
SQLITE_ONLY = [
    ("created_at", f"created_at = '{SECRET}'", 2, "created_at", "str"),
    ("metadata JSON", f"metadata = '{{\"{SECRET}'", 2, "metadata", "str"),
    ("usage JSON", f"usage = '{{\"{SECRET}'", 6, "usage", "str"),
    ("tool_calls JSON", f"tool_calls = '[{SECRET}'", 3, "tool_calls", "str"),
]


async def _damaged_reads(store: Any, damage: str, seq: int, column: str, kind: str) -> None:
    """Every read of the damaged message raises StoredDataError naming it; nothing is written."""
    conv = await _conversation(store)
    other = await _conversation(store)
    store.sql(f"UPDATE messages SET {damage} WHERE seq = :seq AND conversation_id = :cid",
              seq=seq, cid=conv.id)
    # only the rows a call reads are checked: the other conversation reads as before
    assert [m.seq for m in await store.messages(other.id)] == list(range(1, 8))
    assert len((await _build(store, other.id)).messages) == 7
    before = store.snapshot()
    reads = {
        "messages": lambda: store.messages(conv.id),
        "get_message": lambda: store.get_message(conv.id, seq),
        "newest_first": lambda: store.messages(conv.id, newest_first=True, limit=7),
        "build": lambda: _build(store, conv.id),
    }
    for name, read in reads.items():
        with pytest.raises(StoredDataError) as info:
            await read()
        _check(info.value, "messages", column, conv.id)
        assert f"holds a {kind} that" in str(info.value), name
        if name != "build" or store.backend != "sqlite":
            # (a SQLite build's compact read has no conversation_id column: the seq, yes)
            assert info.value.seq == seq and f"seq {seq})" in str(info.value), name
    with pytest.raises(StoredDataError) as info:
        _ = [m async for m in store.iter_messages(conv.id)]
    _check(info.value, "messages", column, conv.id)
    assert store.snapshot() == before


@pytest.mark.parametrize(("damage", "seq", "column", "kind"), [b[1:] for b in BOTH],
                         ids=[b[0] for b in BOTH])
async def test_a_damaged_message_is_refused_on_every_read(store, damage, seq, column, kind):
    await _damaged_reads(store, damage, seq, column, kind)


@pytest.mark.parametrize(("damage", "seq", "column", "kind"), [b[1:] for b in SQLITE_ONLY],
                         ids=[b[0] for b in SQLITE_ONLY])
async def test_a_damaged_sqlite_message_is_refused_on_every_read(
    sqlite_store, damage, seq, column, kind
):
    await _damaged_reads(sqlite_store, damage, seq, column, kind)


async def test_an_unknown_role_of_a_counted_message_is_refused_by_a_turns_read(store):
    """A message whose token count is stored is read as wire text by a turn's build
    (SQLite); its role is refused there too, as by every other read."""
    conv = await _conversation(store)
    await _build(store, conv.id)  # (stores the counts)
    store.sql(f"UPDATE messages SET role = '{SECRET}' WHERE seq = 7")
    for read in (lambda: _build(store, conv.id), lambda: store.messages(conv.id)):
        with pytest.raises(StoredDataError) as info:
            await read()
        _check(info.value, "messages", "role", conv.id)


async def test_a_non_numeric_seq_is_refused_by_a_build(sqlite_store):
    store = sqlite_store
    conv = await _conversation(store)
    [(row_id,)] = store.sql("SELECT id FROM messages WHERE seq = 2")
    store.sql(f"UPDATE messages SET seq = '{SECRET}' WHERE seq = 2")
    before = store.snapshot()
    with pytest.raises(StoredDataError) as info:
        await _build(store, conv.id)
    _check(info.value, "messages", "seq", conv.id)
    assert info.value.row_id == row_id and f"id {row_id})" in str(info.value)
    assert "holds a str that convo cannot read (not an integer);" in str(info.value)
    assert store.snapshot() == before


# --- conversations, runs -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("damage", "column"),
    [(f"metadata = '[\"{SECRET}\"]'", "metadata")],
)
async def test_a_damaged_conversation_is_refused(store, damage, column):
    conv = await _conversation(store)
    store.sql(f"UPDATE conversations SET {damage}")
    before = store.snapshot()
    with pytest.raises(StoredDataError) as info:
        await store.get_conversation(conv.id)
    _check(info.value, "conversations", column, conv.id)
    with pytest.raises(StoredDataError) as info:
        await store.list_conversations()
    _check(info.value, "conversations", column, conv.id)
    assert store.snapshot() == before


@pytest.mark.parametrize(
    ("damage", "column"),
    [(f"metadata = '{{{SECRET}'", "metadata"), (f"created_at = '{SECRET}'", "created_at")],
)
async def test_a_damaged_sqlite_conversation_is_refused(sqlite_store, damage, column):
    store = sqlite_store
    conv = await _conversation(store)
    store.sql(f"UPDATE conversations SET {damage}")
    before = store.snapshot()
    with pytest.raises(StoredDataError) as info:
        await store.get_conversation(conv.id)
    _check(info.value, "conversations", column, conv.id)
    # a list of conversations is processed by SQLAlchemy: its rows are read again to
    # tell the column
    with pytest.raises(StoredDataError) as info:
        await store.list_conversations()
    _check(info.value, "conversations", column, conv.id)
    assert store.snapshot() == before


async def _run(store: Any) -> tuple[Any, Any]:
    conv = await store.create_conversation()
    run = await store.start_run(
        conv.id, endpoint="chat.completions", mode="chat", model="gpt-4o-mini",
        request={"model": "gpt-4o-mini", "messages": []}, settings={"budget": 5},
        kept_seqs=[1], metadata={"m": 1},
    )
    return conv, run


RUN_DAMAGES = [
    ("settings", f"settings = '[\"{SECRET}\"]'", "list", "not a JSON object"),
    ("metadata", f"metadata = '[\"{SECRET}\"]'", "list", "not a JSON object"),
    ("usage", f"usage = '[\"{SECRET}\"]'", "list", "not a JSON object"),
    ("response", f"response = '[\"{SECRET}\"]'", "list", "not a JSON object"),
    ("kept_seqs", f"kept_seqs = '{{\"{SECRET}\": 1}}'", "dict", "not a list of seqs"),
    ("kept_seqs", f"kept_seqs = '[1, \"{SECRET}\"]'", "list", "not a list of seqs"),
    ("status", f"status = '{SECRET}'", "str", "not a run status"),
]


@pytest.mark.parametrize(("column", "damage", "kind", "problem"), RUN_DAMAGES,
                         ids=[f"{d[0]}-{i}" for i, d in enumerate(RUN_DAMAGES)])
async def test_a_damaged_run_is_refused(store, column, damage, kind, problem):
    conv, run = await _run(store)
    whole = await store.start_run(conv.id, endpoint="completions", mode="completion",
                                  model="m", request={"prompt": "x"}, settings={"s": 1},
                                  kept_seqs=[2])
    whole = (await store.finish_run(whole.id, status="ok", usage={"total_tokens": 1},
                                    response={"id": "x"}, started=whole)).run
    store.sql(f"UPDATE runs SET {damage} WHERE id = :id", id=run.id)
    before = store.snapshot()
    # the checks refuse only what convo never writes: the other run reads as it was written
    assert await store.get_run(whole.id) == whole
    with pytest.raises(StoredDataError) as info:
        await store.get_run(run.id)
    _check(info.value, "runs", column, conv.id)
    assert info.value.row_id == run.id and f"id {run.id!r})" in str(info.value)
    assert f"holds a {kind} that convo cannot read ({problem});" in str(info.value)
    with pytest.raises(StoredDataError):
        await store.list_runs(conv.id)
    # finished without ``started``, the run is read back: refused, nothing written
    with pytest.raises(StoredDataError) as info:
        await store.finish_run(run.id, status="failed")
    _check(info.value, "runs", column, conv.id)
    assert info.value.row_id == run.id
    assert f"holds a {kind} that convo cannot read ({problem});" in str(info.value)
    assert store.snapshot() == before


@pytest.mark.parametrize("column", ["settings", "kept_seqs"])
async def test_a_run_with_json_that_is_not_json_is_refused(sqlite_store, column):
    store = sqlite_store
    conv, run = await _run(store)
    store.sql(f"UPDATE runs SET {column} = '[{SECRET}'")
    with pytest.raises(StoredDataError) as info:
        await store.get_run(run.id)
    _check(info.value, "runs", column, conv.id)
    assert info.value.row_id == run.id
    assert "holds a str that convo cannot read (not JSON)" in str(info.value)


# --- a turn --------------------------------------------------------------------------------


@pytest.mark.parametrize("damage", [f"role = '{SECRET}'", f"tool_calls = '[\"{SECRET}\"]'"])
async def test_a_turn_on_a_damaged_conversation_sends_nothing(env: Env, damage: str) -> None:
    """Chat.send stores the user message first (in its own transaction, as for any
    failure of the build), then its build refuses the damaged row: no request is sent,
    no run is recorded."""
    chat = env.chat()
    store = env.store
    conv = await _conversation(store)
    store.sql(f"UPDATE messages SET {damage} WHERE seq = 3")
    before = store.snapshot()
    with pytest.raises(StoredDataError) as info:
        await chat.send(conv.id, "more")
    column = "role" if damage.startswith("role") else "tool_calls"
    _check(info.value, "messages", column, conv.id)
    assert env.model_requests() == []
    after = store.snapshot()
    assert after["runs"] == before["runs"] == []
    assert after["messages"] == before["messages"] + 1  # the user message, as the turn stores it


# --- reads through SQLAlchemy (not the driver path) ---------------------------------------
# SQLAlchemy processes these rows itself and does not tell which value it failed on: the
# statement is run again and its rows read one value at a time, to name the column


#: (UPDATE ... SET, the seq damaged, the column named, the type found): what SQLite keeps
SEARCHED = [
    (f"created_at = '{SECRET}'", 2, "created_at", "str"),
    (f"metadata = '{{\"{SECRET}'", 2, "metadata", "str"),
    (f"usage = '{{\"{SECRET}'", 6, "usage", "str"),
]


@pytest.mark.parametrize(("damage", "seq", "column", "kind"), SEARCHED,
                         ids=[d[2] for d in SEARCHED])
async def test_search_names_the_column_it_cannot_read(sqlite_store, damage, seq, column, kind):
    store = sqlite_store
    conv = await _conversation(store)
    [(row_id,)] = store.sql("SELECT id FROM messages WHERE seq = :seq", seq=seq)
    store.sql(f"UPDATE messages SET {damage} WHERE seq = :seq", seq=seq)
    before = store.snapshot()
    for read in (lambda: store.search("", conversation_id=conv.id), lambda: store.search("")):
        with pytest.raises(StoredDataError) as info:
            await read()
        _check(info.value, "messages", column, conv.id)
        assert info.value.seq == seq and f"seq {seq})" in str(info.value)
        assert info.value.row_id == row_id
        assert f"holds a {kind} that convo cannot read (not " in str(info.value)
    assert store.snapshot() == before


@pytest.mark.parametrize(("damage", "column", "problem"), [
    (f"metadata = '{{\"{SECRET}'", "metadata", "not JSON"),
    (f"created_at = '{SECRET}'", "created_at", "not a timestamp"),
], ids=["metadata", "created_at"])
async def test_latest_summary_names_the_column_it_cannot_read(sqlite_store, damage, column, problem):
    store = sqlite_store
    conv = await _conversation(store)
    summary = await store.add_summary(conv.id, start_seq=1, end_seq=2, content="s",
                                      metadata={"m": 1})
    store.sql(f"UPDATE summaries SET {damage}")
    before = store.snapshot()
    with pytest.raises(StoredDataError) as info:
        await store.latest_summary(conv.id)
    _check(info.value, "summaries", column, conv.id)
    assert info.value.row_id == summary.id and f"id {summary.id!r})" in str(info.value)
    assert f"holds a str that convo cannot read ({problem});" in str(info.value)
    assert store.snapshot() == before


@pytest.mark.parametrize(("damage", "column", "problem"), [
    (f"settings = '[{SECRET}'", "settings", "not JSON"),
    (f"usage = '{{{SECRET}'", "usage", "not JSON"),
    (f"created_at = '{SECRET}'", "created_at", "not a timestamp"),
], ids=["settings", "usage", "created_at"])
async def test_run_lists_name_the_column_they_cannot_read(sqlite_store, damage, column, problem):
    store = sqlite_store
    conv = await store.create_conversation()
    run = await store.start_run(conv.id, endpoint="chat.completions", mode="chat", model="m",
                                request={"messages": []}, settings={"budget": 5},
                                idempotency_key="k")
    store.sql(f"UPDATE runs SET {damage} WHERE id = :id", id=run.id)
    before = store.snapshot()
    for read in (lambda: store.list_runs(conv.id), lambda: store.turn_runs(conv.id, "k")):
        with pytest.raises(StoredDataError) as info:
            await read()
        _check(info.value, "runs", column, conv.id)
        assert info.value.row_id == run.id and f"id {run.id!r})" in str(info.value)
        assert f"holds a str that convo cannot read ({problem});" in str(info.value)
    assert store.snapshot() == before


# --- a seq that is not an integer ----------------------------------------------------------


@pytest.mark.parametrize(("value", "kind"), [("2.5", "float"), ("'2.5'", "float")])
async def test_a_real_seq_is_refused_by_the_message_reads(sqlite_store, value, kind):
    """SQLite keeps a real number in the integer seq column; a seq range reads it."""
    store = sqlite_store
    conv = await _conversation(store)
    [(row_id,)] = store.sql("SELECT id FROM messages WHERE seq = 2")
    store.sql(f"UPDATE messages SET seq = {value}, content = '{SECRET}' WHERE seq = 2")
    before = store.snapshot()
    reads = {
        "messages": lambda: store.messages(conv.id),
        "newest_first": lambda: store.messages(conv.id, newest_first=True, limit=7),
        "get_message": lambda: store.get_message(conv.id, 3),  # (its range reads 2.5 first)
        "search": lambda: store.search(SECRET),
    }
    for name, read in reads.items():
        with pytest.raises(StoredDataError) as info:
            await read()
        _check(info.value, "messages", "seq", conv.id)
        assert info.value.row_id == row_id and f"id {row_id})" in str(info.value), name
        assert f"holds a {kind} that convo cannot read (not an integer);" in str(info.value)
    with pytest.raises(StoredDataError) as info:
        _ = [m async for m in store.iter_messages(conv.id)]
    _check(info.value, "messages", "seq", conv.id)
    assert store.snapshot() == before


@pytest.mark.parametrize(("value", "kind"), [(f"'{SECRET}'", "str"), (f"x'{SECRET.encode().hex()}'", "bytes")])
async def test_a_text_seq_is_refused_by_search(sqlite_store, value, kind):
    """Text (or a blob) in seq is beyond every seq range, so the reads by range do not
    meet it; a search does."""
    store = sqlite_store
    conv = await _conversation(store)
    [(row_id,)] = store.sql("SELECT id FROM messages WHERE seq = 2")
    store.sql(f"UPDATE messages SET seq = {value} WHERE seq = 2")
    for read in (lambda: store.search("hi"), lambda: store.search("")):
        with pytest.raises(StoredDataError) as info:
            await read()
        _check(info.value, "messages", "seq", conv.id)
        assert info.value.row_id == row_id and f"id {row_id})" in str(info.value)
        assert f"holds a {kind} that convo cannot read (not an integer);" in str(info.value)


# --- replays -------------------------------------------------------------------------------


async def _replay(store: Any) -> tuple[Any, Any, Any]:
    conv = await _conversation(store)
    replay = await store.create_replay("r" * 32, mode="continue", spec={"arms": ["a"]})
    other = await store.create_replay("q" * 32, mode="continue", spec={"arms": ["b"]})
    for rid in (replay.id, other.id):
        await store.save_replay_item(ReplayItem(
            replay_id=rid, conversation_id=conv.id, turn=0, arm="a", status="ok",
            user_seq=2, text="t", verdict={"v": 1},
        ))
    return conv, replay, other


def _replay_reads(store: Any, replay_id: str, table: str) -> dict[str, Any]:
    reads = {"items": lambda: store.replay_items(replay_id)}
    if table == "replays":
        reads["get"] = lambda: store.get_replay(replay_id)
        reads["list"] = lambda: store.list_replays()
    return reads


#: (table, UPDATE ... SET, the column named, the type found, the problem): both databases
REPLAY_DAMAGES = [
    ("replays", f"spec = '[\"{SECRET}\"]'", "spec", "list", "not a JSON object"),
    ("replay_items", f"verdict = '[\"{SECRET}\"]'", "verdict", "list", "not a JSON object"),
]
#: the same, for what only SQLite stores
SQLITE_REPLAY_DAMAGES = [
    ("replays", f"spec = '{{{SECRET}'", "spec", "str", "not JSON"),
    ("replays", f"created_at = '{SECRET}'", "created_at", "str", "not a timestamp"),
    ("replays", f"updated_at = '{SECRET}'", "updated_at", "str", "not a timestamp"),
    ("replay_items", f"verdict = '{{{SECRET}'", "verdict", "str", "not JSON"),
    ("replay_items", f"created_at = '{SECRET}'", "created_at", "str", "not a timestamp"),
]


async def _damaged_replay(store: Any, table: str, damage: str, column: str, kind: str,
                          problem: str) -> None:
    conv, replay, other = await _replay(store)
    where = "id" if table == "replays" else "replay_id"
    store.sql(f"UPDATE {table} SET {damage} WHERE {where} = :rid", rid=replay.id)
    # only the rows a call reads are checked: the other replay reads as it was written
    assert (await store.get_replay(other.id)) == other
    assert [i.verdict for i in await store.replay_items(other.id)] == [{"v": 1}]
    before = store.snapshot()
    for name, read in _replay_reads(store, replay.id, table).items():
        with pytest.raises(StoredDataError) as info:
            await read()
        _check(info.value, table, column, conv.id if table == "replay_items" else None)
        assert f"holds a {kind} that convo cannot read ({problem});" in str(info.value), name
        if table == "replays":
            assert info.value.row_id == replay.id and f"id {replay.id!r})" in str(info.value)
        else:  # (an item has no id of its own: its conversation is named)
            assert info.value.row_id is None and f"(conversation {conv.id!r})" in str(info.value)
    assert store.snapshot() == before


@pytest.mark.parametrize(("table", "damage", "column", "kind", "problem"), REPLAY_DAMAGES,
                         ids=[d[2] for d in REPLAY_DAMAGES])
async def test_a_damaged_replay_is_refused(store, table, damage, column, kind, problem):
    await _damaged_replay(store, table, damage, column, kind, problem)


@pytest.mark.parametrize(("table", "damage", "column", "kind", "problem"), SQLITE_REPLAY_DAMAGES,
                         ids=[f"{d[0]}-{d[2]}" for d in SQLITE_REPLAY_DAMAGES])
async def test_a_damaged_sqlite_replay_is_refused(sqlite_store, table, damage, column, kind,
                                                  problem):
    await _damaged_replay(sqlite_store, table, damage, column, kind, problem)


# --- set_pinned's second MessageNotFound ---------------------------------------------------


def test_a_message_gone_between_the_reads_and_the_pin_is_not_found():
    """set_pinned reads the conversation's lineage (and, to pin, the message's role),
    then updates the message's row; if the row is gone by then (the conversation was
    deleted meanwhile: a race, which cannot be made to happen on demand), the UPDATE
    matches nothing and the message is not found. The plan is driven by hand, given
    the values of that race."""
    from convo._store import core

    cid = "c" * 32
    for value in (True, False):
        plan = core.set_pinned(cid, 2, value, owner=None)
        next(plan)  # the lineage: parent_id, fork_seq, last_seq, owner, lineage
        op = plan.send((None, None, 3, None, None))
        if value:  # pinning reads the message's role and tool calls first
            assert op.fetch == "first"
            op = plan.send(("user", None))
        assert op.fetch == "rowcount" and op.stmt.is_dml
        with pytest.raises(MessageNotFound) as info:
            plan.send(0)  # the UPDATE matched no row
        assert str(info.value) == f"conversation {cid!r} has no message 2"
