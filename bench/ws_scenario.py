"""Scenario 8: OpenAI Responses over WebSocket beside SSE — the same Responses turns (the
fake upstream's script: ``n`` deltas 20 ms apart, between its four opening and four closing
events) over ``POST /v1/responses`` with ``stream: true`` and over one WebSocket on ``GET
/v1/responses`` with sequential ``response.create`` turns, on the same gateway in the same
run. The measuring (:func:`run_websocket`), its medians (:func:`summarize_websocket`) and
its table (:func:`websocket_table`); the harness calls the first two, the report the last.

Variants, by target (the others have none and skip the scenario):

* ``direct`` — ``sse``: the fake upstream's own Responses stream (it speaks no WebSocket):
  the baseline.
* ``trio-gateway`` — all on route ``bench-native`` (the backend lists ``responses``: the
  upstream's events relayed, the passthrough of scenario 7): ``sse``; ``ws``, a WebSocket
  without extensions (as the raw test client, ``gateway.testing.ws_client``, speaks);
  ``ws-deflate``, a WebSocket that offers permessage-deflate, which hypercorn accepts and
  which the SDKs' WebSocket libraries (Python ``websockets``, Node ``ws``) offer by default.

Each variant, each repeat (in an order that rotates per repeat; two short warm-up turns
first in the first repeat), runs the load generator's ``turns`` scenario twice:

* ``c1`` — one connection (a keep-alive HTTP connection, or one WebSocket) running
  ``ws_turns`` turns of ``stream_tokens`` deltas one after another: turn latency (request
  sent → the terminal event, ``response.completed``), time to the first event and the first
  content delta, gaps between deltas, and the server's CPU per event and per delta over the
  turns (handshake included, once).
* ``load`` — ``messages_streams`` such connections started over 1 s, each running
  ``ws_load_turns`` turns of ``sustain_tokens`` deltas one after another: the server's CPU
  per event the client got and per content delta (utime+stime of the serving process over
  the window, as in scenarios 3, 6 and 7), turn latency under that load, and whether every
  turn came whole with no silence over 200 ms.

A turn's events are the same in both transports — an SSE event or a text frame each, ``n +
8`` per turn — so CPU per event compares them directly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

# Scenarios 6 and 7's measuring and table helpers, the same here.
from messages_scenario import (
    LoadPlan,
    Measure,
    _columns,
    _f,
    _markdown,
    _median,
    _minus,
    _pair,
    _per_variant,
    _ratio,
    _this_repeat,
)

KEY = "websocket"
NUMBER = 8
TITLE = "Responses over WebSocket beside SSE"
PATH = "/v1/responses"


@dataclass(frozen=True, slots=True)
class Transport:
    name: str
    transport: str  # the load generator's --transport: sse or ws
    deflate: bool  # offer permessage-deflate (ws only)
    model: str
    label: str


SSE_DIRECT = Transport("sse", "sse", False, "bench", "SSE")
VARIANTS: dict[str, tuple[Transport, ...]] = {
    "direct": (SSE_DIRECT,),
    "trio-gateway": (
        Transport("sse", "sse", False, "bench-native", "SSE"),
        Transport("ws", "ws", False, "bench-native", "WebSocket"),
        Transport("ws-deflate", "ws", True, "bench-native", "WebSocket + permessage-deflate"),
    ),
}


class PlanLike(LoadPlan, Protocol):
    """The harness's ``Plan``, as far as this scenario reads it."""

    @property
    def ws_turns(self) -> int: ...
    @property
    def ws_load_turns(self) -> int: ...


def run_websocket(
    target: str, measure: Measure, plan: PlanLike, repeat: int, log: Callable[[str], None]
) -> dict[str, Any]:
    """One repeat of every variant of ``target`` (``{}`` for a target without variants)."""
    out: dict[str, Any] = {}
    for v in _this_repeat(VARIANTS, KEY, target, repeat, log):
        how = ["--path", PATH, "--dialect", "responses", "--model", v.model]
        how += ["--transport", v.transport, *(["--deflate"] if v.deflate else [])]
        if repeat == 0:  # first use of a path: imports, pools, the first socket
            measure("turns", *how, "--turns", "2", "--tokens", "4")
        c1 = measure(
            "turns", *how, "--turns", str(plan.ws_turns), "--tokens", str(plan.stream_tokens)
        )
        load = measure(
            "turns",
            *how,
            "--connections",
            str(plan.messages_streams),
            "--turns",
            str(plan.ws_load_turns),
            "--tokens",
            str(plan.sustain_tokens),
            "--ramp",
            "1.0",
        )
        out[v.name] = {"c1": c1, "load": load}
        turn, load_turn = c1.get("turn_ms", {}), load.get("turn_ms", {})
        log(
            f"  {KEY} {target} {v.name}: turn p50 {turn.get('p50')} p99 {turn.get('p99')} ms, "
            f"{c1.get('server_cpu_us_per_event')} µs/event, broken {_broken(c1)}; "
            f"{plan.messages_streams} connections: {load.get('server_cpu_us_per_event')} "
            f"µs/event, turn p99 {load_turn.get('p99')} ms, "
            f"{'pass' if load['passed'] else 'FAIL'}"
        )
    return out


def _broken(r: dict[str, Any]) -> int:
    """Turns that did not come whole (a failed measurement: all it meant to run)."""
    if "broken" in r:
        return int(r["broken"])
    return max(1, int(r.get("turns_each", 1)) * int(r.get("connections", 1)))


def summarize_websocket(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Medians over repeats, per variant."""
    summary: dict[str, Any] = {}
    for name, c1s, loads in _per_variant(runs, "c1"):

        def med(rs: list[dict[str, Any]], key: str, q: str) -> float | None:
            return _median([(r.get(key) or {}).get(q) for r in rs])

        summary[name] = {
            "turn_p50": med(c1s, "turn_ms", "p50"),
            "turn_p99": med(c1s, "turn_ms", "p99"),
            "ttft_p50": med(c1s, "ttft_ms", "p50"),
            "ttft_p99": med(c1s, "ttft_ms", "p99"),
            "content_p50": med(c1s, "first_content_ms", "p50"),
            "content_p99": med(c1s, "first_content_ms", "p99"),
            "inter_p50": med(c1s, "inter_chunk_ms", "p50"),
            "inter_p99": med(c1s, "inter_chunk_ms", "p99"),
            "handshake_p50": med(c1s + loads, "handshake_ms", "p50"),
            "coalesced": sum(r["coalesced"] for r in c1s),
            "deltas": sum(r["inter_chunk_ms"]["n"] + r["streams"] for r in c1s),
            "missing": sum(r["missing"] for r in c1s),
            "broken": sum(_broken(r) for r in c1s),
            "turns": sum(r.get("turns", 0) for r in c1s),
            "cpu_us_event": _median([r.get("server_cpu_us_per_event") for r in c1s]),
            "cpu_us_delta": _median([r.get("server_cpu_us_per_delta") for r in c1s]),
            "load_turn_p50": med(loads, "turn_ms", "p50"),
            "load_turn_p99": med(loads, "turn_ms", "p99"),
            "load_cpu_us_event": _median([r.get("server_cpu_us_per_event") for r in loads]),
            "load_cpu_us_delta": _median([r.get("server_cpu_us_per_delta") for r in loads]),
            "load_cpu_pct": _median([r.get("server_cpu_pct") for r in loads]),
            "load_passed": sum(1 for r in loads if r["passed"]),
            "load_runs": len(loads),
            "load_max_silence": _median([r["max_silence_ms"] for r in loads]),
            "load_broken": sum(_broken(r) for r in loads),
            "extensions": sorted({e for r in c1s + loads for e in r.get("extensions", [])}),
        }
    return summary


def websocket_table(raw: dict[str, Any]) -> str:
    """Scenario 8's table, or ``""`` when the run had no numbers for it."""
    s = raw["summary"]
    columns = _columns(s, KEY, VARIANTS)
    if not columns:
        return ""
    plan = raw["plan"]
    direct = s.get("direct", {}).get(KEY, {}).get("sse")
    gateway_sse = s.get("trio-gateway", {}).get(KEY, {}).get("sse")
    rows: list[list[str]] = []

    def row(label: str, fn: Callable[[str, dict[str, Any]], str]) -> None:
        """``fn(target, the variant's summary)`` gives each column's cell."""
        rows.append([label, *(fn(t, s[t][KEY][v.name]) for t, v in columns)])

    def quantiles(key: str) -> Callable[[str, dict[str, Any]], str]:
        """The column's ``key`` p50 / p99."""
        return lambda t, c: _pair(c[f"{key}_p50"], c[f"{key}_p99"])

    def whole(key: str) -> Callable[[str, dict[str, Any]], str]:
        """The column's ``key``, to the unit."""
        return lambda t, c: _f(c[key], 0)

    def added(key: str) -> Callable[[str, dict[str, Any]], str]:
        def cell(t: str, c: dict[str, Any]) -> str:
            if t == "direct" or direct is None:
                return "—"
            return _pair(
                _minus(c[f"{key}_p50"], direct[f"{key}_p50"]),
                _minus(c[f"{key}_p99"], direct[f"{key}_p99"]),
                True,
            )

        return cell

    def versus_sse(key: str) -> Callable[[str, dict[str, Any]], str]:
        def cell(t: str, c: dict[str, Any]) -> str:
            if t != "trio-gateway" or gateway_sse is None:
                return "—"
            return _ratio(c[key], gateway_sse[key])

        return cell

    one = (
        f"one connection, {plan.get('ws_turns', '?')} turns × {plan['stream_tokens']} deltas "
        "@ 20 ms one after another"
    )
    row(f"{one}: turn latency p50 / p99 ms (request sent → response.completed)", quantiles("turn"))
    row("   added turn latency vs direct SSE p50 / p99 ms", added("turn"))
    row("   first event p50 / p99 ms", quantiles("ttft"))
    row(
        "   first content delta p50 / p99 ms (upstream: 20 ms after its first event)",
        quantiles("content"),
    )
    row("   added first content delta vs direct SSE p50 / p99 ms", added("content"))
    row("   inter-delta p50 / p99 ms (upstream: 20 ms)", quantiles("inter"))
    row(
        "   deltas coalesced into one read / deltas (missing; turns broken)",
        lambda t, c: f"{c['coalesced']} / {c['deltas']} ({c['missing']}; {c['broken']})",
    )
    row("   server CPU per event, µs", whole("cpu_us_event"))
    row("   server CPU per content delta, µs", whole("cpu_us_delta"))
    row("   CPU per event ÷ the gateway's SSE", versus_sse("cpu_us_event"))
    load = (
        f"{plan['messages_streams']} connections × {plan.get('ws_load_turns', '?')} turns × "
        f"{plan['sustain_tokens']} deltas @ 20 ms, started over 1 s"
    )
    row(f"{load}: server CPU per event the client got, µs", whole("load_cpu_us_event"))
    row("   server CPU per content delta, µs", whole("load_cpu_us_delta"))
    row("   server CPU, % of one core", whole("load_cpu_pct"))
    row("   CPU per event ÷ the gateway's SSE", versus_sse("load_cpu_us_event"))
    row("   turn latency p50 / p99 ms", quantiles("load_turn"))
    row(
        "   runs with every turn whole, in order, no gap > 200 ms (max silence ms; turns broken)",
        lambda t, c: (
            f"{c['load_passed']} of {c['load_runs']} "
            f"({_f(c['load_max_silence'], 1)}; {c['load_broken']})"
        ),
    )
    row(
        "WebSocket upgrade round trip p50 ms (extensions accepted)",
        lambda t, c: (
            "—"
            if c["handshake_p50"] is None
            else f"{_f(c['handshake_p50'])} ({', '.join(c['extensions']) or 'none'})"
        ),
    )
    return _markdown(f"scenario {NUMBER}: {TITLE}", columns, rows)
