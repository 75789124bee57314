"""What the store accepts at its limits, and what it guarantees around bad input.

The refusals themselves are in tests/test_hostile.py (each with the database
hashed before and after); here: values at the limits are accepted and read
back exactly, filters keep working for everyone after a refusal, metadata
filters match any key, every plan checks its arguments, and a context builds
on a read-only database. Every test runs on SQLite and PostgreSQL (sync and
async through the ``store`` fixture).
"""

from __future__ import annotations

import enum
import inspect
import math
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st

from convo import AsyncContextBuilder, ContextBuilder, StoreError, StoreInputError
from convo._store import context, core
from convo._store.async_store import AsyncStore
from convo._store.inputs import ARGUMENTS, JSON_DEPTH_MAX, SEARCH_MAX, checked
from convo._store.store import Store


class Colour(enum.StrEnum):
    RED = "red"


class Level(enum.IntEnum):
    HIGH = 3


class Index:
    """An integer that is not an int (numpy integers are like this): has ``__index__``."""

    def __init__(self, value: int) -> None:
        self.value = value

    def __index__(self) -> int:
        return self.value


def nested(levels: int) -> Any:
    value: Any = "bottom"
    for _ in range(levels):
        value = {"d": value}
    return value


async def test_values_at_the_limits_are_stored_and_read_back_exactly(store):
    meta = {
        "big": 2**63 - 1,
        "small": -(2**63),
        "float": -1234.5678,
        "tiny": 5e-324,
        "deep": nested(JSON_DEPTH_MAX - 1),
        "text": "tab\tnewline\n\x01\x1b[31m bell\x07 é 😀 \uffff",
        "colour": Colour.RED,
        "level": Level.HIGH,
    }
    conv = await store.create_conversation(title="\x1b]0;title\x07 \U0010ffff", metadata=meta)
    assert conv.metadata["colour"] == "red" and type(conv.metadata["colour"]) is str
    assert conv.metadata["level"] == 3 and type(conv.metadata["level"]) is int
    got = await store.get_conversation(conv.id)
    assert got.metadata == {**meta, "colour": "red", "level": 3}
    assert got.title == conv.title
    msg = await store.append(conv.id, {"role": "user", "content": meta["text"] * 3})
    assert (await store.get_message(conv.id, msg.seq)).content == meta["text"] * 3
    # integer-like values that are not ints, and the widest limits
    assert [m.seq for m in await store.messages(conv.id, after=Index(0), limit=Index(5))] == [1]
    page = await store.list_conversations(limit=2**63 - 1)
    assert [c.id for c in page.items] == [conv.id] and page.next_cursor is None
    assert await store.messages(conv.id, after=2**63 - 1, before=-(2**63)) == []
    assert [m.seq for m in await store.messages(conv.id, limit=2**63 - 1)] == [1]
    fork = await store.fork(conv.id, at=Index(1))
    assert fork.fork_seq == 1 and type(fork.fork_seq) is int
    # the longest search string (its LIKE pattern, escaped, stays within SQLite's limit)
    assert await store.search("%" * SEARCH_MAX) == []
    with pytest.raises(StoreInputError, match="at most 10000"):
        await store.search("%" * (SEARCH_MAX + 1))


async def test_nesting_limit_is_exact(store):
    await store.create_conversation(metadata={"x": nested(JSON_DEPTH_MAX - 1)})
    with pytest.raises(StoreInputError, match="nested more than 100 levels"):
        await store.create_conversation(metadata={"x": nested(JSON_DEPTH_MAX)})


async def test_a_refused_nan_leaves_metadata_filters_working_for_everyone(store):
    # Before: SQLite stored {"score": NaN}, and every later unscoped metadata
    # filter failed with "malformed JSON", for every user of the database.
    keep = await store.create_conversation(owner="bob", metadata={"topic": "x"})
    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises(StoreInputError, match="not a JSON number"):
            await store.create_conversation(owner="eve", metadata={"score": bad})
    page = await store.list_conversations(metadata={"topic": "x"})
    assert [c.id for c in page.items] == [keep.id]


async def test_tool_call_arguments_are_text_and_stored_verbatim(store):
    # Arguments are a JSON *string* on the wire (models write invalid JSON too):
    # NaN inside that text is text, and cannot poison the JSON columns.
    conv = await store.create_conversation(metadata={"k": 1})
    weird = '{"x": NaN, "y": Infinity, "z": [1, 2'
    stored = await store.append(conv.id, {
        "role": "assistant",
        "tool_calls": [{"id": "c1", "function": {"name": "f", "arguments": weird}}],
    })
    assert stored.tool_calls[0].function.arguments == weird
    assert (await store.get_message(conv.id, 1)).tool_calls[0].function.arguments == weird
    assert [c.id for c in (await store.list_conversations(metadata={"k": 1})).items] == [conv.id]


KEYS = ["é", 'say "hi"', "back\\slash", "a.b", "$", "[0]", "😀", "x\x01y", "", " "]


async def test_metadata_filters_match_any_key(store):
    # SQLite's JSON paths cannot spell every key (quotes, backslashes, and before
    # 3.45 any non-ASCII key, stored \u-escaped): "é" never matched before.
    convs = {}
    for i, key in enumerate(KEYS):
        convs[key] = await store.create_conversation(metadata={key: i, "other": [key]})
    for i, key in enumerate(KEYS):
        page = await store.list_conversations(metadata={key: i})
        assert [c.id for c in page.items] == [convs[key].id], key
        page = await store.list_conversations(metadata={"other": [key]})
        assert [c.id for c in page.items] == [convs[key].id], key
        assert (await store.list_conversations(metadata={key: str(i)})).items == []  # type-exact


async def test_sqlite_rows_written_before_the_checks_do_not_break_listing(make_db):
    # Only SQLite can hold such rows (PostgreSQL's JSONB always refused NaN).
    url = make_db("sqlite")
    with Store(url) as store:
        ok = store.create_conversation(metadata={"topic": "x"})
        legacy = store.create_conversation()
        with store.engine.begin() as conn:  # what an older convo wrote
            conn.execute(
                sa.text("UPDATE conversations SET metadata = :m WHERE id = :id"),
                {"m": '{"score": NaN}', "id": legacy.id},
            )
        assert [c.id for c in store.list_conversations(metadata={"topic": "x"}).items] == [ok.id]
    astore = AsyncStore(url)
    try:
        page = await astore.list_conversations(metadata={"topic": "x"})
        assert [c.id for c in page.items] == [ok.id]
    finally:
        await astore.close()


PLANS = [
    "create_conversation", "get_conversation", "update_conversation", "delete_conversation",
    "list_conversations", "append", "append_many", "messages", "get_message", "count_messages",
    "fork", "search", "tail", "context_start", "pinned", "set_pinned", "save_token_counts",
    "add_summary", "latest_summary",
]


#: The modules of the store's plans, by the name the shells import them under.
PLAN_MODULES = {"core": core, "context": context}


def _plan(name):
    found = [getattr(m, name) for m in PLAN_MODULES.values()
             if getattr(getattr(m, name, None), "__module__", None) == m.__name__]
    assert len(found) == 1, f"{name}: defined in {len(found)} plan modules"
    return found[0]


@pytest.mark.parametrize("name", PLANS)
def test_every_store_plan_checks_its_arguments(name):
    plan = _plan(name)
    assert hasattr(plan, "__wrapped__"), f"{name} is not @checked"
    for param in inspect.signature(plan.__wrapped__).parameters:
        assert param in ARGUMENTS


@pytest.mark.parametrize("shell", [Store, AsyncStore])
def test_every_public_store_method_runs_a_checked_plan(shell):
    # A plan added later (a new table's functions) must check its arguments too.
    found = set()
    for name, method in inspect.getmembers(shell, inspect.isfunction):
        source = inspect.getsource(method)
        for alias, module in PLAN_MODULES.items():
            for plan_name in PLANS + [n for n in dir(module) if f"{alias}.{n}(" in source]:
                if f"{alias}.{plan_name}(" not in source or plan_name == "append_mode":
                    continue
                plan = getattr(module, plan_name)
                assert hasattr(plan, "__wrapped__"), (
                    f"{shell.__name__}.{name} runs {alias}.{plan_name}, whose arguments nothing "
                    "checks: decorate it with @checked and give each of its parameters a rule "
                    "in convo/_store/inputs.py ARGUMENTS"
                )
                found.add(plan_name)
    assert set(PLANS) <= found


def test_checked_binds_and_checks_arguments_as_the_plan_declares_them():
    """@checked writes the checking function out for the plan's signature: every
    argument, positional or keyword, given or default, passes its rule before the
    plan runs; None passes only where the annotation admits it; a missing, unknown
    or repeated argument is a TypeError and the plan does not run."""
    ran: list[dict[str, Any]] = []

    @checked
    def plan(conversation_id: str, message: Any, *, limit: int = 50, owner: str | None = None,
             seq: int | None = None, dialect: str) -> str:
        ran.append({"conversation_id": conversation_id, "message": message, "limit": limit,
                    "owner": owner, "seq": seq, "dialect": dialect})
        return "ran"

    assert plan("c", {"x": 1}, dialect="d") == "ran"
    assert ran.pop() == {"conversation_id": "c", "message": {"x": 1}, "limit": 50, "owner": None,
                         "seq": None, "dialect": "d"}
    assert plan(conversation_id="c", message=None, limit=Index(3), seq=Index(-4), owner="o",
                dialect="d") == "ran"
    got = ran.pop()
    assert (got["limit"], got["seq"], got["owner"]) == (3, -4, "o")
    assert type(got["limit"]) is int and type(got["seq"]) is int
    for bad, match in [
        ({"conversation_id": "a\x00"}, "conversation_id contains a NUL"),
        ({"conversation_id": None}, "conversation_id must be a string"),
        ({"limit": 0}, "limit must be between 1"),
        ({"limit": None}, "limit must be an integer"),
        ({"owner": "o" * 256}, "owner is 256 characters"),
        ({"seq": True}, "seq must be an integer, not a bool"),
    ]:
        with pytest.raises(StoreInputError, match=match):
            plan(**{"conversation_id": "c", "message": None, "dialect": "d", **bad})
    for args, kwargs in [
        (("c", None), {}),  # dialect missing
        (("c", None), {"dialect": "d", "bogus": 1}),
        (("c", None, 5), {"dialect": "d"}),  # limit is keyword-only
        (("c", None), {"dialect": "d", "conversation_id": "c"}),
    ]:
        with pytest.raises(TypeError):
            plan(*args, **kwargs)
    assert ran == []
    assert inspect.signature(plan) == inspect.signature(plan.__wrapped__)
    assert plan.__name__ == "plan"


class Text(str):
    pass


@settings(max_examples=300, deadline=None)
@given(
    value=st.one_of(
        st.text(st.characters(codec=None, exclude_categories=()), max_size=8),
        st.text(st.sampled_from("ab\x00é"), min_size=60, max_size=300),
        st.sampled_from(["a\x00", "\x00" * 70, "x" * 64, "x" * 65, "x" * 255, "x" * 256,
                         Text("abc"), Text("a\x00"),
                         b"abc", 3, None, Colour.RED]),
    ),
)
def test_checked_text_shortcut_gives_what_the_rule_gives(value: Any) -> None:
    """@checked skips the text rules' call for ASCII text without NUL within the
    limit: every value gets what the rule itself gives, the same value (the very
    object) or the same error."""

    @checked
    def plan(conversation_id: str, *, owner: str | None = None, encoding: str = "e",
             dialect: str) -> tuple[Any, Any, Any]:
        return conversation_id, owner, encoding

    def outcome(make: Any) -> Any:
        try:
            return ("ok", make())
        except StoreInputError as exc:
            return ("refused", str(exc))

    for position, name in enumerate(("conversation_id", "owner", "encoding")):
        args = {"conversation_id": "c", "owner": "o", "encoding": "e", name: value}
        got = outcome(lambda a=args, i=position: plan(**a, dialect="d")[i])
        want = ("ok", None) if value is None and name == "owner" else outcome(
            lambda n=name: ARGUMENTS[n](value, n))
        assert got == want
        if got[0] == "ok":
            assert got[1] is want[1]


def test_checked_refuses_a_parameter_it_cannot_check():
    with pytest.raises(TypeError, match="no input rule for colour"):
        checked(lambda conversation_id, colour: None)
    with pytest.raises(TypeError, match="must be a named parameter"):
        checked(lambda *message: None)
    with pytest.raises(TypeError, match="must be a named parameter"):
        checked(lambda **message: None)


def test_a_store_plan_given_an_unknown_argument_raises_type_error():
    with pytest.raises(TypeError, match="unexpected keyword argument 'bogus'"):
        core.append("c", {"role": "user", "content": "x"}, idempotency_key=None, pinned=None,
                    reply=None, owner=None, dialect="sqlite", bogus=1)


# --- read-only databases --------------------------------------------------------------------


def read_only_url(backend: str, url: sa.URL) -> sa.URL:
    """The same database, opened so that it refuses every write."""
    if backend == "sqlite":
        # mode=ro is enforced by SQLite itself (file permissions are not, for root).
        return sa.make_url(f"sqlite:///file:{url.database}?mode=ro&uri=true")
    # a PostgreSQL hot standby refuses writes the same way (SQLSTATE 25006)
    return url.update_query_dict({"options": "-c default_transaction_read_only=on"})


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_a_context_builds_on_a_read_only_database(backend, mode, make_db):
    url = make_db(backend)
    with Store(url) as writable:
        conv = writable.create_conversation()
        writable.append_many(conv.id, [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "What is a read-only database?"},
        ])
        with writable.engine.connect() as conn:
            if backend == "sqlite":  # fold the WAL in, so the read-only file holds everything
                conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    ro = read_only_url(backend, url)
    for _ in range(2):  # and again: nothing was saved, so it counts again
        if mode == "sync":
            with Store(ro) as store:
                built = ContextBuilder(store, model="gpt-4o-mini").build(conv.id)
        else:
            astore = AsyncStore(ro)
            try:
                built = await AsyncContextBuilder(astore, model="gpt-4o-mini").build(conv.id)
            finally:
                await astore.close()
        assert built.report.kept_seqs == [1, 2] and built.report.prompt_tokens > 0
    with Store(url) as writable:
        assert writable.count_messages(conv.id) == 2
        with writable.engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT count(*) FROM message_tokens").scalar() == 0
    # only the cache write is skipped: a real write still fails, loudly
    with Store(ro) as store, pytest.raises(StoreError) as failed:
        store.append(conv.id, {"role": "user", "content": "lost?"})
    assert not isinstance(failed.value, StoreInputError)
    with Store(url) as writable:
        assert writable.count_messages(conv.id) == 2

