"""The pool's HTTP/1.1, sans I/O: request heads and the response parser, byte by byte."""

from __future__ import annotations

import gc
import tracemalloc

import pytest

from backends._http1 import END, MAX_HEAD, Head, HTTPError, ResponseParser, request_head

OK = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{"ok":true}'


def events(parser: ResponseParser) -> list[object]:
    out = []
    while (event := parser.next_event()) is not None:
        out.append(event)
    return out


def read(*pieces: bytes, eof: bool = False) -> tuple[ResponseParser, list[object]]:
    parser = ResponseParser()
    for piece in pieces:
        parser.feed(piece)
    if eof:
        parser.eof()
    return parser, events(parser)


def test_request_head_is_the_bytes_of_a_request() -> None:
    head = request_head(
        b"POST", b"/v1/chat/completions", b"127.0.0.1:8000", 11, [(b"x-a", b"1"), (b"x-b", b"")]
    )
    assert head == (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1:8000\r\ncontent-length: 11\r\n"
        b"x-a: 1\r\nx-b: \r\n\r\n"
    )


@pytest.mark.parametrize(
    "headers",
    [
        [(b"x-a", b"1\r\nx-smuggled: yes")],  # a value adding a line of its own
        [(b"x-a", b"1\nx-smuggled: yes")],
        [(b"x-a", b"1\r")],
        [(b"x a", b"1")],  # not a token
        [(b"", b"1")],
        [(b"x-a", b"nul\x00")],
    ],
)
def test_a_header_http_cannot_carry_is_refused(headers: list[tuple[bytes, bytes]]) -> None:
    with pytest.raises(HTTPError, match="header"):
        request_head(b"POST", b"/x", b"h", 0, headers)


def test_a_refused_header_is_named_and_its_value_never_shown() -> None:
    headers = [(b"x-ok", b"1"), (b"authorization", b"Bearer sk-SECRET\n")]
    with pytest.raises(HTTPError) as raised:
        request_head(b"POST", b"/x", b"h", 0, headers)
    assert str(raised.value) == "a request header cannot be sent as HTTP/1.1: authorization"


@pytest.mark.parametrize("target", [b"/a b", b"/a\r\nx: y", b"x", b""])
def test_a_target_http_cannot_carry_is_refused(target: bytes) -> None:
    with pytest.raises(HTTPError, match="target"):
        request_head(b"POST", target, b"h", 0, [])


def test_a_response_in_one_piece_and_byte_by_byte() -> None:
    parser, whole = read(OK)
    assert whole == [
        Head(200, [(b"content-type", b"application/json"), (b"content-length", b"11")]),
        b'{"ok":true}',
        END,
    ]
    assert parser.reusable
    parser, pieces = read(*(OK[i : i + 1] for i in range(len(OK))))
    assert pieces[0] == whole[0] and pieces[-1] is END
    assert b"".join(p for p in pieces[1:-1] if isinstance(p, bytes)) == b'{"ok":true}'
    assert parser.reusable


def test_the_parser_reads_one_response_per_request() -> None:
    parser = ResponseParser()
    parser.feed(OK)
    assert events(parser)[-1] is END
    parser.start_next()
    parser.feed(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
    assert events(parser) == [Head(404, [(b"content-length", b"0")]), END]
    assert parser.reusable


def test_chunked_bodies_and_their_trailers() -> None:
    parser, got = read(
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
        b"5\r\nhello\r\n",
        b"6\r\n world\r\n0\r\nx-trailer: t\r\n\r\n",
    )
    assert got == [Head(200, [(b"transfer-encoding", b"chunked")]), b"hello", b" world", END]
    assert parser.reusable


def test_informational_responses_are_skipped() -> None:
    parser, got = read(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: x\r\n\r\n" + OK
    )
    assert got[0] == Head(200, [(b"content-type", b"application/json"), (b"content-length", b"11")])
    assert parser.reusable


def test_a_body_that_only_eof_ends() -> None:
    parser, got = read(b"HTTP/1.1 200 OK\r\n\r\nsome", b" body", eof=True)
    assert got == [Head(200, []), b"some", b" body", END]
    assert not parser.reusable  # the connection is closed
    # A transfer coding other than chunked, last, also leaves the end to EOF (RFC 9112 6.3).
    parser, got = read(b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\nzz", eof=True)
    assert got == [Head(200, [(b"transfer-encoding", b"gzip")]), b"zz", END]


@pytest.mark.parametrize(
    "response",
    [
        b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
        b"HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n",
    ],
)
def test_a_connection_the_upstream_will_close_is_not_reused(response: bytes) -> None:
    parser, got = read(response)
    assert got[-1] is END
    assert not parser.reusable


def test_bytes_after_the_response_make_the_connection_unusable_but_keep_the_response() -> None:
    for trailing in (b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n", b"garbage\r\n\r\n"):
        parser, got = read(OK + trailing)
        assert got[1:] == [b'{"ok":true}', END]
        assert not parser.reusable
        parser, got = read(OK, trailing)
        assert got[-1] is END and not parser.reusable


@pytest.mark.parametrize(
    ("pieces", "message"),
    [
        ((b"NOT HTTP\r\n\r\n",), "invalid HTTP/1.1 response"),
        (
            (b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ntransfer-encoding: chunked\r\n\r\n",),
            "invalid",
        ),
        ((b"HTTP/1.1 200 OK\r\nbad header\r\n\r\n",), "invalid"),
        ((b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",), "invalid"),
        (
            (
                b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n",
            ),
            "switched",
        ),
        ((b"HTTP/1.1 200 OK\r\nx: " + b"a" * MAX_HEAD,), "larger than 64 KiB"),
    ],
)
def test_broken_responses_are_refused(pieces: tuple[bytes, ...], message: str) -> None:
    parser = ResponseParser()
    with pytest.raises(HTTPError, match=message):
        for piece in pieces:
            parser.feed(piece)


@pytest.mark.parametrize(
    ("pieces", "message"),
    [
        ((), "without a complete response"),
        ((b"HTTP/1.1 200 OK\r\ncontent-",), "without a complete response"),
        ((b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly part",), "before the body's end"),
        (
            (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhel",),
            "before the body's end",
        ),
    ],
)
def test_a_response_cut_short_by_eof_is_refused(pieces: tuple[bytes, ...], message: str) -> None:
    parser = ResponseParser()
    for piece in pieces:
        parser.feed(piece)
    with pytest.raises(HTTPError, match=message):
        parser.eof()


def test_request_bodies_are_compact_utf8_json_and_what_orjson_refuses_goes_to_the_stdlib() -> None:
    from backends.openai import _encode

    body = {"model": "m", "messages": [{"role": "user", "content": "héllo ☃"}], "t": 0.5}
    assert (
        _encode(body)
        == '{"model":"m","messages":[{"role":"user","content":"héllo ☃"}],"t":0.5}'.encode()
    )
    assert _encode({"seed": 2**70}) == b'{"seed":1180591620717411303424}'  # past 64 bits
    with pytest.raises(ValueError):  # the stdlib's refusal, as before orjson
        _encode({"t": float("nan"), "big": 2**70})


def test_a_closed_parser_is_freed_at_once_not_by_the_cyclic_collector() -> None:
    """llhttp's parser holds the callbacks (bound methods): a cycle. Closing breaks it, so a
    pool that opens and drops connections does not leave them to the collector."""

    def held_after(n: int, close: bool) -> int:
        gc.collect()
        gc.disable()
        tracemalloc.start()
        try:
            for _ in range(n):
                parser = ResponseParser()
                parser.feed(OK)
                if close:
                    parser.close()
            del parser
            return tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
            gc.enable()

    assert held_after(1000, close=False) > 500 * 1000  # the cycles wait for the collector
    assert held_after(1000, close=True) < 20 * 1024
    parser = ResponseParser()
    parser.close()
    with pytest.raises(AttributeError):
        parser.feed(OK)
