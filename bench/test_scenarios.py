"""Checks of the scenarios' plumbing, small and end to end: scenarios 6 and 7 (Messages and
Responses beside chat) on the direct target, scenario 8 (Responses over WebSocket) and
scenario 9 (worker processes) through the bench gateway (``.venv``'s ``gateway``, as
``bench/run`` starts it) — from the load generator's runs through the medians to the
tables."""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path
from types import SimpleNamespace

from fixtures import loadgen, upstream  # noqa: F401 (pytest fixtures)
from messages_scenario import RESPONSES, messages_table, run_messages, summarize_messages


def test_messages_scenario_measures_and_tables_the_direct_variants(
    upstream: tuple[int, int],
) -> None:
    """Scenario 6's plumbing, from the loadgen runs through the medians to the table, on
    the direct target (the gateway's variants run in ``bench/run --quick``)."""
    port, pid = upstream

    def measure(scenario: str, *args: str) -> dict[str, object]:
        return loadgen(port, scenario, *args, "--gap", "2", "--pid", str(pid))

    plan = SimpleNamespace(stream_count=2, stream_tokens=4, sustain_tokens=4, messages_streams=3)
    seen: list[str] = []
    runs = [run_messages("direct", measure, plan, repeat, seen.append) for repeat in (0, 1)]
    assert list(runs[0]) == ["chat", "messages"] and list(runs[1]) == ["messages", "chat"]
    summary = summarize_messages(runs)
    for name in ("chat", "messages"):
        assert summary[name]["missing"] == 0
        assert summary[name]["load_passed"] == 2
        assert summary[name]["cpu_us_delta"] is not None
        assert summary[name]["content_p50"] > summary[name]["ttft_p50"]
    table = messages_table(
        {
            "summary": {"direct": {"messages": summary}},
            "plan": {"messages_streams": 3, "sustain_tokens": 4},
        }
    )
    assert "| direct: chat | direct: Messages |" in table
    assert run_messages("nginx", measure, plan, 0, seen.append) == {}
    assert seen[-1] == "  messages: no variants for nginx; skipped"


def test_responses_scenario_measures_and_tables_the_direct_variants(
    upstream: tuple[int, int],
) -> None:
    """Scenario 7's plumbing, as scenario 6's above: direct's chat and Responses variants,
    the medians, the table (the gateway's variants run in ``bench/run --quick``)."""
    port, pid = upstream

    def measure(scenario: str, *args: str) -> dict[str, object]:
        return loadgen(port, scenario, *args, "--gap", "2", "--pid", str(pid))

    plan = SimpleNamespace(stream_count=2, stream_tokens=4, sustain_tokens=4, messages_streams=3)
    seen: list[str] = []
    runs = [
        run_messages("direct", measure, plan, repeat, seen.append, RESPONSES) for repeat in (0, 1)
    ]
    assert list(runs[0]) == ["chat", "responses"] and list(runs[1]) == ["responses", "chat"]
    summary = summarize_messages(runs)
    for name in ("chat", "responses"):
        assert summary[name]["missing"] == 0
        assert summary[name]["load_passed"] == 2
        assert summary[name]["cpu_us_delta"] is not None
        assert summary[name]["content_p50"] > summary[name]["ttft_p50"]
    raw = {
        "summary": {"direct": {"responses": summary}},
        "plan": {"messages_streams": 3, "sustain_tokens": 4},
    }
    table = messages_table(raw, RESPONSES)
    assert table.startswith(
        "| scenario 7: Responses beside chat | direct: chat | direct: Responses |"
    )
    assert messages_table(raw) == ""  # scenario 6 had no numbers in this run
    assert [v.name for v in RESPONSES.variants["trio-gateway"]] == [
        "chat",
        "responses-passthrough",
        "responses-translated",
    ]
    assert run_messages("nginx", measure, plan, 0, seen.append, RESPONSES) == {}
    assert seen[-1] == "  responses: no variants for nginx; skipped"


def test_websocket_scenario_through_the_gateway(upstream: tuple[int, int], tmp_path: Path) -> None:
    """Scenario 8 end to end, small: the bench gateway in front of the fake upstream, each
    of its variants (SSE, WebSocket, WebSocket with permessage-deflate) and direct's SSE,
    the medians and the table."""
    import harness
    import servers
    from ws_scenario import run_websocket, summarize_websocket, websocket_table

    port, pid = upstream
    cpus = os.sched_getaffinity(0)
    gateway = servers.start_gateway(cpus, tmp_path, port)
    direct = servers.Server("upstream", port, gateway.proc, pid)
    plan = SimpleNamespace(
        stream_tokens=4, sustain_tokens=4, messages_streams=3, ws_turns=3, ws_load_turns=2
    )
    seen: list[str] = []
    try:
        runs = {
            name: [
                run_websocket(
                    name,
                    lambda scenario, *a, server=server: harness.loadgen(
                        cpus, server, scenario, *a, "--gap", "2", timeout=60
                    ),
                    plan,
                    repeat,
                    seen.append,
                )
                for repeat in (0, 1)
            ]
            for name, server in (("direct", direct), ("trio-gateway", gateway))
        }
    finally:
        gateway.stop()
    assert list(runs["trio-gateway"][1]) == ["ws", "ws-deflate", "sse"]
    summary = {name: {"websocket": summarize_websocket(r)} for name, r in runs.items()}
    for name, variants in (("direct", ["sse"]), ("trio-gateway", ["sse", "ws", "ws-deflate"])):
        assert list(summary[name]["websocket"]) == variants
        for variant in variants:
            s = summary[name]["websocket"][variant]
            assert (s["turns"], s["missing"], s["broken"], s["load_broken"]) == (6, 0, 0, 0), s
            assert s["load_passed"] == 2
            assert s["cpu_us_event"] is not None and s["load_cpu_us_event"] is not None
            assert s["ttft_p50"] < s["content_p50"] < s["turn_p50"]
    gateway_ws = summary["trio-gateway"]["websocket"]
    assert gateway_ws["ws"]["extensions"] == [] and gateway_ws["ws"]["handshake_p50"] > 0
    assert gateway_ws["ws-deflate"]["extensions"] == ["permessage-deflate"]
    table = websocket_table(
        {
            "summary": summary,
            "plan": {
                "stream_tokens": 4,
                "sustain_tokens": 4,
                "messages_streams": 3,
                "ws_turns": 3,
                "ws_load_turns": 2,
            },
        }
    )
    assert table.startswith(
        "| scenario 8: Responses over WebSocket beside SSE | direct: SSE | trio-gateway: SSE "
        "| trio-gateway: WebSocket | trio-gateway: WebSocket + permessage-deflate |"
    )
    assert "(permessage-deflate)" in table
    assert run_websocket("nginx", lambda *a: {}, plan, 0, seen.append) == {}
    assert seen[-1] == "  websocket: no variants for nginx; skipped"


def test_workers_scenario_through_the_gateway(upstream: tuple[int, int], tmp_path: Path) -> None:
    """Scenario 9 end to end, small: every variant started with its workers and its team,
    each measured (the team's key accepted: every request 200), the parent and each worker
    sampled, the medians, the ratios and both tables."""
    import harness
    import servers
    from workers_scenario import VARIANTS, run_workers, summarize_workers, workers_table

    port, _ = upstream
    cpus = os.sched_getaffinity(0)
    plan = SimpleNamespace(
        repeats=1,
        workers_rate=50.0,
        workers_rate_duration=0.5,
        workers_levels=(4,),
        unary_duration=0.5,
        workers_budget_s=120.0,
    )
    started: list[servers.Server] = []
    seen: list[str] = []

    def start(*, pinned: bool, **how: object) -> servers.Server:
        server = servers.start_gateway(cpus, tmp_path, port, **how)  # type: ignore[arg-type]
        started.append(server)
        return server

    def search(server: object, hint: int | None, trials: list[dict[str, object]]) -> int:
        return 7 if len(started) == 1 else 14

    raw = run_workers(plan, start, partial(harness.loadgen, cpus), search, seen.append)
    assert [len(s.workers) for s in started] == [0, 2, 0, 2, 0]
    assert all(s.proc.poll() is not None for s in started)  # each stopped after its turn
    assert (tmp_path / "gateway-usage-w2-team-1.sqlite").exists()
    (run,) = raw["runs"]
    assert list(run) == [v.name for v in VARIANTS]
    assert "rate" not in run["w1-pinned"] and "sustain_max" not in run["w1-pinned"]
    assert "saturation" not in run["w1-team"] and "sustain_max" not in run["w2-team"]
    for v in VARIANTS[:4]:
        rate = run[v.name]["rate"]
        assert rate["errors"] == {} and rate["requests"] > 0, rate
        assert rate["statuses"] == {"200": rate["requests"]}
        assert len(run[v.name]["pids"]) == (1 if v.workers == 1 else 1 + v.workers)
        assert ("server_cpu_s_each" in rate) == (v.workers > 1)
    assert len(run["w2"]["rate"]["server_cpu_s_each"]) == 3
    summary = summarize_workers(raw)
    assert summary["scaling"]["sustain"] == 2.0
    assert summary["scaling"]["rps_pinned"] is not None
    assert summary["w2"]["saturation"]["4"]["not_ok"] == 0
    assert (
        summary["w2_cost"]["ratio"] is not None and summary["w2-team_cost"]["extra_us"] is not None
    )
    table = workers_table(
        {"summary": {"workers": summary}, "workers": raw, "pinning": {"upstream_and_loadgen": [0]}}
    )
    assert table.startswith(
        "| scenario 9a: what a second worker buys | workers = 1 | workers = 2 | 2 ÷ 1 (each repeat) "
        "| workers = 1 pinned to the last CPU (as scenario 1) | 2 ÷ 1 pinned (each repeat) |"
    )
    assert "| scenario 9b: 50 requests/s over 8 connections | workers = 1 | workers = 2 |" in table
