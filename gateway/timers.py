"""Sans-I/O timing: when a heartbeat is due, and when an upstream timer expires.

Plain arithmetic over timestamps from any monotonic clock; the relay feeds it
``trio.current_time()``, tests feed it numbers.
"""

from __future__ import annotations

import math
from typing import Literal

from .abc import Timeouts

TimerName = Literal["first_byte", "idle", "total"]


class HeartbeatClock:
    """Client-side silence. A heartbeat is due once ``interval`` seconds passed with no
    byte written to the client — by the relay or by an earlier heartbeat."""

    __slots__ = ("interval", "last_write")

    def __init__(self, interval: float, now: float) -> None:
        if interval <= 0:
            raise ValueError("interval must be > 0 (0 means no heartbeat task at all)")
        self.interval = interval
        self.last_write = now

    def note_write(self, now: float) -> None:
        self.last_write = now

    @property
    def due_at(self) -> float:
        return self.last_write + self.interval

    def is_due(self, now: float) -> bool:
        return now >= self.due_at


class UpstreamClock:
    """Upstream timers, advanced only by upstream body bytes (never by heartbeats).

    ``first_byte`` runs from the request until the first body byte, ``idle`` from each body
    byte to the next, ``total`` over everything. ``deadline`` is the earliest of the armed
    ones; :meth:`expired` names the one that fired.
    """

    __slots__ = ("_phase", "_phase_at", "_timeouts", "_total_at")

    def __init__(self, timeouts: Timeouts, now: float) -> None:
        self._timeouts = timeouts
        self._total_at = _after(now, timeouts.total)
        self._phase: TimerName = "first_byte"
        self._phase_at = _after(now, timeouts.first_byte)

    def note_bytes(self, now: float) -> None:
        self._phase = "idle"
        self._phase_at = _after(now, self._timeouts.idle)

    @property
    def pauses(self) -> bool:
        """Whether :attr:`paused_deadline` differs: an ``idle`` limit is set."""
        return self._timeouts.idle is not None

    @property
    def paused_deadline(self) -> float:
        """The deadline while the relay waits for the client to take what the upstream sent
        (and reads nothing meanwhile): the client's pace is not the upstream's, so only
        ``total`` runs. Once the client took it, :meth:`note_bytes` restarts ``idle``."""
        return self._total_at

    @property
    def deadline(self) -> float:
        return min(self._total_at, self._phase_at)

    def expired(self) -> TimerName:
        return "total" if self._total_at <= self._phase_at else self._phase

    def limit(self, name: TimerName) -> float | None:
        return getattr(self._timeouts, name)  # type: ignore[no-any-return]


def _after(now: float, seconds: float | None) -> float:
    return math.inf if seconds is None else now + seconds


class PingClock:
    """A WebSocket's silence and its pings. A ping is due once ``interval`` seconds passed
    with nothing sent to the client (frames or pings); a ping is answered by any pong, and
    one that has no answer within ``2 * interval`` means the client is gone. ``interval``
    may change between pings (each response on a socket has its route's); ``0`` sends none.
    """

    __slots__ = ("interval", "last_write", "unanswered_since")

    def __init__(self, interval: float, now: float) -> None:
        self.interval = interval
        self.last_write = now
        self.unanswered_since: float | None = None  # when the oldest unanswered ping went

    def note_write(self, now: float) -> None:
        self.last_write = now

    def note_ping(self, now: float) -> None:
        self.last_write = now
        if self.unanswered_since is None:
            self.unanswered_since = now

    def note_pong(self) -> None:
        self.unanswered_since = None

    @property
    def due_at(self) -> float:
        """When the next ping is due (``inf``: none, the interval is 0)."""
        return self.last_write + self.interval if self.interval > 0 else math.inf

    @property
    def gone_at(self) -> float:
        """When the client counts as gone, unless a pong comes first (``inf``: no ping
        is waiting for one)."""
        if self.unanswered_since is None or self.interval <= 0:
            return math.inf
        return self.unanswered_since + 2 * self.interval

    def next_at(self) -> float:
        return min(self.due_at, self.gone_at)
