"""Idempotent turns and failure injection (issue 7, "Done when").

Every failure leaves the user message stored and a run saying what happened;
then the same idempotency key completes the turn (one user message, one
reply), the key again returns it without calling the model, and the next
send works normally. Four ways each (SQLite / PostgreSQL x sync / async);
tests taking ``path`` also run over the fake's loopback server.
"""

# ruff: noqa: F811 - the env/path fixtures are imported, then named as test arguments

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import pytest
from turns_support import Env, Tap, env, path  # noqa: F401 - fixtures

from convo import (
    APIConnectionError,
    APIError,
    APIResponseValidationError,
    APIStreamError,
    APITimeoutError,
    FunctionCall,
    InternalServerError,
    Message,
    ToolCall,
    TurnCancelled,
)

BOTH_PATHS = pytest.mark.parametrize("path", ["transport", "server"])


class Crash(BaseException):
    """Stands for the process dying inside a tool (not an Exception: nothing catches it)."""


async def complete_after_failure(
    env: Env, chat: Any, cid: str, key: str, text: str, failed: list[str]
) -> Any:
    """The same key completes the turn; again returns it; the next send works.

    ``failed``: the statuses the earlier attempts' runs must have.
    """
    assert await env.roles(cid) == ["user"]  # kept, and nothing else
    runs = await env.runs(cid)
    assert [r.status for r in runs] == failed
    assert all(r.reply_message_id is None and r.finished_at is not None for r in runs)
    requests = len(env.model_requests())

    result = await chat.send(cid, text, idempotency_key=key)
    assert not result.from_store and result.user.seq == 1 and result.reply.seq == 2
    assert len(env.model_requests()) == requests + 1
    assert [m.content for m in await env.thread(cid)] == [text, f"You said: {text}"]
    assert [r.status for r in await env.runs(cid)] == [*failed, "ok"]
    assert result.run.request.encode() == env.last_body()

    again = await chat.send(cid, text, idempotency_key=key)
    assert again.from_store and again.reply == result.reply and again.user == result.user
    assert again.run == result.run and again.conversation_id == cid
    assert len(env.model_requests()) == requests + 1

    nxt = await chat.send(cid, "next")
    assert nxt.user.seq == 3 and nxt.reply.seq == 4
    assert await env.roles(cid) == ["user", "assistant", "user", "assistant"]
    return result


@BOTH_PATHS
async def test_the_same_key_twice_is_one_turn_and_one_model_call(env: Env, path: str) -> None:
    chat = env.chat()
    conv = await env.store.create_conversation()
    first = await chat.send(conv.id, "Hi", idempotency_key="req-1")
    second = await chat.send(conv.id, "Hi", idempotency_key="req-1")
    stream = chat.stream(conv.id, "Hi", idempotency_key="req-1")
    assert await stream.events() == []  # nothing to stream: the turn is stored
    third = await stream.result()

    assert not first.from_store and second.from_store and third.from_store
    assert second.reply == first.reply == third.reply and second.user == first.user
    assert second.run == first.run and second.runs == [first.run]
    assert not second.duplicate and second.report is None
    assert len(env.model_requests()) == 1
    assert [m.content for m in await env.thread(conv.id)] == ["Hi", "You said: Hi"]
    assert len(await env.runs(conv.id)) == 1


async def test_a_failed_first_attempt_is_completed_by_the_retry(env: Env) -> None:
    chat = env.chat(client_options={"max_retries": 0})
    conv = await env.store.create_conversation()
    env.fake.fail(500)
    with pytest.raises(InternalServerError):
        await chat.send(conv.id, "Hello", idempotency_key="k")
    [run] = await env.runs(conv.id)
    assert (run.status, run.error_type, run.attempts) == ("failed", "InternalServerError", 1)
    await complete_after_failure(env, chat, conv.id, "k", "Hello", ["failed"])


async def test_429_then_success_is_one_run_with_two_attempts(env: Env) -> None:
    chat = env.chat()
    conv = await env.store.create_conversation()
    env.fake.fail(429, headers={"retry-after": "0.01"})
    result = await chat.send(conv.id, "Hello", idempotency_key="k")
    assert result.run.status == "ok" and result.run.attempts == 2
    assert env.sleeps == [0.01]  # the server's Retry-After, honoured
    first, second = env.model_requests()
    assert first.body == second.body == result.run.request.encode()
    assert await env.roles(conv.id) == ["user", "assistant"]
    assert [r.id for r in await env.runs(conv.id)] == [result.run.id]
    again = await chat.send(conv.id, "Hello", idempotency_key="k")
    assert again.from_store and len(env.model_requests()) == 2


async def test_500s_until_retries_run_out(env: Env) -> None:
    chat = env.chat(client_options={"max_retries": 2})
    conv = await env.store.create_conversation()
    for _ in range(3):
        env.fake.fail(500)
    with pytest.raises(InternalServerError) as caught:
        await chat.send(conv.id, "Hello", idempotency_key="k")
    [run] = await env.runs(conv.id)
    assert (run.status, run.error_type, run.attempts) == ("failed", "InternalServerError", 3)
    assert run.error_message == str(caught.value)[:4000] and "sk-test" not in run.error_message
    assert len(env.model_requests()) == 3 and len(env.sleeps) == 2
    await complete_after_failure(env, chat, conv.id, "k", "Hello", ["failed"])


async def test_per_call_client_options_shape_the_request_not_the_body(env: Env) -> None:
    """timeout / max_retries / extra_headers given to a turn go to the client."""
    chat = env.chat(client_options={"max_retries": 2})
    conv = await env.store.create_conversation()
    env.fake.fail(500)
    with pytest.raises(InternalServerError):
        await chat.send(conv.id, "Hello", max_retries=0, timeout=5.0,
                        extra_headers={"X-Trace": "t-1"})
    [run] = await env.runs(conv.id)
    assert run.attempts == 1  # the per-call max_retries won over the client's 2
    body = json.loads(run.request)
    assert not {"max_retries", "timeout", "extra_headers"} & set(body)
    assert env.fake.requests[-1].headers.get("x-trace") == "t-1"


@BOTH_PATHS
async def test_a_timeout_fails_the_run(env: Env, path: str) -> None:
    # Over loopback the fake stalls until the client gives up (a short read timeout).
    chat = env.chat(client_options={"max_retries": 0, "timeout": 0.3})
    conv = await env.store.create_conversation()
    env.fake.timeout()
    with pytest.raises(APITimeoutError):
        await chat.send(conv.id, "Hello", idempotency_key="k")
    [run] = await env.runs(conv.id)
    assert (run.status, run.error_type, run.attempts) == ("failed", "APITimeoutError", 1)
    assert run.ttfb_ms is None and run.latency_ms is not None
    await complete_after_failure(env, chat, conv.id, "k", "Hello", ["failed"])


@pytest.mark.parametrize(
    ("path", "abort"),
    [("transport", True), ("transport", False), ("server", True), ("server", False)],
    ids=["transport-dropped", "transport-unfinished", "server-dropped", "server-unfinished"],
)
async def test_a_stream_cut_midway_keeps_the_partial_text_in_the_run_only(
    env: Env, path: str, abort: bool
) -> None:
    chat = env.chat(client_options={"max_retries": 0})
    conv = await env.store.create_conversation()
    env.fake.cut_stream(after_chunks=3, text="alpha beta gamma delta epsilon", abort=abort)
    stream = chat.stream(conv.id, "Hello", idempotency_key="k")
    events = []
    with pytest.raises(APIError) as caught:
        while (event := await stream.next()) is not None:
            events.append(event)
    # A dropped connection is a transport failure; a body that ends without the
    # finish is a stream the server left incomplete.
    expected = (APIConnectionError, "failed") if abort else (APIStreamError, "incomplete")
    assert type(caught.value) is expected[0]
    partial = "".join(e.text for e in events)
    assert partial and "alpha beta gamma delta epsilon".startswith(partial)
    assert "epsilon" not in partial
    [run] = await env.runs(conv.id)
    assert run.status == expected[1] and run.error_type == expected[0].__name__
    assert run.response is not None
    assert run.response["choices"][0]["message"]["content"] == partial
    assert run.ttfb_ms is not None and run.stream
    with pytest.raises(TurnCancelled):
        await stream.result()  # the turn did not finish
    await complete_after_failure(env, chat, conv.id, "k", "Hello", [run.status])


@BOTH_PATHS
async def test_a_caller_that_stops_reading_cancels_the_run(env: Env, path: str) -> None:
    tap = Tap(env.fake.transport())
    options = {"transport": tap} if path == "transport" else {}
    chat = env.chat(client_options=options)
    conv = await env.store.create_conversation()
    env.fake.reply("one two three four five six")
    stream = chat.stream(conv.id, "Hello", idempotency_key="k")
    events = await stream.events(2)
    await stream.close()

    assert "".join(e.text for e in events) == "one two"
    if path == "transport":  # the HTTP response was closed, not left to the garbage collector
        assert len(tap.bodies) == 1 and tap.all_closed
    [run] = await env.runs(conv.id)
    assert (run.status, run.reply_message_id) == ("cancelled", None)
    assert run.error_type is None and run.error_message is None  # no error: the caller stopped
    assert run.response is not None
    assert run.response["choices"][0]["message"]["content"] == "one two"
    with pytest.raises(TurnCancelled):
        await stream.result()
    await complete_after_failure(env, chat, conv.id, "k", "Hello", ["cancelled"])


async def test_two_sends_of_one_key_at_once_store_one_reply(env: Env) -> None:
    """Both sends are held until both requests are in flight: two model calls, one reply."""
    if env.is_async:
        barrier = asyncio.Barrier(2)
        tap = Tap(env.fake.transport(), abefore=barrier.wait)
    else:
        sync_barrier = threading.Barrier(2, timeout=30)
        tap = Tap(env.fake.transport(), before=sync_barrier.wait)
    chat = env.chat(client_options={"transport": tap})
    conv = await env.store.create_conversation()

    if env.is_async:
        a, b = await asyncio.gather(*(
            chat.send(conv.id, "Hi", idempotency_key="same") for _ in range(2)
        ))
    else:
        send = chat.raw.send
        a, b = await asyncio.gather(*(
            asyncio.to_thread(send, conv.id, "Hi", idempotency_key="same") for _ in range(2)
        ))

    assert len(env.model_requests()) == 2
    winner, loser = (a, b) if not a.duplicate else (b, a)
    assert not winner.duplicate and loser.duplicate
    assert loser.reply == winner.reply and loser.user == winner.user
    assert loser.conversation_id == conv.id and loser.messages == [loser.reply]
    assert loser.runs == [loser.run] and loser.report is not None
    assert loser.report.kept_seqs == [1] and loser.pending_tool_calls == []
    assert loser.run.status == "cancelled" and loser.run.error_type == "DuplicateTurn"
    assert loser.run.reply_message_id == winner.reply.id
    assert winner.run.status == "ok"
    assert [m.role for m in await env.thread(conv.id)] == ["user", "assistant"]
    runs = await env.runs(conv.id)
    assert sorted(r.status for r in runs) == ["cancelled", "ok"]
    # Afterwards the key is one finished turn.
    again = await chat.send(conv.id, "Hi", idempotency_key="same")
    assert again.from_store and again.reply == winner.reply
    assert len(env.model_requests()) == 2


async def test_a_tool_turn_resumes_where_it_stopped(env: Env) -> None:
    """The request after the tool round failed: the retry does not run the tool again."""
    log: list[str] = []

    def lookup(q: str) -> str:
        log.append(q)
        return f"found {q}"

    chat = env.chat(tools=[lookup], client_options={"max_retries": 0})
    conv = await env.store.create_conversation()
    env.fake.reply_tool_calls([("lookup", {"q": "a"}), ("lookup", {"q": "b"})])
    env.fake.fail(503)
    with pytest.raises(APIError):
        await chat.send(conv.id, "Find", idempotency_key="k")
    assert log == ["a", "b"]
    assert await env.roles(conv.id) == ["user", "assistant", "tool", "tool"]

    result = await chat.send(conv.id, "Find", idempotency_key="k")
    assert log == ["a", "b"]  # stored results are not re-run
    assert result.text == "You said: Find" and not result.from_store
    assert await env.roles(conv.id) == ["user", "assistant", "tool", "tool", "assistant"]
    assert [(r.round, r.status) for r in result.runs] == [(0, "ok"), (1, "failed"), (1, "ok")]
    assert [r.id for r in result.runs] == [r.id for r in await env.runs(conv.id)]
    sent = json.loads(env.last_body())["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "tool", "tool"]
    again = await chat.send(conv.id, "Find", idempotency_key="k")
    assert again.from_store and again.reply == result.reply and log == ["a", "b"]
    assert len(env.model_requests()) == 3


async def test_a_crash_in_a_later_tool_round_resumes_in_that_round(env: Env) -> None:
    """The resume reads the round from the last reply's key: round 1's tool runs under
    round 1's key and the next request is round 2."""
    log: list[str] = []

    def lookup(q: str) -> str:
        log.append(q)
        if q == "b" and log.count("b") == 1:
            raise Crash  # dies in round 1, before b's result is stored
        return f"found {q}"

    chat = env.chat(tools=[lookup])
    conv = await env.store.create_conversation()
    env.fake.reply_tool_calls([("lookup", {"q": "a"})])
    env.fake.reply_tool_calls([("lookup", {"q": "b"})])
    with pytest.raises(Crash):
        await chat.send(conv.id, "Find", idempotency_key="k")
    assert await env.roles(conv.id) == ["user", "assistant", "tool", "assistant"]

    result = await chat.send(conv.id, "Find", idempotency_key="k")
    assert log == ["a", "b", "b"] and not result.from_store and not result.duplicate
    assert result.text == "You said: Find" and result.reply.seq == 6
    assert [(r.round, r.status) for r in result.runs] == [(0, "ok"), (1, "ok"), (2, "ok")]
    calls = [m.tool_calls[0].id for m in await env.thread(conv.id) if m.tool_calls]
    assert [m.idempotency_key for m in await env.thread(conv.id)] == [
        "k", "k#r0", f"k#t0:{calls[0]}", "k#r1", f"k#t1:{calls[1]}", "k#r2",
    ]
    assert len(env.model_requests()) == 3


async def test_a_failed_continuation_is_completed_by_the_same_key(env: Env) -> None:
    """A retried continue_turn finds its tool results stored and no reply after them."""
    chat = env.chat(client_options={"max_retries": 0})
    conv = await env.store.create_conversation()
    env.fake.reply_tool_calls([("lookup", {"q": "a"})])
    first = await chat.send(conv.id, "Find", idempotency_key="k")
    [call] = first.pending_tool_calls
    results = [Message.tool("found a", tool_call_id=call.id)]
    env.fake.fail(500)
    with pytest.raises(InternalServerError):
        await chat.continue_turn(conv.id, results, idempotency_key="k")
    assert await env.roles(conv.id) == ["user", "assistant", "tool"]

    done = await chat.continue_turn(conv.id, results, idempotency_key="k")
    assert done.text == "You said: Find" and not done.from_store and done.run.round == 1
    assert [m.role for m in done.messages] == ["tool", "assistant"]
    assert await env.roles(conv.id) == ["user", "assistant", "tool", "assistant"]
    again = await chat.continue_turn(conv.id, results, idempotency_key="k")
    assert again.from_store and again.reply == done.reply
    assert len(env.model_requests()) == 3


async def test_a_crash_inside_a_tool_resumes_with_the_tools_not_yet_run(env: Env) -> None:
    log: list[str] = []

    def lookup(q: str) -> str:
        log.append(q)
        if q == "b" and log.count("b") == 1:
            raise Crash  # the process "dies" after a's result was stored
        return f"found {q}"

    chat = env.chat(tools=[lookup])
    conv = await env.store.create_conversation()
    env.fake.reply_tool_calls([("lookup", {"q": "a"}), ("lookup", {"q": "b"})])
    with pytest.raises(Crash):
        await chat.send(conv.id, "Find", idempotency_key="k")
    assert await env.roles(conv.id) == ["user", "assistant", "tool"]

    result = await chat.send(conv.id, "Find", idempotency_key="k")
    assert log == ["a", "b", "b"]  # a is not run again; b (never stored) is
    assert [m.text for m in result.messages if m.role == "tool"] == ["found a", "found b"]
    assert await env.roles(conv.id) == ["user", "assistant", "tool", "tool", "assistant"]
    assert len(env.model_requests()) == 2


async def test_a_retried_continue_turn_stores_one_reply(env: Env) -> None:
    chat = env.chat()
    conv = await env.store.create_conversation()
    env.fake.reply_tool_calls([("lookup", {"q": "a"})])
    env.fake.reply_tool_calls([("lookup", {"q": "b"})])
    first = await chat.send(conv.id, "Find", idempotency_key="k")
    [call] = first.pending_tool_calls
    results = [Message.tool("found a", tool_call_id=call.id)]
    second = await chat.continue_turn(conv.id, results, idempotency_key="k")
    again = await chat.continue_turn(conv.id, results, idempotency_key="k")
    assert again.from_store and again.reply == second.reply
    assert again.pending_tool_calls == second.pending_tool_calls != []
    [call] = second.pending_tool_calls
    results = [Message.tool("found b", tool_call_id=call.id)]
    done = await chat.continue_turn(conv.id, results, idempotency_key="k")
    again = await chat.continue_turn(conv.id, results, idempotency_key="k")
    assert again.from_store and again.reply == done.reply and done.pending_tool_calls == []
    stored = await env.thread(conv.id)
    assert [m.role for m in stored] == ["user", "assistant", "tool", "assistant", "tool",
                                        "assistant"]
    assert [m.idempotency_key for m in stored] == [
        "k", "k#r0", f"k#t0:{first.reply.tool_calls[0].id}", "k#r1", f"k#t1:{call.id}", "k#r2",
    ]
    assert [r.round for r in await env.runs(conv.id)] == [0, 1, 2]
    assert len(env.model_requests()) == 3


async def test_another_turns_reply_after_a_keyed_user_message_is_not_its_answer(env: Env) -> None:
    """Two keyed turns interleaved on one conversation: B's user message, A's user
    message, B's reply. A's send (first or retried) must call the model for its own
    reply, not take B's reply as its answer (that shortcut is for a regenerate's
    branch, where the user message is inherited)."""
    chat = env.chat()
    conv = await env.store.create_conversation()
    await env.store.append(conv.id, {"role": "user", "content": "from B"}, idempotency_key="kB")
    await env.store.append(conv.id, {"role": "user", "content": "from A"}, idempotency_key="kA")
    b = await chat.send(conv.id, "from B", idempotency_key="kB")  # B's retry: its reply at seq 3
    assert b.reply.seq == 3 and not b.from_store
    a = await chat.send(conv.id, "from A", idempotency_key="kA")
    assert not a.from_store and a.run is not None and a.run.status == "ok"
    assert a.reply.id != b.reply.id and a.reply.idempotency_key == "kA#r0"
    assert len(env.model_requests()) == 2
    assert [m.idempotency_key for m in await env.thread(conv.id)] == ["kB", "kA", "kB#r0", "kA#r0"]


async def test_manual_rounds_with_repeated_call_ids(env: Env) -> None:
    """Servers that number calls per reply (``call_0``) repeat ids across rounds."""
    chat = env.chat()
    conv = await env.store.create_conversation()
    for q in ("a", "b"):
        env.fake.reply_tool_calls([ToolCall(
            id="call_0", function=FunctionCall(name="lookup", arguments=json.dumps({"q": q}))
        )])
    await chat.send(conv.id, "Find", idempotency_key="k")
    second = await chat.continue_turn(
        conv.id, [Message.tool("found a", tool_call_id="call_0")], idempotency_key="k"
    )
    assert [c.id for c in second.pending_tool_calls] == ["call_0"]
    done = await chat.continue_turn(
        conv.id, [Message.tool("found b", tool_call_id="call_0")], idempotency_key="k"
    )
    assert done.pending_tool_calls == [] and done.run.round == 2
    assert [m.text for m in await env.thread(conv.id) if m.role == "tool"] == [
        "found a", "found b",
    ]
    sent = json.loads(env.last_body())["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "tool", "assistant", "tool"]


async def test_an_interrupted_send_cancels_its_run(env: Env) -> None:
    """Ctrl-C in a sync send, task cancellation in an async one: run cancelled, message kept."""
    gate = asyncio.Event()
    long = "x" * 5000  # the run keeps the first 4,000 characters of the error's text
    interrupts = [KeyboardInterrupt(long)]

    def interrupt() -> None:
        if interrupts:
            raise interrupts.pop()

    tap = Tap(env.fake.transport(), before=interrupt, abefore=gate.wait)
    chat = env.chat(client_options={"transport": tap})
    conv = await env.store.create_conversation()
    if env.is_async:
        task = asyncio.ensure_future(chat.send(conv.id, "Hello", idempotency_key="k"))
        for _ in range(6000):  # bounded: a broken turn fails here instead of hanging
            if [r for r in await env.runs(conv.id) if r.status == "pending"]:
                break
            await asyncio.sleep(0.01)
        task.cancel(long)
        with pytest.raises(asyncio.CancelledError):
            await task
        gate.set()
    else:
        with pytest.raises(KeyboardInterrupt):
            await chat.send(conv.id, "Hello", idempotency_key="k")
    [run] = await env.runs(conv.id)
    assert run.error_type in ("CancelledError", "KeyboardInterrupt")
    assert run.error_message == long[:4000]
    await complete_after_failure(env, chat, conv.id, "k", "Hello", ["cancelled"])


#: what a broken (or only unusual) server may report, past the columns that hold it
ODD_ANSWERS = {
    "a model named by a long file path": {"model": "/models/" + "m" * 300 + ".gguf"},
    "a long system fingerprint": {"system_fingerprint": "fp_" + "f" * 300},
    "a long finish reason": {"finish_reason": "stopped_" + "x" * 100},
    "negative token counts": {"usage": {"prompt_tokens": -5, "completion_tokens": -1,
                                        "total_tokens": -6}},
    "counts past 32 bits": {"usage": {"prompt_tokens": 2**40, "completion_tokens": 2**31,
                                      "total_tokens": 2**40 + 2**31}},
    "counts at the column's bounds": {"usage": {"prompt_tokens": 2**31 - 1, "completion_tokens": 0,
                                                "total_tokens": 2**31 - 1}},
}


@pytest.mark.parametrize("odd", ODD_ANSWERS)
async def test_a_reply_is_stored_whatever_metadata_the_server_reports(env: Env, odd: str) -> None:
    """The reply's metadata is cut to its columns (counts out of range are unknown) and
    the run keeps the answer whole: the model was paid for, so the turn completes
    (it raised StoreInputError at finish_run and left the run pending forever)."""
    patch = ODD_ANSWERS[odd]
    answer: dict[str, Any] = {
        "id": "chatcmpl-odd", "object": "chat.completion", "created": 1,
        "model": patch.get("model", "gpt-4o-mini"),
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi there."},
                     "finish_reason": patch.get("finish_reason", "stop"), "logprobs": None}],
        "usage": patch.get("usage", {"prompt_tokens": 5, "completion_tokens": 3,
                                     "total_tokens": 8}),
    }
    if "system_fingerprint" in patch:
        answer["system_fingerprint"] = patch["system_fingerprint"]
    env.fake.malformed(json.dumps(answer), status=200)
    chat = env.chat()
    conv = await env.store.create_conversation()
    result = await chat.send(conv.id, "Hello", idempotency_key="k")
    run, reply = result.run, result.reply
    info = reply.reply
    assert run.status == "ok" and reply.text == "Hi there." and info is not None
    assert info.model == answer["model"][:255]
    assert info.finish_reason == answer["choices"][0]["finish_reason"][:64] == run.finish_reason
    fingerprint = answer.get("system_fingerprint")
    assert info.system_fingerprint == (fingerprint[:255] if fingerprint else None)
    assert run.system_fingerprint == info.system_fingerprint
    usage = answer["usage"]
    for key, column in (("prompt_tokens", "reported_prompt_tokens"),
                        ("completion_tokens", "completion_tokens")):
        count = usage[key]
        assert getattr(run, column) == (count if 0 <= count < 2**31 else None), key
    assert info.usage is not None and info.usage["prompt_tokens"] == usage["prompt_tokens"]
    assert run.response is not None and run.response["model"] == answer["model"]  # whole
    stored = await env.store.messages(conv.id)
    assert [m.role for m in stored] == ["user", "assistant"] and stored[-1] == reply
    again = await chat.send(conv.id, "Hello", idempotency_key="k")
    assert again.from_store and again.reply == reply


def _answer(message: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": "chatcmpl-bad", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", **message},
                     "finish_reason": "stop", "logprobs": None}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
    }


_CALL = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}

#: replies whose text no column can hold: NUL (PostgreSQL text refuses it) and lone
#: surrogates (no UTF-8 spelling); json.dumps escapes both, as a server's JSON would
UNSTORABLE = {
    "a NUL in the text": {"content": "bad \x00 reply"},
    "a lone surrogate in the text": {"content": "bad \ud800 reply"},
    "a NUL in a refusal": {"content": None, "refusal": "no\x00"},
    "a NUL in a tool call's arguments": {"content": None, "tool_calls": [
        {**_CALL, "function": {"name": "f", "arguments": '{"a": "\x00"}'}}]},
    "a lone surrogate in a tool call's id": {"content": None, "tool_calls": [
        {**_CALL, "id": "call_\udfff"}]},
}


@pytest.mark.parametrize("bad", UNSTORABLE)
async def test_a_reply_the_store_refuses_fails_the_run_and_the_retry_completes(
    env: Env, bad: str
) -> None:
    """A reply holding what no column can hold is a malformed answer: the run is
    recorded failed, with the tokens paid for, nothing of the reply is written, and the
    same key completes the turn (before, finish_run raised StoreInputError from the
    turn and the run stayed pending forever)."""
    env.fake.malformed(json.dumps(_answer(UNSTORABLE[bad])), status=200)
    chat = env.chat()
    conv = await env.store.create_conversation()
    with pytest.raises(APIResponseValidationError) as caught:
        await chat.send(conv.id, "Hello", idempotency_key="k")
    # (a lone surrogate's escape is refused by the client's JSON parser already)
    store_refused = "surrogate" not in bad
    assert ("reply cannot be stored" in str(caught.value)) is store_refused
    assert "\x00" not in str(caught.value) and caught.value.__cause__ is None
    [run] = await env.runs(conv.id)
    assert (run.status, run.error_type) == ("failed", "APIResponseValidationError")
    assert run.error_message == str(caught.value)
    if store_refused:  # the answer was read: the tokens paid for are recorded
        assert (run.reported_prompt_tokens, run.completion_tokens) == (5, 3)
    assert run.response is None and run.reply_message_id is None
    await complete_after_failure(env, chat, conv.id, "k", "Hello", ["failed"])


async def test_a_streamed_reply_the_store_refuses_fails_the_run(env: Env) -> None:
    env.fake.reply("bad \x00 reply")
    chat = env.chat()
    conv = await env.store.create_conversation()
    stream = chat.stream(conv.id, "Hello", idempotency_key="k")
    events = []
    with pytest.raises(APIResponseValidationError, match="NUL character"):
        while (event := await stream.next()) is not None:
            events.append(event)
    assert "".join(e.text for e in events) == "bad \x00 reply"  # the caller saw it all
    [run] = await env.runs(conv.id)
    assert (run.status, run.error_type, run.stream) == ("failed", "APIResponseValidationError", True)
    await complete_after_failure(env, chat, conv.id, "k", "Hello", ["failed"])


@pytest.mark.parametrize("how", ["cut", "closed"])
async def test_a_partial_answer_the_store_refuses_is_left_out_of_the_run(
    env: Env, how: str
) -> None:
    """A stream that breaks (or that the caller closes) after text no column can hold:
    the run is recorded without its partial answer (it stayed pending)."""
    chat = env.chat(client_options={"max_retries": 0})
    conv = await env.store.create_conversation()
    if how == "cut":
        env.fake.cut_stream(after_chunks=3, text="one \x00 two three four", abort=False)
    else:
        env.fake.reply("one \x00 two three four")
    stream = chat.stream(conv.id, "Hello", idempotency_key="k")
    if how == "cut":
        with pytest.raises(APIStreamError):
            while await stream.next() is not None:
                pass
    else:
        assert "\x00" in "".join(e.text for e in await stream.events(2))
        await stream.close()
    [run] = await env.runs(conv.id)
    status = "incomplete" if how == "cut" else "cancelled"
    assert run.status == status and run.response is None and run.finished_at is not None
    await complete_after_failure(env, chat, conv.id, "k", "Hello", [status])
