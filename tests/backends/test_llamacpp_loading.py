"""Backend ``llamacpp`` against a real llama-server that is loading its model: ``/health``
answers 503 then, and so does every other endpoint. The gateway must treat that as "not
ready" — the route leaves readiness, requests are not sent there and do not count against
the backend — never as a failure; and a request that meets a loading server it believed
ready waits for the load and then gets its answer.

How the load is held open for as long as a test needs: the server opens the model file
only after its HTTP server is up, and the test holds a write lease (``F_SETLEASE``) on
that file. The kernel blocks the server's ``open()`` until the lease is released, so
llama-server sits in its real loading state, answering 503, exactly as with a model that
takes minutes to read.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import trio

from backends.llamacpp._launch import free_port
from gateway.testing.waiting import wait_until

from .llamacpp_fixtures import (
    _wait_healthy_sync,
    backend_settings,
    gateway_doc,
    model_path,  # noqa: F401  (fixture)
    open_events,
    spawn_llama_server,
    start_gateway,
    stop_llama_server,
)

_F_SETLEASE = 1024  # <linux/fcntl.h>; Python's fcntl module does not name it

COMPLETION = {"model": "gemma", "prompt": "The sky is", "max_tokens": 8, "temperature": 0}


@contextmanager
def held_model(model: Path, directory: Path) -> Iterator[tuple[Path, Callable[[], None]]]:
    """A private copy of ``model`` whose opening by another process blocks until
    ``release()`` is called (or the context ends)."""
    copy = directory / "held.gguf"
    shutil.copyfile(model, copy)
    previous = signal.signal(signal.SIGIO, signal.SIG_IGN)  # the lease-break notice
    fd = os.open(copy, os.O_RDWR)
    released = False

    def release() -> None:
        nonlocal released
        if not released:
            fcntl.fcntl(fd, _F_SETLEASE, fcntl.F_UNLCK)
            released = True

    try:
        fcntl.fcntl(fd, _F_SETLEASE, fcntl.F_WRLCK)
        yield copy, release
    finally:
        release()
        os.close(fd)
        signal.signal(signal.SIGIO, previous)


async def _health(url: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=url, timeout=5, trust_env=False) as client:
        return await client.get("/health")


async def _wait_until_loading(url: str) -> httpx.Response:
    """Wait for the server's HTTP side to answer while its model is not loaded."""

    async def answering() -> bool:
        try:
            await _health(url)
        except httpx.TransportError:
            return False
        return True

    await wait_until(answering, within=30)
    response = await _health(url)
    assert response.status_code == 503, response.text
    return response


async def test_a_loading_server_makes_its_route_not_ready(
    nursery: trio.Nursery,
    model_path: Path,
    tmp_path: Path,
) -> None:
    port = free_port("127.0.0.1")
    url = f"http://127.0.0.1:{port}"
    with held_model(model_path, tmp_path) as (model, release):
        server = spawn_llama_server(model, port, tmp_path / "server.log")
        try:
            health = await _wait_until_loading(url)
            assert health.json()["error"]["message"] == "Loading model"

            settings = backend_settings(url=url, poll_interval=0.05)
            gateway = await start_gateway(nursery, gateway_doc(settings))
            backend = gateway.backend
            await wait_until((lambda: backend.status.checked_at is not None), within=5)
            assert backend.status.health == "loading"
            assert backend.status.detail == "Loading model"
            upstream = gateway.gateway.upstreams["l"]
            async with gateway.client() as client:
                ready = await client.get("/readyz")
                assert ready.status_code == 503
                assert ready.json()["routes"] == {"gemma": False}
                assert ready.json()["backends"]["l"] == {
                    "health": "loading",
                    "detail": "Loading model",
                }
                # Not sent to a server that cannot take it; a clean 503 with Retry-After.
                refused = await client.post("/v1/completions", json=COMPLETION)
                assert refused.status_code == 503
                assert refused.json()["error"]["code"] == "no_backend_available"
                assert "retry-after" in refused.headers
            assert upstream.breaker.failures == 0  # loading is not failing

            release()  # the model loads now
            await wait_until((lambda: backend.status.health == "ready"), within=60)
            async with gateway.client() as client:
                assert (await client.get("/readyz")).status_code == 200
                answer = await client.post("/v1/completions", json=COMPLETION)
            assert answer.status_code == 200, answer.text
            assert answer.json()["usage"]["completion_tokens"] > 0
            assert backend.server_info is not None and backend.server_info.total_slots == 1
        finally:
            stop_llama_server(server)


async def test_a_request_that_meets_a_loading_server_waits_for_the_load(
    nursery: trio.Nursery,
    model_path: Path,
    tmp_path: Path,
) -> None:
    """The server restarts between two polls: the gateway still believes it ready, sends a
    request, and llama-server answers 503 "Loading model". The backend turns ``loading``
    at once (the route leaves readiness), the client hears heartbeats, and once the model
    is loaded the request is sent again and answered."""
    port = free_port("127.0.0.1")
    url = f"http://127.0.0.1:{port}"
    first = spawn_llama_server(model_path, port, tmp_path / "first.log")
    try:
        _wait_healthy_sync(url, first, tmp_path / "first.log")
        settings = backend_settings(url=url, poll_interval=60)  # no second poll in this test
        gateway = await start_gateway(nursery, gateway_doc(settings, interval=0.25))
        backend = gateway.backend
        await wait_until((lambda: backend.status.health == "ready"), within=5)
    finally:
        stop_llama_server(first)

    with held_model(model_path, tmp_path) as (model, release):
        second = spawn_llama_server(model, port, tmp_path / "second.log")
        try:
            await _wait_until_loading(url)
            assert backend.status.health == "ready"  # stale, as between two polls
            events: list[bytes] = []
            async with gateway.client() as client, trio.open_nursery() as inner:

                async def stream() -> None:
                    async with open_events(client, "/v1/completions", COMPLETION) as (r, stream):
                        assert r.status_code == 200
                        events.append(b"<headers>")
                        async for event in stream:
                            events.append(event)

                inner.start_soon(stream)
                await wait_until((lambda: backend.status.health == "loading"), within=5)
                assert backend.status.detail == "Loading model"
                async with gateway.client() as other:
                    assert (await other.get("/readyz")).status_code == 503
                await wait_until(
                    lambda: events.count(b": keepalive") >= 3, within=5
                )  # the waiting client hears heartbeats
                released_at = trio.current_time()
                release()
            waited = trio.current_time() - released_at
        finally:
            stop_llama_server(second)
    data = [e for e in events if e.startswith(b"data: {")]
    assert data and events[-1] == b"data: [DONE]", events
    assert all(e == b": keepalive" for e in events[1 : events.index(data[0])])
    assert backend.status.health == "ready"  # the answer proved it; no poll came since
    print(f"\nanswered {waited:.2f} s after the model file was released")


def _returns(predicate):  # type: ignore[no-untyped-def]
    async def check() -> bool:
        return bool(predicate())

    return check
