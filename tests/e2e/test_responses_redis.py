"""Stored responses in a real ``redis-server`` (Debian's): keys per team with Redis's own
TTL, the size cap, two gateway replicas that see each other's responses, and a Redis that
is not there. Wall-clock time is an injected clock: nothing here waits for a TTL."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from gateway.config import build_config
from gateway.responses import RedisResponseStore, ResponseStoreUnavailable, StoredResponse
from gateway.responses.redis import open_redis_response_store
from gateway.responses.store import encode
from gateway.service import open_gateway
from gateway.teams.resp import RedisClient
from gateway.testing.fake_openai import FakeOpenAI

from .test_teams_redis import free_port, redis_url

__all__ = ["redis_url"]  # the fixture, shared with the limits' tests

DAY = 86400.0
START = 1_750_000_000.0


class Clock:
    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def stored(id: str = "resp_1", team: str = "alpha", text: str = "hello") -> StoredResponse:
    return StoredResponse(
        id=id,
        team=team,
        created_at=int(START),
        input_items=[{"type": "message", "role": "user", "content": text}],
        history=[],
        response={"id": id, "object": "response", "status": "completed", "output": []},
    )


def store(url: str, **kw: Any) -> Any:
    kw.setdefault("ttl", 30 * DAY)
    kw.setdefault("max_bytes", 1 << 20)
    return open_redis_response_store(url, prefix="gw", call_timeout=2.0, **kw)


async def test_unreachable_redis_loses_writes_quietly_and_fails_reads_loudly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with store(f"redis://127.0.0.1:{free_port()}/0") as s:  # nothing listens
        assert await s.put(stored("resp_1")) is False
        assert await s.put(stored("resp_2")) is False
        assert s.failed_puts == 2
        with pytest.raises(ResponseStoreUnavailable) as caught:
            await s.get("alpha", "resp_1")
        assert caught.value.status == 503
        with pytest.raises(ResponseStoreUnavailable):
            await s.delete("alpha", "resp_1")
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 2, lines  # one for the writes, one for the reads
    assert lines[0].startswith("responses cannot be stored in redis at 127.0.0.1:")
    assert lines[1].startswith("stored responses cannot be read from redis at 127.0.0.1:")


async def test_put_get_delete_per_team(redis_url: str) -> None:
    async with store(redis_url) as s:
        assert await s.put(stored(team="alpha", text="alpha's")) is True
        assert await s.put(stored(team="", text="nobody's")) is True
        assert await s.get("alpha", "resp_1") == stored(team="alpha", text="alpha's")
        assert await s.get("beta", "resp_1") is None
        assert await s.get("", "resp_1") == stored(team="", text="nobody's")
        assert await s.delete("beta", "resp_1") is False
        assert await s.delete("alpha", "resp_1") is True
        assert await s.get("alpha", "resp_1") is None
        assert await s.delete("alpha", "resp_1") is False
        assert await s.get("", "resp_1") == stored(team="", text="nobody's")
    client = RedisClient(redis_url)
    try:
        assert await client.call("KEYS", "gw:*") == [b"gw:{}:response:resp_1"]
    finally:
        await client.aclose()


async def test_redis_drops_it_after_the_ttl_and_an_expired_one_is_never_returned(
    redis_url: str,
) -> None:
    clock = Clock()
    async with store(redis_url, ttl=30 * DAY, clock=clock) as s:
        await s.put(stored())
        client = RedisClient(redis_url)
        try:
            pttl = await client.call("PTTL", "gw:{alpha}:response:resp_1")
        finally:
            await client.aclose()
        assert isinstance(pttl, int)
        assert 30 * DAY * 1000 - 60_000 < pttl <= 30 * DAY * 1000
        clock.now += 30 * DAY - 1
        assert await s.get("alpha", "resp_1") == stored()
        clock.now += 1  # Redis still holds it (its own clock is real); the store hides it
        assert await s.get("alpha", "resp_1") is None


async def test_a_response_over_the_cap_is_not_sent(redis_url: str) -> None:
    clock = Clock()
    size = len(encode(stored(), START + DAY))
    async with store(redis_url, ttl=DAY, max_bytes=size - 1, clock=clock) as s:
        assert await s.put(stored()) is False
        assert s.oversized_puts == 1
        assert await s.get("alpha", "resp_1") is None
    async with store(redis_url, ttl=DAY, max_bytes=16 << 20, clock=clock) as s:
        big = stored(text="x" * (8 << 20))  # megabytes through one RESP bulk string
        assert await s.put(big) is True
        assert await s.get("alpha", "resp_1") == big


async def test_two_replicas_see_each_others_responses(
    redis_url: str, fake: FakeOpenAI, tmp_path: Path
) -> None:
    config = build_config(
        {
            "backends": {"b": {"type": "openai", "url": fake.url}},
            "routes": {"chat": {"backend": "b"}},
            "state": {"redis": redis_url},
            # Never used with Redis: no file is checked or made there.
            "responses": {"database": str(tmp_path / "missing" / "r.sqlite")},
        },
        environ={},
    )
    async with open_gateway(config) as one, open_gateway(config) as two:
        assert isinstance(one.responses, RedisResponseStore)
        await one.responses.put(stored("resp_a", team=""))
        assert await two.responses.get("", "resp_a") == stored("resp_a", team="")
        assert await two.responses.delete("", "resp_a") is True
        assert await one.responses.get("", "resp_a") is None
