"""Values the store returns: conversations, stored messages, summaries, runs.

Identity (ids, sequence numbers, timestamps) is a storage concern, so it lives
here and not on :class:`~convo.Message`. A :class:`StoredMessage` *is a*
``Message`` (it can go anywhere a message goes) with its identity and, for
model replies, what the server said about it.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Literal, TypeVar, final

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from ._messages import Message

__all__ = [
    "Conversation", "ReplyInfo", "Run", "RunPage", "RunStatus", "StoredMessage", "Summary",
    "WireText", "construct",
]

_M = TypeVar("_M", bound=BaseModel)


def construct(cls: type[_M], values: dict[str, Any], fields: set[str] | None = None) -> _M:
    """``cls.model_construct(**values)`` for values that name every field, ~5x faster.

    For values convo built from values already validated (rows the store wrote,
    a validated answer's fields): reading 50 messages is the context builder's
    hot path, and pydantic's ``model_construct`` (default handling, field-by-field
    copies) dominated it; it is even slower than validating when fields are left
    to their defaults. This sets exactly the attributes ``model_construct`` sets;
    the classes used here have no private attributes, extras or
    ``model_post_init`` (checked at import where they are used), and a test
    compares with validated values.

    ``fields``: the set of the keys of ``values``, shared by every row built with
    the same keys (a frozen model never changes its fields set in place; pydantic's
    ``model_copy`` copies it before adding to it).
    """
    obj = _new(cls)
    _set_dict(obj, values)
    _set_fields(obj, set(values) if fields is None else fields)
    _set_extra(obj, None)
    _set_private(obj, None)
    return obj


# BaseModel's slots, set through their descriptors (cheaper than object.__setattr__
# looking each name up); BaseModel defines no __new__ of its own
_new = object.__new__
_set_dict = BaseModel.__dict__["__dict__"].__set__
_set_fields = BaseModel.__dict__["__pydantic_fields_set__"].__set__
_set_extra = BaseModel.__dict__["__pydantic_extra__"].__set__
_set_private = BaseModel.__dict__["__pydantic_private__"].__set__
assert BaseModel.__new__ is object.__new__


class Conversation(BaseModel):
    """A stored conversation.

    ``parent_id`` / ``fork_seq``: a fork inherits its parent's messages with
    ``seq <= fork_seq`` (without copying them); its own messages continue at
    ``fork_seq + 1``. A *branch* is a fork made by regenerating or editing a
    turn (or by a replay): ``branch_kind`` says which, ``branch_of`` names
    the thread's root, and the root's ``current_branch_id`` the branch that
    is current.
    """

    model_config = ConfigDict(frozen=True)

    id: str
    title: str | None = None
    owner: str | None = None
    metadata: dict[str, JsonValue] = Field(default_factory=dict)
    created_at: datetime
    updated_at: datetime
    parent_id: str | None = None
    fork_seq: int | None = None
    last_seq: int = 0
    branch_kind: str | None = Field(
        default=None, description="'regenerate', 'edit', 'replay'... when this is a branch"
    )
    branch_of: str | None = Field(default=None, description="the thread this branches (its root)")
    current_branch_id: str | None = Field(
        default=None, description="on a thread's root: the branch new turns go to"
    )


class ReplyInfo(BaseModel):
    """What the server reported about a model reply (assistant messages written from a response)."""

    model_config = ConfigDict(frozen=True)

    model: str | None = None
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    system_fingerprint: str | None = None
    seed: int | None = None


class StoredMessage(Message):
    """A message as stored: the message value plus its identity.

    ``conversation_id`` is the conversation that owns the row; when read
    through a fork, inherited messages keep their ancestor's id here.
    """

    id: int
    conversation_id: str
    seq: int
    created_at: datetime
    pinned: bool = False
    idempotency_key: str | None = None
    reply: ReplyInfo | None = None

    def as_message(self) -> Message:
        """The plain :class:`Message` value, without identity."""
        return Message.model_validate(
            self.model_dump(include=set(Message.model_fields), exclude_none=False)
        )


@final
class WireText:
    """A stored plain text message as a turn's build reads it: its role, text, seq and id.

    Internal: made by the lean read of a turn's chat build
    (:func:`convo._store.rows.lean_messages`) for a ``system``, ``user`` or
    ``assistant`` row whose only columns beyond these are metadata, an
    idempotency key or reply info, and that has a stored token count. Such a
    build reads nothing else of it: its count is stored, it renders as
    ``{"role": role, "content": text}`` under every chat profile, and a turn hands
    none of its context's messages out. About five times cheaper to make than a
    :class:`StoredMessage` (a pydantic value; a context reads dozens a turn).
    """

    __slots__ = ("content", "id", "role", "seq")

    role: str
    content: str
    seq: int
    id: int
    # the other wire fields, as a plain text message has them (read by whatever
    # looks at a message's fields: tool call names, JSON mode's search...)
    name: None = None
    tool_calls: None = None
    refusal: None = None
    tool_call_id: None = None

    @property
    def text(self) -> str:
        """The text (as :attr:`Message.text` gives it for a text message)."""
        return self.content

    def message(self) -> Message:
        """The :class:`~convo.Message` (for the rare step that needs one: truncation)."""
        return Message(role=self.role, content=self.content)

    def to_openai(self) -> dict[str, Any]:
        """The wire dict, as :meth:`Message.to_openai` writes a plain text message."""
        return {"role": self.role, "content": self.content}

    def __repr__(self) -> str:
        return f"WireText(role={self.role!r}, seq={self.seq}, id={self.id})"


class Summary(BaseModel):
    """A stored summary standing in for messages ``start_seq..end_seq`` (inclusive)."""

    model_config = ConfigDict(frozen=True)

    id: int
    conversation_id: str
    start_seq: int
    end_seq: int
    content: str
    created_at: datetime
    metadata: dict[str, JsonValue] = Field(default_factory=dict)


#: ``pending`` until the request ends; then ``ok`` (a reply was stored),
#: ``failed`` (an error, see ``error_type``), ``cancelled`` (the caller stopped
#: it, or another send with the same idempotency key stored its reply first),
#: or ``incomplete`` (the reply was cut short: a stream that broke after text
#: arrived; what arrived is in ``response``).
RunStatus = Literal["pending", "ok", "failed", "cancelled", "incomplete"]


class Run(BaseModel):
    """The record of one request sent to a model: what was sent, why, and what came back.

    It answers "why did the bot say (or forget) that?" without guessing, and
    holds what a reproduction needs to re-send the request byte for byte:
    ``request`` is the JSON body exactly as sent (no headers, so no secrets).
    ``settings`` are the context builder's settings (budget, reserve, template
    name and source hash, profile...); ``kept_seqs`` / ``summary_id`` what it
    kept; ``input_seq`` the newest message sent.
    """

    model_config = ConfigDict(frozen=True)

    id: str
    conversation_id: str
    owner: str | None = None
    endpoint: Literal["chat.completions", "completions"]
    mode: Literal["chat", "completion"]
    model: str
    base_url: str | None = None
    stream: bool = False
    request: str = Field(description="the request body exactly as sent (JSON text)")
    settings: dict[str, JsonValue] = Field(default_factory=dict)
    kept_seqs: list[int] = Field(default_factory=list)
    summary_id: int | None = None
    input_seq: int | None = None
    idempotency_key: str | None = Field(default=None, description="the turn's key")
    round: int = Field(default=0, description="tool round within the turn (0: first request)")
    estimated_prompt_tokens: int | None = None
    reported_prompt_tokens: int | None = None
    completion_tokens: int | None = None
    usage: dict[str, Any] | None = None
    reply_message_id: int | None = None
    status: RunStatus = "pending"
    error_type: str | None = None
    error_message: str | None = None
    attempts: int = 0
    ttfb_ms: float | None = None
    latency_ms: float | None = None
    finish_reason: str | None = None
    system_fingerprint: str | None = None
    seed: int | None = None
    response: dict[str, Any] | None = None
    reproduces_id: str | None = None
    replays_id: str | None = None
    metadata: dict[str, JsonValue] = Field(default_factory=dict)
    created_at: datetime
    finished_at: datetime | None = None

    def body(self) -> dict[str, Any]:
        """The request body, parsed."""
        value: dict[str, Any] = json.loads(self.request)
        return value


class RunPage(BaseModel):
    """One page of :meth:`~convo.Store.list_runs`, newest first; pass ``next_cursor`` back."""

    model_config = ConfigDict(frozen=True)

    items: list[Run]
    next_cursor: str | None = None


# construct() callers outside the store name every field of these (turns and answers
# build messages and reply info from validated values): they must stay plain.
assert tuple(Message.model_fields) == (
    "role", "content", "name", "tool_calls", "refusal", "tool_call_id", "metadata"
)
assert tuple(ReplyInfo.model_fields) == (
    "model", "finish_reason", "usage", "system_fingerprint", "seed"
)
for _cls in (Message, ReplyInfo):
    assert not _cls.__private_attributes__ and not _cls.__pydantic_post_init__, _cls
    assert _cls.model_config.get("extra") != "allow", _cls
