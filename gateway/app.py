"""The HTTP API that Quart serves: the model list, health, metrics, the status page and
``/admin``. The relayed endpoints are :mod:`gateway.proxy`'s, in front of this app; both
answer errors from the same tree (:mod:`gateway.errors`)."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import trio
from prometheus_client import CONTENT_TYPE_LATEST
from quart import Response, g, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from .asgi import GatewayHTTPConnection, StatusFeedResponse
from .errors import (
    BodyTooLarge,
    GatewayError,
    InvalidRequest,
    MethodNotAllowed,
    ModelNotFound,
    NotFound,
    error_json,
)
from .inbound import endpoint_label, request_ids
from .proxy import ProxyApp
from .service import Gateway
from .status import page_html, serve_feed
from .teams import Identity
from .teams.usage import parse_since

log = logging.getLogger("gateway.app")


def _json_response(
    payload: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(
        json.dumps(payload), status=status, headers=headers, content_type="application/json"
    )


def error_response(error: GatewayError) -> Response:
    return Response(
        error_json(error),
        status=error.status,
        headers=error.headers(),
        content_type="application/json",
    )


def _from_werkzeug(exc: HTTPException) -> GatewayError:
    code = exc.code or 500
    if code == 404:
        return NotFound(f"Unknown path: {request.method} {request.path}")
    if code == 405:
        allowed = tuple(getattr(exc, "valid_methods", None) or ())
        return MethodNotAllowed(
            f"Method {request.method} is not allowed on {request.path}", allowed=allowed
        )
    if code == 413:
        return BodyTooLarge("Request body is larger than the gateway accepts")
    error = InvalidRequest(exc.description or exc.name) if code < 500 else GatewayError(exc.name)
    error.status = code
    return error


def create_app(gateway: Gateway) -> ProxyApp:
    """The gateway's ASGI app: :class:`~gateway.proxy.ProxyApp` in front of the Quart app
    that answers everything but the proxied endpoints."""
    app = QuartTrio("trio_gateway")
    app.asgi_http_class = GatewayHTTPConnection
    app.config.update(
        RESPONSE_TIMEOUT=None,
        MAX_CONTENT_LENGTH=gateway.config.server.max_body_bytes,
        PROVIDE_AUTOMATIC_OPTIONS=False,
    )

    @app.before_request
    async def _request_id() -> None:
        g.started = trio.current_time()
        g.request_id, g.traceparent = request_ids(
            request.headers.get("x-request-id", ""), request.headers.get("traceparent", "")
        )

    teams = gateway.auth

    if teams is not None:

        @app.before_request
        async def _authenticate() -> None:
            """Every API path needs a team's key; the status page and /admin the admin
            key. Health and metrics stay open for probes and scrapers."""
            path = request.path
            if path.startswith("/v1/") or path == "/v1":
                identity = teams.authenticate(request.headers)
                g.identity = identity
            elif path in ("/", "/status/events"):
                teams.authenticate_admin(request.headers, browser=True)
            elif path.startswith("/admin/"):
                teams.authenticate_admin(request.headers)

    @app.after_request
    async def _finish(response: Response) -> Response:
        """Ids on every response the gateway answers itself; relayed ones do their own."""
        if isinstance(response, StatusFeedResponse) or "request_id" not in g:
            return response
        response.headers["X-Request-ID"] = g.request_id
        response.headers["traceparent"] = g.traceparent
        gateway.telemetry.on_answered(
            route=g.get("route", ""),
            endpoint=endpoint_label(request.path),
            status=response.status_code,
            fields={
                "request_id": g.request_id,
                "method": request.method,
                "path": request.path,
                "model": g.get("model"),
                "duration_ms": round((trio.current_time() - g.started) * 1000, 3),
                **Identity.log_fields_of(g.get("identity")),
            },
        )
        return response

    @app.errorhandler(GatewayError)
    async def _gateway_error(error: GatewayError) -> Response:
        return error_response(error)

    @app.errorhandler(HTTPException)
    async def _http_error(exc: HTTPException) -> Response:
        return error_response(_from_werkzeug(exc))

    @app.errorhandler(Exception)
    async def _unexpected(exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(GatewayError("internal error in the gateway"))

    def visible_models() -> list[str]:
        """The model names the caller may use (all of them with auth off)."""
        identity: Identity | None = g.get("identity")
        if teams is None or identity is None:
            return gateway.router.public_models()
        return [
            name
            for route in gateway.router.routes
            if teams.may_use(identity.team, route)
            for name in route.public_names
        ]

    @app.get("/v1/models")
    async def list_models() -> Response:
        data = [_model_card(name) for name in visible_models()]
        return _json_response({"object": "list", "data": data})

    @app.get("/v1/models/<path:model>")
    async def get_model(model: str) -> Response:
        if model not in visible_models():
            raise ModelNotFound(f"The model `{model}` does not exist", param="model")
        return _json_response(_model_card(model))

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(gateway.telemetry.scrape(), content_type=CONTENT_TYPE_LATEST)

    if gateway.config.server.status_page:

        @app.get("/")
        async def status_page() -> Response:
            return Response(page_html(), content_type="text/html; charset=utf-8")

        @app.get("/status/events")
        async def status_events() -> Response:
            request_id: str = g.request_id
            started: float = g.started
            ids = ((b"x-request-id", request_id.encode()),)

            async def serve(send: Any) -> None:
                await serve_feed(send, gateway, request_id, ids)
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

    if teams is not None:

        @app.get("/admin/usage")
        async def admin_usage() -> Response:
            """Usage per team, route and backend: ``?team=NAME&since=24h`` (both optional)."""
            since_arg = request.args.get("since")
            try:
                since = parse_since(since_arg, now=time.time()) if since_arg else None
            except ValueError as error:
                raise InvalidRequest(str(error), param="since") from None
            rows = await teams.usage(team=request.args.get("team") or None, since=since)
            return _json_response(
                {"object": "list", "since": since, "data": [row.as_json() for row in rows]}
            )

    @app.get("/healthz")
    async def healthz() -> Response:
        return _json_response({"status": "ok", "in_flight": len(gateway.inflight)})

    @app.get("/readyz")
    async def readyz() -> Response:
        """Ready when not draining and every route has a ready backend."""
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
        ready = not gateway.draining and all(routes.values())
        status = "draining" if gateway.draining else "ready" if ready else "not_ready"
        return _json_response(
            {"status": status, "routes": routes, "backends": backends},
            status=200 if ready else 503,
        )

    return ProxyApp(gateway, app)


def _model_card(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "trio-gateway"}
