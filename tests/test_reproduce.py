"""Reproduce a run: the recorded body re-sent byte for byte, compared side by side.

Every test runs four times: SQLite / PostgreSQL x sync / async (conftest ``store``).
"""

from __future__ import annotations

from typing import Any

import pytest

from convo import (
    AsyncChat,
    AsyncOpenAIClient,
    AsyncReplayer,
    Chat,
    InternalServerError,
    OpenAIClient,
    Replayer,
    RunNotFound,
)
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
