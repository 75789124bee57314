"""Message values: OpenAI's validation rules, lossless JSON round trips, typed errors."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from convo import InvalidMessageError, Message, ToolCall, dump_messages, load_messages
from convo._messages import FunctionCall, parse_message


def _all_kinds() -> list[Message]:
    call = ToolCall(id="call_1", function=FunctionCall(name="get_weather", arguments='{"city": "Paris"}'))
    return [
        Message.system("You are terse.", name="policy"),
        Message.developer("Answer in French."),
        Message.user(
            [
                {"type": "text", "text": "What is in this picture?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"}},
                {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
            ],
            name="ann",
        ),
        Message.assistant(tool_calls=[call]),
        Message.tool("18°C, clear", tool_call_id="call_1"),
        Message.assistant("Il fait 18 °C.", metadata={"rating": 5, "tags": ["weather"], "nested": {"ok": True}}),
        Message.assistant(refusal="I can't help with that."),
        Message.assistant([{"type": "refusal", "refusal": "no"}]),
    ]


def test_json_round_trip_of_a_list_is_lossless() -> None:
    msgs = _all_kinds()
    text = dump_messages(msgs)
    assert load_messages(text) == msgs
    assert load_messages(json.loads(text)) == msgs


def test_wire_form_leaves_out_unset_fields_and_metadata() -> None:
    assert Message.user("hi", metadata={"x": 1}).to_openai() == {"role": "user", "content": "hi"}
    wire = _all_kinds()[3].to_openai()
    assert wire == {
        "role": "assistant",
        "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}],
    }


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"role": "robot", "content": "x"}, "unknown role 'robot'"),
        ({"role": "tool", "content": "x"}, "tool_call_id"),
        ({"role": "tool", "tool_call_id": "c"}, "tool message needs content"),
        ({"role": "assistant"}, "content, tool_calls or a refusal"),
        ({"role": "user"}, "user message needs content"),
        ({"role": "user", "content": "x", "metadata": {"when": object()}}, "metadata.when"),
        ({"role": "user", "content": "x", "tool_call_id": "c"}, "only tool messages"),
        ({"role": "user", "content": "x", "tool_calls": []}, "only assistant messages"),
        ({"role": "system", "content": [{"type": "image_url", "image_url": {"url": "u"}}]}, "only allowed in user"),
        ({"role": "user", "content": [{"type": "video", "video": {}}]}, "content"),
        ({"role": "user", "content": "x", "colour": "red"}, "colour"),
    ],
)
def test_invalid_messages_are_typed_errors_that_say_why(data: dict, needle: str) -> None:
    with pytest.raises(InvalidMessageError) as err:
        parse_message(data)
    assert needle in str(err.value)
    assert isinstance(err.value, ValueError)
    with pytest.raises(ValidationError):
        Message.model_validate(data)


def test_load_messages_reports_bad_json() -> None:
    with pytest.raises(InvalidMessageError):
        load_messages('[{"role": "user", "content": "x"}, {"role": "nobody"}]')
    with pytest.raises(InvalidMessageError):
        load_messages("not json")


def test_messages_are_immutable_values() -> None:
    m = Message.user("hi")
    with pytest.raises(ValidationError):
        m.content = "changed"  # type: ignore[misc]
    assert m == Message(role="user", content="hi")
    assert hash(m.role) == hash("user")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=10,
)


@given(
    content=st.text(),
    name=st.none() | st.text(min_size=1, max_size=20),
    metadata=st.dictionaries(st.text(max_size=8), json_values, max_size=4),
)
def test_round_trip_property(content: str, name: str | None, metadata: dict) -> None:
    msgs = [Message.user(content, name=name, metadata=metadata), Message.assistant(content or None, refusal=None if content else "r")]
    assert load_messages(dump_messages(msgs)) == msgs


def test_parse_messages_is_parse_message_of_each() -> None:
    """The batch form (one validation call for a list of dicts) gives the same messages
    and, for a bad one, the same error as parsing each."""
    from convo._messages import parse_message, parse_messages

    good = [{"role": "user", "content": "a"}, {"role": "assistant", "content": None,
             "refusal": "no"}, {"role": "tool", "content": "1", "tool_call_id": "c"}]
    assert parse_messages(good) == [parse_message(m) for m in good]
    assert parse_messages(iter(good)) == [parse_message(m) for m in good]
    for bad in ({"role": "robot", "content": "x"}, {"role": "user"}, {"role": "tool", "content": "x"},
                {"role": "user", "content": "x", "extra": 1}):
        with pytest.raises(InvalidMessageError) as one:
            parse_message(bad)
        with pytest.raises(InvalidMessageError) as many:
            parse_messages([good[0], bad])
        assert str(many.value) == str(one.value)


@given(
    role=st.sampled_from(["system", "developer", "user", "assistant", "tool", "robot", "User"]),
    content=st.one_of(st.text(), st.none(), st.integers(), st.lists(st.text(), max_size=2)),
    extra=st.sampled_from([{}, {"name": "n"}, {"metadata": {}}, {"tool_call_id": "c"}]),
)
def test_plain_dicts_skip_validation_but_not_its_result(role: object, content: object,
                                                         extra: dict[str, object]) -> None:
    """The fast path for ``{"role": ..., "content": "text"}`` builds exactly what
    validation builds (value, fields set, dump), and every other dict is validated."""
    from convo._messages import _plain, parse_message

    value = {"role": role, "content": content, **extra}
    try:
        validated = Message.model_validate(value)
    except ValidationError:
        validated = None
    fast = _plain(value)
    if fast is None:
        assert not (not extra and role in ("system", "developer", "user", "assistant")
                    and type(content) is str)
    else:
        assert validated is not None
        assert fast == validated and fast.__dict__ == validated.__dict__
        assert fast.model_fields_set == validated.model_fields_set
        assert fast.model_dump(exclude_unset=True) == validated.model_dump(exclude_unset=True)
        assert repr(fast) == repr(validated) and hash(fast.role) == hash(validated.role)
    if validated is None:
        with pytest.raises(InvalidMessageError):
            parse_message(value)
    else:
        assert parse_message(value) == validated
