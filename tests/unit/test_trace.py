"""`nicd.datapath.trace`: a dry run that predicts `Pipeline.process` exactly and changes nothing.

Also the operator's side of it: `nicd.tracespec` (port names, packet specs) and `ctl.trace`.

Every test drives the two-NIC test host of tests/unit/dpfixtures.py from nic1. The trace is
checked against what `process` then does with the same frame (on a deep copy, or on the same
pipeline right after the trace), and the pipeline is pickled before and after each trace: a dry
run that wrote anything at all (a counter, a memo, a learned MAC) would change the pickle.
"""

from __future__ import annotations

import copy
import json

import msgpack
import pytest

from ctl.trace import format_trace
from nicd.datapath.pipeline import Pipeline, PortKind
from nicd.datapath.teaming import TeamPolicy
from nicd.datapath.trace import Trace, trace
from nicd.datapath.vswitch import Interface
from nicd.policy import ruleset_from_config
from nicd.tracespec import (
    PacketSpec,
    TraceError,
    build_frame,
    parse_spec,
    resolve_port,
    trace_packet,
)
from tests.unit.dpfixtures import (
    DEFAULT_RULES,
    PEER_IP,
    PEER_MAC,
    SEGMENTS,
    arp_request,
    make_pipeline,
)
from tests.unit.tracerig import (
    VM1,
    VM2,
    VM3,
    VM4,
    connect,
    learn_peer,
    plain,
    run,
    same_as_process,
    snapshot,
    step,
)
from wire import build
from wire.addr import mac_bytes
from wire.protocols import (
    PROTO_ICMP,
    PROTO_TCP,
    PROTO_UDP,
    TCP_ACK,
    TCP_FIN,
    TCP_PSH,
    TCP_SYN,
)

# -- (a) new flow in the slow path, then the fast tiers ----------------------------------------


def test_new_syn_to_the_network_is_slow_path_with_a_record_to_create() -> None:
    p = make_pipeline("nic1")
    t = trace_packet(p, "vm1", f"tcp src={VM1.ip} dst={PEER_IP} sport=40000 dport=80", 0.0)
    assert (t.verdict, t.tier, t.rule, t.reason) == ("forward", "slow", "out", "")
    assert step(t, "fast") == [{"step": "fast", "tier": "", "hit": False, "eligible": False}]
    (rule,) = step(t, "rule")
    assert (rule["rule"], rule["action"], rule["direction"], rule["vpid"]) == (
        "out", "allow", "from_vm", 1,
    )  # fmt: skip
    (rec,) = t.records
    assert rec["status"] == "new"
    assert (rec["state"], rec["zone"], rec["sw_ok"], rec["hw_ok"], rec["hw_capable"]) == (
        "SYN_SENT", 1, True, False, True,
    )  # fmt: skip
    uplink = p.team.select(1, 0)
    assert uplink is not None
    (e,) = t.egress
    want = "uplink" if uplink.nic == "nic1" else "peer_transmit"
    assert (e.out, e.port, e.nic, e.name, e.vlan, e.what) == (
        want, uplink.ppid, uplink.nic, uplink.name, 10, "frame",
    )  # fmt: skip
    assert step(t, "team")[0]["uplink"] == uplink.name
    assert not step(t, "install")[0]["cache"]  # a SYN never gets a fast key
    same_as_process(t, copy.deepcopy(p).process(PortKind.VF, 101, *_frame_now(t, p)))


def _frame_now(t: Trace, p: Pipeline) -> tuple[bytes, float]:
    """The frame a `trace_packet` trace was made of (rebuilt from its packet summary)."""
    pkt = t.packet
    spec = f"{pkt['proto']} src={pkt['src']} dst={pkt['dst']} sport={pkt['sport']}"
    spec += f" dport={pkt['dport']} flags={pkt['flags']} dmac={pkt['dst_mac']}"
    ingress, port = resolve_port(p, t.port_name)
    return build_frame(p, ingress, port, parse_spec(spec)), 0.0


def test_vm_to_vm_on_a_sibling_is_handed_over_with_its_nic_named() -> None:
    p = make_pipeline("nic1")
    t = trace_packet(p, "vm1", f"tcp dst={VM3.ip} dport=443", 0.0)
    (sw,) = step(t, "switch")
    assert (sw["dst_vpid"], sw["name"], sw["nic"]) == (3, "vm3", "nic2")
    assert [e.as_dict() for e in t.egress] == [
        {"out": "peer_deliver", "port": 3, "nic": "nic2", "name": "vm3", "vlan": 0,
         "what": "frame"},
    ]  # fmt: skip
    assert (t.verdict, t.rule) == ("forward", "out")


@pytest.mark.parametrize(("eswitch_capacity", "tier"), [(64, "eswitch"), (0, "cache")])
def test_established_flow_is_traced_to_its_fast_tier_and_existing_record(
    eswitch_capacity: int, tier: str
) -> None:
    p = make_pipeline("nic1", eswitch_capacity=eswitch_capacity)
    learn_peer(p)
    connect(p)
    spec = f"tcp dst={PEER_IP} sport=40000 dport=80 flags=AP"
    t = trace_packet(p, "vm1", spec, 1.0)
    assert (t.verdict, t.tier, t.rule) == ("forward", tier, "out")
    hits = [s for s in step(t, "fast") if s["hit"]]
    assert [s["tier"] for s in hits] == [tier]
    (rec,) = t.records
    assert (rec["status"], rec["state"], rec["zone"], rec["tier"]) == (
        "existing", "ESTABLISHED", 1, tier,
    )  # fmt: skip
    assert rec["hw_ok"] is True
    assert t.packet["dst_mac"] == "02:00:00:00:ee:01"  # the MAC ARP taught, as VM1 would use
    d = run(copy.deepcopy(p), "vm1", spec, 1.0)
    same_as_process(t, d)
    assert t.egress[0].name == p.team.select(1, 0).name  # type: ignore[union-attr]


def test_the_ack_that_establishes_would_install_the_path() -> None:
    p = make_pipeline("nic1")
    learn_peer(p)
    out = f"tcp dst={PEER_IP} sport=40000 dport=80"
    run(p, "vm1", out + " flags=S")
    run(p, "nic1/p0", f"tcp src={PEER_IP} dst={VM1.ip} sport=80 dport=40000 flags=SA")
    t = trace_packet(p, "vm1", out + " flags=A", 2.0)
    (ct,) = step(t, "conntrack")
    assert (ct["record"]["state"], ct["record"]["next_state"]) == ("SYN_RECV", "ESTABLISHED")
    assert step(t, "install") == [{"step": "install", "cache": True, "eswitch": True, "why": ""}]
    run(p, "vm1", out + " flags=A", 2.0)
    assert trace_packet(p, "vm1", out + " flags=A", 3.0).tier == "eswitch"


@pytest.mark.parametrize("eswitch_capacity", [0, 64])
def test_a_fin_that_evicts_counts_the_fast_hits_once_like_process(eswitch_capacity: int) -> None:
    """The FIN evicts a VM-to-VM path (two records; one entry, in both tiers when hw_ok): its
    hits are read back into each record once, in the dry run as for real."""
    p = make_pipeline("nic1", eswitch_capacity=eswitch_capacity)
    out = f"tcp dst={VM2.ip} sport=1002 dport=80"
    run(p, "vm1", out + " flags=S")
    run(p, "vm2", f"tcp src={VM2.ip} dst={VM1.ip} sport=80 dport=1002 flags=SA")
    run(p, "vm1", out + " flags=A")
    tier = "eswitch" if eswitch_capacity else "cache"
    assert [trace_packet(p, "vm1", out + " flags=AP", 1.0).tier for _ in range(3)] == [tier] * 3
    for _ in range(3):
        run(p, "vm1", out + " flags=AP", 1.0)
    before = snapshot(p)
    t = trace_packet(p, "vm1", out + " flags=FA", 2.0)
    assert snapshot(p) == before
    d = run(p, "vm1", out + " flags=FA", 2.0)
    same_as_process(t, d)
    assert [(r.zone, r.packets) for r in d.records] == [(1, 7), (2, 7)]  # 3 slow, 3 fast, FIN
    assert not p.cache.entries and not p.eswitch.entries


# -- (b) drops: the same reason as the real pipeline -------------------------------------------

DROPS = [
    ("vm1", f"tcp dst={VM3.ip} dport=23", "fw.reject"),
    ("vm1", f"tcp dst={PEER_IP} dport=23", "fw.reject"),
    ("nic1/p0", f"tcp src={PEER_IP} dst={VM1.ip} dport=8080", "fw.drop"),
    ("vm1", f"tcp dst={PEER_IP} dport=80 flags=A", "ct.invalid.no_conn"),
    ("vm1", f"icmp dst={VM2.ip} type=echo-reply", "ct.invalid.no_conn"),
    ("vm1", f"tcp dst={VM2.ip} dport=80 vlan=10", "l2.tagged_from_vm"),
    ("nic1/p0", f"tcp src={PEER_IP} dst=10.1.0.99 dport=80", "l2.unknown_dst"),  # db, untagged
    ("nic1/p0", f"tcp src={PEER_IP} dst=10.1.0.99 dport=80 vlan=10", "l2.unknown_dst"),
    ("nic1/p1", f"udp src={PEER_IP} dst={VM4.ip} dport=53 vlan=77", "l2.unknown_vlan"),
    ("vm2", f"icmp dst={VM1.ip6}", "fw.drop"),  # rule "icmp" is ICMPv4: ICMPv6 hits default
]


@pytest.mark.parametrize(("port", "spec", "reason"), DROPS)
def test_a_drop_has_the_reason_process_gives(port: str, spec: str, reason: str) -> None:
    p = make_pipeline("nic1")
    t = trace_packet(p, port, spec, 0.0)
    q = copy.deepcopy(p)
    d = run(q, port, spec)
    assert (t.verdict, t.reason) == ("drop", reason)
    same_as_process(t, d)
    assert q.stats.drops[reason] == 1 and not p.stats.drops
    assert step(t, "drop") == [{"step": "drop", "reason": reason, "rule": d.rule}] or not any(
        s["step"] == "drop" for s in t.steps
    )


def test_reject_names_the_answer_and_where_it_goes() -> None:
    p = make_pipeline("nic1")
    t = trace_packet(p, "nic1/p0", f"tcp src={PEER_IP} dst={VM2.ip} sport=999 dport=23", 0.0)
    assert (t.verdict, t.reason, t.rule) == ("drop", "fw.reject", "no-telnet")
    (e,) = t.egress
    assert (e.what, e.vlan) == ("tcp-rst", 10)  # back to the network, re-tagged
    assert e.out in ("uplink", "peer_transmit")
    assert "answered with" in format_trace(t.as_dict())
    tftp = {"name": "no-tftp", "priority": 5, "action": "reject", "proto": "udp", "dport": 69}
    p = make_pipeline("nic1", ruleset_from_config([tftp, *DEFAULT_RULES]))
    t = trace_packet(p, "vm1", f"udp dst={VM3.ip} dport=69", 0.0)
    assert (t.reason, t.rule) == ("fw.reject", "no-tftp")
    assert [(e.out, e.port, e.what) for e in t.egress] == [("vf", 101, "icmp-unreachable")]
    same_as_process(t, run(copy.deepcopy(p), "vm1", f"udp dst={VM3.ip} dport=69"))


def test_a_team_without_live_uplinks_drops_with_team_no_uplink() -> None:
    p = make_pipeline("nic1")
    for u in p.team.uplinks:
        p.set_uplink_live(u.name, False)
    t = trace_packet(p, "vm1", f"udp dst={PEER_IP} dport=53", 0.0)
    assert (t.verdict, t.reason) == ("drop", "team.no_uplink")
    assert step(t, "team")[0]["uplink"] == ""
    same_as_process(t, run(copy.deepcopy(p), "vm1", f"udp dst={PEER_IP} dport=53"))


def test_a_malformed_frame_and_a_fenced_port() -> None:
    p = make_pipeline("nic1")
    short = VM2.mac + VM1.mac + b"\x08\x00" + b"\x45" * 6
    t = trace(p, PortKind.VF, 101, short, 0.0)
    assert (t.verdict, t.reason, t.tier) == ("drop", "malformed.ipv4.short", "")
    assert t.packet == {"len": 20, "malformed": "ipv4.short"}
    same_as_process(t, copy.deepcopy(p).process(PortKind.VF, 101, short, 0.0))
    assert trace(p, PortKind.VF, 555, b"\x00" * 60, 0.0).reason == "port.unknown_vf"
    with pytest.raises(TraceError, match="unknown ingress 7: expected one of 0 \\(vf\\)"):
        trace(p, 7, 1, short, 0.0)  # type: ignore[arg-type]
    frame = build.tcp_frame(VM3.mac, VM1.mac, VM3.ip, VM1.ip, 1, 80, TCP_SYN)
    t = trace(p, PortKind.PEER_DELIVER, 3, frame, 0.0)  # VPID 3 is nic2's
    assert t.reason == "fence.not_owner"
    same_as_process(t, copy.deepcopy(p).process(PortKind.PEER_DELIVER, 3, frame, 0.0))


def test_a_fragment_is_dropped_by_the_stage_before_conntrack() -> None:
    p = make_pipeline("nic1")
    ingress, port = resolve_port(p, "vm1")
    frame = bytearray(build_frame(p, ingress, port, parse_spec(f"udp dst={VM2.ip} dport=53")))
    frame[20] |= 0x20  # IPv4 more-fragments
    t = trace(p, ingress, port, bytes(frame), 0.0)
    assert (t.reason, t.tier, t.packet["fragment"]) == ("ip.fragment", "slow", True)
    assert step(t, "firewall") == [
        {"step": "firewall", "vpid": 1, "direction": "from_vm", "fragment": True}
    ]
    same_as_process(t, copy.deepcopy(p).process(ingress, port, bytes(frame), 0.0))


# -- (c) a trace changes nothing ---------------------------------------------------------------


def busy_pipeline(policy: TeamPolicy = TeamPolicy.PORT_ID) -> Pipeline:
    """nic1 with learned MACs, an established flow in the fast tiers and a half-open one."""
    p = make_pipeline("nic1", policy=policy)
    learn_peer(p)
    connect(p)
    run(p, "vm2", f"udp dst={VM1.ip} sport=5353 dport=53")
    run(p, "vm1", f"tcp dst={VM3.ip} dport=22")
    return p


TRACED = [
    ("vm1", f"tcp dst={PEER_IP} sport=40000 dport=80 flags=AP"),  # eswitch hit
    ("vm1", f"tcp dst={PEER_IP} sport=40000 dport=80 flags=FA"),  # leaves ESTABLISHED
    ("vm1", f"tcp dst={PEER_IP} sport=40001 dport=80"),  # would create a record
    ("vm1", f"udp src={VM1.ip} dst={VM2.ip} sport=53 dport=5353"),  # the reply: REPLIED
    ("nic1/p0", f"tcp src={PEER_IP} dst={VM1.ip} sport=80 dport=40000 flags=A"),
    ("nic1/p1", f"tcp src=192.0.2.77 dst={VM2.ip} dport=80"),  # would learn a new MAC
    ("vm2", f"tcp dst={VM1.ip} dport=23"),  # reject
    ("vm2", f"icmp dst={PEER_IP}"),
    ("vm1", f"tcp dst={VM2.ip} dport=80 dmac=ff:ff:ff:ff:ff:ff"),  # broadcast: flooded
    ("vm1", "tcp src=2001:db8:1::11 dst=2001:db8:9::1 dport=443"),
]


@pytest.mark.parametrize("policy", [TeamPolicy.PORT_ID, TeamPolicy.LOAD_BASED])
def test_trace_changes_no_state(policy: TeamPolicy) -> None:
    p = busy_pipeline(policy)
    p.tick(0.5)
    before = snapshot(p)
    stats, n_ct, tiers = copy.deepcopy(p.stats), len(p.ct), copy.deepcopy(p.tier_stats())
    entries = {name: dict(t.entries) for name, t in (("es", p.eswitch), ("c", p.cache))}
    hits = {k: (e.packets, e.bytes, e.last_hit) for k, e in p.eswitch.entries.items()}
    learned, vs_stats = p.vswitch.learned(), copy.deepcopy(p.vswitch.stats)
    ct_wire = sorted(map(repr, (r.to_wire() for r in p.ct)))
    traces = [trace_packet(p, port, spec, 5.0) for port, spec in TRACED]
    traces.append(trace(p, PortKind.VF, VM1.ppid, arp_request(VM1, VM2.ip), 5.0))
    peer = build.tcp_frame(VM3.mac, VM1.mac, VM3.ip, VM1.ip, 40000, 22, TCP_SYN | TCP_ACK)
    traces.append(trace(p, PortKind.PEER_DELIVER, 1, peer, 5.0))
    traces.append(trace(p, PortKind.PEER_TRANSMIT, 2, b"\x00" * 60, 5.0))
    assert snapshot(p) == before
    assert p.stats == stats and len(p.ct) == n_ct and p.tier_stats() == tiers
    assert {name: dict(t.entries) for name, t in (("es", p.eswitch), ("c", p.cache))} == entries
    assert {k: (e.packets, e.bytes, e.last_hit) for k, e in p.eswitch.entries.items()} == hits
    assert p.vswitch.learned() == learned and p.vswitch.stats == vs_stats
    assert sorted(map(repr, (r.to_wire() for r in p.ct))) == ct_wire
    # ...and yet each one foresaw what processing does.
    assert step(traces[5], "learn")  # it says the pipeline would learn, and did not
    kinds = {t.tier for t in traces} | {e.what for t in traces for e in t.egress}
    assert {"eswitch", "slow", "frame", "tcp-rst", "arp-reply"} <= kinds
    for (port, spec), t in zip(TRACED, traces, strict=False):
        same_as_process(t, run(copy.deepcopy(p), port, spec, 5.0))
    arp = copy.deepcopy(p).process(PortKind.VF, VM1.ppid, arp_request(VM1, VM2.ip), 5.0)
    same_as_process(traces[len(TRACED)], arp)


def test_trace_of_a_fin_says_the_fast_entries_would_go() -> None:
    p = busy_pipeline()
    t = trace_packet(p, "vm1", f"tcp dst={PEER_IP} sport=40000 dport=80 flags=FA", 1.0)
    (ct,) = step(t, "conntrack")
    assert ct["evict"] and ct["record"]["next_state"] == "FIN_WAIT"
    assert ct["punt"]  # the record is in the eSwitch, but a FIN comes to the slow path
    assert len(p.eswitch.entries) == 1


# -- (d) specs and port names ------------------------------------------------------------------


def test_parse_spec_reads_every_field() -> None:
    s = parse_spec(
        "tcp src=10.0.10.11 dst=10.0.20.13 sport=40000 dport=80 flags=SA vlan=10 "
        "smac=02:00:00:00:00:01 dmac=02:00:00:00:00:02"
    )
    assert s == PacketSpec(
        PROTO_TCP, parse_spec("udp dst=10.0.20.13 dport=1").dst, s.src, 40000, 80,
        TCP_SYN | TCP_ACK, vlan=10, smac=mac_bytes("02:00:00:00:00:01"),
        dmac=mac_bytes("02:00:00:00:00:02"),
    )  # fmt: skip
    assert str(s.src) == "10.0.10.11"
    assert parse_spec("udp dst=::1 dport=53").sport == 40000
    assert parse_spec("tcp dst=1.2.3.4 dport=1 flags=none").flags == 0
    assert parse_spec("tcp dst=1.2.3.4 dport=1 flags=fpu").flags == TCP_FIN | TCP_PSH | 0x20
    assert parse_spec("tcp dst=1.2.3.4 dport=1 vlan=none").vlan == 0
    icmp = parse_spec("icmp dst=2001:db8::1 type=echo-reply id=7")
    assert (icmp.proto, icmp.icmp_type, icmp.ident) == (PROTO_ICMP, 129, 7)
    assert parse_spec("ICMP dst=10.0.0.1 type=3 code=13").icmp_type == 3
    assert parse_spec("udp dst=10.0.0.1 dport=53").proto == PROTO_UDP


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", ["empty", "tcp src="]),
        ("http dst=1.2.3.4", ["'http'", "tcp, udp or icmp"]),
        ("tcp dst=1.2.3.4", ["dport=", "destination port"]),
        ("tcp dport=80", ["dst=", "required"]),
        ("tcp dst=1.2.3.4 dport=http", ["'dport=http'", "port number 0..65535"]),
        ("tcp dst=1.2.3.4 dport=70000", ["'dport=70000'", "0..65535"]),
        ("tcp dst=1.2.3.4 dport=80 flags=SX", ["'flags=SX'", "'X'", "SAFRPU"]),
        ("udp dst=1.2.3.4 dport=53 flags=S", ["'flags=S'", "unknown field 'flags'", "sport"]),
        ("icmp dst=1.2.3.4 dport=1", ["'dport=1'", "type, code, id"]),
        ("tcp src=10.0.0.1 dst=::1 dport=1", ["'src=10.0.0.1'", "both IPv4 or both IPv6"]),
        ("tcp dst=999.1.1.1 dport=1", ["'dst=999.1.1.1'", "IPv4 or IPv6 address"]),
        ("tcp dst=1.2.3.4 dport=80 smac=zz", ["'smac=zz'", "MAC like"]),
        ("tcp dst=1.2.3.4 dport=80 vlan=5000", ["'vlan=5000'", "1..4094"]),
        ("tcp dst=1.2.3.4 dport", ["'dport'", "key=value"]),
        ("tcp dst=1.2.3.4 dport=1 dport=2", ["'dport=2'", "twice"]),
        ("icmpv6 dst=1.2.3.4", ["'dst=1.2.3.4'", "IPv6"]),
    ],
)
def test_parse_spec_errors_name_the_token_and_what_is_expected(text: str, words: list[str]) -> None:
    with pytest.raises(TraceError) as err:
        parse_spec(text)
    for w in words:
        assert w in str(err.value)
    assert isinstance(err.value, ValueError)


def test_resolve_port_accepts_vm_uplink_and_ppid_names() -> None:
    p = make_pipeline("nic1")
    for name in ("vm1", "vm1/0", "vm1/eth0", "vf101", "vpid1"):
        assert resolve_port(p, name) == (PortKind.VF, 101)
    assert resolve_port(p, "vm2") == (PortKind.VF, 102)
    for name in ("nic1/p1", "p1", "uplink2"):
        assert resolve_port(p, name) == (PortKind.UPLINK, 2)
    with pytest.raises(TraceError, match="homed on nic2, not nic1"):
        resolve_port(p, "vm3")
    with pytest.raises(TraceError, match="belongs to nic2"):
        resolve_port(p, "nic2/p0")
    with pytest.raises(TraceError) as err:
        resolve_port(p, "bogus")
    assert "'bogus'" in str(err.value)
    assert "vm1, vm2, nic1/p0, nic1/p1" in str(err.value)


def test_build_frame_uses_the_macs_and_tags_the_pipeline_knows() -> None:
    p = make_pipeline("nic1")
    to_vm = build_frame(p, PortKind.VF, 101, parse_spec(f"tcp dst={VM3.ip} dport=80"))
    assert to_vm == build.tcp_frame(VM1.mac, VM3.mac, VM1.ip, VM3.ip, 40000, 80, TCP_SYN, 1, 1)
    out = build_frame(p, PortKind.VF, 101, parse_spec(f"tcp dst={PEER_IP} dport=80"))
    assert out[:6] == bytes.fromhex("0affc0000232")  # made up, ends in 192.0.2.50
    learn_peer(p)
    out = build_frame(p, PortKind.VF, 101, parse_spec(f"tcp dst={PEER_IP} dport=80"))
    assert out[:6] == PEER_MAC
    wire = build_frame(
        p, PortKind.UPLINK, 1, parse_spec(f"udp src={PEER_IP} dst={VM4.ip} dport=53")
    )
    made_up = bytes.fromhex("0affc0000232")  # the peer is known in web, not in db
    assert wire == build.udp_frame(made_up, VM4.mac, PEER_IP, VM4.ip, 40000, 53, b"trace")
    wire = build_frame(
        p, PortKind.UPLINK, 1, parse_spec(f"udp src={PEER_IP} dst={VM2.ip} dport=53")
    )
    assert wire[12:16] == b"\x81\x00\x00\x0a"  # the web segment's tag
    with pytest.raises(TraceError, match="src= is required"):
        build_frame(p, PortKind.UPLINK, 1, parse_spec(f"udp dst={VM2.ip} dport=53"))
    p.set_topology(SEGMENTS, [Interface(1, "vm1", VM1.mac, (VM1.ip,), "web")])
    with pytest.raises(TraceError, match="vm1 has no IPv6 address: give src="):
        build_frame(p, PortKind.VF, 101, parse_spec("tcp dst=2001:db8::1 dport=80"))


# -- (e) the dict crosses the bus --------------------------------------------------------------


def test_as_dict_is_plain_and_round_trips_msgpack_and_json() -> None:
    p = busy_pipeline()
    for port, spec in TRACED:
        d = trace_packet(p, port, spec, 5.0).as_dict()
        assert plain(d), d
        assert msgpack.unpackb(msgpack.packb(d)) == d
        assert json.loads(json.dumps(d)) == d
        text = format_trace(msgpack.unpackb(msgpack.packb(d)))
        assert "Datapath action: " in text and "Final: " in text


def test_format_trace_reads_like_ofproto_trace() -> None:
    p = make_pipeline("nic1")
    text = format_trace(trace_packet(p, "vm1", f"tcp dst={VM3.ip} dport=80", 0.0).as_dict())
    assert text.splitlines()[0].startswith("Flow: tcp 10.1.0.11:40000 > 10.1.0.13:80 flags=S")
    assert "Ingress: vf 101 (vm1) on nic1" in text
    assert " rule 'out' priority 100 (vpid 1 from-vm, segment web): allow" in text
    assert "would create" in text and "SYN_SENT" in text
    assert "Final: forward via peer_deliver to nic2 vpid 3 (vm3)" in text
    assert text.endswith("Datapath action: forward (tier slow, rule out)")
    drop = format_trace(trace_packet(p, "vm1", f"tcp dst={VM3.ip} dport=23", 0.0).as_dict())
    assert "Final: drop, reason fw.reject" in drop
    assert format_trace({}).startswith("Flow: ")  # never raises on a thin dict
