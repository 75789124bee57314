"""Export / import benchmark: throughput (messages per second) and peak memory, SQLite.

For each size (default 10,000 and 1,000,000 messages) it builds a SQLite
database of conversations of ``--per`` messages (alternating user and
assistant text of 60-300 characters, filled with ``Store.append_many`` in
batches of 1,000; every 10th conversation has a fork), then measures, each
phase in a fresh spawned process so that its peak RSS is its own:

* ``export native``: :func:`convo.export_conversations` to a file;
* ``import``: :func:`convo.import_conversations` of that file into a fresh
  migrated database (ids kept);
* ``import --new-ids``: the same with ``new_ids=True``;
* ``export chat``: the chat fine-tuning format.

Reported per phase: wall time, messages per second, the file size, and the
process's peak resident set size (``ru_maxrss``) minus the RSS right after
imports and store creation (``baseline``), so the number is what the phase
itself added. Flat memory means the 1M numbers match the 10K ones.

Run::

    nice -n 5 .venv/bin/python bench/bench_export.py                 # 10K and 1M
    nice -n 5 .venv/bin/python bench/bench_export.py --sizes 10000,200000
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import random
import resource
import shutil
import sys
import tempfile
import time
from typing import Any

WORDS = ("the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "convo",
         "stores", "every", "message", "in", "sql", "and", "builds", "context", "within",
         "token", "budget", "of", "model")


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _text(rng: random.Random) -> str:
    out: list[str] = []
    size = rng.randint(60, 300)
    while sum(len(w) + 1 for w in out) < size:
        out.append(rng.choice(WORDS))
    return " ".join(out)


def build(path: str, messages: int, per: int) -> None:
    from convo import Store

    rng = random.Random(7)
    with Store(f"sqlite:///{path}") as store:
        store.migrate()
        made = 0
        n = 0
        while made < messages:
            conv = store.create_conversation(title=f"conversation {n}", owner=f"user{n % 50}",
                                             metadata={"n": n})
            count = min(per, messages - made)
            for start in range(0, count, 1000):
                batch = [
                    {"role": "user" if (start + i) % 2 == 0 else "assistant", "content": _text(rng)}
                    for i in range(min(1000, count - start))
                ]
                store.append_many(conv.id, batch)
            made += count
            if n % 10 == 0 and count >= 4 and made < messages:
                fork = store.fork(conv.id, at=count // 2)
                store.append_many(fork.id, [{"role": "user", "content": _text(rng)},
                                            {"role": "assistant", "content": _text(rng)}])
                made += 2
            n += 1


def _phase(kind: str, db: str, file: str, target: str | None, out: Any) -> None:
    from convo import Store, export_conversations, import_conversations

    with Store(f"sqlite:///{db}") as store:
        store.check_schema()
        if target is not None:
            dest = Store(f"sqlite:///{target}")
            dest.migrate()
            dest.check_schema()
        base = _rss_mb()
        start = time.perf_counter()
        if kind == "export native":
            stats = export_conversations(store, file)
            n = stats.messages
        elif kind == "export chat":
            stats = export_conversations(store, file + ".chat", format="chat")
            n = stats.messages
        else:
            result = import_conversations(dest, file, new_ids=kind == "import --new-ids")
            n = result.messages
        seconds = time.perf_counter() - start
        if target is not None:
            dest.close()
    out.put((n, seconds, _peak_mb() - base, base))


def run_phase(kind: str, db: str, file: str, target: str | None) -> tuple[int, float, float, float]:
    ctx = multiprocessing.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_phase, args=(kind, db, file, target, q))
    p.start()
    result = q.get(timeout=7200)
    p.join()
    return result  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10000,1000000")
    parser.add_argument("--per", type=int, default=100, help="messages per conversation")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"# python {platform.python_version()}, {platform.machine()}, "
          f"{os.cpu_count()} cpus, SQLite, {args.per} messages per conversation")
    print(f"{'messages':>10} {'phase':<18} {'seconds':>9} {'msg/s':>9} {'file MB':>8} "
          f"{'peak MB':>8} {'baseline MB':>11}")
    for size in sizes:
        work = tempfile.mkdtemp(prefix="convo-bench-export-")
        try:
            db = os.path.join(work, "source.db")
            start = time.perf_counter()
            build(db, size, args.per)
            print(f"# built {size:,} messages in {time.perf_counter() - start:.1f} s",
                  file=sys.stderr)
            file = os.path.join(work, "export.jsonl")
            for kind in ("export native", "import", "import --new-ids", "export chat"):
                target = os.path.join(work, f"target-{kind.replace(' ', '')}.db")
                n, seconds, peak, base = run_phase(
                    kind, db, file, target if kind.startswith("import") else None
                )
                size_mb = os.path.getsize(file if "chat" not in kind else file + ".chat") / 2**20
                print(f"{n:>10,} {kind:<18} {seconds:>9.1f} {n / seconds:>9,.0f} {size_mb:>8.1f} "
                      f"{peak:>8.1f} {base:>11.1f}", flush=True)
                if kind.startswith("import") and os.path.exists(target):
                    os.unlink(target)
        finally:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
