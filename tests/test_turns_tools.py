"""Tool rounds in turns: manual (pending calls, continue_turn) and registered callables.

Four ways each (SQLite / PostgreSQL x sync / async); tests taking ``path``
also run over the fake's loopback server.
"""

# ruff: noqa: F811 - the env/path fixtures are imported, then named as test arguments

from __future__ import annotations

import asyncio
import datetime
import functools
import json
import threading
from typing import Any, Literal

import pytest
from turns_support import MODEL, Env, env, path  # noqa: F401 - fixtures

from convo import (
    AsyncContextBuilder,
    ConfigurationError,
    ContextBuilder,
    FunctionCall,
    InvalidMessageError,
    Message,
    TextDelta,
    Tool,
    ToolArgumentsError,
    ToolCall,
    ToolCallDelta,
    ToolResultEvent,
    tool,
)
from convo._turns.tools import tool_result_text

BOTH_PATHS = pytest.mark.parametrize("path", ["transport", "server"])


class Calls:
    """Tools that record how they were called (and on which thread)."""

    def __init__(self) -> None:
        self.log: list[tuple[str, dict[str, Any]]] = []
        self.threads: set[int] = set()

    def tools(self, *, use_async: bool = False) -> list[Any]:
        calls = self

        def get_weather(city: str, unit: Literal["C", "F"] = "C") -> dict[str, Any]:
            """The current weather in a city."""
            calls.log.append(("get_weather", {"city": city, "unit": unit}))
            calls.threads.add(threading.get_ident())
            if city == "Atlantis":
                raise LookupError("no weather station there")
            return {"city": city, "temp": 21, "unit": unit}

        async def get_time_async(tz: str) -> str:
            await asyncio.sleep(0)
            calls.log.append(("get_time", {"tz": tz}))
            return f"12:00 {tz}"

        def get_time_sync(tz: str) -> str:
            calls.log.append(("get_time", {"tz": tz}))
            return f"12:00 {tz}"

        get_time: Any = tool(name="get_time", description="The time in a time zone.")(
            get_time_async if use_async else get_time_sync
        )
        return [get_weather, get_time]


def request_messages(env: Env, i: int) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = json.loads(env.model_requests()[i].body)["messages"]
    return messages


async def check_runs(env: Env, result: Any) -> None:
    """Every request of the turn is a run, in order, matching what the fake received."""
    sent = env.model_requests()
    assert len(result.runs) == len(sent)
    for i, (run, request) in enumerate(zip(result.runs, sent, strict=True)):
        assert run.round == i and run.status == "ok" and run.attempts == 1
        assert run.request.encode() == request.body
        assert run.estimated_prompt_tokens == run.reported_prompt_tokens
        assert await env.store.get_run(run.id) == run
    replies = [m for m in result.messages if m.role == "assistant"]
    assert [r.reply_message_id for r in result.runs] == [m.id for m in replies]


async def test_manual_round_returns_pending_calls_then_continue_turn(env: Env) -> None:
    chat = env.chat()
    conv = await env.store.create_conversation()
    definition = Calls().tools()[0]
    spec = tool(definition).definition()
    env.fake.reply_tool_calls([("get_weather", {"city": "Paris"}), ("get_weather", {"city": "Oslo"})])

    first = await chat.send(conv.id, "Weather in Paris and Oslo?", tools=[spec])
    assert [c.function.name for c in first.pending_tool_calls] == ["get_weather"] * 2
    assert first.reply.tool_calls == first.pending_tool_calls
    assert first.run.finish_reason == "tool_calls"
    assert await env.roles(conv.id) == ["user", "assistant"]
    # The tool definitions passed per call are counted in the budget like registered ones.
    assert first.run.estimated_prompt_tokens == first.run.reported_prompt_tokens
    assert first.report.prompt_tokens == first.run.reported_prompt_tokens

    results = [Message.tool(f"sunny in {c.function.arguments}", tool_call_id=c.id)
               for c in first.pending_tool_calls]
    second = await chat.continue_turn(conv.id, results, tools=[spec])
    assert second.text == "You said: Weather in Paris and Oslo?"
    assert second.pending_tool_calls == [] and second.user is None
    assert [m.role for m in second.messages] == ["tool", "tool", "assistant"]
    assert second.run.round == 1
    assert await env.roles(conv.id) == ["user", "assistant", "tool", "tool", "assistant"]
    sent = request_messages(env, 1)
    assert [m["role"] for m in sent] == ["user", "assistant", "tool", "tool"]
    assert [c["id"] for c in sent[1]["tool_calls"]] == [c.id for c in first.pending_tool_calls]
    assert [m["tool_call_id"] for m in sent[2:]] == [c.id for c in first.pending_tool_calls]
    assert second.run.request.encode() == env.model_requests()[1].body
    assert second.run.estimated_prompt_tokens == second.run.reported_prompt_tokens


async def test_registered_tools_run_every_round_is_a_run(env: Env) -> None:
    calls = Calls()
    chat = env.chat(tools=calls.tools(use_async=env.is_async))
    conv = await env.store.create_conversation()
    env.fake.reply_tool_calls([("get_weather", {"city": "Paris", "unit": "F"}),
                               ("get_time", {"tz": "CET"})])
    env.fake.reply_tool_calls([("get_weather", {"city": "Oslo"})])
    env.fake.reply("Paris 21F, Oslo 21C, noon.")

    result = await chat.send(conv.id, "Weather and time?", idempotency_key="t1")

    assert result.text == "Paris 21F, Oslo 21C, noon." and result.pending_tool_calls == []
    assert calls.log == [("get_weather", {"city": "Paris", "unit": "F"}),
                         ("get_time", {"tz": "CET"}), ("get_weather", {"city": "Oslo", "unit": "C"})]
    if env.is_async:  # sync tools run in a worker thread, off the event loop
        assert threading.get_ident() not in calls.threads
    else:
        assert calls.threads == {threading.get_ident()}
    roles = [m.role for m in result.messages]
    assert roles == ["assistant", "tool", "tool", "assistant", "tool", "assistant"]
    assert await env.roles(conv.id) == ["user", *roles]
    tool_messages = [m for m in result.messages if m.role == "tool"]
    assert json.loads(tool_messages[0].text) == {"city": "Paris", "temp": 21, "unit": "F"}
    assert tool_messages[1].text == "12:00 CET"
    assert [m.idempotency_key for m in result.messages] == [
        "t1#r0", f"t1#t0:{result.messages[0].tool_calls[0].id}",
        f"t1#t0:{result.messages[0].tool_calls[1].id}", "t1#r1",
        f"t1#t1:{result.messages[3].tool_calls[0].id}", "t1#r2",
    ]
    await check_runs(env, result)
    assert [r.finish_reason for r in result.runs] == ["tool_calls", "tool_calls", "stop"]
    # The definitions went out with every round, and each call with its results.
    for i in range(3):
        body = json.loads(env.model_requests()[i].body)
        assert [t["function"]["name"] for t in body["tools"]] == ["get_weather", "get_time"]
    assert [m["role"] for m in request_messages(env, 2)] == [
        "user", "assistant", "tool", "tool", "assistant", "tool",
    ]


async def test_tool_errors_bad_arguments_and_unknown_tools_go_back_to_the_model(env: Env) -> None:
    calls = Calls()
    chat = env.chat(tools=calls.tools())
    conv = await env.store.create_conversation()
    env.fake.reply_tool_calls([
        ("get_weather", {"city": "Atlantis"}),
        ("get_weather", "{not json"),
        ("get_weather", {"town": "Paris"}),
        ("get_weather", {"city": "Paris", "unit": "K"}),
        ("launch_rocket", {"when": "now"}),
    ])
    result = await chat.send(conv.id, "Try everything")

    texts = [m.text for m in result.messages if m.role == "tool"]
    assert len(texts) == 5 and all(t.startswith("error: ") for t in texts)
    assert "LookupError" in texts[0] and "no weather station there" in texts[0]
    assert "not JSON" in texts[1]
    assert "city" in texts[2] and "town" in texts[2]
    assert "unit" in texts[3]
    assert "launch_rocket" in texts[4]
    assert calls.log == [("get_weather", {"city": "Atlantis", "unit": "C"})]  # only valid calls ran
    assert result.reply.role == "assistant" and result.pending_tool_calls == []
    sent = request_messages(env, 1)
    assert [m["content"] for m in sent if m["role"] == "tool"] == texts
    await check_runs(env, result)


async def test_a_tool_result_the_store_cannot_hold_is_kept_with_replacement_characters(
    env: Env,
) -> None:
    """A tool that returns loosely decoded bytes (a NUL, a lone surrogate), or raises with
    them in its message: the turn goes on with U+FFFD in their place (the store refused
    the result with StoreInputError after the tool ran, and again on every retry)."""

    def fetch(url: str) -> str:
        """Fetch a page."""
        if url == "bad":
            raise OSError("read \x00 failed")
        return "\x00bin\x00ary \ud800 page"  # (a NUL first too: its index is 0)

    chat = env.chat(tools=[tool(fetch)])
    conv = await env.store.create_conversation()
    env.fake.reply_tool_calls([("fetch", {"url": "x"}), ("fetch", {"url": "bad"})])
    result = await chat.send(conv.id, "Get it", idempotency_key="k")

    texts = [m.text for m in result.messages if m.role == "tool"]
    assert texts[0] == "\ufffdbin\ufffdary \ufffd page"
    assert texts[1].startswith("error: ") and "read \ufffd failed" in texts[1]
    assert [m.role for m in await env.thread(conv.id)] == ["user", "assistant", "tool", "tool",
                                                           "assistant"]
    sent = request_messages(env, 1)
    assert [m["content"] for m in sent if m["role"] == "tool"] == texts
    await check_runs(env, result)


async def test_the_round_limit_leaves_calls_pending_for_the_caller(env: Env) -> None:
    calls = Calls()
    chat = env.chat(tools=calls.tools(), max_tool_rounds=2)
    conv = await env.store.create_conversation()
    for city in ("A", "B", "C"):
        env.fake.reply_tool_calls([("get_weather", {"city": city})])

    result = await chat.send(conv.id, "Loop")

    assert [c[1]["city"] for c in calls.log] == ["A", "B"]
    assert len(result.runs) == 3 and [r.round for r in result.runs] == [0, 1, 2]
    [pending] = result.pending_tool_calls
    assert json.loads(pending.function.arguments) == {"city": "C"}
    await check_runs(env, result)

    done = await chat.continue_turn(conv.id, [Message.tool("cloudy", tool_call_id=pending.id)])
    assert done.text == "You said: Loop" and done.run.round == 3
    assert calls.log[-1][1]["city"] == "B"  # the caller answered C, not the tool
    assert await env.roles(conv.id) == ["user"] + ["assistant", "tool"] * 3 + ["assistant"]


async def test_no_rounds_allowed_is_manual_mode_with_definitions(env: Env) -> None:
    calls = Calls()
    chat = env.chat(tools=calls.tools(), max_tool_rounds=0)
    conv = await env.store.create_conversation()
    env.fake.reply_tool_calls([("get_time", {"tz": "UTC"})])
    first = await chat.send(conv.id, "Time?")
    [call] = first.pending_tool_calls
    assert calls.log == [] and "tools" in json.loads(env.last_body())
    second = await chat.continue_turn(conv.id, [Message.tool("noon", tool_call_id=call.id)])
    assert second.text == "You said: Time?" and calls.log == []


async def test_a_streamed_tool_turn_shows_call_deltas_results_and_text(env: Env) -> None:
    calls = Calls()
    chat = env.chat(tools=calls.tools())
    conv = await env.store.create_conversation()
    env.fake.reply_tool_calls([("get_weather", {"city": "Reykjavik", "unit": "C"})])
    env.fake.reply("Cold and windy")

    stream = chat.stream(conv.id, "Weather?")
    events = await stream.events()
    result = await stream.result()

    deltas = [e for e in events if isinstance(e, ToolCallDelta)]
    assert deltas[0].id is not None and deltas[0].name == "get_weather"
    assert all(d.round == 0 and d.index == 0 for d in deltas) and len(deltas) > 2
    assert json.loads("".join(d.arguments for d in deltas)) == {"city": "Reykjavik", "unit": "C"}
    [done] = [e for e in events if isinstance(e, ToolResultEvent)]
    assert done.round == 0 and done.message == result.messages[1]
    texts = [e for e in events if isinstance(e, TextDelta)]
    assert all(t.round == 1 for t in texts) and "".join(t.text for t in texts) == result.text
    assert events.index(done) > events.index(deltas[-1]) and events.index(texts[0]) > events.index(done)
    assert result.messages[0].tool_calls[0].id == deltas[0].id
    assert all(r.stream and r.ttfb_ms is not None for r in result.runs)
    await check_runs(env, result)


async def test_streamed_tool_results_carry_their_round(env: Env) -> None:
    calls = Calls()
    chat = env.chat(tools=calls.tools())
    conv = await env.store.create_conversation()
    env.fake.reply_tool_calls([("get_time", {"tz": "UTC"})])
    env.fake.reply_tool_calls([("get_time", {"tz": "CET"})])
    env.fake.reply("Noon twice")
    stream = chat.stream(conv.id, "Times?")
    events = await stream.events()
    await stream.result()
    results = [e for e in events if isinstance(e, ToolResultEvent)]
    assert [(e.round, e.message.content) for e in results] == [(0, "12:00 UTC"), (1, "12:00 CET")]


async def test_async_tools_need_an_async_chat(env: Env) -> None:
    if env.is_async:
        env.chat(tools=Calls().tools(use_async=True))  # AsyncChat awaits them
    else:
        with pytest.raises(ConfigurationError, match="async"):
            env.chat(tools=Calls().tools(use_async=True))
    with pytest.raises(ConfigurationError, match="two tools"):
        env.chat(tools=[tool(name="x")(lambda: 1), tool(name="x")(lambda: 2)])


async def test_the_context_keeps_each_call_with_its_results(env: Env) -> None:
    calls = Calls()
    chat = env.chat(tools=calls.tools())
    conv = await env.store.create_conversation()
    env.fake.reply_tool_calls([("get_weather", {"city": "Paris"}), ("get_time", {"tz": "CET"})])
    await chat.send(conv.id, "Both?")  # seqs: 1 user, 2 calls, 3-4 results, 5 reply
    await env.store.append(conv.id, Message.user("And now?"))  # 6
    options: dict[str, Any] = {"model": MODEL, "max_messages": 4}
    builder = (AsyncContextBuilder if env.is_async else ContextBuilder)(env.store.raw, **options)
    chat = env.chat(builder=builder, tools=calls.tools())
    # The last four would start with a tool result, split from its call: the whole
    # turn is dropped instead (a window never starts with an assistant or tool message).
    ctx = await chat.build(conv.id)
    assert ctx.report.kept_seqs == [6] and ctx.report.dropped_count == 5
    result = await chat.send(conv.id, None)
    assert result.report.kept_seqs == [6] and result.run.kept_seqs == [6]
    # Without the cap, the round goes out whole and in order.
    chat = env.chat(tools=calls.tools())
    await chat.send(conv.id, "Again?")
    assert [m["role"] for m in request_messages(env, -1)] == [
        "user", "assistant", "tool", "tool", "assistant", "user", "assistant", "user",
    ]


def _call(i: int) -> ToolCall:
    return ToolCall(id="call_0", function=FunctionCall(name="get_time", arguments=f'{{"tz": "Z{i}"}}'))


@BOTH_PATHS
async def test_tool_turns_over_the_wire(env: Env, path: str) -> None:
    """A server that numbers call ids per reply (llama.cpp-style ids repeat across rounds)."""
    calls = Calls()
    chat = env.chat(tools=calls.tools(use_async=env.is_async))
    conv = await env.store.create_conversation()
    env.fake.reply_tool_calls([_call(1)])
    env.fake.reply_tool_calls([_call(2)])
    result = await chat.send(conv.id, "Twice", idempotency_key="rep")
    assert calls.log == [("get_time", {"tz": "Z1"}), ("get_time", {"tz": "Z2"})]
    tools = [m for m in result.messages if m.role == "tool"]
    assert [m.text for m in tools] == ["12:00 Z1", "12:00 Z2"]
    assert len({m.idempotency_key for m in result.messages}) == len(result.messages)
    await check_runs(env, result)


async def test_bad_tool_results_are_refused_before_anything_is_written(env: Env) -> None:
    chat = env.chat()
    conv = await env.store.create_conversation()
    env.fake.reply_tool_calls([("get_time", {"tz": "UTC"}), ("get_time", {"tz": "CET"})])
    first = await chat.send(conv.id, "Times?")
    a, _ = first.pending_tool_calls
    before = env.store.snapshot()
    with pytest.raises(InvalidMessageError, match="^tool_results must be tool messages with a "):
        await chat.continue_turn(
            conv.id, [Message.tool("noon", tool_call_id=a.id), Message.user("not a result")]
        )
    assert env.store.snapshot() == before and len(env.model_requests()) == 1


# --- Tool itself: definitions, argument checks, results (no turn) ------------------------


def test_a_tool_definition_comes_from_the_signature_and_the_docstring() -> None:
    def find_hotel(city: str, nights: int = 1, tags: list[str] | None = None) -> str:
        """Find a hotel in a city.

        Longer text the model does not need.
        """
        return city

    t = tool(find_hotel)
    assert t.name == "find_hotel" and t.fn is find_hotel and t.is_async is False
    assert t.description == "Find a hotel in a city."
    assert t.parameters["required"] == ["city"]
    assert t.parameters["properties"]["nights"] == {"default": 1, "type": "integer"}
    assert "title" not in json.dumps(t.parameters)  # pydantic's titles stripped, nested too
    assert t.parameters["properties"]["tags"]["anyOf"][0] == {"items": {"type": "string"},
                                                            "type": "array"}
    assert t.definition() == {"type": "function", "function": {
        "name": "find_hotel", "description": "Find a hotel in a city.",
        "parameters": t.parameters}}


def test_a_tool_without_a_description_leaves_the_key_out() -> None:
    def ping() -> str:
        return "pong"

    t = tool(ping)
    assert t.description is None and t.parameters["properties"] == {}
    assert t.definition() == {"type": "function", "function": {"name": "ping",
                                                               "parameters": t.parameters}}
    assert tool(description="")(ping).description is None
    named = tool(name="other-name_2", description="Says pong.")(ping)
    assert named.name == "other-name_2" and named.description == "Says pong."
    assert Tool.from_function(ping, description="x").description == "x"


def test_an_async_function_is_an_async_tool() -> None:
    async def later(x: int) -> int:
        return x

    assert tool(later).is_async is True


@pytest.mark.parametrize("name", ["", "has space", "dot.ted", "a" * 65, "é"])
def test_a_tool_name_must_follow_openais_rule(name: str) -> None:
    def f() -> None:
        pass

    with pytest.raises(ConfigurationError, match="1-64 letters"):
        tool(name=name)(f) if name else Tool.from_function(lambda: None)
    assert tool(name="a" * 64)(f).name == "a" * 64
    assert tool(name="A-z_09")(f).name == "A-z_09"


def test_what_cannot_be_a_tool_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="must be callable, got int"):
        Tool.from_function(3)  # type: ignore[arg-type]

    def star(*args: int) -> None:
        pass

    def stars(**kwargs: int) -> None:
        pass

    for fn in (star, stars):
        with pytest.raises(ConfigurationError, match=r"\*args/\*\*kwargs"):
            tool(fn)

    def unresolvable(x: NoSuchType) -> None:  # type: ignore[name-defined]  # noqa: F821
        pass

    with pytest.raises(ConfigurationError, match="cannot read its annotations"):
        tool(unresolvable)


def test_parse_arguments_validates_and_fills_defaults() -> None:
    def book(city: str, nights: int = 2, note=None) -> None:  # type: ignore[no-untyped-def]
        pass

    t = tool(book)
    assert t.parse_arguments('{"city": "Oslo"}') == {"city": "Oslo", "nights": 2, "note": None}
    assert t.parse_arguments('{"city": "Oslo", "nights": 3, "note": [1]}') == {
        "city": "Oslo", "nights": 3, "note": [1]}
    with pytest.raises(ToolArgumentsError, match="^arguments are not JSON: "):
        t.parse_arguments("{city")
    with pytest.raises(ToolArgumentsError, match="^arguments must be a JSON object$"):
        t.parse_arguments('["Oslo"]')
    with pytest.raises(ToolArgumentsError) as info:
        t.parse_arguments('{"nights": "many", "extra": 1}')
    assert str(info.value).split("; ") == [
        "city: Field required",
        "nights: Input should be a valid integer, unable to parse string as an integer",
        "extra: Extra inputs are not permitted",
    ]

    def nothing() -> None:
        pass

    assert tool(nothing).parse_arguments("") == {}  # no arguments at all: an empty object


def test_a_tool_result_becomes_text() -> None:
    assert tool_result_text("as is") == "as is"
    assert tool_result_text({"city": "Zürich", "n": [1, 2]}) == '{"city": "Zürich", "n": [1, 2]}'
    assert tool_result_text(None) == "null" and tool_result_text(3) == "3"
    day = datetime.date(2026, 1, 2)
    assert tool_result_text({"day": day}) == '{"day": "2026-01-02"}'  # what JSON lacks, as str
    loop: list[Any] = []
    loop.append(loop)
    assert tool_result_text(loop) == "[[...]]"  # not JSON at all: str()


def test_the_description_is_the_docstrings_first_paragraph() -> None:
    def f() -> None:
        """First paragraph,
        on two lines.

        Second.

        Third.
        """

    assert tool(f).description == "First paragraph,\non two lines."


def test_tool_takes_a_name_and_description_with_the_function_too() -> None:
    def f() -> None:
        """Doc."""

    t = tool(f, name="renamed", description="Said otherwise.")
    assert (t.name, t.description) == ("renamed", "Said otherwise.")


def test_a_callable_without_a_name_needs_one() -> None:
    def f(x: int) -> int:
        return x

    with pytest.raises(ConfigurationError, match="1-64 letters"):
        Tool.from_function(functools.partial(f))


def test_argument_errors_name_where_the_problem_is() -> None:
    def f(tags: list[str]) -> None:
        pass

    with pytest.raises(ToolArgumentsError, match=r"^tags\.1: Input should be a valid string$"):
        tool(f).parse_arguments('{"tags": ["a", 2]}')
    with pytest.raises(ToolArgumentsError) as info:  # a key with no name: the arguments
        tool(f).parse_arguments('{"tags": [], "": 1}')
    assert str(info.value) == "arguments: Extra inputs are not permitted"


async def test_a_completion_turns_tools_are_in_its_prompt_never_in_its_body(env: Env) -> None:
    chat = env.chat(mode="completion", template="chatml", tools=Calls().tools())
    conv = await env.store.create_conversation()

    result = await chat.send(conv.id, "Weather in Oslo?")

    body = json.loads(env.last_body())
    assert "tools" not in body and "messages" not in body
    assert "get_weather" in body["prompt"] and "get_time" in body["prompt"]
    assert result.run.request.encode() == env.model_requests()[0].body
    assert result.run.estimated_prompt_tokens == result.run.reported_prompt_tokens
