"""Scaling benchmark: many app servers (processes) running turns on one PostgreSQL.

Question: what does one PostgreSQL give a fleet of app servers running convo
turns, where does the time go (database CPU or app CPU), and how should the
connections be pooled? Every run is checked afterwards: nothing lost, nothing
duplicated.

* **One PostgreSQL** (pgserver, PostgreSQL 16, its default settings: fsync
  and ``synchronous_commit`` on), migrated once; each run gets fresh
  conversations, each starting with ``--history`` messages (token counts stored).
* **One fake model server** (``convo serve-fake``) in its own process on
  loopback: the model's time is tiny and the same for every configuration.
* **N worker processes** (multiprocessing spawn, started once and reused):
  per run each opens its own ``Store`` (an engine with its own pool),
  ``OpenAIClient`` and ``Chat``, warms up with ``--warmup`` turns, and then,
  from a shared start instant (all workers report ready; the parent gives one
  start time a few ms ahead), runs ``Chat.send`` turns for ``--duration``
  seconds: append the user message, build the context, call the fake, append
  the reply and finish the run record. Every turn has its own idempotency key.
* Two workloads: **separate** (each process on its own conversations) and
  **hot** (every process on ONE shared conversation: appends serialize on
  that conversation's row lock).

Per run: turns/s (timed turns / wall time from the start instant to the last
worker's end), p50/p99 turn latency, and where the CPU went over the timed
window: the PostgreSQL server (postmaster and all its children, backends and
background workers, from ``/proc/<pid>/stat``, exited backends included via
the postmaster's cutime/cstime), the app (each worker's own ``os.times()``),
the fake model server, and PgBouncer when it is in the path. "busy" is all of
that CPU over (wall x nproc): near 100% the machine is saturated and more
processes only queue.

After every run the database is checked (the benchmark fails loudly if not):
each conversation's seqs are 1..last_seq with no gap or duplicate, its message
count grew by exactly 2 per turn sent, the user messages are exactly the keys
sent (one each), one assistant reply per user message (key ``<key>#r0``), one
``ok`` run per key pointing at that reply, and no ``pending``/``failed`` run.

Session state (with the pooling section): every statement the server receives
from one worker running turns, and from a migration, is logged
(``log_statement=all``) and searched for what a transaction-mode pooler cannot
carry (SET, LISTEN, PREPARE, temporary tables, WITH HOLD cursors, session
advisory locks...); named (server-side prepared) executions are counted.

Connection pooling section (on unless ``--no-pooling``): the same 2-process
"separate" run with the pool and driver settings that matter for deployment
(pool_size 1 vs 5, ``pool_pre_ping`` on, psycopg's server-side prepared
statements off), a threaded variant (one process, 4 threads, each thread its
own ``Chat`` on one shared ``Store``: pool_size 5 vs 1), the connections each
process really holds (``pg_stat_activity``, by ``application_name``), and,
when a ``pgbouncer`` binary is found (``--pgbouncer``), runs through PgBouncer
in transaction mode: with ``prepare_threshold=None`` (checked like every run)
and with psycopg's default (prepared statements after 5 executions), whose
failures are reported, not raised. PgBouncer is not a Python package: on
Debian/Ubuntu ``apt-get install pgbouncer`` (the script starts its own
instance on a free loopback port; as root it runs it as the PostgreSQL
server's user, since PgBouncer refuses to run as root).

Run (prints a markdown report; ``--output`` also writes it to a file)::

    nice -n 5 .venv/bin/python bench/bench_scaling.py                       # ~4 min on 2 cores
    .venv/bin/python bench/bench_scaling.py --duration 3 --processes 1,2 --no-pooling   # quick
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

MODEL = "gpt-4o-mini"
CLK_TCK = os.sysconf("SC_CLK_TCK")
WORDS = ["tram", "alfama", "castle", "river", "tiles", "custard", "tart", "miradouro", "fado",
         "sardines", "ferry", "belem", "sintra", "cascais", "bairro", "alto", "azulejo",
         "viewpoint", "chiado", "baixa"]


def text_of(i: int, words: int = 24) -> str:
    return " ".join(WORDS[(i * 7 + k * 3) % len(WORDS)] for k in range(words)) + f" ({i})"


# --- the worker process ----------------------------------------------------------------------


def worker_main(index: int, commands: Any, results: Any) -> None:
    """A spawned app server: waits for runs, each with its own Store, client and Chats."""
    warnings.simplefilter("ignore")
    while True:
        cmd = commands.get()
        if cmd is None:
            return
        try:
            _worker_run(index, cmd, commands, results)
        except BaseException:  # noqa: BLE001 - the parent fails the benchmark with it
            results.put(("error", index, traceback.format_exc()))


def _worker_run(index: int, cfg: dict[str, Any], commands: Any, results: Any) -> None:
    from convo import Chat, OpenAIClient, Store

    kwargs = dict(cfg["engine_kwargs"])
    connect_args = dict(kwargs.pop("connect_args", {}))
    # per run: PgBouncer's server connections keep the name of the last client they served
    connect_args["application_name"] = f"bench-{cfg['tag']}-w{index}"
    store = Store(cfg["url"], connect_args=connect_args, **kwargs)
    checkouts = [0]

    def checked_out(*_: Any) -> None:
        checkouts[0] += 1

    sa.event.listen(store.engine, "checkout", checked_out)  # a pool event: no statement hooks
    client = OpenAIClient(base_url=cfg["base_url"], api_key="sk-bench", max_retries=0)
    threads = len(cfg["conversations"])
    chats = [Chat(store, client, model=MODEL, budget=cfg["budget"]) for _ in range(threads)]
    sent = [0] * threads
    latencies: list[list[float]] = [[] for _ in range(threads)]
    errors: list[str] = []

    def key(t: int, i: int) -> str:
        return f"{cfg['tag']}:w{index}t{t}:{i}"

    def turn(t: int) -> float:
        i = sent[t]
        start = time.perf_counter()
        sent[t] += 1  # counted before: a turn that raised may still have stored its message
        result = chats[t].send(cfg["conversations"][t], text_of(1000 * index + i),
                               idempotency_key=key(t, i))
        elapsed = time.perf_counter() - start
        if result.run is None or result.run.status != "ok":
            raise RuntimeError(f"turn {key(t, i)} ended with run {result.run!r}")
        return elapsed

    def loop(t: int, deadline: float | None, count: int) -> None:
        try:
            if deadline is None:
                for _ in range(count):
                    turn(t)
                return
            while time.time() < deadline:
                latencies[t].append(turn(t))
        except Exception as exc:  # noqa: BLE001 - reported with the run
            errors.append(f"{type(exc).__name__}: {exc}"[:500])

    def in_threads(deadline: float | None, count: int) -> None:
        if threads == 1:
            loop(0, deadline, count)
            return
        pool = [threading.Thread(target=loop, args=(t, deadline, count)) for t in range(threads)]
        for th in pool:
            th.start()
        for th in pool:
            th.join()

    try:
        in_threads(None, cfg["warmup"])
        results.put(("ready", index, errors[:1]))
        go = commands.get()
        assert go[0] == "go", go
        _, start_at, duration = go
        time.sleep(max(0.0, start_at - time.time()))
        cpu0 = os.times()
        checkouts[0] = 0
        in_threads(start_at + duration, 0)
        end = time.time()
        cpu1 = os.times()
        results.put(("done", index, {
            "end": end,
            "latencies": [x for xs in latencies for x in xs],
            "sent": sent,
            "cpu": (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system),
            "checkouts": checkouts[0],
            "errors": errors,
        }))
        close = commands.get()
        assert close == "close", close
    finally:
        client.close()
        store.close()
    results.put(("closed", index, None))


# --- CPU accounting from /proc -----------------------------------------------------------------


def _stat(pid: int) -> tuple[int, int] | None:
    """(ppid, CPU ticks incl. reaped children) of ``pid``, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            raw = f.read()
    except OSError:
        return None
    fields = raw.rsplit(")", 1)[1].split()
    # after the comm: state ppid ... utime(11) stime(12) cutime(13) cstime(14)
    return int(fields[1]), sum(int(x) for x in fields[11:15])


def tree_cpu(root: int) -> float:
    """CPU seconds of ``root`` and its direct children (the postmaster and its backends).

    A backend that exited was reaped by the postmaster: its CPU moved into the
    postmaster's cutime/cstime, so it stays counted.
    """
    total = 0
    own = _stat(root)
    if own is not None:
        total += own[1]
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = _stat(int(name))
            if st is not None and st[0] == root:
                total += st[1]
    return total / CLK_TCK


def pid_cpu(pid: int | None) -> float:
    if pid is None:
        return 0.0
    st = _stat(pid)
    return 0.0 if st is None else st[1] / CLK_TCK


# --- setup: PostgreSQL, the fake, PgBouncer ----------------------------------------------------


class Postgres:
    """One pgserver PostgreSQL with one migrated database ``bench``."""

    def __init__(self, tmp: str, synchronous_commit: str) -> None:
        self.pgdata = os.path.join(tmp, "pg")
        os.makedirs(self.pgdata)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs' XDG_RUNTIME_DIR warning
            import pgserver

            self.server = pgserver.get_server(  # type: ignore[attr-defined]
                self.pgdata, cleanup_mode="stop")
        base = sa.make_url(self.server.get_uri()).set(drivername="postgresql+psycopg")
        self.socket_dir = base.query["host"]
        self.admin = sa.create_engine(base, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
        with self.admin.connect() as conn:
            conn.exec_driver_sql("CREATE DATABASE bench")
            if synchronous_commit != "on":
                conn.exec_driver_sql(f"ALTER SYSTEM SET synchronous_commit = {synchronous_commit}")
                conn.exec_driver_sql("SELECT pg_reload_conf()")
            self.version = conn.exec_driver_sql("SHOW server_version").scalar()
            self.settings = {
                name: conn.exec_driver_sql(f"SHOW {name}").scalar()
                for name in ("fsync", "synchronous_commit", "max_connections", "shared_buffers")
            }
        self.url = base.set(database="bench").render_as_string(hide_password=False)
        self.engine = sa.create_engine(self.url, poolclass=sa.NullPool)
        with open(os.path.join(self.pgdata, "postmaster.pid")) as f:
            self.postmaster = int(f.readline())

    def cpu(self) -> float:
        return tree_cpu(self.postmaster)

    def backends(self) -> Counter[str]:
        """Client connections open on the bench database, by application_name."""
        with self.engine.connect() as conn:
            rows = conn.exec_driver_sql(
                "SELECT application_name, count(*) FROM pg_stat_activity "
                "WHERE datname = 'bench' AND backend_type = 'client backend' "
                "AND pid <> pg_backend_pid() GROUP BY 1"
            ).all()
        return Counter({str(name): int(n) for name, n in rows})

    def close(self) -> None:
        self.engine.dispose()
        self.admin.dispose()
        self.server.cleanup()


def start_fake() -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", "from convo.cli import main; main()", "serve-fake", "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    return proc, line.split(" on ")[1].split()[0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgBouncer:
    """PgBouncer in transaction pooling mode in front of ``pg`` (TCP on loopback)."""

    def __init__(self, binary: str, pg: Postgres, tmp: str, pool_size: int) -> None:
        self.dir = os.path.join(tmp, "pgbouncer")
        os.makedirs(self.dir)
        self.port = _free_port()
        with open(os.path.join(self.dir, "userlist.txt"), "w") as f:
            f.write('"postgres" ""\n')
        conf = os.path.join(self.dir, "pgbouncer.ini")
        with open(conf, "w") as f:
            f.write(
                "[databases]\n"
                f"bench = host={pg.socket_dir} dbname=bench user=postgres\n"
                "[pgbouncer]\n"
                f"listen_addr = 127.0.0.1\nlisten_port = {self.port}\nunix_socket_dir =\n"
                f"auth_type = trust\nauth_file = {self.dir}/userlist.txt\n"
                f"pool_mode = transaction\ndefault_pool_size = {pool_size}\n"
                "max_client_conn = 500\n"
                f"logfile = {self.dir}/pgbouncer.log\npidfile = {self.dir}/pgbouncer.pid\n"
            )
        command = [binary, conf]
        if os.geteuid() == 0:
            # PgBouncer refuses to run as root; run it as the PostgreSQL server's user,
            # who can also reach the server's socket directory.
            owner = os.stat(pg.pgdata).st_uid
            shutil.chown(self.dir, owner)
            for name in os.listdir(self.dir):
                shutil.chown(os.path.join(self.dir, name), owner)
            import pwd

            command = [binary, "-u", pwd.getpwuid(owner).pw_name, conf]
        self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.time() > deadline:
                    err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                    raise RuntimeError(f"pgbouncer did not start: {err}") from None
                time.sleep(0.05)
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/bench"
        self.version = subprocess.run([binary, "--version"], capture_output=True,
                                      text=True, check=False).stdout.split("\n")[0]

    def cpu(self) -> float:
        return pid_cpu(self.proc.pid)

    def close(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


# --- one run -------------------------------------------------------------------------------


@dataclass
class Config:
    label: str
    workload: str  # "separate" | "hot"
    processes: int
    threads: int = 1
    engine_kwargs: dict[str, Any] = field(default_factory=dict)
    via_pgbouncer: bool = False
    expect_failures: bool = False  # report errors instead of failing the benchmark


@dataclass
class Result:
    config: Config
    turns: int = 0
    wall: float = 0.0
    latencies: list[float] = field(default_factory=list)
    db_cpu: float = 0.0
    app_cpu: float = 0.0
    fake_cpu: float = 0.0
    bouncer_cpu: float = 0.0
    checkouts: int = 0
    connections: Counter[str] = field(default_factory=Counter)
    rounds: list[float] = field(default_factory=list)  # turns/s of each round (merged runs)
    load: str = ""
    errors: list[str] = field(default_factory=list)
    checked: str = ""

    @property
    def rate(self) -> float:
        return self.turns / self.wall if self.wall else 0.0

    def merge(self, other: Result) -> None:
        """Add another round of the same configuration (interleaved runs)."""
        if not self.rounds:
            self.rounds = [self.rate]
        self.rounds.append(other.rate)
        self.turns += other.turns
        self.wall += other.wall
        self.latencies += other.latencies
        self.db_cpu += other.db_cpu
        self.app_cpu += other.app_cpu
        self.fake_cpu += other.fake_cpu
        self.bouncer_cpu += other.bouncer_cpu
        self.checkouts += other.checkouts
        self.connections = max(self.connections, other.connections, key=lambda c: sum(c.values()))
        self.load += f", {other.load}"
        self.errors += other.errors
        self.checked += "; " + other.checked

    def pct(self, q: float) -> float:
        xs = sorted(self.latencies)
        if not xs:
            return float("nan")
        return xs[min(len(xs) - 1, int(q * len(xs)))] * 1000


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tmp = tempfile.mkdtemp(prefix="convo-bench-scaling-")
        self.pg: Postgres | None = None
        self.fake: subprocess.Popen[str] | None = None
        self.bouncer: PgBouncer | None = None
        self.workers: list[tuple[Any, Any]] = []
        self.results: Any = None
        self.runs = 0

    # setup / teardown

    def start(self, max_workers: int) -> None:
        from convo import Store

        self.pg = Postgres(self.tmp, self.args.synchronous_commit)
        with Store(self.pg.url) as store:
            store.migrate()
        self.fake, self.base_url = start_fake()
        ctx = __import__("multiprocessing").get_context("spawn")
        self.results = ctx.Queue()
        for i in range(max_workers):
            commands = ctx.Queue()
            proc = ctx.Process(target=worker_main, args=(i, commands, self.results), daemon=True)
            proc.start()
            self.workers.append((proc, commands))

    def close(self) -> None:
        for _, commands in self.workers:
            commands.put(None)
        for proc, _ in self.workers:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.terminate()
        if self.bouncer is not None:
            self.bouncer.close()
        if self.fake is not None:
            self.fake.terminate()
            self.fake.wait(timeout=30)
        if self.pg is not None:
            self.pg.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    # conversations

    def prepare(self, count: int) -> tuple[list[str], dict[str, int]]:
        """``count`` fresh conversations of ``--history`` messages (+ the system prompt)."""
        from convo import ContextBuilder, Message, Store

        assert self.pg is not None
        ids = []
        with Store(self.pg.url) as store:
            for _ in range(count):
                conv = store.create_conversation(title="scaling")
                store.append(conv.id, Message.system("You are a concise travel assistant."))
                store.append_many(conv.id, [
                    Message.user(text_of(i)) if i % 2 == 0 else Message.assistant(text_of(i, 40))
                    for i in range(self.args.history)
                ])
                ContextBuilder(store, model=MODEL, budget=self.args.budget).build(conv.id)
                ids.append(conv.id)
        return ids, {cid: self.args.history + 1 for cid in ids}

    # running

    def _collect(self, kind: str, n: int, timeout: float) -> dict[int, Any]:
        got: dict[int, Any] = {}
        deadline = time.time() + timeout
        while len(got) < n:
            try:
                what, index, payload = self.results.get(timeout=1.0)
            except queue.Empty:
                dead = [i for i, (proc, _) in enumerate(self.workers) if not proc.is_alive()]
                if dead:
                    raise RuntimeError(f"worker process(es) {dead} died") from None
                if time.time() > deadline:
                    raise RuntimeError(f"workers did not report {kind!r} in {timeout:.0f} s") from None
                continue
            if what == "error":
                raise RuntimeError(f"worker {index} failed:\n{payload}")
            if what != kind:
                raise RuntimeError(f"worker {index} sent {what!r}, expected {kind!r}")
            got[index] = payload
        return got

    def run(self, config: Config, duration: float) -> Result:
        assert self.pg is not None and self.fake is not None
        self.runs += 1
        tag = f"r{self.runs}-{uuid.uuid4().hex[:6]}"
        n, threads = config.processes, config.threads
        if config.workload == "hot":
            ids, initial = self.prepare(1)
            per_worker = [[ids[0]] * threads for _ in range(n)]
        else:
            ids, initial = self.prepare(n * threads)
            per_worker = [ids[w * threads:(w + 1) * threads] for w in range(n)]
        url = self.pg.url
        if config.via_pgbouncer:
            assert self.bouncer is not None
            url = self.bouncer.url
        for w in range(n):
            self.workers[w][1].put({
                "url": url, "engine_kwargs": config.engine_kwargs, "base_url": self.base_url,
                "conversations": per_worker[w], "warmup": self.args.warmup,
                "budget": self.args.budget, "tag": tag,
            })
        ready = self._collect("ready", n, 300)
        result = Result(config)
        result.errors = [e for errs in ready.values() for e in errs]
        result.load = Path("/proc/loadavg").read_text().split()[0]
        start_at = time.time() + 0.05 + 0.002 * n
        for w in range(n):
            self.workers[w][1].put(("go", start_at, duration))
        time.sleep(max(0.0, start_at - time.time()))
        bouncer = self.bouncer if config.via_pgbouncer else None
        cpu0 = (self.pg.cpu(), pid_cpu(self.fake.pid), bouncer.cpu() if bouncer else 0.0)
        done = self._collect("done", n, duration + 300)
        cpu1 = (self.pg.cpu(), pid_cpu(self.fake.pid), bouncer.cpu() if bouncer else 0.0)
        result.connections = Counter({k: v for k, v in self.pg.backends().items()
                                      if k.startswith(f"bench-{tag}-")})
        for w in range(n):
            self.workers[w][1].put("close")
        self._collect("closed", n, 60)
        result.db_cpu, result.fake_cpu, result.bouncer_cpu = (b - a for a, b in zip(cpu0, cpu1))
        result.app_cpu = sum(d["cpu"] for d in done.values())
        result.checkouts = sum(d["checkouts"] for d in done.values())
        result.wall = max(d["end"] for d in done.values()) - start_at
        result.latencies = [x for d in done.values() for x in d["latencies"]]
        result.turns = len(result.latencies)
        result.errors += [e for d in done.values() for e in d["errors"]]
        if result.errors and not config.expect_failures:
            raise RuntimeError(f"{config.label}: turns failed: {result.errors[:3]}")
        sent = {f"{tag}:w{w}t{t}:{i}": per_worker[w][t]
                for w, d in done.items() for t, k in enumerate(d["sent"]) for i in range(k)}
        if not config.expect_failures:
            result.checked = check(self.pg.engine, initial, sent)
        return result


# --- what a turn leaves in the server session (PgBouncer transaction mode) ------------------

# Statements that leave state in the server session, which a transaction-mode pool
# hands to another client after the transaction (SET LOCAL / SET TRANSACTION and
# pg_advisory_xact_lock end with the transaction, so they are fine).
SESSION_STATE = re.compile(
    r"^\s*(SET\s+(?!LOCAL\b|TRANSACTION\b|SESSION\s+CHARACTERISTICS)|RESET\b|LISTEN\b|UNLISTEN\b|"
    r"PREPARE\b|DECLARE\b.*\bWITH\s+HOLD\b|CREATE\s+(GLOBAL\s+|LOCAL\s+)?TEMP(ORARY)?\b|"
    r"LOAD\b|DISCARD\b)|\bpg_(try_)?advisory_lock(_shared)?\s*\(|\bset_config\s*\(.*false\s*\)",
    re.IGNORECASE | re.DOTALL,
)
LOGGED = re.compile(r"\] bench-(?P<tag>[^ ]+)-w\d+ LOG:  (statement|execute (?P<name>[^:]+)): (?P<sql>.*)")


def audit_session_state(bench: Bench, duration: float) -> dict[str, Any]:
    """Log every statement of a 1-process run (connect, warm-up, turns, close) and look
    for session state and named (server-side) prepared statements."""
    pg = bench.pg
    assert pg is not None
    log = os.path.join(pg.pgdata, "log")
    with pg.admin.connect() as conn:
        conn.exec_driver_sql("ALTER SYSTEM SET log_line_prefix = '%%m [%%p] %%a '")
        conn.exec_driver_sql("SELECT pg_reload_conf()")
        conn.exec_driver_sql("ALTER DATABASE bench SET log_statement = 'all'")
        conn.exec_driver_sql("CREATE DATABASE bench_migrate")
        conn.exec_driver_sql("ALTER DATABASE bench_migrate SET log_statement = 'all'")
    offset = os.path.getsize(log)
    try:
        result = bench.run(Config("session audit", "separate", 1), duration)
        # and a migration (Store.migrate() / `convo db upgrade`) of an empty database
        from convo import Store

        url = sa.make_url(pg.url).set(database="bench_migrate")
        with Store(url, connect_args={"application_name": "bench-migrate-w0"}) as store:
            store.migrate()
    finally:
        with pg.admin.connect() as conn:
            conn.exec_driver_sql("ALTER DATABASE bench RESET log_statement")
    time.sleep(0.2)  # the server's log lines of the closing connection
    kinds: Counter[str] = Counter()
    named = 0
    state: list[str] = []
    migration: list[str] = []
    with open(log, errors="replace") as f:
        f.seek(offset)
        for line in f:
            m = LOGGED.search(line)
            if m is None:
                continue
            if m["tag"] == "migrate":
                if SESSION_STATE.search(m["sql"]):
                    migration.append(m["sql"].strip()[:120])
                continue
            sql_text = m["sql"].strip()
            kinds[sql_text.split(None, 1)[0].upper() if sql_text else "?"] += 1
            if (m["name"] or "<unnamed>") != "<unnamed>":
                named += 1
            if SESSION_STATE.search(sql_text):
                state.append(sql_text[:120])
    turns = result.turns + bench.args.warmup
    return {"turns": turns, "statements": sum(kinds.values()), "kinds": kinds,
            "named": named, "session_state": state, "migration": migration,
            "checked": result.checked}


# --- nothing lost, nothing duplicated --------------------------------------------------------


def check(engine: sa.Engine, initial: dict[str, int], sent: dict[str, str]) -> str:
    """Fail loudly unless the run's conversations hold exactly the turns sent, once each."""
    cids = list(initial)
    problems: list[str] = []
    bind = {"cids": cids}
    expanding: Any = sa.bindparam("cids", expanding=True)
    with engine.connect() as conn:
        per_conv = conn.execute(sa.text(
            "SELECT c.id, c.last_seq, count(m.id), min(m.seq), max(m.seq), count(DISTINCT m.seq) "
            "FROM conversations c LEFT JOIN messages m ON m.conversation_id = c.id "
            "WHERE c.id IN :cids GROUP BY c.id, c.last_seq").bindparams(expanding), bind).all()
        users = conn.execute(sa.text(
            "SELECT idempotency_key, conversation_id, count(*) FROM messages "
            "WHERE conversation_id IN :cids AND role = 'user' AND idempotency_key IS NOT NULL "
            "GROUP BY 1, 2").bindparams(expanding), bind).all()
        replies = conn.execute(sa.text(
            "SELECT id, idempotency_key FROM messages WHERE conversation_id IN :cids "
            "AND role = 'assistant' AND idempotency_key IS NOT NULL").bindparams(expanding),
            bind).all()
        runs = conn.execute(sa.text(
            "SELECT idempotency_key, status, reply_message_id FROM runs "
            "WHERE conversation_id IN :cids").bindparams(expanding), bind).all()
    per_turns = Counter(sent.values())
    if len(per_conv) != len(cids):
        problems.append(f"{len(cids) - len(per_conv)} conversations missing")
    for cid, last_seq, count, lo, hi, distinct in per_conv:
        want = initial[cid] + 2 * per_turns[cid]
        if not (count == distinct == hi == last_seq == want and lo == 1):
            problems.append(f"conversation {cid}: {count} messages, seqs {lo}..{hi} "
                            f"({distinct} distinct), last_seq {last_seq}, expected {want}")
    user_keys: Counter[str] = Counter()
    for key, cid, k in users:
        user_keys[key] += k
        if sent.get(key) != cid:
            problems.append(f"user message {key} in the wrong or no expected conversation")
    if set(user_keys) != set(sent) or any(k != 1 for k in user_keys.values()):
        missing = set(sent) - set(user_keys)
        dup = [k for k, v in user_keys.items() if v != 1]
        problems.append(f"user messages: {len(missing)} missing, {len(dup)} duplicated, "
                        f"{len(set(user_keys) - set(sent))} unexpected")
    reply_of: dict[str, list[int]] = {}
    for mid, key in replies:
        base, _, rnd = key.rpartition("#r")
        if rnd != "0":
            problems.append(f"reply {key}: not round 0")
        reply_of.setdefault(base, []).append(mid)
    if set(reply_of) != set(sent) or any(len(v) != 1 for v in reply_of.values()):
        problems.append(f"replies: {len(set(sent) - set(reply_of))} missing, "
                        f"{sum(len(v) > 1 for v in reply_of.values())} duplicated")
    statuses = Counter(status for _, status, _ in runs)
    if set(statuses) != {"ok"}:
        problems.append(f"run statuses {dict(statuses)} (only 'ok' expected)")
    run_keys = Counter(key for key, _, _ in runs)
    if set(run_keys) != set(sent) or any(v != 1 for v in run_keys.values()):
        problems.append(f"runs: {len(set(sent) - set(run_keys))} missing, "
                        f"{sum(v > 1 for v in run_keys.values())} duplicated")
    wrong_reply = sum(1 for key, _, mid in runs if reply_of.get(key, [None])[0] != mid)
    if wrong_reply:
        problems.append(f"{wrong_reply} runs do not point at their turn's reply")
    if problems:
        raise AssertionError("lost or duplicated data:\n  " + "\n  ".join(problems[:20]))
    return (f"{len(sent)} turns in {len(cids)} conversation(s): seqs contiguous, "
            f"{len(sent)} user messages, {len(reply_of)} replies, {sum(run_keys.values())} ok runs")


# --- report --------------------------------------------------------------------------------


def machine() -> str:
    model = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem = int(f.readline().split()[1]) / 1024 / 1024
    return (f"{os.cpu_count()} CPUs ({model}), {mem:.0f} GiB RAM, {platform.platform()}, "
            f"Python {platform.python_version()}")


def row(r: Result, first: str, pooler: bool) -> str:
    t = max(r.turns, 1)
    cpu = r.db_cpu + r.app_cpu + r.fake_cpu + r.bouncer_cpu
    busy = cpu / (r.wall * (os.cpu_count() or 1)) if r.wall else 0.0
    conns = sum(r.connections.values())
    rate = f"{r.rate:,.0f}"
    if len(r.rounds) > 1:
        rate += " (" + ", ".join(f"{x:,.0f}" for x in r.rounds) + ")"
    cells = [first, f"{r.turns}", rate, f"{r.pct(0.5):.1f}", f"{r.pct(0.99):.1f}",
             f"{r.db_cpu / t * 1000:.2f}", f"{r.app_cpu / t * 1000:.2f}",
             f"{r.fake_cpu / t * 1000:.2f}"]
    if pooler:
        cells.append(f"{r.bouncer_cpu / t * 1000:.2f}" if r.config.via_pgbouncer else "-")
    cells += [f"{r.checkouts / t:.1f}", f"{r.wall:.1f}", f"{busy:.0%}",
              f"{conns}", r.load]
    return "| " + " | ".join(cells) + " |"


def table(results: list[Result], first: str, pooler: bool = False) -> list[str]:
    head = [first, "turns", "turns/s", "p50 ms", "p99 ms", "DB CPU ms/turn", "app CPU ms/turn",
            "fake CPU ms/turn", *(["PgBouncer CPU ms/turn"] if pooler else []),
            "pool checkouts/turn", "wall s", "CPU busy", "server conns", "load 1m"]
    line = "| " + " | ".join(head) + " |"
    text = first.count("|") + 1  # the label may be two columns ("workload | processes")
    return [line, "|" + "---|" * text + "---:|" * (line.count("|") - 1 - text),
            *(row(r, r.config.label, pooler) for r in results)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--processes", default="1,2,4,8", help="worker process counts")
    parser.add_argument("--workloads", default="separate,hot")
    parser.add_argument("--duration", type=float, default=8.0, help="timed seconds per run")
    parser.add_argument("--warmup", type=int, default=5, help="untimed turns per worker thread")
    parser.add_argument("--history", type=int, default=100, help="messages per conversation")
    parser.add_argument("--budget", type=int, default=1500, help="context budget (tokens)")
    parser.add_argument("--synchronous-commit", default="on", help="PostgreSQL setting")
    parser.add_argument("--no-pooling", dest="pooling", action="store_false",
                        help="skip the connection pooling runs")
    parser.add_argument("--pooling-duration", type=float, default=4.0,
                        help="timed seconds per pooling run")
    parser.add_argument("--pooling-rounds", type=int, default=2,
                        help="interleaved rounds of the pooling runs")
    parser.add_argument("--pgbouncer", default=shutil.which("pgbouncer") or "/usr/sbin/pgbouncer",
                        help="pgbouncer binary for the transaction-mode runs ('' skips them)")
    parser.add_argument("--output", help="also write the markdown report here")
    parser.add_argument("--json", help="also write the numbers here")
    args = parser.parse_args()
    procs = [int(p) for p in args.processes.split(",")]
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    started = time.time()
    load_before = Path("/proc/loadavg").read_text().split()[0]
    bench = Bench(args)
    out: list[str] = []
    main_results: list[Result] = []
    pool_results: list[Result] = []
    notes: list[str] = []
    audit: dict[str, Any] = {}
    try:
        bench.start(max(procs + ([4] if args.pooling else [])))
        assert bench.pg is not None
        for workload in workloads:
            for n in procs:
                r = bench.run(Config(f"{workload} | {n}", workload, n), args.duration)
                print(f"  {workload:8} {n} processes: {r.rate:7.1f} turns/s, p50 {r.pct(.5):.1f} "
                      f"ms, p99 {r.pct(.99):.1f} ms; {r.checked}", file=sys.stderr)
                main_results.append(r)
        if args.pooling:
            audit = audit_session_state(bench, min(args.pooling_duration, 2.0))
            print(f"  session audit: {audit['statements']} statements, {audit['named']} named, "
                  f"session state {audit['session_state']}, migration {audit['migration']}",
                  file=sys.stderr)
            variants = [
                Config("2 processes, defaults (pool_size=5, pre-ping off, prepare_threshold=5)",
                       "separate", 2),
                Config("2 processes, pool_size=1, max_overflow=0", "separate", 2,
                       engine_kwargs={"pool_size": 1, "max_overflow": 0}),
                Config("2 processes, pool_pre_ping=True", "separate", 2,
                       engine_kwargs={"pool_pre_ping": True}),
                Config("2 processes, prepare_threshold=None (no server-side prepares)",
                       "separate", 2,
                       engine_kwargs={"connect_args": {"prepare_threshold": None}}),
                Config("1 process x 4 threads, pool_size=5", "separate", 1, threads=4),
                Config("1 process x 4 threads, pool_size=1, max_overflow=0", "separate", 1,
                       threads=4, engine_kwargs={"pool_size": 1, "max_overflow": 0}),
            ]
            if args.pgbouncer and os.path.exists(args.pgbouncer):
                bench.bouncer = PgBouncer(args.pgbouncer, bench.pg, bench.tmp, pool_size=4)
                safe = {"connect_args": {"prepare_threshold": None}}
                variants += [
                    Config("4 processes, direct (no PgBouncer), prepare_threshold=None",
                           "separate", 4, engine_kwargs=safe),
                    Config("4 processes via PgBouncer (transaction, 4 server conns), "
                           "prepare_threshold=None", "separate", 4, engine_kwargs=safe,
                           via_pgbouncer=True),
                    Config("4 processes via PgBouncer, prepare_threshold=None, hot", "hot", 4,
                           engine_kwargs=safe, via_pgbouncer=True),
                    Config("4 processes via PgBouncer, psycopg default prepare_threshold=5",
                           "separate", 4, via_pgbouncer=True, expect_failures=True),
                ]
            else:
                notes.append(f"PgBouncer runs skipped: no binary at {args.pgbouncer!r}")
            merged: dict[str, Result] = {}
            for rnd in range(args.pooling_rounds):
                shift = rnd % len(variants)
                for config in variants[shift:] + variants[:shift]:
                    if config.expect_failures and rnd:
                        continue  # shown once
                    r = bench.run(config, args.pooling_duration)
                    status = r.checked or f"{len(r.errors)} failed turn loops: {r.errors[:1]}"
                    print(f"  {config.label}: {r.rate:7.1f} turns/s; {status}", file=sys.stderr)
                    if config.label in merged:
                        merged[config.label].merge(r)
                    else:
                        merged[config.label] = r
            pool_results = [merged[c.label] for c in variants]
    finally:
        bench.close()
    pg = bench.pg
    assert pg is not None
    now = datetime.datetime.now(datetime.UTC)
    out += [
        f"## bench_scaling ({now:%Y-%m-%d %H:%M} UTC)",
        "",
        f"Machine: {machine()}. PostgreSQL {pg.version} (pgserver, Unix socket; "
        + ", ".join(f"{k}={v}" for k, v in pg.settings.items())
        + f"). {args.duration:g} s timed per run after {args.warmup} warm-up turns per worker; "
        f"conversations start with {args.history} messages; budget {args.budget} tokens. "
        f"Load average (1 min) before/after: {load_before} / "
        f"{Path('/proc/loadavg').read_text().split()[0]}; total {time.time() - started:.0f} s.",
        "",
        "Command: `" + " ".join(["python", "bench/bench_scaling.py", *sys.argv[1:]]) + "`",
        "",
        *table(main_results, "workload | processes"),
        "",
        ("Every run checked: seqs contiguous, one user message per turn sent, one reply and one "
         "`ok` run per user message, no `pending`/`failed` run, no duplicate key."),
    ]
    cpus = os.cpu_count() or 1
    if max(procs) > cpus:
        out += ["", (f"This machine has {cpus} CPUs: rows with more than {cpus} processes (and "
                     "the threaded ones) measure contention for the CPUs, not PostgreSQL's limit; "
                     "CPU busy is this benchmark's share of all CPUs (other load on the machine "
                     "is not counted).")]
    if audit:
        kinds = ", ".join(f"{k} {v}" for k, v in audit["kinds"].most_common())
        out += ["", "### Session state (PgBouncer transaction mode)", "",
                f"Every statement the server received from one process running "
                f"{audit['turns']} turns (connect, warm-up, timed turns, close; "
                f"`log_statement=all`): {audit['statements']} statements "
                f"({audit['statements'] / max(audit['turns'], 1):.1f} per turn: {kinds}). "
                f"Statements that leave state in the session (SET, RESET, LISTEN, PREPARE, "
                f"DECLARE ... WITH HOLD, CREATE TEMP, session advisory locks, set_config(..., "
                f"false), DISCARD, LOAD): "
                + ("**none**" if not audit["session_state"] else
                   "; ".join(f"`{x}`" for x in audit["session_state"]))
                + f". Executed as named server-side prepared statements (psycopg's default "
                f"`prepare_threshold=5`): {audit['named']} of {audit['statements']}. "
                "A migration (`Store.migrate()` of an empty database) sends: "
                + ("nothing of that kind" if not audit["migration"] else
                   "; ".join(f"`{x}`" for x in sorted(set(audit["migration"]))))
                + "."]
    if pool_results:
        out += ["", "### Connection pooling", "",
                (f"Each configuration ran {args.pooling_rounds} times for {args.pooling_duration:g} s, "
                 "interleaved (the order rotating every round); turns/s is over all rounds, "
                 "each round's in parentheses."), "",
                *table(pool_results, "configuration", pooler=bench.bouncer is not None)]
        if bench.bouncer is not None:
            out += ["", (f"PgBouncer: {bench.bouncer.version}, pool_mode=transaction, "
                         "default_pool_size=4 (server conns counts the server side).")]
        for r in pool_results:
            if r.errors:
                out.append(f"\n{r.config.label}: {len(r.errors)} failures in "
                           f"{r.config.processes * r.config.threads} turn loops (warm-up and "
                           f"timed; a loop stops at its first), e.g. `{r.errors[0][:300]}`")
    out += [f"\n{n}" for n in notes]
    report = "\n".join(out)
    print(report)
    if args.output:
        with open(args.output, "w") as f:
            f.write(report + "\n")
    if args.json:
        with open(args.json, "w") as f:
            json.dump([{
                "label": r.config.label, "turns": r.turns, "wall": r.wall, "rate": r.rate,
                "p50_ms": r.pct(0.5), "p99_ms": r.pct(0.99), "db_cpu": r.db_cpu,
                "app_cpu": r.app_cpu, "fake_cpu": r.fake_cpu, "bouncer_cpu": r.bouncer_cpu,
                "connections": dict(r.connections), "load": r.load, "errors": r.errors[:5],
            } for r in main_results + pool_results], f, indent=2)


if __name__ == "__main__":
    main()
