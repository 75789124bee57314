"""The synchronous OpenAI-compatible client: a thin shell that sends, sleeps and iterates.

Everything else (request building, parsing, error mapping, retry decisions,
SSE decoding, stream assembly) is the pure core in ``_client/core.py``,
``_client/stream.py``, ``_client/retry.py`` and ``_client/sse.py``, shared with
:class:`~convo.AsyncOpenAIClient`.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
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
from .deadline import deadline_transport, until
from .params import ChatParams, CompletionParams, TimeoutTypes
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

__all__ = ["ChatCompletionStream", "CompletionStream", "OpenAIClient"]


class _Stream(Generic[ChunkT, ResultT]):
    def __init__(
        self,
        core: ClientCore,
        response: httpx.Response,
        chunk_type: type[ChunkT],
        accumulator: Accumulator[ChunkT, ResultT],
        spec: RequestSpec,
        started: float,
    ) -> None:
        self.response = response
        self.error: APIError | None = None  # what broke the stream, if something did
        self._core = core
        self._spec = spec
        self._state = StreamCore(core, response, chunk_type, accumulator, spec.limits)
        self._total = spec.stream_deadline(started)
        self._iterator = self._iterate()

    def _iterate(self) -> Generator[ChunkT, None, None]:
        state = self._state
        response = self.response
        spec = self._spec
        raw = response.iter_bytes()
        waiting: Deadline | None = None
        failure: httpx.RequestError | None = None
        try:
            try:
                while True:
                    # The idle clock starts when the caller asks for more, not when
                    # the last chunk arrived: a slow consumer is not a silent server.
                    waiting = earliest(spec.idle_deadline(time.monotonic()), self._total)
                    chunks = self._next_chunks(raw, waiting)
                    if chunks is None:
                        break
                    yield from chunks
                tail = state.finish()
            except httpx.RequestError as exc:
                failure = exc
            except APIError as exc:
                self.error = exc
                raise
            if failure is not None:  # raised here: the httpx error holds the request
                self.error = self._core.transport_error(failure, response.request, waiting)
                raise self.error
            yield from tail
        finally:
            response.close()

    def _next_chunks(
        self, raw: Iterator[bytes], waiting: Deadline | None
    ) -> list[ChunkT] | None:
        """The chunks of the next data event(s); None at the end of the body."""
        state = self._state
        at = None if waiting is None else waiting.at
        while True:
            # convo's own transport bounds each socket read by it. (No log filter here:
            # httpx and httpcore log nothing of a body.)
            token = until.set(at)
            try:
                data = next(raw, None)
            finally:
                until.reset(token)
            if data is None:
                return None
            chunks = state.take(data, waiting)
            if chunks is not None:
                return chunks

    def __iter__(self) -> Iterator[ChunkT]:
        return self._iterator

    def __next__(self) -> ChunkT:
        return next(self._iterator)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop reading and close the HTTP response (safe to call more than once)."""
        self._iterator.close()
        self.response.close()

    def final(self) -> ResultT:
        """Read what is left of the stream and return everything assembled.

        Raises:
            APIError: what broke the stream, if something did (see the class
                docstring); APIStreamError when it was closed before the server
                said the response was complete.
        """
        for _ in self._iterator:
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


class ChatCompletionStream(_Stream[ChatCompletionChunk, ChatCompletion]):
    """A streamed chat completion: iterate for :class:`~convo.ChatCompletionChunk` values.

    Use it as a context manager (closing it early closes the HTTP response);
    :meth:`final` returns the assembled :class:`~convo.ChatCompletion`, after
    iterating to the end or on its own (it consumes the rest of the stream);
    :meth:`snapshot` assembles what arrived so far.

    Iterating raises :class:`~convo.APIStreamError` for an error event or a
    stream that ends before the response is complete,
    :class:`~convo.APIResponseValidationError` for a malformed chunk, and
    :class:`~convo.APIConnectionError` / :class:`~convo.APITimeoutError` when
    the connection drops or times out (as the official SDK does). Nothing is
    retried once the body has started; :attr:`error` keeps what broke it.
    """


class CompletionStream(_Stream[CompletionChunk, Completion]):
    """A streamed completion: iterate for :class:`~convo.CompletionChunk` values.

    Same protocol as :class:`ChatCompletionStream`; :meth:`final` returns a
    :class:`~convo.Completion`.
    """


class OpenAIClient:
    """A synchronous client for OpenAI-compatible servers (OpenAI, Azure-style, vLLM,
    llama.cpp, Ollama, LM Studio).

    Args:
        api_key: sent as ``Authorization: Bearer ...``; defaults to
            ``$OPENAI_API_KEY``. When neither is set no Authorization header is
            sent (local servers need none; Azure-style deployments pass
            ``default_headers={"api-key": ...}``).
        base_url: defaults to ``$OPENAI_BASE_URL``, else ``https://api.openai.com/v1``.
        organization: ``OpenAI-Organization`` header; defaults to ``$OPENAI_ORG_ID``.
        project: ``OpenAI-Project`` header; defaults to ``$OPENAI_PROJECT_ID``.
        timeout: seconds or an ``httpx.Timeout`` (default 600 s, 5 s to connect).
            Its largest value is a wall-clock deadline per attempt: connect,
            headers and the whole body (see docs/client.md for streams).
        max_retries: retries after a retryable failure (default 2); per call too.
        default_headers: sent with every request (override convo's own).
        default_query: query parameters of every request (``{"api-version": ...}``);
            a query in ``base_url`` is kept too.
        http_client: an ``httpx.Client`` to use; it stays yours (``close()``
            does not close it).
        transport: an ``httpx.BaseTransport`` for the client convo creates
            (``httpx.MockTransport``, ``convo.testing.FakeBackend().transport()``).
        sleep: how to wait between retries (default ``time.sleep``; inject for tests).
        stream_idle_timeout: streams: the longest wait for the next data event
            (keep-alive comments and pings do not count); default: the
            timeout's read value.
        stream_timeout: streams: a deadline for the whole stream (default none).
        max_response_bytes: the largest body, or streamed answer, accepted
            (default 64 MiB; None: no limit); past it, APIResponseTooLargeError.
        max_event_bytes: the largest server-sent event or line accepted
            (default 16 MiB; None: no limit).

    Example::

        with OpenAIClient(base_url="http://localhost:8000/v1") as client:
            reply = client.chat(model="llama3", messages=[Message.user("Hi")])
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
        http_client: httpx.Client | None = None,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] | None = None,
        stream_idle_timeout: float | None = None,
        stream_timeout: float | None = None,
        max_response_bytes: int | None = DEFAULT_MAX_RESPONSE_BYTES,
        max_event_bytes: int | None = DEFAULT_MAX_EVENT_BYTES,
    ) -> None:
        if http_client is not None and transport is not None:
            raise ConfigurationError("pass http_client or transport, not both")
        if http_client is not None and not isinstance(http_client, httpx.Client):
            raise ConfigurationError(
                f"http_client must be an httpx.Client, got {type(http_client).__name__}"
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
            transport = deadline_transport(DEFAULT_CONNECTION_LIMITS)
        self._http = http_client or httpx.Client(
            transport=transport, timeout=timeout, limits=DEFAULT_CONNECTION_LIMITS
        )
        if self._owns_http:
            self._core.own_client(self._http)
        self._sleep = sleep or time.sleep

    @property
    def base_url(self) -> str:
        """The base URL requests go to (``.../v1``)."""
        return self._core.base_url

    @property
    def max_retries(self) -> int:
        return self._core.max_retries

    def __repr__(self) -> str:
        return (
            f"OpenAIClient(base_url={self._core.base_url!r}, max_retries={self._core.max_retries})"
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool (not an ``http_client`` that was passed in)."""
        if self._owns_http:
            self._http.close()

    # -- API ------------------------------------------------------------------------

    def chat(
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
        response, content, _ = self._send(spec)
        return self._core.parse(ChatCompletion, content, response)

    def chat_stream(
        self,
        *,
        model: str,
        messages: Sequence[Message | Mapping[str, Any]],
        **params: Unpack[ChatParams],
    ) -> ChatCompletionStream:
        """``POST /chat/completions`` with ``stream: true``; same arguments as :meth:`chat`.

        Pass ``stream_options={"include_usage": True}`` to get usage in ``final()``.
        Retries happen only before the first byte of the answer.
        """
        spec = self._core.chat_request(model, messages, params, stream=True)
        response, _, started = self._send(spec)
        return ChatCompletionStream(
            self._core, response, ChatCompletionChunk, ChatAccumulator(), spec, started
        )

    def complete(
        self, *, model: str, prompt: str | Sequence[str], **params: Unpack[CompletionParams]
    ) -> Completion:
        """``POST /completions``: the continuation of a prompt (one string or several).

        Raises the same errors as :meth:`chat`.
        """
        spec = self._core.completion_request(model, prompt, params, stream=False)
        response, content, _ = self._send(spec)
        return self._core.parse(Completion, content, response)

    def complete_stream(
        self, *, model: str, prompt: str | Sequence[str], **params: Unpack[CompletionParams]
    ) -> CompletionStream:
        """``POST /completions`` with ``stream: true``; same arguments as :meth:`complete`."""
        spec = self._core.completion_request(model, prompt, params, stream=True)
        response, _, started = self._send(spec)
        return CompletionStream(
            self._core, response, CompletionChunk, CompletionAccumulator(), spec, started
        )

    # -- a recorded body, byte for byte --------------------------------------------------

    @overload
    def send(
        self, endpoint: Literal["chat.completions"], body: bytes | str | Mapping[str, Any], *,
        stream: Literal[False] = False, stats: RequestStats | None = None, **options: Any,
    ) -> ChatCompletion: ...
    @overload
    def send(
        self, endpoint: Literal["chat.completions"], body: bytes | str | Mapping[str, Any], *,
        stream: Literal[True], stats: RequestStats | None = None, **options: Any,
    ) -> ChatCompletionStream: ...
    @overload
    def send(
        self, endpoint: Literal["completions"], body: bytes | str | Mapping[str, Any], *,
        stream: Literal[False] = False, stats: RequestStats | None = None, **options: Any,
    ) -> Completion: ...
    @overload
    def send(
        self, endpoint: Literal["completions"], body: bytes | str | Mapping[str, Any], *,
        stream: Literal[True], stats: RequestStats | None = None, **options: Any,
    ) -> CompletionStream: ...
    @overload
    def send(
        self, endpoint: Endpoint, body: bytes | str | Mapping[str, Any], *,
        stream: Literal[False] = False, stats: RequestStats | None = None, **options: Any,
    ) -> ChatCompletion | Completion: ...
    @overload
    def send(
        self, endpoint: Endpoint, body: bytes | str | Mapping[str, Any], *,
        stream: Literal[True], stats: RequestStats | None = None, **options: Any,
    ) -> ChatCompletionStream | CompletionStream: ...
    @overload
    def send(
        self, endpoint: Endpoint, body: bytes | str | Mapping[str, Any], *,
        stream: bool = False, stats: RequestStats | None = None, **options: Any,
    ) -> ChatCompletion | Completion | ChatCompletionStream | CompletionStream: ...

    def send(
        self,
        endpoint: Endpoint,
        body: bytes | str | Mapping[str, Any],
        *,
        stream: bool = False,
        stats: RequestStats | None = None,
        **options: Any,
    ) -> ChatCompletion | Completion | ChatCompletionStream | CompletionStream:
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
            response, content, started = self._send(spec)
        finally:
            if stats is not None:
                stats.attempts = spec.attempts
        if stats is not None:
            stats.headers_ms = (time.perf_counter() - start) * 1000
            if not stream:
                stats.content = content
        if endpoint == "chat.completions":
            if stream:
                return ChatCompletionStream(
                    self._core, response, ChatCompletionChunk, ChatAccumulator(), spec, started
                )
            return self._core.parse(ChatCompletion, content, response)
        if stream:
            return CompletionStream(
                self._core, response, CompletionChunk, CompletionAccumulator(), spec, started
            )
        return self._core.parse(Completion, content, response)

    # -- the one place that sends ---------------------------------------------------------

    def _send(self, spec: RequestSpec) -> tuple[httpx.Response, bytes, float]:
        """Send with retries: the response, its body (not read for a stream) and when the
        successful attempt started."""
        request = self._core.build(self._http, spec)
        # What httpx and httpcore log meanwhile is masked with this request's secrets.
        token = in_flight.set(functools.partial(self._core.redactor, request))
        try:
            return self._attempts(spec, request)
        finally:
            in_flight.reset(token)

    def _attempts(
        self, spec: RequestSpec, request: httpx.Request
    ) -> tuple[httpx.Response, bytes, float]:
        """Each attempt has its own deadline (see ``_client.deadline``)."""
        core = self._core
        retries = 0
        while True:
            spec.attempts += 1
            start = time.monotonic()
            deadline = spec.attempt_deadline(start)
            response: httpx.Response | None = None
            body: BodyBuffer | None = None
            failure: httpx.RequestError | None = None
            token = until.set(None if deadline is None else deadline.at)
            try:
                response = self._http.send(request, stream=True)
                core.log_response(request, response, retries)
                if spec.stream and response.status_code < 300:
                    return response, b"", start
                try:
                    body = core.body(response, spec)
                    for data in response.iter_bytes():
                        if not body.add(data):
                            break
                        # What a transport convo did not build cannot bound its reads.
                        if deadline is not None and deadline.expired():
                            raise httpx.ReadTimeout("the deadline passed")
                finally:
                    response.close()
            except httpx.RequestError as exc:
                if response is None or response.status_code < 300:
                    failure = exc
                # else: the error body broke off; the status still speaks
            finally:
                until.reset(token)
            if failure is None and response is not None and response.status_code < 300:
                return response, b"" if body is None else body.content(), start
            delay = core.settle(request, spec, retries, deadline, failure, response, body)
            self._sleep(delay)
            retries += 1
