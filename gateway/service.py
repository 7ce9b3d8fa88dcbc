"""The running gateway: its config, its backends (with their resources held), its routes,
the per-backend state the gateway keeps (slots and their queue, passive health), and the
store of Responses-API responses (:mod:`gateway.responses`).

Depends on :mod:`gateway.telemetry`, never the other way: the metrics read the live
per-backend state through the :class:`~gateway.telemetry.UpstreamGauges` each
:class:`Upstream` reports."""

from __future__ import annotations

import logging
import random
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field

import trio

from .abc import Backend, BackendSettings
from .admission import BackendSlots, Slots
from .backend_hosts import BackendHosts, open_backend_hosts
from .balancer import Breaker, Candidate, order_targets, upstream_load
from .config import GatewayConfig, Route, TargetSettings
from .errors import ConfigError
from .inflight import InFlightTable
from .keepalive import KeepaliveOverride
from .registry import Registry, load_registry
from .responses import ResponseStore, open_response_store
from .routing import Router
from .teams import Teams, open_teams
from .telemetry import Telemetry, UpstreamGauges
from .tracing import Tracing, open_tracing
from .worker_link import ParentLink, ParentState, SharedSlots

log = logging.getLogger("gateway")


@dataclass(eq=False)
class Upstream:
    """A backend plus what the gateway tracks about it. ``users``: the requests that may
    still reach it (a config reload waits for none before it stops a backend it replaced
    or removed). ``keepalive``: its ``[backends.X.keepalive]`` in force — a reload that
    changes nothing else of the backend replaces it here and keeps the backend running."""

    backend: Backend
    slots: Slots
    breaker: Breaker
    keepalive: KeepaliveOverride = field(default_factory=KeepaliveOverride)
    users: int = 0
    _unused: trio.Event = field(default_factory=trio.Event)

    @classmethod
    def of(
        cls, backend: Backend, link: ParentLink | None = None, replaced: Upstream | None = None
    ) -> Upstream:
        """``backend``'s upstream; with ``link`` (a worker process), its slots are the
        machine's. An upstream that ``replaced`` one of the same admission settings (a
        config reload changed something else of the backend) takes over its slots: the
        requests still on the old one and those on the new one share one limit and one
        queue, in arrival order."""
        admission = backend.settings.admission
        slots: Slots
        if replaced is not None and replaced.backend.settings.admission == admission:
            slots = replaced.slots
        elif link is None:
            slots = BackendSlots(backend.id, admission)
        else:
            slots = SharedSlots(link, backend.id, admission)
        return cls(backend, slots, Breaker(backend.settings.ejection), backend.settings.keepalive)

    @property
    def id(self) -> str:
        return self.backend.id

    def hold(self) -> None:
        self.users += 1

    def release(self) -> None:
        self.users -= 1
        if self.users == 0:
            self._unused.set()
            self._unused = trio.Event()

    async def wait_unused(self) -> None:
        """Return once no request holds this upstream."""
        while self.users:
            await self._unused.wait()

    def available(self, now: float) -> bool:
        """Ready by its own health and not ejected by the gateway's."""
        return self.backend.status.ready and self.breaker.state(now) != "open"

    def candidate(self, index: int, weight: float, now: float) -> Candidate:
        status = self.backend.status
        return Candidate(
            index=index,
            weight=weight,
            ready=status.ready,
            breaker=self.breaker.state(now),
            load=upstream_load(
                self.slots.in_flight, self.slots.queued, status.running, status.queued
            ),
        )

    def gauges(self, now: float) -> UpstreamGauges:
        """What the metrics show of this backend at ``now``."""
        status = self.backend.status
        return UpstreamGauges(
            backend=self.id,
            queued=self.slots.queued,
            in_flight=self.slots.in_flight,
            ready=status.ready,
            ejected=self.breaker.state(now) == "open",
            reported_running=status.running,
            reported_waiting=status.queued,
            cache_usage=status.cache_usage,
        )


@dataclass(eq=False)
class Gateway:
    config: GatewayConfig
    upstreams: Mapping[str, Upstream]
    router: Router
    responses: ResponseStore
    inflight: InFlightTable = field(default_factory=InFlightTable)
    telemetry: Telemetry = field(default_factory=Telemetry)
    teams: Teams | None = None  # None: auth off (open_gateway always sets it)
    registry: Registry | None = None  # the backend types a reload may build
    hosts: BackendHosts | None = None  # where a reload starts and stops backends
    tracing: Tracing | None = None  # None: tracing off
    link: ParentLink | None = None  # a worker process's line to its parent
    adapt: Callable[[GatewayConfig], GatewayConfig] | None = None
    """What a reloaded config goes through before it is used (a worker's: its parent's
    backends reached where the parent runs them); may raise :class:`ConfigError`."""
    stopping: bool = False  # SIGTERM came: not ready, though serving until the drain
    drain_started: trio.Event = field(default_factory=trio.Event)
    """Set when the drain begins (:attr:`draining`): what WebSockets wait on to stop taking
    new responses."""
    _turns: dict[str, int] = field(default_factory=dict)

    @property
    def draining(self) -> bool:
        """Shutting down: new requests are refused, those in flight finish."""
        return self.drain_started.is_set()

    @property
    def auth(self) -> Teams | None:
        """The teams that check every request's key, or ``None`` when auth is off."""
        return self.teams if self.teams is not None and self.teams.enabled else None

    @property
    def backends(self) -> dict[str, Backend]:
        return {id: upstream.backend for id, upstream in self.upstreams.items()}

    def gauges(self) -> list[UpstreamGauges]:
        """Every backend's live state now, for the metrics."""
        now = trio.current_time()
        return [upstream.gauges(now) for upstream in self.upstreams.values()]

    def pick_targets(
        self, route: Route, upstreams: Mapping[str, Upstream]
    ) -> list[tuple[Upstream, TargetSettings]]:
        """The targets to try for one request on ``route``, in order, by the route's
        strategy and each backend's state now. Advances the route's round-robin turn.
        ``upstreams``: the backends the request started with (a reload may have
        replaced :attr:`upstreams` since)."""
        targets = route.settings.all_targets
        turn = self._turns.get(route.name, 0)
        self._turns[route.name] = turn + 1
        now = trio.current_time()
        candidates = [
            upstreams[t.backend].candidate(i, t.weight, now) for i, t in enumerate(targets)
        ]
        order = order_targets(route.settings.strategy, candidates, turn=turn, draw=random.random())
        return [(upstreams[targets[i].backend], targets[i]) for i in order]


def build_backends(config: GatewayConfig, registry: Registry) -> dict[str, Backend]:
    return {id: build_backend(id, settings, registry) for id, settings in config.backends.items()}


def build_backend(backend_id: str, settings: BackendSettings, registry: Registry) -> Backend:
    backend_type = registry.get(settings.type)
    if backend_type is None:  # build_config checked this; a registry swap could not
        raise ConfigError(f"backends.{backend_id}.type: unknown type {settings.type!r}")
    return backend_type.cls(backend_id, settings)


@asynccontextmanager
async def open_gateway(
    config: GatewayConfig, registry: Registry | None = None, link: ParentLink | None = None
) -> AsyncIterator[Gateway]:
    """Start every backend (pools, processes, models) and stop them all on exit. ``link``:
    this is a worker process, whose limits and slots its parent keeps for the machine."""
    registry = registry if registry is not None else load_registry()
    backends = build_backends(config, registry)
    async with AsyncExitStack() as stack:
        # First: a database path that cannot be used fails before any backend starts.
        responses = await stack.enter_async_context(open_response_store(config))
        hosts = await stack.enter_async_context(open_backend_hosts())
        for backend in backends.values():
            await hosts.start(backend)
        upstreams = {b.id: Upstream.of(b, link) for b in backends.values()}
        local = ParentState(link) if link is not None else None
        teams = await stack.enter_async_context(open_teams(config, local=local))
        gateway = Gateway(
            config,
            upstreams,
            Router(config.routes),
            responses,
            teams=teams,
            registry=registry,
            hosts=hosts,
            link=link,
        )
        gateway.telemetry.attach(gateway.gauges)
        gateway.tracing = await stack.enter_async_context(
            open_tracing(config.tracing, gateway.telemetry.registry)
        )
        yield gateway
