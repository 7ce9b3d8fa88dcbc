"""HTTP/1.1 for the pool's connections, sans I/O: a request's head as bytes, and the
upstream's response read by llhttp (Node's parser, through ``httptools``).

Why not h11, which the server side uses: on this path h11 is the largest part of what an
upstream request costs the gateway. One exchange (a small POST out, a 200 with a
250-byte body back) costs ≈ 73 µs of CPU in h11 — building and validating the request
event ≈ 12 µs, the rest its state machine and Python-level parsing — against ≈ 5 µs for
this module. The request here is the gateway's own (method, target and headers it built),
so writing its head needs no state machine; what comes back is parsed by a strict C
parser, which refuses what h11 refuses (bad framing, bad header syntax, a body shorter
than its length).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import httptools

__all__ = ["END", "HTTPError", "Head", "ResponseParser", "request_head"]

# A response head larger than this is refused (h11's own limit is 16 KiB).
MAX_HEAD = 64 * 1024

# Header lines as RFC 9110 allows them: a token, a colon, a value of visible characters,
# spaces and tabs. A value holding CR or LF could add lines of its own (a smuggled
# header or request), so every value is checked: one match over all the lines, and as
# many line ends as headers.
_LINES = re.compile(rb"(?:[!#$%&'*+.^_`|~0-9A-Za-z-]+: [\t\x20-\x7e\x80-\xff]*\r\n)*")
_TARGET = re.compile(rb"/[\x21-\x7e]*")


class HTTPError(Exception):
    """The upstream broke HTTP/1.1 (or the request could not be written as HTTP/1.1)."""


@dataclass(frozen=True, slots=True)
class Head:
    status: int
    headers: list[tuple[bytes, bytes]]  # names in lower case


class _End:
    __slots__ = ()

    def __repr__(self) -> str:
        return "END"


END = _End()
"""The event after a response's last body bytes."""


def request_head(
    method: bytes, target: bytes, host: bytes, length: int, headers: list[tuple[bytes, bytes]]
) -> bytes:
    """The head of a request with a ``length``-byte body (sent with ``content-length``).
    Raises :class:`HTTPError` for a target or a header that HTTP/1.1 cannot carry."""
    lines = b"".join([name + b": " + value + b"\r\n" for name, value in headers])
    if not _LINES.fullmatch(lines) or lines.count(b"\n") != len(headers):
        # Named, never shown: a value may be a key (authorization).
        bad = [
            name.decode("latin-1")
            for name, value in headers
            if not _LINES.fullmatch(line := name + b": " + value + b"\r\n")
            or line.count(b"\n") != 1
        ]
        raise HTTPError(f"a request header cannot be sent as HTTP/1.1: {', '.join(bad)}")
    if not _TARGET.fullmatch(target):
        raise HTTPError(f"the request target cannot be sent as HTTP/1.1: {target!r}")
    return b"%s %s HTTP/1.1\r\nhost: %s\r\ncontent-length: %d\r\n%s\r\n" % (
        method,
        target,
        host,
        length,
        lines,
    )


class ResponseParser:
    """The responses on one connection, one per request: :meth:`feed` the bytes read,
    take the events with :meth:`next_event` — a :class:`Head`, then the body as ``bytes``
    pieces, then :data:`END` — and :meth:`eof` when the upstream closed. 1xx responses
    are skipped. After :data:`END`, :meth:`start_next` readies the parser for the next
    response when :attr:`reusable`."""

    __slots__ = (
        "_events",
        "_framed",
        "_head_bytes",
        "_headers",
        "_in_head",
        "_parser",
        "complete",
        "extra",
        "keep_alive",
    )

    def __init__(self) -> None:
        self._parser = httptools.HttpResponseParser(self)
        # A list, not a deque: a deque's first block is ≈ 0.7 KiB, held by every stream.
        self._events: list[Head | bytes | _End] = []
        self._headers: list[tuple[bytes, bytes]] = []
        self._in_head = True
        self._head_bytes = 0
        self._framed = False  # a length, or chunked: the body does not end at EOF
        self.complete = False  # the final response was read to its end
        self.keep_alive = False
        self.extra = False  # bytes came after the response: the connection is unusable

    @property
    def reusable(self) -> bool:
        """The response was read to its end and the connection may carry another."""
        return self.complete and self.keep_alive and not self.extra and not self._events

    def close(self) -> None:
        """Let go of llhttp's parser (the connection is closed). It holds this object's
        callbacks, bound methods, so the two make a cycle that only the cyclic collector
        frees: ≈ 1.3 KiB per connection left until it runs. Nothing may be fed after."""
        del self._parser

    def start_next(self) -> None:
        self._headers = []
        self._in_head = True
        self._head_bytes = 0
        self._framed = False
        self.complete = False

    def feed(self, data: bytes) -> None:
        """Parse ``data``; raises :class:`HTTPError` when it breaks HTTP/1.1."""
        if self.complete:  # nothing may come between a response and the next request
            self.extra = True
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            raise HTTPError("upstream switched protocols") from None
        except httptools.HttpParserError as exc:
            if self.complete:  # garbage after a whole response: that response stands
                self.extra = True
                return
            raise HTTPError(f"invalid HTTP/1.1 response: {exc}") from None
        if self._in_head:
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD:
                raise HTTPError(f"response head larger than {MAX_HEAD // 1024} KiB")

    def eof(self) -> None:
        """The upstream closed the connection: the end of a body that only EOF ends;
        raises :class:`HTTPError` for a response cut short."""
        if self.complete:
            return
        if self._in_head:
            raise HTTPError("upstream closed the connection without a complete response")
        if self._framed:
            raise HTTPError("upstream closed the connection before the body's end")
        self._finish(keep_alive=False)

    def next_event(self) -> Head | bytes | _End | None:
        """The next event, or None when more bytes are needed."""
        return self._events.pop(0) if self._events else None

    # httptools' callbacks

    def on_message_begin(self) -> None:
        if self.complete:
            self.extra = True

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._in_head:
            name, value = name.lower(), value.strip(b" \t")
            if name == b"content-length" or (
                name == b"transfer-encoding" and b"chunked" in value.lower()
            ):
                self._framed = True
            self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self.complete:  # a response after ours, unasked for (see on_message_begin)
            return
        status = self._parser.get_status_code()
        if status >= 200:
            self._in_head = False
            self._events.append(Head(status, self._headers))
        else:  # 1xx: its message ends here; the final response follows
            self._headers = []

    def on_body(self, body: bytes) -> None:
        if not self.complete:
            self._events.append(body)

    def on_message_complete(self) -> None:
        if not self._in_head and not self.complete:
            self._finish(keep_alive=self._parser.should_keep_alive())

    def _finish(self, *, keep_alive: bool) -> None:
        self.complete = True
        self.keep_alive = keep_alive
        self._events.append(END)
