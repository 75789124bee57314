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
from ._exceptions import ContextError, ContextOverflowError, TemplateError
from ._messages import Message, RefusalPart, TextPart
from ._records import StoredMessage, Summary
from ._selection import Item, Selection, Selector, TruncateMode

__all__ = ["BuildConfig", "Plan", "plan_build"]

# ---- the I/O a build asks for -------------------------------------------------


@dataclass(frozen=True, slots=True)
class Start:
    """-> (pinned, newest page): lists of (StoredMessage, cached tokens | None); the
    pinned messages of the whole lineage oldest first, then the newest ``limit``
    messages newest first. Raises ConversationNotFound for a missing / foreign one."""

    limit: int


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
    pinned_rows, first_page = yield Start(page)
    pinned = [item(r, c) for r, c in pinned_rows]
    extra_pinned: list[Item] = []
    overhead = _overhead(cfg)
    while True:
        selector = Selector(
            budget=cfg.budget,
            overhead=overhead,
            pinned=pinned + extra_pinned,
            max_messages=cfg.max_messages,
            max_history_tokens=cfg.max_history_tokens,
            summary_reserve=cfg.summary_max_tokens if cfg.summarizing else 0,
            truncate=cfg.truncate,
            truncator=_truncator(cfg) if cfg.truncate else None,
        )
        rows, size = first_page, page
        while True:
            selector.feed([item(r, c) for r, c in rows], exhausted=len(rows) < size)
            if selector.done:
                break
            size = min(size * 2, 1024)
            rows = yield Tail(rows[-1][0].seq, size)
        sel = selector.result()
        if not cfg.json_mode or _mentions_json(sel):
            break
        found = yield from _find_json_instruction(sel, item)
        if found is None:
            raise ContextError(
                "response_format json_object requires a message that mentions JSON, and no "
                f"message of conversation {cfg.conversation_id!r} does: add one (e.g. in the "
                "system prompt)"
            )
        extra_pinned.append(found)

    summary_use: SummaryUse | None = None
    summary_msg: Message | None = None
    while True:
        if cfg.summarizing and sel.dropped_through is not None:
            # rolls forward from the newest stored summary, so a repeat is incremental
            sel, summary_msg, summary_use = yield from _summarize(cfg, sel)
        rendered = _render(cfg, sel, summary_msg, summary_use)
        if rendered.prompt_tokens <= cfg.budget:
            break
        # the estimates were low (completion mode, a rewriting profile): drop a turn, recount
        sel = _drop_oldest_turn(sel, rendered.prompt_tokens, "the rendered request")
    if cfg.mode == "completion":
        exact = True  # counted on the very string that is sent
    else:
        exact = all(i.exact for i in (*sel.pinned, *sel.window))
        if summary_msg is not None:
            exact = exact and counter.is_exact(summary_msg)

    if misses:
        yield SaveCounts(counter.encoding_name, misses)

    return _finish(cfg, sel, rendered, summary_use, exact, len(misses))


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


def _summarize(
    cfg: BuildConfig, sel: Selection
) -> Generator[Op, Any, tuple[Selection, Message, SummaryUse]]:
    """Reuse or roll forward the summary of everything up to ``sel.dropped_through``."""
    counter = cfg.counter
    pinned_seqs = {i.seq for i in sel.pinned}
    stored: Summary | None = yield LatestSummary(sel.dropped_through or 0)
    if stored is not None and stored.start_seq > 1:
        # it would leave the messages before its start uncovered: start afresh
        stored = None
    for _ in range(4):
        end = sel.dropped_through
        assert end is not None
        reused = stored is not None and stored.end_seq == end
        if not reused:
            text = stored.content if stored else None
            start = stored.start_seq if stored else 1
            cursor = stored.end_seq if stored else 0
            while cursor < end:
                rows: list[StoredMessage] = yield Range(cursor, end + 1, cfg.summary_chunk)
                if not rows:
                    break
                fresh = [r for r in rows if r.seq not in pinned_seqs]  # pinned ones are sent anyway
                if fresh:
                    text = yield Summarize(fresh, text, cfg.summary_max_tokens)
                cursor = rows[-1].seq
            if not text or not text.strip():
                raise ContextError(
                    f"the summarizer returned no text for messages {start}..{end} of "
                    f"conversation {cfg.conversation_id!r}; nothing was stored (an empty "
                    "summary would stand in for that history forever)"
                )
            stored = yield AddSummary(start, end, text)
        assert stored is not None
        msg = Message(role=cfg.summary_role, content=cfg.summary_prefix + stored.content)
        cost = _cost(cfg, counter.message_tokens(msg))
        free = cfg.budget - sel.overhead - sel.pinned_tokens - sel.history_tokens
        if cost <= free:
            use = SummaryUse(
                id=stored.id,
                start_seq=stored.start_seq,
                end_seq=stored.end_seq,
                tokens=cost,
                reused=reused,
            )
            return sel, msg, use
        while (need := sel.overhead + sel.pinned_tokens + sel.history_tokens + cost) > cfg.budget:
            sel = _drop_oldest_turn(sel, need, f"the context with a {cost}-token summary")
    raise ContextError(
        f"the summary of conversation {cfg.conversation_id!r} does not fit the budget of "
        f"{cfg.budget} tokens; lower summary_max_tokens or raise the budget"
    )


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

    update: dict[str, Any] = {}
    content = message.content
    if isinstance(content, str):
        update["content"] = clean(content)
    elif isinstance(content, list):
        update["content"] = [
            p.model_copy(update={"text": clean(p.text)})
            if isinstance(p, TextPart)
            else p.model_copy(update={"refusal": clean(p.refusal)})
            if isinstance(p, RefusalPart)
            else p
            for p in content
        ]
    # refusals and tool-call arguments are written into the prompt too
    if message.refusal is not None:
        update["refusal"] = clean(message.refusal)
    if message.tool_calls:
        update["tool_calls"] = [
            c.model_copy(update={"function": c.function.model_copy(
                update={"arguments": clean(c.function.arguments)}
            )})
            for c in message.tool_calls
        ]
    if all(getattr(message, k) == v for k, v in update.items()):
        return message
    return message.model_copy(update=update)


def _finish(
    cfg: BuildConfig,
    sel: Selection,
    rendered: _Rendered,
    summary_use: SummaryUse | None,
    exact: bool,
    counted: int,
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
        case Start(limit):
            return "store", "context_start", (cid,), {"encoding": encoding, "limit": limit, **scope}
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
