"""The SQL schema of convo (SQLAlchemy 2 declarative), shared by SQLite and PostgreSQL.

These rows are storage only: the store converts them to and from the pydantic
values of :mod:`convo._records` in one place (:mod:`convo._store.rows`). The
Alembic migrations in ``migrations/`` create exactly this schema; a test
checks that models and migrations never drift.

Tables::

    conversations   id (time-ordered hex), title, owner, metadata, timestamps,
                    parent_id / fork_seq (fork lineage), last_seq (sequence counter),
                    branch_kind / branch_of / current_branch_id (branches of a thread),
                    lineage (a fork's ancestors and fork points, fixed when it is made)
    messages        one row per message; UNIQUE(conversation_id, seq)
    message_tokens  (conversation_id, message_id, encoding) -> tokens, filled by the
                    context builder
    summaries       text standing in for messages start_seq..end_seq
    runs            one row per request sent to a model: the exact body, what the
                    context builder decided, status, timings, the reply's id
    replays         a replay of stored conversations against "arms" (its spec, status)
    replay_items    one (conversation, turn, arm) of a replay: the new reply's run,
                    the comparison with the original, the judge's verdict

Ready to shard by conversation (Citus distributes tables by a column and
co-locates the rows that share its value; see docs/scaling.md): every table
that hangs off a conversation (:data:`CONVERSATION_CHILDREN`) carries
``conversation_id``, and its primary key, every unique key and every foreign
key between those tables include it. ``tests/test_shard_ready.py`` keeps it so.

Ids stay global (message and summary ids are public: ``StoredMessage.id``,
``Run.reply_message_id``, ``Run.summary_id``) but the database no longer
enforces their uniqueness alone (a sharded database cannot: a unique key must
hold the distribution column). They come from one source: PostgreSQL, the
column's sequence (``BIGSERIAL``); SQLite, ``MAX(id) + 1`` in the INSERT itself
(on the plain ``id`` index: O(log n); SQLite writes are serialized by ``BEGIN
IMMEDIATE``), the same values the rowid alias gave before revision 0004 (no
AUTOINCREMENT: the id of a deleted newest row is given again). The plain
indexes on ``id`` serve the lookups by id alone (a run by its id, an import's
existence checks), which a sharded database answers by asking every shard.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

__all__ = [
    "CONVERSATION_CHILDREN",
    "SCHEMA_REVISION",
    "Base",
    "ConversationRow",
    "MessageRow",
    "MessageTokenRow",
    "ReplayItemRow",
    "ReplayRow",
    "RunRow",
    "SummaryRow",
    "UTCDateTime",
    "metadata",
]

#: The Alembic revision this code expects the database to be at (the head of
#: ``migrations/versions``; a test keeps the two equal).
SCHEMA_REVISION = "0005_fork_lineage"

# Stable constraint names on both databases, so migrations can refer to them.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)

#: The tables that hang off a conversation: distributed by ``conversation_id`` in a
#: sharded database (``conversations`` by its ``id``; ``replays`` is a reference table).
CONVERSATION_CHILDREN = ("messages", "message_tokens", "summaries", "runs", "replay_items")


#: The last datetime bound on SQLite and its text, shared by every column: a write
#: binds one stamp several times (an append's counter update and its row, every
#: row of a bulk insert), and datetimes are immutable.
_LAST_STAMP: list[tuple[Any, str]] = [(None, "")]


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on both databases.

    PostgreSQL stores ``timestamptz``; SQLite has no time zones, so values are
    stored as UTC text (fixed width, so text order is time order) and read
    back with ``tzinfo=UTC``. Naive datetimes given as filters mean UTC.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        elif value.utcoffset():
            value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            # SQLAlchemy's SQLite DATETIME drops tzinfo; make sure it is UTC first.
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        # psycopg answers in the session's time zone (e.g. ZoneInfo("Etc/UTC")).
        return value if value.tzinfo is UTC else value.astimezone(UTC)

    def bind_processor(self, dialect: Dialect) -> Any:
        """SQLite: an aware UTC datetime (what the store writes) as SQLAlchemy's DATETIME
        text in one call (the same format: ISO date, space, microseconds always);
        anything else takes the general route (:meth:`process_bind_param`, then
        SQLAlchemy's formatting)."""
        general = super().bind_processor(dialect)
        if dialect.name != "sqlite" or general is None:
            return general
        last = _LAST_STAMP

        def process(value: Any) -> Any:
            if type(value) is datetime and value.tzinfo is UTC:
                seen, text = last[0]  # (one tuple: consistent under threads)
                if seen is value:
                    return text
                # isoformat(" ", "microseconds") of the naive value, at a third of the
                # cost (%-formatting: twice as fast here as the f-string)
                text = "%04d-%02d-%02d %02d:%02d:%02d.%06d" % (  # noqa: UP031
                    value.year, value.month, value.day,
                    value.hour, value.minute, value.second, value.microsecond,
                )
                last[0] = (value, text)
                return text
            return general(value)

        return process

    def result_processor(self, dialect: Dialect, coltype: Any) -> Any:
        """SQLite: the stored text parsed and marked UTC in one call (every message
        read has a timestamp); anything but plain naive ISO text takes the general
        route (SQLAlchemy's parser, then :meth:`process_result_value`)."""
        general = super().result_processor(dialect, coltype)
        if dialect.name != "sqlite" or general is None:
            return general
        parse = datetime.fromisoformat

        def process(value: Any) -> datetime | None:
            if type(value) is str:
                try:
                    # parsed as UTC: several times faster than .replace(tzinfo=UTC)
                    # afterwards; text that already carries an offset fails here
                    return parse(value + "+00:00")
                except ValueError:
                    pass
            return general(value)

        return process


# JSONB on PostgreSQL (indexable, compact, semantic equality); JSON text on SQLite.
# none_as_null: a Python None is SQL NULL, so "no metadata" costs nothing.
JSONType = sa.JSON(none_as_null=True).with_variant(
    postgresql.JSONB(none_as_null=True), "postgresql"
)
# BIGINT (BIGSERIAL: the sequence gives ids) on PostgreSQL; INTEGER on SQLite (a
# 64-bit integer there too), where the INSERT gives the id (see the module docstring).
BigID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

ConversationID = Annotated[str, mapped_column(sa.String(32))]
Timestamp = Annotated[datetime, mapped_column(UTCDateTime())]
JSONDict = Annotated[dict[str, Any] | None, mapped_column(JSONType)]
ShortText = Annotated[str | None, mapped_column(sa.String(255))]


class Base(DeclarativeBase):
    metadata = metadata


class ConversationRow(Base):
    __tablename__ = "conversations"

    id: Mapped[ConversationID] = mapped_column(primary_key=True)
    title: Mapped[str | None] = mapped_column(sa.Text)
    owner: Mapped[ShortText]
    # ``metadata`` is reserved on declarative classes; the column keeps the name.
    meta: Mapped[JSONDict] = mapped_column("metadata")
    created_at: Mapped[Timestamp]
    updated_at: Mapped[Timestamp]
    parent_id: Mapped[str | None] = mapped_column(
        sa.String(32), sa.ForeignKey("conversations.id"), index=True
    )
    fork_seq: Mapped[int | None]
    # The per-conversation sequence counter: appends take the next value with
    # UPDATE ... SET last_seq = last_seq + 1 RETURNING last_seq (row lock = ordering).
    last_seq: Mapped[int] = mapped_column(server_default=sa.text("0"))
    # Branches (regenerate, edit-and-continue, replays) are forks marked with
    # their kind and the conversation they branch (the thread's root); the
    # root points at the branch that is current, where new turns go.
    branch_kind: Mapped[str | None] = mapped_column(sa.String(16))
    branch_of: Mapped[str | None] = mapped_column(sa.String(32), index=True)
    current_branch_id: Mapped[str | None] = mapped_column(sa.String(32))
    # A fork's ancestors, nearest first: [[parent_id, fork_seq], [grandparent_id,
    # the parent's fork_seq], ...]; NULL on a conversation that is no fork. Fixed
    # when the fork is made (a fork point never changes), so reads resolve the
    # ancestor chain from this row alone (see convo._store.lineage).
    lineage: Mapped[list[Any] | None] = mapped_column(JSONType)

    __table_args__ = (
        # Listing newest first, per owner, with a stable keyset (updated_at, id).
        sa.Index("ix_conversations_owner_updated_at", "owner", "updated_at", "id"),
    )


class MessageRow(Base):
    __tablename__ = "messages"

    # Key (conversation_id, id): see __table_args__ and the module docstring. The
    # sequence is the one BIGSERIAL made (PostgreSQL only; SQLite ignores it).
    id: Mapped[int] = mapped_column(BigID, sa.Sequence("messages_id_seq"), index=True)
    conversation_id: Mapped[ConversationID] = mapped_column(
        sa.ForeignKey("conversations.id", ondelete="CASCADE")
    )
    seq: Mapped[int]
    role: Mapped[str] = mapped_column(sa.String(16))
    # Text of the content: the string, or the text parts joined (what search reads).
    content: Mapped[str | None] = mapped_column(sa.Text)
    # The content parts, when the content is a list (then it is the source of truth).
    parts: Mapped[list[Any] | None] = mapped_column(JSONType)
    name: Mapped[ShortText]
    tool_calls: Mapped[list[Any] | None] = mapped_column(JSONType)
    refusal: Mapped[str | None] = mapped_column(sa.Text)
    tool_call_id: Mapped[ShortText]
    meta: Mapped[JSONDict] = mapped_column("metadata")
    pinned: Mapped[bool] = mapped_column(server_default=sa.false())
    idempotency_key: Mapped[ShortText]
    model: Mapped[ShortText]
    finish_reason: Mapped[str | None] = mapped_column(sa.String(64))
    usage: Mapped[JSONDict]
    system_fingerprint: Mapped[ShortText]
    seed: Mapped[int | None] = mapped_column(sa.BigInteger)
    created_at: Mapped[Timestamp]

    __table_args__ = (
        # The distribution column first: a sharded database keys rows by it.
        sa.PrimaryKeyConstraint("conversation_id", "id"),
        # Also the index of every keyset read (newest first or oldest first).
        sa.UniqueConstraint("conversation_id", "seq"),
        # Partial: most messages carry no key, so the index stays small.
        sa.Index(
            "ix_messages_idempotency_key",
            "conversation_id",
            "idempotency_key",
            unique=True,
            sqlite_where=sa.text("idempotency_key IS NOT NULL"),
            postgresql_where=sa.text("idempotency_key IS NOT NULL"),
        ),
        # Partial: the pinned messages of a conversation without scanning it.
        # SQLite only uses a partial index when the query repeats its WHERE
        # term, and SQLAlchemy renders a boolean test as "pinned = 1" there.
        sa.Index(
            "ix_messages_pinned",
            "conversation_id",
            "seq",
            sqlite_where=sa.text("pinned = 1"),
            postgresql_where=sa.text("pinned"),
        ),
    )


class MessageTokenRow(Base):
    __tablename__ = "message_tokens"

    message_id: Mapped[int] = mapped_column(BigID)
    encoding: Mapped[str] = mapped_column(sa.String(64))
    tokens: Mapped[int]
    # The message's conversation (its rows live on the same shard).
    conversation_id: Mapped[ConversationID]

    __table_args__ = (
        sa.PrimaryKeyConstraint("conversation_id", "message_id", "encoding"),
        sa.ForeignKeyConstraint(
            ["conversation_id", "message_id"],
            ["messages.conversation_id", "messages.id"],
            ondelete="CASCADE",
        ),
    )


class SummaryRow(Base):
    __tablename__ = "summaries"

    id: Mapped[int] = mapped_column(BigID, sa.Sequence("summaries_id_seq"), index=True)
    conversation_id: Mapped[ConversationID] = mapped_column(
        sa.ForeignKey("conversations.id", ondelete="CASCADE")
    )
    start_seq: Mapped[int]
    end_seq: Mapped[int]
    content: Mapped[str] = mapped_column(sa.Text)
    meta: Mapped[JSONDict] = mapped_column("metadata")
    created_at: Mapped[Timestamp]

    __table_args__ = (
        sa.PrimaryKeyConstraint("conversation_id", "id"),
        sa.Index("ix_summaries_conversation_id_end_seq", "conversation_id", "end_seq"),
    )


class RunRow(Base):
    """The record of one request to a model (see :class:`convo.Run`)."""

    __tablename__ = "runs"

    # Time-ordered hex (like conversation ids): sortable, and assigned by the
    # app, so a run can be referred to before its row exists elsewhere. Key
    # (conversation_id, id); the plain index on id serves get_run(run_id).
    id: Mapped[str] = mapped_column(sa.String(32), index=True)
    conversation_id: Mapped[ConversationID] = mapped_column(
        sa.ForeignKey("conversations.id", ondelete="CASCADE")
    )
    owner: Mapped[ShortText]
    endpoint: Mapped[str] = mapped_column(sa.String(32))
    mode: Mapped[str] = mapped_column(sa.String(16))
    model: Mapped[str] = mapped_column(sa.String(255))
    base_url: Mapped[str | None] = mapped_column(sa.Text)
    stream: Mapped[bool] = mapped_column(server_default=sa.false())
    # The body exactly as sent (JSON text, not JSONB: key order and spelling
    # are kept, so a reproduction re-sends the same bytes).
    request: Mapped[str] = mapped_column(sa.Text)
    settings: Mapped[JSONDict]
    kept_seqs: Mapped[list[Any] | None] = mapped_column(JSONType)
    summary_id: Mapped[int | None] = mapped_column(sa.BigInteger)
    input_seq: Mapped[int | None]
    idempotency_key: Mapped[ShortText]
    round: Mapped[int] = mapped_column(server_default=sa.text("0"))
    estimated_prompt_tokens: Mapped[int | None]
    reported_prompt_tokens: Mapped[int | None]
    completion_tokens: Mapped[int | None]
    usage: Mapped[JSONDict]
    reply_message_id: Mapped[int | None] = mapped_column(sa.BigInteger)
    status: Mapped[str] = mapped_column(sa.String(16))
    error_type: Mapped[ShortText]
    error_message: Mapped[str | None] = mapped_column(sa.Text)
    attempts: Mapped[int] = mapped_column(server_default=sa.text("0"))
    ttfb_ms: Mapped[float | None] = mapped_column(sa.Float)
    latency_ms: Mapped[float | None] = mapped_column(sa.Float)
    finish_reason: Mapped[str | None] = mapped_column(sa.String(64))
    system_fingerprint: Mapped[ShortText]
    seed: Mapped[int | None] = mapped_column(sa.BigInteger)
    # What came back: the assembled response, or what a broken stream delivered.
    response: Mapped[JSONDict]
    reproduces_id: Mapped[str | None] = mapped_column(sa.String(32), index=True)
    replays_id: Mapped[str | None] = mapped_column(sa.String(32), index=True)
    meta: Mapped[JSONDict] = mapped_column("metadata")
    created_at: Mapped[Timestamp]
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    __table_args__ = (
        sa.PrimaryKeyConstraint("conversation_id", "id"),
        # Newest first per conversation, keyset (created_at, id).
        sa.Index("ix_runs_conversation_id_created_at", "conversation_id", "created_at", "id"),
        # "Which run produced this reply?" (replays link to the original turn's run).
        sa.Index("ix_runs_reply_message_id", "reply_message_id"),
    )


class ReplayRow(Base):
    """A replay: stored conversations re-run against one or more arms."""

    __tablename__ = "replays"

    id: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    owner: Mapped[ShortText]
    mode: Mapped[str] = mapped_column(sa.String(32))
    status: Mapped[str] = mapped_column(sa.String(16))
    spec: Mapped[JSONDict]
    created_at: Mapped[Timestamp]
    updated_at: Mapped[Timestamp]

    __table_args__ = (sa.Index("ix_replays_owner_created_at", "owner", "created_at", "id"),)


class ReplayItemRow(Base):
    """One (conversation, user turn, arm) of a replay; its key is what a resumed replay skips."""

    __tablename__ = "replay_items"

    replay_id: Mapped[str] = mapped_column(
        sa.String(32), sa.ForeignKey("replays.id", ondelete="CASCADE"), primary_key=True
    )
    conversation_id: Mapped[ConversationID] = mapped_column(primary_key=True)
    turn: Mapped[int] = mapped_column(primary_key=True)
    arm: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    status: Mapped[str] = mapped_column(sa.String(16))
    branch_id: Mapped[str | None] = mapped_column(sa.String(32))
    run_id: Mapped[str | None] = mapped_column(sa.String(32))
    original_run_id: Mapped[str | None] = mapped_column(sa.String(32))
    user_seq: Mapped[int]
    original_text: Mapped[str | None] = mapped_column(sa.Text)
    text: Mapped[str | None] = mapped_column(sa.Text)
    similarity: Mapped[float | None] = mapped_column(sa.Float)
    prompt_tokens: Mapped[int | None]
    completion_tokens: Mapped[int | None]
    kept: Mapped[int | None]
    dropped: Mapped[int | None]
    summarized: Mapped[int | None]
    latency_ms: Mapped[float | None] = mapped_column(sa.Float)
    finish_reason: Mapped[str | None] = mapped_column(sa.String(64))
    error: Mapped[str | None] = mapped_column(sa.Text)
    verdict: Mapped[JSONDict]
    created_at: Mapped[Timestamp]
