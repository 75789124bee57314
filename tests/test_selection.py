"""The pure selection engine: invariants checked on random conversations (hypothesis)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from convo import ContextOverflowError, Message
from convo._context.selection import Item, Selection, Selector
from convo._messages import FunctionCall, ToolCall


def _conversation(draw: st.DrawFn) -> list[Item]:
    """A random history: optional system prompt, turns with tool-call groups, pinned messages."""
    items: list[Item] = []

    def add(msg: Message, cost: int) -> None:
        items.append(Item(msg, len(items) + 1, cost))

    if draw(st.booleans()):
        add(Message.system("sys"), draw(st.integers(1, 50)))
    if draw(st.booleans()):
        add(Message.assistant("hello, how can I help?"), draw(st.integers(1, 30)))
    for t in range(draw(st.integers(0, 12))):
        add(Message.user(f"u{t}"), draw(st.integers(1, 120)))
        for g in range(draw(st.integers(0, 2))):
            calls = [
                ToolCall(id=f"c{t}_{g}_{k}", function=FunctionCall(name="f", arguments="{}"))
                for k in range(draw(st.integers(1, 3)))
            ]
            add(Message.assistant(tool_calls=calls), draw(st.integers(1, 40)))
            for c in calls:
                add(Message.tool("r", tool_call_id=c.id), draw(st.integers(1, 80)))
        if draw(st.booleans()):
            add(Message.assistant(f"a{t}"), draw(st.integers(1, 120)))
        if draw(st.integers(0, 9)) == 0:
            add(Message.developer("dev note"), draw(st.integers(1, 20)))
    return items


conversations = st.composite(_conversation)()


def _run(items: list[Item], pinned_extra: set[int], page: int, **kw: object) -> Selection:
    pinned = [i for i in items if i.message.role in ("system", "developer") or i.seq in pinned_extra]
    sel = Selector(pinned=pinned, **kw)  # type: ignore[arg-type]
    newest_first = list(reversed(items))
    pos = 0
    while not sel.done:
        chunk = newest_first[pos : pos + page]
        pos += page
        sel.feed(chunk, exhausted=pos >= len(newest_first))
    return sel.result()


def _check_invariants(items: list[Item], res: Selection, budget: int, overhead: int) -> None:
    pinned_seqs = {i.seq for i in res.pinned}
    kept = sorted([*pinned_seqs, *(i.seq for i in res.window)])
    # 1. pinned always kept, no duplicates
    assert len(kept) == len(set(kept))
    # budget respected (with the summary reserve held back only when something was dropped)
    assert overhead + res.pinned_tokens + res.history_tokens <= budget
    history = [i for i in items if i.seq not in pinned_seqs]
    win = [i.seq for i in res.window]
    # 2. the window is a contiguous suffix of history, whole turns, never starting on assistant/tool
    assert win == [i.seq for i in history[len(history) - len(win) :]]
    if win and res.dropped_count:
        assert res.window[0].message.role == "user"
    if res.window:
        assert res.window[0].message.role != "tool"
    # tool calls and results together
    sent = [i for i in items if i.seq in set(kept)]
    answered = {i.message.tool_call_id for i in sent if i.message.role == "tool"}
    called = {c.id for i in sent for c in (i.message.tool_calls or [])}
    assert answered == called
    # 3. the newest user message is kept
    users = [i.seq for i in history if i.message.role == "user"]
    if users:
        assert users[-1] in kept
    # dropped accounting
    assert res.dropped_count == len(history) - len(win)
    if res.dropped_count:
        assert res.dropped_through == history[len(history) - len(win) - 1].seq


@settings(max_examples=400, deadline=None)
@given(
    items=conversations,
    budget=st.integers(1, 1500),
    overhead=st.integers(0, 20),
    page=st.integers(1, 7),
    max_messages=st.none() | st.integers(1, 20),
    max_history_tokens=st.none() | st.integers(1, 1000),
    reserve=st.sampled_from([0, 0, 50]),
    low_water=st.none() | st.integers(0, 800),
    data=st.data(),
)
def test_invariants_hold_on_every_build(
    items: list[Item],
    budget: int,
    overhead: int,
    page: int,
    max_messages: int | None,
    max_history_tokens: int | None,
    reserve: int,
    low_water: int | None,
    data: st.DataObject,
) -> None:
    user_seqs = [i.seq for i in items if i.message.role == "user"]
    extra = set(data.draw(st.lists(st.sampled_from(user_seqs), max_size=2))) if user_seqs else set()
    try:
        res = _run(
            items, extra, page, budget=budget, overhead=overhead, max_messages=max_messages,
            max_history_tokens=max_history_tokens, summary_reserve=reserve, low_water=low_water,
        )
    except ContextOverflowError as exc:
        # only legitimate when what must be kept does not fit, and the numbers say so
        assert exc.budget == budget
        assert exc.required > budget
        pinned_cost = sum(i.cost for i in items if i.message.role in ("system", "developer") or i.seq in extra)
        if exc.part in ("system", "pinned"):
            assert exc.required == overhead + pinned_cost
        else:
            assert exc.part == "newest"
        return
    _check_invariants(items, res, budget, overhead)
    # 4. caps bind optional history; the current turn is kept whatever its size
    user_idx = [k for k, i in enumerate(res.window) if i.message.role == "user"]
    current = res.window[user_idx[-1]:] if user_idx else []
    if max_messages is not None and len(res.window) > max_messages:
        assert res.window == current
    if max_history_tokens is not None and res.history_tokens > max_history_tokens:
        assert res.window == current
    # 6. the low-water mark binds the same way, and says so when it stopped the selection
    if low_water is not None and res.history_tokens > low_water:
        assert res.window == current
    if res.stop_reason == "low water":
        assert low_water is not None and res.dropped_count > 0
        assert res.history_tokens <= low_water or res.window == current
    # the low-water window is the newest part of the window kept without it
    if low_water is not None:
        without = _run(
            items, extra, page, budget=budget, overhead=overhead, max_messages=max_messages,
            max_history_tokens=max_history_tokens, summary_reserve=reserve,
        )
        assert [i.seq for i in without.window[len(without.window) - len(res.window):]] == [
            i.seq for i in res.window
        ]


def test_newest_turn_too_big_names_the_numbers() -> None:
    items = [Item(Message.system("s"), 1, 10), Item(Message.user("big"), 2, 500)]
    with pytest.raises(ContextOverflowError) as err:
        _run(items, set(), 8, budget=100, overhead=3)
    assert err.value.part == "newest"
    assert "500" in str(err.value) and "100" in str(err.value)


def test_system_prompt_over_budget() -> None:
    items = [Item(Message.system("s"), 1, 200), Item(Message.user("u"), 2, 5)]
    with pytest.raises(ContextOverflowError) as err:
        _run(items, set(), 8, budget=100, overhead=3)
    assert (err.value.part, err.value.required, err.value.budget) == ("system", 203, 100)


def test_zero_budget() -> None:
    with pytest.raises(ContextOverflowError) as err:
        Selector(budget=0, overhead=3, pinned=[])
    assert err.value.part == "budget"


def test_truncation_of_newest_user_message() -> None:
    items = [Item(Message.system("s"), 1, 10), Item(Message.user("x" * 100), 2, 500)]

    def shorten(msg: Message, max_cost: int, mode: str) -> tuple[Message, int]:
        return msg.model_copy(update={"content": "x"}), max_cost

    res = _run(items, set(), 8, budget=100, overhead=3, truncate="tail", truncator=shorten)
    assert res.truncation is not None
    assert (res.truncation.original_tokens, res.truncation.kept_tokens) == (500, 87)
    assert res.history_tokens == 87


def test_reads_only_the_pages_it_needs() -> None:
    items = [Item(Message.system("s"), 1, 10)]
    for k in range(1000):
        role = "user" if k % 2 == 0 else "assistant"
        items.append(Item(Message(role=role, content="m"), k + 2, 100))
    res = _run(items, set(), 16, budget=1000, overhead=3)
    assert res.rows_read <= 16
    assert len(res.window) == 8 and res.dropped_count == 1000 - 8


def _turns(*costs: int) -> list[Item]:
    """user, assistant, user, ... with these costs, seqs from 1."""
    roles = ["user", "assistant"]
    return [Item(Message(role=roles[k % 2], content=f"m{k}"), k + 1, c) for k, c in enumerate(costs)]


def test_an_orphan_tool_result_before_the_first_user_message_is_dropped() -> None:
    items = [Item(Message.tool("r", tool_call_id="c1"), 1, 5), Item(Message.user("u"), 2, 5)]
    res = _run(items, set(), 8, budget=100, overhead=3)
    assert [i.seq for i in res.window] == [2]
    assert (res.dropped_count, res.dropped_through, res.stop_reason) == (1, 1, "history exhausted")


def test_result_is_only_available_once_selection_is_done() -> None:
    sel = Selector(budget=100, overhead=3, pinned=[])
    assert sel.done is False
    with pytest.raises(RuntimeError, match=r"^selection is not finished: feed more pages$"):
        sel.result()
    sel.feed(_turns(5), exhausted=True)
    assert sel.done is True and sel.result().truncation is None


def test_the_summary_reserve_is_zero_by_default_and_reported_when_used() -> None:
    items = _turns(15, 10, 10, 10, 10)
    # seqs 3-5 fit exactly: with no reserve asked for, nothing is held back
    res = _run(items, set(), 8, budget=33, overhead=3)
    assert [i.seq for i in res.window] == [3, 4, 5] and res.summary_reserve == 0
    res = _run(items, set(), 8, budget=53, overhead=3, summary_reserve=20)
    assert [i.seq for i in res.window] == [3, 4, 5] and res.summary_reserve == 20
    res = _run(items, set(), 8, budget=1000, overhead=3, summary_reserve=20)
    assert res.dropped_count == 0 and res.summary_reserve == 0  # nothing to summarize


def test_truncation_needs_a_truncator() -> None:
    items = [Item(Message.user("x" * 100), 1, 500)]
    with pytest.raises(ContextOverflowError) as err:
        _run(items, set(), 8, budget=100, overhead=3, truncate="head")
    assert err.value.part == "newest"


class _WholeTurns(Selector):
    """The selector as it was before it dropped a turn on its part read: every turn
    is read whole before it is offered (the reference for the early stop)."""

    def _certain_reason(self, count: int, cost: int) -> str | None:
        return None


@settings(max_examples=300, deadline=None)
@given(
    items=conversations,
    budget=st.integers(1, 1500),
    page=st.integers(1, 7),
    max_messages=st.none() | st.integers(1, 20),
    max_history_tokens=st.none() | st.integers(1, 1000),
    reserve=st.sampled_from([0, 0, 50]),
    low_water=st.none() | st.integers(0, 800),
)
def test_a_turn_dropped_on_its_part_read_is_dropped_as_when_read_whole(
    items: list[Item], budget: int, page: int, max_messages: int | None,
    max_history_tokens: int | None, reserve: int, low_water: int | None,
) -> None:
    kw = {"budget": budget, "overhead": 3, "max_messages": max_messages,
          "max_history_tokens": max_history_tokens, "summary_reserve": reserve,
          "low_water": low_water}
    outcomes = []
    for cls in (Selector, _WholeTurns):
        pinned = [i for i in items if i.message.role in ("system", "developer")]
        newest_first = list(reversed(items))
        pos = 0
        try:
            sel = cls(pinned=pinned, **kw)  # type: ignore[arg-type]
            while not sel.done:
                pos += page
                sel.feed(newest_first[pos - page : pos], exhausted=pos >= len(newest_first))
        except ContextOverflowError as exc:
            outcomes.append((exc.part, exc.required))
            continue
        res = sel.result()
        outcomes.append((
            [i.seq for i in res.window], res.dropped_through, res.dropped_count, res.stop_reason,
            res.summary_reserve,
        ))
        if cls is Selector:
            early_rows = res.rows_read
        else:
            assert early_rows <= res.rows_read
    assert outcomes[0] == outcomes[1]


def test_a_turn_that_does_not_fit_is_dropped_before_its_older_messages_are_read() -> None:
    # user / assistant turns of 100 tokens each message; 3 turns fit a budget of 603
    items = _turns(*[100] * 20)
    res = _run(items, set(), 20, budget=603, overhead=3)
    assert [i.seq for i in res.window] == [15, 16, 17, 18, 19, 20]
    assert (res.dropped_through, res.stop_reason) == (14, "budget")
    # the assistant message 14 alone is over what is left: its user message 13 is not read
    assert res.rows_read == 7


def test_a_turn_that_exactly_fits_is_read_whole_and_kept() -> None:
    items = _turns(*[100] * 20)
    res = _run(items, set(), 20, budget=803, overhead=3)
    assert [i.seq for i in res.window] == list(range(13, 21))
    assert res.rows_read == 9  # 8 kept, then the assistant message 12, over the rest


def test_a_capped_selection_reads_on_until_its_reason_is_certain() -> None:
    # the part read (one assistant message of 300) is over the free budget but within
    # the history cap: the whole turn could still exceed the cap, the reason it
    # stops for, so the turn is read whole
    items = _turns(100, 300, 100, 100)
    res = _run(items, set(), 20, budget=303, overhead=3, max_history_tokens=550)
    assert [i.seq for i in res.window] == [3, 4]
    assert (res.stop_reason, res.rows_read) == ("max_history_tokens", 4)
    # past the cap already: certain at once
    res = _run(items, set(), 20, budget=303, overhead=3, max_history_tokens=250)
    assert (res.stop_reason, res.rows_read) == ("max_history_tokens", 3)
    res = _run(items, set(), 20, budget=303, overhead=3, max_messages=2)
    assert (res.stop_reason, res.rows_read) == ("max_messages", 3)
    res = _run(items, set(), 20, budget=303, overhead=3, max_messages=3)
    assert (res.stop_reason, res.rows_read) == ("max_messages", 4)
    res = _run(items, set(), 20, budget=1000, overhead=3, low_water=250)
    assert (res.stop_reason, res.rows_read) == ("low water", 4)
    res = _run(items, set(), 20, budget=303, overhead=3, low_water=250)
    assert (res.stop_reason, res.rows_read) == ("low water", 3)
    # a low-water mark above what is free: not certain, and the budget is the reason
    res = _run(items, set(), 20, budget=303, overhead=3, low_water=1000)
    assert (res.stop_reason, res.rows_read) == ("budget", 4)


def test_a_part_that_fills_the_free_budget_exactly_is_read_on() -> None:
    # the assistant message takes exactly what is left; its user message costs
    # nothing (a cost model may say so): the whole turn fits
    items = [Item(Message.user("u1"), 1, 0), Item(Message.assistant("a1"), 2, 100),
             Item(Message.user("u2"), 3, 100)]
    res = _run(items, set(), 20, budget=203, overhead=3)
    assert [i.seq for i in res.window] == [1, 2, 3]


def test_a_part_that_reaches_a_cap_exactly_is_read_on() -> None:
    # the assistant message (100) is over the 50 tokens left, and with the 100 kept it
    # is exactly at the history cap or the low-water mark, not over it: its user
    # message (which costs nothing here) is read before the turn is judged, and the
    # budget is what drops it
    items = [Item(Message.user("u1"), 1, 0), Item(Message.assistant("a1"), 2, 100),
             Item(Message.user("u2"), 3, 100)]
    for cap in ({"max_history_tokens": 200}, {"low_water": 200}):
        res = _run(items, set(), 20, budget=153, overhead=3, **cap)
        assert [i.seq for i in res.window] == [3]
        assert (res.stop_reason, res.dropped_through, res.rows_read) == ("budget", 2, 3)


@pytest.mark.parametrize("page", [1, 2, 3, 5])
def test_rows_read_add_up_across_pages(page: int) -> None:
    # the same selections as above, fed in short pages: the rows read are counted
    # over every page, whichever way the selection stops (a part over the free
    # budget, a whole turn over a cap)
    items = _turns(*[100] * 20)
    assert _run(items, set(), page, budget=603, overhead=3).rows_read == 7
    assert _run(items, set(), page, budget=803, overhead=3).rows_read == 9
    res = _run(_turns(100, 300, 100, 100), set(), page, budget=303, overhead=3,
               max_history_tokens=550)
    assert (res.stop_reason, res.rows_read) == ("max_history_tokens", 4)


def test_a_turn_that_reaches_the_low_water_mark_exactly_is_kept() -> None:
    res = _run(_turns(100, 100, 100, 100), set(), 20, budget=1000, overhead=3, low_water=400)
    assert [i.seq for i in res.window] == [1, 2, 3, 4] and res.dropped_count == 0
    res = _run(_turns(100, 100, 100, 100), set(), 20, budget=1000, overhead=3, low_water=399)
    assert [i.seq for i in res.window] == [3, 4] and res.stop_reason == "low water"


def test_the_summary_reserve_is_held_back_from_every_turn_but_the_first() -> None:
    # 40 free after the newest turn: turn 3-4 (30) fits only without the reserve of 20,
    # which it does not start the history to be spared
    items = _turns(5, 5, 15, 15, 10)
    res = _run(items, set(), 20, budget=53, overhead=3, summary_reserve=20)
    assert [i.seq for i in res.window] == [5]
    assert (res.dropped_through, res.stop_reason, res.summary_reserve) == (4, "budget", 20)
    # turn 1-2 starts the history: nothing is left to summarize, it may use the reserve
    res = _run(_turns(15, 15, 10), set(), 20, budget=53, overhead=3, summary_reserve=20)
    assert [i.seq for i in res.window] == [1, 2, 3] and res.summary_reserve == 0


def test_a_truncated_first_message_needs_no_summary_reserve() -> None:
    def shorten(msg: Message, max_cost: int, mode: str) -> tuple[Message, int]:
        return msg.model_copy(update={"content": "x"}), max_cost

    # with older history to summarize, the message keeps the budget but the reserve
    older = [Item(Message.user("u"), 2, 10), Item(Message.assistant("a"), 3, 10)]
    for history, kept in (([], 87), (older, 67)):
        items = [Item(Message.system("s"), 1, 10), *history,
                 Item(Message.user("x" * 100), len(history) + 2, 500)]
        res = _run(items, set(), 8, budget=100, overhead=3, summary_reserve=20, truncate="tail",
                   truncator=shorten)
        assert res.truncation is not None and res.truncation.kept_tokens == kept
    # and only while the message still gets a token: else it takes the whole room
    items = [Item(Message.system("s"), 1, 10), *older, Item(Message.user("x" * 100), 4, 500)]
    for reserve, kept in ((86, 1), (87, 87), (100, 87)):
        res = _run(items, set(), 8, budget=100, overhead=3, summary_reserve=reserve,
                   truncate="tail", truncator=shorten)
        assert res.truncation is not None and res.truncation.kept_tokens == kept, reserve
