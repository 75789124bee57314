"""An incremental server-sent events decoder: pure, fed with bytes split anywhere.

It follows the WHATWG event-stream rules: lines end with ``\\n``, ``\\r\\n`` or
``\\r`` (a ``\\r`` at the end of one chunk and a ``\\n`` at the start of the next
are one line end); lines starting with ``:`` are comments; ``data`` lines of
one event are joined with ``\\n``; ``event``, ``id`` and ``retry`` fields are
kept; a blank line dispatches the event. Lines are decoded as UTF-8 only once
complete, so a chunk boundary inside a multi-byte character is harmless.

At the end of the stream, :meth:`SSEDecoder.flush` dispatches an event whose
lines were complete but whose closing blank line never came (some servers
omit it); an unterminated last line is a cut and is dropped.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["SSEDecoder", "ServerSentEvent"]


class ServerSentEvent(NamedTuple):
    """One dispatched event (a named tuple: cheap to create, one per streamed chunk)."""

    data: str
    event: str | None = None
    id: str | None = None
    retry: int | None = None


class SSEDecoder:
    """Turns byte chunks into :class:`ServerSentEvent` values.

    Example::

        decoder = SSEDecoder()
        for chunk in byte_chunks:
            for event in decoder.feed(chunk):
                ...
        for event in decoder.flush():
            ...

    Raises:
        UnicodeDecodeError: a line that is not valid UTF-8.
    """

    __slots__ = ("_data", "_event", "_last_id", "_pending", "_retry", "_skip_lf")

    def __init__(self) -> None:
        self._pending = b""  # an incomplete line carried over to the next chunk
        self._skip_lf = False  # the previous chunk ended with \r: a leading \n belongs to it
        self._data: list[str] = []
        self._event: str | None = None
        self._last_id: str | None = None  # per the spec, kept across events
        self._retry: int | None = None

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        """Decode one chunk; returns the events it completed (often none or one)."""
        if self._skip_lf:
            self._skip_lf = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        if self._pending:
            chunk = self._pending + chunk
            self._pending = b""
        if not chunk:
            return []
        lines = chunk.splitlines()  # bytes.splitlines breaks on \n, \r\n and \r only
        last = chunk[-1]
        if last == 13:  # \r
            self._skip_lf = True
        elif last != 10:  # \n
            self._pending = lines.pop()
        events: list[ServerSentEvent] = []
        data = self._data
        for line in lines:
            if line[:6] == b"data: ":  # nearly every line of an OpenAI stream
                data.append(line[6:].decode("utf-8"))
            elif line:
                self._field(line)
            elif data:
                events.append(
                    ServerSentEvent(
                        data[0] if len(data) == 1 else "\n".join(data),
                        self._event,
                        self._last_id,
                        self._retry,
                    )
                )
                data = self._data = []
                self._event = self._retry = None
            else:
                self._event = None  # a blank line with no data dispatches nothing
        return events

    def flush(self) -> list[ServerSentEvent]:
        """End of stream: the event still being collected, if its lines were complete."""
        self._pending = b""
        self._skip_lf = False
        if self._data:
            return [self._dispatch()]
        self._event = None
        return []

    def _dispatch(self) -> ServerSentEvent:
        data = self._data
        event = ServerSentEvent(
            data=data[0] if len(data) == 1 else "\n".join(data),
            event=self._event,
            id=self._last_id,
            retry=self._retry,
        )
        self._data = []
        self._event = None
        self._retry = None
        return event

    def _field(self, line: bytes) -> None:
        if line[0] == 58:  # ":" starts a comment (servers send them as keep-alives)
            return
        name, _, value = line.partition(b":")
        if value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            self._data.append(value.decode("utf-8"))
        elif name == b"event":
            self._event = value.decode("utf-8")
        elif name == b"id":
            if b"\0" not in value:
                self._last_id = value.decode("utf-8")
        elif name == b"retry" and value.isdigit():
            self._retry = int(value)
        # Any other field is ignored, as the spec says.
