"""RSS per open stream of the framework floors, for reading scenario 4's number.

Starts ``floor_app.py asgi`` (hypercorn + a bare ASGI app) and ``floor_app.py quart``
(quart-trio) in turn, pinned like the benchmarks, and opens ``--streams`` streams whose
answer starts with headers and then sleeps for ``--prefill`` seconds (no upstream, no
heartbeats), with the same load generator and the same RSS arithmetic as scenario 4.
Prints one JSON line per floor. Run with the harness venv after ``bench/run`` set it up::

    bench/.venv/bin/python bench/idle_floor.py --streams 1000 --prefill 30
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import harness as h
import servers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--prefill", type=float, default=30.0)
    args = parser.parse_args()
    server_cpus, load_cpus = servers.cpu_plan()
    workdir = Path(tempfile.mkdtemp(prefix="bench-idle-floor-"))
    for mode in ("asgi", "quart"):
        server = servers.start_floor(mode, server_cpus, workdir, 1)  # no upstream: port 1 is unused
        try:
            h.loadgen(load_cpus, server, "stream", "--count", "2", "--tokens", "4")  # warm up
            time.sleep(1.0)
            result = h.loadgen(
                load_cpus,
                server,
                "idle",
                "--streams",
                str(args.streams),
                "--prefill",
                str(args.prefill),
                "--interval",
                "1",
                "--tokens",
                "4",
                "--opening",
                "64",
                timeout=args.prefill * 3 + 300,
            )
        finally:
            server.stop()
        rss = result.get("server", {})
        print(
            json.dumps(
                {
                    "floor": server.name,
                    "streams": args.streams,
                    "opened": result.get("opened"),
                    "rss_base_mib": rss.get("rss_base_mib"),
                    "rss_open_mib": rss.get("rss_open_mib"),
                    "rss_per_stream_kib": rss.get("rss_per_stream_kib"),
                    "rss_slope_kib": rss.get("rss_slope_kib"),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
