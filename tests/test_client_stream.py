"""Streaming through the clients: assembly, completion checks, errors, early close, retries.

Every test body runs against both OpenAIClient and AsyncOpenAIClient.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from test_client_helpers import Api, Body, Server, error

from convo import (
    APIConnectionError,
    APIResponseValidationError,
    APIStreamError,
    ChatCompletion,
    ChatCompletionChunk,
    Completion,
    CompletionChunk,
    Message,
    RateLimitError,
)

HI = [Message.user("Hi")]


@pytest.fixture(params=["sync", "async"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def event(payload: Any) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def chunk(*choices: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-s",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "gpt-test",
        "system_fingerprint": "fp_s",
        "choices": list(choices),
        **fields,
    }


def delta(index: int = 0, finish: str | None = None, **d: Any) -> dict[str, Any]:
    return {"index": index, "delta": d, "finish_reason": finish, "logprobs": None}


def streamed(parts: list[bytes], status: int = 200) -> httpx.Response:
    return httpx.Response(status, stream=Body(parts), headers={"content-type": "text/event-stream"})


def tool_delta(
    index: int, id: str | None = None, name: str | None = None, args: str | None = None
) -> dict[str, Any]:
    out: dict[str, Any] = {"index": index, "function": {}}
    if id is not None:
        out["id"] = id
        out["type"] = "function"
    if name is not None:
        out["function"]["name"] = name
    if args is not None:
        out["function"]["arguments"] = args
    return out


USAGE = {"prompt_tokens": 20, "completion_tokens": 12, "total_tokens": 32}
LOGPROB = {"token": "The", "logprob": -0.1, "bytes": [84, 104, 101], "top_logprobs": []}

# Text, two tool calls whose fragments interleave across chunks (merged by index),
# an extra string field, logprobs, a keep-alive comment, a named ping event, the usage chunk.
CHAT_PARTS = [
    b": keep-alive\n\n",
    event(chunk(delta(role="assistant", content=""))),
    event(chunk(delta(content="The ", tool_calls=[tool_delta(0, "call_a", "get_weather", "")]))),
    b"event: ping\ndata: {}\n\n",
    event(
        chunk(
            {
                **delta(
                    tool_calls=[
                        tool_delta(1, "call_b", "get_time", '{"tz"'),
                        tool_delta(0, args='{"city":'),
                    ]
                ),
                "logprobs": {"content": [LOGPROB], "refusal": None},
            }
        )
    ),
    event(
        chunk(
            delta(
                content="answer",
                reasoning_content="think",
                tool_calls=[
                    tool_delta(0, "call_a", args='"Paris"}'),
                    tool_delta(1, args=':"CET"}'),
                ],
            )
        )
    ),
    event(chunk(delta(finish="tool_calls", reasoning_content="ing"))),
    event(chunk(usage=USAGE)),
    b"data: [DONE]\n\n",
]

CHAT_EXPECTED = ChatCompletion.model_validate(
    {
        "id": "chatcmpl-s",
        "created": 1700000000,
        "model": "gpt-test",
        "system_fingerprint": "fp_s",
        "usage": USAGE,
        "choices": [
            {
                "index": 0,
                "finish_reason": "tool_calls",
                "logprobs": {"content": [LOGPROB], "refusal": None},
                "message": {
                    "role": "assistant",
                    "content": "The answer",
                    "reasoning_content": "thinking",
                    "tool_calls": [
                        {
                            "id": "call_a",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                        },
                        {
                            "id": "call_b",
                            "type": "function",
                            "function": {"name": "get_time", "arguments": '{"tz":"CET"}'},
                        },
                    ],
                },
            }
        ],
    }
)


@pytest.mark.parametrize("mode", ["iterate then final", "final alone", "context manager"])
async def test_chat_stream_assembles_everything(kind: str, mode: str) -> None:
    body = Body(CHAT_PARTS)
    api = Api(kind, server=Server(httpx.Response(200, stream=body)))
    stream = await api.call(
        "chat_stream", model="gpt-test", messages=HI, stream_options={"include_usage": True}
    )
    assert api.server.body() == {
        "model": "gpt-test",
        "messages": [{"role": "user", "content": "Hi"}],
        "stream_options": {"include_usage": True},
        "stream": True,
    }
    if mode == "iterate then final":
        chunks = await api.chunks(stream)
        assert all(isinstance(c, ChatCompletionChunk) for c in chunks)
        assert len(chunks) == 6  # comment, ping and [DONE] are not chunks
        assert "".join(c.text for c in chunks) == "The answer"
        assert chunks[-1].choices == [] and chunks[-1].usage is not None
    elif mode == "context manager":
        if kind == "sync":
            with stream as s:
                assert len(list(s)) == 6
        else:
            async with stream as s:
                assert len([c async for c in s]) == 6
    result = await api.do(stream, "final")
    assert result == CHAT_EXPECTED
    assert result.to_message().tool_calls[1].function.arguments == '{"tz":"CET"}'
    assert body.closed and body.sent == len(CHAT_PARTS)


async def test_chat_stream_with_several_choices(kind: str) -> None:
    parts = [
        event(
            chunk(delta(0, role="assistant", content="A"), delta(1, role="assistant", content="X"))
        ),
        event(chunk(delta(1, content="Y", finish="length"))),
        event(chunk(delta(0, content="B", finish="stop"))),
        b"data: [DONE]\n\n",
    ]
    api = Api(kind, server=Server(streamed(parts)))
    stream = await api.call("chat_stream", model="m", messages=HI, n=2)
    result = await api.do(stream, "final")
    assert [(c.index, c.message.content, c.finish_reason) for c in result.choices] == [
        (0, "AB", "stop"),
        (1, "XY", "length"),
    ]


async def test_completion_stream_assembles(kind: str) -> None:
    def c(index: int, text: str, finish: str | None = None, **extra: Any) -> dict[str, Any]:
        return {"index": index, "text": text, "finish_reason": finish, "logprobs": None, **extra}

    head = {"id": "cmpl-s", "object": "text_completion", "created": 5, "model": "davinci"}
    lp = {"tokens": [" Bon"], "token_logprobs": [-0.5], "top_logprobs": None, "text_offset": [10]}
    parts = [
        event({**head, "choices": [c(0, " Bon", logprobs=lp)]}),
        event(
            {
                **head,
                "choices": [
                    c(0, "jour", "stop", logprobs={**lp, "tokens": ["jour"], "text_offset": [14]})
                ],
            }
        ),
        event({**head, "choices": [], "usage": USAGE}),
        b"data: [DONE]\n\n",
    ]
    api = Api(kind, server=Server(streamed(parts)))
    stream = await api.call("complete_stream", model="davinci", prompt="Hello ->", logprobs=1)
    assert api.server.body()["stream"] is True and api.server.body()["prompt"] == "Hello ->"
    chunks = await api.chunks(stream)
    assert all(isinstance(x, CompletionChunk) for x in chunks)
    assert [x.text for x in chunks] == [" Bon", "jour", ""]
    result = await api.do(stream, "final")
    assert isinstance(result, Completion)
    assert (result.id, result.model, result.text, result.finish_reason) == (
        "cmpl-s",
        "davinci",
        " Bonjour",
        "stop",
    )
    assert result.usage is not None and result.usage.total_tokens == 32
    assert result.choices[0].logprobs is not None
    assert result.choices[0].logprobs.tokens == [" Bon", "jour"]
    assert result.choices[0].logprobs.text_offset == [10, 14]


@pytest.mark.parametrize("how", ["iterate", "final"])
async def test_stream_that_stops_before_any_choice_finished(kind: str, how: str) -> None:
    parts = [
        event(chunk(delta(role="assistant", content="Hel"))),
        event(chunk(delta(content="lo"))),
    ]
    body = Body(parts)
    api = Api(kind, server=Server(httpx.Response(200, stream=body)))
    stream = await api.call("chat_stream", model="m", messages=HI)
    with pytest.raises(APIStreamError, match="ended before the response was complete"):
        if how == "iterate":
            await api.chunks(stream)
        else:
            await api.do(stream, "final")
    assert body.closed
    assert stream.snapshot().text == "Hello"  # what arrived is not lost
    assert len(api.server.requests) == 1  # a broken stream is never retried


@pytest.mark.parametrize(
    "ending",
    [
        [event(chunk(delta(content="!", finish="stop")))],  # finish reason, no [DONE]
        [event(chunk(delta(content="!"))), b"data: [DONE]\n\n"],  # [DONE], no finish reason
        [event(chunk(delta(content="!", finish="stop"))), b"data: [DONE]"],  # no final blank line
    ],
)
async def test_stream_complete_by_finish_reason_or_done(kind: str, ending: list[bytes]) -> None:
    api = Api(kind, server=Server(streamed([event(chunk(delta(content="Hi"))), *ending])))
    stream = await api.call("chat_stream", model="m", messages=HI)
    assert (await api.do(stream, "final")).text == "Hi!"


@pytest.mark.parametrize(
    "error_event",
    [
        event({"error": {"message": "model overloaded", "type": "server_error", "code": None}}),
        b'event: error\ndata: {"message": "model overloaded", "type": "server_error"}\n\n',
    ],
)
async def test_error_event_mid_stream(kind: str, error_event: bytes) -> None:
    parts = [event(chunk(delta(content="Hel"))), error_event, event(chunk(delta(content="lo")))]
    api = Api(kind, server=Server(streamed(parts)))
    stream = await api.call("chat_stream", model="m", messages=HI)
    first = await api.next(stream)
    assert first.text == "Hel"
    with pytest.raises(
        APIStreamError,
        match="stream error from http://fake.test/v1/chat/completions: model overloaded",
    ) as info:
        await api.next(stream)
    assert info.value.body["type"] == "server_error"


async def test_invalid_chunk_is_a_validation_error(kind: str) -> None:
    api = Api(kind, server=Server(streamed([b'data: {"choices": [oops\n\n'])))
    stream = await api.call("chat_stream", model="m", messages=HI)
    with pytest.raises(APIResponseValidationError) as info:
        await api.chunks(stream)
    assert str(info.value) == (  # what is wrong (pydantic's words), then the event's data
        "200 answer from http://fake.test/v1/chat/completions is not a valid ChatCompletionChunk "
        "(Invalid JSON: expected value at line 1 column 14); body: '{\"choices\": [oops'")


async def test_invalid_utf8_in_stream(kind: str) -> None:
    api = Api(kind, server=Server(streamed([b"data: \xff\n\n"])))
    stream = await api.call("chat_stream", model="m", messages=HI)
    with pytest.raises(APIResponseValidationError, match="not valid UTF-8"):
        await api.chunks(stream)


async def test_early_close_closes_the_response(kind: str) -> None:
    parts = [event(chunk(delta(content=f"w{i} "))) for i in range(50)]
    body = Body([*parts, event(chunk(delta(finish="stop"))), b"data: [DONE]\n\n"])
    api = Api(kind, server=Server(httpx.Response(200, stream=body)))
    stream = await api.call("chat_stream", model="m", messages=HI)
    assert (await api.next(stream)).text == "w0 "
    await api.do(stream, "close")
    assert body.closed and body.sent < 5
    await api.do(stream, "close")  # idempotent
    with pytest.raises(APIStreamError, match="closed before the response was complete"):
        await api.do(stream, "final")
    assert stream.snapshot().text == "w0 "


async def test_context_manager_exit_closes_an_unread_stream(kind: str) -> None:
    body = Body([event(chunk(delta(content="x", finish="stop")))])
    api = Api(kind, server=Server(httpx.Response(200, stream=body)))
    stream = await api.call("chat_stream", model="m", messages=HI)
    if kind == "sync":
        with stream:
            pass
    else:
        async with stream:
            pass
    assert body.closed and body.sent == 0


async def test_stream_is_retried_before_the_first_byte(kind: str) -> None:
    ok_parts = [event(chunk(delta(content="ok", finish="stop"))), b"data: [DONE]\n\n"]
    server = Server(error(429, "busy", **{"retry-after": "0.05"}), streamed(ok_parts))
    api = Api(kind, server=server)
    stream = await api.call("chat_stream", model="m", messages=HI)
    assert (await api.do(stream, "final")).text == "ok"
    assert api.sleeps == [0.05] and len(server.requests) == 2


async def test_stream_error_status_reads_the_body(kind: str) -> None:
    api = Api(kind, server=Server(error(429, "quota exceeded")), max_retries=0)
    with pytest.raises(RateLimitError, match="429 Too Many Requests: quota exceeded"):
        await api.call("chat_stream", model="m", messages=HI)


async def test_connection_dropped_mid_stream_is_not_retried(kind: str) -> None:
    parts = [event(chunk(delta(content="Hel"))), event(chunk(delta(content="lo", finish="stop")))]
    body = Body(parts, fail_after=1)
    api = Api(kind, server=Server(httpx.Response(200, stream=body)))
    stream = await api.call("chat_stream", model="m", messages=HI)
    with pytest.raises(
        APIConnectionError,
        match="connection error on POST http://fake.test/v1/chat/completions: ReadError",
    ):
        await api.chunks(stream)
    assert len(api.server.requests) == 1 and api.sleeps == []
    assert body.closed


async def test_final_after_a_broken_stream_raises_what_broke_it(kind: str) -> None:
    parts = [event(chunk(delta(content="Hel"))), event({"error": {"message": "overloaded"}})]
    api = Api(kind, server=Server(streamed(parts)))
    stream = await api.call("chat_stream", model="m", messages=HI)
    with pytest.raises(APIStreamError, match="overloaded") as first:
        await api.chunks(stream)
    with pytest.raises(APIStreamError, match="overloaded") as again:
        await api.do(stream, "final")
    assert again.value is first.value is stream.error


def test_a_stream_cut_while_another_choice_is_unfinished_is_an_error() -> None:
    import json as _json

    import httpx

    from convo import APIStreamError, OpenAIClient

    def chunk(index: int, content: str, finish: str | None) -> str:
        body = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
                "choices": [{"index": index, "delta": {"content": content}, "finish_reason": finish}]}
        return f"data: {_json.dumps(body)}\n\n"

    # n=2: choice 0 finishes, choice 1 is cut midway, no [DONE]
    sse = chunk(0, "Hi", None) + chunk(1, "Hi th", None) + chunk(0, "!", "stop")

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=sse.encode())

    with (
        OpenAIClient(base_url="http://x/v1", api_key="k", transport=httpx.MockTransport(handler)) as client,
        client.chat_stream(model="m", messages=[{"role": "user", "content": "hi"}], n=2) as s,
        pytest.raises(APIStreamError, match="ended before the response was complete"),
    ):
        s.final()
