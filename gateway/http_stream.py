"""The client's disconnect told at once: hypercorn's HTTP stream with one extension.

ASGI tells an app that its client went away only through ``receive()``: an app that must
stop when the client leaves keeps a task blocked there for the whole response — a task
started, woken and cancelled for every request. For the connections the gateway serves,
:class:`GatewayHTTPStream` adds ``scope["extensions"]["gateway.http.disconnect"]
["disconnect"]`` (an extension's value is a dict, by ASGI's convention): a
:class:`Disconnect` that calls the one callback set on it when the request's stream
closes — the client went away, or the answer ended — from the task that saw it, before
``http.disconnect`` is queued. (The parts of a body reach the app without a pass through
the scheduler through :mod:`gateway.app_queue`.)

:func:`install` makes hypercorn's HTTP/1.1 and HTTP/2 protocols build this stream (as
:func:`gateway.ws_stream.install` does for WebSockets). It relies on hypercorn internals,
which is why hypercorn is pinned; ``tests/test_http_stream.py`` and
``tests/e2e/test_cancellation.py`` fail if they change.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import hypercorn.protocol.h2
import hypercorn.protocol.h11
from hypercorn.protocol.events import Request, StreamClosed
from hypercorn.protocol.http_stream import HTTPStream

__all__ = ["DISCONNECT_EXTENSION", "Disconnect", "GatewayHTTPStream", "install"]

DISCONNECT_EXTENSION = "gateway.http.disconnect"


class Disconnect:
    """A request's stream closing, told to one callback (set with :meth:`on`) at once."""

    __slots__ = ("_callback", "closed")

    def __init__(self) -> None:
        self._callback: Callable[[], None] | None = None
        self.closed = False

    def on(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` when the stream closes (now, if it has)."""
        self._callback = callback
        if self.closed:
            callback()

    def off(self) -> None:
        self._callback = None

    def fire(self) -> None:
        self.closed = True
        callback, self._callback = self._callback, None
        if callback is not None:
            callback()


class GatewayHTTPStream(HTTPStream):
    """hypercorn's HTTP stream, with :class:`Disconnect`."""

    disconnect: Disconnect | None = None

    async def handle(self, event: Any) -> None:
        if isinstance(event, StreamClosed) and self.disconnect is not None:
            self.disconnect.fire()
        await super().handle(event)
        if isinstance(event, Request) and not self.closed:
            # The app was started, with this very scope dict, and not yet run.
            self.disconnect = Disconnect()
            self.scope["extensions"][DISCONNECT_EXTENSION] = {"disconnect": self.disconnect}


def install() -> None:
    """Make hypercorn build :class:`GatewayHTTPStream` for every HTTP request."""
    hypercorn.protocol.h11.HTTPStream = GatewayHTTPStream  # type: ignore[attr-defined]
    hypercorn.protocol.h2.HTTPStream = GatewayHTTPStream  # type: ignore[attr-defined]
