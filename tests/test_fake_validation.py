"""Request validation of convo.testing.FakeBackend: OpenAI's 400s, table-driven.

Messages, params and codes are api.openai.com's where they are known (the
texts quoted in public bug reports); the tests pin them so clients can rely on
the exact shape.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from convo.testing import FakeBackend

USER = {"role": "user", "content": "Hello!"}
ROLES = "'system', 'assistant', 'user', 'function', 'tool', and 'developer'"


def call(name: str, id_: str) -> dict[str, Any]:
    return {"id": id_, "type": "function", "function": {"name": name, "arguments": "{}"}}


def chat(**body: Any) -> dict[str, Any]:
    return {"model": "gpt-4o", "messages": [USER], **body}


CHAT_CASES: list[tuple[str, Any, str, str | None, str | None]] = [
    # (id, body, message, param, code)
    ("no model", {"messages": [USER]}, "you must provide a model parameter", None, None),
    (
        "model not a string",
        chat(model=4),
        "Invalid type for 'model': expected a string, but got an integer instead.",
        "model",
        "invalid_type",
    ),
    (
        "no messages",
        {"model": "gpt-4o"},
        "Missing required parameter: 'messages'.",
        "messages",
        "missing_required_parameter",
    ),
    (
        "messages not a list",
        chat(messages="hi"),
        "Invalid type for 'messages': expected an array of objects, but got a string instead.",
        "messages",
        "invalid_type",
    ),
    (
        "empty messages",
        chat(messages=[]),
        (
            "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an empty "
            "array instead."
        ),
        "messages",
        "empty_array",
    ),
    (
        "message not an object",
        chat(messages=["hi"]),
        "Invalid type for 'messages[0]': expected an object, but got a string instead.",
        "messages[0]",
        "invalid_type",
    ),
    (
        "no role",
        chat(messages=[USER, {"content": "x"}]),
        "Missing required parameter: 'messages[1].role'.",
        "messages[1].role",
        "missing_required_parameter",
    ),
    (
        "unknown role",
        chat(messages=[{"role": "bot", "content": "x"}]),
        f"Invalid value: 'bot'. Supported values are: {ROLES}.",
        "messages[0].role",
        "invalid_value",
    ),
    (
        "no content",
        chat(messages=[{"role": "user"}]),
        "Missing required parameter: 'messages[0].content'.",
        "messages[0].content",
        "missing_required_parameter",
    ),
    (
        "bad content type",
        chat(messages=[{"role": "user", "content": 3}]),
        (
            "Invalid type for 'messages[0].content': expected one of a string or array of objects, but "
            "got an integer instead."
        ),
        "messages[0].content",
        "invalid_type",
    ),
    (
        "bad part type",
        chat(
            messages=[
                {"role": "system", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}
            ]
        ),
        "Invalid value: 'image_url'. Supported values are: 'text'.",
        "messages[0].content[0].type",
        "invalid_value",
    ),
    (
        "tool without tool_call_id",
        chat(messages=[USER, {"role": "tool", "content": "x"}]),
        "Missing required parameter: 'messages[1].tool_call_id'.",
        "messages[1].tool_call_id",
        "missing_required_parameter",
    ),
    (
        "tool call without id",
        chat(
            messages=[
                USER,
                {
                    "role": "assistant",
                    "tool_calls": [
                        {"type": "function", "function": {"name": "f", "arguments": "{}"}}
                    ],
                },
            ]
        ),
        "Missing required parameter: 'messages[1].tool_calls[0].id'.",
        "messages[1].tool_calls[0].id",
        "missing_required_parameter",
    ),
    (
        "orphan tool message",
        chat(messages=[USER, {"role": "tool", "content": "42", "tool_call_id": "call_1"}]),
        (
            "Invalid parameter: messages with role 'tool' must be a response to a preceeding message with "
            "'tool_calls'."
        ),
        "messages.[1].role",
        None,
    ),
    (
        "tool answers an unknown call",
        chat(
            messages=[
                USER,
                {"role": "assistant", "tool_calls": [call("f", "call_1")]},
                {"role": "tool", "content": "42", "tool_call_id": "call_9"},
            ]
        ),
        "Invalid parameter: 'tool_call_id' of 'call_9' not found in 'tool_calls' of previous message.",
        "messages.[2].tool_call_id",
        None,
    ),
    (
        "tool call left unanswered",
        chat(
            messages=[
                USER,
                {"role": "assistant", "tool_calls": [call("f", "call_1"), call("g", "call_2")]},
                {"role": "tool", "content": "42", "tool_call_id": "call_1"},
                USER,
            ]
        ),
        (
            "An assistant message with 'tool_calls' must be followed by tool messages responding to each "
            "'tool_call_id'. The following tool_call_ids did not have response messages: call_2"
        ),
        "messages.[1].role",
        None,
    ),
    (
        "tool calls last",
        chat(
            messages=[
                USER,
                {"role": "assistant", "tool_calls": [call("f", "call_1"), call("g", "call_2")]},
            ]
        ),
        (
            "An assistant message with 'tool_calls' must be followed by tool messages responding to each "
            "'tool_call_id'. The following tool_call_ids did not have response messages: call_1, call_2"
        ),
        "messages.[1].role",
        None,
    ),
    (
        "too many stops",
        chat(stop=["a", "b", "c", "d", "e"]),
        (
            "Invalid 'stop': array too long. Expected an array with maximum length 4, but got an array "
            "with length 5 instead."
        ),
        "stop",
        "array_above_max_length",
    ),
    (
        "empty stop list",
        chat(stop=[]),
        (
            "Invalid 'stop': empty array. Expected an array with minimum length 1, but got an empty array "
            "instead."
        ),
        "stop",
        "empty_array",
    ),
    (
        "stop item not a string",
        chat(stop=["a", 1]),
        "Invalid type for 'stop[1]': expected a string, but got an integer instead.",
        "stop[1]",
        "invalid_type",
    ),
    (
        "json_object without json",
        chat(response_format={"type": "json_object"}),
        (
            "'messages' must contain the word 'json' in some form, to use 'response_format' of type "
            "'json_object'."
        ),
        "messages",
        None,
    ),
    (
        "unknown response_format",
        chat(response_format={"type": "xml"}),
        "Invalid value: 'xml'. Supported values are: 'json_object', 'json_schema', and 'text'.",
        "response_format.type",
        "invalid_value",
    ),
    (
        "json_schema without name",
        chat(response_format={"type": "json_schema", "json_schema": {"schema": {}}}),
        "Missing required parameter: 'response_format.json_schema.name'.",
        "response_format.json_schema.name",
        "missing_required_parameter",
    ),
    (
        "n below 1",
        chat(n=0),
        "Invalid 'n': integer below minimum value. Expected a value >= 1, but got 0 instead.",
        "n",
        "integer_below_min_value",
    ),
    (
        "n above 128",
        chat(n=129),
        "Invalid 'n': integer above maximum value. Expected a value <= 128, but got 129 instead.",
        "n",
        "integer_above_max_value",
    ),
    (
        "n not an integer",
        chat(n=1.5),
        "Invalid type for 'n': expected an integer, but got a decimal instead.",
        "n",
        "invalid_type",
    ),
    (
        "temperature above 2",
        chat(temperature=2.5),
        (
            "Invalid 'temperature': decimal above maximum value. Expected a value <= 2, but got 2.5 "
            "instead."
        ),
        "temperature",
        "decimal_above_max_value",
    ),
    (
        "temperature below 0",
        chat(temperature=-1),
        (
            "Invalid 'temperature': decimal below minimum value. Expected a value >= 0, but got -1 "
            "instead."
        ),
        "temperature",
        "decimal_below_min_value",
    ),
    (
        "temperature a string",
        chat(temperature="hot"),
        "Invalid type for 'temperature': expected a number, but got a string instead.",
        "temperature",
        "invalid_type",
    ),
    (
        "top_p above 1",
        chat(top_p=1.5),
        "Invalid 'top_p': decimal above maximum value. Expected a value <= 1, but got 1.5 instead.",
        "top_p",
        "decimal_above_max_value",
    ),
    (
        "stream_options without stream",
        chat(stream_options={"include_usage": True}),
        "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
        "stream_options",
        None,
    ),
    (
        "stream not a boolean",
        chat(stream="yes"),
        "Invalid type for 'stream': expected a boolean, but got a string instead.",
        "stream",
        "invalid_type",
    ),
    (
        "tool without name",
        chat(tools=[{"type": "function", "function": {"parameters": {}}}]),
        "Missing required parameter: 'tools[0].function.name'.",
        "tools[0].function.name",
        "missing_required_parameter",
    ),
    (
        "tool_choice without tools",
        chat(tool_choice="required"),
        "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are specified.",
        "tool_choice",
        None,
    ),
    (
        "unknown parameter",
        chat(top_k=3),
        "Unrecognized request argument supplied: top_k",
        None,
        None,
    ),
    (
        "body not an object",
        [USER],
        "Invalid body: expected a JSON object, but got an array instead.",
        None,
        None,
    ),
]

COMPLETION_CASES: list[tuple[str, Any, str, str | None, str | None]] = [
    ("no model", {"prompt": "x"}, "you must provide a model parameter", None, None),
    (
        "no prompt",
        {"model": "davinci-002"},
        "Missing required parameter: 'prompt'.",
        "prompt",
        "missing_required_parameter",
    ),
    (
        "bad prompt",
        {"model": "davinci-002", "prompt": [1, "a"]},
        (
            "Invalid type for 'prompt': expected a string, an array of strings, an array of integers or "
            "an array of arrays, but got an array instead."
        ),
        "prompt",
        "invalid_type",
    ),
    (
        "too many stops",
        {"model": "davinci-002", "prompt": "x", "stop": list("abcde")},
        (
            "Invalid 'stop': array too long. Expected an array with maximum length 4, but got an array "
            "with length 5 instead."
        ),
        "stop",
        "array_above_max_length",
    ),
    (
        "logprobs above 5",
        {"model": "davinci-002", "prompt": "x", "logprobs": 6},
        "Invalid 'logprobs': integer above maximum value. Expected a value <= 5, but got 6 instead.",
        "logprobs",
        "integer_above_max_value",
    ),
    (
        "best_of below n",
        {"model": "davinci-002", "prompt": "x", "n": 3, "best_of": 2},
        "Invalid value for 'best_of': must be greater than or equal to 'n'.",
        "best_of",
        None,
    ),
    (
        "stream_options without stream",
        {"model": "davinci-002", "prompt": "x", "stream_options": {}},
        "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
        "stream_options",
        None,
    ),
    (
        "chat parameter",
        {"model": "davinci-002", "prompt": "x", "messages": []},
        "Unrecognized request argument supplied: messages",
        None,
        None,
    ),
]


@pytest.fixture(scope="module")
def fake() -> FakeBackend:
    return FakeBackend()


@pytest.fixture(scope="module")
def client(fake: FakeBackend) -> Iterator[httpx.Client]:
    with httpx.Client(transport=fake.transport(), base_url="http://fake/v1") as c:
        yield c


@pytest.fixture
def clean(fake: FakeBackend) -> None:
    """No script: valid requests get default replies."""
    fake.reset()


@pytest.fixture
def queued(fake: FakeBackend) -> Iterator[None]:
    """A scripted reply that an invalid request must leave queued."""
    fake.reset()
    fake.reply("never sent")
    yield
    assert fake.pending == 1


def check(resp: httpx.Response, message: str, param: str | None, code: str | None) -> None:
    assert resp.status_code == 400, resp.text
    assert resp.json() == {
        "error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}
    }


@pytest.mark.parametrize(
    ("body", "message", "param", "code"),
    [c[1:] for c in CHAT_CASES],
    ids=[c[0] for c in CHAT_CASES],
)
def test_chat_validation(
    client: httpx.Client, body: Any, message: str, param: str | None, code: str | None
) -> None:
    check(client.post("/chat/completions", json=body), message, param, code)


@pytest.mark.parametrize(
    ("body", "message", "param", "code"),
    [c[1:] for c in COMPLETION_CASES],
    ids=[c[0] for c in COMPLETION_CASES],
)
def test_completion_validation(
    client: httpx.Client, body: Any, message: str, param: str | None, code: str | None
) -> None:
    check(client.post("/completions", json=body), message, param, code)


VALID_CHATS = {
    "json word in a part": chat(
        messages=[{"role": "user", "content": [{"type": "text", "text": "Reply in JSON."}]}],
        response_format={"type": "json_object"},
    ),
    "json word in any case, any message": chat(
        messages=[{"role": "system", "content": "Use Json"}, USER],
        response_format={"type": "json_object"},
    ),
    "answered tool calls": chat(
        messages=[
            USER,
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [call("f", "call_1"), call("g", "call_2")],
            },
            {"role": "tool", "content": "1", "tool_call_id": "call_2"},
            {"role": "tool", "content": "2", "tool_call_id": "call_1"},
            {"role": "assistant", "content": "done"},
            USER,
        ]
    ),
    "every known parameter at a boundary": chat(
        temperature=0,
        top_p=1,
        n=128,
        frequency_penalty=-2,
        presence_penalty=2,
        seed=-5,
        max_tokens=1,
        max_completion_tokens=1,
        stop="\n",
        logprobs=True,
        top_logprobs=20,
        user="u",
        metadata={"a": "b"},
        store=False,
        stream=False,
        parallel_tool_calls=True,
        tools=[{"type": "function", "function": {"name": "f"}}],
        tool_choice="auto",
        service_tier="auto",
        reasoning_effort="low",
    ),
    "nulls are absent values": chat(
        temperature=None, n=None, stop=None, stream_options=None, tools=None
    ),
    "refusal without content": chat(messages=[USER, {"role": "assistant", "refusal": "no"}, USER]),
    "developer and name": chat(
        messages=[{"role": "developer", "content": "x", "name": "dev"}, USER]
    ),
}


@pytest.mark.parametrize("body", list(VALID_CHATS.values()), ids=list(VALID_CHATS))
@pytest.mark.usefixtures("clean")
def test_valid_chat_requests_pass(client: httpx.Client, body: Any) -> None:
    resp = client.post("/chat/completions", json=body)
    assert resp.status_code == 200, resp.text
    assert len(resp.json()["choices"]) == (body.get("n") or 1)


@pytest.mark.usefixtures("clean")
def test_valid_completion_variants(client: httpx.Client) -> None:
    for prompt in ("x", ["a", "b"], [1, 2], [[1], [2, 3]], None):
        body = {
            "model": "davinci-002",
            "prompt": prompt,
            "suffix": "s",
            "best_of": 2,
            "n": 2,
            "logprobs": 0,
            "max_tokens": 0,
            "echo": False,
        }
        resp = client.post("/completions", json=body)
        assert resp.status_code == 200, resp.text
        assert all(
            c["finish_reason"] == "length" and c["text"] == "" for c in resp.json()["choices"]
        )


@pytest.mark.usefixtures("queued")
def test_errors_are_json_with_openai_fields(client: httpx.Client) -> None:
    resp = client.post("/chat/completions", content=json.dumps({"messages": []}))
    assert resp.headers["content-type"] == "application/json"
    assert list(resp.json()["error"]) == ["message", "type", "param", "code"]
