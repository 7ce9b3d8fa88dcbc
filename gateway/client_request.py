"""One request as the client sent it, and what the proxy's :meth:`~gateway.proxy.ProxyApp.
prepare` takes from the transport it came on (plain HTTP, or a WebSocket's turn)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import trio
from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable, HTTPScope, WebsocketScope

from .abc import Endpoint, JSONObject
from .dialects import dialect_of
from .dialects.base import Dialect
from .http_stream import Disconnect
from .inbound import request_ids
from .inflight import InFlight
from .responses.conversation import SocketLane
from .teams import Identity

Serve = Callable[[ASGISendCallable, Disconnect | ASGIReceiveCallable | None], Awaitable[None]]
"""A prepared request's relay: run it with the ASGI ``send`` to answer on, and what tells
of the client's disconnect: the server's :class:`~gateway.http_stream.Disconnect`, or the
request's ``receive`` (``None``: the caller cancels it)."""


class ClientRequest:
    """One proxied request as the client sent it: headers looked up by lower-case name,
    the ids the gateway answers with, and the time it arrived. On a WebSocket, each
    ``response.create`` is one (with the handshake's headers)."""

    __slots__ = (
        "dialect",
        "endpoint",
        "headers",
        "identity",
        "method",
        "model",
        "path",
        "request_id",
        "route",
        "started",
        "traceparent",
    )

    def __init__(
        self,
        endpoint: Endpoint,
        method: str,
        path: str,
        headers: dict[str, str],
        dialect: Dialect | None = None,
    ) -> None:
        self.started = trio.current_time()
        self.endpoint = endpoint
        self.dialect: Dialect = dialect or dialect_of(endpoint)
        self.method = method
        self.path = path
        self.headers = headers
        self.request_id, self.traceparent = request_ids(
            headers.get("x-request-id", ""), headers.get("traceparent", "")
        )
        self.identity: Identity | None = None
        self.model: str | None = None
        self.route = ""

    @classmethod
    def of(cls, scope: HTTPScope, endpoint: Endpoint) -> ClientRequest:
        return cls(endpoint, scope["method"], scope["path"], headers_of(scope))

    def id_headers(self) -> list[tuple[bytes, bytes]]:
        return [
            (b"x-request-id", self.request_id.encode()),
            (b"traceparent", self.traceparent.encode()),
            *self.dialect.id_headers(self.request_id),
        ]


def headers_of(scope: HTTPScope | WebsocketScope) -> dict[str, str]:
    """A request's headers by lower-case name (the last of repeated ones)."""
    return {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}


class OnBegin(Protocol):
    def __call__(self, entry: InFlight, interval: float) -> None: ...


@dataclass(frozen=True, slots=True)
class SocketTurn:
    """What differs for a response asked for on a WebSocket (:mod:`gateway.websocket`):
    the socket's id for the access log, the turn's lane of the socket's memory (what it may
    continue without the store, where its answer is remembered), and a hook that gets the
    relay's entry when it begins, with its heartbeat interval (the route's, or its first
    backend's ``keepalive.interval``): heartbeats are the socket's ping frames, at that
    interval, counted on the entry; the relay writes none."""

    connection_id: str
    lane: SocketLane
    on_begin: OnBegin
    generate: bool = True
    """``False``: a warm-up (``generate: false``): the turn is checked, routed, authorized
    and answered with a completed response with no output, which the next turn may continue
    (with its input); no backend is asked."""


class Prepare(Protocol):
    """:meth:`gateway.proxy.ProxyApp.prepare`: route, authorize, plan and admit."""

    async def __call__(
        self, request: ClientRequest, body: JSONObject, socket: SocketTurn | None = None
    ) -> Serve: ...
