"""The SSE framer, tested at every split point of every vector."""

from __future__ import annotations

import itertools

import pytest

from gateway.sse import SSEEvent, SSEFramer

# (name, input bytes, expected events as (data, event, comments), expected forwarded bytes)
VECTORS: list[tuple[str, bytes, list[tuple[str | None, str | None, tuple[str, ...]]], bytes]] = [
    (
        "lf",
        b"data: a\n\ndata: b\n\n",
        [("a", None, ()), ("b", None, ())],
        b"data: a\n\ndata: b\n\n",
    ),
    (
        "crlf",
        b"data: a\r\n\r\ndata: b\r\n\r\n",
        [("a", None, ()), ("b", None, ())],
        b"data: a\r\n\r\ndata: b\r\n\r\n",
    ),
    (
        "cr",
        b"data: a\r\rdata: b\r\r",
        [("a", None, ()), ("b", None, ())],
        b"data: a\r\rdata: b\r\r",
    ),
    (
        "mixed",
        b"data: a\r\ndata: b\rdata: c\n\r\n",
        [("a\nb\nc", None, ())],
        b"data: a\r\ndata: b\rdata: c\n\r\n",
    ),
    (
        "multiline",
        b"event: x\ndata: 1\ndata:2\nid: 7\nretry: 30\n\n",
        [("1\n2", "x", ())],
        b"event: x\ndata: 1\ndata:2\nid: 7\nretry: 30\n\n",
    ),
    (
        "comments",
        b": ping\n\n:\n\ndata: a\n: inner\n\n",
        [(None, None, ("ping",)), (None, None, ("",)), ("a", None, ("inner",))],
        b": ping\n\n:\n\ndata: a\n: inner\n\n",
    ),
    ("bom", b"\xef\xbb\xbfdata: a\n\n", [("a", None, ())], b"data: a\n\n"),
    (
        "bom-only-first",
        b"\xef\xbb\xbfdata: \xef\xbb\xbfa\n\n",
        [("\ufeffa", None, ())],
        b"data: \xef\xbb\xbfa\n\n",
    ),
    (
        "utf8",
        "data: héllo ✓ 𝄞\n\n".encode(),
        [("héllo ✓ 𝄞", None, ())],
        "data: héllo ✓ 𝄞\n\n".encode(),
    ),
    ("partial-at-eof", b"data: a\n\ndata: no newline", [("a", None, ())], b"data: a\n\n"),
    ("partial-line-only", b"data: a\n\ndata: b\n", [("a", None, ())], b"data: a\n\n"),
    (
        "done",
        b'data: {"x":1}\n\ndata: [DONE]\n\n',
        [('{"x":1}', None, ()), ("[DONE]", None, ())],
        b'data: {"x":1}\n\ndata: [DONE]\n\n',
    ),
    ("field-no-colon", b"data\n\n", [("", None, ())], b"data\n\n"),
    ("stray-blank", b"\n\ndata: a\n\n", [("a", None, ())], b"\n\ndata: a\n\n"),
    ("unknown-field", b"foo: bar\ndata: a\n\n", [("a", None, ())], b"foo: bar\ndata: a\n\n"),
]


def feed_all(pieces: list[bytes]) -> tuple[list[SSEEvent], SSEFramer]:
    framer = SSEFramer()
    events: list[SSEEvent] = []
    for piece in pieces:
        events.extend(framer.feed(piece))
    return events, framer


def semantic(events: list[SSEEvent]) -> list[tuple[str | None, str | None, tuple[str, ...]]]:
    """Events as a client sees them: blank blocks (stray blank lines, a CR's late LF) carry
    no meaning, so they are left out."""
    return [
        (e.data, e.event, e.comments)
        for e in events
        if e.data or e.event or e.comments or e.data == ""
    ]


def check(events: list[SSEEvent], expected: list, forwarded: bytes) -> None:
    assert b"".join(e.raw for e in events) == forwarded
    assert semantic(events) == expected


@pytest.mark.parametrize("name,data,expected,forwarded", VECTORS, ids=[v[0] for v in VECTORS])
def test_whole(name: str, data: bytes, expected: list, forwarded: bytes) -> None:
    events, _ = feed_all([data])
    check(events, expected, forwarded)


@pytest.mark.parametrize("name,data,expected,forwarded", VECTORS, ids=[v[0] for v in VECTORS])
def test_every_split_point(name: str, data: bytes, expected: list, forwarded: bytes) -> None:
    for cut in range(len(data) + 1):
        events, _ = feed_all([data[:cut], data[cut:]])
        check(events, expected, forwarded)


@pytest.mark.parametrize("name,data,expected,forwarded", VECTORS, ids=[v[0] for v in VECTORS])
def test_every_pair_of_split_points(
    name: str, data: bytes, expected: list, forwarded: bytes
) -> None:
    for a, b in itertools.combinations(range(len(data) + 1), 2):
        events, _ = feed_all([data[:a], data[a:b], data[b:]])
        check(events, expected, forwarded)


@pytest.mark.parametrize("name,data,expected,forwarded", VECTORS, ids=[v[0] for v in VECTORS])
def test_byte_at_a_time(name: str, data: bytes, expected: list, forwarded: bytes) -> None:
    events, _ = feed_all([data[i : i + 1] for i in range(len(data))])
    check(events, expected, forwarded)


def test_cr_split_from_its_lf_is_one_line_ending() -> None:
    # "data: a\r" + "\ndata: b\n\n": the LF pairs with the CR, so there is no blank line
    # between them and both data lines belong to one event.
    framer = SSEFramer()
    assert framer.feed(b"data: a\r") == []
    [event] = framer.feed(b"\ndata: b\n\n")
    assert event.data == "a\nb"
    assert event.raw == b"data: a\r\ndata: b\n\n"


def test_cr_then_cr_across_feeds_is_a_blank_line() -> None:
    framer = SSEFramer()
    assert framer.feed(b"data: a\r") == []
    [event] = framer.feed(b"\r")
    assert event.data == "a"
    # The LF after the blank CR line belongs to it; it is passed on at once, meaning nothing.
    [lf, event2] = framer.feed(b"\ndata: b\n\n")
    assert (lf.raw, lf.data, lf.comments) == (b"\n", None, ())
    assert (event2.data, event2.raw) == ("b", b"data: b\n\n")


def test_pending_reports_held_bytes() -> None:
    framer = SSEFramer()
    assert not framer.pending
    framer.feed(b"data: a")
    assert framer.pending
    framer.feed(b"\n\n")
    assert not framer.pending


def test_split_utf8_is_decoded_whole() -> None:
    raw = "data: ✓\n\n".encode()
    cut = raw.index("✓".encode()) + 1  # inside the three-byte character
    framer = SSEFramer()
    assert framer.feed(raw[:cut]) == []
    [event] = framer.feed(raw[cut:])
    assert event.data == "✓"


def test_invalid_utf8_is_replaced_not_fatal() -> None:
    [event] = SSEFramer().feed(b"data: \xff\xfe\n\n")
    assert event.data == "\ufffd\ufffd"
    assert event.raw == b"data: \xff\xfe\n\n"


def test_short_input_that_could_be_a_bom_is_held() -> None:
    framer = SSEFramer()
    assert framer.feed(b"\xef") == []
    assert framer.feed(b"\xbb") == []
    [event] = framer.feed(b"\xbfdata: x\n\n")
    assert event.raw == b"data: x\n\n"


def test_non_bom_prefix_is_kept() -> None:
    framer = SSEFramer()
    assert framer.feed(b"\xef") == []
    [event] = framer.feed(b"A\n\n")
    assert event.raw == b"\xefA\n\n"


def test_done_and_data_flags() -> None:
    events = SSEFramer().feed(b": c\n\ndata: [DONE]\n\n")
    assert [(e.is_data, e.is_done) for e in events] == [(False, False), (True, True)]


def test_retry_must_be_digits() -> None:
    [a, b] = SSEFramer().feed(b"retry: 12x\ndata: a\n\nretry: 15\ndata: b\n\n")
    assert (a.retry, b.retry) == (None, 15)


def test_events_with_data_are_counted() -> None:
    # What a team is charged for an answer whose usage never came: one per data event,
    # however it was cut into pieces; comments and empty events are not counted.
    framer = SSEFramer()
    for piece in (b": ping\n\ndata: a\n", b"data: b\n\n\n", b"event: x\ndata: c\n\nda", b"ta: d"):
        framer.feed(piece)
    assert framer.data_events == 2
