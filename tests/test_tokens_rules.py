"""Token counting rules at their edges: fresh counters, the cache, every schema shape of
the tools rule, and the errors' words.

The tools rule is OpenAI cookbook's ("How to count tokens with tiktoken",
num_tokens_for_tools): per function func_init + "name:description"; per property
prop_key + "name:type:description"; enums enum_init + per item enum_item + the value;
func_end once. Expected numbers here are written from that rule, not from convo's code.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

import convo
from convo import InvalidMessageError, Message, TokenCounter, UnknownModelError, encoding_for_model
from convo._tokens.media import DEFAULT_IMAGE_RULE

O200K = TokenCounter.for_encoding("o200k_base")
C = O200K.count
FUNC_INIT, PROP_INIT, PROP_KEY, ENUM_INIT, ENUM_ITEM, FUNC_END = 7, 3, 3, -3, 3, 12


def tool(name: str = "f", description: Any = None, properties: Any = None) -> dict[str, Any]:
    fn: dict[str, Any] = {"name": name}
    if description is not None:
        fn["description"] = description
    if properties is not None:
        fn["parameters"] = {"type": "object", "properties": properties}
    return {"type": "function", "function": fn}


def fn_cost(name: str = "f", description: str = "") -> int:
    return FUNC_INIT + C(f"{name}:{description}")


# --- counters -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("encoding", "func_init"), [("o200k_base", 7), ("cl100k_base", 10)])
def test_a_fresh_counter_is_complete(encoding: str, func_init: int) -> None:
    counter = TokenCounter(encoding)
    shared = TokenCounter.for_encoding(encoding)
    assert counter is not shared
    assert (counter.encoding_name, counter.image_rule) == (encoding, DEFAULT_IMAGE_RULE)
    assert repr(counter) == f"TokenCounter(encoding_name={encoding!r})"
    assert counter.count("hello world") == shared.count("hello world") == len(counter.encode("hello world"))
    for role in ("system", "developer", "user", "assistant", "tool"):
        message = Message(role=role, content="hi") if role != "tool" else Message.tool("hi", tool_call_id="c")
        assert counter.message_tokens(message) == shared.message_tokens(message)
    assert counter.message_tokens(Message.user("hi")) == 3 + counter.count("user") + counter.count("hi")
    assert counter.tools_tokens([tool()]) == func_init + counter.count("f:") + FUNC_END
    with pytest.raises(AttributeError, match="immutable"):
        counter.encoding_name = "x"  # type: ignore[misc]


def test_a_registered_encoding_counts_with_its_own_encode() -> None:
    class Chars:
        def encode(self, text: str) -> list[int]:
            return [ord(c) for c in text]

    convo.register_encoding("test_chars_fresh", Chars())
    counter = TokenCounter("test_chars_fresh")
    assert counter.count("abc") == 3
    assert counter.message_tokens(Message.user("abc")) == 3 + 4 + 3
    assert counter.tools_tokens([tool()]) == 10 + 2 + FUNC_END  # not o200k: the GPT-4 constants


def test_counters_are_shared_per_encoding_and_image_rule() -> None:
    class Chars:
        def encode(self, text: str) -> list[int]:
            return [ord(c) for c in text]

    name = f"test_chars_{uuid.uuid4().hex}"  # a name no earlier test cached
    convo.register_encoding(name, Chars())
    first = TokenCounter.for_encoding(name)
    assert TokenCounter.for_encoding(name) is first
    assert (first.encoding_name, first.image_rule, first.count("ab")) == (name, DEFAULT_IMAGE_RULE, 2)
    mini = TokenCounter.for_model("gpt-4o-mini", encoding=name)
    assert mini is TokenCounter.for_model("gpt-4o-mini", encoding=name)
    assert mini is not first and mini.image_rule.base == 2833 and mini.count("ab") == 2


@pytest.mark.parametrize(("model", "encoding"), [
    ("codex-mini-2099-01-01", "o200k_base"),
    ("text-embedding-3-small-v9", "cl100k_base"),
    ("davinci-002", "cl100k_base"),
])
def test_dated_names_resolve_through_convos_own_table(model: str, encoding: str) -> None:
    assert encoding_for_model(model) == encoding


def test_an_unknown_model_says_what_to_do() -> None:
    with pytest.raises(UnknownModelError) as err:
        encoding_for_model("my-local-model")
    assert str(err.value) == (
        "no tokenizer encoding is known for model 'my-local-model': pass encoding= "
        "(e.g. encoding='o200k_base'), or register the model with "
        "convo.models.register('my-local-model', context_window=..., max_output_tokens=..., "
        "encoding=...)")


def test_refusal_parts_are_counted() -> None:
    message = {"role": "assistant", "content": [{"type": "refusal", "refusal": "I can't help with that."}]}
    assert O200K.message_tokens(message) == 3 + C("assistant") + C("I can't help with that.")


def test_invalid_messages_and_tools_say_what_was_expected() -> None:
    with pytest.raises(InvalidMessageError) as err:
        O200K.message_tokens("hello")  # type: ignore[arg-type]
    assert str(err.value) == "invalid message: expected a Message or a dict, not str"
    with pytest.raises(InvalidMessageError) as err:
        O200K.tools_tokens(["lookup"])  # type: ignore[list-item]
    assert str(err.value) == ("invalid tool definition: expected {'type': 'function', 'function': "
                              "{'name': ..., 'description': ..., 'parameters': ...}}, got 'lookup'")


# --- the tools rule ---------------------------------------------------------------------------------


def test_every_function_adds_its_own_init() -> None:
    two = [tool("a", "First."), tool("b", "Second.")]
    assert O200K.tools_tokens(two) == fn_cost("a", "First") + fn_cost("b", "Second") + FUNC_END


def test_a_function_without_properties() -> None:
    assert O200K.tools_tokens([tool("f", "Go", properties={})]) == fn_cost("f", "Go") + FUNC_END
    assert O200K.tools_tokens([tool("f", "Go", properties=["q"])]) == fn_cost("f", "Go") + FUNC_END


@pytest.mark.parametrize(("schema", "text"), [
    ({"type": "string", "description": "The word."}, "q:string:The word"),
    ({"description": "Anything"}, "q::Anything"),
    ({"type": ["string", "null"]}, "q:string | null:"),
    (True, "q::"),  # a bare boolean schema: just the name
])
def test_one_property(schema: Any, text: str) -> None:
    expected = fn_cost() + PROP_INIT + PROP_KEY + C(text) + FUNC_END
    assert O200K.tools_tokens([tool(properties={"q": schema})]) == expected


def test_properties_after_a_bare_schema_are_counted() -> None:
    props = {"a": True, "b": {"type": "string"}}
    expected = fn_cost() + PROP_INIT + PROP_KEY + C("a::") + PROP_KEY + C("b:string:") + FUNC_END
    assert O200K.tools_tokens([tool(properties=props)]) == expected


def test_enums_count_their_json_values() -> None:
    props = {"unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
             "flag": {"type": "boolean", "enum": [True, 1.5]},
             "pick": {"enum": [{"name": "café"}]}}
    expected = (fn_cost() + PROP_INIT
                + PROP_KEY + ENUM_INIT + 2 * ENUM_ITEM + C("celsius") + C("fahrenheit") + C("unit:string:")
                + PROP_KEY + ENUM_INIT + 2 * ENUM_ITEM + C("true") + C("1.5") + C("flag:boolean:")
                + PROP_KEY + ENUM_INIT + ENUM_ITEM + C('{"name": "caf\\u00e9"}') + C("pick::")
                + FUNC_END)
    assert O200K.tools_tokens([tool(properties=props)]) == expected


def test_nested_objects_and_arrays_are_counted_by_the_same_rule() -> None:
    props = {
        "place": {"type": "object", "properties": {"city": {"type": "string"}, "zip": {"type": "string"}}},
        "tags": {"type": "array", "items": {"type": "object", "properties": {"name": {"type": "string"}},
                                            "enum": ["x", "y"]}},
        "plain": {"type": "array", "items": {"type": "string"}},
        "odd": {"type": "object", "properties": ["x"], "items": {"properties": ["y"]}},
    }
    expected = (fn_cost() + PROP_INIT
                + PROP_KEY + C("place:object:") + PROP_INIT + PROP_KEY + C("city:string:") + PROP_KEY + C("zip:string:")
                + PROP_KEY + C("tags:array:") + PROP_INIT + PROP_KEY + C("name:string:")
                + ENUM_INIT + 2 * ENUM_ITEM + C("x") + C("y")
                + PROP_KEY + C("plain:array:")
                + PROP_KEY + C("odd:object:")  # properties that are not a mapping: none
                + FUNC_END)
    assert O200K.tools_tokens([tool(properties=props)]) == expected


def test_a_description_that_is_not_text_is_counted_as_python_writes_it() -> None:
    # str(), as the cookbook's f-string does; only enum values are written as JSON
    assert O200K.tools_tokens([tool("f", description=False)]) == fn_cost("f", "False") + FUNC_END
    assert O200K.tools_tokens([tool("f", description=123456789)]) == fn_cost("f", "123456789") + FUNC_END
