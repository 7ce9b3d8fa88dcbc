"""What slow and vanished clients cost a served gateway (issue 17 items 4 and 6): its open
fds, sockets in CLOSE_WAIT and RSS, before, during and after.

Serves ``python -m gateway serve`` as its own process (its fds and RSS are read from
``/proc/PID``) in front of the fake OpenAI upstream, which runs in this process, then:

- **idle**: ``--idle`` clients make one request each (half ``/healthz``, half relayed),
  stay connected, then all close; the gateway's fds and CLOSE_WAIT sockets are sampled until
  they are back at the baseline (or ``--watch`` seconds pass). ``--rounds`` repeats it, to
  tell a leak (RSS grows each round) from the allocator keeping its high-water mark.
- **slowloris**: ``--slow`` clients each promise a 100,000-byte body and send one byte,
  half then silent, half one more byte every ``--pace`` seconds; sampled until every one was
  answered and closed by the gateway (or ``--watch`` passes).

Linux only. ``--src DIR`` serves the gateway from another source tree (to compare with an
older checkout); ``--server KEY=VALUE`` adds ``[server]`` settings::

    .venv/bin/python bench/http_hardening.py --idle 2000 --slow 20 \\
        --server body_idle_timeout=5 --server body_timeout=15
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
from functools import partial
from pathlib import Path

import httpx
import trio

from gateway.testing.fake_openai import FakeOpenAI
from gateway.testing.serving import unused_port

CHAT = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()


def relayed_request(length: int | None = None, body: bytes = CHAT) -> bytes:
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n"
        + b"content-length: %d\r\n\r\n" % (len(body) if length is None else length)
        + body
    )


def gauges(pid: int, port: int) -> dict[str, int]:
    """The gateway's open fds, its sockets on ``port`` in CLOSE_WAIT, and its RSS (KiB)."""
    close_wait = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "08":
            close_wait += 1
    status = Path(f"/proc/{pid}/status").read_text()
    rss = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
    return {
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
        "close_wait": close_wait,
        "rss_kib": rss,
    }


def show(label: str, t: float, values: dict[str, int]) -> None:
    print(
        f"  {label:<28} t={t:6.2f}s  fds={values['fds']:5d}  "
        f"close_wait={values['close_wait']:5d}  rss={values['rss_kib'] / 1024:6.1f} MiB",
        flush=True,
    )


async def read_head(stream: trio.SocketStream) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await stream.receive_some(65536)
        if not chunk:
            break
        data += chunk
    return data


async def answered(stream: trio.SocketStream) -> None:
    """Read one whole answer: its head and its content-length body."""
    data = await read_head(stream)
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = await stream.receive_some(65536)
        if not chunk:
            break
        body += chunk


async def idle_run(pid: int, host: str, port: int, count: int, watch: float) -> None:
    print(f"idle: {count} keep-alive clients, one request each, then all close")
    start = trio.current_time()
    baseline = gauges(pid, port)
    show("baseline", 0, baseline)
    streams = []
    for i in range(count):
        stream = await trio.open_tcp_stream(host, port)
        streams.append(stream)
        await stream.send_all(
            relayed_request() if i % 2 else b"GET /healthz HTTP/1.1\r\nhost: gw\r\n\r\n"
        )
        await answered(stream)
    show("all connected and answered", trio.current_time() - start, gauges(pid, port))
    for stream in streams:
        await stream.aclose()
    closed_at = trio.current_time()
    while True:
        values = gauges(pid, port)
        elapsed = trio.current_time() - closed_at
        if values["fds"] <= baseline["fds"] and values["close_wait"] == 0:
            show("back at baseline", trio.current_time() - start, values)
            print(f"  released {elapsed:.2f} s after the clients closed")
            return
        if elapsed > watch:
            show(f"still held after {watch:g} s", trio.current_time() - start, values)
            return
        await trio.sleep(0.25)


async def slow_run(pid: int, host: str, port: int, count: int, pace: float, watch: float) -> None:
    print(
        f"slowloris: {count} clients promising 100000 body bytes (half silent, half 1 B/{pace:g} s)"
    )
    start = trio.current_time()
    baseline = gauges(pid, port)
    show("baseline", 0, baseline)
    statuses: list[bytes] = []
    closed = 0

    async def client(trickle: bool) -> None:
        nonlocal closed
        stream = await trio.open_tcp_stream(host, port)
        async with stream, trio.open_nursery() as nursery:
            await stream.send_all(relayed_request(100000, b"{"))
            if trickle:

                async def drip() -> None:
                    try:
                        while True:
                            await trio.sleep(pace)
                            await stream.send_all(b" ")
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        pass

                nursery.start_soon(drip)
            try:
                head = await read_head(stream)
                statuses.append(head.split(b" ", 2)[1] if head else b"closed")
                while await stream.receive_some(65536):
                    pass
            except trio.BrokenResourceError:
                pass
            closed += 1
            nursery.cancel_scope.cancel()

    async def sample() -> None:
        await trio.sleep(1)
        show(f"during ({closed} closed)", trio.current_time() - start, gauges(pid, port))
        await trio.sleep(watch - 1.5)
        show(
            f"at {watch - 0.5:g} s ({closed} closed)",
            trio.current_time() - start,
            gauges(pid, port),
        )

    async with trio.open_nursery() as sampling:
        sampling.start_soon(sample)
        with trio.move_on_after(watch) as scope:
            async with trio.open_nursery() as nursery:
                for i in range(count):
                    nursery.start_soon(client, i % 2 == 1)
        sampling.cancel_scope.cancel()
    if scope.cancelled_caught:
        print(f"  {closed} of {count} closed by the gateway in {watch:g} s")
        return
    print(f"  answers: {sorted(set(statuses))}; all closed by the gateway")
    await trio.sleep(0.5)  # the gateway's side of the last close
    show("after", trio.current_time() - start, gauges(pid, port))


async def main(args: argparse.Namespace) -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    async with trio.open_nursery() as nursery:
        fake = FakeOpenAI()
        await nursery.start(fake.serve)
        port = unused_port()
        server = "".join(
            f"{item.split('=', 1)[0]} = {item.split('=', 1)[1]}\n" for item in args.server
        )
        workdir = Path(tempfile.mkdtemp(prefix="bench-hardening-"))
        config = workdir / "gateway.toml"
        config.write_text(
            f'[server]\nbind = "127.0.0.1:{port}"\n{server}\n'
            f'[backends.fake]\ntype = "openai"\nurl = "{fake.url}"\n\n'
            '[routes.chat]\nmodel = "m"\nbackend = "fake"\n'
        )
        env = dict(os.environ)
        if args.src:
            env["PYTHONPATH"] = args.src
        command = [sys.executable, "-m", "gateway", "serve", "--config", str(config)]
        command += ["--log-level", "warning"]
        process = await nursery.start(
            partial(trio.run_process, command, env=env, cwd=args.src or None, check=False)
        )
        try:
            url = f"http://127.0.0.1:{port}"
            async with httpx.AsyncClient() as client:
                for _ in range(200):
                    try:
                        if (await client.get(f"{url}/healthz")).status_code == 200:
                            break
                    except httpx.TransportError:
                        await trio.sleep(0.1)
                await client.post(f"{url}/v1/chat/completions", content=CHAT)  # warm pool
            for _ in range(args.rounds if args.idle else 0):
                await idle_run(process.pid, "127.0.0.1", port, args.idle, args.watch)
            if args.slow:
                await slow_run(process.pid, "127.0.0.1", port, args.slow, args.pace, args.watch)
        finally:
            process.terminate()
            nursery.cancel_scope.cancel()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--idle", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=1, help="idle runs, one after another")
    parser.add_argument("--slow", type=int, default=20)
    parser.add_argument("--pace", type=float, default=5.0, help="seconds between dripped bytes")
    parser.add_argument("--watch", type=float, default=90.0, help="seconds to wait for release")
    parser.add_argument("--src", help="serve the gateway from this source tree")
    parser.add_argument("--server", action="append", default=[], help="[server] KEY=VALUE")
    arguments = parser.parse_args()
    if arguments.src:
        arguments.src = os.path.abspath(arguments.src)
    trio.run(main, arguments)
