"""The HTTP API that Quart serves: the model list, health, metrics, the status page and
``/admin``. The relayed endpoints are :mod:`gateway.proxy`'s, in front of this app; both
answer errors from the same tree (:mod:`gateway.errors`).

The endpoints are blueprints in :mod:`gateway.views`, one concern each; this module
assembles them and adds what every one of them shares: request ids, auth, the access log
and error answers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

import trio
from quart import Response, g, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from .asgi import GatewayHTTPConnection, StatusFeedResponse
from .dialects import CHAT, MESSAGES, dialect_of_request
from .errors import (
    BodyTooLarge,
    GatewayError,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    error_json,
    shown,
)
from .inbound import endpoint_label, request_ids
from .proxy import ProxyApp
from .service import Gateway
from .teams import Identity
from .views import admin, models, probes, responses, status_page

log = logging.getLogger("gateway.app")


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
    teams = gateway.auth
    app.before_request(_assign_ids)
    if teams is not None:  # on or off for the process's life; its keys may be reloaded
        app.before_request(_authenticator(gateway))
    app.after_request(_access_logger(gateway))
    _answer_errors(app)
    app.register_blueprint(probes.blueprint(gateway))
    app.register_blueprint(models.blueprint(gateway))
    app.register_blueprint(responses.blueprint(gateway.responses))
    if gateway.config.server.status_page:
        app.register_blueprint(status_page.blueprint(gateway))
    if teams is not None:
        app.register_blueprint(admin.blueprint(teams))
    return ProxyApp(gateway, app)


async def _assign_ids() -> None:
    """The request's arrival time and ids (the client's, when valid), on ``g``."""
    g.started = trio.current_time()
    g.request_id, g.traceparent = request_ids(
        request.headers.get("x-request-id", ""), request.headers.get("traceparent", "")
    )


def _authenticator(gateway: Gateway) -> Callable[[], Awaitable[None]]:
    async def authenticate() -> None:
        """Every API path needs a team's key; the status page and /admin the admin key.
        Health and metrics stay open for probes and scrapers. Raises
        :class:`~gateway.errors.AuthenticationError` (401). The keys are the config's in
        force now."""
        teams = gateway.auth
        if teams is None:
            return
        path = request.path
        if path.startswith("/v1/") or path == "/v1":
            g.identity = teams.authenticate(request.headers)
        elif path in ("/", "/status/events"):
            teams.authenticate_admin(request.headers, browser=True)
        elif path.startswith("/admin/"):
            teams.authenticate_admin(request.headers)

    return authenticate


def _access_logger(gateway: Gateway) -> Callable[[Response], Awaitable[Response]]:
    async def finish(response: Response) -> Response:
        """Ids on every response the gateway answers itself, counted and logged; the status
        feed logs itself when it ends."""
        if isinstance(response, StatusFeedResponse) or "request_id" not in g:
            return response
        response.headers["X-Request-ID"] = g.request_id
        response.headers["traceparent"] = g.traceparent
        gateway.telemetry.on_answered(
            route="",  # no view here serves a model's route
            endpoint=endpoint_label(request.path),
            status=response.status_code,
            fields={
                "request_id": g.request_id,
                "method": request.method,
                "path": request.path,
                "model": None,
                "duration_ms": round((trio.current_time() - g.started) * 1000, 3),
                **Identity.log_fields_of(g.get("identity")),
            },
        )
        return response

    return finish


def _answer_errors(app: QuartTrio) -> None:
    """Every error, Quart's own included, answered from the error tree (:func:`error_response`)."""

    @app.errorhandler(GatewayError)
    async def gateway_error(error: GatewayError) -> Response:
        return error_response(error)

    @app.errorhandler(HTTPException)
    async def http_error(exc: HTTPException) -> Response:
        return error_response(_from_werkzeug(exc))

    @app.errorhandler(Exception)
    async def unexpected(exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(GatewayError("internal error in the gateway"))


def error_response(error: GatewayError) -> Response:
    """The error in the caller's dialect (:func:`~gateway.dialects.dialect_of_request`)."""
    if dialect_of_request(request.path, "anthropic-version" in request.headers) is CHAT:
        return Response(
            error_json(error),
            status=error.status,
            headers=error.headers(),
            content_type="application/json",
        )
    return Response(
        MESSAGES.error_json(error),
        status=MESSAGES.status(error),
        headers=MESSAGES.limit_headers(error.headers(), time.time()),
        content_type="application/json",
    )


def _from_werkzeug(exc: HTTPException) -> GatewayError:
    code = exc.code or 500
    if code == 404:
        return NotFound(f"Unknown path: {shown(request.method)} {shown(request.path)}")
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
