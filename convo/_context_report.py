"""What a context build returns: the context itself and the report that explains it."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ._messages import Message

__all__ = ["Context", "ContextReport", "SummaryUse", "TruncationReport"]

Mode = Literal["chat", "completion"]


class SummaryUse(BaseModel):
    """The summary that stood in for dropped history."""

    model_config = ConfigDict(frozen=True)

    id: int
    start_seq: int
    end_seq: int
    tokens: int
    reused: bool = Field(description="True when a stored summary was reused as is")


class TruncationReport(BaseModel):
    """The newest user message was shortened to fit."""

    model_config = ConfigDict(frozen=True)

    seq: int
    mode: Literal["head", "tail", "middle"]
    original_tokens: int
    kept_tokens: int


class ContextReport(BaseModel):
    """Everything a build decided, with the numbers ("why did the bot forget X?").

    Token fields are in the target format: chat messages as OpenAI bills
    them, or the exact flattened prompt in completion mode.
    """

    model_config = ConfigDict(frozen=True)

    conversation_id: str
    model: str
    mode: Mode
    encoding: str
    template: str | None = None
    budget: int = Field(description="prompt tokens allowed")
    prompt_tokens: int = Field(description="prompt tokens of what was built")
    budget_left: int = Field(description="budget - prompt_tokens")
    reply_reserve: int | None = Field(description="tokens reserved for the reply, when known")
    overhead_tokens: int
    pinned_tokens: int
    summary_tokens: int
    history_tokens: int
    kept_seqs: list[int] = Field(description="sequence numbers sent, in order")
    pinned_seqs: list[int]
    dropped_count: int
    dropped_through: int | None = Field(description="newest dropped seq; None if nothing dropped")
    summary: SummaryUse | None = None
    truncated: TruncationReport | None = None
    exact: bool = Field(description="False when some count was estimated (e.g. images)")
    stop_reason: str
    rows_read: int
    counted: int = Field(description="messages tokenized during this build (cache misses)")


class Context(BaseModel):
    """A built context, ready to send.

    ``messages`` is what the model sees (the summary included, as a message);
    ``chat`` holds the wire messages in chat mode, ``prompt`` and ``stop`` the
    flattened prompt in completion mode.
    """

    model_config = ConfigDict(frozen=True)

    mode: Mode
    model: str
    messages: list[Message]
    report: ContextReport
    chat: list[dict[str, Any]] | None = None
    prompt: str | None = None
    stop: list[str] = Field(default_factory=list)
    tools: list[dict[str, Any]] | None = None

    def request(self, **params: Any) -> dict[str, Any]:
        """The request body for ``/chat/completions`` or ``/completions``.

        Extra ``params`` (``temperature``, ``max_tokens``, ...) are merged in.
        """
        body: dict[str, Any] = {"model": self.model}
        if self.mode == "chat":
            body["messages"] = self.chat
            if self.tools:
                body["tools"] = self.tools
        else:
            body["prompt"] = self.prompt
            if self.stop:
                body["stop"] = list(self.stop)
        body.update(params)
        return body
