"""The fake's usage is the builder's count: same tokenizer, same rules, no configuration."""

from __future__ import annotations

from typing import Any

import pytest

from convo import (
    ContextBuilder,
    FunctionCall,
    Message,
    ModelRegistry,
    OpenAIClient,
    Store,
    ToolCall,
)
from convo.testing import FakeBackend

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "lookup",
            "description": "Look a word up in the dictionary.",
            "parameters": {
                "type": "object",
                "properties": {"q": {"type": "string"}, "lang": {"type": "string", "enum": ["en", "fr"]}},
                "required": ["q"],
            },
        },
    }
]
# o200k_base, cl100k_base, and a dated snapshot resolved through the registry
MODELS = ["gpt-4o-mini", "gpt-4", "gpt-4o-2024-08-06"]


@pytest.fixture(params=["sqlite", "postgresql"])
def conversation(request: pytest.FixtureRequest, make_db: Any) -> Any:
    """A stored conversation with a name, a tool round and text a template would treat as markup."""
    store = Store(make_db(request.param))
    conv = store.create_conversation()
    call = ToolCall(id="call_1", function=FunctionCall(name="lookup", arguments='{"q": "ferry"}'))
    store.append_many(conv.id, [
        Message.system("You are a terse travel assistant."),
        Message.user("When does the ferry leave? <|im_end|> [INST]", name="ann"),
        Message.assistant(tool_calls=[call]),
        Message.tool('{"departures": ["08:10", "12:40"]}', tool_call_id="call_1"),
        Message.assistant("At 08:10 and 12:40."),
        Message.user("And on Sundays?"),
    ])
    yield store, conv.id
    store.close()


@pytest.fixture(params=["transport", "loopback"])
def client(request: pytest.FixtureRequest) -> Any:
    fake = FakeBackend()
    if request.param == "transport":
        with OpenAIClient(base_url="http://fake/v1", api_key="sk-test", transport=fake.transport()) as c:
            yield fake, c
        return
    with fake.serve() as server, OpenAIClient(base_url=server.base_url, api_key="sk-test") as c:
        yield fake, c


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("tools", [None, TOOLS], ids=["no-tools", "tools"])
def test_chat_usage_is_the_builders_count(conversation: Any, client: Any, model: str, tools: Any) -> None:
    store, cid = conversation
    _, c = client
    ctx = ContextBuilder(store, model=model, budget=4_000).build(cid, tools=tools)
    reply = c.chat(**ctx.request())
    assert reply.usage is not None and reply.usage.prompt_tokens == ctx.report.prompt_tokens
    with c.chat_stream(**ctx.request(stream_options={"include_usage": True})) as stream:
        streamed = stream.final()
    assert streamed.usage is not None and streamed.usage.prompt_tokens == ctx.report.prompt_tokens
    if tools:
        plain = ContextBuilder(store, model=model, budget=4_000).build(cid)
        assert ctx.report.prompt_tokens > plain.report.prompt_tokens  # the tools are counted


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("template", ["transcript", "chatml", "llama3", "mistral"])
def test_completion_usage_is_the_count_of_the_prompt_sent(conversation: Any, client: Any, model: str,
                                                          template: str) -> None:
    store, cid = conversation
    fake, c = client
    ctx = ContextBuilder(store, model=model, budget=4_000, mode="completion", template=template).build(cid)
    reply = c.complete(**ctx.request(max_tokens=20))
    assert fake.last_request.json["prompt"] == ctx.prompt
    assert reply.usage is not None and reply.usage.prompt_tokens == ctx.report.prompt_tokens


def test_unknown_models_are_counted_with_the_fallback_encoding(conversation: Any) -> None:
    store, cid = conversation
    for fallback in ("o200k_base", "cl100k_base"):
        fake = FakeBackend() if fallback == "o200k_base" else FakeBackend(encoding=fallback)
        with OpenAIClient(base_url="http://fake/v1", api_key="k", transport=fake.transport()) as c:
            ctx = ContextBuilder(store, model="my-local-llm", encoding=fallback, budget=4_000).build(cid)
            reply = c.chat(**ctx.request())
        assert reply.usage is not None and reply.usage.prompt_tokens == ctx.report.prompt_tokens


def test_models_of_your_registry_are_counted_with_their_encoding(conversation: Any) -> None:
    store, cid = conversation
    local = ModelRegistry()
    local.register("qwen-local", context_window=8_192, max_output_tokens=1_024, encoding="cl100k_base")
    ctx = ContextBuilder(store, model="qwen-local", registry=local, budget=4_000).build(cid)
    counts = {}
    for name, fake in (("default", FakeBackend()), ("registry", FakeBackend(registry=local))):
        with OpenAIClient(base_url="http://fake/v1", api_key="k", transport=fake.transport()) as c:
            usage = c.chat(**ctx.request()).usage
        assert usage is not None
        counts[name] = usage.prompt_tokens
    # without the registry the fake does not know the model: its fallback (o200k_base) counts
    assert counts["registry"] == ctx.report.prompt_tokens != counts["default"]
