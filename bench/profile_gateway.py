"""Where the gateway's time goes: py-spy on ``gateway serve`` under one bench scenario.

Starts the fake upstream and the gateway (pinned as in the benchmarks), runs one load for
``--seconds`` while py-spy samples the gateway, and prints the share of samples by package
(self time) and by the nearest ``gateway/`` or ``backends/`` frame on the stack. Run with
the harness venv after ``bench/run`` has set it up::

    bench/.venv/bin/python bench/profile_gateway.py unary --concurrency 1
    bench/.venv/bin/python bench/profile_gateway.py unary --concurrency 64
    bench/.venv/bin/python bench/profile_gateway.py stream --streams 60

The raw samples are kept (``--raw``) for a flame graph.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import tempfile
from collections import Counter
from pathlib import Path

import harness as h
import servers

_FILE = re.compile(r"\(([^)]*?)\.py:\d+\)")


def breakdown(raw: Path, top: int) -> str:
    packages: Counter[str] = Counter()
    ours: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        total += n
        frames = stack.split(";")
        match = _FILE.search(frames[-1])
        packages[match.group(1).split("/")[0] if match else "?"] += n
        for frame in reversed(frames):
            if "(gateway/" in frame or "(backends/" in frame:
                ours[frame] += n
                break
    lines = [f"{total} samples", "", "self time by package:"]
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in packages.most_common(top)]
    lines += ["", "by the nearest gateway/ or backends/ frame (its callees included):"]
    lines += [f"  {100 * n / total:5.1f}%  {frame}" for frame, n in ours.most_common(top)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("scenario", choices=["unary", "stream"])
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--streams", type=int, default=60)
    parser.add_argument("--seconds", type=int, default=6)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--raw", type=Path)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-profile-"))
    raw = args.raw or workdir / "samples.raw"
    server_cpus, load_cpus = servers.cpu_plan()
    upstream = servers.start_upstream(load_cpus, workdir)
    gateway = servers.start_gateway(server_cpus, workdir, upstream.port)
    try:
        h.loadgen(load_cpus, gateway, "unary", "--duration", "1", "--warmup", "0.2")
        spy = subprocess.Popen(
            [
                str(servers.BENCH / ".venv" / "bin" / "py-spy"),
                "record",
                "-p",
                str(gateway.pid),
                "-d",
                str(args.seconds),
                "-r",
                "250",
                "-f",
                "raw",
                "-o",
                str(raw),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if args.scenario == "unary":
            result = h.loadgen(
                load_cpus,
                gateway,
                "unary",
                "--concurrency",
                str(args.concurrency),
                "--duration",
                str(args.seconds),
                "--warmup",
                "0.2",
            )
            print(
                f"unary c={args.concurrency}: latency {result['latency_ms']}, "
                f"{result['rps']} req/s, server CPU "
                f"{result.get('server_cpu_us_per_request')} µs/request"
            )
        else:
            tokens = str(int(args.seconds * 50) + 25)
            result = h.loadgen(
                load_cpus, gateway, "sustain", "--streams", str(args.streams), "--tokens", tokens
            )
            print(
                f"{args.streams} streams: max silence {result['max_silence_ms']} ms, "
                f"server CPU {result.get('server_cpu_us_per_event')} µs/event"
            )
        spy.wait()
    finally:
        gateway.stop()
        upstream.stop()
    print(breakdown(raw, args.top))


if __name__ == "__main__":
    main()
