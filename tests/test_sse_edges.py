"""The SSE framer at the edges ``tests/test_sse.py`` leaves open: line endings split and
mixed, BOMs (split, doubled, alone), a partial event at end of input, the ``id`` and
``retry`` fields' rules (WHATWG HTML §9.2.6), and field-name spelling. Every vector is fed
whole, at every split point, at every pair of split points and a byte at a time; all must
give the same events, the same forwarded bytes and the same held-back state.
"""

from __future__ import annotations

import itertools
from typing import NamedTuple

import pytest

from gateway.sse import SSEEvent, SSEFramer


class Fields(NamedTuple):
    data: str | None = None
    event: str | None = None
    id: str | None = None
    retry: int | None = None
    comments: tuple[str, ...] = ()


class Vector(NamedTuple):
    name: str
    data: bytes
    events: list[Fields]
    forwarded: bytes
    pending: bool = False  # bytes of an unfinished event held back at the end


VECTORS = [
    # --- line endings ---
    Vector(
        "cr-cr-lf",  # "a" ends at a lone CR; CRLF then is a blank line
        b"data: a\r\r\ndata: b\n\n",
        [Fields("a"), Fields("b")],
        b"data: a\r\r\ndata: b\n\n",
    ),
    Vector(
        "lf-then-lone-cr-blank",
        b"data: a\n\rdata: b\r\n\n",
        [Fields("a"), Fields("b")],
        b"data: a\n\rdata: b\r\n\n",
    ),
    Vector(
        "three-crs",  # a line, a blank line, then a stray blank line
        b"data: a\r\r\rdata: b\r\r",
        [Fields("a"), Fields("b")],
        b"data: a\r\r\rdata: b\r\r",
    ),
    Vector(
        "crlf-crlf-crlf",
        b"data: a\r\n\r\n\r\ndata: b\r\n\r\n",
        [Fields("a"), Fields("b")],
        b"data: a\r\n\r\n\r\ndata: b\r\n\r\n",
    ),
    # --- BOM ---
    Vector(
        "bom-then-blank-lines",
        b"\xef\xbb\xbf\r\n\r\ndata: a\r\n\r\n",
        [Fields("a")],
        b"\r\n\r\ndata: a\r\n\r\n",
    ),
    Vector(
        "two-boms",  # only one is stripped; the second is part of a field name no one knows
        b"\xef\xbb\xbf\xef\xbb\xbfdata: a\n\ndata: b\n\n",
        [Fields(), Fields("b")],
        b"\xef\xbb\xbfdata: a\n\ndata: b\n\n",
    ),
    Vector("bom-alone", b"\xef\xbb\xbf", [], b""),
    Vector("bom-prefix-alone", b"\xef\xbb", [], b"", pending=True),
    Vector("bom-then-comment", b"\xef\xbb\xbf: hi\n\n", [Fields(comments=("hi",))], b": hi\n\n"),
    # --- a partial event at end of input: held back, never returned ---
    Vector("eof-after-cr", b"data: a\n\ndata: b\r", [Fields("a")], b"data: a\n\n", pending=True),
    Vector(
        "eof-after-one-line-ending",
        b"data: a\r\n\r\ndata: b\r\n",
        [Fields("a")],
        b"data: a\r\n\r\n",
        pending=True,
    ),
    Vector("eof-in-comment", b": c\n\n: unfinished", [Fields(comments=("c",))], b": c\n\n", True),
    # --- id ---
    Vector(
        "id-with-nul-is-ignored",
        b"id: a\x00b\ndata: x\n\n",
        [Fields("x")],
        b"id: a\x00b\ndata: x\n\n",
    ),
    Vector(
        "id-with-nul-keeps-the-earlier-id",
        b"id: 1\nid: 2\x00\ndata: x\n\n",
        [Fields("x", id="1")],
        b"id: 1\nid: 2\x00\ndata: x\n\n",
    ),
    Vector("id-empty", b"id\ndata: x\n\n", [Fields("x", id="")], b"id\ndata: x\n\n"),
    Vector("id-last-wins", b"id: 1\nid: 2\n\n", [Fields(id="2")], b"id: 1\nid: 2\n\n"),
    # --- retry ---
    Vector("retry-leading-zeros", b"retry:007\n\n", [Fields(retry=7)], b"retry:007\n\n"),
    Vector("retry-without-data", b"retry: 5\n\n", [Fields(retry=5)], b"retry: 5\n\n"),
    Vector("retry-decimal", b"retry: 1.5\n\n", [Fields()], b"retry: 1.5\n\n"),
    Vector("retry-negative", b"retry: -1\n\n", [Fields()], b"retry: -1\n\n"),
    Vector("retry-empty", b"retry:\n\n", [Fields()], b"retry:\n\n"),
    Vector("retry-second-space", b"retry:  5\n\n", [Fields()], b"retry:  5\n\n"),
    Vector("retry-trailing-space", b"retry: 5 \n\n", [Fields()], b"retry: 5 \n\n"),
    Vector(
        "retry-non-ascii-digits",
        "retry: ١٢\n\n".encode(),
        [Fields()],
        "retry: ١٢\n\n".encode(),
    ),
    Vector(
        "retry-bad-keeps-the-earlier",
        b"retry: 10\nretry: x\n\n",
        [Fields(retry=10)],
        b"retry: 10\nretry: x\n\n",
    ),
    # --- field names and values ---
    Vector("data-no-space", b"data:a\ndata:  b\n\n", [Fields("a\n b")], b"data:a\ndata:  b\n\n"),
    Vector("data-empty-lines", b"data\ndata\n\n", [Fields("\n")], b"data\ndata\n\n"),
    Vector("data-with-nul", b"data: a\x00b\n\n", [Fields("a\x00b")], b"data: a\x00b\n\n"),
    Vector("event-empty", b"event:\ndata: a\n\n", [Fields("a", event="")], b"event:\ndata: a\n\n"),
    Vector("field-name-is-case-sensitive", b"Data: a\n\n", [Fields()], b"Data: a\n\n"),
    Vector("space-before-colon", b"data : a\n\n", [Fields()], b"data : a\n\n"),
    Vector(
        "comment-spaces",
        b":  two\n:x\n:\n\n",
        [Fields(comments=(" two", "x", ""))],
        b":  two\n:x\n:\n\n",
    ),
    Vector(
        "utf8-in-comment",
        ": ping ✓\n\n".encode(),
        [Fields(comments=("ping ✓",))],
        ": ping ✓\n\n".encode(),
    ),
]


def fields_of(events: list[SSEEvent]) -> list[Fields]:
    """What each event means; pieces that are only line endings (stray blank lines, the
    late LF of a split CRLF) mean nothing and are left out."""
    return [
        Fields(e.data, e.event, e.id, e.retry, e.comments) for e in events if e.raw.strip(b"\r\n")
    ]


def feed(pieces: list[bytes]) -> tuple[list[SSEEvent], SSEFramer]:
    framer = SSEFramer()
    events = [event for piece in pieces for event in framer.feed(piece)]
    return events, framer


def check(vector: Vector, pieces: list[bytes]) -> None:
    events, framer = feed(pieces)
    assert fields_of(events) == vector.events, pieces
    assert b"".join(e.raw for e in events) == vector.forwarded, pieces
    assert framer.pending is vector.pending, pieces


IDS = [v.name for v in VECTORS]


@pytest.mark.parametrize("vector", VECTORS, ids=IDS)
def test_whole(vector: Vector) -> None:
    check(vector, [vector.data])


@pytest.mark.parametrize("vector", VECTORS, ids=IDS)
def test_every_split_point(vector: Vector) -> None:
    data = vector.data
    for cut in range(len(data) + 1):
        check(vector, [data[:cut], data[cut:]])


@pytest.mark.parametrize("vector", VECTORS, ids=IDS)
def test_every_pair_of_split_points(vector: Vector) -> None:
    data = vector.data
    for a, b in itertools.combinations(range(len(data) + 1), 2):
        check(vector, [data[:a], data[a:b], data[b:]])


@pytest.mark.parametrize("vector", VECTORS, ids=IDS)
def test_byte_at_a_time(vector: Vector) -> None:
    check(vector, [vector.data[i : i + 1] for i in range(len(vector.data))])


@pytest.mark.parametrize(
    "data,is_data,is_done",
    [
        (b"data: [DONE]\n\n", True, True),
        (b"data:[DONE]\n\n", True, True),
        (b"data:  [DONE]\n\n", True, False),  # the value is " [DONE]"
        # As the openai SDKs read it (Python and Node): data that begins with [DONE].
        (b"data: [DONE] \n\n", True, True),
        (b"data: [DONE]\r\n\r\n", True, True),
        (b"data: [done]\n\n", True, False),
        (b"data: [DONE]\ndata: x\n\n", True, True),
        (b"data: [DON\n\n", True, False),
        (b"event: [DONE]\n\n", False, False),
        (b": [DONE]\n\n", False, False),
        (b"data\n\n", True, False),  # an empty data field is still a data event
    ],
)
def test_data_and_done_flags(data: bytes, is_data: bool, is_done: bool) -> None:
    [event] = SSEFramer().feed(data)
    assert (event.is_data, event.is_done) == (is_data, is_done)


@pytest.mark.parametrize(
    "pieces,pending_bytes",
    [
        ([], 0),
        ([b"\xef"], 1),  # could still be a BOM
        ([b"\xef\xbb\xbf"], 0),  # a BOM is not part of any event
        ([b"\xef\xbb\xbfdata"], 4),
        ([b"data: a\n\n"], 0),
        ([b"data: a\n\nda"], 2),
        ([b"data: a\n"], 8),  # a whole line, not yet a whole event
        ([b"data: a\r"], 8),  # a CR that an LF may still join
        ([b"data: a\r", b"\n"], 9),
        ([b"data: a\r", b"\n", b"\n"], 0),
    ],
)
def test_pending_bytes(pieces: list[bytes], pending_bytes: int) -> None:
    _, framer = feed(pieces)
    assert framer.pending_bytes == pending_bytes
    assert framer.pending is (pending_bytes > 0)
