"""A circuit breaker for a shared store (Redis): sans-I/O, time passed in.

``threshold`` calls in a row that got no answer open the circuit: for ``cooldown`` seconds
every call is skipped at once, without touching the network. Then one call (the probe) is
let through while the rest are still skipped; its answer closes the circuit, its failure
opens it for another ``cooldown``. A probe that ends with neither (cancelled, or a bug)
gives the next call the probe's turn, so the circuit can never stay half-open for good.

An error *reply* is an answer: the server is there, so it counts as a success here.
"""

from __future__ import annotations

import math
from typing import Literal

__all__ = ["Circuit", "CircuitState"]

CircuitState = Literal["closed", "open", "half_open"]


class Circuit:
    """Which calls may go to the server. Counts what it decided, for metrics."""

    __slots__ = ("_open_until", "_probing", "cooldown", "failures", "skipped", "threshold")

    def __init__(self, *, threshold: int = 3, cooldown: float = 5.0) -> None:
        if threshold < 1 or cooldown < 0:
            raise ValueError("threshold must be ≥ 1 and cooldown ≥ 0")
        self.threshold = threshold
        self.cooldown = cooldown
        self.failures = 0  # calls in a row that got no answer
        self.skipped = 0  # calls refused while open (a running total)
        self._open_until = -math.inf
        self._probing = False

    def state(self, now: float) -> CircuitState:
        if self.failures < self.threshold:
            return "closed"
        return "open" if now < self._open_until or self._probing else "half_open"

    def try_call(self, now: float) -> bool | None:
        """``None``: skip the server (counted in :attr:`skipped`). Otherwise the call may
        go, and the value says whether it is the probe; settle it with exactly one of
        :meth:`succeeded`, :meth:`failed` or :meth:`abandoned`, passing that value."""
        state = self.state(now)
        if state == "closed":
            return False
        if state == "open":
            self.skipped += 1
            return None
        self._probing = True
        return True

    def succeeded(self, probe: bool) -> bool:
        """The server answered. Returns whether this ended a run of failures."""
        if probe:
            self._probing = False
        ended = self.failures > 0
        self.failures = 0
        return ended

    def failed(self, now: float, probe: bool) -> bool:
        """The server did not answer in time (or the connection failed). Returns whether
        this began a run of failures (the first since an answer)."""
        if probe:
            self._probing = False
        self.failures += 1
        # Opens at the threshold and again after a failed probe; calls that were already
        # in flight when it opened fail without pushing the next probe further off.
        if self.failures >= self.threshold and (probe or self._open_until <= now):
            self._open_until = now + self.cooldown
        return self.failures == 1

    def abandoned(self, probe: bool) -> None:
        """The call ended without a verdict (cancelled): the next call may probe."""
        if probe:
            self._probing = False
