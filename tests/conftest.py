"""Shared fixtures: hermetic environment, SQLite and a real PostgreSQL (pgserver).

* Every test runs with no ``OPENAI_*`` variables and ``CONVO_DATABASE_URL``
  pointing into its ``tmp_path``.
* ``db_url`` gives an empty migrated database, parametrized over SQLite and
  PostgreSQL: a copy of a migrated SQLite file, or the session's shared
  PostgreSQL database with every row deleted. PostgreSQL is one pgserver
  started once per session. ``make_db(backend, migrated=...)`` makes a
  brand-new database instead (PostgreSQL: cloned from a migrated template).
* ``pg_replica``: a streaming replica of the session's PostgreSQL (``pg_basebackup``),
  started on first use, only by the tests that ask for it.
* ``store`` is parametrized over [sqlite, postgresql] x [sync, async] and
  yields a :class:`StoreHandle`: ``await store.append(...)`` calls the sync
  ``Store`` directly or awaits the ``AsyncStore``, so one test body covers all four.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from convo._store.async_store import AsyncStore
from convo._store.store import Store

BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(autouse=True)
def _hermetic_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("OPENAI_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("CONVO_DATABASE_URL", f"sqlite:///{tmp_path / 'convo-env.db'}")
    monkeypatch.delenv("CONVO_READ_DATABASE_URL", raising=False)


# --- PostgreSQL ------------------------------------------------------------------------


#: A pgserver data directory whose server outlives each test session (kept running by the
#: process that set it: .ci/mutation runs hundreds of short pytest sessions); unset: a fresh
#: server per session.
SHARED_PGDATA = os.environ.get("CONVO_TEST_PGDATA")


class PgCluster:
    """A pgserver instance: makes and drops databases for tests."""

    def __init__(self, base_url: sa.URL) -> None:
        self.base_url = base_url
        self.admin = sa.create_engine(base_url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
        self._names = itertools.count()
        self._template: str | None = None
        self._shared: sa.URL | None = None

    def url(self, database: str) -> sa.URL:
        return self.base_url.set(database=database)

    def create(self, *, migrated: bool = True) -> sa.URL:
        name = f"t{os.getpid()}_{next(self._names)}"
        template = self.template() if migrated else "template0"
        with self.admin.connect() as conn:
            # FILE_COPY: faster than WAL_LOG for tiny databases (create + drop).
            conn.exec_driver_sql(f'CREATE DATABASE "{name}" TEMPLATE {template} STRATEGY FILE_COPY')
        return self.url(name)

    def _exists(self, name: str) -> bool:
        with self.admin.connect() as conn:
            return conn.exec_driver_sql(
                "SELECT 1 FROM pg_database WHERE datname = %s", (name,)).first() is not None

    def drop_own(self) -> None:
        """Drop the databases this process made (a shared server outlives the session)."""
        with self.admin.connect() as conn:
            names = conn.exec_driver_sql(
                "SELECT datname FROM pg_database WHERE datname LIKE %s",
                (f"t{os.getpid()}\\_%",)).scalars().all()
            for name in names:
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def drop(self, url: sa.URL) -> None:
        with self.admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{url.database}" WITH (FORCE)')

    def clean(self) -> sa.URL:
        """The session's shared migrated database, emptied (a few ms, vs ~0.1-0.4 s
        for CREATE DATABASE on a busy machine)."""
        if self._shared is None:
            self._shared = self.create()
        engine = sa.create_engine(self._shared, poolclass=sa.NullPool)
        with engine.begin() as conn:
            # Cascades to messages, message_tokens and summaries.
            conn.exec_driver_sql("DELETE FROM conversations")
            conn.exec_driver_sql("DELETE FROM replays")
            left = conn.exec_driver_sql(
                "SELECT (SELECT count(*) FROM messages) + (SELECT count(*) FROM summaries)"
                " + (SELECT count(*) FROM message_tokens) + (SELECT count(*) FROM runs)"
            ).scalar()
            assert left == 0
        engine.dispose()
        return self._shared

    def template(self) -> str:
        if self._template is None:
            name = "convo_template"
            if SHARED_PGDATA and self._exists(name):
                self._template = name  # made by an earlier session on this server
                return name
            with self.admin.connect() as conn:
                conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}")
                conn.exec_driver_sql(f"CREATE DATABASE {name}")
            store = Store(self.url(name))
            try:
                store.migrate()
            finally:
                store.close()
            self._template = name
        return self._template


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    try:
        with warnings.catch_warnings():
            # platformdirs warns about XDG_RUNTIME_DIR on import in containers.
            warnings.simplefilter("ignore")
            import pgserver
    except ImportError:  # pragma: no cover - the test extra installs it
        pytest.skip("pgserver is not installed (pip install 'convo[test]')")
    # Not under pytest's basetemp: concurrent pytest runs prune and chmod old
    # numbered directories, which crashes a server living there.
    pgdata = Path(SHARED_PGDATA or tempfile.mkdtemp(prefix="convo-pg-"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        server = pgserver.get_server(pgdata, cleanup_mode="stop")
    uri = sa.make_url(server.get_uri()).set(drivername="postgresql+psycopg")
    cluster = PgCluster(uri)
    with cluster.admin.connect() as conn:
        # A throwaway test server: durability off makes CREATE DATABASE ... FILE_COPY
        # (which checkpoints) take ~15 ms instead of ~500 ms on a busy machine.
        for setting in ("fsync", "synchronous_commit", "full_page_writes"):
            conn.exec_driver_sql(f"ALTER SYSTEM SET {setting} = off")
        conn.exec_driver_sql("SELECT pg_reload_conf()")
    try:
        yield cluster
    finally:
        if SHARED_PGDATA:
            cluster.drop_own()
        cluster.admin.dispose()
        server.cleanup()  # stops it unless another process holds it (pgserver counts them)
        if not SHARED_PGDATA:
            shutil.rmtree(pgdata, ignore_errors=True)


class PgReplica:
    """A hot standby streaming from the session's pgserver (same binaries): made with
    ``pg_basebackup -R`` and started with ``pg_ctl`` on its own socket directory."""

    def __init__(self, cluster: PgCluster) -> None:
        import pgserver

        self.cluster = cluster
        self._bin = Path(pgserver.__file__).parent / "pginstall" / "bin"
        self.dir = Path(tempfile.mkdtemp(prefix="convo-pg-replica-"))
        # pgserver runs postgres as the user "pgserver" when we are root (postgres
        # refuses root); the replica's files and server must belong to it too
        self._as: dict[str, Any] = {}
        if os.geteuid() == 0:
            import pwd

            user = pwd.getpwnam("pgserver")
            os.chown(self.dir, user.pw_uid, user.pw_gid)
            self._as = {"user": "pgserver"}
        primary_host = str(cluster.base_url.query["host"])
        try:
            self._pg("pg_basebackup", "-h", primary_host, "-U", "postgres", "-D", str(self.dir),
                     "-R", "-X", "stream", "-c", "fast")
            # copied from the primary's directory (its socket lives there): not ours
            (self.dir / ".s.PGSQL.5432.lock").unlink(missing_ok=True)
            self._pg("pg_ctl", "-D", str(self.dir), "-w", "-t", "120",
                     "-l", str(self.dir / "replica.log"),
                     "-o", f"-k {self.dir} -c listen_addresses=''", "start")
        except BaseException:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise
        self.admin = sa.create_engine(self.url(cluster.base_url), isolation_level="AUTOCOMMIT",
                                      poolclass=sa.NullPool)

    def _pg(self, program: str, *args: str) -> None:
        import subprocess

        done = subprocess.run([str(self._bin / program), *args], capture_output=True, text=True,
                              timeout=180, check=False, **self._as)
        if done.returncode != 0:
            log = self.dir / "replica.log"
            raise RuntimeError(f"{program} failed: {done.stderr}"
                               + (log.read_text() if log.exists() else ""))

    def url(self, primary: sa.URL) -> sa.URL:
        """The replica's URL for the primary's database ``primary``."""
        return primary.update_query_dict({"host": str(self.dir)})

    def catch_up(self, timeout: float = 60.0) -> None:
        """Wait until the replica has replayed everything the primary has written."""
        import time

        with self.cluster.admin.connect() as conn:
            # the insert position: with synchronous_commit off (the session's server),
            # a commit returns before its WAL is written, let alone sent
            target = conn.exec_driver_sql("SELECT pg_current_wal_insert_lsn()").scalar()
        deadline = time.monotonic() + timeout
        with self.admin.connect() as conn:
            while True:
                behind = conn.exec_driver_sql(
                    "SELECT pg_wal_lsn_diff(%(t)s::pg_lsn, pg_last_wal_replay_lsn())", {"t": target}
                ).scalar()
                if behind is not None and behind <= 0:
                    return
                if time.monotonic() > deadline:
                    raise TimeoutError(f"replica still {behind} bytes behind")
                time.sleep(0.02)

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Replay stopped: the replica lags the primary until the block ends (and catches up)."""
        import time

        with self.admin.connect() as conn:
            conn.exec_driver_sql("SELECT pg_wal_replay_pause()")
            while conn.exec_driver_sql("SELECT pg_get_wal_replay_pause_state()").scalar() != "paused":
                time.sleep(0.01)
        try:
            yield
        finally:
            with self.admin.connect() as conn:
                conn.exec_driver_sql("SELECT pg_wal_replay_resume()")
            self.catch_up()

    def stop(self) -> None:
        self.admin.dispose()
        try:
            self._pg("pg_ctl", "-D", str(self.dir), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_replica(pg_cluster: PgCluster) -> Iterator[PgReplica]:
    replica = PgReplica(pg_cluster)
    try:
        replica.catch_up()
        with replica.admin.connect() as conn:
            assert conn.exec_driver_sql("SELECT pg_is_in_recovery()").scalar() is True
        yield replica
    finally:
        replica.stop()


# --- SQLite -----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sqlite-template") / "template.db"
    store = Store(f"sqlite:///{path}")
    try:
        store.migrate()
    finally:
        store.close()
    # Fold the WAL into the main file so one file copy is the whole database.
    engine = sa.create_engine(f"sqlite:///{path}", poolclass=sa.NullPool)
    with engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    engine.dispose()
    return path


def _sqlite_url(tmp_path: Path, template: Path | None) -> sa.URL:
    path = tmp_path / "store.db"
    if template is not None:
        shutil.copyfile(template, path)
    return sa.make_url(f"sqlite:///{path}")


# --- fresh databases ----------------------------------------------------------------------


@pytest.fixture
def make_db(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[..., sa.URL]]:
    """``make_db(backend, migrated=True)`` -> the URL of a fresh database."""
    dropped: list[tuple[PgCluster, sa.URL]] = []
    counter = itertools.count()

    def make(backend: str, *, migrated: bool = True) -> sa.URL:
        if backend == "sqlite":
            directory = tmp_path / f"db{next(counter)}"
            directory.mkdir()
            template = request.getfixturevalue("sqlite_template") if migrated else None
            return _sqlite_url(directory, template)
        cluster: PgCluster = request.getfixturevalue("pg_cluster")
        url = cluster.create(migrated=migrated)
        dropped.append((cluster, url))
        return url

    yield make
    for cluster, url in dropped:
        cluster.drop(url)


def _clean_db(request: pytest.FixtureRequest, backend: str, tmp_path: Path) -> sa.URL:
    """An empty migrated database: a copied SQLite file, or the shared PostgreSQL one emptied."""
    if backend == "sqlite":
        return _sqlite_url(tmp_path, request.getfixturevalue("sqlite_template"))
    cluster: PgCluster = request.getfixturevalue("pg_cluster")
    return cluster.clean()


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> sa.URL:
    """An empty migrated database on each backend (use ``make_db`` for a brand-new one)."""
    return _clean_db(request, request.param, tmp_path)


# --- the store, four ways --------------------------------------------------------------------


class StoreHandle:
    """One API over ``Store`` and ``AsyncStore``: every method is awaited.

    Sync methods run directly (not in a thread), so the sync code path is
    exactly what users run. Also offers raw-SQL helpers for assertions.
    """

    def __init__(self, store: Store | AsyncStore, backend: str, url: sa.URL) -> None:
        self.raw = store
        self.backend = backend
        self.is_async = isinstance(store, AsyncStore)
        self.url = url
        self._check_engine: sa.Engine | None = None

    def __repr__(self) -> str:
        return f"<StoreHandle {self.backend} {'async' if self.is_async else 'sync'}>"

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.raw, name)
        if name == "iter_messages":
            return self._iter_messages
        if not callable(attr) or self.is_async:
            return attr

        async def call(*args: Any, **kwargs: Any) -> Any:
            return attr(*args, **kwargs)

        return call

    async def _iter_messages(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        if isinstance(self.raw, AsyncStore):
            async for message in self.raw.iter_messages(*args, **kwargs):
                yield message
        else:
            for message in self.raw.iter_messages(*args, **kwargs):
                yield message

    @property
    def sync_engine(self) -> sa.Engine:
        """The engine the store executes on (the sync core of an async engine)."""
        engine = self.raw.engine
        return engine if isinstance(engine, sa.Engine) else engine.sync_engine

    def sql(self, query: str, **params: Any) -> list[Any]:
        """Run raw SQL on a separate connection (for assertions)."""
        if self._check_engine is None:
            self._check_engine = sa.create_engine(self.url, poolclass=sa.NullPool)
        with self._check_engine.begin() as conn:
            result = conn.execute(sa.text(query), params)
            return list(result) if result.returns_rows else []

    def count(self, table: str) -> int:
        return int(self.sql(f"SELECT count(*) FROM {table}")[0][0])

    def snapshot(self) -> dict[str, Any]:
        """Row counts and counters: equal before and after an operation that must change nothing."""
        return {
            "conversations": self.sql("SELECT id, last_seq, updated_at, title FROM conversations ORDER BY id"),
            "messages": self.count("messages"),
            "message_tokens": self.count("message_tokens"),
            "summaries": self.count("summaries"),
            "runs": self.sql("SELECT id, status, reply_message_id FROM runs ORDER BY id"),
        }

    @contextmanager
    def statements(self) -> Iterator[list[str]]:
        """Collect the SQL statements the store executes inside the block."""
        seen: list[str] = []

        def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            seen.append(statement)

        engine = self.sync_engine
        sa.event.listen(engine, "before_cursor_execute", record)
        try:
            yield seen
        finally:
            sa.event.remove(engine, "before_cursor_execute", record)

    async def aclose(self) -> None:
        if isinstance(self.raw, AsyncStore):
            await self.raw.close()
        else:
            self.raw.close()
        if self._check_engine is not None:
            self._check_engine.dispose()


@pytest.fixture(
    params=[(b, mode) for b in BACKENDS for mode in ("sync", "async")],
    ids=lambda p: f"{p[0]}-{p[1]}",
)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreHandle]:
    """A migrated, empty store: SQLite / PostgreSQL x sync / async."""
    backend, mode = request.param
    url = _clean_db(request, backend, tmp_path)
    raw: Store | AsyncStore = Store(url) if mode == "sync" else AsyncStore(url)
    handle = StoreHandle(raw, backend, url)
    yield handle
    await handle.aclose()
