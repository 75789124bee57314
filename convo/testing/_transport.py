"""The fake backend as an ``httpx.MockTransport`` (in process, no sockets).

One sync handler serves ``httpx.Client`` and ``httpx.AsyncClient`` alike;
streamed bodies are byte streams that both can iterate. What a real server
would do to the connection is mapped to the exception httpx raises for it:
a stall is ``httpx.ReadTimeout``, a dropped stream ``httpx.RemoteProtocolError``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from typing import TYPE_CHECKING

import httpx

if TYPE_CHECKING:
    from ._backend import FakeBackend

__all__ = ["make_transport"]

_DROPPED = "peer closed connection without sending complete message body (incomplete chunked read)"


class _Body(httpx.SyncByteStream, httpx.AsyncByteStream):
    """Parts of a body, then (when ``abort``) the error of a dropped connection."""

    def __init__(self, parts: Sequence[bytes], *, abort: bool, request: httpx.Request) -> None:
        self._parts = parts
        self._abort = abort
        self._request = request

    def __iter__(self) -> Iterator[bytes]:
        yield from self._parts
        if self._abort:
            raise httpx.RemoteProtocolError(_DROPPED, request=self._request)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for part in self._parts:
            yield part
        if self._abort:
            raise httpx.RemoteProtocolError(_DROPPED, request=self._request)


def make_transport(backend: FakeBackend) -> httpx.MockTransport:
    """An ``httpx.MockTransport`` answering with ``backend``."""

    def handle(request: httpx.Request) -> httpx.Response:
        url = request.url
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in request.headers.raw}
        outcome = backend._dispatch(
            request.method,
            url.path,
            url.query.decode("ascii"),
            headers,
            request.content,
            bare_paths=True,
        )
        if outcome.stall is not None:
            raise httpx.ReadTimeout("timed out (convo.testing: scripted timeout)", request=request)
        if outcome.events is not None:
            parts: Sequence[bytes] = outcome.events
            if outcome.cut_after is not None:
                parts = parts[: outcome.cut_after]
        elif outcome.cut_after is not None:
            parts = [outcome.body[: outcome.cut_after]]
        else:
            return httpx.Response(outcome.status, headers=outcome.headers, content=outcome.body)
        abort = outcome.cut_after is not None and outcome.abort
        stream = _Body(parts, abort=abort, request=request)
        return httpx.Response(outcome.status, headers=outcome.headers, stream=stream)

    return httpx.MockTransport(handle)
