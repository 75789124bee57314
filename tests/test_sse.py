"""The incremental SSE decoder: line endings, fields, and chunks split anywhere."""

from __future__ import annotations

import itertools
import tracemalloc
from typing import Any

import pytest

from convo._client.sse import EventTooLarge, ServerSentEvent, SSEDecoder

# A recorded-style stream mixing everything the decoder must handle: \n, \r\n
# and \r line endings, comments, multi-line data, event/id/retry fields, a
# multi-byte UTF-8 text (split points fall inside its bytes), [DONE].
RECORDED = (
    b": keep-alive comment\n"
    b'data: {"choices":[{"index":0,"delta":{"content":"Gr\xc3\xbc\xc3\x9f "}}]}\n'
    b"\n"
    b"event: ping\r\n"
    b"data: first line\r\n"
    b"data:second line\r\n"
    b"id: 7\r\n"
    b"retry: 1500\r\n"
    b"\r\n"
    b'data: {"emoji":"\xf0\x9f\x99\x82 \xe2\x82\xac"}\r'
    b"\r"
    b"data\n"
    b"\n"
    b"unknown: ignored\n"
    b"data: [DONE]\n"
    b"\n"
)

EXPECTED = [
    ServerSentEvent(data='{"choices":[{"index":0,"delta":{"content":"Grüß "}}]}'),
    ServerSentEvent(data="first line\nsecond line", event="ping", id="7", retry=1500),
    ServerSentEvent(data='{"emoji":"🙂 €"}', id="7"),
    ServerSentEvent(data="", id="7"),
    ServerSentEvent(data="[DONE]", id="7"),
]


def decode(*pieces: bytes) -> list[ServerSentEvent]:
    decoder = SSEDecoder()
    events: list[ServerSentEvent] = []
    for piece in pieces:
        events.extend(decoder.feed(piece))
    events.extend(decoder.flush())
    return events


def test_whole_stream() -> None:
    assert decode(RECORDED) == EXPECTED


def test_split_in_two_at_every_byte() -> None:
    for i in range(len(RECORDED) + 1):
        assert decode(RECORDED[:i], RECORDED[i:]) == EXPECTED, f"split at {i}"


def test_split_in_three_at_every_pair_of_bytes() -> None:
    n = len(RECORDED)
    for i, j in itertools.combinations(range(n + 1), 2):
        got = decode(RECORDED[:i], RECORDED[i:j], RECORDED[j:])
        assert got == EXPECTED, f"split at {i}, {j}"


def test_one_byte_at_a_time() -> None:
    assert decode(*(RECORDED[i : i + 1] for i in range(len(RECORDED)))) == EXPECTED


def test_cr_then_lf_in_the_next_chunk_is_one_line_end() -> None:
    # "data: a\r" + "\n\r\n": the \n belongs to the \r, so exactly one blank line follows.
    assert decode(b"data: a\r", b"\n\r\n", b"data: b\r", b"\n\r\n") == [
        ServerSentEvent(data="a"),
        ServerSentEvent(data="b"),
    ]


def test_blank_line_without_data_dispatches_nothing_and_resets_event() -> None:
    assert decode(b"event: x\n\ndata: y\n\n") == [ServerSentEvent(data="y")]


def test_event_without_final_blank_line_is_flushed_but_a_cut_line_is_dropped() -> None:
    assert decode(b"data: a\n\ndata: b\n") == [ServerSentEvent(data="a"), ServerSentEvent(data="b")]
    assert decode(b'data: a\n\ndata: {"cut') == [ServerSentEvent(data="a")]


def test_field_details() -> None:
    # Only one leading space is stripped; a colon-less line is a field with an empty value;
    # an id containing NUL is ignored; a non-numeric retry is ignored.
    got = decode(b"data:  two spaces\nid: a\x00b\nretry: soon\n\ndata\n\n")
    assert got == [ServerSentEvent(data=" two spaces"), ServerSentEvent(data="")]


def test_invalid_utf8_line_raises() -> None:
    with pytest.raises(UnicodeDecodeError):
        decode(b"data: \xff\xfe\n\n")


# --- linear work and limits ---------------------------------------------------------


class Counted(bytes):
    """Bytes that count what the decoder's byte operations on them touch.

    Every method the decoder can call on a chunk (or on a slice or sum of
    chunks: those stay Counted) adds the bytes it scans or copies to
    ``Counted.work``. A decoder that prepends what it holds to each new
    chunk, or searches it again, touches the held bytes once per chunk:
    quadratic. (``b"".join(parts)`` copies without calling a method on the
    parts; the tracemalloc check below sees a join repeated per chunk.)
    """

    work = 0

    def __add__(self, other: bytes) -> Counted:  # type: ignore[override]
        Counted.work += len(self) + len(other)
        return Counted(bytes(self) + bytes(other))

    def __radd__(self, other: bytes) -> Counted:
        Counted.work += len(self) + len(other)
        return Counted(bytes(other) + bytes(self))

    def __getitem__(self, key: Any) -> Any:
        item = bytes.__getitem__(self, key)
        if isinstance(key, slice):
            Counted.work += len(item)
            return Counted(item)
        return item

    def _scan(self) -> None:
        Counted.work += len(self)

    def splitlines(self, keepends: bool = False) -> list[Counted]:  # type: ignore[override]
        self._scan()
        return [Counted(line) for line in bytes.splitlines(self, keepends)]

    def find(self, sub: Any, start: int = 0, end: int | None = None) -> int:  # type: ignore[override]
        # Counts what it really scans: up to the match, or the whole range.
        found = bytes.find(self, sub, start, end)
        stop = len(self) if end is None else min(end, len(self))
        Counted.work += (found + len(sub) if found >= 0 else stop) - start
        return found

    def index(self, *args: Any) -> int:  # type: ignore[override]
        self._scan()
        return bytes.index(self, *args)

    def rfind(self, *args: Any) -> int:  # type: ignore[override]
        self._scan()
        return bytes.rfind(self, *args)

    def __contains__(self, item: Any) -> bool:
        self._scan()
        return bytes.__contains__(self, item)

    def partition(self, sep: Any) -> tuple[bytes, bytes, bytes]:  # type: ignore[override]
        self._scan()
        return tuple(Counted(p) for p in bytes.partition(self, sep))  # type: ignore[return-value]

    def split(self, *args: Any, **kwargs: Any) -> list[bytes]:  # type: ignore[override]
        self._scan()
        return [Counted(p) for p in bytes.split(self, *args, **kwargs)]

    def decode(self, *args: Any, **kwargs: Any) -> str:
        self._scan()
        return bytes.decode(self, *args, **kwargs)


def test_a_32_mb_line_costs_linear_work() -> None:
    # 32 MB arriving in 64 KB chunks took 7.5 s before (bench/bench_client.py --sse).
    size, piece = 32 * 1024 * 1024, 64 * 1024
    decoder = SSEDecoder()
    Counted.work = 0
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        decoder.feed(Counted(b"data: " + b"x" * (piece - 6)))
        for _ in range(size // piece - 1):
            decoder.feed(Counted(b"x" * piece))
        held_peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    feeding = Counted.work
    (event,) = decoder.feed(Counted(b"\n\n"))
    assert len(event.data) == size - 6
    # Each byte is searched once when it arrives: about `size`, not size**2 / piece.
    assert feeding <= 3 * size, f"{feeding / size:.1f} passes over the line"
    assert Counted.work <= 6 * size
    # What is held is the chunks themselves, never a growing copy of them.
    assert held_peak <= size + 8 * piece + 1024 * 1024, held_peak


def test_many_small_events_cost_linear_work() -> None:
    events = b"".join(b'data: {"n": %d}\n\n' % i for i in range(20000))
    decoder = SSEDecoder()
    Counted.work = 0
    got = []
    for i in range(0, len(events), 1000):  # chunk boundaries fall anywhere in events
        got += decoder.feed(Counted(events[i : i + 1000]))
    assert len(got) == 20000 and got[-1].data == '{"n": 19999}'
    # A constant number of passes (search, split, slice, decode), whatever the length.
    assert Counted.work <= 8 * len(events)


@pytest.mark.parametrize(
    "stream",
    [
        b"data: " + b"x" * 101 + b"\n\n",  # one long data line
        b"data: " + b"x" * 60 + b"\ndata: " + b"y" * 60 + b"\n\n",  # an event of two lines
        b": " + b"c" * 200 + b"\n\ndata: ok\n\n",  # a long comment
        b"event: " + b"e" * 200 + b"\ndata: ok\n\n",  # a long field
        b"data:" + b"z" * 101 + b"\n\n",  # data without the space
        b"data: " + b"x" * 500,  # a line that never ends
    ],
)
def test_a_line_or_event_over_the_limit_raises(stream: bytes) -> None:
    for i in range(len(stream) + 1):  # wherever the chunks split
        decoder = SSEDecoder(max_event_bytes=100)
        with pytest.raises(EventTooLarge) as info:
            decoder.feed(stream[:i])
            decoder.feed(stream[i:])
            decoder.feed(b"\n\n")
        assert info.value.limit == 100


def test_the_limit_counts_one_event_at_a_time() -> None:
    stream = b"".join(b"data: " + b"x" * 90 + b"\n\n" for _ in range(50))
    decoder = SSEDecoder(max_event_bytes=100)
    assert len(decoder.feed(stream)) == 50
    exactly = b"data: " + b"x" * 50 + b"\ndata:" + b"y" * 50 + b"\n\n"  # 100 bytes of data
    for i, j in itertools.combinations(range(len(exactly) + 1), 2):  # split anywhere, twice
        decoder = SSEDecoder(max_event_bytes=100)
        pieces = (exactly[:i], exactly[i:j], exactly[j:])
        (event,) = [e for piece in pieces for e in decoder.feed(piece)]
        assert event.data == "x" * 50 + "\n" + "y" * 50


def test_the_limit_is_inclusive_for_lines_pending_lines_and_events() -> None:
    """A line, an unfinished line and an event of exactly ``max_event_bytes`` pass; one
    byte more raises, with the limit in the error."""
    decoder = SSEDecoder(max_event_bytes=100)
    assert decoder.feed(b"event: " + b"e" * 93 + b"\n") == []  # a 100-byte line
    assert decoder.feed(b"data: " + b"x" * 94) == []  # 100 bytes pending, no line end yet
    (event,) = decoder.feed(b"\n\n")
    assert event == ServerSentEvent(data="x" * 94, event="e" * 93)
    for stream in (b"event: " + b"e" * 94 + b"\n", b"data: " + b"x" * 95):
        with pytest.raises(EventTooLarge) as info:
            SSEDecoder(max_event_bytes=100).feed(stream)
        assert info.value.limit == 100
        assert str(info.value) == "a server-sent event or line is larger than 100 bytes"


@pytest.mark.parametrize("prefix", [b"data: ", b"data:"])  # the fast path, and _field's
def test_an_events_data_is_counted_line_by_line_and_anew_for_each_event(prefix: bytes) -> None:
    exactly = prefix + b"x" * 60 + b"\n" + prefix + b"y" * 40 + b"\n"  # 100 bytes of data
    decoder = SSEDecoder(max_event_bytes=100)
    for _ in range(3):  # the count starts from nothing after each event
        (event,) = decoder.feed(exactly + b"\n")
        assert event.data == "x" * 60 + "\n" + "y" * 40
    assert decoder.feed(exactly) == [] and decoder.flush()[0].data.endswith("y" * 40)
    assert decoder.feed(exactly) == [] and decoder.flush() != []  # and after a flushed one
    with pytest.raises(EventTooLarge) as info:
        SSEDecoder(max_event_bytes=100).feed(exactly + prefix + b"z\n")
    assert info.value.limit == 100


def test_an_unfinished_line_is_counted_across_chunks_and_anew_after_each_line() -> None:
    decoder = SSEDecoder(max_event_bytes=100)
    for _ in range(10):  # 100 bytes pending in ten chunks: within the limit
        assert decoder.feed(b"data: xxxx") == []
    with pytest.raises(EventTooLarge):  # raised before more is kept, not at the line end
        decoder.feed(b"x")
    decoder = SSEDecoder(max_event_bytes=100)
    decoder.feed(b"data: " + b"x" * 50)
    decoder.flush()  # a cut line is dropped, and so is its count
    assert decoder.feed(b"data: " + b"x" * 94) == []
    assert decoder.feed(b"\n\n") != []
    assert decoder.feed(b"data: " + b"y" * 94) == []  # after a finished line too
    assert decoder.feed(b"\n\n")[0].data == "y" * 94


def test_split_anywhere_with_a_limit() -> None:
    biggest = max(len(e.data.encode()) for e in EXPECTED)
    for i in range(len(RECORDED) + 1):
        decoder = SSEDecoder(max_event_bytes=biggest + 8)
        got = decoder.feed(RECORDED[:i]) + decoder.feed(RECORDED[i:]) + decoder.flush()
        assert got == EXPECTED, f"split at {i}"


def test_flush_dispatches_an_unterminated_event_with_all_its_fields() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"event: note\nid: 9\nretry: 20\ndata: one\ndata: two\n") == []
    assert decoder.flush() == [ServerSentEvent(data="one\ntwo", event="note", id="9", retry=20)]
    assert decoder.feed(b"data: alone\n") == [] and decoder.flush() == [
        ServerSentEvent(data="alone", id="9")]


@pytest.mark.parametrize("ending", [b"", b"data: cut", b"event: x\n", b"data: half\r"])
def test_a_decoder_is_clean_after_flush(ending: bytes) -> None:
    # whatever a stream left behind, the next one starts from nothing (the id stays)
    decoder = SSEDecoder()
    decoder.feed(b"id: 1\n\n" + ending)
    decoder.flush()
    assert decoder.feed(b"data: next\n\n") == [ServerSentEvent(data="next", id="1")]


def test_a_bare_colon_is_a_comment() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b":\ndata: x\n:\n\n") == [ServerSentEvent(data="x")]
