"""AsyncChat: :class:`~convo.Chat` over an :class:`~convo.AsyncStore` and
:class:`~convo.AsyncOpenAIClient`; the same turn plan (:mod:`convo._turns.plan`),
awaited. Sync tools run in a worker thread, so they never block the event loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Generator, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from .._client.core import RequestStats
from .._context.builder import AsyncContextBuilder
from .._exceptions import (
    APIError,
    ConfigurationError,
    InvalidMessageError,
    MessageNotFound,
    StoreInputError,
)
from .._messages import Message
from .._records import Conversation
from .._store.branches import Branch
from .chat import Mode, _ChatBase, _ms, _partial, _StreamState
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
    chunk_events,
    plan_turn,
    run_tool_sync,
    tool_error_text,
)
from .tools import Tool, tool_result_text

if TYPE_CHECKING:
    from .._client.async_client import AsyncOpenAIClient
    from .._context.ops import BuildCounts
    from .._context.report import Context
    from .._context.summarizer import AsyncSummarizer
    from .._render.chat import ChatProfile
    from .._render.templates import PromptTemplate
    from .._store.async_store import AsyncStore

__all__ = ["AsyncChat", "AsyncTurnStream"]


@dataclass(frozen=True, slots=True)
class _Done:
    result: TurnResult


class AsyncChat(_ChatBase):
    """Turns on stored conversations, end to end (async): :class:`~convo.Chat` with ``await``.

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

        chat = AsyncChat(store, client, model="gpt-4o-mini")
        result = await chat.send(conversation_id, "Hello!", idempotency_key=request_id)
        result.reply.text, result.run.latency_ms, result.report.dropped_count
    """

    def __init__(
        self,
        store: AsyncStore,
        client: AsyncOpenAIClient,
        *,
        model: str | None = None,
        builder: AsyncContextBuilder | None = None,
        mode: Mode = "chat",
        template: PromptTemplate | str | None = None,
        encoding: str | None = None,
        profile: ChatProfile | None = None,
        budget: int | None = None,
        reserve: int | None = None,
        summarizer: AsyncSummarizer | None = None,
        tools: Sequence[Tool | Callable[..., Any]] = (),
        max_tool_rounds: int = 8,
        params: Mapping[str, Any] | None = None,
    ) -> None:
        if builder is None:
            if model is None:
                raise ConfigurationError("Chat needs model= (or a ready builder=)")
            builder = AsyncContextBuilder(
                store, model=model, mode=mode, template=template, encoding=encoding,
                profile=profile, budget=budget, reserve=reserve, summarizer=summarizer,
            )
        self.store = store
        self.client = client
        self.builder = builder
        self._setup(tools=tools, max_tool_rounds=max_tool_rounds, params=params,
                    base_url=client.base_url)

    def __repr__(self) -> str:
        return f"AsyncChat(model={self.builder.model!r}, mode={self.builder.mode!r})"

    # --- turns -----------------------------------------------------------------------

    async def send(
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
        return await _afinish(self._drive(plan_turn(spec), events=False))

    def stream(
        self,
        conversation_id: str,
        message: str | Message | Mapping[str, Any] | None,
        *,
        idempotency_key: str | None = None,
        owner: str | None = None,
        response_format: dict[str, Any] | None = None,
        **params: Any,
    ) -> AsyncTurnStream:
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
        return AsyncTurnStream(self._drive(plan_turn(spec), events=True))

    async def continue_turn(
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
        return await _afinish(self._drive(plan_turn(spec), events=False))

    # --- branches --------------------------------------------------------------------

    async def regenerate(
        self, conversation_id: str, *, owner: str | None = None, **params: Any
    ) -> TurnResult:
        """A new reply to the last user message, on a new branch that becomes current.

        The old reply stays on its branch (see :meth:`branches`).
        """
        current = await self._current(conversation_id, owner)
        seq = await self._last_user_seq(current, owner)
        branch = await self.store.create_branch(current, at=seq, kind="regenerate", owner=owner)
        spec = self._spec(branch.id, None, idempotency_key=None, owner=owner,
                          response_format=None, stream=False, params=params,
                          resolve_branch=False)
        return await _afinish(self._drive(plan_turn(spec), events=False))

    async def edit(
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
        current = await self._current(conversation_id, owner)
        old = await self.store.get_message(current, seq, owner=owner)
        if old.role != "user":
            raise InvalidMessageError(f"message {seq} is a {old.role} message; edit user messages")
        branch = await self.store.create_branch(current, at=seq - 1, kind="edit", owner=owner)
        spec = self._spec(branch.id, message, idempotency_key=idempotency_key, owner=owner,
                          response_format=None, stream=False, params=params,
                          resolve_branch=False)
        return await _afinish(self._drive(plan_turn(spec), events=False))

    async def branches(
        self, conversation_id: str, *, include_replays: bool = False, owner: str | None = None
    ) -> list[Branch]:
        """The thread's branches, each with its last message; ``current`` marks where turns go."""
        return await self.store.list_branches(
            conversation_id, include_replays=include_replays, owner=owner
        )

    async def switch_branch(
        self, conversation_id: str, branch_id: str | None, *, owner: str | None = None
    ) -> Conversation:
        """Make ``branch_id`` (or the root, with None) the thread's current branch."""
        return await self.store.set_current_branch(conversation_id, branch_id, owner=owner)

    async def build(
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
        current = await self._current(conversation_id, owner)
        definitions = [t.definition() for t in self.tools.values()] or None
        builder: Any = self.builder
        ctx: Context = await builder.build(
            current, tools=definitions, response_format=response_format, owner=owner,
            as_of=as_of,
        )
        return ctx

    async def _current(self, conversation_id: str, owner: str | None) -> str:
        conversation = await self.store.get_conversation(conversation_id, owner=owner)
        return conversation.current_branch_id or conversation.id

    async def _last_user_seq(self, conversation_id: str, owner: str | None) -> int:
        async for message in self.store.iter_messages(conversation_id, newest_first=True, owner=owner):
            if message.role == "user":
                return message.seq
        raise MessageNotFound(f"conversation {conversation_id!r} has no user message")

    # --- the shell -------------------------------------------------------------------

    async def _drive(
        self, plan: Generator[Any, Any, TurnResult], *, events: bool
    ) -> AsyncGenerator[TurnEvent | _Done, None]:
        sent: Sent | None = None
        value: Any = None
        try:
            effect = next(plan)
            while True:
                if isinstance(effect, StoreCall):
                    try:
                        value = await getattr(self.store, effect.method)(
                            *effect.args, **effect.kwargs
                        )
                    except StoreInputError as exc:
                        # the plan may record why (a reply the store refuses), or not
                        effect = plan.throw(exc)
                        continue
                elif isinstance(effect, Build):
                    value = await self._build(effect)
                elif isinstance(effect, Send):
                    if effect.stream:
                        state = _StreamState()
                        try:
                            sent = None
                            async for item in self._stream(effect, state):
                                if isinstance(item, Sent):
                                    sent = item
                                else:
                                    yield item
                            assert sent is not None
                        except (GeneratorExit, asyncio.CancelledError):
                            # The caller stopped reading: record the run, then stop.
                            await _aunwind(plan, self.store, Sent(
                                cancelled=True, partial=_partial(state),
                                ttfb_ms=state.ttfb_ms, latency_ms=_ms(state.start),
                            ))
                            raise
                    else:
                        sent = await self._send(effect)
                    value = sent
                elif isinstance(effect, CallTool):
                    value = await self._call_tool(effect)
                elif isinstance(effect, Emit):
                    if events:
                        yield effect.event
                    value = None
                effect = plan.send(value)
        except StopIteration as stop:
            yield _Done(stop.value)
        except TurnCancelled:
            if sent is not None and sent.error is not None:
                raise sent.error from None
            raise

    async def _build(self, effect: Build) -> tuple[Context, BuildCounts | None]:
        """See :meth:`Chat._build <convo.Chat>`."""
        builder: Any = self.builder
        kw = {"tools": effect.tools, "response_format": effect.response_format,
              "owner": effect.owner}
        if type(builder).build is AsyncContextBuilder.build:
            built: tuple[Context, BuildCounts | None] = (
                await builder._build_for_turn(effect.conversation_id, **kw)
            )
            return built
        return await builder.build(effect.conversation_id, **kw), None

    async def _send(self, effect: Send) -> Sent:
        stats = RequestStats()
        start = time.perf_counter()
        try:
            response = await self.client.send(
                effect.endpoint, effect.body, stream=False, stats=stats, **effect.options
            )
        except APIError as exc:
            return Sent(error=exc, attempts=stats.attempts, latency_ms=_ms(start))
        except (KeyboardInterrupt, SystemExit, asyncio.CancelledError) as exc:
            return Sent(error=exc, cancelled=True, attempts=stats.attempts,
                        latency_ms=_ms(start))
        latency = _ms(start)
        return Sent(response=response, body=stats.content, attempts=stats.attempts,
                    ttfb_ms=stats.headers_ms, latency_ms=latency)

    async def _stream(
        self, effect: Send, state: _StreamState
    ) -> AsyncGenerator[TurnEvent | Sent, None]:
        stats = RequestStats()
        state.start = time.perf_counter()
        try:
            stream = await self.client.send(
                effect.endpoint, effect.body, stream=True, stats=stats, **effect.options
            )
        except APIError as exc:
            yield Sent(error=exc, attempts=stats.attempts, latency_ms=_ms(state.start))
            return
        state.stream = stream
        try:
            async for chunk in stream:
                if state.ttfb_ms is None:
                    state.ttfb_ms = _ms(state.start)
                for event in chunk_events(chunk, effect.round):
                    yield event
            response = await stream.final()
        except APIError as exc:
            yield Sent(error=exc, partial=_partial(state), attempts=stats.attempts,
                       ttfb_ms=state.ttfb_ms, latency_ms=_ms(state.start))
            return
        finally:
            await stream.close()
        yield Sent(response=response, attempts=stats.attempts, ttfb_ms=state.ttfb_ms,
                   latency_ms=_ms(state.start))

    async def _call_tool(self, effect: CallTool) -> str:
        status, value = run_tool_sync(effect)
        if status == "error" or effect.tool is None:
            return str(value)
        try:
            if effect.tool.is_async:
                return tool_result_text(await effect.tool.fn(**value))
            # a sync function must not block the event loop
            return tool_result_text(await asyncio.to_thread(effect.tool.fn, **value))
        except Exception as exc:  # noqa: BLE001 - fed back to the model as the tool result
            return tool_error_text(effect.tool.name, exc)


class AsyncTurnStream:
    """A streamed async turn: ``async for event in stream``; see :class:`~convo.TurnStream`.

    Use it as an async context manager: leaving early closes the HTTP stream
    and records the run as ``cancelled``.
    """

    def __init__(self, events: AsyncGenerator[TurnEvent | _Done, None]) -> None:
        self._events = events
        self._result: TurnResult | None = None

    def __aiter__(self) -> AsyncIterator[TurnEvent]:
        return self

    async def __anext__(self) -> TurnEvent:
        while True:
            item = await self._events.__anext__()
            if isinstance(item, _Done):
                self._result = item.result
                continue
            return item

    async def result(self) -> TurnResult:
        """Read the rest of the stream; the stored result."""
        async for _ in self:
            pass
        if self._result is None:
            raise TurnCancelled("the stream was closed before the turn finished")
        return self._result

    async def aclose(self) -> None:
        """Stop the turn (a run in flight is recorded as ``cancelled``)."""
        await self._events.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


async def _afinish(events: AsyncGenerator[TurnEvent | _Done, None]) -> TurnResult:
    async for item in events:
        if isinstance(item, _Done):
            return item.result
    raise TurnCancelled("the turn ended without a result")  # pragma: no cover


async def _aunwind(plan: Generator[Any, Any, TurnResult], store: Any, sent: Sent) -> None:
    """Feed a cancellation into the plan and run the store calls it makes to record it."""
    try:
        effect = plan.send(sent)
        while isinstance(effect, StoreCall):
            # shielded: a second cancellation must not leave the run pending
            try:
                value = await asyncio.shield(
                    getattr(store, effect.method)(*effect.args, **effect.kwargs)
                )
            except StoreInputError as exc:
                effect = plan.throw(exc)  # the plan records the run without what was refused
                continue
            effect = plan.send(value)
    except (TurnCancelled, StopIteration):
        pass
    finally:
        plan.close()
