"""Summaries with hysteresis: summarizer calls per turn on a long, tight thread.

The scenario of issue 7: a 300-turn chat under a 1,500-token prompt budget,
built turn by turn the way a chatbot backend does it (append the user
message, build the context, append the reply), with ``ModelSummarizer``
calling ``convo.testing.FakeBackend`` through ``OpenAIClient`` (in process).
It counts requests, not time: the numbers are exact and repeatable.

* Messages: ``bench/_chat_data.py`` (seeded): user messages of 1-3 sentences,
  replies of 1-4 sentences, about 26 + 42 = 68 tokens a turn (o200k_base,
  OpenAI's per-message framing included); summaries of 100-160 words (about
  140 tokens), scripted on the fake.
* For each ``low_water`` setting: summarizer calls, turns per call, builds
  that reused a stored summary, how often the window start moved (a moved
  start changes the prompt prefix, which also defeats providers' prompt
  caching), and the history tokens kept on average.

Run::

    .venv/bin/python bench/bench_summaries.py
    .venv/bin/python bench/bench_summaries.py --turns 1000 --budget 3000 --mode completion
    .venv/bin/python bench/bench_summaries.py --scale 1.6    # longer messages
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import tempfile
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _chat_data as data

from convo import ContextBuilder, Message, ModelSummarizer, OpenAIClient, Store
from convo._tokens.counter import TokenCounter
from convo.testing import FakeBackend

MODEL = "gpt-4o-mini"
SETTINGS: list[tuple[str, Any]] = [
    ("off (low_water=None)", None),
    ("1.0", 1.0),
    ("0.75", 0.75),
    ("0.5 (default)", "default"),
    ("0.25", 0.25),
    ("300 tokens", 300),
]


def run(low_water: Any, args: argparse.Namespace, workdir: str) -> dict[str, Any]:
    store = Store(f"sqlite:///{workdir}/bench-{abs(hash(str(low_water)))}.db")
    store.migrate()
    conv = store.create_conversation()
    store.append(conv.id, Message.system(data.SYSTEM))
    fake = FakeBackend()
    for k in range(args.turns):
        fake.reply(data.summary_text(args.seed, k))
    kw: dict[str, Any] = {} if low_water == "default" else {"low_water": low_water}
    if args.mode == "completion":
        kw["template"] = "chatml"
    reports = []
    with OpenAIClient(base_url="http://fake/v1", api_key="sk-bench", transport=fake.transport()) as client:
        builder = ContextBuilder(store, model=MODEL, mode=args.mode, budget=args.budget,
                                 summarizer=ModelSummarizer(client, model=MODEL), **kw)
        for k in range(args.turns):
            user, reply = data.turn(args.seed, k, args.scale)
            store.append(conv.id, Message.user(user))
            reports.append(builder.build(conv.id).report)
            store.append(conv.id, Message.assistant(reply))
    store.close()
    starts = [r.dropped_through for r in reports]
    return {
        "calls": len(fake.requests),
        "reused": sum(1 for r in reports if r.summary is not None and r.summary.reused),
        "moves": sum(1 for a, b in itertools.pairwise(starts) if a != b),
        "history": sum(r.history_tokens for r in reports) / len(reports),
        "over": sum(1 for r in reports if r.prompt_tokens > args.budget),
        "low_water": next((r.low_water for r in reports if r.low_water is not None), None),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--turns", type=int, default=300)
    parser.add_argument("--budget", type=int, default=1_500)
    parser.add_argument("--mode", choices=["chat", "completion"], default="chat")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--scale", type=float, default=1.0,
                        help="words per sentence x this (1.3: ~84 tokens a turn, 1.6: ~99)")
    args = parser.parse_args()
    counter = TokenCounter.for_model(MODEL)
    per_turn = sum(
        counter.message_tokens(Message.user(u)) + counter.message_tokens(Message.assistant(a))
        for u, a in (data.turn(args.seed, k, args.scale) for k in range(args.turns))
    ) / args.turns
    print(f"{args.turns} turns of {per_turn:.0f} tokens on average, budget {args.budget}, "
          f"{args.mode} mode, {MODEL}, summary_max_tokens 512, seed {args.seed}")
    print(f"{'low_water':<22}{'mark':>6}{'calls':>7}{'turns/call':>12}{'reused':>8}"
          f"{'start moved':>13}{'avg history':>13}")
    with tempfile.TemporaryDirectory() as workdir:
        for label, value in SETTINGS:
            r = run(value, args, workdir)
            assert r["over"] == 0, "a build went over the budget"
            per = f"{args.turns / r['calls']:.1f}" if r["calls"] else "-"
            mark = "-" if r["low_water"] is None else str(r["low_water"])
            print(f"{label:<22}{mark:>6}{r['calls']:>7}{per:>12}{r['reused']:>8}"
                  f"{r['moves']:>13}{r['history']:>13.0f}")


if __name__ == "__main__":
    main()
