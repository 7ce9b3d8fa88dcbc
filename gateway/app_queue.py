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

:class:`ConnectionTasks` spawns the apps of the gateway's connections with it. It relies
on hypercorn internals (its ``TaskGroup`` interface, ``task_group._handle`` and its last
``send(None)``), which is why hypercorn is pinned; ``tests/test_app_queue.py`` (which
serves apps through it) fails if they change.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio.task_group import TaskGroup, _handle
from hypercorn.typing import AppWrapper, ASGIReceiveCallable, ASGIReceiveEvent, ASGISendEvent

__all__ = ["AppQueue", "ConnectionTasks", "receive_now"]


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


class ConnectionTasks(TaskGroup):
    """What hypercorn's protocol spawns for one connection — its apps, each with an
    :class:`AppQueue`, and h2's and WebSocket's helpers — run in the server's ``nursery``,
    not in a nursery of the connection's own: that one (its cancel scope and status, their
    sets) is ≈ 1 KiB held by every open connection. Leaving the ``async with`` waits for
    them to end, as leaving a nursery does, so they still end before their connection;
    the server's graceful deadline cancels them with it.

    Unlike a nursery's, an error leaving the ``async with`` does not cancel them: the
    connection closes next, which tells them (``http.disconnect``) — and an error there
    ends the whole server anyway, as it would through a nursery."""

    def __init__(self, nursery: trio.Nursery) -> None:
        super().__init__()
        self._server_nursery = nursery
        self._running = 0
        self._lot: trio.lowlevel.ParkingLot | None = None  # made for the wait at the end

    async def spawn_app(
        self,
        app: AppWrapper,
        config: Config,
        scope: Any,
        send: Callable[[ASGISendEvent | None], Awaitable[None]],
    ) -> Callable[[ASGIReceiveEvent], Awaitable[None]]:
        queue = AppQueue(config.max_app_queue_size)
        self._running += 1
        self._server_nursery.start_soon(
            _handle,
            app,
            config,
            scope,
            queue.receive,
            _LastSend(send, self),
            trio.to_thread.run_sync,
            trio.from_thread.run,
        )
        return queue.send

    def spawn(self, func: Callable[..., Awaitable[object]], *args: Any) -> None:
        self._running += 1
        self._server_nursery.start_soon(self._counted, func, args)

    async def _counted(self, func: Callable[..., Awaitable[object]], args: tuple[Any, ...]) -> None:
        try:
            await func(*args)
        finally:
            self.ended()

    def ended(self) -> None:
        self._running -= 1
        if self._running == 0 and self._lot is not None:
            self._lot.unpark_all()

    async def __aenter__(self) -> ConnectionTasks:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if exc_info[0] is not None:
            return
        while self._running:
            if self._lot is None:
                self._lot = trio.lowlevel.ParkingLot()
            await self._lot.park()


class _LastSend:
    """An app's send, which counts the app ended once hypercorn's last call of it
    (``None``, from the ``finally`` of its ``_handle``; twice after an app error) is over
    — without a frame of its own around the app for as long as it runs."""

    __slots__ = ("_send", "_tasks")

    def __init__(
        self, send: Callable[[ASGISendEvent | None], Awaitable[None]], tasks: ConnectionTasks
    ) -> None:
        self._send = send
        self._tasks: ConnectionTasks | None = tasks

    def __call__(self, message: ASGISendEvent | None) -> Awaitable[None]:
        tasks = self._tasks
        if message is None and tasks is not None:
            self._tasks = None
            return self._last(tasks)
        return self._send(message)

    async def _last(self, tasks: ConnectionTasks) -> None:
        try:
            await self._send(None)
        finally:
            tasks.ended()


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
