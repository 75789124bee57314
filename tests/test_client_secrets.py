"""No piece of the API key in any error the client raises, its chain, or the logs.

Every error type the client can raise is provoked by a hostile server that
echoes the key every way it can: plainly, JSON-escaped (``\\/``,
``\\u002d``), escaped twice, cut by an excerpt, in the request id, in the
reason phrase, in an httpx error text, in a pydantic error's quoted input, in
an SSE event. For each, with the key given as ``api_key=``, from
``$OPENAI_API_KEY``, in per-call ``extra_headers`` (``Authorization`` and
``api-key``) and in ``default_headers``, sync and async, the test walks:

* ``traceback.format_exception`` of the error, chains included, and what
  ``logger.exception()`` writes;
* every object reachable from the error: ``str``/``repr``/``args``, its
  attributes (``.body``, ``.request_id``, ``.message``), its ``__cause__``
  and ``__context__`` (even suppressed ones) and their attributes (an httpx
  error's request would carry the headers);
* every log record at DEBUG (convo, httpx, httpcore);

and finds no run of 8 consecutive characters of the key, neither as written
nor once JSON escapes are undone.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import traceback
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from test_client_helpers import Api, Server, chat_json, closed_port

from convo import (
    APIConnectionError,
    APIError,
    APIResponseTooLargeError,
    APIResponseValidationError,
    APIStreamError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    InternalServerError,
    Message,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    UnprocessableEntityError,
)

KEY = "sk-hArd/9Zq7-Rw4K/x2Lm-4PvB8-Nt6YHc3J"
HI = [Message.user("Hi")]


def escaped(text: str) -> str:
    """``text`` the way an escaping JSON encoder writes it (PHP escapes "/")."""
    return text.replace("/", "\\/").replace("-", "\\u002d")


def escaped_twice(text: str) -> str:
    """JSON inside a JSON string: every backslash doubled."""
    return escaped(text).replace("\\", "\\\\")


def unescaped(text: str) -> str:
    text = re.sub(r"\\+u([0-9a-fA-F]{4})", lambda m: chr(int(m.group(1), 16)), text)
    return text.replace("\\", "")


def fragments(text: str) -> list[str]:
    """The 8-character pieces of the key found in ``text`` (as is, or unescaped)."""
    found = []
    for view in (text, unescaped(text)):
        found += [KEY[i : i + 8] for i in range(len(KEY) - 7) if KEY[i : i + 8] in view]
    return found


def reachable(root: BaseException) -> list[str]:
    """The text of everything reachable from an exception, its chain and attributes."""
    out: list[str] = []
    seen: set[int] = set()

    def walk(obj: Any, depth: int) -> None:
        if obj is None or id(obj) in seen or depth > 8:
            return
        seen.add(id(obj))
        if isinstance(obj, str):
            out.append(obj)
        elif isinstance(obj, bytes | bytearray):
            out.append(bytes(obj).decode("latin-1"))
        elif isinstance(obj, int | float | bool):
            return
        elif isinstance(obj, BaseException):
            out.extend((str(obj), repr(obj)))
            walk(obj.args, depth + 1)
            walk(getattr(obj, "__dict__", None), depth + 1)
            walk(getattr(obj, "__notes__", None), depth + 1)
            walk(obj.__cause__, depth + 1)
            walk(obj.__context__, depth + 1)
        elif isinstance(obj, dict):
            for k, v in obj.items():
                walk(k, depth + 1)
                walk(v, depth + 1)
        elif isinstance(obj, list | tuple | set | frozenset):
            for v in obj:
                walk(v, depth + 1)
        elif isinstance(obj, httpx.Headers):
            walk(obj.raw, depth + 1)
        elif isinstance(obj, httpx.Request):
            walk(obj.headers, depth + 1)
            walk(str(obj.url), depth + 1)
        elif isinstance(obj, httpx.Response):
            walk(obj.headers, depth + 1)
            walk(getattr(obj, "_request", None), depth + 1)
            walk(getattr(obj, "_content", None), depth + 1)
        else:
            out.append(repr(obj))
            walk(getattr(obj, "__dict__", None), depth + 1)

    walk(root, 0)
    return out


class SlowBody(httpx.SyncByteStream, httpx.AsyncByteStream):
    """Parts delivered with a pause before each (keep-alive pings that outlast an idle timeout)."""

    def __init__(self, parts: list[bytes], delay: float = 0.0) -> None:
        self.parts = parts
        self.delay = delay

    def __iter__(self) -> Iterator[bytes]:
        for part in self.parts:
            if self.delay:
                time.sleep(self.delay)
            yield part

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for part in self.parts:
            if self.delay:
                await asyncio.sleep(self.delay)
            yield part


def sse(*parts: bytes, **headers: str) -> httpx.Response:
    return httpx.Response(
        200, stream=SlowBody(list(parts)), headers={"content-type": "text/event-stream", **headers}
    )


def echo_body() -> dict[str, Any]:
    """An OpenAI-style error object echoing the key in every field, and as a key."""
    return {
        "error": {
            "message": f"Incorrect API key provided: {KEY}. Bearer {KEY[:20]}",
            "type": "invalid_request_error",
            "param": KEY,
            "code": f"key={KEY}",
        },
        KEY: [KEY, {"nested": f"Bearer {KEY}"}],
    }


def json_escaped(payload: Any) -> bytes:
    return escaped(json.dumps(payload)).encode()


def status(code: int) -> Callable[[], httpx.Response]:
    def make() -> httpx.Response:
        return httpx.Response(
            code,
            content=json_escaped(echo_body()),
            headers={"content-type": "application/json", "x-request-id": f"req-{KEY}"},
            extensions={"reason_phrase": f"Nope {KEY}".encode()},
        )

    return make


def raising(exc: Exception) -> Callable[[], Exception]:
    return lambda: exc


def chunk_event(**delta: Any) -> bytes:
    payload = {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
    }
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


@dataclass
class Scenario:
    make: Callable[[], Any]  # the server's answer (a Response) or an exception to raise
    error: type[APIError]
    method: str = "chat"  # or "chat_stream": the error comes while iterating
    client: dict[str, Any] = field(default_factory=dict)
    real: bool = False  # against a closed loopback port instead of the mock


SCENARIOS: dict[str, Scenario] = {
    **{
        f"status {code}": Scenario(status(code), cls)
        for code, cls in [
            (400, BadRequestError),
            (401, AuthenticationError),
            (403, PermissionDeniedError),
            (404, NotFoundError),
            (409, ConflictError),
            (422, UnprocessableEntityError),
            (429, RateLimitError),
            (500, InternalServerError),
        ]
    },
    "status 401, text body cut across the key": Scenario(
        lambda: httpx.Response(401, content=("x" * 190 + " " + KEY + " tail").encode()),
        AuthenticationError,
    ),
    "status 401, JSON escaped twice": Scenario(
        lambda: httpx.Response(
            401, json={"error": {"message": f"upstream said {escaped_twice(KEY)}"}}
        ),
        AuthenticationError,
    ),
    "status 429 in a stream call": Scenario(status(429), RateLimitError, method="chat_stream"),
    "connection error echoing the key": Scenario(
        raising(httpx.ConnectError(f"proxy refused Bearer {KEY}")), APIConnectionError
    ),
    "connection refused (real socket)": Scenario(lambda: None, APIConnectionError, real=True),
    "protocol error": Scenario(
        raising(httpx.RemoteProtocolError(f"bad header b'{KEY}'")), APIConnectionError
    ),
    "timeout echoing the key": Scenario(
        raising(httpx.ReadTimeout(f"timed out with {escaped(KEY)}")), APITimeoutError
    ),
    "response validation: wrong shape quoting the key": Scenario(
        lambda: httpx.Response(
            200,
            json={"id": KEY, "choices": KEY, KEY: 1},
            headers={"x-request-id": escaped(KEY)},
        ),
        APIResponseValidationError,
    ),
    "malformed JSON holding the escaped key": Scenario(
        lambda: httpx.Response(200, content=b'{"id": "' + escaped(KEY).encode() + b'", "choi'),
        APIResponseValidationError,
    ),
    "non-JSON body cut across the key": Scenario(
        lambda: httpx.Response(200, content=("<html>" + "y" * 185 + KEY).encode()),
        APIResponseValidationError,
    ),
    "undecodable gzip body": Scenario(
        lambda: httpx.Response(
            200, content=KEY.encode(), headers={"content-encoding": "gzip"}
        ),
        APIResponseValidationError,
    ),
    "body over the size limit": Scenario(
        lambda: httpx.Response(200, content=(KEY * 100).encode(), headers={"x-request-id": KEY}),
        APIResponseTooLargeError,
        client={"max_response_bytes": 1000},
    ),
    "stream error event": Scenario(
        lambda: sse(chunk_event(content="Hel"), b"data: " + json_escaped(echo_body()) + b"\n\n"),
        APIStreamError,
        method="chat_stream",
    ),
    "stream named error event, not JSON": Scenario(
        lambda: sse(b"event: error\ndata: denied for " + escaped(KEY).encode() + b"\n\n"),
        APIStreamError,
        method="chat_stream",
    ),
    "SSE decode error": Scenario(
        lambda: sse(b"data: " + KEY.encode() + b" \xff\xfe " + KEY.encode() + b"\n\n"),
        APIResponseValidationError,
        method="chat_stream",
    ),
    "SSE chunk not JSON": Scenario(
        lambda: sse(b'data: {"choices": [' + escaped(KEY).encode() + b"\n\n"),
        APIResponseValidationError,
        method="chat_stream",
    ),
    "SSE chunk of the wrong shape": Scenario(
        lambda: sse(b"data: " + json.dumps({"choices": KEY, KEY: KEY}).encode() + b"\n\n"),
        APIResponseValidationError,
        method="chat_stream",
    ),
    "SSE event over the size limit": Scenario(
        lambda: sse(b"data: " + (KEY * 50).encode() + b"\n\n"),
        APIResponseTooLargeError,
        method="chat_stream",
        client={"max_event_bytes": 500},
    ),
    "stream cut before the end": Scenario(
        lambda: sse(chunk_event(content=KEY), **{"x-request-id": f"id {KEY}"}),
        APIStreamError,
        method="chat_stream",
    ),
    "stream dropped mid-way": Scenario(
        lambda: httpx.Response(200, stream=_Dropped()), APIConnectionError, method="chat_stream"
    ),
    "stream idle timeout (pings only)": Scenario(
        lambda: httpx.Response(
            200,
            stream=SlowBody([b": ping " + KEY.encode() + b"\n\n"] * 5, 0.05),
            headers={"x-request-id": KEY},
        ),
        APITimeoutError,
        method="chat_stream",
        client={"stream_idle_timeout": 0.02},
    ),
}


class _Dropped(httpx.SyncByteStream, httpx.AsyncByteStream):
    def __iter__(self) -> Iterator[bytes]:
        yield chunk_event(content="Hel")
        raise httpx.ReadError(f"connection reset; last header Authorization: Bearer {KEY}")

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for part in self:
            yield part


SOURCES = [
    "api_key",
    "environment",
    "extra_headers Authorization",
    "extra_headers api-key",
    "default_headers Authorization",
    "default_headers api-key",
]


@pytest.fixture(params=["sync", "async"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def key_settings(
    source: str, monkeypatch: pytest.MonkeyPatch
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(client kwargs, per-call kwargs) that carry the key the way ``source`` says."""
    if source == "api_key":
        return {"api_key": KEY}, {}
    if source == "environment":
        monkeypatch.setenv("OPENAI_API_KEY", KEY)
        return {}, {}
    if source == "extra_headers Authorization":
        return {}, {"extra_headers": {"Authorization": f"Bearer {KEY}"}}
    if source == "extra_headers api-key":
        return {}, {"extra_headers": {"api-key": KEY}}
    if source == "default_headers Authorization":
        return {"default_headers": {"Authorization": f"Bearer {KEY}"}}, {}
    return {"default_headers": {"api-key": KEY}}, {}


def assert_no_key(exc: BaseException, caplog: pytest.LogCaptureFixture) -> None:
    printed = "".join(traceback.format_exception(exc))
    assert not fragments(printed), printed
    logging.getLogger("app").exception("the model call failed", exc_info=exc)
    for text in reachable(exc):
        assert not fragments(text), text
    for record in caplog.records:
        line = record.getMessage() + (record.exc_text or "")
        assert not fragments(line), (record.name, line)
    assert not fragments(caplog.text)


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("scenario", list(SCENARIOS), ids=list(SCENARIOS))
async def test_no_piece_of_the_key_anywhere(
    kind: str,
    source: str,
    scenario: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger: convo, httpx, httpcore, the app's
    case = SCENARIOS[scenario]
    client_kw, call_kw = key_settings(source, monkeypatch)
    client_kw = {**client_kw, **case.client, "max_retries": 0}
    if case.real:
        api = Api(kind, base_url=f"http://127.0.0.1:{closed_port()}/v1", transport=None, **client_kw)
    else:
        api = Api(kind, server=Server(lambda _request: _answer(case)), **client_kw)
    with pytest.raises(case.error) as info:
        result = await api.call(case.method, model="m", messages=HI, **call_kw)
        if case.method == "chat_stream":
            await api.chunks(result)
    assert type(info.value) is case.error
    if case.real or source == "environment":
        assert api.server.requests == [] or KEY in str(api.server.requests[0].headers.raw)
    else:  # the key really went out: the test is about what comes back
        sent = api.server.requests[0].headers
        assert KEY in (sent.get("authorization", "") + sent.get("api-key", ""))
    assert_no_key(info.value, caplog)
    await api.do(api.client, "close")


def _answer(case: Scenario) -> httpx.Response:
    item = case.make()
    if isinstance(item, Exception):
        raise item
    assert isinstance(item, httpx.Response)
    return item


async def test_the_escaped_echo_is_masked_but_the_message_is_kept(kind: str) -> None:
    api = Api(kind, server=Server(lambda _r: status(401)()), api_key=KEY, max_retries=0)
    with pytest.raises(AuthenticationError) as info:
        await api.call("chat", model="m", messages=HI)
    exc = info.value
    assert str(exc).startswith("401 Nope ***: Incorrect API key provided: ***. Bearer ***")
    assert exc.request_id == "req-***"
    assert exc.param == "***" and exc.code == "key=***"
    assert exc.body["***"] == ["***", {"nested": "Bearer ***"}]
    assert exc.__cause__ is None and exc.__context__ is None


async def test_a_key_cut_by_the_excerpt_is_masked(kind: str) -> None:
    # 31 of 48 characters of a key survived this before: the cut came before the redaction.
    body = ("x" * 170 + " " + KEY + " and more text after it").encode()
    api = Api(kind, server=Server(httpx.Response(200, content=body)), api_key=KEY)
    with pytest.raises(APIResponseValidationError) as info:
        await api.call("chat", model="m", messages=HI)
    assert not fragments(str(info.value))
    assert "***" in str(info.value)


async def test_causes_keep_their_type_but_hold_no_request(kind: str) -> None:
    port = closed_port()
    api = Api(kind, base_url=f"http://127.0.0.1:{port}/v1", transport=None, api_key=KEY)
    with pytest.raises(APIConnectionError) as info:
        await api.call("chat", model="m", messages=HI, max_retries=0)
    cause = info.value.__cause__
    assert isinstance(cause, httpx.ConnectError)
    assert cause.__cause__ is None and cause.__context__ is None
    with pytest.raises(RuntimeError):
        _ = cause.request  # a fresh exception: the request (and its headers) is not in it
    assert info.value.__context__ is None
    await api.do(api.client, "close")


async def test_a_validation_error_is_not_chained_to_pydantic(kind: str) -> None:
    api = Api(kind, server=Server(httpx.Response(200, json={"choices": KEY})), api_key=KEY)
    with pytest.raises(APIResponseValidationError) as info:
        await api.call("chat", model="m", messages=HI)
    assert info.value.__cause__ is None and info.value.__context__ is None
    assert "choices: Input should be a valid array" in str(info.value)


async def test_a_good_reply_is_untouched(kind: str) -> None:
    # Redaction is for errors only: a reply that quotes the key reaches the caller as sent.
    api = Api(kind, server=Server(httpx.Response(200, json=chat_json(f"your key is {KEY}"))),
              api_key=KEY)
    reply = await api.call("chat", model="m", messages=HI)
    assert reply.text == f"your key is {KEY}"


def test_request_spec_repr_hides_the_headers() -> None:
    from convo import OpenAIClient

    client = OpenAIClient(api_key=KEY, base_url="http://x/v1")
    spec = client._core.chat_request("m", HI, {}, stream=False)
    assert not fragments(repr(spec))
    client.close()


def test_redactor_masks_pieces_and_escapes() -> None:
    from convo._client.redact import Redactor

    redact = Redactor([KEY])
    assert redact(f"a {KEY} b") == "a *** b"
    assert redact(f"cut here: {KEY[:9]}") == "cut here: ***"
    assert redact(f"cut here: {KEY[:7]}") == f"cut here: {KEY[:7]}"  # under 8: not a leak
    assert redact(escaped(KEY)) == "***"
    assert redact(escaped_twice(f"x {KEY} y")) == "x *** y"
    assert redact("nothing to see \\n here") == "nothing to see \\n here"
    assert redact.deep({KEY: [KEY, 1, None]}) == {"***": ["***", 1, None]}
    assert KEY not in repr(redact)


async def test_no_key_in_library_logs_over_a_real_connection(
    kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    # httpx logs the reason phrase at INFO, httpcore every response header at DEBUG.
    from convo.testing import TricklingServer

    body = json_escaped(echo_body())
    head = (
        f"HTTP/1.1 401 Nope {KEY}\r\ncontent-type: application/json\r\n"
        f"x-request-id: {KEY}\r\nx-echo: Bearer {escaped(KEY)}\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    ).encode()
    caplog.set_level(logging.DEBUG)
    with TricklingServer(lambda: [head + body], interval=0) as server:
        api = Api(kind, base_url=server.base_url, transport=None, api_key=KEY, max_retries=0)
        with pytest.raises(AuthenticationError) as info:
            await api.call("chat", model="m", messages=HI)
        await api.do(api.client, "close")
    assert any(r.name == "httpcore.http11" for r in caplog.records)
    assert any(r.name == "httpx" for r in caplog.records)
    assert_no_key(info.value, caplog)


async def test_secrets_in_the_base_url_are_masked_too(kind: str) -> None:
    password, query_key = "hunter2-Zx9/Qw", "qk-77aa-BB99-cc"
    echo = {"error": {"message": f"bad credentials {password} / {query_key}"}}
    api = Api(
        kind,
        server=Server(httpx.Response(401, json=echo)),
        base_url=f"http://user:{password.replace('/', '%2F')}@fake.test/v1?api-key={query_key}",
        max_retries=0,
    )
    with pytest.raises(AuthenticationError) as info:
        await api.call("chat", model="m", messages=HI)
    assert password not in str(info.value) and query_key not in str(info.value)
    assert "bad credentials *** / ***" in str(info.value)
