"""The clients against convo.testing.FakeBackend, in process and over real loopback HTTP.

Each test body runs on four paths: sync and async client, each through the
fake's httpx transport and through its real HTTP server.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from test_client_helpers import SECRET, Api

from convo import (
    APIConnectionError,
    APIResponseValidationError,
    APIStreamError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    FunctionCall,
    InternalServerError,
    Message,
    ToolCall,
)
from convo.testing import FakeBackend

HI = [Message.system("Be brief."), Message.user("Hi")]
CALLS = [
    ToolCall(id="call_w", function=FunctionCall(name="get_weather", arguments='{"city": "Paris"}')),
    ToolCall(id="call_t", function=FunctionCall(name="get_time", arguments='{"tz": "CET"}')),
]


@pytest.fixture(params=["sync", "async"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=["transport", "server"])
def path(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class Env:
    def __init__(self, kind: str, path: str, fake: FakeBackend, base_url: str | None) -> None:
        self.kind, self.path, self.fake, self.base_url = kind, path, fake, base_url
        self.apis: list[Api] = []

    def api(self, **kw: Any) -> Api:
        if self.path == "transport":
            api = Api(self.kind, base_url="http://fake/v1", transport=self.fake.transport(), **kw)
        else:
            api = Api(self.kind, base_url=self.base_url, transport=None, **kw)
        self.apis.append(api)
        return api

    async def close(self) -> None:
        for api in self.apis:  # also when a test failed midway: no socket outlives its test
            await api.do(api.client, "close")


@pytest.fixture
async def env(kind: str, path: str) -> AsyncIterator[Env]:
    fake = FakeBackend(created=1700000000)
    if path == "transport":
        e = Env(kind, path, fake, None)
        yield e
        await e.close()
    else:
        with fake.serve() as server:
            e = Env(kind, path, fake, server.base_url)
            yield e
            await e.close()


async def test_default_reply_round_trip(env: Env) -> None:
    api = env.api(api_key=SECRET)
    result = await api.call("chat", model="gpt-4o-mini", messages=HI)
    assert result.text == "You said: Hi"
    assert result.finish_reason == "stop"
    assert result.usage is not None and result.usage.prompt_tokens > 0
    assert result.usage.total_tokens == result.usage.prompt_tokens + result.usage.completion_tokens
    sent = env.fake.last_request
    assert sent.path == "/v1/chat/completions"
    assert sent.headers["authorization"] == f"Bearer {SECRET}"
    assert sent.json == {
        "model": "gpt-4o-mini",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
    }


async def test_every_explicit_parameter_passes_openai_validation(env: Env) -> None:
    # The fake validates requests the way OpenAI does (strict): convo's body must be valid.
    api = env.api()
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    env.fake.reply("ok")
    result = await api.call(
        "chat",
        model="gpt-4o-mini",
        messages=HI,
        temperature=0.5,
        top_p=0.9,
        n=1,
        stop=["\n\n"],
        max_completion_tokens=64,
        frequency_penalty=0.1,
        presence_penalty=0.1,
        logit_bias={"50256": -100},
        logprobs=True,
        top_logprobs=2,
        seed=1,
        response_format={"type": "text"},
        tools=tools,
        tool_choice="auto",
        parallel_tool_calls=False,
        user="user-1",
        metadata={"k": "v"},
        service_tier="auto",
    )
    assert result.text == "ok"
    env.fake.reply(" done")
    completion = await api.call(
        "complete",
        model="gpt-3.5-turbo-instruct",
        prompt="Say done:",
        max_tokens=5,
        suffix="!",
        echo=False,
        best_of=1,
        logprobs=1,
        stop="\n",
    )
    assert completion.text == " done"


async def test_streamed_equals_non_streamed(env: Env) -> None:
    api = env.api()
    env.fake.reply_tool_calls(CALLS, content="Let me check.")
    plain = await api.call("chat", model="gpt-4o-mini", messages=HI)
    env.fake.reply_tool_calls(CALLS, content="Let me check.")
    stream = await api.call(
        "chat_stream", model="gpt-4o-mini", messages=HI, stream_options={"include_usage": True}
    )
    chunks = await api.chunks(stream)
    assembled = await api.do(stream, "final")
    assert len(chunks) > 3
    # OpenAI sends "annotations": [] only in non-streamed answers; all else must match.
    assert plain.message.annotations == [] and assembled.message.annotations is None
    assembled.choices[0].message.annotations = []
    assert assembled.model_dump(exclude={"id", "object"}) == plain.model_dump(
        exclude={"id", "object"}
    )
    message = assembled.to_message()
    assert [c.function.name for c in message.tool_calls or []] == ["get_weather", "get_time"]
    assert (
        message.tool_calls is not None
        and message.tool_calls[0].function.arguments == '{"city": "Paris"}'
    )


async def test_completion_stream_equals_non_streamed(env: Env) -> None:
    api = env.api()
    env.fake.reply(" Bonjour le monde")
    plain = await api.call("complete", model="gpt-3.5-turbo-instruct", prompt="Hello ->")
    env.fake.reply(" Bonjour le monde")
    stream = await api.call(
        "complete_stream",
        model="gpt-3.5-turbo-instruct",
        prompt="Hello ->",
        stream_options={"include_usage": True},
    )
    assembled = await api.do(stream, "final")
    assert assembled.text == plain.text == " Bonjour le monde"
    assert assembled.model_dump(exclude={"id", "object"}) == plain.model_dump(
        exclude={"id", "object"}
    )


async def test_429_then_reply_waits_retry_after(env: Env) -> None:
    api = env.api()
    env.fake.fail(429, headers={"retry-after": "0.05"})
    env.fake.reply("after the wait")
    result = await api.call("chat", model="gpt-4o-mini", messages=HI)
    assert result.text == "after the wait"
    assert api.sleeps == [0.05] and len(env.fake.requests) == 2


async def test_500_then_reply_backs_off_and_400_is_final(env: Env) -> None:
    api = env.api()
    env.fake.fail(500)
    assert (await api.call("chat", model="gpt-4o-mini", messages=HI)).text == "You said: Hi"
    assert len(api.sleeps) == 1 and 0.375 <= api.sleeps[0] <= 0.5
    env.fake.fail(400, message="bad temperature", param="temperature")
    with pytest.raises(BadRequestError, match="400 Bad Request: bad temperature") as info:
        await api.call("chat", model="gpt-4o-mini", messages=HI)
    assert info.value.param == "temperature"
    assert len(env.fake.requests) == 3


async def test_server_side_validation_error_is_a_bad_request(env: Env) -> None:
    api = env.api()
    with pytest.raises(BadRequestError) as info:
        await api.call("chat", model="gpt-4o-mini", messages=HI, temperature=7.0)
    assert "temperature" in str(info.value)
    assert len(env.fake.requests) == 1


async def test_wrong_key_is_an_authentication_error_without_the_key(env: Env) -> None:
    env.fake = FakeBackend(api_key="sk-right-key")
    if env.path == "server":
        with env.fake.serve() as server:
            env.base_url = server.base_url
            await _wrong_key(env)
    else:
        await _wrong_key(env)


async def _wrong_key(env: Env) -> None:
    api = env.api(api_key=SECRET)
    with pytest.raises(AuthenticationError) as info:
        await api.call("chat", model="gpt-4o-mini", messages=HI)
    assert SECRET not in str(info.value) and SECRET not in repr(info.value.body)


async def test_timeout(env: Env) -> None:
    api = env.api(timeout=0.3, max_retries=0)
    env.fake.timeout(seconds=5)
    with pytest.raises(APITimeoutError, match="timeout on POST"):
        await api.call("chat", model="gpt-4o-mini", messages=HI)


@pytest.mark.parametrize("abort", [False, True])
async def test_cut_stream(env: Env, abort: bool) -> None:
    api = env.api()
    env.fake.cut_stream(after_chunks=2, text="one two three four five six", abort=abort)
    stream = await api.call("chat_stream", model="gpt-4o-mini", messages=HI)
    if abort:  # the connection drops mid-body: a connection error, as in the official SDK
        with pytest.raises(APIConnectionError, match="RemoteProtocolError") as info:
            await api.chunks(stream)
        assert not isinstance(info.value, APITimeoutError)
    else:  # the body ends cleanly but the reply never finished
        with pytest.raises(APIStreamError, match="ended before the response was complete"):
            await api.chunks(stream)
    assert stream.snapshot().text.startswith("one")  # what arrived is kept
    assert len(env.fake.requests) == 1  # never retried once bytes arrived
    # The client stays usable after a broken stream.
    assert (await api.call("chat", model="gpt-4o-mini", messages=HI)).text == "You said: Hi"


async def test_html_502_and_invalid_json(env: Env) -> None:
    api = env.api(max_retries=0)
    env.fake.malformed(
        b"<html><body>bad gateway</body></html>", status=502, content_type="text/html"
    )
    with pytest.raises(InternalServerError) as info:
        await api.call("chat", model="gpt-4o-mini", messages=HI)
    assert str(info.value).startswith("502 Bad Gateway: <html><body>bad gateway</body></html>")
    env.fake.malformed(b'{"id": "chatcmpl-1", "choices": [')
    with pytest.raises(APIResponseValidationError, match="not a valid ChatCompletion") as info2:
        await api.call("chat", model="gpt-4o-mini", messages=HI)
    assert info2.value.status_code == 200


async def test_early_close_then_reuse(env: Env) -> None:
    api = env.api()
    env.fake.reply(" ".join(f"word{i}" for i in range(300)))
    stream = await api.call("chat_stream", model="gpt-4o-mini", messages=HI)
    first = await api.next(stream)
    assert first.choices[0].delta.role == "assistant"
    await api.do(stream, "close")
    assert stream.response.is_closed
    # The connection pool is not poisoned: the next request works.
    assert (await api.call("chat", model="gpt-4o-mini", messages=HI)).text == "You said: Hi"


async def test_streamed_refusal_equals_non_streamed(env: Env) -> None:
    api = env.api()
    env.fake.reply_refusal("I can't help with that.")
    plain = await api.call("chat", model="gpt-4o-mini", messages=HI)
    env.fake.reply_refusal("I can't help with that.")
    stream = await api.call("chat_stream", model="gpt-4o-mini", messages=HI)
    assembled = await api.do(stream, "final")
    assert plain.message.refusal == assembled.message.refusal == "I can't help with that."
    assert plain.message.content is None and assembled.message.content in (None, "")
    assert assembled.to_message().refusal == "I can't help with that."
