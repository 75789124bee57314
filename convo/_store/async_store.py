"""The async SQL store: :class:`AsyncStore` (aiosqlite or psycopg async).

The same shell as :class:`~convo.Store` with ``await``: both run the plans of
:mod:`convo._store.core`, so they cannot drift. Method docs live on ``Store``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping
from datetime import datetime
from typing import Any, ClassVar, Self, TypeVar

from sqlalchemy.engine import URL, Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from .._exceptions import ConfigurationError, StoredDataError
from .._messages import Message
from .._records import Conversation, ReplyInfo, StoredMessage, Summary
from . import context, core, driver, replica
from . import migrate as _migrate
from .async_threads import AsyncStoreThreads
from .core import ROLLBACK, UNSET, ConversationPage, Mode, Op, Plan, Unset
from .engine import (
    create_engine_async,
    create_read_engine_async,
    mode_engines,
    prepare_engine,
    safe_url,
)
from .schema import SCHEMA_REVISION
from .sql import context_dialect
from .store import _current_revision, database_error, fetch, not_migrated
from .unreadable import unread_value

__all__ = ["AsyncStore"]

T = TypeVar("T")


class AsyncStore(AsyncStoreThreads):
    """Conversations and messages in SQLite or PostgreSQL (async API).

    The same methods as :class:`~convo.Store`, awaited; ``iter_messages`` is an
    async generator::

        async with AsyncStore("sqlite:///chat.db") as store:
            await store.migrate()
            conv = await store.create_conversation(title="hello")
            await store.append(conv.id, {"role": "user", "content": "Hi!"})

    Args:
        url: a database URL, an existing :class:`~sqlalchemy.ext.asyncio.AsyncEngine`,
            or None for ``CONVO_DATABASE_URL`` / ``sqlite:///convo.db``. Plain
            ``sqlite://`` and ``postgresql://`` URLs get aiosqlite / psycopg.
        read_url: a read replica for the heavy readers (see :class:`~convo.Store`).
        **engine_kwargs: passed to :func:`sqlalchemy.ext.asyncio.create_async_engine`.
    """

    #: True on :attr:`reader`'s store (a read replica): every write is refused.
    _READ_ONLY: ClassVar[bool] = False

    def __init__(
        self,
        url: str | URL | AsyncEngine | None = None,
        *,
        read_url: str | URL | AsyncEngine | None = None,
        **engine_kwargs: Any,
    ) -> None:
        if isinstance(url, Engine) or isinstance(read_url, Engine):
            raise ConfigurationError("a sync Engine needs Store, not AsyncStore")
        if isinstance(url, AsyncEngine):
            prepare_engine(url.sync_engine)
            self._engine = url
            self._owns_engine = False
        else:
            self._engine = create_engine_async(url, **engine_kwargs)
            self._owns_engine = True
        self._engines = mode_engines(self._engine)
        self._dialect = self._engine.dialect.name
        self._context_dialect = context_dialect(self._engine.dialect)
        self._schema_ok = False
        # the read replica (see reader): opened on first use
        self._read_url = read_url if read_url is not None else replica.env_read_url(url)
        self._read_kwargs = engine_kwargs
        self._reader: AsyncStore | None = None

    @property
    def reader(self) -> AsyncStore:
        """The store the heavy readers use (see :attr:`Store.reader`): a read-only
        :class:`AsyncStore` on ``read_url``, or this store when there is none."""
        if self._read_url is None:
            return self
        if self._reader is None:
            if isinstance(self._read_url, AsyncEngine):
                self._reader = _ReplicaAsyncStore(self._read_url, owns_engine=False)
            else:
                engine = create_read_engine_async(self._read_url, **self._read_kwargs)
                self._reader = _ReplicaAsyncStore(engine, owns_engine=True)
        return self._reader

    @property
    def engine(self) -> AsyncEngine:
        """The SQLAlchemy async engine."""
        return self._engine

    def __repr__(self) -> str:
        return f"AsyncStore({replica.describe(self._engine.url, self._read_url)})"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Release the connection pool (not when the engine was passed in), and the
        read replica's."""
        reader, self._reader = getattr(self, "_reader", None), None
        if reader is not None:
            await reader.close()
        if self._owns_engine:
            await self._engine.dispose()

    # --- schema ------------------------------------------------------------------------

    async def migrate(self, revision: str = "head") -> None:
        """Upgrade the database schema to ``revision`` (default: the newest); see
        :meth:`Store.migrate`."""
        try:
            async with self._engines["write"].connect() as conn:
                await conn.run_sync(_migrate.upgrade, revision)
        except DBAPIError as exc:
            raise database_error(exc) from exc
        self._schema_ok = False

    async def current_revision(self) -> str | None:
        """The schema revision of the database, or None when it has no convo schema."""
        try:
            async with self._engine.connect() as conn:
                return await conn.run_sync(_current_revision)
        except DBAPIError as exc:
            raise database_error(exc) from exc

    async def is_migrated(self) -> bool:
        """Whether the database schema is the one this convo needs."""
        return await self.current_revision() == SCHEMA_REVISION

    async def check_schema(self) -> None:
        """Raise :class:`~convo.NotMigratedError` unless the schema is current."""
        found = await self.current_revision()
        if found != SCHEMA_REVISION:
            raise not_migrated(safe_url(self._engine.url), found, read_only=self._READ_ONLY)
        self._schema_ok = True

    # --- the shell -----------------------------------------------------------------------

    async def _run(self, plan: Plan[T], mode: Mode = "read") -> T:
        if not self._schema_ok:
            await self.check_schema()
        try:
            async with self._engines[mode].connect() as conn:
                value = await _drive(conn, plan)
                await conn.commit()
                return value
        except DBAPIError as exc:
            raise database_error(exc) from exc

    # --- conversations -------------------------------------------------------------------

    async def create_conversation(
        self,
        *,
        title: str | None = None,
        owner: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Conversation:
        """See :meth:`Store.create_conversation`."""
        return await self._run(
            core.create_conversation(title=title, owner=owner, metadata=metadata), "single"
        )

    async def get_conversation(
        self, conversation_id: str, *, owner: str | None = None
    ) -> Conversation:
        """See :meth:`Store.get_conversation`."""
        return await self._run(core.get_conversation(conversation_id, owner=owner))

    async def update_conversation(
        self,
        conversation_id: str,
        *,
        title: str | None | Unset = UNSET,
        metadata: Mapping[str, Any] | None | Unset = UNSET,
        owner: str | None = None,
    ) -> Conversation:
        """See :meth:`Store.update_conversation`."""
        return await self._run(
            core.update_conversation(conversation_id, title=title, metadata=metadata, owner=owner),
            "single",
        )

    async def delete_conversation(
        self, conversation_id: str, *, owner: str | None = None, cascade_forks: bool = False
    ) -> None:
        """See :meth:`Store.delete_conversation`."""
        await self._run(
            core.delete_conversation(conversation_id, owner=owner, cascade_forks=cascade_forks),
            "write",
        )

    async def list_conversations(
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
        """See :meth:`Store.list_conversations`."""
        return await self._run(
            core.list_conversations(
                dialect=self._dialect, owner=owner, metadata=metadata,
                created_after=created_after, created_before=created_before,
                updated_after=updated_after, updated_before=updated_before,
                limit=limit, cursor=cursor,
            )
        )

    async def fork(
        self,
        conversation_id: str,
        *,
        at: int | None = None,
        title: str | None = None,
        owner: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Conversation:
        """See :meth:`Store.fork`."""
        return await self._run(
            core.fork(conversation_id, at=at, title=title, owner=owner, metadata=metadata),
            "write",
        )

    # --- messages ------------------------------------------------------------------------

    async def append(
        self,
        conversation_id: str,
        message: Message | Mapping[str, Any],
        *,
        idempotency_key: str | None = None,
        pinned: bool | None = None,
        reply: ReplyInfo | None = None,
        owner: str | None = None,
    ) -> StoredMessage:
        """See :meth:`Store.append`."""
        return await self._run(
            core.append(conversation_id, message, idempotency_key=idempotency_key,
                        pinned=pinned, reply=reply, owner=owner, dialect=self._dialect),
            core.append_mode(idempotency_key),
        )

    async def _append_current(
        self,
        conversation_id: str,
        message: Message | Mapping[str, Any],
        *,
        idempotency_key: str | None = None,
        owner: str | None = None,
    ) -> tuple[str, StoredMessage]:
        """:meth:`append` to the thread's current branch, resolved in the same
        transaction: (the conversation it went to, the message). For turns."""
        return await self._run(
            core.append_current(conversation_id, message, idempotency_key=idempotency_key,
                                owner=owner, dialect=self._dialect),
            core.append_mode(idempotency_key),
        )

    async def append_many(
        self,
        conversation_id: str,
        messages: Iterable[Message | Mapping[str, Any]],
        *,
        owner: str | None = None,
    ) -> list[StoredMessage]:
        """See :meth:`Store.append_many`."""
        return await self._run(
            core.append_many(conversation_id, messages, owner=owner, dialect=self._dialect), "write"
        )

    async def messages(
        self,
        conversation_id: str,
        *,
        after: int | None = None,
        before: int | None = None,
        limit: int | None = None,
        newest_first: bool = False,
        owner: str | None = None,
    ) -> list[StoredMessage]:
        """See :meth:`Store.messages`."""
        return await self._run(
            core.messages(conversation_id, after=after, before=before, limit=limit,
                          newest_first=newest_first, owner=owner)
        )

    async def iter_messages(
        self,
        conversation_id: str,
        *,
        after: int | None = None,
        before: int | None = None,
        newest_first: bool = False,
        page_size: int = 500,
        owner: str | None = None,
    ) -> AsyncIterator[StoredMessage]:
        """See :meth:`Store.iter_messages` (an async generator here)."""
        while True:
            page = await self.messages(conversation_id, after=after, before=before,
                                       limit=page_size, newest_first=newest_first, owner=owner)
            for message in page:
                yield message
            if len(page) < page_size:
                return
            if newest_first:
                before = page[-1].seq
            else:
                after = page[-1].seq

    async def get_message(
        self, conversation_id: str, seq: int, *, owner: str | None = None
    ) -> StoredMessage:
        """See :meth:`Store.get_message`."""
        return await self._run(core.get_message(conversation_id, seq, owner=owner))

    async def count_messages(self, conversation_id: str, *, owner: str | None = None) -> int:
        """See :meth:`Store.count_messages`."""
        return await self._run(core.count_messages(conversation_id, owner=owner))

    async def search(
        self,
        text: str,
        *,
        owner: str | None = None,
        conversation_id: str | None = None,
        limit: int = 20,
    ) -> list[StoredMessage]:
        """See :meth:`Store.search` (ILIKE on PostgreSQL, ASCII-case-insensitive LIKE on
        SQLite); on the read replica when the store has one."""
        return await self.reader._run(
            core.search(text, dialect=self._dialect, owner=owner,
                        conversation_id=conversation_id, limit=limit)
        )

    # --- context builder support ---------------------------------------------------------

    async def tail(
        self,
        conversation_id: str,
        *,
        encoding: str,
        before: int | None = None,
        limit: int = 64,
        owner: str | None = None,
    ) -> list[tuple[StoredMessage, int | None]]:
        """See :meth:`Store.tail`."""
        return await self._run(
            context.tail(conversation_id, encoding=encoding, before=before, limit=limit, owner=owner)
        )

    async def context_start(
        self,
        conversation_id: str,
        *,
        encoding: str,
        limit: int,
        owner: str | None = None,
        before: int | None = None,
    ) -> tuple[list[tuple[StoredMessage, int | None]], list[tuple[StoredMessage, int | None]]]:
        """See :meth:`Store.context_start`."""
        return await self._run(
            context.context_start(
                conversation_id, encoding=encoding, limit=limit, owner=owner, before=before,
                dialect=self._context_dialect,
            )
        )

    async def _context_open(
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
        return await self._run(
            context.context_open(
                conversation_id, encoding=encoding, limit=limit, owner=owner, before=before,
                dialect=self._context_dialect, after=after, lean=lean,
            )
        )

    async def _tail_of(
        self,
        lineage: core.Lineage,
        *,
        encoding: str,
        before: int,
        limit: int,
        owner: str | None = None,
    ) -> list[tuple[StoredMessage, int | None]]:
        """:meth:`tail` on the lineage a :meth:`_context_open` of the same build read."""
        return await self._run(
            context.tail_of(lineage, encoding=encoding, before=before, limit=limit, owner=owner)
        )

    async def pinned(
        self, conversation_id: str, *, encoding: str, owner: str | None = None
    ) -> list[tuple[StoredMessage, int | None]]:
        """See :meth:`Store.pinned`."""
        return await self._run(context.pinned(conversation_id, encoding=encoding, owner=owner))

    async def set_pinned(
        self, conversation_id: str, seq: int, pinned: bool, *, owner: str | None = None
    ) -> None:
        """See :meth:`Store.set_pinned`."""
        await self._run(core.set_pinned(conversation_id, seq, pinned, owner=owner), "write")

    async def save_token_counts(self, encoding: str, counts: context.TokenCounts) -> None:
        """See :meth:`Store.save_token_counts`."""
        await self._run(
            context.save_token_counts(encoding, counts, dialect=self._dialect), "write"
        )

    async def add_summary(
        self,
        conversation_id: str,
        *,
        start_seq: int,
        end_seq: int,
        content: str,
        metadata: Mapping[str, Any] | None = None,
        owner: str | None = None,
    ) -> Summary:
        """See :meth:`Store.add_summary`."""
        return await self._run(
            context.add_summary(conversation_id, start_seq=start_seq, end_seq=end_seq,
                             content=content, metadata=metadata, owner=owner,
                             dialect=self._dialect),
            "write",
        )

    async def latest_summary(
        self, conversation_id: str, *, up_to_seq: int | None = None, owner: str | None = None
    ) -> Summary | None:
        """See :meth:`Store.latest_summary`."""
        return await self._run(
            context.latest_summary(conversation_id, up_to_seq=up_to_seq, owner=owner)
        )


class _ReplicaAsyncStore(AsyncStore):
    """:attr:`AsyncStore.reader` on a read replica: the same reads, every write refused
    before a connection is opened (:class:`~convo.ReadOnlyStoreError`)."""

    _READ_ONLY = True

    def __init__(self, engine: AsyncEngine, *, owns_engine: bool) -> None:
        super().__init__(engine)
        self._owns_engine = owns_engine  # close() disposes the engine it made

    async def migrate(self, revision: str = "head") -> None:
        raise replica.read_only_error("migrate")

    async def _run(self, plan: Plan[T], mode: Mode = "read") -> T:
        if mode != "read":
            plan.close()
            raise replica.read_only_error(plan)
        return await super()._run(plan, mode)


async def _drive(conn: AsyncConnection, plan: Plan[T]) -> T:
    try:
        op: Op | object = next(plan)
        while True:
            try:
                if op is ROLLBACK:
                    await conn.rollback()
                    value = None
                else:
                    assert isinstance(op, Op)
                    if op.driver:
                        value = await _driver_execute(conn, op)
                    else:
                        value = fetch(await conn.execute(op.stmt, op.params), op.fetch)
            except DBAPIError as exc:  # the plan may recover (see _store/core.py)
                op = plan.throw(exc)
                continue
            except StoredDataError as exc:  # (SQLAlchemy's rows: name the column, slowly)
                if exc.column is not None or not isinstance(op, Op) or op.driver:
                    raise
                raise (await conn.run_sync(unread_value, op)) or exc from None
            op = plan.send(value)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]


async def _driver_execute(conn: AsyncConnection, op: Op) -> Any:
    """A ``driver=True`` statement: the SQL and processing of the sync shell's cursor
    path, sent with ``exec_driver_sql`` (the async drivers' cursors are SQLAlchemy's)."""
    prepared = driver.prepare(conn.dialect, op.stmt, op.params)
    args = driver.bind_args(prepared, op.params)
    result = await conn.exec_driver_sql(prepared.sql, args)
    return driver.from_result(prepared, result, op.fetch, conn.dialect)
