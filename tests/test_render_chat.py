"""The chat renderer: convo messages as OpenAI wire dicts, per server profile."""

from __future__ import annotations

import dataclasses
from datetime import datetime

import pytest

from convo import (
    ChatProfile,
    ConfigurationError,
    FunctionCall,
    ImagePart,
    ImageURL,
    InputAudio,
    InputAudioPart,
    Message,
    RefusalPart,
    TextPart,
    ToolCall,
    render_chat,
)
from convo._records import StoredMessage

CALL = ToolCall(
    id="call_1", function=FunctionCall(name="get_weather", arguments='{"city":"Paris"}')
)

ALL_ROLES = [
    Message.system("Be brief.", name="policy", metadata={"source": "config"}),
    Message.developer("Answer in French."),
    Message.user("Hi, I'm Alice.", name="alice"),
    Message.user(
        [
            TextPart(text="What is in this picture?"),
            ImagePart(image_url=ImageURL(url="https://example.com/cat.png", detail="low")),
            InputAudioPart(input_audio=InputAudio(data="UklGRg==", format="wav")),
        ]
    ),
    Message.user([TextPart(text="Line one."), TextPart(text="Line two.")]),
    Message.assistant("Let me check.", tool_calls=[CALL], name="bot"),
    Message.tool("18°C", tool_call_id="call_1"),
    Message.assistant([TextPart(text="Il fait 18°C.")]),
    Message.assistant(refusal="I can't help with that."),
    Message.assistant([RefusalPart(refusal="Non.")]),
]


def test_openai_profile_is_the_wire_format() -> None:
    assert render_chat(ALL_ROLES) == render_chat(ALL_ROLES, ChatProfile.openai())
    assert render_chat(ALL_ROLES) == [
        {"role": "system", "content": "Be brief.", "name": "policy"},
        {"role": "developer", "content": "Answer in French."},
        {"role": "user", "content": "Hi, I'm Alice.", "name": "alice"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in this picture?"},
                {
                    "type": "image_url",
                    "image_url": {"url": "https://example.com/cat.png", "detail": "low"},
                },
                {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Line one."},
                {"type": "text", "text": "Line two."},
            ],
        },
        {
            "role": "assistant",
            "content": "Let me check.",
            "name": "bot",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                }
            ],
        },
        {"role": "tool", "content": "18°C", "tool_call_id": "call_1"},
        {"role": "assistant", "content": [{"type": "text", "text": "Il fait 18°C."}]},
        {"role": "assistant", "refusal": "I can't help with that."},
        {"role": "assistant", "content": [{"type": "refusal", "refusal": "Non."}]},
    ]


def test_openai_profile_agrees_with_message_to_openai() -> None:
    # Message.to_openai (pydantic's dump) is the slow reference; render_chat maps by hand.
    assert render_chat(ALL_ROLES) == [m.to_openai() for m in ALL_ROLES]


def test_compatible_profile_is_conservative() -> None:
    assert render_chat(ALL_ROLES, ChatProfile.compatible()) == [
        {"role": "system", "content": "Be brief."},
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": "Hi, I'm Alice."},
        {
            # media stays a part list: flattening it would lose the image
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in this picture?"},
                {
                    "type": "image_url",
                    "image_url": {"url": "https://example.com/cat.png", "detail": "low"},
                },
                {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
            ],
        },
        {"role": "user", "content": "Line one.\nLine two."},
        {
            "role": "assistant",
            "content": "Let me check.",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                }
            ],
        },
        {"role": "tool", "content": "18°C", "tool_call_id": "call_1"},
        {"role": "assistant", "content": "Il fait 18°C."},
        {"role": "assistant", "content": "I can't help with that."},
        {"role": "assistant", "content": "Non."},
    ]


def test_profile_without_tool_role_writes_tool_traffic_as_text() -> None:
    profile = ChatProfile.compatible(supports_tool_role=False)
    only_calls = Message.assistant(tool_calls=[CALL])
    refused_call = Message.assistant(refusal="Sorry.", tool_calls=[CALL])
    out = render_chat([*ALL_ROLES[5:7], only_calls, refused_call], profile)
    assert out == [
        {
            "role": "assistant",
            "content": 'Let me check.\nTool call: get_weather({"city": "Paris"})',
        },
        {"role": "user", "content": "Tool result (get_weather): 18°C"},
        {"role": "assistant", "content": 'Tool call: get_weather({"city": "Paris"})'},
        {"role": "assistant", "content": 'Sorry.\nTool call: get_weather({"city": "Paris"})'},
    ]
    # A tool result whose call is not in the list is labelled with its call id.
    assert render_chat([ALL_ROLES[6]], profile) == [
        {"role": "user", "content": "Tool result (call_1): 18°C"}
    ]


def test_each_flag_alone() -> None:
    system_dev = ChatProfile.openai(developer_role="system")
    assert render_chat([ALL_ROLES[1]], system_dev) == [
        {"role": "system", "content": "Answer in French."}
    ]
    no_names = ChatProfile.openai(supports_name=False)
    assert [d.get("name") for d in render_chat(ALL_ROLES, no_names)] == [None] * len(ALL_ROLES)
    strings = ChatProfile.openai(supports_content_parts=False)
    assert render_chat([ALL_ROLES[4]], strings) == [
        {"role": "user", "content": "Line one.\nLine two."}
    ]
    no_refusal = ChatProfile.openai(supports_refusal_field=False)
    both = Message.assistant("Partial answer.", refusal="Rest refused.")
    assert render_chat([ALL_ROLES[8], both], no_refusal) == [
        {"role": "assistant", "content": "I can't help with that."},
        {"role": "assistant", "content": "Partial answer."},
    ]
    assert render_chat([both]) == [
        {"role": "assistant", "content": "Partial answer.", "refusal": "Rest refused."}
    ]


def test_stored_messages_render_without_identity() -> None:
    stored = [
        StoredMessage(
            **m.model_dump(exclude_none=True),
            id=i,
            conversation_id="conv",
            seq=i,
            created_at=datetime(2024, 1, 1),
            pinned=True,
            idempotency_key="key",
        )
        for i, m in enumerate(ALL_ROLES, 1)
    ]
    for profile in (ChatProfile.openai(), ChatProfile.compatible()):
        assert render_chat(stored, profile) == render_chat(ALL_ROLES, profile)


def test_results_are_fresh_dicts() -> None:
    first = render_chat(ALL_ROLES)
    first[5]["tool_calls"][0]["function"]["name"] = "changed"
    first[3]["content"][1]["image_url"]["url"] = "changed"
    assert render_chat(ALL_ROLES)[5]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert render_chat(ALL_ROLES)[3]["content"][1]["image_url"]["url"].endswith("cat.png")


def test_profiles() -> None:
    openai = ChatProfile.openai()
    assert (openai.developer_role, openai.max_tokens_param, openai.supports_stream_usage) == (
        "developer",
        "max_completion_tokens",
        True,
    )
    compatible = ChatProfile.compatible()
    assert dataclasses.asdict(compatible) == {
        "developer_role": "system",
        "supports_name": False,
        "supports_content_parts": False,
        "supports_tool_role": True,
        "supports_refusal_field": False,
        "max_tokens_param": "max_tokens",
        "supports_stream_usage": False,
    }
    assert ChatProfile.compatible(supports_stream_usage=True).supports_stream_usage is True
    assert compatible == ChatProfile.compatible()  # values, hashable, usable as cache keys
    assert hash(compatible) == hash(ChatProfile.compatible())
    with pytest.raises(dataclasses.FrozenInstanceError):
        compatible.supports_name = True  # type: ignore[misc]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("developer_role", "assistant"),
        ("max_tokens_param", "max_output_tokens"),
        ("supports_name", "yes"),
    ],
)
def test_profile_rejects_bad_values(field: str, value: object) -> None:
    with pytest.raises(ConfigurationError, match=f"ChatProfile.{field}"):
        ChatProfile(**{field: value})  # type: ignore[arg-type]


def test_plain_text_messages_render_as_their_mapping_under_every_profile() -> None:
    """render_chat writes plain text system / user / assistant messages without the
    per-role mapping: the dicts must be the mapping's, whatever the profile."""
    from convo._render.chat import _map_message

    messages = [
        Message.system("Be brief."),
        Message.developer("Use metric units."),
        Message.user("Hi"),
        Message.assistant("Hello"),
        Message.user("Who?", name="bob"),
        Message.assistant(None, refusal="No."),
        Message.assistant("", tool_calls=[CALL]),
        Message.tool("22C", tool_call_id="call_1"),
        Message.user([TextPart(text="a"), TextPart(text="b")]),
    ]
    for profile in (ChatProfile.openai(), ChatProfile.compatible(),
                    ChatProfile.compatible(supports_name=False, developer_role="system")):
        names = None if profile.supports_tool_role else {"call_1": "get_weather"}
        assert render_chat(messages, profile) == [
            _map_message(m, profile, names) for m in messages
        ]
