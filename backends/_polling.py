"""The polling loop that keeps :attr:`gateway.abc.Backend.status` fresh, shared by the
backends that watch their upstream (``llamacpp`` and ``vllm``)."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable

import trio

from gateway.abc import BackendStatus

log = logging.getLogger("gateway.backends")


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
