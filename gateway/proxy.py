"""The proxied endpoints, served straight from ASGI messages.

``POST /v1/chat/completions``, ``/v1/completions`` and ``/v1/embeddings`` carry the
traffic, so :class:`ProxyApp` serves them without Quart: no request context, no werkzeug
header or body objects, no response object — the body is read from ``receive()``, the
answer written by the relay. Every other request (the model list, health, metrics, the
status page, ``/admin``) goes on to the Quart app it wraps. In the profile of a relayed
request inside a Quart view, Quart, werkzeug and quart-trio took ≈ 10 % of the CPU samples
and two more trio tasks (``bench/README.md``).

The relay runs in the request's own task; once the body is read, the request's
``receive`` goes to the relay, whose nursery holds the task that waits for the client to
go away (:func:`gateway.relay.relay`).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from functools import partial

import trio
from hypercorn.typing import (
    ASGIFramework,
    ASGIReceiveCallable,
    ASGISendCallable,
    HTTPScope,
    Scope,
    WebsocketScope,
)

from .abc import Endpoint, JSONObject
from .dialects import dialect_of
from .dialects.base import Dialect
from .dialects.responses_request import input_items
from .errors import (
    BodyTooLarge,
    GatewayError,
    InvalidRequest,
    MethodNotAllowed,
    ModelNotFound,
    ShuttingDown,
    UpgradeRequired,
    error_head,
    error_json,
)
from .inbound import (
    RELAYED,
    ask_for_usage,
    endpoint_label,
    parse_json_object,
    request_ids,
    validate,
)
from .plans import plan_request
from .relay import Attempt, Exchange, relay
from .responses import StoredResponse
from .routing import apply_policy
from .service import Gateway
from .teams import Identity, TeamAdmission

log = logging.getLogger("gateway.proxy")


# What is read and dropped of a refused body before the 413 goes out, at most.
_DRAIN_BYTES = 1 << 20
_DRAIN_SECONDS = 1.0


class _Disconnected(Exception):
    """The client went away before its request body was read."""


async def _drain(receive: ASGIReceiveCallable) -> None:
    """Read and drop the rest of a refused request body, up to :data:`_DRAIN_BYTES` within
    :data:`_DRAIN_SECONDS`. The connection closes after the 413, and a socket closed with
    unread bytes in its buffer sends a TCP reset, which can reach a client still sending
    before the 413 does and destroy it (the client sees a reset, not the answer). Past the
    bounds the 413 goes out anyway: a client sending that much more gets what it asked for.
    Raises :class:`_Disconnected` if the client leaves meanwhile."""
    drained = 0
    with trio.move_on_after(_DRAIN_SECONDS):
        while drained <= _DRAIN_BYTES:
            message = await receive()
            if message["type"] != "http.request":
                raise _Disconnected
            drained += len(message["body"])
            if not message["more_body"]:
                return


class _Request:
    """One proxied request as the client sent it: headers looked up by lower-case name,
    the ids the gateway answers with, and the time it arrived."""

    __slots__ = (
        "dialect",
        "endpoint",
        "headers",
        "identity",
        "method",
        "model",
        "path",
        "request_id",
        "route",
        "started",
        "traceparent",
    )

    def __init__(self, scope: HTTPScope, endpoint: Endpoint) -> None:
        self.started = trio.current_time()
        self.endpoint = endpoint
        self.dialect: Dialect = dialect_of(endpoint)
        self.method: str = scope["method"]
        self.path: str = scope["path"]
        self.headers = {
            name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]
        }
        self.request_id, self.traceparent = request_ids(
            self.headers.get("x-request-id", ""), self.headers.get("traceparent", "")
        )
        self.identity: Identity | None = None
        self.model: str | None = None
        self.route = ""

    def id_headers(self) -> list[tuple[bytes, bytes]]:
        return [
            (b"x-request-id", self.request_id.encode()),
            (b"traceparent", self.traceparent.encode()),
            *self.dialect.id_headers(self.request_id),
        ]


class ProxyApp:
    """The gateway's ASGI application: the proxied endpoints here, the rest to ``fallback``."""

    def __init__(self, gateway: Gateway, fallback: ASGIFramework) -> None:
        self.gateway = gateway
        self.fallback = fallback
        self.teams = gateway.auth
        self.max_body = gateway.config.server.max_body_bytes

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if scope["type"] == "websocket":
            await self._refuse_upgrade(scope, receive, send)
            return
        endpoint = RELAYED.get(scope["path"]) if scope["type"] == "http" else None
        if endpoint is None or scope["type"] != "http":
            await self.fallback(scope, receive, send)
            return
        request = _Request(scope, endpoint)
        try:
            if request.method != "POST":
                raise MethodNotAllowed(
                    f"Method {request.method} is not allowed on {request.path}", allowed=("POST",)
                )
            serve = await self._admit(request, receive)
        except _Disconnected:
            return
        except GatewayError as error:
            await self._answer_error(request, send, error)
            return
        except Exception:
            log.exception("unhandled error on %s %s", request.method, request.path)
            await self._answer_error(request, send, GatewayError("internal error in the gateway"))
            return
        await serve(send, receive)

    async def _admit(
        self, request: _Request, receive: ASGIReceiveCallable
    ) -> Callable[[ASGISendCallable, ASGIReceiveCallable], Awaitable[None]]:
        """Everything before the relay: who asks, for what, and whether it may run now.
        Returns the relay to run; raises the error to answer with."""
        gateway, teams = self.gateway, self.teams
        if teams is not None:
            request.identity = teams.authenticate(request.headers)
        if gateway.draining:
            raise ShuttingDown("the gateway is shutting down")
        body = parse_json_object(await self._read_body(request, receive))
        model, stream = validate(body, request.endpoint)
        request.model = model
        route = gateway.router.resolve(model)
        if route is None:
            raise ModelNotFound(f"The model `{model}` does not exist", param="model")
        request.route = route.name
        body = apply_policy(body, route)
        identity = request.identity
        admission: TeamAdmission | None = None
        hide_usage = False
        if teams is not None and identity is not None:
            teams.authorize(identity, route, model)
            if stream and request.endpoint in ("chat/completions", "completions"):
                body, hide_usage = ask_for_usage(body)
        team = identity.team if identity is not None else ""
        responses = request.endpoint in ("responses", "responses/input_tokens")
        history = await self._history(body, team) if responses else []
        plan = plan_request(
            request.endpoint,
            body,
            [gateway.upstreams[t.backend].backend for t in route.settings.all_targets],
            model=model,
            stream=stream,
            request_id=request.request_id,
            headers={"x-request-id": request.request_id, "traceparent": request.traceparent},
            client_headers=request.headers,
            hide_usage=hide_usage,
            history=history,
            keepalive_events=route.settings.keepalive.responses == "event",
        )
        keep = (
            partial(self._keep, team, input_items(body), history)
            if request.endpoint == "responses" and body.get("store") is not False
            else None
        )
        if teams is not None and identity is not None:
            admission = await teams.admit(identity, id=uuid.uuid4().hex, stream=stream)

        def pick_attempts() -> list[Attempt]:
            attempts = []
            for upstream, target in gateway.pick_targets(route):
                planned = plan.for_target(upstream.backend, target)
                attempts.append(
                    Attempt(
                        upstream, planned.request, planned.shape, planned.open, planned.admitted
                    )
                )
            return attempts

        dialect = request.dialect
        limits = dialect.limit_headers(admission.headers, time.time()) if admission else {}
        limit_headers = [(k.encode(), v.encode()) for k, v in limits.items()]
        exchange = Exchange(
            pick_attempts=pick_attempts,
            request_id=request.request_id,
            stream=stream,
            route=route.name,
            keepalive=route.settings.keepalive,
            inflight=gateway.inflight,
            max_attempts=route.settings.max_attempts,
            failover_deadline=route.settings.failover_deadline,
            extra_headers=(*request.id_headers(), *limit_headers),
            endpoint=request.endpoint,
            model=model,
            telemetry=gateway.telemetry,
            team=identity.team if identity else "",
            key_id=identity.key_id if identity else "",
            dialect=dialect,
            keep=keep,
            on_finish=admission.finish if admission else None,
        )

        async def serve(send: ASGISendCallable, receive: ASGIReceiveCallable) -> None:
            try:
                await relay(send, exchange, receive)
            finally:  # the relay never ran (client gone first): free the slot anyway
                if admission is not None:
                    admission.finish()

        return serve

    async def _history(self, body: JSONObject, team: str) -> list[JSONObject]:
        """The items of the conversation before this request, when it continues a stored
        response (``previous_response_id``): that response's history, input and output.
        Raises :class:`InvalidRequest` for an id the team has no response by."""
        previous = body.get("previous_response_id")
        if previous is None:
            return []
        if not isinstance(previous, str):
            raise InvalidRequest(
                "previous_response_id must be a string", param="previous_response_id"
            )
        stored = await self.gateway.responses.get(team, previous)
        if stored is None:
            raise InvalidRequest(
                f"Previous response with id '{previous}' not found.",
                param="previous_response_id",
            )
        output = stored.response.get("output")
        items = [o for o in output if isinstance(o, dict)] if isinstance(output, list) else []
        return [*stored.history, *stored.input_items, *items]

    async def _keep(
        self,
        team: str,
        inputs: list[JSONObject],
        history: list[JSONObject],
        response: JSONObject,
    ) -> None:
        """Store a whole response (``store`` on): before its end reaches the client, so
        the client's next turn finds it."""
        response_id, created = response.get("id"), response.get("created_at")
        if not isinstance(response_id, str):
            return  # nothing to find it by
        await self.gateway.responses.put(
            StoredResponse(
                id=response_id,
                team=team,
                created_at=created if isinstance(created, int) else int(time.time()),
                input_items=inputs,
                history=history,
                response=response,
            )
        )

    async def _read_body(self, request: _Request, receive: ASGIReceiveCallable) -> bytes:
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body:
            await _drain(receive)
            raise BodyTooLarge("Request body is larger than the gateway accepts")
        parts: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                raise _Disconnected
            chunk = message["body"]
            size += len(chunk)
            if size > self.max_body:
                if message["more_body"]:
                    await _drain(receive)
                raise BodyTooLarge("Request body is larger than the gateway accepts")
            parts.append(chunk)
            if not message["more_body"]:
                return parts[0] if len(parts) == 1 else b"".join(parts)

    async def _refuse_upgrade(
        self, scope: WebsocketScope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        """Answer a WebSocket handshake, on any path, with ``426`` and an OpenAI error body,
        through ASGI's WebSocket Denial Response extension (hypercorn has it). Without that
        extension an app can only close, which servers answer with ``403``."""
        started = trio.current_time()
        if (await receive())["type"] != "websocket.connect":
            return  # gone before the handshake was even handed over
        headers = {name.lower(): value for name, value in scope["headers"]}
        request_id, traceparent = request_ids(
            headers.get(b"x-request-id", b"").decode("latin-1"),
            headers.get(b"traceparent", b"").decode("latin-1"),
        )
        path = scope["path"]
        error = UpgradeRequired(
            f"The gateway does not serve WebSocket connections (GET {path}); "
            "send the request over plain HTTP",
            http_version=scope["http_version"],
        )
        if "websocket.http.response" not in (scope.get("extensions") or {}):
            await send({"type": "websocket.close", "code": 1000, "reason": None})
            status = 403
        else:
            body = error_json(error)
            await send(
                {
                    "type": "websocket.http.response.start",
                    "status": error.status,
                    "headers": [
                        *error_head(error, body),
                        (b"x-request-id", request_id.encode()),
                        (b"traceparent", traceparent.encode()),
                    ],
                }
            )
            await send({"type": "websocket.http.response.body", "body": body, "more_body": False})
            status = error.status
        self.gateway.telemetry.on_answered(
            route="",
            endpoint=endpoint_label(path),
            status=status,
            fields={
                "request_id": request_id,
                "method": "GET",
                "path": path,
                "model": None,
                "duration_ms": round((trio.current_time() - started) * 1000, 3),
            },
        )

    async def _answer_error(
        self, request: _Request, send: ASGISendCallable, error: GatewayError
    ) -> None:
        dialect = request.dialect
        body = dialect.error_json(error)
        status = dialect.status(error)
        headers = [*dialect.error_head(error, body, time.time()), *request.id_headers()]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})
        self.gateway.telemetry.on_answered(
            route=request.route,
            endpoint=request.endpoint,
            status=status,
            fields={
                "request_id": request.request_id,
                "method": request.method,
                "path": request.path,
                "model": request.model,
                "duration_ms": round((trio.current_time() - request.started) * 1000, 3),
                **Identity.log_fields_of(request.identity),
            },
        )
