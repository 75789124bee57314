"""Store: forks and lineage reads, tail / pinned / token counts, summaries.

Every test runs four times: SQLite / PostgreSQL x sync / async (see conftest ``store``).
"""

from __future__ import annotations

from typing import Any

import pytest

from convo import Message
from convo._exceptions import (
    ConversationNotFound,
    ForkConflictError,
    MessageNotFound,
    StoreInputError,
)


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


async def thread(store: Any, n: int, prefix: str = "p", **kw: Any) -> Any:
    conv = await store.create_conversation(**kw)
    if n:
        await store.append_many(conv.id, [user(f"{prefix}{i}") for i in range(1, n + 1)])
    return await store.get_conversation(conv.id)


async def view(store: Any, conversation_id: str, **kw: Any) -> list[tuple[str, int, str]]:
    """(owning conversation, seq, text) of what the conversation shows."""
    return [(m.conversation_id, m.seq, m.text) for m in await store.messages(conversation_id, **kw)]


# --- forks --------------------------------------------------------------------------------


async def test_fork_reads_inherited_then_own(store):
    parent = await thread(store, 5, title="base", owner="u", metadata={"k": 1})
    fork = await store.fork(parent.id, at=3)
    assert (fork.parent_id, fork.fork_seq, fork.last_seq) == (parent.id, 3, 3)
    assert (fork.title, fork.owner, fork.metadata) == ("base", "u", {})
    own = await store.append(fork.id, user("f4"))
    assert (own.seq, own.conversation_id) == (4, fork.id)
    await store.append(parent.id, user("p6"))  # after the fork: not visible in it
    assert await view(store, fork.id) == [
        (parent.id, 1, "p1"), (parent.id, 2, "p2"), (parent.id, 3, "p3"), (fork.id, 4, "f4"),
    ]
    assert [m.seq for m in await store.messages(parent.id)] == [1, 2, 3, 4, 5, 6]
    assert await store.count_messages(fork.id) == 4
    assert (await store.get_message(fork.id, 2)).conversation_id == parent.id
    assert (await store.get_message(fork.id, 4)).text == "f4"
    with pytest.raises(MessageNotFound):
        await store.get_message(fork.id, 5)
    named = await store.fork(parent.id, title="other", metadata={"x": True})
    assert (named.title, named.metadata, named.fork_seq) == ("other", {"x": True}, 6)


async def test_forks_of_forks(store):
    root = await thread(store, 4, "r")
    child = await store.fork(root.id, at=2)
    await store.append_many(child.id, [user("c3"), user("c4"), user("c5")])
    grandchild = await store.fork(child.id, at=4)
    await store.append(grandchild.id, user("g5"))
    # Forking a fork inside its inherited part skips the middle conversation.
    early = await store.fork(child.id, at=1)
    await store.append(early.id, user("e2"))
    assert await view(store, grandchild.id) == [
        (root.id, 1, "r1"), (root.id, 2, "r2"), (child.id, 3, "c3"), (child.id, 4, "c4"),
        (grandchild.id, 5, "g5"),
    ]
    assert await view(store, early.id) == [(root.id, 1, "r1"), (early.id, 2, "e2")]
    assert await view(store, grandchild.id, newest_first=True, limit=4) == [
        (grandchild.id, 5, "g5"), (child.id, 4, "c4"), (child.id, 3, "c3"), (root.id, 2, "r2"),
    ]
    assert await view(store, grandchild.id, after=1, before=5) == [
        (root.id, 2, "r2"), (child.id, 3, "c3"), (child.id, 4, "c4"),
    ]
    assert await view(store, grandchild.id, after=2, limit=1) == [(child.id, 3, "c3")]
    got = [m.seq async for m in store.iter_messages(grandchild.id, page_size=2, newest_first=True)]
    assert got == [5, 4, 3, 2, 1]
    assert await store.count_messages(grandchild.id) == 5


async def test_fork_edges(store):
    empty = await thread(store, 0)
    fork0 = await store.fork(empty.id)
    assert (fork0.fork_seq, await store.messages(fork0.id)) == (0, [])
    parent = await thread(store, 3)
    at_zero = await store.fork(parent.id, at=0)
    assert await store.messages(at_zero.id) == []
    assert (await store.append(at_zero.id, user("fresh"))).seq == 1
    before = store.snapshot()
    for bad in (-1, 4):
        with pytest.raises(MessageNotFound):
            await store.fork(parent.id, at=bad)
    with pytest.raises(ConversationNotFound):
        await store.fork("0" * 32)
    assert store.snapshot() == before


async def test_a_fork_is_returned_as_it_is_read_back(store):
    """The Conversation fork() returns is built from its values, not read: it has the
    fields of a read one, in the same order, all set, and no others."""
    parent = await store.create_conversation(title="t", owner="alice", metadata={"k": 1})
    await store.append_many(parent.id, [user("1"), user("2")], owner="alice")
    for kw in ({}, {"at": 1, "title": "f", "metadata": {"x": [1]}}):
        made = await store.fork(parent.id, owner="alice", **kw)
        read = await store.get_conversation(made.id)
        assert made.__dict__ == read.__dict__ and list(made.__dict__) == list(read.__dict__)
        assert made.model_fields_set == read.model_fields_set and repr(made) == repr(read)
        assert (made.branch_kind, made.branch_of, made.current_branch_id) == (None, None, None)


async def test_fork_cost_does_not_depend_on_thread_length(store):
    small = await thread(store, 10)
    big = await store.create_conversation()
    _bulk_fill(store, big.id, 100_000)
    big = await store.get_conversation(big.id)
    assert big.last_seq == 100_000
    costs = []
    for conv in (small, big):
        messages_before = store.count("messages")
        with store.statements() as seen:
            fork = await store.fork(conv.id)
        writes = [s for s in seen if s.lstrip().upper().startswith(("INSERT", "UPDATE", "DELETE"))]
        assert len(writes) == 1 and writes[0].lstrip().upper().startswith("INSERT INTO CONVERSATIONS")
        assert store.count("messages") == messages_before  # nothing copied
        costs.append(len(seen))
        assert fork.last_seq == conv.last_seq
    assert costs[0] == costs[1]
    # Reading the newest messages of the big fork touches only what it returns.
    with store.statements() as seen:
        tail = await store.messages(fork.id, newest_first=True, limit=3)
    assert [m.seq for m in tail] == [100_000, 99_999, 99_998]
    assert sum("FROM messages" in s for s in seen) == 1


async def test_forking_a_fork_reads_only_its_row_whatever_its_depth(store):
    """The source's row holds its whole ancestor chain: forking a fork of a fork costs
    the statements forking a root does (no walk up the chain), and the new fork reads
    every ancestor's rows."""
    source = await thread(store, 2)
    costs, chain = [], [source]
    for depth in range(4):
        with store.statements() as seen:
            fork = await store.fork(chain[-1].id)
        costs.append(len(seen))
        await store.append(fork.id, user(f"d{depth}"))
        chain.append(fork)
    assert costs == [costs[0]] * 4
    texts = [m.text for m in await store.messages(chain[-1].id)]
    assert texts[2:] == ["d0", "d1", "d2", "d3"] and len(texts) == 6


def _bulk_fill(store: Any, conversation_id: str, n: int) -> None:
    """n messages written server-side in one statement (the test needs volume, not the API)."""
    if store.backend == "postgresql":
        store.sql(
            "INSERT INTO messages (conversation_id, seq, role, content, pinned, created_at) "
            "SELECT :cid, i, 'user', 'm' || i, false, now() FROM generate_series(1, :n) AS i",
            cid=conversation_id, n=n,
        )
    else:
        store.sql(
            "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < :n) "
            "INSERT INTO messages (id, conversation_id, seq, role, content, pinned, created_at) "
            "SELECT (SELECT IFNULL(MAX(id), 0) FROM messages) + i, :cid, i, 'user', 'm' || i, 0,"
            " '2024-01-01 00:00:00.000000' FROM s",
            cid=conversation_id, n=n,
        )
    store.sql("UPDATE conversations SET last_seq = :n WHERE id = :cid", cid=conversation_id, n=n)


# --- tail, pinned, token counts --------------------------------------------------------------


async def test_tail_with_token_counts(store):
    conv = await store.create_conversation()
    msgs = await store.append_many(conv.id, [Message.system("sys")] + [user(f"u{i}") for i in range(2, 8)])
    await store.save_token_counts("cl100k_base", {m.id: 10 + m.seq for m in msgs[::2]})
    await store.save_token_counts("o200k_base", {msgs[-1].id: 99})
    tail = await store.tail(conv.id, encoding="cl100k_base", limit=3)
    assert [(m.seq, t) for m, t in tail] == [(7, 17), (6, None), (5, 15)]
    tail = await store.tail(conv.id, encoding="cl100k_base", before=3, limit=10)
    assert [(m.seq, t) for m, t in tail] == [(2, None), (1, 11)]
    tail = await store.tail(conv.id, encoding="o200k_base", limit=2)
    assert [(m.seq, t) for m, t in tail] == [(7, 99), (6, None)]
    # Counts are deterministic: a second save keeps the first value, no error.
    await store.save_token_counts("cl100k_base", {msgs[0].id: 12345, msgs[1].id: 4})
    tail = await store.tail(conv.id, encoding="cl100k_base", before=3)
    assert [(m.seq, t) for m, t in tail] == [(2, 4), (1, 11)]
    await store.save_token_counts("cl100k_base", {})
    before = store.snapshot()
    with pytest.raises(MessageNotFound):
        await store.save_token_counts("cl100k_base", {msgs[2].id: 1, 10**12: 5})
    with pytest.raises(StoreInputError):
        await store.save_token_counts("cl100k_base", {msgs[2].id: -1})
    assert store.snapshot() == before
    with pytest.raises(StoreInputError):
        await store.tail(conv.id, encoding="x", limit=0)


async def test_token_counts_keyed_by_conversation_and_message(store):
    """Counts keyed (conversation_id, message_id), what a context build gives (no lookup
    by id alone); a fork's counts of inherited messages belong to the ancestor."""
    conv = await store.create_conversation()
    base = await store.append_many(conv.id, [user("a"), user("b")])
    fork = await store.fork(conv.id)
    (own,) = await store.append_many(fork.id, [user("c")])
    await store.save_token_counts("e", {(conv.id, base[0].id): 5, (fork.id, own.id): 7,
                                        base[1].id: 6})  # the two forms mix
    tail = await store.tail(fork.id, encoding="e", limit=5)
    assert [(m.conversation_id, t) for m, t in tail] == [
        (fork.id, 7), (conv.id, 6), (conv.id, 5)]
    before = store.snapshot()
    for wrong in ((fork.id, base[0].id), ("0" * 32, own.id)):  # not that message's conversation
        with pytest.raises(MessageNotFound):
            await store.save_token_counts("e2", {wrong: 1})
    for bad in (("x" * 33, own.id), (conv.id, "1"), (conv.id,), (conv.id, own.id, 1)):
        with pytest.raises(StoreInputError):
            await store.save_token_counts("e2", {bad: 1})
    assert store.snapshot() == before


async def test_token_count_inputs_are_refused_naming_the_field_and_its_limit(store):
    """Each check of ``token_rows``, at its bound and with its message in full; a refused
    call stores nothing, not even its valid counts."""
    conv = await store.create_conversation()
    (msg,) = await store.append_many(conv.id, [user("a")])
    key = (conv.id, msg.id)
    top = 2**31 - 1  # message_tokens.tokens is a 32-bit INTEGER
    await store.save_token_counts("e" * 64, {key: top})  # both limits, exactly
    assert [t for _, t in await store.tail(conv.id, encoding="e" * 64)] == [top]
    before = store.snapshot()
    refused = [
        ("e" * 65, {key: 1}, "encoding is 65 characters long; at most 64 are allowed"),
        (7, {key: 1}, "encoding must be a string, not int"),
        ("e", [(msg.id, 1)], "counts must be a mapping of message id to token count"),
        ("e", {("c" * 33, msg.id): 1},
         "a conversation id of counts is 33 characters long; at most 32 are allowed"),
        ("e", {(5, msg.id): 1}, "a conversation id of counts must be a string, not int"),
        ("e", {("c", msg.id, 1): 1},  # not a (conversation id, message id) pair
         f"a message id of counts must be an integer, not tuple (('c', {msg.id}, 1))"),
        *[("e", {k: 1}, f"a message id of counts must be between -2**63 and 2**63-1 (got {n})")
          for n in (2**63, -(2**63) - 1)  # beyond 64 bits, in a pair and alone
          for k in ((conv.id, n), n)],
        *[("e", {key: n}, f"token count for message {msg.id} must be between 0 and {top} (got {n})")
          for n in (top + 1, -1)],
    ]
    for encoding, counts, message in refused:
        with pytest.raises(StoreInputError) as err:
            await store.save_token_counts(
                encoding, {msg.id: 2, **counts} if isinstance(counts, dict) else counts)
        assert str(err.value) == message
    with pytest.raises(MessageNotFound) as missing:
        await store.save_token_counts("e", {msg.id: 2, 10**12: 5})
    assert str(missing.value) == f"token counts given for unknown message ids: {10**12}"
    # save_token_counts' encoding is checked as an argument first; a run's counts (a
    # turn's build) are checked by token_rows itself, the same way
    for encoding, _, message in refused[:2]:
        with pytest.raises(StoreInputError) as err:
            await store.start_run(conv.id, endpoint="chat.completions", mode="chat", model="m",
                                  request={}, token_counts=(encoding, {key: 1}))
        assert str(err.value) == message
    assert store.snapshot() == before


async def test_tail_and_pinned_across_forks(store):
    root = await store.create_conversation()
    base = await store.append_many(root.id, [Message.system("rules"), user("a"), user("b")])
    fork = await store.fork(root.id, at=2)
    mine = await store.append_many(fork.id, [Message.developer("dev"), user("c")])
    await store.save_token_counts("e", {base[0].id: 5, mine[0].id: 7})
    tail = await store.tail(fork.id, encoding="e", limit=3)
    assert [(m.conversation_id, m.seq, t) for m, t in tail] == [
        (fork.id, 4, None), (fork.id, 3, 7), (root.id, 2, None),
    ]
    pinned = await store.pinned(fork.id, encoding="e")
    assert [(m.seq, m.text, t) for m, t in pinned] == [(1, "rules", 5), (3, "dev", 7)]
    await store.set_pinned(fork.id, 4, True)
    assert [m.seq for m, _ in await store.pinned(fork.id, encoding="e")] == [1, 3, 4]
    await store.set_pinned(fork.id, 3, False)
    assert [m.seq for m, _ in await store.pinned(fork.id, encoding="e")] == [1, 4]
    assert [m.seq for m, _ in await store.pinned(root.id, encoding="e")] == [1]
    before = store.snapshot()
    with pytest.raises(ForkConflictError):
        await store.set_pinned(fork.id, 2, True)  # inherited from root
    for bad in (0, 5):
        with pytest.raises(MessageNotFound):
            await store.set_pinned(fork.id, bad, True)
    assert store.snapshot() == before


# --- summaries ----------------------------------------------------------------------------------


async def test_summaries(store):
    conv = await thread(store, 10)
    assert await store.latest_summary(conv.id) is None
    s1 = await store.add_summary(conv.id, start_seq=1, end_seq=4, content="first", metadata={"tokens": 12})
    assert (s1.conversation_id, s1.start_seq, s1.end_seq, s1.content) == (conv.id, 1, 4, "first")
    assert s1.metadata == {"tokens": 12} and s1.created_at.tzinfo is not None
    s2 = await store.add_summary(conv.id, start_seq=1, end_seq=8, content="rolled forward")
    assert await store.latest_summary(conv.id) == s2
    assert await store.latest_summary(conv.id, up_to_seq=7) == s1
    assert await store.latest_summary(conv.id, up_to_seq=3) is None
    with pytest.raises(StoreInputError):
        await store.add_summary(conv.id, start_seq=5, end_seq=4, content="backwards")
    with pytest.raises(ConversationNotFound):
        await store.add_summary("0" * 32, start_seq=1, end_seq=1, content="x")


async def test_summaries_across_forks(store):
    root = await thread(store, 10)
    early = await store.add_summary(root.id, start_seq=1, end_seq=5, content="root 1-5")
    await store.add_summary(root.id, start_seq=1, end_seq=9, content="root 1-9")  # beyond the fork
    fork = await store.fork(root.id, at=6)
    assert await store.latest_summary(fork.id) == early  # the parent's, up to the fork point
    await store.append_many(fork.id, [user("f7"), user("f8")])
    own = await store.add_summary(fork.id, start_seq=1, end_seq=7, content="fork 1-7")
    assert await store.latest_summary(fork.id) == own
    assert await store.latest_summary(fork.id, up_to_seq=6) == early
    assert (await store.latest_summary(root.id)).content == "root 1-9"
    grandchild = await store.fork(fork.id, at=3)
    assert await store.latest_summary(grandchild.id) is None  # all summaries end after 3
    deeper = await store.fork(fork.id, at=8)
    assert await store.latest_summary(deeper.id) == own


async def test_a_forks_opening_read_takes_its_pinned_messages_bound_limit_and_owner(store):
    # A fork's opening read resolves its lineage (the conversation's one statement does
    # not): pinned messages oldest first and below `before` only, the newest page
    # below `before` and of `limit` rows, across the fork point.
    parent = await store.create_conversation(owner="alice")
    await store.append_many(parent.id, [user(str(i)) for i in range(1, 5)], owner="alice")
    for seq in (1, 3):
        await store.set_pinned(parent.id, seq, True, owner="alice")
    fork = await store.fork(parent.id, owner="alice")
    await store.append(fork.id, user("5"), owner="alice")

    async def opening(limit: int, before: int | None) -> tuple[list[int], list[int]]:
        pinned, newest = await store.context_start(
            fork.id, encoding="e", limit=limit, before=before, owner="alice")
        return [m.seq for m, _ in pinned], [m.seq for m, _ in newest]

    assert await opening(2, None) == ([1, 3], [5, 4])
    assert await opening(2, 5) == ([1, 3], [4, 3])
    assert await opening(5, 3) == ([1], [2, 1])
    # a floor (`after`, context_open only): the newest page stops above it, across the fork point
    pinned, newest, _ = await store._context_open(fork.id, encoding="e", limit=5, after=3,
                                                  owner="alice")
    assert ([m.seq for m, _ in pinned], [m.seq for m, _ in newest]) == ([1, 3], [5, 4])
    for cid, owner in ((fork.id, "bob"), ("nope", None), ("nope", "alice")):
        with pytest.raises(ConversationNotFound) as err:
            await store.context_start(cid, encoding="e", limit=2, owner=owner)
        scope = f" for owner {owner!r}" if owner is not None else ""
        assert str(err.value) == f"conversation {cid!r} not found{scope}"
