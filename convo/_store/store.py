"""The sync SQL store: :class:`Store`.

A thin shell over the store's plans (:mod:`convo._store.core`; the context
builder's in :mod:`convo._store.context`; runs, branches, replays): it opens a
connection, runs a plan's statements, commits. :class:`~convo.AsyncStore` is the same shell
with ``await``.
"""

from __future__ import annotations

import contextlib
import os
import threading
import weakref
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime
from typing import Any, ClassVar, Self, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection, Engine, Result
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import QueuePool

from .._exceptions import (
    ConfigurationError,
    NotMigratedError,
    ReadOnlyStoreError,
    StoredDataError,
    StoreError,
)
from .._messages import Message
from .._records import Conversation, ReplyInfo, StoredMessage, Summary
from . import context, core, driver, replica
from . import migrate as _migrate
from .core import ROLLBACK, UNSET, ConversationPage, Mode, Op, Plan, Unset
from .engine import (
    _sqlite_begin,
    _sqlite_checkout,
    create_engine,
    create_read_engine,
    mode_engines,
    prepare_engine,
    safe_url,
)
from .schema import SCHEMA_REVISION
from .sql import context_dialect
from .threads import StoreThreads
from .unreadable import unread_value, unreadable_result

__all__ = ["Store"]

T = TypeVar("T")

_VERSION_QUERY = sa.text("SELECT version_num FROM alembic_version")
# marks on a thread's own connection (its ``info``): in a call now; to be closed
_BUSY, _RETIRED = "convo_direct_busy", "convo_direct_retired"


#: Bumped in a child process after ``fork()``: a thread's direct-path connection
#: taken before belongs to the parent (compared on every direct call, where
#: ``os.getpid()`` would be a system call each time).
_fork_generation = [0]


def _forked() -> None:
    _fork_generation[0] += 1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forked)


def fetch(result: Result[Any], how: core.Fetch) -> Any:
    """Materialize ``result`` the way an :class:`~convo._store.core.Op` asked (shared by both shells).

    A stored value that its column's type cannot read (JSON text that is not JSON,
    a timestamp that is not one: a row changed outside convo) raises
    :class:`~convo.StoredDataError` naming the tables read (rows are processed by
    SQLAlchemy here, which does not tell the column; the driver path does, see
    :func:`convo._store.driver.unreadable`)."""
    try:  # (free in Python 3.11 when nothing is raised)
        if how == "all":
            return result.all()
        if how == "first":
            return result.first()
        if how == "scalar":
            return result.scalar()
    except (ValueError, TypeError, AttributeError):
        error = unreadable_result(result)
        if error is None:
            raise
        raise error from None  # (the processor's error may quote the value: not chained)
    if how == "rowcount":
        return result.rowcount  # type: ignore[attr-defined]
    if how == "lastrowid":
        return result.lastrowid  # type: ignore[attr-defined]
    return None


def database_error(exc: DBAPIError) -> StoreError:
    """The one translation of driver errors (connection lost, disk full, ...) into convo's tree."""
    if replica.refused_write(exc):  # a replica, or a primary demoted to one
        return ReadOnlyStoreError(f"the database is read-only ({type(exc.orig).__name__}): "
                                  f"{exc.orig}")
    return StoreError(f"database error ({type(exc.orig).__name__}): {exc.orig}")


def not_migrated(url: str, found: str | None, *, read_only: bool = False) -> NotMigratedError:
    """The error for a database whose revision ``found`` is not :data:`SCHEMA_REVISION`
    (``read_only``: a read replica, which follows its primary's migrations)."""
    if found is not None and not _migrate.is_known(found):
        return _migrate.newer_schema(url, found)
    if read_only:
        return replica.not_migrated(url, found, SCHEMA_REVISION)
    state = f"is at revision {found!r}" if found else "has no convo schema"
    return NotMigratedError(
        f"database {url} {state}; this convo needs revision {SCHEMA_REVISION!r}: "
        "run `convo db upgrade` (or Store.migrate())",
        revision=found,
    )


class Store(StoreThreads):
    """Conversations and messages in SQLite or PostgreSQL (sync API).

    Args:
        url: a database URL (``sqlite:///convo.db``, ``postgresql://user@host/db``),
            an existing :class:`sqlalchemy.engine.Engine`, or None for
            ``CONVO_DATABASE_URL`` / ``sqlite:///convo.db``.
        read_url: a read replica (URL or :class:`~sqlalchemy.engine.Engine`) for
            the heavy readers: :meth:`search`, exports and replays read from it
            (:attr:`reader`); everything else, turns and context builds included,
            stays on ``url``. With neither given: ``CONVO_READ_DATABASE_URL``.
        **engine_kwargs: passed to :func:`sqlalchemy.create_engine` (pool size, echo...),
            for both engines.

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

    #: True on :attr:`reader`'s store (a read replica): every write is refused.
    _READ_ONLY: ClassVar[bool] = False

    def __init__(
        self,
        url: str | URL | Engine | None = None,
        *,
        read_url: str | URL | Engine | None = None,
        **engine_kwargs: Any,
    ) -> None:
        if isinstance(url, AsyncEngine) or isinstance(read_url, AsyncEngine):
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
        self._context_dialect = context_dialect(self._engine.dialect)
        self._schema_ok = False
        # the direct path's connection of each thread (see _thread_connection): for
        # a pool of its own only; a pool of one connection per thread or process
        # (in-memory SQLite) must keep it, and NullPool means no connection is kept
        self._thread_connections = self._owns_engine and isinstance(self._engine.pool, QueuePool)
        self._direct = threading.local()
        self._direct_all: weakref.WeakSet[Any] = weakref.WeakSet()
        self._direct_lock = threading.Lock()
        # the read replica (see reader): opened on first use
        self._read_url = read_url if read_url is not None else replica.env_read_url(url)
        self._read_kwargs = engine_kwargs
        self._reader: Store | None = None
        self._reader_lock = threading.Lock()

    @property
    def reader(self) -> Store:
        """The store the heavy readers use: :meth:`search`, exports and replays' reads
        of the conversations they replay.

        With ``read_url``, a read-only :class:`Store` on that database (a streaming
        replica), opened on first use and closed with this store; its writes raise
        :class:`~convo.ReadOnlyStoreError`. Without, this store itself.
        """
        if self._read_url is None:
            return self
        with self._reader_lock:
            if self._reader is None:
                if isinstance(self._read_url, Engine):
                    self._reader = _ReplicaStore(self._read_url, owns_engine=False)
                else:
                    engine = create_read_engine(self._read_url, **self._read_kwargs)
                    self._reader = _ReplicaStore(engine, owns_engine=True)
            return self._reader

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine."""
        return self._engine

    def __repr__(self) -> str:
        return f"Store({replica.describe(self._engine.url, self._read_url)})"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the connection pool (not when the engine was passed in), and the
        read replica's."""
        reader, self._reader = getattr(self, "_reader", None), None
        if reader is not None:
            reader.close()
        if self._owns_engine:
            with self._direct_lock:
                detached, self._direct_all = list(self._direct_all), weakref.WeakSet()
                self._direct = threading.local()
                for fairy in detached:
                    # One in use right now is closed by its thread when its call ends
                    # (as the pool leaves checked-out connections to their users).
                    fairy.info[_RETIRED] = True
                    if not fairy.info.get(_BUSY):
                        with contextlib.suppress(Exception):
                            fairy.close()  # a detached connection is closed, not pooled
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
            ReadOnlyStoreError: this is :attr:`reader`'s store: migrate the primary.
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
            raise not_migrated(safe_url(self._engine.url), found, read_only=self._READ_ONLY)
        self._schema_ok = True

    # --- the shell -----------------------------------------------------------------------

    def _run(self, plan: Plan[T], mode: Mode = "read", *, direct: bool = False) -> T:
        """Run ``plan`` in one short transaction (none for ``"read"``).

        ``direct``: every statement of the plan is a ``driver=True`` one, so on
        SQLite, when nothing listens to the engine's statements, the plan runs
        on a pooled DBAPI connection without a ``Connection`` around it (see
        :func:`convo._store.driver.run_direct`): the turn's hot path.
        """
        if not self._schema_ok:
            self.check_schema()
        try:
            if (
                direct
                and self._dialect == "sqlite"
                and driver.direct_ok(self._engine, _sqlite_begin, _sqlite_checkout)
            ):
                if not self._thread_connections:
                    value: T = driver.run_direct(
                        self._engine, plan, writes=mode != "read", rollback=ROLLBACK
                    )
                    return value
                entry = getattr(self._direct, "entry", None)  # (_thread_connection, inline)
                if (
                    entry is None
                    or entry[2] != _fork_generation[0]
                    or entry[0].dbapi_connection is None
                ):
                    self._thread_connection()
                    entry = self._direct.entry
                held, info, _, cursor = entry
                info[_BUSY] = True
                try:
                    value = driver.run_direct(
                        self._engine, plan, writes=mode != "read", rollback=ROLLBACK, held=held,
                        held_cursor=cursor,
                    )
                except DBAPIError as exc:
                    if exc.connection_invalidated:
                        info[_RETIRED] = True
                    raise
                finally:
                    info[_BUSY] = False
                    if info.get(_RETIRED):  # lost, or the store was closed meanwhile
                        self._drop_thread_connection(held)
                return value
            with self._engines[mode].connect() as conn:
                value = _drive(conn, plan, writes=mode != "read")
                conn.commit()
                return value
        except DBAPIError as exc:
            raise database_error(exc) from exc

    def _thread_connection(self) -> Any:
        """This thread's own connection for the direct path (SQLite, a pool the store
        made, of file connections): checked out of the pool once and detached from it, so a
        turn's store calls need no checkout each, and always find the page cache
        warm (SQLite empties a connection's cache when another one has written).
        It is closed by :meth:`close`, or when its thread ends."""
        local = self._direct
        fairy = getattr(local, "fairy", None)
        if (
            fairy is not None
            and local.generation == _fork_generation[0]
            and fairy.dbapi_connection is not None
        ):
            return fairy
        # (after a fork: the parent's connection is the parent's; just forget it)
        fairy = self._engine.raw_connection()  # the pool's connect/checkout events run
        fairy.detach()
        local.fairy, local.generation = fairy, _fork_generation[0]
        # what _run reads on every call, in one thread-local lookup; with a cursor
        # for every plan (sqlite3 resets it at each execute), closed with the connection
        dbapi_conn = fairy.dbapi_connection
        assert dbapi_conn is not None  # (just connected)
        local.entry = (fairy, fairy.info, _fork_generation[0], dbapi_conn.cursor())
        with self._direct_lock:
            self._direct_all.add(fairy)
        return fairy

    def _drop_thread_connection(self, fairy: Any) -> None:
        """Close this thread's connection ``fairy`` (lost, or retired by :meth:`close`)
        and forget it; the next direct call takes a new one."""
        if getattr(self._direct, "fairy", None) is fairy:
            self._direct.fairy = self._direct.entry = None
        with self._direct_lock:
            self._direct_all.discard(fairy)
        with contextlib.suppress(Exception):
            fairy.close()  # a detached connection is closed, not pooled

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
        return self._run(core.get_conversation(conversation_id, owner=owner), direct=True)

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
            direct=True,
        )

    def _append_current(
        self,
        conversation_id: str,
        message: Message | Mapping[str, Any],
        *,
        idempotency_key: str | None = None,
        owner: str | None = None,
    ) -> tuple[str, StoredMessage]:
        """:meth:`append` to the thread's current branch, resolved in the same
        transaction: (the conversation it went to, the message). For turns."""
        return self._run(
            core.append_current(conversation_id, message, idempotency_key=idempotency_key,
                                owner=owner, dialect=self._dialect),
            core.append_mode(idempotency_key),
            direct=True,
        )

    def append_many(
        self,
        conversation_id: str,
        messages: Iterable[Message | Mapping[str, Any]],
        *,
        owner: str | None = None,
    ) -> list[StoredMessage]:
        """Append messages with consecutive sequence numbers, in one transaction (all or nothing)."""
        return self._run(
            core.append_many(conversation_id, messages, owner=owner, dialect=self._dialect),
            "write",
            direct=True,
        )

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
                          newest_first=newest_first, owner=owner),
            direct=True,
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
        return self._run(core.get_message(conversation_id, seq, owner=owner), direct=True)

    def count_messages(self, conversation_id: str, *, owner: str | None = None) -> int:
        """How many messages the conversation shows (inherited ones included); O(1)."""
        return self._run(core.count_messages(conversation_id, owner=owner), direct=True)

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
        conversation's lineage is searched. Runs on the read replica when the
        store has one (:attr:`reader`).
        """
        return self.reader._run(
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
            context.tail(conversation_id, encoding=encoding, before=before, limit=limit, owner=owner),
            direct=True,
        )

    def context_start(
        self,
        conversation_id: str,
        *,
        encoding: str,
        limit: int,
        owner: str | None = None,
        before: int | None = None,
    ) -> tuple[list[tuple[StoredMessage, int | None]], list[tuple[StoredMessage, int | None]]]:
        """The opening reads of a context build, on one connection: the pinned
        messages of the lineage (oldest first) and its newest ``limit`` messages,
        each with its stored token count for ``encoding``; only ``seq < before``
        when ``before`` is given.

        Raises:
            ConversationNotFound: no such conversation (for this owner).
        """
        return self._run(
            context.context_start(
                conversation_id, encoding=encoding, limit=limit, owner=owner, before=before,
                dialect=self._context_dialect,
            ),
            direct=True,
        )

    def _context_open(
        self,
        conversation_id: str,
        *,
        encoding: str,
        limit: int,
        owner: str | None = None,
        before: int | None = None,
        after: int | None = None,
        lean: bool = False,
    ) -> tuple[list[tuple[StoredMessage, int | None]], list[tuple[StoredMessage, int | None]],
               core.Lineage]:
        """:meth:`context_start` and the lineage it read (for :meth:`_tail_of`; builders only);
        ``after``: the newest page holds only messages with ``seq > after``; ``lean``: a
        turn's build, whose messages are never handed out (see
        :func:`convo._store.rows.lean_messages`)."""
        return self._run(
            context.context_open(
                conversation_id, encoding=encoding, limit=limit, owner=owner, before=before,
                dialect=self._context_dialect, after=after, lean=lean,
            ),
            direct=True,
        )

    def _tail_of(
        self,
        lineage: core.Lineage,
        *,
        encoding: str,
        before: int,
        limit: int,
        owner: str | None = None,
    ) -> list[tuple[StoredMessage, int | None]]:
        """:meth:`tail` on the lineage a :meth:`_context_open` of the same build read."""
        return self._run(
            context.tail_of(lineage, encoding=encoding, before=before, limit=limit, owner=owner),
            direct=True,
        )

    def pinned(
        self, conversation_id: str, *, encoding: str, owner: str | None = None
    ) -> list[tuple[StoredMessage, int | None]]:
        """All pinned messages of the lineage, oldest first, with their token counts."""
        return self._run(
            context.pinned(conversation_id, encoding=encoding, owner=owner), direct=True
        )

    def set_pinned(
        self, conversation_id: str, seq: int, pinned: bool, *, owner: str | None = None
    ) -> None:
        """Pin or unpin a message of the conversation.

        Raises:
            ForkConflictError: the message is inherited from an ancestor (pinning
                it would change the ancestor and its other forks).
        """
        self._run(core.set_pinned(conversation_id, seq, pinned, owner=owner), "write")

    def save_token_counts(self, encoding: str, counts: context.TokenCounts) -> None:
        """Store token counts (message id -> tokens) for ``encoding``; existing ones are kept."""
        self._run(
            context.save_token_counts(encoding, counts, dialect=self._dialect), "write", direct=True
        )

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
            context.add_summary(conversation_id, start_seq=start_seq, end_seq=end_seq,
                             content=content, metadata=metadata, owner=owner,
                             dialect=self._dialect),
            "write",
        )

    def latest_summary(
        self, conversation_id: str, *, up_to_seq: int | None = None, owner: str | None = None
    ) -> Summary | None:
        """The summary reaching furthest (``end_seq <= up_to_seq``), own or inherited from
        an ancestor up to the fork point; None if there is none."""
        return self._run(context.latest_summary(conversation_id, up_to_seq=up_to_seq, owner=owner))


class _ReplicaStore(Store):
    """:attr:`Store.reader` on a read replica: the same reads, every write refused
    before a connection is opened (:class:`~convo.ReadOnlyStoreError`)."""

    _READ_ONLY = True

    def __init__(self, engine: Engine, *, owns_engine: bool) -> None:
        super().__init__(engine)
        self._owns_engine = owns_engine  # close() disposes the engine it made

    def migrate(self, revision: str = "head") -> None:
        raise replica.read_only_error("migrate")

    def _run(self, plan: Plan[T], mode: Mode = "read", *, direct: bool = False) -> T:
        if mode != "read":
            plan.close()
            raise replica.read_only_error(plan)
        return super()._run(plan, mode, direct=direct)


def _current_revision(conn: Connection) -> str | None:
    if not conn.dialect.has_table(conn, "alembic_version"):
        return None
    value = conn.execute(_VERSION_QUERY).scalar()
    return str(value) if value is not None else None


def _drive(conn: Connection, plan: Plan[T], *, writes: bool = True) -> T:
    """Run ``plan`` on ``conn``. ``writes``: the plan runs in a transaction (begun
    before its first statement, as SQLAlchemy's autobegin would)."""
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
                        if writes and not conn.in_transaction():
                            conn.begin()
                        value = driver.execute(conn, op.stmt, op.params, op.fetch)
                    else:
                        value = fetch(conn.execute(op.stmt, op.params), op.fetch)
            except DBAPIError as exc:  # the plan may recover (see _store/core.py)
                op = plan.throw(exc)
                continue
            except StoredDataError as exc:  # (SQLAlchemy's rows: name the column, slowly)
                if exc.column is not None or not isinstance(op, Op) or op.driver:
                    raise
                raise unread_value(conn, op) or exc from None
            op = plan.send(value)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
