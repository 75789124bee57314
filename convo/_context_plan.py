"""The pure core of a context build, shared by the sync and async builders.

A build is written once, as a generator that *yields* the I/O it needs
(``Tail``, ``Pinned``, ``Summarize`` ...) and receives the results. The sync
builder answers with :class:`~convo.Store` calls, the async builder awaits
:class:`~convo.AsyncStore` calls: one algorithm, two thin shells, no drift
(the "sans-I/O" style of h11 and httpx's core).
"""

from __future__ import annotations

import math
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ._context_report import Context, ContextReport, SummaryUse, TruncationReport
from ._exceptions import ContextError, ContextOverflowError, MessageNotFound, TemplateError
from ._messages import Message, TextPart
from ._records import StoredMessage, Summary
from ._selection import Item, Selection, Selector, TruncateMode

__all__ = ["BuildConfig", "Plan", "plan_build"]

# ---- the I/O a build asks for -------------------------------------------------


@dataclass(frozen=True, slots=True)
class Start:
    """-> (pinned, newest page): lists of (StoredMessage, cached tokens | None); the
    pinned messages of the whole lineage oldest first, then the newest ``limit``
    messages newest first, all with ``seq < before`` when it is set (as-of builds).
    Raises ConversationNotFound for a missing / foreign one."""

    limit: int
    before: int | None = None


@dataclass(frozen=True, slots=True)
class Tail:
    """-> list[(StoredMessage, cached tokens | None)], newest first, seq < before."""

    before: int | None
    limit: int


@dataclass(frozen=True, slots=True)
class Range:
    """-> list[StoredMessage], oldest first, after < seq < before."""

    after: int
    before: int
    limit: int


@dataclass(frozen=True, slots=True)
class LatestSummary:
    """-> Summary | None: the newest summary of the lineage ending at or before ``up_to_seq``."""

    up_to_seq: int


@dataclass(frozen=True, slots=True)
class Summarize:
    """-> str: the summarizer's text."""

    messages: Sequence[Message]
    previous: str | None
    max_tokens: int


@dataclass(frozen=True, slots=True)
class AddSummary:
    """-> Summary (stored)."""

    start_seq: int
    end_seq: int
    content: str


@dataclass(frozen=True, slots=True)
class SaveCounts:
    """-> None: store token counts computed during this build."""

    encoding: str
    counts: dict[int, int]


Op = Start | Tail | Range | LatestSummary | Summarize | AddSummary | SaveCounts
Plan = Generator[Op, Any, Context]


# ---- configuration ------------------------------------------------------------


@dataclass(slots=True)
class BuildConfig:
    """Everything a build needs that is not in the database (resolved by the builder)."""

    conversation_id: str
    model: str
    mode: Literal["chat", "completion"]
    counter: Any  # TokenCounter
    budget: int
    reply_reserve: int | None
    render_chat: Any  # Callable[[Sequence[Message]], list[dict]]
    template: Any = None  # PromptTemplate in completion mode
    tools: list[dict[str, Any]] | None = None
    json_mode: bool = False
    max_messages: int | None = None
    max_history_tokens: int | None = None
    truncate: TruncateMode | None = None
    summarizing: bool = False
    summary_max_tokens: int = 512
    summary_role: Literal["system", "developer", "user"] = "system"
    summary_prefix: str = "Summary of the earlier conversation:\n"
    summary_chunk: int = 200
    page_size: int = 0  # 0: derived from the budget
    recount: bool = False  # count the rendered request itself (completion mode, rewriting profiles)
    decode: Any = None  # Callable[[list[int]], str], for truncation
    #: summaries with hysteresis: history kept after an overflow, a fraction of the
    #: history budget (float) or tokens (int); None: roll the summary forward on
    #: every build that drops more history
    low_water: float | None = None
    as_of: int | None = None  # build from messages 1..as_of only, writing no summary
    _template_costs: tuple[int, int] | None = field(default=None, repr=False)


# ---- cost models ----------------------------------------------------------------


def _template_costs(cfg: BuildConfig) -> tuple[int, int]:
    """(fixed overhead, per-message framing) of the completion template, measured once.

    Estimates only: selection uses them, then the exact flattened prompt is
    counted and adjusted.
    """
    if cfg._template_costs is None:
        count = cfg.counter.count
        tpl = cfg.template
        try:
            u, a = Message(role="user", content="x"), Message(role="assistant", content="y")
            one = count(tpl.render([u], add_generation_prompt=True))
            three = count(tpl.render([u, a, u], add_generation_prompt=True))
            per = max(0, math.ceil((three - one - count("y") - count("x")) / 2))
            fixed = max(0, one - per - count("x"))
        except TemplateError:
            per, fixed = 6, 8
        cfg._template_costs = (fixed, per)
    return cfg._template_costs


def _overhead(cfg: BuildConfig) -> int:
    if cfg.mode == "chat":
        return 3 + (cfg.counter.tools_tokens(cfg.tools) if cfg.tools else 0)
    return _template_costs(cfg)[0]


def _cost(cfg: BuildConfig, chat_cost: int) -> int:
    """Cost of a message in the target format, from its (cached) chat cost."""
    if cfg.mode == "chat":
        return chat_cost
    # chat cost = 3 per message + role + content; the template's framing replaces the 4
    return max(1, chat_cost - 4 + _template_costs(cfg)[1])


def _truncator(cfg: BuildConfig) -> Any:
    def truncate(msg: Message, max_cost: int, mode: TruncateMode) -> tuple[Message, int] | None:
        if not isinstance(msg.content, str) or cfg.decode is None:
            return None
        counter = cfg.counter
        empty = msg.model_copy(update={"content": ""})
        frame = _cost(cfg, counter.message_tokens(empty))
        room = max_cost - frame - 1  # 1 token for the ellipsis of middle mode / slack
        ids = counter.encode(msg.content)
        while room > 0:
            if mode == "head":
                text = cfg.decode(ids[:room])
            elif mode == "tail":
                text = cfg.decode(ids[-room:])
            else:
                half = room // 2
                text = cfg.decode(ids[:half]) + "…" + cfg.decode(ids[len(ids) - (room - half) :])
            short = msg.model_copy(update={"content": text})
            cost = _cost(cfg, counter.message_tokens(short))
            if cost <= max_cost:
                return short, cost
            room -= cost - max_cost
        return None

    return truncate


def _selector(
    cfg: BuildConfig, overhead: int, pinned: list[Item], low_water: int | None = None
) -> Selector:
    return Selector(
        budget=cfg.budget,
        overhead=overhead,
        pinned=pinned,
        max_messages=cfg.max_messages,
        max_history_tokens=cfg.max_history_tokens,
        summary_reserve=cfg.summary_max_tokens if cfg.summarizing else 0,
        low_water=low_water,
        truncate=cfg.truncate,
        truncator=_truncator(cfg) if cfg.truncate else None,
    )


# ---- the plan ---------------------------------------------------------------------


def plan_build(cfg: BuildConfig) -> Plan:
    """The build, as a generator of I/O operations; returns the :class:`Context`."""
    counter = cfg.counter
    misses: dict[int, int] = {}

    def item(row: StoredMessage, cached: int | None) -> Item:
        if isinstance(row.content, list) and _has_media(row.content):
            # Image and audio costs depend on the model family, not only on the
            # encoding the cache is keyed by: count them for this model every time.
            cached = counter.message_tokens(row)
        elif cached is None:
            cached = counter.message_tokens(row)
            misses[row.id] = cached
        return Item(row, row.seq, _cost(cfg, cached), counter.is_exact(row))

    # first page sized for ~160-token messages; later pages double
    page = cfg.page_size or max(16, min(256, cfg.budget // 160))
    # one store call for the lineage, the pinned messages and the newest page
    pinned_rows, first_page = yield Start(page, None if cfg.as_of is None else cfg.as_of + 1)
    if cfg.as_of is not None and (not first_page or first_page[0][0].seq != cfg.as_of):
        # seqs of a lineage are contiguous from 1: the newest one read is as_of if it exists
        raise MessageNotFound(
            f"conversation {cfg.conversation_id!r} has no message {cfg.as_of} to build as of"
        )
    pinned = [item(r, c) for r, c in pinned_rows]
    extra_pinned: list[Item] = []
    overhead = _overhead(cfg)
    tally = _Tally()
    while True:
        history = _History([], False, item)
        sel = yield from _select(cfg, overhead, pinned + extra_pinned, first_page, page, history)
        if cfg.json_mode and not _mentions_json(sel):
            extra_pinned.append((yield from _json_instruction(cfg, sel, item)))
            continue
        sel, sent, rendered, low_water = yield from _fit(cfg, sel, history, tally)
        if cfg.json_mode and not _mentions_json(sel):
            # dropping down to the low-water mark (or an exact recount) left it out
            extra_pinned.append((yield from _json_instruction(cfg, sel, item)))
            continue
        break
    summary_msg, summary_use = _parts(sent, tally.calls)
    if cfg.mode == "completion":
        exact = True  # counted on the very string that is sent
    else:
        exact = all(i.exact for i in (*sel.pinned, *sel.window))
        if summary_msg is not None:
            exact = exact and counter.is_exact(summary_msg)

    if misses:
        yield SaveCounts(counter.encoding_name, misses)

    return _finish(cfg, sel, rendered, summary_use, exact, len(misses), low_water)


def _select(
    cfg: BuildConfig,
    overhead: int,
    pinned: list[Item],
    first_page: list[Any],
    page: int,
    history: _History,
) -> Generator[Op, Any, Selection]:
    """As much history as fits (by the estimates), read newest first, page by page;
    every row read is kept in ``history`` (hysteresis selects again from it)."""
    selector = _selector(cfg, overhead, pinned)
    rows, size = first_page, page
    while True:
        fed = [history.item(r, c) for r, c in rows]
        history.seen += fed
        history.exhausted = len(rows) < size
        selector.feed(fed, exhausted=history.exhausted)
        if selector.done:
            return selector.result()
        size = min(size * 2, 1024)
        rows = yield Tail(rows[-1][0].seq, size)


def _fit(
    cfg: BuildConfig, sel: Selection, history: _History, tally: _Tally
) -> Generator[Op, Any, tuple[Selection, _Sent | None, _Rendered, int | None]]:
    """The summary for what ``sel`` drops, and the request rendered within the budget.

    Returns the final selection, the summary sent, the rendered request and the
    low-water mark in effect (None without hysteresis).
    """
    hysteresis = cfg.summarizing and cfg.low_water is not None
    low_water = _low_water_tokens(cfg, sel) if hysteresis else None
    sent: _Sent | None = None
    rendered: _Rendered | None = None
    if cfg.summarizing and sel.dropped_through is not None:
        if low_water is not None:
            sel, sent, rendered = yield from _hysteresis(cfg, sel, history, low_water, tally)
        else:
            # rolls forward from the newest stored summary, so a repeat is incremental
            sel, sent = yield from _summarize(cfg, sel, tally, _LOOKUP)
    if rendered is None:
        rendered = _render(cfg, sel, *_parts(sent))
    while rendered.prompt_tokens > cfg.budget:
        # the estimates were low (completion mode, a rewriting profile): drop a turn, recount
        sel = _drop_oldest_turn(sel, rendered.prompt_tokens, "the rendered request")
        rendered = None
        if low_water is not None and sent is None:
            # an overflow that only the exact count showed: handled as any other
            sel, sent, rendered = yield from _hysteresis(cfg, sel, history, low_water, tally)
        elif cfg.summarizing:
            base = sent.summary if sent is not None else _LOOKUP
            sel, sent = yield from _summarize(cfg, sel, tally, base)
        if rendered is None:
            rendered = _render(cfg, sel, *_parts(sent))
    return sel, sent, rendered, low_water


def _json_instruction(cfg: BuildConfig, sel: Selection, item: Any) -> Generator[Op, Any, Item]:
    """The newest dropped message that mentions JSON, to pin; an error if there is none."""
    found = yield from _find_json_instruction(sel, item)
    if found is None:
        raise ContextError(
            "response_format json_object requires a message that mentions JSON, and no "
            f"message of conversation {cfg.conversation_id!r} does: add one (e.g. in the "
            "system prompt)"
        )
    return found


def _has_media(parts: list[Any]) -> bool:
    return any(getattr(p, "type", "text") in ("image_url", "input_audio") for p in parts)


def _mentions_json(sel: Selection) -> bool:
    return any("json" in i.message.text.lower() for i in (*sel.pinned, *sel.window))


def _find_json_instruction(sel: Selection, item: Any) -> Generator[Op, Any, Item | None]:
    """The newest dropped message that mentions JSON (read back page by page; rare path)."""
    before = sel.dropped_through + 1 if sel.dropped_through is not None else None
    if before is None:
        return None
    while True:
        rows = yield Tail(before, 256)
        for row, cached in rows:
            if "json" in row.text.lower() and not row.tool_calls and row.role != "tool":
                found: Item = item(row, cached)
                return found
        if len(rows) < 256:
            return None
        before = rows[-1][0].seq


def _drop_oldest_turn(sel: Selection, required: int, what: str) -> Selection:
    """The selection without its oldest turn; the newest turn is never dropped.

    ``required`` is what the current selection needs (``what`` says what that
    includes), for the error when nothing more can go.
    """
    window = sel.window
    starts = [i for i, it in enumerate(window) if it.message.role == "user"]
    nxt = next((s for s in starts if s > 0), None)
    if nxt is None:
        raise ContextOverflowError(
            f"{what} needs {required} tokens but the budget is {sel.budget}, and only the "
            "pinned messages and the newest turn are left: raise the budget",
            budget=sel.budget,
            required=required,
            part="newest",
        )
    dropped = window[:nxt]
    sel.window = window[nxt:]
    sel.dropped_through = dropped[-1].seq
    sel.dropped_count += len(dropped)
    sel.stop_reason = "budget"
    return sel


# ---- summaries ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Made:
    """A summary of messages ``start_seq..end_seq``: stored (``id``), or made for
    an as-of build and kept in memory only (``id`` None)."""

    id: int | None
    start_seq: int
    end_seq: int
    content: str


@dataclass(frozen=True, slots=True)
class _Sent:
    """The summary a build sends: what it summarizes, as a message, at what cost."""

    summary: _Made
    message: Message
    tokens: int
    reused: bool


@dataclass(slots=True)
class _Tally:
    calls: int = 0  # summarizer calls made by this build


class _Lookup:
    """Sentinel: the base summary is not known yet, ask the store."""


_LOOKUP = _Lookup()


def _made(found: Summary | None) -> _Made | None:
    if found is None:
        return None
    return _Made(found.id, found.start_seq, found.end_seq, found.content)


def _parts(sent: _Sent | None, calls: int = 0) -> tuple[Message | None, SummaryUse | None]:
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


def _summary_message(cfg: BuildConfig, made: _Made) -> tuple[Message, int]:
    msg = Message(role=cfg.summary_role, content=cfg.summary_prefix + made.content)
    return msg, _cost(cfg, cfg.counter.message_tokens(msg))


def _summarize(
    cfg: BuildConfig, sel: Selection, tally: _Tally, base: _Made | None | _Lookup
) -> Generator[Op, Any, tuple[Selection, _Sent]]:
    """Reuse or roll forward the summary of everything up to ``sel.dropped_through``.

    ``base`` is the newest summary ending at or before it (``_LOOKUP``: ask the
    store). An as-of build keeps what it makes in memory: it writes no summary.
    """
    pinned_seqs = {i.seq for i in sel.pinned}
    if isinstance(base, _Lookup):
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
                base = _Made(None, 1, end, text)
        assert base is not None
        msg, cost = _summary_message(cfg, base)
        free = cfg.budget - sel.overhead - sel.pinned_tokens - sel.history_tokens
        if cost <= free:
            return sel, _Sent(base, msg, cost, reused)
        while (need := sel.overhead + sel.pinned_tokens + sel.history_tokens + cost) > cfg.budget:
            sel = _drop_oldest_turn(sel, need, f"the context with a {cost}-token summary")
    raise ContextError(
        f"the summary of conversation {cfg.conversation_id!r} does not fit the budget of "
        f"{cfg.budget} tokens; lower summary_max_tokens or raise the budget"
    )


# ---- summaries that last (hysteresis) ---------------------------------------------


@dataclass(slots=True)
class _History:
    """The history rows a build has read (newest first) and how to read older ones."""

    seen: list[Item]
    exhausted: bool
    item: Any  # Callable[[StoredMessage, int | None], Item]


def _low_water_tokens(cfg: BuildConfig, sel: Selection) -> int:
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


def _hysteresis(
    cfg: BuildConfig, sel: Selection, history: _History, low_water: int, tally: _Tally
) -> Generator[Op, Any, tuple[Selection, _Sent, _Rendered | None]]:
    """Summaries that last, once history has to be dropped.

    While the history after the newest stored summary still fits next to it,
    the window starts right after it and the summary is sent as is: the prompt
    keeps a stable prefix and the summarizer is not called. Otherwise (an
    overflow) history is dropped down to the low-water mark and the summary
    rolled forward to there, so that the next turns fit again without a call.
    ``sel`` is the greedy selection (as much history as the estimates let fit).
    """
    users = [i.seq for i in sel.window if i.message.role == "user"]
    found = _made((yield LatestSummary(users[-1] - 1))) if users else None
    if found is not None and found.start_seq == 1:
        kept = yield from _sticky(cfg, sel, found, history)
        while kept is not None and cfg.as_of is not None:
            # Later builds may have stored summaries that end before as_of. The one a
            # build back then used is the oldest whose window still fits: prefer it
            # (it also keeps the most history verbatim).
            older = _made((yield LatestSummary(kept[1].summary.end_seq - 1)))
            if older is None or older.start_seq != 1:
                break
            earlier = yield from _sticky(cfg, sel, older, history)
            if earlier is None:
                break
            kept = earlier
        if kept is not None:
            return kept
    greedy = sel
    selector = _selector(cfg, sel.overhead, sel.pinned, low_water)
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
    base: _Made | None | _Lookup = _LOOKUP
    if found is None:
        base = None
    elif found.start_seq == 1 and found.end_seq <= dropped:
        base = found
    sel, sent = yield from _summarize(cfg, sel, tally, base)
    return sel, sent, None


def _sticky(
    cfg: BuildConfig, sel: Selection, found: _Made, history: _History
) -> Generator[Op, Any, tuple[Selection, _Sent, _Rendered] | None]:
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
    sent = _Sent(found, msg, cost, reused=True)
    rendered = _render(cfg, kept, *_parts(sent))
    if rendered.prompt_tokens > cfg.budget:
        return None  # the exact count of the rendered request says no
    return kept, sent, rendered


def _assemble(sel: Selection, summary_msg: Message | None) -> tuple[list[Message], list[int]]:
    entries: list[tuple[float, Message]] = [(i.seq, i.message) for i in sel.pinned]
    entries += [(i.seq, i.message) for i in sel.window]
    if summary_msg is not None and sel.dropped_through is not None:
        entries.append((sel.dropped_through + 0.5, summary_msg))
    entries.sort(key=lambda e: e[0])
    seqs = [int(s) for s, _ in entries if float(s).is_integer()]
    return [m for _, m in entries], seqs


@dataclass(slots=True)
class _Rendered:
    messages: list[Message]
    seqs: list[int]
    prompt_tokens: int
    chat: list[dict[str, Any]] | None = None
    prompt: str | None = None


def _render(
    cfg: BuildConfig, sel: Selection, summary_msg: Message | None, summary_use: SummaryUse | None
) -> _Rendered:
    messages, seqs = _assemble(sel, summary_msg)
    if cfg.mode == "chat":
        chat = cfg.render_chat(messages)
        if cfg.recount:
            tokens = cfg.counter.request_tokens(chat, cfg.tools)
        else:
            summary_tokens = summary_use.tokens if summary_use else 0
            tokens = sel.overhead + sel.pinned_tokens + summary_tokens + sel.history_tokens
        return _Rendered(messages, seqs, tokens, chat=chat)
    markers = control_markers(cfg.template)
    safe = [_neutralize(m, markers) for m in messages] if markers else messages
    prompt = cfg.template.render(safe, add_generation_prompt=True, tools=cfg.tools)
    return _Rendered(messages, seqs, cfg.counter.count(prompt), prompt=prompt)


_ZWSP = "\u200b"


def control_markers(template: Any) -> tuple[str, ...]:
    """The template's control strings (special tokens, turn headers, stop sequences)."""
    found = {
        *getattr(template, "markers", ()),
        *template.stop,
        template.bos_token,
        template.eos_token,
    }
    return tuple(sorted((m for m in found if m and m.strip()), key=len, reverse=True))


def _neutralize(message: Message, markers: tuple[str, ...]) -> Message:
    """``message`` with the template's control strings broken up in its text.

    A flattened prompt is one string: a user who types ``<|im_end|>`` followed by
    ``<|im_start|>system`` would otherwise open a system turn (servers such as
    vLLM and llama.cpp parse special tokens in completion prompts). A zero-width
    space after the first character keeps the text readable and the marker inert.
    System and developer messages are the application's own and left as they are.
    """
    if message.role in ("system", "developer"):
        return message

    def clean(text: str) -> str:
        for marker in markers:
            if marker in text:
                text = text.replace(marker, marker[0] + _ZWSP + marker[1:])
        return text

    content = message.content
    if isinstance(content, str):
        fixed: Any = clean(content)
        if fixed == content:
            return message
    elif isinstance(content, list):
        fixed = [
            p.model_copy(update={"text": clean(p.text)}) if isinstance(p, TextPart) else p
            for p in content
        ]
    else:
        return message
    return message.model_copy(update={"content": fixed})


def _finish(
    cfg: BuildConfig,
    sel: Selection,
    rendered: _Rendered,
    summary_use: SummaryUse | None,
    exact: bool,
    counted: int,
    low_water: int | None = None,
) -> Context:
    counter = cfg.counter
    summary_tokens = summary_use.tokens if summary_use else 0
    prompt_tokens = rendered.prompt_tokens
    seqs = rendered.seqs
    trunc = sel.truncation
    # Our own values, built from checked parts: skip re-validation on the hot path.
    report = ContextReport.model_construct(
        conversation_id=cfg.conversation_id,
        model=cfg.model,
        mode=cfg.mode,
        encoding=counter.encoding_name,
        template=getattr(cfg.template, "name", None),
        budget=cfg.budget,
        prompt_tokens=prompt_tokens,
        budget_left=cfg.budget - prompt_tokens,
        reply_reserve=cfg.reply_reserve,
        overhead_tokens=sel.overhead,
        pinned_tokens=sel.pinned_tokens,
        summary_tokens=summary_tokens,
        history_tokens=sel.history_tokens,
        kept_seqs=seqs,
        pinned_seqs=[i.seq for i in sel.pinned],
        dropped_count=sel.dropped_count,
        dropped_through=sel.dropped_through,
        summary=summary_use,
        truncated=TruncationReport(
            seq=trunc.seq,
            mode=trunc.mode,
            original_tokens=trunc.original_tokens,
            kept_tokens=trunc.kept_tokens,
        )
        if trunc
        else None,
        exact=exact,
        stop_reason=sel.stop_reason,
        rows_read=sel.rows_read,
        counted=counted,
        low_water=low_water,
        as_of=cfg.as_of,
    )
    return Context.model_construct(
        mode=cfg.mode,
        model=cfg.model,
        messages=rendered.messages,
        report=report,
        chat=rendered.chat,
        prompt=rendered.prompt,
        stop=list(cfg.template.stop) if cfg.mode == "completion" else [],
        tools=cfg.tools,
    )


def store_call(
    op: Op, conversation_id: str, owner: str | None, encoding: str
) -> tuple[str, str, tuple[Any, ...], dict[str, Any]]:
    """How a shell answers ``op``: (``"store"`` or ``"summarizer"``, method, args, kwargs).

    The one mapping from plan operations to store / summarizer methods; the sync
    shell calls it, the async shell awaits it, so the two cannot drift.
    """
    cid, scope = conversation_id, {"owner": owner}
    match op:
        case Start(limit, before):
            kw = {"encoding": encoding, "limit": limit, "before": before, **scope}
            return "store", "context_start", (cid,), kw
        case Tail(before, limit):
            kw = {"encoding": encoding, "before": before, "limit": limit, **scope}
            return "store", "tail", (cid,), kw
        case Range(after, before, limit):
            return (
                "store",
                "messages",
                (cid,),
                {"after": after, "before": before, "limit": limit, **scope},
            )
        case LatestSummary(up_to):
            return "store", "latest_summary", (cid,), {"up_to_seq": up_to, **scope}
        case AddSummary(start, end, content):
            kw = {"start_seq": start, "end_seq": end, "content": content, **scope}
            return "store", "add_summary", (cid,), kw
        case SaveCounts(counted_in, counts):
            return "store", "save_token_counts", (counted_in, counts), {}
        case Summarize(messages, previous, max_tokens):
            return (
                "summarizer",
                "summarize",
                (messages,),
                {"previous": previous, "max_tokens": max_tokens},
            )
    raise AssertionError(op)  # pragma: no cover


def run_sync(plan: Plan, handle: Any) -> Context:
    """Drive ``plan`` with a sync handler ``handle(op) -> result``."""
    try:
        op = next(plan)
        while True:
            op = plan.send(handle(op))
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


async def run_async(plan: Plan, handle: Any) -> Context:
    """Drive ``plan`` with an async handler ``await handle(op) -> result``."""
    try:
        op = next(plan)
        while True:
            op = plan.send(await handle(op))
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
