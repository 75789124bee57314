"""The sync SQL store: :class:`Store`.

A thin shell over :mod:`convo._store_core`: it opens a connection, runs a
plan's statements, commits. :class:`~convo.AsyncStore` is the same shell
with ``await``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime
from typing import Any, Self, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection, Engine, Result
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from . import _migrate
from . import _store_core as core
from . import _store_driver as driver
from ._engine import create_engine, mode_engines, prepare_engine, safe_url
from ._exceptions import ConfigurationError, NotMigratedError, StoreError
from ._messages import Message
from ._records import Conversation, ReplyInfo, StoredMessage, Summary
from ._schema import SCHEMA_REVISION
from ._store_core import ROLLBACK, UNSET, ConversationPage, Mode, Op, Plan, Unset

__all__ = ["Store"]

T = TypeVar("T")

_VERSION_QUERY = sa.text("SELECT version_num FROM alembic_version")


def fetch(result: Result[Any], how: core.Fetch) -> Any:
    """Materialize ``result`` the way an :class:`~convo._store_core.Op` asked (shared by both shells)."""
    if how == "all":
        return result.all()
    if how == "first":
        return result.first()
    if how == "scalar":
        return result.scalar()
    if how == "rowcount":
        return result.rowcount  # type: ignore[attr-defined]
    return None


def database_error(exc: DBAPIError) -> StoreError:
    """The one translation of driver errors (connection lost, disk full, ...) into convo's tree."""
    return StoreError(f"database error ({type(exc.orig).__name__}): {exc.orig}")


def not_migrated(url: str, found: str | None) -> NotMigratedError:
    """The error for a database whose revision ``found`` is not :data:`SCHEMA_REVISION`."""
    if found is not None and not _migrate.is_known(found):
        return _migrate.newer_schema(url, found)
    state = f"is at revision {found!r}" if found else "has no convo schema"
    return NotMigratedError(
        f"database {url} {state}; this convo needs revision {SCHEMA_REVISION!r}: "
        "run `convo db upgrade` (or Store.migrate())",
        revision=found,
    )


class Store:
    """Conversations and messages in SQLite or PostgreSQL (sync API).

    Args:
        url: a database URL (``sqlite:///convo.db``, ``postgresql://user@host/db``),
            an existing :class:`sqlalchemy.engine.Engine`, or None for
            ``CONVO_DATABASE_URL`` / ``sqlite:///convo.db``.
        **engine_kwargs: passed to :func:`sqlalchemy.create_engine` (pool size, echo...).

    Every method that takes ``owner`` scopes by it: with an owner given, the
    conversations of other owners do not exist (:class:`~convo.ConversationNotFound`).
    The schema is checked once, on first use: a database that was never
    migrated (or is behind) raises :class:`~convo.NotMigratedError`.

    Example::

        with Store("sqlite:///chat.db") as store:
            store.migrate()
            conv = store.create_conversation(title="hello", owner="u1")
            store.append(conv.id, {"role": "user", "content": "Hi!"}, owner="u1")
    """

    def __init__(self, url: str | URL | Engine | None = None, **engine_kwargs: Any) -> None:
        if isinstance(url, AsyncEngine):
            raise ConfigurationError("an AsyncEngine needs AsyncStore, not Store")
        if isinstance(url, Engine):
            prepare_engine(url)
            self._engine = url
            self._owns_engine = False
        else:
            self._engine = create_engine(url, **engine_kwargs)
            self._owns_engine = True
        self._engines = mode_engines(self._engine)
        self._dialect = self._engine.dialect.name
        self._schema_ok = False

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine."""
        return self._engine

    def __repr__(self) -> str:
        return f"Store({safe_url(self._engine.url)!r})"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the connection pool (not when the engine was passed in)."""
        if self._owns_engine:
            self._engine.dispose()

    # --- schema ------------------------------------------------------------------------

    def migrate(self, revision: str = "head") -> None:
        """Upgrade the database schema to ``revision`` (default: the newest).

        Safe to call from many processes at once (app servers starting
        together): migrations serialize on a lock, and whoever waited finds the
        work done.

        Raises:
            ConfigurationError: ``revision`` is not one of convo's revisions.
            NotMigratedError: a newer convo migrated the database (``newer`` is True).
        """
        try:
            with self._engines["write"].connect() as conn:
                _migrate.upgrade(conn, revision)
        except DBAPIError as exc:
            raise database_error(exc) from exc
        self._schema_ok = False

    def current_revision(self) -> str | None:
        """The schema revision of the database, or None when it has no convo schema."""
        try:
            with self._engine.connect() as conn:
                return _current_revision(conn)
        except DBAPIError as exc:
            raise database_error(exc) from exc

    def is_migrated(self) -> bool:
        """Whether the database schema is the one this convo needs."""
        return self.current_revision() == SCHEMA_REVISION

    def check_schema(self) -> None:
        """Raise :class:`~convo.NotMigratedError` unless the schema is current."""
        found = self.current_revision()
        if found != SCHEMA_REVISION:
            raise not_migrated(safe_url(self._engine.url), found)
        self._schema_ok = True

    # --- the shell -----------------------------------------------------------------------

    def _run(self, plan: Plan[T], mode: Mode = "read") -> T:
        if not self._schema_ok:
            self.check_schema()
        try:
            with self._engines[mode].connect() as conn:
                value = _drive(conn, plan)
                conn.commit()
                return value
        except DBAPIError as exc:
            raise database_error(exc) from exc

    # --- conversations -------------------------------------------------------------------

    def create_conversation(
        self,
        *,
        title: str | None = None,
        owner: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Conversation:
        """Create an empty conversation.

        Raises:
            StoreInputError: ``metadata`` is not a JSON object.
        """
        return self._run(
            core.create_conversation(title=title, owner=owner, metadata=metadata), "single"
        )

    def get_conversation(self, conversation_id: str, *, owner: str | None = None) -> Conversation:
        """The conversation ``conversation_id``.

        Raises:
            ConversationNotFound: no such conversation (for this owner).
        """
        return self._run(core.get_conversation(conversation_id, owner=owner))

    def update_conversation(
        self,
        conversation_id: str,
        *,
        title: str | None | Unset = UNSET,
        metadata: Mapping[str, Any] | None | Unset = UNSET,
        owner: str | None = None,
    ) -> Conversation:
        """Change the title and/or replace the metadata (arguments left out stay unchanged)."""
        return self._run(
            core.update_conversation(conversation_id, title=title, metadata=metadata, owner=owner),
            "single",
        )

    def delete_conversation(
        self, conversation_id: str, *, owner: str | None = None, cascade_forks: bool = False
    ) -> None:
        """Delete a conversation with its messages, token counts and summaries.

        Raises:
            ForkConflictError: forks read this conversation's messages; pass
                ``cascade_forks=True`` to delete them (and their forks) too.
        """
        self._run(
            core.delete_conversation(conversation_id, owner=owner, cascade_forks=cascade_forks),
            "write",
        )

    def list_conversations(
        self,
        *,
        owner: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        updated_after: datetime | None = None,
        updated_before: datetime | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> ConversationPage:
        """Conversations, most recently updated first, one page at a time.

        ``metadata`` filters by JSON equality of each key (``{"topic": "x", "n": 1}``);
        datetime bounds are exclusive (naive datetimes mean UTC). Pages are
        keyset-paginated on ``(updated_at, id)``: stable under equal timestamps.
        """
        return self._run(
            core.list_conversations(
                dialect=self._dialect, owner=owner, metadata=metadata,
                created_after=created_after, created_before=created_before,
                updated_after=updated_after, updated_before=updated_before,
                limit=limit, cursor=cursor,
            )
        )

    def fork(
        self,
        conversation_id: str,
        *,
        at: int | None = None,
        title: str | None = None,
        owner: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Conversation:
        """A new conversation sharing messages ``1..at`` (default: all) of ``conversation_id``.

        Costs one row whatever the thread's length: the fork reads the shared
        messages from its ancestors. The fork inherits the source's owner and,
        unless given, its title; new messages continue at ``at + 1``.

        Raises:
            MessageNotFound: ``at`` is outside ``0..last_seq``.
        """
        return self._run(
            core.fork(conversation_id, at=at, title=title, owner=owner, metadata=metadata),
            "write",
        )

    # --- messages ------------------------------------------------------------------------

    def append(
        self,
        conversation_id: str,
        message: Message | Mapping[str, Any],
        *,
        idempotency_key: str | None = None,
        pinned: bool | None = None,
        reply: ReplyInfo | None = None,
        owner: str | None = None,
    ) -> StoredMessage:
        """Append one message with the next sequence number.

        Safe under concurrency (the conversation's row counter orders writers).
        With ``idempotency_key``, a key already stored in the conversation
        returns the stored message and writes nothing. ``pinned`` defaults to
        True for system and developer messages.

        Raises:
            InvalidMessageError: the message breaks the chat format.
            ConversationNotFound: no such conversation (for this owner).
        """
        return self._run(
            core.append(conversation_id, message, idempotency_key=idempotency_key,
                        pinned=pinned, reply=reply, owner=owner, dialect=self._dialect),
            core.append_mode(idempotency_key),
        )

    def append_many(
        self,
        conversation_id: str,
        messages: Iterable[Message | Mapping[str, Any]],
        *,
        owner: str | None = None,
    ) -> list[StoredMessage]:
        """Append messages with consecutive sequence numbers, in one transaction (all or nothing)."""
        return self._run(core.append_many(conversation_id, messages, owner=owner), "write")

    def messages(
        self,
        conversation_id: str,
        *,
        after: int | None = None,
        before: int | None = None,
        limit: int | None = None,
        newest_first: bool = False,
        owner: str | None = None,
    ) -> list[StoredMessage]:
        """Messages with ``after < seq < before``, across the fork lineage.

        Oldest first (ascending seq) by default; with ``newest_first``, newest
        first (descending seq), and with a ``limit`` only the newest rows are
        read (keyset on seq), whatever the thread's length.
        """
        return self._run(
            core.messages(conversation_id, after=after, before=before, limit=limit,
                          newest_first=newest_first, owner=owner)
        )

    def iter_messages(
        self,
        conversation_id: str,
        *,
        after: int | None = None,
        before: int | None = None,
        newest_first: bool = False,
        page_size: int = 500,
        owner: str | None = None,
    ) -> Iterator[StoredMessage]:
        """Like :meth:`messages`, lazily, one page (one short transaction) at a time."""
        while True:
            page = self.messages(conversation_id, after=after, before=before, limit=page_size,
                                 newest_first=newest_first, owner=owner)
            yield from page
            if len(page) < page_size:
                return
            if newest_first:
                before = page[-1].seq
            else:
                after = page[-1].seq

    def get_message(
        self, conversation_id: str, seq: int, *, owner: str | None = None
    ) -> StoredMessage:
        """The message at ``seq`` (own or inherited). Raises :class:`~convo.MessageNotFound`."""
        return self._run(core.get_message(conversation_id, seq, owner=owner))

    def count_messages(self, conversation_id: str, *, owner: str | None = None) -> int:
        """How many messages the conversation shows (inherited ones included); O(1)."""
        return self._run(core.count_messages(conversation_id, owner=owner))

    def search(
        self,
        text: str,
        *,
        owner: str | None = None,
        conversation_id: str | None = None,
        limit: int = 20,
    ) -> list[StoredMessage]:
        """Messages whose text contains ``text``, newest first.

        A case-insensitive substring match: ``ILIKE`` on PostgreSQL (Unicode
        case folding), ``LIKE`` on SQLite (ASCII case folding only), with
        ``%``/``_`` in ``text`` matched literally. It scans rows; a full-text
        index (FTS5 / tsvector) is future work. With ``conversation_id``, the
        conversation's lineage is searched.
        """
        return self._run(
            core.search(text, dialect=self._dialect, owner=owner,
                        conversation_id=conversation_id, limit=limit)
        )

    # --- context builder support ---------------------------------------------------------

    def tail(
        self,
        conversation_id: str,
        *,
        encoding: str,
        before: int | None = None,
        limit: int = 64,
        owner: str | None = None,
    ) -> list[tuple[StoredMessage, int | None]]:
        """Up to ``limit`` messages with ``seq < before``, newest first, each with its
        stored token count for ``encoding`` (None when not counted yet)."""
        return self._run(
            core.tail(conversation_id, encoding=encoding, before=before, limit=limit, owner=owner)
        )

    def context_start(
        self, conversation_id: str, *, encoding: str, limit: int, owner: str | None = None
    ) -> tuple[list[tuple[StoredMessage, int | None]], list[tuple[StoredMessage, int | None]]]:
        """The opening reads of a context build, on one connection: the pinned
        messages of the lineage (oldest first) and its newest ``limit`` messages,
        each with its stored token count for ``encoding``.

        Raises:
            ConversationNotFound: no such conversation (for this owner).
        """
        return self._run(
            core.context_start(conversation_id, encoding=encoding, limit=limit, owner=owner)
        )

    def pinned(
        self, conversation_id: str, *, encoding: str, owner: str | None = None
    ) -> list[tuple[StoredMessage, int | None]]:
        """All pinned messages of the lineage, oldest first, with their token counts."""
        return self._run(core.pinned(conversation_id, encoding=encoding, owner=owner))

    def set_pinned(
        self, conversation_id: str, seq: int, pinned: bool, *, owner: str | None = None
    ) -> None:
        """Pin or unpin a message of the conversation.

        Raises:
            ForkConflictError: the message is inherited from an ancestor (pinning
                it would change the ancestor and its other forks).
        """
        self._run(core.set_pinned(conversation_id, seq, pinned, owner=owner), "write")

    def save_token_counts(self, encoding: str, counts: Mapping[int, int]) -> None:
        """Store token counts (message id -> tokens) for ``encoding``; existing ones are kept."""
        self._run(core.save_token_counts(encoding, counts, dialect=self._dialect), "write")

    def add_summary(
        self,
        conversation_id: str,
        *,
        start_seq: int,
        end_seq: int,
        content: str,
        metadata: Mapping[str, Any] | None = None,
        owner: str | None = None,
    ) -> Summary:
        """Store a summary of messages ``start_seq..end_seq`` (inclusive)."""
        return self._run(
            core.add_summary(conversation_id, start_seq=start_seq, end_seq=end_seq,
                             content=content, metadata=metadata, owner=owner),
            "write",
        )

    def latest_summary(
        self, conversation_id: str, *, up_to_seq: int | None = None, owner: str | None = None
    ) -> Summary | None:
        """The summary reaching furthest (``end_seq <= up_to_seq``), own or inherited from
        an ancestor up to the fork point; None if there is none."""
        return self._run(core.latest_summary(conversation_id, up_to_seq=up_to_seq, owner=owner))


def _current_revision(conn: Connection) -> str | None:
    if not conn.dialect.has_table(conn, "alembic_version"):
        return None
    value = conn.execute(_VERSION_QUERY).scalar()
    return str(value) if value is not None else None


def _drive(conn: Connection, plan: Plan[T]) -> T:
    try:
        op: Op | object = next(plan)
        while True:
            try:
                if op is ROLLBACK:
                    conn.rollback()
                    value = None
                else:
                    assert isinstance(op, Op)
                    if op.driver:
                        value = _driver_fetch(conn, op)
                    else:
                        value = fetch(conn.execute(op.stmt, op.params), op.fetch)
            except DBAPIError as exc:  # the plan may recover (see _store_core)
                op = plan.throw(exc)
                continue
            op = plan.send(value)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]


def _driver_fetch(conn: Connection, op: Op) -> list[tuple[Any, ...]]:
    prepared = driver.prepare(conn.dialect, op.stmt)
    if driver.observed(conn):
        # someone listens to cursor events (tracing, logging): go through SQLAlchemy
        raw = conn.exec_driver_sql(prepared.sql, prepared.args(op.params))  # type: ignore[arg-type]
        return driver.process(prepared, raw.all())
    args = prepared.args(op.params)  # type: ignore[arg-type]
    dbapi_conn = conn.connection.dbapi_connection
    assert dbapi_conn is not None
    cursor = dbapi_conn.cursor()
    try:
        cursor.execute(prepared.sql, args)
        return driver.process(prepared, cursor.fetchall())
    except conn.dialect.loaded_dbapi.Error as exc:
        # What SQLAlchemy's execute would do: notice a dropped connection, and wrap
        # the driver's error so the store translates it into convo's tree.
        if conn.dialect.is_disconnect(exc, dbapi_conn, cursor):
            conn.invalidate(exc)
        raise DBAPIError.instance(
            prepared.sql, args, exc, conn.dialect.loaded_dbapi.Error
        ) from exc
    finally:
        cursor.close()
