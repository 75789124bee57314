"""Hostile input for the client: every case ends in a typed convo error, never a raw one.

Three tables, each run against OpenAIClient and AsyncOpenAIClient:

* ``SETTINGS``: bad constructor arguments and environment (malformed base
  URLs, keys with line breaks, header injection, bad timeouts, limits,
  retries) -> ConfigurationError, raised by the constructor;
* ``CALLS``: bad per-call input (model names, messages, parameter types,
  non-serializable or NaN bodies, headers, queries, options) ->
  ConfigurationError or InvalidMessageError, and nothing is sent;
* ``ANSWERS``: malformed answers of every kind (not JSON, wrong shapes,
  invalid UTF-8, nesting deeper than Python recurses, bodies too large,
  broken and hostile streams) -> the APIError subclass that says so.

Before, many of these escaped as ``httpx.InvalidURL``, ``TypeError``,
``UnicodeEncodeError``, ``h11.LocalProtocolError`` (printing the header
value, key included) or ``RecursionError``, or were sent as invalid JSON.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from test_client_helpers import Api, Body, Server, chat_json

from convo import (
    APIConnectionError,
    APIResponseTooLargeError,
    APIResponseValidationError,
    APIStatusError,
    APIStreamError,
    AsyncOpenAIClient,
    ConfigurationError,
    ConvoError,
    InternalServerError,
    InvalidMessageError,
    Message,
    OpenAIClient,
    RateLimitError,
)

HI = [Message.user("Hi")]


@pytest.fixture(params=["sync", "async"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


# --- settings: the constructor refuses them ---------------------------------------------

SETTINGS: dict[str, dict[str, Any]] = {
    "base_url: unclosed IPv6 bracket": {"base_url": "http://[::1/v1"},
    "base_url: port out of range": {"base_url": "http://host:99999/v1"},
    "base_url: space in the host": {"base_url": "http://exa mple.com/v1"},
    "base_url: trailing newline": {"base_url": "http://host/v1\n"},
    "base_url: NUL inside": {"base_url": "http://host/v\x001"},
    "base_url: an int": {"base_url": 8000},
    "base_url: bytes": {"base_url": b"http://host/v1"},
    "base_url: a list": {"base_url": ["http://host/v1"]},
    "base_url: empty": {"base_url": ""},
    "base_url: no scheme": {"base_url": "localhost:8000/v1"},
    "base_url: ftp": {"base_url": "ftp://host/v1"},
    "base_url: no host": {"base_url": "http:///v1"},
    "base_url: a fragment": {"base_url": "https://gw/openai/v1#deployments"},
    "base_url: bad IDNA host": {"base_url": "http://xn--/v1"},
    "api_key: an int": {"api_key": 12345},
    "api_key: trailing newline": {"api_key": "sk-abc123\n"},
    "api_key: a space inside": {"api_key": "sk-abc 123"},
    "api_key: non-ASCII": {"api_key": "sk-abc\u00e9"},
    "organization: line break": {"organization": "org-1\r\nX-Injected: 1"},
    "project: an int": {"project": 42},
    "max_retries: negative": {"max_retries": -1},
    "max_retries: True": {"max_retries": True},
    "max_retries: a float": {"max_retries": 1.5},
    "max_retries: a string": {"max_retries": "2"},
    "timeout: negative": {"timeout": -1},
    "timeout: zero": {"timeout": 0},
    "timeout: NaN": {"timeout": float("nan")},
    "timeout: a string": {"timeout": "10"},
    "timeout: httpx.Timeout with a negative phase": {"timeout": httpx.Timeout(5, connect=-1)},
    "stream_idle_timeout: a string": {"stream_idle_timeout": "5"},
    "stream_timeout: infinite": {"stream_timeout": float("inf")},
    "max_response_bytes: zero": {"max_response_bytes": 0},
    "max_response_bytes: a float": {"max_response_bytes": 1e6},
    "max_event_bytes: negative": {"max_event_bytes": -1},
    "default_headers: CRLF injection": {"default_headers": {"X-A": "v\r\nInjected: 1"}},
    "default_headers: space in a name": {"default_headers": {"X A": "v"}},
    "default_headers: empty name": {"default_headers": {"": "v"}},
    "default_headers: an int value": {"default_headers": {"X-A": 1}},
    "default_headers: not a mapping": {"default_headers": "X-A: 1"},
    "default_headers: key with a newline": {"default_headers": {"api-key": "k-123456\n"}},
    "default_query: an object value": {"default_query": {"a": object()}},
    "default_query: NaN": {"default_query": {"a": float("nan")}},
    "default_query: not a mapping": {"default_query": [("a", "1")]},
    "http_client: not a client": {"http_client": object()},
}

ENVIRONMENT: dict[str, dict[str, str]] = {
    "$OPENAI_BASE_URL malformed": {"OPENAI_BASE_URL": "http://[::1/v1"},
    "$OPENAI_BASE_URL with a fragment": {"OPENAI_BASE_URL": "https://gw/v1#x"},
    "$OPENAI_API_KEY with a trailing newline": {"OPENAI_API_KEY": "sk-from-a-file\n"},
}


@pytest.mark.parametrize("settings", list(SETTINGS.values()), ids=list(SETTINGS))
def test_bad_settings(kind: str, settings: dict[str, Any]) -> None:
    cls = OpenAIClient if kind == "sync" else AsyncOpenAIClient
    settings = {"base_url": "http://fake.test/v1", **settings}
    with pytest.raises(ConfigurationError) as info:
        cls(**settings)
    # A value that may be a key (the key, a header) is never shown.
    for name in ("api_key", "default_headers", "organization"):
        value = settings.get(name)
        for item in value.values() if isinstance(value, dict) else [value]:
            if isinstance(item, str) and len(item.strip()) >= 6:
                assert item.strip() not in str(info.value)


@pytest.mark.parametrize("env", list(ENVIRONMENT.values()), ids=list(ENVIRONMENT))
def test_bad_environment(kind: str, env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    cls = OpenAIClient if kind == "sync" else AsyncOpenAIClient
    with pytest.raises(ConfigurationError) as info:
        cls()
    assert "sk-from-a-file" not in str(info.value)


# --- per call: refused before anything is sent ------------------------------------------

_CONFIG, _MESSAGE = ConfigurationError, InvalidMessageError

CALLS: dict[str, tuple[str, dict[str, Any], type[ConvoError]]] = {
    "model: empty": ("chat", {"model": ""}, _CONFIG),
    "model: None": ("chat", {"model": None}, _CONFIG),
    "model: an int": ("chat", {"model": 42}, _CONFIG),
    "model: a newline": ("chat", {"model": "gpt-4o\n"}, _CONFIG),
    "model: a leading space": ("chat", {"model": " gpt-4o"}, _CONFIG),
    "model: a lone surrogate": ("chat", {"model": "gpt-\ud800"}, _CONFIG),
    "messages: a string": ("chat", {"messages": "Hi"}, _MESSAGE),
    "messages: empty": ("chat", {"messages": []}, _MESSAGE),
    "messages: an int inside": ("chat", {"messages": [3]}, _MESSAGE),
    "messages: an object inside a dict": (
        "chat", {"messages": [{"role": "user", "content": object()}]}, _MESSAGE
    ),
    "messages: a lone surrogate": (
        "chat", {"messages": [{"role": "user", "content": "\ud800"}]}, _MESSAGE
    ),
    "messages: NaN inside a dict": (
        "chat", {"messages": [{"role": "user", "content": "x", "w": float("nan")}]}, _MESSAGE
    ),
    "extra_body: an object": ("chat", {"extra_body": {"x": object()}}, _MESSAGE),
    "extra_body: NaN": ("chat", {"extra_body": {"x": float("nan")}}, _MESSAGE),
    "extra_body: Infinity deep inside": (
        "chat", {"extra_body": {"x": [{"y": float("-inf")}]}}, _MESSAGE
    ),
    "extra_body: not a mapping": ("chat", {"extra_body": [1, 2]}, _MESSAGE),
    "temperature: a string": ("chat", {"temperature": "hot"}, _CONFIG),
    "temperature: True": ("chat", {"temperature": True}, _CONFIG),
    "temperature: NaN": ("chat", {"temperature": float("nan")}, _CONFIG),
    "top_p: a list": ("chat", {"top_p": [0.5]}, _CONFIG),
    "n: a float": ("chat", {"n": 1.5}, _CONFIG),
    "n: True": ("chat", {"n": True}, _CONFIG),
    "max_tokens: a string": ("chat", {"max_tokens": "100"}, _CONFIG),
    "max_completion_tokens: a float": ("chat", {"max_completion_tokens": 100.0}, _CONFIG),
    "seed: a float": ("chat", {"seed": 1.0}, _CONFIG),
    "stop: a list of ints": ("chat", {"stop": [1, 2]}, _CONFIG),
    "stop: bytes": ("chat", {"stop": b"\n"}, _CONFIG),
    "logit_bias: a string value": ("chat", {"logit_bias": {"50256": "x"}}, _CONFIG),
    "logprobs (chat): an int": ("chat", {"logprobs": 5}, _CONFIG),
    "tools: a string": ("chat", {"tools": "get_weather"}, _CONFIG),
    "tools: an int inside": ("chat", {"tools": [1]}, _CONFIG),
    "tool_choice: an int": ("chat", {"tool_choice": 3}, _CONFIG),
    "response_format: a string": ("chat", {"response_format": "json"}, _CONFIG),
    "user: an int": ("chat", {"user": 42}, _CONFIG),
    "stream_options: a bool": ("chat_stream", {"stream_options": True}, _CONFIG),
    "extra_headers: a key with a newline": (
        "chat", {"extra_headers": {"Authorization": "Bearer sk-per-tenant\n"}}, _CONFIG
    ),
    "extra_headers: a bad name": ("chat", {"extra_headers": {"X Bad": "v"}}, _CONFIG),
    "extra_headers: bytes": ("chat", {"extra_headers": {"X-A": b"v"}}, _CONFIG),
    "extra_headers: non-ASCII": ("chat", {"extra_headers": {"X-A": "caf\u00e9"}}, _CONFIG),
    "extra_headers: not a mapping": ("chat", {"extra_headers": ["X-A", "v"]}, _CONFIG),
    "extra_query: a dict value": ("chat", {"extra_query": {"a": {"b": 1}}}, _CONFIG),
    "extra_query: a string": ("chat", {"extra_query": "a=1"}, _CONFIG),
    "timeout: negative": ("chat", {"timeout": -5}, _CONFIG),
    "timeout: a string": ("chat", {"timeout": "soon"}, _CONFIG),
    "max_retries: negative": ("chat", {"max_retries": -1}, _CONFIG),
    "max_retries: True": ("chat", {"max_retries": True}, _CONFIG),
    "stream_timeout: zero": ("chat_stream", {"stream_timeout": 0}, _CONFIG),
    "stream_idle_timeout: NaN": ("chat_stream", {"stream_idle_timeout": float("nan")}, _CONFIG),
    "max_response_bytes: a float": ("chat", {"max_response_bytes": 1.5}, _CONFIG),
    "max_event_bytes: True": ("chat_stream", {"max_event_bytes": True}, _CONFIG),
    "prompt: an int": ("complete", {"prompt": 3}, _MESSAGE),
    "prompt: empty list": ("complete", {"prompt": []}, _MESSAGE),
    "prompt: an int inside": ("complete", {"prompt": ["a", 1]}, _MESSAGE),
    "prompt: bytes": ("complete", {"prompt": b"bytes"}, _MESSAGE),
    "logprobs (completions): True": ("complete", {"logprobs": True}, _CONFIG),
    "echo: a string": ("complete", {"echo": "yes"}, _CONFIG),
    "suffix: an int": ("complete", {"suffix": 3}, _CONFIG),
    "best_of: a float": ("complete_stream", {"best_of": 1.5}, _CONFIG),
}


@pytest.mark.parametrize("case", list(CALLS.values()), ids=list(CALLS))
async def test_bad_call(kind: str, case: tuple[str, dict[str, Any], type[ConvoError]]) -> None:
    method, kwargs, error = case
    api = Api(kind)
    call: dict[str, Any] = {"model": "m"}
    call.update({"prompt": "Hi"} if method.startswith("complete") else {"messages": HI})
    call.update(kwargs)
    with pytest.raises(error) as info:
        await api.call(method, **call)
    assert type(info.value) is error
    assert "sk-per-tenant" not in str(info.value)
    assert api.server.requests == []  # refused before anything was sent


# --- answers: each malformed kind is the APIError that names it --------------------------


def _nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


Answer = Callable[[], httpx.Response]


def R(status: int, **kwargs: Any) -> Answer:
    """A fresh response per request (a body can be read once; httpx decodes content eagerly)."""

    def make() -> httpx.Response:
        stream = kwargs.get("stream")
        if isinstance(stream, Body):
            return httpx.Response(
                status, **{**kwargs, "stream": Body(list(stream.parts), fail_after=stream.fail_after)}
            )
        return httpx.Response(status, **kwargs)

    return make


def _sse(*parts: bytes) -> Answer:
    return R(200, stream=Body(list(parts)), headers={"content-type": "text/event-stream"})


_CHUNK = json.dumps(
    {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": None}],
    }
).encode()

ANSWERS: dict[str, tuple[str, Answer, type[Exception]]] = {
    "200 not JSON": ("chat", R(200, content=b"hello"), APIResponseValidationError),
    "200 empty": ("chat", R(200, content=b""), APIResponseValidationError),
    "204 no content": ("chat", R(204), APIResponseValidationError),
    "200 a JSON array": ("chat", R(200, json=[1, 2]), APIResponseValidationError),
    "200 JSON null": ("chat", R(200, content=b"null"), APIResponseValidationError),
    "200 choices null": (
        "chat", R(200, json={**chat_json(), "choices": None}),
        APIResponseValidationError,
    ),
    "200 invalid UTF-8": (
        "chat", R(200, content=b'{"id": "\xff\xfe"}'), APIResponseValidationError
    ),
    "200 truncated JSON": (
        "chat", R(200, content=json.dumps(chat_json()).encode()[:-20]),
        APIResponseValidationError,
    ),
    "200 an HTML page": (
        "chat", R(200, content=b"<html><body>proxy login</body></html>"),
        APIResponseValidationError,
    ),
    "200 an error object": (
        "chat", R(200, json={"error": {"message": "overloaded"}}),
        APIResponseValidationError,
    ),
    "200 nested 5000 deep": (
        "chat", R(200, content=_nested(5000)), APIResponseValidationError
    ),
    "200 a number too big": (
        "chat", R(200, content=b'{"created": 1e999999}'), APIResponseValidationError
    ),
    "200 a completion where a chat completion was asked": (
        "chat",
        R(200, json={"id": "x", "object": "text_completion", "created": 1,
                                  "model": "m", "choices": [{"index": 0, "text": "hi"}]}),
        APIResponseValidationError,
    ),
    "200 gzip that is not": (
        "chat", R(200, content=b"not gzip", headers={"content-encoding": "gzip"}),
        APIResponseValidationError,
    ),
    "200 body over the limit": (
        "chat", R(200, content=b" " * 70_000), APIResponseTooLargeError
    ),
    "body cut by the server": (
        "chat", R(200, stream=Body([b'{"id": ', b'"x"}'], fail_after=1)),
        APIConnectionError,
    ),
    "301 redirect": ("chat", R(301, headers={"location": "/x"}), APIStatusError),
    "418 teapot": ("chat", R(418, content=b"teapot"), APIStatusError),
    "429 with retry-after garbage": (
        "chat", R(429, headers={"retry-after": "soon"}), RateLimitError
    ),
    "500 error body nested 5000 deep": (
        "chat", R(500, content=_nested(5000)), InternalServerError
    ),
    "500 error body invalid UTF-8": (
        "chat", R(500, content=b"\xff\xfe\xfd"), InternalServerError
    ),
    "500 control characters in the error message": (
        "chat", R(500, json={"error": {"message": "\x1b]52;c;aGk=\x07 boom"}}),
        InternalServerError,
    ),
    "stream: data not JSON": ("chat_stream", _sse(b"data: {oops\n\n"), APIResponseValidationError),
    "stream: data null": ("chat_stream", _sse(b"data: null\n\n"), APIResponseValidationError),
    "stream: wrong shape": (
        "chat_stream", _sse(b'data: {"choices": "x"}\n\n'), APIResponseValidationError
    ),
    "stream: invalid UTF-8": ("chat_stream", _sse(b"data: \xff\n\n"), APIResponseValidationError),
    "stream: nested 5000 deep": (
        "chat_stream", _sse(b"data: " + _nested(5000) + b"\n\n"), APIResponseValidationError
    ),
    "stream: error event": (
        "chat_stream", _sse(b'data: {"error": {"message": "overloaded"}}\n\n'), APIStreamError
    ),
    "stream: named error event, not JSON": (
        "chat_stream", _sse(b"event: error\ndata: <html>\n\n"), APIStreamError
    ),
    "stream: ends before a finish reason": (
        "chat_stream", _sse(b"data: " + _CHUNK + b"\n\n"), APIStreamError
    ),
    "stream: a JSON body instead of events": (
        "chat_stream", R(200, json=chat_json()), APIStreamError
    ),
    "stream: comments only": ("chat_stream", _sse(b": ping\n\n" * 10), APIStreamError),
    "stream: one event over the event limit": (
        "chat_stream", _sse(b"data: " + b"x" * 20_000 + b"\n\n"), APIResponseTooLargeError
    ),
    "stream: a line that never ends": (
        "chat_stream", _sse(*([b"x" * 8192] * 10)), APIResponseTooLargeError
    ),
    "stream: dropped midway": (
        "chat_stream", R(200, stream=Body([b"data: " + _CHUNK + b"\n\n", b""],
                                                       fail_after=1)),
        APIConnectionError,
    ),
    "stream: 500 before the first byte": (
        "chat_stream", R(500, json={"error": {"message": "down"}}),
        InternalServerError,
    ),
}


@pytest.mark.parametrize("case", list(ANSWERS.values()), ids=list(ANSWERS))
async def test_malformed_answer(kind: str, case: tuple[str, Answer, type[Exception]]) -> None:
    method, answer, error = case
    api = Api(
        kind,
        server=Server(lambda _request: answer()),
        max_retries=0,
        max_response_bytes=65_536,
        max_event_bytes=16_384,
    )
    with pytest.raises(ConvoError) as info:
        result = await api.call(method, model="m", messages=HI)
        if method == "chat_stream":
            await api.chunks(result)
    assert type(info.value) is error, repr(info.value)
    assert info.value.__context__ is None
    assert "\x1b" not in str(info.value) and "\x07" not in str(info.value)
