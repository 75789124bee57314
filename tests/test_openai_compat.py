"""The official ``openai`` package talks to convo.testing's loopback server.

Every answer of the fake must parse into openai's own pydantic models with no
unknown fields and with the typed fields populated; errors must raise openai's
matching exception classes; and the bodies must validate against the response
schemas of OpenAI's published OpenAPI spec (a vendored subset,
``test_openai_compat_schemas.json``, checked against the full spec when
``../shared/reference/openai-openapi.yaml`` is present).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

openai = pytest.importorskip("openai", reason="the openai package is a test dependency")
from openai.types import Completion
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from convo._tokens.counter import TokenCounter, count_tokens
from convo.testing import FakeBackend, FakeServer

HERE = Path(__file__).parent
VENDORED = HERE / "test_openai_compat_schemas.json"
FULL_SPEC = Path(
    os.environ.get(
        "CONVO_OPENAPI_SPEC", HERE.parent.parent / "shared" / "reference" / "openai-openapi.yaml"
    )
)
USER = [{"role": "user", "content": "Hello!"}]


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[FakeServer]:
    with FakeBackend().serve() as srv:
        yield srv


@pytest.fixture
def fake(server: FakeServer) -> FakeBackend:
    server.backend.reset()
    return server.backend


@pytest.fixture(scope="module")
def client(server: FakeServer) -> Iterator[Any]:
    with openai.OpenAI(base_url=server.base_url, api_key="test", max_retries=0) as c:
        yield c


@pytest.fixture(scope="module")
async def aclient(server: FakeServer) -> Any:
    async with openai.AsyncOpenAI(base_url=server.base_url, api_key="test", max_retries=0) as c:
        yield c


# --- helpers -------------------------------------------------------------------------------------


def no_extras(model: Any, path: str = "$") -> None:
    """No model anywhere in the tree kept a field its class does not declare."""
    if isinstance(model, BaseModel):
        assert not model.model_extra, f"{path}: fields openai does not know: {model.model_extra}"
        for name in type(model).model_fields:
            no_extras(getattr(model, name), f"{path}.{name}")
    elif isinstance(model, (list, tuple)):
        for i, item in enumerate(model):
            no_extras(item, f"{path}[{i}]")
    elif isinstance(model, dict):
        for key, item in model.items():
            no_extras(item, f"{path}.{key}")


def strict(cls: type[BaseModel], data: Any) -> Any:
    """Validate with pydantic (openai itself only *constructs* responses) and check extras."""
    model = cls.model_validate(data)
    no_extras(model)
    return model


def raw_json(client: Any, **kw: Any) -> tuple[Any, dict[str, Any]]:
    """The parsed response and the raw JSON body of one chat request."""
    raw = client.chat.completions.with_raw_response.create(**kw)
    return raw.parse(), json.loads(raw.text)


def sse_payloads(text: str) -> list[dict[str, Any]]:
    data = [block[len("data: ") :] for block in text.split("\n\n") if block]
    assert data[-1] == "[DONE]"
    return [json.loads(d) for d in data[:-1]]


# --- chat ----------------------------------------------------------------------------------------


def test_chat_completion_parses(client: Any, fake: FakeBackend) -> None:
    resp, body = raw_json(client, model="gpt-4o", messages=USER, seed=42)
    assert isinstance(resp, ChatCompletion)
    no_extras(resp)
    strict(ChatCompletion, body)
    assert resp.id == "chatcmpl-fake-1"
    assert resp.object == "chat.completion"
    assert resp.system_fingerprint == "fp_convofake"
    choice = resp.choices[0]
    assert choice.finish_reason == "stop"
    assert choice.message.role == "assistant"
    assert choice.message.content == "You said: Hello!"
    assert choice.message.refusal is None
    assert resp.usage is not None
    assert resp.usage.prompt_tokens == count_tokens(USER, model="gpt-4o") == 9
    assert resp.usage.completion_tokens == TokenCounter.for_model("gpt-4o").count(
        "You said: Hello!"
    )
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens
    assert resp.usage.prompt_tokens_details is not None
    assert resp.usage.prompt_tokens_details.cached_tokens == 0
    assert resp.usage.completion_tokens_details is not None
    assert resp.usage.completion_tokens_details.reasoning_tokens == 0
    assert fake.last_request.headers["authorization"] == "Bearer test"
    assert fake.last_request.json["seed"] == 42


def test_chat_tool_calls_parse(client: Any, fake: FakeBackend) -> None:
    fake.reply_tool_calls([("get_weather", {"city": "Paris"}), ("get_time", {"tz": "UTC"})])
    tools = [
        {
            "type": "function",
            "function": {
                "name": name,
                "parameters": {"type": "object", "properties": {key: {"type": "string"}}},
            },
        }
        for name, key in (("get_weather", "city"), ("get_time", "tz"))
    ]
    resp, body = raw_json(client, model="gpt-4o", messages=USER, tools=tools)
    no_extras(resp)
    strict(ChatCompletion, body)
    message = resp.choices[0].message
    assert resp.choices[0].finish_reason == "tool_calls"
    assert [c.function.name for c in message.tool_calls] == ["get_weather", "get_time"]
    assert json.loads(message.tool_calls[0].function.arguments) == {"city": "Paris"}
    assert message.tool_calls[0].id == "call_fake_1" and message.tool_calls[0].type == "function"
    # Tool definitions are billed: the prompt costs more than the messages alone.
    assert resp.usage.prompt_tokens == count_tokens(USER, model="gpt-4o", tools=tools)
    assert resp.usage.prompt_tokens > count_tokens(USER, model="gpt-4o")

    # The tool results go back; the fake accepts the turn OpenAI's way.
    follow = [
        *USER,
        message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": "call_fake_1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "call_fake_2", "content": "noon"},
    ]
    fake.reply("It is sunny at noon.")
    resp = client.chat.completions.create(model="gpt-4o", messages=follow, tools=tools)
    assert resp.choices[0].message.content == "It is sunny at noon."


def test_json_object_mode(client: Any) -> None:
    messages = [{"role": "user", "content": "Say hi as JSON."}]
    resp, body = raw_json(
        client, model="gpt-4o", messages=messages, response_format={"type": "json_object"}
    )
    strict(ChatCompletion, body)
    assert json.loads(resp.choices[0].message.content) == {"message": "You said: Say hi as JSON."}


class Pet(BaseModel):
    name: str
    age: int
    tags: list[str]
    vaccinated: bool


def test_json_schema_mode_with_openai_parse(client: Any, fake: FakeBackend) -> None:
    # openai's own structured-output helper sends a strict json_schema and parses the content.
    resp = client.chat.completions.parse(model="gpt-4o", messages=USER, response_format=Pet)
    assert resp.choices[0].message.parsed == Pet(name="", age=0, tags=[], vaccinated=False)
    sent = fake.last_request.json["response_format"]
    assert sent["type"] == "json_schema" and sent["json_schema"]["name"] == "Pet"
    fake.reply_json({"name": "Rex", "age": 3, "tags": ["dog"], "vaccinated": True})
    resp = client.chat.completions.parse(model="gpt-4o", messages=USER, response_format=Pet)
    assert resp.choices[0].message.parsed == Pet(name="Rex", age=3, tags=["dog"], vaccinated=True)


def test_refusal_parses(client: Any, fake: FakeBackend) -> None:
    fake.reply_refusal("I can't help with that.")
    resp, body = raw_json(client, model="gpt-4o", messages=USER)
    strict(ChatCompletion, body)
    assert resp.choices[0].message.content is None
    assert resp.choices[0].message.refusal == "I can't help with that."


def test_chat_stream_chunks_parse(client: Any, fake: FakeBackend) -> None:
    fake.reply("Streaming works, word by word.")
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=USER, stream=True, stream_options={"include_usage": True}
    )
    payloads = sse_payloads(raw.http_response.read().decode())
    for payload in payloads:
        strict(ChatCompletionChunk, payload)
    fake.reply("Streaming works, word by word.")
    stream = client.chat.completions.create(
        model="gpt-4o", messages=USER, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert all(isinstance(c, ChatCompletionChunk) for c in chunks)
    for chunk in chunks:
        no_extras(chunk)
    *content, last = chunks
    assert content[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in content) == (
        "Streaming works, word by word."
    )
    assert content[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in content)
    assert last.choices == [] and last.usage is not None
    assert last.usage.completion_tokens == TokenCounter.for_model("gpt-4o").count(
        "Streaming works, word by word."
    )


def test_chat_stream_helper_assembles_tool_calls(client: Any, fake: FakeBackend) -> None:
    # openai's stream() helper accumulates deltas itself: a strong check of their shape.
    fake.reply_tool_calls([("get_weather", {"city": "Paris", "unit": "C"})], content="Checking.")
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
    with client.chat.completions.stream(
        model="gpt-4o", messages=USER, tools=tools, stream_options={"include_usage": True}
    ) as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion()
    message = final.choices[0].message
    assert message.content == "Checking."
    assert message.tool_calls[0].id == "call_fake_1"
    assert message.tool_calls[0].function.name == "get_weather"
    assert json.loads(message.tool_calls[0].function.arguments) == {"city": "Paris", "unit": "C"}
    assert final.choices[0].finish_reason == "tool_calls"
    assert final.usage is not None and final.usage.total_tokens > 0


async def test_async_client_chat_and_stream(aclient: Any, fake: FakeBackend) -> None:
    resp = await aclient.chat.completions.create(model="gpt-4o-mini", messages=USER, n=2)
    no_extras(resp)
    assert [c.message.content for c in resp.choices] == ["You said: Hello!"] * 2
    stream = await aclient.chat.completions.create(model="gpt-4o-mini", messages=USER, stream=True)
    text = ""
    async for chunk in stream:
        no_extras(chunk)
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
    assert text == "You said: Hello!"


# --- completions ---------------------------------------------------------------------------------


def test_completion_parses(client: Any, fake: FakeBackend) -> None:
    prompt = "User: Translate 'cat' to French.\n\nAssistant:"
    raw = client.completions.with_raw_response.create(
        model="gpt-3.5-turbo-instruct", prompt=prompt, stop=["\nUser:"]
    )
    resp = raw.parse()
    assert isinstance(resp, Completion)
    no_extras(resp)
    strict(Completion, json.loads(raw.text))
    assert resp.object == "text_completion"
    assert resp.choices[0].text == " You said: Translate 'cat' to French."
    assert resp.choices[0].finish_reason == "stop"
    counter = TokenCounter.for_model("gpt-3.5-turbo-instruct")
    assert resp.usage is not None
    assert resp.usage.prompt_tokens == counter.count(prompt)
    assert resp.usage.completion_tokens == counter.count(resp.choices[0].text)


def test_completion_stream_parses(client: Any, fake: FakeBackend) -> None:
    fake.reply(" Le chat.")
    stream = client.completions.create(
        model="gpt-3.5-turbo-instruct",
        prompt="French for cat:",
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    for chunk in chunks:
        assert isinstance(chunk, Completion)
        no_extras(chunk)
    *content, last = chunks
    assert "".join(c.choices[0].text for c in content) == " Le chat."
    assert content[-1].choices[0].finish_reason == "stop"
    assert last.choices == [] and last.usage.completion_tokens > 0


# --- models and errors ---------------------------------------------------------------------------


def test_models_list_parses(client: Any) -> None:
    models = client.models.list()
    for model in models.data:
        no_extras(model)
    assert "gpt-4o" in {m.id for m in models.data}
    assert client.models.retrieve("gpt-4o").id == "gpt-4o"
    with pytest.raises(openai.NotFoundError) as info:
        client.models.retrieve("no-such-model")
    assert info.value.code == "model_not_found"


def test_validation_errors_raise_bad_request(client: Any) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="gpt-4o", messages=[])
    err = info.value
    assert err.status_code == 400
    assert err.code == "empty_array" and err.param == "messages"
    assert err.type == "invalid_request_error"
    assert err.request_id is not None and err.request_id.startswith("req_fake_")
    with pytest.raises(openai.BadRequestError, match="must contain the word 'json'"):
        client.chat.completions.create(
            model="gpt-4o", messages=USER, response_format={"type": "json_object"}
        )
    with pytest.raises(openai.BadRequestError, match="array too long"):
        client.completions.create(model="davinci-002", prompt="x", stop=["a", "b", "c", "d", "e"])


@pytest.mark.parametrize(
    ("status", "exception"),
    [
        (400, "BadRequestError"),
        (401, "AuthenticationError"),
        (403, "PermissionDeniedError"),
        (404, "NotFoundError"),
        (409, "ConflictError"),
        (422, "UnprocessableEntityError"),
        (429, "RateLimitError"),
        (500, "InternalServerError"),
        (503, "InternalServerError"),
    ],
)
def test_scripted_failures_raise_openai_exceptions(
    client: Any, fake: FakeBackend, status: int, exception: str
) -> None:
    fake.fail(status, headers={"retry-after": "0.05"})
    with pytest.raises(getattr(openai, exception)) as info:
        client.chat.completions.create(model="gpt-4o", messages=USER)
    assert info.value.status_code == status
    assert info.value.response.headers["retry-after"] == "0.05"
    assert isinstance(info.value.body, dict) and info.value.body["message"]


def test_rate_limit_is_retried_by_openai_when_allowed(
    server: FakeServer, fake: FakeBackend
) -> None:
    fake.fail(429, headers={"retry-after": "0.01"})
    with openai.OpenAI(base_url=server.base_url, api_key="test", max_retries=1) as retrying:
        resp = retrying.chat.completions.create(model="gpt-4o", messages=USER)
    assert resp.choices[0].message.content == "You said: Hello!"
    assert len(fake.requests) == 2


def test_wrong_path_and_malformed_body(client: Any, fake: FakeBackend) -> None:
    with pytest.raises(openai.NotFoundError, match=r"Invalid URL \(POST /v1/nowhere\)"):
        client.post("/nowhere", cast_to=dict, body={})
    fake.malformed(b"<html>bad gateway</html>", status=502, content_type="text/html")
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="gpt-4o", messages=USER)
    assert info.value.status_code == 502


def test_timeout_and_cut_stream_raise_connection_errors(
    server: FakeServer, fake: FakeBackend
) -> None:
    with openai.OpenAI(
        base_url=server.base_url, api_key="test", max_retries=0, timeout=0.3
    ) as quick:
        fake.timeout(seconds=5)
        with pytest.raises(openai.APITimeoutError):
            quick.chat.completions.create(model="gpt-4o", messages=USER)
        fake.cut_stream(after_chunks=2)
        stream = quick.chat.completions.create(model="gpt-4o", messages=USER, stream=True)
        got = []
        with pytest.raises(openai.APIConnectionError):
            for chunk in stream:
                got.append(chunk)  # noqa: PERF402  (keep what came before the error)
        assert len(got) == 2 and all(c.choices[0].finish_reason is None for c in got)


# --- the OpenAPI spec ----------------------------------------------------------------------------

RESPONSE_SCHEMAS = (
    "CreateChatCompletionResponse",
    "CreateChatCompletionStreamResponse",
    "CreateCompletionResponse",
    "ErrorResponse",
    "ListModelsResponse",
)
# Documentation keys carry no constraint; the vendored subset leaves them out.
_DOC_KEYS = frozenset(
    {
        "description", "example", "examples", "title", "deprecated", "default", "discriminator",
        "format", "x-oaiMeta", "x-oaiTypeLabel", "x-stainless-const", "x-oaiExpandable",
    }
)  # fmt: skip


def _strip(node: Any, names: bool = False) -> Any:
    if isinstance(node, dict):
        if names:  # a "properties" map: its keys are field names, not keywords
            return {k: _strip(v) for k, v in node.items()}
        return {k: _strip(v, k == "properties") for k, v in node.items() if k not in _DOC_KEYS}
    if isinstance(node, list):
        return [_strip(v) for v in node]
    return node


def extract_subset(spec: dict[str, Any]) -> dict[str, Any]:
    """The response schemas and everything they reference, documentation stripped."""
    schemas = spec["components"]["schemas"]
    out: dict[str, Any] = {}
    todo = list(RESPONSE_SCHEMAS)
    while todo:
        name = todo.pop()
        if name in out:
            continue
        out[name] = _strip(schemas[name])
        text = json.dumps(out[name])
        todo += [ref.split('"')[0] for ref in text.split('"$ref": "#/components/schemas/')[1:]]
    return {"components": {"schemas": dict(sorted(out.items()))}}


def schema_errors(value: Any, schema: Any, root: dict[str, Any], path: str = "$") -> list[str]:
    """JSON-schema (OpenAPI 3.1 subset) errors of ``value``; unknown object fields are errors."""
    if value is None and schema.get("nullable"):  # OpenAPI 3.0 style, also beside a $ref
        return []
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[1]
        return schema_errors(value, root["components"]["schemas"][name], root, path)
    errors: list[str] = []
    for part in schema.get("allOf", []):
        errors += schema_errors(value, part, root, path)
    if "anyOf" in schema and all(schema_errors(value, s, root, path) for s in schema["anyOf"]):
        errors.append(f"{path}: matches no anyOf option")
    if "oneOf" in schema:
        matches = sum(not schema_errors(value, s, root, path) for s in schema["oneOf"])
        if matches != 1:
            errors.append(f"{path}: matches {matches} oneOf options")
    kind = schema.get("type")
    checks = {
        "string": lambda v: isinstance(v, str),
        "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        "boolean": lambda v: isinstance(v, bool),
        "array": lambda v: isinstance(v, list),
        "object": lambda v: isinstance(v, dict),
        "null": lambda v: v is None,
    }
    if kind is not None:
        kinds = kind if isinstance(kind, list) else [kind]
        if not any(checks[k](value) for k in kinds):
            return [f"{path}: expected {kind}, got {value!r:.80}"]
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: {value!r} not in {schema['enum']}")
    if isinstance(value, dict) and ("properties" in schema or kind == "object"):
        props = schema.get("properties", {})
        for name in schema.get("required", []):
            if name not in value:
                errors.append(f"{path}: missing required {name!r}")
        extra = schema.get("additionalProperties")
        for name, item in value.items():
            if name in props:
                errors += schema_errors(item, props[name], root, f"{path}.{name}")
            elif isinstance(extra, dict):
                errors += schema_errors(item, extra, root, f"{path}.{name}")
            elif "allOf" not in schema and "anyOf" not in schema and "oneOf" not in schema:
                errors.append(f"{path}: field {name!r} is not in the spec")
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0):
            errors.append(f"{path}: fewer than {schema['minItems']} items")
        for i, item in enumerate(value):
            errors += schema_errors(item, schema.get("items", {}), root, f"{path}[{i}]")
    return errors


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(VENDORED.read_text())
    return loaded


def test_vendored_schemas_match_the_full_spec() -> None:
    if not FULL_SPEC.exists():
        pytest.skip(f"OpenAI's OpenAPI spec not found at {FULL_SPEC} (set CONVO_OPENAPI_SPEC)")
    yaml = pytest.importorskip("yaml", reason="PyYAML reads the full spec")
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    full = yaml.load(FULL_SPEC.read_text(), Loader=loader)
    vendored = json.loads(VENDORED.read_text())
    assert extract_subset(full)["components"] == vendored["components"]


def test_validator_catches_what_it_should(spec: dict[str, Any]) -> None:
    schema = {"$ref": "#/components/schemas/CreateChatCompletionResponse"}
    good = {"id": "x", "object": "chat.completion", "created": 1, "model": "m", "choices": []}
    assert schema_errors(good, schema, spec) == []
    assert schema_errors({**good, "object": "chat"}, schema, spec)
    assert schema_errors({**good, "surprise": 1}, schema, spec)
    assert schema_errors({k: v for k, v in good.items() if k != "id"}, schema, spec)
    bad_choice = {
        "index": 0,
        "message": {"role": "assistant"},
        "logprobs": None,
        "finish_reason": "x",
    }
    assert schema_errors({**good, "choices": [bad_choice]}, schema, spec)


def test_bodies_validate_against_the_spec(
    client: Any, fake: FakeBackend, spec: dict[str, Any]
) -> None:
    def check(value: Any, name: str) -> None:
        errors = schema_errors(value, {"$ref": f"#/components/schemas/{name}"}, spec)
        assert errors == [], errors

    chat_kw: dict[str, Any] = {"model": "gpt-4o", "messages": USER}
    check(json.loads(client.chat.completions.with_raw_response.create(**chat_kw).text),
          "CreateChatCompletionResponse")  # fmt: skip
    fake.reply_tool_calls([("f", {"a": 1})], content="calling")
    check(json.loads(client.chat.completions.with_raw_response.create(**chat_kw).text),
          "CreateChatCompletionResponse")  # fmt: skip
    for reply in ("text", "tools", "refusal"):
        if reply == "tools":
            fake.reply_tool_calls([("f", {"a": 1}), ("g", {})])
        elif reply == "refusal":
            fake.reply_refusal("no")
        raw = client.chat.completions.with_raw_response.create(
            **chat_kw, n=2, stream=True, stream_options={"include_usage": True}
        )
        for payload in sse_payloads(raw.http_response.read().decode()):
            check(payload, "CreateChatCompletionStreamResponse")
    raw = client.completions.with_raw_response.create(model="davinci-002", prompt="Hi")
    check(json.loads(raw.text), "CreateCompletionResponse")
    raw = client.completions.with_raw_response.create(
        model="davinci-002", prompt="Hi", stream=True, stream_options={"include_usage": True}
    )
    *content, usage = sse_payloads(raw.http_response.read().decode())
    for payload in content:
        # The spec validates completion chunks with the non-streaming schema, which allows
        # neither the null finish_reason of chunks before the last (what OpenAI sends) nor the
        # null usage that stream_options.include_usage documents: check everything else.
        if payload["choices"][0]["finish_reason"] is None:
            payload["choices"][0]["finish_reason"] = "stop"
        assert payload.pop("usage") is None
        check(payload, "CreateCompletionResponse")
    check(usage, "CreateCompletionResponse")
    check(json.loads(client.models.with_raw_response.list().text), "ListModelsResponse")
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="gpt-4o", messages=[])
    check(info.value.response.json(), "ErrorResponse")
    fake.fail(429)
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="gpt-4o", messages=USER)
    check(info.value.response.json(), "ErrorResponse")
