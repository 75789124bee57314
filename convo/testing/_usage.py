"""Usage numbers of the fake, computed with convo's own token counting.

Every number is counted with the tokenizer of the requested model, found as
:class:`~convo.ContextBuilder` finds it (the model registry, then tiktoken's
model names), so the fake's ``usage.prompt_tokens`` is the builder's
``report.prompt_tokens`` without configuration. A model neither knows is
counted with the backend's fallback encoding.

Prompt tokens of a chat request are :meth:`convo.TokenCounter.request_tokens`
(OpenAI's billing rules, tool definitions included); of a completion request,
the tokens of the prompt string as sent. Completion tokens are the
tokens of the generated text (tool calls: name + arguments). A request that
OpenAI accepts but convo's message values cannot represent (the deprecated
``function`` role, file parts, ...) is counted by the plain rule: 3 per
message + role + content as text, + 3 for reply priming.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .._exceptions import InvalidMessageError, UnknownModelError
from .._tokens.counter import TokenCounter

if TYPE_CHECKING:
    from .._models import ModelRegistry

__all__ = ["chat_prompt_tokens", "counter_for", "usage_dict"]


def counter_for(
    model: str, fallback_encoding: str, registry: ModelRegistry | None = None
) -> TokenCounter:
    """The counter of ``model`` (looked up in ``registry``, default :data:`convo.models`),
    or of ``fallback_encoding`` for a model nobody knows."""
    try:
        return TokenCounter.for_model(model, registry=registry)
    except UnknownModelError:
        return TokenCounter.for_model(model, encoding=fallback_encoding, registry=registry)


def chat_prompt_tokens(
    counter: TokenCounter,
    messages: Sequence[Mapping[str, Any]],
    tools: Sequence[Mapping[str, Any]] | None,
) -> int:
    """Prompt tokens of a chat request, as OpenAI bills them."""
    try:
        return counter.request_tokens(messages, tools)
    except InvalidMessageError:
        pass
    n = 3
    for message in messages:
        n += 3 + counter.count(str(message.get("role", "")))
        content = message.get("content")
        if content is not None:
            n += counter.count(content if isinstance(content, str) else json.dumps(content))
    if tools:
        n += counter.count(json.dumps(tools))
    return n


def usage_dict(prompt: int, completion: int, *, details: bool) -> dict[str, Any]:
    """OpenAI's usage object; chat answers carry the token detail breakdowns."""
    usage: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if details:
        usage["prompt_tokens_details"] = {"cached_tokens": 0, "audio_tokens": 0}
        usage["completion_tokens_details"] = {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        }
    return usage
