"""The asynchronous OpenAI-compatible client: a thin shell that sends, sleeps and iterates.

It mirrors :class:`~convo.OpenAIClient` method for method (same names,
awaited); everything but I/O is the shared pure core (``_client_core.py``,
``_client_stream.py``, ``_retry.py``, ``_sse.py``).
"""

from __future__ import annotations

import asyncio
import time as _time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, Generic, Literal, Self, Unpack, overload

import httpx

from ._client_core import ClientCore, Endpoint, RequestSpec, RequestStats
from ._client_params import ChatParams, CompletionParams, TimeoutTypes
from ._client_pool import pooled_async_transport
from ._client_stream import (
    Accumulator,
    ChatAccumulator,
    ChunkT,
    CompletionAccumulator,
    ResultT,
    StreamCore,
)
from ._constants import DEFAULT_CONNECTION_LIMITS, DEFAULT_MAX_RETRIES, DEFAULT_TIMEOUT
from ._exceptions import APIError, APIStreamError, ConfigurationError
from ._messages import Message
from ._types import ChatCompletion, ChatCompletionChunk, Completion, CompletionChunk

__all__ = ["AsyncChatCompletionStream", "AsyncCompletionStream", "AsyncOpenAIClient"]


class _AsyncStream(Generic[ChunkT, ResultT]):
    def __init__(
        self,
        core: ClientCore,
        response: httpx.Response,
        chunk_type: type[ChunkT],
        accumulator: Accumulator[ChunkT, ResultT],
    ) -> None:
        self.response = response
        self.error: APIError | None = None  # what broke the stream, if something did
        self._core = core
        self._state = StreamCore(core, response, chunk_type, accumulator)
        self._iterator = self._iterate()

    async def _iterate(self) -> AsyncGenerator[ChunkT, None]:
        state = self._state
        response = self.response
        try:
            try:
                async for data in response.aiter_bytes():
                    chunks = state.feed(data)
                    if chunks:
                        for chunk in chunks:
                            yield chunk
                tail = state.finish()
            except httpx.RequestError as exc:
                self.error = self._core.transport_error(exc, response.request)
                raise self.error from exc
            except APIError as exc:
                self.error = exc
                raise
            for chunk in tail:
                yield chunk
        finally:
            await response.aclose()

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
        return self._core.parse(ChatCompletion, await self._send(spec))

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
        return AsyncChatCompletionStream(
            self._core, await self._send(spec), ChatCompletionChunk, ChatAccumulator()
        )

    async def complete(
        self, *, model: str, prompt: str | Sequence[str], **params: Unpack[CompletionParams]
    ) -> Completion:
        """``POST /completions``: the continuation of a prompt (one string or several).

        Raises the same errors as :meth:`chat`.
        """
        spec = self._core.completion_request(model, prompt, params, stream=False)
        return self._core.parse(Completion, await self._send(spec))

    async def complete_stream(
        self, *, model: str, prompt: str | Sequence[str], **params: Unpack[CompletionParams]
    ) -> AsyncCompletionStream:
        """``POST /completions`` with ``stream: true``; same arguments as :meth:`complete`."""
        spec = self._core.completion_request(model, prompt, params, stream=True)
        return AsyncCompletionStream(
            self._core, await self._send(spec), CompletionChunk, CompletionAccumulator()
        )

    # -- a recorded body, byte for byte --------------------------------------------------

    @overload
    async def send(
        self, endpoint: Literal["chat.completions"], body: bytes | str | Mapping[str, Any], *,
        stream: Literal[False] = False, stats: RequestStats | None = None,
        timeout: TimeoutTypes | None = None, max_retries: int | None = None,
    ) -> ChatCompletion: ...
    @overload
    async def send(
        self, endpoint: Literal["chat.completions"], body: bytes | str | Mapping[str, Any], *,
        stream: Literal[True], stats: RequestStats | None = None,
        timeout: TimeoutTypes | None = None, max_retries: int | None = None,
    ) -> AsyncChatCompletionStream: ...
    @overload
    async def send(
        self, endpoint: Literal["completions"], body: bytes | str | Mapping[str, Any], *,
        stream: Literal[False] = False, stats: RequestStats | None = None,
        timeout: TimeoutTypes | None = None, max_retries: int | None = None,
    ) -> Completion: ...
    @overload
    async def send(
        self, endpoint: Literal["completions"], body: bytes | str | Mapping[str, Any], *,
        stream: Literal[True], stats: RequestStats | None = None,
        timeout: TimeoutTypes | None = None, max_retries: int | None = None,
    ) -> AsyncCompletionStream: ...
    @overload
    async def send(
        self, endpoint: Endpoint, body: bytes | str | Mapping[str, Any], *,
        stream: Literal[False] = False, stats: RequestStats | None = None,
        timeout: TimeoutTypes | None = None, max_retries: int | None = None,
    ) -> ChatCompletion | Completion: ...
    @overload
    async def send(
        self, endpoint: Endpoint, body: bytes | str | Mapping[str, Any], *,
        stream: Literal[True], stats: RequestStats | None = None,
        timeout: TimeoutTypes | None = None, max_retries: int | None = None,
    ) -> AsyncChatCompletionStream | AsyncCompletionStream: ...
    @overload
    async def send(
        self, endpoint: Endpoint, body: bytes | str | Mapping[str, Any], *,
        stream: bool = False, stats: RequestStats | None = None,
        timeout: TimeoutTypes | None = None, max_retries: int | None = None,
    ) -> ChatCompletion | Completion | AsyncChatCompletionStream | AsyncCompletionStream: ...

    async def send(
        self,
        endpoint: Endpoint,
        body: bytes | str | Mapping[str, Any],
        *,
        stream: bool = False,
        stats: RequestStats | None = None,
        timeout: TimeoutTypes | None = None,
        max_retries: int | None = None,
    ) -> ChatCompletion | Completion | AsyncChatCompletionStream | AsyncCompletionStream:
        """Send a request body as is to ``endpoint`` (what turns and reproductions use).

        Unlike :meth:`chat` / :meth:`complete`, nothing is added to the body:
        the bytes given are the bytes sent (a run's ``request`` re-sent
        exactly). Retries, errors and streams behave as in :meth:`chat`.

        Args:
            endpoint: ``"chat.completions"`` or ``"completions"``.
            body: JSON text or bytes (sent byte for byte) or a mapping.
            stream: the body asks for a stream (``"stream": true``).
            stats: filled with the attempts made and the time to the headers.
        """
        spec = self._core.body_request(
            endpoint, body, stream=stream, timeout=timeout, max_retries=max_retries
        )
        start = _time.perf_counter()
        try:
            response = await self._send(spec)
        finally:
            if stats is not None:
                stats.attempts = spec.attempts
        if stats is not None:
            stats.headers_ms = (_time.perf_counter() - start) * 1000
        if endpoint == "chat.completions":
            if stream:
                return AsyncChatCompletionStream(self._core, response, ChatCompletionChunk,
                                                 ChatAccumulator())
            return self._core.parse(ChatCompletion, response)
        if stream:
            return AsyncCompletionStream(
                self._core, response, CompletionChunk, CompletionAccumulator()
            )
        return self._core.parse(Completion, response)

    # -- the one place that sends ---------------------------------------------------------

    async def _send(self, spec: RequestSpec) -> httpx.Response:
        core = self._core
        request = core.build(self._http, spec)
        retries = 0
        while True:
            spec.attempts += 1
            try:
                response = await self._http.send(request, stream=spec.stream)
            except httpx.RequestError as exc:
                delay = core.retry_after_error(exc, retries, spec)
                if delay is None:
                    raise core.transport_error(exc, request) from exc
                core.log_retry(request, type(exc).__name__, retries, delay)
            else:
                core.log_response(request, response, retries)
                if response.status_code < 300:
                    return response
                try:
                    if spec.stream:
                        await response.aread()
                except httpx.RequestError:
                    pass  # the status alone still says what happened
                finally:
                    await response.aclose()
                delay = core.retry_after_status(response, retries, spec)
                if delay is None:
                    raise core.status_error(response)
                core.log_retry(request, f"status {response.status_code}", retries, delay)
            await self._sleep(delay)
            retries += 1
