"""The HTTP API: OpenAI's endpoints, health, and the one place errors become responses."""

from __future__ import annotations

import json
import logging
import re
import uuid
from functools import partial
from typing import Any

import trio
from prometheus_client import CONTENT_TYPE_LATEST
from quart import Response, g, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from .abc import Endpoint, JSONObject, UpstreamRequest
from .asgi import GatewayHTTPConnection, ProxyResponse
from .errors import (
    BodyTooLarge,
    GatewayError,
    InvalidRequest,
    MalformedJSON,
    MethodNotAllowed,
    MissingField,
    ModelNotFound,
    NotFound,
    ShuttingDown,
    error_json,
)
from .relay import Attempt, Exchange, relay
from .routing import apply_policy, upstream_body
from .service import Gateway
from .status import page_html, serve_feed

log = logging.getLogger("gateway.app")

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
_TRACEPARENT = re.compile(r"00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}")
_ENDPOINTS = {
    "/v1/chat/completions": "chat/completions",
    "/v1/completions": "completions",
    "/v1/embeddings": "embeddings",
    "/v1/models": "models",
    "/healthz": "healthz",
    "/readyz": "readyz",
    "/metrics": "metrics",
    "/": "status",
    "/status/events": "status",
}


def _endpoint_label(path: str) -> str:
    """A bounded label for any path a client may send."""
    if path.startswith("/v1/models/"):
        return "models"
    return _ENDPOINTS.get(path, "other")


def _traceparent(given: str, request_id: str) -> str:
    """The client's W3C traceparent when valid, else a new one (trace id from the request
    id when that is 32 hex digits, so the two can be correlated)."""
    if _TRACEPARENT.fullmatch(given):
        return given
    trace = request_id if re.fullmatch(r"[0-9a-f]{32}", request_id) else uuid.uuid4().hex
    return f"00-{trace}-{uuid.uuid4().hex[:16]}-01"


def _json_response(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
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


async def _read_json_object() -> JSONObject:
    try:
        raw = await request.get_data(cache=False)
    except HTTPException as exc:  # 413 from MAX_CONTENT_LENGTH, surfaced while reading
        raise _from_werkzeug(exc) from None
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedJSON(f"Request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidRequest("Request body must be a JSON object")
    return body


def _validate(body: JSONObject, endpoint: Endpoint) -> tuple[str, bool]:
    model = body.get("model")
    if model is None:
        raise MissingField("you must provide a model parameter", param="model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("model must be a non-empty string", param="model")
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise InvalidRequest("stream must be a boolean", param="stream")
    if stream and endpoint == "embeddings":
        raise InvalidRequest("embeddings cannot be streamed", param="stream")
    required = {"chat/completions": "messages", "completions": "prompt", "embeddings": "input"}[
        endpoint
    ]
    if required not in body:
        raise MissingField(f"you must provide a {required} parameter", param=required)
    return model, stream


def create_app(gateway: Gateway) -> QuartTrio:
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
        given = request.headers.get("x-request-id", "")
        g.request_id = given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        g.traceparent = _traceparent(request.headers.get("traceparent", ""), g.request_id)

    @app.after_request
    async def _finish(response: Response) -> Response:
        """Ids on every response the gateway answers itself; relayed ones do their own."""
        if isinstance(response, ProxyResponse) or "request_id" not in g:
            return response
        response.headers["X-Request-ID"] = g.request_id
        response.headers["traceparent"] = g.traceparent
        gateway.telemetry.on_answered(
            route=g.get("route", ""),
            endpoint=_endpoint_label(request.path),
            status=response.status_code,
            fields={
                "request_id": g.request_id,
                "method": request.method,
                "path": request.path,
                "model": g.get("model"),
                "duration_ms": round((trio.current_time() - g.started) * 1000, 3),
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

    async def proxy(endpoint: Endpoint) -> Response:
        if gateway.draining:
            raise ShuttingDown("the gateway is shutting down")
        body = await _read_json_object()
        model, stream = _validate(body, endpoint)
        g.model = model
        route = gateway.router.resolve(model)
        if route is None:
            raise ModelNotFound(f"The model `{model}` does not exist", param="model")
        g.route = route.name
        body = apply_policy(body, route)
        request_id: str = g.request_id
        traceparent: str = g.traceparent
        upstream_headers = {"x-request-id": request_id, "traceparent": traceparent}

        def plan() -> list[Attempt]:
            return [
                Attempt(
                    upstream,
                    UpstreamRequest(
                        endpoint=endpoint,
                        body=upstream_body(body, target),
                        stream=stream,
                        request_id=request_id,
                        headers=upstream_headers,
                    ),
                )
                for upstream, target in gateway.plan(route)
            ]

        exchange = Exchange(
            plan=plan,
            request_id=request_id,
            stream=stream,
            route=route.name,
            keepalive=route.settings.keepalive,
            inflight=gateway.inflight,
            max_attempts=route.settings.max_attempts,
            failover_deadline=route.settings.failover_deadline,
            extra_headers=(
                (b"x-request-id", request_id.encode()),
                (b"traceparent", traceparent.encode()),
            ),
            endpoint=endpoint,
            model=model,
            telemetry=gateway.telemetry,
        )
        return ProxyResponse(partial(relay, exchange=exchange))

    @app.post("/v1/chat/completions")
    async def chat_completions() -> Response:
        return await proxy("chat/completions")

    @app.post("/v1/completions")
    async def completions() -> Response:
        return await proxy("completions")

    @app.post("/v1/embeddings")
    async def embeddings() -> Response:
        return await proxy("embeddings")

    @app.get("/v1/models")
    async def list_models() -> Response:
        data = [_model_card(name) for name in gateway.router.public_models()]
        return _json_response({"object": "list", "data": data})

    @app.get("/v1/models/<path:model>")
    async def get_model(model: str) -> Response:
        if model not in gateway.router.public_models():
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

            return ProxyResponse(serve)

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

    return app


def _model_card(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "trio-gateway"}

