"""The WebSocket ping clock: sans-I/O arithmetic over plain numbers."""

from __future__ import annotations

import math

from gateway.timers import PingClock


def test_a_ping_is_due_after_an_interval_of_silence() -> None:
    clock = PingClock(2.0, now=10.0)
    assert clock.due_at == 12.0 and clock.gone_at == math.inf
    clock.note_write(11.0)  # a frame went out
    assert clock.due_at == 13.0 and clock.next_at() == 13.0


def test_a_ping_unanswered_for_two_intervals_means_gone() -> None:
    clock = PingClock(2.0, now=0.0)
    clock.note_ping(2.0)
    assert clock.due_at == 4.0 and clock.gone_at == 6.0
    clock.note_ping(4.0)  # a second ping does not restart the wait for the first's pong
    assert clock.gone_at == 6.0 and clock.next_at() == 6.0
    clock.note_pong()
    assert clock.gone_at == math.inf and clock.next_at() == 6.0  # the next ping's time


def test_the_interval_may_change_and_zero_sends_nothing() -> None:
    clock = PingClock(15.0, now=0.0)
    clock.interval = 0.5  # a turn on a route with a shorter interval began
    assert clock.due_at == 0.5
    clock.note_ping(0.5)
    clock.interval = 0.0
    assert clock.due_at == math.inf and clock.gone_at == math.inf and clock.next_at() == math.inf
