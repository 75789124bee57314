"""How much of a measured build is the measurement's memory settle (diagnostic).

bench_context.py times every call the way bench_peers.py does: ``gc.collect()``
and ``malloc_trim(0)`` just before the call (so its RSS growth is its own).
This times the same call three ways in one process, 200 calls each, on the
databases bench_context.py / bench_peers.py left in their data dirs:
back to back (as a server would run builds), after ``gc.collect()``, and with
the peers' full settle (``bench_peers.timed_call``).

Run (after bench_context.py has filled its data)::

    /work/venv/bin/python bench/_context_settle.py 1000 convo    # or: 100000 C
"""

from __future__ import annotations

import gc
import glob
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _context_data as data

CALLS = 200


def main() -> None:
    n, which = int(sys.argv[1]), sys.argv[2]
    convo_dir = os.environ.get("CONVO_BENCH_DATA", "/tmp/convo-bench-data")
    peers_dir = os.environ.get("PEERS_DATA_DIR", "/tmp/peers-bench-data")
    bp = data.import_peers(data.DEFAULT_PEERS_DIR)
    if which == "convo":
        from convo import ContextBuilder, Store

        [man_path] = glob.glob(os.path.join(convo_dir, f"sqlite_convo_{n}_*.json"))
        with open(man_path) as fh:
            cid = json.load(fh)["conversation_id"]
        store = Store("sqlite:///" + man_path[: -len(".json")] + ".db")
        builder = ContextBuilder(store, model=data.MODEL, budget=4000)

        def call() -> object:
            return builder.build(cid)
    else:
        call = bp.make_builder(
            "C", os.path.join(peers_dir, f"gen{bp.GEN_VERSION}-seed{bp.SEED}", f"base_{n}.sqlite"))
    for _ in range(5):
        call()
    plain, after_gc = [], []
    for _ in range(CALLS):
        t0 = time.perf_counter()
        call()
        plain.append(time.perf_counter() - t0)
    settled = [bp.timed_call(call)[1] for _ in range(CALLS)]
    for _ in range(CALLS):
        gc.collect()
        t0 = time.perf_counter()
        call()
        after_gc.append(time.perf_counter() - t0)
    med = lambda xs: statistics.median(xs) * 1000
    print(f"{which} N={n:,}: back to back {med(plain):.3f} ms, after gc.collect() "
          f"{med(after_gc):.3f} ms, peers' settle (gc + malloc_trim + clear_refs) "
          f"{med(settled):.3f} ms")


if __name__ == "__main__":
    main()
