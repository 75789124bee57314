"""Chat token counting: reproduces the prompt_tokens OpenAI reported in published examples."""

from __future__ import annotations

import base64
import struct
import zlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import convo
from convo import (
    FunctionCall,
    ImagePart,
    ImageURL,
    InputAudio,
    InputAudioPart,
    Message,
    ModelRegistry,
    TextPart,
    TokenCounter,
    ToolCall,
    count_tokens,
    encoding_for_model,
)
from convo._exceptions import InvalidMessageError, UnknownModelError
from convo._tokens.encodings import register_encoding, unregister_encoding
from convo._tokens.media import image_rule_for_model, image_size, image_tokens

COOKBOOK = "https://github.com/openai/openai-cookbook/blob/main/examples/How_to_count_tokens_with_tiktoken.ipynb"

# The cookbook's example conversation (section 6), with `name` fields.
COOKBOOK_MESSAGES: list[dict[str, str]] = [
    {
        "role": "system",
        "content": "You are a helpful, pattern-following assistant that translates corporate "
        "jargon into plain English.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "New synergies will help drive top-line growth.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Things working well together will increase revenue.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "Let's circle back when we have more bandwidth to touch base on opportunities "
        "for increased leverage.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Let's talk later when we're less busy about how to do better.",
    },
    {
        "role": "user",
        "content": "This late pivot means we don't have time to boil the ocean for the client "
        "deliverable.",
    },
]

# The cookbook's tools example (section 7).
COOKBOOK_TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "get_current_weather",
            "description": "Get the current weather in a given location",
            "parameters": {
                "type": "object",
                "properties": {
                    "location": {
                        "type": "string",
                        "description": "The city and state, e.g. San Francisco, CA",
                    },
                    "unit": {
                        "type": "string",
                        "description": "The unit of temperature to return",
                        "enum": ["celsius", "fahrenheit"],
                    },
                },
                "required": ["location"],
            },
        },
    }
]
COOKBOOK_TOOLS_MESSAGES = [
    {
        "role": "system",
        "content": "You are a helpful assistant that can answer to questions about the weather.",
    },
    {"role": "user", "content": "What's the weather like in San Francisco?"},
]


@pytest.mark.parametrize(
    ("model", "api_prompt_tokens"),
    [
        ("gpt-3.5-turbo", 129),
        ("gpt-4-0613", 129),
        ("gpt-4", 129),
        ("gpt-4o", 124),
        ("gpt-4o-mini", 124),
    ],
)
def test_cookbook_messages_with_names(model: str, api_prompt_tokens: int) -> None:
    """The counts the OpenAI API reported for the cookbook's example messages.

    Source: OpenAI cookbook, "How to count tokens with tiktoken", section 6
    (https://github.com/openai/openai-cookbook/blob/main/examples/How_to_count_tokens_with_tiktoken.ipynb):
    "129 prompt tokens counted by the OpenAI API" for gpt-3.5-turbo, gpt-4-0613 and
    gpt-4; "124" for gpt-4o and gpt-4o-mini.
    """
    assert count_tokens(COOKBOOK_MESSAGES, model=model) == api_prompt_tokens
    as_messages = [Message.model_validate(m) for m in COOKBOOK_MESSAGES]
    assert count_tokens(as_messages, model=model) == api_prompt_tokens
    counter = TokenCounter.for_model(model)
    assert all(counter.is_exact(m) for m in as_messages)


@pytest.mark.parametrize(
    ("model", "api_prompt_tokens"),
    [("gpt-3.5-turbo", 105), ("gpt-4", 105), ("gpt-4o", 101), ("gpt-4o-mini", 101)],
)
def test_cookbook_tools(model: str, api_prompt_tokens: int) -> None:
    """The counts the OpenAI API reported for the cookbook's tools example.

    Source: the same notebook, section 7 ("105 prompt tokens counted by the OpenAI
    API" for gpt-3.5-turbo and gpt-4, "101" for gpt-4o and gpt-4o-mini).
    """
    assert (
        count_tokens(COOKBOOK_TOOLS_MESSAGES, model=model, tools=COOKBOOK_TOOLS)
        == api_prompt_tokens
    )
    counter = TokenCounter.for_model(model)
    without = counter.request_tokens(COOKBOOK_TOOLS_MESSAGES)
    assert counter.tools_tokens(COOKBOOK_TOOLS) == api_prompt_tokens - without
    bare = [t["function"] for t in COOKBOOK_TOOLS]  # legacy `functions` entries
    assert counter.tools_tokens(bare) == counter.tools_tokens(COOKBOOK_TOOLS)


@pytest.mark.parametrize(
    ("messages", "api_prompt_tokens"),
    [
        ([{"role": "user", "content": "hello"}], 8),
        ([{"role": "user", "content": "hello world"}], 9),
        ([{"role": "system", "content": "hello"}], 8),
        ([{"role": "system", "content": "hello:"}], 9),
        (
            [
                {"role": "system", "content": "# Important: you're the best robot"},
                {"role": "user", "content": "hello robot"},
                {"role": "assistant", "content": "hello world"},
            ],
            27,
        ),
    ],
)
def test_measured_gpt35_counts(messages: list[dict[str, str]], api_prompt_tokens: int) -> None:
    """Counts measured against the API (gpt-3.5-turbo) by hmarr/openai-chat-tokens.

    Source: https://github.com/hmarr/openai-chat-tokens/blob/main/tests/token-counts.test.ts
    """
    assert count_tokens(messages, model="gpt-3.5-turbo") == api_prompt_tokens


@pytest.mark.parametrize(
    ("arguments", "api_prompt_tokens"),
    [('{"foo": "bar", "baz": 1.5}', 26), ('{"foo":"bar", "baz":\n\n 1.5}', 25)],
)
def test_tool_call_rule_fits_measured_function_calls(
    arguments: str, api_prompt_tokens: int
) -> None:
    """The tool-call rule (name + arguments + 3) reproduces measured assistant calls.

    Source: hmarr/openai-chat-tokens tests (measured on gpt-3.5-turbo with the
    legacy ``function_call`` field, which the ``tool_calls`` rule is fitted to):
    https://github.com/hmarr/openai-chat-tokens/blob/main/tests/token-counts.test.ts
    """
    call = ToolCall(id="call_1", function=FunctionCall(name="do_stuff", arguments=arguments))
    message = Message.assistant("", tool_calls=[call])
    assert count_tokens([message], model="gpt-3.5-turbo") == api_prompt_tokens
    assert not TokenCounter.for_model("gpt-3.5-turbo").is_exact(message)


# Measured against the API by pamelafox/openai-messages-token-helper (tests/messages.py and
# tests/image_messages.py): the count of a one-message request, reply priming included.
PAMELAFOX = "https://github.com/pamelafox/openai-messages-token-helper/tree/main/tests"
TINY_PNG = (
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z/C/"
    "HgAGgwJ/lK3Q6wAAAABJRU5ErkJggg=="
)


@pytest.mark.parametrize(
    ("message", "cl100k", "o200k"),
    [
        ({"role": "system", "content": "You are a bot."}, 12, 12),
        (
            {
                "role": "system",
                "content": "You are a helpful, pattern-following assistant that translates "
                "corporate jargon into plain English.",
            },
            25,
            24,
        ),
        ({"role": "system", "content": "á"}, 8, 8),
        (
            {
                "role": "system",
                "name": "example_user",
                "content": "New synergies will help drive top-line growth.",
            },
            20,
            20,
        ),
        ({"role": "user", "content": "Hello, how are you?"}, 13, 13),
        (
            {
                "role": "assistant",
                "content": "Yes, there is a dress code at Contoso Electronics. Look sharp! "
                "[employee_handbook-1.pdf]",
            },
            30,
            30,
        ),
    ],
)
def test_measured_single_messages(message: dict[str, str], cl100k: int, o200k: int) -> None:
    """Source: PAMELAFOX (tests/messages.py), checked by its verify_openai.py against the API."""
    assert count_tokens([message], model="gpt-3.5-turbo") == cl100k
    assert count_tokens([message], model="gpt-4o") == o200k


@pytest.mark.parametrize(
    ("model", "detail", "api_prompt_tokens", "exact"),
    [
        ("gpt-4o", "auto", 266, False),  # 11 + 85 + 170 (auto is counted as high)
        ("gpt-4o", "low", 96, True),  # 11 + 85
        ("gpt-4o-mini", "auto", 8511, False),  # 11 + 2833 + 5667
        ("gpt-4o-mini", "low", 2844, True),  # 11 + 2833
    ],
)
def test_measured_image_messages(
    model: str, detail: str, api_prompt_tokens: int, exact: bool
) -> None:
    """A 1x1 PNG after a text part. Source: PAMELAFOX (tests/image_messages.py)."""
    message = Message.user(
        [
            TextPart(text="Describe this picture:"),
            ImagePart(image_url=ImageURL(url=TINY_PNG, detail=detail)),
        ]
    )
    assert count_tokens([message], model=model) == api_prompt_tokens
    assert TokenCounter.for_model(model).is_exact(message) is exact


# --- images ------------------------------------------------------------------------------


def _data_url(mime: str, raw: bytes) -> str:
    return f"data:{mime};base64," + base64.b64encode(raw).decode()


def png(width: int, height: int) -> str:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    body = struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))
    return _data_url("image/png", b"\x89PNG\r\n\x1a\n" + body)


def jpeg(width: int, height: int) -> str:
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    sof0 = b"\xff\xc0" + struct.pack(">HBHHB", 17, 8, height, width, 3) + b"\x01\x22\x00" * 3
    return _data_url("image/jpeg", b"\xff\xd8" + app0 + b"\xff\xfe\x00\x04hi" + sof0 + b"\xff\xd9")


def gif(width: int, height: int) -> str:
    return _data_url("image/gif", b"GIF89a" + struct.pack("<HH", width, height) + b"\x00\x00\x00;")


def webp_vp8x(width: int, height: int) -> str:
    chunk = b"VP8X" + struct.pack("<I", 10) + b"\x00\x00\x00\x00"
    chunk += (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    return _data_url("image/webp", b"RIFF" + struct.pack("<I", 4 + len(chunk)) + b"WEBP" + chunk)


def webp_vp8l(width: int, height: int) -> str:
    bits = (width - 1) | (height - 1) << 14
    chunk = b"VP8L" + struct.pack("<I", 5) + b"\x2f" + struct.pack("<I", bits)
    return _data_url("image/webp", b"RIFF" + struct.pack("<I", 4 + len(chunk)) + b"WEBP" + chunk)


def webp_vp8(width: int, height: int) -> str:
    frame = b"\x00\x00\x00" + b"\x9d\x01\x2a" + struct.pack("<HH", width, height)
    chunk = b"VP8 " + struct.pack("<I", len(frame)) + frame
    return _data_url("image/webp", b"RIFF" + struct.pack("<I", 4 + len(chunk)) + b"WEBP" + chunk)


@pytest.mark.parametrize("make", [png, jpeg, gif, webp_vp8x, webp_vp8l, webp_vp8])
@pytest.mark.parametrize(("width", "height"), [(1, 1), (1024, 768), (3000, 17)])
def test_image_size_from_headers(make: Any, width: int, height: int) -> None:
    assert image_size(make(width, height)) == (width, height)


@pytest.mark.parametrize(
    "url",
    [
        "https://example.com/cat.png",
        "data:image/png;base64,!!!",
        "data:text/plain,hello",
        _data_url("image/bmp", b"BM" + b"\x00" * 40),
    ],
)
def test_image_size_unknown(url: str) -> None:
    assert image_size(url) is None


@pytest.mark.parametrize(
    ("width", "height", "tokens"),
    [(1024, 1024, 765), (2048, 4096, 1105), (500, 500, 255), (513, 500, 425), (4096, 8192, 1105)],
)
def test_tile_rule_published_examples(width: int, height: int, tokens: int) -> None:
    """OpenAI's vision guide: 1024x1024 high = 765 tokens, 2048x4096 high = 1105."""
    rule = image_rule_for_model("gpt-4o")
    assert image_tokens(rule, png(width, height), "high") == (tokens, True)
    assert image_tokens(rule, png(width, height), "low") == (85, True)
    assert image_tokens(rule, png(width, height), "auto") == (tokens, False)


@pytest.mark.parametrize(
    ("model", "width", "height", "tokens"),
    [
        ("gpt-4.1-mini", 1024, 1024, 1659),  # 1024 patches x 1.62, rounded up
        ("gpt-4.1-mini", 1800, 2400, 2353),  # 1452 patches (the guide's example) x 1.62
        ("gpt-4.1-nano", 1800, 2400, 3572),  # 1452 x 2.46
        ("o4-mini", 64, 64, 7),  # 4 patches x 1.72
    ],
)
def test_patch_rule_published_examples(model: str, width: int, height: int, tokens: int) -> None:
    rule = image_rule_for_model(model + "-2025-04-14")
    assert image_tokens(rule, png(width, height), "high") == (tokens, False)


def test_image_of_unknown_size_counts_the_upper_bound() -> None:
    counter = TokenCounter.for_model("gpt-4o")
    remote = Message.user(
        [ImagePart(image_url=ImageURL(url="https://example.com/a.png", detail="high"))]
    )
    assert counter.message_tokens(remote) == 3 + 1 + 85 + 8 * 170
    assert not counter.is_exact(remote)
    low = Message.user(
        [ImagePart(image_url=ImageURL(url="https://example.com/a.png", detail="low"))]
    )
    assert counter.message_tokens(low) == 3 + 1 + 85
    assert counter.is_exact(low)
    # An unknown (local) model: GPT-4o's rule, but never claimed exact.
    local = TokenCounter.for_encoding("o200k_base")
    assert local.message_tokens(low) == 3 + 1 + 85
    assert not local.is_exact(low)


def test_audio_is_an_estimate() -> None:
    rate, seconds = 16_000, 2
    pcm = b"\x00\x00" * rate * seconds
    header = (
        b"RIFF"
        + struct.pack("<I", 36 + len(pcm))
        + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16)
        + b"data"
        + struct.pack("<I", len(pcm))
    )
    wav = base64.b64encode(header + pcm).decode()
    message = Message.user([InputAudioPart(input_audio=InputAudio(data=wav, format="wav"))])
    counter = TokenCounter.for_model("gpt-4o")
    assert counter.message_tokens(message) == 3 + 1 + 20  # 10 tokens per second
    assert not counter.is_exact(message)


# --- rules and properties ----------------------------------------------------------------


@pytest.mark.parametrize("model", ["gpt-4o", "gpt-4", "gpt-5-mini", "o3", "gpt-3.5-turbo-instruct"])
def test_empty_request_is_reply_priming(model: str) -> None:
    assert count_tokens([], model=model) == 3


def test_special_token_text_counts_as_plain_text() -> None:
    counter = TokenCounter.for_model("gpt-4o")
    ids = counter.encode("<|endoftext|>")
    assert 199999 not in ids and len(ids) > 1
    assert counter.count("<|endoftext|>") == len(ids)
    message = Message.user("<|endoftext|> and <|endofprompt|>")
    assert count_tokens([message], model="gpt-4o") == 3 + 3 + 1 + counter.count(message.text)


def test_message_rules() -> None:
    c = TokenCounter.for_model("gpt-4o")
    n = c.count
    assert (
        c.message_tokens({"role": "user", "content": "hi", "name": "bob"})
        == 3 + 1 + n("hi") + n("bob") + 1
    )
    call = ToolCall(id="call_abc", function=FunctionCall(name="lookup", arguments='{"q": "x"}'))
    assistant = Message.assistant(tool_calls=[call, call])
    assert c.message_tokens(assistant) == 3 + 1 + 2 * (n("lookup") + n('{"q": "x"}') + 3)
    tool = Message.tool("42", tool_call_id="call_abc")
    assert c.message_tokens(tool) == 3 + c.count("tool") + n("42") + n("call_abc")
    assert not c.is_exact(tool)
    two_texts = Message.user([TextPart(text="ab"), TextPart(text="cd")])
    assert c.message_tokens(two_texts) == 3 + 1 + n("ab") + n("cd")
    assert not c.is_exact(two_texts)
    one_text = Message.user([TextPart(text="abcd")])
    assert c.message_tokens(one_text) == c.message_tokens(Message.user("abcd"))
    assert c.is_exact(one_text)
    refusal = Message.assistant(refusal="I can't help with that.")
    assert c.message_tokens(refusal) == 3 + 1 + n("I can't help with that.")
    assert not c.is_exact(refusal)


_roles = st.sampled_from(["system", "developer", "user", "assistant"])
_texts = st.text(max_size=200)
_names = st.none() | st.from_regex(r"[a-zA-Z0-9_-]{1,20}", fullmatch=True)


@st.composite
def _message_dicts(draw: st.DrawFn) -> dict[str, Any]:
    message: dict[str, Any] = {"role": draw(_roles), "content": draw(_texts)}
    name = draw(_names)
    if name is not None:
        message["name"] = name
    return message


@settings(max_examples=100, deadline=None)
@given(messages=st.lists(_message_dicts(), max_size=8), model=st.sampled_from(["gpt-4o", "gpt-4"]))
def test_request_is_sum_of_messages_plus_priming(
    messages: list[dict[str, Any]], model: str
) -> None:
    counter = TokenCounter.for_model(model)
    parts = [counter.message_tokens(m) for m in messages]
    as_objects = [Message.model_validate(m) for m in messages]
    assert count_tokens(messages, model=model) == 3 + sum(parts)
    assert count_tokens(as_objects, model=model) == 3 + sum(parts)
    for m, obj, part in zip(messages, as_objects, parts, strict=True):
        expected = 3 + counter.count(m["role"]) + counter.count(m["content"])
        if "name" in m:
            expected += counter.count(m["name"]) + 1
        assert part == expected == counter.message_tokens(obj)
        assert counter.is_exact(obj)


@settings(max_examples=100, deadline=None)
@given(text=st.text(max_size=500))
def test_count_is_length_of_encode(text: str) -> None:
    for counter in (
        TokenCounter.for_encoding("o200k_base"),
        TokenCounter.for_encoding("cl100k_base"),
    ):
        assert counter.count(text) == len(counter.encode(text))


def test_invalid_inputs() -> None:
    with pytest.raises(InvalidMessageError):
        count_tokens([{"role": "wizard", "content": "hi"}], model="gpt-4o")
    with pytest.raises(InvalidMessageError):
        count_tokens(["hello"], model="gpt-4o")  # type: ignore[list-item]
    with pytest.raises(InvalidMessageError, match="tool definition"):
        count_tokens([], model="gpt-4o", tools=[{"type": "function"}])


def test_tools_edge_cases() -> None:
    c = TokenCounter.for_model("gpt-4o")
    assert c.tools_tokens([]) == 0 and c.tools_tokens(None) == 0
    assert count_tokens([], model="gpt-4o", tools=[]) == 3
    minimal = [{"type": "function", "function": {"name": "ping"}}]
    assert c.tools_tokens(minimal) == 7 + c.count("ping:") + 12
    flat = {"name": "f", "parameters": {"type": "object", "properties": {"a": {"type": "object"}}}}
    nested = {
        "name": "f",
        "parameters": {
            "type": "object",
            "properties": {
                "a": {
                    "type": "object",
                    "properties": {"b": {"type": "string", "enum": ["x", "y"]}},
                },
            },
        },
    }
    assert c.tools_tokens([nested]) > c.tools_tokens([flat])
    # The GPT-3.5/GPT-4 constants are larger (func_init 10 vs 7).
    assert TokenCounter.for_model("gpt-4").tools_tokens(minimal) == 10 + c.count("ping:") + 12


def test_tools_rule_drops_one_trailing_period_of_descriptions() -> None:
    # The cookbook's rule counts "name:description" with the description's final "."
    # removed, for the function and for each property alike.
    c = TokenCounter.for_model("gpt-4o")

    def tool(fn_desc: str, prop_desc: str) -> list[dict[str, Any]]:
        prop = {"type": "string", "description": prop_desc}
        params = {"type": "object", "properties": {"q": prop}}
        return [{"type": "function", "function": {"name": "lookup", "description": fn_desc,
                                                  "parameters": params}}]

    base = c.tools_tokens(tool("Look a word up", "The word"))
    assert c.tools_tokens(tool("Look a word up.", "The word")) == base
    assert c.tools_tokens(tool("Look a word up", "The word.")) == base
    assert base == 7 + c.count("lookup:Look a word up") + 3 + 3 + c.count("q:string:The word") + 12
    # only one period goes, and only at the end
    assert c.tools_tokens(tool("Look a word up..", "The word")) > base
    assert c.tools_tokens(tool("Look. A word up", "The word")) > base


# --- model -> encoding ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "encoding"),
    [
        ("gpt-4o", "o200k_base"),
        ("gpt-4o-2024-08-06", "o200k_base"),
        ("gpt-4o-mini", "o200k_base"),
        ("chatgpt-4o-latest", "o200k_base"),
        ("gpt-4.1-nano", "o200k_base"),
        ("gpt-4.5-preview", "o200k_base"),
        ("gpt-5", "o200k_base"),
        ("gpt-5-mini-2025-08-07", "o200k_base"),
        ("o1", "o200k_base"),
        ("o1-mini", "o200k_base"),
        ("o3-mini-2025-01-31", "o200k_base"),
        ("o4-mini", "o200k_base"),
        ("ft:gpt-4o-mini:my-org::abc123", "o200k_base"),
        ("ft:gpt-4o-mini-2024-07-18:my-org:custom:abc123", "o200k_base"),
        ("gpt-4", "cl100k_base"),
        ("gpt-4-0613", "cl100k_base"),
        ("gpt-4-turbo", "cl100k_base"),
        ("gpt-4-turbo-2024-04-09", "cl100k_base"),
        ("gpt-3.5-turbo", "cl100k_base"),
        ("gpt-3.5-turbo-instruct", "cl100k_base"),
        ("ft:gpt-3.5-turbo-0125:org::id", "cl100k_base"),
        ("text-embedding-3-small", "cl100k_base"),
        ("text-embedding-ada-002", "cl100k_base"),
        ("davinci-002", "cl100k_base"),
        ("text-davinci-003", "p50k_base"),  # from tiktoken's own table
    ],
)
def test_encoding_for_model(model: str, encoding: str) -> None:
    assert encoding_for_model(model) == encoding


def test_unknown_model() -> None:
    with pytest.raises(UnknownModelError) as info:
        encoding_for_model("llama-3-8b-instruct")
    assert "encoding=" in str(info.value) and "register" in str(info.value)
    with pytest.raises(UnknownModelError):
        count_tokens([], model="llama-3-8b-instruct")
    assert (
        count_tokens(
            [{"role": "user", "content": "hi"}], model="llama-3-8b-instruct", encoding="cl100k_base"
        )
        == 3 + 3 + 1 + 1
    )


def test_registered_local_model_and_tokenizer() -> None:
    registry = ModelRegistry(include_builtins=False)
    registry.register(
        "my-local", context_window=4096, max_output_tokens=512, encoding="cl100k_base"
    )
    assert TokenCounter.for_model("my-local", registry=registry).encoding_name == "cl100k_base"

    class Words:
        def encode(self, text: str) -> list[int]:
            return [0] * len(text.split())

    register_encoding("test-words", Words())
    try:
        registry.register(
            "llama-local", context_window=8192, max_output_tokens=1024, encoding="test-words"
        )
        counter = TokenCounter.for_model("llama-local", registry=registry)
        assert counter.encoding_name == "test-words"
        # 3 per message + role "user" (1 word) + 3 words, then 3 for the reply.
        assert counter.request_tokens([Message.user("one two three")]) == 3 + 1 + 3 + 3
    finally:
        unregister_encoding("test-words")


def test_counter_is_cached_and_immutable() -> None:
    a = TokenCounter.for_model("gpt-4o")
    assert TokenCounter.for_model("gpt-4o-2024-11-20") is a
    assert TokenCounter.for_model("gpt-4o-mini") is not a  # different image rule
    assert TokenCounter.for_model("gpt-4o", encoding="cl100k_base").encoding_name == "cl100k_base"
    with pytest.raises(AttributeError):
        a.encoding_name = "cl100k_base"
    assert "o200k_base" in repr(a)


def test_public_names() -> None:
    for name in ("count_tokens", "TokenCounter", "encoding_for_model"):
        assert name in convo.__all__
