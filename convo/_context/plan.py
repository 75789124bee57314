"""The pure core of a context build, shared by the sync and async builders.

A build is written once, as a generator that *yields* the I/O it needs
(``Tail``, ``Pinned``, ``Summarize`` ...) and receives the results. The sync
builder answers with :class:`~convo.Store` calls, the async builder awaits
:class:`~convo.AsyncStore` calls: one algorithm, two thin shells, no drift
(the "sans-I/O" style of h11 and httpx's core).

The operations, the configuration and the cost models are in
:mod:`convo._context.ops`; summaries (made, reused, kept with hysteresis) in
:mod:`convo._context.summaries`.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import Any, cast

from .._exceptions import ContextError, MessageNotFound
from .._messages import Message
from .._records import StoredMessage, WireText
from .._render.control import control_markers, render_prompt
from .._store.rows import construct
from .ops import (
    AddSummary,
    BuildConfig,
    BuildCounts,
    LatestSummary,
    Op,
    Plan,
    Range,
    SaveCounts,
    Start,
    Summarize,
    Tail,
    drop_oldest_turn,
    make_selector,
    message_cost,
    request_overhead,
)
from .report import Context, ContextReport, SummaryUse, TruncationReport
from .selection import Item, Selection
from .summaries import (
    LOOKUP,
    History,
    Sent,
    Tally,
    hysteresis,
    low_water_tokens,
    summarize,
    summary_parts,
)

__all__ = [
    "BuildConfig", "BuildIO", "Plan", "control_markers", "first_page_size", "plan_build",
    "rows_hint", "store_call",
]

# built with construct() (see _finish): what it needs of the classes
for _cls in (Context, ContextReport):
    assert not _cls.__private_attributes__ and not _cls.__pydantic_post_init__, _cls
    assert _cls.model_config.get("extra") != "allow", _cls

# ---- the plan ---------------------------------------------------------------------

#: Rows read beyond what the previous build of a conversation needed (see
#: ``BuildConfig.rows_hint``): room for a window of a few more (shorter) messages
#: than the last one. Each row more costs every build; a page too short costs the
#: builds that need more a second read.
ROWS_SLACK = 2


#: Tokens per message assumed when nothing better is known (the builder's first build).
DEFAULT_MESSAGE_TOKENS = 160
#: The smallest first page without a ``rows_hint`` (a guess: reading a few rows more
#: costs less than a second round trip)
FIRST_PAGE_MIN = 16


def rows_hint(rows_needed: int, rows_fetched: int, read_all: bool = False) -> int:
    """The first page of the next build of a conversation whose last build needed
    ``rows_needed`` rows and fetched ``rows_fetched``: what it needed and some
    slack, but never more than it fetched (older rows than those have no token
    counts yet, and a build counts every row it reads), unless it read the whole
    history (``read_all``: there are no older rows)."""
    if read_all:
        return rows_needed + ROWS_SLACK
    return min(rows_needed + ROWS_SLACK, rows_fetched)


def first_page_size(cfg: BuildConfig) -> int:
    """Rows the opening read of a build asks for (later pages double).

    ``page_size`` when the builder was given one; else what the last build of
    this conversation needed (``rows_hint``), so that a chat's builds take one
    page that is barely larger than the window (twice that with a ``floor``, which
    bounds the read: see ``BuildConfig.floor``); else the budget divided by the
    stored tokens per message of the builder's earlier builds (``tokens_hint``;
    160 when it has made none), plus the slack, at least ``FIRST_PAGE_MIN``.
    """
    if cfg.page_size:
        return cfg.page_size
    if cfg.floor is not None and cfg.rows_hint is not None:
        # the floor bounds the read; the limit only caps it (many rows appended since)
        return max(1, min(1024, 2 * cfg.rows_hint))
    if cfg.rows_hint is not None:
        return max(1, min(1024, cfg.rows_hint))
    per = cfg.tokens_hint or DEFAULT_MESSAGE_TOKENS
    return max(FIRST_PAGE_MIN, min(256, -(-cfg.budget // per) + ROWS_SLACK))



def plan_build(cfg: BuildConfig) -> Plan:
    """The build, as a generator of I/O operations; returns the :class:`Context`."""
    counter = cfg.counter
    misses: dict[tuple[str, int], int] = {}
    chat = cfg.mode == "chat"

    def item(row: StoredMessage | WireText, cached: int | None) -> Item:
        if type(row) is WireText:
            # a turn's lean read of a plain text row with its stored count (see
            # convo._store.rows.lean_messages): exact, and only a chat build reads lean,
            # so its cost is its stored chat count
            assert cached is not None  # (one is made only of a row with its count)
            return Item(row, row.seq, cached, True)
        # the fields read from the model's __dict__: an attribute of a pydantic model
        # goes through its __getattr__ hook, several times slower (rows by the dozen)
        fields = row.__dict__
        if (
            cached is not None
            and type(fields["content"]) is str
            and fields["tool_calls"] is None
            and fields["refusal"] is None
            and fields["tool_call_id"] is None
        ):
            # the common row, read with its stored count: text only, so the count is
            # exact (what counter.is_exact says of it), without the calls
            return Item(row, fields["seq"], cached if chat else message_cost(cfg, cached), True)
        content = row.content
        if isinstance(content, list) and _has_media(content):
            # Image and audio costs depend on the model family, not only on the
            # encoding the cache is keyed by: count them for this model every time.
            cached = counter.message_tokens(row)
        elif cached is None:
            cached = counter.message_tokens(row)
            misses[(row.conversation_id, row.id)] = cached  # the message's shard key too
        return Item(row, row.seq, message_cost(cfg, cached), counter.is_exact(row))

    page = first_page_size(cfg)
    # one store call for the lineage, the pinned messages and the newest page
    pinned_rows, first_page = yield Start(
        page, None if cfg.as_of is None else cfg.as_of + 1, cfg.floor
    )
    if cfg.as_of is not None and (not first_page or first_page[0][0].seq != cfg.as_of):
        # seqs of a lineage are contiguous from 1: the newest one read is as_of if it exists
        raise MessageNotFound(
            f"conversation {cfg.conversation_id!r} has no message {cfg.as_of} to build as of"
        )
    pinned = [item(r, c) for r, c in pinned_rows]
    extra_pinned: list[Item] = []
    overhead = request_overhead(cfg)
    tally = Tally()
    while True:
        history = History([], False, item)
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
    summary_msg, summary_use = summary_parts(sent, tally.calls)
    if cfg.mode == "completion":
        exact = True  # counted on the very string that is sent
    else:
        # (lists: a generator over a turn's few dozen items costs more than building them)
        exact = all([i.exact for i in sel.pinned]) and all([i.exact for i in sel.window])  # noqa: C419
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
    history: History,
) -> Generator[Op, Any, Selection]:
    """As much history as fits (by the estimates), read newest first, page by page;
    every row read is kept in ``history`` (hysteresis selects again from it).

    A first page read down to a ``floor`` (``BuildConfig.floor``) that ends short of
    its limit ends at the floor, not at the oldest message: the next page starts
    below the floor when the window needs more.
    """
    selector = make_selector(cfg, overhead, pinned)
    rows, size, floor = first_page, page, cfg.floor
    # (a turn's lean read gives WireText values for plain text rows with their counts:
    # made into items here, without a call each and without Item's __init__, as
    # history.item makes them; a chat build's only)
    wire = WireText if cfg.mode == "chat" else None
    while True:
        make = history.item
        fed: list[Item] = []
        add = fed.append
        for r, c in rows:
            if type(r) is wire:
                it = _new_item(Item)
                it.message = r
                it.seq = r.seq
                it.cost = c
                it.exact = True
                add(it)
            else:
                add(make(r, c))
        history.seen += fed
        history.exhausted = len(rows) < size and not floor
        selector.feed(fed, exhausted=history.exhausted)
        if selector.done:
            return selector.result()
        # (no rows and not exhausted: the floor was at or above the newest seq)
        before = rows[-1][0].seq if rows else (floor or 0) + 1
        size, floor = min(size * 2, 1024), None
        rows = yield Tail(before, size)


_new_item = object.__new__


def _fit(
    cfg: BuildConfig, sel: Selection, history: History, tally: Tally
) -> Generator[Op, Any, tuple[Selection, Sent | None, _Rendered, int | None]]:
    """The summary for what ``sel`` drops, and the request rendered within the budget.

    Returns the final selection, the summary sent, the rendered request and the
    low-water mark in effect (None without hysteresis).
    """
    lasting = cfg.summarizing and cfg.low_water is not None  # summaries with hysteresis
    low_water = low_water_tokens(cfg, sel) if lasting else None
    sent: Sent | None = None
    rendered: _Rendered | None = None
    if cfg.summarizing and sel.dropped_through is not None:
        if low_water is not None:
            sel, sent, rendered = yield from hysteresis(cfg, sel, history, low_water, tally, _render)
        else:
            # rolls forward from the newest stored summary, so a repeat is incremental
            sel, sent = yield from summarize(cfg, sel, tally, LOOKUP)
    if rendered is None:
        rendered = _render(cfg, sel, *summary_parts(sent))
    while rendered.prompt_tokens > cfg.budget:
        # the estimates were low (completion mode, a rewriting profile): drop a turn, recount
        sel = drop_oldest_turn(sel, rendered.prompt_tokens, "the rendered request")
        rendered = None
        if low_water is not None and sent is None:
            # an overflow that only the exact count showed: handled as any other
            sel, sent, rendered = yield from hysteresis(cfg, sel, history, low_water, tally, _render)
        elif cfg.summarizing:
            base = sent.summary if sent is not None else LOOKUP
            sel, sent = yield from summarize(cfg, sel, tally, base)
        if rendered is None:
            rendered = _render(cfg, sel, *summary_parts(sent))
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


def _assemble(
    sel: Selection, summary_msg: Message | None
) -> tuple[list[Message | WireText], list[int]]:
    pinned, window = sel.pinned, sel.window
    if summary_msg is None and (not pinned or not window or pinned[-1].seq < window[0].seq):
        # the usual shape (the system prompt, then the newest turns): already in order
        items = pinned + window
        return [i.message for i in items], [i.seq for i in items]
    entries: list[tuple[float, Message | WireText]] = [(i.seq, i.message) for i in sel.pinned]
    entries += [(i.seq, i.message) for i in sel.window]
    if summary_msg is not None and sel.dropped_through is not None:
        entries.append((sel.dropped_through + 0.5, summary_msg))
    entries.sort(key=lambda e: e[0])
    seqs = [int(s) for s, _ in entries if float(s).is_integer()]
    return [m for _, m in entries], seqs


@dataclass(slots=True)
class _Rendered:
    messages: list[Message | WireText]  # (WireText: a turn's lean read, see BuildIO)
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
    # The template breaks control strings in every field of every message
    # (summaries included) before writing the prompt: see convo._render.control.
    # (a lean read, the only maker of WireText values, is a chat build's)
    prompt = render_prompt(cfg.template, cast("list[Message]", messages), tools=cfg.tools)
    return _Rendered(messages, seqs, cfg.counter.count(prompt), prompt=prompt)


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
    # Our own values, built from checked parts, every field named: no re-validation
    # (and not pydantic's model_construct, which fills defaults field by field).
    report = construct(ContextReport, {
        "conversation_id": cfg.conversation_id,
        "model": cfg.model,
        "mode": cfg.mode,
        "encoding": counter.encoding_name,
        "template": getattr(cfg.template, "name", None),
        "budget": cfg.budget,
        "prompt_tokens": prompt_tokens,
        "budget_left": cfg.budget - prompt_tokens,
        "reply_reserve": cfg.reply_reserve,
        "overhead_tokens": sel.overhead,
        "pinned_tokens": sel.pinned_tokens,
        "summary_tokens": summary_tokens,
        "history_tokens": sel.history_tokens,
        "kept_seqs": seqs,
        "pinned_seqs": [i.seq for i in sel.pinned],
        "dropped_count": sel.dropped_count,
        "dropped_through": sel.dropped_through,
        "summary": summary_use,
        "truncated": TruncationReport(
            seq=trunc.seq,
            mode=trunc.mode,
            original_tokens=trunc.original_tokens,
            kept_tokens=trunc.kept_tokens,
        )
        if trunc
        else None,
        "exact": exact,
        "stop_reason": sel.stop_reason,
        "rows_read": sel.rows_read,
        "counted": counted,
        "low_water": low_water,
        "as_of": cfg.as_of,
    })
    return construct(Context, {
        "mode": cfg.mode,
        "model": cfg.model,
        "messages": rendered.messages,
        "report": report,
        "chat": rendered.chat,
        "prompt": rendered.prompt,
        "stop": list(cfg.template.stop) if cfg.mode == "completion" else [],
        "tools": cfg.tools,
    })


def store_call(
    op: Op, conversation_id: str, owner: str | None, encoding: str, lineage: Any = None,
    lean: bool = False,
) -> tuple[str, str, tuple[Any, ...], dict[str, Any]]:
    """How a shell answers ``op``: (``"store"`` or ``"summarizer"``, method, args, kwargs).

    The one mapping from plan operations to store / summarizer methods; the sync
    shell calls it, the async shell awaits it, so the two cannot drift.
    ``lineage``: what the build's ``Start`` read (see :class:`BuildIO`); ``lean``:
    the opening read may leave out what a turn's build never reads (see
    :class:`BuildIO`).
    """
    cid, scope = conversation_id, {"owner": owner}
    match op:
        case Start(limit, before, after):
            kw = {"encoding": encoding, "limit": limit, "before": before, "after": after, **scope}
            if lean:
                kw["lean"] = True
            return "store", "_context_open", (cid,), kw
        case Tail(before, limit) if lineage is not None and before is not None:
            kw = {"encoding": encoding, "before": before, "limit": limit, **scope}
            return "store", "_tail_of", (lineage,), kw
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


class BuildIO:
    """A build's I/O state for its shell: the calls to make (see :func:`store_call`)
    and what the plan gets back.

    It keeps the fork lineage the opening reads resolved, so every later page of
    the same build reads with it (one lineage query a build). With
    ``defer_counts`` the build's new token counts are not written by the build
    but kept in :attr:`token_counts`, for the caller to store in its own next
    transaction (a turn stores them with its run).

    ``lean``: the build's messages are never handed out (a turn's chat build
    without a summarizer: the turn returns the report and sends the rendered
    body), so the opening read may build them without what no build reads
    (timestamps, metadata, keys, reply info), and a plain text row with its
    stored count as a :class:`~convo._records.WireText` (role, text, seq, id)
    instead of a message: see :func:`convo._store.rows.lean_messages`. Such a
    build's ``Context.messages`` holds those values as they are (the turn never
    reads them). The report and the rendered request are the same as a full
    build's.
    """

    __slots__ = (
        "conversation_id", "defer_counts", "encoding", "lean", "lineage", "newest", "owner",
        "rows", "token_counts",
    )

    def __init__(
        self, conversation_id: str, owner: str | None, encoding: str, *,
        defer_counts: bool = False, lean: bool = False,
    ) -> None:
        self.conversation_id = conversation_id
        self.owner = owner
        self.encoding = encoding
        self.lineage: Any = None
        self.lean = lean
        self.defer_counts = defer_counts
        self.token_counts: BuildCounts | None = None
        self.rows = 0  # history rows fetched (pinned ones aside)
        self.newest: int | None = None  # the seq of the newest history row fetched

    def call(self, op: Op) -> tuple[str, str, tuple[Any, ...], dict[str, Any]] | None:
        """The call that answers ``op``; None when there is nothing to call (deferred counts)."""
        if self.defer_counts and isinstance(op, SaveCounts):
            self.token_counts = (op.encoding, op.counts)
            return None
        return store_call(
            op, self.conversation_id, self.owner, self.encoding, self.lineage, self.lean
        )

    def result(self, op: Op, value: Any) -> Any:
        """What the plan receives for ``op``, given the call's ``value``."""
        if isinstance(op, Start):
            pinned, page, self.lineage = value
            self.rows += len(page)
            if page:
                self.newest = page[0][0].seq
            return pinned, page
        if isinstance(op, Tail):
            self.rows += len(value)
        return value


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
