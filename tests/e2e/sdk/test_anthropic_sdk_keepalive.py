"""The official ``anthropic`` Python SDK (pinned), unmodified, against a served gateway's
``/v1/messages`` with heartbeats: a silence longer than the SDK's read timeout (a prefill,
a gap between deltas, a wait in the admission queue) that ``event: ping`` keeps alive,
beside a control where the same client, straight at the fake, times out; a whole answer
after a silence with whitespace keepalive; and pings between every two events, which the
application never sees."""

from __future__ import annotations

from functools import partial
from typing import Any

import anthropic
import pytest
import trio

from gateway.testing.fake_openai import FakeOpenAI, messages_events
from gateway.testing.waiting import wait_until

from .anthropic_gateway import ASK, MODES, NATIVE, STREAM_EVENTS, client, events_of
from .clients import SDK_ASYNCGEN_WARNINGS
from .scripts import tokens_text

pytestmark = SDK_ASYNCGEN_WARNINGS

PING = b'event: ping\ndata: {"type": "ping"}\n\n'
# A silence 1.5 times the SDK's read timeout, heartbeats four times as often as that timeout.
READ_TIMEOUT = 0.8
SILENCE = 1.2
KEEPALIVE = {"interval": 0.2}
# The piece of the fake's script before which the silence between the first and the second
# text delta falls: Messages events count message_start and content_block_start, chat
# chunks the role chunk.
SECOND_DELTA = {"passthrough": 3, "translated": 2}


def short_read() -> anthropic.Timeout:
    return anthropic.Timeout(connect=5, read=READ_TIMEOUT, write=5, pool=5)


def pings_between_events(raw: bytes) -> list[int]:
    """For each event that is no ping, how many pings came right before it."""
    counts, pending = [], 0
    for name, _ in events_of(raw):
        if name == "ping":
            pending += 1
        else:
            counts.append(pending)
            pending = 0
    return counts


# --- silence and heartbeats -------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_silence_longer_than_the_read_timeout_is_kept_alive_by_pings(
    start_gateway, fake: FakeOpenAI, mode: str
) -> None:
    """A silent prefill and a silent gap between two text deltas, each longer than the SDK's
    read timeout: pings keep both ways of streaming alive, before ``message_start`` and
    between content events, and the application never sees one."""
    gw = await start_gateway(backend=MODES[mode], keepalive=KEEPALIVE)
    script = {"tokens": 3, "prefill": SILENCE, "gap_at": SECOND_DELTA[mode], "gap": SILENCE}
    raw_create, raw_helper = bytearray(), bytearray()
    events: list[Any] = []
    final: list[anthropic.types.Message] = []

    async def create() -> None:
        async with client(gw.url, tap=raw_create, timeout=short_read()) as sdk:
            stream = await sdk.messages.create(**ASK, stream=True, extra_body={"fake": script})
            async with stream:
                async for event in stream:
                    events.append(event)

    async def helper() -> None:
        async with (
            client(gw.url, tap=raw_helper, timeout=short_read()) as sdk,
            sdk.messages.stream(**ASK, extra_body={"fake": script}) as stream,
        ):
            final.append(await stream.get_final_message())

    started = trio.current_time()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(create)
            nursery.start_soon(helper)
    assert trio.current_time() - started >= 2 * SILENCE
    assert [e.type for e in events] == STREAM_EVENTS
    assert final[0].content[0].text == tokens_text(3)
    assert final[0].stop_reason == "end_turn"
    for raw in (raw_create, raw_helper):
        names = [name for name, _ in events_of(bytes(raw)) if name != "ping"]
        assert names == STREAM_EVENTS
        before = pings_between_events(bytes(raw))
        assert before[0] >= SILENCE / READ_TIMEOUT  # before message_start
        assert before[3] >= SILENCE / READ_TIMEOUT  # between the first two text deltas


async def test_control_the_same_silence_straight_at_the_upstream_times_out(
    fake: FakeOpenAI,
) -> None:
    """Without the gateway, the silence the tests above cross kills the SDK's stream: the
    prefill of a stream, and the wait for a whole answer."""
    url = f"http://127.0.0.1:{fake.port}"
    script = {"tokens": 3, "prefill": SILENCE}
    seen: list[Any] = []

    async def create_stream(sdk: anthropic.AsyncAnthropic) -> None:
        stream = await sdk.messages.create(**ASK, stream=True, extra_body={"fake": script})
        with pytest.raises(anthropic.APITimeoutError):
            async with stream:
                async for event in stream:
                    seen.append(event)

    async def helper(sdk: anthropic.AsyncAnthropic) -> None:
        with pytest.raises(anthropic.APITimeoutError):
            async with sdk.messages.stream(**ASK, extra_body={"fake": script}) as stream:
                await stream.get_final_message()

    async def create_whole(sdk: anthropic.AsyncAnthropic) -> None:
        with pytest.raises(anthropic.APITimeoutError):
            await sdk.messages.create(**ASK, extra_body={"fake": script})

    async with client(url, timeout=short_read()) as sdk:
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                for call in (create_stream, helper, create_whole):
                    nursery.start_soon(call, sdk)
    assert seen == []
    assert len(fake.requests) == 3


@pytest.mark.parametrize("mode", MODES)
async def test_a_wait_in_the_admission_queue_is_kept_alive_by_pings(
    start_gateway, mode: str
) -> None:
    """Queued behind the backend's only slot for longer than the SDK's read timeout: pings
    from the queue on, before any attempt, keep the stream helper waiting."""
    admission = {"max_concurrency": 1, "max_queue": 1}
    gw = await start_gateway(backend={**MODES[mode], "admission": admission}, keepalive=KEEPALIVE)
    slots = gw.gateway.upstreams["fake"].slots
    async with gw.client() as holder, trio.open_nursery() as holding:
        holding.start_soon(
            partial(holder.post, "/v1/messages", json={**ASK, "fake": {"prefill": SILENCE}})
        )
        await wait_until(lambda: slots.in_flight == 1)
        tap = bytearray()
        async with client(gw.url, tap=tap, timeout=short_read()) as sdk:
            with trio.fail_after(10):
                async with sdk.messages.stream(**ASK, extra_body={"fake": {}}) as helper:
                    final = await helper.get_final_message()
    assert final.content[0].text == tokens_text(3)
    assert pings_between_events(bytes(tap))[0] >= 2


@pytest.mark.parametrize("mode", MODES)
async def test_whole_answers_after_a_silence_with_whitespace_keepalive(
    start_gateway, mode: str
) -> None:
    """``non_stream = "whitespace"``: a whole answer after a silence longer than the read
    timeout arrives; one that fails after the 200 went out raises, never a clean answer."""
    keepalive = {**KEEPALIVE, "non_stream": "whitespace"}
    gw = await start_gateway(backend=MODES[mode], keepalive=keepalive)
    answers: list[anthropic.types.Message] = []

    async def answered(sdk: anthropic.AsyncAnthropic) -> None:
        answers.append(await sdk.messages.create(**ASK, extra_body={"fake": {"prefill": SILENCE}}))

    async def failed(sdk: anthropic.AsyncAnthropic) -> None:
        script = {"headers_delay": SILENCE, "status": 500}
        with pytest.raises(anthropic.APIConnectionError):
            await sdk.messages.create(**ASK, extra_body={"fake": script})

    async with client(gw.url, timeout=short_read()) as sdk:
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(answered, sdk)
                nursery.start_soon(failed, sdk)
    assert answers[0].content[0].text == tokens_text(3)


async def test_pings_between_every_two_events_are_harmless(start_gateway, fake: FakeOpenAI) -> None:
    """A native upstream pausing after every event: a ping lands in every position of the
    stream, and the SDK hands the application the events, and the message, as if there
    were none."""
    gw = await start_gateway(backend=NATIVE, keepalive={"interval": 0.1})
    chunks = [e.decode() for e in messages_events(3, model="upstream-m")]
    script = {"chunks": chunks, "pace": 0.25}
    tap = bytearray()
    events: list[Any] = []
    async with client(gw.url, tap=tap) as sdk:
        with trio.fail_after(10):
            async with sdk.messages.stream(**ASK, extra_body={"fake": script}) as helper:
                async for event in helper:
                    events.append(event)
                final = await helper.get_final_message()
    pings = pings_between_events(bytes(tap))
    # message_start is held until the first content event, so it comes with
    # content_block_start; every other event follows a pause, and a ping in it.
    assert len(pings) == len(STREAM_EVENTS)
    assert all(n >= 1 for i, n in enumerate(pings) if i != 1), pings
    assert bytes(tap).replace(PING, b"") == b"".join(messages_events(3, model="upstream-m"))
    assert [e.type for e in events if e.type in STREAM_EVENTS] == STREAM_EVENTS
    assert final.content[0].text == tokens_text(3)
