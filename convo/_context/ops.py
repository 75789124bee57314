"""What a context build asks for and works with: its I/O operations, its
configuration, and the cost models of the two target formats.

Shared by the plan (:mod:`convo._context.plan`) and the summary machinery
(:mod:`convo._context.summaries`); pure, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

from .._exceptions import ContextOverflowError, TemplateError
from .._messages import Message
from .report import Context
from .selection import Item, Selection, Selector, TruncateMode

__all__ = [
    "AddSummary",
    "BuildConfig",
    "BuildCounts",
    "LatestSummary",
    "Op",
    "Plan",
    "Range",
    "SaveCounts",
    "Start",
    "Summarize",
    "Tail",
    "drop_oldest_turn",
    "make_selector",
    "message_cost",
    "request_overhead",
    "template_costs",
    "truncator",
]

# ---- the I/O a build asks for -------------------------------------------------
# (plain slotted dataclasses: a frozen one's __init__ costs three times as much, and
# every build makes some; the shells only read them)


@dataclass(slots=True)
class Start:
    """-> (pinned, newest page): lists of (StoredMessage, cached tokens | None); the
    pinned messages of the whole lineage oldest first, then the newest ``limit``
    messages newest first, all with ``seq < before`` when it is set (as-of builds),
    the newest ones only with ``seq > after`` when that is set (see
    ``BuildConfig.floor``). Raises ConversationNotFound for a missing / foreign one."""

    limit: int
    before: int | None = None
    after: int | None = None


@dataclass(slots=True)
class Tail:
    """-> list[(StoredMessage, cached tokens | None)], newest first, seq < before."""

    before: int | None
    limit: int


@dataclass(slots=True)
class Range:
    """-> list[StoredMessage], oldest first, after < seq < before."""

    after: int
    before: int
    limit: int


@dataclass(slots=True)
class LatestSummary:
    """-> Summary | None: the newest summary of the lineage ending at or before ``up_to_seq``."""

    up_to_seq: int


@dataclass(slots=True)
class Summarize:
    """-> str: the summarizer's text."""

    messages: Sequence[Message]
    previous: str | None
    max_tokens: int


@dataclass(slots=True)
class AddSummary:
    """-> Summary (stored)."""

    start_seq: int
    end_seq: int
    content: str


@dataclass(slots=True)
class SaveCounts:
    """-> None: store token counts computed during this build ((conversation id,
    message id) -> tokens)."""

    encoding: str
    counts: dict[tuple[str, int], int]


Op = Start | Tail | Range | LatestSummary | Summarize | AddSummary | SaveCounts

#: A build's new token counts, kept for the caller: (encoding, :attr:`SaveCounts.counts`).
BuildCounts: TypeAlias = tuple[str, dict[tuple[str, int], int]]
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
    #: rows the previous build of this conversation needed (see ``_BuilderBase``):
    #: the first page reads that many (and a little more), so a chat's builds
    #: usually take one page, whatever its messages' sizes
    rows_hint: int | None = None
    #: stored tokens per history message in the builder's last build (any
    #: conversation): sizes the first page when there is no ``rows_hint``
    tokens_hint: int | None = None
    #: the newest seq the previous build of this conversation did not need (it read
    #: back to floor + 1 and stopped there): the first page reads only the rows
    #: after it (those it needed, and the ones appended since), at most twice the
    #: ``rows_hint``; a hint only, older rows are read on when the window needs them
    floor: int | None = None
    recount: bool = False  # count the rendered request itself (completion mode, rewriting profiles)
    decode: Any = None  # Callable[[list[int]], str], for truncation
    #: summaries with hysteresis: history kept after an overflow, a fraction of the
    #: history budget (float) or tokens (int); None: roll the summary forward on
    #: every build that drops more history
    low_water: float | None = None
    as_of: int | None = None  # build from messages 1..as_of only, writing no summary
    _template_costs: tuple[int, int] | None = field(default=None, repr=False)


# ---- cost models ----------------------------------------------------------------


def template_costs(cfg: BuildConfig) -> tuple[int, int]:
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


def request_overhead(cfg: BuildConfig) -> int:
    if cfg.mode == "chat":
        return 3 + (cfg.counter.tools_tokens(cfg.tools) if cfg.tools else 0)
    return template_costs(cfg)[0]


def message_cost(cfg: BuildConfig, chat_cost: int) -> int:
    """Cost of a message in the target format, from its (cached) chat cost."""
    if cfg.mode == "chat":
        return chat_cost
    # chat cost = 3 per message + role + content; the template's framing replaces the 4
    return max(1, chat_cost - 4 + template_costs(cfg)[1])


def truncator(cfg: BuildConfig) -> Any:
    def truncate(msg: Message, max_cost: int, mode: TruncateMode) -> tuple[Message, int] | None:
        if not isinstance(msg.content, str) or cfg.decode is None:
            return None
        counter = cfg.counter
        empty = msg.model_copy(update={"content": ""})
        frame = message_cost(cfg, counter.message_tokens(empty))
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
            cost = message_cost(cfg, counter.message_tokens(short))
            if cost <= max_cost:
                return short, cost
            room -= cost - max_cost
        return None

    return truncate


def make_selector(
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
        truncator=truncator(cfg) if cfg.truncate else None,
    )


def drop_oldest_turn(sel: Selection, required: int, what: str) -> Selection:
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
