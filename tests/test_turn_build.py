"""A turn's build (``_build_for_turn``) against the public build: the same report and request.

A turn's chat build without a summarizer reads its messages lean on SQLite
(``convo._store.rows.lean_messages``: no timestamps, and a row whose only rare
columns are metadata, an idempotency key or reply info built as a plain
message). The turn hands none of those messages out; what it keeps (the report,
the rendered body, the token counts it stores with the run) must be exactly what
the public build gives.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from convo import ChatProfile, ContextBuilder, ContextError, Message, ReplyInfo, Store
from convo._messages import FunctionCall, ToolCall
from convo._records import WireText

MODEL = "gpt-4o-mini"


@pytest.fixture
def sqlite_store(make_db: Any) -> Any:
    store = Store(make_db("sqlite"))
    yield store
    store.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, make_db: Any) -> Any:
    s = Store(make_db(request.param))
    yield s
    s.close()


# (message, pinned, idempotency key, reply info)
Row = tuple[Message, bool, str | None, ReplyInfo | None]


@st.composite
def histories(draw: st.DrawFn) -> list[Row]:
    """Turns whose rows take every path of the lean read: plain text, replies with
    reply info, metadata, keys, names, content parts, tool calls and results, refusals."""
    words = st.text(alphabet="abcdefghij klmnopqrstuvwxyz.,!?JSON", min_size=1, max_size=200)
    meta = st.just({}) | st.fixed_dictionaries({"k": st.integers(0, 9)})
    out: list[Row] = []
    n = 0

    def key() -> str | None:
        nonlocal n
        n += 1
        return f"k{n}" if draw(st.integers(0, 3)) == 0 else None

    if draw(st.booleans()):
        out.append((Message.system("You are terse. " + draw(words)), False, None, None))
    if draw(st.integers(0, 3)) == 0:
        # (rendered as system under a rewriting profile: never a WireText)
        out.append((Message.developer("Answer in " + draw(words)), draw(st.booleans()), None,
                    None))
    for t in range(draw(st.integers(1, 8))):
        name = "ann" if draw(st.integers(0, 4)) == 0 else None
        if draw(st.integers(0, 5)) == 0:
            user = Message.user([{"type": "text", "text": draw(words)}], name=name)
        else:
            user = Message.user(draw(words), name=name, metadata=draw(meta))
        out.append((user, draw(st.integers(0, 8)) == 0, key(), None))
        for g in range(draw(st.integers(0, 1))):
            calls = [ToolCall(id=f"c{t}_{g}", function=FunctionCall(name="f", arguments="{}"))]
            out.append((Message.assistant(tool_calls=calls), False, key(), None))
            out.append((Message.tool(draw(words), tool_call_id=calls[0].id), False, key(), None))
        if draw(st.integers(0, 9)) == 0:
            reply = Message.assistant(refusal="no")
        else:
            reply = Message.assistant(draw(words), metadata=draw(meta))
        info = None
        if draw(st.booleans()):
            info = ReplyInfo(model=MODEL, finish_reason="stop", system_fingerprint="fp",
                             usage={"prompt_tokens": t, "completion_tokens": 3},
                             seed=draw(st.none() | st.integers(0, 9)))
        out.append((reply, draw(st.integers(0, 10)) == 0, key(), info))
    # (long at times: over a small budget, truncated when the builder may)
    out.append((Message.user(" ".join([draw(words)] * draw(st.integers(1, 12)))), False, None,
                None))
    return out


def _store(store: Any, history: list[Row]) -> str:
    conv = store.create_conversation(title="turn build")
    for message, pinned, key, info in history:
        store.append(conv.id, message, idempotency_key=key, reply=info,
                     pinned=True if pinned else None)
    return conv.id


def _both(store: Any, cid: str, **kw: Any) -> tuple[Any, Any, Any]:
    """The public build and the turn's build, each by a fresh builder of the same settings."""
    tools = kw.pop("tools", None)
    response_format = kw.pop("response_format", None)
    # the turn's first: it stores no counts (the turn stores them with its run), so
    # both read the same stored counts
    turn, counts = ContextBuilder(store, model=MODEL, **kw)._build_for_turn(
        cid, tools=tools, response_format=response_format, owner=None)
    public = ContextBuilder(store, model=MODEL, **kw).build(
        cid, tools=tools, response_format=response_format)
    return public, turn, counts


def _same(public: Any, turn: Any, counts: Any) -> None:
    assert turn.report.model_dump() == public.report.model_dump()
    assert turn.request() == public.request()
    assert turn.chat == public.chat and turn.prompt == public.prompt
    # the messages sent, as sent
    assert [m.to_openai() for m in turn.messages] == [m.to_openai() for m in public.messages]
    # and the lean values keep every field but those no build reads
    kept = ("role", "content", "name", "tool_calls", "refusal", "tool_call_id", "id",
            "conversation_id", "seq", "pinned")
    wire = ("role", "content", "id", "seq")
    assert len(turn.messages) == len(public.messages)
    for lean, whole in zip(turn.messages, public.messages, strict=True):
        if isinstance(lean, WireText):
            # a plain text row with its stored count: its role, text, seq and id
            assert [getattr(lean, f) for f in wire] == [getattr(whole, f) for f in wire]
            assert whole.role in ("system", "user", "assistant")
            assert type(whole.content) is str
            assert (whole.name, whole.tool_calls, whole.refusal, whole.tool_call_id) == (
                None, None, None, None)
        elif type(lean) is Message:
            # the newest user message, truncated from a WireText (sent as the public one)
            assert public.report.truncated is not None
            assert whole.seq == public.report.truncated.seq and whole.role == "user"
        else:
            assert [getattr(lean, f, None) for f in kept] == [getattr(whole, f, None) for f in kept]
    # the counts the turn stores with its run are those the public build stored
    assert (len(counts[1]) if counts else 0) == public.report.counted


@settings(max_examples=int(__import__("os").environ.get("CONVO_PROP_EXAMPLES", "80")),
          deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    history=histories(),
    budget=st.integers(60, 2500),
    rewrite=st.booleans(),
    json_mode=st.booleans(),
    tools=st.booleans(),
    truncate=st.sampled_from([None, None, "head", "middle"]),
)
def test_a_turns_build_gives_the_public_builds_report_and_request(
    sqlite_store: Any, history: list[Row], budget: int, rewrite: bool, json_mode: bool,
    tools: bool, truncate: Any,
) -> None:
    cid = _store(sqlite_store, history)
    kw: dict[str, Any] = {"budget": budget}
    if rewrite:
        kw["profile"] = ChatProfile.compatible()
    if truncate is not None:
        kw["truncate"] = truncate
    if json_mode:
        kw["response_format"] = {"type": "json_object"}
    if tools:
        kw["tools"] = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    try:
        public, turn, counts = _both(sqlite_store, cid, **dict(kw))
    except ContextError as exc:  # an overflow, or JSON mode without an instruction
        event(type(exc).__name__)
        # the public build refuses alike (the turn's ran first, in _both)
        with pytest.raises(type(exc)):
            ContextBuilder(sqlite_store, model=MODEL, budget=budget, truncate=truncate,
                           **({"profile": kw["profile"]} if rewrite else {})).build(
                cid, tools=kw.get("tools"), response_format=kw.get("response_format"))
        return
    # the lean read ran (its messages carry no timestamp; the newest is in its page: older
    # pages are read whole), and the public build's did not
    assert turn.messages[-1].created_at is None
    assert all(m.created_at is not None for m in public.messages)
    _same(public, turn, counts)
    # and again, from the counts the first builds stored (the public one's) and hints:
    # plain text rows are read as WireText values now
    public, turn, counts = _both(sqlite_store, cid, **dict(kw))
    _same(public, turn, counts)
    if any(isinstance(m, WireText) for m in turn.messages):
        event("WireText values")
    if public.report.truncated is not None:
        event("truncated")


def test_lean_messages_leave_out_what_a_build_never_reads(store: Any) -> None:
    """Both databases: the same report and body; on SQLite the turn's messages are lean
    (a reply with reply info, metadata and a key is read as a plain message)."""
    cid = _store(store, [
        (Message.system("Be brief."), False, None, None),
        (Message.user("hi", metadata={"a": 1}), False, "u1", None),
        (Message.assistant("hello"), False, "r1",
         ReplyInfo(model=MODEL, finish_reason="stop", usage={"prompt_tokens": 9})),
        (Message.user("more", name="ann"), False, None, None),
    ])
    public, turn, counts = _both(store, cid, budget=500)
    _same(public, turn, counts)
    reply = public.messages[2]
    assert reply.reply is not None and reply.idempotency_key == "r1"
    lean = turn.messages[2]
    if store.engine.dialect.name == "sqlite":
        assert lean.reply is None and lean.idempotency_key is None and lean.created_at is None
        assert turn.messages[1].metadata == {} and turn.messages[3].name == "ann"
    else:  # read whole
        assert lean == reply
    # again, with the counts the public build stored: on SQLite a plain text row with
    # its count is read as a WireText (role, text, seq, id), the reply with its reply
    # info, metadata and key too; a named message is read whole
    public, turn, counts = _both(store, cid, budget=500)
    _same(public, turn, counts)
    assert counts is None and public.report.counted == 0
    kinds = [type(m).__name__ for m in turn.messages]
    if store.engine.dialect.name == "sqlite":
        assert kinds == ["WireText", "WireText", "WireText", "StoredMessage"], kinds
        assert [(m.role, m.seq) for m in turn.messages[:3]] == [
            ("system", 1), ("user", 2), ("assistant", 3)]
    else:
        assert kinds == ["StoredMessage"] * 4, kinds
        assert turn.messages == public.messages


@pytest.mark.parametrize("mode", ["head", "tail", "middle"])
def test_a_turns_build_truncates_the_newest_message_as_the_public_build(
    store: Any, mode: Any
) -> None:
    """The newest user message read as a WireText (its count stored) is truncated as
    the public build truncates the stored message: the same report and request."""
    cid = _store(store, [
        (Message.system("Be brief."), False, None, None),
        (Message.user("a question"), False, None, None),
        (Message.assistant("an answer"), False, None, ReplyInfo(model=MODEL)),
        (Message.user("hello there, " * 150), False, None, None),
    ])
    for counted in (True, False):  # (the first builds count the messages; then stored)
        public, turn, counts = _both(store, cid, budget=120, truncate=mode)
        _same(public, turn, counts)
        assert public.report.truncated is not None and public.report.truncated.seq == 4
        assert (public.report.counted > 0) is counted
    if store.engine.dialect.name == "sqlite":
        assert type(turn.messages[-1]) is Message and type(turn.messages[0]) is WireText


def test_a_summarizing_or_completion_turn_reads_its_messages_whole(sqlite_store: Any) -> None:
    """A summarizer is given messages, a template renders them: those builds are not lean."""
    class Short:
        def summarize(self, messages: Any, *, previous: Any = None, max_tokens: int = 0) -> str:
            assert all(m.created_at is not None for m in messages)
            return "earlier: talk"

    cid = _store(sqlite_store, [
        (Message.user("word " * 80), False, None, None),
        (Message.assistant("ok " * 80), False, None, ReplyInfo(model=MODEL)),
        (Message.user("now"), False, None, None),
    ])
    for kw in ({"summarizer": Short(), "summary_max_tokens": 20}, {"mode": "completion"}):
        ctx, _ = ContextBuilder(sqlite_store, model=MODEL, budget=120, **kw)._build_for_turn(
            cid, tools=None, response_format=None, owner=None)
        stored = [m for m in ctx.messages if hasattr(m, "created_at")]  # (a summary is not)
        assert stored and all(m.created_at is not None for m in stored), kw
