"""Each request's messages for its app, in a queue a fraction of the size of hypercorn's.

hypercorn hands a request's messages to the app — the parts of its body, then
``http.disconnect``; a WebSocket's frames — through a trio memory channel of
``config.max_app_queue_size``, one per request: ≈ 1.8 KiB each (its state, a deque's first
block, two channel objects and their task registries), held for as long as the request
lasts — for an idle stream in a long prefill, minutes. :class:`AppQueue` is the same
bounded FIFO for its one producer (the connection's reader) and one consumer (the app):
a list, and a parking lot made only when one of them has to wait (≈ 0.2 KiB in all when
nobody waits, as for every relayed request: the gateway takes a request's body with
:func:`receive_now` and hears of the client leaving from :mod:`gateway.http_stream`).

:func:`install` makes hypercorn's connections spawn their apps with it. It relies on
hypercorn internals (``TaskGroup._nursery``, ``task_group._handle``), which is why
hypercorn is pinned; ``tests/test_app_queue.py`` (which serves an app through it) fails
if they change.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import hypercorn.trio.tcp_server
import trio
from hypercorn.config import Config
from hypercorn.trio.task_group import TaskGroup, _handle
from hypercorn.typing import AppWrapper, ASGIReceiveCallable, ASGIReceiveEvent, ASGISendEvent

__all__ = ["AppQueue", "GatewayTaskGroup", "install", "receive_now"]


class AppQueue:
    """A bounded FIFO of one request's messages for its app. :meth:`send` queues at once
    while there is room (no pass through the scheduler), else waits for the app to take
    one; :meth:`receive` is a checkpoint, as a memory channel's is."""

    __slots__ = ("_items", "_lot", "_size")

    def __init__(self, size: int) -> None:
        self._items: list[ASGIReceiveEvent] = []
        self._size = size
        self._lot: trio.lowlevel.ParkingLot | None = None  # made for the first wait

    def __len__(self) -> int:
        return len(self._items)

    def send_nowait(self, message: ASGIReceiveEvent) -> None:
        """Queue ``message``; raises ``trio.WouldBlock`` when the queue is full."""
        if len(self._items) >= self._size:
            raise trio.WouldBlock
        self._items.append(message)
        self._wake()

    async def send(self, message: ASGIReceiveEvent) -> None:
        while len(self._items) >= self._size:
            await self._park()
        self._items.append(message)
        self._wake()

    def receive_nowait(self) -> ASGIReceiveEvent:
        """The oldest message; raises ``trio.WouldBlock`` when there is none."""
        if not self._items:
            raise trio.WouldBlock
        message = self._items.pop(0)
        self._wake()
        return message

    async def receive(self) -> ASGIReceiveEvent:
        if self._items:
            await trio.lowlevel.checkpoint()
        while not self._items:
            await self._park()
        message = self._items.pop(0)
        self._wake()
        return message

    async def _park(self) -> None:
        if self._lot is None:
            self._lot = trio.lowlevel.ParkingLot()
        await self._lot.park()

    def _wake(self) -> None:
        # One producer and one consumer, and never both waiting (the queue cannot be empty
        # and full at once): whoever is parked looks again.
        if self._lot is not None:
            self._lot.unpark_all()


class GatewayTaskGroup(TaskGroup):
    """hypercorn's task group for a connection, spawning each app with an :class:`AppQueue`."""

    async def spawn_app(
        self,
        app: AppWrapper,
        config: Config,
        scope: Any,
        send: Callable[[ASGISendEvent | None], Awaitable[None]],
    ) -> Callable[[ASGIReceiveEvent], Awaitable[None]]:
        queue = AppQueue(config.max_app_queue_size)
        assert self._nursery is not None
        self._nursery.start_soon(
            _handle,
            app,
            config,
            scope,
            queue.receive,
            send,
            trio.to_thread.run_sync,
            trio.from_thread.run,
        )
        return queue.send


def receive_now(receive: ASGIReceiveCallable) -> ASGIReceiveEvent | None:
    """The next message of ``receive`` if it is queued already (an :class:`AppQueue`'s),
    else ``None``: then await ``receive()``."""
    queue = getattr(receive, "__self__", None)
    if isinstance(queue, AppQueue):
        try:
            return queue.receive_nowait()
        except trio.WouldBlock:
            return None
    return None


def install() -> None:
    """Make hypercorn's connections spawn their apps with :class:`GatewayTaskGroup`."""
    hypercorn.trio.tcp_server.TaskGroup = GatewayTaskGroup  # type: ignore[attr-defined]
