"""Branches made by turns: regenerate, edit and continue, list, switch; nothing overwritten.

Four ways each (SQLite / PostgreSQL x sync / async).
"""

# ruff: noqa: F811 - the env/path fixtures are imported, then named as test arguments

from __future__ import annotations

import json
from typing import Any

import pytest
from turns_support import Env, env, path  # noqa: F401 - fixtures

from convo import (
    ConversationNotFound,
    InvalidMessageError,
    Message,
    MessageNotFound,
    StoreInputError,
)


async def rows(env: Env, conversation_id: str) -> list[Any]:
    """Every column of a conversation's own message rows (to prove nothing changed)."""
    return env.store.sql(
        "SELECT * FROM messages WHERE conversation_id = :cid ORDER BY seq", cid=conversation_id
    )


async def two_turns(env: Env, chat: Any) -> str:
    conv = await env.store.create_conversation(title="thread")
    await env.store.append(conv.id, Message.system("Be brief."))
    env.fake.reply("A1")
    await chat.send(conv.id, "Q1")
    env.fake.reply("A2")
    await chat.send(conv.id, "Q2")
    return str(conv.id)


def sent_texts(env: Env) -> list[str]:
    return [m["content"] for m in json.loads(env.last_body())["messages"]]


async def test_regenerate_keeps_the_old_reply_on_the_root(env: Env) -> None:
    chat = env.chat()
    root = await two_turns(env, chat)
    before = await rows(env, root)
    root_conv = await env.store.get_conversation(root)

    env.fake.reply("A2 again")
    result = await chat.regenerate(root, temperature=1.0)

    branch_id = result.conversation_id
    assert branch_id != root and result.user is None and result.text == "A2 again"
    assert sent_texts(env) == ["Be brief.", "Q1", "A1", "Q2"]
    assert json.loads(env.last_body())["temperature"] == 1.0
    assert [m.content for m in await env.thread(branch_id)] == [
        "Be brief.", "Q1", "A1", "Q2", "A2 again",
    ]
    assert result.reply.seq == 5 and result.reply.conversation_id == branch_id
    assert result.run.conversation_id == branch_id and result.run.kept_seqs == [1, 2, 3, 4]
    assert [r.id for r in await env.runs(branch_id)] == [result.run.id]
    # The original conversation is untouched, row for row.
    assert await rows(env, root) == before
    assert [m.content for m in await env.thread(root)][-1] == "A2"
    after = await env.store.get_conversation(root)
    assert after.last_seq == root_conv.last_seq and after.current_branch_id == branch_id
    branch = await env.store.get_conversation(branch_id)
    assert (branch.branch_kind, branch.branch_of, branch.parent_id, branch.fork_seq) == (
        "regenerate", root, root, 4,
    )
    # The next turn sent to the root id goes to the current branch.
    env.fake.reply("A3")
    nxt = await chat.send(root, "Q3")
    assert nxt.conversation_id == branch_id and nxt.user.seq == 6
    assert sent_texts(env) == ["Be brief.", "Q1", "A1", "Q2", "A2 again", "Q3"]
    assert await rows(env, root) == before
    # A regenerate of a branch branches the thread again (from the current branch).
    env.fake.reply("A3 again")
    again = await chat.regenerate(root)
    assert [m.content for m in await env.thread(again.conversation_id)][-3:] == [
        "A2 again", "Q3", "A3 again",
    ]
    assert [m.content for m in await env.thread(branch_id)][-1] == "A3"


async def test_edit_a_past_message_and_continue(env: Env) -> None:
    chat = env.chat()
    root = await two_turns(env, chat)
    before = await rows(env, root)

    env.fake.reply("A1 for the edit")
    result = await chat.edit(root, 2, "Q1, edited", idempotency_key="e1")

    branch_id = result.conversation_id
    assert branch_id != root and result.user.seq == 2 and result.user.content == "Q1, edited"
    assert result.user.idempotency_key == "e1" and result.reply.idempotency_key == "e1#r0"
    assert sent_texts(env) == ["Be brief.", "Q1, edited"]
    assert [m.content for m in await env.thread(branch_id)] == [
        "Be brief.", "Q1, edited", "A1 for the edit",
    ]
    branch = await env.store.get_conversation(branch_id)
    assert (branch.branch_kind, branch.fork_seq) == ("edit", 1)
    await chat.send(root, "Q2 again")
    assert sent_texts(env) == ["Be brief.", "Q1, edited", "A1 for the edit", "Q2 again"]
    assert await env.roles(branch_id) == ["system", "user", "assistant", "user", "assistant"]
    assert await rows(env, root) == before

    before_bad = env.store.snapshot()
    with pytest.raises(InvalidMessageError, match="assistant"):
        await chat.edit(root, 3, "not a user message")
    assert env.store.snapshot() == before_bad


async def test_list_branches_and_switch(env: Env) -> None:
    chat = env.chat()
    root = await two_turns(env, chat)
    env.fake.reply("A2 again")
    regen = await chat.regenerate(root)
    env.fake.reply("A1 edited")
    edit = await chat.edit(root, 2, "Q1 edited")

    branches = await chat.branches(root)
    assert [b.conversation.id for b in branches] == [root, regen.conversation_id,
                                                     edit.conversation_id]
    assert [b.current for b in branches] == [False, False, True]
    assert [b.last_message.content for b in branches] == ["A2", "A2 again", "A1 edited"]
    assert [b.conversation.branch_kind for b in branches] == [None, "regenerate", "edit"]
    # Listing from a branch shows the same thread.
    assert await chat.branches(regen.conversation_id) == branches

    switched = await chat.switch_branch(root, regen.conversation_id)
    assert switched.current_branch_id == regen.conversation_id
    env.fake.reply("on regen")
    result = await chat.send(root, "Q3")
    assert result.conversation_id == regen.conversation_id
    assert sent_texts(env)[-2:] == ["A2 again", "Q3"]

    await chat.switch_branch(root, None)
    env.fake.reply("on root")
    result = await chat.send(root, "Q3 on root")
    assert result.conversation_id == root and result.user.seq == 6
    assert sent_texts(env) == ["Be brief.", "Q1", "A1", "Q2", "A2", "Q3 on root"]
    assert [b.current for b in await chat.branches(root)] == [True, False, False]
    assert [b.last_message.content for b in await chat.branches(root)] == [
        "on root", "on regen", "A1 edited",
    ]

    other = await env.store.create_conversation()
    before = env.store.snapshot()
    with pytest.raises(StoreInputError):
        await chat.switch_branch(root, other.id)
    with pytest.raises(StoreInputError):
        await chat.switch_branch(regen.conversation_id, root)
    assert env.store.snapshot() == before


async def test_build_shows_the_next_context_without_sending(env: Env) -> None:
    chat = env.chat()
    root = await two_turns(env, chat)
    env.fake.reply("A2 again")
    regen = await chat.regenerate(root)
    before = env.store.snapshot()
    requests = len(env.model_requests())
    ctx = await chat.build(root)
    assert ctx.report.conversation_id == regen.conversation_id
    assert [m.text for m in ctx.messages][-1] == "A2 again"
    after = env.store.snapshot()
    after.pop("message_tokens"), before.pop("message_tokens")  # a build caches token counts
    assert after == before and len(env.model_requests()) == requests


async def test_a_key_resent_after_a_regenerate_returns_the_current_reply(env: Env) -> None:
    """The key's user message is inherited by the branch: no second turn is stored."""
    chat, store, fake = env.chat(), env.store, env.fake
    conv = await store.create_conversation()
    fake.reply("first")
    await chat.send(conv.id, "Q", idempotency_key="k1")
    fake.reply("second")
    regenerated = await chat.regenerate(conv.id)
    sent = len(fake.requests)
    again = await chat.send(conv.id, "Q", idempotency_key="k1")
    assert again.from_store and len(fake.requests) == sent
    assert again.reply.id == regenerated.reply.id and again.reply.text == "second"
    # what this send found: the key's (inherited) user message and the branch's reply, no run
    assert again.user is not None and (again.user.seq, again.user.text) == (1, "Q")
    assert again.messages == [again.reply] and again.runs == [] and again.run is None
    assert again.conversation_id == regenerated.conversation_id
    rows = [(m.role, m.text) for m in await store.messages(regenerated.conversation_id)]
    assert rows == [("user", "Q"), ("assistant", "second")]
    fake.reply("third")
    nxt = await chat.send(conv.id, "Next", idempotency_key="k2")
    assert nxt.reply.text == "third" and nxt.conversation_id == regenerated.conversation_id


async def test_build_as_of_a_past_seq_makes_no_fork(env: Env) -> None:
    chat = env.chat()
    root = await two_turns(env, chat)
    conversations = env.store.count("conversations")
    past = await chat.build(root, as_of=3)
    assert [m.content for m in past.messages] == ["Be brief.", "Q1", "A1"]
    assert past.report.as_of == 3
    now = await chat.build(root)
    assert [m.content for m in now.messages][-1] == "A2"
    assert env.store.count("conversations") == conversations


async def test_the_store_branch_calls_check_their_input_and_write_nothing(env: Env) -> None:
    store = env.store
    conv = await store.create_conversation(title="t", owner="alice")
    await store.append(conv.id, Message.user("one"), owner="alice")
    other = await store.create_conversation(owner="alice")
    before = store.snapshot()
    bad: list[tuple[dict[str, Any], type[Exception], str]] = [
        ({"at": 1, "kind": "fork"}, StoreInputError,
         "branch kind must be one of ('regenerate', 'edit', 'replay', 'branch'), got 'fork'"),
        ({"at": True}, StoreInputError, "at must be an integer, got True"),
        ({"at": "1"}, StoreInputError, "at must be an integer, got '1'"),
        ({"at": -1}, MessageNotFound,
         f"cannot branch conversation {conv.id!r} at -1: it has messages 1..1"),
        ({"at": 2}, MessageNotFound,
         f"cannot branch conversation {conv.id!r} at 2: it has messages 1..1"),
        ({"at": 1, "metadata": {"k": object()}}, StoreInputError,
         "conversation metadata.k is not a JSON value (got object)"),
        ({"at": 1, "title": "a\x00b"}, StoreInputError, "branch title contains a NUL character"),
    ]
    for kwargs, error, text in bad:
        with pytest.raises(error) as info:
            await store.create_branch(conv.id, owner="alice", **kwargs)
        assert str(info.value).startswith(text)
    with pytest.raises(ConversationNotFound):
        await store.create_branch(conv.id, at=1, owner="bob")
    assert store.snapshot() == before

    at0 = await store.create_branch(conv.id, at=0, kind="edit", make_current=False,
                                    owner="alice")
    at1 = await store.create_branch(conv.id, at=1, title="mine", metadata={"k": 1},
                                    owner="alice")
    assert (at0.title, at0.owner, at0.fork_seq, at0.last_seq, at0.branch_kind) == (
        "t", "alice", 0, 0, "edit")
    assert (at1.title, at1.metadata, at1.parent_id, at1.branch_of) == (
        "mine", {"k": 1}, conv.id, conv.id)
    assert at0.metadata == {} and await store.get_conversation(at1.id) == at1  # as stored
    assert (await store.get_conversation(conv.id)).current_branch_id == at1.id
    # a branch of a branch belongs to the same thread, its root's
    nested = await store.create_branch(at1.id, at=1, make_current=False, owner="alice")
    assert (nested.parent_id, nested.branch_of) == (at1.id, conv.id)

    before = store.snapshot()
    with pytest.raises(StoreInputError) as info:
        await store.set_current_branch(at1.id, at0.id, owner="alice")
    assert str(info.value) == f"{at1.id!r} is a branch of {conv.id!r}; set the current branch on the root"
    with pytest.raises(StoreInputError) as info:
        await store.set_current_branch(conv.id, other.id, owner="alice")
    assert str(info.value) == f"{other.id!r} is not a branch of {conv.id!r}"
    for target in (at0.id, None):  # the root's owner is checked, not only the branch's
        with pytest.raises(ConversationNotFound):
            await store.set_current_branch(conv.id, target, owner="bob")
    assert store.snapshot() == before
    assert (await store.set_current_branch(conv.id, nested.id, owner="alice")).current_branch_id \
        == nested.id
    assert (await store.set_current_branch(conv.id, conv.id, owner="alice")).current_branch_id \
        is None
    replay = await store.create_branch(conv.id, at=1, kind="replay", make_current=False,
                                       owner="alice")
    listed = await store.list_branches(nested.id, owner="alice")
    assert [(b.conversation.id, b.current) for b in listed] == [
        (conv.id, True), (at0.id, False), (at1.id, False), (nested.id, False)]
    assert listed[1].last_message is None  # a branch at 0 has no message yet
    assert [b.last_message.text for b in listed[2:]] == ["one", "one"]
    shown = await store.list_branches(conv.id, include_replays=True, owner="alice")
    assert [b.conversation.id for b in shown] == [conv.id, at0.id, at1.id, nested.id, replay.id]
    for member in (nested.id, conv.id):
        with pytest.raises(ConversationNotFound):
            await store.list_branches(member, owner="bob")


async def test_find_by_key_sees_the_threads_keys_up_to_the_fork_point(env: Env) -> None:
    store = env.store
    conv = await store.create_conversation(owner="alice")
    first = await store.append(conv.id, Message.user("one"), idempotency_key="k1", owner="alice")
    await store.append(conv.id, Message.user("two"), idempotency_key="k2", owner="alice")
    branch = await store.create_branch(conv.id, at=1, owner="alice")
    mine = await store.append(branch.id, Message.user("three"), idempotency_key="k3",
                              owner="alice")
    found = await store.find_by_key(branch.id, "k1", owner="alice")  # inherited
    assert (found.id, found.seq, found.text) == (first.id, 1, "one")
    assert await store.find_by_key(branch.id, "k2", owner="alice") is None  # after the fork
    found = await store.find_by_key(branch.id, "k3", owner="alice")
    assert (found.id, found.seq, found.conversation_id) == (mine.id, 2, branch.id)
    assert await store.find_by_key(conv.id, "k3", owner="alice") is None  # not the root's
    assert (await store.find_by_key(conv.id, "k2")).text == "two"
    assert await store.find_by_key(branch.id, "nope") is None
    with pytest.raises(ConversationNotFound):
        await store.find_by_key(branch.id, "k1", owner="bob")
