"""Database URLs and engines: SQLite (embedded default) and PostgreSQL, sync and async.

* ``sqlite:///path`` / ``sqlite+pysqlite://`` / ``sqlite+aiosqlite://`` name a
  SQLite file; the sync store uses pysqlite, the async store aiosqlite.
* ``postgresql://`` / ``postgres://`` / ``postgresql+psycopg://`` name a
  PostgreSQL database; psycopg 3 serves both stores.
* No URL: ``CONVO_DATABASE_URL``, else the SQLite file ``convo.db``.

A *read engine* (:func:`create_read_engine`, a store's ``read_url``: a
streaming replica serving the heavy readers) is read-only at the database:
PostgreSQL connections start with ``default_transaction_read_only=on`` (the
``options`` startup parameter, no ``SET``; docs/store.md says what PgBouncer
does with it), SQLite files are opened with ``mode=ro``.

SQLite connections get WAL, ``foreign_keys=ON``, a 30 s busy timeout and
``synchronous=NORMAL``. pysqlite's own transaction handling is switched off
(it begins lazily, so two writers that both read first deadlock into
"database is locked"): convo emits ``BEGIN IMMEDIATE`` for the store's write
transactions (the write lock is taken up front and waited for under
``busy_timeout``), nothing for the store's reads (autocommit statements, which
in WAL mode never block or wait for writers), and a plain ``BEGIN`` for any
other use of the engine, so a caller's own transactions keep their meaning.
"""

from __future__ import annotations

import importlib.util
import os
import re
import time
import urllib.parse
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import QueuePool

from .._exceptions import ConfigurationError
from .driver import raw_execute

__all__ = [
    "DEFAULT_DATABASE_URL",
    "READ_OPTION",
    "WRITE_OPTION",
    "create_engine",
    "create_engine_async",
    "create_read_engine",
    "create_read_engine_async",
    "database_url",
    "mode_engines",
    "prepare_engine",
    "resolve_url",
    "safe_url",
]

DEFAULT_DATABASE_URL = "sqlite:///convo.db"
ENV_VAR = "CONVO_DATABASE_URL"
#: The read replica's URL when a store is given no URL at all (see ``read_url``).
READ_ENV_VAR = "CONVO_READ_DATABASE_URL"
_PG_READ_ONLY = "-c default_transaction_read_only=on"

#: Execution option marking a connection whose transactions write
#: (SQLite: ``BEGIN IMMEDIATE`` instead of ``BEGIN``).
WRITE_OPTION = "convo_write"
#: Execution option marking a store connection that only reads (SQLite: no BEGIN).
READ_OPTION = "convo_read"

SQLITE_BUSY_TIMEOUT_S = 30.0

_SYNC_DRIVERS = {"sqlite": "pysqlite", "postgresql": "psycopg"}
_ASYNC_DRIVERS = {"sqlite": "aiosqlite", "postgresql": "psycopg"}
# Drivers convo knows how to configure; anything else is a configuration error.
_KNOWN = {
    "sqlite": {"", "pysqlite", "aiosqlite"},
    "postgresql": {"", "psycopg"},
}


def database_url(url: str | None = None) -> str:
    """The URL to use: ``url``, else ``CONVO_DATABASE_URL``, else ``sqlite:///convo.db``."""
    return url or os.environ.get(ENV_VAR) or DEFAULT_DATABASE_URL


def safe_url(url: URL | str) -> str:
    """The URL as text with any password masked (for messages and reprs)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparseable database URL>"


_UNUSABLE = re.compile("[\x00\ud800-\udfff]")


def _unusable(url: URL) -> bool:
    """Whether a part of ``url`` holds a NUL or a lone surrogate."""
    parts: list[Any] = [url.drivername, url.username, url.password, url.host, url.database]
    for key, value in url.query.items():
        parts.append(key)
        parts.extend(value if isinstance(value, tuple) else (value,))
    return any(isinstance(p, str) and _UNUSABLE.search(p) for p in parts)


def resolve_url(url: str | URL | None = None, *, asynchronous: bool = False) -> URL:
    """Parse a database URL and pick convo's driver for it.

    Raises:
        ConfigurationError: unparseable URL, unsupported database or driver, or
            the PostgreSQL driver (``convo[postgres]``) not installed.
    """
    raw = database_url(url) if not isinstance(url, URL) else url
    try:
        parsed = make_url(raw)
    except ArgumentError as exc:
        raise ConfigurationError(
            "invalid database URL: expected sqlite:///path or postgresql://user@host/db"
        ) from exc
    if _unusable(parsed):
        # No driver takes these (a file name or a connection string cannot hold
        # them); said here, not as an encoding error from deep in the driver.
        raise ConfigurationError(
            "invalid database URL: it holds a NUL byte or a lone surrogate"
        )
    backend = parsed.get_backend_name()
    if backend == "postgres":
        backend = "postgresql"
    driver = parsed.drivername.partition("+")[2]
    if backend not in _KNOWN or driver not in _KNOWN[backend]:
        raise ConfigurationError(
            f"unsupported database URL {safe_url(parsed)}: convo supports sqlite "
            "(pysqlite / aiosqlite) and postgresql (psycopg)"
        )
    if backend == "postgresql" and importlib.util.find_spec("psycopg") is None:
        raise ConfigurationError(
            "PostgreSQL needs the psycopg driver: pip install 'convo[postgres]'"
        )
    drivers = _ASYNC_DRIVERS if asynchronous else _SYNC_DRIVERS
    return parsed.set(drivername=f"{backend}+{drivers[backend]}")


def create_engine(url: str | URL | None = None, **kwargs: Any) -> Engine:
    """A sync engine for ``url`` configured for convo (see the module docs)."""
    resolved = resolve_url(url)
    if resolved.get_backend_name() == "sqlite":
        kwargs.setdefault("connect_args", {}).setdefault("timeout", SQLITE_BUSY_TIMEOUT_S)
        _sqlite_pool_lifo(resolved, kwargs)
    try:
        engine = sa.create_engine(resolved, **kwargs)
    except (ArgumentError, TypeError, ImportError) as exc:
        raise ConfigurationError(f"cannot create an engine for {safe_url(resolved)}: {exc}") from exc
    prepare_engine(engine)
    return engine


def create_engine_async(url: str | URL | None = None, **kwargs: Any) -> AsyncEngine:
    """An async engine for ``url`` configured for convo (aiosqlite or psycopg)."""
    resolved = resolve_url(url, asynchronous=True)
    if resolved.get_backend_name() == "sqlite":
        kwargs.setdefault("connect_args", {}).setdefault("timeout", SQLITE_BUSY_TIMEOUT_S)
        _sqlite_pool_lifo(resolved, kwargs)
    try:
        engine = create_async_engine(resolved, **kwargs)
    except (ArgumentError, TypeError, ImportError) as exc:
        raise ConfigurationError(f"cannot create an engine for {safe_url(resolved)}: {exc}") from exc
    prepare_engine(engine.sync_engine)
    return engine


def create_read_engine(url: str | URL, **kwargs: Any) -> Engine:
    """A read-only sync engine for ``url`` (a replica; see the module docs)."""
    resolved, kwargs = _read_only(resolve_url(url), kwargs)
    return create_engine(resolved, **kwargs)


def create_read_engine_async(url: str | URL, **kwargs: Any) -> AsyncEngine:
    """A read-only async engine for ``url`` (a replica; see the module docs)."""
    resolved, kwargs = _read_only(resolve_url(url, asynchronous=True), kwargs)
    return create_engine_async(resolved, **kwargs)


def _read_only(url: URL, kwargs: dict[str, Any]) -> tuple[URL, dict[str, Any]]:
    """``url`` and engine ``kwargs`` that make every connection read-only.

    PostgreSQL: the ``options`` startup parameter (any ``options`` the caller
    gave are kept). SQLite: a ``file:`` URI with ``mode=ro`` (an in-memory
    database cannot be a replica of anything: refused).
    """
    kwargs = {**kwargs, "connect_args": dict(kwargs.get("connect_args") or {})}
    connect_args = kwargs["connect_args"]
    if url.get_backend_name() == "postgresql":
        given = connect_args.get("options") or url.query.get("options")
        if isinstance(given, tuple):
            given = " ".join(given)
        connect_args["options"] = f"{given} {_PG_READ_ONLY}" if given else _PG_READ_ONLY
        return url, kwargs
    path = url.database or ""
    if path in ("", ":memory:") or url.query.get("mode") == "memory":
        raise ConfigurationError(
            f"read URL {safe_url(url)}: an in-memory SQLite database cannot be a read replica"
        )
    if not (path.startswith("file:") and url.query.get("uri") == "true"):
        # a file name, not a URI: escape what a URI would read as syntax (?, #, %)
        path = f"file:{urllib.parse.quote(path, safe='/')}"
    return url.set(database=path).update_query_dict({"mode": "ro", "uri": "true"}), kwargs


def _sqlite_pool_lifo(url: URL, kwargs: dict[str, Any]) -> None:
    """Hand out the most recently used SQLite connection first (``pool_use_lifo``).

    A SQLite connection's page cache is emptied whenever another connection has
    written: with the pool's default FIFO order, consecutive store calls of one
    thread alternate between connections and each starts cold (B-tree pages read
    again); LIFO keeps one thread on one warm connection. File databases only
    (in-memory ones use pools without an order), and only when the caller chose
    no pool.
    """
    if "poolclass" in kwargs or "pool" in kwargs:
        return
    try:
        dialect_cls: Any = url.get_dialect()
        pool_class = dialect_cls.get_pool_class(url)
    except (ArgumentError, ImportError):
        return
    if issubclass(pool_class, QueuePool):
        kwargs.setdefault("pool_use_lifo", True)


def prepare_engine(engine: Engine) -> None:
    """Install convo's SQLite connection and transaction handling on ``engine`` (idempotent).

    Also used on engines passed in by the caller; PostgreSQL engines are left as they are.
    """
    if engine.dialect.name not in _KNOWN:
        raise ConfigurationError(
            f"unsupported database {engine.dialect.name!r}: convo supports sqlite and postgresql"
        )
    if engine.dialect.name != "sqlite" or getattr(engine, "_convo_prepared", False):
        return
    # "checkout" rather than "connect": a caller's engine may already hold
    # pooled connections that never saw our "connect" hook.
    event.listen(engine, "checkout", _sqlite_checkout)
    event.listen(engine, "begin", _sqlite_begin)
    engine._convo_prepared = True  # type: ignore[attr-defined]


def _set_wal(cursor: Any) -> None:
    """``PRAGMA journal_mode=WAL``, waiting while another connection holds the lock.

    Switching a fresh file to WAL needs an exclusive lock, and SQLite answers
    "database is locked" at once rather than through the busy handler (several
    processes opening a new database together, e.g. workers migrating at start-up).
    A read-only connection cannot switch a file that is not in WAL mode yet, and
    need not: it is left in the file's mode.
    """
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_S
    delay = 0.005
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except Exception as exc:  # sqlite3 error, or aiosqlite adapted one
            if "readonly database" in str(exc):
                return  # a read-only connection (a read URL) reads in the file's own mode
            if "database is locked" not in str(exc) or time.monotonic() + delay > deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


def _sqlite_checkout(dbapi_connection: Any, record: Any, proxy: Any) -> None:
    if record.info.get("convo"):
        return
    # No implicit BEGIN from the driver: _sqlite_begin decides what to begin.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        # The busy timeout first: switching a fresh file to WAL needs a lock that
        # another process (one migrating, say) may hold, and must wait for it.
        cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
        _set_wal(cursor)
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()
    record.info["convo"] = True


def _sqlite_begin(conn: Connection) -> None:
    options = conn.get_execution_options()
    if options.get(WRITE_OPTION):
        raw_execute(conn, "BEGIN IMMEDIATE")
    elif not options.get(READ_OPTION):
        raw_execute(conn, "BEGIN")


_E = TypeVar("_E", Engine, AsyncEngine)


def mode_engines(engine: _E) -> dict[str, _E]:
    """The store's three ways to run a plan, as engines sharing ``engine``'s pool.

    * ``"read"``: no transaction (each statement sees the latest committed
      data, like PostgreSQL's READ COMMITTED). Saves BEGIN/COMMIT round trips;
      on SQLite it never takes a lock.
    * ``"write"``: a transaction; SQLite begins it IMMEDIATE (takes the write
      lock up front, waiting under ``busy_timeout``).
    * ``"single"``: a write that is one statement: PostgreSQL runs it in
      autocommit (one round trip, still atomic); SQLite as ``"write"``.
    """
    if engine.dialect.name == "sqlite":
        writer = engine.execution_options(**{WRITE_OPTION: True})
        return {"read": engine.execution_options(**{READ_OPTION: True}), "write": writer,
                "single": writer}
    autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
    return {"read": autocommit, "write": engine, "single": autocommit}
