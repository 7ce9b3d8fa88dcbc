"""The fixtures of the machine tests: one ``Machine`` serving in the test's nursery, and
``connect``, which links a new worker to it over a real socket pair."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio

from gateway.control import Channel
from gateway.machine import Machine
from gateway.worker_link import ParentLink

from .helpers import Connect, Worker, settle


@pytest.fixture
async def machine(nursery: trio.Nursery) -> Machine:
    machine = Machine()
    nursery.start_soon(machine.broadcast_loads)
    return machine


@pytest.fixture
async def connect(nursery: trio.Nursery, machine: Machine) -> AsyncIterator[Connect]:
    """``await connect(worker)``: a new worker on ``machine``; ``running=False`` leaves
    its link unread (a worker that is connected but never answers)."""
    ends: list[trio.SocketStream] = []

    async def connect(worker: int, *, running: bool = True) -> Worker:
        parent_socket, worker_socket = trio.socket.socketpair()
        parent_end, worker_end = trio.SocketStream(parent_socket), trio.SocketStream(worker_socket)
        ends.extend((parent_end, worker_end))
        nursery.start_soon(machine.serve, worker, Channel(parent_end))
        link = ParentLink(Channel(worker_end), worker)
        if running:
            nursery.start_soon(link.run)
        await settle()
        return Worker(link, parent_end)

    yield connect
    for end in ends:
        await end.aclose()
