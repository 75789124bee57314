"""Replay benchmark: stored conversations re-run against a loopback fake, at concurrency 1 and 32.

Setup: a SQLite database (WAL, synchronous=NORMAL: convo's defaults) holding
``--conversations`` conversations of ``--turns`` user turns each (a system
prompt, then user/assistant pairs of ~40 tokens each, written with
``append_many``). The model server is convo's fake backend started as a
**separate process** (``convo serve-fake``), so this process's CPU time is
convo's own work (store writes, context builds, run records, replay items,
the HTTP client), not the server's.

For each concurrency (``AsyncReplayer.replay(..., concurrency=N)``, one arm,
continue mode) it reports:

* turns/s: replayed turns / wall time;
* convo CPU ms per turn: this process's CPU time (``time.process_time``) / turns;
* server ms per turn: the median of the runs' recorded latency (client-side
  round trip to the fake, for reference);
* wall ms per turn minus the median server round trip, at concurrency 1: the
  time a turn spends in convo itself.

Run::

    .venv/bin/python bench/bench_replay.py                      # 1,000 x 10, concurrency 1 and 32
    .venv/bin/python bench/bench_replay.py --conversations 100  # quicker
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from convo import Arm, AsyncOpenAIClient, AsyncReplayer, AsyncStore, Message, Store


def start_server() -> tuple[subprocess.Popen[str], str]:
    convo = Path(sys.executable).with_name("convo")
    proc = subprocess.Popen(
        [str(convo), "serve-fake", "--port", "0"], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    url = next(word for word in line.split() if word.startswith("http"))
    return proc, url.rstrip("/")


def fill(url: str, conversations: int, turns: int) -> list[str]:
    words = "the quick brown fox jumps over the lazy dog " * 4
    ids = []
    with Store(url) as store:
        store.migrate()
        for c in range(conversations):
            conv = store.create_conversation(title=f"c{c}")
            msgs = [Message.system("You are a helpful assistant.")]
            for t in range(turns):
                msgs.append(Message.user(f"question {t}: {words}"))
                msgs.append(Message.assistant(f"answer {t}: {words}"))
            store.append_many(conv.id, msgs)
            ids.append(conv.id)
    return ids


async def replay(url: str, base_url: str, ids: list[str], concurrency: int) -> dict[str, float]:
    store = AsyncStore("sqlite+aiosqlite:///" + url.removeprefix("sqlite:///"))
    client = AsyncOpenAIClient(base_url=base_url, api_key="bench", max_retries=0)
    try:
        replayer = AsyncReplayer(store, client)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        report = await replayer.replay(ids, arms=[Arm("gpt-4o-mini", name="bench")],
                                       concurrency=concurrency)
        wall = time.perf_counter() - wall0
        cpu = time.process_time() - cpu0
        ok = [i for i in report.items if i.status == "ok"]
        assert len(ok) == len(report.items), "some replayed turns failed"
        server = statistics.median(i.latency_ms or 0.0 for i in ok)
        n = len(ok)
        return {
            "turns": n, "wall_s": wall, "turns_per_s": n / wall, "cpu_ms_per_turn": cpu / n * 1000,
            "server_ms": server, "wall_ms_per_turn": wall / n * 1000,
        }
    finally:
        await client.close()
        await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--conversations", type=int, default=1000)
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--concurrency", default="1,32")
    args = parser.parse_args()
    print(f"machine: {platform.platform()}, {os.cpu_count()} cpus, Python {platform.python_version()}")
    proc, base_url = start_server()
    try:
        for concurrency in (int(c) for c in args.concurrency.split(",")):
            with tempfile.TemporaryDirectory() as tmp:
                url = f"sqlite:///{tmp}/replay.db"
                ids = fill(url, args.conversations, args.turns)
                r = asyncio.run(replay(url, base_url, ids, concurrency))
                own = r["wall_ms_per_turn"] - r["server_ms"] if concurrency == 1 else float("nan")
                print(
                    f"concurrency {concurrency:>3}: {r['turns']:,} turns in {r['wall_s']:.1f} s = "
                    f"{r['turns_per_s']:,.0f} turns/s; convo CPU {r['cpu_ms_per_turn']:.2f} ms/turn; "
                    f"server round trip (median) {r['server_ms']:.2f} ms; "
                    f"wall - server per turn {own:.2f} ms"
                )
    finally:
        proc.terminate()
        proc.wait(timeout=10)


if __name__ == "__main__":
    main()
