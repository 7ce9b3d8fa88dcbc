"""Sans-I/O framing of a Server-Sent Events byte stream (WHATWG HTML §9.2.6).

The relay forwards upstream bytes unchanged, but only in whole events, so that a heartbeat
or an error event is never written into the middle of one. :class:`SSEFramer` finds the
event boundaries and parses just enough of each event for the relay's decisions (is it a
data event, is it ``[DONE]``). It does no I/O and imports no trio.

Rules kept: lines end in CRLF, LF or a lone CR, and a CR at the end of one chunk pairs with
an LF at the start of the next; a blank line ends an event; a line that starts with ``:`` is
a comment; one leading UTF-8 BOM is stripped; a partial event at end of input is dropped;
a multi-byte UTF-8 character may be split across chunks (lines are decoded whole).
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["SSEEvent", "SSEFramer"]

_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True, slots=True)
class SSEEvent:
    """One dispatched event.

    ``raw`` is the exact upstream bytes from the end of the previous event through the
    blank line that ended this one: concatenating every ``raw`` gives the input back (less
    a leading BOM and a trailing partial event). ``data`` is ``None`` when the event had no
    ``data`` field (a comment or keepalive block); ``comments`` holds its comment lines.
    An event with no fields and no comments means nothing to a client (a stray blank line,
    or the LF of a CRLF that arrived after its CR); it is returned only for its bytes.
    """

    raw: bytes
    data: str | None = None
    event: str | None = None
    id: str | None = None
    retry: int | None = None
    comments: tuple[str, ...] = field(default=())

    @property
    def is_data(self) -> bool:
        return self.data is not None

    @property
    def is_done(self) -> bool:
        """OpenAI's end-of-stream sentinel, ``data: [DONE]`` — read as the openai SDKs
        (Python and Node) read it: data that begins with ``[DONE]``."""
        return self.data is not None and self.data.startswith("[DONE]")


class SSEFramer:
    """Feed bytes in, get whole events out.

    >>> f = SSEFramer()
    >>> [e.data for e in f.feed(b"data: a\\n\\nda")]
    ['a']
    >>> f.pending
    True
    """

    __slots__ = (
        "_after_cr",
        "_buf",
        "_comments",
        "_data",
        "_event",
        "_event_start",
        "_has_lines",
        "_id",
        "_retry",
        "_scan",
        "_started",
        "data_events",
    )

    def __init__(self) -> None:
        self._buf = bytearray()
        self._scan = 0  # index in _buf where the next line starts
        self._event_start = 0  # index in _buf where the current (unfinished) event starts
        self._started = False  # past the leading-BOM check
        self.data_events = 0  # events with data framed so far
        self._after_cr = False  # the last line ended in CR: an LF next belongs to it
        self._reset_fields()

    def _reset_fields(self) -> None:
        self._data: list[str] | None = None
        self._event: str | None = None
        self._id: str | None = None
        self._retry: int | None = None
        self._comments: list[str] = []
        self._has_lines = False

    @property
    def pending(self) -> bool:
        """True while bytes of an unfinished event are held back (not yet returned)."""
        return len(self._buf) > self._event_start

    @property
    def pending_bytes(self) -> int:
        return len(self._buf) - self._event_start

    def feed(self, data: bytes) -> list[SSEEvent]:
        """Add ``data``; return the events it completed, in order."""
        if not self._started:
            self._buf += data
            if len(self._buf) < len(_BOM) and _BOM.startswith(bytes(self._buf)):
                return []  # could still become a BOM
            self._started = True
            if self._buf.startswith(_BOM):
                del self._buf[: len(_BOM)]
        else:
            self._buf += data
        return self._parse()

    def _parse(self) -> list[SSEEvent]:
        buf = self._buf
        events: list[SSEEvent] = []
        pos = self._scan
        end = len(buf)
        if self._after_cr and pos < end:
            self._after_cr = False
            if buf[pos] == 0x0A:  # LF completing a CRLF split across feeds
                pos += 1
                if self._event_start == pos - 1:
                    # It closes a blank line whose event is already out: pass it on at once
                    # as a no-op piece, so forwarded bytes never depend on chunking.
                    events.append(SSEEvent(raw=b"\n"))
                    self._event_start = pos
        while pos < end:
            cr = buf.find(b"\r", pos)
            lf = buf.find(b"\n", pos)
            if cr == -1 and lf == -1:
                break
            if cr == -1 or (lf != -1 and lf < cr):
                line_end, next_pos = lf, lf + 1
            elif cr + 1 < end:
                line_end = cr
                next_pos = cr + 2 if buf[cr + 1] == 0x0A else cr + 1
            else:  # CR is the last byte: the line ends here, an LF may follow later
                line_end, next_pos = cr, cr + 1
                self._after_cr = True
            line = bytes(buf[pos:line_end])
            pos = next_pos
            if line:
                self._field(line)
                continue
            # Blank line: dispatch (an event without lines is a stray blank line; it is
            # still returned so its bytes are forwarded in order).
            events.append(self._dispatch(bytes(buf[self._event_start : pos])))
            self._event_start = pos
        self._scan = pos
        if self._event_start:
            # Drop consumed bytes so the buffer holds only the unfinished event.
            del buf[: self._event_start]
            self._scan -= self._event_start
            self._event_start = 0
        return events

    def _field(self, line: bytes) -> None:
        self._has_lines = True
        text = line.decode("utf-8", "replace")
        if text.startswith(":"):
            self._comments.append(text[1:].removeprefix(" "))
            return
        name, sep, value = text.partition(":")
        if sep:
            value = value.removeprefix(" ")
        if name == "data":
            if self._data is None:
                self._data = []
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self._retry = int(value)

    def _dispatch(self, raw: bytes) -> SSEEvent:
        if self._data is not None:
            self.data_events += 1
        event = SSEEvent(
            raw=raw,
            data=None if self._data is None else "\n".join(self._data),
            event=self._event,
            id=self._id,
            retry=self._retry,
            comments=tuple(self._comments),
        )
        self._reset_fields()
        return event
