"""What the load generator measures besides its own clock: the server's CPU and RSS from
``/proc`` (one process, or a gateway's parent with its workers), the whole machine's busy
time, and the results of a run's stream records — time to first event and content, gaps,
missing or reordered deltas, the longest silence, pass or fail. No I/O but ``/proc``."""

from __future__ import annotations

import argparse
import itertools
import os
import time
from typing import Any

from loadgen_conn import StreamRecord, summary_ms

now = time.perf_counter


def proc_sample(pid: int) -> dict[str, float]:
    """The server's RSS (bytes; its own, not its children's) and CPU seconds so far."""
    with open(f"/proc/{pid}/status") as f:
        rss_kib = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return {"t": now(), "rss": rss_kib * 1024.0, "cpu": cpu_seconds(pid)}


def cpu_seconds(pid: int) -> float:
    """A process's utime + stime so far, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy() -> float:
    """Every CPU's busy time so far (``/proc/stat``: all but idle and iowait), in seconds."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def server_sample(args: argparse.Namespace) -> dict[str, Any] | None:
    """:func:`proc_sample` of ``--pid`` (``None`` without one), its CPU summed with each
    ``--also-pid``'s (a gateway's workers) and kept per process under ``each``, and the
    whole machine's busy time (``machine``: every process, this one and others' too)."""
    if not args.pid:
        return None
    sample: dict[str, Any] = proc_sample(args.pid)
    sample["machine"] = machine_busy()
    if args.also_pid:
        sample["each"] = [sample["cpu"], *(cpu_seconds(pid) for pid in args.also_pid)]
        sample["cpu"] = sum(sample["each"])
    return sample


def cpu_between(
    a: dict[str, Any] | None, b: dict[str, Any] | None, units: int, unit: str
) -> dict[str, Any]:
    """The server's CPU between two samples: share of one core, and per unit of work."""
    if a is None or b is None:
        return {}
    seconds = b["cpu"] - a["cpu"]
    out: dict[str, Any] = {
        "server_cpu_pct": round(100 * seconds / max(b["t"] - a["t"], 1e-9), 1),
        f"server_cpu_us_per_{unit}": round(1e6 * seconds / units, 1) if units else None,
    }
    if "machine" in a and "machine" in b:
        out["machine_busy_pct"] = round(
            100 * (b["machine"] - a["machine"]) / max(b["t"] - a["t"], 1e-9), 1
        )
    if "each" in a and "each" in b:  # --pid, then each --also-pid
        out["server_cpu_s_each"] = [
            round(y - x, 3) for x, y in zip(a["each"], b["each"], strict=True)
        ]
    return out


def per_delta(
    a: dict[str, float] | None, b: dict[str, float] | None, records: list[StreamRecord]
) -> dict[str, float | None]:
    """The server's CPU per content delta the clients got: the same unit in every dialect,
    whatever else each stream carries (chat's role and usage chunks, Messages' block and
    message events)."""
    if a is None or b is None:
        return {}
    deltas = sum(len(r.tokens) for r in records)
    return {
        "server_cpu_us_per_delta": round(1e6 * (b["cpu"] - a["cpu"]) / deltas, 1)
        if deltas
        else None
    }


def longest_silence(record: StreamRecord) -> float:
    """The longest wait of a stream: from its request to its first event, or between two
    events (infinite: none came)."""
    marks = [record.sent, *record.events]
    return max((b - a for a, b in itertools.pairwise(marks)), default=float("inf"))


def passed(
    result: dict[str, Any], finished: bool, all_there: bool, worst: float, max_gap: float
) -> bool:
    """Whether a load run passed: it finished in time with ``all_there`` (every stream it
    meant to run), none failed, missed a delta, reordered or broke off, and no silence
    (``worst``, s) was over ``max_gap`` ms."""
    return bool(
        finished
        and all_there
        and result["failed"] == 0
        and result["missing"] == 0
        and result["reordered"] == 0
        and result["incomplete"] == 0
        and worst * 1000 <= max_gap
    )


def measured(
    records: list[StreamRecord],
    expected_tokens: int,
    before: dict[str, float] | None,
    after: dict[str, float] | None,
) -> dict[str, Any]:
    """:func:`stream_result`, and the server's CPU between ``before`` and ``after`` per
    event and per content delta."""
    result = stream_result(records, expected_tokens)
    result.update(cpu_between(before, after, sum(len(r.events) for r in records), "event"))
    result.update(per_delta(before, after, records))
    return result


def stream_result(records: list[StreamRecord], expected_tokens: int) -> dict[str, Any]:
    ttft: list[float] = []
    first_content: list[float] = []
    gaps: list[float] = []
    coalesced = missing = reordered = incomplete = bad_status = 0
    for r in records:
        if r.status != 200 or r.errors:
            bad_status += 1
        if r.first_event is not None:
            ttft.append(r.first_event - r.sent)
        if r.tokens:
            first_content.append(r.tokens[0] - r.sent)
        gaps.extend(b - a for a, b in itertools.pairwise(r.tokens))
        coalesced += r.coalesced
        missing += max(0, expected_tokens - len(r.tokens))
        reordered += 0 if r.order_ok else 1
        incomplete += 0 if r.complete else 1
    return {
        "streams": len(records),
        "ttft_ms": summary_ms(ttft),
        "first_content_ms": summary_ms(first_content),
        "inter_chunk_ms": summary_ms(gaps),
        "coalesced": coalesced,
        "missing": missing,
        "reordered": reordered,
        "incomplete": incomplete,
        "failed": bad_status,
    }


def slope_kib(points: list[tuple[int, float]]) -> float | None:
    """Least-squares slope of RSS over open streams, in KiB per stream."""
    if len(points) < 3:
        return None
    xs = [float(x) for x, _ in points]
    ys = [y for _, y in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return (
        round(sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den / 1024, 2)
        if den
        else None
    )
