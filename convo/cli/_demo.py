"""``convo demo``: the whole flow on one screen, offline by default.

Starts convo's fake OpenAI-compatible server on loopback (unless a real server
is given), stores a conversation long enough that history is dropped and
summarized, with a tool round; sends the same stored conversation once as a
chat message list and once as a flattened completion prompt, side by side;
then replays the thread against a second arm and compares.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.columns import Columns
from rich.panel import Panel
from rich.rule import Rule
from rich.table import Table

from ._common import console, fail
from ._replay import _visible

if TYPE_CHECKING:
    from .._turns.plan import TurnResult

QUESTIONS = [
    "I have three days in Lisbon in May. Where should I start?",
    "What is the weather like there right now?",
    "Which neighbourhood is best for food, and what should I order?",
    "How do I get from the airport to Alfama without a car?",
    "Is a day trip to Sintra worth it, and how long does it take?",
    "Give me a one-line plan for each of the three days.",
]


def _weather(city: str) -> dict[str, Any]:
    """The current weather in a city."""
    return {"city": city, "temp_c": 22, "sky": "sunny"}


@contextlib.contextmanager
def _server(base_url: str | None) -> Iterator[tuple[str, Any]]:
    """A real server (given, or from the environment), else the fake on loopback."""
    if base_url or os.environ.get("OPENAI_BASE_URL") or os.environ.get("OPENAI_API_KEY"):
        yield base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1", None
        return
    from ..testing import FakeBackend

    fake = FakeBackend()
    with fake.serve() as server:
        yield server.base_url, fake


def register(app: typer.Typer) -> None:
    @app.command()
    def demo(
        ctx: typer.Context,
        model: Annotated[str, typer.Option("--model", help="The chat model.")] = "gpt-4o-mini",
        completion_model: Annotated[
            str, typer.Option("--completion-model", help="The model behind /v1/completions.")
        ] = "gpt-3.5-turbo-instruct",
        arm: Annotated[
            str, typer.Option("--arm", help="The second arm the thread is replayed against.")
        ] = "gpt-4.1-mini",
        base_url: Annotated[
            str | None,
            typer.Option("--base-url", help="A real server (default: $OPENAI_BASE_URL, "
                         "else convo's fake server on loopback)."),
        ] = None,
        budget: Annotated[
            int, typer.Option("--budget", help="Prompt token budget (small, to show dropping).")
        ] = 700,
    ) -> None:
        """Run the whole flow against a fake server (offline) or a real one, and show it."""
        root = ctx.find_root()
        url = (root.obj or {}).get("db") or "sqlite:///convo-demo.db"
        try:
            _run(url, model, completion_model, arm, base_url, budget)
        except KeyboardInterrupt:
            raise fail("interrupted", 130) from None


def _run(url: str, model: str, completion_model: str, arm_text: str, base_url: str | None,
         budget: int) -> None:
    from .. import (
        Arm,
        Chat,
        ContextBuilder,
        Message,
        ModelSummarizer,
        OpenAIClient,
        Replayer,
        Store,
        Tool,
    )

    with _server(base_url) as (server_url, fake), Store(url) as store, OpenAIClient(
        base_url=server_url, api_key=None if fake is None else "sk-demo"
    ) as client:
        store.migrate()
        where = "convo's fake server on loopback (offline)" if fake else server_url
        console.print(Rule("convo demo"))
        console.print(f"database: {url}\nserver:   {where}\n", highlight=False)

        summarizer = ModelSummarizer(client, model=model)
        weather = Tool.from_function(_weather, name="get_weather")
        chat = Chat(store, client, model=model, budget=budget, summarizer=summarizer,
                    tools=[weather])
        conv = store.create_conversation(title="Lisbon trip (demo)", owner="demo-user")
        store.append(conv.id, Message.system("You are a concise travel assistant."))

        console.print(Rule("1. a conversation that outgrows its budget"))
        table = Table("turn", "user", "reply", "kept", "dropped", "summary", "run")
        last: TurnResult | None = None
        for n, question in enumerate(QUESTIONS):
            if fake is not None and n == 1:
                # The fake answers "You said: ..." unless scripted: here it asks
                # for the weather tool, which the turn runs, then answers.
                fake.reply_tool_calls([("get_weather", {"city": "Lisbon"})])
                fake.reply("It is sunny and 22°C in Lisbon right now.")
            last = chat.send(conv.id, question, idempotency_key=f"demo-{n}",
                             owner="demo-user", max_tokens=200)
            report = last.report
            summary = "-"
            if report is not None and report.summary is not None:
                summary = "made" if report.summary.created else "reused"
            table.add_row(
                str(n + 1), _visible(question, 34), _visible(last.reply.text, 40),
                str(len(report.kept_seqs)) if report else "-",
                str(report.dropped_count) if report else "-", summary,
                f"{last.run.status} {last.run.latency_ms or 0:.0f} ms" if last.run else "-",
            )
        console.print(table)
        tool_rounds = [m for m in store.messages(conv.id) if m.role == "tool"]
        console.print(f"tool results stored: {len(tool_rounds)}; "
                      f"runs recorded: {len(store.list_runs(conv.id, limit=100).items)}\n",
                      highlight=False)

        console.print(Rule("2. the same stored conversation, two dispatch shapes"))
        as_chat = ContextBuilder(store, model=model, budget=budget,
                                 summarizer=summarizer).build(conv.id)
        as_prompt = ContextBuilder(store, model=completion_model, mode="completion",
                                   template="chatml", budget=budget,
                                   summarizer=summarizer).build(conv.id)
        chat_body = json.dumps(as_chat.request(), ensure_ascii=False, indent=1)
        console.print(Columns([
            Panel(_visible(chat_body, 1400).replace("\\n", "\n"),
                  title=f"chat: POST /v1/chat/completions ({as_chat.report.prompt_tokens} tokens)",
                  width=60),
            Panel(_visible(as_prompt.prompt or "", 1400).replace("\\n", "\n"),
                  title=f"completion: POST /v1/completions ({as_prompt.report.prompt_tokens} "
                        f"tokens, stop={as_prompt.stop})", width=60),
        ]))
        for label, built in (("chat", as_chat), ("completion", as_prompt)):
            r = built.report
            console.print(
                f"{label:>10}: kept seqs {r.kept_seqs}, dropped {r.dropped_count}, summary "
                f"{'1..' + str(r.summary.end_seq) if r.summary else 'none'}, "
                f"budget left {r.budget_left}", highlight=False,
            )
        flat = Chat(store, client, model=completion_model, mode="completion", template="chatml",
                    budget=budget, summarizer=summarizer)
        sent = flat.send(conv.id, "Summarize the plan in one sentence.", owner="demo-user",
                         max_tokens=120)
        console.print(f"completion turn stored reply {sent.reply.seq}: "
                      f"{_visible(sent.reply.text, 70)}  (run {sent.run.id if sent.run else '-'}, "
                      f"endpoint {sent.run.endpoint if sent.run else '-'})\n", highlight=False)

        console.print(Rule("3. run records: what was sent, and why"))
        runs = Table("run", "endpoint", "round", "status", "kept", "est. tokens",
                     "reported", "ms")
        for run in reversed(store.list_runs(conv.id, limit=6).items):
            runs.add_row(run.id[-8:], run.endpoint, str(run.round), run.status,
                         str(len(run.kept_seqs)), str(run.estimated_prompt_tokens),
                         str(run.reported_prompt_tokens), f"{run.latency_ms or 0:.0f}")
        console.print(runs)

        console.print(Rule("4. replay the thread against a second arm"))
        replayed = Replayer(store, client).replay(
            conv.id, arms=[Arm.parse(arm_text, budget=budget)], owner="demo-user"
        )
        compare = Table("turn", "original", arm_text, "similarity", "kept/dropped")
        for item in replayed.items:
            compare.add_row(str(item.turn + 1), _visible(item.original_text, 40),
                            _visible(item.text, 40) if item.status == "ok" else item.status,
                            f"{item.similarity:.2f}" if item.similarity is not None else "-",
                            f"{item.kept}/{item.dropped}")
        console.print(compare)
        console.print(f"\nreplay {replayed.replay.id}: `convo replay show {replayed.replay.id}`; "
                      f"the conversation: `convo show {conv.id}`; its runs: "
                      f"`convo runs {conv.id}` (add --db {url} when it is not the default).",
                      highlight=False)

