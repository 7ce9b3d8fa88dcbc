"""WebSocket ping frames for the ASGI app: hypercorn's WebSocket stream with one extension.

ASGI gives an app no way to send a ping frame or to hear a pong: hypercorn answers a
client's pings itself and drops its pongs, and its own ``websocket_ping_interval`` pings
on one fixed timer and never checks for an answer. The gateway pings when the client has
heard nothing for the turn's keepalive interval and treats a missing pong as a disconnect, so
:class:`GatewayWSStream` adds, for the connections the gateway serves:

- ``scope["extensions"]["gateway.websocket.ping"]``: the extension is there;
- a send message ``{"type": "gateway.websocket.ping", "data": bytes}``: a ping frame;
- a receive message ``{"type": "gateway.websocket.pong", "data": bytes}``: a pong arrived.

It also gives the close that refuses an oversized message (1009, hypercorn's
``websocket_max_message_size``) a reason the client can read.

:func:`install` makes hypercorn's HTTP/1.1 and HTTP/2 protocols build this stream
instead of theirs (they look the class up by module name when an upgrade arrives). Like
:mod:`gateway.connections`, this relies on hypercorn internals (``_handle_events``,
``buffer``, ``app_put``, ``_send_wsproto_event``), which is why hypercorn is pinned;
``tests/e2e/test_responses_websocket.py`` fails if they change.
"""

from __future__ import annotations

from typing import Any

import hypercorn.protocol.h2
import hypercorn.protocol.h11
from hypercorn.protocol.events import Request, StreamClosed
from hypercorn.protocol.ws_stream import FrameTooLargeError, WSStream
from hypercorn.typing import ASGISendEvent
from wsproto.connection import ConnectionState
from wsproto.events import CloseConnection, Message, Ping, Pong
from wsproto.frame_protocol import CloseReason

PING_EXTENSION = "gateway.websocket.ping"
PING = "gateway.websocket.ping"
PONG = "gateway.websocket.pong"


class GatewayWSStream(WSStream):
    """hypercorn's WebSocket stream, with ping frames and pongs for the app."""

    async def handle(self, event: Any) -> None:
        await super().handle(event)
        if isinstance(event, Request) and not self.closed:
            self.scope["extensions"][PING_EXTENSION] = {}

    async def app_send(self, message: ASGISendEvent | None) -> None:
        if message is not None and message["type"] == PING:
            if not self.closed:
                data = message.get("data", b"")
                await self._send_wsproto_event(
                    Ping(payload=data if isinstance(data, bytes) else b"")
                )
            return
        await super().app_send(message)

    async def _handle_events(self) -> None:
        # hypercorn's loop, with pongs handed to the app and a reason on the 1009 close.
        for event in self.connection.events():
            if isinstance(event, Message):
                try:
                    self.buffer.extend(event)
                except FrameTooLargeError:
                    limit = self.config.websocket_max_message_size
                    await self._send_wsproto_event(
                        CloseConnection(
                            code=CloseReason.MESSAGE_TOO_BIG,
                            reason=f"message larger than the gateway's limit of {limit} bytes",
                        )
                    )
                    # The app hears of it now, not once the client answers the close (one
                    # that never does kept its running turn, and its upstream, going).
                    await self.app_put(  # type: ignore[misc]
                        {"type": "websocket.disconnect", "code": CloseReason.MESSAGE_TOO_BIG}
                    )
                    break
                if event.message_finished:
                    await self.app_put(self.buffer.to_message())  # type: ignore[misc]
                    self.buffer.clear()
            elif isinstance(event, Ping):
                await self._send_wsproto_event(event.response())
            elif isinstance(event, Pong):
                await self.app_put({"type": PONG, "data": bytes(event.payload)})  # type: ignore[misc]
            elif isinstance(event, CloseConnection):
                if self.connection.state == ConnectionState.REMOTE_CLOSING:
                    await self._send_wsproto_event(event.response())
                await self.send(StreamClosed(stream_id=self.stream_id))


def install() -> None:
    """Make hypercorn build :class:`GatewayWSStream` for every WebSocket upgrade."""
    hypercorn.protocol.h11.WSStream = GatewayWSStream  # type: ignore[attr-defined]
    hypercorn.protocol.h2.WSStream = GatewayWSStream  # type: ignore[attr-defined]
