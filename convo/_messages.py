"""Message values: pure, immutable pydantic models in OpenAI's chat format.

A :class:`Message` knows nothing about databases; identity (id, sequence
number, timestamps) belongs to :class:`~convo.StoredMessage`, which the store
returns. Validation follows OpenAI's spec (``ChatCompletionRequestMessage``):

* ``role`` is one of ``system``, ``developer``, ``user``, ``assistant``, ``tool``;
* a ``tool`` message needs ``tool_call_id`` and content;
* an ``assistant`` message needs content, tool calls or a refusal;
* ``system``, ``developer`` and ``user`` messages need content;
* ``tool_calls`` and ``refusal`` only on assistant messages, ``tool_call_id``
  only on tool messages;
* ``metadata`` holds JSON values only (it is stored as JSON).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Annotated, Any, Literal, TypeAlias

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from ._exceptions import InvalidMessageError

__all__ = [
    "ContentPart",
    "FunctionCall",
    "ImagePart",
    "ImageURL",
    "InputAudio",
    "InputAudioPart",
    "Message",
    "RefusalPart",
    "Role",
    "TextPart",
    "ToolCall",
    "dump_messages",
    "load_messages",
    "parse_message",
    "parse_messages",
]

Role: TypeAlias = Literal["system", "developer", "user", "assistant", "tool"]
ROLES: tuple[Role, ...] = ("system", "developer", "user", "assistant", "tool")


class _Value(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TextPart(_Value):
    """A text content part: ``{"type": "text", "text": ...}``."""

    type: Literal["text"] = "text"
    text: str


class ImageURL(_Value):
    url: str
    detail: Literal["auto", "low", "high"] | None = None


class ImagePart(_Value):
    """An image content part: ``{"type": "image_url", "image_url": {"url": ..., "detail": ...}}``."""

    type: Literal["image_url"] = "image_url"
    image_url: ImageURL


class InputAudio(_Value):
    data: str
    format: Literal["wav", "mp3"]


class InputAudioPart(_Value):
    """An audio content part: ``{"type": "input_audio", "input_audio": {"data", "format"}}``."""

    type: Literal["input_audio"] = "input_audio"
    input_audio: InputAudio


class RefusalPart(_Value):
    """A refusal content part (assistant messages only)."""

    type: Literal["refusal"] = "refusal"
    refusal: str


ContentPart: TypeAlias = Annotated[
    TextPart | ImagePart | InputAudioPart | RefusalPart, Field(discriminator="type")
]


class FunctionCall(_Value):
    """The function a tool call invokes; ``arguments`` is a JSON string, as on the wire."""

    name: str
    arguments: str


class ToolCall(_Value):
    """One tool call of an assistant message."""

    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(BaseModel):
    """One chat message, a pure value.

    Build with the constructor or the role helpers::

        Message(role="user", content="Hello")
        Message.user("Hello")
        Message.assistant(tool_calls=[ToolCall(id="call_1", function=FunctionCall(name="f", arguments="{}"))])
        Message.tool("42", tool_call_id="call_1")

    Invalid combinations raise ``pydantic.ValidationError`` with the rule that
    was broken in its text.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    role: Role
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    refusal: str | None = None
    tool_call_id: str | None = None
    metadata: dict[str, JsonValue] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _check_role(cls, data: Any) -> Any:
        # Say which roles exist instead of pydantic's generic literal error.
        if isinstance(data, dict) and "role" in data and data["role"] not in ROLES:
            raise ValueError(
                f"unknown role {data['role']!r}: expected one of {', '.join(ROLES)}"
            )
        return data

    @model_validator(mode="after")
    def _check_rules(self) -> Message:
        role = self.role
        if self.tool_calls is not None and role != "assistant":
            raise ValueError(f"only assistant messages may have tool_calls (role is {role!r})")
        if self.refusal is not None and role != "assistant":
            raise ValueError(f"only assistant messages may have a refusal (role is {role!r})")
        if self.tool_call_id is not None and role != "tool":
            raise ValueError(f"only tool messages may have a tool_call_id (role is {role!r})")
        if role == "tool":
            if not self.tool_call_id:
                raise ValueError("a tool message needs the tool_call_id of the call it answers")
            if self.content is None:
                raise ValueError("a tool message needs content")
        elif role == "assistant":
            if self.content is None and not self.tool_calls and self.refusal is None:
                raise ValueError("an assistant message needs content, tool_calls or a refusal")
        elif self.content is None:
            raise ValueError(f"a {role} message needs content")
        if isinstance(self.content, list):
            for part in self.content:
                if isinstance(part, RefusalPart) and role != "assistant":
                    raise ValueError("refusal content parts are only allowed in assistant messages")
                if isinstance(part, (ImagePart, InputAudioPart)) and role != "user":
                    raise ValueError(f"{part.type} content parts are only allowed in user messages")
        return self

    # -- convenience constructors ---------------------------------------------

    @classmethod
    def system(cls, content: str, **kw: Any) -> Message:
        return cls(role="system", content=content, **kw)

    @classmethod
    def developer(cls, content: str, **kw: Any) -> Message:
        return cls(role="developer", content=content, **kw)

    @classmethod
    def user(cls, content: str | list[ContentPart], **kw: Any) -> Message:
        return cls(role="user", content=content, **kw)

    @classmethod
    def assistant(
        cls,
        content: str | list[ContentPart] | None = None,
        *,
        tool_calls: Sequence[ToolCall] | None = None,
        **kw: Any,
    ) -> Message:
        return cls(
            role="assistant",
            content=content,
            tool_calls=list(tool_calls) if tool_calls is not None else None,
            **kw,
        )

    @classmethod
    def tool(cls, content: str | list[ContentPart], *, tool_call_id: str, **kw: Any) -> Message:
        return cls(role="tool", content=content, tool_call_id=tool_call_id, **kw)

    # -- views ------------------------------------------------------------------

    @property
    def text(self) -> str:
        """The text of the content: the string, or the text parts joined with no separator."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content if isinstance(p, TextPart))

    def to_openai(self) -> dict[str, Any]:
        """This message as an OpenAI chat message dict (no ``metadata``; unset fields left out)."""
        return self.model_dump(
            mode="json", exclude_none=True, exclude={"metadata"}, include=_WIRE_FIELDS
        )


_WIRE_FIELDS = {"role", "content", "name", "tool_calls", "refusal", "tool_call_id"}

_MESSAGE_LIST: TypeAdapter[list[Message]] = TypeAdapter(list[Message])
# what Message.model_validate runs, without its wrapper (the store's hot path)
_validate_message = Message.__pydantic_validator__.validate_python


_PLAIN_KEYS = frozenset(("role", "content"))
_PLAIN_ROLES = frozenset(("system", "developer", "user", "assistant"))
_PLAIN_SET = frozenset(("role", "content"))
_new_message = Message.__new__
# BaseModel's slots, set through their descriptors: object.__setattr__ looks each
# name up on the class first, which cost a third of building the message
_set_dict = BaseModel.__dict__["__dict__"].__set__
_set_fields = BaseModel.__dict__["__pydantic_fields_set__"].__set__
_set_extra = BaseModel.__dict__["__pydantic_extra__"].__set__
_set_private = BaseModel.__dict__["__pydantic_private__"].__set__


def _plain(value: dict[str, Any]) -> Message | None:
    """The message of the commonest dict, ``{"role": ..., "content": "text"}`` with a
    role other than ``tool``, built without a validation pass; None for anything else.

    Such a dict is valid whatever its text (the only rules it meets: a known role
    and content), and what validation would build is fixed: the role, the text,
    every other field at its default, ``role`` and ``content`` set. Bulk appends and
    imports are mostly such dicts, and validating them cost more than writing them;
    a test checks this value against validation's.
    """
    if value.keys() != _PLAIN_KEYS:
        return None
    role, content = value["role"], value["content"]
    if type(role) is not str or type(content) is not str or role not in _PLAIN_ROLES:
        return None
    message = _new_message(Message)
    _set_dict(message, {
        "role": role, "content": content, "name": None, "tool_calls": None, "refusal": None,
        "tool_call_id": None, "metadata": {},
    })
    _set_fields(message, set(_PLAIN_SET))
    _set_extra(message, None)
    _set_private(message, None)
    return message


def parse_message(value: Message | Mapping[str, Any]) -> Message:
    """A :class:`Message` from a message or a dict; raises :class:`InvalidMessageError`."""
    if type(value) is dict:  # the common case first (no ABC check, no copy needed)
        plain = _plain(value)
        if plain is not None:
            return plain
        try:
            return _validate_message(value)  # type: ignore[no-any-return]
        except ValidationError as exc:
            raise InvalidMessageError(_explain(exc)) from exc
    if isinstance(value, Message):
        return value
    if not isinstance(value, Mapping):
        raise InvalidMessageError(
            f"a message must be a Message or a dict, not {type(value).__name__}"
        )
    try:
        return Message.model_validate(dict(value))
    except ValidationError as exc:
        raise InvalidMessageError(_explain(exc)) from exc


def parse_messages(values: Iterable[Message | Mapping[str, Any]]) -> list[Message]:
    """:func:`parse_message` of each value (the same messages, the same errors).

    A list of plain dicts, what a bulk append or an import hands over, is
    built without validation when every dict is a plain text message (see
    :func:`_plain`), else validated in one call rather than one call a message;
    anything else, or a list that fails, goes message by message (so the error
    names the message).
    """
    if type(values) is list and all(type(v) is dict for v in values):
        plain: list[Message] = []
        for v in values:
            message = _plain(v)
            if message is None:
                break
            plain.append(message)
        else:
            return plain
        try:
            return _MESSAGE_LIST.validate_python(values)
        except ValidationError:
            pass
    return [parse_message(v) for v in values]


def load_messages(data: str | bytes | Iterable[Message | dict[str, Any]]) -> list[Message]:
    """A list of messages from JSON text or from dicts; raises :class:`InvalidMessageError`."""
    try:
        if isinstance(data, (str, bytes)):
            return _MESSAGE_LIST.validate_json(data)
        if isinstance(data, (Mapping, Message)) or not isinstance(data, Iterable):
            raise InvalidMessageError(
                f"expected JSON text or a list of messages, not {type(data).__name__}"
            )
        return [parse_message(m) for m in data]
    except ValidationError as exc:
        raise InvalidMessageError(_explain(exc)) from exc


def dump_messages(messages: Iterable[Message]) -> str:
    """JSON text of a list of messages; ``load_messages`` reads it back unchanged."""
    return _MESSAGE_LIST.dump_json(list(messages), exclude_none=True).decode()


def _explain(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(x) for x in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "invalid message: " + "; ".join(parts)
