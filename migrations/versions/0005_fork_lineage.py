"""Fork lineage on the conversation row: reads of a fork need no recursive query.

Revision ID: 0005_fork_lineage
Revises: 0004_shard_keys
Create Date: 2026-12-02

A fork's view is its ancestors' messages up to each fork point, then its own.
Until now every read of a fork resolved the ancestor chain with a recursive
query (``WITH RECURSIVE`` over ``parent_id``), which a sharded PostgreSQL
(Citus, conversations distributed by id) runs only inside one shard. A fork
point never changes, so the chain is fixed when the fork is made; it is now
stored on the fork's row:

- ``conversations.lineage`` (JSON; JSONB on PostgreSQL):
  ``[[parent_id, fork_seq], [grandparent_id, parent's fork_seq], ...]``,
  nearest first; NULL on a conversation that is no fork.

The upgrade fills it for every existing fork, without a recursive query (so it
runs on Citus too): one read of every fork's ``(id, parent_id, fork_seq)``,
each chain walked up in Python, and the rows updated by id in batches. Memory
holds those three values per fork, once. Offline (``--sql``) there are no rows
to read, so no backfill is written; convo reads a fork whose lineage is NULL by
walking its ancestors' rows one statement each (correct, slower: run the
upgrade online to fill them).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005_fork_lineage"
down_revision: str | Sequence[str] | None = "0004_shard_keys"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BATCH = 1000  # rows per UPDATE batch


def _json() -> sa.types.TypeEngine[object]:
    return sa.JSON(none_as_null=True).with_variant(
        postgresql.JSONB(none_as_null=True), "postgresql"
    )


_CONVERSATIONS = sa.table(
    "conversations", sa.column("id", sa.String()), sa.column("parent_id", sa.String()),
    sa.column("fork_seq", sa.Integer()), sa.column("lineage", _json()),
)


def chains(forks: dict[str, tuple[str, int]]) -> dict[str, list[list[object]]]:
    """The lineage of every fork, from each fork's ``(parent_id, fork_seq)``."""
    out: dict[str, list[list[object]]] = {}
    for cid in forks:
        chain: list[list[object]] = []
        seen = {cid}
        node = cid
        while node in forks:  # up to the root (a conversation that is no fork)
            parent, fork_seq = forks[node]
            chain.append([parent, fork_seq])
            if parent in seen:  # a cycle: only a hand-edited database has one
                break
            seen.add(parent)
            node = parent
        out[cid] = chain
    return out


def _backfill() -> None:
    conn = op.get_bind()
    c = _CONVERSATIONS
    forks = {
        row.id: (row.parent_id, row.fork_seq)
        for row in conn.execute(
            sa.select(c.c.id, c.c.parent_id, c.c.fork_seq).where(c.c.parent_id.is_not(None))
        )
    }
    update = (
        sa.update(c).where(c.c.id == sa.bindparam("b_id")).values(lineage=sa.bindparam("b_lineage"))
    )
    rows = [{"b_id": cid, "b_lineage": chain} for cid, chain in chains(forks).items()]
    for start in range(0, len(rows), _BATCH):
        conn.execute(update, rows[start:start + _BATCH])


def upgrade() -> None:
    with op.batch_alter_table("conversations") as batch:
        batch.add_column(sa.Column("lineage", _json(), nullable=True))
    if not op.get_context().as_sql:
        _backfill()


def downgrade() -> None:
    with op.batch_alter_table("conversations") as batch:
        batch.drop_column("lineage")
