"""Initial schema: conversations, messages, message_tokens, summaries.

Revision ID: 0001_initial
Revises:
Create Date: 2026-11-22

Hand-checked against ``alembic revision --autogenerate`` of convo/_store/schema.py.
Types are spelled out here (not imported from convo) so this revision stays
what it was when later revisions change the models.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001_initial"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _json() -> sa.types.TypeEngine[object]:
    return sa.JSON(none_as_null=True).with_variant(
        postgresql.JSONB(none_as_null=True), "postgresql"
    )


def _id() -> sa.types.TypeEngine[int]:
    # INTEGER PRIMARY KEY is SQLite's rowid alias; BIGINT (BIGSERIAL) on PostgreSQL.
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _timestamp() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "conversations",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("title", sa.Text(), nullable=True),
        sa.Column("owner", sa.String(length=255), nullable=True),
        sa.Column("metadata", _json(), nullable=True),
        sa.Column("created_at", _timestamp(), nullable=False),
        sa.Column("updated_at", _timestamp(), nullable=False),
        sa.Column("parent_id", sa.String(length=32), nullable=True),
        sa.Column("fork_seq", sa.Integer(), nullable=True),
        sa.Column("last_seq", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.ForeignKeyConstraint(
            ["parent_id"], ["conversations.id"],
            name=op.f("fk_conversations_parent_id_conversations"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_conversations")),
    )
    op.create_index(
        "ix_conversations_owner_updated_at", "conversations", ["owner", "updated_at", "id"]
    )
    op.create_index(op.f("ix_conversations_parent_id"), "conversations", ["parent_id"])

    op.create_table(
        "messages",
        sa.Column("id", _id(), autoincrement=True, nullable=False),
        sa.Column("conversation_id", sa.String(length=32), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("content", sa.Text(), nullable=True),
        sa.Column("parts", _json(), nullable=True),
        sa.Column("name", sa.String(length=255), nullable=True),
        sa.Column("tool_calls", _json(), nullable=True),
        sa.Column("refusal", sa.Text(), nullable=True),
        sa.Column("tool_call_id", sa.String(length=255), nullable=True),
        sa.Column("metadata", _json(), nullable=True),
        sa.Column("pinned", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("idempotency_key", sa.String(length=255), nullable=True),
        sa.Column("model", sa.String(length=255), nullable=True),
        sa.Column("finish_reason", sa.String(length=64), nullable=True),
        sa.Column("usage", _json(), nullable=True),
        sa.Column("system_fingerprint", sa.String(length=255), nullable=True),
        sa.Column("seed", sa.BigInteger(), nullable=True),
        sa.Column("created_at", _timestamp(), nullable=False),
        sa.ForeignKeyConstraint(
            ["conversation_id"], ["conversations.id"],
            name=op.f("fk_messages_conversation_id_conversations"), ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_messages")),
        sa.UniqueConstraint(
            "conversation_id", "seq", name=op.f("uq_messages_conversation_id_seq")
        ),
    )
    op.create_index(
        "ix_messages_idempotency_key", "messages", ["conversation_id", "idempotency_key"],
        unique=True,
        sqlite_where=sa.text("idempotency_key IS NOT NULL"),
        postgresql_where=sa.text("idempotency_key IS NOT NULL"),
    )
    op.create_index(
        "ix_messages_pinned", "messages", ["conversation_id", "seq"],
        sqlite_where=sa.text("pinned = 1"),
        postgresql_where=sa.text("pinned"),
    )

    op.create_table(
        "summaries",
        sa.Column("id", _id(), autoincrement=True, nullable=False),
        sa.Column("conversation_id", sa.String(length=32), nullable=False),
        sa.Column("start_seq", sa.Integer(), nullable=False),
        sa.Column("end_seq", sa.Integer(), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("metadata", _json(), nullable=True),
        sa.Column("created_at", _timestamp(), nullable=False),
        sa.ForeignKeyConstraint(
            ["conversation_id"], ["conversations.id"],
            name=op.f("fk_summaries_conversation_id_conversations"), ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_summaries")),
    )
    op.create_index(
        "ix_summaries_conversation_id_end_seq", "summaries", ["conversation_id", "end_seq"]
    )

    op.create_table(
        "message_tokens",
        sa.Column("message_id", _id(), nullable=False),
        sa.Column("encoding", sa.String(length=64), nullable=False),
        sa.Column("tokens", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["message_id"], ["messages.id"],
            name=op.f("fk_message_tokens_message_id_messages"), ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("message_id", "encoding", name=op.f("pk_message_tokens")),
    )


def downgrade() -> None:
    op.drop_table("message_tokens")
    op.drop_index("ix_summaries_conversation_id_end_seq", table_name="summaries")
    op.drop_table("summaries")
    op.drop_index("ix_messages_pinned", table_name="messages")
    op.drop_index("ix_messages_idempotency_key", table_name="messages")
    op.drop_table("messages")
    op.drop_index(op.f("ix_conversations_parent_id"), table_name="conversations")
    op.drop_index("ix_conversations_owner_updated_at", table_name="conversations")
    op.drop_table("conversations")
