"""A small Redis client for trio: RESP2 over trio sockets, a pool of connections.

Why not redis-py: its asyncio client needs asyncio, and its sync client in worker threads
costs a thread hop per command and cannot be cancelled. The gateway needs a handful of
commands (``EVALSHA``/``EVAL``, ``ZREM``, ``PING``, ``AUTH``, ``SELECT``), and RESP2 is a
page of code. The protocol part (:func:`encode_command`, :class:`ReplyParser`) is sans-I/O.

Cancellation: a command cancelled halfway leaves its connection out of step with the
server, so that connection is closed, never returned to the pool.

Errors::

    RedisError              an error reply: the server answered, the connection stays
    └── RedisUnavailable    no usable answer: could not connect, connection lost, a reply
                            that is not RESP, the call's time ran out, or skipped at once
                            because the client's circuit is open (``skipped``)

A stalled server costs each call at most the client's ``call_timeout`` — waiting for a free
connection included — and after a few such calls in a row the circuit
(:class:`~gateway.teams.circuit.Circuit`) skips the server for a while, so a dead Redis
costs nothing per call until a probe finds it back.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import trio

from .circuit import Circuit

__all__ = [
    "RedisClient",
    "RedisError",
    "RedisUnavailable",
    "ReplyParser",
    "encode_command",
    "parse_redis_url",
]

Reply = bytes | int | list["Reply"] | None


class RedisError(Exception):
    """An error reply from the server (or one of :class:`RedisUnavailable`)."""


class RedisUnavailable(RedisError):
    """No usable answer from the server; ``skipped`` when the call was not even tried
    (the circuit is open)."""

    def __init__(self, message: str, *, skipped: bool = False) -> None:
        super().__init__(message)
        self.skipped = skipped


class RedisProtocolError(RedisUnavailable):
    """Bytes that are not a RESP2 reply: the connection cannot be trusted any more."""


@dataclass(frozen=True, slots=True)
class RedisAddress:
    host: str
    port: int
    db: int
    password: str | None
    username: str | None


def parse_redis_url(url: str) -> RedisAddress:
    """``redis://[[user]:password@]host[:port][/db]``. Raises :class:`ValueError`."""
    parts = urlsplit(url)
    if parts.scheme != "redis" or not parts.hostname:
        raise ValueError(f"{url!r} is not redis://host[:port][/db]")
    path = parts.path.strip("/")
    if path and not path.isdigit():
        raise ValueError(f"{url!r}: the database must be a number")
    return RedisAddress(
        host=parts.hostname,
        port=parts.port or 6379,
        db=int(path or 0),
        password=unquote(parts.password) if parts.password else None,
        username=unquote(parts.username) if parts.username else None,
    )


def encode_command(*args: bytes | str | float) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class ReplyParser:
    """Feed bytes, take whole replies. An error reply comes out as a :class:`RedisError`."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def next_reply(self) -> Reply | RedisError | type[Incomplete]:
        """The next whole reply, or :class:`Incomplete`. Raises :class:`RedisProtocolError`
        for bytes that are not RESP2."""
        try:
            result = self._parse(0)
        except ValueError as error:  # a length or number that is not one
            raise RedisProtocolError(f"protocol error: {error}") from None
        if result is None:
            return Incomplete
        reply, end = result
        del self._buffer[:end]
        return reply

    def _parse(self, pos: int) -> tuple[Reply | RedisError, int] | None:
        buf = self._buffer
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        kind, line, after = buf[pos : pos + 1], bytes(buf[pos + 1 : eol]), eol + 2
        if kind == b"+":
            return line, after
        if kind == b"-":
            return RedisError(line.decode("utf-8", "replace")), after
        if kind == b":":
            return int(line), after
        if kind == b"$":
            size = int(line)
            if size < 0:
                return None, after
            if len(buf) < after + size + 2:
                return None
            return bytes(buf[after : after + size]), after + size + 2
        if kind == b"*":
            count = int(line)
            if count < 0:
                return None, after
            items: list[Reply] = []
            for _ in range(count):
                item = self._parse(after)
                if item is None:
                    return None
                value, after = item
                if isinstance(value, RedisError):
                    raise value
                items.append(value)
            return items, after
        raise RedisProtocolError(f"protocol error: unexpected reply type {bytes(kind)!r}")


class Incomplete:
    """Marker: the parser needs more bytes."""


class _Connection:
    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.parser = ReplyParser()

    async def call(self, *args: bytes | str | float) -> Reply:
        await self.stream.send_all(encode_command(*args))
        while True:
            reply = self.parser.next_reply()
            if reply is not Incomplete:
                break
            data = await self.stream.receive_some(65536)
            if not data:
                raise RedisUnavailable("redis closed the connection")
            self.parser.feed(data)
        if isinstance(reply, RedisError):
            raise reply
        assert not isinstance(reply, type)
        return reply


class RedisClient:
    """A pool of up to ``size`` connections to one Redis server. Use :func:`open_redis`.

    Each :meth:`call` takes at most ``call_timeout`` seconds, the wait for a free connection
    included. ``threshold`` calls in a row without an answer open the circuit for
    ``cooldown`` seconds (see :class:`~gateway.teams.circuit.Circuit`)."""

    def __init__(
        self,
        url: str,
        *,
        size: int = 8,
        call_timeout: float = 5.0,
        threshold: int = 3,
        cooldown: float = 5.0,
    ) -> None:
        self.address = parse_redis_url(url)
        self.circuit = Circuit(threshold=threshold, cooldown=cooldown)
        self._idle: list[_Connection] = []
        self._limit = trio.CapacityLimiter(size)
        self._timeout = call_timeout

    def _where(self) -> str:
        return f"redis at {self.address.host}:{self.address.port}"

    async def _connect(self) -> _Connection:
        a = self.address
        conn = _Connection(await trio.open_tcp_stream(a.host, a.port))
        try:
            if a.password is not None:
                await conn.call("AUTH", *((a.username,) if a.username else ()), a.password)
            if a.db:
                await conn.call("SELECT", a.db)
        except BaseException:
            await trio.aclose_forcefully(conn.stream)
            raise
        return conn

    async def call(self, *args: bytes | str | float) -> Reply:
        """Run one command; its reply. Raises :class:`RedisError` for an error reply and
        :class:`RedisUnavailable` when there is no answer within ``call_timeout`` (or the
        circuit is open: then at once, with no I/O). Cancellation closes the connection
        the command was on."""
        circuit = self.circuit
        probe = circuit.try_call(trio.current_time())
        if probe is None:
            raise RedisUnavailable(
                f"{self._where()}: not tried, {circuit.failures} call(s) in a row got no "
                "answer; a probe follows shortly",
                skipped=True,
            )
        try:
            with trio.fail_after(self._timeout):
                reply = await self._call(args)
        except RedisUnavailable:
            circuit.failed(trio.current_time(), probe)
            raise
        except trio.TooSlowError:
            circuit.failed(trio.current_time(), probe)
            raise RedisUnavailable(
                f"{self._where()}: no answer within {self._timeout:g} s"
            ) from None
        except (OSError, trio.BrokenResourceError) as exc:
            circuit.failed(trio.current_time(), probe)
            raise RedisUnavailable(f"{self._where()}: {exc!r}") from None
        except RedisError:
            circuit.succeeded(probe)  # an error reply is an answer
            raise
        except BaseException:
            circuit.abandoned(probe)  # cancelled (or a bug): no verdict on the server
            raise
        circuit.succeeded(probe)
        return reply

    async def _call(self, args: tuple[bytes | str | float, ...]) -> Reply:
        async with self._limit:
            conn = self._idle.pop() if self._idle else None
            ok = False
            try:
                if conn is None:
                    conn = await self._connect()
                reply = await conn.call(*args)
                ok = True
                return reply
            except RedisUnavailable:
                raise
            except RedisError:
                ok = True  # an error reply leaves the connection in step
                raise
            finally:
                if conn is not None:
                    if ok:
                        self._idle.append(conn)
                    else:
                        await trio.aclose_forcefully(conn.stream)

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            await trio.aclose_forcefully(conn.stream)


@asynccontextmanager
async def open_redis(
    url: str,
    *,
    size: int = 8,
    call_timeout: float = 5.0,
    threshold: int = 3,
    cooldown: float = 5.0,
) -> AsyncIterator[RedisClient]:
    """A :class:`RedisClient` whose idle connections are closed on exit."""
    client = RedisClient(
        url, size=size, call_timeout=call_timeout, threshold=threshold, cooldown=cooldown
    )
    try:
        yield client
    finally:
        await client.aclose()
