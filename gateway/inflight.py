"""The requests the gateway is relaying right now, and how shutdown ends them."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

import trio

from .errors import GatewayError

Phase = Literal["queued", "connecting", "prefill", "streaming", "finishing"]


@dataclass(eq=False, slots=True)
class InFlight:
    """One relayed request. ``scope`` wraps its upstream exchange; :meth:`abort` cancels
    it and leaves ``abort_error`` for the relay to report to the client."""

    request_id: str
    route: str
    backend: str
    stream: bool
    started_at: float
    phase: Phase = "connecting"
    heartbeats: int = 0
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    abort_error: GatewayError | None = None

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
