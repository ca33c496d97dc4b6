"""Transport-specific behaviour: ZeroMQ endpoints and envelopes, and the memory bus's extras."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import TypeVar

import pytest
import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from bus.codec import encode
from bus.curve import generate_keys
from bus.messages import ControlReply, Hello
from bus.node import BaseNode, BusClosed
from bus.testing import MemoryNetwork, MemoryNode
from bus.transport import BusNode

DEADLINE = 5.0
T = TypeVar("T")


async def within(awaitable: Awaitable[T]) -> T:
    return await asyncio.wait_for(awaitable, DEADLINE)


async def started(nodes: list[BusNode], name: str, endpoint: str) -> BusNode:
    node = BusNode(name, endpoint)
    nodes.append(node)
    await node.start()
    return node


async def test_tcp_ephemeral_port_round_trip(nodes: list[BusNode], tmp_path: Path) -> None:
    keys = generate_keys(tmp_path, ["a", "b"])
    a, b = (
        BusNode("a", "tcp://127.0.0.1:*", curve=keys),
        BusNode("b", "tcp://127.0.0.1:*", curve=keys),
    )
    nodes += [a, b]
    await a.start()
    await b.start()
    assert b.endpoint.startswith("tcp://127.0.0.1:") and not b.endpoint.endswith("*")
    a.connect("b", b.endpoint)
    await within(a.wait_connected("b"))
    assert a.send("b", Hello("a", "nic"))
    assert await within(b.recv_batch()) == [("a", Hello("a", "nic"))]


async def test_relative_ipc_path_creates_dirs_and_close_removes_file(
    nodes: list[BusNode], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    a = await started(nodes, "a", "ipc://run/sub/a.sock")
    sock = tmp_path / "run" / "sub" / "a.sock"
    assert sock.exists()
    await a.close()
    assert not sock.exists()
    await a.close()  # idempotent


async def test_close_leaves_a_successors_socket_file(nodes: list[BusNode], tmp_path: Path) -> None:
    endpoint = f"ipc://{tmp_path}/n.sock"
    old = await started(nodes, "n", endpoint)
    new = await started(nodes, "n", endpoint)  # a restarted process rebinds the same path
    await old.close()
    assert (tmp_path / "n.sock").exists()
    await new.close()
    assert not (tmp_path / "n.sock").exists()


def test_too_long_ipc_path_is_refused() -> None:
    with pytest.raises(ValueError, match="too long"):
        BusNode("a", "ipc:///tmp/" + "x" * 200)


async def test_connect_rules(nodes: list[BusNode], tmp_path: Path) -> None:
    a = BusNode("a", f"ipc://{tmp_path}/a.sock")
    nodes.append(a)
    with pytest.raises(RuntimeError):
        a.connect("b", f"ipc://{tmp_path}/b.sock")
    await a.start()
    a.connect("b", f"ipc://{tmp_path}/b.sock")
    with pytest.raises(ValueError, match="already connected"):
        a.connect("b", f"ipc://{tmp_path}/b.sock")
    with pytest.raises(ValueError, match="bad peer name"):
        a.connect("", f"ipc://{tmp_path}/c.sock")
    a.disconnect("b")
    assert a.send("b", Hello("a", "nic")) is False
    assert a.stats.dropped_unknown_peer == 1


async def test_bad_envelopes_are_counted(nodes: list[BusNode], tmp_path: Path) -> None:
    b = await started(nodes, "b", f"ipc://{tmp_path}/b.sock")
    ctx = zmq.asyncio.Context()
    anonymous, multipart, good = (ctx.socket(zmq.DEALER) for _ in range(3))
    try:
        multipart.setsockopt(zmq.IDENTITY, b"m")
        good.setsockopt(zmq.IDENTITY, b"g")
        for sock in (anonymous, multipart, good):
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(b.endpoint)
        await anonymous.send(encode(Hello("x", "nic")))  # no identity: not a bus node
        await multipart.send_multipart([encode(Hello("m", "nic")), b"extra"])
        # Order across connections is not defined and recv_batch returns only on a valid
        # message, so send one good message per receive until both drops are counted.
        while sum(b.stats.malformed.values()) < 2:
            await good.send(encode(Hello("g", "nic")))
            assert await within(b.recv_batch()) == [("g", Hello("g", "nic"))]
        assert b.stats.malformed == {"identity": 1, "parts": 1}
    finally:
        for sock in (anonymous, multipart, good):
            sock.close(linger=0)
        ctx.term()


# -- memory bus extras --------------------------------------------------------------------------


@pytest.fixture
async def net() -> AsyncIterator[MemoryNetwork]:
    network = MemoryNetwork()
    yield network
    for node in network.nodes():
        await node.close()


async def linked(net: MemoryNetwork, *names: str, hwm: int = 1000) -> list[MemoryNode]:
    made = [net.node(name, hwm=hwm) for name in names]
    for node in made:
        await node.start()
    for node in made[1:]:
        made[0].connect(node.name, node.endpoint)
        await within(made[0].wait_connected(node.name))
    return made


async def test_memory_kill_notifies_linked_nodes(net: MemoryNetwork) -> None:
    host, _, nic2 = await linked(net, "h1", "nic1", "nic2")
    down: asyncio.Queue[str] = asyncio.Queue()
    host.on_peer_disconnect(down.put_nowait)
    net.kill("nic1")
    assert await within(down.get()) == "nic1"
    assert host.is_connected("nic2") and not host.is_connected("nic1")
    assert host.send("nic2", Hello("h1", "host"))
    assert await within(nic2.recv_batch()) == [("h1", Hello("h1", "host"))]


async def test_memory_inbox_high_water_mark(net: MemoryNetwork) -> None:
    a, b = await linked(net, "a", "b", hwm=2)
    assert [a.send("b", Hello("a", "nic")) for _ in range(3)] == [True, True, False]
    assert a.stats.dropped_full == 1
    assert len(await within(b.recv_batch())) == 2


async def test_memory_endpoint_and_name_rules(net: MemoryNetwork) -> None:
    a = net.node("a")
    await a.start()
    # A second live node may take a name in use (an impostor: its peers refuse it, the network
    # does not), but not an endpoint in use.
    again = net.node("a", endpoint="mem://elsewhere")
    await again.start()
    assert net.nodes() == [a, again]
    b = net.node("b", endpoint=a.endpoint)
    with pytest.raises(OSError, match="already bound"):
        await b.start()
    for bad in ("*", "", "\x00a"):
        with pytest.raises(ValueError, match="bad node name"):
            net.node(bad)
    assert isinstance(a, BaseNode)


async def test_memory_reply_reaches_the_speaker_not_an_impostor(net: MemoryNetwork) -> None:
    host, nic1 = net.node("h1"), net.node("nic1")
    impostor = net.node("nic1", endpoint="mem://impostor")
    for node in (host, nic1, impostor):
        await node.start()
    for node in (nic1, impostor):
        node.connect("h1", host.endpoint)
        await within(node.wait_connected("h1"))
        assert node.send("h1", Hello("nic1", "nic" if node is nic1 else "impostor"))
    # In order, as one inbox: nic1's claim and hello, then the impostor's, refused.
    assert await within(host.recv_batch()) == [("nic1", Hello("nic1", "nic"))]
    assert host.stats.identity_refused == 2
    answer = ControlReply(1, True, {}, "")
    assert host.reply("nic1", answer)
    assert await within(nic1.recv_batch()) == [("h1", answer)]
    assert not impostor._inbox


# -- CURVE on tcp -------------------------------------------------------------------------------


async def test_curve_admits_cluster_keys_only(nodes: list[BusNode], tmp_path: Path) -> None:
    keys = generate_keys(tmp_path / "keys", ["a", "b"])
    assert (tmp_path / "keys" / "b.key_secret").stat().st_mode & 0o077 == 0
    a = BusNode("a", "tcp://127.0.0.1:*", curve=keys)
    b = BusNode("b", "tcp://127.0.0.1:*", curve=keys)
    nodes += [a, b]
    await a.start()
    await b.start()
    # An intruder with its own certificate, who even knows b's public key.
    outsider = generate_keys(tmp_path / "outsider", ["x"])
    ctx = zmq.asyncio.Context()
    intruder = ctx.socket(zmq.DEALER)
    monitor = intruder.get_monitor_socket(zmq.EVENT_HANDSHAKE_FAILED_AUTH)
    try:
        public, secret = outsider.pair("x")
        options: list[tuple[int, int | bytes]] = [
            (zmq.LINGER, 0),
            (zmq.IDENTITY, b"x"),
            (zmq.CURVE_SERVERKEY, keys.public("b")),
            (zmq.CURVE_PUBLICKEY, public),
            (zmq.CURVE_SECRETKEY, secret),
        ]
        for option, value in options:
            intruder.setsockopt(option, value)
        intruder.connect(b.endpoint)
        await intruder.send(encode(Hello("x", "nic")))
        event = parse_monitor_message(await within(monitor.recv_multipart()))
        assert event["event"] == zmq.EVENT_HANDSHAKE_FAILED_AUTH
        # The cluster's own node gets through, and is the only one heard.
        a.connect("b", b.endpoint)
        await within(a.wait_connected("b"))
        assert a.send("b", Hello("a", "nic"))
        assert await within(b.recv_batch()) == [("a", Hello("a", "nic"))]
        assert b.stats.received == 1
    finally:
        intruder.disable_monitor()
        monitor.close(linger=0)
        intruder.close(linger=0)
        ctx.term()


def test_curve_needs_its_own_context(tmp_path: Path) -> None:
    ctx = zmq.asyncio.Context()
    try:
        with pytest.raises(ValueError, match="owns its context"):
            BusNode("a", "tcp://127.0.0.1:*", context=ctx, curve=generate_keys(tmp_path, ["a"]))
    finally:
        ctx.term()


async def test_start_twice_and_after_close(nodes: list[BusNode], tmp_path: Path) -> None:
    a = await started(nodes, "a", f"ipc://{tmp_path}/a.sock")
    with pytest.raises(RuntimeError, match="already started"):
        await a.start()
    await a.close()
    with pytest.raises(BusClosed):
        await a.start()
    with pytest.raises(BusClosed):
        a.connect("b", f"ipc://{tmp_path}/b.sock")
