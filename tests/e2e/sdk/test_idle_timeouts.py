"""The failure the gateway exists to fix, reproduced and fixed with unmodified SDKs.

A client whose idle timers are 3 s meets an upstream that stays silent for 12 s, in three
ways: a long prefill (headers, then nothing), a queued request (not even headers until a
slot frees up), and a gap in the middle of the stream. Each runs three ways at once:

* ``direct`` — the client talks to the fake upstream: it fails with its timeout error;
* ``off``    — through the gateway with the route's keepalive off (``interval = 0``):
  it fails the same way, at the same point (the gateway is transparent);
* ``on``     — through the gateway with ``interval = 1``: it completes with every token.

Node: Node's fetch (undici) through an Agent whose ``headersTimeout`` and ``bodyTimeout`` —
the timers that default to 300 s — are 3 s. ``headersTimeout`` runs until the status line
and headers have arrived, so it fires for the queued request (no byte at all); for the
prefill and the gap the headers came at once and ``bodyTimeout`` (time between body
chunks) fires. The ``off`` route keeps ``early_headers`` at its default (on): without a
heartbeat task the gateway still sends no headers before the upstream does, so the very
same timer fires as against the upstream itself — had it committed headers early, the
queued case would end in ``bodyTimeout`` instead, and this test would say so.

Python: the SDK with ``openai.Timeout(30, read=3)`` — the SDK's own timeout type, as its docs
pass it, so the test runs on whichever HTTP library the SDK is built on (httpx, or httpx2
from openai 3 on). The read timer covers the wait for the headers and each body read, so
every failing way raises ``APITimeoutError``: from ``create()`` while queued, from the
iteration otherwise.

All cases of one SDK run at once in one nursery, so a check costs one 12 s silence.
"""

from __future__ import annotations

from typing import Any

import httpx
import openai
import trio

from gateway.testing.fake_openai import FakeOpenAI

from .clients import SDK, SDK_ASYNCGEN_WARNINGS, text_of
from .conftest import RunNode
from .scripts import CHAT, chunk_docs, tokens_text

pytestmark = SDK_ASYNCGEN_WARNINGS

SILENCE = 12.0  # seconds the upstream says nothing
CLIENT_TIMEOUT = 3.0  # the client's idle timers
TOKENS = 20
GAP_AFTER = 10  # tokens streamed before the mid-stream gap

SCENARIOS: dict[str, dict[str, Any]] = {
    "prefill": {"tokens": TOKENS, "pace": 0.01, "prefill": SILENCE},
    # gets the "queue" key per case; a blocker holds the queue's one slot for SILENCE
    "queued": {"tokens": TOKENS, "pace": 0.01},
    # pieces: the role chunk, then tokens: the gap comes after GAP_AFTER tokens
    "gap": {"tokens": TOKENS, "pace": 0.01, "gap_at": GAP_AFTER + 1, "gap": SILENCE},
}
WAYS = ("direct", "off", "on")


async def start_ways(start_gateway, fake: FakeOpenAI) -> dict[str, str]:
    """Base URLs ending in ``/v1``, by way."""
    off = await start_gateway(keepalive={"interval": 0})
    on = await start_gateway(keepalive={"interval": 1})
    return {"direct": fake.url, "off": off.url + "/v1", "on": on.url + "/v1"}


async def hold_slots(nursery: trio.Nursery, fake: FakeOpenAI, queues: list[str]) -> None:
    """Occupy each queue's only slot for SILENCE seconds with a request straight to the
    fake, and return once all are held: every request naming the queue now waits."""

    async def block(queue: str) -> None:
        body = {**CHAT, "fake": {"queue": queue, "prefill": SILENCE, "blocker": True}}
        async with httpx.AsyncClient(timeout=None) as client:
            response = await client.post(fake.url + "/chat/completions", json=body)
            assert response.status_code == 200

    for queue in queues:
        nursery.start_soon(block, queue)
    for queue in queues:
        await fake.wait_queue(queue, holding=1)


def script(scenario: str, case: str) -> dict[str, Any]:
    extra = {"queue": case} if scenario == "queued" else {}
    return {**SCENARIOS[scenario], **extra, "case": case}


def fake_request(fake: FakeOpenAI, case: str) -> Any:
    (request,) = [r for r in fake.requests if (r.body.get("fake") or {}).get("case") == case]
    return request


def check_queue_records(fake: FakeOpenAI, cases: dict[str, str]) -> None:
    """The queued requests really waited: the ones that failed never got the slot, the
    one through the keepalive route got it only when the blocker finished."""
    for way, case in cases.items():
        request = fake_request(fake, case)
        if way == "on":
            assert request.slot_at is not None
            assert request.slot_at - request.received_at > 2 * CLIENT_TIMEOUT
        else:
            assert request.slot_at is None, way


async def test_node_undici_idle_timers(start_gateway, fake: FakeOpenAI, run_node: RunNode) -> None:
    bases = await start_ways(start_gateway, fake)
    timers = {"headersTimeout": CLIENT_TIMEOUT * 1000, "bodyTimeout": CLIENT_TIMEOUT * 1000}
    ops = []
    for scenario in SCENARIOS:
        for way in WAYS:
            case = f"node-{scenario}-{way}"
            ops.append(
                {
                    "id": case,
                    "baseURL": bases[way],
                    "call": "chat",
                    "undici": timers,
                    "params": {**CHAT, "stream": True, "fake": script(scenario, case)},
                }
            )

    async with trio.open_nursery() as nursery:
        await hold_slots(nursery, fake, [f"node-queued-{way}" for way in WAYS])
        results = await run_node(ops, limit=SILENCE + 25)

    def outcome(result: dict[str, Any]) -> tuple[Any, ...]:
        error = result.get("error") or {}
        return (
            result["ok"],
            result["headers"],
            error.get("class"),
            error.get("undici"),
            result["text"],
        )

    body_timeout = (False, True, "TypeError", "UND_ERR_BODY_TIMEOUT")
    headers_timeout = (False, False, "APIConnectionTimeoutError", "UND_ERR_HEADERS_TIMEOUT")
    completed = (True, True, None, None, tokens_text(TOKENS))
    expected = {
        "prefill": {"direct": (*body_timeout, ""), "off": (*body_timeout, "")},
        "queued": {"direct": (*headers_timeout, ""), "off": (*headers_timeout, "")},
        "gap": {
            "direct": (*body_timeout, tokens_text(GAP_AFTER)),
            "off": (*body_timeout, tokens_text(GAP_AFTER)),
        },
    }
    for scenario in SCENARIOS:
        got = {way: outcome(results[f"node-{scenario}-{way}"]) for way in WAYS}
        assert got == {**expected[scenario], "on": completed}, scenario
        for way in ("direct", "off"):  # the client's 3 s timer, not the upstream, ended it
            elapsed = results[f"node-{scenario}-{way}"]["elapsed_ms"] / 1000
            assert CLIENT_TIMEOUT - 0.5 < elapsed < SILENCE - 3, (scenario, way, elapsed)
        on = results[f"node-{scenario}-on"]
        # it sat through a silence well past the client's timer (the blocker started
        # before Node did, so a queued call waits a little less than SILENCE)
        assert on["elapsed_ms"] / 1000 > 2 * CLIENT_TIMEOUT, scenario
        assert on["chunks"] == chunk_docs(fake_request(fake, f"node-{scenario}-on").sent)
    check_queue_records(fake, {way: f"node-queued-{way}" for way in WAYS})


async def test_python_sdk_read_timeout(start_gateway, fake: FakeOpenAI) -> None:
    bases = await start_ways(start_gateway, fake)
    timeout = openai.Timeout(30.0, read=CLIENT_TIMEOUT)
    outcomes: dict[str, tuple[Any, ...]] = {}
    elapsed: dict[str, float] = {}
    chunks_of: dict[str, list[Any]] = {}

    async def run(kind: str, scenario: str, way: str) -> None:
        case = f"{kind}-{scenario}-{way}"
        sdk = SDK(kind, bases[way], timeout=timeout)
        chunks: list[Any] = chunks_of.setdefault(case, [])
        started = trio.current_time()
        try:
            await sdk.stream("chat", chunks, **CHAT, extra_body={"fake": script(scenario, case)})
            outcomes[case] = ("completed", None, None, text_of("chat", chunks))
        except openai.APIError as exc:
            phase = "body" if None in chunks else "headers"
            outcomes[case] = (
                phase,
                type(exc).__name__,
                type(exc.__cause__).__name__,
                text_of("chat", chunks),
            )
        finally:
            elapsed[case] = trio.current_time() - started
            await sdk.aclose()

    kinds = ("sync", "async")
    with trio.fail_after(SILENCE + 25):
        async with trio.open_nursery() as nursery:
            await hold_slots(nursery, fake, [f"{k}-queued-{w}" for k in kinds for w in WAYS])
            for kind in kinds:
                for scenario in SCENARIOS:
                    for way in WAYS:
                        nursery.start_soon(run, kind, scenario, way)

    timed_out = ("APITimeoutError", "ReadTimeout")
    completed = ("completed", None, None, tokens_text(TOKENS))
    expected = {
        "prefill": {"direct": ("body", *timed_out, ""), "off": ("body", *timed_out, "")},
        "queued": {"direct": ("headers", *timed_out, ""), "off": ("headers", *timed_out, "")},
        "gap": {
            "direct": ("body", *timed_out, tokens_text(GAP_AFTER)),
            "off": ("body", *timed_out, tokens_text(GAP_AFTER)),
        },
    }
    for kind in kinds:
        for scenario in SCENARIOS:
            got = {way: outcomes[f"{kind}-{scenario}-{way}"] for way in WAYS}
            assert got == {**expected[scenario], "on": completed}, (kind, scenario)
            for way in ("direct", "off"):
                took = elapsed[f"{kind}-{scenario}-{way}"]
                assert CLIENT_TIMEOUT - 0.5 < took < SILENCE - 3, (kind, scenario, way, took)
            case = f"{kind}-{scenario}-on"
            assert elapsed[case] > 2 * CLIENT_TIMEOUT
            sent = fake_request(fake, case).sent
            assert [c.to_dict(mode="json") for c in chunks_of[case] if c] == chunk_docs(sent)
        check_queue_records(fake, {way: f"{kind}-queued-{way}" for way in WAYS})
