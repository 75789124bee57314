"""Streams assembled into one result: every kind of delta, and where streams end.

Through the public client and an httpx.MockTransport serving the exact SSE bytes
(OpenAI's chunk format: /work/shared/reference/openai-openapi.yaml).
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from convo import APIResponseValidationError, APIStreamError, Message, OpenAIClient

URL = "http://fake.test/v1"
HI = [Message.user("hi")]
HEAD = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 7, "model": "m"}


def chunk(delta: dict[str, Any] | None = None, *, index: int = 0, finish: str | None = None,
          **fields: Any) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": index, "delta": delta or {}, "finish_reason": finish}
    if "logprobs" in fields:
        choice["logprobs"] = fields.pop("logprobs")
    return {**HEAD, "choices": [choice], **fields}


def sse(*events: dict[str, Any] | str, done: bool = True) -> str:
    out = "".join(e if isinstance(e, str) else f"data: {json.dumps(e)}\n\n" for e in events)
    return out + ("data: [DONE]\n\n" if done else "")


def client(body: str | bytes, **headers: str) -> OpenAIClient:
    raw = body.encode() if isinstance(body, str) else body

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=raw, headers={"content-type": "text/event-stream",
                                                         **headers})

    return OpenAIClient(base_url=URL, api_key="k", transport=httpx.MockTransport(handler),
                        max_retries=0)


def chat(body: str | bytes, **headers: str) -> Any:
    with client(body, **headers) as api, api.chat_stream(model="m", messages=HI) as stream:
        return stream.final()


# --- what the result holds ---------------------------------------------------------------------


def test_the_first_id_wins_and_repeated_fields_are_kept_once() -> None:
    second = {**HEAD, "id": "chatcmpl-2", "created": 9, "model": "other"}
    result = chat(sse(
        chunk({"role": "assistant", "content": "Hel"}, system_fingerprint="fp_1", service_tier="default"),
        {**second, "choices": [{"index": 0, "delta": {"content": "lo"}, "finish_reason": "stop"}]},
    ))
    assert (result.id, result.created, result.model) == ("chatcmpl-1", 7, "m")
    assert (result.system_fingerprint, result.service_tier) == ("fp_1", "default")
    message = result.choices[0].message
    assert (message.role, message.content, message.refusal) == ("assistant", "Hello", None)
    assert result.choices[0].logprobs is None


def test_a_stream_without_chunks_assembles_to_nothing() -> None:
    with client(sse()) as api, api.chat_stream(model="m", messages=HI) as stream:
        list(stream)
        result = stream.snapshot()
    assert (result.id, result.created, result.model, result.system_fingerprint) == ("", 0, "", None)
    assert result.choices == []


def test_the_role_defaults_to_assistant_and_content_to_none() -> None:
    call = {"index": 0, "id": "call_1", "type": "function",
            "function": {"name": "get", "arguments": "{}"}}
    result = chat(sse(chunk({"tool_calls": [call]}, finish="tool_calls")))
    message = result.choices[0].message
    assert (message.role, message.content) == ("assistant", None)


def test_a_refusal_in_pieces() -> None:
    result = chat(sse(chunk({"role": "assistant", "refusal": "I can't "}),
                      chunk({"refusal": "help."}, finish="stop")))
    message = result.choices[0].message
    assert (message.content, message.refusal) == (None, "I can't help.")


def test_tool_call_fragments_keep_the_first_id_type_and_name() -> None:
    fragments = [
        {"index": 0, "id": "call_1", "function": {"name": "get", "arguments": '{"c'}},
        {"index": 0, "id": "call_X", "type": "custom", "function": {"name": "other", "arguments": 'ity": '}},
        {"index": 0, "type": "function", "function": {"arguments": '"Rome"}'}},
        {"index": 1, "function": {"arguments": "{}"}},
    ]
    result = chat(sse(*(chunk({"tool_calls": [f]}) for f in fragments), chunk(finish="tool_calls")))
    first, second = result.choices[0].message.tool_calls
    assert (first.id, first.type, first.function.name) == ("call_1", "custom", "get")
    assert first.function.arguments == '{"city": "Rome"}'
    # a call whose fragments never named it: empty strings, type function
    assert (second.id, second.type, second.function.name, second.function.arguments) == (
        "", "function", "", "{}")


def test_extra_delta_fields_are_joined_by_kind() -> None:
    result = chat(sse(
        chunk({"content": "a", "reasoning_content": "thin", "annotations": [{"n": 1}], "audio": {"id": "x"}}),
        chunk({"content": "b", "reasoning_content": "king", "annotations": [{"n": 2}], "audio": None}),
        chunk({"audio": {"id": "y"}}, finish="stop"),
    ))
    message = result.choices[0].message
    assert (message.model_extra or {})["reasoning_content"] == "thinking"  # text: joined
    assert message.annotations == [{"n": 1}, {"n": 2}]  # lists: joined
    assert message.audio == {"id": "y"}  # anything else: the last non-null value wins


def test_refusal_logprobs_are_concatenated() -> None:
    def lp(token: str) -> dict[str, Any]:
        return {"token": token, "logprob": -0.5, "bytes": None, "top_logprobs": []}

    result = chat(sse(
        chunk({"refusal": "No"}, logprobs={"content": None, "refusal": [lp("No")]}),
        chunk({"refusal": "pe"}, logprobs={"content": None, "refusal": [lp("pe")]}, finish="stop"),
    ))
    logprobs = result.choices[0].logprobs
    assert logprobs is not None and logprobs.content is None
    assert [t.token for t in logprobs.refusal or []] == ["No", "pe"]


def test_a_cut_choice_has_no_finish_reason() -> None:
    with client(sse(chunk({"content": "part"}), done=False)) as api, api.chat_stream(
        model="m", messages=HI
    ) as stream:
        with pytest.raises(APIStreamError):
            list(stream)
        assert stream.snapshot().choices[0].finish_reason is None


# --- completions --------------------------------------------------------------------------------------


def completion_chunk(text: str, index: int = 0, finish: str | None = None) -> dict[str, Any]:
    return {"id": "cmpl-1", "object": "text_completion", "created": 3, "model": "m",
            "choices": [{"index": index, "text": text, "finish_reason": finish, "logprobs": None}]}


def complete(body: str) -> Any:
    with client(body) as api, api.complete_stream(model="m", prompt="hi", n=2) as stream:
        return stream.final()


def test_completion_choices_keep_their_index() -> None:
    result = complete(sse(completion_chunk("a", 0), completion_chunk("b", 1),
                          completion_chunk("!", 0, "stop"), completion_chunk("?", 1, "length")))
    assert [(c.index, c.text, c.finish_reason) for c in result.choices] == [
        (0, "a!", "stop"), (1, "b?", "length")]


def test_a_completion_stream_is_complete_once_every_choice_finished() -> None:
    # no [DONE]: the finish reasons alone say the response is complete
    result = complete(sse(completion_chunk("a", 0, "stop"), completion_chunk("b", 1, "stop"), done=False))
    assert [c.text for c in result.choices] == ["a", "b"]
    # a choice that starts after the others finished makes the response incomplete again
    with pytest.raises(APIStreamError, match="ended before the response was complete"):
        complete(sse(completion_chunk("a", 0, "stop"), completion_chunk("b", 1), done=False))
    with client(sse(completion_chunk("a", 0), done=False)) as api, api.complete_stream(
        model="m", prompt="hi"
    ) as stream:
        with pytest.raises(APIStreamError, match="ended before the response was complete"):
            list(stream)
        assert [(c.text, c.finish_reason) for c in stream.snapshot().choices] == [("a", None)]


# --- where the stream ends, and what else it carries ------------------------------------------------


def test_a_chat_choice_that_starts_after_the_others_finished_is_awaited() -> None:
    with pytest.raises(APIStreamError, match="ended before the response was complete"):
        chat(sse(chunk({"content": "a"}, finish="stop"), chunk({"content": "b"}, index=1), done=False))
    result = chat(sse(chunk({"content": "a"}, finish="stop"), chunk({"content": "b"}, index=1),
                      chunk(index=1, finish="length"), done=False))
    assert [c.finish_reason for c in result.choices] == ["stop", "length"]


def test_an_incomplete_stream_names_the_request() -> None:
    with pytest.raises(APIStreamError) as err:
        chat(sse(chunk({"content": "a"}), done=False), **{"x-request-id": "req_1"})
    assert str(err.value) == (f"stream from {URL}/chat/completions ended before the response was "
                              "complete (no finish reason, no [DONE])")
    assert err.value.request_id == "req_1"


def test_a_stream_that_is_not_utf8() -> None:
    body = b"data: " + json.dumps(chunk({"content": "a"})).encode() + b"\n\ndata: \xff\n\n"
    with pytest.raises(APIResponseValidationError) as err:
        chat(body, **{"x-request-id": "req_2"})
    assert str(err.value).startswith(f"the stream from {URL}/chat/completions is not valid UTF-8")
    assert (err.value.status_code, err.value.request_id) == (200, "req_2")


def test_done_may_carry_trailing_text() -> None:
    result = chat(sse(chunk({"content": "a"}, finish="stop"), done=False) + "data: [DONE] \n\n")
    assert result.choices[0].message.content == "a"


def test_named_events_are_skipped_without_losing_their_neighbours() -> None:
    body = ("event: ping\ndata: {}\n\n"
            + f"data: {json.dumps(chunk({'content': 'a'}))}\n\n"
            + f"event: message\ndata: {json.dumps(chunk({'content': 'b'}, finish='stop'))}\n\n"
            + "data: [DONE]\n\n")
    assert chat(body).choices[0].message.content == "ab"


def test_unknown_top_level_fields_are_not_errors() -> None:
    result = chat(sse(chunk({"content": "a"}, finish="stop", provider="local")))
    assert result.choices[0].message.content == "a"


def test_an_empty_stream_is_incomplete() -> None:
    with pytest.raises(APIStreamError, match="ended before the response was complete"):
        chat("")
    with pytest.raises(APIStreamError, match="ended before the response was complete"):
        complete(": just a keep-alive comment\n\n")
