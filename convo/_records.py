"""Values the store returns: conversations, stored messages, summaries.

Identity (ids, sequence numbers, timestamps) is a storage concern, so it lives
here and not on :class:`~convo.Message`. A :class:`StoredMessage` *is a*
``Message`` (it can go anywhere a message goes) with its identity and, for
model replies, what the server said about it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from ._messages import Message

__all__ = ["Conversation", "ReplyInfo", "StoredMessage", "Summary"]


class Conversation(BaseModel):
    """A stored conversation.

    ``parent_id`` / ``fork_seq``: a fork inherits its parent's messages with
    ``seq <= fork_seq`` (without copying them); its own messages continue at
    ``fork_seq + 1``.
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
