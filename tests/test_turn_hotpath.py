"""The turn's own work outside the store's statements and the context build.

A turn checks and serializes values once: the builder's settings once per
builder (``CheckedJSON``), the model's answer as the bytes received (a scan
stands in for walking the parsed value), the values it builds from validated
ones without validating them again (``construct``), its own request body
without parsing it again before sending. These tests check that each shortcut
gives what the long way gave, and refuses what it refused.
"""

# ruff: noqa: F811 - the env fixture is imported, then named as a test argument

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
from typing import Any

import httpx
import pydantic_core
import pytest
from turns_support import RUN_BODY as BODY
from turns_support import Env, env, path  # noqa: F401 - fixtures
from turns_support import start_run as _start

from convo import (
    InvalidMessageError,
    Message,
    OpenAIClient,
    ReplyInfo,
    StoreInputError,
)
from convo._client.types import ChatCompletion, Completion, SerializedRequest
from convo._store.inputs import (
    JSON_DEPTH_MAX,
    check_json,
    checked_json,
    checked_json_text,
    contains,
)
from convo._turns.chat import _as_message
from convo._turns.plan import builder_settings, checked_settings, request_body, wire_params
from convo.testing import FakeBackend

# --- received JSON: a scan instead of a walk --------------------------------------------


@pytest.mark.parametrize("text", [
    '{"a": NaN}',
    '{"a": -Infinity}',
    '{"a": 1E400}',
    '{"a": 1.5e+309}',
    '{"a": 123456789012345678901234567890}',
    '{"a": -9223372036854775809}',
    '{"a": "x\\u0000y"}',
    '{"a\\u0000": 1}',
    '{"a": ' + "[" * JSON_DEPTH_MAX + "]" * JSON_DEPTH_MAX + "}",
])
def test_received_json_is_refused_where_check_json_refuses_its_value(text: str) -> None:
    with pytest.raises(StoreInputError):  # (the walk's own verdict, for comparison)
        check_json(pydantic_core.from_json(text), "run response")
    with pytest.raises(StoreInputError):
        checked_json_text(text.encode(), "run response")


@pytest.mark.parametrize("text", [
    '{"id": "chatcmpl-1", "usage": {"prompt_tokens": 12}, "content": null}',
    '{"note": "NaN and Infinity are words here", "n": 9223372036854775807, "f": 1e100}',
    json.dumps({"text": "é ✓ \U0001F600", "x": [1, 2.5, None, True]}),  # \\u escapes
    '{"deep": ' + "[" * 60 + "]" * 60 + "}",
])
def test_received_json_is_kept_as_it_came(text: str) -> None:
    checked = checked_json_text(text.encode(), "run response")
    assert checked.text == text
    assert checked.value() == pydantic_core.from_json(text)
    assert checked.value() == pydantic_core.from_json(text)  # a fresh copy each time


def test_contains_answers_what_in_answers() -> None:
    """The scans' search (from the occurrences of the word's first character, then the
    general search past a few of them) agrees with ``in``, for text and bytes."""
    import random

    rng = random.Random(7)
    letters = "NaIinfty0e-\\u x"
    for _ in range(3000):
        text = "".join(rng.choice(letters) for _ in range(rng.randint(0, 60)))
        for word in ("NaN", "Infinity", "N", "e000", "\\u"):
            assert contains(text, word) == (word in text), (text, word)
            assert contains(text.encode(), word.encode()) == (word.encode() in text.encode())
    for many in (15, 16, 17, 40):  # the word after that many of its first character
        assert contains("N" * many + "aN", "NaN") and contains("x N" * many + "NaN", "NaN")
        assert not contains("N" * many + "a", "NaN")


@pytest.mark.parametrize("text", [
    '{"a": "' + "Nope " * 30 + '", "b": NaN}',
    '{"a": "' + "I " * 30 + '", "b": [-Infinity]}',
])
def test_received_json_is_refused_after_many_false_starts(text: str) -> None:
    with pytest.raises(StoreInputError):
        checked_json_text(text.encode(), "run response")


@pytest.mark.parametrize("raw", [b"[1, 2]", b'"text"', b"\xff\xfe{}", b"{", b""])
def test_received_text_that_is_not_a_json_object_is_refused(raw: bytes) -> None:
    with pytest.raises(StoreInputError):
        checked_json_text(raw, "run response")


class _Reshape(httpx.BaseTransport, httpx.AsyncBaseTransport):
    """The fake's answers, respelled (spacing, a null field, ``extra`` fields) and kept
    as sent."""

    def __init__(self, inner: httpx.MockTransport, **extra: Any) -> None:
        self.inner = inner
        self.extra = extra
        self.sent: list[bytes] = []

    def _respell(self, response: httpx.Response) -> httpx.Response:
        value = json.loads(response.content)
        value["x_nothing"] = None
        value.update(self.extra)
        body = json.dumps(value, indent=1).encode()
        self.sent.append(body)
        headers = [(k, v) for k, v in response.headers.items() if k.lower() != "content-length"]
        return httpx.Response(response.status_code, headers=headers, content=body)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        response.read()
        return self._respell(response)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        await response.aread()
        return self._respell(response)


async def test_a_turns_run_records_the_answer_as_received(env: Env, path: str) -> None:
    """The run's response is the body the server sent (its nulls and spelling
    included), the same when read back; on SQLite the stored text is those bytes."""
    transport = _Reshape(env.fake.transport())
    chat = env.chat(client_options={"transport": transport})
    conv = await env.store.create_conversation()
    result = await chat.send(conv.id, "Hello")
    run = result.run
    assert run is not None and run.response is not None
    assert run.response == json.loads(transport.sent[-1]) and "x_nothing" in run.response
    assert (await env.store.get_run(run.id)).response == run.response
    assert run.response["choices"][0]["message"]["content"] == result.text
    if env.backend == "sqlite":
        ((text,),) = env.store.sql("SELECT response FROM runs WHERE id = :id", id=run.id)
        assert text == transport.sent[-1].decode()


async def test_an_answer_that_cannot_be_stored_as_sent_is_recorded_as_dumped(env: Env) -> None:
    """NaN in an answer (some servers' extras): the run keeps the answer as its model
    dumps it (NaN as null, other nulls dropped), as before, and the turn ends."""
    transport = _Reshape(env.fake.transport(), x_score=float("nan"), x_ok=1)
    chat = env.chat(client_options={"transport": transport})
    conv = await env.store.create_conversation()
    result = await chat.send(conv.id, "Hello")
    run = result.run
    assert run is not None and run.status == "ok" and run.response is not None
    assert b"NaN" in transport.sent[-1]
    assert run.response["x_score"] is None and "x_nothing" not in run.response
    assert run.response["x_ok"] == 1
    assert (await env.store.get_run(run.id)).response == run.response


# --- settings checked once ------------------------------------------------------------------


async def test_checked_settings_are_recorded_as_the_mapping_is(store: Any) -> None:
    conv = await store.create_conversation()
    settings = {"budget": 1000, "profile": {"a": [1, None, 2.5], "é": "✓"}, "n": 2**62}
    checked = checked_json(settings, "run settings")
    plain = await _start(store, conv.id, settings=settings)
    first = await _start(store, conv.id, settings=checked)
    first.settings["budget"] = 1  # each run holds its own copy
    second = await _start(store, conv.id, settings=checked)
    assert plain.settings == second.settings == settings
    for run in (plain, first, second):
        assert (await store.get_run(run.id)).settings == settings
    empty = await _start(store, conv.id, settings=checked_json({}, "run settings"))
    assert empty.settings == {} == (await store.get_run(empty.id)).settings
    with pytest.raises(StoreInputError):
        checked_json({"x": float("nan")}, "run settings")
    with pytest.raises(StoreInputError):
        checked_json({"x": "a\x00b"}, "run settings")


def test_a_builders_checked_settings_follow_its_settings(make_db: Any) -> None:
    from convo import ContextBuilder, Store

    store = Store(make_db("sqlite"))
    builder = ContextBuilder(store, model="gpt-4o-mini", budget=1000)
    assert checked_settings(builder).value() == builder_settings(builder)
    assert checked_settings(builder) is checked_settings(builder)  # checked once
    builder.budget = 800
    assert checked_settings(builder).value()["budget"] == 800 == builder_settings(builder)["budget"]
    assert builder_settings(builder)["template"] is None
    assert builder_settings(builder)["template_sha256"] is None
    # Set by hand past what the constructor allows: the run's settings are refused, by name.
    builder.budget = 2**64
    with pytest.raises(StoreInputError, match=r"^run settings\b"):
        checked_settings(builder)
    builder.budget = 900
    assert checked_settings(builder).value()["budget"] == 900
    store.close()


def test_a_run_records_every_setting_of_its_builder_by_name(make_db: Any) -> None:
    from convo import ChatProfile, ContextBuilder, Store

    store = Store(make_db("sqlite"))
    builder = ContextBuilder(
        store, model="gpt-4o-mini", reserve=500, max_messages=40, max_history_tokens=700,
        truncate="tail", summary_max_tokens=90, summary_role="user", low_water=0.25,
        profile=ChatProfile.compatible(),
    )
    assert builder.reply_reserve == 500
    assert builder_settings(builder) == {
        "model": "gpt-4o-mini", "mode": "chat", "encoding": "o200k_base",
        "budget": builder.budget, "reply_reserve": 500, "template": None,
        "template_sha256": None, "profile": dataclasses.asdict(ChatProfile.compatible()),
        "max_messages": 40, "max_history_tokens": 700, "truncate": "tail",
        "summary_max_tokens": 90, "summary_role": "user", "low_water": 0.25,
    }
    store.close()


def test_a_template_without_a_name_or_source_is_recorded_by_its_type(make_db: Any) -> None:
    from convo import ContextBuilder, Store

    class Bare:
        """Only what the builder requires of a template: render()."""

        def render(self, messages: Any, **kw: Any) -> str:
            return ""

    class Filed(Bare):
        name = pathlib.PurePosixPath("templates/mine.jinja")  # not a str: recorded as its str()

    store = Store(make_db("sqlite"))
    bare, filed = (
        builder_settings(ContextBuilder(store, model="gpt-4o-mini", budget=1000,
                                        mode="completion", template=t()))
        for t in (Bare, Filed)
    )
    assert bare["template"] == "Bare"
    assert bare["template_sha256"] == hashlib.sha256(b"builtin:Bare").hexdigest()
    assert filed["template"] == "templates/mine.jinja"
    assert filed["template_sha256"] == hashlib.sha256(b"builtin:templates/mine.jinja").hexdigest()
    store.close()


@pytest.mark.parametrize("seqs", [[True], [0], [1.0], [2**63], ["1"], [1, -2]])
async def test_kept_seqs_are_refused_as_one_by_one(store: Any, seqs: list[Any]) -> None:
    conv = await store.create_conversation()
    with pytest.raises(StoreInputError, match="kept seq"):
        await _start(store, conv.id, kept_seqs=seqs)
    run = await _start(store, conv.id, kept_seqs=(1, 2**63 - 1))
    assert run.kept_seqs == [1, 2**63 - 1] == (await store.get_run(run.id)).kept_seqs


async def test_a_started_run_is_the_run_read_back_field_for_field(store: Any) -> None:
    conv = await store.create_conversation(owner="alice")
    run = await _start(store, conv.id, owner="alice", settings=checked_json({"a": 1}, "s"),
                       metadata={"m": [1]})
    got = await store.get_run(run.id, owner="alice")
    assert repr(run) == repr(got) and list(run.__dict__) == list(got.__dict__)
    done = await store.finish_run(run.id, status="ok", started=run, owner="alice",
                                  response=checked_json_text(b'{"id": "x", "n": null}', "r"),
                                  usage={"prompt_tokens": 3})
    got = await store.get_run(run.id, owner="alice")
    assert done.run == got and done.run.response == {"id": "x", "n": None}  # (JSONB: key order)


# --- the request body ------------------------------------------------------------------------


def test_a_request_body_takes_the_turns_parameters_computed_or_given(make_db: Any) -> None:
    """``request_body`` computes the wire parameters when the caller has not (a turn
    computes them once); a caller's ``stream_options`` are sent as given; a body that is
    not JSON is refused by name."""
    from convo import Chat, Store

    store = Store(make_db("sqlite"))
    client = OpenAIClient(api_key="sk-test", base_url="http://fake/v1",
                          transport=FakeBackend().transport())
    chat = Chat(store, client, model="gpt-4o-mini", params={"max_tokens": 9})
    conv = store.create_conversation()
    store.append(conv.id, Message.user("Hi"))
    ctx = chat.builder.build(conv.id)

    def spec(response_format: Any = None, **params: Any) -> Any:
        return chat._spec(conv.id, None, idempotency_key=None, owner=None, stream=True,
                          response_format=response_format, params=params)

    plain = spec(extra_body={"user": "u-1"})
    body = request_body(ctx, plain)
    assert json.loads(body) == {
        "model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}],
        "max_completion_tokens": 9, "stream": True, "stream_options": {"include_usage": True},
        "user": "u-1",
    }
    assert body == request_body(ctx, plain, wire_params(plain))
    mine = spec(stream_options={"include_usage": False})
    assert json.loads(request_body(ctx, mine))["stream_options"] == {"include_usage": False}
    with pytest.raises(InvalidMessageError, match="^the request body is not JSON-serializable: "):
        request_body(ctx, spec({"type": "json_schema", "json_schema": object()}))
    client.close()
    store.close()


# --- the client: a turn's own body is not parsed again --------------------------------------


@pytest.mark.parametrize("text", [
    '{"model":"m","messages":[],"stream":true}',
    '{"messages":[],"model":"m","stream":true}',
    '{"messages":[]}',
    '{"model":5,"messages":[]}',
])
def test_a_serialized_body_is_still_checked_when_it_could_be_wrong(text: str) -> None:
    """(SerializedRequest text is a JSON object by construction: only its model and
    stream are in question.)"""
    client = OpenAIClient(api_key="sk-test", base_url="http://fake/v1",
                          transport=FakeBackend().transport())
    with pytest.raises(InvalidMessageError):
        client.send("chat.completions", SerializedRequest(text))
    client.close()


def test_a_serialized_body_is_sent_byte_for_byte() -> None:
    fake = FakeBackend()
    client = OpenAIClient(api_key="sk-test", base_url="http://fake/v1", transport=fake.transport())
    text = '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"a \\"stream\\" b"}]}'
    answer = client.send("chat.completions", SerializedRequest(text))
    assert answer.choices and bytes(fake.requests[-1].body) == text.encode()
    client.close()


def test_a_turns_send_carries_the_serialized_body_it_records(make_db: Any) -> None:
    """The pure plan hands the client (``Send``) the very SerializedRequest it records
    with the run, so the client sends it without parsing it again (see above); both
    shells pass ``Send.body`` on as it is."""
    from convo import Chat, Store
    from convo._turns.plan import Send, StoreCall, plan_turn

    store = Store(make_db("sqlite"))
    client = OpenAIClient(api_key="sk-test", base_url="http://fake/v1",
                          transport=FakeBackend().transport())
    chat = Chat(store, client, model="gpt-4o-mini")
    conv = store.create_conversation()
    plan = plan_turn(chat._spec(conv.id, "Hello", idempotency_key=None, owner=None,
                                response_format=None, stream=False, params={}))
    recorded = None
    effect = next(plan)
    while not isinstance(effect, Send):
        if isinstance(effect, StoreCall):
            if effect.method == "start_run":
                recorded = effect.kwargs["request"]
            value = getattr(store, effect.method)(*effect.args, **effect.kwargs)
        else:
            value = chat._build(effect)
        effect = plan.send(value)
    assert type(effect.body) is SerializedRequest and effect.body is recorded
    assert json.loads(effect.body)["messages"] == [{"role": "user", "content": "Hello"}]
    plan.close()
    client.close()
    store.close()


@pytest.mark.parametrize("cookie", [None, "session=abc; Path=/"])
def test_convos_own_client_keeps_the_cookies_a_response_sets(cookie: str | None) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        headers = {"set-cookie": cookie} if cookie else {}
        return httpx.Response(200, headers=headers, json={
            "model": "m", "choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}],
        })

    client = OpenAIClient(api_key="sk-test", base_url="http://fake/v1",
                          transport=httpx.MockTransport(answer))
    client.send("chat.completions", BODY)
    assert dict(client._http.cookies) == ({"session": "abc"} if cookie else {})
    client.close()


# --- values built from validated ones -------------------------------------------------------


ANSWERS = [
    {"model": "m", "choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}],
     "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4,
               "prompt_tokens_details": None}, "system_fingerprint": "fp"},
    {"model": "", "choices": [{"message": {"content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        "finish_reason": "tool_calls"}]},
    {"choices": [{"message": {"content": None, "refusal": "no"}, "finish_reason": "stop"}]},
    {"choices": [{"message": {}, "finish_reason": None}]},
]


@pytest.mark.parametrize("answer", ANSWERS)
@pytest.mark.parametrize("seed", [None, 7, True])
def test_an_answers_message_and_reply_info_are_the_validated_values(
    answer: dict[str, Any], seed: Any
) -> None:
    completion = ChatCompletion.model_validate(answer)
    message = completion.to_message()
    assert message == Message.model_validate(message.model_dump())
    assert repr(message) == repr(Message.model_validate(message.model_dump()))
    info = completion.reply_info(seed=seed)
    assert info == ReplyInfo.model_validate(info.model_dump() | {"seed": seed})
    text = Completion.model_validate({"choices": [{"text": "x", "finish_reason": "stop"}],
                                      "usage": answer.get("usage")})
    assert text.reply_info(seed=seed) == ReplyInfo.model_validate(
        text.reply_info(seed=seed).model_dump() | {"seed": seed}
    )


def test_a_text_message_of_a_turn_is_the_validated_user_message() -> None:
    class Label(str):
        def __str__(self) -> str:
            return "not the text"

    for text in ("hi", "", Label("the text")):
        message = _as_message(text)
        assert message is not None
        assert message == Message.user(str.__str__(text)) and type(message.content) is str
        assert repr(message) == repr(Message.user(str.__str__(text)))
