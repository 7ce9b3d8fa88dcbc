"""The line between the parent and its workers (``gateway.control``): messages in bursts,
in order and intact over a real socket, split at every byte, dropped once the peer is
gone."""

from __future__ import annotations

import json

import trio
import trio.testing

from gateway.control import Channel, Message


def burst() -> list[Message]:
    """Messages of many sizes, some far larger than a socket's buffer, some not ASCII."""
    return [
        {"op": "report", "n": n, "body": "é✓" * (n * 7919 % 30_000), "nested": {"n": [n] * 3}}
        for n in range(100)
    ]


async def test_a_burst_arrives_in_order_and_intact_over_a_socket() -> None:
    ours, theirs = trio.socket.socketpair()
    sender, receiver = Channel(trio.SocketStream(ours)), Channel(trio.SocketStream(theirs))
    sent = burst()
    for message in sent:
        sender.send(message)
    received: list[Message] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender.run_writer)
        async for message in receiver:
            received.append(message)
            if len(received) == len(sent):
                nursery.cancel_scope.cancel()  # ends the read, and the writer
    assert received == sent
    await sender.stream.aclose()
    await receiver.stream.aclose()


async def test_a_burst_queued_before_the_writer_runs_is_one_write() -> None:
    writes: list[bytes] = []
    out = trio.testing.MemorySendStream()

    async def record() -> None:
        writes.append(bytes(out.get_data_nowait()))

    out.send_all_hook = record
    channel = Channel(trio.StapledStream(out, trio.testing.MemoryReceiveStream()))
    sent = burst()[:20]
    for message in sent:
        channel.send(message)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(channel.run_writer)
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert len(writes) == 1
    assert [json.loads(line) for line in writes[0].splitlines()] == sent


async def read_in_two(data: bytes, split: int) -> list[Message]:
    """What a Channel reads from ``data`` arriving in two reads, split at ``split``."""
    incoming = trio.testing.MemoryReceiveStream()
    channel = Channel(trio.StapledStream(trio.testing.MemorySendStream(), incoming))
    received: list[Message] = []

    async def read() -> None:
        async for message in channel:
            received.append(message)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read)
        incoming.put_data(data[:split])
        await trio.testing.wait_all_tasks_blocked()
        incoming.put_data(data[split:])
        incoming.put_eof()
    return received


async def test_messages_split_at_every_byte_are_put_back_together() -> None:
    sent: list[Message] = [{"op": "load", "loads": {"b": [1, 2]}}, {"n": 7, "text": "ü\n✓"}, {}]
    data = b"".join(json.dumps(m, ensure_ascii=False).encode() + b"\n" for m in sent)
    for split in range(1, len(data)):
        assert await read_in_two(data, split) == sent, split


async def test_a_send_after_the_peer_is_gone_is_dropped() -> None:
    ours, theirs = trio.socket.socketpair()
    channel = Channel(trio.SocketStream(ours))
    theirs.close()
    channel.send({"op": "ready"})
    await channel.run_writer()  # returns: the peer is gone
    channel.send({"op": "ready"})  # the writer has stopped: dropped, no error
    await channel.stream.aclose()
