"""The fake backend as a real HTTP server on loopback (stdlib only).

A ``ThreadingHTTPServer`` in a background thread speaks HTTP/1.1 with
keep-alive: JSON answers carry ``Content-Length``; streams use
``Transfer-Encoding: chunked``, one chunk per SSE event, so a cut stream is a
chunked body without its terminating chunk, exactly what a dropped upstream
connection looks like. Closing the server also closes the connections clients
keep alive, so no thread outlives it.
"""

from __future__ import annotations

import contextlib
import select
import selectors
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from ._core import Outcome

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._backend import FakeBackend

__all__ = ["FakeServer", "serve_forever"]


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    timeout = 0.0  # handle_request() is only called when a connection is waiting
    request_queue_size = 1024  # many concurrent clients connect at once in load tests

    def __init__(self, address: tuple[str, int], backend: FakeBackend) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.backend = backend
        self.stopping = threading.Event()
        self._live: dict[socket.socket, threading.Thread] = {}
        self._live_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        # Track each connection's thread so close() can end and join them.
        thread = threading.Thread(
            target=self.process_request_thread, args=(request, client_address), daemon=True
        )
        with self._live_lock:
            self._live[request] = thread
        thread.start()

    def shutdown_request(self, request: Any) -> None:
        with self._live_lock:
            self._live.pop(request, None)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that reset or drop a connection (timeouts, pools closing) are normal here.
        if isinstance(sys.exc_info()[1], OSError):
            return
        super().handle_error(request, client_address)

    def end_connections(self, timeout: float) -> None:
        with self._live_lock:
            live = list(self._live.items())
        for sock, _ in live:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for _, thread in live:
            thread.join(timeout)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out as separate writes; with Nagle's algorithm the body then
    # waits for the client's delayed ACK (~40 ms per request). Stream events must not wait.
    disable_nagle_algorithm = True
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the fake is silent; requests are in backend.requests

    def do_GET(self) -> None:
        self._answer()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("transfer-encoding") or "").lower():
            parts: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("content-length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _answer(self) -> None:
        body = self._read_body()
        path, _, query = self.path.partition("?")
        headers = {k.lower(): v for k, v in self.headers.items()}
        outcome = self.server.backend._dispatch(
            self.command, path, query, headers, body, raise_errors=False
        )
        try:
            self._send(outcome)
        except OSError:  # the client went away: nothing left to answer
            self.close_connection = True

    def _send(self, outcome: Outcome) -> None:
        if outcome.stall is not None:
            self._stall(outcome.stall)
            self.close_connection = True
            return
        self.send_response(outcome.status)
        for name, value in outcome.headers:
            self.send_header(name, value)
        cut = outcome.cut_after
        if outcome.events is not None:
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            events = outcome.events if cut is None else outcome.events[:cut]
            for event in events:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
            if cut is None or not outcome.abort:
                self.wfile.write(b"0\r\n\r\n")
            else:
                self.close_connection = True  # no terminating chunk: an incomplete body
            return
        body = outcome.body
        if cut is not None and not outcome.abort:
            body = body[:cut]
            cut = None
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        if cut is None:
            self.wfile.write(body)
        else:  # fewer bytes than announced, then the connection drops
            self.wfile.write(body[:cut])
            self.close_connection = True

    def _stall(self, seconds: float) -> None:
        """Answer nothing until ``seconds`` pass, the client leaves or the server stops."""
        deadline = time.monotonic() + seconds
        sock = self.connection
        while not self.server.stopping.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            readable, _, _ = select.select([sock], [], [], min(0.05, left))
            if readable:
                try:
                    if not sock.recv(1, socket.MSG_PEEK):
                        return  # the client closed the connection (its timeout fired)
                except OSError:
                    return
                time.sleep(0.05)


class FakeServer:
    """A :class:`FakeBackend` served over HTTP on a background thread.

    Get one from :meth:`FakeBackend.serve`; use it as a context manager or call
    :meth:`close`.

    Attributes:
        backend: the backend it serves.
        host, port: where it listens (``port`` is the real one when 0 was asked).
        url: ``"http://HOST:PORT"``.
        base_url: ``"http://HOST:PORT/v1"``, the base URL for OpenAI clients.
    """

    def __init__(self, backend: FakeBackend, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.backend = backend
        self._httpd = _HTTPServer((host, port), backend)
        self.host = host
        self.port: int = self._httpd.server_address[1]
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{self.port}"
        self.base_url = f"{self.url}/v1"
        # A socket pair wakes the serving loop at once on close(): no polling delay.
        self._wake_r, self._wake_w = socket.socketpair()
        self._closed = False
        self._thread = threading.Thread(
            target=self._serve, name=f"convo-fake-server:{self.port}", daemon=True
        )
        self._thread.start()

    def _serve(self) -> None:
        httpd = self._httpd
        with selectors.DefaultSelector() as selector:
            selector.register(httpd, selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
            while not httpd.stopping.is_set():
                for key, _ in selector.select():
                    if key.fileobj is httpd and not httpd.stopping.is_set():
                        httpd.handle_request()  # ready: returns at once

    def __repr__(self) -> str:
        return f"<FakeServer {self.base_url}{' closed' if self._closed else ''}>"

    def close(self) -> None:
        """Stop serving, end open connections and release the port (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._httpd.stopping.set()
        self._wake_w.send(b"x")
        self._thread.join()
        self._httpd.end_connections(timeout=5.0)
        self._httpd.server_close()
        self._wake_r.close()
        self._wake_w.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def serve_forever(
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    backend: FakeBackend | None = None,
    on_ready: Callable[[FakeServer], None] | None = None,
) -> None:
    """Serve a fake backend until interrupted (the ``convo serve-fake`` command).

    Prints nothing; returns on ``KeyboardInterrupt`` after closing the server.

    Args:
        host: the interface to bind.
        port: the port (0 picks a free one).
        backend: the backend to serve; a fresh :class:`FakeBackend` by default.
        on_ready: called with the running server (e.g. to print its URL).
    """
    if backend is None:
        from ._backend import FakeBackend

        backend = FakeBackend()
    restore = _stop_on_signals()
    server = FakeServer(backend, host=host, port=port)
    try:
        if on_ready is not None:
            on_ready(server)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
        restore()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _stop_on_signals() -> Callable[[], None]:
    """Stop on SIGINT and SIGTERM, whatever the process inherited.

    A process started in the background by a non-interactive shell inherits
    SIGINT as *ignored*, and Python then installs no KeyboardInterrupt handler;
    a server must still stop on Ctrl-C or ``kill``. Only the main thread may set
    handlers; elsewhere nothing changes. Returns a function restoring the old ones.
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    return restore
