"""Summaries of history that fell out of the context window.

A summarizer turns dropped messages (and the previous summary, when one is
rolled forward) into a short text. It is pluggable: anything with a
``summarize`` method of the right shape. The default asks a model through
convo's own client, so summaries go through the same server, retries and
errors as replies.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Generic, Literal, Protocol, TypeVar, runtime_checkable

from .._client.async_client import AsyncOpenAIClient
from .._client.client import OpenAIClient
from .._exceptions import ContextError
from .._messages import Message

if TYPE_CHECKING:
    from .._client.params import ChatParams

ClientT = TypeVar("ClientT")

__all__ = [
    "AsyncModelSummarizer",
    "AsyncSummarizer",
    "ModelSummarizer",
    "Summarizer",
    "summary_request",
]

DEFAULT_INSTRUCTIONS = (
    "You maintain the running summary of a conversation between a user and an assistant. "
    "Write a concise summary of the conversation so far that keeps every fact, decision, "
    "name, number, open question and user preference needed to continue it. "
    "Write plain prose, no preamble."
)


@runtime_checkable
class Summarizer(Protocol):
    """Summarizes dropped history (sync)."""

    def summarize(
        self, messages: Sequence[Message], *, previous: str | None, max_tokens: int
    ) -> str:
        """Return a summary of ``previous`` (an earlier summary, or None) followed by ``messages``."""
        ...


@runtime_checkable
class AsyncSummarizer(Protocol):
    """Summarizes dropped history (async)."""

    async def summarize(
        self, messages: Sequence[Message], *, previous: str | None, max_tokens: int
    ) -> str:
        """Return a summary of ``previous`` (an earlier summary, or None) followed by ``messages``."""
        ...


def summary_request(
    messages: Sequence[Message], *, previous: str | None, instructions: str = DEFAULT_INSTRUCTIONS
) -> list[dict[str, Any]]:
    """The chat messages a model summarizer sends: instructions, then the transcript to fold in."""
    lines = []
    if previous:
        lines.append(f"Summary so far:\n{previous}\n")
    lines.append("New messages:")
    for m in messages:
        who = m.name or m.role
        text = m.text
        if m.tool_calls:
            calls = ", ".join(f"{c.function.name}({c.function.arguments})" for c in m.tool_calls)
            text = f"{text}\n[called {calls}]".strip()
        lines.append(f"{who}: {text}")
    return [
        {"role": "system", "content": instructions},
        {"role": "user", "content": "\n".join(lines)},
    ]


def _summary_text(reply: Any) -> str:
    """The summary in a chat reply; a cut-off or empty reply is an error, never stored.

    NUL characters are taken out: no database convo supports stores them in text,
    and a summary is convo's own derived text (a model's stray NUL would otherwise
    stop every build that needs the summary)."""
    choice = reply.choices[0] if reply.choices else None
    text = ((choice.message.content if choice else None) or "").replace("\x00", "").strip()
    if choice is None or choice.finish_reason == "length" or not text:
        reason = "no choices" if choice is None else f"finish_reason={choice.finish_reason!r}"
        raise ContextError(
            f"the summary request returned no usable text ({reason}; "
            f"{len(text)} characters): raise summary_max_tokens (reasoning models spend "
            "part of it thinking) or use another summary model"
        )
    return text


def _limit(param: Literal["max_completion_tokens", "max_tokens"], n: int) -> ChatParams:
    return {"max_tokens": n} if param == "max_tokens" else {"max_completion_tokens": n}


class _ModelSummarizerBase(Generic[ClientT]):
    """What the sync and async model summarizers share: settings and the request."""

    def __init__(
        self,
        client: ClientT,
        *,
        model: str,
        instructions: str = DEFAULT_INSTRUCTIONS,
        max_tokens_param: Literal["max_completion_tokens", "max_tokens"] = "max_completion_tokens",
        **params: Any,
    ) -> None:
        self.client = client
        self.model = model
        self.instructions = instructions
        self.max_tokens_param = max_tokens_param
        self.params = params

    def _request(
        self, messages: Sequence[Message], previous: str | None, max_tokens: int
    ) -> dict[str, Any]:
        return {
            "model": self.model,
            "messages": summary_request(
                messages, previous=previous, instructions=self.instructions
            ),
            **_limit(self.max_tokens_param, max_tokens),
            **self.params,
        }


class ModelSummarizer(_ModelSummarizerBase[OpenAIClient]):
    """Summarizes with a chat model through :class:`~convo.OpenAIClient`.

    Args:
        client: the client to call.
        model: the model to ask.
        instructions: the system prompt of the summary request.
        max_tokens_param: how the server names the reply limit: OpenAI's current
            ``max_completion_tokens`` (required by reasoning models) or the older
            ``max_tokens`` that many OpenAI-compatible servers still expect
            (``ChatProfile.max_tokens_param`` of the target server).
        params: extra request parameters (e.g. ``temperature=0``).
    """

    def summarize(
        self, messages: Sequence[Message], *, previous: str | None, max_tokens: int
    ) -> str:
        return _summary_text(self.client.chat(**self._request(messages, previous, max_tokens)))


class AsyncModelSummarizer(_ModelSummarizerBase[AsyncOpenAIClient]):
    """:class:`ModelSummarizer` for :class:`~convo.AsyncOpenAIClient`."""

    async def summarize(
        self, messages: Sequence[Message], *, previous: str | None, max_tokens: int
    ) -> str:
        reply = await self.client.chat(**self._request(messages, previous, max_tokens))
        return _summary_text(reply)
