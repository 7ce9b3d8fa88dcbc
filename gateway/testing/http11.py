"""Reading one HTTP/1.1 request with h11 on a trio stream, for fake upstreams in tests.

Every fake server in :mod:`gateway.testing` (and a plugin author's own) answers requests its
own way, but reads them the same way: this module is that one way."""

from __future__ import annotations

from dataclasses import dataclass

import h11
import trio

__all__ = ["IncomingRequest", "read_request"]


@dataclass(frozen=True, slots=True)
class IncomingRequest:
    head: h11.Request
    body: bytes


async def read_request(
    stream: trio.abc.ReceiveStream, conn: h11.Connection
) -> IncomingRequest | None:
    """The next whole request on ``conn``; None when the peer closed before sending one."""
    head: h11.Request | None = None
    body = bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await stream.receive_some(65536)
            if not data:
                return None
            conn.receive_data(bytes(data))
        elif isinstance(event, h11.Request):
            head = event
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            assert head is not None
            return IncomingRequest(head, bytes(body))
        else:  # ConnectionClosed (or PAUSED, which reading a request never leaves us in)
            return None
