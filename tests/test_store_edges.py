"""Store edge cases that one plausible slip in the store core would get wrong.

Every test runs four times: SQLite / PostgreSQL x sync / async (see conftest ``store``).
"""

from __future__ import annotations

from typing import Any

import pytest

from convo._exceptions import ConversationNotFound, ForkConflictError


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
    with pytest.raises(ForkConflictError, match=r"has 3 fork\(s\)"):
        await store.delete_conversation(root.id)
    assert store.snapshot() == before
