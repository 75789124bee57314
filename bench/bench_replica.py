"""Read replica benchmark: how far a streaming replica lags its primary, and what it serves.

Starts a PostgreSQL primary with pgserver (default durability: fsync and
synchronous_commit on) and a hot standby streaming from it (``pg_basebackup -R``,
the machinery of ``tests/conftest.py``'s ``pg_replica``), then:

* **lag**: ``--appends`` times, ``Store.append`` on the primary, then poll the
  replica (``SELECT 1 FROM messages WHERE id = ...`` on an open connection, in
  a tight loop) until the row is there; the time from the append's return to
  the first poll that sees it is the lag. Reported: p50 / p90 / p99 / max.
* **search**: ``Store(primary, read_url=replica).search`` vs the same on the
  primary, interleaved (``--searches`` rounds over ``--messages`` stored
  messages): the replica answers the same query at the same cost, off the
  primary.

Asynchronous streaming replication: a commit returns on the primary before the
replica has it; the lag is what a reader of the replica may miss.

Run::

    .venv/bin/python bench/bench_replica.py
    .venv/bin/python bench/bench_replica.py --appends 500 --messages 20000
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from conftest import PgCluster, PgReplica

from convo import Message, Store


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--appends", type=int, default=300)
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--searches", type=int, default=30)
    args = parser.parse_args()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver

        pgdata = Path(tempfile.mkdtemp(prefix="convo-bench-pg-"))
        server = pgserver.get_server(pgdata, cleanup_mode="stop")
    cluster = PgCluster(sa.make_url(server.get_uri()).set(drivername="postgresql+psycopg"))
    replica: PgReplica | None = None
    try:
        primary_url = cluster.create()
        replica = PgReplica(cluster)
        replica.catch_up()
        replica_url = replica.url(primary_url)
        store = Store(primary_url, read_url=replica_url)
        primary_only = Store(primary_url)
        conv = store.create_conversation()
        store.append_many(conv.id, [
            Message.user(f"message {i} about {'lisbon' if i % 100 == 0 else 'nothing'}")
            for i in range(args.messages)
        ])
        replica.catch_up()

        lags: list[float] = []
        probe = sa.create_engine(replica_url, poolclass=sa.NullPool)
        with probe.connect() as conn:
            for i in range(args.appends):
                stored = store.append(conv.id, Message.user(f"probe {i}"))
                done = time.perf_counter()
                while conn.exec_driver_sql(
                    "SELECT 1 FROM messages WHERE id = %(id)s", {"id": stored.id}
                ).first() is None:
                    conn.commit()  # a fresh snapshot for the next poll
                lags.append((time.perf_counter() - done) * 1000)
                conn.commit()
        probe.dispose()

        on_replica: list[float] = []
        on_primary: list[float] = []
        for _ in range(args.searches):
            for target, times in ((store, on_replica), (primary_only, on_primary)):
                start = time.perf_counter()
                hits = target.search("lisbon", limit=20)
                times.append((time.perf_counter() - start) * 1000)
                assert len(hits) == 20
        store.close()
        primary_only.close()

        print(f"load average (1 min): {os.getloadavg()[0]:.2f}")
        print(f"replica lag after Store.append, {args.appends} appends (ms): "
              f"p50 {_pct(lags, 50):.2f}  p90 {_pct(lags, 90):.2f}  "
              f"p99 {_pct(lags, 99):.2f}  max {max(lags):.2f}")
        print(f"search over {args.messages:,} messages, median of {args.searches} (ms): "
              f"replica {statistics.median(on_replica):.2f}  "
              f"primary {statistics.median(on_primary):.2f}")
    finally:
        if replica is not None:
            replica.stop()
        cluster.admin.dispose()
        server.cleanup()
        shutil.rmtree(pgdata, ignore_errors=True)


if __name__ == "__main__":
    main()
