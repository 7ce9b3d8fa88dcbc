"""The load generator: its own process, raw HTTP/1.1 keep-alive sockets, bounded in count
and time. One scenario per run; the result is one JSON document on stdout.

Every connection is an asyncio ``Protocol`` (uvloop when installed) that drives its own
closed loop from ``data_received`` — no task or future per request — and stamps each read
with ``time.perf_counter()``. The response decoder handles ``content-length`` and chunked
bodies; streamed bodies are split into SSE events (a blank line ends one), and every event
is stamped with the read that completed it.

``--dialect messages`` posts Anthropic Messages bodies (with ``anthropic-version``) instead
of chat's, ``--dialect responses`` OpenAI Responses bodies (``input``); in every dialect a
content delta is an event whose text is ``tok<i> `` (of a named event, only
``content_block_delta`` and ``response.output_text.delta``: Responses' ``.done`` events repeat
the whole text), ``event: ping`` and ``event: keepalive`` count as heartbeats like a comment,
``[DONE]``, ``message_stop`` or ``response.completed`` ends a stream whole, and
``event: error`` or ``response.failed`` is counted as a failure. The server's CPU is
``--pid``'s utime+stime, summed with each ``--also-pid``'s (a gateway's worker processes;
kept per process too, as ``server_cpu_s_each``); beside it, the whole machine's busy time
(``machine_busy_pct``, % of one core: what else ran, the load generator included).

Scenarios (``python bench/loadgen.py SCENARIO --help``):

* ``unary`` — ``concurrency`` connections, each sending requests back to back for
  ``duration`` seconds after ``warmup`` (or, with ``--rate``, each taking the next slot of
  a fixed schedule shared by all): latency p50/p99, requests/s.
* ``stream`` — ``count`` streams, ``concurrency`` at a time: time to first event and to
  first content delta, gaps between content deltas, deltas that arrived in one read with the previous one (coalesced),
  missing or reordered deltas.
* ``sustain`` — ``streams`` concurrent streams started over ``ramp`` seconds: does every
  delta arrive, in order, with no silence over ``max_gap`` ms?
* ``idle`` — ``streams`` concurrent streams in a silent prefill, with the server
  heartbeating: heartbeat lateness, and the server's RSS and CPU (``--pid``) before, while
  all are open, and at the end.
* ``turns`` — Responses turns (``--dialect responses``): ``connections`` connections
  started over ``ramp`` seconds, each running ``turns`` streamed turns one after another,
  over ``--transport sse`` (a ``POST`` per turn on one keep-alive connection) or ``ws``
  (one WebSocket: a ``response.create`` frame per turn, ``loadgen_ws.py``; ``--deflate``
  offers permessage-deflate). Turn latency (request sent → the terminal event), the rest of
  ``stream``'s numbers, the longest silence, and the server's CPU per event and per delta.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import sys
import time
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

from loadgen_conn import (
    BODIES,
    Conn,
    Make,
    Pool,
    PoolConn,
    StreamRecord,
    build_request,
    summary_ms,
)
from loadgen_measure import (
    cpu_between,
    longest_silence,
    measured,
    passed,
    proc_sample,
    server_sample,
    slope_kib,
    stream_result,
)
from loadgen_ws import WSConn, create_message
from upstream import install_uvloop, raise_nofile

now = time.perf_counter
T = TypeVar("T")


# ---------------------------------------------------------------- scenarios


def _request(args: argparse.Namespace, stream: bool, prefill_ms: int = 0) -> bytes:
    body = BODIES[args.dialect](stream, args.tokens, args.gap, prefill_ms, args.model)
    return build_request(args.host, args.port, args.path, body, args.key, args.dialect)


def _times(n: int, item: T) -> Callable[[], T | None]:
    """A ``next_request``/``next_turn``: ``item`` on each of the first ``n`` calls, then
    ``None``."""
    left = n

    def nxt() -> T | None:
        nonlocal left
        if left <= 0:
            return None
        left -= 1
        return item

    return nxt


async def _open_over(pool: Pool, count: int, ramp: float, make: Callable[[], Make]) -> None:
    """Open ``count`` connections (each ``make()``'s) started evenly over ``ramp`` seconds;
    return once every one has connected or failed to."""
    start = now()
    opens = []
    for i in range(count):
        delay = start + ramp * i / count - now()
        if delay > 0:
            await asyncio.sleep(delay)
        opens.append(asyncio.ensure_future(pool.open(make())))
    await asyncio.gather(*opens)


async def run_unary(args: argparse.Namespace) -> dict[str, Any]:
    request = _request(args, False)
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    started = now()
    measure_from = started + args.warmup
    stop_at = measure_from + args.duration

    def next_request() -> tuple[bytes, bool] | None:
        return (request, False) if now() < stop_at else None

    def on_unary(latency: float, status: int) -> None:
        if now() - latency >= measure_from:
            latencies.append(latency)
            statuses[status] = statuses.get(status, 0) + 1

    samples: list[dict[str, Any]] = []

    def sample() -> None:
        taken = server_sample(args)
        if taken is not None:
            samples.append(taken)

    loop = asyncio.get_running_loop()
    loop.call_at(loop.time() + args.warmup, sample)
    loop.call_at(loop.time() + args.warmup + args.duration, sample)
    pool = Pool(args.host, args.port, opening=min(args.concurrency, 64))
    slots = itertools.count()

    def due() -> float:
        return started + next(slots) / args.rate

    def make(closed: Callable[[Conn, str | None], None]) -> Conn:
        if args.rate:
            return _PacedConn(due, next_request, on_unary, _never, closed)
        return Conn(next_request, on_unary, _never, closed)

    await asyncio.gather(*(pool.open(make) for _ in range(args.concurrency)))
    finished = await pool.wait_closed(args.warmup + args.duration + 30)
    if len(samples) == 1:  # the loop ended a moment before the timer
        sample()
    cpu = (
        cpu_between(samples[0], samples[1], len(latencies), "request") if len(samples) >= 2 else {}
    )
    ok = statuses.get(200, 0)
    return {
        "scenario": "unary",
        "concurrency": args.concurrency,
        "rate": args.rate or None,
        "duration_s": args.duration,
        "requests": len(latencies),
        "ok": ok,
        "statuses": {str(k): v for k, v in statuses.items()},
        "rps": round(len(latencies) / args.duration, 1),
        "latency_ms": summary_ms(latencies),
        "errors": pool.errors,
        "reconnects": pool.reconnects,
        "finished": finished,
        **cpu,
    }


class _PacedConn(Conn):
    """A :class:`Conn` that sends each request no sooner than the next slot of a schedule
    every connection shares (``due()`` takes a slot and gives its time): ``--rate``'s
    fixed rate, as long as the server keeps up (a late slot is sent at once)."""

    def __init__(self, due: Callable[[], float], *args: Any) -> None:
        super().__init__(*args)
        self._due = due

    def _send_next(self) -> None:
        wait = self._due() - now()
        if wait <= 0:
            super()._send_next()
        else:
            asyncio.get_running_loop().call_later(wait, self._send_due)

    def _send_due(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            super()._send_next()


def _never(_: StreamRecord) -> None:
    raise AssertionError("no streams in this scenario")


async def run_stream(args: argparse.Namespace) -> dict[str, Any]:
    request = _request(args, True)
    records: list[StreamRecord] = []
    next_request = _times(args.count, (request, True))

    before = server_sample(args)
    pool = Pool(args.host, args.port)

    def make(closed: Callable[[Conn, str | None], None]) -> Conn:
        return Conn(next_request, _never_unary, records.append, closed)

    await asyncio.gather(*(pool.open(make) for _ in range(args.concurrency)))
    timeout = (args.count / args.concurrency + 1) * (args.tokens + 3) * args.gap / 1000 + 30
    finished = await pool.wait_closed(timeout)
    after = server_sample(args)
    result = measured(records, args.tokens, before, after)
    result.update(
        scenario="stream",
        concurrency=args.concurrency,
        tokens=args.tokens,
        gap_ms=args.gap,
        errors=pool.errors,
        finished=finished,
    )
    return result


def _never_unary(latency: float, status: int) -> None:
    raise AssertionError("no unary requests in this scenario")


async def run_sustain(args: argparse.Namespace) -> dict[str, Any]:
    """``streams`` streams, one per connection, started evenly over ``ramp`` seconds."""
    request = _request(args, True)
    records: list[StreamRecord] = []

    def make() -> Make:
        return partial(_idle_conn, Conn, _times(1, (request, True)), records)

    before = server_sample(args)
    pool = Pool(args.host, args.port, opening=256)
    await _open_over(pool, args.streams, args.ramp, make)
    finished = await pool.wait_closed(args.ramp + (args.tokens + 3) * args.gap / 1000 + 60)
    after = server_sample(args)
    silences = [longest_silence(r) for r in records]
    result = measured(records, args.tokens, before, after)
    worst = max(silences, default=float("inf"))
    lost = args.streams - len(records)
    result.update(
        scenario="sustain",
        concurrent=args.streams,
        tokens=args.tokens,
        gap_ms=args.gap,
        max_silence_ms=round(worst * 1000, 2) if silences else None,
        silence_ms=summary_ms(silences),
        never_started=lost,
        errors=pool.errors,
        finished=finished,
    )
    result["passed"] = passed(result, finished, lost == 0, worst, args.max_gap)
    return result


async def run_idle(args: argparse.Namespace) -> dict[str, Any]:
    """``streams`` streams whose upstream is silent for ``prefill`` seconds; the server
    under test should heartbeat every ``interval`` seconds meanwhile."""
    request = _request(args, True, int(args.prefill * 1000))
    records: list[StreamRecord] = []
    live: list[StreamRecord] = []
    headers_seen = 0
    growth: list[tuple[int, float]] = []  # (streams open, server RSS) while opening
    all_open = asyncio.Event()

    class IdleConn(Conn):
        def data_received(self, data: bytes) -> None:
            nonlocal headers_seen
            fresh = self._decoder.status == 0
            super().data_received(data)
            if fresh and self._decoder.status:
                headers_seen += 1
                if args.pid and headers_seen % max(1, args.streams // 10) == 0:
                    growth.append((headers_seen, proc_sample(args.pid)["rss"]))
                if headers_seen == args.streams:
                    all_open.set()

        def _send_next(self) -> None:
            before = self._record
            super()._send_next()
            if self._record is not None and self._record is not before:
                live.append(self._record)

    base = proc_sample(args.pid) if args.pid else None
    pool = Pool(args.host, args.port, opening=args.opening)
    start = now()
    opens = [
        asyncio.ensure_future(
            pool.open(partial(_idle_conn, IdleConn, _times(1, (request, True)), records))
        )
        for _ in range(args.streams)
    ]
    await asyncio.gather(*opens)
    opened_in = None
    try:
        await asyncio.wait_for(all_open.wait(), args.prefill)
        opened_in = now() - start
    except TimeoutError:
        pass
    # Steady state: every stream is open and silent upstream; sample over a window.
    window_start = now() + 2.0
    await asyncio.sleep(2.0)
    steady0 = proc_sample(args.pid) if args.pid else None
    first_end = min((r.sent for r in live), default=now()) + args.prefill
    window = min(10.0, first_end - now() - 1.0)
    steady1 = None
    if window >= 1.0:  # else the first streams leave their prefill: no steady state
        await asyncio.sleep(window)
        steady1 = proc_sample(args.pid) if args.pid else None
    finished = await pool.wait_closed(args.prefill + 60 + (args.tokens + 3) * args.gap / 1000)
    end_sample = proc_sample(args.pid) if args.pid else None

    lateness_all: list[float] = []
    lateness_steady: list[float] = []
    first_beat: list[float] = []
    for r in live:
        prefill_end = r.first_event if r.first_event is not None else float("inf")
        beats = [t for t in r.heartbeats if t < prefill_end]
        if beats:
            first_beat.append(beats[0] - r.sent)
        for a, b in itertools.pairwise(beats):
            late = b - a - args.interval
            lateness_all.append(late)
            if window_start <= a and b <= window_start + window:
                lateness_steady.append(late)
    result = stream_result(records, args.tokens)
    result.update(
        scenario="idle",
        concurrent=args.streams,
        prefill_s=args.prefill,
        interval_s=args.interval,
        opened_in_s=None if opened_in is None else round(opened_in, 2),
        opened=headers_seen,
        all_opened=opened_in is not None,
        heartbeats=sum(len(r.heartbeats) for r in live),
        first_heartbeat_ms=summary_ms(first_beat),
        lateness_ms=summary_ms(lateness_all),
        lateness_steady_ms=summary_ms(
            lateness_steady if steady1 is not None or not args.pid else []
        ),
        errors=pool.errors,
        finished=finished,
    )
    if base and steady0 and end_sample:
        result["server"] = {
            "rss_base_mib": round(base["rss"] / 2**20, 2),
            "rss_open_mib": round(steady0["rss"] / 2**20, 2),
            "rss_end_mib": round(end_sample["rss"] / 2**20, 2),
            "rss_per_stream_kib": round(
                (steady0["rss"] - base["rss"]) / max(1, headers_seen) / 1024, 2
            ),
            "cpu_steady_pct": None
            if steady1 is None
            else round(100 * (steady1["cpu"] - steady0["cpu"]) / (steady1["t"] - steady0["t"]), 1),
            "steady_window_s": None if steady1 is None else round(steady1["t"] - steady0["t"], 2),
            "cpu_open_s": round(steady0["cpu"] - base["cpu"], 2),
            "rss_slope_kib": slope_kib(growth),
            "rss_growth": [(n, round(rss / 2**20, 2)) for n, rss in growth],
        }
    return result


async def run_turns(args: argparse.Namespace) -> dict[str, Any]:
    """``connections`` connections started evenly over ``ramp`` seconds, each running
    ``turns`` streamed turns back to back, over SSE or one WebSocket each."""
    records: list[StreamRecord] = []
    handshakes: list[float] = []
    extensions: set[str] = set()
    body = BODIES[args.dialect](True, args.tokens, args.gap, 0, args.model)
    request = build_request(args.host, args.port, args.path, body, args.key, args.dialect)
    message = create_message(body)

    def make(closed: Callable[[PoolConn, str | None], None]) -> PoolConn:
        if args.transport == "sse":
            return Conn(_times(args.turns, (request, True)), _never_unary, records.append, closed)

        def handshake(seconds: float) -> None:
            handshakes.append(seconds)
            extensions.update(conn.extensions)

        conn = WSConn(
            args.host,
            args.port,
            args.path,
            args.key,
            args.deflate,
            _times(args.turns, message),
            records.append,
            handshake,
            closed,
        )
        return conn

    before = server_sample(args)
    pool = Pool(args.host, args.port, opening=256)
    await _open_over(pool, args.connections, args.ramp, lambda: make)
    turn_s = (args.tokens + 8) * args.gap / 1000
    finished = await pool.wait_closed(args.ramp + args.turns * turn_s * 2 + 30)
    after = server_sample(args)
    turn_times = [r.ended - r.sent for r in records if r.ended is not None and not r.errors]
    silences = [longest_silence(r) for r in records]
    result = measured(records, args.tokens, before, after)
    worst = max(silences, default=float("inf"))
    expected = args.connections * args.turns
    result.update(
        scenario="turns",
        transport=args.transport,
        deflate=args.deflate,
        extensions=sorted(extensions),
        connections=args.connections,
        turns_each=args.turns,
        turns=len(records),
        tokens=args.tokens,
        gap_ms=args.gap,
        turn_ms=summary_ms(turn_times),
        handshake_ms=summary_ms(handshakes),
        events=sum(len(r.events) for r in records),
        max_silence_ms=round(worst * 1000, 2) if silences else None,
        never_started=expected - len(records),
        # turns that did not come whole: broken, incomplete, out of order or never sent
        broken=expected
        - sum(
            1
            for r in records
            if r.complete and not r.errors and r.order_ok and len(r.tokens) == args.tokens
        ),
        errors=pool.errors,
        finished=finished,
    )
    result["passed"] = passed(result, finished, len(records) == expected, worst, args.max_gap)
    return result


def _idle_conn(
    cls: type[Conn],
    nxt: Callable[[], tuple[bytes, bool] | None],
    records: list[StreamRecord],
    closed: Callable[[Conn, str | None], None],
) -> Conn:
    return cls(nxt, _never_unary, records.append, closed)


def main() -> None:
    parser = argparse.ArgumentParser(description="benchmark load generator")
    parser.add_argument("scenario", choices=["unary", "stream", "sustain", "idle", "turns"])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/v1/chat/completions")
    parser.add_argument("--key", default="", help="bearer token to send")
    parser.add_argument("--model", default="bench", help="model name to request")
    parser.add_argument(
        "--dialect",
        choices=sorted(BODIES),
        default="chat",
        help="request body: Chat Completions, Anthropic Messages (post it to /v1/messages) or "
        "OpenAI Responses (post it to /v1/responses)",
    )
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--count", type=int, default=10)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--gap", type=int, default=20, help="ms between upstream events")
    parser.add_argument("--streams", type=int, default=100)
    parser.add_argument("--ramp", type=float, default=1.0)
    parser.add_argument("--max-gap", type=float, default=200.0, help="ms")
    parser.add_argument("--prefill", type=float, default=60.0, help="s")
    parser.add_argument("--interval", type=float, default=1.0, help="heartbeat interval, s")
    parser.add_argument("--opening", type=int, default=64, help="connects in flight at once")
    parser.add_argument("--pid", type=int, default=0, help="server process to sample")
    parser.add_argument(
        "--also-pid",
        type=int,
        action="append",
        default=[],
        help="a process whose CPU counts with --pid's (a gateway's workers); repeatable",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="unary: requests/s over all connections, on a fixed schedule (default: each "
        "connection sends the next request as soon as the last is answered)",
    )
    parser.add_argument("--transport", choices=["sse", "ws"], default="sse", help="turns: how")
    parser.add_argument("--connections", type=int, default=1, help="turns: connections")
    parser.add_argument("--turns", type=int, default=10, help="turns: per connection")
    parser.add_argument(
        "--deflate", action="store_true", help="turns over ws: offer permessage-deflate"
    )
    args = parser.parse_args()
    raise_nofile()
    loop_name = install_uvloop()
    runner = {
        "unary": run_unary,
        "stream": run_stream,
        "sustain": run_sustain,
        "idle": run_idle,
        "turns": run_turns,
    }[args.scenario]
    result = asyncio.run(runner(args))
    result["loop"] = loop_name
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
