"""The live status page (``GET /``) and its SSE feed (``GET /status/events``); what they
show is :mod:`gateway.status`'s. With auth on, both need the admin key (the app's auth hook
asks a browser for it)."""

from __future__ import annotations

from typing import Any

import trio
from quart import Blueprint, Response, g

from ..asgi import StatusFeedResponse
from ..service import Gateway
from ..status import page_html, serve_feed


def blueprint(gateway: Gateway) -> Blueprint:
    page = Blueprint("status_page", __name__)

    @page.get("/")
    async def status_page() -> Response:
        return Response(page_html(), content_type="text/html; charset=utf-8")

    @page.get("/status/events")
    async def status_events() -> Response:
        """The feed, sent by :class:`StatusFeedResponse` in the request's own task until the
        client leaves or the gateway drains; its access-log line is written when it ends."""
        request_id: str = g.request_id
        started: float = g.started
        ids = ((b"x-request-id", request_id.encode()),)

        async def serve(send: Any) -> None:
            try:
                await serve_feed(send, gateway, request_id, ids)
            finally:  # its viewer leaving (the usual end) cancels the request
                gateway.telemetry.on_answered(
                    route="",
                    endpoint="status",
                    status=200,
                    fields={
                        "request_id": request_id,
                        "method": "GET",
                        "path": "/status/events",
                        "duration_ms": round((trio.current_time() - started) * 1000, 3),
                    },
                )

        return StatusFeedResponse(serve)

    return page
