"""Liveness, readiness and metrics: the paths that stay open with auth on, for load
balancers, orchestrators and Prometheus."""

from __future__ import annotations

import trio
from prometheus_client import CONTENT_TYPE_LATEST
from quart import Blueprint, Response

from ..metrics_merge import merge_expositions
from ..service import Gateway
from . import json_response


def blueprint(gateway: Gateway) -> Blueprint:
    probes = Blueprint("probes", __name__)

    @probes.get("/healthz")
    async def healthz() -> Response:
        """Alive: 200 with the number of requests in flight, whatever the backends do (and,
        in a worker process, which worker answered)."""
        return json_response(
            {"status": "ok", "in_flight": len(gateway.inflight), **_worker(gateway)}
        )

    @probes.get("/readyz")
    async def readyz() -> Response:
        """Ready (200) when not draining and every route has a ready backend; else 503,
        with what each route and backend looks like."""
        now = trio.current_time()
        routes = {
            route.name: any(
                gateway.upstreams[t.backend].available(now) for t in route.settings.all_targets
            )
            for route in gateway.config.routes
        }
        backends = {
            backend.id: {"health": backend.status.health, "detail": backend.status.detail}
            for backend in gateway.backends.values()
        }
        stopping = gateway.stopping or gateway.draining
        ready = not stopping and all(routes.values())
        status = "draining" if stopping else "ready" if ready else "not_ready"
        return json_response(
            {"status": status, "routes": routes, "backends": backends, **_worker(gateway)},
            status=200 if ready else 503,
        )

    @probes.get("/metrics")
    async def metrics() -> Response:
        """This process's metrics; in a worker, every worker's, merged."""
        link = gateway.link
        if link is None or link.lost.is_set():
            return Response(gateway.telemetry.scrape(), content_type=CONTENT_TYPE_LATEST)
        reports = await link.collect("metrics")
        body = merge_expositions(
            (str(r["worker"]), r["body"]) for r in reports if r["body"] is not None
        )
        return Response(body, content_type=CONTENT_TYPE_LATEST)

    return probes


def _worker(gateway: Gateway) -> dict[str, int]:
    """The worker that answered, when this is a worker process: its probes describe it
    alone."""
    return {"worker": gateway.link.worker} if gateway.link is not None else {}
