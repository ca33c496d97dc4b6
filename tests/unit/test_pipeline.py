"""One NIC's datapath (`Pipeline`): the paths a frame takes, denied flows, offload flags.

Every test drives the sans-I/O pipeline of the two-NIC test host (tests/unit/dpfixtures.py)
with real frames and checks the decision, the frames emitted and the counters. Nothing is timed:
`now` is a number the test chooses. Helpers: tests/unit/pipelinerig.py.
"""

from __future__ import annotations

from nicd.datapath.conntrack import CtRecord, PseudoState, TcpState, Timeouts
from nicd.datapath.pipeline import Emit, Pipeline, PortKind, Verdict
from nicd.datapath.tiers import Tier
from nicd.policy import ruleset_from_config
from tests.unit.dpfixtures import (
    PEER_IP,
    PEER_MAC,
    echo,
    make_pipeline,
    tcp,
    tcp_in,
    tcp_out,
    udp,
    udp_in,
    udp_out,
)
from tests.unit.pipelinerig import (
    DATA,
    VM1,
    VM2,
    VM3,
    VM4,
    accounted,
    all_forward,
    connect_out,
    data_in,
    data_out,
    emits,
    fast_records,
    from_uplink,
    from_vf,
    handshake_vms,
    in_fast_tiers,
    only_uplinks_of,
    parsed,
    record,
    records,
    rules_plus,
    tagged,
)
from wire import build
from wire.protocols import (
    ETH_IPV4,
    PROTO_ICMP,
    TCP_ACK,
    TCP_FIN,
    TCP_RST,
    TCP_SYN,
)

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


def test_a_record_caught_up_past_established_leaves_the_fast_tiers() -> None:
    """A late word of a copy's origin (FIN seen by the old home) moves the record on: its
    fast entries go, as if the slow path had seen the FIN."""
    p = make_pipeline("nic1")
    assert all_forward(connect_out(p, VM2, 40000, 443))
    data_in(p, VM2, 40000, 443)
    assert data_out(p, VM2, 40000, 443).tier is Tier.ESWITCH
    rec = record(p, 2, 443)
    assert not p.catch_up(rec, TcpState.SYN_RECV, 1.0)  # behind ours: nothing moves
    assert in_fast_tiers(p, rec)
    assert p.catch_up(rec, TcpState.FIN_WAIT, 1.0)
    assert rec.state is TcpState.FIN_WAIT and not in_fast_tiers(p, rec)
    assert data_out(p, VM2, 40000, 443).tier is Tier.SLOW


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
