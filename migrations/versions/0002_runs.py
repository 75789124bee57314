"""Run records (one row per request sent to a model) and branch columns.

Revision ID: 0002_runs
Revises: 0001_initial
Create Date: 2026-12-02

Hand-checked against ``alembic revision --autogenerate`` of convo/_store/schema.py.
Adds a table and three nullable columns: upgrading a 0001 database keeps
every row as it was.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002_runs"
down_revision: str | Sequence[str] | None = "0001_initial"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _json() -> sa.types.TypeEngine[object]:
    return sa.JSON(none_as_null=True).with_variant(
        postgresql.JSONB(none_as_null=True), "postgresql"
    )


def _timestamp() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("conversations") as batch:
        batch.add_column(sa.Column("branch_kind", sa.String(length=16), nullable=True))
        batch.add_column(sa.Column("branch_of", sa.String(length=32), nullable=True))
        batch.add_column(sa.Column("current_branch_id", sa.String(length=32), nullable=True))
        batch.create_index(op.f("ix_conversations_branch_of"), ["branch_of"])
    op.create_table(
        "runs",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("conversation_id", sa.String(length=32), nullable=False),
        sa.Column("owner", sa.String(length=255), nullable=True),
        sa.Column("endpoint", sa.String(length=32), nullable=False),
        sa.Column("mode", sa.String(length=16), nullable=False),
        sa.Column("model", sa.String(length=255), nullable=False),
        sa.Column("base_url", sa.Text(), nullable=True),
        sa.Column("stream", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("request", sa.Text(), nullable=False),
        sa.Column("settings", _json(), nullable=True),
        sa.Column("kept_seqs", _json(), nullable=True),
        sa.Column("summary_id", sa.BigInteger(), nullable=True),
        sa.Column("input_seq", sa.Integer(), nullable=True),
        sa.Column("idempotency_key", sa.String(length=255), nullable=True),
        sa.Column("round", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("estimated_prompt_tokens", sa.Integer(), nullable=True),
        sa.Column("reported_prompt_tokens", sa.Integer(), nullable=True),
        sa.Column("completion_tokens", sa.Integer(), nullable=True),
        sa.Column("usage", _json(), nullable=True),
        sa.Column("reply_message_id", sa.BigInteger(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("error_type", sa.String(length=255), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("ttfb_ms", sa.Float(), nullable=True),
        sa.Column("latency_ms", sa.Float(), nullable=True),
        sa.Column("finish_reason", sa.String(length=64), nullable=True),
        sa.Column("system_fingerprint", sa.String(length=255), nullable=True),
        sa.Column("seed", sa.BigInteger(), nullable=True),
        sa.Column("response", _json(), nullable=True),
        sa.Column("reproduces_id", sa.String(length=32), nullable=True),
        sa.Column("replays_id", sa.String(length=32), nullable=True),
        sa.Column("metadata", _json(), nullable=True),
        sa.Column("created_at", _timestamp(), nullable=False),
        sa.Column("finished_at", _timestamp(), nullable=True),
        sa.ForeignKeyConstraint(
            ["conversation_id"], ["conversations.id"],
            name=op.f("fk_runs_conversation_id_conversations"), ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_runs")),
    )
    op.create_index(
        "ix_runs_conversation_id_created_at", "runs", ["conversation_id", "created_at", "id"]
    )
    op.create_index("ix_runs_reply_message_id", "runs", ["reply_message_id"])
    op.create_index(op.f("ix_runs_reproduces_id"), "runs", ["reproduces_id"])
    op.create_index(op.f("ix_runs_replays_id"), "runs", ["replays_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_runs_replays_id"), table_name="runs")
    op.drop_index(op.f("ix_runs_reproduces_id"), table_name="runs")
    op.drop_index("ix_runs_reply_message_id", table_name="runs")
    op.drop_index("ix_runs_conversation_id_created_at", table_name="runs")
    op.drop_table("runs")
    with op.batch_alter_table("conversations") as batch:
        batch.drop_index(op.f("ix_conversations_branch_of"))
        batch.drop_column("current_branch_id")
        batch.drop_column("branch_of")
        batch.drop_column("branch_kind")
