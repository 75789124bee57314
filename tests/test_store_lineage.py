"""Fork lineage without recursive queries (convo/_store/lineage.py).

A fork's ancestor chain is stored on its row when it is made; reads resolve a
fork from that row, deletes and exports walk the trees below conversations
level by level. No statement convo runs is recursive (a sharded PostgreSQL,
Citus, runs ``WITH RECURSIVE`` only inside one shard), a fork read takes no
more round trips than the recursive query did, and every writer of a fork
stores the chain the recursive query would have found.

The ``store`` tests run four times: SQLite / PostgreSQL x sync / async (conftest).
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

import convo._store.lineage as lineages
from convo import (
    ConversationNotFound,
    ForkConflictError,
    Store,
    export_conversations,
    export_conversations_async,
    import_conversations,
    import_conversations_async,
)

ROOT = Path(__file__).resolve().parent.parent


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


@contextmanager
def statements(engine: sa.Engine) -> Iterator[list[str]]:
    """The SQL of every statement ``engine`` executes meanwhile."""
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)


async def view(store: Any, cid: str) -> list[tuple[str, int, str]]:
    return [(m.conversation_id, m.seq, m.text) for m in await store.messages(cid)]


async def tree(store: Any) -> dict[str, Any]:
    """root (r1..r4) <- child at 2 (c3, c4, c5) <- grand at 4 (g5); early: child at 1 (e2)."""
    root = await store.create_conversation(owner="u")
    await store.append_many(root.id, [user(f"r{i}") for i in range(1, 5)], owner="u")
    child = await store.fork(root.id, at=2)
    await store.append_many(child.id, [user("c3"), user("c4"), user("c5")])
    grand = await store.fork(child.id, at=4)
    await store.append(grand.id, user("g5"), pinned=True)
    early = await store.fork(child.id, at=1)
    await store.append(early.id, user("e2"))
    return {"root": root.id, "child": child.id, "grand": grand.id, "early": early.id}


def stored(store: Any) -> dict[str, Any]:
    """Every conversation's lineage column, as stored."""
    return {
        cid: json.loads(value) if isinstance(value, str) and store.backend == "sqlite" else value
        for cid, value in store.sql("SELECT id, lineage FROM conversations")
    }


async def export(store: Any, out: Any, **kw: Any) -> Any:
    if store.is_async:
        return await export_conversations_async(store.raw, out, **kw)
    return export_conversations(store.raw, out, **kw)


async def import_(store: Any, source: Any, **kw: Any) -> Any:
    if store.is_async:
        return await import_conversations_async(store.raw, source, **kw)
    return import_conversations(store.raw, source, **kw)


# --- what is stored ----------------------------------------------------------------------------


async def test_every_writer_of_a_fork_stores_its_ancestor_chain(store):
    ids = await tree(store)
    r, c, g, e = ids["root"], ids["child"], ids["grand"], ids["early"]
    branch = await store.create_branch(g, at=3, kind="edit")
    assert stored(store) == {
        r: None,
        c: [[r, 2]],
        g: [[c, 4], [r, 2]],
        e: [[c, 1], [r, 2]],
        branch.id: [[g, 3], [c, 4], [r, 2]],
    }
    # the public value does not carry it, an export does not write it
    assert "lineage" not in (await store.get_conversation(g)).model_dump()
    out = io.StringIO()
    await export(store, out, ids=[g])
    assert "lineage" not in out.getvalue()
    # an import computes it: a copy under new ids, the fork's parent in the file ...
    result = await import_(store, io.StringIO(out.getvalue()), new_ids=True)
    new = result.id_map
    after = stored(store)
    for old in (r, c, g, e, branch.id):
        expected = after[old] and [[new[a], n] for a, n in after[old]]
        assert after[new[old]] == expected
    # ... or in the database: the grandchild's record alone, imported as a copy
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    grand_only = "\n".join(json.dumps(x) for x in records if x["conversation"]["id"] == g)
    again = await import_(store, io.StringIO(grand_only), new_ids=True)
    assert stored(store)[again.id_map[g]] == [[c, 4], [r, 2]]
    copy = await view(store, again.id_map[g])
    assert copy == [*(await view(store, g))[:-1], (again.id_map[g], 5, "g5")]


# --- no recursive statement -----------------------------------------------------------------


async def test_fork_reads_deletes_exports_and_imports_run_no_recursive_statement(store):
    with statements(store.sync_engine) as seen:
        ids = await tree(store)
        g = ids["grand"]
        await store.add_summary(ids["root"], start_seq=1, end_seq=2, content="s")
        branch = await store.create_branch(g, at=5, kind="regenerate")
        assert len(await store.messages(g)) == 5
        assert len(await store.messages(g, newest_first=True, limit=2)) == 2
        assert (await store.get_message(g, 1)).conversation_id == ids["root"]
        assert len(await store.tail(g, encoding="o200k_base", limit=3)) == 3
        assert len(await store.pinned(g, encoding="o200k_base")) == 1
        assert (await store.latest_summary(g)).content == "s"
        assert len(await store.search("c", conversation_id=g)) == 2
        await store.set_pinned(g, 5, False)
        pinned, newest = await store.context_start(g, encoding="o200k_base", limit=10)
        assert (pinned, len(newest)) == ([], 5)
        # a retried turn on a branch looks through the inherited history
        cid, again = await store._append_current(g, user("again"), idempotency_key="k")
        assert cid == branch.id and again.seq == 6
        out = io.StringIO()
        await export(store, out, ids=[g])
        await export(store, io.StringIO())
        await export(store, io.StringIO(), format="chat")
        await import_(store, io.StringIO(out.getvalue()), new_ids=True)
        with pytest.raises(ForkConflictError):
            await store.delete_conversation(ids["child"])
        await store.delete_conversation(ids["root"], cascade_forks=True)
    assert len(seen) > 50
    assert [s for s in seen if "RECURSIVE" in s.upper()] == []


def test_no_statement_in_convo_is_written_recursive():
    """The paths above are not all: no SQL in convo builds a recursive query."""
    found = []
    for path in sorted((ROOT / "convo").rglob("*.py")):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if re.search(r"recursive\s*=\s*True|WITH\s+RECURSIVE", line, re.IGNORECASE):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert found == []


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_fork_read_takes_no_more_round_trips_than_before(backend, make_db):
    """The recursive query was one statement: its replacement reads the fork's own
    row only, never an ancestor's."""
    with Store(make_db(backend)) as raw:
        root = raw.create_conversation()
        raw.append_many(root.id, [user(f"r{i}") for i in range(1, 5)])
        child = raw.fork(root.id, at=2)
        raw.append_many(child.id, [user("c3"), user("c4")])
        grand = raw.fork(child.id, at=3)
        raw.append(grand.id, user("g4"))
        with statements(raw.engine) as seen:
            assert [m.seq for m in raw.messages(grand.id)] == [1, 2, 3, 4]
        # the chain (1) and one read per segment (3), as with the recursive query
        assert len(seen) == 4
        assert sum("conversations" in s for s in seen) == 1
        with statements(raw.engine) as seen:
            assert [m.seq for m, _ in raw.tail(grand.id, encoding="o200k_base", limit=1)] == [4]
        assert len(seen) == 2
        with statements(raw.engine) as seen:
            raw.context_start(grand.id, encoding="o200k_base", limit=2)
        # the opening read, the chain, the pinned rows of 3 segments, 2 tail reads (g4, c3):
        # 7 on the recursive query too
        assert len(seen) <= 7


# --- forks stored without their chain ------------------------------------------------------


async def test_a_fork_whose_row_has_no_chain_is_read_through_its_ancestors(store):
    """Only convo writes lineages; a fork something else inserted (or an offline
    migration left) without one reads the same, its ancestors' rows read one by one."""
    ids = await tree(store)
    r, c, g = ids["root"], ids["child"], ids["grand"]
    before = {cid: await view(store, cid) for cid in ids.values()}
    store.sql(f"UPDATE conversations SET lineage = NULL WHERE id IN ('{c}', '{g}')")
    assert {cid: await view(store, cid) for cid in ids.values()} == before
    fork = await store.fork(g, at=5)  # the new fork gets the whole chain
    assert stored(store)[fork.id] == [[g, 5], [c, 4], [r, 2]]
    out = io.StringIO()  # so does a copy imported below a parent that has none
    await export(store, out, ids=[g])
    grand = [x for x in out.getvalue().splitlines() if json.loads(x)["conversation"]["id"] == g]
    copy = (await import_(store, io.StringIO(grand[0]), new_ids=True)).id_map[g]
    assert stored(store)[copy] == [[c, 4], [r, 2]]
    # a chain that ends at an ancestor with its lineage stored
    store.sql(f"UPDATE conversations SET lineage = NULL WHERE id = '{fork.id}'")
    store.sql(f"UPDATE conversations SET lineage = '[[\"{r}\", 2]]' WHERE id = '{c}'")
    assert await view(store, fork.id) == before[g]
    branch = await store.create_branch(fork.id, at=4)
    assert stored(store)[branch.id] == [[fork.id, 4], [g, 5], [c, 4], [r, 2]]


#: stored lineages that are not the shape convo writes (``{c}``: the grand fork's parent;
#: ``{g}``: a conversation that is no one's parent here)
DAMAGED = {
    "a string": '"garbage"', "an object": "{{}}", "empty": "[]", "numbers": "[1, 2]",
    "a short link": '[["{c}"]]', "a null id": "[[null, 4]]", "a text seq": '[["{c}", "4"]]',
    "a negative seq": '[["{c}", -1]]', "a bool seq": '[["{c}", true]]',
    "another parent": '[["{g}", 4]]', "a long link": '[["{c}", 4, 1], ["{r}", 2]]',
}


@pytest.mark.parametrize("damage", DAMAGED)
async def test_a_damaged_stored_chain_is_read_through_the_ancestors(store, damage):
    """A lineage edited by hand (or damaged) into another shape is not trusted: reads,
    forks and imports walk up from parent_id instead (no untyped error, the same view);
    an ancestor's damaged chain is walked past the same way; a root's is ignored."""
    ids = await tree(store)
    r, c, g = ids["root"], ids["child"], ids["grand"]
    before = {cid: await view(store, cid) for cid in ids.values()}
    bad = DAMAGED[damage].format(c=c, r=r, g=g)
    store.sql(f"UPDATE conversations SET lineage = '{bad}' WHERE id = '{g}'")
    store.sql(f"UPDATE conversations SET lineage = '{bad}' WHERE id = '{r}'")  # a root's
    assert {cid: await view(store, cid) for cid in ids.values()} == before
    fork = await store.fork(g, at=5)
    assert stored(store)[fork.id] == [[g, 5], [c, 4], [r, 2]]
    # an ancestor's damaged chain, reached by a walk up from a fork without one
    store.sql(f"UPDATE conversations SET lineage = NULL WHERE id = '{fork.id}'")
    store.sql(f"UPDATE conversations SET lineage = '{bad}' WHERE id = '{c}'")
    assert await view(store, fork.id) == before[g]
    branch = await store.create_branch(fork.id, at=4)
    assert stored(store)[branch.id] == [[fork.id, 4], [g, 5], [c, 4], [r, 2]]
    out = io.StringIO()  # an import below a parent in the database whose chain is damaged
    await export(store, out, ids=[fork.id])
    line = [x for x in out.getvalue().splitlines()
            if json.loads(x)["conversation"]["id"] == fork.id]
    copy = (await import_(store, io.StringIO(line[0]), new_ids=True)).id_map[fork.id]
    assert stored(store)[copy] == [[g, 5], [c, 4], [r, 2]]


async def test_a_hand_made_cycle_of_parents_ends_reads_and_deletes(store):
    """parent_id never changes in convo; a database edited by hand into a cycle
    still gives answers (the recursive query never returned)."""
    ids = await tree(store)
    r, g = ids["root"], ids["grand"]
    store.sql(f"UPDATE conversations SET lineage = NULL, parent_id = '{g}', fork_seq = 1"
              f" WHERE id = '{r}'")
    store.sql("UPDATE conversations SET lineage = NULL")
    assert [m.seq for m in await store.messages(g)][-3:] == [3, 4, 5]
    assert len(await store.messages(r)) <= 4
    with pytest.raises(ForkConflictError, match="has 3 fork"):
        await store.delete_conversation(r)


# --- the trees below conversations ----------------------------------------------------------


@pytest.mark.parametrize("chunk", [1, 2, lineages.FORKS_CHUNK])
async def test_trees_are_walked_down_whole_in_chunks(store, monkeypatch, chunk):
    """Many siblings and deeper levels: the walk asks ``chunk`` parents at a time."""
    monkeypatch.setattr(lineages, "FORKS_CHUNK", chunk)
    root = await store.create_conversation()
    await store.append_many(root.id, [user("1"), user("2")])
    kids = [await store.fork(root.id, at=i % 3) for i in range(5)]
    grandkids = [await store.fork(kids[i].id) for i in (0, 2, 4)]
    deepest = await store.fork(grandkids[1].id)
    other = await store.create_conversation()
    out = io.StringIO()
    await export(store, out, ids=[deepest.id])
    order = [json.loads(x)["conversation"]["id"] for x in out.getvalue().splitlines()]
    # tree by tree, parents before children (by depth), then by id
    assert order == [root.id, *sorted(k.id for k in kids), *sorted(g.id for g in grandkids),
                     deepest.id]
    with pytest.raises(ForkConflictError, match="has 9 fork"):
        await store.delete_conversation(root.id)
    await store.delete_conversation(kids[2].id, cascade_forks=True)  # takes 3 conversations
    assert store.count("conversations") == 8
    await store.delete_conversation(root.id, cascade_forks=True)
    assert [c for (c,) in store.sql("SELECT id FROM conversations")] == [other.id]
    with pytest.raises(ConversationNotFound):
        await store.get_conversation(deepest.id)


def test_segments_cap_each_ancestor_at_every_nearer_fork_point():
    # own (4, 9], child up to 4 from 3, root up to min(4, 3) = 3 ... and an
    # ancestor forked below a nearer fork point gives no rows (hi <= lo)
    assert lineages.segments("g", 9, [["c", 4], ["r", 3]]) == (
        ("g", 4, 9), ("c", 3, 4), ("r", 0, 3))
    assert lineages.segments("e", 2, [["c", 1], ["r", 2]]) == (
        ("e", 1, 2), ("c", 2, 1), ("r", 0, 1))
    assert lineages.segments("x", 5, []) == (("x", 0, 5),)
    assert lineages.extend("p", 7, [("q", 2)]) == [["p", 7], ["q", 2]]

