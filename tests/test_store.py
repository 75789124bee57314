"""Store: conversations, messages, idempotency, owner scoping, bad input, search.

Every test runs four times: SQLite / PostgreSQL x sync / async (see conftest ``store``).
"""

from __future__ import annotations

import asyncio
import re
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from convo import InvalidMessageError, Message
from convo._exceptions import (
    ConversationNotFound,
    ForkConflictError,
    MessageNotFound,
    StoreError,
    StoreInputError,
)
from convo._messages import FunctionCall, ImagePart, ImageURL, TextPart, ToolCall
from convo._records import ReplyInfo
from convo._store.async_store import AsyncStore
from convo._store.schema import SCHEMA_REVISION
from convo._store.store import Store


def user(text: str, **kw: Any) -> dict[str, Any]:
    return {"role": "user", "content": text, **kw}


# --- conversations ------------------------------------------------------------------------


async def test_create_and_get_conversation(store):
    before = datetime.now(UTC)
    conv = await store.create_conversation(title="Trip", owner="alice", metadata={"lang": "fr"})
    assert re.fullmatch(r"[0-9a-f]{32}", conv.id)
    assert (conv.title, conv.owner, conv.metadata) == ("Trip", "alice", {"lang": "fr"})
    assert conv.created_at.tzinfo is UTC and conv.created_at == conv.updated_at
    assert before - timedelta(seconds=1) <= conv.created_at <= datetime.now(UTC)
    assert (conv.parent_id, conv.fork_seq, conv.last_seq) == (None, None, 0)
    assert await store.get_conversation(conv.id) == conv
    assert await store.get_conversation(conv.id, owner="alice") == conv


async def test_conversation_ids_sort_by_creation_time(store):
    ids = [(await store.create_conversation()).id for _ in range(3)]
    assert ids[0][:12] <= ids[1][:12] <= ids[2][:12]
    assert len(set(ids)) == 3


async def test_get_missing_conversation(store):
    with pytest.raises(ConversationNotFound) as info:
        await store.get_conversation("0" * 32)
    assert isinstance(info.value, KeyError)
    assert "0" * 32 in str(info.value)


async def test_update_conversation(store):
    conv = await store.create_conversation(title="a", metadata={"k": 1})
    renamed = await store.update_conversation(conv.id, title="b")
    assert (renamed.title, renamed.metadata) == ("b", {"k": 1})
    assert renamed.updated_at >= conv.updated_at
    remeta = await store.update_conversation(conv.id, metadata={"k": 2, "x": [1, None]})
    assert (remeta.title, remeta.metadata) == ("b", {"k": 2, "x": [1, None]})
    cleared = await store.update_conversation(conv.id, title=None, metadata=None)
    assert (cleared.title, cleared.metadata) == (None, {})
    assert await store.get_conversation(conv.id) == cleared
    with pytest.raises(ConversationNotFound):
        await store.update_conversation("f" * 32, title="x")


async def test_delete_conversation_removes_everything(store):
    keep = await store.create_conversation()
    await store.append(keep.id, user("stays"))
    conv = await store.create_conversation()
    msgs = await store.append_many(conv.id, [user("a"), user("b")])
    await store.save_token_counts("enc", {m.id: 3 for m in msgs})
    await store.add_summary(conv.id, start_seq=1, end_seq=2, content="s")
    await store.delete_conversation(conv.id)
    with pytest.raises(ConversationNotFound):
        await store.get_conversation(conv.id)
    with pytest.raises(ConversationNotFound):
        await store.delete_conversation(conv.id)
    assert (store.count("conversations"), store.count("messages")) == (1, 1)
    assert (store.count("message_tokens"), store.count("summaries")) == (0, 0)


async def test_delete_refuses_parent_of_live_forks(store):
    root = await store.create_conversation()
    await store.append_many(root.id, [user("1"), user("2")])
    child = await store.fork(root.id)
    grandchild = await store.fork(child.id)
    other = await store.create_conversation()
    before = store.snapshot()
    with pytest.raises(ForkConflictError):
        await store.delete_conversation(root.id)
    with pytest.raises(ForkConflictError):
        await store.delete_conversation(child.id)
    assert store.snapshot() == before
    await store.delete_conversation(grandchild.id)  # a leaf may go
    await store.delete_conversation(root.id, cascade_forks=True)
    for gone in (root, child, grandchild):
        with pytest.raises(ConversationNotFound):
            await store.get_conversation(gone.id)
    assert await store.get_conversation(other.id) == other
    assert store.count("messages") == 0


# --- listing ------------------------------------------------------------------------------


async def test_list_newest_first_and_append_bumps(store):
    convs = [await store.create_conversation(title=str(i)) for i in range(3)]
    page = await store.list_conversations()
    assert [c.id for c in page.items] == [c.id for c in reversed(convs)]
    assert page.next_cursor is None
    await store.append(convs[0].id, user("hi"))
    page = await store.list_conversations()
    assert page.items[0].id == convs[0].id and page.items[0].last_seq == 1


async def test_list_pagination_is_stable_under_ties(store):
    convs = [await store.create_conversation(title=str(i)) for i in range(7)]
    # Same updated_at for all: the id breaks ties, no row is lost or repeated.
    store.sql("UPDATE conversations SET updated_at = (SELECT min(updated_at) FROM conversations)")
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        page = await store.list_conversations(limit=3, cursor=cursor)
        pages += 1
        seen += [c.id for c in page.items]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert pages == 3
    assert seen == sorted((c.id for c in convs), reverse=True)


async def test_list_filters(store):
    a = await store.create_conversation(owner="alice", metadata={"topic": "x", "n": 1, "ok": True})
    b = await store.create_conversation(owner="bob", metadata={"topic": "x", "n": "1", "ok": 1})
    c = await store.create_conversation(owner="alice", metadata={"tags": ["a", "b"], "n": 1.0})

    async def ids(**kw: Any) -> set[str]:
        return {x.id for x in (await store.list_conversations(**kw)).items}

    assert await ids(owner="alice") == {a.id, c.id}
    assert await ids(owner="carol") == set()
    assert await ids(metadata={"topic": "x"}) == {a.id, b.id}
    assert await ids(metadata={"n": 1}) == {a.id, c.id}  # JSON numbers: 1 == 1.0, not "1"
    assert await ids(metadata={"n": "1"}) == {b.id}
    assert await ids(metadata={"ok": True}) == {a.id}  # true is not 1
    assert await ids(metadata={"tags": ["a", "b"]}) == {c.id}
    assert await ids(metadata={"topic": "x"}, owner="bob") == {b.id}
    assert await ids(metadata={"missing": None}) == set()


async def test_list_time_filters(store):
    first = await store.create_conversation()
    await asyncio.sleep(0.01)
    second = await store.create_conversation()
    await asyncio.sleep(0.01)
    await store.append(first.id, user("bump"))
    first = await store.get_conversation(first.id)

    async def ids(**kw: Any) -> list[str]:
        return [x.id for x in (await store.list_conversations(**kw)).items]

    assert await ids(created_after=first.created_at) == [second.id]
    assert await ids(created_before=second.created_at) == [first.id]
    assert await ids(updated_after=second.updated_at) == [first.id]
    assert await ids(updated_before=first.updated_at) == [second.id]
    naive = second.created_at.replace(tzinfo=None)  # naive means UTC
    assert await ids(created_before=naive) == [first.id]


async def test_list_bad_arguments(store):
    with pytest.raises(StoreInputError):
        await store.list_conversations(cursor="not a cursor")
    with pytest.raises(StoreInputError):
        await store.list_conversations(limit=0)
    with pytest.raises(StoreInputError):
        await store.list_conversations(metadata={"k": object()})


# --- appending and reading ----------------------------------------------------------------


ALL_KINDS = [
    Message.system("be brief"),
    Message.developer("dev rules", metadata={"v": 2}),
    Message.user([TextPart(text="look at "), ImagePart(image_url=ImageURL(url="http://x/y.png", detail="low")), TextPart(text="this")], name="ann"),
    Message.assistant(tool_calls=[ToolCall(id="call_1", function=FunctionCall(name="f", arguments='{"a": 1}'))]),
    Message.tool("42", tool_call_id="call_1"),
    Message.assistant(refusal="no"),
    Message.assistant("ünïcödé ✓ text\nwith \"quotes\"", metadata={"nested": {"a": [1, 2.5, None, "s"]}}),
    Message.user(""),
]


async def test_append_roundtrips_every_message_kind(store):
    conv = await store.create_conversation()
    written = [await store.append(conv.id, m) for m in ALL_KINDS]
    assert [w.seq for w in written] == list(range(1, len(ALL_KINDS) + 1))
    read = await store.messages(conv.id)
    assert read == written
    assert [r.as_message() for r in read] == ALL_KINDS
    assert all(r.conversation_id == conv.id and r.created_at.tzinfo is UTC for r in read)
    assert read[2].text == "look at this"
    # Values built from rows without validation equal validated ones.
    for value in [*read, await store.get_conversation(conv.id)]:
        assert type(value).model_validate(value.model_dump()) == value
    assert (await store.get_conversation(conv.id)).last_seq == len(ALL_KINDS)


async def test_append_accepts_dicts_and_reply_info(store):
    conv = await store.create_conversation()
    reply = ReplyInfo(model="gpt-x", finish_reason="stop", usage={"prompt_tokens": 3, "completion_tokens": 1},
                      system_fingerprint="fp_1", seed=2**40)
    stored = await store.append(conv.id, {"role": "assistant", "content": "hi"}, reply=reply)
    assert stored.reply == reply
    [read] = await store.messages(conv.id)
    assert read.reply == reply and read == stored


async def test_pinned_defaults(store):
    conv = await store.create_conversation()
    stored = await store.append_many(
        conv.id, [Message.system("s"), Message.developer("d"), Message.user("u")]
    )
    assert [m.pinned for m in stored] == [True, True, False]
    assert (await store.append(conv.id, user("pin me"), pinned=True)).pinned
    assert not (await store.append(conv.id, Message.system("unpinned"), pinned=False)).pinned
    assert [m.pinned for m in await store.messages(conv.id)] == [True, True, False, True, False]


async def test_append_many_is_consecutive_and_one_transaction(store):
    conv = await store.create_conversation()
    await store.append(conv.id, user("0"))
    batch = await store.append_many(conv.id, [user(str(i)) for i in range(1, 6)])
    assert [m.seq for m in batch] == [2, 3, 4, 5, 6]
    assert [m.text for m in batch] == ["1", "2", "3", "4", "5"]
    assert await store.messages(conv.id, after=1) == batch
    before = store.snapshot()
    with pytest.raises(InvalidMessageError):
        await store.append_many(conv.id, [user("ok"), {"role": "robot", "content": "x"}])
    assert store.snapshot() == before
    assert await store.append_many(conv.id, []) == []
    with pytest.raises(ConversationNotFound):
        await store.append_many("0" * 32, [])


async def test_append_many_of_mixed_messages_returns_what_is_read_back(store):
    """One batch whose messages fill different columns (one column list for the whole
    batch, NULL where a message has none), given as dicts and as messages alike."""
    conv = await store.create_conversation()
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    batch = [
        {"role": "system", "content": "rules", "metadata": {"v": 1}},
        user("plain"),
        {"role": "user", "content": [{"type": "text", "text": "parts"}], "name": "ann"},
        {"role": "assistant", "tool_calls": [call]},
        {"role": "tool", "content": "42", "tool_call_id": "c1"},
        {"role": "assistant", "refusal": "no"},
        Message.user("a message value", metadata={"k": [1, None]}),
        user("plain again"),
    ]
    stored = await store.append_many(conv.id, batch)
    assert [m.seq for m in stored] == list(range(1, 9))
    assert await store.messages(conv.id) == stored
    assert [m.pinned for m in stored] == [True] + [False] * 7
    assert stored[1].metadata == {} and stored[1].name is None and stored[1].tool_calls is None
    assert stored[2].name == "ann" and stored[2].text == "parts"
    assert stored[3].tool_calls is not None and stored[3].content is None
    assert stored[6].metadata == {"k": [1, None]}
    # a bad message among dicts: named, nothing written
    before = store.snapshot()
    with pytest.raises(InvalidMessageError, match=r"tool_call_id|tool message"):
        await store.append_many(conv.id, [user("fine"), {"role": "tool", "content": "x"}])
    assert store.snapshot() == before


async def test_reading_windows(store):
    conv = await store.create_conversation()
    await store.append_many(conv.id, [user(str(i)) for i in range(1, 11)])

    async def seqs(**kw: Any) -> list[int]:
        return [m.seq for m in await store.messages(conv.id, **kw)]

    assert await seqs() == list(range(1, 11))
    assert await seqs(after=7) == [8, 9, 10]
    assert await seqs(before=3) == [1, 2]
    assert await seqs(after=2, before=6) == [3, 4, 5]
    assert await seqs(limit=3) == [1, 2, 3]
    assert await seqs(limit=3, newest_first=True) == [10, 9, 8]
    assert await seqs(before=8, limit=2, newest_first=True) == [7, 6]
    assert await seqs(after=10) == []
    assert (await store.get_message(conv.id, 4)).text == "4"
    assert await store.count_messages(conv.id) == 10
    for bad in (0, 11):
        with pytest.raises(MessageNotFound):
            await store.get_message(conv.id, bad)
    with pytest.raises(StoreInputError):
        await store.messages(conv.id, limit=0)


async def test_iter_messages_pages_lazily(store):
    conv = await store.create_conversation()
    await store.append_many(conv.id, [user(str(i)) for i in range(1, 11)])
    got = [m.seq async for m in store.iter_messages(conv.id, page_size=3)]
    assert got == list(range(1, 11))
    got = [m.seq async for m in store.iter_messages(conv.id, page_size=4, newest_first=True)]
    assert got == list(range(10, 0, -1))
    got = [m.seq async for m in store.iter_messages(conv.id, page_size=2, after=5, before=9)]
    assert got == [6, 7, 8]
    with store.statements() as seen:
        it = store.iter_messages(conv.id, page_size=3)
        assert (await it.__anext__()).seq == 1
        await it.aclose()
    assert sum("FROM messages" in s for s in seen) == 1  # one page read, not the thread


# --- idempotency -----------------------------------------------------------------------------


async def test_idempotent_append_sequential(store):
    conv = await store.create_conversation()
    first = await store.append(conv.id, user("hello"), idempotency_key="req-1")
    before = store.snapshot()
    again = await store.append(conv.id, user("something else"), idempotency_key="req-1")
    assert again == first and again.idempotency_key == "req-1"
    assert store.snapshot() == before  # nothing written, counter and updated_at unchanged
    other = await store.create_conversation()
    elsewhere = await store.append(other.id, user("hello"), idempotency_key="req-1")
    assert elsewhere.conversation_id == other.id and elsewhere.seq == 1
    nxt = await store.append(conv.id, user("next"), idempotency_key="req-2")
    assert nxt.seq == 2


async def test_idempotent_append_racing_writers(store):
    conv = await store.create_conversation()
    writers = 6
    rounds = 3
    for r in range(rounds):
        key = f"race-{r}"
        if store.is_async:
            # One store, several pooled connections: real concurrent transactions.
            results = await asyncio.gather(*[
                store.append(conv.id, user(f"w{i}"), idempotency_key=key) for i in range(writers)
            ])
        else:
            results = _race_threads(store.url, conv.id, key, writers)
        assert len({m.id for m in results}) == 1, results
        assert len({m.text for m in results}) == 1
    rows = store.sql("SELECT seq, idempotency_key FROM messages ORDER BY seq")
    assert [tuple(r) for r in rows] == [(r + 1, f"race-{r}") for r in range(rounds)]
    assert (await store.get_conversation(conv.id)).last_seq == rounds


def _race_threads(url: Any, conversation_id: str, key: str, n: int) -> list[Any]:
    stores = [Store(url) for _ in range(n)]
    for s in stores:
        s.check_schema()
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            barrier.wait()
            results[i] = stores[i].append(conversation_id, user(f"t{i}"), idempotency_key=key)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in stores:
        s.close()
    assert not errors, errors
    return results


# --- bad input ---------------------------------------------------------------------------------


BAD_MESSAGES = [
    ({"role": "robot", "content": "beep"}, "unknown role"),
    ({"role": "tool", "content": "42"}, "tool_call_id"),
    ({"role": "assistant"}, "content, tool_calls or a refusal"),
    ({"role": "user", "content": "x", "metadata": {"bad": {1, 2}}}, "metadata"),
]


@pytest.mark.parametrize("message, why", BAD_MESSAGES, ids=["role", "tool", "empty", "metadata"])
async def test_bad_message_is_typed_and_writes_nothing(store, message, why):
    conv = await store.create_conversation()
    await store.append(conv.id, user("existing"))
    before = store.snapshot()
    with pytest.raises(InvalidMessageError, match=why):
        await store.append(conv.id, message)
    with pytest.raises(InvalidMessageError):
        await store.append_many(conv.id, [user("fine"), message])
    assert store.snapshot() == before


async def test_bad_input_elsewhere_writes_nothing(store):
    conv = await store.create_conversation()
    await store.append(conv.id, user("existing"))
    before = store.snapshot()
    with pytest.raises(ConversationNotFound):
        await store.append("0" * 32, user("lost?"))
    with pytest.raises(StoreInputError):
        await store.create_conversation(metadata={"when": datetime.now()})
    with pytest.raises(StoreInputError):
        await store.update_conversation(conv.id, metadata={"f": object()})
    with pytest.raises(StoreInputError):
        await store.append(conv.id, user("x"), reply=ReplyInfo(usage={"x": object()}))
    with pytest.raises(StoreInputError):
        await store.add_summary(conv.id, start_seq=1, end_seq=1, content="s", metadata={"x": {1}})
    with pytest.raises(StoreInputError):
        await store.add_summary(conv.id, start_seq=1, end_seq=2, content="beyond last_seq")
    with pytest.raises(StoreInputError):
        await store.add_summary(conv.id, start_seq=0, end_seq=1, content="before seq 1")
    assert store.snapshot() == before


# --- owner scoping ----------------------------------------------------------------------------


async def test_owner_scoping_never_leaks(store):
    mine = await store.create_conversation(owner="alice", title="mine")
    await store.append(mine.id, user("secret plans"), owner="alice")
    theirs = await store.create_conversation(owner="bob", title="theirs")
    await store.append(theirs.id, user("bob's secret"), owner="bob")
    before = store.snapshot()
    calls = [
        lambda: store.get_conversation(theirs.id, owner="alice"),
        lambda: store.update_conversation(theirs.id, title="pwned", owner="alice"),
        lambda: store.delete_conversation(theirs.id, owner="alice"),
        lambda: store.append(theirs.id, user("hi"), owner="alice"),
        lambda: store.append_many(theirs.id, [user("hi")], owner="alice"),
        lambda: store.messages(theirs.id, owner="alice"),
        lambda: store.get_message(theirs.id, 1, owner="alice"),
        lambda: store.count_messages(theirs.id, owner="alice"),
        lambda: store.fork(theirs.id, owner="alice"),
        lambda: store.tail(theirs.id, encoding="e", owner="alice"),
        lambda: store.pinned(theirs.id, encoding="e", owner="alice"),
        lambda: store.set_pinned(theirs.id, 1, True, owner="alice"),
        lambda: store.add_summary(theirs.id, start_seq=1, end_seq=1, content="s", owner="alice"),
        lambda: store.latest_summary(theirs.id, owner="alice"),
        lambda: store.search("secret", conversation_id=theirs.id, owner="alice"),
    ]
    for call in calls:
        with pytest.raises(ConversationNotFound) as info:
            await call()
        assert "alice" in str(info.value)
    assert store.snapshot() == before
    assert [c.id for c in (await store.list_conversations(owner="alice")).items] == [mine.id]
    assert [m.text for m in await store.search("secret", owner="alice")] == ["secret plans"]
    fork = await store.fork(mine.id, owner="alice")
    assert fork.owner == "alice"


# --- search ---------------------------------------------------------------------------------------


async def test_search(store):
    a = await store.create_conversation(owner="u")
    b = await store.create_conversation(owner="u")
    await store.append_many(a.id, [
        user("The Quick brown fox"),
        user("50% off today"),
        user("5000 items"),
        user("snake_case name"),
        user("snakeXcase"),
        Message.user([TextPart(text="parts with QUICK text")]),
        Message.assistant(tool_calls=[ToolCall(id="c", function=FunctionCall(name="quick", arguments="{}"))]),
    ])
    await store.append(b.id, user("quick in b"))

    async def texts(q: str, **kw: Any) -> list[str]:
        return [m.text for m in await store.search(q, **kw)]

    assert await texts("quick") == ["quick in b", "parts with QUICK text", "The Quick brown fox"]
    assert await texts("quick", conversation_id=a.id) == ["parts with QUICK text", "The Quick brown fox"]
    assert await texts("quick", limit=1) == ["quick in b"]
    assert await texts("50%") == ["50% off today"]  # % is literal, not a wildcard
    assert await texts("snake_case") == ["snake_case name"]  # so is _
    assert await texts("nothing like this") == []
    fork = await store.fork(a.id, at=1)
    await store.append(fork.id, user("quick in the fork"))
    assert await texts("quick", conversation_id=fork.id) == ["quick in the fork", "The Quick brown fox"]
    with pytest.raises(StoreInputError):
        await store.search("x", limit=0)


# --- shells -----------------------------------------------------------------------------------------


async def test_store_kind_and_repr(store):
    assert isinstance(store.raw, AsyncStore if store.is_async else Store)
    assert repr(store.raw).startswith(("Store('", "AsyncStore('"))
    assert store.backend in repr(store.raw)
    assert await store.current_revision() == SCHEMA_REVISION
    assert await store.is_migrated()


async def test_over_long_short_texts_are_refused_alike_on_both_databases(store):
    conv = await store.create_conversation()
    before = store.snapshot()
    long = "x" * 256
    with pytest.raises(StoreInputError, match="owner is 256 characters"):
        await store.create_conversation(owner=long)
    with pytest.raises(StoreInputError, match="name is 256 characters"):
        await store.append(conv.id, {"role": "user", "content": "hi", "name": long})
    with pytest.raises(StoreInputError, match="idempotency_key"):
        await store.append(conv.id, {"role": "user", "content": "hi"}, idempotency_key=long)
    assert store.snapshot() == before
    ok = await store.append(conv.id, {"role": "user", "content": "hi", "name": "x" * 255})
    assert ok.name == "x" * 255


async def test_over_long_finish_reason_is_refused_before_any_write(store):
    """The finish_reason column holds 64 characters (not the 255 of the other short
    texts): a longer one is a typed error before any write, on both databases."""
    conv = await store.create_conversation()
    before = store.snapshot()
    for call in (
        lambda r: store.append(conv.id, Message.assistant("a"), reply=r),
        lambda r: store.append(conv.id, Message.assistant("a"), reply=r, idempotency_key="k"),
    ):
        with pytest.raises(StoreInputError, match="finish_reason is 65 characters long; at most 64"):
            await call(ReplyInfo(model="m", finish_reason="f" * 65))
    assert store.snapshot() == before
    ok = await store.append(conv.id, Message.assistant("a"), reply=ReplyInfo(finish_reason="f" * 64))
    assert ok.reply is not None and ok.reply.finish_reason == "f" * 64
    assert (await store.messages(conv.id))[-1].reply == ok.reply


async def test_hot_read_path_gives_what_sqlalchemy_gives(store):
    """Reads of messages run on the DBAPI cursor unless cursor events are observed;
    both routes must return equal values (JSON, datetimes, reply info, parts)."""
    conv = await store.create_conversation()
    call = ToolCall(id="c1", function=FunctionCall(name="f", arguments='{"x": 1}'))
    await store.append_many(conv.id, [
        Message.system("s", metadata={"k": [1, {"a": None}]}),
        Message.user([TextPart(text="look"), ImagePart(image_url=ImageURL(url="data:,x"))], name="ann"),
        Message.assistant(tool_calls=[call]),
        Message.tool("42", tool_call_id="c1"),
    ])
    await store.append(conv.id, Message.assistant("done"), reply=ReplyInfo(model="m", usage={"total_tokens": 3}, seed=7))
    fast = await store.messages(conv.id)
    fast_tail = await store.tail(conv.id, encoding="o200k_base", limit=3)
    with store.statements() as seen:  # a cursor listener: statements go through SQLAlchemy
        slow = await store.messages(conv.id)
        slow_tail = await store.tail(conv.id, encoding="o200k_base", limit=3)
    assert any("FROM messages" in s for s in seen)
    assert fast == slow and fast_tail == slow_tail
    assert fast[-1].reply == ReplyInfo(model="m", usage={"total_tokens": 3}, seed=7)
    assert fast[0].metadata == {"k": [1, {"a": None}]} and fast[0].created_at.tzinfo is not None


async def test_tool_calls_and_results_cannot_be_pinned(store):
    conv = await store.create_conversation()
    call = ToolCall(id="c1", function=FunctionCall(name="f", arguments="{}"))
    stored = await store.append_many(conv.id, [Message.user("q"), Message.assistant(tool_calls=[call]), Message.tool("r", tool_call_id="c1")])
    before = store.snapshot()
    for seq in (2, 3):
        with pytest.raises(StoreInputError, match="cannot pin"):
            await store.set_pinned(conv.id, seq, True)
    with pytest.raises(StoreInputError, match="pin the turn's user message"):
        await store.append(conv.id, Message.tool("again", tool_call_id="c1"), pinned=True)
    assert store.snapshot() == before
    await store.set_pinned(conv.id, stored[0].seq, True)  # the turn's user message: fine
    await store.set_pinned(conv.id, 2, False)  # unpinning is always allowed


async def test_driver_errors_on_the_hot_read_path_are_store_errors(store):
    conv = await store.create_conversation()
    await store.append(conv.id, user("hi"))
    store.sql("ALTER TABLE message_tokens RENAME TO message_tokens_gone")
    try:
        with pytest.raises(StoreError, match="database error"):
            await store.tail(conv.id, encoding="o200k_base")
    finally:
        store.sql("ALTER TABLE message_tokens_gone RENAME TO message_tokens")
    assert len(await store.tail(conv.id, encoding="o200k_base")) == 1  # the store still works
