"""gateway.http_stream: hypercorn builds the gateway's HTTP stream, and a request's stream
closing is told to its callback at once."""

from __future__ import annotations

import hypercorn.protocol.h2 as hypercorn_h2
import hypercorn.protocol.h11 as hypercorn_h11

from gateway.http_stream import Disconnect, GatewayHTTPStream, install


def test_hypercorn_builds_the_gateways_http_stream() -> None:
    """The extension rides on hypercorn internals: serving installs it, and the pinned
    hypercorn still builds its stream by that name."""
    install()
    assert hypercorn_h11.HTTPStream is GatewayHTTPStream
    assert hypercorn_h2.HTTPStream is GatewayHTTPStream


def test_disconnect_calls_its_callback_once_and_late_ones_at_once() -> None:
    calls: list[str] = []
    disconnect = Disconnect()
    disconnect.on(lambda: calls.append("first"))
    disconnect.fire()
    disconnect.fire()  # the callback is used up: told once
    assert calls == ["first"]
    disconnect.on(lambda: calls.append("late"))  # set after the close: called now
    assert calls == ["first", "late"]


def test_a_callback_taken_off_is_not_called() -> None:
    calls: list[str] = []
    disconnect = Disconnect()
    disconnect.on(lambda: calls.append("x"))
    disconnect.off()
    disconnect.fire()
    assert calls == [] and disconnect.closed
