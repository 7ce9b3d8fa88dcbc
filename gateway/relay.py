"""The relay: one request tried on a route's targets and copied to one client, with a
heartbeat beside it.

For every proxied request the handler runs :func:`relay` in the request's own task. With
heartbeats on it opens one nursery holding the heartbeat task; the relay runs in the
nursery's body. Relay and heartbeat write through one :class:`~gateway.writer.ResponseWriter`,
whose lock makes every write whole: the relay writes only complete SSE events (the framer
holds partial ones back), so a heartbeat always lands between two events.

Failover: targets are tried in the planned order, at most ``max_attempts`` of them, and no
new attempt starts after ``failover_deadline``. A failure may move on to the next target only
while no upstream data event has reached the client — heartbeats and upstream comments do
not count — so tokens are never duplicated or reordered.

How one attempt's answer is copied to the client, and how its end is read:
:mod:`gateway.answer`.

Cancellation: the gateway's server tells the relay at once when the client goes
(:class:`~gateway.http_stream.Disconnect`; under another ASGI server a task in the nursery
waits in ``receive()`` for it), which cancels the exchange; leaving the backend's
``open_response`` context (or the admission queue) then closes the upstream request.
Shutdown aborts an exchange through its :class:`~gateway.inflight.InFlight` entry
instead, and the client is told why.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import replace
from functools import partial

import trio

from .answer import relay_stream, relay_unary
from .balancer import counts_against_backend, is_retryable
from .errors import (
    GatewayError,
    NoBackendAvailable,
    Overloaded,
    ShuttingDown,
    UpstreamError,
    UpstreamTimeout,
)
from .exchange import Attempt, Exchange
from .http_stream import Disconnect
from .inflight import InFlight, Outcome
from .timers import HeartbeatClock
from .writer import (
    ClientGone,
    ResponseWriter,
    heartbeat,
    json_headers,
    sse_headers,
)

log = logging.getLogger("gateway.relay")


async def relay(send: object, exchange: Exchange, gone: object = None) -> None:
    """Serve one proxied request on ``send`` (an ASGI send callable).

    ``gone`` tells when the client goes away, which cancels the exchange and so closes the
    upstream request: a :class:`~gateway.http_stream.Disconnect` (the gateway's own server
    calls back at once), or the request's ASGI receive callable, its body already read
    (another server's: a task beside the relay waits in it for ``http.disconnect``, all
    ASGI offers — hypercorn issue #210), or ``None`` (the caller cancels the relay).

    Never raises for upstream or client trouble: the client gets a status, an error body
    or an error event. Cancellation from outside propagates and closes the upstream
    request on its way out.
    """
    now = trio.current_time()
    # Picked here, not in the handler: from the pick to the first attempt taking its
    # backend slot there is no checkpoint, so concurrent requests see each other's load.
    # Picked first of all: the first attempt's backend may change the keepalive policy.
    attempts: Sequence[Attempt] | Exception
    try:
        attempts = exchange.pick_attempts()
    except Exception as exc:  # reported as the exchange's error, in its entry's scope
        attempts = exc
    policy = exchange.keepalive
    if not isinstance(attempts, Exception) and attempts:
        policy = exchange.keepalives.get(attempts[0].upstream.id, policy)
    stream = exchange.stream
    # A WebSocket's turn (on_begin) is kept alive by the socket's pings at the policy's
    # interval: the relay writes no heartbeat into it.
    socket = exchange.on_begin is not None
    keepalive_on = (
        not socket and policy.interval > 0 and (stream or policy.non_stream == "whitespace")
    )
    writer = ResponseWriter(send, HeartbeatClock(policy.interval, now) if keepalive_on else None)
    entry = InFlight(
        request_id=exchange.request_id,
        route=exchange.route,
        backend="",
        stream=stream,
        started_at=now,
        endpoint=exchange.endpoint,
        model=exchange.model,
        team=exchange.team,
        key_id=exchange.key_id,
        connection=exchange.connection,
    )
    telemetry = exchange.telemetry
    error: GatewayError | None = None
    disconnect = gone if isinstance(gone, Disconnect) else None
    receive = gone if disconnect is None else None
    try:  # whatever happens from here on, the entry is finished (and on_finish called)
        exchange.inflight.add(entry)
        if exchange.on_begin is not None:
            exchange.on_begin(entry, policy.interval)
        if telemetry is not None:
            telemetry.on_start(entry)
        if disconnect is not None:
            disconnect.on(partial(_client_gone, writer, entry))
        ran = False
        if keepalive_on or receive is not None:
            async with trio.open_nursery() as nursery:
                # The nursery's scope is the entry's: cancelling the exchange (the client
                # gone, shutdown) ends the tasks beside it too. One scope, not two, held
                # by every stream for as long as it lasts.
                entry.scope = nursery.cancel_scope
                if receive is not None:
                    nursery.start_soon(_cancel_on_disconnect, receive, writer, entry)
                if keepalive_on:
                    head = sse_headers if stream else json_headers
                    early = not stream or policy.early_headers
                    commit = (lambda: head(exchange.headers())) if early else None
                    beat = (
                        _stream_heartbeat(writer, exchange.dialect.heartbeat(policy))
                        if stream
                        else _whitespace
                    )
                    nursery.start_soon(heartbeat, writer, beat, entry, commit)
                error = await _run(exchange, attempts, writer, entry)
                ran = True
                nursery.cancel_scope.cancel()  # the tasks beside it end with it
        else:
            with entry.scope:
                error = await _run(exchange, attempts, writer, entry)
                ran = True
        if not ran:  # cancelled through the entry: aborted, or the client is gone
            error = None if writer.finished else entry.abort_error
        if writer.gone:
            raise ClientGone
        phase_at_end = entry.phase
        entry.phase = "finishing"
        late = error is not None and writer.started  # the 200 is out: too late for a status
        if error is not None:
            await _report(writer, error, exchange)
        # Decided before the last write: once the response is complete the server reports
        # the connection's end, which cancels this task at its next checkpoint.
        entry.outcome = _outcome_of(error)
        if entry.outcome == "shutdown":
            entry.disconnect_phase = phase_at_end
        if late and telemetry is not None:
            telemetry.on_late_error(entry, "event" if stream else "cut_body")
        if late and not stream:
            # Whitespace keepalive committed a 200 without a length; the error object is
            # out. The response is left unfinished, so the server closes the connection
            # without the end of the chunked body: every HTTP client then reports a
            # broken response (the openai SDK an APIConnectionError, retried like a 5xx),
            # where a complete one would read as a 200 answer — the SDK made it a
            # ChatCompletion with choices=None and raised nothing. No byte is untrue: the
            # body read so far is whitespace and the error object.
            return
        await writer.end()
    except ClientGone:
        log.info("client gone during %s (request %s)", entry.phase, entry.request_id)
    finally:
        if disconnect is not None:
            disconnect.off()
        # No outcome yet: the client went away (a refused write, or cancellation).
        if entry.outcome is None:
            entry.outcome = "client_gone"
            entry.disconnect_phase = entry.disconnect_phase or entry.phase
        entry.ended_at = trio.current_time()
        entry.status = writer.status
        entry.bytes_out = writer.bytes_sent
        entry.attempts = tuple(exchange.log)
        exchange.inflight.discard(entry)
        try:
            if telemetry is not None:
                telemetry.on_finish(entry)
            if exchange.trace is not None:
                exchange.trace.finish(entry)
        finally:  # what the request holds is given back whatever the records made of it
            if exchange.on_finish is not None:
                exchange.on_finish(entry)


async def _cancel_on_disconnect(receive: object, writer: ResponseWriter, entry: InFlight) -> None:
    while (await receive())["type"] != "http.disconnect":  # type: ignore[operator]
        pass
    _client_gone(writer, entry)


def _client_gone(writer: ResponseWriter, entry: InFlight) -> None:
    if writer.finished:
        return  # the server reporting the end of a whole response, not a client gone
    writer.gone = True
    entry.scope.cancel()


def _outcome_of(error: GatewayError | None) -> Outcome:
    if error is None:
        return "completed"
    if isinstance(error, UpstreamTimeout):
        return "timeout"
    if isinstance(error, ShuttingDown):
        return "shutdown"
    if isinstance(error, (Overloaded, NoBackendAvailable)):
        return "rejected"
    if isinstance(error, UpstreamError):
        return "upstream_error"
    return "error"


async def _run(
    exchange: Exchange,
    attempts: Sequence[Attempt] | Exception,
    writer: ResponseWriter,
    entry: InFlight,
) -> GatewayError | None:
    """Try the ``attempts`` (or report what picking them raised), in the entry's scope (the
    caller's); return the error to report, if any. (One function, not a runner around a
    loop: its frame is held by every relay waiting on its upstream.)"""
    try:
        if isinstance(attempts, Exception):
            raise attempts
        if not attempts:
            return NoBackendAvailable(f"no backend of route {exchange.route} is available now")
        deadline = (
            entry.started_at + exchange.failover_deadline
            if exchange.failover_deadline is not None
            else math.inf
        )
        planned = attempts[: exchange.max_attempts]
        error: GatewayError | None = None
        for number, attempt in enumerate(planned):
            if number and trio.current_time() >= deadline:
                break
            record = _AttemptRecord(attempt, number, exchange, entry)
            try:
                await _attempt(record.attempt, exchange, writer, entry)
                record.answered(writer.status)
            except GatewayError as exc:
                error = exc
                last = number + 1 == len(planned) or trio.current_time() >= deadline
                if not record.failed(exc, writer.data_sent, last):
                    return exc
                continue
            except Exception as exc:  # a bug (a backend's own, often): logged, not retried
                error = _as_gateway_error(exc, entry)
                record.crashed(error)
                return None if writer.gone or writer.finished else error
            finally:
                record.end()
            return None
        return error
    except Exception as exc:
        error = _as_gateway_error(exc, entry)
        # Nobody to tell, or nothing to: the client is gone, or has its whole response.
        return None if writer.gone or writer.finished else error


class _AttemptRecord:
    """What one attempt leaves behind: its backend's breaker settled, its span (with
    tracing on), its entry in the exchange's attempts log."""

    __slots__ = ("attempt", "entry", "exchange", "logged", "number", "settled", "span")

    def __init__(self, attempt: Attempt, number: int, exchange: Exchange, entry: InFlight) -> None:
        upstream = attempt.upstream
        entry.backend = upstream.id
        self.span = None
        if exchange.trace is not None:  # the upstream gets the attempt's span as its traceparent
            self.span = exchange.trace.attempt(upstream.backend, attempt.request, number + 1, entry)
            attempt = replace(attempt, request=self.span.request)
        self.attempt, self.number, self.exchange, self.entry = attempt, number, exchange, entry
        upstream.breaker.on_attempt(trio.current_time())
        self.logged = len(exchange.log)
        self.settled = False  # every attempt settles the breaker, however it ends

    def answered(self, status: int | None) -> None:
        self.attempt.upstream.breaker.on_success()
        self.settled = True
        if self.span is not None:
            self.span.answered(status)

    def crashed(self, error: GatewayError) -> None:
        """Note an attempt that ended in an error no exchange should raise (``error``: what
        the client is told): in the attempts log and the span, with no verdict on the
        backend (the bug may be the gateway's)."""
        self._note(error)

    def _note(self, exc: GatewayError) -> None:
        if self.span is not None:
            self.span.failed(exc)
        # One attempt, one entry: one that failed after its headers went out was noted "ok"
        # for them (the client's attempts header says so); how it ended replaces it.
        del self.exchange.log[self.logged :]
        self.exchange.log.append(f"{self.attempt.upstream.id}={_outcome(exc)}")

    def failed(self, exc: GatewayError, data_sent: bool, last: bool) -> bool:
        """Note the failure; whether the next target may be tried."""
        upstream, exchange = self.attempt.upstream, self.exchange
        telemetry = exchange.telemetry
        self._note(exc)
        if counts_against_backend(exc):
            self.settled = True
            breaker = upstream.breaker
            if breaker.on_failure(trio.current_time(), client=self.entry.key_id):
                log.warning("backend %s ejected after %d failures", upstream.id, breaker.failures)
                if telemetry is not None:
                    telemetry.on_ejection(upstream.id)
        if data_sent or last or not is_retryable(exc):
            return False  # (a failover only where there is a next target to try)
        if telemetry is not None:
            telemetry.on_failover(self.entry, upstream.id)
        if self.span is not None:
            self.span.failed_over(_outcome(exc))  # (the next attempt starts at once)
        log.info(
            "attempt %d on %s failed (%s), trying the next target",
            self.number + 1,
            upstream.id,
            exc.message,
        )
        return True

    def end(self) -> None:
        # The client left (cancellation), the upstream was busy or refused the request, or
        # a bug: no verdict on the backend, but a half-open trial is over.
        if not self.settled:
            self.attempt.upstream.breaker.on_no_verdict()
        if self.span is not None:
            self.span.end(self.entry)


def _outcome(error: GatewayError) -> str:
    return str(error.status) if error.code is None else f"{error.status}:{error.code}"


async def _attempt(
    attempt: Attempt, exchange: Exchange, writer: ResponseWriter, entry: InFlight
) -> None:
    queued_at: float | None = None

    def queued() -> None:
        nonlocal queued_at
        entry.phase = "queued"
        queued_at = trio.current_time()

    hold = attempt.upstream.slots.hold(on_wait=queued) if attempt.admitted else nullcontext()
    try:
        async with hold:
            if queued_at is not None:
                entry.queue_seconds += trio.current_time() - queued_at
                queued_at = None
            entry.phase = "connecting"
            started = trio.current_time()
            try:
                if exchange.stream:
                    await relay_stream(attempt, exchange, writer, entry)
                else:
                    await relay_unary(attempt, exchange, writer, entry)
            finally:
                entry.upstream_seconds += trio.current_time() - started
    finally:
        if queued_at is not None:  # left the queue without a slot
            entry.queue_seconds += trio.current_time() - queued_at


def _as_gateway_error(exc: Exception, entry: InFlight) -> GatewayError:
    """Map what an exchange raised to what the client is told. Backends that run their own
    nurseries may raise a group; a group of gateway errors reports its first."""
    if isinstance(exc, GatewayError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        matched, rest = exc.split(GatewayError)
        if matched is not None and rest is None:
            first = next(_leaves(matched))
            assert isinstance(first, GatewayError)
            return first
    backend = entry.backend or "none yet"
    log.error("relay failed (request %s, backend %s)", entry.request_id, backend, exc_info=exc)
    return GatewayError("internal error in the gateway")


def _leaves(group: BaseExceptionGroup[BaseException]) -> Iterator[BaseException]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc


async def _report(writer: ResponseWriter, error: GatewayError, exchange: Exchange) -> None:
    """Tell the client: a status and an error body while the headers are not out, else an
    SSE error event (streams) or the error object after the leading whitespace (the caller
    then cuts the response)."""
    dialect = exchange.dialect
    if writer.started:
        if not exchange.stream:
            await writer.write(dialect.error_json(error))
            return
        pipe = writer.pipe
        event = pipe.error_event(error) if pipe is not None else None
        if event is None:
            event = dialect.error_event(error, exchange.model)
        await writer.write(event)
        return
    body = dialect.error_json(error)
    head = dialect.error_head(error, body, time.time())
    await writer.start(dialect.status(error), [*head, *exchange.headers()])
    writer.write_last(body)


def _whitespace() -> bytes:
    """A whole answer's heartbeat: JSON whitespace."""
    return b" "


def _stream_heartbeat(writer: ResponseWriter, default: bytes) -> Callable[[], bytes]:
    """A stream's heartbeat: the relayed stream's own when it has one now, else
    ``default`` (the dialect's, in the request's policy)."""

    def beat() -> bytes:
        pipe = writer.pipe
        own = pipe.heartbeat() if pipe is not None else None
        return own if own is not None else default

    return beat
