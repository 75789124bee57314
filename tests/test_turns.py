"""Turns end to end: Chat / AsyncChat against the fake backend, chat and completion mode.

Every test runs four times (SQLite / PostgreSQL x sync / async, see
``turns_support.env``); tests taking ``path`` run again over the fake's real
loopback HTTP server. The run record is checked against what the fake
actually received, byte for byte.
"""

# ruff: noqa: F811 - the env/path fixtures are imported, then named as test arguments

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from turns_support import MODEL, Env, Tap, env, path  # noqa: F401 - fixtures

from convo import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatProfile,
    CompletionChunk,
    ConfigurationError,
    ContextError,
    ConversationNotFound,
    FunctionCall,
    InvalidMessageError,
    JinjaChatTemplate,
    Message,
    RunNotFound,
    StoredMessage,
    StoreInputError,
    TextDelta,
    ToolCall,
    ToolCallDelta,
)
from convo._turns.plan import (
    _answered_elsewhere,
    _calling_reply,
    _result,
    _round_of,
    chunk_events,
    partial_response,
    reply_key,
    tool_key,
)

BOTH_PATHS = pytest.mark.parametrize("path", ["transport", "server"])

# A minimal Hugging Face-style chat template (the shape local models publish).
JINJA = (
    "{% for m in messages %}<|turn|>{{ m['role'] }}\n{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|turn|>assistant\n{% endif %}"
)


def check_run(run: Any, sent: Any, report: Any, reply: Any, *, endpoint: str, mode: str,
              stream: bool = False, seed: int | None = None) -> None:
    """A finished turn's run: what the fake received, the report's numbers, the reply."""
    assert run.status == "ok" and run.error_type is None
    assert run.request.encode() == sent.body  # the exact bytes on the wire
    assert sent.path.endswith("/chat/completions" if mode == "chat" else "/completions")
    assert (run.endpoint, run.mode, run.model, run.stream) == (endpoint, mode, MODEL, stream)
    assert run.kept_seqs == report.kept_seqs and run.input_seq == max(report.kept_seqs)
    assert run.summary_id == (report.summary.id if report.summary else None)
    assert run.estimated_prompt_tokens == report.prompt_tokens
    # The fake counts usage with the model's tokenizer: the estimate is exact.
    assert run.reported_prompt_tokens == report.prompt_tokens
    assert run.completion_tokens is not None and run.completion_tokens > 0
    assert run.usage is not None and run.usage["prompt_tokens"] == report.prompt_tokens
    assert run.attempts == 1
    assert run.latency_ms is not None and run.latency_ms >= 0
    assert run.ttfb_ms is not None and 0 <= run.ttfb_ms <= run.latency_ms
    assert run.finish_reason == "stop" and run.system_fingerprint == "fp_convofake"
    assert run.seed == seed
    assert run.reply_message_id == reply.id
    assert run.response is not None and run.response["system_fingerprint"] == "fp_convofake"
    assert run.finished_at is not None and run.finished_at >= run.created_at
    assert run.settings["model"] == MODEL and run.settings["mode"] == mode
    assert run.settings["budget"] == report.budget


@BOTH_PATHS
async def test_chat_turn_stores_the_message_the_reply_and_the_run(env: Env, path: str) -> None:
    chat = env.chat(params={"temperature": 0.25})
    conv = await env.store.create_conversation(owner="alice")
    await env.store.append(conv.id, Message.system("Be brief."), owner="alice")

    result = await chat.send(conv.id, "Hello there", owner="alice", seed=42, max_tokens=64)

    assert result.conversation_id == conv.id and not result.from_store and not result.duplicate
    assert result.user.seq == 2 and result.user.content == "Hello there"
    assert result.reply.seq == 3 and result.text == "You said: Hello there"
    assert result.messages == [result.reply] and result.pending_tool_calls == []
    stored = await env.thread(conv.id)
    assert [m.role for m in stored] == ["system", "user", "assistant"]
    assert stored[2] == result.reply
    info = result.reply.reply
    assert info.model == MODEL and info.finish_reason == "stop" and info.seed == 42
    assert info.system_fingerprint == "fp_convofake"

    [sent] = env.model_requests()
    body = json.loads(sent.body)
    assert body == {
        "model": MODEL,
        "messages": [{"role": "system", "content": "Be brief."},
                     {"role": "user", "content": "Hello there"}],
        "temperature": 0.25, "seed": 42, "max_completion_tokens": 64,
    }
    report = result.report
    assert report.kept_seqs == [1, 2] and report.mode == "chat"
    check_run(result.run, sent, report, result.reply, endpoint="chat.completions", mode="chat",
              seed=42)
    assert result.runs == [result.run]
    assert result.run.owner == "alice" and result.run.conversation_id == conv.id
    assert result.run.base_url == env.base_url
    assert result.run.settings["template"] is None
    assert result.run.settings["profile"]["max_tokens_param"] == "max_completion_tokens"
    assert await env.store.get_run(result.run.id) == result.run


@pytest.mark.parametrize(("template", "path"), [("chatml", "server"), ("jinja", "transport")])
async def test_completion_turn_sends_the_flattened_prompt(
    env: Env, path: str, template: str
) -> None:
    tpl: Any = "chatml" if template == "chatml" else JinjaChatTemplate(JINJA, name="mini")
    chat = env.chat(mode="completion", template=tpl)
    conv = await env.store.create_conversation()
    await env.store.append(conv.id, Message.system("Be brief."))

    first = await chat.send(conv.id, "Bonjour", max_tokens=32, temperature=0)
    second = await chat.send(conv.id, "Encore")

    assert first.text == " You said: Bonjour" and second.text == " You said: Encore"
    assert [m.content for m in await env.thread(conv.id)] == [
        "Be brief.", "Bonjour", " You said: Bonjour", "Encore", " You said: Encore",
    ]
    sent = env.model_requests()
    assert len(sent) == 2
    body = json.loads(sent[1].body)
    marker = "<|im_start|>" if template == "chatml" else "<|turn|>"
    assert body["model"] == MODEL and "messages" not in body
    assert body["prompt"].count(marker) == 5  # four messages and the reply's opening
    assert "Bonjour" in body["prompt"] and body["prompt"].rstrip().endswith("assistant")
    assert body["stop"] and all(isinstance(s, str) for s in body["stop"])
    first_body = json.loads(sent[0].body)
    assert first_body["max_tokens"] == 32 and first_body["temperature"] == 0
    assert "max_completion_tokens" not in first_body
    for result, request in ((first, sent[0]), (second, sent[1])):
        check_run(result.run, request, result.report, result.reply,
                  endpoint="completions", mode="completion")
    settings = second.run.settings
    if template == "chatml":
        assert settings["template"] == "chatml"
        assert len(settings["template_sha256"]) == 64
    else:
        assert settings["template"] == "mini"
        assert settings["template_sha256"] == hashlib.sha256(JINJA.encode()).hexdigest()
    assert second.report.template == settings["template"]


@pytest.mark.parametrize(
    ("mode", "profile", "wire"),
    [
        ("chat", ChatProfile.openai(), "max_completion_tokens"),
        ("chat", ChatProfile.compatible(), "max_tokens"),
        ("completion", ChatProfile.openai(), "max_tokens"),
    ],
    ids=["openai", "compatible", "completion"],
)
async def test_max_tokens_and_stream_options_follow_the_profile(
    env: Env, mode: str, profile: ChatProfile, wire: str
) -> None:
    chat = env.chat(mode=mode, profile=profile)
    conv = await env.store.create_conversation()
    await chat.send(conv.id, "one", max_tokens=20)
    stream = chat.stream(conv.id, "two", max_completion_tokens=30)
    await stream.result()
    plain, streamed = (json.loads(r.body) for r in env.model_requests())
    other = {"max_tokens", "max_completion_tokens"} - {wire}
    assert plain[wire] == 20 and streamed[wire] == 30
    assert not other & plain.keys() and not other & streamed.keys()
    assert "stream" not in plain and "stream_options" not in plain
    assert streamed["stream"] is True
    if profile.supports_stream_usage:
        assert streamed["stream_options"] == {"include_usage": True}
    else:
        assert "stream_options" not in streamed


async def test_response_format_is_sent_and_the_json_reply_stored(env: Env) -> None:
    chat = env.chat()
    conv = await env.store.create_conversation()
    schema = {
        "type": "json_schema",
        "json_schema": {"name": "answer", "strict": True, "schema": {
            "type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
            "additionalProperties": False,
        }},
    }
    result = await chat.send(conv.id, "Answer in JSON", response_format=schema)
    assert json.loads(env.last_body())["response_format"] == schema
    assert json.loads(result.text) == {"ok": False}
    result = await chat.send(conv.id, "JSON again", response_format={"type": "json_object"})
    assert json.loads(env.last_body())["response_format"] == {"type": "json_object"}
    assert json.loads(result.text) == {"message": "You said: JSON again"}
    assert result.run.body()["response_format"] == {"type": "json_object"}
    # JSON mode needs a message that mentions JSON: the build is told the response format.
    other = await env.store.create_conversation()
    with pytest.raises(ContextError, match="requires a message that mentions JSON"):
        await chat.send(other.id, "Hello", response_format={"type": "json_object"})
    assert len(env.model_requests()) == 2


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"temprature": 0.5},
         "unknown chat parameter 'temprature' (pass server extras in extra_body=)"),
        ({"stream": True}, "'stream' is set by the turn, not a parameter"),
        ({"messages": []}, "'messages' is set by the turn, not a parameter"),
        ({"prompt": "x"}, "'prompt' is set by the turn, not a parameter"),
        ({"model": "gpt-4o"}, "'model' is set by the turn, not a parameter"),
        ({"suffix": "x"}, "unknown chat parameter 'suffix' (pass server extras in extra_body=)"),
    ],
    ids=["typo", "stream", "messages", "prompt", "model", "completion-only"],
)
async def test_a_bad_parameter_is_refused_before_anything_is_written(
    env: Env, params: dict[str, Any], message: str
) -> None:
    chat = env.chat()
    conv = await env.store.create_conversation()
    await chat.send(conv.id, "first")
    before = env.store.snapshot()
    with pytest.raises(ConfigurationError) as caught:
        await chat.send(conv.id, "second", **params)
    assert str(caught.value) == message
    with pytest.raises(ConfigurationError) as caught:
        await chat.stream(conv.id, "second", **params).result()
    assert str(caught.value) == message
    assert env.store.snapshot() == before
    assert len(env.model_requests()) == 1


@pytest.mark.parametrize(
    ("args", "params", "error"),
    [
        (("second",), {"temperature": float("nan")}, ConfigurationError),
        (("second",), {"seed": 1.5}, ConfigurationError),
        (("second",), {"extra_body": {"x": float("inf")}}, StoreInputError),
        ((5,), {}, InvalidMessageError),
        (("bad \ud800",), {}, StoreInputError),
        (("bad \x00",), {}, StoreInputError),
        (("second",), {"response_format": "json_object"}, ConfigurationError),
        (("second",), {"response_format": {"type": "json_schema", "json_schema": object()}},
         StoreInputError),
        (("second",), {"response_format": {"type": "json_schema", "x": float("nan")}},
         StoreInputError),
    ],
    ids=["nan", "float-seed", "inf-extra", "int-message", "surrogate", "nul",
         "str-response-format", "object-response-format", "nan-response-format"],
)
async def test_hostile_turn_input_is_refused_before_anything_is_written(
    env: Env, args: tuple[Any, ...], params: dict[str, Any], error: type[Exception]
) -> None:
    chat = env.chat()
    conv = await env.store.create_conversation()
    await chat.send(conv.id, "first")
    before = env.store.snapshot()
    with pytest.raises(error):
        await chat.send(conv.id, *args, **params)
    assert env.store.snapshot() == before
    assert len(env.model_requests()) == 1


async def test_a_bad_response_format_is_refused_by_name(env: Env) -> None:
    """response_format is checked with the turn's parameters, before anything is stored:
    the error says what is wrong with it, and where."""
    chat = env.chat()
    conv = await env.store.create_conversation()
    before = env.store.snapshot()
    for fmt, error, message in [
        ("json_object", ConfigurationError, "response_format must be a dict, not str"),
        ({"type": "json_schema", "x": float("nan")}, StoreInputError,
         "response_format.x is nan, which is not a JSON number"),
    ]:
        with pytest.raises(error) as caught:
            await chat.send(conv.id, "Hi", response_format=fmt)
        assert str(caught.value) == message
    assert env.store.snapshot() == before and env.model_requests() == []


async def test_a_chat_only_parameter_is_refused_in_completion_mode(env: Env) -> None:
    chat = env.chat(mode="completion")
    conv = await env.store.create_conversation()
    before = env.store.snapshot()
    with pytest.raises(ConfigurationError, match="^unknown completion parameter 'tool_choice'"):
        await chat.send(conv.id, "Hi", tool_choice="auto")
    assert env.store.snapshot() == before and env.model_requests() == []


async def test_client_options_and_unset_parameters_stay_out_of_the_body(env: Env) -> None:
    """Each is skipped, and the parameters after it are sent."""
    chat = env.chat(params={"timeout": 30.0, "top_p": None})
    conv = await env.store.create_conversation()
    await chat.send(conv.id, "Hi", max_retries=1, seed=None, temperature=0.5)
    assert json.loads(env.last_body()) == {
        "model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "temperature": 0.5,
    }


async def test_extra_body_reaches_the_wire(env: Env) -> None:
    chat = env.chat(client_options={}, params={"extra_body": {"user": "u-1"}})
    conv = await env.store.create_conversation()
    result = await chat.send(conv.id, "hi")
    assert json.loads(env.last_body())["user"] == "u-1"
    assert result.run.body()["user"] == "u-1"


# --- streaming -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "path"), [("chat", "transport"), ("chat", "server"), ("completion", "server")]
)
async def test_a_streamed_turn_delivers_deltas_then_stores_the_reply(
    env: Env, path: str, mode: str
) -> None:
    chat = env.chat(mode=mode)
    conv = await env.store.create_conversation()
    env.fake.reply("One two three four")
    stream = chat.stream(conv.id, "count", idempotency_key="s1")
    events = await stream.events()
    result = await stream.result()

    assert events and all(isinstance(e, TextDelta) and e.round == 0 for e in events)
    assert len(events) == 4  # the fake streams word by word
    assert "".join(e.text for e in events) == "One two three four" == result.text
    stored = await env.thread(conv.id)
    assert [m.role for m in stored] == ["user", "assistant"] and stored[1] == result.reply
    [sent] = env.model_requests()
    endpoint = "chat.completions" if mode == "chat" else "completions"
    check_run(result.run, sent, result.report, result.reply, endpoint=endpoint, mode=mode,
              stream=True)
    assert result.run.stream and result.run.ttfb_ms is not None
    # The stream asked for usage: reported tokens come from the final usage chunk.
    assert result.run.reported_prompt_tokens == result.report.prompt_tokens
    assert await env.store.get_run(result.run.id) == result.run
    # Reading the result again (or a second time around) changes nothing.
    assert await stream.result() == result
    assert await stream.next() is None


async def test_a_streamed_json_reply_equals_the_stored_one(env: Env) -> None:
    chat = env.chat()
    conv = await env.store.create_conversation()
    stream = chat.stream(conv.id, "json please", response_format={"type": "json_object"})
    text = "".join(e.text for e in await stream.events())
    result = await stream.result()
    assert json.loads(text) == json.loads(result.text)
    assert (await env.store.get_message(conv.id, 2)).content == text


# --- run records --------------------------------------------------------------------------


async def test_runs_read_back_newest_first_by_page_and_by_id(env: Env) -> None:
    chat = env.chat()
    conv = await env.store.create_conversation(owner="alice")
    other = await env.store.create_conversation(owner="alice")
    results = [await chat.send(conv.id, f"m{i}", owner="alice") for i in range(5)]
    await chat.send(other.id, "elsewhere", owner="alice")

    seen: list[Any] = []
    cursor = None
    while True:
        page = await env.store.list_runs(conv.id, limit=2, owner="alice", cursor=cursor)
        assert len(page.items) <= 2
        seen.extend(page.items)
        cursor = page.next_cursor
        if cursor is None:
            break
    assert [r.id for r in seen] == [r.run.id for r in reversed(results)]
    assert [r.reply_message_id for r in seen] == [r.reply.id for r in reversed(results)]
    for result in results:
        assert await env.store.get_run(result.run.id, owner="alice") == result.run
        with pytest.raises(RunNotFound):
            await env.store.get_run(result.run.id, owner="bob")
    with pytest.raises(ConversationNotFound):
        await env.store.list_runs(conv.id, owner="bob")


async def test_a_turn_on_another_owners_conversation_writes_nothing(env: Env) -> None:
    chat = env.chat()
    conv = await env.store.create_conversation(owner="alice")
    await chat.send(conv.id, "mine", owner="alice")
    before = env.store.snapshot()
    with pytest.raises(ConversationNotFound):
        await chat.send(conv.id, "theirs", owner="bob")
    with pytest.raises(ConversationNotFound):
        await chat.stream(conv.id, "theirs", owner="bob").result()
    with pytest.raises(ConversationNotFound):
        await chat.send(conv.id, "theirs", owner="bob", idempotency_key="k")
    with pytest.raises(ConversationNotFound):
        await chat.regenerate(conv.id, owner="bob")
    with pytest.raises(ConversationNotFound):
        await chat.edit(conv.id, 1, "theirs", owner="bob")
    with pytest.raises(ConversationNotFound):
        await chat.continue_turn(conv.id, [Message.tool("x", tool_call_id="c")], owner="bob")
    assert env.store.snapshot() == before
    assert len(env.model_requests()) == 1


class Condense:
    """A summarizer that needs no model: counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def _text(self, messages: Sequence[Any], previous: str | None) -> str:
        self.calls += 1
        return f"{len(messages)} earlier messages"


class SyncCondense(Condense):
    def summarize(self, messages: Sequence[Any], *, previous: str | None, max_tokens: int) -> str:
        return self._text(messages, previous)


class AsyncCondense(Condense):
    async def summarize(
        self, messages: Sequence[Any], *, previous: str | None, max_tokens: int
    ) -> str:
        return self._text(messages, previous)


async def test_the_run_names_the_summary_that_stood_in_for_history(env: Env) -> None:
    summarizer = AsyncCondense() if env.is_async else SyncCondense()
    chat = env.chat(budget=160, summarizer=summarizer)
    conv = await env.store.create_conversation()
    for i in range(12):
        await env.store.append(conv.id, Message.user(f"question number {i} " + "word " * 10))
        await env.store.append(conv.id, Message.assistant(f"answer number {i} " + "word " * 10))
    result = await chat.send(conv.id, "and now?")
    report = result.report
    assert report.summary is not None and report.dropped_count > 0 and summarizer.calls == 1
    assert result.run.summary_id == report.summary.id
    assert result.run.kept_seqs == report.kept_seqs and report.kept_seqs[-1] == 25
    assert result.run.estimated_prompt_tokens == report.prompt_tokens <= 160
    [sent] = env.model_requests()
    assert result.run.request.encode() == sent.body
    assert "earlier messages" in json.loads(sent.body)["messages"][0]["content"]


async def test_no_transaction_is_open_while_the_request_is_in_flight(env: Env) -> None:
    """Another writer gets the database at once while the model is being asked."""
    checks: list[bool] = []
    engine = sa.create_engine(env.store.url, poolclass=sa.NullPool)

    def free() -> None:
        with engine.connect() as conn:
            if env.backend == "sqlite":
                conn.exec_driver_sql("PRAGMA busy_timeout = 0")
                conn.exec_driver_sql("BEGIN IMMEDIATE")  # fails at once if a writer holds it
                conn.exec_driver_sql("ROLLBACK")
                checks.append(True)
            else:
                idle = conn.exec_driver_sql(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    " AND state LIKE 'idle in transaction%%'"
                ).scalar()
                checks.append(idle == 0)

    async def afree() -> None:
        free()

    tap = Tap(env.fake.transport(), before=free, abefore=afree)
    chat = env.chat(client_options={"transport": tap})
    conv = await env.store.create_conversation()
    await chat.send(conv.id, "one", idempotency_key="a")
    await chat.stream(conv.id, "two", idempotency_key="b").result()
    engine.dispose()
    assert checks == [True, True]


async def test_a_parameter_that_is_not_json_is_named_in_the_error(env: Env) -> None:
    chat = env.chat()
    conv = await env.store.create_conversation()
    with pytest.raises(StoreInputError, match=r"^request parameters\.x is inf, which is not a JSON"):
        await chat.send(conv.id, "hi", extra_body={"x": float("inf")})


# --- pure helpers of the turn core (no store, no model) ---------------------------------

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _stored(seq: int, role: str, *, key: str | None = None,
            calls: Sequence[str] = ()) -> StoredMessage:
    tool_calls = [ToolCall(id=c, function=FunctionCall(name="f", arguments="{}")) for c in calls]
    return StoredMessage(id=seq, conversation_id="c" * 32, seq=seq, role=role,
                         content=None if calls else "text", tool_calls=tool_calls or None,
                         tool_call_id="x" if role == "tool" else None,
                         idempotency_key=key, created_at=NOW)


@pytest.mark.parametrize(("stored_key", "round"), [
    ("turn#r0", 0), ("turn#r2", 2), ("turn#r12", 12), ("turn#rx", None),
    ("turn#t1:call_1", None), ("other#r1", None), ("turn", None), (None, None),
])
def test_the_round_of_a_stored_reply_comes_from_its_key(stored_key: str | None,
                                                        round: int | None) -> None:
    assert _round_of(_stored(5, "assistant", key=stored_key), "turn") == round


def _calling(newest_first: list[StoredMessage], call_ids: set[str | None]) -> tuple[int, int]:
    """Drive _calling_reply with these stored messages as its read."""
    plan = _calling_reply("c" * 32, None, call_ids)
    next(plan)
    with pytest.raises(StopIteration) as done:
        plan.send(newest_first)
    value: tuple[int, int] = done.value.value
    return value


def test_results_continue_the_round_of_the_reply_that_made_the_calls() -> None:
    # newest first: round 2 calls b, round 1 calls a, round 0 calls a too (an older turn's
    # reply before the user message must not count)
    messages = [
        _stored(9, "assistant", calls=["b"]), _stored(8, "tool"),
        _stored(7, "assistant", calls=["a"]), _stored(6, "tool"),
        _stored(5, "assistant", calls=["a"]), _stored(4, "user"),
        _stored(3, "assistant", calls=["a", "b"]), _stored(2, "user"),
    ]
    assert _calling(messages, {"b"}) == (2, 9)
    assert _calling(messages, {"a"}) == (1, 7)  # the newest reply making the call
    assert _calling(messages, {"a", "zz"}) == (1, 7)
    # no reply makes these calls: the newest one stands for it
    assert _calling(messages, {"zz"}) == (2, 9)
    assert _calling(messages[:2], {"zz"}) == (0, 9)
    # no reply at all since the user message
    assert _calling([_stored(4, "user"), _stored(3, "assistant", calls=["a"])], {"a"}) == (-1, 0)
    assert _calling([], {"a"}) == (-1, 0)


def test_chunk_events_carry_their_round() -> None:
    text = CompletionChunk.model_validate({"choices": [{"text": "Hel"}]})
    assert chunk_events(text, 3) == [TextDelta("Hel", 3)]
    assert chunk_events(CompletionChunk.model_validate({"choices": [{"text": ""}]}), 3) == []
    chat = ChatCompletionChunk.model_validate({"choices": [{"delta": {
        "content": "Hi", "tool_calls": [{"index": 1, "id": "c1", "function": {"name": "f"}}]}}]})
    assert chunk_events(chat, 2) == [TextDelta("Hi", 2), ToolCallDelta(1, "c1", "f", "", 2)]
    assert chunk_events(ChatCompletionChunk.model_validate({"choices": []}), 2) == []
    # a call's first fragment may come without its function: no name, no arguments yet
    bare = ChatCompletionChunk.model_validate({"choices": [{"delta": {
        "tool_calls": [{"index": 0, "id": "c0"}]}}]})
    assert chunk_events(bare, 1) == [ToolCallDelta(0, "c0", None, "", 1)]


def test_keys_of_replies_and_tool_results() -> None:
    assert reply_key("turn", 2) == "turn#r2" and reply_key(None, 2) is None
    assert tool_key("turn", 1, "call_0") == "turn#t1:call_0"
    # without a turn key there is none: two keyless turns must not share "None#t0:call_0"
    assert tool_key(None, 0, "call_0") is None


def test_a_reply_made_elsewhere_is_the_first_final_answer_after_the_user_message() -> None:
    calling = _stored(5, "assistant", calls=["a"])
    result, final = _stored(6, "tool"), _stored(7, "assistant")
    later_user, later_reply = _stored(8, "user"), _stored(9, "assistant")
    assert _answered_elsewhere([calling, result, final, later_user, later_reply], "k#") is final
    # a calling reply and its result are no final answer (and nothing after the next user
    # message belongs to this turn)
    assert _answered_elsewhere([calling, result, later_user, later_reply], "k#") is None
    assert _answered_elsewhere([calling, result], "k#") is None
    # one of this turn's own keys: the turn resumes from its own messages instead
    keyed = _stored(7, "assistant", key="k#r0")
    assert _answered_elsewhere([keyed, final], "k#") is None
    assert _answered_elsewhere([_stored(7, "assistant", key="other#r0")], "k#") is not None


def test_a_partial_response_is_the_snapshot_without_empty_fields() -> None:
    snapshot = ChatCompletion.model_validate({"id": "x", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "Hal"}}]})
    value = partial_response(lambda: snapshot)
    assert value == snapshot.model_dump(mode="json", exclude_none=True)
    assert "null" not in json.dumps(value) and value["choices"][0]["message"]["content"] == "Hal"

    def nothing() -> Any:
        raise ValueError("no choices yet")

    assert partial_response(nothing) is None


def test_a_turn_result_says_whether_it_is_a_duplicate() -> None:
    user, reply = _stored(1, "user"), _stored(2, "assistant", calls=["a", "b"])
    answered = _stored(3, "tool")  # answers call "x" (see _stored), not a or b
    plain = _result("c" * 32, user, [reply, answered], [], None, reply)
    assert plain.duplicate is False and plain.from_store is False
    assert [c.id for c in plain.pending_tool_calls] == ["a", "b"]
    dup = _result("c" * 32, user, [reply], [], None, reply, duplicate=True, from_store=True)
    assert dup.duplicate is True and dup.from_store is True and dup.run is None
