"""Store edge cases that one plausible slip in the store core would get wrong.

Every test runs four times: SQLite / PostgreSQL x sync / async (see conftest ``store``).
"""

from __future__ import annotations

from typing import Any

import pytest

from convo._exceptions import (
    ConversationNotFound,
    ForkConflictError,
    InvalidMessageError,
    MessageNotFound,
    StoreInputError,
)
from convo._messages import Message
from convo._store import sql


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


async def test_cascading_delete_takes_forks_of_forks(store):
    root = await store.create_conversation()
    await store.append_many(root.id, [user("1"), user("2")])
    child = await store.fork(root.id)
    await store.append(child.id, user("child 3"))
    grandchild = await store.fork(child.id)
    await store.append(grandchild.id, user("grandchild 4"))
    great = await store.fork(grandchild.id, at=2)
    sibling = await store.fork(root.id, at=1)
    other = await store.create_conversation()
    await store.append(other.id, user("unrelated"))
    await store.delete_conversation(root.id, cascade_forks=True)
    for gone in (root, child, grandchild, great, sibling):
        with pytest.raises(ConversationNotFound):
            await store.get_conversation(gone.id)
    assert (await store.get_conversation(other.id)).last_seq == 1
    assert (store.count("conversations"), store.count("messages")) == (1, 1)


async def test_cascading_delete_of_a_fork_leaves_its_ancestors(store):
    root = await store.create_conversation()
    await store.append_many(root.id, [user("1"), user("2")])
    child = await store.fork(root.id)
    grandchild = await store.fork(child.id)
    await store.append(grandchild.id, user("3"))
    await store.delete_conversation(child.id, cascade_forks=True)
    assert [m.text for m in await store.messages(root.id)] == ["1", "2"]
    with pytest.raises(ConversationNotFound):
        await store.get_conversation(grandchild.id)


async def test_refusal_names_every_descendant(store):
    root = await store.create_conversation()
    await store.append(root.id, user("1"))
    child = await store.fork(root.id)
    await store.fork(child.id)
    await store.fork(root.id)
    before = store.snapshot()
    with pytest.raises(ForkConflictError) as err:
        await store.delete_conversation(root.id)
    assert str(err.value) == (f"conversation {root.id!r} has 3 fork(s) that share its messages; "
                              "delete them first or pass cascade_forks=True")
    assert store.snapshot() == before


# --- metadata filters: JSON equality, type-exact ------------------------------------------


async def test_metadata_filters_compare_json_values_exactly(store):
    a = await store.create_conversation(metadata={
        "none": None, "no": False, "n": 1, "topic": "x", "cfg": {"a": 1, "b": [1, 2]},
        "a.b c": "q", "tags": ["a"],
    })
    b = await store.create_conversation(metadata={
        "none": 0, "no": 0, "n": 2, "topic": "y", "cfg": {"a": 2}, "a.b c": "r", "tags": ["b"],
    })

    async def ids(**filters: Any) -> set[str]:
        return {c.id for c in (await store.list_conversations(metadata=filters)).items}

    assert await ids(none=None) == {a.id}
    assert await ids(no=False) == {a.id} and await ids(no=True) == set()
    assert await ids(n=2) == {b.id} and await ids(n=3) == set()
    assert await ids(topic="y") == {b.id} and await ids(topic="z") == set()
    assert await ids(cfg={"a": 1, "b": [1, 2]}) == {a.id}
    assert await ids(cfg={"a": 3}) == set()
    assert await ids(tags=["b"]) == {b.id} and await ids(tags=["c"]) == set()
    assert await ids(**{"a.b c": "q"}) == {a.id}  # a key that needs quoting in a JSON path


async def test_metadata_filters_compare_objects_and_arrays_as_jsonb_does(store):
    # Both databases answer alike: objects whatever their key order (SQLite keeps the
    # order they were written in), arrays in order, numbers by value, types exactly.
    stored = {"cfg": {"a": 1, "b": [1, {"x": 2.0, "y": None}], "c": {"d": True}}}
    a = await store.create_conversation(metadata=stored)
    await store.create_conversation(metadata={"cfg": {"a": 1}})

    async def ids(value: Any) -> set[str]:
        return {c.id for c in (await store.list_conversations(metadata={"cfg": value})).items}

    same = [
        {"c": {"d": True}, "b": [1, {"y": None, "x": 2}], "a": 1},
        {"b": [1.0, {"x": 2, "y": None}], "a": 1.0, "c": {"d": True}},
    ]
    for value in same:
        assert await ids(value) == {a.id}, value
    different = [
        {"a": 1, "b": [{"x": 2, "y": None}, 1], "c": {"d": True}},  # array order
        {"a": 1, "b": [1, {"x": 2, "y": None}], "c": {"d": 1}},  # true is not 1
        {"a": 1, "b": [1, {"x": "2", "y": None}], "c": {"d": True}},  # "2" is not 2
        {"a": 1, "b": [1, {"x": 2}], "c": {"d": True}},  # a key missing
        {"a": 1, "b": [1, {"x": 2, "y": None, "z": 0}], "c": {"d": True}},  # one more
        {"a": 1, "b": [1, {"x": 2, "y": None}], "c": {"d": True}, "e": None},
        {"a": 1, "b": [1, {"x": 2, "y": None}, 3], "c": {"d": True}},
        {"a": 1, "b": [1, {"x": 2, "y": False}], "c": {"d": True}},  # null is not false
        [1], {},
    ]
    for value in different:
        assert await ids(value) == set(), value
    assert await ids({"a": 1}) != {a.id}  # the other conversation's


async def test_metadata_filter_pages_stay_full_when_sqlite_rechecks_rows(store):
    # Conversations whose value has the right type but other members come between
    # the matches: every page still holds `limit` matches, and the cursors walk each
    # match exactly once, newest first.
    want = []
    for i in range(24):
        match = i % 3 == 0
        conv = await store.create_conversation(
            metadata={"tags": {"y": 1, "x": [i % 2]} if match else {"x": [9], "y": 1}, "n": i})
        if match:
            want.append(conv.id)
    seen, cursor = [], None
    while True:
        page = await store.list_conversations(
            metadata={"tags": {"x": [0], "y": 1}}, limit=2, cursor=cursor)
        assert len(page.items) == 2 or page.next_cursor is None
        seen += [c.id for c in page.items]
        cursor = page.next_cursor
        if cursor is None:
            break
    expected = [c for c in want if want.index(c) % 2 == 0]  # i % 2 == 0 among i % 3 == 0
    assert seen == list(reversed(expected))


async def test_rechecked_pages_walk_conversations_updated_at_one_instant_by_id(store):
    """Conversations with one updated_at (an import, a bulk update) are ordered by id: a
    page that reads on past rows the recheck dropped continues after the last row read,
    by its id, so every match comes exactly once, highest id first."""
    ids = sorted([(await store.create_conversation()).id for _ in range(12)], reverse=True)
    want = ids[2::3]  # in id order: two dropped rows, then a match (pages of 3 rows)
    for cid in ids:
        tags = {"x": [0], "y": 1} if cid in want else {"x": [9], "y": 1}
        await store.update_conversation(cid, metadata={"tags": tags})
    store.sql("UPDATE conversations SET updated_at = (SELECT MIN(updated_at) FROM conversations)")
    seen, cursor = [], None
    while True:
        page = await store.list_conversations(
            metadata={"tags": {"x": [0], "y": 1}}, limit=2, cursor=cursor)
        seen += [c.id for c in page.items]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == want


async def test_a_metadata_filter_never_takes_true_for_1_whichever_side_holds_it(store):
    # JSONB: true is not 1, whether the stored member or the filter's is the bool
    # (SQLite re-checks objects and arrays member by member: both orders there).
    one = await store.create_conversation(metadata={"cfg": {"d": 1}, "arr": [1, 0]})
    true = await store.create_conversation(metadata={"cfg": {"d": True}, "arr": [True, False]})

    async def ids(**filters: Any) -> set[str]:
        return {c.id for c in (await store.list_conversations(metadata=filters)).items}

    assert await ids(cfg={"d": True}) == {true.id} and await ids(cfg={"d": 1}) == {one.id}
    assert await ids(arr=[True, False]) == {true.id} and await ids(arr=[1, 0]) == {one.id}
    assert await ids(arr=[1.0, 0.0]) == {one.id}


async def test_metadata_filters_that_are_not_json_say_so(store):
    with pytest.raises(StoreInputError) as err:
        await store.list_conversations(metadata={1: "x"})
    assert str(err.value) == "metadata must be a JSON object with string keys (got key 1)"
    with pytest.raises(StoreInputError) as err:
        await store.list_conversations(metadata={"when": {1, 2}})
    assert str(err.value) == "metadata.when is not a JSON value (got set)"


# --- scoping, limits and the words of errors ------------------------------------------------


async def test_owner_scoping_of_reads_and_writes(store):
    conv = await store.create_conversation(owner="alice")
    await store.append_many(conv.id, [user("1"), user("2")])
    assert [m.text for m in await store.messages(conv.id, owner="alice")] == ["1", "2"]
    for call in (
        store.messages(conv.id, owner="bob"),
        store.append_many(conv.id, [], owner="bob"),
        store.update_conversation(conv.id, title="t", owner="bob"),
        store.fork(conv.id, owner="bob"),
    ):
        with pytest.raises(ConversationNotFound) as err:
            await call
        assert str(err.value) == f"conversation {conv.id!r} not found for owner 'bob'"
    assert (await store.get_conversation(conv.id)).title is None
    # the owner's own update goes through (the scope selects the row, it does not hide it)
    mine = await store.update_conversation(conv.id, title="mine", owner="alice")
    assert mine.title == "mine" == (await store.get_conversation(conv.id)).title


@pytest.mark.parametrize("call", ["list", "messages", "tail", "search"])
async def test_limits_must_be_positive(store, call):
    conv = await store.create_conversation()
    calls = {
        "list": lambda: store.list_conversations(limit=0),
        "messages": lambda: store.messages(conv.id, limit=0),
        "tail": lambda: store.tail(conv.id, encoding="o200k_base", limit=0),
        "search": lambda: store.search("x", limit=0),
    }
    with pytest.raises(StoreInputError) as err:
        await calls[call]()
    assert str(err.value) == "limit must be between 1 and 2**63-1 (got 0)"


async def test_append_many_takes_a_list_of_messages_and_names_what_it_got(store):
    """One message, a string or a dict is not a list of messages (though each is
    iterable); neither is a number: each is refused by its type, and nothing is written."""
    conv = await store.create_conversation()
    before = store.snapshot()
    for bad in ("hi", b"hi", user("x"), Message.user("x"), 3, None):
        with pytest.raises(InvalidMessageError) as err:
            await store.append_many(conv.id, bad)
        assert str(err.value) == (
            f"messages must be a list of messages (Message or dict), not {type(bad).__name__}")
    assert store.snapshot() == before


async def test_deleting_a_missing_or_hidden_conversation_names_it(store):
    conv = await store.create_conversation(owner="alice")
    for cid, owner, scope in ((conv.id, "bob", " for owner 'bob'"), ("0" * 32, None, "")):
        with pytest.raises(ConversationNotFound) as err:
            await store.delete_conversation(cid, owner=owner)
        assert str(err.value) == f"conversation {cid!r} not found{scope}"
        assert (err.value.conversation_id, err.value.owner) == (cid, owner)
    assert (await store.get_conversation(conv.id)).owner == "alice"


async def test_pages_of_conversations_chain_by_the_last_item(store):
    convs = [await store.create_conversation(title=str(i)) for i in range(7)]
    newest_first = [c.id for c in reversed(convs)]
    page = await store.list_conversations(limit=3)
    seen = [c.id for c in page.items]
    while page.next_cursor is not None:
        page = await store.list_conversations(limit=3, cursor=page.next_cursor)
        seen += [c.id for c in page.items]
    assert seen == newest_first
    exact = await store.list_conversations(limit=7)
    assert len(exact.items) == 7 and exact.next_cursor is None  # no empty page after a full one


async def test_a_page_of_conversations_takes_any_limit_up_to_the_largest(store):
    """The page reads limit + 1 rows to know whether there is a next one, so a limit
    near 2**63-1 is bounded first (limit + 1 must fit in 64 bits), and that bound is
    far above any page: 130 conversations all come back in one page."""
    ids = {(await store.create_conversation(metadata={"k": [1]})).id for _ in range(130)}
    for metadata in (None, {"k": [1]}):  # (an array value: SQLite rechecks rows in Python)
        for limit in (2**63 - 1, 2**62, 131):
            page = await store.list_conversations(limit=limit, metadata=metadata)
            assert {c.id for c in page.items} == ids and page.next_cursor is None
        page = await store.list_conversations(limit=129, metadata=metadata)
        assert len(page.items) == 129 and page.next_cursor is not None


async def test_pinning_touches_one_conversation_only(store):
    a = await store.create_conversation()
    b = await store.create_conversation()
    await store.append_many(a.id, [user("a1")])
    await store.append_many(b.id, [user("b1")])
    await store.set_pinned(a.id, 1, True)
    assert (await store.get_message(a.id, 1)).pinned is True
    assert (await store.get_message(b.id, 1)).pinned is False
    with pytest.raises(MessageNotFound) as err:
        await store.set_pinned(a.id, 9, True)
    assert str(err.value) == f"conversation {a.id!r} has no message 9"
    with pytest.raises(MessageNotFound) as err:
        await store.get_message(a.id, 9)
    assert str(err.value) == f"conversation {a.id!r} has no message 9"


async def test_pinning_checks_this_conversations_message_and_names_its_seq(store):
    """Whether a message may be pinned is read from this conversation's row at that seq,
    not another conversation's row at the same seq; a refusal names the seq."""
    calls = {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}
    other = await store.create_conversation()  # (its rows come first in the table)
    await store.append_many(other.id, [user("q"), calls,
                                       {"role": "tool", "tool_call_id": "c1", "content": "r"}])
    conv = await store.create_conversation()
    await store.append_many(conv.id, [user("1"), user("2"), user("3")])
    for seq in (2, 3):
        await store.set_pinned(conv.id, seq, True)
        assert (await store.get_message(conv.id, seq)).pinned is True
    for seq, what in ((2, "an assistant message with tool calls"), (3, "a tool result")):
        with pytest.raises(StoreInputError) as err:
            await store.set_pinned(other.id, seq, True)
        assert str(err.value).startswith(f"cannot pin {what} (seq {seq}): it would be kept ")
    assert not any(m.pinned for m in await store.messages(other.id))


async def test_pinning_an_inherited_message_is_refused_with_the_reason(store):
    parent = await store.create_conversation()
    await store.append_many(parent.id, [user("1"), user("2")])
    fork = await store.fork(parent.id)
    with pytest.raises(ForkConflictError) as err:
        await store.set_pinned(fork.id, 2, True)
    assert str(err.value).startswith(f"message 2 of {fork.id!r} is inherited from {parent.id!r}; ")
    assert str(err.value).endswith("pinning it would change that conversation and its other forks")


async def test_a_fork_keeps_its_metadata_and_refuses_a_point_past_the_end(store):
    parent = await store.create_conversation()
    await store.append_many(parent.id, [user("1"), user("2")])
    fork = await store.fork(parent.id, metadata={"x": 1})
    assert (await store.get_conversation(fork.id)).metadata == {"x": 1}
    with pytest.raises(MessageNotFound) as err:
        await store.fork(parent.id, at=5)
    assert str(err.value).startswith(f"cannot fork conversation {parent.id!r} at 5: it has messages 1..2")


@pytest.mark.parametrize("what", ["create", "update", "fork", "summary"])
async def test_metadata_that_is_not_json_names_what_it_belongs_to(store, what):
    conv = await store.create_conversation()
    await store.append(conv.id, user("1"))
    bad = {"x": object()}
    calls = {
        "create": lambda: store.create_conversation(metadata=bad),
        "update": lambda: store.update_conversation(conv.id, metadata=bad),
        "fork": lambda: store.fork(conv.id, metadata=bad),
        "summary": lambda: store.add_summary(conv.id, start_seq=1, end_seq=1, content="s", metadata=bad),
    }
    with pytest.raises(StoreInputError) as err:
        await calls[what]()
    assert "metadata" in str(err.value) and "not a JSON value" in str(err.value)


async def test_token_counts_accept_zero_and_refuse_the_rest(store):
    conv = await store.create_conversation()
    (msg,) = await store.append_many(conv.id, [user("")])
    await store.save_token_counts("enc", {msg.id: 0})
    assert [t for _, t in await store.tail(conv.id, encoding="enc")] == [0]
    for bad in (-1, True, "3"):
        with pytest.raises(StoreInputError) as err:
            await store.save_token_counts("enc", {msg.id: bad})
        assert str(err.value).startswith(f"token count for message {msg.id} must be ")
    with pytest.raises(MessageNotFound) as err:
        await store.save_token_counts("enc", {10**9: 1})
    assert str(err.value).startswith("token counts given for unknown message ids: ")


async def test_summaries_of_one_message_and_the_newest_one_first(store):
    conv = await store.create_conversation()
    await store.append_many(conv.id, [user(str(i)) for i in range(1, 11)])
    await store.add_summary(conv.id, start_seq=1, end_seq=1, content="one")
    await store.add_summary(conv.id, start_seq=1, end_seq=8, content="to 8")
    await store.add_summary(conv.id, start_seq=1, end_seq=5, content="to 5, older")
    await store.add_summary(conv.id, start_seq=1, end_seq=5, content="to 5, newer")
    assert (await store.latest_summary(conv.id, up_to_seq=8)).content == "to 8"
    assert (await store.latest_summary(conv.id, up_to_seq=7)).content == "to 5, newer"
    assert (await store.latest_summary(conv.id, up_to_seq=1)).content == "one"
    with pytest.raises(StoreInputError) as err:
        await store.add_summary(conv.id, start_seq=3, end_seq=11, content="x")
    assert str(err.value) == f"summary range 3..11 is not within messages 1..10 of {conv.id!r}"
    with pytest.raises(StoreInputError) as err:
        await store.add_summary(conv.id, start_seq=1, end_seq=2, content=5)
    assert str(err.value) == "content must be a string, not int"


async def test_a_limited_read_across_a_fork_returns_exactly_the_limit(store):
    parent = await store.create_conversation()
    await store.append_many(parent.id, [user(f"p{i}") for i in range(1, 4)])
    fork = await store.fork(parent.id)
    await store.append_many(fork.id, [user(f"f{i}") for i in range(4, 7)])
    newest = await store.messages(fork.id, limit=3, newest_first=True)
    assert [m.text for m in newest] == ["f6", "f5", "f4"]
    tail = await store.tail(fork.id, encoding="enc", limit=3)
    assert [m.text for m, _ in tail] == ["f6", "f5", "f4"]
    assert [m.text for m, _ in await store.tail(fork.id, encoding="enc", limit=4)] == ["f6", "f5", "f4", "p3"]


async def test_search_matches_backslashes_literally(store):
    conv = await store.create_conversation()
    await store.append_many(conv.id, [user(r"C:\temp\x"), user("C:tempx"), user("100% sure_ok")])
    assert [m.text for m in await store.search("\\temp\\")] == [r"C:\temp\x"]
    assert [m.text for m in await store.search("0% s")] == ["100% sure_ok"]
    assert [m.text for m in await store.search("e_o")] == ["100% sure_ok"]


async def test_search_in_a_conversation_without_messages_finds_nothing(store):
    """A conversation with no rows of its own, and a fork at 0 (its lineage has no rows
    at all), match nothing, while other conversations' rows match."""
    full = await store.create_conversation()
    await store.append_many(full.id, [user("needle one"), user("needle two")])
    empty = await store.create_conversation()
    at_zero = await store.fork(full.id, at=0)
    assert len(await store.search("needle")) == 2
    assert await store.search("needle", conversation_id=empty.id) == []
    assert await store.search("needle", conversation_id=at_zero.id) == []


def _build_afresh() -> None:
    """Empty the caches of the statement builders, so this test's statements are built
    by the code as it is now (mutation runs fork from a process whose caches are warm)."""
    for build in (sql.segment_query, sql.open_query, sql.compact_query,
                  sql.insert_new_message, sql.insert_summary):
        build.cache_clear()


async def test_every_read_joins_a_message_with_its_own_count_for_the_encoding(store):
    _build_afresh()
    conv = await store.create_conversation()
    other = await store.create_conversation()
    mine = [await store.append(conv.id, user(text)) for text in ("1", "2", "3")]
    theirs = await store.append(other.id, user("x"))
    await store.set_pinned(conv.id, 1, True)
    # "a": no count for seq 2; "b": other numbers for every message
    await store.save_token_counts("a", {mine[0].id: 10, mine[2].id: 12, theirs.id: 99})
    await store.save_token_counts("b", {m.id: 20 + i for i, m in enumerate(mine)})

    def seqs(rows: Any) -> list[tuple[int, int | None]]:
        return [(m.seq, tokens) for m, tokens in rows]

    assert seqs(await store.tail(conv.id, encoding="a")) == [(3, 12), (2, None), (1, 10)]
    assert seqs(await store.tail(conv.id, encoding="b", limit=2)) == [(3, 22), (2, 21)]
    assert seqs(await store.pinned(conv.id, encoding="a")) == [(1, 10)]
    for cid in (conv.id, (await store.fork(conv.id)).id):  # one statement; a fork's lineage
        pinned, newest = await store.context_start(cid, encoding="a", limit=2)
        assert (seqs(pinned), seqs(newest)) == ([(1, 10)], [(3, 12), (2, None)])
        pinned, newest = await store.context_start(cid, encoding="b", limit=5, before=3)
        assert (seqs(pinned), seqs(newest)) == ([(1, 20)], [(2, 21), (1, 20)])
    assert seqs(await store.tail(other.id, encoding="a")) == [(1, 99)]


async def test_new_ids_follow_the_largest_id(store):
    # SQLite gives a new message or summary MAX(id) + 1, so an empty database numbers
    # them 1, 2, 3...; PostgreSQL takes the column's sequence (not reset when the
    # tests empty the shared database): increasing there
    _build_afresh()
    first = await store.create_conversation()
    second = await store.create_conversation()
    ids = [(await store.append(cid, user(str(i)))).id
           for i, cid in enumerate((first.id, first.id, second.id, first.id))]
    summaries = [(await store.add_summary(first.id, start_seq=1, end_seq=n, content=str(n))).id
                 for n in (1, 2)]
    # a batch numbers its rows as one append after another would
    batch = [m.id for m in await store.append_many(second.id, [user("b1"), user("b2")])]
    ids.append((await store.append(first.id, user("4"))).id)
    if store.backend == "sqlite":
        assert (ids, summaries, batch) == ([1, 2, 3, 4, 7], [1, 2], [5, 6])
    else:
        assert ids[:4] + batch + ids[4:] == sorted(set(ids + batch))
        assert summaries[0] < summaries[1]
    assert [m.text for m in await store.messages(first.id)] == ["0", "1", "3", "4"]
    assert (await store.latest_summary(first.id, up_to_seq=3)).content == "2"
