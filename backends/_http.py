"""Shared by the HTTP backends that watch their upstream: Prometheus text parsing and a
polling loop that keeps :attr:`gateway.abc.Backend.status` fresh."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable

import trio
from prometheus_client.parser import text_string_to_metric_families

from gateway.abc import BackendStatus

log = logging.getLogger("gateway.backends")


def parse_metrics(text: str) -> dict[str, float]:
    """Sum each sample name over its label sets: ``{"vllm:num_requests_running": 3.0}``.

    Names keep their exposition form (counters keep ``_total``). A malformed exposition
    raises ``ValueError``.
    """
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            totals[sample.name] = totals.get(sample.name, 0.0) + float(sample.value)
    return totals


async def poll_status(
    backend_id: str,
    interval: float,
    check: Callable[[], Awaitable[BackendStatus]],
    publish: Callable[[BackendStatus], None],
) -> None:
    """Run ``check`` every ``interval`` seconds forever and ``publish`` what it returns.

    ``check`` reports trouble as a ``down`` status; an exception escaping it is logged and
    published as ``down`` too, so one bad answer never stops the loop. Health transitions
    are logged once each, not on every poll.
    """
    last = None
    while True:
        try:
            status = await check()
        except Exception as exc:
            status = BackendStatus(health="down", detail=f"health check failed: {exc}")
        status = dataclasses.replace(status, checked_at=trio.current_time())
        if status.health != last:
            log.info(
                "backend %s is %s%s",
                backend_id,
                status.health,
                f" ({status.detail})" if status.detail else "",
            )
            last = status.health
        publish(status)
        await trio.sleep(interval)
