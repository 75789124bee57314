"""Store benchmark: append throughput and newest-first reads, SQLite and PostgreSQL.

Measures, per database:

* appends/s with one writer (``Store.append``, one transaction per message);
* appends/s with 4 writer processes on the same conversation (spawned, each
  with its own Store; wall time from a shared start barrier to the last finish);
* the newest-first read of the last 50 messages (``Store.messages(...,
  newest_first=True, limit=50)``) of a 1,000- and a 1,000,000-message
  conversation: the median of ``--reads`` calls (sizes interleaved, after
  VACUUM ANALYZE / ANALYZE of the fresh bulk load), and the ratio big/small,
  which should be ~1 (the read is a keyset range on (conversation_id, seq),
  independent of the thread's length). ``Store.tail`` (the same read plus
  the token-count join the context builder uses) is reported too.

PostgreSQL is a real server started by this script with pgserver (default
settings: fsync on, synchronous_commit on). SQLite runs in WAL mode with
synchronous=NORMAL (convo's default). Conversations are filled with
``Store.append_many`` in batches of ``--batch`` messages.

Run::

    /work/venv/bin/python bench/bench_store.py                       # 1K and 1M, both databases
    /work/venv/bin/python bench/bench_store.py --sizes 1000,100000 --db sqlite
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from typing import Any

import sqlalchemy as sa

from convo import Store

WRITERS = 4


def _writer(url: str, conversation_id: str, n: int, barrier: Any, out: Any) -> None:
    with Store(url) as store:
        store.check_schema()  # connect before the start line
        barrier.wait()
        start = time.time()
        for i in range(n):
            store.append(conversation_id, {"role": "user", "content": f"message {i} from {os.getpid()}"})
        out.put((start, time.time()))


def bench_appends(url: str, n: int) -> tuple[float, float]:
    with Store(url) as store:
        conv = store.create_conversation(title="appends")
        for i in range(min(100, n)):  # warm up: pool, statement cache
            store.append(conv.id, {"role": "user", "content": f"warm-up {i}"})
        start = time.perf_counter()
        for i in range(n):
            store.append(conv.id, {"role": "user", "content": f"message {i}"})
        single = n / (time.perf_counter() - start)
        conv = store.create_conversation(title="appends, 4 processes")
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(WRITERS)
    out = ctx.Queue()
    per = n // WRITERS
    procs = [ctx.Process(target=_writer, args=(url, conv.id, per, barrier, out)) for _ in range(WRITERS)]
    for p in procs:
        p.start()
    spans = [out.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
    multi = per * WRITERS / (max(e for _, e in spans) - min(s for s, _ in spans))
    with Store(url) as store:
        seqs = [m.seq for m in store.iter_messages(conv.id)]
    assert seqs == list(range(1, per * WRITERS + 1)), "lost or duplicated sequence numbers"
    return single, multi


def fill(store: Store, size: int, batch: int) -> tuple[str, float]:
    conv = store.create_conversation(title=f"{size} messages")
    start = time.perf_counter()
    done = 0
    while done < size:
        k = min(batch, size - done)
        store.append_many(conv.id, [
            {"role": "user" if (done + i) % 2 == 0 else "assistant",
             "content": f"message {done + i}: " + "lorem ipsum dolor sit amet " * 4}
            for i in range(k)
        ])
        done += k
        if size >= 100_000 and done % (size // 10) == 0:
            print(f"    filled {done:,}/{size:,} ({time.perf_counter() - start:.0f} s)", file=sys.stderr)
    return conv.id, time.perf_counter() - start


def settle(store: Store) -> None:
    """Let the database catch up after a bulk load before timing reads.

    PostgreSQL's autovacuum starts on a freshly loaded million-row table and
    competes with the timed reads for the CPU; run VACUUM ANALYZE (what it
    would do) up front. SQLite: ANALYZE.
    """
    if store.engine.dialect.name == "postgresql":
        with store.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM ANALYZE")
    else:
        with store.engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE")


def timed_reads(calls: dict[int, Any], reads: int) -> dict[int, float]:
    """Median ms per call; sizes are interleaved so machine noise hits them alike."""
    for fn in calls.values():
        for _ in range(20):
            fn()
    times: dict[int, list[float]] = {size: [] for size in calls}
    for _ in range(reads):
        for size, fn in calls.items():
            start = time.perf_counter()
            fn()
            times[size].append(time.perf_counter() - start)
    return {size: statistics.median(t) * 1000 for size, t in times.items()}


def bench_reads(url: str, sizes: list[int], reads: int, batch: int) -> dict[int, dict[str, float]]:
    with Store(url) as store:
        ids: dict[int, str] = {}
        fills: dict[int, float] = {}
        for size in sizes:
            ids[size], fills[size] = fill(store, size, batch)
            newest = store.messages(ids[size], newest_first=True, limit=50)
            assert [m.seq for m in newest] == list(range(size, size - 50, -1))
            print(f"  {size:>9,} messages: filled in {fills[size]:.1f} s", file=sys.stderr)
        settle(store)
        read = timed_reads({
            size: (lambda c=cid: store.messages(c, newest_first=True, limit=50))
            for size, cid in ids.items()
        }, reads)
        tail = timed_reads({
            size: (lambda c=cid: store.tail(c, encoding="o200k_base", limit=50))
            for size, cid in ids.items()
        }, reads)
    return {
        size: {"fill_s": fills[size], "read_ms": read[size], "tail_ms": tail[size]}
        for size in sizes
    }


class Databases:
    """Fresh databases: SQLite files in a temp dir, PostgreSQL via pgserver."""

    def __init__(self) -> None:
        self.tmp = tempfile.mkdtemp(prefix="convo-bench-")
        self.server: Any = None
        self.count = 0

    def url(self, kind: str) -> str:
        self.count += 1
        if kind == "sqlite":
            return f"sqlite:///{self.tmp}/bench{self.count}.db"
        if self.server is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # platformdirs' XDG_RUNTIME_DIR warning
                import pgserver

                os.makedirs(f"{self.tmp}/pg")
                self.server = pgserver.get_server(f"{self.tmp}/pg", cleanup_mode="stop")
        base = sa.make_url(self.server.get_uri()).set(drivername="postgresql+psycopg")
        name = f"bench{self.count}"
        admin = sa.create_engine(base, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
        with admin.connect() as conn:
            conn.exec_driver_sql(f"CREATE DATABASE {name}")
        admin.dispose()
        return base.set(database=name).render_as_string(hide_password=False)

    def close(self) -> None:
        if self.server is not None:
            self.server.cleanup()
        shutil.rmtree(self.tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", default="sqlite,postgresql", help="comma-separated: sqlite,postgresql")
    parser.add_argument("--sizes", default="1000,1000000", help="conversation sizes to read from")
    parser.add_argument("--appends", type=int, default=2000, help="appends per throughput run")
    parser.add_argument("--reads", type=int, default=500, help="timed reads per size (median)")
    parser.add_argument("--batch", type=int, default=10_000, help="append_many batch when filling")
    args = parser.parse_args()
    kinds = [k.strip() for k in args.db.split(",") if k.strip()]
    sizes = [int(s) for s in args.sizes.split(",")]
    dbs = Databases()
    rows = []
    try:
        for kind in kinds:
            print(f"{kind}:", file=sys.stderr)
            url = dbs.url(kind)
            with Store(url) as store:
                store.migrate()
            single, multi = bench_appends(url, args.appends)
            print(f"  appends/s: {single:,.0f} (1 writer), {multi:,.0f} ({WRITERS} processes)", file=sys.stderr)
            rows.append((kind, single, multi, bench_reads(url, sizes, args.reads, args.batch)))
    finally:
        dbs.close()

    small, big = min(sizes), max(sizes)
    print(f"\n## convo store benchmark\n\n{platform.python_implementation()} {platform.python_version()}, "
          f"{platform.machine()}, {os.cpu_count()} CPUs; {args.appends:,} appends per run, "
          f"median of {args.reads} reads.\n")
    head = ["database", "appends/s (1 writer)", f"appends/s ({WRITERS} processes)"]
    for size in sizes:
        head.append(f"last 50 of {size:,} (ms)")
    head += [f"ratio {big:,}/{small:,}", f"tail() 50 of {big:,} (ms)", f"fill {big:,} (s)"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for kind, single, multi, reads in rows:
        cells = [kind, f"{single:,.0f}", f"{multi:,.0f}"]
        cells += [f"{reads[size]['read_ms']:.3f}" for size in sizes]
        cells += [f"{reads[big]['read_ms'] / reads[small]['read_ms']:.2f}",
                  f"{reads[big]['tail_ms']:.3f}", f"{reads[big]['fill_s']:.1f}"]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
