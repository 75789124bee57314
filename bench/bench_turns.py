"""Turn benchmark: what a turn costs convo itself, against a hand-written turn.

Question: how much time does ``Chat.send()`` add to a chatbot request, on top
of the model server's own time? Compared with the least a hand-written
backend does for the same turn, with the same writes, on SQLite:

* **convo**: ``Chat(store, client, model="gpt-4o-mini", budget=B).send(cid, text)``
  on an already-open ``Store`` (SQLite, WAL, ``synchronous=NORMAL``: convo's
  defaults) and ``OpenAIClient``. It stores the user message, builds the
  context (token counts read from the database; the new messages tokenized
  and their counts stored), writes a pending run, sends, and stores the reply
  with the finished run.
* **hand-written**: ``sqlite3`` on an already-open connection (WAL,
  ``synchronous=NORMAL``) to a copy of the same database (convo's tables), and
  an ``httpx.Client``: (1) in one ``BEGIN IMMEDIATE`` transaction bump the
  conversation's seq counter (``UPDATE ... RETURNING``), insert the user
  message and its token count (tiktoken); (2) read the system prompt, then the
  newest messages with their token counts, in pages of 64, until the budget
  is full, and build the chat body; (3) insert a pending run (the body, the
  kept seqs, the settings); (4) POST it with httpx and parse the JSON answer;
  (5) in one transaction bump the seq, insert the reply and its token count,
  and update the run (status, usage, reply id, latency, response).
* **bare round trip**: ``httpx.Client.post`` of the body convo just sent, and
  reading the answer: the server's (and the network stack's) share, which
  both turns pay. It is measured in the same loop and subtracted: a turn's
  *own* time is its total minus the bare round trip of the same iteration.

The server is convo's fake backend (``convo serve-fake``) in its own process
on loopback, so its CPU time does not share this process's GIL. The three
measurements are interleaved, their order rotating every iteration; both
conversations start with the same ``--history`` messages (token counts
stored) and grow by two messages per turn, the budget keeping the context at
the same size. Each measurement is also taken in CPU time of this thread
(``time.thread_time``, the server's CPU excluded as before): on a loaded
machine, wall time includes waiting for a core, which falls unevenly on the
longer turn; the CPU-time ratio stays put.

Run::

    nice -n 5 .venv/bin/python bench/bench_turns.py                  # 400 turns each
    .venv/bin/python bench/bench_turns.py --runs 5                    # 5 runs, summarized
    .venv/bin/python bench/bench_turns.py --turns 100 --profile 200   # + cProfile of convo's turn
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx

from convo import Chat, ContextBuilder, Message, OpenAIClient, Store, get_encoding

MODEL = "gpt-4o-mini"
ENCODING = "o200k_base"
GOAL = 1.5
WORDS = ["tram", "alfama", "castle", "river", "tiles", "custard", "tart", "miradouro", "fado",
         "sardines", "ferry", "belem", "sintra", "cascais", "bairro", "alto", "azulejo",
         "viewpoint", "chiado", "baixa"]


def text_of(i: int, words: int = 24) -> str:
    return " ".join(WORDS[(i * 7 + k * 3) % len(WORDS)] for k in range(words)) + f" ({i})"


# --- setup ---------------------------------------------------------------------------------


def start_fake() -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", "from convo.cli import main; main()", "serve-fake", "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    return proc, line.split(" on ")[1].split()[0]


def prepare(workdir: str, history: int, budget: int) -> tuple[str, str, str]:
    """Two identical SQLite databases, each with one conversation of ``history`` messages."""
    convo_db = os.path.join(workdir, "convo.db")
    with Store(f"sqlite:///{convo_db}") as store:
        store.migrate()
        conv = store.create_conversation(title="bench")
        store.append(conv.id, Message.system("You are a concise travel assistant for Lisbon."))
        batch = [
            Message.user(text_of(i)) if i % 2 == 0 else Message.assistant(text_of(i, 40))
            for i in range(history)
        ]
        store.append_many(conv.id, batch)
        # one build stores the counts of what a turn reads (the rest are never read)
        ContextBuilder(store, model=MODEL, budget=budget).build(conv.id)
    hand_db = os.path.join(workdir, "hand.db")
    shutil.copyfile(convo_db, hand_db)
    return convo_db, hand_db, conv.id


# --- the hand-written turn -----------------------------------------------------------------


class HandTurn:
    """The least a backend does for one stored, budgeted, recorded turn (sqlite3 + httpx)."""

    PAGE = 64

    def __init__(self, path: str, base_url: str, conversation_id: str, budget: int) -> None:
        self.db = sqlite3.connect(path, isolation_level=None)  # explicit transactions
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("PRAGMA foreign_keys=ON")
        self.db.execute("PRAGMA busy_timeout=5000")
        self.http = httpx.Client(timeout=60)
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.base_url = base_url
        self.cid = conversation_id
        self.budget = budget
        self.enc = get_encoding(ENCODING)  # tiktoken's o200k_base, from convo's offline data

    def close(self) -> None:
        self.http.close()
        self.db.close()

    def _append(self, role: str, content: str, extra: dict[str, Any], now: str) -> tuple[int, int]:
        seq = self.db.execute(
            "UPDATE conversations SET last_seq = last_seq + 1, updated_at = ? WHERE id = ? "
            "RETURNING last_seq", (now, self.cid),
        ).fetchone()[0]
        cols = ["conversation_id", "seq", "role", "content", "pinned", "created_at", *extra]
        # the key is (conversation_id, id): no rowid alias, the id is MAX(id) + 1
        mid = self.db.execute(
            f"INSERT INTO messages (id, {', '.join(cols)}) VALUES "
            f"((SELECT IFNULL(MAX(id), 0) + 1 FROM messages), {', '.join('?' * len(cols))}) "
            "RETURNING id",
            (self.cid, seq, role, content, 0, now, *extra.values()),
        ).fetchone()[0]
        self.db.execute(
            "INSERT INTO message_tokens (conversation_id, message_id, encoding, tokens)"
            " VALUES (?, ?, ?, ?)",
            (self.cid, mid, ENCODING, len(self.enc.encode(content))),
        )
        return seq, mid

    def turn(self, text: str) -> str:
        db = self.db
        now = _now()
        db.execute("BEGIN IMMEDIATE")
        user_seq, _ = self._append("user", text, {}, now)
        db.execute("COMMIT")

        # the context: system prompt + newest messages until the budget is full
        # (OpenAI's chat billing: 3 tokens per message, 3 to prime the reply)
        select = ("SELECT m.seq, m.role, m.content, t.tokens FROM messages m "
                  "LEFT JOIN message_tokens t ON t.conversation_id = m.conversation_id"
                  " AND t.message_id = m.id AND t.encoding = ? "
                  "WHERE m.conversation_id = ? ")
        system = db.execute(select + "AND m.seq = 1", (ENCODING, self.cid)).fetchone()
        used = 3 + 3 + system[3]
        kept: list[tuple[int, str, str]] = []
        before = user_seq + 1
        full = False
        while not full:
            rows = db.execute(select + "AND m.seq < ? AND m.seq > 1 ORDER BY m.seq DESC LIMIT ?",
                              (ENCODING, self.cid, before, self.PAGE)).fetchall()
            for seq, role, content, tokens in rows:
                if tokens is None:
                    tokens = len(self.enc.encode(content))
                if used + 3 + tokens > self.budget:
                    full = True
                    break
                used += 3 + tokens
                kept.append((seq, role, content))
            if len(rows) < self.PAGE:
                break
            before = rows[-1][0]
        kept.reverse()
        messages = [{"role": "system", "content": system[2]}]
        messages += [{"role": role, "content": content} for _, role, content in kept]
        body = json.dumps({"model": MODEL, "messages": messages})

        run_id = uuid.uuid4().hex
        settings = json.dumps({"model": MODEL, "encoding": ENCODING, "budget": self.budget})
        db.execute("BEGIN IMMEDIATE")
        db.execute(
            "INSERT INTO runs (id, conversation_id, endpoint, mode, model, base_url, stream, "
            "request, settings, kept_seqs, input_seq, round, estimated_prompt_tokens, status, "
            "attempts, created_at) VALUES (?, ?, 'chat.completions', 'chat', ?, ?, 0, ?, ?, ?, ?, "
            "0, ?, 'pending', 0, ?)",
            (run_id, self.cid, MODEL, self.base_url, body, settings,
             json.dumps([1, *(s for s, _, _ in kept)]), user_seq, used, now),
        )
        db.execute("COMMIT")

        start = time.perf_counter()
        response = self.http.post(self.url, content=body,
                                  headers={"content-type": "application/json"})
        response.raise_for_status()
        data = response.json()
        latency = (time.perf_counter() - start) * 1000
        choice = data["choices"][0]
        reply = choice["message"]["content"]
        usage = data.get("usage") or {}

        now = _now()
        db.execute("BEGIN IMMEDIATE")
        _, reply_id = self._append("assistant", reply, {
            "model": data["model"], "finish_reason": choice["finish_reason"],
            "usage": json.dumps(usage), "system_fingerprint": data.get("system_fingerprint"),
        }, now)
        db.execute(
            "UPDATE runs SET status = 'ok', reply_message_id = ?, reported_prompt_tokens = ?, "
            "completion_tokens = ?, usage = ?, attempts = 1, latency_ms = ?, finish_reason = ?, "
            "system_fingerprint = ?, response = ?, finished_at = ? WHERE id = ?",
            (reply_id, usage.get("prompt_tokens"), usage.get("completion_tokens"),
             json.dumps(usage), latency, choice["finish_reason"], data.get("system_fingerprint"),
             json.dumps(data), now, run_id),
        )
        db.execute("COMMIT")
        return str(reply)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).replace(tzinfo=None).isoformat(sep=" ")


# --- measuring -----------------------------------------------------------------------------


def p90(xs: list[float]) -> float:
    return statistics.quantiles(xs, n=10)[8]


def bench(args: argparse.Namespace) -> dict[str, Any]:
    workdir = tempfile.mkdtemp(prefix="convo-bench-turns-")
    proc, base_url = start_fake()
    try:
        convo_db, hand_db, cid = prepare(workdir, args.history, args.budget)
        store = Store(f"sqlite:///{convo_db}")
        client = OpenAIClient(base_url=base_url, api_key="sk-bench")
        chat = Chat(store, client, model=MODEL, budget=args.budget)
        hand = HandTurn(hand_db, base_url, cid, args.budget)
        bare_http = httpx.Client(timeout=60)
        url = base_url.rstrip("/") + "/chat/completions"
        last_body = [b"{}"]

        def convo_turn(i: int) -> None:
            result = chat.send(cid, text_of(10_000 + i))
            assert result.run is not None and result.run.status == "ok"
            last_body[0] = result.run.request.encode()

        def hand_turn(i: int) -> None:
            hand.turn(text_of(10_000 + i))

        def bare(i: int) -> None:
            r = bare_http.post(url, content=last_body[0],
                               headers={"content-type": "application/json"})
            r.raise_for_status()
            r.read()

        steps: list[tuple[str, Callable[[int], None]]] = [
            ("convo", convo_turn), ("hand", hand_turn), ("bare", bare)]
        for i in range(args.warmup):
            for _, fn in steps:
                fn(i)
        times: dict[str, list[float]] = {name: [] for name, _ in steps}
        cpu: dict[str, list[float]] = {name: [] for name, _ in steps}
        for i in range(args.turns):
            # convo first, so `bare` sends the body convo just built; then rotate the rest
            order = [steps[0], *(steps[1:] if i % 2 == 0 else steps[:0:-1])]
            for name, fn in order:
                start, start_cpu = time.perf_counter(), time.thread_time()
                fn(args.warmup + i)
                times[name].append((time.perf_counter() - start) * 1000)
                cpu[name].append((time.thread_time() - start_cpu) * 1000)
        report = stats(times)
        report["cpu"] = stats(cpu)
        report["kept"] = len(store.list_runs(cid, limit=1).items[0].kept_seqs)
        report["body_bytes"] = len(last_body[0])
        report["statements"] = statements_per_turn(chat, hand, cid)
        if args.profile:
            report["profile"] = profile(chat, cid, args.profile)
        hand.close()
        bare_http.close()
        client.close()
        store.close()
        return report
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(workdir, ignore_errors=True)


def stats(times: dict[str, list[float]]) -> dict[str, Any]:
    out: dict[str, Any] = {"n": len(times["bare"])}
    for name in ("convo", "hand", "bare"):
        out[name] = {"median": statistics.median(times[name]), "p90": p90(times[name])}
    for name in ("convo", "hand"):
        own = [t - b for t, b in zip(times[name], times["bare"], strict=True)]
        out[f"{name}_own"] = {"median": statistics.median(own), "p90": p90(own)}
    out["ratio_median"] = out["convo_own"]["median"] / out["hand_own"]["median"]
    out["ratio_p90"] = out["convo_own"]["p90"] / out["hand_own"]["p90"]
    out["ratio_total"] = out["convo"]["median"] / out["hand"]["median"]
    return out


def profile(chat: Chat, cid: str, n: int) -> str:
    """cProfile of ``n`` convo turns: own time grouped by package / convo module, top functions.

    cProfile inflates code made of many small Python calls (SQLAlchemy, the
    plan generators) more than C calls (sqlite3, sockets): read the shares,
    not the absolute numbers.
    """
    import collections
    import cProfile
    import io
    import pstats

    prof = cProfile.Profile()
    prof.enable()
    for i in range(n):
        chat.send(cid, text_of(50_000 + i))
    prof.disable()
    st = pstats.Stats(prof)
    groups: collections.Counter[str] = collections.Counter()
    raw: Any = st.stats  # type: ignore[attr-defined]
    for (path, _, name), (_, _, tottime, _, _) in raw.items():
        if "site-packages/" in path:
            key = path.split("site-packages/")[1].split("/")[0]
        elif "/convo/" in path:
            key = "convo/" + path.split("/convo/")[1]
        elif path == "~":
            key = "C: " + name.split(" of ")[0].strip("<>{}")[:50]
        else:
            key = "stdlib " + os.path.basename(path)
        groups[key] += tottime
    total = sum(groups.values())
    lines = [f"cProfile, {n} convo turns: {total / n * 1000:.2f} ms per turn under the profiler",
             "", "| own time per turn (ms, profiled) | share | where |", "|---:|---:|---|"]
    for key, value in groups.most_common(18):
        lines.append(f"| {value / n * 1000:.3f} | {value / total:.0%} | {key} |")
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(25)
    return "\n".join(lines) + "\n\n" + buf.getvalue()


def statements_per_turn(chat: Chat, hand: HandTurn, cid: str) -> tuple[int, int]:
    """SQL statements one turn runs: convo (through its engine) and hand-written (sqlite3)."""
    import sqlalchemy as sa

    seen: list[str] = []

    def record(*args: Any) -> None:
        seen.append(str(args[2]))

    sa.event.listen(chat.store.engine, "before_cursor_execute", record)
    chat.send(cid, "count the statements")
    sa.event.remove(chat.store.engine, "before_cursor_execute", record)
    convo = len(seen) + sum(1 for s in seen if s.startswith("BEGIN"))  # + their COMMITs
    hand_seen: list[str] = []
    hand.db.set_trace_callback(hand_seen.append)
    hand.turn("count the statements")
    hand.db.set_trace_callback(None)
    return convo, len(hand_seen)


def render(r: dict[str, Any], args: argparse.Namespace) -> str:
    def row(label: str, key: str) -> str:
        return f"| {label} | {r[key]['median']:.2f} | {r[key]['p90']:.2f} |"

    verdict = "met" if r["ratio_median"] <= GOAL else "NOT met"
    setup = (f"turns per implementation: {r['n']} (after {args.warmup} warm-up turns each); "
             f"history {args.history} messages + the turns; budget {args.budget} tokens; "
             f"{r['kept']} messages sent per request, body {r['body_bytes']:,} bytes; SQL "
             f"statements per turn (COMMIT included): convo {r['statements'][0]}, hand-written "
             f"{r['statements'][1]}")
    ratio = (f"ratio convo own / hand-written own: **{r['ratio_median']:.2f}x** median, "
             f"{r['ratio_p90']:.2f}x p90 (goal <= {GOAL}x: {verdict}); totals: "
             f"{r['ratio_total']:.2f}x")
    c = r["cpu"]
    cpu = (f"CPU time of this process (thread_time; the server's is not in it, so a busy "
           f"machine's waits are not either): convo own {c['convo_own']['median']:.2f} ms, "
           f"hand-written own {c['hand_own']['median']:.2f} ms, ratio "
           f"**{c['ratio_median']:.2f}x** median ({c['ratio_p90']:.2f}x p90)")
    return "\n".join([
        setup,
        "",
        "| per turn | median ms | p90 ms |",
        "|---|---:|---:|",
        row("convo `Chat.send` (total)", "convo"),
        row("hand-written sqlite3 + httpx (total)", "hand"),
        row("bare httpx round trip to the fake (server + loopback)", "bare"),
        row("**convo own** (total - bare, same iteration)", "convo_own"),
        row("**hand-written own** (total - bare, same iteration)", "hand_own"),
        "",
        ratio,
        "",
        cpu,
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--turns", type=int, default=400)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--history", type=int, default=200)
    parser.add_argument("--budget", type=int, default=1500)
    parser.add_argument("--profile", type=int, default=0, help="then profile N convo turns")
    parser.add_argument("--json", help="also write the numbers here")
    parser.add_argument("--runs", type=int, default=1,
                        help="repeat the whole measurement (a new server and databases each "
                             "time) and summarize the runs' ratios: one run's median moves "
                             "by a few hundredths from run to run on a shared machine")
    args = parser.parse_args()
    env = (f"python {platform.python_version()}, SQLite {sqlite3.sqlite_version}, "
           f"{platform.platform()}, nproc={os.cpu_count()}")
    results = []
    for n in range(args.runs):
        stamp = f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC"
        load = os.getloadavg()[0]
        run = f"run {n + 1} of {args.runs}, " if args.runs > 1 else ""
        print(f"# bench_turns ({run}{stamp}, load {load:.2f}; {env})")
        result = bench(args)
        result["load"] = load
        results.append(result)
        print(render(result, args))
        if result.get("profile"):
            print("\n" + result["profile"])
        print()
    if args.runs > 1:
        print(summarize(results))
    if args.json:
        with open(args.json, "w") as f:
            kept = [{k: v for k, v in r.items() if k != "profile"} for r in results]
            json.dump(kept[0] if args.runs == 1 else kept, f, indent=2)


def summarize(results: list[dict[str, Any]]) -> str:
    """The runs side by side, and the median of their median ratios (the verdict)."""
    lines = ["| run | load | convo own ms | hand-written own ms | ratio (median) | CPU ratio |",
             "|---:|---:|---:|---:|---:|---:|"]
    for n, r in enumerate(results, 1):
        lines.append(f"| {n} | {r['load']:.2f} | {r['convo_own']['median']:.2f} | "
                     f"{r['hand_own']['median']:.2f} | {r['ratio_median']:.2f}x | "
                     f"{r['cpu']['ratio_median']:.2f}x |")
    ratios = [r["ratio_median"] for r in results]
    middle = statistics.median(ratios)
    verdict = "met" if middle <= GOAL else "NOT met"
    lines += ["", (f"median of the {len(results)} runs' median ratios: **{middle:.2f}x** "
                   f"(runs {min(ratios):.2f}x to {max(ratios):.2f}x; goal <= {GOAL}x: {verdict})")]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
