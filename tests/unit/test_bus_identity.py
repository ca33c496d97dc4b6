"""Names on the real ZeroMQ bus (ipc in a tmp dir): a connection claiming a live peer's name.

The attack (from the issue): a local process connects to a node's inbox under a sibling's or
the host's name. With ``ROUTER_HANDOVER`` it took the route over and the real peer's link was
dead for good while everything looked up. Now the node refuses it, counts and logs it, and the
real peer keeps working both ways; a peer whose connection closed can come back under its name.

Waiting is always an awaited condition under a deadline; nothing sleeps and hopes. A bus node
never reads its DEALERs, so where a test checks that ``reply`` reached one, it reads it itself.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any, TypeVar

import pytest
import structlog
import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from bus.codec import decode_untrusted, encode
from bus.messages import ControlReply, ControlRequest, Hello
from bus.transport import NAME_PROPERTY, BusNode

DEADLINE = 5.0  # seconds; only ever reached when a test is failing
T = TypeVar("T")


async def within(awaitable: Awaitable[T]) -> T:
    return await asyncio.wait_for(awaitable, DEADLINE)


@pytest.fixture
async def ctx() -> AsyncIterator[zmq.asyncio.Context]:
    """A context for the test's own raw sockets; every socket is closed with linger 0."""
    context = zmq.asyncio.Context()
    try:
        yield context
    finally:
        context.destroy(linger=0)


async def started(nodes: list[BusNode], tmp_path: Path, name: str) -> BusNode:
    node = BusNode(name, f"ipc://{tmp_path}/{name}.sock")
    nodes.append(node)
    await node.start()
    return node


async def linked(nodes: list[BusNode], tmp_path: Path, name: str, to: BusNode) -> BusNode:
    """A started node ``name`` whose link to ``to`` is up and whom ``to`` has heard."""
    node = await started(nodes, tmp_path, name)
    node.connect(to.name, to.endpoint)
    await within(node.wait_connected(to.name))
    await within(pump(node, to))
    return node


async def pump(src: BusNode, dst: BusNode, until: Callable[[], bool] = lambda: True) -> None:
    """Send ``src`` -> ``dst`` one Hello at a time until ``until()``; each must arrive as
    ``src``'s, and be the only thing that does."""
    hello = Hello(src.name, "nic")
    while True:
        assert src.send(dst.name, hello)
        assert await within(dst.recv_batch()) == [(src.name, hello)]
        if until():
            return


def raw_dealer(
    ctx: zmq.asyncio.Context, endpoint: str, claim: str, name: str
) -> tuple[zmq.asyncio.Socket, zmq.asyncio.Socket]:
    """A DEALER connected to ``endpoint`` claiming ``name`` the way ``claim`` says (its own
    routing id, or the handshake property a bus node uses), and a monitor of it."""
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if claim == "routing-id":
        sock.setsockopt(zmq.IDENTITY, name.encode())
    else:
        sock.setsockopt(zmq.METADATA, f"{NAME_PROPERTY}:{name}".encode())
    monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
    sock.connect(endpoint)
    return sock, monitor


async def handshake(monitor: zmq.asyncio.Socket) -> None:
    event = parse_monitor_message(await monitor.recv_multipart())
    assert event["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED


def dealer_of(node: BusNode, peer: str) -> zmq.asyncio.Socket:
    return node._links[peer].dealer


def events(logs: list[MutableMapping[str, Any]], name: str) -> list[MutableMapping[str, Any]]:
    return [entry for entry in logs if entry["event"] == name]


@pytest.mark.parametrize("claim", ["routing-id", "x-name"])
async def test_impostor_under_a_live_peers_name_is_refused(
    nodes: list[BusNode], ctx: zmq.asyncio.Context, tmp_path: Path, claim: str
) -> None:
    h1 = await started(nodes, tmp_path, "h1")
    nic1 = await linked(nodes, tmp_path, "nic1", to=h1)
    impostor, monitor = raw_dealer(ctx, h1.endpoint, claim, "nic1")
    with structlog.testing.capture_logs() as logs:
        await impostor.send(encode(Hello("nic1", "impostor")))
        await within(handshake(monitor))
        # nic1 is still heard as nic1, and only it: the impostor's message is refused. (Before
        # the fix the impostor took the route: its message came as nic1's, nic1's no longer.)
        await within(pump(nic1, h1, until=lambda: h1.stats.identity_refused == 1))
        # reply() reaches the real nic1, not the impostor.
        answer = ControlReply(7, True, {"to": "nic1"}, "")
        assert h1.reply("nic1", answer)
        assert decode_untrusted(await within(dealer_of(nic1, "h1").recv())) == answer
        assert await impostor.poll(0) == 0
        # Whatever else it sends is refused too: counted each time, logged once.
        await impostor.send(encode(Hello("nic1", "impostor")))
        await within(pump(nic1, h1, until=lambda: h1.stats.identity_refused == 2))
    assert h1.stats.malformed == {}  # refused, not mistaken for garbage
    (refused,) = events(logs, "bus.identity.refused")
    assert (refused["node"], refused["claimed"], refused["log_level"]) == ("h1", "nic1", "warning")
    # What the kernel said of both connections (SO_PEERCRED, through libzmq): one process here.
    conn, speaker = refused["conn"], refused["speaker"]
    assert isinstance(conn, dict) and isinstance(speaker, dict)
    assert (conn["pid"], conn["uid"]) == (os.getpid(), os.getuid())
    assert speaker["pid"] == os.getpid() and speaker["fd"] != conn["fd"]


async def test_an_impostor_process_is_logged_with_its_pid(
    nodes: list[BusNode], tmp_path: Path
) -> None:
    h1 = await started(nodes, tmp_path, "h1")
    nic1 = await linked(nodes, tmp_path, "nic1", to=h1)
    # Another local process: connects under nic1's name, sends, stays connected until told.
    script = (
        "import sys, zmq\n"
        "s = zmq.Context().socket(zmq.DEALER)\n"
        "s.setsockopt(zmq.LINGER, 0)\n"
        "s.setsockopt(zmq.IDENTITY, b'nic1')\n"
        "s.connect(sys.argv[1])\n"
        "s.send(bytes.fromhex(sys.argv[2]))\n"
        "print('sent', flush=True)\n"
        "sys.stdin.read()\n"
    )
    payload = encode(Hello("nic1", "impostor")).hex()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, h1.endpoint, payload,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        assert await within(proc.stdout.readline()) == b"sent\n"
        with structlog.testing.capture_logs() as logs:
            await within(pump(nic1, h1, until=lambda: h1.stats.identity_refused == 1))
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        await within(proc.wait())
    (refused,) = events(logs, "bus.identity.refused")
    conn, speaker = refused["conn"], refused["speaker"]
    assert isinstance(conn, dict) and isinstance(speaker, dict)
    assert (conn["pid"], speaker["pid"]) == (proc.pid, os.getpid())


async def test_a_restarted_peer_gets_its_name_back(nodes: list[BusNode], tmp_path: Path) -> None:
    h1 = await started(nodes, tmp_path, "h1")
    h1.connect("nic1", f"ipc://{tmp_path}/nic1.sock")  # a peer of h1: its speakers are logged
    nic1 = await linked(nodes, tmp_path, "nic1", to=h1)
    # Closed with linger 0 and its context destroyed: its sockets are closed when this returns,
    # as the kernel closes a SIGKILLed process's.
    await nic1.close()
    with structlog.testing.capture_logs() as logs:
        again = await linked(nodes, tmp_path, "nic1", to=h1)  # the same name and endpoint
        answer = ControlReply(8, True, {}, "")
        assert h1.reply("nic1", answer)
        assert decode_untrusted(await within(dealer_of(again, "h1").recv())) == answer
    assert h1.stats.identity_refused == 0
    (claimed,) = events(logs, "bus.identity.claimed")
    assert (claimed["claimed"], claimed["log_level"]) == ("nic1", "info")


async def test_a_refused_connection_that_outlives_the_peer_takes_the_name_with_a_warning(
    nodes: list[BusNode], ctx: zmq.asyncio.Context, tmp_path: Path
) -> None:
    # The limit of ipc without keys: once the peer's connection is closed, the next connection
    # heard under its name gets it, even one refused before. It is not silent: a warning says
    # which connection, and how often it had been refused.
    h1 = await started(nodes, tmp_path, "h1")
    nic1 = await linked(nodes, tmp_path, "nic1", to=h1)
    impostor, _ = raw_dealer(ctx, h1.endpoint, "routing-id", "nic1")
    await impostor.send(encode(Hello("nic1", "impostor")))
    await within(pump(nic1, h1, until=lambda: h1.stats.identity_refused == 1))
    await nic1.close()
    with structlog.testing.capture_logs() as logs:
        await impostor.send(encode(Hello("nic1", "impostor")))
        assert await within(h1.recv_batch()) == [("nic1", Hello("nic1", "impostor"))]
    (claimed,) = events(logs, "bus.identity.claimed")
    assert (claimed["claimed"], claimed["refused"], claimed["log_level"]) == ("nic1", 1, "warning")


async def test_a_routing_id_in_use_is_not_handed_over(
    nodes: list[BusNode], ctx: zmq.asyncio.Context, tmp_path: Path
) -> None:
    # Two plain clients that set the same routing id: without ROUTER_HANDOVER libzmq parks the
    # second connection (unseen, so not counted) and the first keeps its route both ways.
    h1 = await started(nodes, tmp_path, "h1")
    first, _ = raw_dealer(ctx, h1.endpoint, "routing-id", "ctl-1")
    await first.send(encode(ControlRequest(1, "stats", {})))
    assert await within(h1.recv_batch()) == [("ctl-1", ControlRequest(1, "stats", {}))]
    second, monitor = raw_dealer(ctx, h1.endpoint, "routing-id", "ctl-1")
    await within(handshake(monitor))
    await second.send(encode(ControlRequest(2, "stop", {})))
    await first.send(encode(ControlRequest(3, "stats", {})))
    assert await within(h1.recv_batch()) == [("ctl-1", ControlRequest(3, "stats", {}))]
    answer = ControlReply(3, True, {}, "")
    assert h1.reply("ctl-1", answer)
    assert decode_untrusted(await within(first.recv())) == answer
    assert await second.poll(0) == 0
