"""What the handler decides for one relayed request (:class:`Exchange`), and each target
it may be tried on (:class:`Attempt`): everything :func:`~gateway.relay.relay` needs."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field

from .abc import JSONObject, UpstreamRequest, UpstreamResponse
from .dialects.base import Dialect, Shape
from .dialects.chat import CHAT, ChatPassthrough
from .inflight import InFlight, InFlightTable
from .keepalive import KeepaliveSettings
from .service import Upstream
from .telemetry import Telemetry
from .tracing import RequestTrace
from .writer import Headers

__all__ = ["ATTEMPTS_HEADER", "Attempt", "Exchange"]

ATTEMPTS_HEADER = b"x-gateway-attempts"


@dataclass(frozen=True, slots=True)
class Attempt:
    """One target to try: the request its backend gets, and how its answer reaches the
    client (passed through, or translated to the client's dialect). ``open`` stands in for
    the backend's ``open_response`` where the gateway makes the answer from another call
    (a token count from :meth:`~gateway.abc.Backend.count_tokens`). ``admitted``: the
    attempt takes one of the backend's slots (waiting in its queue for one); a token count
    does not — it generates nothing, and a client asks for one before it sends its turn."""

    upstream: Upstream
    request: UpstreamRequest
    shape: Shape = field(default_factory=ChatPassthrough)
    open: Callable[[UpstreamRequest], AbstractAsyncContextManager[UpstreamResponse]] | None = None
    admitted: bool = True


@dataclass(frozen=True, slots=True)
class Exchange:
    """Everything the relay needs for one request, decided by the handler."""

    pick_attempts: Callable[[], Sequence[Attempt]]
    request_id: str
    stream: bool
    route: str
    keepalive: KeepaliveSettings
    """The request's keepalive policy, unless :attr:`keepalives` says otherwise."""
    inflight: InFlightTable
    endpoint: str = ""
    model: str = ""  # as the client asked
    max_attempts: int = 1
    failover_deadline: float | None = None
    extra_headers: Headers = ()
    telemetry: Telemetry | None = None
    team: str = ""
    key_id: str = ""
    dialect: Dialect = CHAT
    keep: Callable[[JSONObject], Awaitable[None]] | None = None
    """Called with the whole answer before its end reaches the client, for dialects that
    keep answers (stored Responses): a client that asks for it next finds it."""
    on_begin: Callable[[InFlight, float], None] | None = None
    """A WebSocket turn's: called with the relay's entry as it begins and the heartbeat
    interval of its policy (the route's, or what its first backend's ``keepalive`` made of
    it). The socket pings at that interval and counts its pings on the entry; the relay
    writes no heartbeat into such a turn."""
    on_finish: Callable[[InFlight], None] | None = None
    """Called last, once, however the relay ends: the handler frees what the request held
    (its team admission, its route's backends)."""
    connection: str = ""  # the WebSocket it came on, for the access log
    trace: RequestTrace | None = None  # with tracing on: the request's span
    keepalives: Mapping[str, KeepaliveSettings] = field(default_factory=dict)
    """The policy of a request whose first attempt goes to the backend of that id (the
    route's with the backend's override); one not here: :attr:`keepalive`."""
    log: list[str] = field(default_factory=list)  # "backend=outcome" per attempt

    def headers(self) -> list[tuple[bytes, bytes]]:
        """Headers for the client, with the attempts made so far."""
        attempts = [(ATTEMPTS_HEADER, ", ".join(self.log).encode())] if self.log else []
        return [*self.extra_headers, *attempts]
