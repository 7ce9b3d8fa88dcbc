"""Turn a benchmark ``results.json`` into ``results.md`` (the table) and ``bench.png``.

Re-render an old run: ``bench/.venv/bin/python bench/report.py bench/results/TIME``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from messages_scenario import DIALECT_SCENARIOS, _f, messages_table
from workers_scenario import workers_table
from ws_scenario import websocket_table

ORDER = ("direct", "trio-gateway", "nginx", "litellm", "asgi-floor", "quart-floor", "httpx-floor")
LABELS = {
    "direct": "direct",
    "trio-gateway": "trio-gateway",
    "nginx": "nginx",
    "litellm": "LiteLLM",
    "asgi-floor": "hypercorn alone",
    "quart-floor": "quart-trio alone",
    "httpx-floor": "quart-trio + httpx",
}
COLORS = {
    "direct": "#555555",
    "trio-gateway": "#1f77b4",
    "nginx": "#2ca02c",
    "litellm": "#d62728",
    "asgi-floor": "#17becf",
    "quart-floor": "#9467bd",
    "httpx-floor": "#8c564b",
}


def _added(value: float | None, base: float | None) -> float | None:
    return None if value is None or base is None else value - base


def _pair(a: float | None, b: float | None, sign: bool = False) -> str:
    fmt = (lambda v: ("+" if v is not None and v >= 0 else "") + _f(v)) if sign else _f
    return f"{fmt(a)} / {fmt(b)}"


def _mark(ok: bool | None) -> str:
    return "—" if ok is None else ("met" if ok else "**missed**")


def table(raw: dict[str, Any]) -> str:
    s = raw["summary"]
    targets = [t for t in ORDER if t in s]
    versions = raw["versions"]
    head_names = {
        "direct": "direct",
        "trio-gateway": f"trio-gateway ({versions.get('trio-gateway', '?')})",
        "nginx": f"nginx {versions.get('nginx', '?').split('/')[-1]} (1 worker)",
        "litellm": f"LiteLLM {versions.get('litellm (litellm venv)', '?')} (1 worker)",
        "asgi-floor": "hypercorn + bare ASGI app alone (no upstream call)",
        "quart-floor": "quart-trio alone (no upstream call)",
        "httpx-floor": "quart-trio + httpx relay (no gateway code)",
    }
    d = s.get("direct")
    g = s.get("trio-gateway")
    ll = s.get("litellm")
    rows: list[list[str]] = []

    def has(key: str) -> bool:
        return bool(targets) and all(key in s[t] for t in targets)

    def row(label: str, cells: dict[str, str], goal: str = "", verdict: str = "") -> None:
        rows.append([label, *(cells.get(t, "—") for t in targets), goal, verdict])

    if has("unary"):
        levels = [int(c) for c in raw["plan"]["unary_levels"]]
        for c in (1, 16, 64):
            if c not in levels:
                continue
            key = str(c)
            row(
                f"1. non-stream c={c}: p50 / p99 ms",
                {t: _pair(s[t]["unary"][key]["p50"], s[t]["unary"][key]["p99"]) for t in targets},
            )
            cells = {}
            for t in targets:
                if t == "direct" or d is None:
                    continue
                cells[t] = _pair(
                    _added(s[t]["unary"][key]["p50"], d["unary"][key]["p50"]),
                    _added(s[t]["unary"][key]["p99"], d["unary"][key]["p99"]),
                    True,
                )
            goal, verdict = "", ""
            if g is not None and d is not None and c == 1:
                added = _added(g["unary"][key]["p50"], d["unary"][key]["p50"])
                goal, verdict = "added p50 ≤ 1.5 ms", _mark(None if added is None else added <= 1.5)
            if g is not None and d is not None and ll is not None and c == 64:
                ga = _added(g["unary"][key]["p99"], d["unary"][key]["p99"])
                la = _added(ll["unary"][key]["p99"], d["unary"][key]["p99"])
                goal = f"added p99 ≤ ⅕ of LiteLLM's ({_f(None if la is None else la / 5)} ms)"
                verdict = _mark(None if ga is None or la is None else ga <= la / 5)
            row(f"   added vs direct, c={c}: p50 / p99 ms", cells, goal, verdict)
            row(f"   req/s at c={c}", {t: _f(s[t]["unary"][key]["rps"], 0) for t in targets})
            row(
                f"   server CPU per request at c={c}, µs",
                {t: _f(s[t]["unary"][key].get("cpu_us"), 0) for t in targets},
            )
    if has("stream"):
        row(
            "2. stream c=1: time to first event p50 / p99 ms",
            {t: _pair(s[t]["stream"]["ttft_p50"], s[t]["stream"]["ttft_p99"]) for t in targets},
        )
        cells = {}
        for t in targets:
            if t != "direct" and d is not None:
                cells[t] = _pair(
                    _added(s[t]["stream"]["ttft_p50"], d["stream"]["ttft_p50"]),
                    _added(s[t]["stream"]["ttft_p99"], d["stream"]["ttft_p99"]),
                    True,
                )
        verdict = ""
        if g is not None and d is not None:
            added = _added(g["stream"]["ttft_p50"], d["stream"]["ttft_p50"])
            verdict = _mark(None if added is None else added <= 2.0)
        row("   added TTFT p50 / p99 ms", cells, "added p50 ≤ 2 ms", verdict)
        row(
            "   inter-chunk p50 / p99 ms (upstream: 20 ms)",
            {t: _pair(s[t]["stream"]["inter_p50"], s[t]["stream"]["inter_p99"]) for t in targets},
        )
        cells = {}
        for t in targets:
            if t != "direct" and d is not None:
                cells[t] = "+" + _f(_added(s[t]["stream"]["inter_p99"], d["stream"]["inter_p99"]))
                cells[t] = cells[t].replace("+-", "−")
        verdict = ""
        if g is not None and d is not None:
            added = _added(g["stream"]["inter_p99"], d["stream"]["inter_p99"])
            verdict = _mark(None if added is None else added <= 1.0)
        row("   added inter-chunk p99 ms", cells, "≤ 1 ms", verdict)
        row(
            "   deltas coalesced into one read / deltas (missing)",
            {
                t: f"{s[t]['stream']['coalesced']} / {s[t]['stream']['deltas']} "
                f"({s[t]['stream']['missing']})"
                for t in targets
            },
            "zero coalescing",
            _mark(
                None if g is None else g["stream"]["coalesced"] == 0 and g["stream"]["missing"] == 0
            ),
        )
    if has("sustain_max"):
        cap = raw["plan"]["sustain_cap"]
        row(
            f"3. sustained streams, 20 ms pacing, no gap > 200 ms (cap {cap:,})",
            {
                t: f"{_f(s[t]['sustain_max'], 0)} ({', '.join(str(x) for x in s[t]['sustain_each'])})"
                for t in targets
            },
            "≥ 1,000 per process",
            _mark(None if g is None or g["sustain_max"] is None else g["sustain_max"] >= 1000),
        )
        row(
            "   server CPU per streamed event, µs (sustained runs that passed)",
            {t: _f(s[t].get("stream_cpu_us"), 0) for t in targets},
        )
    idle = s.get("idle")
    if idle is not None:
        label = (
            f"4. idle streams: {idle['streams']:,} × {idle['prefill_s']:g} s prefill, "
            f"1 s heartbeats"
        )
        opened = (
            f"all open in {_f(idle['opened_in_s'], 1)} s"
            if idle["all_opened"]
            else f"only {_f(idle['opened'], 0)} opened"
        )
        cell = (
            f"RSS {_f(idle['rss_per_stream_kib'], 1)} KiB/stream (slope "
            f"{_f(idle['rss_slope_kib'], 1)}), CPU {_f(idle['cpu_steady_pct'], 0)} % "
            f"while all idle; heartbeat lateness p50 / p99 "
            f"{_pair(idle['lateness_p50'], idle['lateness_p99'])} ms; {opened}; "
            f"{idle['errors']} errors, {idle['missing']} deltas missing"
        )
        ok = (
            idle["rss_per_stream_kib"] is not None
            and idle["rss_per_stream_kib"] <= 32
            and idle["lateness_p99"] is not None
            and idle["lateness_p99"] <= 100
        )
        row(label, {"trio-gateway": cell}, "≤ 32 KiB/stream; lateness p99 ≤ 100 ms", _mark(ok))
    if has("throughput"):
        cells = {}
        for t in targets:
            rps, c = s[t]["throughput"]
            cells[t] = "—" if rps is None else f"{_f(rps, 0)} (c={c})"
        row("5. max non-stream req/s with p99 ≤ 50 ms", cells)

    header = ["scenario", *(head_names[t] for t in targets), "goal (trio-gateway)", ""]
    lines: list[str] = []
    if rows:
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
    extras = [messages_table(raw, dialect) for dialect in DIALECT_SCENARIOS.values()]
    for extra in [*extras, websocket_table(raw), workers_table(raw)]:
        if extra:
            lines += [""] if lines else []
            lines.append(extra.rstrip("\n"))
    plan = raw["plan"]
    pin = raw["pinning"]
    la = raw["load_average"]
    idle_repeats = f" ({plan['idle_repeats']} for scenario 4)" if "idle" in s else ""
    loads = [r["load_average"][0] for runs in raw["runs"].values() for r in runs]
    between = f"; 1-minute load {min(loads)}–{max(loads)} between repeats" if loads else ""
    unpinned = " (scenario 9's gateways: not pinned)" if "workers" in s else ""
    notes = [
        "",
        (
            "Server CPU = the serving process's utime+stime over the measured window (nginx: "
            "its worker; direct: the fake upstream), divided by the requests or SSE events it "
            "served: unlike latency it barely depends on what else the machine runs."
        ),
        "",
        (
            f"Medians of {plan['repeats']} interleaved repeats{idle_repeats}; 'added' = "
            f"target's median − direct's median. Server under test "
            f"pinned to CPU {pin['server_under_test']}{unpinned}, fake upstream and load "
            f"generator to CPU {pin['upstream_and_loadgen']} ({pin['cpus']} CPUs). Load "
            "average at start "
            f"{la['start']}, at end {la.get('end')}{between}. Started {raw['started']}."
        ),
        f"Command: `{raw['command']}`.",
    ]
    return "\n".join(lines + notes) + "\n"


def plot(raw: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = raw["summary"]
    targets = [t for t in ORDER if t in s]
    levels = [int(c) for c in raw["plan"]["unary_levels"]]
    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
    ax = axes[0][0]
    for t in targets:
        p50 = [s[t]["unary"][str(c)]["p50"] for c in levels]
        p99 = [s[t]["unary"][str(c)]["p99"] for c in levels]
        ax.plot(levels, p50, "o-", color=COLORS[t], label=f"{LABELS[t]} p50")
        ax.plot(levels, p99, "s--", color=COLORS[t], alpha=0.6, label=f"{LABELS[t]} p99")
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="concurrency",
        ylabel="latency, ms",
        title="1. non-streaming latency",
    )
    ax.axhline(50, color="black", lw=0.6, ls=":")
    ax.legend(fontsize=7, ncol=2)
    ax = axes[0][1]
    for t in targets:
        rps = [s[t]["unary"][str(c)]["rps"] for c in levels]
        ax.plot(levels, rps, "o-", color=COLORS[t], label=LABELS[t])
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="concurrency",
        ylabel="requests/s",
        title="5. non-streaming throughput",
    )
    ax.legend(fontsize=8)
    ax = axes[1][0]
    width = 0.8 / len(targets)
    metrics = [
        ("ttft_p50", "TTFT p50"),
        ("ttft_p99", "TTFT p99"),
        ("inter_p99", "inter-chunk p99 − 20"),
    ]
    for i, t in enumerate(targets):
        values = []
        for key, _ in metrics:
            v = s[t]["stream"][key]
            if v is not None and key == "inter_p99":
                v = max(v - 20.0, 0.001)
            values.append(v or 0.001)
        ax.bar(
            [x + i * width for x in range(len(metrics))],
            values,
            width,
            color=COLORS[t],
            label=LABELS[t],
        )
    ax.set_xticks(
        [x + width * (len(targets) - 1) / 2 for x in range(len(metrics))],
        [label for _, label in metrics],
    )
    ax.set(yscale="log", ylabel="ms", title="2. streaming at c=1 (64 deltas, 20 ms apart)")
    ax.legend(fontsize=8)
    ax = axes[1][1]
    values = [s[t]["sustain_max"] or 0 for t in targets]
    bars = ax.bar([LABELS[t] for t in targets], values, color=[COLORS[t] for t in targets])
    ax.bar_label(bars, [f"{v:,.0f}" for v in values], fontsize=8)
    ax.axhline(1000, color="black", lw=0.6, ls=":")
    ax.set(ylabel="concurrent streams", title="3. sustained streams (every delta, no gap > 200 ms)")
    fig.suptitle(
        f"trio-gateway benchmarks, {raw['started']} (load average {raw['load_average']['start']})",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_report(raw: dict[str, Any], folder: Path) -> None:
    """``results.md`` always; ``bench.png`` when the run had scenarios 1-3 (the plot's)."""
    (folder / "results.md").write_text(table(raw))
    s = raw["summary"]
    targets = [t for t in ORDER if t in s]
    if targets and all({"unary", "stream", "sustain_max"} <= s[t].keys() for t in targets):
        plot(raw, folder / "bench.png")


if __name__ == "__main__":
    folder = Path(sys.argv[1])
    write_report(json.loads((folder / "results.json").read_text()), folder)
    print((folder / "results.md").read_text())
