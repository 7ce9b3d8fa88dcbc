"""A raw WebSocket client on trio and wsproto, for tests and the bench: every frame the
server sends is seen as it is (ping frames with their arrival time), and the client
decides whether to answer pings.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import trio
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


class Rejected(Exception):
    """The server answered the handshake with an HTTP response instead of the upgrade."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        super().__init__(f"handshake refused with {status}")
        self.status = status
        self.headers = headers
        self.body = body


class Closed(Exception):
    """The server closed the socket (``code`` 1006: the connection ended without a close
    frame)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"closed with {code} {reason!r}")
        self.code = code
        self.reason = reason


@dataclass
class WSClient:
    stream: trio.SocketStream
    connection: WSConnection
    answer_pings: bool = True
    pings: list[float] = field(default_factory=list)  # trio times the pings arrived
    _texts: list[str] = field(default_factory=list)
    _closed: Closed | None = None
    _partial: str = ""

    @classmethod
    async def connect(
        cls,
        url: str,
        path: str = "/v1/responses",
        headers: Sequence[tuple[str, str]] = (),
        *,
        answer_pings: bool = True,
    ) -> WSClient:
        """Open a socket to ``url`` (``http://host:port``) and upgrade it on ``path``;
        raises :class:`Rejected` with the server's answer if it refuses."""
        parts = urlsplit(url)
        assert parts.hostname is not None and parts.port is not None
        stream = await trio.open_tcp_stream(parts.hostname, parts.port)
        connection = WSConnection(ConnectionType.CLIENT)
        extra = [(name.encode(), value.encode()) for name, value in headers]
        await stream.send_all(
            connection.send(Request(host=parts.netloc, target=path, extra_headers=extra))
        )
        try:
            return await cls._handshake(stream, connection, answer_pings)
        except BaseException:
            await stream.aclose()
            raise

    @classmethod
    async def _handshake(
        cls, stream: trio.SocketStream, connection: WSConnection, answer_pings: bool
    ) -> WSClient:
        status, answer_headers, body = 0, {}, b""
        while True:
            data = await stream.receive_some(65536)
            connection.receive_data(data or None)
            for event in connection.events():
                if isinstance(event, AcceptConnection):
                    return cls(stream, connection, answer_pings)
                if isinstance(event, RejectConnection):
                    status = event.status_code
                    answer_headers = {
                        k.decode("latin-1").lower(): v.decode("latin-1") for k, v in event.headers
                    }
                    if not event.has_body:
                        raise Rejected(status, answer_headers, body)
                elif isinstance(event, RejectData):
                    body += event.data
                    if event.body_finished:
                        raise Rejected(status, answer_headers, body)
            if not data:
                raise Rejected(status, answer_headers, body)

    async def send_text(self, text: str) -> None:
        await self.stream.send_all(self.connection.send(TextMessage(data=text)))

    async def send_json(self, doc: Any) -> None:
        await self.send_text(json.dumps(doc))

    async def receive_text(self) -> str:
        """The next text message; raises :class:`Closed` once the server closed."""
        while not self._texts:
            if self._closed is not None:
                raise self._closed
            await self._read()
        return self._texts.pop(0)

    async def receive_json(self) -> Any:
        return json.loads(await self.receive_text())

    async def events_until_end(self) -> list[dict[str, Any]]:
        """The events of one response, through its last (``response.completed``,
        ``.incomplete`` or ``.failed``, or an ``error``)."""
        events: list[dict[str, Any]] = []
        while True:
            event = await self.receive_json()
            events.append(event)
            if event.get("type") in (
                "response.completed",
                "response.incomplete",
                "response.failed",
                "error",
            ):
                return events

    async def wait_closed(self) -> Closed:
        """Read (dropping texts) until the server closes; the close."""
        while self._closed is None:
            self._texts.clear()
            await self._read()
        return self._closed

    async def _read(self) -> None:
        data = await self.stream.receive_some(65536)
        if not data:
            self._closed = self._closed or Closed(1006, "")
            await self.stream.aclose()
            return
        self.connection.receive_data(data)
        for event in self.connection.events():
            if isinstance(event, (TextMessage, BytesMessage)):
                part = event.data if isinstance(event.data, str) else bytes(event.data).decode()
                self._partial += part
                if event.message_finished:
                    self._texts.append(self._partial)
                    self._partial = ""
            elif isinstance(event, Ping):
                self.pings.append(trio.current_time())
                if self.answer_pings:
                    await self.stream.send_all(self.connection.send(event.response()))
            elif isinstance(event, CloseConnection):
                self._closed = Closed(event.code, event.reason or "")
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await self.stream.send_all(self.connection.send(event.response()))
                await self.stream.aclose()  # the server's close ends the socket
                return

    async def close(self, code: int = 1000) -> None:
        """Close the socket: a close frame, then the connection."""
        # Already closing (wsproto refuses a second close), or the server is gone.
        with contextlib.suppress(Exception):
            await self.stream.send_all(self.connection.send(CloseConnection(code=code)))
        await self.stream.aclose()

    async def abort(self) -> None:
        """Drop the connection without a close frame."""
        await self.stream.aclose()
