"""Replays of stored conversations and their per-turn, per-arm items.

Revision ID: 0003_replays
Revises: 0002_runs
Create Date: 2026-12-02

Hand-checked against ``alembic revision --autogenerate`` of convo/_store/schema.py.
Adds tables only: upgrading keeps every row.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003_replays"
down_revision: str | Sequence[str] | None = "0002_runs"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _json() -> sa.types.TypeEngine[object]:
    return sa.JSON(none_as_null=True).with_variant(
        postgresql.JSONB(none_as_null=True), "postgresql"
    )


def _timestamp() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "replays",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("owner", sa.String(length=255), nullable=True),
        sa.Column("mode", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("spec", _json(), nullable=True),
        sa.Column("created_at", _timestamp(), nullable=False),
        sa.Column("updated_at", _timestamp(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_replays")),
    )
    op.create_index("ix_replays_owner_created_at", "replays", ["owner", "created_at", "id"])
    op.create_table(
        "replay_items",
        sa.Column("replay_id", sa.String(length=32), nullable=False),
        sa.Column("conversation_id", sa.String(length=32), nullable=False),
        sa.Column("turn", sa.Integer(), nullable=False),
        sa.Column("arm", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("branch_id", sa.String(length=32), nullable=True),
        sa.Column("run_id", sa.String(length=32), nullable=True),
        sa.Column("original_run_id", sa.String(length=32), nullable=True),
        sa.Column("user_seq", sa.Integer(), nullable=False),
        sa.Column("original_text", sa.Text(), nullable=True),
        sa.Column("text", sa.Text(), nullable=True),
        sa.Column("similarity", sa.Float(), nullable=True),
        sa.Column("prompt_tokens", sa.Integer(), nullable=True),
        sa.Column("completion_tokens", sa.Integer(), nullable=True),
        sa.Column("kept", sa.Integer(), nullable=True),
        sa.Column("dropped", sa.Integer(), nullable=True),
        sa.Column("summarized", sa.Integer(), nullable=True),
        sa.Column("latency_ms", sa.Float(), nullable=True),
        sa.Column("finish_reason", sa.String(length=64), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("verdict", _json(), nullable=True),
        sa.Column("created_at", _timestamp(), nullable=False),
        sa.ForeignKeyConstraint(
            ["replay_id"], ["replays.id"],
            name=op.f("fk_replay_items_replay_id_replays"), ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "replay_id", "conversation_id", "turn", "arm", name=op.f("pk_replay_items")
        ),
    )


def downgrade() -> None:
    op.drop_table("replay_items")
    op.drop_index("ix_replays_owner_created_at", table_name="replays")
    op.drop_table("replays")
