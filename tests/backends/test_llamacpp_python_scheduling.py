"""``llamacpp-python`` under load: a disconnect stops the model within one token, in any
phase; one instance serves a FIFO line (the gateway's admission queue, sized by
``instances``) whose waiters hear heartbeats; a full line is refused with ``Retry-After``;
and the event loop stays responsive while the model works."""

from __future__ import annotations

import statistics
import time
from contextlib import aclosing
from functools import partial
from typing import TYPE_CHECKING, Any

import trio

from gateway.testing.waiting import wait_until

from .llamacpp_python_helpers import (
    LocalGateway,
    StartLocal,
    chunk_text,
)
from .sse_helpers import event_json, sse_events

if TYPE_CHECKING:  # the fast lane collects this module without llama-cpp-python
    import llama_cpp

LONG = 400  # tokens a request would run for if nobody stopped it (10+ s on this CPU)
HEARTBEAT = b": keepalive"


def _completion(prompt: str, max_tokens: int, **extra: Any) -> dict[str, Any]:
    return {
        "model": "gemma",
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        **extra,
    }


async def _consume(
    gw: LocalGateway,
    body: dict[str, Any],
    log: list[tuple[float, bytes]],
    *,
    leave: trio.Event | None = None,
    status: list[int] | None = None,
) -> None:
    """Read one stream into ``log`` as (time, event) pairs. When ``leave`` is set, hang up
    at the next event, as a client that goes away does."""
    async with (
        gw.client() as client,
        client.stream("POST", "/v1/completions", json=body) as response,
    ):
        if status is not None:
            status.append(response.status_code)
        async with aclosing(sse_events(response)) as events:
            async for event in events:
                log.append((trio.current_time(), event))
                if leave is not None and leave.is_set():
                    return


async def test_a_disconnect_stops_generation_within_one_token(start_local: StartLocal) -> None:
    gw = await start_local()
    engine = gw.backend.engines[0]
    async with gw.client() as client:
        async with client.stream(
            "POST", "/v1/completions", json=_completion("Once upon a time", LONG)
        ) as response:
            received = 0
            async with aclosing(sse_events(response)) as events:
                async for event in events:
                    received += event_json(event) is not None
                    if received == 4:
                        job = engine.current
                        break
        hung_up_at = trio.current_time()  # leaving the block closed the connection
        await wait_until(lambda: engine.current is not job)

        # The instance is free at once: the next request is served in ~ its own time.
        next_body = {"model": "gemma", "prompt": "Hello", "max_tokens": 4, "temperature": 0}
        answer = await client.post("/v1/completions", json=next_body)
        served_in = trio.current_time() - hung_up_at

    assert job is not None and job.stopped
    assert job.sampled_at_stop is not None and job.stop_requested_at is not None
    assert job.finished_at is not None
    print(
        f"\nstopped after {job.sampled} of {LONG} tokens; {job.sampled - job.sampled_at_stop} "
        f"after the stop, {(job.finished_at - job.stop_requested_at) * 1000:.1f} ms to stop; "
        f"next request served {served_in:.2f} s after hanging up"
    )
    assert job.sampled - job.sampled_at_stop <= 1  # within one token of the stop
    assert job.sampled < 50
    assert answer.status_code == 200
    assert answer.json()["usage"]["completion_tokens"] == 4
    # The counter moved by the stopped job's tokens and the next request's, nothing more.
    assert engine.tokens_generated == job.sampled + 4
    assert served_in < 5  # the stopped one would have needed 10+ s more


async def test_a_disconnect_during_prefill_aborts_it(
    start_local: StartLocal, reference: llama_cpp.Llama
) -> None:
    """A long prompt's prefill is one llama.cpp call of many seconds on this CPU; the
    abort callback ends it in the middle, and the instance's state stays sound."""
    gw = await start_local()
    engine = gw.backend.engines[0]
    prompt = "The history of the city is long and complicated. " * 90  # ~900 tokens
    async with gw.client() as client:
        async with client.stream(
            "POST", "/v1/completions", json=_completion(prompt, 8)
        ) as response:
            assert response.status_code == 200  # early headers: heartbeats during prefill
            await wait_until(lambda: engine.current is not None)
            job = engine.current
        await wait_until(lambda: engine.current is None)
        body = {"model": "gemma", "prompt": "Once upon a time", "max_tokens": 6, "temperature": 0}
        after = await client.post("/v1/completions", json=body)

    assert job is not None and job.stopped
    assert job.finished_at is not None and job.stop_requested_at is not None
    stopped_in = job.finished_at - job.stop_requested_at
    print(f"\nprefill aborted {stopped_in * 1000:.1f} ms after the stop")
    assert job.sampled == 0 and job.prompt_tokens == 0  # the prompt never finished
    assert stopped_in < 0.5
    expected = await trio.to_thread.run_sync(
        lambda: (
            reference.reset(),
            reference.create_completion("Once upon a time", max_tokens=6, temperature=0),
        )[1]
    )
    assert after.json()["choices"][0]["text"] == expected["choices"][0]["text"]


async def test_one_instance_serves_a_fifo_line_with_heartbeats_to_the_waiting(
    start_local: StartLocal,
) -> None:
    gw = await start_local()
    slots, engine = gw.gateway.upstreams["local"].slots, gw.backend.engines[0]
    logs: dict[str, list[tuple[float, bytes]]] = {"a": [], "b": [], "c": []}
    bodies = {
        "a": _completion("Once upon a time", 40, stream_options={"include_usage": True}),
        "b": _completion("The capital of France is", 12, stream_options={"include_usage": True}),
        "c": _completion("def fibonacci(n):", 12, stream_options={"include_usage": True}),
    }
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_consume, gw, bodies["a"], logs["a"])
        await wait_until(lambda: engine.current is not None)
        nursery.start_soon(_consume, gw, bodies["b"], logs["b"])
        await wait_until(lambda: slots.queued == 1)
        nursery.start_soon(_consume, gw, bodies["c"], logs["c"])
        await wait_until(lambda: slots.queued == 2)

    spans = {}
    for name, log in logs.items():
        events = [event for _, event in log]
        data = [(at, event) for at, event in log if event.startswith(b"data: ")]
        assert events[-1] == b"data: [DONE]", name  # every stream ended properly
        usage = event_json(data[-2][1])
        assert usage is not None
        assert usage["usage"]["completion_tokens"] == bodies[name]["max_tokens"], name
        text = "".join(chunk_text(c) for _, e in data if (c := event_json(e)) is not None)
        assert text, name
        first_data = events.index(data[0][1])
        spans[name] = (data[0][0], data[-1][0], events[:first_data].count(HEARTBEAT))
    print(f"\nheartbeats before the first token: { {n: s[2] for n, s in spans.items()} }")
    # Served one after another, in the order they came...
    assert spans["a"][1] <= spans["b"][0]
    assert spans["b"][1] <= spans["c"][0]
    # ...and those waiting in line heard heartbeats all along.
    assert spans["c"][2] >= spans["b"][2] >= 1


async def test_a_full_line_is_refused_and_a_waiter_that_leaves_frees_its_place(
    start_local: StartLocal,
) -> None:
    gw = await start_local(backend={"admission": {"max_queue": 1, "queue_full_status": 503}})
    slots, engine = gw.gateway.upstreams["local"].slots, gw.backend.engines[0]
    leave_a, leave_b = trio.Event(), trio.Event()
    log_a: list[tuple[float, bytes]] = []
    log_b: list[tuple[float, bytes]] = []
    async with trio.open_nursery() as nursery, gw.client() as client:
        nursery.start_soon(
            partial(_consume, gw, _completion("Once upon a time", LONG), log_a, leave=leave_a)
        )
        await wait_until(lambda: engine.current is not None)
        nursery.start_soon(partial(_consume, gw, _completion("Hello", 4), log_b, leave=leave_b))
        await wait_until(lambda: slots.queued == 1)

        # The line is full: refused at once, before any heartbeat committed a 200.
        refused = [
            await client.post("/v1/completions", json={**_completion("x", 4), "stream": False}),
            await client.post("/v1/completions", json=_completion("x", 4)),
            await client.post(
                "/v1/completions", json={**_completion("x", 4), "model": "gemma-late"}
            ),
        ]

        # The waiter hangs up: it leaves the line at once, and its place is free again.
        leave_b.set()
        await wait_until(lambda: slots.queued == 0, within=2)
        log_d: list[tuple[float, bytes]] = []
        nursery.start_soon(_consume, gw, _completion("Hello", 4), log_d)
        await wait_until(lambda: slots.queued == 1)
        leave_a.set()

    for answer in refused:
        assert answer.status_code == 503
        assert answer.headers["retry-after"] == "1"
        error = answer.json()["error"]
        assert error["code"] == "overloaded"
        assert error["type"] == "server_error"
        assert "1 request(s) already queued" in error["message"]
    assert any(e == HEARTBEAT for _, e in log_b)  # b waited, hearing heartbeats,
    assert all(not e.startswith(b"data: {") for _, e in log_b)  # and never got a token
    assert [e for _, e in log_d][-1] == b"data: [DONE]"  # d, admitted after b left, was served


async def test_healthz_stays_fast_while_the_model_generates(start_local: StartLocal) -> None:
    gw = await start_local()
    engine = gw.backend.engines[0]
    latencies: list[float] = []
    body = _completion("Once upon a time", 120)
    async with (
        gw.client() as client,
        gw.client() as probe,
        client.stream("POST", "/v1/completions", json=body) as response,
        aclosing(sse_events(response)) as events,
    ):
        async for event in events:
            if event_json(event) is not None:
                started = trio.current_time()
                break
        for _ in range(30):
            sent = time.perf_counter()
            health = await probe.get("/healthz")
            latencies.append(time.perf_counter() - sent)
            assert health.status_code == 200
        generating = engine.current is not None
        rest = [event async for event in events if event_json(event) is not None]
        elapsed = trio.current_time() - started
    tokens = len(rest)  # the first chunk's token, less the last chunk, which has none

    median, worst = statistics.median(latencies), max(latencies)
    print(
        f"\n/healthz during generation: median {median * 1000:.1f} ms, max {worst * 1000:.1f} ms "
        f"over {len(latencies)} probes; {tokens / elapsed:.1f} tokens/s"
    )
    assert generating  # the probes really ran while the model worked
    assert median < 0.05
    assert worst < 0.5  # slack for a shared, loaded machine
