"""Scenarios 6 and 7: Anthropic Messages (6) and OpenAI Responses (7) streams beside chat
streams, on the same server in the same run — the measuring (:func:`run_messages`), its
medians (:func:`summarize_messages`) and its table (:func:`messages_table`), each for one
:class:`DialectScenario` (``MESSAGES`` by default, or ``RESPONSES``). The harness
(``harness.py``) calls the first two, the report (``report.py``) the last.

Scenario 7 is scenario 6 with ``responses`` for ``messages`` throughout: ``direct`` has
``chat`` and ``responses`` (the upstream's ``/v1/responses``), ``trio-gateway`` has ``chat``,
``responses-passthrough`` (route ``bench-native``, whose backend lists ``responses`` too:
the upstream's events relayed, heartbeats as SSE comments) and ``responses-translated``
(route ``bench``: chat upstream, Responses events to the client). Responses are stored
(``store`` left at its default, on, as the SDKs leave it), so its CPU includes the store.
Scenario 6 as it was described first:

Variants, by target (the others have none and skip the scenario):

* ``direct`` — ``chat`` (``/v1/chat/completions``) and ``messages`` (``/v1/messages``) from
  the fake upstream itself, which streams both dialects on the same pacing.
* ``trio-gateway`` — ``chat`` (route ``bench``); ``messages-passthrough`` (route
  ``bench-native``, a backend whose ``native_endpoints`` list ``messages``: the upstream's
  events relayed unchanged); ``messages-translated`` (route ``bench``, a chat-only backend:
  the request goes to the upstream's chat endpoint and its chunks come back as Messages
  events). See ``gateway.toml``.

Each variant, each repeat (in an order that rotates per repeat), after two warm-up streams:

* ``stream`` — scenario 2 in the variant's dialect: ``stream_count`` streams of
  ``stream_tokens`` deltas 20 ms apart, one at a time. Time to first event (anything but a
  heartbeat), time to first content delta (``tok0``: the upstream sends it 20 ms after its
  first event, in both dialects), gaps between content deltas.
* ``load`` — scenario 3's load at one fixed size, not a search: ``messages_streams``
  concurrent streams of ``sustain_tokens`` deltas 20 ms apart, started over 1 s. The
  server's CPU per content delta (the same unit in both dialects) and per event the client
  got (chat has a role, finish, usage and ``[DONE]`` event around its deltas; Messages a
  ``message_start``, block start and stop, ``message_delta`` and ``message_stop``).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar


@dataclass(frozen=True, slots=True)
class Variant:
    name: str
    path: str
    dialect: str
    model: str
    label: str


CHAT = Variant("chat", "/v1/chat/completions", "chat", "bench", "chat")


@dataclass(frozen=True, slots=True)
class DialectScenario:
    """One dialect beside chat: its key in results, its number and its variants per target."""

    key: str  # the harness's scenario name and the results' key
    number: int
    title: str
    variants: dict[str, tuple[Variant, ...]]
    # The direct variant each one is compared with: the same dialect as the client speaks.
    direct_of: dict[str, str]


def _beside_chat(key: str, number: int, title: str, path: str, label: str) -> DialectScenario:
    return DialectScenario(
        key,
        number,
        title,
        {
            "direct": (CHAT, Variant(key, path, key, "bench", label)),
            "trio-gateway": (
                CHAT,
                Variant(f"{key}-passthrough", path, key, "bench-native", f"{label} passthrough"),
                Variant(f"{key}-translated", path, key, "bench", f"{label} translated"),
            ),
        },
        {"chat": "chat", f"{key}-passthrough": key, f"{key}-translated": key},
    )


MESSAGES = _beside_chat("messages", 6, "Messages beside chat", "/v1/messages", "Messages")
RESPONSES = _beside_chat("responses", 7, "Responses beside chat", "/v1/responses", "Responses")
DIALECT_SCENARIOS = {s.key: s for s in (MESSAGES, RESPONSES)}
VARIANTS = MESSAGES.variants
DIRECT_OF = MESSAGES.direct_of


class Column(Protocol):
    """A variant as a table column reads it (:class:`Variant`, ``ws_scenario.Transport``)."""

    @property
    def name(self) -> str: ...
    @property
    def label(self) -> str: ...


V = TypeVar("V", bound=Column)


class Measure(Protocol):
    """Runs one load generator scenario against the target; returns its JSON result."""

    def __call__(self, scenario: str, *args: str) -> dict[str, Any]: ...


class LoadPlan(Protocol):
    """The harness's ``Plan``, as far as this scenario and scenario 8 both read it."""

    @property
    def stream_tokens(self) -> int: ...
    @property
    def sustain_tokens(self) -> int: ...
    @property
    def messages_streams(self) -> int: ...


class PlanLike(LoadPlan, Protocol):
    """The harness's ``Plan``, as far as this scenario reads it."""

    @property
    def stream_count(self) -> int: ...


def run_messages(
    target: str,
    measure: Measure,
    plan: PlanLike,
    repeat: int,
    log: Callable[[str], None],
    scenario: DialectScenario = MESSAGES,
) -> dict[str, Any]:
    """One repeat of every variant of ``target`` (``{}`` for a target without variants)."""
    out: dict[str, Any] = {}
    for v in _this_repeat(scenario.variants, scenario.key, target, repeat, log):
        how = ("--path", v.path, "--dialect", v.dialect, "--model", v.model)
        if repeat == 0:  # first use of a path: imports, pools, the translator's first run
            measure("stream", *how, "--count", "2", "--tokens", "4")
        stream = measure(
            "stream",
            *how,
            "--count",
            str(plan.stream_count),
            "--tokens",
            str(plan.stream_tokens),
        )
        load = measure(
            "sustain",
            *how,
            "--streams",
            str(plan.messages_streams),
            "--tokens",
            str(plan.sustain_tokens),
            "--ramp",
            "1.0",
        )
        out[v.name] = {"stream": stream, "load": load}
        log(
            f"  {scenario.key} {target} {v.name}: first content p50 "
            f"{stream['first_content_ms']['p50']} ms, inter p99 "
            f"{stream['inter_chunk_ms']['p99']} ms, missing {stream['missing']}; "
            f"{plan.messages_streams} streams: {load.get('server_cpu_us_per_delta')} µs/delta, "
            f"{'pass' if load['passed'] else 'FAIL'}"
        )
    return out


# _this_repeat, _rotation, _per_variant, _median, _f, _pair, _minus, _ratio, _columns and
# _markdown (and Measure, LoadPlan and Column above) serve ws_scenario (scenario 8) too; _f
# serves report.py.


def _this_repeat(
    variants: dict[str, tuple[V, ...]],
    key: str,
    target: str,
    repeat: int,
    log: Callable[[str], None],
) -> tuple[V, ...]:
    """``target``'s variants in repeat ``repeat``'s order (:func:`_rotation`); none for a
    target without variants, logged as skipped under ``key``."""
    found = variants.get(target, ())
    if not found:
        log(f"  {key}: no variants for {target}; skipped")
        return ()
    return _rotation(found, repeat)


def unary_closed_loop(c: int, duration: float) -> list[str]:
    """loadgen's arguments for scenario 1's closed loop at ``c`` connections (also scenario
    9's saturation)."""
    return ["unary", "--concurrency", str(c), "--duration", str(duration), "--warmup", "1.0"]


def _rotation(variants: tuple[V, ...], repeat: int) -> tuple[V, ...]:
    """The variants in repeat ``repeat``'s order: each repeat starts one later."""
    return variants[repeat % len(variants) :] + variants[: repeat % len(variants)]


def _per_variant(
    runs: Sequence[dict[str, Any]], first: str
) -> list[tuple[str, list[dict[str, Any]], list[dict[str, Any]]]]:
    """Each variant of the first repeat with its ``first`` and its ``load`` results, from
    every repeat that ran it."""
    names = [name for run in runs[:1] for name in run]
    return [
        (
            name,
            [run[name][first] for run in runs if name in run],
            [run[name]["load"] for run in runs if name in run],
        )
        for name in names
    ]


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 4) if present else None


def summarize_messages(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Medians over repeats, per variant."""
    summary: dict[str, Any] = {}
    for name, streams, loads in _per_variant(runs, "stream"):
        summary[name] = {
            "ttft_p50": _median([r["ttft_ms"]["p50"] for r in streams]),
            "ttft_p99": _median([r["ttft_ms"]["p99"] for r in streams]),
            "content_p50": _median([r.get("first_content_ms", {}).get("p50") for r in streams]),
            "content_p99": _median([r.get("first_content_ms", {}).get("p99") for r in streams]),
            "inter_p50": _median([r["inter_chunk_ms"]["p50"] for r in streams]),
            "inter_p99": _median([r["inter_chunk_ms"]["p99"] for r in streams]),
            "coalesced": sum(r["coalesced"] for r in streams),
            "deltas": sum(r["inter_chunk_ms"]["n"] + r["streams"] for r in streams),
            "missing": sum(r["missing"] + r["incomplete"] + r["failed"] for r in streams),
            "cpu_us_delta": _median([r.get("server_cpu_us_per_delta") for r in loads]),
            "cpu_us_event": _median([r.get("server_cpu_us_per_event") for r in loads]),
            "cpu_pct": _median([r.get("server_cpu_pct") for r in loads]),
            "load_passed": sum(1 for r in loads if r["passed"]),
            "load_runs": len(loads),
            "load_max_silence": _median([r["max_silence_ms"] for r in loads]),
        }
    return summary


def _f(value: float | None, digits: int = 2) -> str:
    if value is None:
        return "—"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def _pair(a: float | None, b: float | None, sign: bool = False) -> str:
    def one(v: float | None) -> str:
        return ("+" if sign and v is not None and v >= 0 else "") + _f(v)

    return f"{one(a)} / {one(b)}".replace("+-", "−")


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _ratio(a: float | None, b: float | None) -> str:
    return "—" if a is None or not b else f"{a / b:.2f}×"


def _columns(
    summary: dict[str, Any], key: str, variants: dict[str, tuple[V, ...]]
) -> list[tuple[str, V]]:
    """A table's columns: each (target, variant) with numbers under ``key`` in ``summary``,
    in ``variants``' order."""
    return [
        (target, v)
        for target in variants
        for v in variants[target]
        if v.name in summary.get(target, {}).get(key, {})
    ]


def _markdown(title: str, columns: Sequence[tuple[str, Column]], rows: list[list[str]]) -> str:
    """A scenario's table in Markdown: a head of ``title`` and each column's target and
    variant, then ``rows`` (a label and a cell per column each)."""
    heads = (f"{'direct' if t == 'direct' else 'trio-gateway'}: {v.label}" for t, v in columns)
    header = [title, *heads]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def messages_table(raw: dict[str, Any], scenario: DialectScenario = MESSAGES) -> str:
    """The scenario's table (6's by default), or ``""`` when the run had no numbers for it."""
    s = raw["summary"]
    key = scenario.key
    columns = _columns(s, key, scenario.variants)
    if not columns:
        return ""
    plan = raw["plan"]
    direct = s.get("direct", {}).get(key, {})
    gateway = s.get("trio-gateway", {}).get(key, {})

    rows: list[list[str]] = []

    def row(label: str, fn: Callable[[str, str, dict[str, Any]], str]) -> None:
        """``fn(target, variant, its summary)`` gives each column's cell."""
        rows.append([label, *(fn(t, v.name, s[t][key][v.name]) for t, v in columns)])

    def vs_direct(name: str) -> dict[str, Any] | None:
        found: dict[str, Any] | None = direct.get(scenario.direct_of.get(name, name))
        return found

    row("stream c=1: first event p50 / p99 ms", lambda t, n, c: _pair(c["ttft_p50"], c["ttft_p99"]))
    row(
        "   first content delta p50 / p99 ms (upstream: 20 ms after its first event)",
        lambda t, n, c: _pair(c["content_p50"], c["content_p99"]),
    )

    def added(t: str, n: str, c: dict[str, Any]) -> str:
        d = vs_direct(n)
        if t == "direct" or d is None:
            return "—"
        return _pair(
            _minus(c["content_p50"], d["content_p50"]),
            _minus(c["content_p99"], d["content_p99"]),
            True,
        )

    row("   added first content delta vs direct (same dialect) p50 / p99 ms", added)
    row(
        "   inter-delta p50 / p99 ms (upstream: 20 ms)",
        lambda t, n, c: _pair(c["inter_p50"], c["inter_p99"]),
    )
    row(
        "   deltas coalesced into one read / deltas (missing or broken)",
        lambda t, n, c: f"{c['coalesced']} / {c['deltas']} ({c['missing']})",
    )
    load = f"{plan['messages_streams']} streams × {plan['sustain_tokens']} deltas @ 20 ms"
    row(
        f"{load}: server CPU per content delta, µs",
        lambda t, n, c: _f(c["cpu_us_delta"], 0),
    )
    row("   server CPU per event the client got, µs", lambda t, n, c: _f(c["cpu_us_event"], 0))
    row("   server CPU, % of one core", lambda t, n, c: _f(c["cpu_pct"], 0))

    def versus_chat(t: str, n: str, c: dict[str, Any]) -> str:
        chat = gateway.get("chat")
        if t != "trio-gateway" or chat is None:
            return "—"
        return _ratio(c["cpu_us_delta"], chat["cpu_us_delta"])

    row("   CPU per delta ÷ the gateway's chat", versus_chat)

    def versus_direct(t: str, n: str, c: dict[str, Any]) -> str:
        d = vs_direct(n)
        if t == "direct" or d is None:
            return "—"
        return _ratio(c["cpu_us_delta"], d["cpu_us_delta"])

    row("   CPU per delta ÷ direct's (same dialect)", versus_direct)
    row(
        "   runs with every delta, in order, no gap > 200 ms (max silence, ms)",
        lambda t, n, c: f"{c['load_passed']} of {c['load_runs']} ({_f(c['load_max_silence'], 1)})",
    )
    return _markdown(f"scenario {scenario.number}: {scenario.title}", columns, rows)
