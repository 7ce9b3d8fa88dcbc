"""The proxied endpoints, served straight from ASGI messages.

``POST /v1/chat/completions``, ``/v1/completions`` and ``/v1/embeddings`` carry the
traffic, so :class:`ProxyApp` serves them without Quart: no request context, no werkzeug
header or body objects, no response object — the body is read from ``receive()``, the
answer written by the relay. Every other request (the model list, health, metrics, the
status page, ``/admin``) goes on to the Quart app it wraps. In the profile of a relayed
request inside a Quart view, Quart, werkzeug and quart-trio took ≈ 10 % of the CPU samples
and two more trio tasks (``bench/README.md``).

The relay runs in the request's own task; once the body is read, what tells of the
client going away goes to the relay: the gateway's server's
:class:`~gateway.http_stream.Disconnect`, or under another server the request's
``receive``, in which a task beside the relay then waits (:func:`gateway.relay.relay`).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from functools import partial

import trio
from hypercorn.typing import (
    ASGIFramework,
    ASGIReceiveCallable,
    ASGISendCallable,
    Scope,
)

from .abc import JSONObject
from .client_request import ClientRequest, Serve, SocketTurn
from .config import Route
from .dialects.responses import warm_up_stream
from .dialects.responses_answer import warm_up_response
from .errors import (
    BodyTooLarge,
    GatewayError,
    MethodNotAllowed,
    ModelNotFound,
    ShuttingDown,
    shown,
)
from .exchange import Attempt, Exchange
from .guard import BODY_TIMED_OUT
from .http_stream import DISCONNECT_EXTENSION, Disconnect
from .inbound import (
    RELAYED,
    ask_for_usage,
    parse_json_object,
    validate,
)
from .inflight import InFlight
from .plans import plan_request
from .relay import relay
from .responses.conversation import Conversation
from .routing import apply_policy
from .service import Gateway, Upstream
from .teams import Identity, TeamAdmission
from .websocket import ResponsesSockets

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


class ProxyApp:
    """The gateway's ASGI application: the proxied endpoints here, the rest to ``fallback``."""

    def __init__(self, gateway: Gateway, fallback: ASGIFramework) -> None:
        self.gateway = gateway
        self.fallback = fallback
        self.max_body = gateway.config.server.max_body_bytes
        self.sockets = ResponsesSockets(gateway, self.prepare)

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if scope["type"] == "websocket":
            await self.sockets(scope, receive, send)
            return
        endpoint = RELAYED.get(scope["path"]) if scope["type"] == "http" else None
        if endpoint is None or scope["type"] != "http":
            await self.fallback(scope, receive, send)
            return
        request = ClientRequest.of(scope, endpoint)
        try:
            if request.method != "POST":
                raise MethodNotAllowed(
                    f"Method {request.method} is not allowed on {request.path}", allowed=("POST",)
                )
            serve = await self._admit(request, receive)
        except _Disconnected:  # gone while sending its body: no answer, but its line
            if BODY_TIMED_OUT in (scope.get("extensions") or {}):
                return  # the guard timed the body out: the 408 and its line are the guard's
            self.gateway.telemetry.on_answered(
                route="",
                endpoint=request.endpoint,
                status=499,
                outcome="client_gone",
                fields={
                    "request_id": request.request_id,
                    "method": request.method,
                    "path": request.path,
                    "phase": "body",
                    "duration_ms": round((trio.current_time() - request.started) * 1000, 3),
                },
            )
            return
        except GatewayError as error:
            await self._answer_error(request, send, error)
            return
        except Exception:
            log.exception("unhandled error on %s %s", request.method, request.path)
            await self._answer_error(request, send, GatewayError("internal error in the gateway"))
            return
        extension = (scope.get("extensions") or {}).get(DISCONNECT_EXTENSION) or {}
        disconnect: Disconnect | None = extension.get("disconnect")
        await serve(send, disconnect or receive)

    async def _admit(self, request: ClientRequest, receive: ASGIReceiveCallable) -> Serve:
        """Everything before the relay: who asks, for what, and whether it may run now.
        Returns the relay to run; raises the error to answer with."""
        teams = self.gateway.auth
        if teams is not None:
            request.identity = teams.authenticate(request.headers)
        if self.gateway.draining:
            raise ShuttingDown("the gateway is shutting down")
        body = parse_json_object(await self._read_body(request, receive))
        return await self.prepare(request, body)

    async def prepare(
        self, request: ClientRequest, body: JSONObject, socket: SocketTurn | None = None
    ) -> Serve:
        """Route, authorize, plan and admit one request whose caller is known (``request.
        identity``) and whose body is read; returns the relay to run, or raises the error
        to answer with.

        What it reads of the config (route, backends, teams) it reads once, at once: a
        config reload meanwhile changes nothing for this request, to its end."""
        gateway = self.gateway
        router, upstreams = gateway.router, gateway.upstreams
        model, stream = validate(body, request.endpoint)
        request.model = model
        route = router.resolve(model)
        if route is None:
            raise ModelNotFound(f"The model `{shown(model)}` does not exist", param="model")
        request.route = route.name
        # From here until it ends, the request holds its route's backends: a reload that
        # replaced or removed one stops it only once no request may still reach it. Held
        # before the first await (history, team admission), or a reload in between could
        # stop a backend this request is about to use.
        held = tuple({upstreams[t.backend] for t in route.settings.all_targets})
        for upstream in held:
            upstream.hold()
        try:
            serve = await self._prepare_held(
                request, body, socket, route, model, stream, upstreams, held
            )
        except BaseException:
            for upstream in held:
                upstream.release()
            raise
        return serve

    async def _prepare_held(
        self,
        request: ClientRequest,
        body: JSONObject,
        socket: SocketTurn | None,
        route: Route,
        model: str,
        stream: bool,
        upstreams: Mapping[str, Upstream],
        held: tuple[Upstream, ...],
    ) -> Serve:
        """:meth:`prepare` once the route's backends are held: the relay to run, which
        releases them when it ends (or the warm-up answer, which releases them at once)."""
        gateway, teams = self.gateway, self.gateway.auth
        # The keepalive by first backend, read before the first await, as the route was: a
        # reload meanwhile changes neither. (On a WebSocket its interval is the pings'.)
        route_keepalive = route.settings.keepalive
        keepalives = {u.id: route_keepalive.overridden(u.keepalive) for u in held}
        body = apply_policy(body, route)
        identity = request.identity
        admission: TeamAdmission | None = None
        hide_usage = False
        tracing = gateway.tracing
        if teams is not None and identity is not None:
            teams.authorize(identity, route, model)
        # Teams count a stream's tokens, and spans carry them: ask for its usage.
        if (
            stream
            and (tracing is not None or (teams is not None and identity is not None))
            and request.endpoint in ("chat/completions", "completions")
        ):
            body, hide_usage = ask_for_usage(body)
        team = identity.team if identity is not None else ""
        conversation = Conversation(gateway.responses, team, socket.lane if socket else None)
        responses = request.endpoint in ("responses", "responses/input_tokens")
        history = await conversation.history(body) if responses else []
        keep = conversation.keeper(body, history) if request.endpoint == "responses" else None
        if socket is not None and not socket.generate:  # answered here: no backend asked
            for upstream in held:
                upstream.release()
            return partial(self._warm_up, request, body, keep, socket.connection_id)
        keepalive = route_keepalive
        plan = plan_request(
            request.endpoint,
            body,
            [upstreams[t.backend].backend for t in route.settings.all_targets],
            model=model,
            stream=stream,
            request_id=request.request_id,
            headers={"x-request-id": request.request_id, "traceparent": request.traceparent},
            client_headers=request.headers,
            hide_usage=hide_usage,
            history=history,
            keepalive_events=keepalive.responses == "event" and socket is None,
        )
        if teams is not None and identity is not None:
            admission = await teams.admit(identity, id=uuid.uuid4().hex, stream=stream, body=body)

        def pick_attempts() -> list[Attempt]:
            attempts = []
            for upstream, target in gateway.pick_targets(route, upstreams):
                planned = plan.for_target(upstream.backend, target)
                attempts.append(
                    Attempt(
                        upstream, planned.request, planned.shape, planned.open, planned.admitted
                    )
                )
            return attempts

        trace = None
        if tracing is not None:  # the client is answered with the request's own span
            trace = tracing.start_request(
                request, stream=stream, connection=socket.connection_id if socket else ""
            )
            request.traceparent = trace.traceparent
        dialect = request.dialect
        limits = dialect.limit_headers(admission.headers, time.time()) if admission else {}
        limit_headers = [(k.encode(), v.encode()) for k, v in limits.items()]

        def finish(entry: InFlight) -> None:
            if admission is not None:
                admission.finish(entry)
            for upstream in held:
                upstream.release()

        exchange = Exchange(
            pick_attempts=pick_attempts,
            request_id=request.request_id,
            stream=stream,
            route=route.name,
            keepalive=keepalive,
            keepalives=keepalives,
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
            on_begin=socket.on_begin if socket else None,
            on_finish=finish,
            connection=socket.connection_id if socket else "",
            trace=trace,
        )

        def serve(
            send: ASGISendCallable, gone: Disconnect | ASGIReceiveCallable | None
        ) -> Awaitable[None]:
            # The relay's own call, returned: no frame of this function's is held for as
            # long as it runs. However it ends, it ends with ``finish``.
            return relay(send, exchange, gone)

        return serve

    async def _warm_up(
        self,
        request: ClientRequest,
        body: JSONObject,
        keep: Callable[[JSONObject], Awaitable[None]] | None,
        connection: str,
        send: ASGISendCallable,
        gone: Disconnect | ASGIReceiveCallable | None,
    ) -> None:
        """Answer a WebSocket warm-up (:attr:`SocketTurn.generate` false) with its two
        events, the response kept (and stored, unless ``store: false``) as any other."""
        del gone  # nothing to wait for: the answer is made here
        response = warm_up_response(
            body,
            response_id="resp_" + uuid.uuid4().hex,
            model=request.model or "",
            created_at=int(time.time()),
        )
        if keep is not None:
            await keep(response)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send(
            {"type": "http.response.body", "body": warm_up_stream(response), "more_body": False}
        )
        self.gateway.telemetry.on_answered(
            route=request.route,
            endpoint=request.endpoint,
            status=200,
            fields={
                "request_id": request.request_id,
                "connection": connection,
                "method": request.method,
                "path": request.path,
                "model": request.model,
                "warm_up": True,
                "duration_ms": round((trio.current_time() - request.started) * 1000, 3),
                **Identity.log_fields_of(request.identity),
            },
        )

    async def _read_body(self, request: ClientRequest, receive: ASGIReceiveCallable) -> bytes:
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

    async def _answer_error(
        self, request: ClientRequest, send: ASGISendCallable, error: GatewayError
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
