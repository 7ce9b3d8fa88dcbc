"""Limit windows in Redis, shared by every gateway process that names the same server.

Each team has three sorted sets (scores are Redis server time, so replicas' clocks do not
matter): admitted requests, finished requests' tokens (members ``id:tokens``), and open
streams. One Lua script prunes, checks and counts a request in a single atomic step, so
two processes can never both take the last unit of a window (no read-modify-write race).
Keys carry the team in a hash tag (``{team}``) so one team's keys share a cluster slot.

Releasing a stream and adding tokens happen after the response ends, from a sync
callback; they are queued to a task that sends them. A process that dies holding a
stream leaves a member behind; it is dropped after ``state.stream_lease`` seconds.

Usage records are shared the same way: per-minute hashes of counters
(``HINCRBY``, atomic on the server) that every process adds to, and a sorted set of the
minutes that have any, so :meth:`RedisState.query_usage` sees every replica's traffic.

If Redis cannot be reached, requests are admitted: limits are a fairness tool, and a
Redis outage must not become a gateway outage. Nor a slow one: each call is bounded
(``state.timeout``, the wait for a pooled connection included), and after a few calls in a
row without an answer the client's circuit skips Redis at once until a probe finds it back
(:mod:`gateway.teams.resp`). An outage is logged once when it begins and once when it ends;
:attr:`RedisState.failed_calls` and :attr:`RedisState.skipped_calls` count it.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import cast

import trio

from .limits import WINDOW, Decision, Exceeded, Limits, WindowUsage, decide
from .resp import RedisClient, RedisError, RedisUnavailable, Reply, open_redis
from .state import Ticket
from .usage import UsageRecord, UsageRow

__all__ = ["RedisState", "open_redis_state"]

log = logging.getLogger("gateway.teams")

_ADMIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local window = tonumber(ARGV[6])
local lease = tonumber(ARGV[7])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - window)
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - lease)
local rpm, tpm, smax = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local stream = ARGV[4] == '1'
local requests = redis.call('ZCARD', KEYS[1])
local streams = redis.call('ZCARD', KEYS[3])
local function reset(key)
  local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  if #last == 0 then return 0 end
  return tonumber(last[2]) + window - now
end
local entries = redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')
local amounts = {}
local tokens = 0
for i = 1, #entries, 2 do
  local n = tonumber(string.match(entries[i], ':(%d+)$')) or 0
  amounts[#amounts + 1] = {n, tonumber(entries[i + 1])}
  tokens = tokens + n
end
local tokens_wait = 0
if tpm >= 0 and tokens >= tpm then
  local total = tokens
  for _, e in ipairs(amounts) do
    if total < tpm then break end
    total = total - e[1]
    tokens_wait = e[2] + window - now
  end
end
local requests_wait = 0
if rpm >= 0 and requests >= rpm then
  local at = redis.call('ZRANGE', KEYS[1], requests - rpm, requests - rpm, 'WITHSCORES')
  requests_wait = tonumber(at[2]) + window - now
end
local requests_reset = reset(KEYS[1])
local exceeded = ''
if stream and smax >= 0 and streams >= smax then exceeded = 'concurrent_streams'
elseif rpm >= 0 and requests >= rpm then exceeded = 'requests'
elseif tpm >= 0 and tokens >= tpm then exceeded = 'tokens' end
if exceeded == '' then
  redis.call('ZADD', KEYS[1], now, ARGV[5])
  redis.call('PEXPIRE', KEYS[1], math.ceil(window * 1000))
  if stream then
    redis.call('ZADD', KEYS[3], now, ARGV[5])
    redis.call('PEXPIRE', KEYS[3], math.ceil(lease * 1000))
  end
end
return {exceeded, tostring(requests), tostring(requests_reset), tostring(requests_wait),
        tostring(tokens), tostring(reset(KEYS[2])), tostring(tokens_wait), tostring(streams)}
"""

_FINISH = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
if ARGV[2] == '1' then redis.call('ZREM', KEYS[2], ARGV[1]) end
local tokens = tonumber(ARGV[3])
if tokens > 0 then
  redis.call('ZADD', KEYS[1], now, ARGV[1] .. ':' .. ARGV[3])
  redis.call('PEXPIRE', KEYS[1], math.ceil(tonumber(ARGV[4]) * 1000))
end
return 1
"""


class _Script:
    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    async def run(
        self, client: RedisClient, keys: list[str], args: list[str | int | float]
    ) -> Reply:
        try:
            return await client.call("EVALSHA", self.sha, len(keys), *keys, *args)
        except RedisError as error:
            if not str(error).startswith("NOSCRIPT"):
                raise
        return await client.call("EVAL", self.source, len(keys), *keys, *args)


_USAGE = """
local fields = {'requests', 'errors', 'prompt_tokens', 'completion_tokens', 'stream_ms'}
for i, name in ipairs(fields) do
  local n = tonumber(ARGV[2 + i])
  if n ~= 0 then redis.call('HINCRBY', KEYS[1], ARGV[2] .. '\t' .. name, n) end
end
redis.call('ZADD', KEYS[2], ARGV[1], ARGV[1])
return 1
"""

_USAGE_FIELDS = ("requests", "errors", "prompt_tokens", "completion_tokens", "stream_ms")

_admit = _Script(_ADMIT)
_usage = _Script(_USAGE)
_finish = _Script(_FINISH)


def _limit(value: int | None) -> int:
    return -1 if value is None else value


class RedisState:
    def __init__(
        self,
        client: RedisClient,
        send: trio.MemorySendChannel[Callable[[], Awaitable[None]]],
        *,
        prefix: str,
        stream_lease: float,
    ) -> None:
        self._client = client
        self._send = send
        self._prefix = prefix
        self._lease = stream_lease
        self._last_warning = -math.inf
        self._down_since: float | None = None  # when the current outage began
        self._outage_base = (0, 0)  # the counts below when it began
        self.failed_calls = 0  # calls that got no answer (a running total)

    @property
    def skipped_calls(self) -> int:
        """Calls not even tried because the circuit was open (a running total)."""
        return self._client.circuit.skipped

    def _keys(self, team: str) -> list[str]:
        base = f"{self._prefix}:{{{team}}}"
        return [f"{base}:requests", f"{base}:tokens", f"{base}:streams"]

    def _failed(self, error: RedisError) -> None:
        """Note a call that went wrong: an outage is logged when it begins, an error reply
        at most every 10 s."""
        now = trio.current_time()
        if isinstance(error, RedisUnavailable):
            if self._down_since is None:
                self._down_since = now
                self._outage_base = (self.failed_calls, self.skipped_calls)
                log.error(
                    "redis unavailable, limits not enforced (requests admitted) until it "
                    "answers again: %s",
                    error,
                )
            if not error.skipped:
                self.failed_calls += 1
        elif now - self._last_warning >= 10:
            self._last_warning = now
            log.error("redis error, limits not enforced for this request: %s", error)

    def _answered(self) -> None:
        if self._down_since is not None:
            failed, skipped = self._outage_base
            log.warning(
                "redis answers again after %.1f s (%d call(s) got no answer, %d skipped); "
                "limits enforced",
                trio.current_time() - self._down_since,
                self.failed_calls - failed,
                self.skipped_calls - skipped,
            )
            self._down_since = None

    async def _run(
        self, script: _Script, keys: list[str], args: list[str | int | float]
    ) -> Reply | RedisError:
        """The script's reply, or the error (noted) that the caller fails open on."""
        try:
            reply = await script.run(self._client, keys, args)
        except RedisError as error:
            self._failed(error)
            return error
        self._answered()
        return reply

    async def admit(
        self, team: str, limits: Limits, *, id: str, stream: bool
    ) -> tuple[Decision, Ticket | None]:
        args: list[str | int | float] = [
            _limit(limits.requests_per_minute),
            _limit(limits.tokens_per_minute),
            _limit(limits.concurrent_streams),
            1 if stream else 0,
            id,
            WINDOW,
            self._lease,
        ]
        reply = await self._run(_admit, self._keys(team), args)
        if isinstance(reply, RedisError):
            return Decision(None, 0.0, {}), Ticket(self, team, id, stream)
        assert isinstance(reply, list) and len(reply) == 8
        fields = [item.decode() if isinstance(item, bytes) else str(item) for item in reply]
        exceeded = fields[0]
        usage = WindowUsage(
            requests=int(fields[1]),
            requests_reset=float(fields[2]),
            requests_wait=float(fields[3]),
            tokens=int(fields[4]),
            tokens_reset=float(fields[5]),
            tokens_wait=float(fields[6]),
            streams=int(fields[7]),
        )
        decision = decide(limits, usage, stream=stream)
        if (decision.exceeded or "") != exceeded:  # the script counted what it decided
            log.error("limit decision differs from redis's (%r, %r)", decision.exceeded, exceeded)
            # The script names one of Exceeded's values (or none): it was written from them.
            decision = Decision(
                cast("Exceeded | None", exceeded or None),
                max(decision.retry_after, 1.0),
                decision.headers,
            )
        return decision, Ticket(self, team, id, stream) if decision.allowed else None

    def _queue(self, update: Callable[[], Awaitable[None]], team: str) -> None:
        try:
            self._send.send_nowait(update)
        except trio.WouldBlock:
            log.error("redis updates backed up; dropped one for team %s", team)

    def finish(self, ticket: Ticket, tokens: int) -> None:
        if ticket.stream or tokens > 0:
            self._queue(partial(self._write, ticket, tokens), ticket.team)

    def record_usage(self, record: UsageRecord) -> None:
        """Add one finished request to the shared usage counters (queued; never blocks)."""
        self._queue(partial(self._write_usage, record), record.team)

    def _usage_keys(self, minute: int) -> list[str]:
        base = f"{self._prefix}:{{usage}}"
        return [f"{base}:{minute}", f"{base}:minutes"]

    async def _write_usage(self, r: UsageRecord) -> None:
        minute = int(r.at // 60 * 60)
        args: list[str | int | float] = [
            minute,
            f"{r.team}\t{r.route}\t{r.backend}",
            1,
            int(r.error),
            r.prompt_tokens,
            r.completion_tokens,
            round(r.stream_seconds * 1000),
        ]
        await self._run(_usage, self._usage_keys(minute), args)

    async def _call(self, *args: str) -> Reply:
        try:
            reply = await self._client.call(*args)
        except RedisUnavailable as error:
            self._failed(error)
            raise
        self._answered()
        return reply

    async def query_usage(
        self, *, team: str | None = None, since: float | None = None
    ) -> list[UsageRow]:
        """Every process's usage per team, route and backend, from ``since``'s minute on.
        Raises :class:`RedisError`."""
        low = "-inf" if since is None else str(int(since // 60 * 60))
        minutes_key = self._usage_keys(0)[1]
        minutes = await self._call("ZRANGEBYSCORE", minutes_key, low, "+inf")
        assert isinstance(minutes, list)
        totals: dict[tuple[str, str, str], dict[str, int]] = {}
        for minute in minutes:
            assert isinstance(minute, bytes)
            flat = await self._call("HGETALL", self._usage_keys(int(minute))[0])
            assert isinstance(flat, list)
            for name, value in zip(flat[::2], flat[1::2], strict=True):
                assert isinstance(name, bytes) and isinstance(value, bytes)
                parts = name.decode().split("\t")
                key = (parts[0], parts[1], parts[2])
                if team is not None and key[0] != team:
                    continue
                counts = totals.setdefault(key, dict.fromkeys(_USAGE_FIELDS, 0))
                counts[parts[3]] += int(value)
        return [
            UsageRow(
                *key,
                requests=c["requests"],
                errors=c["errors"],
                prompt_tokens=c["prompt_tokens"],
                completion_tokens=c["completion_tokens"],
                stream_seconds=c["stream_ms"] / 1000,
            )
            for key, c in sorted(totals.items())
        ]

    async def _write(self, ticket: Ticket, tokens: int) -> None:
        _, tokens_key, streams_key = self._keys(ticket.team)
        await self._run(
            _finish,
            [tokens_key, streams_key],
            [ticket.id, 1 if ticket.stream else 0, tokens, WINDOW],
        )


@asynccontextmanager
async def open_redis_state(
    url: str,
    *,
    prefix: str,
    stream_lease: float,
    call_timeout: float = 2.0,
    threshold: int = 3,
    cooldown: float = 5.0,
) -> AsyncIterator[RedisState]:
    """A :class:`RedisState` whose queued updates are all sent (or skipped, while Redis is
    out) before this exits. ``call_timeout`` bounds each Redis call; ``threshold`` calls in
    a row without an answer skip Redis for ``cooldown`` seconds."""
    send, receive = trio.open_memory_channel[Callable[[], Awaitable[None]]](10_000)
    async with (
        open_redis(
            url, call_timeout=call_timeout, threshold=threshold, cooldown=cooldown
        ) as client,
        trio.open_nursery() as nursery,
    ):
        state = RedisState(client, send, prefix=prefix, stream_lease=stream_lease)

        async def writer() -> None:
            async with receive:
                async for update in receive:
                    await update()

        nursery.start_soon(writer)
        try:
            yield state
        finally:
            send.close()
