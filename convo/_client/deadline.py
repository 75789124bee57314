"""Wall-clock deadlines for the synchronous client, enforced at the socket.

httpx's timeouts bound each socket operation, not a request: a server that
sends one byte every half second never trips a 2 s read timeout, and a sync
call has no way to be cancelled from outside. The synchronous client's own
transport therefore reads and writes its sockets through
:class:`_DeadlineBackend`: every connect, TLS handshake, read and write waits
at most until the deadline the shell has set for the current attempt (a
context variable, so each thread and each request has its own), and one that
would start after it raises httpcore's timeout, which httpx turns into its
own. Headers trickled byte by byte are bounded as surely as a body.

The async client needs none of this: it cancels the task of an attempt (or
a stream read) that passes its deadline, which works with any transport. For a sync ``transport``
or ``http_client`` passed in, the shell can only check the deadline between
the chunks of a body (see docs/client.md).
"""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterable
from contextvars import ContextVar
from typing import Any

import httpcore
import httpx

__all__ = ["deadline_transport", "until"]

# The monotonic time until which the current attempt may wait; None: no deadline.
until: ContextVar[float | None] = ContextVar("convo_client_until", default=None)


def _bounded(timeout: float | None, error: type[Exception]) -> float | None:
    """``timeout`` shortened to what is left before the deadline; past it, ``error``."""
    deadline = until.get()
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise error("the deadline of the request passed")
    return left if timeout is None or timeout > left else timeout


class _DeadlineStream(httpcore.NetworkStream):
    __slots__ = ("_inner",)

    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _bounded(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _bounded(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: Any,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        inner = self._inner.start_tls(
            ssl_context, server_hostname, _bounded(timeout, httpcore.ConnectTimeout)
        )
        return _DeadlineStream(inner)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    def __init__(self, inner: httpcore.NetworkBackend) -> None:
        self._inner = inner

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        stream = self._inner.connect_tcp(
            host,
            port,
            timeout=_bounded(timeout, httpcore.ConnectTimeout),
            local_address=local_address,
            socket_options=socket_options,
        )
        return _DeadlineStream(stream)

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        stream = self._inner.connect_unix_socket(
            path, timeout=_bounded(timeout, httpcore.ConnectTimeout), socket_options=socket_options
        )
        return _DeadlineStream(stream)

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def deadline_transport(limits: httpx.Limits) -> httpx.HTTPTransport | None:
    """The sync client's own transport, its sockets bounded by the attempt's deadline.

    None when proxy environment variables are set: httpx honours them only for
    its default transport, and the deadline is then checked between chunks.
    """
    if urllib.request.getproxies():
        return None
    transport = httpx.HTTPTransport(limits=limits)
    # httpx builds its httpcore pool without a way to pass a network backend;
    # the pool keeps the backend it creates connections with in this attribute.
    pool = getattr(transport, "_pool", None)
    backend = getattr(pool, "_network_backend", None)
    if isinstance(backend, httpcore.NetworkBackend):
        pool._network_backend = _DeadlineBackend(backend)  # type: ignore[union-attr]
    return transport


def enforced(transport: httpx.BaseTransport | None) -> bool:
    """Whether ``transport`` bounds its sockets by the deadline (for tests and docs)."""
    pool = getattr(transport, "_pool", None)
    return isinstance(getattr(pool, "_network_backend", None), _DeadlineBackend)
