"""Summaries that last (hysteresis): one summary serves many turns, every invariant still holds."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from test_context import _check  # the single-build invariants

from convo import (
    AsyncContextBuilder,
    AsyncStore,
    ConfigurationError,
    ContextBuilder,
    ContextOverflowError,
    Message,
    ModelSummarizer,
    OpenAIClient,
    Store,
    count_tokens,
    get_template,
)
from convo._messages import FunctionCall, ToolCall
from convo._tokens.counter import TokenCounter
from convo.testing import FakeBackend

MODEL = "gpt-4o-mini"
PREFIX = "Summary of the earlier conversation:\n"
EXAMPLES = int(os.environ.get("CONVO_PROP_EXAMPLES", "80"))


def _bench_data() -> Any:
    """bench/_chat_data.py: the synthetic chat bench_summaries.py measures (one definition)."""
    path = Path(__file__).resolve().parents[1] / "bench" / "_chat_data.py"
    spec = importlib.util.spec_from_file_location("_chat_data", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


chat_data = _bench_data()


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, make_db: Any) -> Any:
    s = Store(make_db(request.param))
    yield s
    s.close()


@pytest.fixture
def sqlite_store(make_db: Any) -> Any:
    s = Store(make_db("sqlite"))
    yield s
    s.close()


class Recorder:
    """A deterministic summarizer that records what it was asked (no network)."""

    def __init__(self, words: int = 3) -> None:
        self.calls: list[tuple[list[int], str | None]] = []
        self.words = words

    def summarize(self, messages: Sequence[Any], *, previous: str | None, max_tokens: int) -> str:
        self.calls.append(([m.seq for m in messages], previous))
        return f"seq {messages[0].seq}-{messages[-1].seq} " + "fact " * self.words


class AsyncRecorder(Recorder):
    async def summarize(  # type: ignore[override]
        self, messages: Sequence[Any], *, previous: str | None, max_tokens: int
    ) -> str:
        return Recorder.summarize(self, messages, previous=previous, max_tokens=max_tokens)


def _turn(k: int) -> tuple[Message, Message]:
    user, reply = chat_data.turn(3, k)
    return Message.user(user), Message.assistant(reply)


def _chat(store: Any, builder: Any, turns: int) -> tuple[str, list[Any]]:
    """A thread built turn by turn, as a chatbot does: append the user message, build, reply."""
    conv = store.create_conversation()
    store.append(conv.id, Message.system(chat_data.SYSTEM))
    reports = []
    for k in range(turns):
        user, reply = _turn(k)
        store.append(conv.id, user)
        reports.append(builder.build(conv.id).report)
        store.append(conv.id, reply)
    return conv.id, reports


# --- the measured scenario ---------------------------------------------------------------


def _model_summarizer_calls(store: Any, low_water: Any, turns: int = 300) -> tuple[int, list[Any]]:
    fake = FakeBackend()
    for k in range(turns):  # realistic summaries (~140 tokens), more than can be used
        fake.reply(chat_data.summary_text(3, k))
    with OpenAIClient(base_url="http://fake/v1", api_key="sk-test", transport=fake.transport()) as client:
        summarizer = ModelSummarizer(client, model=MODEL)
        kw = {} if low_water == "default" else {"low_water": low_water}
        builder = ContextBuilder(store, model=MODEL, budget=1_500, summarizer=summarizer, **kw)
        _, reports = _chat(store, builder, turns)
    return len(fake.requests), reports


def test_300_turns_under_1500_tokens_make_at_most_one_summary_per_10_turns(store: Any) -> None:
    calls, reports = _model_summarizer_calls(store, "default")
    assert 0 < calls <= 30
    assert sum(r.summary.calls for r in reports if r.summary) == calls
    made = [r for r in reports if r.summary and r.summary.created]
    assert len(made) == calls  # one call per overflow (fewer than 200 new messages each time)
    assert all(r.stop_reason == "low water" for r in made)
    assert all(r.prompt_tokens <= 1_500 for r in reports)
    reused = [r for r in reports if r.summary and r.summary.reused]
    assert len(reused) == len([r for r in reports if r.summary]) - calls
    assert all(r.stop_reason == "summary" and r.summary.calls == 0 for r in reused)


def test_a_model_summary_with_nul_characters_is_stored_without_them(store: Any) -> None:
    """A model's stray NUL would make the summary unstorable and fail every build that
    needs it (StoreInputError from the build); the summary is convo's own text: the
    NULs are taken out, the rest kept."""
    fake = FakeBackend()
    fake.reply("\x00Earlier: the user asked\x00 about trams.\x00")
    with OpenAIClient(base_url="http://fake/v1", api_key="sk-test",
                      transport=fake.transport()) as client:
        builder = ContextBuilder(store, model=MODEL, budget=1_500,
                                 summarizer=ModelSummarizer(client, model=MODEL))
        conv = store.create_conversation()
        store.append(conv.id, Message.system(chat_data.SYSTEM))
        for k in range(60):
            user, reply = _turn(k)
            store.append(conv.id, user)
            report = builder.build(conv.id).report
            if report.summary is not None and report.summary.created:
                break
            store.append(conv.id, reply)
        else:
            pytest.fail("no summary was made")
    assert len(fake.requests) == 1
    stored = store.latest_summary(conv.id)
    assert stored is not None and stored.content == "Earlier: the user asked about trams."


def test_without_hysteresis_the_same_thread_summarizes_nearly_every_turn(sqlite_store: Any) -> None:
    # the behaviour the low-water mark fixes (and the proof that the test above can fail)
    calls, _ = _model_summarizer_calls(sqlite_store, None)
    assert calls > 200


# --- the policy, step by step -------------------------------------------------------------


def test_one_summary_serves_the_turns_until_the_next_overflow(store: Any) -> None:
    rec = Recorder()
    builder = ContextBuilder(store, model=MODEL, budget=1_000, summarizer=rec, summary_max_tokens=100)
    _, reports = _chat(store, builder, 60)
    made = [k for k, r in enumerate(reports) if r.summary and r.summary.created]
    assert made and len(rec.calls) == len(made)
    for first, nxt in zip(made, [*made[1:], len(reports)], strict=True):
        summary = reports[first].summary
        # the overflow build dropped down to the low-water mark ...
        assert reports[first].stop_reason == "low water"
        assert reports[first].history_tokens <= reports[first].low_water
        assert reports[first].low_water == int(0.5 * (1_000 - 3 - reports[first].pinned_tokens - 100))
        # ... and the following builds reuse its summary unchanged, with the window starting
        # right after it (a stable prefix: system prompt + summary + the same first messages)
        for r in reports[first + 1 : nxt]:
            assert r.summary is not None and r.summary.reused and not r.summary.created
            assert (r.summary.id, r.dropped_through, r.stop_reason) == (summary.id, summary.end_seq, "summary")
            assert r.kept_seqs[1] == summary.end_seq + 1
        if nxt < len(reports):
            # the next summary rolls forward from this one: only the newly dropped messages
            seqs, previous = rec.calls[made.index(nxt)]
            assert previous is not None and previous.startswith(f"seq {rec.calls[made.index(first)][0][0]}")
            assert seqs[0] == summary.end_seq + 1 and seqs[-1] == reports[nxt].dropped_through


def test_the_low_water_mark_can_be_a_token_count_or_turned_off(sqlite_store: Any) -> None:
    rec = Recorder()
    builder = ContextBuilder(sqlite_store, model=MODEL, budget=1_000, summarizer=rec,
                             summary_max_tokens=100, low_water=200)
    _, reports = _chat(sqlite_store, builder, 40)
    made = [r for r in reports if r.summary and r.summary.created]
    assert made and all(r.low_water == 200 and r.history_tokens <= 200 for r in made)
    off = ContextBuilder(sqlite_store, model=MODEL, budget=1_000, summarizer=Recorder(), low_water=None)
    _, plain = _chat(sqlite_store, off, 40)
    assert all(r.low_water is None for r in plain)
    assert not any(r.stop_reason in ("low water", "summary") for r in plain)
    # without a summarizer there is no hysteresis: as much history as fits, as before
    bare = ContextBuilder(sqlite_store, model=MODEL, budget=1_000)
    _, greedy = _chat(sqlite_store, bare, 40)
    assert all(r.low_water is None and r.summary is None for r in greedy)
    assert greedy[-1].stop_reason == "budget" and greedy[-1].budget_left < 150


@pytest.mark.parametrize("value", [1.5, -0.1, -3, True, "half"])
def test_a_bad_low_water_is_a_configuration_error(sqlite_store: Any, value: Any) -> None:
    with pytest.raises(ConfigurationError, match="low_water"):
        ContextBuilder(sqlite_store, model=MODEL, low_water=value)


@pytest.mark.parametrize("template", ["chatml", "transcript"])
def test_completion_mode_keeps_the_window_start_on_the_exact_prompt(sqlite_store: Any, template: str) -> None:
    rec = Recorder(words=20)
    builder = ContextBuilder(sqlite_store, model=MODEL, mode="completion", template=template,
                             budget=900, summarizer=rec, summary_max_tokens=100)
    _, reports = _chat(sqlite_store, builder, 60)
    assert 0 < len(rec.calls) <= 12  # one per 5 turns at most (turns are ~70 tokens, the budget 900)
    assert all(r.prompt_tokens <= 900 and r.exact for r in reports)
    reused = [r for r in reports if r.summary and r.summary.reused]
    assert len(reused) > 40 and all(r.stop_reason == "summary" for r in reused)


async def test_async_builder_makes_the_same_decisions(store: Any) -> None:
    rec = Recorder()
    sync_builder = ContextBuilder(store, model=MODEL, budget=1_000, summarizer=rec, summary_max_tokens=100)
    _chat(store, sync_builder, 30)
    # a second conversation, same turns, built by the async builder
    arec = AsyncRecorder()
    astore = AsyncStore(store.engine.url)
    try:
        abuilder = AsyncContextBuilder(astore, model=MODEL, budget=1_000, summarizer=arec,
                                       summary_max_tokens=100)
        conv = await astore.create_conversation()
        await astore.append(conv.id, Message.system(chat_data.SYSTEM))
        areports = []
        for k in range(30):
            user, reply = _turn(k)
            await astore.append(conv.id, user)
            areports.append((await abuilder.build(conv.id)).report)
            await astore.append(conv.id, reply)
    finally:
        await astore.close()
    _, sreports = _chat(store, ContextBuilder(store, model=MODEL, budget=1_000, summarizer=Recorder(),
                                              summary_max_tokens=100), 30)
    assert [r.kept_seqs for r in areports] == [r.kept_seqs for r in sreports]
    assert [(r.summary.created, r.summary.reused) if r.summary else None for r in areports] == [
        (r.summary.created, r.summary.reused) if r.summary else None for r in sreports
    ]
    assert rec.calls and len(arec.calls) == len(rec.calls)


# --- property: invariants across a sequence of appends and builds -------------------------

_words = st.text(alphabet="abcdefghij klmnopqrstuvwxyz.,!?", min_size=1, max_size=200)


@st.composite
def _turns(draw: st.DrawFn, first: int) -> list[list[Message]]:
    """Turns to append, each a user message then what answers it (tool groups, a reply)."""
    out = []
    for t in range(first, first + draw(st.integers(1, 14))):
        turn = [Message.user(draw(_words))]
        for g in range(draw(st.integers(0, 1))):
            calls = [ToolCall(id=f"call_{t}_{g}_{k}", function=FunctionCall(name="lookup", arguments="{}"))
                     for k in range(draw(st.integers(1, 2)))]
            turn.append(Message.assistant(tool_calls=calls))
            turn += [Message.tool(draw(_words), tool_call_id=c.id) for c in calls]
        turn.append(Message.assistant(draw(_words)))
        out.append(turn)
    return out


def _sticky_fits(store: Any, cid: str, prev: Any, budget: int, mode: str, template: str) -> bool:
    """Would the window right after ``prev`` (a stored summary), sent with it, fit? (oracle)"""
    every = store.messages(cid)
    must = {m.seq for m in every if m.role in ("system", "developer") or m.pinned}
    window = [m for m in every if m.seq > prev.end_seq and m.seq not in must]
    if not window or window[0].role != "user" or not any(s not in must for s in range(1, prev.end_seq + 1)):
        return False
    sent = sorted([*(m for m in every if m.seq in must), *window], key=lambda m: m.seq)
    at = next(k for k, m in enumerate(sent) if m.seq > prev.end_seq)
    msgs = [*sent[:at], Message.system(PREFIX + prev.content), *sent[at:]]
    if mode == "chat":
        return count_tokens(msgs, model=MODEL) <= budget
    # generated text holds no template control strings, so the prompt renders as is
    prompt = get_template(template).render(msgs, add_generation_prompt=True)
    return TokenCounter.for_model(MODEL).count(prompt) <= budget


@settings(max_examples=max(10, EXAMPLES // 2), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(
    system=st.booleans(),
    turns=_turns(0),
    budget=st.integers(120, 1_200),
    mode=st.sampled_from(["chat", "completion"]),
    template=st.sampled_from(["transcript", "chatml", "llama3", "mistral"]),
    low_water=st.sampled_from([0.5, 0.5, 0.0, 1.0, 0.3, 60, 400]),
    summary_max=st.integers(20, 120),
    pin=st.integers(0, 6),
)
def test_invariants_hold_across_appends_and_builds(
    sqlite_store: Any, system: bool, turns: list[list[Message]], budget: int, mode: str,
    template: str, low_water: float, summary_max: int, pin: int,
) -> None:
    store = sqlite_store
    conv = store.create_conversation()
    if system:
        store.append(conv.id, Message.system("You are terse and precise."))
    kw: dict[str, Any] = {"template": template} if mode == "completion" else {}
    rec = Recorder()
    builder = ContextBuilder(store, model=MODEL, mode=mode, budget=budget, summarizer=rec,
                             summary_max_tokens=summary_max, low_water=low_water, **kw)
    calls_before = 0
    for k, turn in enumerate(turns):
        user = store.append(conv.id, turn[0])
        if k == pin:  # a caller-pinned user message somewhere in the thread
            store.set_pinned(conv.id, user.seq, True)
        prev = store.latest_summary(conv.id, up_to_seq=user.seq - 1)
        try:
            ctx = builder.build(conv.id)
        except ContextOverflowError as exc:
            event("overflow")
            assert exc.budget == budget and exc.required > budget
            calls_before = len(rec.calls)  # a summary made before the overflow showed is kept
            store.append_many(conv.id, turn[1:])
            continue
        rep = ctx.report
        _check(ctx, store, conv.id, budget)
        calls = len(rec.calls) - calls_before
        calls_before = len(rec.calls)
        if rep.summary is None:
            assert rep.dropped_count == 0 and calls == 0
        else:
            s = rep.summary
            # the summary covers exactly 1..dropped_through, and is the stored one
            assert (s.start_seq, s.end_seq) == (1, rep.dropped_through) and s.stored
            assert store.latest_summary(conv.id, up_to_seq=s.end_seq).id == s.id
            assert s.calls == calls and s.created == (calls > 0) and s.reused == (calls == 0)
            usable = prev is not None and prev.start_seq == 1
            if usable and _sticky_fits(store, conv.id, prev, budget, mode, template):
                # the summarizer is called only at an overflow
                event("reused")
                assert s.reused and s.id == prev.id and rep.stop_reason == "summary"
            elif calls:
                event("summarized at an overflow")
                # dropped down to the low-water mark (the newest turn is kept whatever its size)
                users = [q for q in rep.kept_seqs if q not in rep.pinned_seqs
                         and store.get_message(conv.id, q).role == "user"]
                if len(users) > 1:
                    assert rep.history_tokens <= rep.low_water
        store.append_many(conv.id, turn[1:])


def test_json_mode_keeps_its_instruction_when_dropping_to_the_low_water_mark(store: Any) -> None:
    conv = store.create_conversation()
    store.append(conv.id, Message.system(chat_data.SYSTEM))
    for k in range(20):
        user, reply = _turn(k)
        if k == 11:  # inside the window that fits, outside the low-water one
            user = Message.user("From now on answer in JSON, please.")
        store.append_many(conv.id, [user, reply])
    store.append(conv.id, Message.user("Where should we go tomorrow?"))
    fmt = {"type": "json_object"}
    plain = ContextBuilder(store, model=MODEL, budget=1_000, summary_max_tokens=100).build(conv.id, response_format=fmt)
    instruction = 2 + 2 * 11
    assert instruction in plain.report.kept_seqs and instruction not in plain.report.pinned_seqs
    ctx = ContextBuilder(store, model=MODEL, budget=1_000, summarizer=Recorder(), summary_max_tokens=100).build(
        conv.id, response_format=fmt
    )
    assert ctx.report.summary is not None and ctx.report.dropped_through > instruction  # dropped to the mark ...
    assert instruction in ctx.report.pinned_seqs  # ... but the JSON instruction is kept, pinned
    assert ctx.report.prompt_tokens <= 1_000
    assert ctx.report.summary.end_seq == ctx.report.dropped_through
