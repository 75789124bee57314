"""convo.testing.FakeBackend through plain httpx: in-process transport (sync, async)
and the loopback server (sync, async). Every behaviour runs in all four modes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from convo import ConfigurationError, FunctionCall, ToolCall
from convo._tokens.counter import TokenCounter, count_tokens
from convo.testing import FakeBackend, FakeServer

MODES = ("transport-sync", "transport-async", "server-sync", "server-async")
USER = [{"role": "user", "content": "Hello!"}]
CHAT = "/v1/chat/completions"
# One TLS context for every client: building one per client costs more than a fake request.
SSL = ssl.create_default_context()
COMPLETIONS = "/v1/completions"


@dataclass
class Api:
    """One way of reaching the fake: same calls whatever the mode."""

    fake: FakeBackend
    mode: str
    server: FakeServer | None

    def _client_args(self, timeout: float) -> dict[str, Any]:
        if self.server is not None:
            return {"base_url": self.server.url, "timeout": timeout, "verify": SSL}
        return {
            "base_url": "http://fake",
            "transport": self.fake.transport(),
            "timeout": timeout,
            "verify": SSL,
        }

    async def request(
        self, method: str, path: str, *, timeout: float = 5.0, **kw: Any
    ) -> httpx.Response:
        args = self._client_args(timeout)
        if self.mode.endswith("async"):
            async with httpx.AsyncClient(**args) as client:
                return await client.request(method, path, **kw)
        with httpx.Client(**args) as client:
            return client.request(method, path, **kw)

    async def post(self, path: str, body: Any, **kw: Any) -> httpx.Response:
        return await self.request("POST", path, json=body, **kw)

    async def stream(self, path: str, body: Any) -> tuple[list[bytes], BaseException | None]:
        """The body as received, chunk by chunk, and the error that ended it, if any."""
        received: list[bytes] = []
        args = self._client_args(5.0)
        try:
            if self.mode.endswith("async"):
                async with (
                    httpx.AsyncClient(**args) as aclient,
                    aclient.stream("POST", path, json=body) as aresp,
                ):
                    async for part in aresp.aiter_raw():
                        received.append(part)  # keep what came before an error
            else:
                with httpx.Client(**args) as client, client.stream("POST", path, json=body) as resp:
                    for part in resp.iter_raw():
                        received.append(part)  # noqa: PERF402  (keep what came before an error)
        except httpx.HTTPError as exc:
            return received, exc
        return received, None


@pytest.fixture
def fake() -> FakeBackend:
    return FakeBackend(created=1_700_000_000)


@pytest.fixture(params=MODES)
def make_api(request: pytest.FixtureRequest) -> Iterator[Callable[[FakeBackend], Api]]:
    servers: list[FakeServer] = []

    def make(backend: FakeBackend) -> Api:
        server = None
        if request.param.startswith("server"):
            server = backend.serve()
            servers.append(server)
        return Api(backend, request.param, server)

    yield make
    for server in servers:
        server.close()


@pytest.fixture
def api(make_api: Callable[[FakeBackend], Api], fake: FakeBackend) -> Api:
    return make_api(fake)


def events(body: bytes) -> list[str]:
    """The data payloads of an SSE body."""
    text = body.decode()
    assert text.endswith("\n\n")
    out = []
    for block in text.split("\n\n")[:-1]:
        assert block.startswith("data: "), block
        out.append(block[len("data: ") :])
    return out


def chunks(body: bytes) -> list[dict[str, Any]]:
    data = events(body)
    assert data[-1] == "[DONE]"
    return [json.loads(d) for d in data[:-1]]


def counter(model: str = "gpt-4o") -> TokenCounter:
    return TokenCounter.for_model(model)


def assert_openai_error(resp: httpx.Response, status: int, message: str, **fields: Any) -> None:
    assert resp.status_code == status
    assert resp.headers["content-type"] == "application/json"
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["message"] == message
    assert err["type"] == fields.get("type", "invalid_request_error")
    assert err["param"] == fields.get("param")
    assert err["code"] == fields.get("code")


# --- default replies and usage -------------------------------------------------------------------


async def test_default_chat_reply_shape_and_usage(api: Api) -> None:
    resp = await api.post(CHAT, {"model": "gpt-4o", "messages": USER})
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "application/json"
    body = resp.json()
    assert body == {
        "id": "chatcmpl-fake-1",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "gpt-4o",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "You said: Hello!",
                    "refusal": None,
                    "annotations": [],
                },
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": count_tokens(USER, model="gpt-4o"),
            "completion_tokens": counter().count("You said: Hello!"),
            "total_tokens": count_tokens(USER, model="gpt-4o")
            + counter().count("You said: Hello!"),
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        },
        "service_tier": "default",
        "system_fingerprint": "fp_convofake",
    }
    # OpenAI's published example: "Hello!" to gpt-4o costs 9 prompt tokens.
    assert body["usage"]["prompt_tokens"] == 9


async def test_default_chat_reply_echoes_last_user_text(api: Api) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "ok"},
        {
            "role": "user",
            "content": [{"type": "text", "text": "se"}, {"type": "text", "text": "cond"}],
        },
    ]
    resp = await api.post(CHAT, {"model": "gpt-4o", "messages": messages})
    assert resp.json()["choices"][0]["message"]["content"] == "You said: second"
    long = "x" * 500
    resp = await api.post(
        CHAT, {"model": "gpt-4o", "messages": [{"role": "user", "content": long}]}
    )
    assert resp.json()["choices"][0]["message"]["content"] == "You said: " + "x" * 200 + "..."


async def test_unknown_model_counts_with_fallback_encoding(make_api: Callable[..., Api]) -> None:
    for encoding in ("o200k_base", "cl100k_base"):
        api = make_api(FakeBackend(encoding=encoding))
        resp = await api.post(CHAT, {"model": "my-local-llm", "messages": USER})
        usage = resp.json()["usage"]
        assert usage["prompt_tokens"] == count_tokens(USER, model="my-local-llm", encoding=encoding)
        assert usage["completion_tokens"] == TokenCounter.for_encoding(encoding).count(
            "You said: Hello!"
        )


async def test_default_completion_reply_and_usage(api: Api) -> None:
    prompt = "System: Be brief.\n\nUser: What is 2+2?\n\nAssistant:"
    resp = await api.post(COMPLETIONS, {"model": "gpt-3.5-turbo-instruct", "prompt": prompt})
    assert resp.status_code == 200
    body = resp.json()
    text = " You said: What is 2+2?"
    enc = counter("gpt-3.5-turbo-instruct")
    assert body == {
        "id": "cmpl-fake-1",
        "object": "text_completion",
        "created": 1_700_000_000,
        "model": "gpt-3.5-turbo-instruct",
        "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": "stop"}],
        "usage": {
            "prompt_tokens": enc.count(prompt),
            "completion_tokens": enc.count(text),
            "total_tokens": enc.count(prompt) + enc.count(text),
        },
        "system_fingerprint": "fp_convofake",
    }


async def test_completion_prompt_list_echo_and_n(api: Api) -> None:
    body = {"model": "davinci-002", "prompt": ["User: a", "User: b"], "n": 2, "echo": True}
    resp = await api.post(COMPLETIONS, body)
    choices = resp.json()["choices"]
    assert [c["index"] for c in choices] == [0, 1, 2, 3]
    assert [c["text"] for c in choices] == [
        "User: a You said: a",
        "User: a You said: a",
        "User: b You said: b",
        "User: b You said: b",
    ]
    resp = await api.post(COMPLETIONS, {"model": "davinci-002", "prompt": [1, 2, 3]})
    assert resp.json()["choices"][0]["text"] == " You sent 3 tokens."
    assert resp.json()["usage"]["prompt_tokens"] == 3


# --- scripted replies ----------------------------------------------------------------------------


async def test_scripted_replies_are_consumed_in_order(api: Api, fake: FakeBackend) -> None:
    fake.reply("one")
    fake.reply("two", finish_reason="length")
    assert fake.pending == 2
    contents = []
    for _ in range(3):
        resp = await api.post(CHAT, {"model": "gpt-4o", "messages": USER})
        choice = resp.json()["choices"][0]
        contents.append((choice["message"]["content"], choice["finish_reason"]))
    assert contents == [("one", "stop"), ("two", "length"), ("You said: Hello!", "stop")]
    assert fake.pending == 0


async def test_scripted_reply_answers_completions_too(api: Api, fake: FakeBackend) -> None:
    fake.reply(" scripted")
    resp = await api.post(COMPLETIONS, {"model": "gpt-3.5-turbo-instruct", "prompt": "Hi"})
    assert resp.json()["choices"][0]["text"] == " scripted"


async def test_reply_tool_calls(api: Api, fake: FakeBackend) -> None:
    fake.reply_tool_calls(
        [
            ("get_weather", {"city": "Paris"}),
            ToolCall(id="call_given", function=FunctionCall(name="now", arguments="{}")),
            ("broken", "{not json"),
        ]
    )
    resp = await api.post(CHAT, {"model": "gpt-4o", "messages": USER})
    choice = resp.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    assert choice["message"]["tool_calls"] == [
        {
            "id": "call_fake_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": json.dumps({"city": "Paris"})},
        },
        {"id": "call_given", "type": "function", "function": {"name": "now", "arguments": "{}"}},
        {
            "id": "call_fake_2",
            "type": "function",
            "function": {"name": "broken", "arguments": "{not json"},
        },
    ]
    enc = counter()
    expected = sum(
        enc.count(n) + enc.count(a)
        for n, a in [("get_weather", '{"city": "Paris"}'), ("now", "{}"), ("broken", "{not json")]
    )
    assert resp.json()["usage"]["completion_tokens"] == expected


async def test_reply_json_and_refusal(api: Api, fake: FakeBackend) -> None:
    fake.reply_json({"a": 1, "b": [True, None]})
    fake.reply_refusal("I can't help with that.")
    resp = await api.post(CHAT, {"model": "gpt-4o", "messages": USER})
    assert resp.json()["choices"][0]["message"]["content"] == json.dumps(
        {"a": 1, "b": [True, None]}
    )
    resp = await api.post(CHAT, {"model": "gpt-4o", "messages": USER})
    message = resp.json()["choices"][0]["message"]
    assert message["content"] is None
    assert message["refusal"] == "I can't help with that."


async def test_scripted_usage_is_sent_as_given(api: Api, fake: FakeBackend) -> None:
    fake.reply("hi", usage={"prompt_tokens": 10, "completion_tokens": 5})
    fake.reply("hi", usage={"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 99})
    first = (await api.post(CHAT, {"model": "gpt-4o", "messages": USER})).json()["usage"]
    assert (first["prompt_tokens"], first["completion_tokens"], first["total_tokens"]) == (
        10,
        5,
        15,
    )
    second = (await api.post(CHAT, {"model": "gpt-4o", "messages": USER})).json()["usage"]
    assert second["total_tokens"] == 99


async def test_n_choices(api: Api, fake: FakeBackend) -> None:
    resp = await api.post(CHAT, {"model": "gpt-4o", "messages": USER, "n": 3})
    body = resp.json()
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    assert {c["message"]["content"] for c in body["choices"]} == {"You said: Hello!"}
    assert body["usage"]["completion_tokens"] == 3 * counter().count("You said: Hello!")
    fake.reply_tool_calls([("f", {})])
    resp = await api.post(CHAT, {"model": "gpt-4o", "messages": USER, "n": 2})
    ids = [c["message"]["tool_calls"][0]["id"] for c in resp.json()["choices"]]
    assert ids == ["call_fake_1", "call_fake_2"]


async def test_stop_sequences_and_max_tokens_cut_the_reply(api: Api, fake: FakeBackend) -> None:
    fake.reply("Sure.\nUser: and then?", finish_reason="length")
    resp = await api.post(CHAT, {"model": "gpt-4o", "messages": USER, "stop": ["\nUser:"]})
    choice = resp.json()["choices"][0]
    assert (choice["message"]["content"], choice["finish_reason"]) == ("Sure.", "stop")

    fake.reply("one two three four five six seven eight")
    resp = await api.post(CHAT, {"model": "gpt-4o", "messages": USER, "max_completion_tokens": 3})
    choice = resp.json()["choices"][0]
    assert (choice["message"]["content"], choice["finish_reason"]) == ("one two three", "length")
    assert resp.json()["usage"]["completion_tokens"] == 3

    resp = await api.post(
        COMPLETIONS,
        {"model": "gpt-3.5-turbo-instruct", "prompt": "User: a b c d e", "max_tokens": 2},
    )
    choice = resp.json()["choices"][0]
    assert choice["finish_reason"] == "length"
    assert counter("gpt-3.5-turbo-instruct").count(choice["text"]) <= 2


async def test_json_modes_default_to_valid_json(api: Api) -> None:
    messages = [{"role": "user", "content": "Answer in JSON: hi"}]
    body = {"model": "gpt-4o", "messages": messages, "response_format": {"type": "json_object"}}
    resp = await api.post(CHAT, body)
    content = json.loads(resp.json()["choices"][0]["message"]["content"])
    assert content == {"message": "You said: Answer in JSON: hi"}

    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "age": {"type": "integer", "minimum": 18},
            "tags": {"type": "array", "items": {"type": "string"}},
            "kind": {"enum": ["cat", "dog"]},
            "owner": {"$ref": "#/$defs/owner"},
            "note": {"type": ["string", "null"]},
            "optional": {"type": "string"},
        },
        "required": ["name", "age", "tags", "kind", "owner", "note"],
        "$defs": {
            "owner": {
                "type": "object",
                "properties": {"ok": {"type": "boolean"}, "score": {"type": "number"}},
                "required": ["ok", "score"],
            }
        },
    }
    fmt = {"type": "json_schema", "json_schema": {"name": "pet", "strict": True, "schema": schema}}
    resp = await api.post(CHAT, {"model": "gpt-4o", "messages": USER, "response_format": fmt})
    content = json.loads(resp.json()["choices"][0]["message"]["content"])
    assert content == {
        "name": "",
        "age": 18,
        "tags": [],
        "kind": "cat",
        "owner": {"ok": False, "score": 0},
        "note": "",
    }


# --- streaming -----------------------------------------------------------------------------------


async def test_stream_chat_text(api: Api, fake: FakeBackend) -> None:
    fake.reply("Hello there, how are you?")
    resp = await api.post(CHAT, {"model": "gpt-4o", "messages": USER, "stream": True})
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "text/event-stream; charset=utf-8"
    parts = chunks(resp.content)
    assert all(
        p["object"] == "chat.completion.chunk" and p["id"] == "chatcmpl-fake-1" for p in parts
    )
    assert all("usage" not in p for p in parts)
    first, last = parts[0]["choices"][0], parts[-1]["choices"][0]
    assert first["delta"] == {"role": "assistant", "content": "", "refusal": None}
    assert last == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
    middle = [p["choices"][0] for p in parts[1:-1]]
    assert len(middle) > 1  # several content deltas
    assert all(c["finish_reason"] is None and set(c["delta"]) == {"content"} for c in middle)
    assert "".join(c["delta"]["content"] for c in middle) == "Hello there, how are you?"


async def test_stream_chat_include_usage(api: Api) -> None:
    body = {
        "model": "gpt-4o",
        "messages": USER,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    parts = chunks((await api.post(CHAT, body)).content)
    *content, usage_chunk = parts
    assert all(p["usage"] is None for p in content)
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"]["prompt_tokens"] == count_tokens(USER, model="gpt-4o")
    assert usage_chunk["usage"]["completion_tokens"] == counter().count("You said: Hello!")
    # Obfuscation padding is on by default and can be turned off, as with OpenAI.
    assert all("obfuscation" in p for p in parts)
    body["stream_options"] = {"include_usage": True, "include_obfuscation": False}
    assert all("obfuscation" not in p for p in chunks((await api.post(CHAT, body)).content))


async def test_stream_chat_tool_calls(api: Api, fake: FakeBackend) -> None:
    fake.reply_tool_calls(
        [("get_weather", {"city": "Paris"}), ("get_time", {"tz": "Europe/Paris"})]
    )
    parts = chunks(
        (await api.post(CHAT, {"model": "gpt-4o", "messages": USER, "stream": True})).content
    )
    first = parts[0]["choices"][0]["delta"]
    assert first["role"] == "assistant" and first["content"] is None
    calls: dict[int, dict[str, str]] = {}
    headers = []
    for part in parts:
        for delta_call in part["choices"][0]["delta"].get("tool_calls", []):
            slot = calls.setdefault(delta_call["index"], {"name": "", "arguments": ""})
            if "id" in delta_call:
                headers.append((delta_call["index"], delta_call["id"], delta_call["type"]))
                slot["name"] = delta_call["function"]["name"]
            slot["arguments"] += delta_call["function"]["arguments"]
    assert headers == [(0, "call_fake_1", "function"), (1, "call_fake_2", "function")]
    assert calls == {
        0: {"name": "get_weather", "arguments": json.dumps({"city": "Paris"})},
        1: {"name": "get_time", "arguments": json.dumps({"tz": "Europe/Paris"})},
    }
    fragments = [p for p in parts if "tool_calls" in p["choices"][0]["delta"]]
    assert len(fragments) > 4  # arguments arrive in several pieces
    assert parts[-1]["choices"][0]["finish_reason"] == "tool_calls"


async def test_stream_chat_refusal(api: Api, fake: FakeBackend) -> None:
    fake.reply_refusal("No can do.")
    parts = chunks(
        (await api.post(CHAT, {"model": "gpt-4o", "messages": USER, "stream": True})).content
    )
    assert parts[0]["choices"][0]["delta"] == {"role": "assistant", "content": None, "refusal": ""}
    text = "".join(p["choices"][0]["delta"].get("refusal") or "" for p in parts)
    assert text == "No can do."


async def test_stream_n_choices_interleave(api: Api) -> None:
    body = {"model": "gpt-4o", "messages": USER, "stream": True, "n": 2}
    parts = chunks((await api.post(CHAT, body)).content)
    texts = {0: "", 1: ""}
    finishes = {}
    for part in parts:
        (choice,) = part["choices"]
        texts[choice["index"]] += choice["delta"].get("content") or ""
        if choice["finish_reason"]:
            finishes[choice["index"]] = choice["finish_reason"]
    assert texts == {0: "You said: Hello!", 1: "You said: Hello!"}
    assert finishes == {0: "stop", 1: "stop"}
    assert [p["choices"][0]["index"] for p in parts[:4]] == [0, 1, 0, 1]


async def test_stream_completion(api: Api) -> None:
    body = {
        "model": "gpt-3.5-turbo-instruct",
        "prompt": "User: tell me more\nAssistant:",
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    parts = chunks((await api.post(COMPLETIONS, body)).content)
    *content, usage_chunk = parts
    assert all(p["object"] == "text_completion" and p["usage"] is None for p in content)
    assert "".join(p["choices"][0]["text"] for p in content) == " You said: tell me more"
    assert [p["choices"][0]["finish_reason"] for p in content][-2:] == [None, "stop"]
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"]["completion_tokens"] == counter("gpt-3.5-turbo-instruct").count(
        " You said: tell me more"
    )


# --- failures on demand --------------------------------------------------------------------------


async def test_fail_429_with_retry_after(api: Api, fake: FakeBackend) -> None:
    fake.fail(429, headers={"retry-after": "0.05"})
    resp = await api.post(CHAT, {"model": "gpt-4o", "messages": USER})
    assert resp.headers["retry-after"] == "0.05"
    assert_openai_error(
        resp,
        429,
        "Rate limit reached for gpt-4o in organization org-fake on requests per min (RPM): "
        "Limit 3, Used 3, Requested 1. Please try again in 20s. "
        "Visit https://platform.openai.com/account/rate-limits to learn more.",
        type="requests",
        code="rate_limit_exceeded",
    )
    assert (await api.post(CHAT, {"model": "gpt-4o", "messages": USER})).status_code == 200


async def test_fail_500_and_custom_errors(api: Api, fake: FakeBackend) -> None:
    fake.fail(500)
    fake.fail(503, message="Slow down", type="server_error", code="overloaded")
    fake.fail(400, body={"error": {"message": "custom", "type": "x", "param": None, "code": None}})
    fake.fail(502, body="upstream gone", headers={"content-type": "text/plain"})
    resp = await api.post(CHAT, {"model": "gpt-4o", "messages": USER})
    assert_openai_error(
        resp,
        500,
        "The server had an error while processing your request. Sorry about that!",
        type="server_error",
    )
    resp = await api.post(CHAT, {"model": "gpt-4o", "messages": USER})
    assert_openai_error(resp, 503, "Slow down", type="server_error", code="overloaded")
    resp = await api.post(CHAT, {"model": "gpt-4o", "messages": USER})
    assert resp.status_code == 400 and resp.json()["error"]["message"] == "custom"
    resp = await api.post(COMPLETIONS, {"model": "gpt-4o", "prompt": "x"})
    assert (resp.status_code, resp.headers["content-type"], resp.text) == (
        502,
        "text/plain",
        "upstream gone",
    )


async def test_failures_answer_invalid_requests_replies_wait_for_valid_ones(
    api: Api, fake: FakeBackend
) -> None:
    fake.fail(500)
    resp = await api.post(CHAT, {"model": "gpt-4o", "messages": []})
    assert resp.status_code == 500  # infrastructure fails before validation
    fake.reply("kept")
    resp = await api.post(CHAT, {"model": "gpt-4o", "messages": []})
    assert resp.status_code == 400
    assert fake.pending == 1  # the invalid request did not consume the reply
    resp = await api.post(CHAT, {"model": "gpt-4o", "messages": USER})
    assert resp.json()["choices"][0]["message"]["content"] == "kept"
    # Other endpoints never consume the script.
    fake.fail(500)
    assert (await api.request("GET", "/v1/models")).status_code == 200
    assert fake.pending == 1


async def test_malformed_body(api: Api, fake: FakeBackend) -> None:
    fake.malformed(b"<html>bad gateway</html>", status=502, content_type="text/html")
    fake.malformed('{"id": "chatcmpl-1", "choi')
    resp = await api.post(CHAT, {"model": "gpt-4o", "messages": USER})
    assert (resp.status_code, resp.headers["content-type"], resp.content) == (
        502,
        "text/html",
        b"<html>bad gateway</html>",
    )
    resp = await api.post(CHAT, {"model": "gpt-4o", "messages": USER, "stream": True})
    assert resp.status_code == 200
    assert resp.content == b'{"id": "chatcmpl-1", "choi'
    with pytest.raises(ValueError):
        resp.json()


async def test_timeout(api: Api, fake: FakeBackend) -> None:
    fake.timeout(seconds=5.0)
    started = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        await api.post(CHAT, {"model": "gpt-4o", "messages": USER}, timeout=0.3)
    assert time.monotonic() - started < 3.0  # the client's timeout fired, not the stall's end
    resp = await api.post(CHAT, {"model": "gpt-4o", "messages": USER})
    assert resp.status_code == 200


async def test_cut_stream_drops_the_connection(api: Api, fake: FakeBackend) -> None:
    fake.cut_stream(after_chunks=2)
    received, error = await api.stream(CHAT, {"model": "gpt-4o", "messages": USER, "stream": True})
    assert isinstance(error, httpx.RemoteProtocolError)
    data = events(b"".join(received))
    assert len(data) == 2
    assert "[DONE]" not in data
    assert all(json.loads(d)["choices"][0]["finish_reason"] is None for d in data)
    # The next request is served normally.
    received, error = await api.stream(CHAT, {"model": "gpt-4o", "messages": USER, "stream": True})
    assert error is None and events(b"".join(received))[-1] == "[DONE]"


async def test_cut_stream_clean_end_and_limits(api: Api, fake: FakeBackend) -> None:
    fake.cut_stream(after_chunks=100, text="a b c", abort=False)
    received, error = await api.stream(CHAT, {"model": "gpt-4o", "messages": USER, "stream": True})
    assert error is None
    data = [json.loads(d) for d in events(b"".join(received))]
    # Everything up to, but not including, the finish reason.
    assert "".join(d["choices"][0]["delta"].get("content", "") for d in data) == "a b c"
    assert all(d["choices"][0]["finish_reason"] is None for d in data)


async def test_cut_non_streamed_body(api: Api, fake: FakeBackend) -> None:
    fake.cut_stream()
    with pytest.raises(httpx.RemoteProtocolError):
        await api.post(CHAT, {"model": "gpt-4o", "messages": USER})
    fake.cut_stream(abort=False)
    resp = await api.post(CHAT, {"model": "gpt-4o", "messages": USER})
    assert resp.status_code == 200
    with pytest.raises(ValueError):
        resp.json()
    assert resp.text.startswith('{"id":"chatcmpl-fake-')


# --- routing, headers, records -------------------------------------------------------------------


async def test_unknown_path_and_wrong_method(api: Api) -> None:
    resp = await api.request("POST", "/v1/chat/complete", json={})
    assert_openai_error(resp, 404, "Invalid URL (POST /v1/chat/complete)")
    resp = await api.request("GET", CHAT)
    assert_openai_error(resp, 404, "Invalid URL (GET /v1/chat/completions)")


async def test_bare_paths(api: Api) -> None:
    resp = await api.post("/chat/completions", {"model": "gpt-4o", "messages": USER})
    # The transport follows the client's base URL; the server serves /v1 only, like OpenAI.
    assert resp.status_code == (200 if api.mode.startswith("transport") else 404)


async def test_models(make_api: Callable[..., Api]) -> None:
    api = make_api(FakeBackend(models=["gpt-4o", "my-local"]))
    resp = await api.request("GET", "/v1/models")
    assert resp.json() == {
        "object": "list",
        "data": [
            {"id": "gpt-4o", "object": "model", "created": 1686935002, "owned_by": "openai"},
            {"id": "my-local", "object": "model", "created": 1686935002, "owned_by": "openai"},
        ],
    }
    resp = await api.request("GET", "/v1/models/my-local")
    assert resp.json()["id"] == "my-local"
    resp = await api.request("GET", "/v1/models/nope")
    assert_openai_error(
        resp, 404, "The model 'nope' does not exist", param="model", code="model_not_found"
    )
    listed = (await make_api(FakeBackend()).request("GET", "/v1/models")).json()["data"]
    assert {"gpt-4o", "gpt-4o-mini", "gpt-3.5-turbo-instruct"} <= {m["id"] for m in listed}


async def test_invalid_json_body(api: Api) -> None:
    resp = await api.request(
        "POST", CHAT, content=b"{not json", headers={"content-type": "application/json"}
    )
    assert resp.status_code == 400
    assert resp.json()["error"]["message"].startswith(
        "We could not parse the JSON body of your request."
    )
    assert fake_json(resp) == ("invalid_request_error", None, None)


def fake_json(resp: httpx.Response) -> tuple[Any, Any, Any]:
    err = resp.json()["error"]
    return err["type"], err["param"], err["code"]


async def test_a_few_validation_errors_over_every_mode(api: Api) -> None:
    resp = await api.post(CHAT, {"messages": USER})
    assert_openai_error(resp, 400, "you must provide a model parameter")
    resp = await api.post(CHAT, {"model": "gpt-4o", "messages": USER, "stop": list("abcde")})
    assert_openai_error(
        resp,
        400,
        "Invalid 'stop': array too long. Expected an array with maximum length 4, but got an "
        "array with length 5 instead.",
        param="stop",
        code="array_above_max_length",
    )


async def test_request_ids_on_every_response(api: Api, fake: FakeBackend) -> None:
    fake.fail(429)
    answers = [
        await api.post(CHAT, {"model": "gpt-4o", "messages": USER}),
        await api.post(CHAT, {"model": "gpt-4o", "messages": []}),
        await api.post(CHAT, {"model": "gpt-4o", "messages": USER}),
        await api.post(CHAT, {"model": "gpt-4o", "messages": USER, "stream": True}),
        await api.request("GET", "/v1/nowhere"),
    ]
    assert [a.headers["x-request-id"] for a in answers] == [f"req_fake_{i}" for i in range(1, 6)]


async def test_requests_are_recorded(api: Api, fake: FakeBackend) -> None:
    await api.post(
        CHAT + "?api-version=2024-06-01",
        {"model": "gpt-4o", "messages": USER, "seed": 7},
        headers={"Authorization": "Bearer sk-secret-123456", "X-Custom": "yes"},
    )
    await api.request("GET", "/v1/models")
    first, second = fake.requests
    assert (first.method, first.path, first.query) == ("POST", CHAT, "api-version=2024-06-01")
    assert first.json == {"model": "gpt-4o", "messages": USER, "seed": 7}
    assert json.loads(first.body) == first.json
    assert first.headers["authorization"] == "Bearer sk-secret-123456"
    assert first.headers["x-custom"] == "yes"
    assert "sk-secret" not in repr(first) and "<redacted>" in repr(first)
    assert (second.method, second.path, second.json) == ("GET", "/v1/models", None)
    assert fake.last_request is second
    fake.reset()
    assert fake.requests == [] and fake.pending == 0
    resp = await api.post(CHAT, {"model": "gpt-4o", "messages": USER})
    assert resp.json()["id"] == "chatcmpl-fake-1"  # counters restart too


async def test_api_key(make_api: Callable[..., Api]) -> None:
    fake = FakeBackend(api_key="sk-right-key-000")
    api = make_api(fake)
    assert "sk-right" not in repr(fake)
    resp = await api.post(CHAT, {"model": "gpt-4o", "messages": USER})
    assert resp.status_code == 401 and resp.json()["error"]["message"].startswith(
        "You didn't provide an API key."
    )
    resp = await api.post(
        CHAT,
        {"model": "gpt-4o", "messages": USER},
        headers={"authorization": "Bearer sk-wrong-key-999"},
    )
    assert_openai_error(
        resp,
        401,
        "Incorrect API key provided: ********-999. You can find your API key at "
        "https://platform.openai.com/account/api-keys.",
        code="invalid_api_key",
    )
    for headers in ({"authorization": "Bearer sk-right-key-000"}, {"api-key": "sk-right-key-000"}):
        resp = await api.post(CHAT, {"model": "gpt-4o", "messages": USER}, headers=headers)
        assert resp.status_code == 200


async def test_strict_params(make_api: Callable[..., Api]) -> None:
    body = {"model": "llama3", "messages": USER, "top_k": 40}
    resp = await make_api(FakeBackend()).post(CHAT, body)
    assert_openai_error(resp, 400, "Unrecognized request argument supplied: top_k")
    resp = await make_api(FakeBackend(strict=False)).post(CHAT, body)
    assert resp.status_code == 200


async def test_tool_call_reply_cannot_answer_completions(api: Api, fake: FakeBackend) -> None:
    fake.reply_tool_calls([("f", {})])
    body = {"model": "gpt-3.5-turbo-instruct", "prompt": "x"}
    if api.server is None:  # in process: the test's own mistake is raised at once
        with pytest.raises(ConfigurationError, match="cannot answer a /completions request"):
            await api.post(COMPLETIONS, body)
    else:  # over HTTP: a loud 500 that says what is wrong
        resp = await api.post(COMPLETIONS, body)
        assert resp.status_code == 500
        assert resp.headers["x-request-id"] == "req_fake_1"
        assert "cannot answer a /completions request" in resp.json()["error"]["message"]


# --- concurrency, server life cycle --------------------------------------------------------------


async def test_concurrent_requests_each_take_one_scripted_reply(
    api: Api, fake: FakeBackend
) -> None:
    count = 24
    for i in range(count):
        fake.reply(f"reply {i}")
    args = api._client_args(10.0)
    if api.mode.endswith("async"):
        async with httpx.AsyncClient(**args) as client:
            answers = await asyncio.gather(
                *(
                    client.post(CHAT, json={"model": "gpt-4o", "messages": USER})
                    for _ in range(count)
                )
            )
    else:
        results: list[httpx.Response] = []
        lock = threading.Lock()

        def worker() -> None:
            with httpx.Client(**args) as client:
                resp = client.post(CHAT, json={"model": "gpt-4o", "messages": USER})
            with lock:
                results.append(resp)

        threads = [threading.Thread(target=worker) for _ in range(count)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        answers = results
    contents = sorted(a.json()["choices"][0]["message"]["content"] for a in answers)
    assert contents == sorted(f"reply {i}" for i in range(count))
    assert len({a.headers["x-request-id"] for a in answers}) == count
    assert fake.pending == 0


def test_server_close_ends_keep_alive_connections_and_frees_the_port() -> None:
    fake = FakeBackend()
    server = fake.serve()
    client = httpx.Client(base_url=server.base_url)
    assert (
        client.post("/chat/completions", json={"model": "gpt-4o", "messages": USER}).status_code
        == 200
    )
    fake.timeout(seconds=60)
    stalled: list[BaseException] = []

    def stall() -> None:
        try:
            httpx.post(
                server.base_url + "/chat/completions",
                json={"model": "gpt-4o", "messages": USER},
                timeout=30,
            )
        except httpx.HTTPError as exc:
            stalled.append(exc)

    thread = threading.Thread(target=stall)
    thread.start()
    while fake.pending != 0:
        time.sleep(0.01)
    started = time.monotonic()
    server.close()
    thread.join(5)
    assert time.monotonic() - started < 2.0  # neither the stall nor the idle connection held it
    assert stalled and isinstance(stalled[0], httpx.RemoteProtocolError)
    server.close()  # idempotent
    with pytest.raises(httpx.ConnectError):
        httpx.get(server.url + "/v1/models", timeout=2)
    client.close()


def test_serve_forever_is_silent_and_returns_on_interrupt(tmp_path: Any) -> None:
    script = (
        "import sys, pathlib\n"
        "from convo.testing import serve_forever\n"
        "marker = pathlib.Path(sys.argv[1])\n"
        "serve_forever(port=0, on_ready=lambda server: marker.write_text(server.base_url))\n"
        "marker.with_suffix('.done').write_text('ok')\n"
    )
    marker = tmp_path / "url"
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(marker)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONWARNINGS": "error"},
    )
    try:
        deadline = time.monotonic() + 30
        while not marker.exists() or not marker.read_text():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        base_url = marker.read_text()
        resp = httpx.post(
            base_url + "/chat/completions", json={"model": "gpt-4o", "messages": USER}
        )
        assert resp.json()["choices"][0]["message"]["content"] == "You said: Hello!"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)  # generous: CI machines are shared and slow
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0
    assert (out, err) == (b"", b"")
    assert (tmp_path / "url.done").read_text() == "ok"
