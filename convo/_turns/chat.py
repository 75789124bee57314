"""Chat: the layer a chatbot backend calls on every user message (sync).

One call stores the user message, builds the context, sends it, stores the
reply and records the run; with tools it runs the tool rounds too. The turn's
logic lives in :mod:`convo._turns.plan` (pure); this shell only answers its
effects with store, builder, client and tool calls. :class:`~convo.AsyncChat`
is the same shell with ``await``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Self

from .._client.core import RequestStats
from .._context.builder import ContextBuilder, _BuilderBase
from .._exceptions import (
    APIError,
    ConfigurationError,
    InvalidMessageError,
    MessageNotFound,
    StoreInputError,
)
from .._messages import Message
from .._records import Conversation, construct
from .._store.branches import Branch
from .plan import (
    Build,
    CallTool,
    Emit,
    Send,
    Sent,
    StoreCall,
    TurnCancelled,
    TurnEvent,
    TurnResult,
    TurnSpec,
    chunk_events,
    partial_response,
    plan_turn,
    run_tool_sync,
    tool_error_text,
)
from .tools import Tool, tool_result_text

if TYPE_CHECKING:
    from .._client.client import OpenAIClient
    from .._context.ops import BuildCounts
    from .._context.report import Context
    from .._context.summarizer import Summarizer
    from .._render.chat import ChatProfile
    from .._render.templates import PromptTemplate
    from .._store.store import Store

__all__ = ["Chat", "TurnStream"]

Mode = Literal["chat", "completion"]


def _as_message(message: str | Message | Mapping[str, Any] | None) -> Message | None:
    if message is None or isinstance(message, Message):
        return message
    if isinstance(message, str):
        # (a user message with text keeps every rule of Message: no validation to run)
        return construct(Message, {
            "role": "user", "content": str.__str__(message), "name": None, "tool_calls": None,
            "refusal": None, "tool_call_id": None, "metadata": {},
        })
    if not isinstance(message, Mapping):
        raise InvalidMessageError(
            f"a turn's message is a str, a Message or a dict, not {type(message).__name__}"
        )
    from .._messages import parse_message

    return parse_message(dict(message))


def _tools(tools: Sequence[Tool | Callable[..., Any]]) -> dict[str, Tool]:
    out: dict[str, Tool] = {}
    for item in tools:
        t = item if isinstance(item, Tool) else Tool.from_function(item)
        if t.name in out:
            raise ConfigurationError(f"two tools are named {t.name!r}")
        out[t.name] = t
    return out


class _ChatBase:
    """Settings shared by :class:`Chat` and :class:`~convo.AsyncChat` (no I/O)."""

    builder: _BuilderBase

    def _setup(
        self,
        *,
        tools: Sequence[Tool | Callable[..., Any]],
        max_tool_rounds: int,
        params: Mapping[str, Any] | None,
        base_url: str | None,
    ) -> None:
        if not isinstance(max_tool_rounds, int) or isinstance(max_tool_rounds, bool) or (
            max_tool_rounds < 0
        ):
            raise ConfigurationError("max_tool_rounds must be an integer >= 0")
        self.tools = _tools(tools)
        self.max_tool_rounds = max_tool_rounds
        self.params = dict(params or {})
        self._base_url = base_url

    def _spec(
        self,
        conversation_id: str,
        message: str | Message | Mapping[str, Any] | None,
        *,
        tool_results: Sequence[Message] = (),
        idempotency_key: str | None,
        owner: str | None,
        response_format: dict[str, Any] | None,
        stream: bool,
        params: Mapping[str, Any],
        resolve_branch: bool = True,
    ) -> TurnSpec:
        merged = {**self.params, **params}
        definitions = [t.definition() for t in self.tools.values()] if self.tools else None
        if isinstance(merged.get("tools"), (list, tuple)):
            # Definitions passed per call replace the registered ones in the body:
            # the context is built (and its tokens counted) with what is sent.
            definitions = [dict(t) for t in merged["tools"]] or None
        return TurnSpec(
            conversation_id=conversation_id,
            user=_as_message(message),
            tool_results=list(tool_results),
            key=idempotency_key,
            owner=owner,
            params=merged,
            response_format=response_format,
            stream=stream,
            tools=self.tools,
            tool_definitions=definitions,
            max_tool_rounds=self.max_tool_rounds,
            builder=self.builder,
            base_url=self._base_url,
            resolve_branch=resolve_branch,
        )


@dataclass(slots=True)
class _StreamState:
    stream: Any = None
    start: float = 0.0
    ttfb_ms: float | None = None


class Chat(_ChatBase):
    """Turns on stored conversations, end to end (sync).

    Args:
        store: where conversations, replies and run records live.
        client: the OpenAI-compatible client requests go through.
        model: the model (with ``mode``, ``template``, ``budget``... a
            :class:`~convo.ContextBuilder` is made); or pass ``builder=``.
        builder: a ready context builder (its settings are recorded in runs).
        tools: :class:`~convo.Tool` values or plain functions the turn runs
            for the model (chat mode); tool rounds stop after ``max_tool_rounds``.
        params: request parameters for every turn (``temperature``, ``seed``,
            ``max_tokens``: sent as the profile's ``max_tokens_param``...);
            per-call ``**params`` override them.

    Example::

        chat = Chat(store, client, model="gpt-4o-mini")
        result = chat.send(conversation_id, "Hello!", idempotency_key=request_id)
        result.reply.text, result.run.latency_ms, result.report.dropped_count
    """

    def __init__(
        self,
        store: Store,
        client: OpenAIClient,
        *,
        model: str | None = None,
        builder: ContextBuilder | None = None,
        mode: Mode = "chat",
        template: PromptTemplate | str | None = None,
        encoding: str | None = None,
        profile: ChatProfile | None = None,
        budget: int | None = None,
        reserve: int | None = None,
        summarizer: Summarizer | None = None,
        tools: Sequence[Tool | Callable[..., Any]] = (),
        max_tool_rounds: int = 8,
        params: Mapping[str, Any] | None = None,
    ) -> None:
        if builder is None:
            if model is None:
                raise ConfigurationError("Chat needs model= (or a ready builder=)")
            builder = ContextBuilder(
                store, model=model, mode=mode, template=template, encoding=encoding,
                profile=profile, budget=budget, reserve=reserve, summarizer=summarizer,
            )
        self.store = store
        self.client = client
        self.builder = builder
        self._setup(tools=tools, max_tool_rounds=max_tool_rounds, params=params,
                    base_url=client.base_url)
        for t in self.tools.values():
            if t.is_async:
                raise ConfigurationError(f"tool {t.name!r} is async: use AsyncChat")

    def __repr__(self) -> str:
        return f"Chat(model={self.builder.model!r}, mode={self.builder.mode!r})"

    # --- turns -----------------------------------------------------------------------

    def send(
        self,
        conversation_id: str,
        message: str | Message | Mapping[str, Any] | None,
        *,
        idempotency_key: str | None = None,
        owner: str | None = None,
        response_format: dict[str, Any] | None = None,
        **params: Any,
    ) -> TurnResult:
        """One turn: store ``message``, build, send, store the reply and the run.

        ``conversation_id`` may be a thread's root: the turn goes to its
        current branch. ``message`` None answers what is stored (e.g. after
        appending a user message yourself). With ``idempotency_key``,
        resending the same key returns the stored reply without calling the
        model, or continues the turn where an earlier attempt stopped.

        Raises:
            APIError: the request failed (after retries); the run says ``failed``
                and the user message stays stored: send again to continue.
            ContextOverflowError: what must be kept does not fit the budget.
        """
        spec = self._spec(conversation_id, message, idempotency_key=idempotency_key,
                          owner=owner, response_format=response_format, stream=False,
                          params=params)
        return _finish(self._drive(plan_turn(spec), events=False))

    def stream(
        self,
        conversation_id: str,
        message: str | Message | Mapping[str, Any] | None,
        *,
        idempotency_key: str | None = None,
        owner: str | None = None,
        response_format: dict[str, Any] | None = None,
        **params: Any,
    ) -> TurnStream:
        """Like :meth:`send`, streamed: iterate the :class:`TurnStream` for deltas.

        The reply and its run are stored when the stream completes. A stream
        that breaks records the run as ``failed`` (``incomplete`` when the
        server stopped without finishing) and one the caller closes early as
        ``cancelled``; the partial reply is kept in the run's ``response``,
        not stored as a message, so later contexts never see half a reply.
        """
        spec = self._spec(conversation_id, message, idempotency_key=idempotency_key,
                          owner=owner, response_format=response_format, stream=True,
                          params=params)
        return TurnStream(self._drive(plan_turn(spec), events=True))

    def continue_turn(
        self,
        conversation_id: str,
        tool_results: Sequence[Message],
        *,
        idempotency_key: str | None = None,
        owner: str | None = None,
        **params: Any,
    ) -> TurnResult:
        """Store the results of a reply's tool calls and send the next round."""
        spec = self._spec(conversation_id, None, tool_results=tool_results,
                          idempotency_key=idempotency_key, owner=owner, response_format=None,
                          stream=False, params=params)
        return _finish(self._drive(plan_turn(spec), events=False))

    # --- branches --------------------------------------------------------------------

    def regenerate(
        self, conversation_id: str, *, owner: str | None = None, **params: Any
    ) -> TurnResult:
        """A new reply to the last user message, on a new branch that becomes current.

        The old reply stays on its branch (see :meth:`branches`).
        """
        current = self._current(conversation_id, owner)
        seq = self._last_user_seq(current, owner)
        branch = self.store.create_branch(current, at=seq, kind="regenerate", owner=owner)
        spec = self._spec(branch.id, None, idempotency_key=None, owner=owner,
                          response_format=None, stream=False, params=params,
                          resolve_branch=False)
        return _finish(self._drive(plan_turn(spec), events=False))

    def edit(
        self,
        conversation_id: str,
        seq: int,
        message: str | Message | Mapping[str, Any],
        *,
        owner: str | None = None,
        idempotency_key: str | None = None,
        **params: Any,
    ) -> TurnResult:
        """Replace user message ``seq`` on a new branch (current from now on) and answer it."""
        current = self._current(conversation_id, owner)
        old = self.store.get_message(current, seq, owner=owner)
        if old.role != "user":
            raise InvalidMessageError(f"message {seq} is a {old.role} message; edit user messages")
        branch = self.store.create_branch(current, at=seq - 1, kind="edit", owner=owner)
        spec = self._spec(branch.id, message, idempotency_key=idempotency_key, owner=owner,
                          response_format=None, stream=False, params=params,
                          resolve_branch=False)
        return _finish(self._drive(plan_turn(spec), events=False))

    def branches(
        self, conversation_id: str, *, include_replays: bool = False, owner: str | None = None
    ) -> list[Branch]:
        """The thread's branches, each with its last message; ``current`` marks where turns go."""
        return self.store.list_branches(
            conversation_id, include_replays=include_replays, owner=owner
        )

    def switch_branch(
        self, conversation_id: str, branch_id: str | None, *, owner: str | None = None
    ) -> Conversation:
        """Make ``branch_id`` (or the root, with None) the thread's current branch."""
        return self.store.set_current_branch(conversation_id, branch_id, owner=owner)

    def build(
        self,
        conversation_id: str,
        *,
        owner: str | None = None,
        response_format: dict[str, Any] | None = None,
        as_of: int | None = None,
    ) -> Context:
        """The context the next turn would send (on the current branch), without sending.

        With ``as_of``, the context as it was with messages up to that seq
        only (no fork is made; see :meth:`~convo.ContextBuilder.build`).
        """
        current = self._current(conversation_id, owner)
        definitions = [t.definition() for t in self.tools.values()] if self.tools else None
        builder: Any = self.builder
        ctx: Context = builder.build(
            current, tools=definitions, response_format=response_format, owner=owner,
            as_of=as_of,
        )
        return ctx

    def _current(self, conversation_id: str, owner: str | None) -> str:
        conversation = self.store.get_conversation(conversation_id, owner=owner)
        return conversation.current_branch_id or conversation.id

    def _last_user_seq(self, conversation_id: str, owner: str | None) -> int:
        for message in self.store.iter_messages(conversation_id, newest_first=True, owner=owner):
            if message.role == "user":
                return message.seq
        raise MessageNotFound(f"conversation {conversation_id!r} has no user message")

    # --- the shell -------------------------------------------------------------------

    def _drive(
        self, plan: Generator[Any, Any, TurnResult], *, events: bool
    ) -> Generator[TurnEvent, None, TurnResult]:
        sent: Sent | None = None
        value: Any = None
        try:
            effect = next(plan)
            while True:
                if isinstance(effect, StoreCall):
                    try:
                        value = getattr(self.store, effect.method)(
                            *effect.args, **effect.kwargs
                        )
                    except StoreInputError as exc:
                        # the plan may record why (a reply the store refuses), or not
                        effect = plan.throw(exc)
                        continue
                elif isinstance(effect, Build):
                    value = self._build(effect)
                elif isinstance(effect, Send):
                    if effect.stream:
                        state = _StreamState()
                        try:
                            sent = yield from self._stream(effect, state)
                        except GeneratorExit:
                            # The caller stopped reading: record the run, then stop.
                            _unwind(plan, self.store, Sent(
                                cancelled=True, partial=_partial(state),
                                ttfb_ms=state.ttfb_ms, latency_ms=_ms(state.start),
                            ))
                            raise
                    else:
                        sent = self._send(effect)
                    value = sent
                elif isinstance(effect, CallTool):
                    value = self._call_tool(effect)
                elif isinstance(effect, Emit):
                    if events:
                        yield effect.event
                    value = None
                effect = plan.send(value)
        except StopIteration as stop:
            result: TurnResult = stop.value
            return result
        except TurnCancelled:
            if sent is not None and sent.error is not None:
                raise sent.error from None
            raise

    def _build(self, effect: Build) -> tuple[Context, BuildCounts | None]:
        """The context, and its new token counts (stored with the run) when convo's
        own build made it; a builder that overrides ``build`` stores its own."""
        builder: Any = self.builder
        kw = {"tools": effect.tools, "response_format": effect.response_format,
              "owner": effect.owner}
        if type(builder).build is ContextBuilder.build:
            built: tuple[Context, BuildCounts | None] = builder._build_for_turn(
                effect.conversation_id, **kw
            )
            return built
        return builder.build(effect.conversation_id, **kw), None

    def _send(self, effect: Send) -> Sent:
        stats = RequestStats()
        start = time.perf_counter()
        try:
            response = self.client.send(effect.endpoint, effect.body, stream=False, stats=stats,
                                           **effect.options)
        except APIError as exc:
            return Sent(error=exc, attempts=stats.attempts, latency_ms=_ms(start))
        except (KeyboardInterrupt, SystemExit) as exc:
            return Sent(error=exc, cancelled=True, attempts=stats.attempts,
                        latency_ms=_ms(start))
        latency = _ms(start)
        return Sent(response=response, body=stats.content, attempts=stats.attempts,
                    ttfb_ms=stats.headers_ms, latency_ms=latency)

    def _stream(self, effect: Send, state: _StreamState) -> Generator[TurnEvent, None, Sent]:
        stats = RequestStats()
        state.start = time.perf_counter()
        try:
            stream = self.client.send(effect.endpoint, effect.body, stream=True, stats=stats,
                                         **effect.options)
        except APIError as exc:
            return Sent(error=exc, attempts=stats.attempts, latency_ms=_ms(state.start))
        except (KeyboardInterrupt, SystemExit) as exc:
            return Sent(error=exc, cancelled=True, attempts=stats.attempts,
                        latency_ms=_ms(state.start))
        state.stream = stream
        try:
            for chunk in stream:
                if state.ttfb_ms is None:
                    state.ttfb_ms = _ms(state.start)
                yield from chunk_events(chunk, effect.round)
            response = stream.final()
        except APIError as exc:
            return Sent(error=exc, partial=_partial(state), attempts=stats.attempts,
                        ttfb_ms=state.ttfb_ms, latency_ms=_ms(state.start))
        except (KeyboardInterrupt, SystemExit) as exc:
            return Sent(error=exc, cancelled=True, partial=_partial(state),
                        attempts=stats.attempts, ttfb_ms=state.ttfb_ms,
                        latency_ms=_ms(state.start))
        finally:
            stream.close()
        return Sent(response=response, attempts=stats.attempts, ttfb_ms=state.ttfb_ms,
                    latency_ms=_ms(state.start))

    def _call_tool(self, effect: CallTool) -> str:
        status, value = run_tool_sync(effect)
        if status == "error" or effect.tool is None:
            return str(value)
        try:
            return tool_result_text(effect.tool.fn(**value))
        except Exception as exc:  # noqa: BLE001 - fed back to the model as the tool result
            return tool_error_text(effect.tool.name, exc)


class TurnStream:
    """A streamed turn: iterate for :data:`~convo.TurnEvent` values.

    Use it as a context manager: leaving early closes the HTTP stream and
    records the run as ``cancelled``. :meth:`result` waits for the end (it
    reads what is left) and returns the :class:`~convo.TurnResult`.
    """

    def __init__(self, events: Generator[TurnEvent, None, TurnResult]) -> None:
        self._events = events
        self._result: TurnResult | None = None

    def __iter__(self) -> Iterator[TurnEvent]:
        return self

    def __next__(self) -> TurnEvent:
        try:
            return next(self._events)
        except StopIteration as stop:
            if stop.value is not None:  # an exhausted generator says None again
                self._result = stop.value
            raise StopIteration from None

    def result(self) -> TurnResult:
        """Read the rest of the stream; the stored result."""
        for _ in self:
            pass
        if self._result is None:
            raise TurnCancelled("the stream was closed before the turn finished")
        return self._result

    def close(self) -> None:
        """Stop the turn (a run in flight is recorded as ``cancelled``)."""
        self._events.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _finish(events: Generator[TurnEvent, None, TurnResult]) -> TurnResult:
    """Run a turn that yields no events (``events=False``) to its result."""
    try:
        while True:
            next(events)
    except StopIteration as stop:
        result: TurnResult = stop.value
        return result


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000


def _partial(state: _StreamState) -> dict[str, Any] | None:
    return partial_response(state.stream.snapshot) if state.stream is not None else None


def _unwind(plan: Generator[Any, Any, TurnResult], store: Any, sent: Sent) -> None:
    """Feed a cancellation into the plan and run the store calls it makes to record it."""
    try:
        effect = plan.send(sent)
        while isinstance(effect, StoreCall):
            try:
                value = getattr(store, effect.method)(*effect.args, **effect.kwargs)
            except StoreInputError as exc:
                effect = plan.throw(exc)  # the plan records the run without what was refused
                continue
            effect = plan.send(value)
    except (TurnCancelled, StopIteration):
        pass
    finally:
        plan.close()
