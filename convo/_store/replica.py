"""Read replicas: what :class:`~convo.Store` and :class:`~convo.AsyncStore` share about them.

A store given a ``read_url`` keeps a second, read-only store on it (its
``reader``), opened on first use. Only the heavy readers use it:

* :meth:`~convo.Store.search`;
* exports (:func:`~convo.export_conversations`), listing included;
* replays: listing the conversations to replay and reading their original
  turns and runs (``SourceRead`` in :mod:`convo._replay.plan`). What a
  replay writes (branches, runs, items), and every read of it, stays on the
  primary.

Everything else (turns, appends, context builds) stays on the primary: a
replica lags its primary, and a build right after an append must see it.

The reader is read-only twice over: at the database (see
:func:`convo._store.engine.create_read_engine`), and in the store (a private
subclass of the store's class), which refuses a write plan before it opens a
connection (:class:`~convo.ReadOnlyStoreError`).
Its schema is checked like the primary's, with advice that fits a replica.
"""

from __future__ import annotations

import os

from sqlalchemy.engine import URL, Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from .._exceptions import NotMigratedError, ReadOnlyStoreError
from .engine import READ_ENV_VAR, safe_url

__all__ = [
    "describe",
    "env_read_url",
    "not_migrated",
    "read_only_error",
    "refused_write",
]

# PostgreSQL: read_only_sql_transaction (a READ ONLY transaction, or a hot standby)
_PG_READ_ONLY = "25006"
# SQLite: SQLITE_READONLY and its extended codes (low byte 8)
_SQLITE_READONLY = 8

ReadURL = str | URL | Engine | AsyncEngine


def env_read_url(url: object) -> str | None:
    """The read replica when a store is given none: ``CONVO_READ_DATABASE_URL``, but
    only when the primary came from the environment too (no ``url``): a replica
    named in the environment belongs to the primary named there, not to one
    passed in."""
    return (os.environ.get(READ_ENV_VAR) or None) if url is None else None


def describe(url: URL, read: ReadURL | None) -> str:
    """The arguments of a store's repr (passwords masked)."""
    if read is None:
        return repr(safe_url(url))
    if isinstance(read, (Engine, AsyncEngine)):
        read = read.url
    return f"{safe_url(url)!r}, read_url={safe_url(read)!r}"


def read_only_error(operation: object) -> ReadOnlyStoreError:
    """The error for a write (``operation``: its name, or its plan) asked of a read-only store."""
    if not isinstance(operation, str):
        operation = getattr(operation, "__name__", "this operation")
    return ReadOnlyStoreError(
        f"{operation} writes, and this store is read-only (a read replica's reader): "
        "write through the primary store"
    )


def refused_write(exc: DBAPIError) -> bool:
    """Whether the database refused ``exc``'s statement because it is read-only
    (a replica, a read-only transaction or file; not a full or broken database)."""
    # the driver's error, or (async drivers, as SQLAlchemy adapts them) its cause
    for orig in (exc.orig, getattr(exc.orig, "__cause__", None)):
        if getattr(orig, "sqlstate", None) == _PG_READ_ONLY:
            return True
        code = getattr(orig, "sqlite_errorcode", None)
        if isinstance(code, int):
            return code & 0xFF == _SQLITE_READONLY  # and its extended codes
    # aiosqlite's errors, as SQLAlchemy adapts them, may carry only the message
    return "attempt to write a readonly database" in str(exc.orig)


def not_migrated(url: str, found: str | None, needed: str) -> NotMigratedError:
    """The error for a read replica whose schema is not ``needed`` (it cannot be
    migrated itself: it follows its primary)."""
    state = f"is at revision {found!r}" if found else "has no convo schema"
    return NotMigratedError(
        f"read database {url} {state}; this convo needs revision {needed!r}: migrate the "
        "primary (`convo db upgrade`) and let the replica catch up, or check that the "
        "read URL names a replica of the primary",
        revision=found,
        replica=True,
    )
