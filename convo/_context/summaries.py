"""Summaries in a context build: made, rolled forward, reused, and kept with
hysteresis (a low-water mark), so that one summary serves many turns.

Generators of the same I/O operations as the plan (:mod:`convo._context.ops`);
the plan (:mod:`convo._context.plan`) drives them.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from .._exceptions import ContextError
from .._messages import Message
from .._records import StoredMessage, Summary
from .ops import (
    AddSummary,
    BuildConfig,
    LatestSummary,
    Op,
    Range,
    Summarize,
    Tail,
    drop_oldest_turn,
    make_selector,
    message_cost,
)
from .report import SummaryUse
from .selection import Item, Selection

__all__ = [
    "LOOKUP",
    "History",
    "Lookup",
    "Made",
    "Sent",
    "Tally",
    "hysteresis",
    "low_water_tokens",
    "summarize",
    "summary_parts",
]


class _Counted(Protocol):
    prompt_tokens: int


RenderedT = TypeVar("RenderedT", bound=_Counted)
Render = Callable[[BuildConfig, Selection, Message | None, SummaryUse | None], RenderedT]
"""How the plan renders a selection (exactly counted), for the hysteresis' fit check."""


@dataclass(frozen=True, slots=True)
class Made:
    """A summary of messages ``start_seq..end_seq``: stored (``id``), or made for
    an as-of build and kept in memory only (``id`` None)."""

    id: int | None
    start_seq: int
    end_seq: int
    content: str


@dataclass(frozen=True, slots=True)
class Sent:
    """The summary a build sends: what it summarizes, as a message, at what cost."""

    summary: Made
    message: Message
    tokens: int
    reused: bool


@dataclass(slots=True)
class Tally:
    calls: int = 0  # summarizer calls made by this build


class Lookup:
    """Sentinel: the base summary is not known yet, ask the store."""


LOOKUP = Lookup()


def _made(found: Summary | None) -> Made | None:
    if found is None:
        return None
    return Made(found.id, found.start_seq, found.end_seq, found.content)


def summary_parts(sent: Sent | None, calls: int = 0) -> tuple[Message | None, SummaryUse | None]:
    """(summary message, its report entry) of ``sent``; ``calls``: summarizer calls made."""
    if sent is None:
        return None, None
    made = sent.summary
    use = SummaryUse.model_construct(
        id=made.id,
        start_seq=made.start_seq,
        end_seq=made.end_seq,
        tokens=sent.tokens,
        reused=sent.reused,
        created=calls > 0,
        calls=calls,
        stored=made.id is not None,
    )
    return sent.message, use


def _summary_message(cfg: BuildConfig, made: Made) -> tuple[Message, int]:
    msg = Message(role=cfg.summary_role, content=cfg.summary_prefix + made.content)
    return msg, message_cost(cfg, cfg.counter.message_tokens(msg))


def summarize(
    cfg: BuildConfig, sel: Selection, tally: Tally, base: Made | None | Lookup
) -> Generator[Op, Any, tuple[Selection, Sent]]:
    """Reuse or roll forward the summary of everything up to ``sel.dropped_through``.

    ``base`` is the newest summary ending at or before it (``LOOKUP``: ask the
    store). An as-of build keeps what it makes in memory: it writes no summary.
    """
    pinned_seqs = {i.seq for i in sel.pinned}
    if isinstance(base, Lookup):
        base = _made((yield LatestSummary(sel.dropped_through or 0)))
    if base is not None and base.start_seq > 1:
        # it would leave the messages before its start uncovered: start afresh
        base = None
    for _ in range(4):
        end = sel.dropped_through
        assert end is not None
        reused = base is not None and base.end_seq == end
        if not reused:
            text = base.content if base else None
            cursor = base.end_seq if base else 0
            while cursor < end:
                rows: list[StoredMessage] = yield Range(cursor, end + 1, cfg.summary_chunk)
                if not rows:
                    break
                fresh = [r for r in rows if r.seq not in pinned_seqs]  # pinned ones are sent anyway
                if fresh:
                    text = yield Summarize(fresh, text, cfg.summary_max_tokens)
                    tally.calls += 1
                cursor = rows[-1].seq
            if not text or not text.strip():
                raise ContextError(
                    f"the summarizer returned no text for messages 1..{end} of "
                    f"conversation {cfg.conversation_id!r}; nothing was stored (an empty "
                    "summary would stand in for that history forever)"
                )
            if cfg.as_of is None:
                base = _made((yield AddSummary(1, end, text)))
            else:
                base = Made(None, 1, end, text)
        assert base is not None
        msg, cost = _summary_message(cfg, base)
        free = cfg.budget - sel.overhead - sel.pinned_tokens - sel.history_tokens
        if cost <= free:
            return sel, Sent(base, msg, cost, reused)
        while (need := sel.overhead + sel.pinned_tokens + sel.history_tokens + cost) > cfg.budget:
            sel = drop_oldest_turn(sel, need, f"the context with a {cost}-token summary")
    raise ContextError(
        f"the summary of conversation {cfg.conversation_id!r} does not fit the budget of "
        f"{cfg.budget} tokens; lower summary_max_tokens or raise the budget"
    )


# ---- summaries that last (hysteresis) ---------------------------------------------


@dataclass(slots=True)
class History:
    """The history rows a build has read (newest first) and how to read older ones."""

    seen: list[Item]
    exhausted: bool
    item: Any  # Callable[[StoredMessage, int | None], Item]


def low_water_tokens(cfg: BuildConfig, sel: Selection) -> int:
    """The low-water mark in history tokens: a fraction of the history budget (the
    room left for history next to the pinned messages and a full-size summary),
    or a token count capped by it."""
    room = cfg.budget - sel.overhead - sel.pinned_tokens - cfg.summary_max_tokens
    if cfg.max_history_tokens is not None:
        room = min(room, cfg.max_history_tokens)
    room = max(0, room)
    if isinstance(cfg.low_water, float):
        return int(cfg.low_water * room)
    assert cfg.low_water is not None
    return min(int(cfg.low_water), room)


def hysteresis(
    cfg: BuildConfig,
    sel: Selection,
    history: History,
    low_water: int,
    tally: Tally,
    render: Render[RenderedT],
) -> Generator[Op, Any, tuple[Selection, Sent, RenderedT | None]]:
    """Summaries that last, once history has to be dropped.

    While the history after the newest stored summary still fits next to it,
    the window starts right after it and the summary is sent as is: the prompt
    keeps a stable prefix and the summarizer is not called. Otherwise (an
    overflow) history is dropped down to the low-water mark and the summary
    rolled forward to there, so that the next turns fit again without a call.
    ``sel`` is the greedy selection (as much history as the estimates let fit);
    ``render`` renders and counts a candidate exactly.
    """
    users = [i.seq for i in sel.window if i.message.role == "user"]
    found = _made((yield LatestSummary(users[-1] - 1))) if users else None
    if found is not None and found.start_seq == 1:
        kept = yield from _sticky(cfg, sel, found, history, render)
        while kept is not None and cfg.as_of is not None:
            # Later builds may have stored summaries that end before as_of. The one a
            # build back then used is the oldest whose window still fits: prefer it
            # (it also keeps the most history verbatim).
            older = _made((yield LatestSummary(kept[1].summary.end_seq - 1)))
            if older is None or older.start_seq != 1:
                break
            earlier = yield from _sticky(cfg, sel, older, history, render)
            if earlier is None:
                break
            kept = earlier
        if kept is not None:
            return kept
    greedy = sel
    selector = make_selector(cfg, sel.overhead, sel.pinned, low_water)
    # the low-water window is a part of the greedy one: the rows read are enough
    selector.feed(history.seen, exhausted=history.exhausted)
    if selector.done:
        lower = selector.result()
        # never more than ``sel`` (smaller than the greedy one after an exact recount)
        if lower.dropped_through is not None and len(lower.window) <= len(sel.window):
            sel = lower
            sel.rows_read = greedy.rows_read
    dropped = sel.dropped_through
    assert dropped is not None
    # the newest summary ending at or before the new window start is found, or
    # has to be looked up (when the one found ends after it, or starts late)
    base: Made | None | Lookup = LOOKUP
    if found is None:
        base = None
    elif found.start_seq == 1 and found.end_seq <= dropped:
        base = found
    sel, sent = yield from summarize(cfg, sel, tally, base)
    return sel, sent, None


def _sticky(
    cfg: BuildConfig, sel: Selection, found: Made, history: History, render: Render[RenderedT]
) -> Generator[Op, Any, tuple[Selection, Sent, RenderedT] | None]:
    """The window that starts right after ``found`` and the summary as is, if it all fits.

    Reads back to ``found`` when the greedy selection stopped short of it; the
    read stops as soon as the history outgrows what could fit, so it stays
    bounded by the budget. Whether it fits is decided on the rendered request,
    counted exactly: estimates (completion mode, rewriting profiles) only bound
    the read.
    """
    if sel.truncation is not None:
        return None  # the newest turn alone did not fit
    end = found.end_seq
    pinned_seqs = {i.seq for i in sel.pinned}
    msg, cost = _summary_message(cfg, found)
    room = cfg.budget - sel.overhead - sel.pinned_tokens - cost
    # estimated costs can be a little high or low; exact ones (chat) bound the read exactly
    limit = 2 * cfg.budget if cfg.recount else room
    window = [i for i in history.seen if i.seq > end and i.seq not in pinned_seqs]
    total = sum(i.cost for i in window)
    extra_rows = 0
    while not history.exhausted and history.seen[-1].seq > end + 1 and total <= limit:
        rows = yield Tail(history.seen[-1].seq, 256)
        history.exhausted = len(rows) < 256
        fed = [history.item(r, c) for r, c in rows]
        history.seen += fed
        extra_rows += len(fed)
        more = [i for i in fed if i.seq > end and i.seq not in pinned_seqs]
        window += more
        total += sum(i.cost for i in more)
    window.reverse()  # oldest first
    if total > limit or not window:
        return None
    if window[0].message.role != "user":
        return None  # the summary ends inside a turn: the window would start on an orphan
    current = max(k for k, i in enumerate(window) if i.message.role == "user")
    older = window[:current]
    if older and (
        (cfg.max_messages is not None and len(window) > cfg.max_messages)
        or (cfg.max_history_tokens is not None and total > cfg.max_history_tokens)
    ):
        return None
    dropped_count = end - sum(1 for s in pinned_seqs if s <= end)
    if dropped_count <= 0:
        return None
    kept = Selection(
        pinned=sel.pinned,
        window=window,
        budget=sel.budget,
        overhead=sel.overhead,
        dropped_through=end,
        dropped_count=dropped_count,
        stop_reason="summary",
        rows_read=sel.rows_read + extra_rows,
    )
    sent = Sent(found, msg, cost, reused=True)
    rendered = render(cfg, kept, *summary_parts(sent))
    if rendered.prompt_tokens > cfg.budget:
        return None  # the exact count of the rendered request says no
    return kept, sent, rendered
