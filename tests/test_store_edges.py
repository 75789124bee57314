"""Store edge cases that one plausible slip in the store core would get wrong.

Every test runs four times: SQLite / PostgreSQL x sync / async (see conftest ``store``).
"""

from __future__ import annotations

from typing import Any

import pytest

from convo._exceptions import ConversationNotFound, ForkConflictError, StoreInputError


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
    # (same key order: SQLite compares minified text, so {"b":..., "a":...} would not match
    # there while PostgreSQL's JSONB would: see docs/testing.md, "found by mutation testing")
    assert await ids(cfg={"a": 1, "b": [1, 2]}) == {a.id}
    assert await ids(cfg={"a": 3}) == set()
    assert await ids(tags=["b"]) == {b.id} and await ids(tags=["c"]) == set()
    assert await ids(**{"a.b c": "q"}) == {a.id}  # a key that needs quoting in a JSON path


async def test_metadata_filters_that_are_not_json_say_so(store):
    with pytest.raises(StoreInputError) as err:
        await store.list_conversations(metadata={1: "x"})
    assert str(err.value) == "metadata filter keys must be strings"
    with pytest.raises(StoreInputError) as err:
        await store.list_conversations(metadata={"when": {1, 2}})
    assert str(err.value).startswith("metadata filter value for 'when' is not JSON: ")
