"""The incremental SSE decoder: line endings, fields, and chunks split anywhere."""

from __future__ import annotations

import itertools

import pytest

from convo._sse import ServerSentEvent, SSEDecoder

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
