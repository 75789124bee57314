"""Fork lineage without recursive queries: the ancestor chain stored on each fork's row.

A fork's view is its ancestors' messages up to each fork point, then its own.
A fork point never changes, so the chain of ancestors is fixed when a fork is
made; convo stores it on the fork's row (``conversations.lineage``, JSON)::

    [[parent_id, fork_seq], [grandparent_id, the parent's fork_seq], ...]

nearest first, NULL on a conversation that is no fork. A new fork's chain is
its source's with ``[source_id, at]`` in front (:func:`extend`); every writer
of ``parent_id`` (fork, branches, import) writes it, and migration
``0005_fork_lineage`` filled it for the forks made before.

Reads then resolve a fork from its own row (one statement, no ancestor row
read: :func:`segments`), and the fork trees *below* conversations (delete with
``cascade_forks``, the native export) are walked level by level with
``parent_id IN (...)`` (:data:`FORKS_OF`). No statement is recursive: a
sharded PostgreSQL (Citus) runs a recursive common table expression only
inside one shard.

Only convo writes conversations; a fork that something else inserted without
a lineage, or whose stored lineage is not the shape convo writes (:func:`usable`),
is still read correctly, its ancestors' rows read one statement each
(:func:`walk_up`); a root's stored lineage is ignored.

The plans here yield :class:`convo._store.core.Op`, imported when they run:
the core imports this module.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import TYPE_CHECKING, Any, Final, TypeAlias

import sqlalchemy as sa

from .sql import C

if TYPE_CHECKING:
    from .core import Plan

__all__ = [
    "FORKS_CHUNK", "LINEAGE_ROW", "Chain", "Segment", "chain_of", "extend", "forks_below", "forks_of",
    "segments", "tree_order", "usable", "walk_up",
]

#: (conversation_id, lo, hi): the messages of ``conversation_id`` with seq in (lo, hi].
Segment: TypeAlias = tuple[str, int, int]
#: A stored lineage: ``[ancestor_id, fork_seq]`` pairs, nearest first (JSON gives lists).
Chain: TypeAlias = Sequence[Sequence[Any]]

_B = sa.bindparam

#: What a read of a conversation needs to resolve its view, by position:
#: parent_id, fork_seq, last_seq, owner, lineage.
LINEAGE_ROW: Final = sa.select(
    C.c.parent_id, C.c.fork_seq, C.c.last_seq, C.c.owner, C.c.lineage
).where(C.c.id == _B("cid"))

#: Parents per ``parent_id IN (...)`` statement (far below SQLite's and psycopg's
#: limits on bound parameters).
FORKS_CHUNK: Final = 500


@cache
def forks_of(full: bool) -> sa.Select[Any]:
    """The forks whose parent is one of ``:ids`` (the whole rows, or id and parent_id)."""
    columns = list(C.c) if full else [C.c.id, C.c.parent_id]
    return sa.select(*columns).where(C.c.parent_id.in_(_B("ids", expanding=True)))


def extend(parent_id: str, fork_seq: int, parent_chain: Chain) -> list[list[Any]]:
    """The lineage of a new fork of ``parent_id`` at ``fork_seq``, as stored."""
    return [[parent_id, fork_seq], *([a, s] for a, s in parent_chain)]


def usable(chain: Any, parent_id: str) -> bool:
    """Whether a stored lineage has the shape convo writes and starts at the row's
    parent: ``[[parent_id, fork_seq], ...]``, ids as text, fork points as ints >= 0.
    A row edited by hand or damaged otherwise is read by walking up instead
    (:func:`walk_up`), from ``parent_id``, which is what the chain was made of."""
    if type(chain) is not list or not chain:
        return False
    for link in chain:
        if (type(link) is not list or len(link) != 2 or type(link[0]) is not str
                or type(link[1]) is not int or link[1] < 0):
            return False
    return bool(chain[0][0] == parent_id)


def segments(conversation_id: str, last_seq: int, chain: Chain) -> tuple[Segment, ...]:
    """The segments of a conversation's view, nearest first: its own messages
    after its fork point, then each ancestor's up to where the chain left it,
    capped by every nearer fork point (``hi <= lo``: an ancestor that gives no
    rows, whose summaries up to ``hi`` still apply)."""
    out = []
    cid, cap = conversation_id, last_seq
    for ancestor, fork_seq in chain:
        out.append((cid, fork_seq, cap))
        cid, cap = ancestor, min(cap, fork_seq)
    out.append((cid, 0, cap))
    return tuple(out)


def tree_order(roots: Sequence[Any], levels: Sequence[Sequence[Any]]) -> list[Any]:
    """Conversation rows of whole fork trees, as the native export writes them:
    tree by tree (in the order of ``roots``), parents before children (by depth),
    then by id. ``levels``: the forks below the roots, one list per depth."""
    tree_of = {r.id: i for i, r in enumerate(roots)}
    ordered = [(i, 0, r.id, r) for i, r in enumerate(roots)]
    for depth, level in enumerate(levels, 1):
        for row in level:
            tree = tree_of[row.id] = tree_of[row.parent_id]
            ordered.append((tree, depth, row.id, row))
    ordered.sort(key=lambda t: t[:3])
    return [t[3] for t in ordered]


# --- plans ---------------------------------------------------------------------------------


def walk_up(parent_id: str, fork_seq: int) -> Plan[list[list[Any]]]:
    """The lineage of a fork whose row has none (inserted by something other than
    convo, or left by an offline migration): its ancestors' rows, one statement
    each, up to a root or an ancestor that has its lineage."""
    from .core import Op  # the core imports this module (loaded by now)

    chain: list[list[Any]] = [[parent_id, fork_seq]]
    while True:
        row = yield Op(LINEAGE_ROW, {"cid": chain[-1][0]}, "first", driver=True)
        if row is None or row[0] is None:
            return chain
        if usable(row[4], row[0]):
            return [*chain, *row[4]]
        if any(row[0] == ancestor for ancestor, _ in chain):
            return chain  # a cycle (only a hand-edited database has one) ends the chain
        chain.append([row[0], row[1]])


def chain_of(parent_id: str, fork_seq: int | None, stored: Any) -> Plan[Chain]:
    """The ancestor chain of a fork's row: its stored lineage if :func:`usable`,
    else walked up from ``parent_id``."""
    if usable(stored, parent_id):
        return stored  # type: ignore[no-any-return]
    return (yield from walk_up(parent_id, fork_seq or 0))


def forks_below(ids: Sequence[str], *, full: bool) -> Plan[list[list[Any]]]:
    """Every fork below the conversations ``ids``, one list per depth (children,
    grandchildren, ...): a walk down ``parent_id IN (...)``, not a recursive query.
    Rows: whole conversation rows with ``full``, else (id, parent_id)."""
    from .core import Op  # the core imports this module (loaded by now)

    stmt = forks_of(full)
    levels: list[list[Any]] = []
    seen = set(ids)
    level = list(ids)
    while level:
        found = []
        for start in range(0, len(level), FORKS_CHUNK):
            found += (yield Op(stmt, {"ids": level[start:start + FORKS_CHUNK]}))
        found = [r for r in found if r.id not in seen]  # a cycle: only in a hand-edited database
        if not found:
            break
        seen.update(r.id for r in found)
        levels.append(found)
        level = [r.id for r in found]
    return levels
