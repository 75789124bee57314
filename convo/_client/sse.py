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

Decoding is linear in the input, however a line is split: the part of a line
that has no end yet is kept as a list of chunks, only new bytes are searched
for a line end, and the pieces are joined once, when the line is complete.
(Prepending the pending part to each new chunk and splitting the whole again
was quadratic: a 32 MB line arriving in 64 KB chunks took 7.5 s.) With
``max_event_bytes``, a line or an event larger than that raises
:class:`EventTooLarge` before more is kept.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["EventTooLarge", "SSEDecoder", "ServerSentEvent"]


class EventTooLarge(ValueError):
    """A line or an event is larger than the decoder's ``max_event_bytes``."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"a server-sent event or line is larger than {limit} bytes")
        self.limit = limit


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

    Args:
        max_event_bytes: the largest line (field name included) and the
            largest event (its data lines together) accepted; None for no limit.

    Raises:
        UnicodeDecodeError: a line that is not valid UTF-8.
        EventTooLarge: a line or an event over ``max_event_bytes``.
    """

    __slots__ = (
        "_data",
        "_data_size",
        "_event",
        "_last_id",
        "_limit",
        "_pending",
        "_pending_size",
        "_retry",
        "_skip_lf",
    )

    def __init__(self, max_event_bytes: int | None = None) -> None:
        self._limit = max_event_bytes
        self._pending: list[bytes] = []  # the start of a line whose end has not come yet
        self._pending_size = 0
        self._skip_lf = False  # the previous chunk ended with \r: a leading \n belongs to it
        self._data: list[str] = []
        self._data_size = 0  # bytes of the data lines of the event being collected
        self._event: str | None = None
        self._last_id: str | None = None  # per the spec, kept across events
        self._retry: int | None = None

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        """Decode one chunk; returns the events it completed (often none or one)."""
        if self._skip_lf:
            self._skip_lf = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        if not chunk:
            return []
        # Only the new bytes are searched: the pending ones are known to hold no line end.
        end = chunk.find(b"\n")
        cr = chunk.find(b"\r", 0, end if end >= 0 else len(chunk))
        if cr >= 0:
            end = cr
        if end < 0:
            self._keep(chunk)
            return []
        lines: list[bytes] = []
        if self._pending:
            # The pending line ends in this chunk: join its pieces, once.
            self._pending.append(chunk[:end])
            lines.append(b"".join(self._pending))
            self._pending = []
            self._pending_size = 0
            if chunk[end] == 13:  # \r, maybe the first half of \r\n
                if end + 1 == len(chunk):
                    self._skip_lf = True
                elif chunk[end + 1] == 10:
                    end += 1
            chunk = chunk[end + 1 :]
        if chunk:
            more = chunk.splitlines()  # bytes.splitlines breaks on \n, \r\n and \r only
            last = chunk[-1]
            if last == 13:  # \r
                self._skip_lf = True
            elif last != 10:  # \n
                self._keep(more.pop())
            if lines:
                lines += more
            else:
                lines = more
        events: list[ServerSentEvent] = []
        # The limit bounds each line (field name included) and the data of an event:
        # both are known whatever the chunks were, so a split never changes the verdict.
        limit = self._limit
        data = self._data
        for line in lines:
            if limit is not None and len(line) > limit:
                raise EventTooLarge(limit)
            if line[:6] == b"data: ":  # nearly every line of an OpenAI stream
                if limit is not None:
                    self._data_size += len(line) - 6
                    if self._data_size > limit:
                        raise EventTooLarge(limit)
                data.append(line[6:].decode("utf-8"))
            elif line:
                self._field(line)
            elif data:  # a blank line dispatches the event (as _dispatch does, inlined: hot)
                events.append(
                    ServerSentEvent(
                        data[0] if len(data) == 1 else "\n".join(data),
                        self._event,
                        self._last_id,
                        self._retry,
                    )
                )
                data = self._data = []
                self._data_size = 0
                self._event = self._retry = None
            else:
                self._event = None  # a blank line with no data dispatches nothing
        return events

    def _keep(self, piece: bytes) -> None:
        """Hold the start of a line until its end comes (a line within the limit)."""
        self._pending_size += len(piece)
        limit = self._limit
        if limit is not None and self._pending_size > limit:
            raise EventTooLarge(limit)
        self._pending.append(piece)

    def flush(self) -> list[ServerSentEvent]:
        """End of stream: the event still being collected, if its lines were complete."""
        self._pending = []
        self._pending_size = 0
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
        self._data_size = 0
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
            limit = self._limit
            if limit is not None:
                self._data_size += len(value)
                if self._data_size > limit:
                    raise EventTooLarge(limit)
            self._data.append(value.decode("utf-8"))
        elif name == b"event":
            self._event = value.decode("utf-8")
        elif name == b"id":
            if b"\0" not in value:
                self._last_id = value.decode("utf-8")
        elif name == b"retry" and value.isdigit():
            self._retry = int(value)
        # Any other field is ignored, as the spec says.
