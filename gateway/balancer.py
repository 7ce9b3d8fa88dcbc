"""Routing decisions across a route's targets. Pure: no I/O, no trio, no clock of its own.

:func:`order_targets` orders the targets to try for one request from a snapshot of their
state; :class:`Breaker` is the passive-health state machine of one backend. Both take time
and randomness as arguments, so every decision is reproducible in a test.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from .abc import EjectionSettings
from .config import Strategy
from .errors import (
    ContextWindowExceeded,
    GatewayError,
    Overloaded,
    UpstreamError,
    UpstreamResponseTooLarge,
    UpstreamStatusError,
)

BreakerState = Literal["closed", "open", "half_open"]


@dataclass(frozen=True, slots=True)
class Candidate:
    """One target as :func:`order_targets` sees it at the moment of a request."""

    index: int  # position in the route's targets (the priority order)
    weight: float = 1.0
    ready: bool = True  # the backend's own health: False while down or loading
    breaker: BreakerState = "closed"
    load: float = 0.0  # gateway in flight + queued, plus what the upstream reports


def order_targets(
    strategy: Strategy, candidates: Sequence[Candidate], *, turn: int, draw: float
) -> list[int]:
    """The order in which to try targets, as indexes. Empty when none can serve.

    Not-ready and ejected (``open``) targets are left out. A ``half_open`` target — its
    cool-down is over — goes first: it needs one trial request to come back, and if the
    trial fails the request simply fails over to the rest. ``turn`` (a per-route request
    counter) rotates round-robin and breaks ties; ``draw`` in [0, 1) picks by weight.
    """
    usable = [c for c in candidates if c.ready and c.breaker != "open"]
    trials = [c.index for c in usable if c.breaker == "half_open"]
    healthy = [c for c in usable if c.breaker == "closed"]
    if not healthy:
        return trials
    if strategy == "priority":
        order = [c.index for c in healthy]
    elif strategy == "round_robin":
        k = turn % len(healthy)
        order = [c.index for c in healthy[k:] + healthy[:k]]
    elif strategy == "weighted":
        order = _weighted(healthy, draw)
    else:  # least_busy: lowest load per unit of weight; ties rotate with the turn
        n = len(healthy)
        ranked = sorted(
            range(n), key=lambda i: (healthy[i].load / healthy[i].weight, (i - turn) % n)
        )
        order = [healthy[i].index for i in ranked]
    return trials + order


def _weighted(healthy: Sequence[Candidate], draw: float) -> list[int]:
    total = sum(c.weight for c in healthy)
    point = draw * total
    chosen = healthy[-1]
    for c in healthy:
        point -= c.weight
        if point < 0:
            chosen = c
            break
    rest = sorted((c for c in healthy if c is not chosen), key=lambda c: (-c.weight, c.index))
    return [chosen.index, *(c.index for c in rest)]


class Breaker:
    """Passive health of one backend: ``closed`` (in rotation), ``open`` (ejected after
    ``failures`` consecutive failures, for ``cooldown`` seconds), ``half_open`` (cooled
    down; the next request is a trial — success closes, failure opens again).

    Every attempt the relay starts with :meth:`on_attempt` ends in exactly one of
    :meth:`on_success`, :meth:`on_failure` or :meth:`on_no_verdict` — the last for an
    attempt that says nothing about the backend (its client left, the upstream was busy or
    refused the request as bad, a bug). Without it a trial that ended so would keep the
    backend ``open`` for good.

    Failures carry the client that caused them (a team key's id; ``""`` when clients cannot
    be told apart, with auth off). Consecutive failures all caused by one identified client
    eject nobody: that client's requests may be what makes the upstream fail, and one client
    must not take a backend away from everyone. Failures from two or more clients, or from
    clients that cannot be told apart, eject as configured.
    """

    __slots__ = ("_clients", "_settings", "_trial", "ejected_until", "failures")

    def __init__(self, settings: EjectionSettings) -> None:
        self._settings = settings
        self.failures = 0
        self.ejected_until: float | None = None
        self._trial = False
        self._clients: set[str] = set()  # who caused the current run of failures

    def state(self, now: float) -> BreakerState:
        if self.ejected_until is None:
            return "closed"
        if now < self.ejected_until or self._trial:
            return "open"
        return "half_open"

    def on_attempt(self, now: float) -> None:
        if self.state(now) == "half_open":
            self._trial = True  # one trial at a time

    def on_success(self) -> None:
        self.failures = 0
        self.ejected_until = None
        self._trial = False
        self._clients.clear()

    def on_no_verdict(self) -> None:
        """The attempt ended without telling whether the backend works: if it was the
        half-open trial, the trial is over and the next request is one."""
        self._trial = False

    def on_failure(self, now: float, client: str = "") -> bool:
        """Count a failure caused by ``client``; return True when it ejects the backend."""
        was_trial = self._trial
        self._trial = False
        self.failures += 1
        self._clients.add(client)
        limit = self._settings.failures
        one_client = len(self._clients) == 1 and client != ""
        if was_trial or (
            limit and self.failures >= limit and self.ejected_until is None and not one_client
        ):
            self.ejected_until = now + self._settings.cooldown
            return True
        return False


def is_retryable(error: GatewayError) -> bool:
    """May the request go to the next target? Only failures the next backend might not
    have: connection trouble, timeouts, 5xx, 429 and a full queue, and a request over the
    model's context window (the next target may serve a longer one: a route can fall back
    from an 8k model to a 128k one; when every target refuses, the client gets the last
    refusal). Never another 4xx that the client caused — every backend would refuse it the
    same way."""
    if isinstance(error, ContextWindowExceeded):
        return True
    if isinstance(error, UpstreamStatusError):
        return error.status >= 500 or error.status == 429
    if isinstance(error, UpstreamResponseTooLarge):
        return False  # the request asked for that much: any backend would answer as much
    return isinstance(error, (UpstreamError, Overloaded))


def counts_against_backend(error: GatewayError) -> bool:
    """Does this failure count toward ejecting the backend? Upstream faults do; its own
    "busy" answers (429) and the gateway's own full queue do not."""
    if isinstance(error, UpstreamStatusError):
        return error.status >= 500
    return isinstance(error, UpstreamError) and not isinstance(error, UpstreamResponseTooLarge)


def upstream_load(in_flight: int, queued: int, running: int | None, waiting: int | None) -> float:
    """The load ``least_busy`` compares: the gateway's own in-flight and queued requests
    plus what the upstream reports running and waiting (it also sees other clients)."""
    return float(in_flight + queued + (running or 0) + (waiting or 0))
