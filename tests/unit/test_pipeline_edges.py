"""One NIC's datapath (`Pipeline`) at its edges: malformed frames, ARP, teaming, handover.

Same host and helpers as tests/unit/test_pipeline.py; `now` is a number the test chooses.
"""

from __future__ import annotations

from ipaddress import IPv4Address

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from nicd.datapath.conntrack import Timeouts
from nicd.datapath.pipeline import Decision, Emit, Pipeline, PortKind, Verdict
from nicd.datapath.tiers import Tier
from tests.unit.dpfixtures import (
    PEER_IP,
    PEER_MAC,
    VM,
    arp_request,
    make_pipeline,
    tcp,
    tcp_in,
    tcp_out,
    udp,
    udp_in,
    udp_out,
    vm,
)
from tests.unit.pipelinerig import (
    DATA,
    NIC1_UPLINKS,
    NIC2_UPLINKS,
    VM1,
    VM2,
    VM3,
    accounted,
    all_forward,
    connect_out,
    data_in,
    data_out,
    emits,
    from_uplink,
    from_vf,
    handshake_vms,
    parsed,
    record,
    records,
    tagged,
    uplink_emit,
)
from wire import build
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
    TCP_SYN,
)

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
