"""Builds "as of" a past message: the context as it was then, read-only, on every store."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from convo import (
    AsyncContextBuilder,
    ContextBuilder,
    Message,
    MessageNotFound,
    StoreInputError,
)

MODEL = "gpt-4o-mini"


class Recorder:
    """A deterministic summarizer that records what it was asked (no network)."""

    def __init__(self) -> None:
        self.calls: list[list[int]] = []

    def summarize(self, messages: Sequence[Any], *, previous: str | None, max_tokens: int) -> str:
        self.calls.append([m.seq for m in messages])
        return (previous + " | " if previous else "") + f"seq {messages[0].seq}-{messages[-1].seq}"


class AsyncRecorder(Recorder):
    async def summarize(  # type: ignore[override]
        self, messages: Sequence[Any], *, previous: str | None, max_tokens: int
    ) -> str:
        return Recorder.summarize(self, messages, previous=previous, max_tokens=max_tokens)


def _builder(handle: Any, *, summarize: bool = False, **kw: Any) -> tuple[Any, Recorder | None]:
    """The builder matching the store (sync or async), and its summarizer."""
    if handle.is_async:
        rec: Recorder | None = AsyncRecorder() if summarize else None
        return AsyncContextBuilder(handle.raw, model=MODEL, summarizer=rec, **kw), rec
    rec = Recorder() if summarize else None
    return ContextBuilder(handle.raw, model=MODEL, summarizer=rec, **kw), rec


async def _build(handle: Any, builder: Any, cid: str, **kw: Any) -> Any:
    result = builder.build(cid, **kw)
    return await result if handle.is_async else result


def _turn(k: int) -> list[Message]:
    return [Message.user(f"question {k} " + "word " * 30), Message.assistant(f"answer {k} " + "text " * 40)]


def _same(a: Any, b: Any) -> None:
    """Two builds sent the same thing and decided the same (reads and counts aside)."""
    assert (a.chat, a.prompt, a.stop) == (b.chat, b.prompt, b.stop)
    skip = {"rows_read", "counted", "as_of", "summary"}
    assert a.report.model_dump(exclude=skip) == b.report.model_dump(exclude=skip)


@pytest.mark.parametrize("mode", ["chat", "completion"])
async def test_as_of_rebuilds_what_was_built_then(store: Any, mode: str) -> None:
    builder, rec = _builder(store, summarize=True, mode=mode, budget=700, summary_max_tokens=60)
    conv = await store.create_conversation()
    await store.append(conv.id, Message.system("You are terse."))
    then: dict[int, Any] = {}
    for k in range(40):
        user, reply = _turn(k)
        seq = (await store.append(conv.id, user)).seq
        then[seq] = await _build(store, builder, conv.id)
        await store.append(conv.id, reply)
    assert rec is not None and rec.calls
    calls = len(rec.calls)
    before = store.snapshot()
    for seq in (2, 20, 42, 60, max(then)):
        past = await _build(store, builder, conv.id, as_of=seq)
        _same(past, then[seq])
        assert past.report.as_of == seq and past.report.kept_seqs[-1] == seq
        if then[seq].report.summary is not None:
            # the summary sent then, found again: only summaries ending at or before seq
            assert past.report.summary is not None and past.report.summary.reused
            assert past.report.summary.id == then[seq].report.summary.id
    after = store.snapshot()
    assert len(rec.calls) == calls  # no summarizer call
    assert before == after  # no fork, no summary, no message written (counts were cached)


async def test_as_of_makes_a_missing_summary_without_storing_it(store: Any) -> None:
    plain, _ = _builder(store, budget=100_000)
    conv = await store.create_conversation()
    await store.append(conv.id, Message.system("You are terse."))
    for k in range(30):
        await store.append_many(conv.id, _turn(k))
    # a summarizing builder that never ran on this conversation: nothing stored to reuse
    builder, rec = _builder(store, summarize=True, budget=800, summary_max_tokens=60)
    await _build(store, plain, conv.id)  # caches the token counts
    before = store.snapshot()
    past = await _build(store, builder, conv.id, as_of=41)
    assert store.snapshot() == before
    s = past.report.summary
    assert s is not None and s.created and not s.reused and s.calls == len(rec.calls) >= 1
    assert (s.id, s.stored, s.start_seq, s.end_seq) == (None, False, 1, past.report.dropped_through)
    assert past.report.kept_seqs[-1] == 41 and past.report.prompt_tokens <= 800
    assert past.messages[1].text.startswith("Summary of the earlier conversation:\nseq 2-")
    # the same build without as_of stores its summary
    now = await _build(store, builder, conv.id)
    assert now.report.summary is not None and now.report.summary.stored and now.report.summary.id


async def test_as_of_on_a_fork_reads_its_lineage_only_up_to_seq(store: Any) -> None:
    builder, _ = _builder(store, budget=100_000)
    conv = await store.create_conversation()
    for k in range(5):
        await store.append_many(conv.id, _turn(k))
    fork = await store.fork(conv.id, at=6)
    await store.append_many(fork.id, [Message.user("fork question"), Message.assistant("fork answer")])
    await store.append_many(conv.id, _turn(99))
    past = await _build(store, builder, fork.id, as_of=7)
    assert past.report.kept_seqs == list(range(1, 8))
    assert past.messages[-1].text == "fork question"
    parent = await _build(store, builder, conv.id, as_of=7)
    assert parent.messages[-1].text.startswith("question 3")


async def test_pinned_messages_after_as_of_are_not_sent(store: Any) -> None:
    builder, _ = _builder(store, budget=100_000)
    conv = await store.create_conversation()
    for k in range(4):
        await store.append_many(conv.id, _turn(k))
    await store.set_pinned(conv.id, 7, True)
    past = await _build(store, builder, conv.id, as_of=5)
    assert past.report.kept_seqs == [1, 2, 3, 4, 5] and past.report.pinned_seqs == []


@pytest.mark.parametrize(("as_of", "error"), [(9, MessageNotFound), (0, StoreInputError),
                                              (-1, StoreInputError), (True, StoreInputError),
                                              ("3", StoreInputError)])
async def test_a_bad_as_of_is_a_clear_error(store: Any, as_of: Any, error: type[Exception]) -> None:
    builder, _ = _builder(store, budget=1_000)
    conv = await store.create_conversation()
    await store.append_many(conv.id, [*_turn(0), *_turn(1)])
    with pytest.raises(error, match="as_of|as of"):
        await _build(store, builder, conv.id, as_of=as_of)
