"""From a validated request and a script item to an :class:`Outcome` (pure).

An :class:`Outcome` says everything the shells (httpx transport, loopback
server) must do: status, headers, a body or SSE events, and whether to cut the
answer short or to stall. Building it needs no I/O; token counting loads the
tokenizer lazily, only when a number is actually needed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias

from .._exceptions import ConfigurationError
from ._errors import default_error, error_body
from ._replies import (
    Reply,
    apply_stop,
    default_chat_text,
    default_completion_text,
    default_json,
    split_text,
)
from ._usage import chat_prompt_tokens, counter_for, usage_dict
from ._validation import ChatRequest, CompletionRequest
from ._wire import (
    Choice,
    Meta,
    chat_body,
    chat_chunks,
    completion_body,
    completion_chunks,
    encode_json,
)

if TYPE_CHECKING:
    from .._models import ModelRegistry
    from .._tokens.counter import TokenCounter

__all__ = [
    "Cut",
    "Fail",
    "Item",
    "Malformed",
    "Outcome",
    "Stall",
    "answer_chat",
    "answer_completion",
    "apply_cut",
    "failure",
]

Headers: TypeAlias = list[tuple[str, str]]
JSON_TYPE = ("content-type", "application/json")
SSE_TYPE = ("content-type", "text/event-stream; charset=utf-8")


@dataclass(slots=True)
class Outcome:
    """What the fake answers to one request; the transport and the server carry it out.

    ``events`` is set for a streamed answer (SSE events, ``data: [DONE]`` last).
    ``cut_after`` (events, or body bytes) sends that much and then ends the
    answer early: dropping the connection when ``abort``, else ending cleanly.
    ``stall`` (seconds) means: answer nothing (a timeout).
    """

    status: int
    headers: Headers
    body: bytes = b""
    events: list[bytes] | None = None
    cut_after: int | None = None
    abort: bool = True
    stall: float | None = None


# --- script items (Reply, from _replies, is the fourth kind) -------------------------------------


@dataclass(frozen=True, slots=True)
class Fail:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes | None
    message: str | None
    type: str | None
    code: str | None
    param: str | None


@dataclass(frozen=True, slots=True)
class Stall:
    seconds: float


@dataclass(frozen=True, slots=True)
class Malformed:
    body: bytes
    status: int
    headers: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Cut:
    after: int
    reply: Reply | None
    abort: bool


Item: TypeAlias = "Reply | Cut | Fail | Stall | Malformed"


# --- answers -------------------------------------------------------------------------------------


class _LazyCounter:
    """Loads the tokenizer only when a number is actually needed."""

    __slots__ = ("_counter", "_encoding", "_model", "_registry")

    def __init__(self, model: str, encoding: str, registry: ModelRegistry | None) -> None:
        self._model = model
        self._encoding = encoding
        self._registry = registry
        self._counter: TokenCounter | None = None

    def get(self) -> TokenCounter:
        if self._counter is None:
            self._counter = counter_for(self._model, self._encoding, self._registry)
        return self._counter


def answer_chat(
    req: ChatRequest,
    reply: Reply | None,
    meta: Meta,
    headers: Headers,
    *,
    encoding: str,
    new_call_id: Callable[[], str],
    registry: ModelRegistry | None = None,
) -> Outcome:
    """The answer to a valid chat request: ``reply``, or the default one when None."""
    if reply is None:
        fmt = req.response_format
        if fmt is not None and fmt.get("type") in ("json_object", "json_schema"):
            reply = Reply(content=default_json(fmt, req.messages))
        else:
            reply = Reply(content=default_chat_text(req.messages))
    counter = _LazyCounter(req.model, encoding, registry)
    choices = []
    for _ in range(req.n):
        content, finish = _finish_text(reply, req.stop, req.max_tokens, counter)
        calls = tuple((cid or new_call_id(), name, args) for cid, name, args in reply.tool_calls)
        choices.append(Choice(content, finish, calls, reply.refusal))

    def prompt() -> int:
        return chat_prompt_tokens(counter.get(), req.messages, req.tools)

    def completion() -> int:
        count = counter.get().count
        total = 0
        for c in choices:
            total += count(c.content or "") + count(c.refusal or "")
            total += sum(count(name) + count(args) for _, name, args in c.tool_calls)
        return total

    usage = _usage(reply.usage, prompt, completion, details=True)
    if req.stream:
        events = chat_chunks(
            meta, choices, usage, include_usage=req.include_usage, obfuscation=req.obfuscation
        )
        return Outcome(200, [*headers, SSE_TYPE], events=events)
    return Outcome(200, [*headers, JSON_TYPE], encode_json(chat_body(meta, choices, usage)))


def answer_completion(
    req: CompletionRequest,
    reply: Reply | None,
    meta: Meta,
    headers: Headers,
    *,
    encoding: str,
    registry: ModelRegistry | None = None,
) -> Outcome:
    """The answer to a valid completion request: ``reply``, or the default one when None."""
    if reply is not None and (reply.tool_calls or reply.refusal is not None):
        raise ConfigurationError(
            "convo.testing: a scripted tool-call or refusal reply cannot answer a "
            "/completions request (script it with reply() instead)"
        )
    counter = _LazyCounter(req.model, encoding, registry)
    choices = []
    for prompt in req.prompts:
        for _ in range(req.n):
            if reply is not None:
                source = reply
            elif isinstance(prompt, str):
                source = Reply(content=default_completion_text(prompt))
            else:
                source = Reply(content=f" You sent {len(prompt)} tokens.")
            text, finish = _finish_text(source, req.stop, req.max_tokens, counter)
            if req.echo and isinstance(prompt, str):
                text = prompt + (text or "")
            choices.append(Choice(text, finish))

    def prompt_tokens() -> int:
        count = counter.get().count
        return sum(count(p) if isinstance(p, str) else len(p) for p in req.prompts)

    def completion_tokens() -> int:
        count = counter.get().count
        return sum(count(c.content or "") for c in choices)

    usage = _usage(reply.usage if reply else None, prompt_tokens, completion_tokens, details=False)
    if req.stream:
        events = completion_chunks(meta, choices, usage, include_usage=req.include_usage)
        return Outcome(200, [*headers, SSE_TYPE], events=events)
    return Outcome(200, [*headers, JSON_TYPE], encode_json(completion_body(meta, choices, usage)))


def _finish_text(
    reply: Reply, stop: Sequence[str], max_tokens: int | None, counter: _LazyCounter
) -> tuple[str | None, str]:
    """The content as a model would end it: cut at a stop sequence, then at max_tokens."""
    content, finish = reply.content, reply.finish
    if content is None:
        return None, finish
    content, stopped = apply_stop(content, stop)
    if stopped:
        finish = "stop"
    if max_tokens is not None and content:
        count = counter.get().count
        if count(content) > max_tokens:
            content, finish = _truncate(content, max_tokens, count), "length"
    return content, finish


def _truncate(text: str, limit: int, count: Callable[[str], int]) -> str:
    """The longest prefix of whole stream pieces that fits in ``limit`` tokens."""
    pieces = split_text(text)
    lo, hi = 0, len(pieces)  # pieces[:lo] fits; pieces[:hi + 1] does not
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if count("".join(pieces[:mid])) <= limit:
            lo = mid
        else:
            hi = mid - 1
    return "".join(pieces[:lo])


def _usage(
    given: Mapping[str, Any] | None,
    prompt: Callable[[], int],
    completion: Callable[[], int],
    *,
    details: bool,
) -> dict[str, Any]:
    # Numbers the script gives are not recomputed: no tokenizer needed for them.
    given = given or {}
    p = given["prompt_tokens"] if "prompt_tokens" in given else prompt()
    c = given["completion_tokens"] if "completion_tokens" in given else completion()
    usage = {**usage_dict(p, c, details=details), **given}
    if "total_tokens" not in given:
        usage["total_tokens"] = p + c
    return usage


def failure(item: Fail, headers: Headers, model: str | None) -> Outcome:
    """The answer of a scripted failure: OpenAI's error object unless a body was given."""
    out = [*headers]
    if "content-type" not in {k.lower() for k, _ in item.headers}:
        out.append(JSON_TYPE)
    out.extend(item.headers)
    if item.body is not None:
        return Outcome(item.status, out, item.body)
    message, type_, code = default_error(item.status, model=model)
    body = error_body(
        item.message if item.message is not None else message,
        type=item.type if item.type is not None else type_,
        param=item.param,
        code=item.code if item.code is not None else code,
    )
    return Outcome(item.status, out, body)


def apply_cut(outcome: Outcome, cut: Cut) -> None:
    """Make ``outcome`` stop midway: after ``cut.after`` events, or half of its body."""
    outcome.abort = cut.abort
    if outcome.events is None:
        outcome.cut_after = len(outcome.body) // 2
        return
    # Never reach a finish reason: the point of a cut stream is that it is incomplete.
    limit = next(
        (i for i, e in enumerate(outcome.events) if b'"finish_reason":"' in e),
        len(outcome.events) - 1,
    )
    outcome.cut_after = min(cut.after, limit)
