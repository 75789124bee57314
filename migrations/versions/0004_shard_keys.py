"""Keys ready to shard by conversation: conversation_id in every child table's keys.

Revision ID: 0004_shard_keys
Revises: 0003_replays
Create Date: 2026-12-02

A sharded PostgreSQL (Citus) distributes tables by one column and co-locates
the rows that share its value; a primary or unique key, and a foreign key
between distributed tables, must then hold that column. Here it is
``conversation_id`` (docs/scaling.md):

- ``messages``: primary key ``(conversation_id, id)`` (was ``(id)``), plus a plain
  index on ``id``; ids still come from the column's sequence (PostgreSQL) or
  ``MAX(id) + 1`` in the INSERT (SQLite, which no longer has the rowid alias).
- ``message_tokens``: a new ``conversation_id`` (filled from each count's
  message), primary key ``(conversation_id, message_id, encoding)``, foreign key
  ``(conversation_id, message_id) -> messages (conversation_id, id)``.
- ``summaries``, ``runs``: primary key ``(conversation_id, id)``, plus a plain
  index on ``id``.

Every row is kept. The one exception: token counts whose message no longer
exists (possible only in a SQLite file written with foreign keys off) have no
conversation to go to; they are a cache and are dropped.
PostgreSQL changes the keys in place (ALTER); SQLite rebuilds the four tables
(batch mode; convo switches foreign keys off around migrations, or the rebuild's
DROP TABLE would cascade).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_shard_keys"
down_revision: str | Sequence[str] | None = "0003_replays"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_OLD_TOKENS_FK = "fk_message_tokens_message_id_messages"
_NEW_TOKENS_FK = "fk_message_tokens_conversation_id_messages"


def _postgresql() -> bool:
    return op.get_bind().dialect.name == "postgresql"


def _rekey(table: str, old: list[str], new: list[str]) -> None:
    """Replace ``table``'s primary key (named ``pk_<table>``), keeping the name."""
    with op.batch_alter_table(table) as batch:
        batch.drop_constraint(f"pk_{table}", type_="primary")
        batch.create_primary_key(f"pk_{table}", new)
        if "id" in old and "id" in new:
            batch.create_index(f"ix_{table}_id", ["id"])


def upgrade() -> None:
    # Token counts learn their message's conversation while messages.id is still its key.
    with op.batch_alter_table("message_tokens") as batch:
        batch.add_column(sa.Column("conversation_id", sa.String(length=32), nullable=True))
    op.execute(
        "UPDATE message_tokens SET conversation_id = (SELECT m.conversation_id FROM messages m"
        " WHERE m.id = message_tokens.message_id)"
    )
    op.execute("DELETE FROM message_tokens WHERE conversation_id IS NULL")
    if _postgresql():
        # the old foreign key depends on pk_messages (SQLite: dropped in the rebuild below)
        op.drop_constraint(_OLD_TOKENS_FK, "message_tokens", type_="foreignkey")
    _rekey("messages", ["id"], ["conversation_id", "id"])
    with op.batch_alter_table("message_tokens") as batch:
        if not _postgresql():
            batch.drop_constraint(_OLD_TOKENS_FK, type_="foreignkey")
        batch.alter_column(
            "conversation_id", existing_type=sa.String(length=32), nullable=False
        )
        batch.drop_constraint("pk_message_tokens", type_="primary")
        batch.create_primary_key(
            "pk_message_tokens", ["conversation_id", "message_id", "encoding"]
        )
        batch.create_foreign_key(
            _NEW_TOKENS_FK, "messages", ["conversation_id", "message_id"],
            ["conversation_id", "id"], ondelete="CASCADE",
        )
    _rekey("summaries", ["id"], ["conversation_id", "id"])
    _rekey("runs", ["id"], ["conversation_id", "id"])


def downgrade() -> None:
    for table in ("runs", "summaries"):
        with op.batch_alter_table(table) as batch:
            batch.drop_index(f"ix_{table}_id")
            batch.drop_constraint(f"pk_{table}", type_="primary")
            batch.create_primary_key(f"pk_{table}", ["id"])
    if _postgresql():
        op.drop_constraint(_NEW_TOKENS_FK, "message_tokens", type_="foreignkey")
    with op.batch_alter_table("messages") as batch:
        batch.drop_index("ix_messages_id")
        batch.drop_constraint("pk_messages", type_="primary")
        batch.create_primary_key("pk_messages", ["id"])
    with op.batch_alter_table("message_tokens") as batch:
        if not _postgresql():
            batch.drop_constraint(_NEW_TOKENS_FK, type_="foreignkey")
        batch.drop_constraint("pk_message_tokens", type_="primary")
        batch.create_primary_key("pk_message_tokens", ["message_id", "encoding"])
        batch.drop_column("conversation_id")
        batch.create_foreign_key(
            _OLD_TOKENS_FK, "messages", ["message_id"], ["id"], ondelete="CASCADE"
        )
