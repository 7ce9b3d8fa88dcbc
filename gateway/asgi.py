"""The ASGI HTTP connection class: quart-trio's, minus the response timeout, plus the
status feed's response, which writes itself.

quart-trio runs two tasks per request in one nursery: one blocked in ``receive()`` that
cancels the nursery on ``http.disconnect`` (so a client that goes away cancels whatever is
running), and one that runs the handler and sends the response. We keep that shape and
change the sending half: a :class:`StatusFeedResponse` writes its own ASGI messages in this
very task, so the feed's nursery lives exactly as long as the request; and no response is
ever wrapped in Quart's ``RESPONSE_TIMEOUT`` (its 60 s default silently truncates long
streams). The relayed endpoints do not come here at all: they are served by
:class:`gateway.proxy.ProxyApp` in front of Quart.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import trio
from quart import Response
from quart_trio.asgi import TrioASGIHTTPConnection


class StatusFeedResponse(Response):
    """The status feed's endless SSE response (``GET /status/events``): ``serve(send)``
    sends every ASGI message itself, for as long as the client listens, under no timeout.
    Quart's ``after_request`` hooks see it before a byte is sent, so the feed writes its
    own access-log line when it ends."""

    def __init__(self, serve: Callable[[Any], Awaitable[None]]) -> None:
        super().__init__(b"")
        self.serve = serve


class GatewayHTTPConnection(TrioASGIHTTPConnection):
    async def handle_request(  # type: ignore[override]
        self, nursery: trio.Nursery, request: Any, send: Any
    ) -> None:
        response = await self.app.handle_request(request)
        if isinstance(response, StatusFeedResponse):
            await response.serve(send)
        else:
            await self._send_response(send, response)
        nursery.cancel_scope.cancel()
