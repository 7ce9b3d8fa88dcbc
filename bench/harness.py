"""Run every benchmark scenario against every target, side by side, and write the results.

Targets, all in front of the same fake upstream (``upstream.py``, its own process):

* ``direct`` — the load generator talks to the upstream itself: the physical limit.
* ``trio-gateway`` — ``gateway serve`` with a bench config (``bench/gateway.toml``).
* ``nginx`` — Debian's nginx, one worker, ``proxy_buffering off``.
* ``litellm`` — LiteLLM's proxy, pinned, one worker, its production settings.

Scenarios (``--scenarios``, all by default): ``unary`` (1, and 5 from its numbers),
``stream`` (2), ``sustain`` (3), ``idle`` (4, trio-gateway only), ``messages`` (6: Anthropic
Messages beside chat, direct and trio-gateway only; ``messages_scenario.py``), ``responses``
(7: OpenAI Responses beside chat, the same way), ``websocket`` (8: Responses turns over one
WebSocket beside SSE, direct's SSE as the baseline; ``ws_scenario.py``), ``workers`` (9:
``[server] workers`` 1 against 2, trio-gateway only, its own unpinned gateways;
``workers_scenario.py``).

Pinning: with two or more CPUs the server under test runs on the last CPU, the upstream and
the load generator on the others (CPU 0). Each scenario is repeated (``--repeats``, in a
rotating target order) and the medians are reported. Run through ``bench/run``; the results
go to ``bench/results/<time>/`` (JSON, Markdown, PNG) and are copied to ``bench/latest/``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from messages_scenario import (
    DIALECT_SCENARIOS,
    run_messages,
    summarize_messages,
    unary_closed_loop,
)
from run_facts import load_average, versions
from servers import (
    BENCH,
    PY,
    Server,
    cpu_plan,
    preexec,
    start_floor,
    start_gateway,
    start_litellm,
    start_nginx,
    start_upstream,
)
from workers_scenario import run_workers, summarize_workers
from ws_scenario import run_websocket, summarize_websocket

TARGETS = ("direct", "trio-gateway", "nginx", "litellm")
# Optional references (--targets ...,asgi-floor,quart-floor,httpx-floor): the gateway's stack
# without the gateway, to tell framework cost from ours (floor_app.py).
FLOORS = ("asgi-floor", "quart-floor", "httpx-floor")
SCENARIOS = (
    "unary",
    "stream",
    "sustain",
    "idle",
    "messages",
    "responses",
    "websocket",
    "workers",
)
# Scenarios run by run_target on each target (the others start gateways of their own).
PER_TARGET = ("unary", "stream", "sustain", *DIALECT_SCENARIOS, "websocket")
# Scenarios run alone on direct and trio-gateway whose results go to bench/latest/KEY.*
SINGLE_LATEST = (*DIALECT_SCENARIOS, "websocket")
# ... and those run alone on trio-gateway.
GATEWAY_LATEST = ("workers",)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def loadgen(
    cpus: set[int], server: Server, scenario: str, *args: str, timeout: float = 600
) -> dict[str, Any]:
    cmd = [PY, str(BENCH / "loadgen.py"), scenario, "--port", str(server.port), *args]
    if server.key:
        cmd += ["--key", server.key]
    if "--pid" not in args:
        cmd += ["--pid", str(server.pid)]
        for pid in server.workers:
            cmd += ["--also-pid", str(pid)]
    if server.name == "upstream" and "--path" not in args:
        cmd += ["--path", "/v1/chat/completions"]
    try:
        done = subprocess.run(
            cmd,
            capture_output=True,
            timeout=timeout,
            check=False,
            preexec_fn=preexec(cpus),
        )
        if done.returncode != 0:
            raise RuntimeError(f"exit {done.returncode}: {done.stderr.decode()[-1000:]}")
        result: dict[str, Any] = json.loads(done.stdout)
    except (subprocess.TimeoutExpired, RuntimeError, ValueError) as exc:
        # One broken measurement must not lose the run: record it and go on.
        log(f"  loadgen {scenario} on {server.name} failed: {exc}")
        return _failed(scenario, str(exc))
    return result


def _failed(scenario: str, error: str) -> dict[str, Any]:
    """A result of the usual shape with no numbers, for a measurement that broke."""
    empty = {"n": 0, "p50": None, "p90": None, "p99": None, "max": None}
    return {
        "scenario": scenario,
        "error": error[:2000],
        "errors": {"harness: " + error[:100]: 1},
        "requests": 0,
        "ok": 0,
        "rps": None,
        "latency_ms": empty,
        "streams": 0,
        "ttft_ms": empty,
        "inter_chunk_ms": empty,
        "coalesced": 0,
        "missing": 0,
        "reordered": 0,
        "incomplete": 0,
        "failed": 1,
        "passed": False,
        "max_silence_ms": None,
    }


# ------------------------------------------------------------------ scenarios


@dataclass(frozen=True)
class Plan:
    repeats: int
    unary_levels: tuple[int, ...]
    unary_duration: float
    stream_count: int
    stream_tokens: int
    sustain_tokens: int
    sustain_start: int
    sustain_cap: int
    idle_streams: int
    idle_prefill: float
    idle_repeats: int
    messages_streams: int  # scenarios 6, 7 and 8's load: this many streams of sustain_tokens deltas
    ws_turns: int = 20  # scenario 8: turns of stream_tokens deltas, one after another
    ws_load_turns: int = 4  # scenario 8's load: turns per connection, one after another
    workers_rate: float = 200.0  # scenario 9: the fixed rate, requests/s (non-saturating)
    workers_rate_duration: float = 5.0  # s at that rate, after 1 s of warm-up
    workers_levels: tuple[int, ...] = (16, 64)  # scenario 9's closed-loop concurrencies
    workers_budget_s: float = 420.0  # scenario 9 starts no repeat that would not fit


QUICK = Plan(
    1,
    (1, 16, 64),
    1.0,
    3,
    16,
    16,
    20,
    200,
    200,
    6.0,
    1,
    20,
    ws_turns=3,
    ws_load_turns=2,
    workers_rate_duration=1.0,
    workers_levels=(16,),
)
# Scenario 4 runs 1,000 streams, not the 10,000: on this two-core machine the gateway
# cannot open 2,000 streams within a 40 s prefill (see bench/README.md); --idle-streams
# 10000 asks for the full size.
FULL = Plan(3, (1, 4, 16, 64), 3.0, 10, 64, 75, 50, 2000, 1_000, 60.0, 3, 50)


def sustain_search(
    cpus: set[int], server: Server, plan: Plan, hint: int | None, trials: list[dict[str, Any]]
) -> int:
    """The largest number of concurrent streams that pass (doubling, then bisection; a
    later repeat starts from the previous repeat's answer)."""

    def passes(n: int) -> bool:
        result = loadgen(
            cpus,
            server,
            "sustain",
            "--streams",
            str(n),
            "--tokens",
            str(plan.sustain_tokens),
            "--ramp",
            "1.0",
        )
        trials.append(result)
        log(
            f"  sustain {server.name} n={n}: {'pass' if result['passed'] else 'FAIL'} "
            f"(max silence {result['max_silence_ms']} ms, missing {result['missing']}, "
            f"failed {result['failed']})"
        )
        time.sleep(1.0)  # let closed connections settle
        return bool(result["passed"])

    good, bad = 0, None
    n = min(hint or plan.sustain_start, plan.sustain_cap)
    while True:
        if passes(n):
            good = n
            if n >= plan.sustain_cap:
                return good
            n = min(plan.sustain_cap, n * 2 if hint is None else int(n * 1.25) + 1)
            if bad is not None and n >= bad:
                break
        else:
            bad = n
            if n <= 1:
                return 0
            if good:
                break
            n = max(1, n // 2 if hint is None else int(n * 0.8))
    # bisect between good and bad, to within ~10 %
    assert bad is not None
    while bad - good > max(1, good // 10):
        mid = (good + bad) // 2
        if passes(mid):
            good = mid
        else:
            bad = mid
    return good


def run_target(
    cpus: set[int],
    target: str,
    server: Server,
    plan: Plan,
    hint: int | None,
    scenarios: tuple[str, ...],
    repeat: int,
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "unary" in scenarios:
        out["unary"] = run_unary_levels(cpus, server, plan)
    if "stream" in scenarios:
        out["stream"] = run_stream_c1(cpus, server, plan)
    if "sustain" in scenarios:
        out["sustain_trials"] = []
        out["sustain_max"] = sustain_search(cpus, server, plan, hint, out["sustain_trials"])
    for key, dialect in DIALECT_SCENARIOS.items():
        if key in scenarios:
            measure = partial(loadgen, cpus, server)
            out[key] = run_messages(target, measure, plan, repeat, log, dialect)
    if "websocket" in scenarios:
        out["websocket"] = run_websocket(target, partial(loadgen, cpus, server), plan, repeat, log)
    return out


def run_unary_levels(cpus: set[int], server: Server, plan: Plan) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for c in plan.unary_levels:
        r = loadgen(cpus, server, *unary_closed_loop(c, plan.unary_duration))
        out[str(c)] = r
        log(
            f"  unary {server.name} c={c}: p50 {r['latency_ms']['p50']} p99 "
            f"{r['latency_ms']['p99']} ms, {r['rps']} req/s, errors {r['errors'] or 0}"
        )
    return out


def run_stream_c1(cpus: set[int], server: Server, plan: Plan) -> dict[str, Any]:
    r = loadgen(
        cpus,
        server,
        "stream",
        "--concurrency",
        "1",
        "--count",
        str(plan.stream_count),
        "--tokens",
        str(plan.stream_tokens),
    )
    log(
        f"  stream {server.name}: ttft p50 {r['ttft_ms']['p50']} inter p99 "
        f"{r['inter_chunk_ms']['p99']} ms, coalesced {r['coalesced']}, missing {r['missing']}"
    )
    return r


def run_idle(
    cpus_server: set[int], cpus_load: set[int], workdir: Path, upstream: Server, plan: Plan
) -> dict[str, Any]:
    """A fresh gateway per run, so its RSS baseline is a clean process."""
    gateway = start_gateway(cpus_server, workdir, upstream.port, tag="-idle")
    try:
        # warm the code paths (imports, pools) before the baseline sample
        loadgen(cpus_load, gateway, "stream", "--count", "2", "--tokens", "4")
        time.sleep(1.0)
        return loadgen(
            cpus_load,
            gateway,
            "idle",
            "--model",
            "bench-idle",
            "--streams",
            str(plan.idle_streams),
            "--prefill",
            str(plan.idle_prefill),
            "--interval",
            "1",
            "--tokens",
            "4",
            "--pid",
            str(gateway.pid),
            "--opening",
            "64",
            timeout=plan.idle_prefill * 3 + 300,
        )
    finally:
        gateway.stop()


# ------------------------------------------------------------------- versions


# ------------------------------------------------------------------- summary


def median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 4) if present else None


def summarize(raw: dict[str, Any], plan: Plan) -> dict[str, Any]:
    """Medians over repeats of each target's numbers."""
    summary: dict[str, Any] = {}
    for target, runs in raw["runs"].items():
        s: dict[str, Any] = {}
        if runs and "unary" in runs[0]:
            s["unary"] = {}
            for c in plan.unary_levels:
                key = str(c)
                rs = [r["unary"][key] for r in runs]
                s["unary"][key] = {
                    "p50": median([r["latency_ms"]["p50"] for r in rs]),
                    "p99": median([r["latency_ms"]["p99"] for r in rs]),
                    "rps": median([r["rps"] for r in rs]),
                    "cpu_us": median([r.get("server_cpu_us_per_request") for r in rs]),
                    "errors": sum(sum(r["errors"].values()) for r in rs)
                    + sum(r["requests"] - r["ok"] for r in rs),
                }
            ok = [
                (s["unary"][str(c)]["rps"], c)
                for c in plan.unary_levels
                if s["unary"][str(c)]["p99"] is not None and s["unary"][str(c)]["p99"] <= 50
            ]
            s["throughput"] = max(ok) if ok else (None, None)
        if runs and "stream" in runs[0]:
            streams = [r["stream"] for r in runs]
            s["stream"] = {
                "ttft_p50": median([r["ttft_ms"]["p50"] for r in streams]),
                "ttft_p99": median([r["ttft_ms"]["p99"] for r in streams]),
                "inter_p50": median([r["inter_chunk_ms"]["p50"] for r in streams]),
                "inter_p99": median([r["inter_chunk_ms"]["p99"] for r in streams]),
                "coalesced": sum(r["coalesced"] for r in streams),
                "deltas": sum(r["inter_chunk_ms"]["n"] + r["streams"] for r in streams),
                "missing": sum(r["missing"] for r in streams),
            }
        if runs and "sustain_trials" in runs[0]:
            passed = [t for r in runs for t in r["sustain_trials"] if t["passed"]]
            s["stream_cpu_us"] = median([t.get("server_cpu_us_per_event") for t in passed])
            s["sustain_max"] = median([r["sustain_max"] for r in runs])
            s["sustain_each"] = [r["sustain_max"] for r in runs]
        for key in DIALECT_SCENARIOS:
            if any(r.get(key) for r in runs):
                s[key] = summarize_messages([r[key] for r in runs if r.get(key)])
        if any(r.get("websocket") for r in runs):
            s["websocket"] = summarize_websocket(
                [r["websocket"] for r in runs if r.get("websocket")]
            )
        summary[target] = s
    if raw.get("workers"):
        summary["workers"] = summarize_workers(raw["workers"])
    idle = raw.get("idle") or []
    if idle:
        summary["idle"] = {
            "streams": idle[0]["concurrent"],
            "prefill_s": idle[0]["prefill_s"],
            "all_opened": all(r["all_opened"] for r in idle),
            "opened_in_s": median([r["opened_in_s"] for r in idle]),
            "opened": median([r["opened"] for r in idle]),
            "rss_per_stream_kib": median(
                [r.get("server", {}).get("rss_per_stream_kib") for r in idle]
            ),
            "rss_slope_kib": median([r.get("server", {}).get("rss_slope_kib") for r in idle]),
            "errors": sum(sum(r["errors"].values()) for r in idle),
            "cpu_steady_pct": median([r.get("server", {}).get("cpu_steady_pct") for r in idle]),
            "lateness_p50": median([r["lateness_ms"]["p50"] for r in idle]),
            "lateness_p99": median([r["lateness_ms"]["p99"] for r in idle]),
            "lateness_steady_p99": median([r["lateness_steady_ms"]["p99"] for r in idle]),
            "lateness_max": median([r["lateness_ms"]["max"] for r in idle]),
            "missing": sum(r["missing"] for r in idle),
            "failed": sum(r["failed"] for r in idle),
        }
    return summary


# ------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny counts: a smoke test")
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--repeats", type=int)
    parser.add_argument("--idle-streams", type=int)
    parser.add_argument("--idle-prefill", type=float)
    parser.add_argument("--no-idle", action="store_true", help="the same as leaving out idle")
    parser.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help=f"which to run, comma-separated (default: all of {','.join(SCENARIOS)})",
    )
    parser.add_argument("--out", type=Path, help="results folder (default bench/results/TIME)")
    args = parser.parse_args()

    plan = QUICK if args.quick else FULL
    overrides = {
        "repeats": args.repeats,
        "idle_streams": args.idle_streams,
        "idle_prefill": args.idle_prefill,
        "idle_repeats": args.repeats,
    }
    plan = Plan(**{**plan.__dict__, **{k: v for k, v in overrides.items() if v is not None}})
    targets = [t for t in args.targets.split(",") if t]
    scenarios = tuple(x for x in args.scenarios.split(",") if x)
    unknown = sorted(set(scenarios) - set(SCENARIOS))
    if unknown:
        parser.error(f"unknown scenarios {unknown}: choose from {','.join(SCENARIOS)}")
    if args.no_idle:
        scenarios = tuple(x for x in scenarios if x != "idle")
    workdir = args.out or BENCH / "results" / time.strftime("%Y%m%d-%H%M%S")
    workdir.mkdir(parents=True, exist_ok=True)
    server_cpus, load_cpus = cpu_plan()
    log(
        f"results in {workdir}; server under test on CPU {sorted(server_cpus)}, "
        f"upstream + load generator on CPU {sorted(load_cpus)}"
    )

    raw: dict[str, Any] = {
        "command": " ".join(["bench/run", *sys.argv[1:]]),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "plan": plan.__dict__,
        "scenarios": list(scenarios),
        "pinning": {
            "server_under_test": sorted(server_cpus),
            "upstream_and_loadgen": sorted(load_cpus),
            "cpus": os.cpu_count(),
        },
        "versions": versions(),
        "load_average": {"start": load_average()},
        "runs": {t: [] for t in targets},
    }
    upstream = start_upstream(load_cpus, workdir)
    servers: dict[str, Server] = {"direct": upstream}
    try:
        starters: dict[str, Callable[[set[int], Path, int], Server]] = {
            "trio-gateway": start_gateway,
            "nginx": start_nginx,
            "litellm": start_litellm,
            "asgi-floor": partial(start_floor, "asgi"),
            "quart-floor": partial(start_floor, "quart"),
            "httpx-floor": partial(start_floor, "httpx"),
        }
        per_target = any(x in PER_TARGET for x in scenarios)
        for name in targets:
            if name in starters and per_target:
                log(f"starting {name}")
                servers[name] = starters[name](server_cpus, workdir, upstream.port)
        hints: dict[str, int | None] = {t: None for t in targets}
        for repeat in range(plan.repeats if per_target else 0):
            order = targets[repeat % len(targets) :] + targets[: repeat % len(targets)]
            for name in order:
                log(f"repeat {repeat + 1}/{plan.repeats}: {name} (load {load_average()})")
                result = run_target(
                    load_cpus, name, servers[name], plan, hints[name], scenarios, repeat
                )
                result["load_average"] = load_average()
                hints[name] = result.get("sustain_max") or None
                raw["runs"][name].append(result)
                (workdir / "partial.json").write_text(json.dumps(raw))
        for name in targets:
            if name in servers and name != "direct":
                servers[name].stop()
        if "trio-gateway" in targets and "idle" in scenarios:
            raw["idle"] = []
            for repeat in range(plan.idle_repeats):
                log(
                    f"idle streams {repeat + 1}/{plan.idle_repeats}: {plan.idle_streams} streams, "
                    f"{plan.idle_prefill} s prefill (load {load_average()})"
                )
                try:
                    r = run_idle(server_cpus, load_cpus, workdir, upstream, plan)
                except RuntimeError as exc:  # the gateway did not start
                    log(f"  idle run failed: {exc}")
                    continue
                if "error" in r:
                    continue
                log(
                    f"  idle: lateness p99 {r['lateness_ms']['p99']} ms, "
                    f"server {r.get('server')}, opened in {r['opened_in_s']} s"
                )
                raw["idle"].append(r)
                time.sleep(2.0)
        if "trio-gateway" in targets and "workers" in scenarios:
            every_cpu = server_cpus | load_cpus
            log(
                f"workers: gateways with 1 and 2 workers on CPU {sorted(every_cpu)}, "
                f"{plan.repeats} repeats (load {load_average()})"
            )

            def start_for_workers(*, pinned: bool, **how: Any) -> Server:
                cpus = server_cpus if pinned else every_cpu
                return start_gateway(cpus, workdir, upstream.port, **how)

            raw["workers"] = run_workers(
                plan,
                start_for_workers,
                partial(loadgen, load_cpus),
                lambda server, hint, trials: sustain_search(load_cpus, server, plan, hint, trials),
                log,
            )
            raw["workers"]["gateway_cpus"] = sorted(every_cpu)
    finally:
        for server in servers.values():
            server.stop()
    raw["load_average"]["end"] = load_average()
    raw["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    raw["summary"] = summarize(raw, plan)
    (workdir / "results.json").write_text(json.dumps(raw, indent=1))
    from report import write_report

    write_report(raw, workdir)
    latest = BENCH / "latest"
    main_scenarios = {"unary", "stream", "sustain"}
    if not args.quick and set(TARGETS) <= set(targets) and main_scenarios <= set(scenarios):
        latest.mkdir(exist_ok=True)
        for name in ("results.json", "results.md", "bench.png"):
            shutil.copy(workdir / name, latest / name)
        log(f"copied to {latest}")
    elif (
        not args.quick
        and len(scenarios) == 1
        and (
            (scenarios[0] in SINGLE_LATEST and {"direct", "trio-gateway"} <= set(targets))
            or (scenarios[0] in GATEWAY_LATEST and "trio-gateway" in targets)
        )
    ):
        latest.mkdir(exist_ok=True)
        key = scenarios[0]
        for name, to in (("results.json", f"{key}.json"), ("results.md", f"{key}.md")):
            shutil.copy(workdir / name, latest / to)
        log(f"copied to {latest}/{key}.{{json,md}}")
    print((workdir / "results.md").read_text())


if __name__ == "__main__":
    main()
