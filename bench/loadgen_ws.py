"""The load generator's WebSocket side: OpenAI Responses turns over one socket, as an asyncio
``Protocol`` like the HTTP connections (``loadgen_conn.Conn``), with wsproto (sans-I/O) for
the framing.

A :class:`WSConn` upgrades ``GET <path>`` (with the bearer key, and the permessage-deflate
offer when asked: the SDKs' ``websockets`` and Node's ``ws`` offer it by default), then runs
its turns one after another from ``data_received``: it sends a ``response.create`` text
frame, records every frame the server sends in a :class:`~loadgen_conn.StreamRecord`
(stamped with the read that completed it), and on the turn's terminal event sends the next
turn, or a close frame when there is none. Each text frame is one event: content deltas are
``response.output_text.delta`` frames carrying ``tok<i> ``; ``response.completed`` ends a
turn whole; ``response.failed``, ``response.incomplete`` and ``error`` end it as a failure.
Ping frames are answered and counted as heartbeats.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable

from loadgen_conn import PoolConn, StreamRecord, now
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.extensions import PerMessageDeflate
from wsproto.utilities import ProtocolError

_TOKEN = re.compile(r'"tok(\d+) ')
_DELTA = "response.output_text.delta"
_FAILURES = ("response.failed", "response.incomplete", "error")
# How long a socket waits for the server's answer to its close frame before it drops the
# connection: the load generator's loops are bounded in time.
CLOSE_WAIT_S = 5.0


def create_message(body: dict[str, object]) -> str:
    """The ``response.create`` frame of a Responses request body (its ``stream`` left out:
    a socket streams every turn)."""
    fields = {name: value for name, value in body.items() if name != "stream"}
    return json.dumps({"type": "response.create", **fields}, separators=(",", ":"))


class WSConn(PoolConn):
    """One WebSocket running turns back to back: ``next_turn()`` gives the next
    ``response.create`` frame's text or ``None``; each finished turn's record goes to
    ``on_stream``; ``on_handshake(seconds)`` gets the upgrade's round trip."""

    def __init__(
        self,
        host: str,
        port: int,
        path: str,
        key: str,
        deflate: bool,
        next_turn: Callable[[], str | None],
        on_stream: Callable[[StreamRecord], None],
        on_handshake: Callable[[float], None],
        on_close: Callable[[PoolConn, str | None], None],
    ) -> None:
        self._request = Request(
            host=f"{host}:{port}",
            target=path,
            extensions=[PerMessageDeflate()] if deflate else [],
            extra_headers=[(b"authorization", f"Bearer {key}".encode())] if key else [],
        )
        self._next = next_turn
        self._on_stream = on_stream
        self._on_handshake = on_handshake
        self._on_close = on_close
        self._ws = WSConnection(ConnectionType.CLIENT)
        self._transport: asyncio.Transport | None = None
        self._opened = 0.0
        self._record: StreamRecord | None = None
        self._partial: list[str] = []
        self._read_tokens = 0  # content deltas in the current read (for coalescing)
        self._error: str | None = None
        self._ended = False  # sent our close frame: the socket's work is done
        self.extensions: list[str] = []  # what the server accepted

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        self._opened = now()
        self._write(self._ws.send(self._request))

    def _write(self, data: bytes) -> None:
        assert self._transport is not None
        self._transport.write(data)

    def data_received(self, data: bytes) -> None:
        t = now()
        self._read_tokens = 0
        try:
            self._ws.receive_data(data)
            for event in self._ws.events():
                if isinstance(event, TextMessage | BytesMessage):
                    part = event.data if isinstance(event.data, str) else bytes(event.data).decode()
                    self._partial.append(part)
                    if event.message_finished:
                        text = "".join(self._partial)
                        self._partial.clear()
                        self._frame(text, t)
                elif isinstance(event, Ping):
                    self._write(self._ws.send(event.response()))
                    if self._record is not None:
                        self._record.heartbeats.append(t)
                        self._record.events.append(t)
                elif isinstance(event, AcceptConnection):
                    self.extensions = [e.name for e in event.extensions]
                    self._on_handshake(t - self._opened)
                    self._send_next()
                elif isinstance(event, RejectConnection | RejectData):
                    status = getattr(event, "status_code", "?")
                    self._fail(f"handshake refused with {status}")
                    return
                elif isinstance(event, CloseConnection):
                    if not self._ended:
                        self._error = f"closed by the server: {event.code} {event.reason or ''}"
                        self._write(self._ws.send(event.response()))
                    assert self._transport is not None
                    self._transport.close()
                    return
        except ProtocolError as exc:
            self._fail(f"websocket protocol error: {exc}")
            return

    def _frame(self, text: str, t: float) -> None:
        """Record one event of the running turn; its terminal event starts the next turn."""
        record = self._record
        if record is None:
            self._fail(f"a frame outside any turn: {text[:120]!r}")
            return
        record.events.append(t)
        if record.first_event is None:
            record.first_event = t
        try:
            doc = json.loads(text)
            kind = doc.get("type") if isinstance(doc, dict) else None
        except ValueError:
            kind = None
        if kind == _DELTA:
            match = _TOKEN.search(text)
            if match is None:
                return
            if int(match.group(1)) != len(record.tokens):
                record.order_ok = False
            record.tokens.append(t)
            if self._read_tokens:  # in the same read as the delta before it
                record.coalesced += 1
            self._read_tokens += 1
            return
        if kind == "response.completed":
            record.complete = True
        elif kind in _FAILURES:
            record.errors.append(text[:200])
        else:
            if kind is None:  # counted as broken; the turn goes on to its terminal event
                record.errors.append(f"not a JSON event: {text[:120]}")
            return
        record.ended = t
        self._record = None
        self._on_stream(record)
        self._send_next()

    def _send_next(self) -> None:
        text = self._next()
        if text is None:
            self._ended = True
            self._write(self._ws.send(CloseConnection(code=1000)))
            loop = asyncio.get_running_loop()
            transport = self._transport
            assert transport is not None
            loop.call_later(CLOSE_WAIT_S, transport.abort)  # no answer: drop it
            return
        record = StreamRecord(now())
        record.status = 200  # the upgrade was accepted; failures are error events
        self._record = record
        self._read_tokens = 0
        self._write(self._ws.send(TextMessage(data=text)))

    def connection_lost(self, exc: Exception | None) -> None:
        self._note_loss(exc)
        if self._record is not None:
            self._record.errors.append(self._error or "lost")
            self._on_stream(self._record)
            self._record = None
        self._on_close(self, None if self._ended and self._error is None else self._error)
