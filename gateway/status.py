"""The live status page: what the operator sees at ``GET /``.

:func:`snapshot` is the page's data (routes and their keepalive policy, backends with health
and load, streams in flight with their phase and heartbeats). :func:`serve_feed` sends it as
SSE, re-sent whenever it changes, through the same :class:`~gateway.writer.ResponseWriter`
and heartbeat task as every relayed stream — so the page's own connection never goes silent
either. The page itself is ``status.html`` next to this module: one file, no build step, no
external assets.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import TYPE_CHECKING, Any

import trio

from .dialects.chat import comment_heartbeat
from .inflight import InFlight
from .keepalive import KeepaliveSettings
from .timers import HeartbeatClock
from .writer import ClientGone, Headers, ResponseWriter, heartbeat, sse_headers

if TYPE_CHECKING:
    from .service import Gateway

__all__ = [
    "FEED_KEEPALIVE",
    "machine_snapshot",
    "page_html",
    "serve_feed",
    "snapshot",
    "streams_of",
]

FEED_KEEPALIVE = KeepaliveSettings(interval=5.0, comment="keepalive")
_FEED_BEAT = comment_heartbeat(FEED_KEEPALIVE)
FEED_REFRESH = 0.25  # seconds between looks at the gateway's state


def page_html() -> bytes:
    return resources.files(__package__).joinpath("status.html").read_bytes()


def snapshot(gateway: Gateway, now: float) -> dict[str, Any]:
    """Everything the page shows, as plain JSON. Never a key, a header or a body."""
    routes = [
        {
            "name": route.name,
            "models": list(route.public_names),
            "match": list(route.settings.match),
            "strategy": route.settings.strategy,
            "targets": [
                {"backend": t.backend, "model": t.model, "weight": t.weight}
                for t in route.settings.all_targets
            ],
            "keepalive": route.settings.keepalive.model_dump(),
        }
        for route in gateway.router.routes
    ]
    backends = []
    for upstream in gateway.upstreams.values():
        status = upstream.backend.status
        backends.append(
            {
                "id": upstream.id,
                "type": gateway.config.backends[upstream.id].type,
                "health": status.health,
                "detail": status.detail,
                "ejected": upstream.breaker.state(now) == "open",
                "in_flight": upstream.slots.in_flight,
                "waiting": upstream.slots.queued,
                "reported_running": status.running,
                "reported_queued": status.queued,
                "cache_usage": status.cache_usage,
                "keepalive": upstream.keepalive.model_dump(exclude_none=True),
            }
        )
    streams = _oldest_first([_stream(entry, now) for entry in gateway.inflight])
    return {
        "draining": gateway.draining,
        "in_flight": len(streams),
        "routes": routes,
        "backends": backends,
        "streams": streams,
    }


def streams_of(gateway: Gateway) -> list[dict[str, Any]]:
    """This process's streams as the page shows them (what a worker reports)."""
    now = trio.current_time()
    return [_stream(entry, now) for entry in gateway.inflight]


async def machine_snapshot(gateway: Gateway) -> dict[str, Any]:
    """:func:`snapshot`; in a worker process, with every worker's streams (each with its
    ``worker``)."""
    now = trio.current_time()
    view = snapshot(gateway, now)
    link = gateway.link
    if link is not None and not link.lost.is_set():
        streams = _oldest_first(
            [
                {**stream, "worker": report["worker"]}
                for report in await link.collect("streams")
                for stream in report["body"] or ()
            ]
        )
        view.update(streams=streams, in_flight=len(streams))
    return view


def _oldest_first(streams: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(streams, key=lambda s: (-s["age_s"], s["request_id"]))


def _stream(entry: InFlight, now: float) -> dict[str, Any]:
    return {
        "request_id": entry.request_id,
        "route": entry.route,
        "backend": entry.backend,
        "model": entry.model,
        "stream": entry.stream,
        "phase": entry.phase,
        "heartbeats": entry.heartbeats,
        "age_s": int(now - entry.started_at),
    }


async def serve_feed(send: object, gateway: Gateway, request_id: str, extra: Headers) -> None:
    """Send :func:`snapshot` as SSE ``data:`` events while the client listens and the
    gateway is not draining; heartbeat comments fill any silence."""
    now = trio.current_time()
    writer = ResponseWriter(send, HeartbeatClock(FEED_KEEPALIVE.interval, now))
    # The feed's own record: it drives the heartbeat task but is not a relayed request,
    # so it is not in the in-flight table (the page would otherwise show itself).
    entry = InFlight(request_id=request_id, route="", backend="", stream=True, started_at=now)
    try:
        await writer.start(200, sse_headers(extra))
        with entry.scope:  # the heartbeat cancels it when a write of its own fails
            async with trio.open_nursery() as nursery:
                nursery.start_soon(heartbeat, writer, lambda: _FEED_BEAT, entry, None)
                await _send_changes(writer, gateway)
                nursery.cancel_scope.cancel()
        if not writer.gone:
            await writer.end()
    except ClientGone:
        pass


async def _send_changes(writer: ResponseWriter, gateway: Gateway) -> None:
    last = b""
    try:
        while not gateway.draining:
            event = json.dumps(await machine_snapshot(gateway)).encode()
            if event != last:
                await writer.write(b"data: " + event + b"\n\n")
                last = event
            await trio.sleep(FEED_REFRESH)
    except ClientGone:
        pass
