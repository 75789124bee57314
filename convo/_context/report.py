"""What a context build returns: the context itself and the report that explains it."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .._messages import Message

__all__ = ["Context", "ContextReport", "SummaryUse", "TruncationReport"]

Mode = Literal["chat", "completion"]


class SummaryUse(BaseModel):
    """The summary that stood in for dropped history (messages ``start_seq..end_seq``)."""

    model_config = ConfigDict(frozen=True)

    id: int | None = Field(
        description="the stored summary's id; None when it was made for an as-of build "
        "and not stored"
    )
    start_seq: int
    end_seq: int
    tokens: int
    reused: bool = Field(description="True when a stored summary was reused as is")
    created: bool = Field(
        default=False, description="True when this build made it (the summarizer was called)"
    )
    calls: int = Field(default=0, description="summarizer calls made during this build")
    stored: bool = Field(
        default=True, description="False for a summary an as-of build made and did not store"
    )


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
    low_water: int | None = Field(
        default=None,
        description="history tokens kept after an overflow (summaries with hysteresis); "
        "None when the builder has no summarizer or low_water=None",
    )
    as_of: int | None = Field(
        default=None, description="the build saw messages 1..as_of only (None: all of them)"
    )


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
