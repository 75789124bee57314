"""Chat rendering: convo messages as the OpenAI chat wire format, per server profile.

A stored conversation goes to ``/v1/chat/completions`` as a list of message
dicts. "OpenAI-compatible" servers differ in what they accept; those
differences live in a :class:`ChatProfile` of capability flags, never in
``if provider == ...`` branches. :func:`render_chat` is a family of small pure
``_map_*`` functions, one per role, exhaustive over :data:`~convo.Role`.

What a profile changes when a capability is missing (decisions, documented
once here):

* ``developer_role="system"``: developer messages go out as ``system``.
* ``supports_name=False``: ``name`` is dropped. Content is never rewritten to
  carry it; callers who need speaker labels put them in the content.
* ``supports_content_parts=False``: a part list that holds only text (and
  refusal parts, on assistant messages) becomes one string, the parts joined
  with ``"\\n"`` (what vLLM does). Lists with images or audio stay lists: that
  is the server's multimodal business, not a formatting choice.
* ``supports_refusal_field=False``: an assistant refusal becomes the content
  when there is no content (a refusal *is* what the assistant said).
* ``supports_tool_role=False``: tool calls are written into the assistant's
  content as ``Tool call: name({...})`` lines and tool results go out as user
  messages ``Tool result (name): ...``, the same text the ``transcript``
  completion template uses.

``tool`` messages never carry ``name`` on the wire: OpenAI's schema has no
such field there and rejects it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any, Literal, assert_never, get_args

from .._exceptions import ConfigurationError
from .._messages import (
    ContentPart,
    ImagePart,
    InputAudioPart,
    Message,
    RefusalPart,
    TextPart,
    ToolCall,
)
from .._records import WireText

__all__ = ["OPENAI", "ChatProfile", "render_chat"]

DeveloperRole = Literal["developer", "system"]
MaxTokensParam = Literal["max_tokens", "max_completion_tokens"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ChatProfile:
    """What an OpenAI-compatible chat server accepts.

    Use a preset and override what differs::

        ChatProfile.openai()
        ChatProfile.compatible(supports_name=True)

    Attributes:
        developer_role: the role developer messages go out as (servers that do
            not know ``developer`` get ``system``).
        supports_name: whether messages may carry ``name`` (else it is dropped).
        supports_content_parts: whether content may be a list of parts (else
            text-only part lists are joined into one string).
        supports_tool_role: whether ``tool`` messages and assistant
            ``tool_calls`` are understood (else both are written as text).
        supports_refusal_field: whether assistant messages may carry ``refusal``.
        max_tokens_param: the request parameter that caps the reply length.
        supports_stream_usage: whether ``stream_options: {"include_usage": true}``
            is understood.
    """

    developer_role: DeveloperRole = "developer"
    supports_name: bool = True
    supports_content_parts: bool = True
    supports_tool_role: bool = True
    supports_refusal_field: bool = True
    max_tokens_param: MaxTokensParam = "max_completion_tokens"
    supports_stream_usage: bool = True

    def __post_init__(self) -> None:
        # A dataclass does not check Literal values; a typo here would
        # otherwise surface as a 400 from some server much later.
        for attr, allowed in (
            ("developer_role", get_args(DeveloperRole)),
            ("max_tokens_param", get_args(MaxTokensParam)),
        ):
            value = getattr(self, attr)
            if value not in allowed:
                raise ConfigurationError(
                    f"ChatProfile.{attr} must be one of {', '.join(allowed)} (got {value!r})"
                )
        for f in fields(self):
            if f.name.startswith("supports_") and not isinstance(getattr(self, f.name), bool):
                raise ConfigurationError(f"ChatProfile.{f.name} must be a bool")

    @classmethod
    def openai(cls, **overrides: Any) -> ChatProfile:
        """OpenAI's own API: developer role, names, content parts, refusals, stream usage."""
        return cls(**overrides)

    @classmethod
    def compatible(cls, **overrides: Any) -> ChatProfile:
        """A conservative profile for vLLM, llama.cpp, Ollama, LM Studio and the like.

        ``system`` instead of ``developer``, no names, string content, no
        ``refusal`` field, ``max_tokens``, no stream usage. Tool messages are
        kept: all of these servers take them (their chat templates render them).
        """
        base: dict[str, Any] = {
            "developer_role": "system",
            "supports_name": False,
            "supports_content_parts": False,
            "supports_tool_role": True,
            "supports_refusal_field": False,
            "max_tokens_param": "max_tokens",
            "supports_stream_usage": False,
        }
        return cls(**{**base, **overrides})


OPENAI = ChatProfile.openai()


def render_chat(messages: Sequence[Message], profile: ChatProfile = OPENAI) -> list[dict[str, Any]]:
    """The messages as OpenAI chat message dicts, shaped for ``profile``.

    Only wire fields are written (no ``metadata``, no store identity), unset
    fields are left out, and every dict is new (callers may modify them).

    Args:
        messages: messages in order; :class:`~convo.StoredMessage` values work too.
        profile: what the server accepts; OpenAI's API by default.

    Returns:
        One dict per message, in order.
    """
    tool_names: dict[str, str] | None = None
    if not profile.supports_tool_role:
        tool_names = tool_call_names(messages)
    out: list[dict[str, Any]] = []
    for m in messages:
        if type(m) is WireText:  # type: ignore[comparison-overlap]
            # (internal) a plain system, user or assistant text of a turn's lean
            # read (see convo._store.rows.lean_messages), written as below
            out.append({"role": m.role, "content": m.content})
            continue
        # the fields read from the model's __dict__: an attribute of a pydantic model
        # goes through its __getattr__ hook, several times slower
        fields = m.__dict__
        role, content = fields["role"], fields["content"]
        if (
            role in _PLAIN_ROLES
            and type(content) is str
            and fields["name"] is None
            and fields["tool_calls"] is None
            and fields["refusal"] is None
        ):
            # plain text from a system, user or assistant message: what _map_message
            # writes for it under every profile, without the dispatch
            out.append({"role": role, "content": content})
        else:
            out.append(_map_message(m, profile, tool_names))
    return out


_PLAIN_ROLES = frozenset(("system", "user", "assistant"))


def _map_message(
    m: Message, profile: ChatProfile, tool_names: dict[str, str] | None
) -> dict[str, Any]:
    role = m.role
    if role == "system":
        return _map_instructions(m, "system", profile)
    elif role == "developer":
        return _map_instructions(m, profile.developer_role, profile)
    elif role == "user":
        return _map_user(m, profile)
    elif role == "assistant":
        return _map_assistant(m, profile)
    elif role == "tool":
        return _map_tool(m, profile, tool_names)
    else:
        assert_never(role)


def _map_instructions(m: Message, role: str, profile: ChatProfile) -> dict[str, Any]:
    out: dict[str, Any] = {"role": role, "content": _map_content(m.content, profile)}
    if m.name is not None and profile.supports_name:
        out["name"] = m.name
    return out


def _map_user(m: Message, profile: ChatProfile) -> dict[str, Any]:
    out: dict[str, Any] = {"role": "user", "content": _map_content(m.content, profile)}
    if m.name is not None and profile.supports_name:
        out["name"] = m.name
    return out


def _map_assistant(m: Message, profile: ChatProfile) -> dict[str, Any]:
    out: dict[str, Any] = {"role": "assistant"}
    content: str | list[dict[str, Any]] | None = (
        None if m.content is None else _map_content(m.content, profile)
    )
    if m.refusal is not None and not profile.supports_refusal_field and content is None:
        content = m.refusal
    if m.tool_calls and not profile.supports_tool_role:
        calls = "\n".join(tool_call_text(c) for c in m.tool_calls)
        text = content if isinstance(content, str) else _content_text(m.content)
        content = f"{text}\n{calls}" if text else calls
    if content is not None:
        out["content"] = content
    if m.refusal is not None and profile.supports_refusal_field:
        out["refusal"] = m.refusal
    if m.name is not None and profile.supports_name:
        out["name"] = m.name
    if m.tool_calls and profile.supports_tool_role:
        out["tool_calls"] = [_map_tool_call(c) for c in m.tool_calls]
    return out


def _map_tool(
    m: Message, profile: ChatProfile, tool_names: dict[str, str] | None
) -> dict[str, Any]:
    call_id = m.tool_call_id or ""
    if profile.supports_tool_role:
        return {
            "role": "tool",
            "content": _map_content(m.content, profile),
            "tool_call_id": call_id,
        }
    name = m.name or (tool_names or {}).get(call_id) or call_id
    return {"role": "user", "content": tool_result_text(name, _content_text(m.content))}


def _map_tool_call(call: ToolCall) -> dict[str, Any]:
    return {
        "id": call.id,
        "type": call.type,
        "function": {"name": call.function.name, "arguments": call.function.arguments},
    }


def _map_content(
    content: str | list[ContentPart] | None, profile: ChatProfile
) -> str | list[dict[str, Any]]:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not profile.supports_content_parts and all(
        isinstance(p, (TextPart, RefusalPart)) for p in content
    ):
        return _content_text(content)
    return [map_part(p) for p in content]


def map_part(part: ContentPart) -> dict[str, Any]:
    """One content part as its OpenAI wire dict (unset fields left out)."""
    if isinstance(part, TextPart):
        return {"type": "text", "text": part.text}
    if isinstance(part, ImagePart):
        image: dict[str, Any] = {"url": part.image_url.url}
        if part.image_url.detail is not None:
            image["detail"] = part.image_url.detail
        return {"type": "image_url", "image_url": image}
    if isinstance(part, InputAudioPart):
        audio = part.input_audio
        return {"type": "input_audio", "input_audio": {"data": audio.data, "format": audio.format}}
    if isinstance(part, RefusalPart):
        return {"type": "refusal", "refusal": part.refusal}
    assert_never(part)


def _content_text(content: str | list[ContentPart] | None) -> str:
    # Text and refusal parts joined with "\n"; media parts are skipped here
    # (callers that cannot skip them check first).
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "\n".join(
        p.text if isinstance(p, TextPart) else p.refusal
        for p in content
        if isinstance(p, (TextPart, RefusalPart))
    )


# --- text forms of tool traffic, shared with the completion templates --------


def parse_arguments(arguments: str) -> Any:
    """A tool call's JSON ``arguments`` string as a value; the raw string if it is not JSON."""
    try:
        return json.loads(arguments)
    except ValueError:
        return arguments


def tool_call_text(call: ToolCall) -> str:
    """A tool call as one line of text: ``Tool call: name({"arg": 1})``."""
    args = json.dumps(parse_arguments(call.function.arguments), ensure_ascii=False)
    return f"Tool call: {call.function.name}({args})"


def tool_result_text(name: str, text: str) -> str:
    """A tool result as text: ``Tool result (name): ...``."""
    return f"Tool result ({name}): {text}"


def tool_call_names(messages: Sequence[Message]) -> dict[str, str]:
    """Tool call id -> function name, over the assistant messages in ``messages``."""
    names: dict[str, str] = {}
    for m in messages:
        if m.tool_calls:
            for call in m.tool_calls:
                names[call.id] = call.function.name
    return names
