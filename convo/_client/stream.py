"""Streaming, the pure part: SSE events to typed chunks, chunks to one result.

:class:`StreamCore` is fed the raw bytes of a streamed answer and returns the
chunks they complete; it notices ``data: [DONE]``, error events and a stream
that ends before it is complete. The accumulators assemble the chunks into
the same type a non-streamed call returns:

* chat: content, refusal, extra string fields (``reasoning_content``...) and
  list fields (``annotations``) concatenated; tool calls merged by ``index`` (id, type and name from their
  first fragment, ``arguments`` concatenated); logprobs appended; the last
  finish reason; the usage chunk of ``stream_options={"include_usage": True}``.
* completions: text and logprobs per choice index, finish reason, usage.

The shells (``ChatCompletionStream`` and friends) only iterate the HTTP body.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from .._exceptions import APIError
from .core import ClientCore, Deadline, Limits
from .errors import describe
from .sse import EventTooLarge, ServerSentEvent, SSEDecoder
from .types import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionTokenLogprob,
    Completion,
    CompletionChunk,
    Usage,
)

__all__ = ["ChatAccumulator", "CompletionAccumulator", "StreamCore"]

ChunkT = TypeVar("ChunkT", bound=BaseModel)
ResultT = TypeVar("ResultT", bound=BaseModel)
_ChunkT_contra = TypeVar("_ChunkT_contra", bound=BaseModel, contravariant=True)
_ResultT_co = TypeVar("_ResultT_co", bound=BaseModel, covariant=True)


class Accumulator(Protocol[_ChunkT_contra, _ResultT_co]):
    finished: bool

    def add(self, chunk: _ChunkT_contra) -> None: ...

    def result(self) -> _ResultT_co: ...


class _Head:
    """Fields every chunk repeats; the first non-empty value wins."""

    __slots__ = ("created", "id", "model", "system_fingerprint", "usage")

    def __init__(self) -> None:
        self.id = ""
        self.created = 0
        self.model = ""
        self.system_fingerprint: str | None = None
        self.usage: Usage | None = None

    def take(self, chunk: ChatCompletionChunk | CompletionChunk) -> None:
        if not self.id and chunk.id:
            self.id = chunk.id
            self.created = chunk.created
            self.model = chunk.model
        if chunk.system_fingerprint:
            self.system_fingerprint = chunk.system_fingerprint
        if chunk.usage is not None:
            self.usage = chunk.usage

    def fields(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": self.system_fingerprint,
            "usage": self.usage,
        }


class _ChatChoice:
    __slots__ = (
        "content",
        "extra",
        "finish_reason",
        "logprobs",
        "refusal",
        "refusal_logprobs",
        "role",
        "saw_content",
        "tools",
    )

    def __init__(self) -> None:
        self.role = "assistant"
        self.content: list[str] = []
        self.saw_content = False
        self.refusal: list[str] = []
        self.tools: dict[int, list[Any]] = {}  # index -> [id, type, name, [argument pieces]]
        self.extra: dict[str, Any] = {}  # str and list values concatenated, others: last wins
        self.finish_reason: str | None = None
        self.logprobs: list[ChatCompletionTokenLogprob] | None = None
        self.refusal_logprobs: list[ChatCompletionTokenLogprob] | None = None


class ChatAccumulator:
    """Assembles :class:`ChatCompletionChunk` values into a :class:`ChatCompletion`."""

    def __init__(self) -> None:
        self.finished = False  # every choice seen has reported a finish reason
        self._head = _Head()
        self._service_tier: str | None = None
        self._choices: dict[int, _ChatChoice] = {}

    def add(self, chunk: ChatCompletionChunk) -> None:
        self._head.take(chunk)
        if chunk.service_tier:
            self._service_tier = chunk.service_tier
        for choice in chunk.choices:
            acc = self._choices.get(choice.index)
            if acc is None:
                acc = self._choices[choice.index] = _ChatChoice()
                self.finished = False  # a choice that starts now has not finished
            delta = choice.delta
            if delta.role:
                acc.role = delta.role
            if delta.content is not None:
                acc.saw_content = True
                acc.content.append(delta.content)
            if delta.refusal:
                acc.refusal.append(delta.refusal)
            if delta.tool_calls:
                for call in delta.tool_calls:
                    slot = acc.tools.get(call.index)
                    if slot is None:
                        slot = acc.tools[call.index] = [None, None, None, []]
                    # Some servers repeat id and name on every fragment: keep the first.
                    if call.id and slot[0] is None:
                        slot[0] = call.id
                    if call.type and slot[1] is None:
                        slot[1] = call.type
                    fn = call.function
                    if fn is not None:
                        if fn.name and slot[2] is None:
                            slot[2] = fn.name
                        if fn.arguments:
                            slot[3].append(fn.arguments)
            extra = delta.__pydantic_extra__
            if extra:
                for key, value in extra.items():
                    if isinstance(value, str):
                        acc.extra[key] = acc.extra.get(key, "") + value
                    elif isinstance(value, list):  # e.g. annotations arrive in pieces
                        acc.extra[key] = acc.extra.get(key, []) + value
                    elif value is not None:
                        acc.extra[key] = value
            if choice.logprobs is not None:
                if choice.logprobs.content:
                    acc.logprobs = (acc.logprobs or []) + choice.logprobs.content
                if choice.logprobs.refusal:
                    acc.refusal_logprobs = (acc.refusal_logprobs or []) + choice.logprobs.refusal
            if choice.finish_reason:
                acc.finish_reason = choice.finish_reason
                # complete only when every choice seen so far has finished (n > 1)
                self.finished = all(c.finish_reason for c in self._choices.values())

    def result(self) -> ChatCompletion:
        choices = []
        for index in sorted(self._choices):
            acc = self._choices[index]
            message: dict[str, Any] = {
                **acc.extra,
                "role": acc.role,
                "content": "".join(acc.content) if acc.saw_content else None,
                "refusal": "".join(acc.refusal) if acc.refusal else None,
            }
            if acc.tools:
                message["tool_calls"] = [
                    {
                        "id": slot[0] or "",
                        "type": slot[1] or "function",
                        "function": {"name": slot[2] or "", "arguments": "".join(slot[3])},
                    }
                    for _, slot in sorted(acc.tools.items())
                ]
            choice: dict[str, Any] = {
                "index": index,
                "message": message,
                "finish_reason": acc.finish_reason,
            }
            if acc.logprobs is not None or acc.refusal_logprobs is not None:
                choice["logprobs"] = {"content": acc.logprobs, "refusal": acc.refusal_logprobs}
            choices.append(choice)
        return ChatCompletion.model_validate(
            {**self._head.fields(), "choices": choices, "service_tier": self._service_tier}
        )


class _TextChoice:
    __slots__ = ("finish_reason", "logprobs", "text")

    def __init__(self) -> None:
        self.text: list[str] = []
        self.finish_reason: str | None = None
        self.logprobs: dict[str, list[Any]] | None = None


class CompletionAccumulator:
    """Assembles :class:`CompletionChunk` values into a :class:`Completion`."""

    def __init__(self) -> None:
        self.finished = False
        self._head = _Head()
        self._choices: dict[int, _TextChoice] = {}

    def add(self, chunk: CompletionChunk) -> None:
        self._head.take(chunk)
        for choice in chunk.choices:
            acc = self._choices.get(choice.index)
            if acc is None:
                acc = self._choices[choice.index] = _TextChoice()
                self.finished = False  # a choice that starts now has not finished
            if choice.text:
                acc.text.append(choice.text)
            lp = choice.logprobs
            if lp is not None:
                if acc.logprobs is None:
                    acc.logprobs = {}
                for name in ("tokens", "token_logprobs", "top_logprobs", "text_offset"):
                    values = getattr(lp, name)
                    if values:
                        acc.logprobs.setdefault(name, []).extend(values)
            if choice.finish_reason:
                acc.finish_reason = choice.finish_reason
                # complete only when every choice seen so far has finished (n > 1)
                self.finished = all(c.finish_reason for c in self._choices.values())

    def result(self) -> Completion:
        choices = [
            {
                "index": index,
                "text": "".join(acc.text),
                "finish_reason": acc.finish_reason,
                "logprobs": acc.logprobs,
            }
            for index, acc in sorted(self._choices.items())
        ]
        return Completion.model_validate({**self._head.fields(), "choices": choices})


class StreamCore(Generic[ChunkT, ResultT]):
    """Bytes in, typed chunks out; knows when the stream is complete.

    Args:
        core: the client core (error mapping, redaction).
        response: the streamed response (for the URL and request id in errors).
        chunk_type: the chunk model to parse each event's data into.
        accumulator: assembles the chunks into the final result.
        limits: the request's limits (the stream's total size, one event's size).
    """

    __slots__ = (
        "_acc",
        "_core",
        "_decoder",
        "_max_body",
        "_parse",
        "_response",
        "_size",
        "_what",
        "done",
    )

    def __init__(
        self,
        core: ClientCore,
        response: httpx.Response,
        chunk_type: type[ChunkT],
        accumulator: Accumulator[ChunkT, ResultT],
        limits: Limits,
    ) -> None:
        self._core = core
        self._response = response
        # The validator itself: model_validate_json is a thin wrapper, called once per chunk.
        self._parse: Callable[[str], ChunkT] = chunk_type.__pydantic_validator__.validate_json
        self._what = chunk_type.__name__
        self._acc = accumulator
        self._decoder = SSEDecoder(limits.max_event)
        self._max_body = limits.max_body
        self._size = 0
        self.done = False  # [DONE] received

    @property
    def complete(self) -> bool:
        """The server said the response is complete ([DONE], or every choice finished)."""
        return self.done or self._acc.finished

    def feed(self, data: bytes) -> list[ChunkT]:
        """The chunks completed by ``data``; raises on an error event or a malformed one.

        Errors are raised outside the ``except`` blocks that detect them: a
        decode or validation error quotes the raw bytes, which must not stay
        attached to the exception convo raises.
        """
        limit = self._max_body
        if limit is not None:
            self._size += len(data)
            if self._size > limit:
                raise self._core.too_large("the stream", limit, self._response)
        try:
            events = self._decoder.feed(data)
        except UnicodeDecodeError as exc:
            error: APIError = self._core.decode_error(exc, self._response)
        except EventTooLarge as exc:
            error = self._core.too_large("a server-sent event", exc.limit, self._response)
        else:
            return self._handle(events) if events else []
        raise error

    def take(self, data: bytes, waiting: Deadline | None) -> list[ChunkT] | None:
        """The chunks of ``data``, or None when it held no data event (read on).

        Keep-alive comments and pings keep bytes coming without data: when
        ``waiting`` (the idle or total deadline) has passed meanwhile, that is
        APITimeoutError.
        """
        chunks = self.feed(data)
        if chunks or self.done:
            return chunks
        if waiting is not None and waiting.expired():
            raise self._core.timeout_error(self._response.request, waiting)
        return None

    def _handle(self, events: list[ServerSentEvent]) -> list[ChunkT]:
        chunks: list[ChunkT] = []
        for event in events:
            text = event.data
            if self.done:
                continue  # nothing after [DONE] counts
            if text == "[DONE]" or text.startswith("[DONE]"):
                self.done = True
                continue
            name = event.event
            if name is not None and name != "message":
                if name == "error":
                    raise self._core.stream_error(text, self._response)
                continue  # named events are not chunks (some servers send "ping")
            try:
                chunk = self._parse(text)
            except ValidationError as exc:
                problems = describe(exc)
            else:
                extra = chunk.__pydantic_extra__
                if extra and "error" in extra:
                    raise self._core.stream_error(text, self._response)
                self._acc.add(chunk)
                chunks.append(chunk)
                continue
            raise self._core.validation_error(self._what, problems, text, self._response)
        return chunks

    def finish(self) -> list[ChunkT]:
        """End of the body: the last chunks, or APIStreamError if it ended too early."""
        chunks = self._handle(self._decoder.flush())
        if not self.complete:
            raise self._core.stream_cut_error(self._response)
        return chunks

    def result(self) -> ResultT:
        """What was received so far, assembled."""
        return self._acc.result()
