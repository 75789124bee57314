"""A loopback HTTP server that answers slowly: for testing deadlines and idle timeouts.

Every request gets the same answer, written piece by piece with a pause
before each piece: a status line and headers one byte at a time, a body one
byte at a time, or a stream of server-sent keep-alive comments that never
ends. Per-operation socket timeouts never fire against it (bytes keep
coming); only a real deadline stops a client::

    from convo.testing import TricklingServer

    with TricklingServer.pings(interval=0.2) as server:
        client = OpenAIClient(base_url=server.base_url, stream_idle_timeout=1.0)
        ...  # chat_stream(...) raises APITimeoutError after about a second

Closing the server ends its connections at once (no thread outlives it).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Self

__all__ = ["TricklingServer"]

_CHUNK = {
    "id": "chatcmpl-slow",
    "object": "chat.completion.chunk",
    "created": 1700000000,
    "model": "slow-model",
    "choices": [{"index": 0, "delta": {"content": "."}, "finish_reason": None}],
}


class TricklingServer:
    """Answers every request with ``pieces()``, pausing ``interval`` seconds before each.

    Args:
        pieces: makes the bytes of one answer, in the pieces to write (called
            once per request; it may never end).
        interval: the pause before each piece, in seconds.
        host: the interface to listen on (a free port is picked).

    Attributes:
        base_url: ``"http://HOST:PORT/v1"``, for OpenAI clients.
        requests: how many requests it received.
    """

    def __init__(
        self, pieces: Callable[[], Iterable[bytes]], *, interval: float, host: str = "127.0.0.1"
    ) -> None:
        self._pieces = pieces
        self._interval = interval
        self._listener = socket.create_server((host, 0))
        self.port: int = self._listener.getsockname()[1]
        self.base_url = f"http://{host}:{self.port}/v1"
        self.requests = 0
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._live: list[tuple[socket.socket, threading.Thread]] = []
        self._thread = threading.Thread(target=self._accept, name="convo-trickle", daemon=True)
        self._thread.start()

    # -- answers ------------------------------------------------------------------------

    @classmethod
    def headers(cls, *, interval: float = 0.5) -> TricklingServer:
        """Status line and headers, one byte per ``interval``; they never end."""

        def pieces() -> Iterator[bytes]:
            head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
            yield from (head[i : i + 1] for i in range(len(head)))
            for i in itertools.count():
                line = b"x-pad-%d: %s\r\n" % (i, b"a" * 20)
                yield from (line[j : j + 1] for j in range(len(line)))

        return cls(pieces, interval=interval)

    @classmethod
    def body(cls, *, interval: float = 0.5) -> TricklingServer:
        """Headers at once, then a JSON body one byte per ``interval`` (about a day long)."""
        size = int(86400 / max(interval, 1e-3)) + 2

        def pieces() -> Iterator[bytes]:
            yield b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
            yield b"content-length: %d\r\n\r\n{" % size
            for _ in range(size - 2):
                yield b" "
            yield b"}"

        return cls(pieces, interval=interval)

    @classmethod
    def pings(cls, *, interval: float = 0.5, first_chunk: bool = True) -> TricklingServer:
        """A stream: one chunk (if ``first_chunk``), then ``: ping`` comments forever."""

        def pieces() -> Iterator[bytes]:
            yield _sse_head()
            if first_chunk:
                yield _chunked(b"data: " + json.dumps(_CHUNK).encode() + b"\n\n")
            while True:
                yield _chunked(b": ping\n\n")

        return cls(pieces, interval=interval)

    @classmethod
    def stream(cls, *, interval: float = 0.5) -> TricklingServer:
        """A stream of data events, one per ``interval``, that never finishes."""

        def pieces() -> Iterator[bytes]:
            yield _sse_head()
            event = _chunked(b"data: " + json.dumps(_CHUNK).encode() + b"\n\n")
            while True:
                yield event

        return cls(pieces, interval=interval)

    # -- serving ------------------------------------------------------------------------

    def _accept(self) -> None:
        self._listener.settimeout(0.05)
        while not self._stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            thread = threading.Thread(target=self._answer, args=(conn,), daemon=True)
            with self._lock:
                self._live.append((conn, thread))
            thread.start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if not _read_request(conn):
                return
            with self._lock:
                self.requests += 1
            for piece in self._pieces():
                if self._stopping.wait(self._interval):
                    return
                try:
                    conn.sendall(piece)
                except OSError:  # the client gave up: what the tests want
                    return

    def close(self) -> None:
        """Stop serving and end every connection (idempotent)."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        self._thread.join()
        self._listener.close()
        with self._lock:
            live = list(self._live)
        for conn, thread in live:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            thread.join(5.0)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<TricklingServer {self.base_url}>"


def _sse_head() -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
        b"transfer-encoding: chunked\r\n\r\n"
    )


def _chunked(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _read_request(conn: socket.socket) -> bool:
    """Read one request (head and a Content-Length body); False if the client left."""
    conn.settimeout(10.0)
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            more = conn.recv(65536)
            if not more:
                return False
            data += more
        head, _, rest = data.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip() or b"0")
        while len(rest) < length:
            more = conn.recv(65536)
            if not more:
                return False
            rest += more
    except (OSError, ValueError):
        return False
    return True
