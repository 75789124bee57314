"""A long-running thread that stays within its token budget through summaries.

A chatbot thread of many turns, sent with a small budget: once the history no
longer fits, the builder drops old turns and a summary (made by the model,
through the same client) stands in for them. With hysteresis (the low-water
mark, on by default) history is dropped down to half the history budget, so
one summary serves many turns; without it (``low_water=None``) the window
slides every turn and the summary is rolled forward on almost every turn.
The table shows, per turn, the prompt size against the budget and the
summarizer calls; the totals compare the two policies.

Runs offline against convo's fake OpenAI-compatible backend; point the client
at a real server (``OpenAIClient(base_url=..., api_key=...)``) to go live.

    python examples/long_thread.py [TURNS] [DATABASE_URL]   (default: 60, sqlite:///long_thread.db)
"""

from __future__ import annotations

import sys

from convo import Chat, ContextBuilder, ModelSummarizer, OpenAIClient, Store, TurnResult
from convo.testing import FakeBackend

TURNS = int(sys.argv[1]) if len(sys.argv) > 1 else 60
URL = sys.argv[2] if len(sys.argv) > 2 else "sqlite:///long_thread.db"
BUDGET = 1_200  # prompt tokens per request: small, so that summaries start early


def run(store: Store, client: OpenAIClient, fake: FakeBackend, *, low_water: float | None) -> list[int]:
    """Chat TURNS turns in a new thread; print a line per turn; the summarizer calls per turn."""
    summarizer = ModelSummarizer(client, model="gpt-4o-mini")
    builder = ContextBuilder(store, model="gpt-4o-mini", budget=BUDGET, summarizer=summarizer,
                             summary_max_tokens=200, low_water=low_water)
    chat = Chat(store, client, builder=builder)
    conv = store.create_conversation(title=f"long thread, low_water={low_water}", owner="demo")
    store.append(conv.id, {"role": "system", "content": "You are a patient cooking teacher."})
    calls_per_turn = []
    print(f"\nlow_water={low_water}: {TURNS} turns, a budget of {BUDGET} prompt tokens")
    print(" turn  prompt/budget  kept  dropped  summary     summarizer calls")
    for turn in range(1, TURNS + 1):
        before = len(fake.requests)
        result: TurnResult = chat.send(conv.id, f"Step {turn}: what do I do next with the dough? "
                                       "Please explain in detail, I am a beginner.", owner="demo")
        report = result.report
        assert report is not None and report.prompt_tokens <= BUDGET  # never over budget
        calls = len(fake.requests) - before - 1  # every request but the turn's own is a summary
        calls_per_turn.append(calls)
        summary = "-"
        if report.summary is not None:
            summary = f"1..{report.summary.end_seq}" + (" new" if report.summary.created else "")
        shown = turn <= 3 or turn == TURNS or (calls and sum(1 for c in calls_per_turn if c) <= 6)
        if not shown and calls and sum(1 for c in calls_per_turn if c) == 7:
            print("  ...   (a summarizer call on every turn from here on)")
        if shown:
            print(f" {turn:4}  {report.prompt_tokens:5} /{BUDGET:5}  {len(report.kept_seqs):4}"
                  f"  {report.dropped_count:7}  {summary:<10}  {calls}")
    return calls_per_turn


def main() -> None:
    fake = FakeBackend()  # answers "You said: ..." to every request, cut at its max tokens
    with Store(URL) as store, OpenAIClient(base_url="http://fake/v1", api_key="sk-demo",
                                           transport=fake.transport()) as client:
        store.migrate()
        with_hysteresis = run(store, client, fake, low_water=0.5)
        sliding = run(store, client, fake, low_water=None)
    print(f"\nsummarizer calls over {TURNS} turns: {sum(with_hysteresis)} with the low-water mark, "
          f"{sum(sliding)} without (turns with a call: {sum(1 for c in with_hysteresis if c)} vs "
          f"{sum(1 for c in sliding if c)})")


if __name__ == "__main__":
    main()
