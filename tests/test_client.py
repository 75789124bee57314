"""The HTTP clients on the wire (httpx.MockTransport): requests, results, errors, retries.

Every test body runs twice, against OpenAIClient and AsyncOpenAIClient, through
the small ``Api`` driver, so the two shells cannot drift.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import httpx
import pytest
from test_client_helpers import SECRET, Api, Server, chat_json, closed_port, error, ok

from convo import (
    APIConnectionError,
    APIResponseValidationError,
    APIStatusError,
    APIStreamError,
    APITimeoutError,
    AsyncOpenAIClient,
    AuthenticationError,
    BadRequestError,
    ChatCompletion,
    Completion,
    ConfigurationError,
    ConflictError,
    InternalServerError,
    InvalidMessageError,
    Message,
    NotFoundError,
    OpenAIClient,
    PermissionDeniedError,
    RateLimitError,
    UnprocessableEntityError,
)
from convo._records import ReplyInfo


@pytest.fixture(params=["sync", "async"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_ORG_ID", "OPENAI_PROJECT_ID"):
        monkeypatch.delenv(name, raising=False)


# --- requests on the wire --------------------------------------------------------------


async def test_chat_request_body_and_headers(kind: str) -> None:
    api = Api(
        kind,
        api_key=SECRET,
        organization="org-1",
        project="proj-1",
        default_headers={"X-Team": "bots"},
        default_query={"tenant": "t1"},
    )
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    await api.call(
        "chat",
        model="gpt-test",
        messages=[Message.system("Be brief."), {"role": "user", "content": "Hi", "x_custom": 1}],
        temperature=0.2,
        max_completion_tokens=50,
        stop=["\n\n"],
        seed=7,
        tools=tools,
        tool_choice="auto",
        response_format={"type": "json_object"},
        top_p=None,  # None means "not sent"
        extra_body={"top_k": 40, "temperature": 0.3},
        extra_headers={"X-Trace": "abc"},
        extra_query={"debug": "1"},
    )
    (request,) = api.server.requests
    assert request.method == "POST"
    assert request.url.path == "/v1/chat/completions"
    assert dict(request.url.params) == {"tenant": "t1", "debug": "1"}
    assert api.server.body() == {
        "model": "gpt-test",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi", "x_custom": 1},
        ],
        "temperature": 0.3,  # extra_body wins: it is the escape hatch
        "max_completion_tokens": 50,
        "stop": ["\n\n"],
        "seed": 7,
        "tools": tools,
        "tool_choice": "auto",
        "response_format": {"type": "json_object"},
        "top_k": 40,
    }
    headers = request.headers
    assert headers["authorization"] == f"Bearer {SECRET}"
    assert headers["openai-organization"] == "org-1"
    assert headers["openai-project"] == "proj-1"
    assert headers["x-team"] == "bots"
    assert headers["x-trace"] == "abc"
    assert headers["content-type"] == "application/json"
    assert headers["user-agent"].startswith("convo/")


async def test_unset_parameters_are_not_sent_and_no_key_means_no_authorization(kind: str) -> None:
    api = Api(kind)
    await api.call("chat", model="m", messages=[Message.user("Hi")])
    assert api.server.body() == {"model": "m", "messages": [{"role": "user", "content": "Hi"}]}
    headers = api.server.requests[0].headers
    assert "authorization" not in headers
    assert "openai-organization" not in headers and "openai-project" not in headers


async def test_environment_fallbacks(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.setenv("OPENAI_BASE_URL", "http://env.test/api/v1/")
    monkeypatch.setenv("OPENAI_ORG_ID", "org-env")
    monkeypatch.setenv("OPENAI_PROJECT_ID", "proj-env")
    api = Api(kind, base_url=None)
    await api.call("chat", model="m", messages=[Message.user("Hi")])
    request = api.server.requests[0]
    assert str(request.url) == "http://env.test/api/v1/chat/completions"
    assert request.headers["authorization"] == f"Bearer {SECRET}"
    assert request.headers["openai-organization"] == "org-env"
    assert request.headers["openai-project"] == "proj-env"
    assert OpenAIClient().base_url == "http://env.test/api/v1"
    monkeypatch.delenv("OPENAI_BASE_URL")
    assert OpenAIClient().base_url == "https://api.openai.com/v1"


async def test_azure_style_deployment(kind: str) -> None:
    api = Api(
        kind,
        base_url="https://res.openai.azure.com/openai/deployments/gpt4o",
        default_headers={"api-key": SECRET},
        default_query={"api-version": "2024-10-21"},
    )
    await api.call("chat", model="gpt-4o", messages=[Message.user("Hi")])
    request = api.server.requests[0]
    assert request.url.path == "/openai/deployments/gpt4o/chat/completions"
    assert request.url.params["api-version"] == "2024-10-21"
    assert request.headers["api-key"] == SECRET
    assert "authorization" not in request.headers


@pytest.mark.parametrize("passed_client", [False, True], ids=["own client", "passed client"])
async def test_a_query_in_the_base_url_stays_a_query(kind: str, passed_client: bool) -> None:
    # Before: "...v1?api-version=2024-06-01/chat/completions" (the path glued to the query).
    server = Server()
    settings: dict[str, Any] = {
        "base_url": "https://gw.test/openai/v1/?api-version=2024-06-01&tag=a&tag=b",
        "default_query": {"tenant": "t1"},
    }
    if passed_client:
        settings["http_client"] = (httpx.Client if kind == "sync" else httpx.AsyncClient)(
            transport=httpx.MockTransport(server)
        )
    api = Api(kind, server=server, **settings)
    assert api.client.base_url == "https://gw.test/openai/v1"
    await api.call("chat", model="m", messages=[Message.user("Hi")])
    await api.call("complete", model="m", prompt="Hi", extra_query={"debug": "1"})
    chat, complete = api.server.requests
    assert chat.url.path == "/openai/v1/chat/completions"
    assert complete.url.path == "/openai/v1/completions"
    assert chat.url.params.multi_items() == [
        ("api-version", "2024-06-01"), ("tag", "a"), ("tag", "b"), ("tenant", "t1")
    ]
    assert dict(complete.url.params) == {
        "api-version": "2024-06-01", "tag": "a", "tenant": "t1", "debug": "1"
    }
    if passed_client:
        await api.do(settings["http_client"], "close" if kind == "sync" else "aclose")


async def test_default_and_extra_query_win_over_the_base_url_query(kind: str) -> None:
    api = Api(
        kind,
        base_url="https://gw.test/v1?api-version=1",
        default_query={"api-version": "2"},
    )
    await api.call("chat", model="m", messages=[Message.user("Hi")])
    await api.call("chat", model="m", messages=[Message.user("Hi")], extra_query={"api-version": "3"})
    assert [r.url.params["api-version"] for r in api.server.requests] == ["2", "3"]


def test_a_fragment_or_a_malformed_base_url_is_a_configuration_error(kind: str) -> None:
    cls = OpenAIClient if kind == "sync" else AsyncOpenAIClient
    with pytest.raises(ConfigurationError, match="fragment"):
        cls(base_url="https://gw.test/openai/v1?api-version=1#x")
    with pytest.raises(ConfigurationError, match="not a valid URL"):
        cls(base_url="http://[::1/v1")  # httpx.InvalidURL before
    with pytest.raises(ConfigurationError) as info:
        cls(base_url="ftp://user:hunter2@gw.test/v1?api-key=abc123")
    assert "hunter2" not in str(info.value) and "abc123" not in str(info.value)


async def test_extra_headers_none_removes_a_header(kind: str) -> None:
    api = Api(kind, api_key=SECRET)
    await api.call(
        "chat", model="m", messages=[Message.user("Hi")], extra_headers={"Authorization": None}
    )
    assert "authorization" not in api.server.requests[0].headers


async def test_timeouts_default_and_per_call(kind: str) -> None:
    api = Api(kind)
    await api.call("chat", model="m", messages=[Message.user("Hi")])
    await api.call("chat", model="m", messages=[Message.user("Hi")], timeout=3.0)
    await api.call(
        "chat", model="m", messages=[Message.user("Hi")], timeout=httpx.Timeout(9, connect=1)
    )
    default, per_call, explicit = (r.extensions["timeout"] for r in api.server.requests)
    assert default == {"connect": 5.0, "read": 600.0, "write": 600.0, "pool": 600.0}
    assert per_call == {"connect": 3.0, "read": 3.0, "write": 3.0, "pool": 3.0}
    assert explicit == {"connect": 1.0, "read": 9.0, "write": 9.0, "pool": 9.0}
    api2 = Api(kind, timeout=20.0)
    await api2.call("chat", model="m", messages=[Message.user("Hi")])
    assert api2.server.requests[0].extensions["timeout"]["read"] == 20.0


async def test_complete_request_and_result(kind: str) -> None:
    payload = {
        "id": "cmpl-1",
        "object": "text_completion",
        "created": 1,
        "model": "davinci-test",
        "choices": [
            {"index": 0, "text": " Bonjour", "finish_reason": "stop", "logprobs": None},
            {"index": 1, "text": " Salut", "finish_reason": "length", "logprobs": None},
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
    }
    api = Api(kind, server=Server(ok(payload)))
    result = await api.call(
        "complete",
        model="davinci-test",
        prompt=["Translate: Hello ->"],
        max_tokens=5,
        n=2,
        suffix="!",
        echo=False,
        best_of=2,
        logprobs=3,
        stop=["\n"],
    )
    assert api.server.requests[0].url.path == "/v1/completions"
    assert api.server.body() == {
        "model": "davinci-test",
        "prompt": ["Translate: Hello ->"],
        "max_tokens": 5,
        "n": 2,
        "suffix": "!",
        "echo": False,
        "best_of": 2,
        "logprobs": 3,
        "stop": ["\n"],
    }
    assert isinstance(result, Completion)
    assert result.text == " Bonjour"
    assert [c.finish_reason for c in result.choices] == ["stop", "length"]
    assert result.usage is not None and result.usage.total_tokens == 7
    assert result.to_message(1) == Message.assistant(" Salut")


# --- results -------------------------------------------------------------------------------


async def test_chat_result_is_typed_and_keeps_unknown_fields(kind: str) -> None:
    payload = chat_json("Sunny.", timings={"predicted_ms": 12.5})
    payload["choices"][0]["message"]["reasoning_content"] = "Look outside."
    payload["usage"]["completion_tokens_details"] = {"reasoning_tokens": 1}
    api = Api(kind, server=Server(ok(payload, **{"x-request-id": "req_9"})))
    result = await api.call("chat", model="m", messages=[Message.user("Weather?")])
    assert isinstance(result, ChatCompletion)
    assert result.text == "Sunny." and result.finish_reason == "stop"
    assert result.model_extra == {"timings": {"predicted_ms": 12.5}}
    assert result.message.model_extra == {"reasoning_content": "Look outside."}
    assert result.usage is not None
    assert result.usage.completion_tokens_details is not None
    assert result.usage.completion_tokens_details.reasoning_tokens == 1
    assert result.to_message() == Message.assistant("Sunny.")
    assert result.reply_info(seed=3) == ReplyInfo(
        model="gpt-test",
        finish_reason="stop",
        usage={
            "prompt_tokens": 9,
            "completion_tokens": 2,
            "total_tokens": 11,
            "completion_tokens_details": {"reasoning_tokens": 1},
        },
        system_fingerprint="fp_1",
        seed=3,
    )


async def test_tool_call_reply_to_message(kind: str) -> None:
    payload = chat_json(None)
    payload["choices"][0]["finish_reason"] = "tool_calls"
    payload["choices"][0]["message"]["tool_calls"] = [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
        }
    ]
    api = Api(kind, server=Server(ok(payload)))
    result = await api.call("chat", model="m", messages=[Message.user("Weather?")])
    message = result.to_message()
    assert message.content is None and message.tool_calls is not None
    assert message.tool_calls[0].id == "call_1"
    assert message.tool_calls[0].function.name == "get_weather"
    assert message.tool_calls[0].function.arguments == '{"city":"Paris"}'
    assert result.text == ""


# --- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, BadRequestError),
        (401, AuthenticationError),
        (403, PermissionDeniedError),
        (404, NotFoundError),
        (409, ConflictError),
        (422, UnprocessableEntityError),
        (429, RateLimitError),
        (500, InternalServerError),
        (503, InternalServerError),
        (418, APIStatusError),
    ],
)
async def test_status_maps_to_exception_class(kind: str, status: int, cls: type[Exception]) -> None:
    api = Api(
        kind,
        server=Server(*(error(status, "bad thing", **{"x-request-id": "req_1"}) for _ in range(3))),
    )
    with pytest.raises(cls) as info:
        await api.call("chat", model="m", messages=[Message.user("Hi")])
    exc = info.value
    assert type(exc) is cls
    assert isinstance(exc, APIStatusError)
    assert exc.status_code == status
    assert exc.request_id == "req_1"
    assert (exc.code, exc.type, exc.param) == ("c", "invalid_request_error", "x")
    assert str(exc).startswith(f"{status} ") and "bad thing" in str(exc) and "req_1" in str(exc)


async def test_400_is_not_retried(kind: str) -> None:
    api = Api(kind, server=Server(error(400, "messages: too long"), ok()))
    with pytest.raises(BadRequestError, match="400 Bad Request: messages: too long"):
        await api.call("chat", model="m", messages=[Message.user("Hi")])
    assert len(api.server.requests) == 1 and api.sleeps == []


async def test_html_502_page_is_a_clear_error(kind: str) -> None:
    page = b"<html><head><title>502</title></head><body>bad   gateway</body></html>"
    answer = lambda _: httpx.Response(502, content=page, headers={"content-type": "text/html"})
    api = Api(kind, server=Server(answer, answer, answer))
    with pytest.raises(InternalServerError) as info:
        await api.call("chat", model="m", messages=[Message.user("Hi")])
    assert str(info.value) == (
        "502 Bad Gateway: <html><head><title>502</title></head><body>bad gateway</body></html>"
    )
    assert info.value.body == page.decode()
    assert len(api.server.requests) == 3  # 5xx is retried, twice by default


async def test_invalid_json_body_is_a_validation_error(kind: str) -> None:
    api = Api(kind, server=Server(httpx.Response(200, content=b'{"id": "x", "choices": [')))
    with pytest.raises(APIResponseValidationError) as info:
        await api.call("chat", model="m", messages=[Message.user("Hi")])
    assert info.value.status_code == 200
    text = str(info.value)
    assert "not a valid ChatCompletion" in text and "Invalid JSON" in text
    assert '{"id": "x", "choices": [' in text


async def test_wrong_shape_body_is_a_validation_error(kind: str) -> None:
    api = Api(kind, server=Server(ok({"object": "list", "data": []}, **{"x-request-id": "req_7"})))
    with pytest.raises(APIResponseValidationError, match=r"choices: Field required") as info:
        await api.call("chat", model="m", messages=[Message.user("Hi")])
    assert info.value.request_id == "req_7"


async def test_connection_refused(kind: str) -> None:
    port = closed_port()
    api = Api(kind, base_url=f"http://127.0.0.1:{port}/v1", transport=None)
    with pytest.raises(APIConnectionError) as info:
        await api.call("chat", model="m", messages=[Message.user("Hi")])
    assert not isinstance(info.value, APITimeoutError)
    assert f"could not connect to http://127.0.0.1:{port}/v1/chat/completions" in str(info.value)
    assert isinstance(info.value.__cause__, httpx.ConnectError)
    assert len(api.sleeps) == 2  # connection errors are retried
    await api.do(api.client, "close")


async def test_timeout_is_retried_then_raised(kind: str) -> None:
    api = Api(kind, server=Server(*(httpx.ReadTimeout("timed out") for _ in range(3))))
    with pytest.raises(
        APITimeoutError, match=r"read timeout on POST http://fake.test/v1/chat/completions"
    ):
        await api.call("chat", model="m", messages=[Message.user("Hi")])
    assert len(api.server.requests) == 3 and len(api.sleeps) == 2
    api = Api(kind, server=Server(httpx.ConnectTimeout("slow"), ok()))
    result = await api.call("chat", model="m", messages=[Message.user("Hi")])
    assert result.text == "Hello!"


# --- retries ---------------------------------------------------------------------------------


async def test_429_then_200_waits_the_advertised_time(kind: str) -> None:
    api = Api(kind, server=Server(error(429, "slow down", **{"retry-after": "0.05"}), ok()))
    result = await api.call("chat", model="m", messages=[Message.user("Hi")])
    assert result.text == "Hello!"
    assert api.sleeps == [0.05]
    assert len(api.server.requests) == 2
    assert api.server.body(0) == api.server.body(1)


async def test_500_then_200_backs_off(kind: str) -> None:
    api = Api(kind, server=Server(error(500), error(503), ok()))
    await api.call("chat", model="m", messages=[Message.user("Hi")])
    first, second = api.sleeps
    assert 0.375 <= first <= 0.5 and 0.75 <= second <= 1.0


async def test_retry_after_ms_wins(kind: str) -> None:
    api = Api(kind, server=Server(error(503, **{"retry-after-ms": "20", "retry-after": "5"}), ok()))
    await api.call("chat", model="m", messages=[Message.user("Hi")])
    assert api.sleeps == [0.02]


async def test_x_should_retry_is_obeyed(kind: str) -> None:
    api = Api(kind, server=Server(error(503, **{"x-should-retry": "false"}), ok()))
    with pytest.raises(InternalServerError):
        await api.call("chat", model="m", messages=[Message.user("Hi")])
    assert len(api.server.requests) == 1
    api = Api(kind, server=Server(error(400, **{"x-should-retry": "true"}), ok()))
    await api.call("chat", model="m", messages=[Message.user("Hi")])
    assert len(api.server.requests) == 2


async def test_max_retries_per_client_and_per_call(kind: str) -> None:
    failing = [error(500) for _ in range(10)]
    api = Api(kind, server=Server(*failing), max_retries=1)
    with pytest.raises(InternalServerError):
        await api.call("chat", model="m", messages=[Message.user("Hi")])
    assert len(api.server.requests) == 2
    with pytest.raises(InternalServerError):
        await api.call("chat", model="m", messages=[Message.user("Hi")], max_retries=3)
    assert len(api.server.requests) == 2 + 4
    with pytest.raises(InternalServerError):
        await api.call("chat", model="m", messages=[Message.user("Hi")], max_retries=0)
    assert len(api.server.requests) == 2 + 4 + 1


# --- bad input: caller mistakes never reach the wire ----------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"messages": []}, InvalidMessageError, "must not be empty"),
        ({"messages": "Hi"}, InvalidMessageError, "must be a list"),
        (
            {"messages": [Message.user("a"), 3]},
            InvalidMessageError,
            r"messages\[1\] must be a Message",
        ),
        ({"model": ""}, ConfigurationError, "model must be a non-empty string"),
        ({"temprature": 0.1}, TypeError, "unexpected keyword argument 'temprature'"),
        ({"max_retries": -1}, ConfigurationError, "max_retries"),
        ({"extra_body": {"x": object()}}, InvalidMessageError, "not JSON-serializable"),
    ],
)
async def test_bad_chat_input(
    kind: str, kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    api = Api(kind)
    call: dict[str, Any] = {"model": "m", "messages": [Message.user("Hi")], **kwargs}
    with pytest.raises(error, match=match):
        await api.call("chat", **call)
    assert api.server.requests == []


@pytest.mark.parametrize("prompt", [3, [], ["a", 1], b"bytes"])
async def test_bad_prompt(kind: str, prompt: Any) -> None:
    api = Api(kind)
    with pytest.raises(InvalidMessageError, match="prompt must be"):
        await api.call("complete", model="m", prompt=prompt)
    assert api.server.requests == []


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"base_url": "ftp://x/v1"}, "base_url must be an http"),
        ({"base_url": "localhost:8000"}, "base_url must be an http"),
        ({"max_retries": -2}, "max_retries"),
        ({"http_client": object()}, "http_client must be"),
    ],
)
def test_bad_configuration(kind: str, kwargs: dict[str, Any], match: str) -> None:
    cls = OpenAIClient if kind == "sync" else AsyncOpenAIClient
    with pytest.raises(ConfigurationError, match=match):
        cls(**kwargs)
    with pytest.raises(ConfigurationError, match="not both"):
        cls(http_client=httpx.Client(), transport=httpx.MockTransport(Server()))  # type: ignore[arg-type]


# --- lifecycle, secrets, logs -------------------------------------------------------------------


async def test_close_and_context_manager(kind: str) -> None:
    server = Server()
    mine = (httpx.Client if kind == "sync" else httpx.AsyncClient)(
        transport=httpx.MockTransport(server)
    )
    api = Api(kind, server=server, http_client=mine)
    await api.call("chat", model="m", messages=[Message.user("Hi")])
    await api.do(api.client, "close")
    assert not mine.is_closed  # a client passed in stays the caller's
    await api.do(mine, "close" if kind == "sync" else "aclose")
    owned = Api(kind)
    await api.do(owned.client, "close")
    assert owned.client._http.is_closed
    if kind == "sync":
        with OpenAIClient(transport=httpx.MockTransport(server)) as c:
            assert c.chat(model="m", messages=[Message.user("Hi")]).text == "Hello!"
        assert c._http.is_closed
    else:
        async with AsyncOpenAIClient(transport=httpx.MockTransport(server)) as ac:
            assert (await ac.chat(model="m", messages=[Message.user("Hi")])).text == "Hello!"
        assert ac._http.is_closed


async def test_api_key_never_leaks(kind: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, httpx and httpcore included
    echo = {"error": {"message": f"Incorrect API key provided: {SECRET}.", "type": "auth"}}
    stream_error = b'data: {"error": {"message": "bad key ' + SECRET.encode() + b'"}}\n\n'
    server = Server(
        httpx.Response(401, json=echo),
        error(500),
        ok(),
        httpx.Response(200, content=b"not json " + SECRET.encode()),
        httpx.ReadTimeout(f"timeout {SECRET}"),
        httpx.Response(200, content=stream_error, headers={"content-type": "text/event-stream"}),
    )
    api = Api(kind, server=server, api_key=SECRET, max_retries=0)
    errors: list[BaseException] = []
    for _ in range(2):
        with pytest.raises(APIStatusError) as info:
            await api.call("chat", model="m", messages=[Message.user("Hi")])
        errors.append(info.value)
    await api.call("chat", model="m", messages=[Message.user("Hi")])
    for expected in (APIResponseValidationError, APITimeoutError):
        with pytest.raises(expected) as info2:
            await api.call("chat", model="m", messages=[Message.user("Hi")])
        errors.append(info2.value)
    stream = await api.call("chat_stream", model="m", messages=[Message.user("Hi")])
    with pytest.raises(APIStreamError) as info3:
        await api.chunks(stream)
    errors.append(info3.value)
    refused = Api(
        kind, base_url=f"http://127.0.0.1:{closed_port()}/v1", transport=None, api_key=SECRET
    )
    with pytest.raises(APIConnectionError) as info4:
        await refused.call("chat", model="m", messages=[Message.user("Hi")], max_retries=0)
    errors.append(info4.value)
    await refused.do(refused.client, "close")

    assert SECRET not in repr(api.client) and SECRET not in str(api.client)
    assert "***" in str(errors[0])  # the echoed key was redacted, the message kept
    for exc in errors:
        assert SECRET not in str(exc) and SECRET not in repr(exc), exc
        assert SECRET not in json.dumps(getattr(exc, "body", None), default=str)
    assert caplog.records, "debug logging produced no records"
    for record in caplog.records:
        assert SECRET not in record.getMessage(), record.name


async def test_debug_log_lines(kind: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="convo.client")
    server = Server(
        error(429, **{"retry-after": "0.05", "x-request-id": "req_a"}),
        ok(**{"x-request-id": "req_b"}),
    )
    api = Api(kind, server=server)
    await api.call("chat", model="m", messages=[Message.user("Hi")])
    lines = [r.getMessage() for r in caplog.records if r.name == "convo.client"]
    assert lines == [
        "POST http://fake.test/v1/chat/completions -> 429 (attempt 1, request id req_a)",
        "retrying POST http://fake.test/v1/chat/completions in 0.050 s after status 429 (retry 1)",
        "POST http://fake.test/v1/chat/completions -> 200 (attempt 2, request id req_b)",
    ]


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"extra_headers": {"X-A": "1", "Accept": None}, "extra_query": {"q": "2"}, "timeout": 7.0},
    ],
    ids=["defaults", "per-call options"],
)
async def test_own_client_and_passed_client_send_the_same_request(
    kind: str, extra: dict[str, Any]
) -> None:
    # convo builds requests for its own httpx client without build_request (faster);
    # the wire must not differ from the build_request path used for a passed-in client.
    config: dict[str, Any] = {
        "api_key": SECRET,
        "organization": "org-1",
        "default_headers": {"X-Team": "bots"},
        "default_query": {"api-version": "1"},
    }
    own = Api(kind, **config)
    server = Server()
    passed_client = (httpx.Client if kind == "sync" else httpx.AsyncClient)(
        transport=httpx.MockTransport(server)
    )
    passed = Api(kind, server=server, http_client=passed_client, **config)
    for api in (own, passed):
        await api.call("chat", model="m", messages=[Message.user("Hi")], **extra)
    a, b = own.server.requests[0], passed.server.requests[0]
    assert a.url == b.url and a.content == b.content
    assert sorted(a.headers.multi_items()) == sorted(b.headers.multi_items())
    assert a.extensions["timeout"] == b.extensions["timeout"]
    await passed.do(passed_client, "close" if kind == "sync" else "aclose")


async def test_passed_client_keeps_its_own_headers(kind: str) -> None:
    server = Server()
    mine = (httpx.Client if kind == "sync" else httpx.AsyncClient)(
        transport=httpx.MockTransport(server), headers={"X-From-Client": "yes"}
    )
    api = Api(kind, server=server, http_client=mine, api_key=SECRET)
    await api.call("chat", model="m", messages=[Message.user("Hi")])
    headers = server.requests[0].headers
    assert headers["x-from-client"] == "yes"
    assert headers["authorization"] == f"Bearer {SECRET}"
    await api.do(mine, "close" if kind == "sync" else "aclose")


async def test_header_keys_are_redacted_and_header_names_merge_case_insensitively(
    kind: str,
) -> None:
    echo = {"error": {"message": f"key {SECRET} is not valid for this deployment"}}
    api = Api(
        kind,
        server=Server(httpx.Response(401, json=echo), ok()),
        default_headers={"api-key": SECRET, "user-agent": "my-bot/1"},
    )
    with pytest.raises(AuthenticationError) as info:
        await api.call("chat", model="m", messages=[Message.user("Hi")])
    assert SECRET not in str(info.value) and "key *** is not valid" in str(info.value)
    await api.call(
        "chat", model="m", messages=[Message.user("Hi")], extra_headers={"API-KEY": None}
    )
    first, second = api.server.requests
    assert first.headers.get_list("user-agent") == ["my-bot/1"]
    assert first.headers["api-key"] == SECRET and "api-key" not in second.headers


async def test_per_request_keys_are_redacted_too(kind: str) -> None:
    tenant = "sk-per-tenant-789"
    echo = {"error": {"message": f"Invalid key {tenant}", "type": "auth"}}
    api = Api(kind, server=Server(httpx.Response(401, json=echo)), api_key=None, max_retries=0)
    with pytest.raises(APIStatusError) as info:
        await api.call(
            "chat", model="m", messages=[Message.user("Hi")],
            extra_headers={"Authorization": f"Bearer {tenant}"},
        )
    assert tenant not in str(info.value) and tenant not in json.dumps(info.value.body)
    assert "Invalid key ***" in str(info.value)
