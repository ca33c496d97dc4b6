"""Behaviour of one NIC's datapath (`Pipeline`): tiers, handovers, teaming, map, drops.

Every test drives the sans-I/O pipeline of the two-NIC test host (tests/unit/dpfixtures.py)
with real frames and checks the decision, the frames emitted and the counters. Nothing is timed:
`now` is a number the test chooses.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from ipaddress import IPv4Address

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from nicd.datapath.conntrack import CtRecord, PseudoState, TcpState, Timeouts
from nicd.datapath.pipeline import Decision, Emit, Pipeline, PortKind, Verdict
from nicd.datapath.rules import RuleSet
from nicd.datapath.tiers import Tier
from nicd.policy import ruleset_from_config
from tests.unit.dpfixtures import (
    DEFAULT_RULES,
    PEER_IP,
    PEER_MAC,
    VM,
    arp_request,
    echo,
    make_pipeline,
    map_entries,
    tcp,
    tcp_in,
    tcp_out,
    udp,
    udp_in,
    udp_out,
    vm,
)
from wire import build
from wire.frames import Packet, parse_frame_untrusted
from wire.protocols import (
    BROADCAST_MAC,
    ETH_ARP,
    ETH_IPV4,
    ETH_IPV6,
    ETH_RARP,
    PROTO_ICMP,
    PROTO_TCP,
    PROTO_UDP,
    TCP_ACK,
    TCP_FIN,
    TCP_PSH,
    TCP_RST,
    TCP_SYN,
)

VM1, VM2, VM3, VM4 = vm(1), vm(2), vm(3), vm(4)
DATA = TCP_ACK | TCP_PSH
NIC1_UPLINKS = ("nic1/p0", "nic1/p1")
NIC2_UPLINKS = ("nic2/p0", "nic2/p1")


# -- driving the pipeline ----------------------------------------------------------------------


def from_vf(p: Pipeline, src: VM, frame: bytes, now: float = 0.0) -> Decision:
    """Feed a frame VM `src` sent on its VF (its home NIC must be `p`)."""
    return p.process(PortKind.VF, src.ppid, frame, now)


def from_uplink(p: Pipeline, frame: bytes, now: float = 0.0, ppid: int = 1) -> Decision:
    """Feed a frame the fabric delivered on uplink PPID `ppid` of `p`."""
    return p.process(PortKind.UPLINK, ppid, frame, now)


def emits(d: Decision) -> list[tuple[PortKind, int, str, bytes]]:
    """A decision's emits as comparable tuples."""
    return [(e.out, e.target, e.nic, e.frame) for e in d.emits]


def parsed(e: Emit) -> Packet:
    """Parse an emitted frame (it must be well formed)."""
    return parse_frame_untrusted(e.frame)


def records(p: Pipeline, zone: int | None = None) -> list[CtRecord]:
    """Conntrack records of `p`, optionally of one zone (VPID)."""
    return [r for r in p.ct if zone is None or r.zone == zone]


def record(p: Pipeline, zone: int, dport: int) -> CtRecord:
    """The one record of `zone` whose original destination port is `dport`."""
    found = [r for r in p.ct if r.zone == zone and r.dport == dport]
    assert len(found) == 1, found
    return found[0]


def fast_records(p: Pipeline, tier: Tier) -> list[CtRecord]:
    """Records some entry of the eSwitch (ESWITCH) or the flow cache (CACHE) depends on."""
    table = p.eswitch if tier is Tier.ESWITCH else p.cache
    return list(table.records())


def in_fast_tiers(p: Pipeline, rec: CtRecord) -> bool:
    """True if any fast-tier entry still depends on `rec`."""
    return any(r is rec for t in (Tier.ESWITCH, Tier.CACHE) for r in fast_records(p, t))


def accounted(p: Pipeline) -> bool:
    """Every frame that entered was either forwarded or dropped under a reason."""
    return sum(p.stats.drops.values()) + p.stats.forwarded == p.stats.frames_in


def uplink_emit(p: Pipeline, vpid: int, frame: bytes) -> tuple[PortKind, int, str, bytes]:
    """The emit `p` must produce to send `frame` of `vpid` to the network (port-id team)."""
    u = p.team.select(vpid, 0)
    assert u is not None
    if u.nic == p.nic:
        return PortKind.UPLINK, u.ppid, "", frame
    return PortKind.PEER_TRANSMIT, u.ppid, u.nic, frame


def only_uplinks_of(p: Pipeline, nic: str) -> None:
    """Leave only `nic`'s uplinks live in `p`'s team."""
    for name in (*NIC1_UPLINKS, *NIC2_UPLINKS):
        if not name.startswith(nic + "/"):
            p.set_uplink_live(name, False)


def tagged(frame: bytes, vlan: int) -> bytes:
    """`frame` with an 802.1Q tag pushed after the MACs."""
    return frame[:12] + struct.pack("!HH", 0x8100, vlan) + frame[12:]


def handshake_vms(
    p: Pipeline, a: VM, b: VM, sport: int, dport: int, now: float = 0.0
) -> list[Decision]:
    """SYN, SYN/ACK, ACK between two VMs homed on `p`."""
    return [
        from_vf(p, a, tcp(a, b, sport, dport, TCP_SYN, seq=100), now),
        from_vf(p, b, tcp(b, a, dport, sport, TCP_SYN | TCP_ACK, seq=500, ack=101), now),
        from_vf(p, a, tcp(a, b, sport, dport, TCP_ACK, seq=101, ack=501), now),
    ]


def connect_out(p: Pipeline, a: VM, sport: int, dport: int, now: float = 0.0) -> list[Decision]:
    """VM `a` (homed on `p`) opens a TCP connection to the external peer."""
    return [
        from_vf(p, a, tcp_out(a, sport, dport, TCP_SYN, seq=100), now),
        from_uplink(p, tcp_in(a, dport, sport, TCP_SYN | TCP_ACK, seq=500, ack=101), now),
        from_vf(p, a, tcp_out(a, sport, dport, TCP_ACK, seq=101, ack=501), now),
    ]


def data_out(p: Pipeline, a: VM, sport: int, dport: int, now: float = 0.0) -> Decision:
    """One data segment of an open connection, VM `a` to the external peer."""
    return from_vf(p, a, tcp_out(a, sport, dport, DATA, 101, 501, b"payload"), now)


def data_in(
    p: Pipeline, a: VM, sport: int, dport: int, now: float = 0.0, ppid: int = 1
) -> Decision:
    """One data segment of an open connection, external peer to VM `a` (`sport` is the VM's)."""
    return from_uplink(p, tcp_in(a, dport, sport, DATA, 501, 101, b"answer"), now, ppid)


def all_forward(ds: Iterable[Decision]) -> bool:
    """True if every decision forwarded its frame."""
    return all(d.verdict is Verdict.FORWARD for d in ds)


def rules_plus(*extra: dict) -> RuleSet:
    """The default rule set with extra rules (give them priorities below 10 to win)."""
    return ruleset_from_config([*extra, *DEFAULT_RULES])


# -- 1. VM to VM on one NIC ---------------------------------------------------------------------


def test_vm_to_vm_handshake_in_slow_path_then_data_on_the_eswitch() -> None:
    """The handshake is decided by the slow path; established data is the eSwitch's."""
    p = make_pipeline("nic1")
    syn, synack, ack = handshake_vms(p, VM1, VM2, 40000, 80)
    for d, target in ((syn, VM2), (synack, VM1), (ack, VM2)):
        assert d.verdict is Verdict.FORWARD
        assert d.tier is Tier.SLOW
        assert [(e.out, e.target, e.nic) for e in d.emits] == [(PortKind.VF, target.ppid, "")]
    assert syn.rule == "out"  # the from-VM rule of the sender
    assert p.ct.stats.created == 2  # one record per zone: VM1 (from-VM) and VM2 (to-VM)
    a, b = record(p, 1, 80), record(p, 2, 80)
    assert a.state is TcpState.ESTABLISHED and b.state is TcpState.ESTABLISHED
    assert a.hw_ok and b.hw_ok and a.sw_ok and b.sw_ok

    created, hits = p.ct.stats.created, p.eswitch.stats.hits
    fwd = tcp(VM1, VM2, 40000, 80, DATA, 101, 501, b"GET /")
    d = from_vf(p, VM1, fwd)
    assert d.tier is Tier.ESWITCH  # the handshake's last ACK installed this path
    assert emits(d) == [(PortKind.VF, VM2.ppid, "", fwd)]
    back = tcp(VM2, VM1, 80, 40000, DATA, 501, 106, b"200 OK")
    first_back = from_vf(p, VM2, back)  # a path's first frame may still be the slow path's
    assert emits(first_back) == [(PortKind.VF, VM1.ppid, "", back)]
    for _ in range(3):
        for src, dst, frame in ((VM1, VM2, fwd), (VM2, VM1, back)):
            d = from_vf(p, src, frame)
            assert d.verdict is Verdict.FORWARD
            assert d.tier is Tier.ESWITCH
            assert emits(d) == [(PortKind.VF, dst.ppid, "", frame)]
    assert p.eswitch.stats.hits >= hits + 7
    assert p.ct.stats.created == created  # no slow-path work for established data
    assert len(p.ct) == 2
    for rec in (a, b):
        assert rec.hw_ok
        assert rec.tier == Tier.ESWITCH
        assert rec in fast_records(p, Tier.ESWITCH)
    assert p.stats.frames_in == p.stats.forwarded == 11
    assert not p.stats.drops


# -- 2. Across NICs: from-VM on the sender's NIC, to-VM on the receiver's ---------------------


def test_cross_nic_frame_is_handed_over_and_the_receiver_runs_to_vm() -> None:
    """nic1 runs VM1's from-VM stage and hands over; nic2 runs VM3's to-VM stage."""
    nic1, nic2 = make_pipeline("nic1"), make_pipeline("nic2")
    syn = tcp(VM1, VM3, 40000, 80, TCP_SYN, seq=100)
    d1 = from_vf(nic1, VM1, syn)
    assert d1.verdict is Verdict.FORWARD and d1.rule == "out"
    assert d1.emits == [Emit(PortKind.PEER_DELIVER, 3, syn, "nic2")]
    assert nic1.stats.handover_sent["peer_deliver"] == 1
    assert [(r.zone, r.origin, r.rule) for r in records(nic1)] == [(1, 0, "out")]

    d2 = nic2.process(PortKind.PEER_DELIVER, 3, syn, 0.0)
    assert d2.verdict is Verdict.FORWARD and d2.rule == "web-in"
    assert d2.emits == [Emit(PortKind.VF, 101, syn)]  # VM3's VF on nic2
    assert nic2.stats.handover_received["peer_deliver"] == 1
    assert [(r.zone, r.origin, r.rule) for r in records(nic2)] == [(3, 1, "web-in")]

    # The reply goes the other way round: nic2 from-VM (VM3), nic1 to-VM (VM1).
    synack = tcp(VM3, VM1, 80, 40000, TCP_SYN | TCP_ACK, seq=500, ack=101)
    r2 = from_vf(nic2, VM3, synack)
    assert r2.emits == [Emit(PortKind.PEER_DELIVER, 1, synack, "nic1")]
    r1 = nic1.process(PortKind.PEER_DELIVER, 1, synack, 0.0)
    assert r1.emits == [Emit(PortKind.VF, VM1.ppid, synack)]
    ack = tcp(VM1, VM3, 40000, 80, TCP_ACK, seq=101, ack=501)
    handed = from_vf(nic1, VM1, ack).emits[0].frame
    assert nic2.process(PortKind.PEER_DELIVER, 3, handed, 0.0).verdict is Verdict.FORWARD
    assert record(nic1, 1, 80).state is TcpState.ESTABLISHED
    assert record(nic2, 3, 80).state is TcpState.ESTABLISHED

    # Established data: each NIC decides its own stage on its eSwitch.
    data = tcp(VM1, VM3, 40000, 80, DATA, 101, 501, b"x")
    d1 = from_vf(nic1, VM1, data)
    assert d1.tier is Tier.ESWITCH
    assert d1.emits == [Emit(PortKind.PEER_DELIVER, 3, data, "nic2")]
    d2 = nic2.process(PortKind.PEER_DELIVER, 3, data, 0.0)
    assert d2.tier is Tier.ESWITCH
    assert d2.emits == [Emit(PortKind.VF, 101, data)]


def test_cross_nic_to_vm_rule_is_enforced_on_the_receivers_nic() -> None:
    """A to-VM drop rule does not stop the frame on the sender's NIC but on the receiver's."""
    rs = ruleset_from_config(
        [
            {"name": "no-web-in", "priority": 10, "action": "drop", "direction": "to-vm",
             "proto": "tcp", "dport": 80},
            {"name": "out", "priority": 100, "action": "allow", "direction": "from-vm"},
        ]
    )  # fmt: skip
    nic1, nic2 = make_pipeline("nic1", rs), make_pipeline("nic2", rs)
    syn = tcp(VM1, VM3, 40000, 80, TCP_SYN, seq=100)
    d1 = from_vf(nic1, VM1, syn)
    assert d1.verdict is Verdict.FORWARD and d1.rule == "out"
    assert d1.emits == [Emit(PortKind.PEER_DELIVER, 3, syn, "nic2")]
    assert not nic1.stats.drops
    d2 = nic2.process(PortKind.PEER_DELIVER, 3, syn, 0.0)
    assert d2.verdict is Verdict.DROP
    assert (d2.reason, d2.rule, d2.emits) == ("fw.drop", "no-web-in", [])
    assert nic2.stats.drops == {"fw.drop": 1}
    assert len(nic2.ct) == 0


# -- 3. To the network -------------------------------------------------------------------------


def test_frame_to_the_network_leaves_on_a_local_uplink_tagged() -> None:
    """A web-segment frame to an unknown MAC leaves on the team's uplink with 802.1Q tag 10."""
    p = make_pipeline("nic1")
    only_uplinks_of(p, "nic1")
    syn = tcp_out(VM1, 40000, 80, TCP_SYN, seq=100)
    d = from_vf(p, VM1, syn)
    assert d.verdict is Verdict.FORWARD
    assert len(d.emits) == 1
    e = d.emits[0]
    assert e.out is PortKind.UPLINK and e.target in (1, 2) and e.nic == ""
    assert e.frame == tagged(syn, 10)
    pkt = parsed(e)
    assert (pkt.vlan, pkt.dst_mac, pkt.src_mac, pkt.dport) == (10, PEER_MAC, VM1.mac, 80)
    assert not p.stats.handover_sent


def test_frame_to_the_network_via_the_siblings_uplink_is_transmit_only() -> None:
    """With the uplink on the sibling the frame is a PEER_TRANSMIT; the sibling only sends it."""
    nic1, nic2 = make_pipeline("nic1"), make_pipeline("nic2")
    only_uplinks_of(nic1, "nic2")
    syn = tcp_out(VM1, 40000, 80, TCP_SYN, seq=100)
    d = from_vf(nic1, VM1, syn)
    assert d.verdict is Verdict.FORWARD
    [e] = d.emits
    assert (e.out, e.nic) == (PortKind.PEER_TRANSMIT, "nic2") and e.target in (1, 2)
    assert e.frame == tagged(syn, 10)
    assert nic1.stats.handover_sent["peer_transmit"] == 1
    assert len(nic1.ct) == 1  # the stateful work happened on the home NIC

    t = nic2.process(PortKind.PEER_TRANSMIT, e.target, e.frame, 0.0)
    assert t.verdict is Verdict.FORWARD
    assert t.emits == [Emit(PortKind.UPLINK, e.target, e.frame)]
    assert len(nic2.ct) == 0 and nic2.ct.stats.created == 0
    assert nic2.stats.handover_received["peer_transmit"] == 1
    assert accounted(nic2)


def test_untagged_segment_frame_stays_untagged_on_the_wire() -> None:
    """The db segment has no VLAN: VM4's frame leaves exactly as the VM sent it."""
    p = make_pipeline("nic2")
    only_uplinks_of(p, "nic2")
    syn = tcp_out(VM4, 40000, 5432, TCP_SYN, seq=100)
    d = from_vf(p, VM4, syn)
    assert d.verdict is Verdict.FORWARD
    [e] = d.emits
    assert e.out is PortKind.UPLINK and e.frame == syn
    assert parsed(e).vlan is None


def test_peer_transmit_to_a_down_or_unknown_uplink_is_dropped() -> None:
    """A transmit handover names a live local uplink, or it is dropped and counted."""
    p = make_pipeline("nic2")
    frame = tagged(tcp_out(VM1, 40000, 80, TCP_SYN), 10)
    assert p.process(PortKind.PEER_TRANSMIT, 9, frame, 0.0).reason == "port.unknown_uplink"
    p.set_uplink_live("nic2/p0", False)
    assert p.process(PortKind.PEER_TRANSMIT, 1, frame, 0.0).reason == "uplink.down"
    assert p.stats.drops == {"port.unknown_uplink": 1, "uplink.down": 1}
    assert p.stats.handover_received["peer_transmit"] == 2


# -- 4. Inbound from an uplink ------------------------------------------------------------------


def test_inbound_frame_for_a_vm_on_the_sibling_is_handed_over_untagged() -> None:
    """nic1 switches the frame by MAC to VM3's home (nic2); no conntrack work on nic1."""
    nic1, nic2 = make_pipeline("nic1"), make_pipeline("nic2")
    syn = tcp_in(VM3, 5555, 80, TCP_SYN, seq=7)
    d = from_uplink(nic1, syn)
    assert d.verdict is Verdict.FORWARD
    [e] = d.emits
    assert (e.out, e.target, e.nic) == (PortKind.PEER_DELIVER, 3, "nic2")
    plain = build.tcp_frame(PEER_MAC, VM3.mac, PEER_IP, VM3.ip, 5555, 80, TCP_SYN, 7)
    assert e.frame == plain and parsed(e).vlan is None
    assert len(nic1.ct) == 0 and nic1.ct.stats.created == 0

    d2 = nic2.process(PortKind.PEER_DELIVER, 3, e.frame, 0.0)
    assert d2.emits == [Emit(PortKind.VF, VM3.ppid, plain)]
    assert d2.rule == "web-in"
    assert [(r.zone, r.origin) for r in records(nic2)] == [(3, 1)]


def test_inbound_frame_for_a_local_vm_runs_its_to_vm_stage_here() -> None:
    """A frame for VM1 arriving on nic1 is delivered on VM1's VF, untagged."""
    p = make_pipeline("nic1")
    syn = tcp_in(VM1, 5555, 80, TCP_SYN, seq=7)
    d = from_uplink(p, syn, ppid=2)
    assert d.verdict is Verdict.FORWARD and d.rule == "web-in"
    plain = build.tcp_frame(PEER_MAC, VM1.mac, PEER_IP, VM1.ip, 5555, 80, TCP_SYN, 7)
    assert d.emits == [Emit(PortKind.VF, VM1.ppid, plain)]
    assert [(r.zone, r.origin, r.rule) for r in records(p)] == [(1, 1, "web-in")]


def test_inbound_frame_with_a_foreign_vlan_or_unknown_mac_is_dropped() -> None:
    """The VLAN must be a segment's and the MAC a VM of that segment."""
    p = make_pipeline("nic1")
    wrong_vlan = build.tcp_frame(PEER_MAC, VM1.mac, PEER_IP, VM1.ip, 5, 80, TCP_SYN, vlan=99)
    assert from_uplink(p, wrong_vlan).reason == "l2.unknown_vlan"
    db_mac_on_web = build.tcp_frame(PEER_MAC, VM4.mac, PEER_IP, VM4.ip, 5, 80, TCP_SYN, vlan=10)
    assert from_uplink(p, db_mac_on_web).reason == "l2.unknown_dst"
    assert from_uplink(p, tcp_in(VM1, 5, 80, TCP_SYN), ppid=7).reason == "port.unknown_uplink"
    assert p.stats.drops == {"l2.unknown_vlan": 1, "l2.unknown_dst": 1, "port.unknown_uplink": 1}


# -- 5. Denied flows ----------------------------------------------------------------------------


def test_drop_rule_drops_without_emitting_or_tracking() -> None:
    """A drop rule: `fw.drop` under the rule's name, nothing emitted, no record."""
    p = make_pipeline("nic1", rules_plus({"name": "no-smb", "priority": 5, "action": "drop",
                                          "proto": "tcp", "dport": 445}))  # fmt: skip
    for _ in range(3):
        d = from_vf(p, VM1, tcp(VM1, VM2, 40000, 445, TCP_SYN))
        assert (d.verdict, d.reason, d.rule, d.emits) == (Verdict.DROP, "fw.drop", "no-smb", [])
    # Nothing matches a to-VM TCP 8080 from outside: the default action drops it.
    d = from_uplink(p, tcp_in(VM1, 5555, 8080, TCP_SYN))
    assert (d.verdict, d.reason, d.rule, d.emits) == (Verdict.DROP, "fw.drop", "default", [])
    assert p.stats.drops == {"fw.drop": 4}
    assert len(p.ct) == 0 and p.stats.forwarded == 0


def test_reject_tcp_from_vm_answers_the_sender_with_a_reset() -> None:
    """Telnet from a VM is rejected: a RST|ACK with swapped ports goes back on its VF."""
    p = make_pipeline("nic1")
    syn = tcp_out(VM1, 40000, 23, TCP_SYN, seq=1000)
    d = from_vf(p, VM1, syn)
    assert (d.verdict, d.reason, d.rule) == (Verdict.DROP, "fw.reject", "no-telnet")
    [e] = d.emits
    assert (e.out, e.target, e.nic) == (PortKind.VF, VM1.ppid, "")
    rst = parsed(e)
    assert rst.tcp_flags == TCP_RST | TCP_ACK
    assert (rst.sport, rst.dport) == (23, 40000)
    assert (rst.src_ip, rst.dst_ip) == (int(PEER_IP), int(VM1.ip))
    assert (rst.src_mac, rst.dst_mac) == (PEER_MAC, VM1.mac)
    assert rst.ack == 1001 and rst.vlan is None
    assert p.stats.drops == {"fw.reject": 1} and len(p.ct) == 0


def test_reject_telnet_between_vms_never_reaches_the_receiver() -> None:
    """VM1 to VM2 telnet: only the RST back to VM1, nothing on VM2's VF."""
    p = make_pipeline("nic1")
    d = from_vf(p, VM1, tcp(VM1, VM2, 40001, 23, TCP_SYN, seq=5))
    assert d.verdict is Verdict.DROP and d.reason == "fw.reject"
    assert [(e.out, e.target) for e in d.emits] == [(PortKind.VF, VM1.ppid)]
    rst = parsed(d.emits[0])
    assert (rst.tcp_flags, rst.sport, rst.dport, rst.ack) == (TCP_RST | TCP_ACK, 23, 40001, 6)
    assert rst.src_mac == VM2.mac and rst.dst_mac == VM1.mac


def test_reject_udp_from_vm_answers_with_icmp_unreachable() -> None:
    """A rejected UDP datagram gets ICMP 3/13 quoting its IP header and first 8 bytes."""
    p = make_pipeline("nic1", rules_plus({"name": "no-tftp", "priority": 5, "action": "reject",
                                          "proto": "udp", "dport": 69}))  # fmt: skip
    dgram = udp_out(VM1, 4000, 69, b"read file")
    d = from_vf(p, VM1, dgram)
    assert (d.verdict, d.reason, d.rule) == (Verdict.DROP, "fw.reject", "no-tftp")
    [e] = d.emits
    assert (e.out, e.target) == (PortKind.VF, VM1.ppid)
    icmp = parsed(e)
    assert (icmp.proto, icmp.icmp_type, icmp.icmp_code) == (PROTO_ICMP, 3, 13)
    assert (icmp.src_ip, icmp.dst_ip, icmp.dst_mac) == (int(PEER_IP), int(VM1.ip), VM1.mac)
    quoted = e.frame[icmp.payload_offset :]
    assert quoted == dgram[14 : 14 + 20 + 8]


REJECT_8081_IN = {
    "name": "no-8081-in",
    "priority": 5,
    "action": "reject",
    "direction": "to-vm",
    "proto": "tcp",
    "dport": 8081,
}


def test_reject_to_vm_answers_a_local_sender_on_its_vf() -> None:
    """A to-VM reject for VM2 -> VM1 sends the RST straight back to VM2's VF."""
    p = make_pipeline("nic1", rules_plus(REJECT_8081_IN))
    d = from_vf(p, VM2, tcp(VM2, VM1, 40000, 8081, TCP_SYN, seq=41))
    assert (d.verdict, d.reason, d.rule) == (Verdict.DROP, "fw.reject", "no-8081-in")
    [e] = d.emits
    assert (e.out, e.target) == (PortKind.VF, VM2.ppid)
    rst = parsed(e)
    assert (rst.tcp_flags, rst.sport, rst.dport, rst.ack) == (TCP_RST | TCP_ACK, 8081, 40000, 42)
    assert (rst.src_mac, rst.dst_mac) == (VM1.mac, VM2.mac)


def test_reject_to_vm_answers_a_sender_on_the_sibling_through_its_home() -> None:
    """VM3 (nic2) -> VM1 (nic1) rejected on nic1: the RST goes back to nic2, then to VM3."""
    rs = rules_plus(REJECT_8081_IN)
    nic1, nic2 = make_pipeline("nic1", rs), make_pipeline("nic2", rs)
    syn = tcp(VM3, VM1, 40000, 8081, TCP_SYN, seq=41)
    d = from_vf(nic2, VM3, syn)
    assert d.emits == [Emit(PortKind.PEER_DELIVER, 1, syn, "nic1")]
    d1 = nic1.process(PortKind.PEER_DELIVER, 1, syn, 0.0)
    assert (d1.verdict, d1.reason) == (Verdict.DROP, "fw.reject")
    [e] = d1.emits
    assert (e.out, e.target, e.nic) == (PortKind.PEER_DELIVER, 3, "nic2")
    d2 = nic2.process(PortKind.PEER_DELIVER, 3, e.frame, 0.0)
    assert d2.verdict is Verdict.FORWARD
    assert d2.emits == [Emit(PortKind.VF, VM3.ppid, e.frame)]
    assert record(nic2, 3, 8081).state is TcpState.CLOSE  # VM3's record saw the RST


def test_reject_tcp_to_vm_from_the_network_sends_one_tagged_reset() -> None:
    """Telnet from outside to VM1: the RST goes to the network with exactly one tag."""
    p = make_pipeline("nic1")
    d = from_uplink(p, tcp_in(VM1, 5555, 23, TCP_SYN, seq=9))
    assert d.verdict is Verdict.DROP and d.reason == "fw.reject"
    [e] = d.emits
    assert e.out in (PortKind.UPLINK, PortKind.PEER_TRANSMIT)
    rst = parsed(e)
    assert rst.vlan == 10
    assert rst.ethertype == ETH_IPV4  # fails: the inner ethertype is another 802.1Q tag
    assert (rst.tcp_flags, rst.sport, rst.dport, rst.ack) == (TCP_RST | TCP_ACK, 23, 5555, 10)


def test_reject_udp_to_vm_from_the_network_quotes_the_datagram() -> None:
    """A rejected inbound datagram: ICMP 3/13, one tag, quoting the original IP header."""
    p = make_pipeline("nic1", rules_plus({"name": "no-tftp", "priority": 5, "action": "reject",
                                          "proto": "udp", "dport": 69}))  # fmt: skip
    dgram = udp_in(VM1, 4000, 69, b"read file")
    d = from_uplink(p, dgram)
    assert d.reason == "fw.reject"
    [e] = d.emits
    icmp = parsed(e)
    assert icmp.vlan == 10 and icmp.ethertype == ETH_IPV4
    assert (icmp.icmp_type, icmp.icmp_code) == (3, 13)
    assert e.frame[icmp.payload_offset :] == dgram[18 : 18 + 28]


# -- 6. Offload flags ---------------------------------------------------------------------------


def test_inspect_flow_is_decided_by_the_slow_path_every_time() -> None:
    """ssh (`inspect`) never enters the flow cache or the eSwitch."""
    p = make_pipeline("nic1")
    assert all_forward(handshake_vms(p, VM1, VM2, 40000, 22))
    for rec in records(p):
        assert rec.rule == "ssh-inspect" and rec.established
        assert not rec.sw_ok and not rec.hw_ok
    for i in range(4):
        for src, dst, frame in (
            (VM1, VM2, tcp(VM1, VM2, 40000, 22, DATA, 101 + i, 501, b"k")),
            (VM2, VM1, tcp(VM2, VM1, 22, 40000, DATA, 501 + i, 102, b"s")),
        ):
            d = from_vf(p, src, frame)
            assert d.verdict is Verdict.FORWARD and d.tier is Tier.SLOW
            assert emits(d) == [(PortKind.VF, dst.ppid, "", frame)]
    assert len(p.eswitch) == 0 and len(p.cache) == 0
    assert p.eswitch.stats.hits == p.cache.stats.hits == 0
    assert p.eswitch.stats.installs == p.cache.stats.installs == 0


def test_sw_only_flow_reaches_the_cache_but_never_the_eswitch() -> None:
    """postgres (`sw_only`): sw_ok but not hw_ok; established data is the cache's."""
    p = make_pipeline("nic1")
    assert all_forward(handshake_vms(p, VM1, VM2, 40000, 5432))
    for rec in records(p):
        assert rec.rule == "db-sw-only" and rec.established
        assert rec.sw_ok and not rec.hw_ok
    fwd = tcp(VM1, VM2, 40000, 5432, DATA, 101, 501, b"q")
    back = tcp(VM2, VM1, 5432, 40000, DATA, 501, 102, b"r")
    from_vf(p, VM2, back)  # the reverse path's first frame
    for _ in range(3):
        for src, frame in ((VM1, fwd), (VM2, back)):
            d = from_vf(p, src, frame)
            assert d.verdict is Verdict.FORWARD and d.tier is Tier.CACHE
    assert len(p.eswitch) == 0 and p.eswitch.stats.installs == 0
    assert p.cache.stats.hits >= 6
    assert {id(r) for r in fast_records(p, Tier.CACHE)} == {id(r) for r in records(p)}


def test_icmp_echo_reaches_the_cache_only() -> None:
    """Hardware speaks TCP/UDP only: an answered ping is cached, never offloaded to hardware."""
    p = make_pipeline("nic1")
    tiers = []
    for seq in range(4):
        for src, dst, kind in ((VM1, VM2, 8), (VM2, VM1, 0)):
            frame = echo(src, dst, kind, ident=77, seq=seq)
            d = from_vf(p, src, frame)
            assert d.verdict is Verdict.FORWARD
            assert emits(d) == [(PortKind.VF, dst.ppid, "", frame)]
            tiers.append(d.tier)
    assert tiers[0] is Tier.SLOW and tiers[-2:] == [Tier.CACHE, Tier.CACHE]
    assert Tier.ESWITCH not in tiers
    for rec in records(p):
        assert rec.state is PseudoState.REPLIED and rec.proto == PROTO_ICMP
        assert rec.sw_ok and not rec.hw_ok
    assert len(p.eswitch) == 0 and len(p.cache) > 0


def test_udp_reaches_the_eswitch_once_the_reply_is_seen() -> None:
    """dns: unreplied datagrams stay in the slow path; after the reply, the eSwitch."""
    p = make_pipeline("nic1")
    q = udp(VM1, VM2, 3333, 53, b"query")
    for _ in range(2):
        d = from_vf(p, VM1, q)
        assert d.verdict is Verdict.FORWARD and d.tier is Tier.SLOW
    assert len(p.cache) == 0 and len(p.eswitch) == 0
    r = udp(VM2, VM1, 53, 3333, b"answer")
    d = from_vf(p, VM2, r)
    assert d.verdict is Verdict.FORWARD
    assert all(rec.state is PseudoState.REPLIED and rec.hw_ok for rec in records(p))
    from_vf(p, VM1, q)  # the forward path's first frame after the reply
    for src, frame in ((VM1, q), (VM2, r), (VM1, q)):
        d = from_vf(p, src, frame)
        assert d.tier is Tier.ESWITCH
    assert p.ct.stats.created == 2


# -- 7. eSwitch full and offload-rebalance -----------------------------------------------------


def _two_flows_one_in_hardware(p: Pipeline) -> tuple[CtRecord, CtRecord]:
    """Flow A (VM1:40000 -> peer:80) fills a 2-entry eSwitch; flow B (40001) must wait."""
    assert all_forward(connect_out(p, VM1, 40000, 80))
    data_in(p, VM1, 40000, 80)  # the inbound path's first frame
    a = record(p, 1, 80)
    assert a in fast_records(p, Tier.ESWITCH) and len(p.eswitch) == 2
    full = p.eswitch.stats.full
    assert all_forward(connect_out(p, VM1, 40001, 81))
    data_in(p, VM1, 40001, 81)
    b = record(p, 1, 81)
    assert b.hw_ok  # may go to hardware; there is no room
    assert b not in fast_records(p, Tier.ESWITCH) and b in fast_records(p, Tier.CACHE)
    assert p.eswitch.stats.full > full
    assert data_out(p, VM1, 40001, 81).tier is Tier.CACHE
    assert data_out(p, VM1, 40000, 80).tier is Tier.ESWITCH
    return a, b


def test_full_eswitch_leaves_the_flow_in_the_cache() -> None:
    """Capacity for one connection: the second established flow is forwarded by the cache."""
    p = make_pipeline("nic1", eswitch_capacity=2)
    a, b = _two_flows_one_in_hardware(p)
    assert b.tier == Tier.CACHE and a.tier == Tier.ESWITCH
    for _ in range(3):
        d = data_in(p, VM1, 40001, 81)
        assert d.tier is Tier.CACHE
        assert [(e.out, e.target) for e in d.emits] == [(PortKind.VF, VM1.ppid)]
    assert len(p.eswitch) == 2


def test_rebalance_swaps_a_busier_waiting_flow_into_hardware() -> None:
    """offload-rebalance: at the tick, the busy cached flow replaces the idle hardware one."""
    p = make_pipeline("nic1", eswitch_capacity=2)
    a, b = _two_flows_one_in_hardware(p)
    p.tick(1.0)  # starts a rate interval
    data_out(p, VM1, 40000, 80, 1.5)
    data_in(p, VM1, 40000, 80, 1.5)
    for i in range(10):
        data_out(p, VM1, 40001, 81, 1.0 + i / 10)
        data_in(p, VM1, 40001, 81, 1.0 + i / 10)
    p.tick(2.0)
    assert p.eswitch.swaps >= 1
    assert b in fast_records(p, Tier.ESWITCH) and a not in fast_records(p, Tier.ESWITCH)
    assert a in fast_records(p, Tier.CACHE)  # the loser stays in software, still allowed
    assert b.tier == Tier.ESWITCH
    assert data_out(p, VM1, 40001, 81, 2.1).tier is Tier.ESWITCH
    assert data_in(p, VM1, 40001, 81, 2.1).tier is Tier.ESWITCH
    d = data_out(p, VM1, 40000, 80, 2.1)
    assert d.verdict is Verdict.FORWARD and d.tier is Tier.CACHE


def test_rebalance_loser_is_reported_in_the_cache() -> None:
    """After a swap the evicted flow's record says CACHE, as `flows`/`trace` would show it."""
    p = make_pipeline("nic1", eswitch_capacity=2)
    a, _b = _two_flows_one_in_hardware(p)
    p.tick(1.0)
    for i in range(10):
        data_out(p, VM1, 40001, 81, 1.0 + i / 10)
        data_in(p, VM1, 40001, 81, 1.0 + i / 10)
    p.tick(2.0)
    assert a not in fast_records(p, Tier.ESWITCH) and a in fast_records(p, Tier.CACHE)
    assert a.tier == Tier.CACHE


def test_rebalance_keeps_the_busier_hardware_flow() -> None:
    """No swap when the installed flow is the busier one."""
    p = make_pipeline("nic1", eswitch_capacity=2)
    a, b = _two_flows_one_in_hardware(p)
    p.tick(1.0)
    for i in range(10):
        data_out(p, VM1, 40000, 80, 1.0 + i / 10)
        data_in(p, VM1, 40000, 80, 1.0 + i / 10)
    data_out(p, VM1, 40001, 81, 1.5)
    p.tick(2.0)
    assert p.eswitch.swaps == 0
    assert a in fast_records(p, Tier.ESWITCH) and b not in fast_records(p, Tier.ESWITCH)


def test_rebalance_never_promotes_a_path_whose_connection_expired() -> None:
    """The busier waiting flow expires at the very tick that would swap it into hardware:
    its path leaves the cache and goes nowhere, so no fast tier keeps a dead connection."""
    p = make_pipeline("nic1", eswitch_capacity=2, timeouts=Timeouts(tcp_established=5))
    a, b = _two_flows_one_in_hardware(p)
    p.tick(1.0)
    for _ in range(10):
        data_in(p, VM1, 40001, 81, 1.0)  # B busy, last seen at 1.0
    data_in(p, VM1, 40000, 80, 3.0)  # A idler, but seen later
    p.tick(6.0)  # B's deadline: 1.0 + 5
    assert b not in records(p) and a in records(p)
    assert not in_fast_tiers(p, b)
    assert p.eswitch.swaps == 0 and a in fast_records(p, Tier.ESWITCH)
    assert data_in(p, VM1, 40001, 81, 6.0).verdict is Verdict.DROP  # the slow path judges it


# -- 8. SYN, FIN and RST always go to the slow path -------------------------------------------


def test_syn_fin_rst_of_an_offloaded_flow_go_to_the_slow_path() -> None:
    """Flags that change TCP state are punted; after the FIN exchange no fast entry is left."""
    p = make_pipeline("nic1")
    handshake_vms(p, VM1, VM2, 40000, 80)
    fwd = tcp(VM1, VM2, 40000, 80, DATA, 101, 501, b"x")
    back = tcp(VM2, VM1, 80, 40000, DATA, 501, 102, b"y")
    from_vf(p, VM2, back)
    assert from_vf(p, VM1, fwd).tier is Tier.ESWITCH
    assert from_vf(p, VM2, back).tier is Tier.ESWITCH
    a, b = record(p, 1, 80), record(p, 2, 80)

    punts = p.cache.stats.punts
    d = from_vf(p, VM1, tcp(VM1, VM2, 40000, 80, TCP_SYN, seq=100))  # a retransmitted SYN
    assert d.verdict is Verdict.FORWARD and d.tier is Tier.SLOW
    assert p.cache.stats.punts > punts
    assert a.state is TcpState.ESTABLISHED
    assert from_vf(p, VM1, fwd).tier is Tier.ESWITCH  # still offloaded

    punts = p.cache.stats.punts
    d = from_vf(p, VM1, tcp(VM1, VM2, 40000, 80, TCP_FIN | TCP_ACK, 102, 502))
    assert d.verdict is Verdict.FORWARD and d.tier is Tier.SLOW
    assert emits(d)[0][:2] == (PortKind.VF, VM2.ppid)
    assert p.cache.stats.punts > punts
    assert a.state is TcpState.FIN_WAIT
    assert not in_fast_tiers(p, a) and not in_fast_tiers(p, b)
    assert len(p.eswitch) == 0 and len(p.cache) == 0
    closing = [
        (VM2, tcp(VM2, VM1, 80, 40000, TCP_ACK, 502, 103)),
        (VM2, tcp(VM2, VM1, 80, 40000, TCP_FIN | TCP_ACK, 502, 103)),
        (VM1, tcp(VM1, VM2, 40000, 80, TCP_ACK, 103, 503)),
    ]
    for src, frame in closing:
        d = from_vf(p, src, frame)
        assert d.verdict is Verdict.FORWARD and d.tier is Tier.SLOW
    assert a.state is TcpState.TIME_WAIT and b.state is TcpState.TIME_WAIT
    assert from_vf(p, VM1, fwd).tier is Tier.SLOW  # nothing fast survives the close
    assert len(p.eswitch) == 0 and len(p.cache) == 0


def test_rst_closes_and_removes_the_fast_entries() -> None:
    """A RST is the slow path's: the record closes and leaves every fast tier."""
    p = make_pipeline("nic1")
    assert all_forward(connect_out(p, VM2, 40000, 443))
    data_in(p, VM2, 40000, 443)
    assert data_out(p, VM2, 40000, 443).tier is Tier.ESWITCH
    rec = record(p, 2, 443)
    punts = p.cache.stats.punts
    d = from_uplink(p, tcp_in(VM2, 443, 40000, TCP_RST | TCP_ACK, 501, 101))
    assert d.verdict is Verdict.FORWARD and d.tier is Tier.SLOW
    assert p.cache.stats.punts > punts
    assert rec.state is TcpState.CLOSE and not in_fast_tiers(p, rec)
    assert len(p.eswitch) == 0 and len(p.cache) == 0


# -- 9. Expiry ----------------------------------------------------------------------------------

SHORT = Timeouts(tcp_syn_sent=3, tcp_syn_recv=3, tcp_established=5, udp_first=3, udp_multiple=5)


def test_idle_established_flow_expires_from_every_tier() -> None:
    """An idle flow's record times out at `tick` and takes its fast entries with it."""
    p = make_pipeline("nic1", timeouts=SHORT)
    assert all_forward(connect_out(p, VM2, 40000, 80, 0.0))
    data_in(p, VM2, 40000, 80, 0.0)
    assert data_out(p, VM2, 40000, 80, 0.0).tier is Tier.ESWITCH
    rec = record(p, 2, 80)
    p.tick(4.0)
    assert len(p.ct) == 1 and in_fast_tiers(p, rec)
    p.tick(6.0)
    assert len(p.ct) == 0 and p.ct.stats.expired == 1
    assert not in_fast_tiers(p, rec)
    assert len(p.eswitch) == 0 and len(p.cache) == 0
    d = data_out(p, VM2, 40000, 80, 6.5)  # mid-stream data of a forgotten connection
    assert (d.verdict, d.reason) == (Verdict.DROP, "ct.invalid.no_conn")


def test_flow_kept_busy_on_the_eswitch_does_not_expire() -> None:
    """eSwitch hit counters are read back into `last_seen`, so a busy flow stays alive."""
    p = make_pipeline("nic1", timeouts=SHORT)
    assert all_forward(connect_out(p, VM2, 40000, 80, 0.0))
    assert all_forward(connect_out(p, VM2, 40001, 81, 0.0))
    busy, idle = record(p, 2, 80), record(p, 2, 81)
    data_in(p, VM2, 40000, 80, 0.0)
    created = p.ct.stats.created
    for t in range(1, 13):
        d = data_out(p, VM2, 40000, 80, float(t))
        assert d.verdict is Verdict.FORWARD and d.tier is Tier.ESWITCH
        p.tick(t + 0.5)
        assert busy.last_seen == float(t)
    assert busy in records(p) and idle not in records(p)
    assert p.ct.stats.expired == 1 and p.ct.stats.created == created
    assert in_fast_tiers(p, busy) and busy.packets > 12


# -- 10. Rule changes revalidate ----------------------------------------------------------------


def _offloaded_8080(p: Pipeline) -> CtRecord:
    """VM2 -> peer:8080 (allowed by `out`), established and on the eSwitch both ways."""
    assert all_forward(connect_out(p, VM2, 40000, 8080))
    data_in(p, VM2, 40000, 8080)
    assert data_out(p, VM2, 40000, 8080).tier is Tier.ESWITCH
    assert data_in(p, VM2, 40000, 8080).tier is Tier.ESWITCH
    rec = record(p, 2, 8080)
    assert rec.rule == "out"
    return rec


def test_rule_change_that_denies_a_flow_removes_it_from_every_tier() -> None:
    """After `set_rules` no tier forwards the now-denied flow; the next packet is dropped."""
    p = make_pipeline("nic1")
    rec = _offloaded_8080(p)
    p.set_rules(rules_plus({"name": "no-8080", "priority": 1, "action": "drop",
                            "proto": "tcp", "dport": 8080}), 1.0)  # fmt: skip
    assert p.stats.revalidated == 1 and p.stats.revalidate_removed == 1
    assert len(p.ct) == 0 and not in_fast_tiers(p, rec)
    assert len(p.eswitch) == 0 and len(p.cache) == 0
    d = data_out(p, VM2, 40000, 8080, 1.0)
    assert (d.verdict, d.reason, d.rule, d.emits) == (Verdict.DROP, "fw.drop", "no-8080", [])
    d = data_in(p, VM2, 40000, 8080, 1.0)
    assert d.verdict is Verdict.DROP and d.emits == []
    assert p.stats.drops["fw.drop"] == 2


def test_rule_change_to_inspect_evicts_from_fast_tiers_but_keeps_the_flow() -> None:
    """A flow that becomes `inspect` stays allowed, in the slow path only."""
    p = make_pipeline("nic1")
    rec = _offloaded_8080(p)
    p.set_rules(rules_plus({"name": "watch-8080", "priority": 1, "action": "allow",
                            "proto": "tcp", "dport": 8080, "inspect": True}), 1.0)  # fmt: skip
    assert p.stats.revalidate_removed == 0
    assert rec in records(p) and rec.rule == "watch-8080"
    assert not rec.sw_ok and not rec.hw_ok and rec.state is TcpState.ESTABLISHED
    assert not in_fast_tiers(p, rec) and len(p.eswitch) == 0 and len(p.cache) == 0
    for _ in range(3):
        for d in (data_out(p, VM2, 40000, 8080, 1.0), data_in(p, VM2, 40000, 8080, 1.0)):
            assert d.verdict is Verdict.FORWARD and d.tier is Tier.SLOW
    assert len(p.eswitch) == 0 and len(p.cache) == 0


def test_rule_change_that_keeps_a_flow_allowed_leaves_it_offloaded() -> None:
    """Revalidation does not disturb a flow whose verdict and flags are unchanged."""
    p = make_pipeline("nic1")
    rec = _offloaded_8080(p)
    p.set_rules(rules_plus({"name": "no-smb", "priority": 1, "action": "drop",
                            "proto": "tcp", "dport": 445}), 1.0)  # fmt: skip
    assert p.stats.revalidate_removed == 0 and rec in fast_records(p, Tier.ESWITCH)
    assert data_out(p, VM2, 40000, 8080, 1.0).tier is Tier.ESWITCH


# -- 11. The VPID map ---------------------------------------------------------------------------


def _map_with(**moves: tuple[str, int]) -> list[tuple[int, str, int]]:
    """The test map with some VPIDs (`vm1=("nic2", 103)`) bound elsewhere."""
    moved = {int(k.removeprefix("vm")): v for k, v in moves.items()}
    return [(v, *moved.get(v, (nic, ppid))) for v, nic, ppid in map_entries()]


def test_vm_moved_away_is_fenced_on_its_old_nic() -> None:
    """After VM1 moves to nic2, nic1 refuses its old VF and its handovers, even fast ones."""
    p = make_pipeline("nic1")
    assert all_forward(connect_out(p, VM1, 40000, 80))
    assert data_out(p, VM1, 40000, 80).tier in (Tier.ESWITCH, Tier.CACHE)
    change = p.apply_map(2, _map_with(vm1=("nic2", 103)))
    assert change is not None and change.lost("nic1") == [1]
    d = data_out(p, VM1, 40000, 80)  # would hit the old fast entry
    assert d.verdict is Verdict.DROP and d.reason in ("port.unknown_vf", "fence.not_owner")
    assert d.emits == []
    d = p.process(PortKind.PEER_DELIVER, 1, tcp(VM2, VM1, 5, 80, TCP_SYN), 0.0)
    assert (d.verdict, d.reason) == (Verdict.DROP, "fence.not_owner")
    # Frames for VM1 from the network now go to its new home.
    d = data_in(p, VM1, 40000, 80)
    assert [(e.out, e.target, e.nic) for e in d.emits] == [(PortKind.PEER_DELIVER, 1, "nic2")]
    assert sum(p.stats.drops[r] for r in ("port.unknown_vf", "fence.not_owner")) == 2

    assert p.apply_map(1, map_entries()) is None  # a stale epoch changes nothing
    assert p.map.epoch == 2 and p.map.stats.stale_ignored == 1
    home = p.map.home(1)
    assert home is not None and home.nic == "nic2"
    assert from_vf(p, VM1, tcp_out(VM1, 40002, 80, TCP_SYN)).verdict is Verdict.DROP


def test_remap_to_another_vf_on_the_same_nic_keeps_the_flow() -> None:
    """VM2 moves to PPID 103 on nic1: its connection continues, delivered to the new VF."""
    p = make_pipeline("nic1")
    handshake_vms(p, VM1, VM2, 40000, 80)
    fwd = tcp(VM1, VM2, 40000, 80, DATA, 101, 501, b"x")
    back = tcp(VM2, VM1, 80, 40000, DATA, 501, 102, b"y")
    from_vf(p, VM2, back)
    assert from_vf(p, VM1, fwd).tier is Tier.ESWITCH
    created = p.ct.stats.created
    assert p.apply_map(2, _map_with(vm2=("nic1", 103))) is not None
    assert p.stats.remap_flows_kept > 0
    old_vf = p.process(PortKind.VF, 102, back, 1.0)
    assert (old_vf.verdict, old_vf.reason) == (Verdict.DROP, "port.unknown_vf")
    tiers = []
    for _ in range(3):
        d = from_vf(p, VM1, fwd, 1.0)
        assert d.emits == [Emit(PortKind.VF, 103, fwd)]
        tiers.append(d.tier)
        d = p.process(PortKind.VF, 103, back, 1.0)
        assert d.emits == [Emit(PortKind.VF, VM1.ppid, back)]
        tiers.append(d.tier)
    assert tiers[-2:] == [Tier.ESWITCH, Tier.ESWITCH]
    assert p.ct.stats.created == created and len(p.ct) == 2
    assert all(r.state is TcpState.ESTABLISHED for r in records(p))


def test_moving_an_unrelated_vm_keeps_other_flows_on_the_eswitch() -> None:
    """VM4 moving on nic2 does not concern VM1<->VM2 on nic1: still the eSwitch's."""
    p = make_pipeline("nic1")
    handshake_vms(p, VM1, VM2, 40000, 80)
    fwd = tcp(VM1, VM2, 40000, 80, DATA, 101, 501, b"x")
    assert from_vf(p, VM1, fwd).tier is Tier.ESWITCH
    assert p.apply_map(2, _map_with(vm4=("nic2", 104))) is not None
    assert from_vf(p, VM1, fwd, 1.0).tier is Tier.ESWITCH


def test_a_vm_that_moves_away_frees_its_hardware_entries_at_once() -> None:
    """The remap evicts the moved VM's entries, so another flow gets the eSwitch slots."""
    p = make_pipeline("nic1", eswitch_capacity=2)
    assert all_forward(connect_out(p, VM1, 40000, 80))
    data_in(p, VM1, 40000, 80)
    assert len(p.eswitch) == 2
    p.apply_map(2, _map_with(vm1=("nic2", 103)))
    assert len(p.eswitch) == 0
    assert all_forward(connect_out(p, VM2, 40000, 80, 1.0))
    data_in(p, VM2, 40000, 80, 1.0)
    assert data_out(p, VM2, 40000, 80, 1.0).tier is Tier.ESWITCH
    assert fast_records(p, Tier.ESWITCH) == [record(p, 2, 80)]


# -- 12. Conntrack limit ------------------------------------------------------------------------


def test_conntrack_limit_drops_new_flows_but_not_existing_ones() -> None:
    """With room for two records a third connection is refused; the two keep flowing."""
    p = make_pipeline("nic1", ct_limit=2)
    assert all_forward(connect_out(p, VM1, 40000, 80))
    assert all_forward(connect_out(p, VM2, 40001, 80))
    d = from_vf(p, VM1, tcp_out(VM1, 40002, 80, TCP_SYN))
    assert (d.verdict, d.reason, d.emits) == (Verdict.DROP, "ct.full", [])
    assert p.stats.drops == {"ct.full": 1} and p.ct.stats.full_drops == 1
    assert len(p.ct) == 2
    for _ in range(3):
        for a, sport in ((VM1, 40000), (VM2, 40001)):
            assert data_out(p, a, sport, 80).verdict is Verdict.FORWARD
            assert data_in(p, a, sport, 80).verdict is Verdict.FORWARD
    assert p.stats.drops == {"ct.full": 1}


# -- 13. Mid-stream ACK -------------------------------------------------------------------------


def test_mid_stream_ack_without_a_record_is_invalid() -> None:
    """No loose pickup: an ACK of no tracked connection is dropped `ct.invalid.no_conn`."""
    p = make_pipeline("nic1")
    d = data_out(p, VM1, 40000, 80)
    assert (d.verdict, d.reason, d.emits) == (Verdict.DROP, "ct.invalid.no_conn", [])
    d = from_uplink(p, tcp_in(VM1, 5555, 80, TCP_ACK, 1, 1))  # web-in allows, but no SYN
    assert (d.verdict, d.reason) == (Verdict.DROP, "ct.invalid.no_conn")
    assert p.stats.drops == {"ct.invalid.no_conn": 2}
    assert len(p.ct) == 0


# -- 14. Malformed frames -----------------------------------------------------------------------


def _ipv4_frame(proto: int, l4: bytes) -> bytes:
    return build.ethernet(VM2.mac, VM1.mac, ETH_IPV4, build.ipv4(VM1.ip, VM2.ip, proto, l4))


_TCP4 = tcp(VM1, VM2, 40000, 80, TCP_SYN, seq=1)
_TAGGED = tcp_in(VM1, 5555, 80, TCP_SYN)
_TCP6 = build.tcp_frame(VM1.mac, VM2.mac, VM1.ip6, VM2.ip6, 40000, 80, TCP_SYN)
_ARP = arp_request(VM1, VM2.ip)
TRUNCATED = [
    (b"", "eth.short"),
    (_TCP4[:6], "eth.short"),
    (_TCP4[:13], "eth.short"),
    (_TAGGED[:16], "vlan.short"),
    (_TCP4[:14 + 19], "ipv4.short"),
    (_TAGGED[:18 + 10], "ipv4.short"),
    (_TCP4[:14 + 20 + 10], "ipv4.length"),
    (_TCP4[:-1], "ipv4.length"),
    (_TCP6[:14 + 39], "ipv6.short"),
    (_TCP6[:-1], "ipv6.length"),
    (_ARP[:14 + 27], "arp.short"),
    (_ipv4_frame(PROTO_TCP, b"\0" * 4), "tcp.short"),
    (_ipv4_frame(PROTO_TCP, _TCP4[34:46] + b"\xf0" + _TCP4[47:54]), "tcp.offset"),
    (_ipv4_frame(PROTO_UDP, b"\0" * 4), "udp.short"),
    (_ipv4_frame(PROTO_UDP, b"\0\x35\0\x35\0\x20\0\0"), "udp.length"),
    (_ipv4_frame(PROTO_ICMP, b"\0" * 4), "icmp.short"),
]  # fmt: skip
# A TCP header cut short inside a frame long enough for the fast-tier key (>= 42 bytes).
SHORT_TCP = [
    _ipv4_frame(PROTO_TCP, b"\0" * 10),
    build.ethernet(VM2.mac, VM1.mac, ETH_IPV6, build.ipv6(VM1.ip6, VM2.ip6, PROTO_TCP, b"\0" * 10)),
]
PARSING_INGRESS = [(PortKind.VF, 101), (PortKind.UPLINK, 1), (PortKind.PEER_DELIVER, 1)]


@pytest.mark.parametrize(("ingress", "port"), PARSING_INGRESS, ids=lambda x: str(x))
@pytest.mark.parametrize(("frame", "reason"), TRUNCATED, ids=[r for _, r in TRUNCATED])
def test_truncated_frames_are_dropped_and_counted(
    ingress: PortKind, port: int, frame: bytes, reason: str
) -> None:
    """A frame cut short anywhere is a counted `malformed.*` drop on every parsing ingress."""
    p = make_pipeline("nic1")
    d = p.process(ingress, port, frame, 0.0)
    assert (d.verdict, d.reason, d.emits) == (Verdict.DROP, "malformed." + reason, [])
    assert p.stats.drops == {"malformed." + reason: 1}
    assert p.stats.frames_in == 1 and len(p.ct) == 0


@pytest.mark.parametrize("frame", SHORT_TCP, ids=["ipv4", "ipv6"])
@pytest.mark.parametrize("ingress", list(PortKind), ids=lambda x: x.name)
def test_short_tcp_header_is_dropped_not_raised(ingress: PortKind, frame: bytes) -> None:
    """A 10-byte TCP header never escapes `process` as an exception, on any ingress."""
    p = make_pipeline("nic1")
    d = p.process(ingress, 101 if ingress is PortKind.VF else 1, frame, 0.0)
    if ingress is not PortKind.PEER_TRANSMIT:
        assert (d.verdict, d.reason) == (Verdict.DROP, "malformed.tcp.short")
    assert accounted(p)


@pytest.mark.parametrize(("frame", "reason"), TRUNCATED[:4], ids=[r for _, r in TRUNCATED[:4]])
def test_truncated_frames_handed_over_for_transmit_are_dropped(frame: bytes, reason: str) -> None:
    """Transmit-only handovers are untrusted bytes too: less than an Ethernet header is not sent."""
    p = make_pipeline("nic2")
    d = p.process(PortKind.PEER_TRANSMIT, 1, frame, 0.0)
    assert (d.verdict, d.reason, d.emits) == (Verdict.DROP, "malformed." + reason, [])


def _established_pipeline() -> tuple[Pipeline, list[tuple[PortKind, int, bytes]]]:
    """nic1 with a few established flows, and valid frames of them to mutate."""
    p = make_pipeline("nic1", eswitch_capacity=4)
    connect_out(p, VM1, 40000, 80)
    handshake_vms(p, VM1, VM2, 40001, 80)
    from_vf(p, VM1, udp(VM1, VM2, 3333, 53))
    from_vf(p, VM2, udp(VM2, VM1, 53, 3333))
    valid = [
        (PortKind.VF, VM1.ppid, tcp_out(VM1, 40000, 80, DATA, 101, 501, b"abc")),
        (PortKind.UPLINK, 1, tcp_in(VM1, 80, 40000, DATA, 501, 101, b"def")),
        (PortKind.VF, VM1.ppid, tcp(VM1, VM2, 40001, 80, DATA, 101, 501, b"g")),
        (PortKind.VF, VM2.ppid, tcp(VM2, VM1, 80, 40001, DATA, 501, 101, b"h")),
        (PortKind.VF, VM1.ppid, udp(VM1, VM2, 3333, 53)),
        (PortKind.PEER_DELIVER, 1, tcp(VM3, VM1, 80, 40003, TCP_SYN | TCP_ACK)),
        (PortKind.PEER_TRANSMIT, 1, tcp_in(VM3, 80, 40000, DATA)),
        (PortKind.VF, VM2.ppid, arp_request(VM2, IPv4Address("10.1.0.99"))),
        (PortKind.UPLINK, 2, _TCP6),
    ]
    for ingress, port, frame in valid:  # the first of each path installs it
        p.process(ingress, port, frame, 0.0)
    return p, valid


ingress_kinds = st.sampled_from(list(PortKind))
ports = st.sampled_from([0, 1, 2, 3, 4, 101, 102, 103])
mutations = st.lists(st.tuples(st.integers(0, 120), st.integers(0, 255)), max_size=6)


# Once crashes, replayed on every run: non-IP unicast from the network to a local VM (family 0
# reached the classifier), and a short TCP header (fast_key read past it).
NON_IP_MUTATION = ("mutated", 1, True, [(16, 0x88), (17, 0xB5)], None, PortKind.UPLINK)
SHORT_TCP_RANDOM = ("random", PortKind.VF, 101, SHORT_TCP[0])


@example(steps=[NON_IP_MUTATION])
@example(steps=[SHORT_TCP_RANDOM])
@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("random"), ingress_kinds, ports, st.binary(max_size=120)),
            st.tuples(
                st.just("mutated"),
                st.integers(0, 8),
                st.booleans(),
                mutations,
                st.one_of(st.none(), st.integers(0, 120)),
                ingress_kinds,
            ),
        ),
        min_size=1,
        max_size=25,
    )
)
def test_garbage_never_raises_and_every_frame_is_accounted(steps: list[tuple]) -> None:
    """Random bytes and mutated valid frames, through every ingress: no exception escapes."""
    p, valid = _established_pipeline()
    now = 0.0
    for step in steps:
        if step[0] == "random":
            _, ingress, port, frame = step
        else:
            _, which, keep_ingress, flips, cut, other_ingress = step
            ingress, port, frame = valid[which]
            if not keep_ingress:
                ingress = other_ingress
            b = bytearray(frame)
            for pos, value in flips:
                if pos < len(b):
                    b[pos] = value
            frame = bytes(b if cut is None else b[:cut])
        now += 0.25
        d = p.process(ingress, port, frame, now)
        assert isinstance(d, Decision)
        assert (d.verdict is Verdict.DROP) == bool(d.reason)
        if step[0] == "random" and ingress is not PortKind.PEER_TRANSMIT and len(frame) < 14:
            assert d.reason == "malformed.eth.short"
        p.tick(now)
    assert accounted(p)


# -- 15. ARP ------------------------------------------------------------------------------------


@pytest.mark.parametrize("target", [VM2, VM3])
def test_arp_request_for_a_host_vm_is_answered_by_the_vswitch(target: VM) -> None:
    """ARP suppression: the asker gets op 2 with the VM's MAC on its own VF; nothing floods."""
    p = make_pipeline("nic1")
    d = from_vf(p, VM1, arp_request(VM1, target.ip))
    assert d.verdict is Verdict.FORWARD
    [e] = d.emits
    assert (e.out, e.target, e.nic) == (PortKind.VF, VM1.ppid, "")
    reply = parsed(e)
    assert reply.ethertype == ETH_ARP and reply.arp_op == 2
    assert (reply.arp_sha, reply.arp_spa) == (target.mac, int(target.ip))
    assert (reply.arp_tha, reply.arp_tpa) == (VM1.mac, int(VM1.ip))
    assert (reply.src_mac, reply.dst_mac, reply.vlan) == (target.mac, VM1.mac, None)
    assert p.vswitch.stats.arp_answered == 1


def test_arp_request_for_an_unknown_ip_is_flooded_in_the_segment() -> None:
    """Flooded: VM2 (VF), VM3 (its home sibling), one uplink tagged; never VM4 (db)."""
    nic1, nic2 = make_pipeline("nic1"), make_pipeline("nic2")
    req = arp_request(VM1, IPv4Address("10.1.0.99"))
    d = from_vf(nic1, VM1, req)
    assert d.verdict is Verdict.FORWARD
    out = emits(d)
    assert (PortKind.VF, VM2.ppid, "", req) in out
    assert (PortKind.PEER_DELIVER, 3, "nic2", req) in out
    to_net = [e for e in d.emits if e.out in (PortKind.UPLINK, PortKind.PEER_TRANSMIT)]
    assert [(e.out, e.target, e.nic, e.frame) for e in to_net] == [
        uplink_emit(nic1, 1, tagged(req, 10))
    ]
    assert len(out) == 3  # nothing for VM4: it is in the db segment
    assert nic1.vswitch.stats.arp_flooded == 1
    d2 = nic2.process(PortKind.PEER_DELIVER, 3, req, 0.0)
    assert d2.emits == [Emit(PortKind.VF, VM3.ppid, req)]
    assert len(nic2.ct) == 0 and len(nic1.ct) == 0


def test_arp_reply_from_the_network_reaches_the_local_vm() -> None:
    """The peer's unicast ARP reply to VM1 is delivered untagged on VM1's VF (no firewall)."""
    p = make_pipeline("nic1")
    reply = build.arp_frame(2, PEER_MAC, PEER_IP, VM1.mac, VM1.ip, vlan=10)
    d = from_uplink(p, reply)
    plain = build.arp_frame(2, PEER_MAC, PEER_IP, VM1.mac, VM1.ip)
    assert d.verdict is Verdict.FORWARD
    assert d.emits == [Emit(PortKind.VF, VM1.ppid, plain)]
    assert len(p.ct) == 0


def test_arp_reply_from_the_network_for_a_sibling_vm_is_handed_over() -> None:
    """Non-IP unicast for a VM on the sibling is handed over; the sibling delivers it as is."""
    nic1, nic2 = make_pipeline("nic1"), make_pipeline("nic2")
    reply = build.arp_frame(2, PEER_MAC, PEER_IP, VM3.mac, VM3.ip, vlan=10)
    plain = build.arp_frame(2, PEER_MAC, PEER_IP, VM3.mac, VM3.ip)
    d = from_uplink(nic1, reply)
    assert d.emits == [Emit(PortKind.PEER_DELIVER, 3, plain, "nic2")]
    d2 = nic2.process(PortKind.PEER_DELIVER, 3, plain, 0.0)
    assert d2.emits == [Emit(PortKind.VF, VM3.ppid, plain)]
    assert len(nic1.ct) == len(nic2.ct) == 0


def test_broadcast_from_the_network_is_taken_once_and_flooded_untagged() -> None:
    """Only the designated uplink takes a broadcast; VMs of the segment get it untagged."""
    p = make_pipeline("nic1")
    req = build.arp_frame(1, PEER_MAC, PEER_IP, b"\0" * 6, VM1.ip, vlan=10)
    d = from_uplink(p, req, ppid=2)  # nic1/p1 is not the designated uplink
    assert (d.verdict, d.reason) == (Verdict.DROP, "team.not_designated")
    d = from_uplink(p, req, ppid=1)
    plain = build.arp_frame(1, PEER_MAC, PEER_IP, b"\0" * 6, VM1.ip)
    assert sorted(emits(d)) == sorted(
        [(PortKind.VF, VM1.ppid, "", plain), (PortKind.VF, VM2.ppid, "", plain),
         (PortKind.PEER_DELIVER, 3, "nic2", plain)]
    )  # fmt: skip


# -- 16. Teaming --------------------------------------------------------------------------------


def test_uplink_down_moves_vpids_and_announces_them_with_rarp() -> None:
    """The VPIDs of a failed uplink rehash to survivors; each moved MAC is announced there."""
    p = make_pipeline("nic1")
    before = p.team.assignments([1, 2])
    victim = before[1]  # whichever uplink carries VM1
    announced = p.set_uplink_live(victim, False)
    after = p.team.assignments([1, 2])
    moved = [v for v in (1, 2) if before[v] == victim]
    assert 1 in moved and all(after[v] != victim for v in (1, 2))
    assert all(after[v] == before[v] for v in (1, 2) if v not in moved)
    assert len(announced) == len(moved) == p.stats.announcements
    names = {(u.nic, u.ppid): u.name for u in p.team.uplinks}
    by_mac = {parsed(e).src_mac: e for e in announced}
    assert set(by_mac) == {vm(v).mac for v in moved}
    for v in moved:
        e = by_mac[vm(v).mac]
        rarp = parsed(e)
        assert rarp.ethertype == ETH_RARP and rarp.vlan == 10
        assert rarp.dst_mac == BROADCAST_MAC
        assert (e.out, e.target, e.nic, e.frame) == uplink_emit(p, v, e.frame)
        assert names[(e.nic or p.nic, e.target)] == after[v] != victim
    assert p.set_uplink_live(victim, False) == []  # no change, no announcement


def test_offloaded_flow_follows_the_team_after_an_uplink_failure() -> None:
    """A fast-path flow to the network must not keep sending on the uplink that went down."""
    p = make_pipeline("nic1")
    assert all_forward(connect_out(p, VM1, 40000, 80))
    d = data_out(p, VM1, 40000, 80)
    assert d.tier is Tier.ESWITCH
    old = d.emits[0]
    victim = p.team.assignments([1])[1]
    p.set_uplink_live(victim, False)
    for _ in range(2):
        d = data_out(p, VM1, 40000, 80, 1.0)
        assert d.verdict is Verdict.FORWARD
        [e] = d.emits
        assert (e.out, e.target, e.nic) != (old.out, old.target, old.nic)
        assert (e.out, e.target, e.nic, e.frame) == uplink_emit(p, 1, e.frame)


def test_a_team_change_reads_the_evicted_hits_back_into_conntrack() -> None:
    """The hits of a path a team change evicts still count: the flow's record lives on as if
    the slow path had seen them, and the reply after a quiet spell is still its own."""
    p = make_pipeline("nic1", timeouts=Timeouts(udp_first=5, udp_multiple=5))
    assert from_vf(p, VM1, udp_out(VM1, 5000, 53), 0.0).verdict is Verdict.FORWARD
    assert from_uplink(p, udp_in(VM1, 53, 5000), 0.0).verdict is Verdict.FORWARD
    assert from_vf(p, VM1, udp_out(VM1, 5000, 53), 0.0).tier is Tier.SLOW  # installs the path
    assert from_vf(p, VM1, udp_out(VM1, 5000, 53), 3.0).tier is Tier.ESWITCH
    p.set_uplink_live(p.team.assignments([1])[1], False)
    rec = record(p, 1, 53)
    assert rec.last_seen == 3.0 and rec.packets == 4
    p.tick(6.0)  # 3.0 + 5 is still ahead
    assert rec in records(p)
    assert from_uplink(p, udp_in(VM1, 53, 5000), 6.0).verdict is Verdict.FORWARD


def test_a_path_in_from_an_uplink_that_left_the_team_is_evicted() -> None:
    """The slow path no longer accepts frames from an uplink out of the team; nor may a fast
    tier keep forwarding them."""
    p = make_pipeline("nic1")
    assert all_forward(connect_out(p, VM1, 40000, 80))
    assert data_in(p, VM1, 40000, 80, ppid=1).verdict is Verdict.FORWARD  # installs it
    assert data_in(p, VM1, 40000, 80, ppid=1).tier is Tier.ESWITCH
    p.set_uplink_live("nic1/p0", False)  # PPID 1
    d = data_in(p, VM1, 40000, 80, ppid=1)
    assert (d.verdict, d.reason, d.tier) == (Verdict.DROP, "team.not_accepted", None)
    assert data_in(p, VM1, 40000, 80, ppid=2).verdict is Verdict.FORWARD


def test_no_live_uplink_drops_frames_to_the_network() -> None:
    """With every uplink of the team down, frames for the network are `team.no_uplink`."""
    p = make_pipeline("nic1")
    for name in (*NIC1_UPLINKS, *NIC2_UPLINKS):
        p.set_uplink_live(name, False)
    d = from_vf(p, VM1, tcp_out(VM1, 40000, 80, TCP_SYN))
    assert (d.verdict, d.reason, d.emits) == (Verdict.DROP, "team.no_uplink", [])
    assert p.stats.drops == {"team.no_uplink": 1}
    d = from_vf(p, VM1, tcp(VM1, VM2, 40001, 80, TCP_SYN))  # VM to VM needs no uplink
    assert d.verdict is Verdict.FORWARD


# -- counters that must not depend on the tier ---------------------------------------------------


def test_handover_counters_count_fast_path_frames_too() -> None:
    """Every frame handed to or received from a sibling is counted, whichever tier decided."""
    nic1, nic2 = make_pipeline("nic1"), make_pipeline("nic2")
    frames = [
        tcp(VM1, VM3, 40000, 80, TCP_SYN, seq=100),
        tcp(VM1, VM3, 40000, 80, TCP_ACK, 101, 501),
    ]
    synack = tcp(VM3, VM1, 80, 40000, TCP_SYN | TCP_ACK, seq=500, ack=101)
    nic2.process(PortKind.PEER_DELIVER, 3, from_vf(nic1, VM1, frames[0]).emits[0].frame, 0.0)
    nic1.process(PortKind.PEER_DELIVER, 1, from_vf(nic2, VM3, synack).emits[0].frame, 0.0)
    nic2.process(PortKind.PEER_DELIVER, 3, from_vf(nic1, VM1, frames[1]).emits[0].frame, 0.0)
    data = tcp(VM1, VM3, 40000, 80, DATA, 101, 501, b"d")
    for _ in range(5):
        d = from_vf(nic1, VM1, data)
        assert d.tier is Tier.ESWITCH
        nic2.process(PortKind.PEER_DELIVER, 3, d.emits[0].frame, 0.0)
    assert nic1.stats.handover_sent["peer_deliver"] == 7
    assert nic2.stats.handover_received["peer_deliver"] == 7


# -- transmit-only handover batches (the worker's path) -------------------------------------


def test_transmit_batch_puts_good_frames_on_live_uplinks_and_counts_the_rest() -> None:
    """No firewall, no conntrack: good frames go out; short, unknown-port, down-link ones drop."""
    p = make_pipeline("nic2")
    good = tcp(VM1, VM3, 40000, 80, TCP_ACK)
    tagged_stub = good[:12] + b"\x81\x00\x00"
    p.set_uplink_live("nic2/p1", False)
    out = p.transmit_batch([(1, good), (1, good[:13]), (1, tagged_stub), (9, good), (2, good)])
    assert out == [(1, good)]
    assert len(p.ct) == 0
    assert p.stats.handover_received["peer_transmit"] == 5
    assert p.stats.drops == {
        "malformed.eth.short": 1,
        "malformed.vlan.short": 1,
        "port.unknown_uplink": 1,
        "uplink.down": 1,
    }
    assert p.stats.frames_in == 5 and p.stats.forwarded == 1


def test_transmit_batch_agrees_with_process() -> None:
    """The batch path and the per-frame path decide transmit handovers alike."""
    frames = [(1, tcp(VM1, VM3, 40000, 80, TCP_ACK)), (1, b"\x00" * 10), (7, b"\x00" * 60)]
    batch = make_pipeline("nic2").transmit_batch(frames)
    single = make_pipeline("nic2")
    decisions = [single.process(PortKind.PEER_TRANSMIT, port, f, 0.0) for port, f in frames]
    assert batch == [(e.target, e.frame) for d in decisions for e in d.emits]
    assert single.eswitch.stats.misses == single.cache.stats.misses == 0  # no false misses
