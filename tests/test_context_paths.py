"""The build plan's less travelled paths: estimates of completion templates, truncation
text, summaries that do not fit, JSON instructions far back, the report's every field.

Each test pins down a behaviour that a plausible one-token slip in convo/_context/plan.py
would change (found by mutation testing, docs/testing.md). Helpers: test_context_edges.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from test_context_edges import (
    COUNTER,
    MODEL,
    PRIMING,
    EchoTemplate,
    chat_cost,
    conversation,
    overflow,
    words,
)

import convo
from convo import (
    ChatProfile,
    ContextBuilder,
    ContextError,
    ContextOverflowError,
    Message,
    TemplateError,
    count_tokens,
    get_template,
)
from convo._messages import FunctionCall, ToolCall


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, make_db: Any) -> Any:
    s = convo.Store(make_db(request.param))
    yield s
    s.close()


SUMMARY_PREFIX = "Summary of the earlier conversation:\n"


class Fixed:
    """A summarizer answering with a fixed text, recording the seqs of each call."""

    def __init__(self, text: str = "earlier talk") -> None:
        self.text = text
        self.calls: list[list[int]] = []

    def summarize(self, messages: Sequence[Any], *, previous: str | None, max_tokens: int) -> str:
        self.calls.append([m.seq for m in messages])
        return self.text


def summary_cost(text: str) -> int:
    return COUNTER.message_tokens(Message.system(SUMMARY_PREFIX + text))


# --- the report ---------------------------------------------------------------------------------


def test_the_report_describes_the_build(store: Any) -> None:
    history = [Message.system("Be terse."), Message.user("q1"), Message.assistant("a1"),
               Message.user("hi")]
    cid = conversation(store, history)
    ctx = ContextBuilder(store, model=MODEL, budget=500).build(cid)
    rep = ctx.report
    assert (rep.conversation_id, rep.model, rep.mode, rep.encoding, rep.template) == (
        cid, MODEL, "chat", "o200k_base", None)
    assert (rep.budget, rep.reply_reserve, rep.overhead_tokens, rep.summary_tokens) == (
        500, None, PRIMING, 0)
    assert (rep.pinned_seqs, rep.pinned_tokens) == ([1], COUNTER.message_tokens(history[0]))
    assert rep.history_tokens == sum(COUNTER.message_tokens(m) for m in history[1:])
    assert rep.prompt_tokens == rep.overhead_tokens + rep.pinned_tokens + rep.history_tokens
    assert (ctx.model, ctx.mode, ctx.stop) == (MODEL, "chat", [])

    comp = ContextBuilder(store, model=MODEL, mode="completion", template="chatml",
                          reserve=1000).build(cid)
    assert (comp.report.mode, comp.report.template, comp.mode, comp.model) == (
        "completion", "chatml", "completion", MODEL)
    assert comp.stop == list(get_template("chatml").stop)
    assert comp.report.reply_reserve == 1000
    assert comp.report.exact is True


@pytest.mark.parametrize("template", ["chatml", "llama3", "transcript"])
def test_template_estimates_are_close_and_never_low(store: Any, template: str) -> None:
    # These templates frame every message the same way, so the costs measured on a probe
    # add up to the exact prompt, give or take the rounding up of the per-message framing.
    history = [Message.system("Be terse."), Message.user("q1 " + words(20)),
               Message.assistant("a1 " + words(10)), Message.user("hi")]
    cid = conversation(store, history)
    rep = ContextBuilder(store, model=MODEL, mode="completion", template=template,
                         budget=1000).build(cid).report
    estimate = rep.overhead_tokens + rep.pinned_tokens + rep.history_tokens
    assert 0 <= estimate - rep.prompt_tokens <= 2


class Concat:
    """A template with no framing at all: the messages' text, one after the other."""

    name = "concat"
    stop = ("\n",)
    bos_token = ""
    eos_token = ""

    def render(self, messages: Sequence[Message], *, add_generation_prompt: bool = True,
               tools: list[dict[str, Any]] | None = None) -> str:
        return "".join(m.text for m in messages)


class NeedsSystem(Concat):
    """A template that refuses conversations without a system prompt first."""

    name = "needs-system"

    def render(self, messages: Sequence[Message], *, add_generation_prompt: bool = True,
               tools: list[dict[str, Any]] | None = None) -> str:
        if not messages or messages[0].role != "system":
            raise TemplateError("a system prompt must come first")
        return "".join(f"[{m.role}] {m.text}\n" for m in messages)


def test_a_template_without_framing_costs_its_text_and_at_least_one_token(store: Any) -> None:
    history = [Message.user("a"), Message.assistant("b"), Message.user("c")]
    cid = conversation(store, history)
    rep = ContextBuilder(store, model=MODEL, mode="completion", template=Concat(),
                         budget=100).build(cid).report
    assert (rep.overhead_tokens, rep.history_tokens, rep.prompt_tokens) == (0, 3, 1)


def test_a_template_that_refuses_the_probe_gets_default_estimates(store: Any) -> None:
    history = [Message.system("Be terse."), Message.user("q1"), Message.user("hi")]
    cid = conversation(store, history)
    rep = ContextBuilder(store, model=MODEL, mode="completion", template=NeedsSystem(),
                         budget=1000).build(cid).report
    assert rep.overhead_tokens == 8  # 8 fixed and 6 per message when the probe fails
    assert rep.history_tokens == sum(COUNTER.message_tokens(m) - 4 + 6 for m in history[1:])


def test_tools_are_rendered_into_the_completion_prompt(store: Any) -> None:
    tools = [{"type": "function", "function": {"name": "lookup_weather", "parameters": {}}}]
    cid = conversation(store, [Message.system("Be terse."), Message.user("hi")])
    ctx = ContextBuilder(store, model=MODEL, mode="completion", template="chatml",
                         budget=1000).build(cid, tools=tools)
    assert "lookup_weather" in (ctx.prompt or "") and ctx.tools == tools


def test_a_rewriting_profile_counts_the_tools_it_sends(store: Any) -> None:
    tools = [{"type": "function", "function": {"name": "lookup", "description": "Look up.",
              "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}}]
    cid = conversation(store, [Message.developer("Be terse."), Message.user("hi", name="ann")])
    ctx = ContextBuilder(store, model=MODEL, budget=1000,
                         profile=ChatProfile.compatible()).build(cid, tools=tools)
    assert ctx.report.prompt_tokens == count_tokens(ctx.chat or [], model=MODEL, tools=tools)


# --- exactness --------------------------------------------------------------------------------


def _tool_history() -> list[Message]:
    call = ToolCall(id="call_1", function=FunctionCall(name="lookup", arguments='{"q": "x"}'))
    return [Message.system("Be terse."), Message.user("q1 " + words(40)),
            Message.assistant(tool_calls=[call]), Message.tool("found", tool_call_id="call_1"),
            Message.assistant("it is x"), Message.user("q2")]


def test_tool_calls_make_chat_counts_estimates(store: Any) -> None:
    cid = conversation(store, _tool_history())
    assert ContextBuilder(store, model=MODEL, budget=2000).build(cid).report.exact is False
    comp = ContextBuilder(store, model=MODEL, mode="completion", budget=2000).build(cid)
    assert comp.report.exact is True  # counted on the prompt string itself


def test_a_summary_keeps_the_exactness_of_what_it_joins(store: Any) -> None:
    history = [Message.system("Be terse."), Message.user("q0 " + words(200)),
               Message.assistant("a0"), *_tool_history()[1:]]
    cid = conversation(store, history)
    budget = chat_cost([history[0], *history[3:]]) + 60
    estimated = ContextBuilder(store, model=MODEL, budget=budget, low_water=None, summarizer=Fixed(),
                               summary_max_tokens=40).build(cid).report
    assert estimated.summary is not None and 4 in estimated.kept_seqs and estimated.exact is False
    plain = [Message.system("Be terse."), Message.user("q0 " + words(200)), Message.assistant("a0"),
             Message.user("q1")]
    cid = conversation(store, plain)
    exact = ContextBuilder(store, model=MODEL, budget=chat_cost([plain[0], plain[3]]) + 60,
                           summarizer=Fixed(), summary_max_tokens=40).build(cid).report
    assert exact.summary is not None and exact.exact is True


def test_counts_are_computed_once_and_media_every_time(store: Any) -> None:
    audio = {"type": "input_audio", "input_audio": {"data": "AAAA" * 50, "format": "wav"}}
    history = [Message.system("Be terse."),
               Message.user([{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]),
               Message.assistant("a1"), Message.user([{"type": "text", "text": "hear"}, audio])]
    cid = conversation(store, history)
    builder = ContextBuilder(store, model="gpt-4o-audio-preview", budget=5000)
    assert builder.build(cid).report.counted == 3  # the audio message is counted, not stored
    assert builder.build(cid).report.counted == 0


@pytest.mark.parametrize("estimated", [False, True], ids=["exact", "tool-call"])
def test_a_build_with_a_summary_is_exact_only_if_every_message_sent_is(
    store: Any, estimated: bool
) -> None:
    # chat mode: the summary's count is exact (text), so the build is exact unless a
    # message sent is an estimate (a tool call's arguments are counted by a rule)
    call = ToolCall(id="call_1", function=FunctionCall(name="f", arguments="{}"))
    newest = ([Message.user("go"), Message.assistant(tool_calls=[call]),
               Message.tool("r", tool_call_id="call_1")] if estimated else [Message.user("go")])
    history = [Message.system("Be terse."), *_turns(6, 30), *newest]
    cid = conversation(store, history)
    rec = Fixed()
    report = ContextBuilder(store, model=MODEL, budget=250, low_water=None, summarizer=rec
                            ).build(cid).report
    assert report.summary is not None and rec.calls  # a summary is sent
    assert report.kept_seqs[-len(newest):] == list(range(14, 14 + len(newest)))
    assert report.exact is (not estimated)


def test_a_turns_build_leaves_its_new_counts_to_the_turn(store: Any) -> None:
    """A turn's build (``_build_for_turn``) writes no counts: it hands them over (the run
    stores them); a plain build stores its own; with every count stored, none are new."""
    history = [Message.system("Be terse."), Message.user("q1"), Message.assistant("a1"),
               Message.user("q2")]
    cid = conversation(store, history)
    ids = [m.id for m in store.messages(cid)]
    builder = ContextBuilder(store, model=MODEL, budget=2000)
    enc = COUNTER.encoding_name
    ctx, counts = builder._build_for_turn(cid, tools=None, response_format=None, owner=None)
    assert ctx.report.kept_seqs == [1, 2, 3, 4] and ctx.report.counted == 4
    assert counts == (enc, {(cid, i): COUNTER.message_tokens(m) for i, m in zip(ids, history, strict=True)})
    assert [t for _, t in store.tail(cid, encoding=enc)] == [None] * 4  # nothing written
    assert builder.build(cid).report.counted == 4  # a plain build stores its counts ...
    assert [t for _, t in store.tail(cid, encoding=enc)] == [COUNTER.message_tokens(m) for m in history[::-1]]
    _, counts = builder._build_for_turn(cid, tools=None, response_format=None, owner=None)
    assert counts is None  # ... and the next turn's build has none to hand over


def test_a_build_from_stored_counts_reports_what_the_first_build_did(store: Any) -> None:
    """The second build reads the counts the first one stored, and takes a shortcut for
    rows of plain text. A text row with tool calls, a tool result, a refusal or content
    parts is an estimate still, here the only inexact row sent: pinned (the rest of its
    turn is dropped by max_messages), or, for half a tool-call pair (which cannot be
    pinned), alone in the newest turn. In completion mode the stored chat count is converted."""
    call = ToolCall(id="call_1", function=FunctionCall(name="lookup", arguments="{}"))
    inexact = {
        "tool calls": Message.assistant("looking", tool_calls=[call]),
        "tool result": Message.tool("x", tool_call_id="call_1"),
        "refusal": Message(role="assistant", content="No.", refusal="I will not say."),
        "parts": Message.user([{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]),
    }
    for name, row in [*inexact.items(), ("text", Message.assistant("it is x"))]:
        history = [Message.system("Be terse."), Message.user("q1 " + words(5)), row,
                   Message.assistant("a1"), Message.user("q2")]
        pin, kept = [3], [1, 3, 5]
        if row.role == "tool" or row.tool_calls:
            history, pin, kept = [*history[:2], Message.assistant("a1"), Message.user("q2"), row], [], [1, 4, 5]
        for mode in ("chat", "completion"):
            cid = conversation(store, history, pin=pin)  # no counts stored yet
            first, again = (
                ContextBuilder(store, model=MODEL, mode=mode, budget=2000, max_messages=2,
                               template="chatml" if mode == "completion" else None).build(cid).report
                for _ in range(2)
            )
            assert first.kept_seqs == kept and again.counted == 0, (name, mode)
            assert again.model_dump(exclude={"counted"}) == first.model_dump(exclude={"counted"}), (name, mode)
            assert again.exact is (mode == "completion" or name == "text"), (name, mode)


# --- pages read ---------------------------------------------------------------------------------


def _alternating(n: int) -> list[Message]:
    return [Message.user(f"q{k}") if k % 2 == 0 else Message.assistant(f"a{k}") for k in range(n)]


def page_limits(store: Any, cid: str, **options: Any) -> tuple[list[int], Any]:
    """The ``limit`` of each page the builder asked the store for, in order, and the report."""
    counting = Counting(store)
    report = ContextBuilder(counting, model=MODEL, **options).build(cid).report
    limits = [kw["limit"] for name, kw in counting.calls if name in ("_context_open", "_tail_of")]
    return limits, report


def test_hysteresis_selects_from_every_page_read(store: Any) -> None:
    # read in pages of 2, 4, 8 rows, the history the low-water mark selects from is every
    # row read, as with one page: the same window, summary and report but for the reads
    history = [Message.system("Be terse."), *_turns(8, 30), Message.user("now")]
    reports = []
    for page_size in (2, 0):
        cid = conversation(store, history)
        rec = Fixed()
        reports.append(ContextBuilder(store, model=MODEL, budget=400, summarizer=rec,
                                      summary_max_tokens=20, page_size=page_size).build(cid).report)
        assert len(rec.calls) == 1
    paged, whole = reports
    assert paged.stop_reason == "low water" and len(paged.kept_seqs) > 3
    fields = {"kept_seqs", "dropped_through", "dropped_count", "history_tokens", "low_water",
              "prompt_tokens", "stop_reason"}
    assert paged.model_dump(include=fields) == whole.model_dump(include=fields)


def test_the_next_build_reads_what_the_last_one_needed_counting_every_page(store: Any) -> None:
    # the first build reads pages of 16, 32 and 64 rows and needs more than 64 of them:
    # the next one's first page (twice the rows needed, a floor bounds it) counts them all
    cid = conversation(store, _alternating(120))
    counting = Counting(store)
    builder = ContextBuilder(counting, model=MODEL, budget=400)
    first = builder.build(cid).report
    assert first.dropped_count and 64 < first.rows_read < 110
    builder.build(cid)
    opens = [kw["limit"] for name, kw in counting.calls if name == "_context_open"]
    assert opens == [16, 2 * (first.rows_read + 2)]


def test_pages_double_up_to_1024_rows_and_a_full_page_is_not_the_end(store: Any) -> None:
    # 1,701 short messages, all of which fit: pages of 300, 600, then 1024 (not 1200) rows;
    # the first two pages are full, so history goes on after each of them
    history = [Message.system("Be terse."), *_alternating(1699), Message.user("now")]
    cid = conversation(store, history)
    limits, report = page_limits(store, cid, budget=50_000, page_size=300)
    assert limits == [300, 600, 1024]
    assert report.kept_seqs == list(range(1, 1702)) and report.rows_read == 1701
    assert report.stop_reason == "history exhausted"


# --- truncating the newest message ----------------------------------------------------------------


@pytest.mark.parametrize(("mode", "left"), [("head", 1), ("tail", 1), ("middle", 0)])
def test_truncation_keeps_the_right_part_and_fills_the_room(store: Any, mode: str, left: int) -> None:
    text = "start " + " ".join(f"w{k}" for k in range(300)) + " end"
    allowed = set("startw0123456789 end…")
    cid = conversation(store, [Message.system("Be terse."), Message.user(text)])
    ctx = ContextBuilder(store, model=MODEL, budget=120, truncate=mode).build(cid)
    kept = ctx.messages[-1].text
    assert set(kept) <= allowed  # pieces of the text, and "…" in middle mode
    assert ctx.report.budget_left == left  # one token of slack; middle spends it on "…"
    assert ctx.report.truncated is not None
    assert ctx.report.truncated.kept_tokens == COUNTER.message_tokens(ctx.messages[-1])
    if mode == "head":
        assert kept.startswith("start w0 w1") and not kept.endswith("end")
    elif mode == "tail":
        assert kept.endswith("w299 end") and "start" not in kept
    else:
        head, tail = kept.split("…")
        assert head.startswith("start w0") and tail.endswith("w299 end")
        assert abs(COUNTER.count(head) - COUNTER.count(tail)) <= 2  # halves


@pytest.mark.parametrize(("extra", "ok"), [(1, False), (2, True)])
def test_truncation_down_to_a_single_token(store: Any, extra: int, ok: bool) -> None:
    history = [Message.system("Be terse."), Message.user(words(300))]
    frame = COUNTER.message_tokens(Message.user(""))
    budget = chat_cost([history[0]]) + frame + extra  # room for `extra - 1` tokens of text
    cid = conversation(store, history)
    builder = ContextBuilder(store, model=MODEL, budget=budget, truncate="head")
    if ok:
        assert builder.build(cid).messages[-1].text == "word"
    else:
        with pytest.raises(ContextOverflowError, match="cannot be truncated"):
            builder.build(cid)


class Unstable:
    """One token per character, but "#" decodes to "##": a cut text re-encodes longer."""

    def encode(self, text: str) -> list[int]:
        return [ord(c) for c in text]

    def decode(self, ids: list[int]) -> str:
        return "".join("##" if i == ord("#") else chr(i) for i in ids)


@pytest.mark.parametrize("mode", ["head", "tail", "middle"])
def test_truncation_shrinks_until_the_recounted_text_fits(store: Any, mode: str) -> None:
    convo.register_encoding("test_unstable", Unstable())
    cid = conversation(store, [Message.user("ab#" * 100)])
    ctx = ContextBuilder(store, model="unstable-model", encoding="test_unstable", budget=60,
                         truncate=mode).build(cid)
    # the first cut re-encodes a third longer; shrinking by the overshoot lands close
    assert ctx.report.truncated is not None and 0 <= ctx.report.budget_left <= 8


# --- the recount in completion mode ----------------------------------------------------------------


def test_recount_drops_a_lone_user_message_alone(store: Any) -> None:
    # estimates (each text once) keep everything; the prompt (each text twice) fits 2-4
    history = [Message.user("q0 " + words(50)), Message.user("q1 " + words(60)),
               Message.assistant("a1 " + words(60)), Message.user("q2 " + words(60))]
    cid = conversation(store, history)
    tpl = EchoTemplate()
    budget = COUNTER.count(tpl.render(history[1:]))
    ctx = ContextBuilder(store, model=MODEL, mode="completion", template=tpl, budget=budget).build(cid)
    assert ctx.report.kept_seqs == [2, 3, 4]
    assert (ctx.report.dropped_count, ctx.report.dropped_through, ctx.report.stop_reason) == (
        1, 1, "budget")


def test_recount_adds_to_what_selection_dropped(store: Any) -> None:
    call = ToolCall(id="call_1", function=FunctionCall(name="f", arguments="{}"))
    history = [
        Message.user("q0 " + words(300)), Message.assistant("a0"),                       # 1-2
        Message.user("q1 " + words(60)), Message.assistant(tool_calls=[call]),           # 3-4
        Message.tool("r", tool_call_id="call_1"),                                         # 5
        Message.user("q2 " + words(60)), Message.assistant("a2 " + words(30)),           # 6-7
        Message.user("q3"),                                                               # 8
    ]
    cid = conversation(store, history)
    tpl = EchoTemplate()
    budget = COUNTER.count(tpl.render(history[5:]))  # estimates keep 3-8, the prompt fits 6-8
    ctx = ContextBuilder(store, model=MODEL, mode="completion", template=tpl, budget=budget).build(cid)
    assert ctx.report.kept_seqs == [6, 7, 8]
    assert (ctx.report.dropped_count, ctx.report.dropped_through) == (5, 5)


def test_recount_overflow_names_the_rendered_request(store: Any) -> None:
    history = [Message.user("q1 " + words(50)), Message.assistant("a1"), Message.user(words(300))]
    tpl = EchoTemplate()
    budget = COUNTER.count(tpl.render(history[2:])) - 1
    err = overflow(store, history, budget, mode="completion", template=tpl)
    required = COUNTER.count(tpl.render(history[2:]))
    assert (err.part, err.required) == ("newest", required)
    assert (f"the rendered request needs {required} tokens but the budget is {budget}, and only "
            "the pinned messages and the newest turn are left: raise the budget") in str(err)


# --- the recount overflows with a summarizer (_fit's loop) -------------------------------------------


class Rolling(Fixed):
    """A summarizer that records each call's seqs and the summary it rolls forward from."""

    def __init__(self) -> None:
        super().__init__()
        self.previous: list[str | None] = []

    def summarize(self, messages: Sequence[Any], *, previous: str | None, max_tokens: int) -> str:
        super().summarize(messages, previous=previous, max_tokens=max_tokens)
        self.previous.append(previous)
        return f"earlier talk {messages[-1].seq}"


def _echo_build(store: Any, **kw: Any) -> tuple[str, Any, Rolling, int, Any]:
    """A thread whose every message the estimates keep but whose echoed prompt does not
    fit; returns the id, the report, the summarizer, the budget and the builder."""
    history = [Message.system("Be terse."), *_turns(6, 20), Message.user("now")]  # seqs 1-14
    cid = conversation(store, history)
    tpl = EchoTemplate()
    # the estimates count each text once: about half the prompt, which writes it twice
    budget = COUNTER.count(tpl.render(history)) * 3 // 4
    rec = Rolling()
    as_of = kw.pop("as_of", None)
    builder = ContextBuilder(store, model=MODEL, mode="completion", template=tpl, budget=budget,
                             summarizer=rec, summary_max_tokens=20, **kw)
    ctx = builder.build(cid, as_of=as_of)
    assert ctx.report.prompt_tokens == COUNTER.count(ctx.prompt or "") <= budget
    # the summary is sent, where the history it stands for was
    summary = ctx.report.summary
    assert summary is not None and ctx.messages[1] == Message.system(
        f"{SUMMARY_PREFIX}earlier talk {summary.end_seq}")
    return cid, ctx.report, rec, budget, builder


def test_an_overflow_only_the_recount_shows_drops_to_the_low_water_mark(store: Any) -> None:
    # Selection dropped nothing (no summary yet); the exact count overflows: the turn
    # dropped for it is an overflow like any other, and history goes down to the mark.
    cid, report, rec, budget, builder = _echo_build(store, low_water=0.5)
    assert rec.calls == [[2, 3, 4, 5, 6, 7]] and rec.previous == [None]
    assert report.kept_seqs == [1, 8, 9, 10, 11, 12, 13, 14]
    assert (report.stop_reason, report.dropped_through, report.dropped_count) == ("low water", 7, 6)
    room = budget - report.overhead_tokens - report.pinned_tokens - 20
    assert report.low_water == int(0.5 * room) and report.history_tokens <= report.low_water
    summary = report.summary
    assert summary is not None and (summary.start_seq, summary.end_seq) == (1, 7)
    assert summary.created and summary.stored and not summary.reused and summary.calls == 1
    stored = store.latest_summary(cid, up_to_seq=14)
    assert (stored.id, stored.content) == (summary.id, "earlier talk 7")
    # The next build overflows the same way, and the stored summary now serves it as is:
    # the window right after it fits the exact count (no summarizer call).
    again = builder.build(cid).report
    assert (again.kept_seqs, again.stop_reason, len(rec.calls)) == (report.kept_seqs, "summary", 1)
    assert again.summary is not None and again.summary.reused and again.summary.id == summary.id


@pytest.mark.parametrize("low_water", [0.9, None], ids=["hysteresis", "no-hysteresis"])
@pytest.mark.parametrize("as_of", [None, 14], ids=["now", "as-of"])
def test_a_summary_rolls_forward_from_the_one_just_made_while_the_prompt_overflows(
    store: Any, low_water: float | None, as_of: int | None
) -> None:
    # The first summary (of 2-3) leaves the prompt too long: each turn dropped after it
    # is summarized from it (previous=its text), never from scratch nor from the store,
    # which holds nothing for an as-of build.
    cid, report, rec, budget, _ = _echo_build(store, low_water=low_water, as_of=as_of)
    assert rec.calls == [[2, 3], [4, 5]] and rec.previous == [None, "earlier talk 3"]
    assert report.kept_seqs == [1, 6, 7, 8, 9, 10, 11, 12, 13, 14]
    assert (report.stop_reason, report.dropped_through, report.dropped_count) == ("budget", 5, 4)
    room = budget - report.overhead_tokens - report.pinned_tokens - 20
    assert report.low_water == (None if low_water is None else int(low_water * room))
    summary = report.summary
    assert summary is not None and (summary.start_seq, summary.end_seq) == (1, 5)
    assert summary.created and not summary.reused and summary.calls == 2
    assert summary.stored is (as_of is None)
    stored = store.latest_summary(cid, up_to_seq=14)
    if as_of is None:
        assert (stored.id, stored.content) == (summary.id, "earlier talk 5")
    else:
        assert stored is None


# --- summaries --------------------------------------------------------------------------------------


def _turns(n: int, size: int = 10) -> list[Message]:
    out = []
    for k in range(n):
        out += [Message.user(f"q{k} " + words(size)), Message.assistant(f"a{k} " + words(size))]
    return out


def test_a_summary_that_fills_the_room_exactly_is_used_as_is(store: Any) -> None:
    # The reserve is the summary's exact cost: once turns 1-2 are dropped, the summary
    # fits to the token. Then an oversized summary: the middle turn makes way for it.
    system = Message.system("Be terse.")
    small, big, last = _turns(1, 10), _turns(1, 100), _turns(1, 10)
    text = "earlier " + words(60, "talk")
    cost = summary_cost(text)
    history = [system, *big, *small, *last, Message.user("now")]
    cid = conversation(store, history)
    budget = chat_cost([system, *small, *last, history[-1]]) + cost
    rec = Fixed(text)
    ctx = ContextBuilder(store, model=MODEL, budget=budget, low_water=None, summarizer=rec,
                         summary_max_tokens=cost).build(cid)
    assert ctx.report.kept_seqs == [1, 4, 5, 6, 7, 8] and ctx.report.budget_left == 0
    assert ctx.report.summary_tokens == cost and rec.calls == [[2, 3]]


def test_an_oversized_summary_drops_turns_until_it_fits(store: Any) -> None:
    system = Message.system("Be terse.")
    text = "earlier " + words(80, "talk")
    cost = summary_cost(text)
    turns = _turns(5, 8)  # seqs 2-11
    history = [system, *turns, Message.user("now")]  # seq 12
    cid = conversation(store, history)
    # room for the newest turn, the summary, and nothing between: exactly
    budget = chat_cost([system, *turns[-2:], history[-1]]) + cost
    rec = Fixed(text)
    ctx = ContextBuilder(store, model=MODEL, budget=budget, low_water=None, summarizer=rec,
                         summary_max_tokens=5).build(cid)  # the reserve is far too small
    assert ctx.report.kept_seqs == [1, 10, 11, 12] and ctx.report.budget_left == 0
    assert ctx.report.summary is not None and ctx.report.summary.end_seq == 9
    assert len(rec.calls) == 2  # the first summary, then rolled forward over what made way
    assert rec.calls[-1][-1] == 9


class Growing(Fixed):
    """Each summary is longer than the last, so none ever fits."""

    def summarize(self, messages: Sequence[Any], *, previous: str | None, max_tokens: int) -> str:
        super().summarize(messages, previous=previous, max_tokens=max_tokens)
        return words(40 * len(self.calls), "talk")


def test_a_long_system_prompt_leaves_less_room_for_the_summary(store: Any) -> None:
    system = Message.system("Rules: " + words(150, "rule"))
    text = "earlier " + words(60, "talk")
    turns = _turns(6, 8)  # seqs 2-13
    history = [system, *turns, Message.user("now")]  # seq 14
    cid = conversation(store, history)
    budget = chat_cost([system, *turns[-2:], history[-1]]) + summary_cost(text)
    rec = Fixed(text)
    ctx = ContextBuilder(store, model=MODEL, budget=budget, low_water=None, summarizer=rec,
                         summary_max_tokens=5).build(cid)
    assert ctx.report.kept_seqs == [1, 12, 13, 14] and ctx.report.budget_left == 0
    assert len(rec.calls) == 2  # dropped what the summary needs at once, rolled forward once


def test_a_summary_that_cannot_fit_beside_the_newest_turn_names_the_numbers(store: Any) -> None:
    text = "earlier " + words(200, "talk")
    cost = summary_cost(text)
    history = [Message.system("Be terse."), *_turns(3, 8), Message.user("now " + words(20))]
    cid = conversation(store, history)
    budget = chat_cost([history[0], history[-1]]) + 20
    with pytest.raises(ContextOverflowError) as err:
        ContextBuilder(store, model=MODEL, budget=budget, low_water=None, summarizer=Fixed(text),
                       summary_max_tokens=5).build(cid)
    required = chat_cost([history[0], history[-1]]) + cost
    assert (err.value.part, err.value.required) == ("newest", required)
    assert str(err.value).startswith(f"the context with a {cost}-token summary needs {required} tokens")


def test_a_summary_that_never_fits_gives_up_after_four_tries(store: Any) -> None:
    history = [Message.system("Be terse."), *_turns(30, 10), Message.user("now")]
    cid = conversation(store, history)
    rec = Growing()
    budget = 600
    with pytest.raises(ContextError) as err:
        ContextBuilder(store, model=MODEL, budget=budget, low_water=None, summarizer=rec,
                       summary_max_tokens=5).build(cid)
    assert len(rec.calls) == 4
    assert str(err.value) == (f"the summary of conversation {cid!r} does not fit the budget of "
                              f"{budget} tokens; lower summary_max_tokens or raise the budget")


def test_a_summary_covers_the_first_message_when_it_is_not_pinned(store: Any) -> None:
    history = [*_turns(6, 30), Message.user("now")]
    cid = conversation(store, history)
    rec = Fixed()
    ctx = ContextBuilder(store, model=MODEL, budget=250, low_water=None, summarizer=rec).build(cid)
    assert ctx.report.summary is not None and rec.calls[0][0] == 1


def test_a_summary_newer_than_what_is_dropped_is_not_used(store: Any) -> None:
    history = [Message.system("Be terse."), *_turns(10, 30), Message.user("now")]
    cid = conversation(store, history)
    rec = Fixed()
    narrow = ContextBuilder(store, model=MODEL, budget=300, low_water=None, summarizer=rec).build(cid).report
    wide = ContextBuilder(store, model=MODEL, budget=700, low_water=None, summarizer=rec).build(cid).report
    assert narrow.summary is not None and wide.summary is not None
    assert wide.dropped_through is not None and narrow.dropped_through is not None
    assert wide.dropped_through < narrow.dropped_through
    assert wide.summary.end_seq == wide.dropped_through and not wide.summary.reused
    assert rec.calls[-1] == list(range(2, wide.dropped_through + 1))  # from the start again


def test_a_summary_starting_after_seq_1_is_not_reused(store: Any) -> None:
    history = [Message.system("Be terse."), *_turns(10, 30), Message.user("now")]
    cid = conversation(store, history)
    store.add_summary(cid, start_seq=2, end_seq=15, content="from seq 2")
    rec = Fixed()
    rep = ContextBuilder(store, model=MODEL, budget=400, low_water=None, summarizer=rec).build(cid).report
    assert rep.summary is not None and rep.summary.start_seq == 1 and rec.calls[0][0] == 2


def test_a_long_dropped_history_is_summarized_in_chunks_of_200(store: Any) -> None:
    history = [Message.system("Be terse."), *_alternating(260), Message.user("now")]
    cid = conversation(store, history)
    rec = Fixed()
    counting = Counting(store)
    rep = ContextBuilder(counting, model=MODEL, budget=200, low_water=None, summarizer=rec,
                         summary_max_tokens=40).build(cid).report
    assert rep.summary is not None
    reads = [kw for name, kw in counting.calls if name == "messages"]
    assert [(kw["after"], kw["limit"]) for kw in reads] == [(0, 200), (200, 200)]
    # seq 1 is the system prompt, sent anyway: 199 of the first 200 rows are summarized
    assert [len(c) for c in rec.calls] == [199, rep.summary.end_seq - 200]


def test_an_empty_summary_names_the_range_and_the_reason(store: Any) -> None:
    history = [Message.system("Be terse."), *_turns(10, 30), Message.user("now")]
    cid = conversation(store, history)
    with pytest.raises(ContextError) as err:
        ContextBuilder(store, model=MODEL, budget=300, low_water=None, summarizer=Fixed(" ")).build(cid)
    assert str(err.value).startswith("the summarizer returned no text for messages 1..")
    assert str(err.value).endswith(f"of conversation {cid!r}; nothing was stored (an empty "
                                   "summary would stand in for that history forever)")


# --- JSON mode: the instruction that mentions JSON -------------------------------------------------


class Counting:
    """A store that counts the calls the builder makes (delegates everything)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append((name, kwargs))
            return attr(*args, **kwargs)

        return call


def test_json_instruction_right_before_the_window_is_found(store: Any) -> None:
    history = [Message.system("Be terse."), *_turns(5, 30), Message.user("Answer in JSON, please."),
               Message.assistant("{} " + words(100)), Message.user("now " + words(150))]
    cid = conversation(store, history)
    budget = chat_cost([history[0], history[-3], history[-1]]) + 2
    ctx = ContextBuilder(store, model=MODEL, budget=budget).build(
        cid, response_format={"type": "json_object"})
    plain = ContextBuilder(store, model=MODEL, budget=budget).build(cid)
    assert plain.report.dropped_through == 13 and 12 not in plain.report.kept_seqs
    assert 12 in ctx.report.kept_seqs


def test_a_json_instruction_far_back_is_read_back_page_by_page(store: Any) -> None:
    # 600 rows between the instruction (seq 2) and the window: three pages of 256 back
    history = [Message.system("Be terse."), Message.user("Answer in JSON, please."),
               Message.assistant("{}"), *_turns(300, 1), Message.user("now " + words(200))]
    cid = conversation(store, history)
    budget = chat_cost([history[0], history[1], history[-1]]) + 2
    counting = Counting(store)
    builder = ContextBuilder(counting, model=MODEL, budget=budget)
    first = builder.build(cid, response_format={"type": "json_object"}).report
    assert first.kept_seqs == [1, 2, 604] and first.dropped_through == 603
    reads = [(kw["before"], kw["limit"]) for name, kw in counting.calls if name == "_tail_of"]
    assert reads == [(604, 256), (604 - 256, 256), (604 - 512, 256)]
    # the instruction's count was stored with the others: a second build counts nothing
    again = ContextBuilder(store, model=MODEL, budget=budget).build(
        cid, response_format={"type": "json_object"}).report
    assert again.kept_seqs == first.kept_seqs and again.counted == 0


def test_messages_are_sent_in_seq_order_whatever_is_pinned(store: Any) -> None:
    # a pinned message inside the window's range goes between its neighbours; a
    # conversation of pinned messages only sends them alone
    history = [Message.system("Be terse."), Message.user("q1"), Message.assistant("a1"),
               Message.user("q2"), Message.assistant("a2")]
    cid = conversation(store, history, pin=[4])
    ctx = ContextBuilder(store, model=MODEL, budget=2000).build(cid)
    assert ctx.report.kept_seqs == [1, 2, 3, 4, 5] and ctx.report.pinned_seqs == [1, 4]
    assert [m["content"] for m in ctx.chat or []] == [m.content for m in history]
    only = conversation(store, [Message.system("Be terse.")])
    ctx = ContextBuilder(store, model=MODEL, budget=2000).build(only)
    assert ctx.report.kept_seqs == [1] and [m.text for m in ctx.messages] == ["Be terse."]


def test_json_mode_skips_tool_messages_that_mention_json(store: Any) -> None:
    call = ToolCall(id="call_1", function=FunctionCall(name="f", arguments='{"json": 1}'))
    history = [Message.system("Be terse."), Message.user("Reply in JSON."), Message.assistant("{}"),
               Message.user("look up"), Message.assistant(tool_calls=[call]),
               Message.tool("the JSON result", tool_call_id="call_1"), Message.assistant("done"),
               Message.user("now " + words(200))]
    cid = conversation(store, history)
    budget = chat_cost([history[0], history[-1]]) + 30
    ctx = ContextBuilder(store, model=MODEL, budget=budget).build(
        cid, response_format={"type": "json_object"})
    assert 2 in ctx.report.kept_seqs and 6 not in ctx.report.kept_seqs


def test_json_mode_without_an_instruction_says_how_to_fix_it(store: Any) -> None:
    cid = conversation(store, [Message.system("Be terse."), Message.user("hi")])
    with pytest.raises(ContextError) as err:
        ContextBuilder(store, model=MODEL, budget=500).build(
            cid, response_format={"type": "json_object"})
    assert str(err.value) == (
        "response_format json_object requires a message that mentions JSON, and no message of "
        f"conversation {cid!r} does: add one (e.g. in the system prompt)")


def test_json_mode_fails_clearly_when_the_recount_drops_the_only_mention(store: Any) -> None:
    # The estimates keep everything, and a tool result mentions JSON; the exact count drops
    # that turn, and no message that may be pinned (not a tool call or result) mentions JSON.
    call = ToolCall(id="call_1", function=FunctionCall(name="f", arguments="{}"))
    history = [Message.user("look up " + words(40)), Message.assistant(tool_calls=[call]),
               Message.tool("the JSON result", tool_call_id="call_1"), Message.assistant("done"),
               Message.user("now " + words(40))]
    cid = conversation(store, history)
    tpl = EchoTemplate()
    budget = COUNTER.count(tpl.render(history)) * 3 // 4
    builder = ContextBuilder(store, model=MODEL, mode="completion", template=tpl, budget=budget)
    assert builder.build(cid).report.kept_seqs == [5]  # the first turn does not fit the prompt
    with pytest.raises(ContextError) as err:
        builder.build(cid, response_format={"type": "json_object"})
    assert str(err.value) == (
        "response_format json_object requires a message that mentions JSON, and no message of "
        f"conversation {cid!r} does: add one (e.g. in the system prompt)")


# --- control strings ----------------------------------------------------------------------------------


def test_whitespace_stop_sequences_leave_text_alone(store: Any) -> None:
    history = [Message.user("line one\nline two"), Message.assistant("a\n\nb"), Message.user("c")]
    cid = conversation(store, history)
    ctx = ContextBuilder(store, model=MODEL, mode="completion", template=Concat(),
                         budget=500).build(cid)
    assert ctx.prompt == "line one\nline twoa\n\nbc"


def test_the_first_page_is_sized_from_what_earlier_builds_read() -> None:
    """The opening read asks for what the last build of the conversation needed (plus
    a little slack), else for the budget over the stored tokens per message of the
    builder's last build, else a default guess; page_size overrides them all."""
    from convo._context.ops import BuildConfig
    from convo._context.plan import ROWS_SLACK, first_page_size, rows_hint

    def cfg(**kw: Any) -> BuildConfig:
        return BuildConfig(conversation_id="c", model="m", mode="chat", counter=None,
                           budget=4000, reply_reserve=None, render_chat=None, **kw)

    assert first_page_size(cfg()) == 4000 // 160 + ROWS_SLACK
    assert first_page_size(cfg(tokens_hint=400)) == 16  # 10 + slack, at least 16
    assert first_page_size(cfg(tokens_hint=40)) == 100 + ROWS_SLACK
    assert first_page_size(cfg(tokens_hint=1)) == 256
    assert first_page_size(cfg(tokens_hint=30)) == 134 + ROWS_SLACK  # 4000 / 30 rounded up
    assert first_page_size(cfg(rows_hint=7, tokens_hint=40)) == 7
    assert first_page_size(cfg(rows_hint=7, page_size=50)) == 50
    # one row at least (the last build found no rows), 1024 at most
    assert first_page_size(cfg(rows_hint=0)) == 1
    assert first_page_size(cfg(rows_hint=2000)) == 1024
    # the next build's page: what was needed plus the slack, within what was read...
    assert rows_hint(20, 21) == 21 and rows_hint(20, 30) == 20 + ROWS_SLACK
    # ... unless the whole history was read (there is nothing older)
    assert rows_hint(5, 5, read_all=True) == 5 + ROWS_SLACK


def test_a_builders_first_build_of_a_conversation_reads_a_page_sized_from_its_last_build(
    store: Any,
) -> None:
    """A builder that built one conversation sizes the first read of another from the
    stored tokens per message it saw: long messages, a short page."""
    from convo._context.plan import ROWS_SLACK

    builder = ContextBuilder(store, model="gpt-4o-mini", budget=8000)
    cids = []
    for _ in range(2):
        conv = store.create_conversation()
        store.append_many(conv.id, [
            m for k in range(30)
            for m in (Message.user(f"q{k} " + "w " * 200), Message.assistant(f"a{k} " + "t " * 200))
        ])
        cids.append(conv.id)
    first = builder.build(cids[0])
    per = builder._tokens_per_row
    assert per is not None and 150 < per < 300
    seen: list[Any] = []
    real = store._context_open

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs["limit"])
        return real(*args, **kwargs)

    store._context_open = spy
    second = builder.build(cids[1])
    # the budget over ~200 tokens a message, not over the 160 guessed without a build
    assert seen == [-(-8000 // per) + ROWS_SLACK] and seen[0] < 8000 // 160 + ROWS_SLACK
    assert len(second.report.kept_seqs) == len(first.report.kept_seqs)
