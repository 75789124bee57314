"""OpenAI's response bodies and SSE chunks, built from final choices (pure).

Shapes follow the spec (CreateChatCompletionResponse,
CreateChatCompletionStreamResponse, CreateCompletionResponse) and what
api.openai.com sends: ``refusal: null`` and ``annotations: []`` on messages,
``logprobs: null`` on choices, ``service_tier`` and ``system_fingerprint`` at
the top, a first stream chunk carrying the role, a last one carrying only the
finish reason, then (with ``include_usage``) a chunk with empty ``choices``
and the usage; every other chunk then carries ``"usage": null``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from ._replies import split_arguments, split_text

__all__ = [
    "Choice",
    "Meta",
    "chat_body",
    "chat_chunks",
    "completion_body",
    "completion_chunks",
    "encode_json",
    "sse",
]

DONE = b"data: [DONE]\n\n"


@dataclass(frozen=True, slots=True)
class Meta:
    """What every body or chunk of one response repeats."""

    id: str
    created: int
    model: str
    fingerprint: str


@dataclass(frozen=True, slots=True)
class Choice:
    """One final choice: text (or content), tool calls with their ids, refusal, finish reason."""

    content: str | None
    finish_reason: str
    tool_calls: tuple[tuple[str, str, str], ...] = ()  # (id, name, arguments)
    refusal: str | None = None


def encode_json(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


def sse(obj: Any) -> bytes:
    """One server-sent event: ``data: {...}`` and a blank line."""
    return b"data: " + encode_json(obj) + b"\n\n"


# --- chat --------------------------------------------------------------------


def _message(choice: Choice) -> dict[str, Any]:
    message: dict[str, Any] = {
        "role": "assistant",
        "content": choice.content,
        "refusal": choice.refusal,
        "annotations": [],
    }
    if choice.tool_calls:
        message["tool_calls"] = [
            {"id": id_, "type": "function", "function": {"name": name, "arguments": args}}
            for id_, name, args in choice.tool_calls
        ]
    return message


def chat_body(meta: Meta, choices: Sequence[Choice], usage: dict[str, Any]) -> dict[str, Any]:
    """A ``chat.completion`` object."""
    return {
        "id": meta.id,
        "object": "chat.completion",
        "created": meta.created,
        "model": meta.model,
        "choices": [
            {"index": i, "message": _message(c), "logprobs": None, "finish_reason": c.finish_reason}
            for i, c in enumerate(choices)
        ],
        "usage": usage,
        "service_tier": "default",
        "system_fingerprint": meta.fingerprint,
    }


def _tool_header(index: int, call: tuple[str, str, str]) -> dict[str, Any]:
    return {
        "index": index,
        "id": call[0],
        "type": "function",
        "function": {"name": call[1], "arguments": ""},
    }


def _deltas(choice: Choice) -> Iterator[tuple[dict[str, Any], str | None]]:
    """(delta, finish_reason) pairs of one choice, first to last."""
    first: dict[str, Any] = {"role": "assistant", "content": "", "refusal": None}
    calls = choice.tool_calls
    if choice.content is None:
        first["content"] = None
        if choice.refusal is not None:
            first["refusal"] = ""
        elif calls:
            # OpenAI announces the first call in the role chunk when there is no text.
            first["tool_calls"] = [_tool_header(0, calls[0])]
    yield first, None
    for piece in split_text(choice.content or ""):
        yield {"content": piece}, None
    for piece in split_text(choice.refusal or ""):
        yield {"refusal": piece}, None
    for k, call in enumerate(calls):
        if k > 0 or choice.content is not None or choice.refusal is not None:
            yield {"tool_calls": [_tool_header(k, call)]}, None
        for fragment in split_arguments(call[2]):
            yield {"tool_calls": [{"index": k, "function": {"arguments": fragment}}]}, None
    yield {}, choice.finish_reason


# Obfuscation pads chunks to hide token lengths; deterministic here.
_PAD = "fakeObfuscationPad"


def chat_chunks(
    meta: Meta,
    choices: Sequence[Choice],
    usage: dict[str, Any] | None,
    *,
    include_usage: bool,
    obfuscation: bool,
) -> list[bytes]:
    """The SSE events of a streamed chat completion, ``data: [DONE]`` last."""
    head = {
        "id": meta.id,
        "object": "chat.completion.chunk",
        "created": meta.created,
        "model": meta.model,
        "service_tier": "default",
        "system_fingerprint": meta.fingerprint,
    }
    per_choice = [list(_deltas(c)) for c in choices]
    events: list[bytes] = []
    # Choices interleave round-robin, one choice per chunk, like n > 1 streams do.
    for step in range(max(len(d) for d in per_choice)):
        for index, deltas in enumerate(per_choice):
            if step >= len(deltas):
                continue
            delta, finish = deltas[step]
            chunk = {
                **head,
                "choices": [
                    {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
                ],
            }
            if include_usage:
                chunk["usage"] = None
            if obfuscation:
                chunk["obfuscation"] = _PAD[: 4 + len(events) % 8]
            events.append(sse(chunk))
    if include_usage and usage is not None:
        chunk = {**head, "choices": [], "usage": usage}
        if obfuscation:
            chunk["obfuscation"] = _PAD[:4]
        events.append(sse(chunk))
    events.append(DONE)
    return events


# --- completions -------------------------------------------------------------


def completion_body(meta: Meta, choices: Sequence[Choice], usage: dict[str, Any]) -> dict[str, Any]:
    """A ``text_completion`` object."""
    return {
        "id": meta.id,
        "object": "text_completion",
        "created": meta.created,
        "model": meta.model,
        "choices": [
            {
                "text": c.content or "",
                "index": i,
                "logprobs": None,
                "finish_reason": c.finish_reason,
            }
            for i, c in enumerate(choices)
        ],
        "usage": usage,
        "system_fingerprint": meta.fingerprint,
    }


def completion_chunks(
    meta: Meta, choices: Sequence[Choice], usage: dict[str, Any] | None, *, include_usage: bool
) -> list[bytes]:
    """The SSE events of a streamed completion: text pieces, a finish chunk, usage, [DONE]."""
    head = {
        "id": meta.id,
        "object": "text_completion",
        "created": meta.created,
        "model": meta.model,
        "system_fingerprint": meta.fingerprint,
    }
    events: list[bytes] = []

    def add(index: int, text: str, finish: str | None) -> None:
        chunk = {
            **head,
            "choices": [{"text": text, "index": index, "logprobs": None, "finish_reason": finish}],
        }
        if include_usage:
            chunk["usage"] = None
        events.append(sse(chunk))

    pieces = [split_text(c.content or "") for c in choices]
    for step in range(max(len(p) for p in pieces)):
        for index, parts in enumerate(pieces):
            if step < len(parts):
                add(index, parts[step], None)
    for index, choice in enumerate(choices):
        add(index, "", choice.finish_reason)
    if include_usage and usage is not None:
        events.append(sse({**head, "choices": [], "usage": usage}))
    events.append(DONE)
    return events
