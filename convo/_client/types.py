"""Typed results of the HTTP client, in OpenAI's wire format.

Every model keeps unknown fields (``extra="allow"``): OpenAI-compatible
servers add their own (``reasoning_content``, ``timings``, ...) and nothing a
server sent is thrown away. Fields the spec marks as required but that some
compatible servers omit get neutral defaults, so only a body that is not a
completion at all (no ``choices``) fails validation.

A streamed call assembles into the same type as a non-streamed one:
:class:`ChatCompletion` from :class:`ChatCompletionChunk` values,
:class:`Completion` from :class:`CompletionChunk` values.
"""

from __future__ import annotations

from typing import Any, Literal, TypeAlias

from pydantic import BaseModel, ConfigDict

from .._messages import FunctionCall, Message, ToolCall
from .._records import ReplyInfo, construct

__all__ = [
    "ChatCompletion",
    "ChatCompletionChoice",
    "ChatCompletionChunk",
    "ChatCompletionChunkChoice",
    "ChatCompletionMessage",
    "ChatCompletionTokenLogprob",
    "ChatCompletionToolCall",
    "ChoiceDelta",
    "ChoiceDeltaToolCall",
    "ChoiceLogprobs",
    "Completion",
    "CompletionChoice",
    "CompletionChunk",
    "CompletionLogprobs",
    "FinishReason",
    "Usage",
]

#: The finish reasons of OpenAI's spec. Fields are typed ``str`` because
#: compatible servers send others (``"abort"``, ``"eos"``); compare against these.
FinishReason: TypeAlias = Literal["stop", "length", "tool_calls", "content_filter", "function_call"]


class SerializedRequest(str):
    """Request text convo serialized itself from a dict (``pydantic_core.to_json``,
    as the turn does): a JSON object by construction, except for the ``NaN`` and
    ``Infinity`` constants ``to_json`` writes for such floats, so only text that
    contains one of them is parsed again (by the store), and a body whose first
    key is a string ``"model"`` and that has no ``"stream"`` is sent without
    being parsed again (by the client)."""

    __slots__ = ()


class _Wire(BaseModel):
    model_config = ConfigDict(extra="allow")


# --- usage -------------------------------------------------------------------


class PromptTokensDetails(_Wire):
    cached_tokens: int | None = None
    audio_tokens: int | None = None


class CompletionTokensDetails(_Wire):
    reasoning_tokens: int | None = None
    audio_tokens: int | None = None
    accepted_prediction_tokens: int | None = None
    rejected_prediction_tokens: int | None = None


class Usage(_Wire):
    """Token usage the server reports (``prompt_tokens + completion_tokens = total_tokens``)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    prompt_tokens_details: PromptTokensDetails | None = None
    completion_tokens_details: CompletionTokensDetails | None = None


# --- chat ----------------------------------------------------------------------


class TopLogprob(_Wire):
    token: str
    logprob: float
    bytes: list[int] | None = None


class ChatCompletionTokenLogprob(_Wire):
    token: str
    logprob: float
    bytes: list[int] | None = None
    top_logprobs: list[TopLogprob] = []


class ChoiceLogprobs(_Wire):
    content: list[ChatCompletionTokenLogprob] | None = None
    refusal: list[ChatCompletionTokenLogprob] | None = None


class ChatCompletionFunction(_Wire):
    name: str
    arguments: str = ""


class ChatCompletionToolCall(_Wire):
    """A tool call of a reply; ``function.arguments`` is a JSON string, maybe invalid JSON."""

    id: str
    type: str = "function"
    function: ChatCompletionFunction | None = None


class ChatCompletionMessage(_Wire):
    """The assistant message of a choice."""

    role: str = "assistant"
    content: str | None = None
    refusal: str | None = None
    tool_calls: list[ChatCompletionToolCall] | None = None
    annotations: list[dict[str, Any]] | None = None
    audio: dict[str, Any] | None = None


class ChatCompletionChoice(_Wire):
    index: int = 0
    message: ChatCompletionMessage
    finish_reason: str | None = None
    logprobs: ChoiceLogprobs | None = None


class ChatCompletion(_Wire):
    """The answer of ``POST /chat/completions`` (or the assembly of a chat stream)."""

    id: str = ""
    object: str = "chat.completion"
    created: int = 0
    model: str = ""
    choices: list[ChatCompletionChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None
    service_tier: str | None = None

    @property
    def message(self) -> ChatCompletionMessage:
        """The message of the first choice.

        Raises:
            IndexError: the server returned no choices.
        """
        return self.choices[0].message

    @property
    def text(self) -> str:
        """The content of the first choice ("" when it has none, e.g. only tool calls)."""
        return (self.choices[0].message.content or "") if self.choices else ""

    @property
    def finish_reason(self) -> str | None:
        """The finish reason of the first choice."""
        return self.choices[0].finish_reason if self.choices else None

    def to_message(self, index: int = 0) -> Message:
        """Choice ``index`` as a :class:`~convo.Message` (role assistant), ready to store.

        Tool calls of type ``function`` are kept; a reply with neither content,
        tool calls nor refusal becomes an empty text message.
        """
        msg = self.choices[index].message
        calls = [
            ToolCall(
                id=c.id,
                function=FunctionCall(name=c.function.name, arguments=c.function.arguments),
            )
            for c in msg.tool_calls or ()
            if c.function is not None
        ] or None
        content = msg.content
        if content is None and calls is None and msg.refusal is None:
            content = ""
        # (typed values that keep Message's rules: an assistant message with text, tool
        # calls or a refusal; built without validating them again)
        return construct(Message, {
            "role": "assistant", "content": content, "name": None, "tool_calls": calls,
            "refusal": msg.refusal, "tool_call_id": None, "metadata": {},
        })

    def reply_info(self, index: int = 0, *, seed: int | None = None) -> ReplyInfo:
        """What the server said about choice ``index``, in the store's :class:`~convo.ReplyInfo`."""
        return _reply_info(self, self.choices[index].finish_reason, seed)


# --- chat stream ---------------------------------------------------------------


class ChoiceDeltaFunction(_Wire):
    name: str | None = None
    arguments: str | None = None


class ChoiceDeltaToolCall(_Wire):
    """A fragment of tool call ``index``: the id and name come once, arguments in pieces."""

    index: int = 0
    id: str | None = None
    type: str | None = None
    function: ChoiceDeltaFunction | None = None


class ChoiceDelta(_Wire):
    role: str | None = None
    content: str | None = None
    refusal: str | None = None
    tool_calls: list[ChoiceDeltaToolCall] | None = None


class ChatCompletionChunkChoice(_Wire):
    index: int = 0
    delta: ChoiceDelta = ChoiceDelta()
    finish_reason: str | None = None
    logprobs: ChoiceLogprobs | None = None


class ChatCompletionChunk(_Wire):
    """One event of a streamed chat completion.

    The last chunk of a stream with ``stream_options={"include_usage": True}``
    has no choices and carries :attr:`usage`.
    """

    id: str = ""
    object: str = "chat.completion.chunk"
    created: int = 0
    model: str = ""
    choices: list[ChatCompletionChunkChoice] = []
    usage: Usage | None = None
    system_fingerprint: str | None = None
    service_tier: str | None = None

    @property
    def text(self) -> str:
        """The content delta of the first choice ("" when none)."""
        return (self.choices[0].delta.content or "") if self.choices else ""


# --- completions -----------------------------------------------------------------


class CompletionLogprobs(_Wire):
    tokens: list[str] | None = None
    token_logprobs: list[float | None] | None = None
    top_logprobs: list[dict[str, float] | None] | None = None
    text_offset: list[int] | None = None


class CompletionChoice(_Wire):
    index: int = 0
    text: str = ""
    finish_reason: str | None = None
    logprobs: CompletionLogprobs | None = None


class Completion(_Wire):
    """The answer of ``POST /completions`` (or the assembly of a completion stream)."""

    id: str = ""
    object: str = "text_completion"
    created: int = 0
    model: str = ""
    choices: list[CompletionChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None

    @property
    def text(self) -> str:
        """The text of the first choice."""
        return self.choices[0].text if self.choices else ""

    @property
    def finish_reason(self) -> str | None:
        """The finish reason of the first choice."""
        return self.choices[0].finish_reason if self.choices else None

    def to_message(self, index: int = 0) -> Message:
        """Choice ``index`` as an assistant :class:`~convo.Message`, ready to store."""
        return Message(role="assistant", content=self.choices[index].text)

    def reply_info(self, index: int = 0, *, seed: int | None = None) -> ReplyInfo:
        """What the server said about choice ``index``, in the store's :class:`~convo.ReplyInfo`."""
        return _reply_info(self, self.choices[index].finish_reason, seed)


class CompletionChunk(_Wire):
    """One event of a streamed completion (each choice carries a text fragment)."""

    id: str = ""
    object: str = "text_completion"
    created: int = 0
    model: str = ""
    choices: list[CompletionChoice] = []
    usage: Usage | None = None
    system_fingerprint: str | None = None

    @property
    def text(self) -> str:
        """The text fragment of the first choice."""
        return self.choices[0].text if self.choices else ""


def _reply_info(
    answer: ChatCompletion | Completion, finish_reason: str | None, seed: int | None
) -> ReplyInfo:
    model = answer.model or None
    usage = answer.usage.model_dump(exclude_none=True) if answer.usage else None
    fingerprint = answer.system_fingerprint
    if seed is not None and type(seed) is not int:  # the caller's seed, validated
        return ReplyInfo(model=model, finish_reason=finish_reason, usage=usage,
                         system_fingerprint=fingerprint, seed=seed)
    # (the answer's own values are typed already)
    return construct(ReplyInfo, {
        "model": model, "finish_reason": finish_reason, "usage": usage,
        "system_fingerprint": fingerprint, "seed": seed,
    })
