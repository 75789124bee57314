"""The selection engine: which stored messages fit the token budget.

Pure: no database, no tokenizer. It is fed pages of history newest first
(each item with its token cost) and decides, keeping DESIGN.md's invariants
at once:

1. pinned items (system / developer / caller-pinned) are always kept, or the
   build fails with :class:`~convo.ContextOverflowError` naming the numbers;
2. history is dropped oldest first in whole *turns* (a user message and
   everything after it up to the next user message), so an assistant message
   with tool calls and the tool results answering it stay together and the
   window never starts on an assistant or tool message;
3. the current turn (the newest user message and what follows it) is always
   kept; if it alone does not fit, the build fails unless truncation inside
   the newest user message was allowed;
4. optional caps on history messages and history tokens;
5. room reserved for a summary of what was dropped (the builder fills it);
6. an optional low-water mark: keep older turns only while the history stays
   within it (summaries with hysteresis: after an overflow the builder drops
   down to it, so the next turns fit without a new summary).

The sync and async builders drive the same :class:`Selector`: they read a
page, :meth:`Selector.feed` it, and stop when :attr:`Selector.done`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from .._exceptions import ContextOverflowError
from .._messages import Message
from .._records import WireText

__all__ = ["Item", "Selection", "Selector", "TruncateMode"]

TruncateMode = Literal["head", "tail", "middle"]
"""Which part of an over-long newest user message to keep."""


@dataclass(slots=True)
class Item:
    """One message with its sequence number and its token cost in the target format.

    ``message`` is a :class:`~convo._records.WireText` for a plain text row of a
    turn's lean read (see :func:`convo._store.rows.lean_messages`), else a message.
    """

    message: Message | WireText
    seq: int
    cost: int
    exact: bool = True


@dataclass(slots=True)
class Truncation:
    seq: int
    mode: TruncateMode
    original_tokens: int
    kept_tokens: int


@dataclass(slots=True)
class Selection:
    """What the engine decided. ``window`` is contiguous history, oldest first."""

    pinned: list[Item]
    window: list[Item]
    budget: int
    overhead: int
    #: the newest seq of history dropped before the window (None: nothing dropped)
    dropped_through: int | None
    #: number of history (non-pinned) messages dropped
    dropped_count: int
    truncation: Truncation | None = None
    stop_reason: str = "history exhausted"
    rows_read: int = 0
    summary_reserve: int = 0

    @property
    def pinned_tokens(self) -> int:
        return sum([i.cost for i in self.pinned])  # (a list: faster than a generator)

    @property
    def history_tokens(self) -> int:
        return sum([i.cost for i in self.window])

    @property
    def window_start(self) -> int | None:
        return self.window[0].seq if self.window else None


Truncator = Callable[[Message, int, TruncateMode], tuple[Message, int] | None]
"""``(message, max_cost, mode) -> (shortened message, its cost)`` or None if impossible."""


@dataclass(slots=True)
class _Turn:
    items: list[Item] = field(default_factory=list)  # oldest first
    cost: int = 0


_new_turn = object.__new__


class Selector:
    """Incremental newest-first selection over pages of history.

    Args:
        budget: prompt tokens available (the reply reserve is already taken out).
        overhead: fixed prompt tokens outside the messages (reply priming, tool
            definitions, template framing).
        pinned: items that must be kept, oldest first.
        max_messages: cap on history (non-pinned) messages; the current turn is
            always kept.
        max_history_tokens: cap on history tokens; the current turn is always kept.
        summary_reserve: tokens held back for a summary of what gets dropped.
        low_water: keep older turns only while the history (current turn
            included) stays within this many tokens; the current turn is
            always kept.
        truncate: allow shortening the newest user message in this mode.
        truncator: how to shorten a message (needed when ``truncate`` is set).
    """

    def __init__(
        self,
        *,
        budget: int,
        overhead: int,
        pinned: Sequence[Item],
        max_messages: int | None = None,
        max_history_tokens: int | None = None,
        summary_reserve: int = 0,
        low_water: int | None = None,
        truncate: TruncateMode | None = None,
        truncator: Truncator | None = None,
    ) -> None:
        if budget <= 0:
            raise ContextOverflowError(
                f"the prompt budget is {budget} tokens: nothing fits, not even the {overhead} "
                "tokens of request framing (check the model's context window, the reply "
                "reserve and the margin)",
                budget=budget,
                required=overhead,
                part="budget",
            )
        self._pinned = sorted(pinned, key=lambda i: i.seq)
        self._pinned_seqs = {i.seq for i in self._pinned}
        pinned_cost = sum(i.cost for i in self._pinned)
        required = overhead + pinned_cost
        if required > budget:
            part = (
                "system"
                if all(i.message.role in ("system", "developer") for i in pinned)
                else "pinned"
            )
            raise ContextOverflowError(
                f"the {'system prompt' if part == 'system' else 'pinned messages'} and request "
                f"framing need {required} tokens ({pinned_cost} in {len(self._pinned)} "
                f"message(s) + {overhead} overhead) but the budget is {budget}",
                budget=budget,
                required=required,
                part=part,
            )
        self._budget = budget
        self._overhead = overhead
        self._free = budget - required
        self._max_messages = max_messages
        self._max_history_tokens = max_history_tokens
        self._summary_reserve = summary_reserve
        self._low_water = low_water
        self._truncate = truncate
        self._truncator = truncator
        self._window: list[list[Item]] = []  # kept turns, newest first
        self._kept_msgs = 0
        self._kept_tokens = 0
        self._pending = _Turn([])
        self._have_current = False
        self._done = False
        self._stop_reason = "history exhausted"
        self._rows_read = 0
        self._truncation: Truncation | None = None
        self._dropped_through: int | None = None

    @property
    def done(self) -> bool:
        """True once the window is decided; further pages are not needed."""
        return self._done

    def feed(self, page: Sequence[Item], *, exhausted: bool) -> None:
        """Consider the next page of history, newest first.

        ``exhausted`` says that no older history exists after this page.
        """
        if self._done:
            return
        pinned_seqs = self._pinned_seqs
        pending = self._pending
        items = pending.items
        for n, item in enumerate(page, 1):
            if item.seq in pinned_seqs:
                continue  # kept anyway, and it does not split turns
            items.append(item)
            pending.cost += item.cost
            if item.message.role == "user":
                # (a new _Turn: made without its __init__, a turn of every user message)
                turn, pending = pending, _new_turn(_Turn)
                pending.items = []
                pending.cost = 0
                self._pending = pending
                items.reverse()  # the turn's, oldest first
                items = pending.items
                if not self._offer(turn):
                    self._rows_read += n
                    return
            elif pending.cost > self._free and self._have_current:
                # the turn read so far already does not fit: its older rows cannot
                # make it fit, so it is dropped without reading them (when the
                # reason it is dropped for is already certain too)
                reason = self._certain_reason(len(items), pending.cost)
                if reason is not None:
                    self._finish(items[0].seq, reason)
                    self._rows_read += n
                    return
        self._rows_read += len(page)
        if exhausted:
            # What is left before the oldest user message is the conversation's
            # preamble (e.g. an assistant greeting): keep it only whole, and only
            # because nothing precedes it, so it is not an orphan.
            if self._pending.items:
                turn, self._pending = self._pending, _Turn([])
                turn.items.reverse()
                self._have_current = True  # no user message left: the preamble is optional
                if turn.items[0].message.role != "tool" and self._offer(turn):
                    self._finish(None, "history exhausted")
                    return
                self._finish(turn.items[-1].seq, self._stop_reason)
                return
            self._finish(None, "history exhausted")

    def _offer(self, turn: _Turn) -> bool:
        """Try to keep ``turn``; returns False (and finishes) when selection is over."""
        if not self._have_current:
            self._have_current = True
            return self._keep_current(turn)
        if (
            self._max_messages is not None
            and self._kept_msgs + len(turn.items) > self._max_messages
        ):
            self._finish(turn.items[-1].seq, "max_messages")
            return False
        if (
            self._max_history_tokens is not None
            and self._kept_tokens + turn.cost > self._max_history_tokens
        ):
            self._finish(turn.items[-1].seq, "max_history_tokens")
            return False
        if self._low_water is not None and self._kept_tokens + turn.cost > self._low_water:
            self._finish(turn.items[-1].seq, "low water")
            return False
        # Room for the summary is held back while older history may still be
        # dropped; the turn that starts the history needs none.
        reserve = self._summary_reserve
        if reserve and self._starts_history(turn):
            reserve = 0
        if turn.cost > self._free - reserve:
            self._finish(turn.items[-1].seq, "budget")
            return False
        # (_take, inline: this runs once per kept turn)
        self._window.append(turn.items)
        self._kept_msgs += len(turn.items)
        self._kept_tokens += turn.cost
        self._free -= turn.cost
        return True

    def _certain_reason(self, count: int, cost: int) -> str | None:
        """Why :meth:`_offer` will drop a turn of which ``count`` messages costing
        ``cost`` (more than the free budget) are read, or None while its older
        messages could still change the answer. Its checks in its order: a cap
        the part already exceeds is the reason; one it does not exceed yet is
        undecided; past the caps, the budget (the whole turn costs at least the
        part, and the summary's reserve only lowers what is free)."""
        if self._max_messages is not None:
            if self._kept_msgs + count <= self._max_messages:
                return None
            return "max_messages"
        if self._max_history_tokens is not None:
            if self._kept_tokens + cost <= self._max_history_tokens:
                return None
            return "max_history_tokens"
        if self._low_water is not None:
            return "low water" if self._kept_tokens + cost > self._low_water else None
        return "budget"

    def _starts_history(self, turn: _Turn) -> bool:
        # seqs of a lineage are contiguous from 1: the turn starts the history
        # when every older seq is pinned.
        first = turn.items[0].seq
        if first - 1 > len(self._pinned_seqs):  # (the usual answer, without the count)
            return False
        return sum(1 for s in self._pinned_seqs if s < first) == first - 1

    def _keep_current(self, turn: _Turn) -> bool:
        if turn.cost <= self._free:
            self._take(turn)
            return True
        user = turn.items[0]
        rest = turn.cost - user.cost
        room = self._free - rest
        # Truncating leaves nothing older in the window: hold back the summary's
        # room when there is older history to summarize (and the message still
        # gets some room), or the summary would not fit beside it.
        reserve = 0 if self._starts_history(turn) else self._summary_reserve
        if room - reserve > 0:
            room -= reserve
        if self._truncate is None or self._truncator is None or room <= 0:
            required = self._budget - self._free + turn.cost
            raise ContextOverflowError(
                f"the newest turn (user message seq {user.seq} and {len(turn.items) - 1} "
                f"message(s) after it) needs {turn.cost} tokens, {required} with the pinned "
                f"messages and overhead, but the budget is {self._budget}; raise the budget "
                "or allow truncation (truncate='head'|'tail'|'middle')",
                budget=self._budget,
                required=required,
                part="newest",
            )
        message = user.message
        if type(message) is WireText:
            message = message.message()  # (a turn's lean read: the message it stands for)
        shortened = self._truncator(message, room, self._truncate)
        if shortened is None:
            raise ContextOverflowError(
                f"the newest user message (seq {user.seq}, {user.cost} tokens) cannot be "
                f"truncated to fit the {room} tokens left of the budget of {self._budget}",
                budget=self._budget,
                required=self._budget - self._free + turn.cost,
                part="newest",
            )
        msg, cost = shortened
        self._truncation = Truncation(user.seq, self._truncate, user.cost, cost)
        turn.items[0] = Item(msg, user.seq, cost, user.exact)
        turn.cost = rest + cost
        self._take(turn)
        # Nothing older can fit after truncating the newest message.
        self._finish(user.seq - 1 if user.seq > 1 else None, "budget")
        return False

    def _take(self, turn: _Turn) -> None:
        self._window.append(turn.items)
        self._kept_msgs += len(turn.items)
        self._kept_tokens += turn.cost
        self._free -= turn.cost

    def _finish(self, dropped_through: int | None, reason: str) -> None:
        self._done = True
        self._stop_reason = reason
        self._dropped_through = dropped_through

    def result(self) -> Selection:
        """The decided selection (call once :attr:`done`, or after feeding the last page)."""
        if not self._done:
            raise RuntimeError("selection is not finished: feed more pages")
        window = [item for turn in reversed(self._window) for item in turn]
        dropped_count = 0
        if self._dropped_through is not None:
            # seqs of a lineage are contiguous from 1, so the dropped history is
            # every seq up to dropped_through that is not pinned.
            pinned_before = sum(1 for s in self._pinned_seqs if s <= self._dropped_through)
            dropped_count = self._dropped_through - pinned_before
        return Selection(
            pinned=list(self._pinned),
            window=window,
            budget=self._budget,
            overhead=self._overhead,
            dropped_through=self._dropped_through if dropped_count else None,
            dropped_count=dropped_count,
            truncation=self._truncation,
            stop_reason=self._stop_reason if dropped_count else "history exhausted",
            rows_read=self._rows_read,
            summary_reserve=self._summary_reserve if dropped_count else 0,
        )
