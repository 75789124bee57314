"""Reproduce a run: the recorded body re-sent byte for byte, compared side by side.

Every test runs four times: SQLite / PostgreSQL x sync / async (conftest ``store``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from convo import (
    AsyncChat,
    AsyncOpenAIClient,
    AsyncReplayer,
    Chat,
    ChatCompletion,
    InternalServerError,
    OpenAIClient,
    Replayer,
    Run,
    RunNotFound,
)
from convo._replay.reproduce import compare_runs, outcome_of, run_text, text_similarity
from convo.testing import FakeBackend


class Harness:
    """A chat and a replayer over one store handle, sync or async, awaited alike."""

    def __init__(self, store: Any, fake: FakeBackend, replay_fake: FakeBackend | None = None):
        self.store = store
        make = AsyncOpenAIClient if store.is_async else OpenAIClient
        self.client = make(base_url="http://fake/v1", api_key="sk-test", max_retries=0,
                           transport=fake.transport())
        other = replay_fake or fake
        self.replay_client = make(base_url="http://other/v1", api_key="sk-test",
                                  max_retries=0, transport=other.transport())
        chat_cls = AsyncChat if store.is_async else Chat
        replayer_cls = AsyncReplayer if store.is_async else Replayer
        self.chat = chat_cls(store.raw, self.client, model="gpt-4o-mini")
        self.replayer = replayer_cls(store.raw, self.replay_client)

    async def call(self, obj: Any, name: str, *args: Any, **kwargs: Any) -> Any:
        value = getattr(obj, name)(*args, **kwargs)
        return await value if self.store.is_async else value

    async def send(self, *args: Any, **kwargs: Any) -> Any:
        return await self.call(self.chat, "send", *args, **kwargs)

    async def reproduce(self, *args: Any, **kwargs: Any) -> Any:
        return await self.call(self.replayer, "reproduce", *args, **kwargs)


async def test_reproduce_resends_the_exact_body_and_matches(store):
    fake = FakeBackend(system_fingerprint="fp_a")
    h = Harness(store, fake)
    conv = await store.create_conversation(owner="u1")
    fake.reply("Lisbon: start in Alfama.")
    turn = await h.send(conv.id, "Where do I start?", seed=42, temperature=0, owner="u1")
    fake.reply("Lisbon: start in Alfama.")
    rep = await h.reproduce(turn.run.id, owner="u1")

    assert fake.requests[1].body == fake.requests[0].body  # byte for byte
    assert fake.requests[1].body == turn.run.request.encode()
    assert rep.same_text and rep.similarity == 1.0 and rep.same_fingerprint is True
    assert rep.same_finish_reason and rep.seed == 42
    assert rep.original.id == turn.run.id
    assert rep.run.reproduces_id == turn.run.id and rep.run.status == "ok"
    assert rep.run.base_url == "http://other/v1" and rep.run.request == turn.run.request
    assert rep.run.reply_message_id is None  # a reproduction adds nothing to the thread
    assert await store.count_messages(conv.id) == 2
    page = await store.list_runs(conv.id)
    assert [r.id for r in page.items] == [rep.run.id, turn.run.id]


async def test_reproduce_reports_a_changed_fingerprint_and_text(store):
    fake = FakeBackend(system_fingerprint="fp_old")
    new_backend = FakeBackend(system_fingerprint="fp_new")
    h = Harness(store, fake, new_backend)
    conv = await store.create_conversation()
    fake.reply("The capital of France is Paris.")
    turn = await h.send(conv.id, "Capital of France?", seed=1)
    new_backend.reply("Paris is the capital of France.")
    rep = await h.reproduce(turn.run.id)
    assert rep.same_fingerprint is False
    assert not rep.same_text and 0.0 < rep.similarity < 1.0
    assert rep.original_text == "The capital of France is Paris."
    assert rep.text == "Paris is the capital of France."
    assert rep.run.system_fingerprint == "fp_new"


async def test_reproduce_a_streamed_completion_run(store):
    fake = FakeBackend()
    h = Harness(store, fake)
    chat_cls = AsyncChat if store.is_async else Chat
    h.chat = chat_cls(store.raw, h.client, model="gpt-3.5-turbo-instruct", mode="completion",
                      template="chatml", budget=2000)
    conv = await store.create_conversation()
    fake.reply("Bonjour")
    stream = h.chat.stream(conv.id, "Say hello in French")
    turn = await stream.result() if store.is_async else stream.result()
    assert turn.run.stream and turn.run.endpoint == "completions"
    fake.reply("Bonjour")
    rep = await h.reproduce(turn.run.id)
    assert rep.run.stream and rep.same_text and rep.text == "Bonjour"
    assert fake.requests[1].body == fake.requests[0].body


async def test_a_failed_reproduction_is_recorded_and_raised(store):
    fake = FakeBackend()
    h = Harness(store, fake)
    conv = await store.create_conversation()
    fake.reply("ok")
    turn = await h.send(conv.id, "hi")
    fake.fail(500)
    with pytest.raises(InternalServerError):
        await h.reproduce(turn.run.id)
    runs = (await store.list_runs(conv.id)).items
    assert runs[0].reproduces_id == turn.run.id and runs[0].status == "failed"
    assert runs[0].error_type == "InternalServerError"


async def test_reproduce_is_owner_scoped(store):
    fake = FakeBackend()
    h = Harness(store, fake)
    conv = await store.create_conversation(owner="alice")
    fake.reply("ok")
    turn = await h.send(conv.id, "hi", owner="alice")
    before = store.snapshot()
    with pytest.raises(RunNotFound):
        await h.reproduce(turn.run.id, owner="bob")
    with pytest.raises(RunNotFound):
        await h.reproduce("0" * 32)
    assert store.snapshot() == before
    assert len(fake.requests) == 1


async def test_a_recorded_body_is_resent_exactly_as_stored(store):
    """Spacing, key order and escapes survive: the bytes sent are the bytes recorded."""
    fake = FakeBackend()
    h = Harness(store, fake)
    conv = await store.create_conversation()
    text = '{"messages": [{"content": "caf\\u00e9 \\/", "role": "user"}],  "model": "gpt-4o-mini"}'
    run = await store.start_run(conv.id, endpoint="chat.completions", mode="chat",
                                model="gpt-4o-mini", request=text)
    await store.finish_run(run.id, status="ok",
                           response={"choices": [{"message": {"content": "x"}}]})
    fake.reply("x")
    rep = await h.reproduce(run.id)
    assert fake.requests[0].body == text.encode()
    assert rep.same_text and rep.run.request == text


# --- the pure part: reply texts, similarity, outcome, comparison (no store) -------------


def make_run(response: dict[str, Any] | None = None, *, endpoint: str = "chat.completions",
             request: str = "{}", **fields: Any) -> Run:
    return Run(id="r" * 32, conversation_id="c" * 32, endpoint=endpoint,  # type: ignore[arg-type]
               mode="chat" if endpoint == "chat.completions" else "completion",
               model="m", request=request, response=response,
               created_at=datetime(2026, 1, 1, tzinfo=UTC), **fields)


def chat_response(message: dict[str, Any] | None, *more: dict[str, Any]) -> dict[str, Any]:
    first: dict[str, Any] = {} if message is None else {"message": message}
    return {"choices": [first, *({"message": m} for m in more)]}


def test_run_text_is_none_without_a_response_or_choices():
    assert run_text(make_run(None)) is None
    assert run_text(make_run({})) is None
    assert run_text(make_run({"choices": []})) is None
    assert run_text(make_run({"id": "x"})) is None
    assert run_text(make_run(chat_response(None))) is None  # a choice without a message


def test_run_text_reads_the_first_choice():
    assert run_text(make_run(chat_response({"content": "one"}, {"content": "two"}))) == "one"
    completion = {"choices": [{"text": "first"}, {"text": "second"}]}
    assert run_text(make_run(completion, endpoint="completions")) == "first"


def test_run_text_of_a_completion_run_is_its_text_only():
    assert run_text(make_run({"choices": [{"text": ""}]}, endpoint="completions")) == ""
    # a completions run never reads a chat message, and a non-str text is no text
    odd = {"choices": [{"text": 3, "message": {"content": "chat"}}]}
    assert run_text(make_run(odd, endpoint="completions")) is None
    assert run_text(make_run({"choices": [{"message": {"content": "chat"}}]},
                             endpoint="completions")) is None


def test_run_text_of_tool_calls_is_their_functions_as_compact_sorted_json():
    calls = [
        {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Oslo"}'}},
        {"id": "c2", "type": "function", "function": {"name": "time", "arguments": "{}"}},
    ]
    expected = ('[{"arguments":"{\\"city\\": \\"Oslo\\"}","name":"weather"},'
                '{"arguments":"{}","name":"time"}]')
    assert run_text(make_run(chat_response({"content": None, "tool_calls": calls}))) == expected
    # an empty content is no text either: the calls stand for the reply
    assert run_text(make_run(chat_response({"content": "", "tool_calls": calls}))) == expected
    # text wins over calls
    assert run_text(make_run(chat_response({"content": "hi", "tool_calls": calls}))) == "hi"


def test_run_text_falls_back_to_the_refusal_then_to_the_empty_content():
    assert run_text(make_run(chat_response({"content": None, "refusal": "I can't"}))) == "I can't"
    assert run_text(make_run(chat_response({"content": "", "refusal": "no"}))) == "no"
    assert run_text(make_run(chat_response({"content": "", "tool_calls": []}))) == ""
    assert run_text(make_run(chat_response({"content": None, "refusal": None}))) is None
    assert run_text(make_run(chat_response({"content": ["parts"]}))) is None


def test_text_similarity():
    assert text_similarity(None, None) == 1.0
    assert text_similarity(None, "a") == 0.0 and text_similarity("a", None) == 0.0
    assert text_similarity("", "") == 1.0 and text_similarity("same", "same") == 1.0
    assert text_similarity("abc", "abd") == pytest.approx(4 / 6)
    assert text_similarity("", "x") == 0.0
    # long texts: no character is junk however often it occurs (difflib's autojunk off)
    # (with difflib's default, "a" and "b" are junk in 300 characters: similarity 0.0)
    a, b = "ab" * 150, "ba" * 150
    assert text_similarity(a, b) == pytest.approx(598 / 600)


def test_outcome_of_records_usage_finish_reason_fingerprint_seed_and_response():
    response = ChatCompletion.model_validate({
        "id": "cmpl-1", "model": "gpt-4o-mini", "system_fingerprint": "fp_1",
        "choices": [{"index": 0, "finish_reason": "length",
                     "message": {"role": "assistant", "content": "hi"}}],
        "usage": {"prompt_tokens": 11, "completion_tokens": 2, "total_tokens": 13},
    })
    out = outcome_of(response, 7)
    assert out["reported_prompt_tokens"] == 11 and out["completion_tokens"] == 2
    assert out["usage"] == {"prompt_tokens": 11, "completion_tokens": 2, "total_tokens": 13}
    assert out["finish_reason"] == "length" and out["system_fingerprint"] == "fp_1"
    assert out["seed"] == 7
    assert out["response"] == response.model_dump(mode="json", exclude_none=True)
    assert "system_fingerprint" in out["response"] and "refusal" not in str(out["response"])

    bare = ChatCompletion.model_validate({
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": "hi"}}]})
    out = outcome_of(bare, None)
    assert out["reported_prompt_tokens"] is None and out["completion_tokens"] is None
    assert out["usage"] is None and out["system_fingerprint"] is None and out["seed"] is None
    assert set(out) == {"reported_prompt_tokens", "completion_tokens", "usage", "finish_reason",
                        "system_fingerprint", "seed", "response"}


def test_compare_runs_side_by_side():
    a = make_run(chat_response({"content": "Paris"}), request='{"seed": 5}',
                 system_fingerprint="fp", finish_reason="stop")
    b = make_run(chat_response({"content": "Paris!"}), system_fingerprint="fp",
                 finish_reason="length")
    rep = compare_runs(a, b)
    assert rep.original is a and rep.run is b
    assert (rep.original_text, rep.text) == ("Paris", "Paris!")
    assert rep.same_text is False and rep.similarity == pytest.approx(10 / 11)
    assert rep.same_finish_reason is False and rep.same_fingerprint is True and rep.seed == 5
    same = compare_runs(a, a)
    assert same.same_text is True and same.same_finish_reason is True and same.similarity == 1.0


def test_compare_runs_fingerprint_is_unknown_when_either_run_has_none():
    with_fp = make_run(chat_response({"content": "x"}), system_fingerprint="fp_a")
    other_fp = make_run(chat_response({"content": "x"}), system_fingerprint="fp_b")
    without = make_run(chat_response({"content": "x"}))
    assert compare_runs(with_fp, other_fp).same_fingerprint is False
    assert compare_runs(with_fp, without).same_fingerprint is None
    assert compare_runs(without, with_fp).same_fingerprint is None
    assert compare_runs(without, without).same_fingerprint is None


@pytest.mark.parametrize(("request_text", "seed"), [
    ('{"seed": 0}', 0), ('{"seed": 12}', 12), ('{"seed": true}', None), ('{"seed": "3"}', None),
    ('{"seed": 1.0}', None), ("{}", None),
])
def test_compare_runs_reports_only_an_integer_seed(request_text, seed):
    run = make_run(chat_response({"content": "x"}), request=request_text)
    assert compare_runs(run, run).seed == seed
