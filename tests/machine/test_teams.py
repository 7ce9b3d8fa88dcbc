"""Team limits shared by the workers of one machine (``gateway.machine``): requests, tokens
and concurrent streams per team across workers, places given back when a worker goes away,
and what waits on a parent that goes away. MockClock."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from trio.testing import MockClock

from gateway.errors import ShuttingDown
from gateway.teams.limits import Limits
from gateway.worker_link import ParentState, SharedSlots

from .helpers import (
    BACKEND,
    TEAM,
    Admit,
    Connect,
    Finish,
    Requests,
    Wait,
    limited,
    loads,
    play,
    settle,
)


async def test_requests_per_minute_hold_across_workers(
    autojump_clock: MockClock, connect: Connect
) -> None:
    links = [(await connect(worker)).link for worker in range(2)]
    decisions = await play(
        links,
        Limits(requests_per_minute=3),
        [*(Admit(i % 2, f"r{i}") for i in range(6)), Wait(60), Admit(1, "later")],
    )
    assert [d.exceeded for d in decisions] == [None] * 3 + ["requests"] * 3 + [None]
    refused = decisions[3]
    assert refused.retry_after == 60.0
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert decisions[2].headers["x-ratelimit-remaining-requests"] == "0"
    assert decisions[0].headers["x-ratelimit-remaining-requests"] == "2"


async def test_concurrent_streams_hold_across_workers_until_one_finishes(
    autojump_clock: MockClock, connect: Connect
) -> None:
    links = [(await connect(worker)).link for worker in range(2)]
    decisions = await play(
        links,
        Limits(concurrent_streams=1),
        [
            Admit(0, "s1", stream=True),
            Admit(1, "s2", stream=True),
            Admit(1, "plain"),  # not a stream: not counted against the streams
            Finish("s1"),
            Admit(1, "s3", stream=True),
            Admit(0, "s4", stream=True),
        ],
    )
    assert [d.exceeded for d in decisions] == [
        None,
        "concurrent_streams",
        None,
        None,
        "concurrent_streams",
    ]
    assert decisions[1].retry_after == 1.0


async def test_finished_tokens_count_against_tokens_per_minute_on_every_worker(
    autojump_clock: MockClock, connect: Connect
) -> None:
    links = [(await connect(worker)).link for worker in range(2)]
    decisions = await play(
        links,
        Limits(tokens_per_minute=100),
        [
            Admit(0, "r1"),
            Admit(1, "r2"),  # admitted: no tokens have finished yet
            Finish("r1", tokens=60),
            Admit(1, "r3"),
            Finish("r2", tokens=50),
            Admit(0, "r4"),
            Admit(1, "r5"),
            Wait(60),
            Admit(1, "r6"),
        ],
    )
    assert [d.exceeded for d in decisions] == [None, None, None, "tokens", "tokens", None]
    assert decisions[2].headers["x-ratelimit-remaining-tokens"] == "40"
    assert decisions[3].headers["x-ratelimit-remaining-tokens"] == "0"
    # 110 tokens in the window, r1's 60 finished two (virtual) seconds before r4 asked:
    # below the limit once they leave
    assert decisions[3].retry_after == pytest.approx(58)


async def test_a_stream_admission_cancelled_before_its_reply_gives_its_place_back(
    autojump_clock: MockClock, connect: Connect
) -> None:
    """The parent counts the stream when it reads the admit; a caller cancelled meanwhile
    (a WebSocket turn whose socket closed) gets no ticket to finish it with."""
    a, b = (await connect(0)).link, (await connect(1)).link
    streams = Limits(concurrent_streams=1)
    with trio.CancelScope() as cancelled:
        cancelled.cancel()  # the admit is sent, then the wait for its reply is cancelled
        await ParentState(a).admit(TEAM, streams, id="s1", stream=True)
    assert cancelled.cancelled_caught
    await settle()
    decision, ticket = await ParentState(b).admit(TEAM, streams, id="s2", stream=True)
    assert decision.allowed and ticket is not None

    # One the parent refused gives back nothing: s2's place stays taken.
    with trio.CancelScope() as cancelled:
        cancelled.cancel()
        await ParentState(a).admit(TEAM, streams, id="s3", stream=True)
    await settle()
    decision, _ = await ParentState(b).admit(TEAM, streams, id="s4", stream=True)
    assert decision.exceeded == "concurrent_streams"
    ticket.release(0)
    await settle()
    decision, _ = await ParentState(a).admit(TEAM, streams, id="s5", stream=True)
    assert decision.allowed


async def test_a_worker_that_goes_away_gives_back_its_slots_and_its_streams(
    autojump_clock: MockClock, nursery: trio.Nursery, connect: Connect
) -> None:
    dying, living = await connect(0), await connect(1)
    a, b = dying.link, living.link
    streams = Limits(concurrent_streams=1)
    requests = Requests(nursery)
    await requests.start(0, SharedSlots(a, BACKEND, limited(1)))
    await requests.start(1, SharedSlots(a, BACKEND, limited(1)))
    await requests.start(2, SharedSlots(b, BACKEND, limited(1)))
    decision, _ = await ParentState(a).admit(TEAM, streams, id="s1", stream=True)
    assert decision.allowed
    decision, _ = await ParentState(b).admit(TEAM, streams, id="s2", stream=True)
    assert decision.exceeded == "concurrent_streams"
    assert loads(b) == [(1, 2)]

    await dying.leave()
    await settle()

    assert requests.granted == [0, 2]  # the dead worker's waiter left the queue too
    assert loads(b) == [(1, 0)]
    decision, _ = await ParentState(b).admit(TEAM, streams, id="s3", stream=True)
    assert decision.allowed


async def test_what_waits_on_a_parent_that_goes_away_is_refused_as_shutting_down(
    autojump_clock: MockClock, nursery: trio.Nursery, connect: Connect
) -> None:
    orphan, other = await connect(0), await connect(1)
    await connect(2, running=False)  # keeps a collect waiting
    requests = Requests(nursery)
    await requests.start(0, SharedSlots(other.link, BACKEND, limited(1)))
    await requests.start(1, SharedSlots(orphan.link, BACKEND, limited(1)))
    assert requests.waited == [1]
    asked: list[BaseException] = []

    async def ask() -> None:
        try:
            await orphan.link.collect("metrics")
        except ShuttingDown as refused:
            asked.append(refused)

    nursery.start_soon(ask)
    await trio.testing.wait_all_tasks_blocked()
    assert not orphan.link.lost.is_set()

    await orphan.parent_end.aclose()
    await settle()

    assert orphan.link.lost.is_set()
    assert isinstance(requests.refused[1], ShuttingDown)
    assert requests.refused[1].status == 503
    assert len(asked) == 1
    assert loads(other.link) == [(1, 0)]  # the machine dropped the orphan's place in the queue


async def test_a_worker_without_its_parent_refuses_new_asks_as_shutting_down(
    autojump_clock: MockClock, connect: Connect
) -> None:
    orphan = await connect(0)
    await orphan.parent_end.aclose()
    with trio.fail_after(1):
        await orphan.link.lost.wait()

    with pytest.raises(ShuttingDown, match="lost its parent process"):
        await orphan.link.ask({"op": "collect", "what": "metrics"})
    with pytest.raises(ShuttingDown):
        await ParentState(orphan.link).admit(TEAM, Limits(), id="r", stream=False)
    for settings in (limited(1), limited(None)):
        with pytest.raises(ShuttingDown):
            async with SharedSlots(orphan.link, BACKEND, settings).hold():
                pytest.fail("held a slot with no parent to keep it")
