"""What the client's errors say: every body shape servers send, cut and redacted.

Through the public client and an httpx.MockTransport answering with the exact bytes
each case needs (OpenAI's error object, vLLM / FastAPI shapes, non-JSON, broken UTF-8).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pydantic
import pytest

from convo import (
    APIConnectionError,
    APIError,
    APIResponseValidationError,
    APIStatusError,
    APIStreamError,
    APITimeoutError,
    InternalServerError,
    Message,
    OpenAIClient,
)
from convo._client.errors import _error_detail, describe

URL = "http://fake.test/v1"
HI = [Message.user("hi")]


def client(handler: Callable[[httpx.Request], httpx.Response]) -> OpenAIClient:
    return OpenAIClient(base_url=URL, api_key="sk-secret", transport=httpx.MockTransport(handler),
                        max_retries=0)


def answer(status: int, body: bytes | str | Any, headers: dict[str, str] | None = None) -> OpenAIClient:
    if isinstance(body, str):
        body = body.encode()
    elif not isinstance(body, bytes):
        body = json.dumps(body).encode()
    return client(lambda request: httpx.Response(status, content=body, headers=headers or {}))


def status_error(status: int, body: bytes | str | Any, **headers: str) -> APIStatusError:
    with answer(status, body, headers) as api, pytest.raises(APIStatusError) as err:
        api.chat(model="m", messages=HI)
    return err.value


# --- error statuses: the message is the server's human text -----------------------------------


@pytest.mark.parametrize(("body", "detail"), [
    ({"error": {"message": "Bad key", "type": "invalid_request_error"}}, "Bad key"),
    ({"error": "plain words"}, "plain words"),
    ({"message": "vLLM says no"}, "vLLM says no"),
    ({"detail": "FastAPI says no"}, "FastAPI says no"),
    ({"error": {"message": ""}, "detail": "the fallback"}, "the fallback"),
    ({"error": {"message": 5}}, '{"error": {"message": 5}}'),
    ({"error": 5}, '{"error": 5}'),
    ({"detail": [{"loc": ["body"], "msg": "field required"}]},
     '{"detail": [{"loc": ["body"], "msg": "field required"}]}'),
    ({"message": ""}, '{"message": ""}'),
    ({"other": 1}, '{"other": 1}'),
    ([1, 2], "[1, 2]"),
    (7, "7"),
    ("not json at all", "not json at all"),
], ids=["openai", "string", "vllm", "fastapi", "empty-message", "number-message", "number-error",
        "list-detail", "empty-top-message", "other", "list", "number", "text"])
def test_the_message_is_the_servers_own_text(body: Any, detail: str) -> None:
    err = status_error(400, body)
    assert str(err) == f"400 Bad Request: {detail}"
    assert err.body == body  # parsed JSON, or the text itself


def test_an_empty_body_leaves_the_status_alone() -> None:
    err = status_error(503, b"")
    assert (str(err), err.body) == ("503 Service Unavailable", None)
    assert isinstance(err, InternalServerError)
    err = status_error(500, b"   ")
    assert (str(err), err.body) == ("500 Internal Server Error", None)


def test_an_unknown_status_has_no_reason_phrase() -> None:
    assert str(status_error(599, {"error": {"message": "odd"}})) == "599: odd"
    assert str(status_error(599, b"")) == "599"


def test_the_request_id_is_named() -> None:
    err = status_error(500, {"error": {"message": "oops"}}, **{"x-request-id": "req_123"})
    assert str(err) == "500 Internal Server Error: oops (request id req_123)"
    assert err.request_id == "req_123"


def test_a_body_that_is_not_utf8_is_read_with_replacements() -> None:
    err = status_error(502, b"bad \xff gateway")
    assert str(err) == "502 Bad Gateway: bad \ufffd gateway"


@pytest.mark.parametrize(("length", "shown"), [(200, "x" * 200), (201, "x" * 197 + "...")])
def test_long_texts_are_cut_to_200_characters(length: int, shown: str) -> None:
    assert str(status_error(400, {"error": {"message": "x" * length}})) == f"400 Bad Request: {shown}"


def test_whitespace_is_collapsed_in_excerpts() -> None:
    assert str(status_error(400, {"error": "a \n\n  b\tc"})) == "400 Bad Request: a b c"


def test_an_error_body_that_cannot_be_read_leaves_the_status_alone() -> None:
    class Broken(httpx.SyncByteStream):
        def __iter__(self) -> Iterator[bytes]:
            raise httpx.ReadError("connection reset")
            yield b""  # pragma: no cover

    api = client(lambda request: httpx.Response(500, stream=Broken()))
    with api, pytest.raises(APIStatusError) as err, api.chat_stream(model="m", messages=HI):
        pass  # pragma: no cover
    assert (str(err.value), err.value.body) == ("500 Internal Server Error", None)


# --- transport failures -------------------------------------------------------------------------


def failing(exc: Exception) -> OpenAIClient:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    return client(handler)


class Timeout(httpx.TimeoutException):
    """A transport's own timeout class, named only "Timeout"."""


@pytest.mark.parametrize(("exc", "kind", "message"), [
    (httpx.ConnectError("refused"), APIConnectionError,
     f"could not connect to {URL}/chat/completions: refused"),
    (httpx.ConnectError(""), APIConnectionError,
     f"could not connect to {URL}/chat/completions: ConnectError"),
    (httpx.ReadTimeout("slow"), APITimeoutError,
     f"read timeout on POST {URL}/chat/completions (slow)"),
    (Timeout("slow"), APITimeoutError, f"request timeout on POST {URL}/chat/completions (slow)"),
    (httpx.DecodingError("bad gzip"), APIResponseValidationError,
     f"could not decode the answer of {URL}/chat/completions: bad gzip"),
    (httpx.RemoteProtocolError("garbage"), APIConnectionError,
     f"connection error on POST {URL}/chat/completions: RemoteProtocolError: garbage"),
])
def test_transport_failures_say_what_and_where(exc: Exception, kind: type, message: str) -> None:
    with failing(exc) as api, pytest.raises(kind) as err:
        api.chat(model="m", messages=HI)
    assert str(err.value) == message


class TwoArgs(httpx.TransportError):
    def __init__(self, message: str, extra: int) -> None:
        super().__init__(message)


class TwoArgsDecoding(httpx.DecodingError):  # a RequestError, not a TransportError
    def __init__(self, message: str, extra: int) -> None:
        super().__init__(message)


@pytest.mark.parametrize(("exc", "cause_type"), [
    (httpx.ConnectError("refused"), httpx.ConnectError),
    (TwoArgs("refused", 1), httpx.TransportError),  # another signature: the family is kept
    (TwoArgsDecoding("refused", 1), httpx.RequestError),
])
def test_a_transport_failure_is_chained_to_a_clean_copy_holding_only_its_text(
    exc: Exception, cause_type: type
) -> None:
    with failing(exc) as api, pytest.raises(APIError) as err:
        api.chat(model="m", messages=HI)
    cause = err.value.__cause__
    assert type(cause) is cause_type and str(cause) == "refused"
    assert cause.__cause__ is cause.__context__ is None and cause.__traceback__ is None


# --- bodies that are not what the API promised -----------------------------------------------------


def test_an_invalid_body_names_up_to_three_problems() -> None:
    body = {"id": 1, "object": 2, "created": "x", "model": 3, "choices": "no"}
    with answer(200, body) as api, pytest.raises(APIResponseValidationError) as err:
        api.chat(model="m", messages=HI)
    text = str(err.value)
    assert text.startswith(f"200 answer from {URL}/chat/completions is not a valid ChatCompletion (")
    problems = text.split(" (", 1)[1].split("); body: ")[0].split("; ")
    assert len(problems) == 3 and all(p.split(": ")[0] in body for p in problems)
    assert text.endswith(f"; body: {json.dumps(body)!r}")


def test_an_invalid_nested_field_is_located_with_dots() -> None:
    body = {"id": "c", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": 5}}]}
    with answer(200, body) as api, pytest.raises(APIResponseValidationError) as err:
        api.chat(model="m", messages=HI)
    assert "(choices.0.message.role: " in str(err.value)


def test_a_body_of_the_wrong_type_has_no_location() -> None:
    with answer(200, [1], {"x-request-id": "req_9"}) as api, pytest.raises(
        APIResponseValidationError
    ) as err:
        api.chat(model="m", messages=HI)
    assert " is not a valid ChatCompletion (Input should be " in str(err.value)
    assert err.value.request_id == "req_9"


def test_an_invalid_body_that_is_not_utf8_is_shown_with_replacements() -> None:
    with answer(200, b"\xff\xfe not json") as api, pytest.raises(APIResponseValidationError) as err:
        api.chat(model="m", messages=HI)
    assert str(err.value).endswith("body: '\ufffd\ufffd not json'")


# --- errors inside a stream ------------------------------------------------------------------------


def stream_error(events: str, **headers: str) -> APIStreamError:
    api = answer(200, events, {"content-type": "text/event-stream", **headers})
    with api, pytest.raises(APIStreamError) as err, api.chat_stream(model="m", messages=HI) as stream:
        for _ in stream:
            pass
    return err.value


@pytest.mark.parametrize(("data", "detail"), [
    ('{"error": {"message": "overloaded"}}', "overloaded"),
    ('{"message": "bare message"}', "bare message"),
    ("plain text trouble", "plain text trouble"),
    ('{"error": {}}', '{"error": {}}'),  # nothing human in it: the JSON itself
    ("", '{"error": null}'),  # an empty error event: nothing at all was said
])
def test_an_error_event_says_what_the_server_said(data: str, detail: str) -> None:
    err = stream_error(f"event: error\ndata: {data}\n\n", **{"x-request-id": "req_s"})
    assert str(err) == f"stream error from {URL}/chat/completions: {detail}"
    assert err.request_id == "req_s"


# --- what every error carries ----------------------------------------------------------------------


def test_control_and_bidi_characters_are_shown_as_escapes() -> None:
    # an ESC sequence could rewrite a terminal, a bidi override reorder what is read
    err = status_error(400, {"error": "red \x1b[31mtext\u202e and é"})
    assert str(err) == "400 Bad Request: red \\x1b[31mtext\\u202e and é"


def test_a_long_reason_phrase_is_cut_to_60_characters() -> None:
    reason = b"R" * 61
    api = client(lambda request: httpx.Response(503, extensions={"reason_phrase": reason}))
    with api, pytest.raises(APIStatusError) as err:
        api.chat(model="m", messages=HI)
    assert str(err.value) == "503 " + "R" * 57 + "..."


def test_an_error_is_raised_without_the_exception_it_was_made_in() -> None:
    err = status_error(500, {"error": {"message": "oops"}})
    assert err.__suppress_context__ and err.__cause__ is None  # no chained traceback


def test_a_stream_that_is_not_utf8_says_where_with_its_status_and_request_id() -> None:
    events = b"data: \xff\n\n"
    api = answer(200, events, {"content-type": "text/event-stream", "x-request-id": "req_u"})
    with api, pytest.raises(APIResponseValidationError) as err, api.chat_stream(
        model="m", messages=HI
    ) as stream:
        for _ in stream:
            pass
    assert str(err.value) == (f"the stream from {URL}/chat/completions is not valid UTF-8 "
                              "(UnicodeDecodeError: invalid start byte at byte 0 of a line)")
    assert (err.value.status_code, err.value.request_id) == (200, "req_u")
    assert err.value.__suppress_context__ and err.value.__cause__ is None


def test_a_cut_stream_names_its_request_id() -> None:
    api = answer(200, 'data: {"id": "c", "object": "chat.completion.chunk", "created": 1, '
                      '"model": "m", "choices": [{"index": 0, "delta": {"content": "Hi"}}]}\n\n',
                 {"content-type": "text/event-stream", "x-request-id": "req_c"})
    with api, pytest.raises(APIStreamError) as err, api.chat_stream(model="m", messages=HI) as s:
        for _ in s:
            pass
    assert str(err.value) == (f"stream from {URL}/chat/completions ended before the response "
                              "was complete (no finish reason, no [DONE])")
    assert err.value.request_id == "req_c"


def test_an_error_body_too_deep_to_show_says_so() -> None:
    deep: list[Any] = []
    for _ in range(100_000):  # deeper than json.dumps recurses
        deep = [deep]
    assert _error_detail({"error": deep}) == "(JSON nested too deep to show)"


def test_up_to_400_characters_of_problems_are_named() -> None:
    fields = {name * 150: (int, ...) for name in "abc"}
    model = pydantic.create_model("Wide", **fields)  # type: ignore[call-overload]
    with pytest.raises(pydantic.ValidationError) as exc:
        model.model_validate({})
    text = describe(exc.value)
    assert len(text) == 400 and text.startswith("a" * 150 + ": Field required; ")
    assert text.endswith("...")
