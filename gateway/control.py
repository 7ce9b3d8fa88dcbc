"""The line between the parent process and one worker: JSON objects, one per line, over
one end of a Unix socket pair.

:meth:`Channel.send` never blocks: messages queue to a writer task that sends whatever has
gathered in one write, so a caller that may already be cancelled (a relay ending) can
still send, and a burst of messages costs one system call.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import AsyncIterator
from typing import Any

import trio

__all__ = ["LOAD_INTERVAL", "Channel", "Message"]

Message = dict[str, Any]

LOAD_INTERVAL = 0.1
"""Seconds between reports of load, at most: a worker's in-flight counts to the parent, the
machine's loads to the workers. Each report wakes every process that gets it, so this
bounds what an idle machine spends on keeping ``least_busy`` current."""

_MAX_LINE = 64 * 1024 * 1024  # a metrics scrape of every series fits many times over
_RECEIVE = 256 * 1024


class Channel:
    """One end of the line. Run :meth:`run_writer` in a task for the channel's lifetime;
    read with ``async for message in channel``."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self._out, self._queue = trio.open_memory_channel[bytes](math.inf)

    def send(self, message: Message) -> None:
        """Queue ``message``; a channel whose writer has stopped drops it."""
        line = json.dumps(message, separators=(",", ":")).encode() + b"\n"
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            self._out.send_nowait(line)

    async def run_writer(self) -> None:
        """Send what :meth:`send` queued until the peer is gone."""
        try:
            async for line in self._queue:
                lines = [line]
                while True:
                    try:
                        lines.append(self._queue.receive_nowait())
                    except trio.WouldBlock:
                        break
                await self.stream.send_all(b"".join(lines))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            self._queue.close()

    async def __aiter__(self) -> AsyncIterator[Message]:
        """The peer's messages, until it closes its end (or breaks the line)."""
        buffer = bytearray()
        while True:
            try:
                data = await self.stream.receive_some(_RECEIVE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            if not data:
                return
            start = len(buffer)
            buffer += data
            end = buffer.find(b"\n", start)
            while end != -1:
                yield json.loads(buffer[:end])
                del buffer[: end + 1]
                end = buffer.find(b"\n")
            if len(buffer) > _MAX_LINE:
                raise ValueError("control message over 64 MiB")
