"""The requests the gateway is relaying right now, and how shutdown ends them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Literal

import trio

from .errors import GatewayError

Phase = Literal["queued", "connecting", "prefill", "streaming", "finishing"]
Outcome = Literal[
    "completed", "client_gone", "upstream_error", "timeout", "rejected", "shutdown", "error"
]


@dataclass(eq=False, slots=True)
class InFlight:
    """One relayed request, and the record of how it went (for metrics, the access log and
    the status page). ``scope`` wraps its exchange (the relay makes it its nursery's, so
    that the tasks beside the exchange end with it); :meth:`abort` cancels it and leaves
    ``abort_error`` for the relay to report to the client. Times are trio's clock."""

    request_id: str
    route: str
    backend: str
    stream: bool
    started_at: float
    endpoint: str = ""
    model: str = ""
    team: str = ""  # with teams on: the request's team, and its key's fingerprint
    key_id: str = ""
    connection: str = ""  # the WebSocket it came on ("" over plain HTTP)
    phase: Phase = "connecting"
    heartbeats: int = 0
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    abort_error: GatewayError | None = None
    on_heartbeat: Callable[[InFlight], None] | None = None
    # The record, filled in as the request goes:
    status: int | None = None
    outcome: Outcome | None = None
    disconnect_phase: Phase | None = None
    first_byte_at: float | None = None  # first upstream body byte
    first_token_at: float | None = None  # first upstream data event written to the client
    upstream_seconds: float = 0.0  # time inside backends' open_response, all attempts
    queue_seconds: float = 0.0
    bytes_out: int = 0
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    # Events with data the upstream streamed (about one per token): what a team is charged
    # for the answer when the upstream's usage never came (its client left).
    data_events: int = 0
    response_model: str | None = None  # as the upstream's answer named it
    attempts: tuple[str, ...] = ()
    ended_at: float | None = None

    def heartbeat(self) -> None:
        self.heartbeats += 1
        if self.on_heartbeat is not None:
            self.on_heartbeat(self)

    def abort(self, error: GatewayError) -> None:
        if self.abort_error is None:
            self.abort_error = error
            self.scope.cancel()


class InFlightTable:
    __slots__ = ("_empty", "_entries")

    def __init__(self) -> None:
        self._entries: set[InFlight] = set()
        self._empty = trio.Event()
        self._empty.set()

    def add(self, entry: InFlight) -> None:
        self._entries.add(entry)
        self._empty = trio.Event() if self._empty.is_set() else self._empty

    def discard(self, entry: InFlight) -> None:
        self._entries.discard(entry)
        if not self._entries:
            self._empty.set()

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[InFlight]:
        return iter(list(self._entries))

    async def wait_empty(self) -> None:
        await self._empty.wait()

    def abort_all(self, error: GatewayError) -> int:
        entries = list(self._entries)
        for entry in entries:
            entry.abort(error)
        return len(entries)
