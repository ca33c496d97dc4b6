"""fabricd over an in-memory bus: two fake NICs, an external peer, control commands, shutdown."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from ipaddress import IPv4Address, ip_interface
from pathlib import Path
from types import SimpleNamespace as NS
from typing import Any

import pytest
from structlog.testing import capture_logs

from bus.messages import (
    BATCH_FRAMES,
    ControlReply,
    ControlRequest,
    FrameBatch,
    LinkState,
    frame_chunks,
)
from bus.node import BaseNode
from bus.testing import MemoryNetwork
from bus.transport import BusNode
from fabricd.daemon import Fabric, FabricDaemon, serve
from fabricd.switch import Switch
from hoststack.traffic import FlowSpec
from wire.addr import mac_bytes
from wire.build import arp_frame, gratuitous_arp, rarp_frame, tcp_frame, udp_frame
from wire.frames import Packet, parse_frame_untrusted
from wire.protocols import BROADCAST_MAC, ETH_ARP, PROTO_UDP, TCP_ACK, TCP_SYN

DEADLINE = 5.0
PEER_MAC = mac_bytes("02:ee:00:00:00:01")
VM_A, VM_B = mac_bytes("02:00:00:00:00:0a"), mac_bytes("02:00:00:00:00:0b")
PEER_IP, IP_A, IP_B = (IPv4Address(f"10.0.10.{i}") for i in (100, 1, 2))


def make_config(flows: list[NS] | None = None, endpoint: Callable[[str], str] | None = None) -> NS:
    """The parts of `configs.Config` fabricd reads: one host, two NICs, one peer."""
    peer = NS(
        name="ext1",
        mac=PEER_MAC,
        ips=(ip_interface("10.0.10.100/24"),),
        segment="web",
        gateway_mac=None,
        tcp_listen=(80,),
        udp_listen=(5353,),
        kind="builtin",
        run=(),
    )
    nics = [NS(name="nic1", uplinks=["p0", "p1"]), NS(name="nic2", uplinks=["p0", "p1"])]
    return NS(
        hosts=[NS(name="h1", nics=nics)],
        peers=[peer],
        segments=[NS(name="web", vlan=10), NS(name="db", vlan=None)],
        flows=flows or [],
        timers=NS(tick_s=0.01, stats_s=1.0),
        run_dir=Path("run"),
        endpoint=endpoint or (lambda proc: f"mem://{proc}"),
        peer=lambda name: peer,
        flow_spec=lambda f: FlowSpec(f.name, f.proto, f.src, IP_A, f.dport, f.rate, f.size),
    )


async def until(cond: Callable[[], bool], timeout: float = DEADLINE) -> None:
    """Poll `cond` on every loop turn until it holds; fail after `timeout`."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():
        if loop.time() > end:
            raise AssertionError("condition not met before the deadline")
        await asyncio.sleep(0.002)


def test_fabric_core_is_driven_by_an_explicit_clock() -> None:
    """No bus: frames in with `now`, per-NIC (ppid, frame) lists out, aging by `tick(now)`."""
    fabric = Fabric(make_config(), now=0.0)
    fabric.set_nic_link("nic1", True)
    fabric.from_nic("nic1", [(1, gratuitous_arp(VM_A, IP_A, vlan=10))], now=0.0)
    out = fabric.take_output()
    assert [ppid for ppid, _ in out["nic1"]] == [2] and "nic2" not in out  # nic2 has no link
    assert fabric.take_output() == {}
    assert fabric.switch.lookup(10, VM_A, 299.0) == ("nic1", 1)
    fabric.tick(300.0)
    assert fabric.switch.lookup(10, VM_A, 300.0) is None and fabric.switch.stats.aged == 1


def test_batches_split_under_the_codec_limits() -> None:
    frames = [(1, b"x" * 64)] * (BATCH_FRAMES + 1)
    assert [len(c) for c in frame_chunks(frames)] == [BATCH_FRAMES, 1]
    jumbo = [(1, b"j" * 9000)] * 1000  # 9 MB: over the 8 MiB message limit in one batch
    assert [len(c) for c in frame_chunks(jumbo)] == [466, 466, 68]


@dataclass
class FakeNic:
    """A NIC as the fabric sees it: uplink frames in, uplink frames out."""

    node: BaseNode[Any]
    got: list[tuple[int, bytes]] = field(default_factory=list)
    carrier: list[tuple[int, bool]] = field(default_factory=list)  # LinkState (ppid, up)

    def send(self, *frames: tuple[int, bytes]) -> None:
        assert self.node.send("fabricd", FrameBatch(self.node.name, list(frames)))

    async def expect(self, want: Callable[[int, Packet], bool]) -> tuple[int, Packet]:
        """The first frame (received so far or later) that `want`, removed from `got`."""
        loop = asyncio.get_running_loop()
        end = loop.time() + DEADLINE
        while True:
            for i, (ppid, frame) in enumerate(self.got):
                pkt = parse_frame_untrusted(frame)
                if want(ppid, pkt):
                    del self.got[i]
                    return ppid, pkt
            self.got.clear()
            await self._receive(end)

    async def expect_carrier(self, *want: tuple[int, bool]) -> None:
        """Wait until the last LinkStates received are `want` (ppid, up), in order."""
        end = asyncio.get_running_loop().time() + DEADLINE
        while self.carrier[-len(want) :] != list(want):
            await self._receive(end)

    async def _receive(self, end: float) -> None:
        loop = asyncio.get_running_loop()
        batch = await asyncio.wait_for(self.node.recv_batch(), max(0.0, end - loop.time()))
        for _, msg in batch:
            if isinstance(msg, LinkState):
                self.carrier.append((msg.ppid, msg.up))
                continue
            assert isinstance(msg, FrameBatch) and msg.src == "fabricd"
            self.got.extend(msg.frames)


@dataclass
class Rig:
    net: MemoryNetwork
    daemon: FabricDaemon
    nic1: FakeNic
    nic2: FakeNic
    ctl: BaseNode[Any]
    req_id: int = 0

    async def control(self, cmd: str, **args: object) -> ControlReply:
        self.req_id += 1
        assert self.ctl.send("fabricd", ControlRequest(self.req_id, cmd, dict(args)))
        ((_, reply),) = await asyncio.wait_for(self.ctl.recv_batch(), DEADLINE)
        assert isinstance(reply, ControlReply) and reply.req_id == self.req_id
        return reply

    async def stats(self) -> Any:
        return (await self.control("stats")).result

    async def mac_table(self) -> dict[tuple[object, str], str]:
        rows: Any = (await self.control("mac-table")).result["rows"]
        return {(r["vlan"], r["mac"]): r["port"] for r in rows}

    @property
    def switch(self) -> Switch:
        assert self.daemon.fabric is not None
        return self.daemon.fabric.switch


@asynccontextmanager
async def rig(flows: list[NS] | None = None) -> AsyncIterator[Rig]:
    """The daemon on a memory bus with nic1, nic2 and a control client, stopped at exit."""
    net = MemoryNetwork()
    nodes = [net.node(name) for name in ("nic1", "nic2", "ctl")]
    for node in nodes:
        await node.start()
        node.connect("fabricd", "mem://fabricd")
    daemon = FabricDaemon(make_config(flows), net.node("fabricd"))
    task = asyncio.create_task(daemon.run())
    try:
        for node in nodes:
            await asyncio.wait_for(node.wait_connected("fabricd"), DEADLINE)
        await until(lambda: daemon.node.is_connected("nic1") and daemon.node.is_connected("nic2"))
        yield Rig(net, daemon, FakeNic(nodes[0]), FakeNic(nodes[1]), nodes[2])
    finally:
        daemon.stop()
        await asyncio.wait_for(task, DEADLINE)
        for node in nodes:
            await node.close()


@pytest.fixture
async def fab() -> AsyncIterator[Rig]:
    async with rig() as r:
        yield r


def is_garp_of_peer(ppid: int, pkt: Packet) -> bool:
    return pkt.ethertype == ETH_ARP and pkt.arp_sha == PEER_MAC and pkt.vlan == 10


async def test_nics_hear_the_peer_announce_on_every_uplink_tagged(fab: Rig) -> None:
    for nic in (fab.nic1, fab.nic2):
        await nic.expect(lambda p, k: is_garp_of_peer(p, k) and p == 1)
        await nic.expect(lambda p, k: is_garp_of_peer(p, k) and p == 2)


async def test_flood_between_nics_then_learned_unicast(fab: Rig) -> None:
    frame = udp_frame(VM_A, VM_B, IP_A, IP_B, 1000, 2000, b"hi", vlan=10)
    fab.nic1.send((1, frame))
    await fab.nic2.expect(lambda p, k: p == 1 and k.src_mac == VM_A)
    await fab.nic2.expect(lambda p, k: p == 2 and k.src_mac == VM_A)
    await fab.nic1.expect(lambda p, k: p == 2 and k.src_mac == VM_A)  # flood, not back on ppid 1
    fab.nic2.send((2, udp_frame(VM_B, VM_A, IP_B, IP_A, 2000, 1000, b"yo", vlan=10)))
    ppid, pkt = await fab.nic1.expect(lambda p, k: k.src_mac == VM_B)
    assert (ppid, pkt.vlan, pkt.dst_mac) == (1, 10, VM_A)
    table = await fab.mac_table()
    assert table[(10, "02:00:00:00:00:0a")] == "nic1/p0"
    assert table[(10, "02:00:00:00:00:0b")] == "nic2/p1"
    assert table[(10, "02:ee:00:00:00:01")] == "peer/ext1"
    stats = await fab.stats()
    assert stats["switch"]["floods"] >= 1 and stats["fabric"]["batches_in"] == 2


async def test_peer_answers_arp_and_syn_on_its_listening_port(fab: Rig) -> None:
    fab.nic1.send((2, arp_frame(1, VM_A, IP_A, b"\0" * 6, PEER_IP, vlan=10)))
    ppid, reply = await fab.nic1.expect(lambda p, k: k.ethertype == ETH_ARP and k.arp_op == 2)
    assert (ppid, reply.vlan, reply.dst_mac, reply.arp_sha) == (2, 10, VM_A, PEER_MAC)
    assert reply.arp_spa == int(PEER_IP)
    fab.nic1.send(
        (2, tcp_frame(VM_A, PEER_MAC, IP_A, PEER_IP, 40000, 80, TCP_SYN, seq=1000, vlan=10))
    )
    ppid, synack = await fab.nic1.expect(lambda p, k: k.tcp_flags == TCP_SYN | TCP_ACK)
    assert (ppid, synack.vlan, synack.src_mac, synack.dst_mac) == (2, 10, PEER_MAC, VM_A)
    assert (synack.sport, synack.dport, synack.ack) == (80, 40000, 1001)
    assert (await fab.stats())["peers"]["ext1"]["stats"]["arp_replies"] == 1


async def test_station_move_is_logged_and_port_down_flushes(fab: Rig) -> None:
    fab.nic1.send((1, gratuitous_arp(VM_A, IP_A, vlan=10)))
    loop = asyncio.get_running_loop()  # the daemon's clock
    await until(lambda: fab.switch.lookup(10, VM_A, loop.time()) is not None)
    with capture_logs() as logs:
        fab.nic2.send((2, gratuitous_arp(VM_A, IP_A, vlan=10)))  # failover: nic2 announces A
        await fab.nic1.expect(lambda p, k: k.arp_sha == VM_A)  # flooded back to nic1
    assert (await fab.mac_table())[(10, "02:00:00:00:00:0a")] == "nic2/p1"
    moves = [e for e in logs if e["event"] == "fabric.mac.move"]
    assert moves and moves[0]["from"] == "nic1/p0" and moves[0]["to"] == "nic2/p1"
    assert moves[0]["vlan"] == 10 and moves[0]["mac"] == "02:00:00:00:00:0a"
    reply = await fab.control("port-down", port="nic2/p1")
    assert reply.ok and reply.result == {"port": "nic2/p1", "up": False}
    assert (10, "02:00:00:00:00:0a") not in await fab.mac_table()
    assert (await fab.control("port-up", port="nic2/p1")).result["up"] is True
    bad = await fab.control("port-down", port="nic9/p0")
    assert not bad.ok and "unknown port" in bad.error
    assert not (await fab.control("reboot")).ok


async def test_link_down_pulls_the_cable_at_both_ends(fab: Rig) -> None:
    fab.nic1.send((1, gratuitous_arp(VM_A, IP_A, vlan=10)))
    await fab.nic2.expect(lambda p, k: k.arp_sha == VM_A)
    reply = await fab.control("link-down", port="nic1/p0")
    assert reply.ok and reply.result == {"port": "nic1/p0", "carrier": False, "up": False}
    assert (10, "02:00:00:00:00:0a") not in await fab.mac_table()  # carrier loss flushes
    await fab.nic1.expect_carrier((1, False))  # the NIC end hears it
    fab.nic2.send((1, gratuitous_arp(VM_B, IP_B, vlan=10)))
    await fab.nic1.expect(lambda p, k: k.arp_sha == VM_B and p == 2)  # flooded to p1 only
    assert all(p == 2 for p, _ in fab.nic1.got)
    fab.nic1.send((1, gratuitous_arp(VM_A, IP_A, vlan=10)))  # on the dead port: dropped
    await until(lambda: fab.switch.stats.drops.get("port.down", 0) >= 1)
    # A NIC whose link to the fabric comes back relearns every cable, the pulled one included.
    fab.daemon._on_connect("nic1")
    await fab.nic1.expect_carrier((1, False), (2, True))
    assert (await fab.control("link-up", port="nic1/p0")).result["up"] is True
    await fab.nic1.expect_carrier((1, True))
    bad = await fab.control("link-down", port="peer/ext1")
    assert not bad.ok and "unknown uplink" in bad.error and "nic1/p0" in bad.error


async def test_nic_crash_takes_its_uplinks_down(fab: Rig) -> None:
    fab.nic2.send((1, gratuitous_arp(VM_B, IP_B, vlan=10)))
    await fab.nic1.expect(lambda p, k: k.arp_sha == VM_B)
    fab.net.kill("nic2")
    await until(lambda: not fab.switch.is_up(("nic2", 1)))
    assert (10, "02:00:00:00:00:0b") not in await fab.mac_table()
    ports = (await fab.stats())["ports"]
    assert ports["nic2/p0"]["link_up"] is False and ports["nic1/p0"]["link_up"] is True


async def test_peer_runs_its_workload_flow_to_a_vm() -> None:
    flow = NS(name="ext-udp", proto="udp", src="ext1", dst="vm1", dport=5000, rate=100.0, size=64)
    async with rig([flow]) as fab:
        ppid, _ = await fab.nic1.expect(lambda p, k: k.arp_op == 1 and k.arp_tpa == int(IP_A))
        fab.nic1.send((ppid, arp_frame(2, VM_A, IP_A, PEER_MAC, PEER_IP, vlan=10)))
        _, dgram = await fab.nic1.expect(lambda p, k: k.proto == PROTO_UDP and k.dport == 5000)
        assert (dgram.vlan, dgram.dst_mac, dgram.src_mac) == (10, VM_A, PEER_MAC)
        assert (await fab.stats())["peers"]["ext1"]["flows"]["ext-udp"]["sent"] >= 1


async def test_unknown_sender_and_bad_ppid_are_counted(fab: Rig) -> None:
    assert fab.ctl.send("fabricd", FrameBatch("nic7", [(1, b"\0" * 60)]))
    fab.nic1.send((9, udp_frame(VM_A, BROADCAST_MAC, IP_A, IP_B, 1, 2, vlan=10)))
    await until(lambda: fab.switch.stats.drops.get("port.unknown") == 1)
    assert (await fab.stats())["fabric"]["unknown_src"] == 1


async def test_real_bus_sigterm_stops_cleanly_and_removes_the_socket(tmp_path: Path) -> None:
    def endpoint(proc: str) -> str:
        return f"ipc://{tmp_path}/{proc}.sock"

    config = make_config(endpoint=endpoint)
    node = BusNode("fabricd", endpoint("fabricd"))
    nic1 = BusNode("nic1", endpoint("nic1"))
    await nic1.start()
    try:
        task = asyncio.create_task(serve(config, node))
        sock = tmp_path / "fabricd.sock"
        await until(lambda: sock.exists() and node.is_connected("nic1"))
        got = await asyncio.wait_for(nic1.recv_batch(), DEADLINE)  # the peer's announce
        assert any(isinstance(m, FrameBatch) for _, m in got)
        os.kill(os.getpid(), signal.SIGTERM)  # serve() handles it: no exit, a clean stop
        await asyncio.wait_for(task, DEADLINE)
        assert not sock.exists()
    finally:
        await nic1.close()


def test_a_peer_flow_to_a_vm_starts_on_the_first_arp_the_peer_hears_from_it() -> None:
    """A VM speaks once its host is ready; a NIC's RARP for it (one NIC mapped) is not enough."""
    flow = NS(name="ext-udp", proto="udp", src="ext1", dst="vm1", dport=5000, rate=100.0, size=64)
    config = make_config([flow])
    config.vms = [NS(interfaces=[NS(mac=VM_A, ips=(ip_interface("10.0.10.1/24"),))])]
    fabric = Fabric(config, now=0.0)
    fabric.set_nic_link("nic1", True)
    peer = fabric.peers["ext1"]
    fabric.from_nic("nic1", [(1, rarp_frame(VM_A, vlan=10))], 0.05)
    fabric.tick(0.1)
    assert "ext-udp" not in peer.flows, "a NIC's RARP does not start the flow"
    fabric.from_nic("nic1", [(1, gratuitous_arp(VM_A, IP_A, vlan=10))], 0.15)
    fabric.tick(0.2)
    assert "ext-udp" in peer.flows
