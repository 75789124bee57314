"""A builder's memo of a conversation's last build (the floor of its next opening read)
is a hint only: whatever happened in between (appends, forks, pins, summaries, a
bigger budget, deleted counts, a memo that is plain wrong), a build gives what a
builder that never built the conversation gives. Both databases, sync and async.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import pytest

from convo import AsyncContextBuilder, ContextBuilder, Message

MODEL = "gpt-4"
#: report fields that say how the build read, not what it built
HOW_READ = {"rows_read", "counted"}


class Fixed:
    """A summarizer answering with a fixed text (sync)."""

    def summarize(self, messages: Sequence[Any], *, previous: str | None, max_tokens: int) -> str:
        return f"talk up to {messages[-1].seq}"


class AsyncFixed:
    async def summarize(
        self, messages: Sequence[Any], *, previous: str | None, max_tokens: int
    ) -> str:
        return f"talk up to {messages[-1].seq}"


def builder_for(store: Any, **options: Any) -> Any:
    raw = store.raw
    if "summarizer" in options and store.is_async:
        options["summarizer"] = AsyncFixed()
    cls = AsyncContextBuilder if store.is_async else ContextBuilder
    return cls(raw, model=MODEL, **options)


async def build(builder: Any, cid: str, **kw: Any) -> Any:
    ctx = builder.build(cid, **kw)
    return await ctx if inspect.isawaitable(ctx) else ctx


class Reads:
    """Records the builder's store reads (name, kwargs) on the raw store."""

    def __init__(self, store: Any) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        raw = store.raw
        for name in ("_context_open", "_tail_of", "tail"):
            real = getattr(raw, name)

            def spy(*args: Any, _real: Any = real, _name: str = name, **kwargs: Any) -> Any:
                self.calls.append((_name, kwargs))
                return _real(*args, **kwargs)

            setattr(raw, name, spy)

    def take(self) -> list[tuple[str, dict[str, Any]]]:
        calls, self.calls = self.calls, []
        return calls


async def same_as_fresh(store: Any, builder: Any, cid: str, **kw: Any) -> Any:
    """Build with ``builder`` (its memo) and with a new builder of the same settings;
    the two contexts must be equal but for how they read."""
    ctx = await build(builder, cid, **kw)
    options = {"budget": builder.budget}
    if builder.summarizer is not None:
        options["summarizer"] = Fixed()
    fresh = await build(builder_for(store, **options), cid, **kw)
    assert ctx.messages == fresh.messages
    assert ctx.chat == fresh.chat
    assert ctx.report.model_dump(exclude=HOW_READ) == fresh.report.model_dump(exclude=HOW_READ)
    return ctx


def chat(n: int, start: int = 0, words: int = 30) -> list[Message]:
    return [
        Message.user(f"q{k} " + "w " * words) if k % 2 == 0
        else Message.assistant(f"a{k} " + "t " * words)
        for k in range(start, start + n)
    ]


@pytest.fixture
async def thread(store: Any) -> str:
    conv = await store.create_conversation()
    await store.append(conv.id, Message.system("Be brief."))
    await store.append_many(conv.id, chat(60))
    return str(conv.id)


async def test_a_repeat_build_reads_the_rows_its_last_build_needed_in_one_statement(
    store: Any, thread: str,
) -> None:
    builder = builder_for(store, budget=600)
    reads = Reads(store)
    first = await same_as_fresh(store, builder, thread)
    assert first.report.dropped_count > 0
    # (each check builds twice: with the memo, then with a new builder)
    assert [name for name, _ in reads.take()] == ["_context_open"] * 2
    needed = first.report.rows_read
    again = await same_as_fresh(store, builder, thread)
    calls = reads.take()
    assert [name for name, _ in calls] == ["_context_open"] * 2
    # the memo builder's read (the fresh builder's comes second): seq > floor, no slack
    assert calls[0][1]["after"] == 61 - needed
    assert again.report.rows_read == needed
    # appended since: read with the rows needed, in the same statement
    await store.append_many(thread, chat(2, start=60))
    await same_as_fresh(store, builder, thread)
    calls = reads.take()
    assert [name for name, _ in calls] == ["_context_open"] * 2
    assert calls[0][1]["after"] == 61 - needed and calls[1][1]["after"] is None


async def test_a_window_that_needs_rows_below_the_floor_reads_on(store: Any, thread: str) -> None:
    builder = builder_for(store, budget=600)
    await same_as_fresh(store, builder, thread)
    reads = Reads(store)
    # a bigger budget: the window reaches below what the last build needed
    builder.budget = 1500
    ctx = await same_as_fresh(store, builder, thread)
    names = [name for name, _ in reads.take()]
    assert names[0] == "_context_open" and names[1] in ("_tail_of", "tail")
    assert ctx.report.dropped_count > 0
    # and one that reaches the start of the thread: nothing dropped
    builder.budget = 20000
    ctx = await same_as_fresh(store, builder, thread)
    assert ctx.report.dropped_count == 0 and ctx.report.kept_seqs == list(range(1, 62))
    builder.budget = 600  # and back: the memo says "everything", the read is limited
    await same_as_fresh(store, builder, thread)


async def test_changes_between_builds_give_what_a_new_builder_gives(store: Any, thread: str) -> None:
    builder = builder_for(store, budget=600)
    await same_as_fresh(store, builder, thread)
    # short messages appended: the window grows by more rows than were appended
    await store.append_many(thread, [Message.user("ok"), Message.assistant("fine")] * 3)
    await same_as_fresh(store, builder, thread)
    # a long one: the window shrinks
    await store.append(thread, Message.user("long " + "x " * 300))
    await same_as_fresh(store, builder, thread)
    await store.append(thread, Message.assistant("short"))
    await same_as_fresh(store, builder, thread)
    # the system prompt unpinned (now history, dropped), then a message in the window pinned
    await store.set_pinned(thread, 1, False)
    await same_as_fresh(store, builder, thread)
    await store.set_pinned(thread, 63, True)
    await same_as_fresh(store, builder, thread)
    await store.set_pinned(thread, 63, False)
    await same_as_fresh(store, builder, thread)
    # stored counts deleted: the build counts what it reads again
    store.sql("DELETE FROM message_tokens")
    await same_as_fresh(store, builder, thread)
    # as of a past seq: the memo is neither used nor changed by it
    await same_as_fresh(store, builder, thread, as_of=40)
    await same_as_fresh(store, builder, thread)


async def test_a_fork_built_with_the_same_builder(store: Any, thread: str) -> None:
    builder = builder_for(store, budget=600)
    await same_as_fresh(store, builder, thread)
    fork = await store.fork(thread, at=50)
    await same_as_fresh(store, builder, fork.id)
    await same_as_fresh(store, builder, fork.id)  # its own memo: a floor over the lineage
    await store.append_many(fork.id, chat(3, start=100, words=5))
    await same_as_fresh(store, builder, fork.id)
    builder.budget = 1500
    await same_as_fresh(store, builder, fork.id)
    await same_as_fresh(store, builder, thread)


async def test_summaries_between_builds(store: Any, thread: str) -> None:
    # (a build that makes a summary changes what the next build finds: each state is
    # settled by a build first, then built with the memo and by a new builder)
    builder = builder_for(store, budget=700, summarizer=Fixed())
    assert (await build(builder, thread)).report.summary is not None
    await same_as_fresh(store, builder, thread)  # the stored summary reused
    await store.append_many(thread, chat(8, start=60))
    await build(builder_for(store, budget=700, summarizer=Fixed()), thread)
    ctx = await same_as_fresh(store, builder, thread)
    assert ctx.report.summary is not None
    await same_as_fresh(store, builder, thread)


@pytest.mark.parametrize("floor", [0, 1, 30, 61, 62, 10_000])
async def test_a_wrong_memo_only_changes_how_the_build_reads(
    store: Any, thread: str, floor: int,
) -> None:
    builder = builder_for(store, budget=600)
    for rows in (1, 5, 200):
        builder._rows_needed[thread] = (rows, floor)
        await same_as_fresh(store, builder, thread)


async def test_the_opening_read_after_a_floor_returns_the_rows_above_it(
    store: Any, thread: str,
) -> None:
    """``_context_open(after=k)``: the newest page holds seqs > k only (at most
    ``limit``), the pinned messages all of them; on a fork too (its lineage read)."""
    enc = "cl100k_base"
    fork = await store.fork(thread, at=50)
    await store.append_many(fork.id, chat(4, start=100, words=3))  # seqs 51..54
    for cid, last in ((thread, 61), (fork.id, 54)):
        for after, limit in ((last - 5, 100), (last - 5, 3), (40, 100), (0, 4), (last, 10)):
            pinned, page, _lineage = await store._context_open(
                cid, encoding=enc, limit=limit, after=after
            )
            assert [m.seq for m, _ in pinned] == [1]
            assert [m.seq for m, _ in page] == list(range(last, max(after, last - limit), -1))
        # with as_of's bound too
        _, page, _ = await store._context_open(cid, encoding=enc, limit=100, after=40, before=45)
        assert [m.seq for m, _ in page] == [44, 43, 42, 41]


def test_the_first_page_after_a_floor_is_capped_at_twice_the_rows_needed() -> None:
    from convo._context.ops import BuildConfig
    from convo._context.plan import first_page_size

    def cfg(**kw: Any) -> BuildConfig:
        return BuildConfig(conversation_id="c", model="m", mode="chat", counter=None,
                           budget=4000, reply_reserve=None, render_chat=None, **kw)

    assert first_page_size(cfg(rows_hint=7, floor=30)) == 14
    assert first_page_size(cfg(rows_hint=900, floor=30)) == 1024
    assert first_page_size(cfg(rows_hint=0, floor=30)) == 1  # one row at least
    assert first_page_size(cfg(rows_hint=7, floor=30, page_size=50)) == 50
    assert first_page_size(cfg(rows_hint=7)) == 7
