"""The asynchronous OpenAI-compatible client: a thin shell that sends, sleeps and iterates.

It mirrors :class:`~convo.OpenAIClient` method for method (same names,
awaited); everything but I/O is the shared pure core (``_client/core.py``,
``_client/stream.py``, ``_client/retry.py``, ``_client/sse.py``).
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, Generic, Literal, Self, Unpack, overload

import httpx

from .._exceptions import APIError, APIStreamError, ConfigurationError
from .._messages import Message
from .constants import (
    DEFAULT_CONNECTION_LIMITS,
    DEFAULT_MAX_EVENT_BYTES,
    DEFAULT_MAX_RESPONSE_BYTES,
    DEFAULT_MAX_RETRIES,
    DEFAULT_TIMEOUT,
)
from .core import (
    BodyBuffer,
    ClientCore,
    Deadline,
    Endpoint,
    RequestSpec,
    RequestStats,
    earliest,
)
from .params import ChatParams, CompletionParams, TimeoutTypes
from .pool import pooled_async_transport
from .redact import in_flight
from .stream import (
    Accumulator,
    ChatAccumulator,
    ChunkT,
    CompletionAccumulator,
    ResultT,
    StreamCore,
)
from .types import ChatCompletion, ChatCompletionChunk, Completion, CompletionChunk

__all__ = ["AsyncChatCompletionStream", "AsyncCompletionStream", "AsyncOpenAIClient"]


class _Watchdog:
    """Cancels a task whose attempt or stream read outlives its deadline; one timer for all.

    ``asyncio.timeout`` arms and cancels a timer each time it is entered: per
    request that cost more than a quarter of the client's own time, per
    stream chunk as much as parsing the chunk. Here each waiting task is
    registered with its deadline (a dict entry), and a single timer is armed
    for the earliest one; it is moved only when a deadline comes earlier, and
    when it fires it cancels the tasks whose deadline has passed and re-arms
    for the next. A task is only registered while it awaits convo's own I/O,
    so the CancelledError always arrives there, where :meth:`fired` tells it
    apart from a cancellation by someone else.
    """

    __slots__ = ("_fired", "_handle", "_handle_at", "_waiting")

    def __init__(self) -> None:
        self._waiting: dict[asyncio.Task[Any], tuple[float, int]] = {}
        self._fired: dict[asyncio.Task[Any], int] = {}
        self._handle: asyncio.TimerHandle | None = None
        self._handle_at = 0.0

    def watch(self, at: float | None) -> asyncio.Task[Any] | None:
        """The current task must be done awaiting by ``at`` (monotonic time); its token."""
        if at is None:
            return None
        task = asyncio.current_task()
        if task is None:
            return None
        self._waiting[task] = (at, task.cancelling())
        if self._handle is None or at < self._handle_at:
            if self._handle is not None:
                self._handle.cancel()
            self._arm(at)
        return task

    def unwatch(self, task: asyncio.Task[Any] | None) -> None:
        if task is not None:
            self._waiting.pop(task, None)

    def fired(self, task: asyncio.Task[Any] | None) -> bool:
        """A CancelledError reached ``task``: True if it was this watchdog's doing."""
        if task is None or task not in self._fired:
            return False
        base = self._fired.pop(task)
        return task.uncancel() <= base  # another cancellation too: that one wins

    def _arm(self, at: float) -> None:
        self._handle_at = at
        delay = max(0.0, at - time.monotonic())
        self._handle = asyncio.get_running_loop().call_later(delay, self._fire)

    def _fire(self) -> None:
        self._handle = None
        now = time.monotonic()
        soonest: float | None = None
        for task, (at, base) in list(self._waiting.items()):
            if at <= now:
                del self._waiting[task]
                self._fired[task] = base
                task.cancel()
            elif soonest is None or at < soonest:
                soonest = at
        if soonest is not None:
            self._arm(soonest)


class _AsyncStream(Generic[ChunkT, ResultT]):
    def __init__(
        self,
        core: ClientCore,
        response: httpx.Response,
        chunk_type: type[ChunkT],
        accumulator: Accumulator[ChunkT, ResultT],
        spec: RequestSpec,
        started: float,
        watchdog: _Watchdog,
    ) -> None:
        self.response = response
        self.error: APIError | None = None  # what broke the stream, if something did
        self._core = core
        self._spec = spec
        self._state = StreamCore(core, response, chunk_type, accumulator, spec.limits)
        self._total = spec.stream_deadline(started)
        self._watchdog = watchdog
        self._iterator = self._iterate()

    async def _iterate(self) -> AsyncGenerator[ChunkT, None]:
        state = self._state
        response = self.response
        spec = self._spec
        raw = response.aiter_bytes()
        waiting: Deadline | None = None
        failure: httpx.RequestError | None = None
        try:
            try:
                while True:
                    # The idle clock starts when the caller asks for more (see the sync twin).
                    waiting = earliest(spec.idle_deadline(time.monotonic()), self._total)
                    chunks = await self._next_chunks(raw, waiting)
                    if chunks is None:
                        break
                    for chunk in chunks:
                        yield chunk
                tail = state.finish()
            except httpx.RequestError as exc:
                failure = exc
            except APIError as exc:
                self.error = exc
                raise
            if failure is not None:  # raised here: the httpx error holds the request
                self.error = self._core.transport_error(failure, response.request, waiting)
                raise self.error
            for chunk in tail:
                yield chunk
        finally:
            await response.aclose()

    async def _next_chunks(
        self, raw: AsyncIterator[bytes], waiting: Deadline | None
    ) -> list[ChunkT] | None:
        """The chunks of the next data event(s); None at the end of the body."""
        state = self._state
        watchdog = self._watchdog
        while True:
            # (No log filter here: httpx and httpcore log nothing of a body.)
            watched = watchdog.watch(None if waiting is None else waiting.at)
            timed_out = False
            try:
                data = await anext(raw, None)
            except asyncio.CancelledError:
                if not watchdog.fired(watched):
                    raise  # cancelled by someone else: theirs to handle
                timed_out = True
            finally:
                watchdog.unwatch(watched)
            if timed_out:  # raised out of the except block: nothing chained
                assert waiting is not None
                raise self._core.timeout_error(self.response.request, waiting)
            if data is None:
                return None
            chunks = state.take(data, waiting)
            if chunks is not None:
                return chunks

    def __aiter__(self) -> AsyncIterator[ChunkT]:
        return self._iterator

    async def __anext__(self) -> ChunkT:
        return await anext(self._iterator)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop reading and close the HTTP response (safe to call more than once)."""
        await self._iterator.aclose()
        await self.response.aclose()

    async def final(self) -> ResultT:
        """Read what is left of the stream and return everything assembled.

        Raises:
            APIError: what broke the stream, if something did (see the class
                docstring); APIStreamError when it was closed before the server
                said the response was complete.
        """
        async for _ in self._iterator:
            pass
        if self.error is not None:
            raise self.error
        if not self._state.complete:
            raise APIStreamError(
                "the stream was closed before the response was complete; "
                "snapshot() gives what was received"
            )
        return self._state.result()

    def snapshot(self) -> ResultT:
        """What was received so far, assembled (e.g. to keep a reply cut short)."""
        return self._state.result()


class AsyncChatCompletionStream(_AsyncStream[ChatCompletionChunk, ChatCompletion]):
    """A streamed chat completion: ``async for`` over :class:`~convo.ChatCompletionChunk` values.

    Use it as an async context manager (closing it early closes the HTTP response);
    :meth:`final` returns the assembled :class:`~convo.ChatCompletion`, after
    iterating to the end or on its own (it consumes the rest of the stream);
    :meth:`snapshot` assembles what arrived so far. Errors are those of
    :class:`~convo.ChatCompletionStream`.
    """


class AsyncCompletionStream(_AsyncStream[CompletionChunk, Completion]):
    """A streamed completion: ``async for`` over :class:`~convo.CompletionChunk` values.

    Same protocol as :class:`AsyncChatCompletionStream`; :meth:`final` returns a
    :class:`~convo.Completion`.
    """


class AsyncOpenAIClient:
    """An asynchronous client for OpenAI-compatible servers; the async twin of
    :class:`~convo.OpenAIClient` (same arguments, same methods, awaited).

    Args:
        api_key: sent as ``Authorization: Bearer ...``; defaults to
            ``$OPENAI_API_KEY``. When neither is set no Authorization header is
            sent (local servers need none; Azure-style deployments pass
            ``default_headers={"api-key": ...}``).
        base_url: defaults to ``$OPENAI_BASE_URL``, else ``https://api.openai.com/v1``.
        organization: ``OpenAI-Organization`` header; defaults to ``$OPENAI_ORG_ID``.
        project: ``OpenAI-Project`` header; defaults to ``$OPENAI_PROJECT_ID``.
        timeout: seconds or an ``httpx.Timeout`` (default 600 s, 5 s to connect).
        max_retries: retries after a retryable failure (default 2); per call too.
        default_headers: sent with every request (override convo's own).
        default_query: query parameters of every request (``{"api-version": ...}``).
        http_client: an ``httpx.AsyncClient`` to use; it stays yours (``close()``
            does not close it).
        transport: an ``httpx.AsyncBaseTransport`` for the client convo creates
            (``httpx.MockTransport``, ``convo.testing.FakeBackend().transport()``).
        sleep: how to wait between retries (default ``asyncio.sleep``; inject for tests).
        stream_idle_timeout: streams: the longest wait for the next data event
            (as for :class:`~convo.OpenAIClient`). A deadline cancels the
            attempt (or the read) that passes it, whatever the transport.
        stream_timeout: streams: a deadline for the whole stream (default none).
        max_response_bytes: the largest body, or streamed answer, accepted
            (default 64 MiB; None: no limit); past it, APIResponseTooLargeError.
        max_event_bytes: the largest server-sent event or line accepted
            (default 16 MiB; None: no limit).

    Example::

        async with AsyncOpenAIClient(base_url="http://localhost:8000/v1") as client:
            reply = await client.chat(model="llama3", messages=[Message.user("Hi")])
            print(reply.text)
    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        base_url: str | httpx.URL | None = None,
        organization: str | None = None,
        project: str | None = None,
        timeout: TimeoutTypes = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        default_headers: Mapping[str, str] | None = None,
        default_query: Mapping[str, str] | None = None,
        http_client: httpx.AsyncClient | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
        stream_idle_timeout: float | None = None,
        stream_timeout: float | None = None,
        max_response_bytes: int | None = DEFAULT_MAX_RESPONSE_BYTES,
        max_event_bytes: int | None = DEFAULT_MAX_EVENT_BYTES,
    ) -> None:
        if http_client is not None and transport is not None:
            raise ConfigurationError("pass http_client or transport, not both")
        if http_client is not None and not isinstance(http_client, httpx.AsyncClient):
            raise ConfigurationError(
                f"http_client must be an httpx.AsyncClient, got {type(http_client).__name__}"
            )
        self._core = ClientCore(
            api_key=api_key,
            base_url=base_url,
            organization=organization,
            project=project,
            timeout=timeout,
            max_retries=max_retries,
            default_headers=default_headers,
            default_query=default_query,
            stream_idle_timeout=stream_idle_timeout,
            stream_timeout=stream_timeout,
            max_response_bytes=max_response_bytes,
            max_event_bytes=max_event_bytes,
        )
        self._owns_http = http_client is None
        if http_client is None and transport is None:
            transport = pooled_async_transport(DEFAULT_CONNECTION_LIMITS)
        self._http = http_client or httpx.AsyncClient(
            transport=transport, timeout=timeout, limits=DEFAULT_CONNECTION_LIMITS
        )
        if self._owns_http:
            self._core.own_client(self._http)
        self._sleep = sleep or asyncio.sleep
        self._watchdog = _Watchdog()  # enforces every deadline of this client's requests

    @property
    def base_url(self) -> str:
        """The base URL requests go to (``.../v1``)."""
        return self._core.base_url

    @property
    def max_retries(self) -> int:
        return self._core.max_retries

    def __repr__(self) -> str:
        return f"AsyncOpenAIClient(base_url={self._core.base_url!r}, max_retries={self._core.max_retries})"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection pool (not an ``http_client`` that was passed in)."""
        if self._owns_http:
            await self._http.aclose()

    # -- API ------------------------------------------------------------------------

    async def chat(
        self,
        *,
        model: str,
        messages: Sequence[Message | Mapping[str, Any]],
        **params: Unpack[ChatParams],
    ) -> ChatCompletion:
        """``POST /chat/completions``: the reply to a list of messages.

        Args:
            model: the model name.
            messages: :class:`~convo.Message` values (sent via ``to_openai()``)
                or dicts in OpenAI's format (sent as given).
            **params: OpenAI's parameters (temperature, tools, response_format,
                ...; unset or None is not sent), plus ``extra_body``,
                ``extra_headers``, ``extra_query``, ``timeout``, ``max_retries``.

        Raises:
            APIStatusError: an error status (subclass per status), after retries.
            APIConnectionError: the server could not be reached (after retries).
            APIResponseValidationError: the answer is not a chat completion.
        """
        spec = self._core.chat_request(model, messages, params, stream=False)
        response, content, _ = await self._send(spec)
        return self._core.parse(ChatCompletion, content, response)

    async def chat_stream(
        self,
        *,
        model: str,
        messages: Sequence[Message | Mapping[str, Any]],
        **params: Unpack[ChatParams],
    ) -> AsyncChatCompletionStream:
        """``POST /chat/completions`` with ``stream: true``; same arguments as :meth:`chat`.

        Pass ``stream_options={"include_usage": True}`` to get usage in ``final()``.
        Retries happen only before the first byte of the answer.
        """
        spec = self._core.chat_request(model, messages, params, stream=True)
        response, _, started = await self._send(spec)
        return AsyncChatCompletionStream(
            self._core, response, ChatCompletionChunk, ChatAccumulator(), spec, started, self._watchdog
        )

    async def complete(
        self, *, model: str, prompt: str | Sequence[str], **params: Unpack[CompletionParams]
    ) -> Completion:
        """``POST /completions``: the continuation of a prompt (one string or several).

        Raises the same errors as :meth:`chat`.
        """
        spec = self._core.completion_request(model, prompt, params, stream=False)
        response, content, _ = await self._send(spec)
        return self._core.parse(Completion, content, response)

    async def complete_stream(
        self, *, model: str, prompt: str | Sequence[str], **params: Unpack[CompletionParams]
    ) -> AsyncCompletionStream:
        """``POST /completions`` with ``stream: true``; same arguments as :meth:`complete`."""
        spec = self._core.completion_request(model, prompt, params, stream=True)
        response, _, started = await self._send(spec)
        return AsyncCompletionStream(
            self._core, response, CompletionChunk, CompletionAccumulator(), spec, started, self._watchdog
        )

    # -- a recorded body, byte for byte --------------------------------------------------

    @overload
    async def send(
        self, endpoint: Literal["chat.completions"], body: bytes | str | Mapping[str, Any], *,
        stream: Literal[False] = False, stats: RequestStats | None = None, **options: Any,
    ) -> ChatCompletion: ...
    @overload
    async def send(
        self, endpoint: Literal["chat.completions"], body: bytes | str | Mapping[str, Any], *,
        stream: Literal[True], stats: RequestStats | None = None, **options: Any,
    ) -> AsyncChatCompletionStream: ...
    @overload
    async def send(
        self, endpoint: Literal["completions"], body: bytes | str | Mapping[str, Any], *,
        stream: Literal[False] = False, stats: RequestStats | None = None, **options: Any,
    ) -> Completion: ...
    @overload
    async def send(
        self, endpoint: Literal["completions"], body: bytes | str | Mapping[str, Any], *,
        stream: Literal[True], stats: RequestStats | None = None, **options: Any,
    ) -> AsyncCompletionStream: ...
    @overload
    async def send(
        self, endpoint: Endpoint, body: bytes | str | Mapping[str, Any], *,
        stream: Literal[False] = False, stats: RequestStats | None = None, **options: Any,
    ) -> ChatCompletion | Completion: ...
    @overload
    async def send(
        self, endpoint: Endpoint, body: bytes | str | Mapping[str, Any], *,
        stream: Literal[True], stats: RequestStats | None = None, **options: Any,
    ) -> AsyncChatCompletionStream | AsyncCompletionStream: ...
    @overload
    async def send(
        self, endpoint: Endpoint, body: bytes | str | Mapping[str, Any], *,
        stream: bool = False, stats: RequestStats | None = None, **options: Any,
    ) -> ChatCompletion | Completion | AsyncChatCompletionStream | AsyncCompletionStream: ...

    async def send(
        self,
        endpoint: Endpoint,
        body: bytes | str | Mapping[str, Any],
        *,
        stream: bool = False,
        stats: RequestStats | None = None,
        **options: Any,
    ) -> ChatCompletion | Completion | AsyncChatCompletionStream | AsyncCompletionStream:
        """Send a request body as is to ``endpoint`` (what turns and reproductions use).

        Unlike :meth:`chat` / :meth:`complete`, nothing is added to the body:
        the bytes given are the bytes sent (a run's ``request`` re-sent
        exactly). Retries, deadlines, limits, errors and streams behave as in
        :meth:`chat`.

        Args:
            endpoint: ``"chat.completions"`` or ``"completions"``.
            body: JSON text or bytes (sent byte for byte) or a mapping.
            stream: the body asks for a stream (``"stream": true``).
            stats: filled with the attempts made, the time to the headers and
                (not streamed) the body received.
            **options: per-call options: ``timeout``, ``max_retries``,
                ``extra_headers``, ``extra_query``, ``stream_idle_timeout``,
                ``stream_timeout``, ``max_response_bytes``, ``max_event_bytes``.
        """
        spec = self._core.body_request(endpoint, body, options, stream=stream)
        start = time.perf_counter()
        try:
            response, content, started = await self._send(spec)
        finally:
            if stats is not None:
                stats.attempts = spec.attempts
        if stats is not None:
            stats.headers_ms = (time.perf_counter() - start) * 1000
            if not stream:
                stats.content = content
        if endpoint == "chat.completions":
            if stream:
                return AsyncChatCompletionStream(
                    self._core, response, ChatCompletionChunk, ChatAccumulator(), spec, started,
                    self._watchdog,
                )
            return self._core.parse(ChatCompletion, content, response)
        if stream:
            return AsyncCompletionStream(
                self._core, response, CompletionChunk, CompletionAccumulator(), spec, started,
                self._watchdog,
            )
        return self._core.parse(Completion, content, response)

    # -- the one place that sends ---------------------------------------------------------

    async def _send(self, spec: RequestSpec) -> tuple[httpx.Response, bytes, float]:
        """Send with retries: the response, its body (not read for a stream) and when the
        successful attempt started."""
        request = self._core.build(self._http, spec)
        # What httpx and httpcore log meanwhile is masked with this request's secrets.
        token = in_flight.set(functools.partial(self._core.redactor, request))
        try:
            return await self._attempts(spec, request)
        finally:
            in_flight.reset(token)

    async def _attempts(
        self, spec: RequestSpec, request: httpx.Request
    ) -> tuple[httpx.Response, bytes, float]:
        """Each attempt runs under its deadline (the client's :class:`_Watchdog`)."""
        core = self._core
        retries = 0
        while True:
            spec.attempts += 1
            start = time.monotonic()
            deadline = spec.attempt_deadline(start)
            response: httpx.Response | None = None
            body: BodyBuffer | None = None
            failure: httpx.RequestError | None = None
            watched = self._watchdog.watch(None if deadline is None else deadline.at)
            try:
                response = await self._http.send(request, stream=True)
                core.log_response(request, response, retries)
                if spec.stream and response.status_code < 300:
                    return response, b"", start
                try:
                    body = core.body(response, spec)
                    async for data in response.aiter_bytes():
                        if not body.add(data):
                            break
                finally:
                    await response.aclose()
            except httpx.RequestError as exc:
                if response is None or response.status_code < 300:
                    failure = exc
                # else: the error body broke off; the status still speaks
            except asyncio.CancelledError:
                if not self._watchdog.fired(watched):
                    raise  # cancelled by someone else: theirs to handle
                if response is None or response.status_code < 300:
                    failure = httpx.ReadTimeout("the deadline passed")
            finally:
                self._watchdog.unwatch(watched)
            if failure is None and response is not None and response.status_code < 300:
                return response, b"" if body is None else body.content(), start
            delay = core.settle(request, spec, retries, deadline, failure, response, body)
            await self._sleep(delay)
            retries += 1
