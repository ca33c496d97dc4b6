"""One conformance suite, run against the in-memory bus and the real ZeroMQ bus (ipc).

Waiting is always an awaited condition under ``asyncio.wait_for``; nothing sleeps and hopes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import structlog

from bus.faults import ANY, FaultTable
from bus.messages import FrameBatch, Heartbeat, Hello, Message
from bus.nicstate import NicState
from bus.node import DEFAULT_HWM, BaseNode, BusClosed
from bus.testing import MemoryNetwork, Scripted
from bus.transport import BusNode

DEADLINE = 5.0  # seconds; only ever reached when a test is failing
T = TypeVar("T")
Node = BaseNode[Any]
Batch = list[tuple[str, Message]]


async def within(awaitable: Awaitable[T]) -> T:
    return await asyncio.wait_for(awaitable, DEADLINE)


class Harness:
    """Makes started nodes of one transport and closes all of them at teardown."""

    def __init__(self, kind: str, tmp_path: Path) -> None:
        self.kind = kind
        self.tmp_path = tmp_path
        self.network = MemoryNetwork()
        self.nodes: list[Node] = []

    def endpoint(self, name: str) -> str:
        if self.kind == "memory":
            return f"mem://{name}"
        return f"ipc://{self.tmp_path}/{name}.sock"

    async def node(self, name: str, endpoint: str | None = None, *, hwm: int = DEFAULT_HWM) -> Node:
        """A started node ``name``, bound at ``endpoint`` (by default its own)."""
        node: Node
        endpoint = endpoint or self.endpoint(name)
        if self.kind == "memory":
            node = self.network.node(name, endpoint, hwm=hwm)
        else:
            node = BusNode(name, endpoint, hwm=hwm)
        self.nodes.append(node)
        await node.start()
        return node

    async def link(self, src: Node, dst: Node) -> None:
        src.connect(dst.name, dst.endpoint)
        await within(src.wait_connected(dst.name))

    async def close_all(self) -> None:
        for node in self.nodes:
            await node.close()


@pytest.fixture(params=["memory", "zmq"])
async def bus(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Harness]:
    harness = Harness(request.param, tmp_path)
    try:
        yield harness
    finally:
        await harness.close_all()  # linger=0 everywhere, even when the test failed


async def receive(
    node: Node, count: int, max_messages: int = 256
) -> list[list[tuple[str, Message]]]:
    """Batches from ``node`` until ``count`` messages have arrived."""
    batches: list[list[tuple[str, Message]]] = []
    while sum(map(len, batches)) < count:
        batches.append(await within(node.recv_batch(max_messages)))
    return batches


async def pump(src: Node, dst: Node, until: Callable[[], bool] = lambda: True) -> None:
    """Send ``src`` -> ``dst`` one Hello at a time until ``until()``; each must arrive as
    ``src``'s, and be the only thing that does. Wrap in ``within``."""
    hello = Hello(src.name, "nic")
    while True:
        assert src.send(dst.name, hello)
        assert await within(dst.recv_batch()) == [(src.name, hello)]
        if until():
            return


def seqs(batches: list[Batch]) -> list[int]:
    """Heartbeat sequence numbers, in arrival order."""
    out = []
    for batch in batches:
        for _, msg in batch:
            assert isinstance(msg, Heartbeat)
            out.append(msg.seq)
    return out


def frames(n: int) -> list[tuple[int, bytes]]:
    return [(i, bytes([i % 256]) * (60 + i)) for i in range(n)]


async def test_frame_batch_of_100_frames(bus: Harness) -> None:
    host, nic = await bus.node("h1"), await bus.node("nic1")
    await bus.link(host, nic)
    batch = FrameBatch("h1", frames(100))
    assert host.send("nic1", batch)
    assert await within(nic.recv_batch()) == [("h1", batch)]
    assert host.stats.sent == 1 and nic.stats.received == 1


async def test_one_recv_batch_drains_many_in_order(bus: Harness) -> None:
    a, b = await bus.node("a"), await bus.node("b")
    await bus.link(a, b)
    for seq in range(200):
        assert a.send("b", Heartbeat("a", seq, 1, NicState.UP))
    batches = await receive(b, 200, max_messages=64)
    assert seqs(batches) == list(range(200))
    assert all(1 <= len(batch) <= 64 for batch in batches)
    assert max(map(len, batches)) > 1  # drained after one await, not one await per message


async def test_send_to_unknown_peer_is_counted(bus: Harness) -> None:
    a = await bus.node("a")
    assert a.send("nobody", Hello("a", "nic")) is False
    assert a.stats.dropped_unknown_peer == 1 and a.stats.sent == 0


async def test_send_to_peer_that_is_not_up_is_dropped(bus: Harness) -> None:
    a = await bus.node("a")
    a.connect("b", bus.endpoint("b"))
    assert not a.is_connected("b")
    assert a.send("b", Hello("a", "nic")) is False  # IMMEDIATE: nothing queues to no one
    assert a.stats.dropped_full == 1


async def test_malformed_payload_is_counted_and_logged_not_raised(bus: Harness) -> None:
    a, b = await bus.node("a"), await bus.node("b")
    await bus.link(a, b)
    with structlog.testing.capture_logs() as logs:
        assert a.send_raw("b", b"\xc1 not msgpack")
        assert a.send_raw("b", b"\x92\x07\x01")  # [7, 1]: wrong version
        assert a.send("b", Hello("a", "nic"))
        assert await within(b.recv_batch()) == [("a", Hello("a", "nic"))]
    assert b.stats.malformed == {"msgpack": 1, "version": 1}
    assert b.stats.received == 1
    drops = [entry for entry in logs if entry["event"] == "bus.drop.malformed"]
    assert [(d["peer"], d["reason"]) for d in drops] == [("a", "msgpack"), ("a", "version")]


async def test_disconnect_notification_and_reconnect(bus: Harness) -> None:
    a, b = await bus.node("a"), await bus.node("b")
    events: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
    a.on_peer_connect(lambda peer: events.put_nowait(("up", peer)))
    a.on_peer_disconnect(lambda peer: events.put_nowait(("down", peer)))
    await bus.link(a, b)
    assert await within(events.get()) == ("up", "b")
    await b.close()
    assert await within(events.get()) == ("down", "b")
    assert not a.is_connected("b")
    assert a.send("b", Hello("a", "nic")) is False
    # The peer restarts under the same name and endpoint: the link comes back by itself.
    b2 = await bus.node("b")
    assert await within(events.get()) == ("up", "b")
    assert a.send("b", Hello("a", "nic"))
    assert await within(b2.recv_batch()) == [("a", Hello("a", "nic"))]


async def test_partition_drops_on_send(bus: Harness) -> None:
    a, b, c = await bus.node("a"), await bus.node("b"), await bus.node("c")
    await bus.link(a, b)
    await bus.link(a, c)
    a.faults.partition("b")
    assert a.send("b", Hello("a", "nic")) is False
    assert a.send("c", Hello("a", "nic"))
    a.faults.partition(ANY)
    assert a.send("c", Hello("a", "nic")) is False
    assert a.stats.dropped_fault == 2 and a.stats.sent == 1
    a.faults.clear(ANY)
    assert a.send("b", Hello("a", "again"))
    assert await within(b.recv_batch()) == [("a", Hello("a", "again"))]


async def test_fault_drops_on_receive(bus: Harness) -> None:
    a, b = await bus.node("a"), await bus.node("b")
    await bus.link(a, b)
    # Scripted drop decisions on b: drop seq 0 and 2, keep 1 and 3 (kept last, so by the time
    # it arrives every earlier message of this in-order link has been judged).
    b.faults = FaultTable(rng=Scripted(0.0, 0.9, 0.0, 0.9))
    b.faults.drop("a", probability=0.5)
    for seq in range(4):
        assert a.send("b", Heartbeat("a", seq, 1, NicState.UP))
    batches = await receive(b, 2)
    assert seqs(batches) == [1, 3]
    assert b.stats.dropped_fault == 2 and b.stats.received == 2


async def test_delay_holds_messages_and_keeps_order(bus: Harness) -> None:
    a, b = await bus.node("a"), await bus.node("b")
    await bus.link(a, b)
    a.faults.delay("b", 0.05)
    assert a.send("b", Heartbeat("a", 0, 1, NicState.UP))
    assert a.send("b", Heartbeat("a", 1, 1, NicState.UP))
    a.faults.clear("b")
    assert a.send("b", Heartbeat("a", 2, 1, NicState.UP))  # must not overtake the held ones
    assert a.stats.sent == 0  # all held until the delay expires
    batches = await receive(b, 3)
    assert seqs(batches) == [0, 1, 2]
    assert a.stats.sent == 3


async def test_recv_on_closed_node_raises_bus_closed(bus: Harness) -> None:
    a = await bus.node("a")
    pending = asyncio.ensure_future(a.recv_batch())
    await asyncio.sleep(0)  # let it start waiting; the assertion does not depend on timing
    await a.close()
    with pytest.raises(BusClosed):
        await within(pending)
    with pytest.raises(BusClosed):
        await a.recv_batch()
    with pytest.raises(BusClosed):
        a.send("b", Hello("a", "nic"))


async def test_callback_bug_surfaces_from_recv_batch(bus: Harness) -> None:
    a, b = await bus.node("a"), await bus.node("b")

    def broken(peer: str) -> None:
        raise RuntimeError(f"bug handling {peer}")

    a.on_peer_connect(broken)
    await bus.link(a, b)
    with pytest.raises(RuntimeError, match="bug handling b"):
        await within(a.recv_batch())


async def test_a_receive_batch_stops_at_its_byte_budget(bus: Harness) -> None:
    a, b = await bus.node("a"), await bus.node("b")
    await bus.link(a, b)
    big = FrameBatch("a", [(i, bytes(9000)) for i in range(40)])  # ~360 KB each
    for _ in range(6):
        assert a.send("b", big)
    batches = await receive(b, 6, max_messages=1024)
    # 512 KiB a batch: the first message, and at most one more that crosses the budget,
    # however many have arrived.
    assert sum(map(len, batches)) == 6
    assert max(map(len, batches)) <= 2


async def test_a_second_node_under_a_live_name_is_refused(bus: Harness) -> None:
    host, nic1 = await bus.node("h1"), await bus.node("nic1")
    await bus.link(nic1, host)
    await within(pump(nic1, host))  # h1 has heard nic1: that connection speaks for "nic1"
    impostor = await bus.node("nic1", endpoint=bus.endpoint("impostor"))
    with structlog.testing.capture_logs() as logs:
        await bus.link(impostor, host)  # its link comes up like any other...
        assert impostor.send("h1", Hello("nic1", "impostor"))
        # ...but h1 refuses its connection's claim and its message, and still hears nic1.
        await within(pump(nic1, host, until=lambda: host.stats.identity_refused == 2))
    refused = [(e["node"], e["claimed"]) for e in logs if e["event"] == "bus.identity.refused"]
    assert refused == [("h1", "nic1")]  # once per connection
    assert host.stats.malformed == {}


async def test_the_name_is_free_once_its_connection_is_closed(bus: Harness) -> None:
    host, nic1 = await bus.node("h1"), await bus.node("nic1")
    await bus.link(nic1, host)
    await within(pump(nic1, host))
    await nic1.close()  # as a crash closes its sockets
    again = await bus.node("nic1")  # restarted, under the same name and endpoint
    await bus.link(again, host)
    await within(pump(again, host))
    assert host.stats.identity_refused == 0
