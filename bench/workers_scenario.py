"""Scenario 9: ``[server] workers`` — what a second worker process buys on this machine, and
what the machine-wide state the parent keeps costs per request. The measuring
(:func:`run_workers`), its medians (:func:`summarize_workers`) and its tables
(:func:`workers_table`); the harness calls the first two, the report the last.

Each variant is a fresh ``gateway serve`` on ``bench/gateway.toml`` with ``[server] workers``
set, started per repeat (in an order that rotates per repeat) and stopped before the next:

* ``w1`` — ``workers = 1``: one process, no parent.
* ``w1-pinned`` — the same pinned to the last CPU, away from the load generator, as
  scenario 1 runs it: the best one process does here (an unpinned one may be woken on the
  load generator's CPU); measured at saturation only, a second baseline for the ratio.
* ``w2`` — ``workers = 2``: a parent that binds the socket and keeps the backends' slots
  (a ``hold`` and a ``release`` message per upstream request, a ``load`` broadcast to every
  worker at most every 10 ms while they change) and two workers sharing the socket.
* ``w1-team``, ``w2-team`` — the same with one team whose key the load generator sends and
  whose ``requests_per_minute`` is set (high: nothing is refused), so every request is also
  admitted and finished by the team's windows — in the parent, with workers — and recorded
  in the usage database (in the run's folder).

The other gateways are not pinned: they may run on every CPU. The fake upstream and the load
generator stay on CPU 0 as in every scenario, so on two cores they share a CPU with one of
the workers (and with a single worker whenever the scheduler puts it there); their own CPU
is small beside the gateway's (≈ 15 µs per request for the upstream, see scenario 1's
direct column) and the load generator's is recorded with each measurement.

Measured, each variant, each repeat:

* ``rate`` (all but ``w1-pinned``) — a fixed, non-saturating rate (``workers_rate`` requests/s over 8 keep-alive
  connections, each request at its slot of one schedule; ``workers_rate_duration`` s after
  1 s of warm-up): the server's CPU per request, summed over every process of the gateway
  (utime+stime from ``/proc``: the parent and each worker, kept apart too), and latency.
  Beside ``w1`` this is the cost of the machine-wide state per request: ``w2`` against
  ``w1``, and ``w2-team`` against ``w1-team``.
* ``saturation`` (``w1``, ``w2``, ``w1-pinned``) — scenario 1's closed loop at each of ``workers_levels``
  connections: requests/s, latency, CPU per request and each process's share.
* ``sustain`` (``w1``, ``w2``) — scenario 3's search for the most concurrent streams that
  pass (a later repeat starts from the previous answer).

The ratio ``w2 ÷ w1`` of the best requests/s (also ÷ ``w1-pinned``'s) and of the sustained
streams is the scaling;
CPU per request (all processes) compares the variants without the CPU contention that
requests/s depends on.
"""

from __future__ import annotations

import hashlib
import os
import resource
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from messages_scenario import _f, _median, _minus, _pair, _rotation, unary_closed_loop

KEY = "workers"
NUMBER = 9
RATE_CONNECTIONS = 8
# The team variants' limit: set, so every request is admitted against it, and far above
# what one run sends, so none is refused.
TEAM_RPM = 1_000_000


@dataclass(frozen=True, slots=True)
class Variant:
    name: str
    workers: int
    team: bool
    pinned: bool
    label: str

    @property
    def at_rate(self) -> bool:
        return not self.pinned

    @property
    def saturated(self) -> bool:
        return not self.team

    @property
    def sustained(self) -> bool:
        return not self.team and not self.pinned


VARIANTS = (
    Variant("w1", 1, False, False, "workers = 1"),
    Variant("w2", 2, False, False, "workers = 2"),
    Variant("w1-team", 1, True, False, "workers = 1, team with requests_per_minute"),
    Variant("w2-team", 2, True, False, "workers = 2, team with requests_per_minute"),
    Variant("w1-pinned", 1, False, True, "workers = 1 pinned to the last CPU"),
)


class Gateway(Protocol):
    """A started gateway, as this scenario uses it (the harness's ``Server``)."""

    @property
    def pid(self) -> int: ...
    @property
    def workers(self) -> tuple[int, ...]: ...
    def stop(self) -> None: ...


class Start(Protocol):
    """Starts ``gateway serve`` on the bench config with ``workers``, ``extra`` appended
    (``RESULTS_DIR`` in it is the run's folder) and ``key`` sent by the load generator, on
    every CPU or ``pinned`` to the server's; returns once every worker is ready. Raises
    ``RuntimeError`` when it did not start."""

    def __call__(
        self, *, pinned: bool, tag: str, workers: int, extra: str, key: str
    ) -> Gateway: ...


class Measure(Protocol):
    """Runs one load generator scenario against ``server``; returns its JSON result."""

    def __call__(
        self, server: Gateway, scenario: str, *args: str, timeout: float = ...
    ) -> dict[str, Any]: ...


# Scenario 3's search on ``server``: (server, hint, trials list) -> the largest passing N.
Search = Callable[[Gateway, int | None, list[dict[str, Any]]], int]


class PlanLike(Protocol):
    """The harness's ``Plan``, as far as this scenario reads it."""

    @property
    def repeats(self) -> int: ...
    @property
    def workers_rate(self) -> float: ...
    @property
    def workers_rate_duration(self) -> float: ...
    @property
    def workers_levels(self) -> tuple[int, ...]: ...
    @property
    def unary_duration(self) -> float: ...
    @property
    def workers_budget_s(self) -> float: ...


def team_key() -> tuple[str, str]:
    """A fresh team key and the hash the config holds: ``gateway.teams.keys.new_key`` and
    ``hash_key`` (``gateway keys new``), written out here because the harness runs in its
    own venv without the gateway."""
    key = "gw-" + secrets.token_urlsafe(32)
    return key, "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def team_tables(key_hash: str, tag: str) -> str:
    """The config tables of the team variants: one team, its limit, its usage database."""
    return (
        f'\n[teams.bench]\nkeys = ["{key_hash}"]\n'
        f"limits = {{ requests_per_minute = {TEAM_RPM} }}\n"
        f'\n[usage]\ndatabase = "RESULTS_DIR/gateway-usage{tag}.sqlite"\n'
    )


def run_workers(
    plan: PlanLike, start: Start, measure: Measure, search: Search, log: Callable[[str], None]
) -> dict[str, Any]:
    """Every repeat of every variant, within ``plan.workers_budget_s`` (a repeat that would
    not fit after the longest one so far is not started)."""
    key, key_hash = team_key()
    runs: list[dict[str, Any]] = []
    failed: list[str] = []
    hints: dict[str, int | None] = {}
    began = time.monotonic()
    longest = 0.0
    for repeat in range(plan.repeats):
        elapsed = time.monotonic() - began
        if repeat and elapsed + longest > plan.workers_budget_s:
            log(f"  {KEY}: {repeat} of {plan.repeats} repeats fit in {plan.workers_budget_s} s")
            break
        run: dict[str, Any] = {}
        for v in _rotation(VARIANTS, repeat):
            tag = f"-{v.name}-{repeat + 1}"
            extra = team_tables(key_hash, tag) if v.team else ""
            try:
                server = start(
                    pinned=v.pinned,
                    tag=tag,
                    workers=v.workers,
                    extra=extra,
                    key=key if v.team else "",
                )
            except RuntimeError as exc:  # recorded; the other variants still run
                log(f"  {KEY} {v.name}: the gateway did not start: {exc}")
                failed.append(f"repeat {repeat + 1}, {v.name}: {exc}")
                continue
            try:
                run[v.name] = _measure_variant(plan, v, server, measure, search, hints, log)
            finally:
                server.stop()
        runs.append(run)
        longest = max(longest, time.monotonic() - began - elapsed)
    return {
        "runs": runs,
        "failed": failed,
        "rate": plan.workers_rate,
        "rate_connections": RATE_CONNECTIONS,
        "levels": list(plan.workers_levels),
        "seconds": round(time.monotonic() - began, 1),
    }


def _measure_variant(
    plan: PlanLike,
    v: Variant,
    server: Gateway,
    measure: Measure,
    search: Search,
    hints: dict[str, int | None],
    log: Callable[[str], None],
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "workers": v.workers,
        "team": v.team,
        "pinned": v.pinned,
        "pids": [server.pid, *server.workers],
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
    if v.at_rate:
        rate = out["rate"] = _with_loadgen_cpu(
            measure,
            server,
            "unary",
            "--concurrency",
            str(RATE_CONNECTIONS),
            "--rate",
            str(plan.workers_rate),
            "--duration",
            str(plan.workers_rate_duration),
            "--warmup",
            "1.0",
            timeout=plan.workers_rate_duration + 60,
        )
        log(
            f"  {KEY} {v.name} at {plan.workers_rate:g} req/s: {rate['rps']} req/s, "
            f"p50 {rate['latency_ms']['p50']} p99 {rate['latency_ms']['p99']} ms, "
            f"{rate.get('server_cpu_us_per_request')} µs/request (each process, s: "
            f"{rate.get('server_cpu_s_each')}), statuses {rate.get('statuses')}"
        )
    if v.saturated:
        out["saturation"] = {}
        for c in plan.workers_levels:
            r = out["saturation"][str(c)] = _with_loadgen_cpu(
                measure,
                server,
                *unary_closed_loop(c, plan.unary_duration),
                timeout=plan.unary_duration + 60,
            )
            log(
                f"  {KEY} {v.name} c={c}: {r['rps']} req/s, p50 {r['latency_ms']['p50']} "
                f"p99 {r['latency_ms']['p99']} ms, {r.get('server_cpu_us_per_request')} "
                f"µs/request, {r.get('server_cpu_pct')} % of a core (each process, s: "
                f"{r.get('server_cpu_s_each')}); load generator {r['loadgen_cpu_pct']} %"
            )
    if v.sustained:
        out["sustain_trials"] = []
        out["sustain_max"] = search(server, hints.get(v.name), out["sustain_trials"])
        hints[v.name] = out["sustain_max"] or None
        log(f"  {KEY} {v.name}: {out['sustain_max']} sustained streams")
    return out


def _with_loadgen_cpu(
    measure: Measure, server: Gateway, scenario: str, *args: str, timeout: float
) -> dict[str, Any]:
    """``measure(...)``, with the load generator's own CPU over its whole run (it is this
    process's only child that exits meanwhile) as ``loadgen_cpu_s`` and ``_pct``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    result = measure(server, scenario, *args, timeout=timeout)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    seconds = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    result["loadgen_cpu_s"] = round(seconds, 3)
    result["loadgen_cpu_pct"] = round(100 * seconds / max(time.monotonic() - t0, 1e-9), 1)
    return result


# ------------------------------------------------------------------- summary


def _split(r: dict[str, Any]) -> dict[str, float | None]:
    """CPU per request of the parent and of the workers together, in µs, and the busiest
    worker's share of the workers' CPU (``None`` for one process)."""
    each = r.get("server_cpu_s_each")
    requests = r.get("requests") or 0
    if not each or not requests:
        return {"parent_us": None, "workers_us": None, "busiest": None}
    workers = sum(each[1:])
    return {
        "parent_us": 1e6 * each[0] / requests,
        "workers_us": 1e6 * workers / requests,
        "busiest": max(each[1:]) / workers if workers else None,
    }


def _others(r: dict[str, Any]) -> float | None:
    """The machine's busy time, in % of one core, that was neither the gateway nor the load
    generator (the fake upstream, and other people's processes on a shared machine)."""
    busy, server, loadgen = (
        r.get("machine_busy_pct"),
        r.get("server_cpu_pct"),
        r.get("loadgen_cpu_pct"),
    )
    return None if busy is None or server is None or loadgen is None else busy - server - loadgen


def _not_ok(rs: Sequence[dict[str, Any]]) -> int:
    """Requests not answered 200, and measurements that broke."""
    return sum(r["requests"] - r["ok"] + sum(r["errors"].values()) for r in rs)


def _unary(rs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    splits = [_split(r) for r in rs]
    return {
        "rps": _median([r["rps"] for r in rs]),
        "p50": _median([r["latency_ms"]["p50"] for r in rs]),
        "p99": _median([r["latency_ms"]["p99"] for r in rs]),
        "cpu_us": _median([r.get("server_cpu_us_per_request") for r in rs]),
        "cpu_pct": _median([r.get("server_cpu_pct") for r in rs]),
        "parent_us": _median([s["parent_us"] for s in splits]),
        "workers_us": _median([s["workers_us"] for s in splits]),
        "busiest": [None if s["busiest"] is None else round(s["busiest"], 2) for s in splits],
        "loadgen_pct": _median([r.get("loadgen_cpu_pct") for r in rs]),
        "machine_pct": _median([r.get("machine_busy_pct") for r in rs]),
        "others_pct": _median([_others(r) for r in rs]),
        "not_ok": _not_ok(rs),
        "each_cpu_us": [r.get("server_cpu_us_per_request") for r in rs],
    }


def _best(run: dict[str, Any]) -> tuple[float | None, str | None]:
    """A repeat's most requests/s over the levels, and the level."""
    found = [(r["rps"], c) for c, r in run.get("saturation", {}).items() if r["rps"] is not None]
    return max(found, key=lambda x: x[0]) if found else (None, None)


def summarize_workers(raw: dict[str, Any]) -> dict[str, Any]:
    """Medians over repeats, per variant, and the ``w2`` ÷ ``w1`` ratios (of the medians,
    and per repeat: the two ran minutes apart in the same repeat)."""
    runs = raw["runs"]
    summary: dict[str, Any] = {"repeats": len(runs), "seconds": raw.get("seconds")}
    for v in VARIANTS:
        mine = [run[v.name] for run in runs if v.name in run]
        if not mine:
            continue
        s: dict[str, Any] = {}
        if v.at_rate:
            s["rate"] = _unary([m["rate"] for m in mine])
        if v.saturated:
            s["saturation"] = {
                c: _unary([m["saturation"][c] for m in mine if c in m.get("saturation", {})])
                for c in mine[0].get("saturation", {})
            }
            best = [_best(m) for m in mine]
            s["best_rps"] = _median([b[0] for b in best])
            s["best_each"] = [b[0] for b in best]
            s["best_levels"] = [b[1] for b in best]
        if v.sustained:
            s["sustain_max"] = _median([m["sustain_max"] for m in mine])
            s["sustain_each"] = [m["sustain_max"] for m in mine]
            passed = [t for m in mine for t in m["sustain_trials"] if t["passed"]]
            s["stream_cpu_us"] = _median([t.get("server_cpu_us_per_event") for t in passed])
        summary[v.name] = s

    def each_repeat(a: str, b: str, get: Callable[[dict[str, Any]], float | None]) -> list[Any]:
        out = []
        for run in runs:
            x = get(run[a]) if a in run else None
            y = get(run[b]) if b in run else None
            out.append(None if x is None or not y else round(x / y, 2))
        return out

    if "w1" in summary and "w2" in summary:
        summary["scaling"] = {
            "rps": _ratio(summary["w2"]["best_rps"], summary["w1"]["best_rps"]),
            "rps_each": each_repeat("w2", "w1", lambda m: _best(m)[0]),
            "sustain": _ratio(summary["w2"]["sustain_max"], summary["w1"]["sustain_max"]),
            "sustain_each": each_repeat("w2", "w1", lambda m: m["sustain_max"]),
        }
        if "w1-pinned" in summary:
            summary["scaling"]["rps_pinned"] = _ratio(
                summary["w2"]["best_rps"], summary["w1-pinned"]["best_rps"]
            )
            summary["scaling"]["rps_pinned_each"] = each_repeat(
                "w2", "w1-pinned", lambda m: _best(m)[0]
            )
    for many, one in (("w2", "w1"), ("w2-team", "w1-team")):
        if many in summary and one in summary:
            summary[f"{many}_cost"] = {
                "extra_us": _minus(summary[many]["rate"]["cpu_us"], summary[one]["rate"]["cpu_us"]),
                "ratio": _ratio(summary[many]["rate"]["cpu_us"], summary[one]["rate"]["cpu_us"]),
                "ratio_each": each_repeat(
                    many, one, lambda m: m["rate"].get("server_cpu_us_per_request")
                ),
            }
    return summary


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else round(a / b, 3)


# --------------------------------------------------------------------- table


def _x(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}×"


def _list(values: Sequence[Any], fmt: Callable[[Any], str] = str) -> str:
    return ", ".join("—" if v is None else fmt(v) for v in values)


def workers_table(raw: dict[str, Any]) -> str:
    """Scenario 9's two tables and their notes, or ``""`` when the run had no numbers."""
    s = raw.get("summary", {}).get(KEY)
    if not s:
        return ""
    lines: list[str] = []
    cores = 100 * int(raw["pinning"].get("cpus") or 1)
    if "scaling" in s:
        lines += [*_scaling_table(s, cores), ""]
    lines += _cost_table(s, raw[KEY], cores)
    lines += [
        "",
        (
            f"Scenario {NUMBER}: medians of {s['repeats']} repeats ({s['seconds']} s in all), "
            "the variants in a rotating order, a fresh gateway each. The gateways are not "
            "pinned (every CPU) but for the one said to be; the fake upstream and the load "
            f"generator run on CPU {raw['pinning']['upstream_and_loadgen']}, so with two cores "
            "they share one with the gateway. Server CPU sums utime+stime over the gateway's processes (the "
            "parent and every worker) in the measured window; the whole machine's busy time "
            "(/proc/stat, same window) includes the load generator, the fake upstream and "
            "anything else that ran."
        ),
    ]
    return "\n".join(lines) + "\n"


def _scaling_table(s: dict[str, Any], cores: int) -> list[str]:
    """9a: ``w1`` beside ``w2`` at saturation and sustained streams, and their ratio; and
    ``w1-pinned`` with its ratio, when it ran."""
    one, two, scaling = s["w1"], s["w2"], s["scaling"]
    pinned = s.get("w1-pinned")
    rows: list[list[str]] = []

    def row(label: str, a: str, b: str, ratio: str = "", p: str = "—", ratio_p: str = "") -> None:
        rows.append([label, a, b, ratio, *([p, ratio_p] if pinned else [])])

    def share(x: float) -> str:
        return f"{100 * x:.0f} %"

    def each(values: list[Any], digits: str) -> str:
        return _list(values, lambda x: f"{x:{digits}}")

    for c, a in one["saturation"].items():
        b = two["saturation"].get(c)
        if b is None:
            continue
        p = pinned["saturation"].get(c, {}) if pinned else {}  # no numbers: "—" cells
        row(
            f"closed loop, c={c}: requests/s",
            _f(a["rps"], 0),
            _f(b["rps"], 0),
            _x(_ratio(b["rps"], a["rps"])),
            _f(p.get("rps"), 0),
            _x(_ratio(b["rps"], p.get("rps"))),
        )
        row(
            "   p50 / p99 ms",
            _pair(a["p50"], a["p99"]),
            _pair(b["p50"], b["p99"]),
            "",
            _pair(p.get("p50"), p.get("p99")),
        )
        row(
            "   server CPU per request, µs (all processes)",
            _f(a["cpu_us"], 0),
            _f(b["cpu_us"], 0),
            _x(_ratio(b["cpu_us"], a["cpu_us"])),
            _f(p.get("cpu_us"), 0),
            _x(_ratio(b["cpu_us"], p.get("cpu_us"))),
        )
        row("   of which the parent, µs", "—", _f(b["parent_us"], 0))
        row(
            "   server CPU, % of one core",
            _f(a["cpu_pct"], 0),
            _f(b["cpu_pct"], 0),
            "",
            _f(p.get("cpu_pct"), 0),
        )
        row(
            "   busiest worker's share of the workers' CPU, each repeat",
            "—",
            _list(b["busiest"], share),
        )
        row(
            "   load generator CPU, % of one core",
            _f(a["loadgen_pct"], 0),
            _f(b["loadgen_pct"], 0),
            "",
            _f(p.get("loadgen_pct"), 0),
        )
        row(
            f"   the whole machine busy, % of one core (of {cores})",
            _f(a.get("machine_pct"), 0),
            _f(b.get("machine_pct"), 0),
            "",
            _f(p.get("machine_pct"), 0),
        )
    row(
        "**best requests/s** over those levels (each repeat)",
        f"{_f(one['best_rps'], 0)} ({each(one['best_each'], ',.0f')})",
        f"{_f(two['best_rps'], 0)} ({each(two['best_each'], ',.0f')})",
        f"**{_x(scaling['rps'])}** ({each(scaling['rps_each'], '.2f')})",
        f"{_f(pinned['best_rps'], 0)} ({each(pinned['best_each'], ',.0f')})" if pinned else "",
        f"**{_x(scaling['rps_pinned'])}** ({each(scaling['rps_pinned_each'], '.2f')})"
        if pinned
        else "",
    )
    row(
        "**sustained streams**, 20 ms pacing, no gap > 200 ms (each repeat)",
        f"{_f(one['sustain_max'], 0)} ({_list(one['sustain_each'])})",
        f"{_f(two['sustain_max'], 0)} ({_list(two['sustain_each'])})",
        f"**{_x(scaling['sustain'])}** ({each(scaling['sustain_each'], '.2f')})",
    )
    row(
        "   server CPU per streamed event, µs (all processes; runs that passed)",
        _f(one["stream_cpu_us"], 0),
        _f(two["stream_cpu_us"], 0),
        _x(_ratio(two["stream_cpu_us"], one["stream_cpu_us"])),
    )
    head = [
        f"scenario {NUMBER}a: what a second worker buys",
        "workers = 1",
        "workers = 2",
        "2 ÷ 1 (each repeat)",
    ]
    if pinned:
        head += ["workers = 1 pinned to the last CPU (as scenario 1)", "2 ÷ 1 pinned (each repeat)"]
    return _md(head, rows)


def _cost_table(s: dict[str, Any], w: dict[str, Any], cores: int) -> list[str]:
    """9b: every variant at the fixed rate: CPU per request, and against one worker."""
    columns = [v for v in VARIANTS if v.name in s and v.at_rate]
    rows: list[list[str]] = []

    def row(label: str, cell: Callable[[Variant, dict[str, Any]], str]) -> None:
        rows.append([label, *(cell(v, s[v.name]["rate"]) for v in columns)])

    def many(cell: Callable[[dict[str, Any]], str]) -> Callable[[Variant, dict[str, Any]], str]:
        """``cell`` for a variant with workers, ``—`` for one process."""
        return lambda v, r: cell(r) if v.workers > 1 else "—"

    def cost(v: Variant, r: dict[str, Any]) -> str:
        c = s.get(f"{v.name}_cost")
        if c is None:
            return "—"
        each = _list(c["ratio_each"], lambda x: f"{x:.2f}")
        return f"+{_f(c['extra_us'], 0)} µs, {_x(c['ratio'])} ({each})".replace("+-", "−")

    row("requests/s achieved", lambda v, r: _f(r["rps"], 0))
    row("p50 / p99 ms", lambda v, r: _pair(r["p50"], r["p99"]))
    row("requests not answered 200", lambda v, r: str(r["not_ok"]))
    row("**server CPU per request, µs** (all processes)", lambda v, r: f"**{_f(r['cpu_us'], 0)}**")
    row("   each repeat", lambda v, r: _list(r["each_cpu_us"], lambda x: f"{x:,.0f}"))
    row("   of which the parent", many(lambda r: _f(r["parent_us"], 0)))
    row("   of which the workers", many(lambda r: _f(r["workers_us"], 0)))
    row(
        "   busiest worker's share of the workers' CPU, each repeat",
        many(lambda r: _list(r["busiest"], lambda x: f"{100 * x:.0f} %")),
    )
    row("CPU per request against one worker with the same teams (ratio each repeat)", cost)
    row(
        f"the whole machine busy, % of one core (of {cores})",
        lambda v, r: _f(r.get("machine_pct"), 0),
    )
    head = [
        f"scenario {NUMBER}b: {w['rate']:g} requests/s over {w['rate_connections']} connections",
        *(v.label for v in columns),
    ]
    return _md(head, rows)


def _md(head: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
        *("| " + " | ".join(r) + " |" for r in rows),
    ]
