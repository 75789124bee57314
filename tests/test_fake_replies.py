"""The pure parts of convo.testing: default replies, JSON schema defaults, stop
sequences, delta splitting and SSE chunk assembly (property-based where it counts)."""

from __future__ import annotations

import inspect
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from convo import testing
from convo._tokens.counter import TokenCounter
from convo.testing._replies import (
    ARGUMENT_FRAGMENT,
    apply_stop,
    default_chat_text,
    default_completion_text,
    schema_default,
    split_arguments,
    split_text,
)
from convo.testing._usage import chat_prompt_tokens
from convo.testing._wire import Choice, Meta, chat_chunks, completion_chunks

META = Meta("chatcmpl-x", 1, "m", "fp")


@given(st.text())
def test_split_text_restores_the_text(text: str) -> None:
    pieces = split_text(text)
    assert "".join(pieces) == text
    assert all(pieces)
    # A piece is one word with its leading whitespace (or whitespace alone at the end).
    assert all(len(p.split()) <= 1 for p in pieces)


@given(st.text())
def test_split_arguments_restores_the_text(text: str) -> None:
    pieces = split_arguments(text)
    assert "".join(pieces) == text
    assert all(0 < len(p) <= ARGUMENT_FRAGMENT for p in pieces)


@given(st.text(), st.lists(st.text(max_size=3), max_size=4))
def test_apply_stop_cuts_before_the_first_stop(text: str, stop: list[str]) -> None:
    cut, stopped = apply_stop(text, stop)
    assert text.startswith(cut)
    live = [s for s in stop if s]
    assert stopped == any(s in text for s in live)
    if stopped:
        # The cut ends where some stop sequence starts...
        assert any(text[len(cut) :].startswith(s) for s in live)
        # ...and none starts earlier.
        assert all(text.find(s) == -1 or text.find(s) >= len(cut) for s in live)
    else:
        assert cut == text


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("Hello", " You said: Hello"),
        ("System: Be brief.\n\nUser: What is 2+2?\n\nAssistant:", " You said: What is 2+2?"),
        ("<|im_start|>user\nhi there<|im_end|>\n<|im_start|>assistant\n", " You said: hi there"),
        (
            (
                "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nWhy?<|eot_id|>"
                "<|start_header_id|>assistant<|end_header_id|>\n\n"
            ),
            " You said: Why?",
        ),
        ("<s>[INST] Say hi [/INST]", " You said: Say hi"),
        ("<start_of_turn>user\nyo<end_of_turn>\n<start_of_turn>model\n", " You said: yo"),
        ("", " You said nothing."),
        ("User:\n\nAssistant:", " You said nothing."),
    ],
)
def test_default_completion_text(prompt: str, expected: str) -> None:
    assert default_completion_text(prompt) == expected


def test_default_chat_text() -> None:
    assert default_chat_text([{"role": "system", "content": "x"}]) == "You said nothing."
    parts = [{"type": "image_url", "image_url": {"url": "u"}}, {"type": "text", "text": " a "}]
    assert default_chat_text([{"role": "user", "content": parts}]) == "You said: a"


@pytest.mark.parametrize(
    ("schema", "expected"),
    [
        ({"type": "string"}, ""),
        ({"type": "string", "minLength": 3}, "xxx"),
        ({"type": "integer", "exclusiveMinimum": 4}, 5),
        ({"type": "number", "minimum": -3}, 0),
        ({"type": "integer", "minimum": 5, "maximum": 3}, 3),
        ({"type": "boolean"}, False),
        ({"type": "null"}, None),
        ({"const": "fixed"}, "fixed"),
        ({"type": "string", "default": "d"}, "d"),
        ({"anyOf": [{"type": "null"}, {"type": "integer"}]}, 0),
        ({"type": ["null", "array"], "items": {"type": "integer"}, "minItems": 2}, [0, 0]),
        (
            {
                "allOf": [
                    {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]},
                    {"properties": {"b": {"type": "boolean"}}, "required": ["b"]},
                ]
            },
            {"a": "", "b": False},
        ),
        (
            {
                "type": "object",
                "properties": {"x": {"$ref": "#/definitions/pt"}},
                "required": ["x"],
                "definitions": {"pt": {"properties": {"y": {"type": "number"}}, "required": ["y"]}},
            },
            {"x": {"y": 0}},
        ),
        ({"$ref": "#/$defs/missing"}, None),
        ({"type": "object", "properties": {"a": {"type": "string"}}}, {}),
    ],
)
def test_schema_default(schema: dict[str, Any], expected: Any) -> None:
    assert schema_default(schema, schema) == expected


def test_schema_default_terminates_on_recursive_schemas() -> None:
    schema = {"type": "object", "properties": {"me": {"$ref": "#"}}, "required": ["me"]}
    value = schema_default(schema, schema)
    depth = 0
    while isinstance(value, dict):
        value = value["me"]
        depth += 1
    assert value is None and depth > 5


def _sse(events: list[bytes]) -> list[dict[str, Any]]:
    assert events[-1] == b"data: [DONE]\n\n"
    out = []
    for event in events[:-1]:
        assert event.startswith(b"data: ") and event.endswith(b"\n\n")
        assert b"\n" not in event[:-2]  # one line per event
        out.append(json.loads(event[6:]))
    return out


choice_strategy = st.builds(
    Choice,
    content=st.one_of(st.none(), st.text()),
    finish_reason=st.sampled_from(["stop", "length", "tool_calls"]),
    tool_calls=st.lists(
        st.tuples(st.text(min_size=1), st.text(min_size=1), st.text()), max_size=3
    ).map(tuple),
    refusal=st.one_of(st.none(), st.text()),
)


@given(st.lists(choice_strategy, min_size=1, max_size=3), st.booleans(), st.booleans())
def test_chat_chunks_assemble_into_the_choices(
    choices: list[Choice], include_usage: bool, obfuscation: bool
) -> None:
    usage = {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}
    parts = _sse(
        chat_chunks(META, choices, usage, include_usage=include_usage, obfuscation=obfuscation)
    )
    if include_usage:
        *parts, last = parts
        assert last["choices"] == [] and last["usage"] == usage
        assert all(p["usage"] is None for p in parts)
    assembled: list[dict[str, Any]] = [
        {"content": None, "refusal": None, "calls": {}, "finish": None, "role": None}
        for _ in choices
    ]
    for part in parts:
        (choice,) = part["choices"]
        state = assembled[choice["index"]]
        assert state["finish"] is None  # nothing after the finish chunk
        delta = choice["delta"]
        if "role" in delta:
            assert state["role"] is None
            state["role"] = delta["role"]
        for key in ("content", "refusal"):
            if delta.get(key) is not None:
                state[key] = (state[key] or "") + delta[key]
        for call in delta.get("tool_calls", []):
            slot = state["calls"].setdefault(call["index"], ["", "", ""])
            if "id" in call:
                slot[0], slot[1] = call["id"], call["function"]["name"]
            slot[2] += call["function"]["arguments"]
        state["finish"] = choice["finish_reason"]
    for choice, state in zip(choices, assembled, strict=True):
        assert state["role"] == "assistant"
        assert (state["content"] or "") == (choice.content or "")
        assert (state["refusal"] or "") == (choice.refusal or "")
        calls = tuple(tuple(state["calls"][k]) for k in sorted(state["calls"]))
        assert calls == choice.tool_calls
        assert state["finish"] == choice.finish_reason


@given(st.lists(st.text(), min_size=1, max_size=3), st.booleans())
def test_completion_chunks_assemble_into_the_texts(texts: list[str], include_usage: bool) -> None:
    choices = [Choice(t, "stop") for t in texts]
    parts = _sse(completion_chunks(META, choices, {"total_tokens": 0}, include_usage=include_usage))
    if include_usage:
        parts = parts[:-1]
    got = [""] * len(texts)
    finishes: list[str | None] = [None] * len(texts)
    for part in parts:
        (choice,) = part["choices"]
        assert finishes[choice["index"]] is None
        got[choice["index"]] += choice["text"]
        finishes[choice["index"]] = choice["finish_reason"]
    assert got == texts
    assert finishes == ["stop"] * len(texts)


def test_prompt_tokens_use_convo_counting_and_a_plain_rule_for_the_rest() -> None:
    counter = TokenCounter.for_encoding("o200k_base")
    plain = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    assert chat_prompt_tokens(counter, plain, None) == counter.request_tokens(plain)
    # The deprecated "function" role is valid for OpenAI but not a convo Message.
    legacy = [{"role": "function", "name": "f", "content": "42"}, {"role": "user", "content": "hi"}]
    expected = 3 + sum(3 + counter.count(m["role"]) + counter.count(m["content"]) for m in legacy)
    assert chat_prompt_tokens(counter, legacy, None) == expected


def test_public_api_is_sorted_complete_and_documented() -> None:
    assert testing.__all__ == sorted(testing.__all__)
    defined = {
        name
        for name, value in vars(testing).items()
        if not name.startswith("_") and getattr(value, "__module__", "").startswith("convo.testing")
    }
    assert defined <= set(testing.__all__)
    for name in testing.__all__:
        obj = getattr(testing, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert inspect.getdoc(obj), name
        if inspect.isclass(obj):
            for attr, member in vars(obj).items():
                if not attr.startswith("_") and (callable(member) or isinstance(member, property)):
                    assert inspect.getdoc(member), f"{name}.{attr}"
