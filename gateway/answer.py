"""One attempt's answer copied to the client: a stream event by event, a whole answer at
once, each guarded by the upstream's timers (``connect``, ``first_byte``, ``idle``,
``total``, measured on upstream bytes alone: ``idle`` does not run while a slow client
holds up the relay's write, and nothing is read from the upstream).

The end: the upstream's terminal event (``[DONE]``) goes to the client together with the
end of the response, at once, whatever the upstream does next; nothing after it is
relayed, no heartbeat or error event follows it. Only then does the relay read what is
left of the upstream's body (normally just the end of its chunked encoding), for at most
:data:`END_GRACE` seconds: a body read to its end lets the connection go back to the
backend's pool, and an upstream that holds its connection open past that has it closed.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager

import trio

from .abc import UpstreamResponse
from .dialects.base import Tokens
from .errors import UpstreamError, UpstreamProtocolError, UpstreamResponseTooLarge, UpstreamTimeout
from .exchange import Attempt, Exchange
from .inflight import InFlight
from .timers import UpstreamClock
from .writer import ResponseWriter, json_headers, sse_headers

__all__ = ["END_GRACE", "MAX_EVENT_BYTES", "relay_stream", "relay_unary"]

# An upstream that sends this much without ending an event is not speaking SSE.
MAX_EVENT_BYTES = 4 * 1024 * 1024

# Seconds an upstream gets, once its terminal event is relayed and the client's response has
# ended, to end its body so that its connection can be reused. Upstreams write that end
# right after the terminal event, so it is normally there at once; the wait holds no client.
END_GRACE = 0.5


def _timeout_error(clock: UpstreamClock) -> UpstreamTimeout:
    name = clock.expired()
    return UpstreamTimeout(
        f"upstream timed out: no {'byte' if name != 'total' else 'completion'} within the "
        f"{name} limit of {clock.limit(name):g} s"
    )


def _open(attempt: Attempt) -> AbstractAsyncContextManager[UpstreamResponse]:
    if attempt.open is not None:
        return attempt.open(attempt.request)
    return attempt.upstream.backend.open_response(attempt.request)


async def relay_stream(
    attempt: Attempt, exchange: Exchange, writer: ResponseWriter, entry: InFlight
) -> None:
    backend = attempt.upstream.backend
    clock = UpstreamClock(backend.settings.timeouts, trio.current_time())
    pipe = attempt.shape.stream()
    pauses = clock.pauses
    try:
        with trio.CancelScope(deadline=clock.deadline) as timer:
            async with _open(attempt) as response:
                _check_content_type(response, "text/event-stream")
                writer.pipe = pipe
                entry.phase = "prefill"
                exchange.log.append(f"{attempt.upstream.id}=ok")
                await writer.start(200, sse_headers(exchange.headers()))
                async for chunk in response.body:
                    _heard_upstream(clock, timer, entry)
                    fed = pipe.feed(chunk)
                    if fed.data and not writer.data_sent:
                        writer.data_sent = True
                        entry.phase = "streaming"
                        entry.first_token_at = trio.current_time()
                    if fed.end:
                        # The terminal event and the end of the response, as one message;
                        # kept first, no heartbeat goes out while the answer is stored (it
                        # would follow the terminal event, numbered after it).
                        entry.phase = "finishing"
                        writer.write_last(fed.out)
                        if exchange.keep is not None and pipe.result is not None:
                            await exchange.keep(pipe.result)
                        await writer.end()
                        timer.deadline = math.inf  # upstream timers guard a relay that is over
                        await _read_to_end(response.body)
                        return
                    if fed.out:
                        if pauses:
                            timer.deadline = clock.paused_deadline
                            await writer.write(fed.out)
                            _heard_upstream(clock, timer, entry)
                        else:
                            await writer.write(fed.out)
                    if fed.failure is not None:
                        raise fed.failure
                    if pipe.pending_bytes > MAX_EVENT_BYTES:
                        raise UpstreamProtocolError(
                            f"upstream sent {pipe.pending_bytes} bytes without ending an SSE event"
                        )
    finally:
        _take_tokens(entry, pipe.tokens)
        entry.data_events += pipe.data_events
    if timer.cancelled_caught:
        raise _timeout_error(clock)
    if pipe.pending:
        raise UpstreamProtocolError("upstream closed the stream in the middle of an event")
    raise UpstreamProtocolError(pipe.unfinished)


async def _read_to_end(body: AsyncIterator[bytes]) -> None:
    """Read and drop what the upstream sends after its terminal event, until its body ends
    or :data:`END_GRACE` is over. The client's response has ended already; an upstream
    error now costs only the connection, which the backend then closes."""
    with trio.move_on_after(END_GRACE):
        try:
            async for _ in body:
                pass
        except UpstreamError:
            pass


async def relay_unary(
    attempt: Attempt, exchange: Exchange, writer: ResponseWriter, entry: InFlight
) -> None:
    backend = attempt.upstream.backend
    clock = UpstreamClock(backend.settings.timeouts, trio.current_time())
    parts: list[bytes] = []
    size, cap = 0, backend.settings.max_response_bytes
    with trio.CancelScope(deadline=clock.deadline) as timer:
        async with _open(attempt) as response:
            entry.phase = "prefill"
            async for chunk in response.body:
                _heard_upstream(clock, timer, entry)
                size += len(chunk)
                if size > cap:  # leaving the context closes the upstream request
                    raise UpstreamResponseTooLarge(
                        f"backend {backend.id} answered with more than {cap} bytes "
                        f"(its max_response_bytes); ask for less, or stream"
                    )
                parts.append(chunk)
            status, content_type = response.status, response.content_type
    if timer.cancelled_caught:
        raise _timeout_error(clock)
    tokens = Tokens()
    body = attempt.shape.whole(b"".join(parts), tokens)
    _take_tokens(entry, tokens)
    if exchange.keep is not None and attempt.shape.result is not None:
        await exchange.keep(attempt.shape.result)
    writer.data_sent = True
    exchange.log.append(f"{attempt.upstream.id}=ok")
    headers = json_headers(exchange.headers(), content_type)
    if await writer.start(status, [*headers, (b"content-length", str(len(body)).encode())]):
        writer.write_last(body)
    else:  # heartbeats committed the headers: whitespace went out ahead of the body
        await writer.write(body)


def _take_tokens(entry: InFlight, tokens: Tokens) -> None:
    """Note the token counts (and the model) an attempt's answer reported."""
    if tokens.prompt is not None:
        entry.prompt_tokens = tokens.prompt
    if tokens.completion is not None:
        entry.completion_tokens = tokens.completion
    if tokens.model is not None:
        entry.response_model = tokens.model


def _heard_upstream(clock: UpstreamClock, timer: trio.CancelScope, entry: InFlight) -> None:
    """Upstream bytes arrived: restart the idle timer, note the first byte."""
    now = trio.current_time()
    clock.note_bytes(now)
    timer.deadline = clock.deadline
    if entry.first_byte_at is None:
        entry.first_byte_at = now


def _check_content_type(response: UpstreamResponse, expected: str) -> None:
    if not response.content_type.lower().startswith(expected):
        raise UpstreamProtocolError(
            f"upstream answered a streaming request with {response.content_type!r}, not {expected}"
        )
