"""Stored responses in Redis, so that every replica that names the same server sees every
response (``[state] redis``).

One key per response, ``{prefix}:{team}:response:{id}`` (the team in a hash tag, as the
limit windows have it), holding the encoded record, set with ``PX`` so Redis drops it when
its TTL runs out. A record also carries the time it expires at, and one past it is never
returned, whatever Redis still holds.

Each call is bounded by ``[state] timeout`` and goes through the client's circuit
(:mod:`gateway.teams.resp`): with Redis out, a write is logged and counted and the
request goes on; a read or a delete is :class:`ResponseStoreUnavailable` (503), not a 404.
Nothing is sent to Redis before the first call, so a gateway starts while Redis is out.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import trio

from ..teams.resp import RedisClient, RedisError, open_redis
from .store import StoredResponse, StoreHealth, decode, encode

__all__ = ["RedisResponseStore", "open_redis_response_store"]

log = logging.getLogger("gateway.responses")


class RedisResponseStore:
    """A :class:`~gateway.responses.store.ResponseStore` in Redis. Use
    :func:`open_redis_response_store`. ``clock`` gives wall-clock (Unix) time."""

    def __init__(
        self,
        client: RedisClient,
        *,
        prefix: str,
        ttl: float,
        max_bytes: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self._prefix = prefix
        self.ttl = ttl
        self._clock = clock
        address = client.address
        self._health = StoreHealth(f"redis at {address.host}:{address.port}", max_bytes)

    @property
    def failed_puts(self) -> int:
        return self._health.failed_puts

    @property
    def oversized_puts(self) -> int:
        return self._health.oversized_puts

    def key(self, team: str, response_id: str) -> str:
        return f"{self._prefix}:{{{team}}}:response:{response_id}"

    async def put(self, stored: StoredResponse) -> bool:
        expires_at = self._clock() + self.ttl
        record = await trio.to_thread.run_sync(encode, stored, expires_at)
        if not self._health.fits(stored, record):
            return False
        key = self.key(stored.team, stored.id)
        try:
            await self._client.call("SET", key, record, "PX", math.ceil(self.ttl * 1000))
        except RedisError as error:
            self._health.failed(error)
            return False
        self._health.stored()
        return True

    async def get(self, team: str, response_id: str) -> StoredResponse | None:
        try:
            record = await self._client.call("GET", self.key(team, response_id))
        except RedisError as error:
            raise self._health.unavailable(error) from None
        if record is None:
            return None
        assert isinstance(record, bytes)
        try:
            stored, expires_at = await trio.to_thread.run_sync(decode, record)
        except ValueError as error:
            log.error("response %s of team %r in redis is unreadable: %s", response_id, team, error)
            return None
        if expires_at <= self._clock() or (stored.team, stored.id) != (team, response_id):
            return None
        return stored

    async def delete(self, team: str, response_id: str) -> bool:
        try:
            deleted = await self._client.call("DEL", self.key(team, response_id))
        except RedisError as error:
            raise self._health.unavailable(error) from None
        return deleted == 1


@asynccontextmanager
async def open_redis_response_store(
    url: str,
    *,
    prefix: str,
    call_timeout: float,
    ttl: float,
    max_bytes: int,
    clock: Callable[[], float] = time.time,
) -> AsyncIterator[RedisResponseStore]:
    """A :class:`RedisResponseStore` with its own connection pool (and circuit), closed on
    exit. Connects on the first call, not here."""
    async with open_redis(url, call_timeout=call_timeout) as client:
        yield RedisResponseStore(client, prefix=prefix, ttl=ttl, max_bytes=max_bytes, clock=clock)
