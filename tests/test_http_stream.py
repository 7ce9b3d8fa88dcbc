"""gateway.http_stream: hypercorn builds the gateway's HTTP stream, a request's stream
closing is told to its callback at once, and queued messages are taken without a wait."""

from __future__ import annotations

from typing import Any

import hypercorn.protocol.h2 as hypercorn_h2
import hypercorn.protocol.h11 as hypercorn_h11
import trio

from gateway.http_stream import Disconnect, GatewayHTTPStream, install, receive_now


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


async def test_receive_now_takes_what_is_queued_and_nothing_else() -> None:
    send, receive = trio.open_memory_channel[dict[str, Any]](4)
    assert receive_now(receive.receive) is None  # empty: the caller awaits receive()
    await send.send({"type": "http.request", "body": b"a", "more_body": True})
    send.send_nowait({"type": "http.request", "body": b"", "more_body": False})
    assert receive_now(receive.receive) == {"type": "http.request", "body": b"a", "more_body": True}
    assert receive_now(receive.receive) == {"type": "http.request", "body": b"", "more_body": False}
    assert receive_now(receive.receive) is None

    async def another_servers_receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    assert receive_now(another_servers_receive) is None  # not a channel: awaited instead
