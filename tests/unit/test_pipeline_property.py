"""The invariant of the tiered firewall: a fast tier never decides other than the slow path.

For random rule sets and random sequences of frames, rule changes and time passing, the full
pipeline (eSwitch + flow cache + slow path, with a tiny eSwitch so it fills up) must give every
frame exactly the verdict, drop reason and emitted frames of the same pipeline with both fast
tiers switched off.
"""

from __future__ import annotations

from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from nicd.datapath.conntrack import Timeouts
from nicd.datapath.pipeline import Emit, Pipeline, PortKind, Verdict
from nicd.datapath.tiers import Tier
from nicd.policy import ruleset_from_config
from tests.unit.dpfixtures import PEER_IP, PEER_MAC, VMS, make_pipeline
from wire import build
from wire.protocols import TCP_ACK, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN

LOCAL = [v for v in VMS if v.nic == "nic1"]
FLAGS = [TCP_SYN, TCP_SYN | TCP_ACK, TCP_ACK, TCP_ACK | TCP_PSH, TCP_FIN | TCP_ACK, TCP_RST, 0]
SHORT = Timeouts(
    tcp_syn_sent=3, tcp_syn_recv=3, tcp_established=8, tcp_fin_wait=4, tcp_close_wait=4,
    tcp_last_ack=4, tcp_time_wait=2, tcp_close=2, udp_first=3, udp_multiple=5, icmp_first=3,
    icmp_reply=3, other_first=3, other_multiple=3,
)  # fmt: skip

rules = st.lists(
    st.fixed_dictionaries(
        {
            "name": st.sampled_from(["r1", "r2", "r3", "r4", "r5"]),
            "priority": st.integers(1, 50),
            "action": st.sampled_from(["allow", "allow", "allow", "drop", "reject"]),
        },
        optional={
            "direction": st.sampled_from(["to-vm", "from-vm"]),
            "proto": st.sampled_from(["tcp", "udp", "icmp"]),
            "dport": st.sampled_from([80, 53, "80-90"]),
            "segment": st.sampled_from(["web", "db"]),
            "src": st.sampled_from(["10.1.0.0/24", "10.1.0.11/32", "192.0.2.0/24"]),
        },
    ),
    max_size=6,
)


def _valid(rule_dicts: list[dict]) -> list[dict]:
    """Make random rules legal: ports need tcp/udp, flags need allow; names unique."""
    out = []
    for i, r in enumerate(rule_dicts):
        r = dict(r, name=f"r{i}")
        if "dport" in r and r.get("proto") not in ("tcp", "udp"):
            r["proto"] = "tcp"
        out.append(r)
    return out


FLOWS = [  # (kind, local VM index, other VM index, proto, sport, dport)
    ("out", 0, 0, "tcp", 1000, 80),
    ("in", 1, 0, "tcp", 1001, 80),
    ("vm", 0, 1, "tcp", 1002, 22),
    ("vm", 1, 2, "tcp", 1003, 80),
    ("vm", 0, 3, "udp", 1004, 53),
    ("out", 1, 0, "udp", 1005, 53),
]


def _frame(flow: int, back: bool, flags: int) -> tuple[PortKind, int, bytes]:
    """A frame of one of FLOWS, forward or back, as the NIC nic1 would receive it."""
    kind, a, b, proto, sport, dport = FLOWS[flow]
    vm = LOCAL[a]
    if kind in ("out", "in"):
        to_peer = (kind == "out") != back
        if to_peer:
            src_mac, dst_mac, src, dst = vm.mac, PEER_MAC, vm.ip, PEER_IP
        else:
            src_mac, dst_mac, src, dst = PEER_MAC, vm.mac, PEER_IP, vm.ip
    else:
        other = VMS[b]
        src_vm, dst_vm = (other, vm) if back else (vm, other)
        src_mac, dst_mac, src, dst = src_vm.mac, dst_vm.mac, src_vm.ip, dst_vm.ip
    if back:
        sport, dport = dport, sport
    vlan = 10 if kind in ("out", "in") and src_mac == PEER_MAC else None
    if proto == "tcp":
        f = build.tcp_frame(src_mac, dst_mac, src, dst, sport, dport, flags, 1, 1, vlan=vlan)
    else:
        f = build.udp_frame(src_mac, dst_mac, src, dst, sport, dport, b"u", vlan=vlan)
    if src_mac == PEER_MAC:
        return PortKind.UPLINK, 1, f
    sender = next(v for v in VMS if v.mac == src_mac)
    if sender.nic == "nic1":
        return PortKind.VF, sender.ppid, f
    receiver = next(v for v in VMS if v.mac == dst_mac)
    return PortKind.PEER_DELIVER, receiver.vpid, f


OPEN = [(False, TCP_SYN), (True, TCP_SYN | TCP_ACK), (False, TCP_ACK)]
CLOSE = [(False, TCP_FIN | TCP_ACK), (True, TCP_ACK), (True, TCP_FIN | TCP_ACK), (False, TCP_ACK)]
flow_ids = st.integers(0, len(FLOWS) - 1)
events = st.lists(
    st.one_of(
        st.tuples(st.just("open"), flow_ids),
        st.tuples(st.just("open"), flow_ids),
        st.tuples(st.just("data"), flow_ids, st.booleans()),
        st.tuples(st.just("data"), flow_ids, st.booleans()),
        st.tuples(st.just("flags"), flow_ids, st.booleans(), st.sampled_from(FLAGS)),
        st.tuples(st.just("close"), flow_ids),
        st.tuples(st.just("time"), st.floats(0.1, 6.0)),
        st.tuples(st.just("rules"), rules, st.sampled_from(["allow", "drop"])),
        st.tuples(
            st.just("link"), st.sampled_from(["nic1/p0", "nic1/p1", "nic2/p0"]), st.booleans()
        ),
    ),
    min_size=4,
    max_size=40,
)


def _frames(ev: tuple) -> list[tuple[PortKind, int, bytes]]:
    kind, flow = ev[0], ev[1]
    if kind == "open":
        steps = OPEN if FLOWS[flow][3] == "tcp" else [(False, 0), (True, 0)]
    elif kind == "close":
        steps = CLOSE if FLOWS[flow][3] == "tcp" else []
    elif kind == "data":
        steps = [(ev[2], TCP_ACK | TCP_PSH)]
    else:
        steps = [(ev[2], ev[3])]
    return [_frame(flow, back, flags) for back, flags in steps]


def _emit(e: Emit) -> tuple:
    return e.out, e.target, e.nic, e.frame


def _outcome(d) -> tuple:
    return d.verdict, d.reason, list(map(_emit, d.emits))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rules, st.sampled_from(["allow", "allow", "drop"]), events)
# The UDP flow's cached path waits for the full eSwitch and expires at the tick that would
# promote it: offload-rebalance must not install it (its record gone, nothing would evict it).
@example(
    initial=[],
    default="allow",
    evs=[("open", 0), ("open", 1), ("open", 2), ("open", 3), ("open", 4), ("time", 1.0),
         ("open", 4), ("time", 5.0)],
)  # fmt: skip
# The inbound TCP flow's path in from nic1/p0 outlived the uplink's leaving the team.
@example(
    initial=[],
    default="allow",
    evs=[("open", 1), ("open", 1), ("link", "nic1/p0", False), ("open", 1)],
)
def test_tiered_pipeline_decides_as_the_slow_path_alone(initial, default, evs) -> None:
    rs = ruleset_from_config(_valid(initial), default=default)
    tiered = make_pipeline(rules=rs, eswitch_capacity=4, timeouts=SHORT)
    slow = make_pipeline(rules=rs, eswitch_capacity=0, cache_enabled=False, timeouts=SHORT)
    now = 0.0
    for ev in evs:
        if ev[0] == "time":
            now += ev[1]
            tiered.tick(now)
            slow.tick(now)
            assert len(tiered.ct) == len(slow.ct)
        elif ev[0] == "link":
            rarps = tiered.set_uplink_live(ev[1], ev[2])
            assert list(map(_emit, rarps)) == list(map(_emit, slow.set_uplink_live(*ev[1:])))
        elif ev[0] == "rules":
            rs = ruleset_from_config(_valid(ev[1]), default=ev[2])
            tiered.set_rules(rs, now)
            slow.set_rules(rs, now)
        else:
            for ingress, port, frame in _frames(ev):
                a = tiered.process(ingress, port, frame, now)
                b = slow.process(ingress, port, frame, now)
                assert _outcome(a) == _outcome(b), (ev, a, b)
                if a.tier is not None and a.tier > Tier.SLOW:
                    event("a fast tier decided")
    _check_tiers_consistent(tiered)


def _check_tiers_consistent(p: Pipeline) -> None:
    """Every fast-tier entry belongs to a live, established record that allows that tier."""
    live = {id(r) for r in p.ct}
    for rec in p.cache.records():
        assert id(rec) in live and rec.sw_ok and rec.established
    for rec in p.eswitch.records():
        assert id(rec) in live and rec.hw_ok and rec.sw_ok


def test_the_property_exercises_fast_tiers() -> None:
    """Guard against a vacuous property: an established flow does reach the eSwitch."""
    rs = ruleset_from_config([{"name": "all", "priority": 1, "action": "allow"}])
    p = make_pipeline(rules=rs)
    frames = _frames(("open", 3)) + _frames(("data", 3, True)) * 2
    decisions = [p.process(*f, 0.0) for f in frames]
    assert all(d.verdict is Verdict.FORWARD for d in decisions)
    assert decisions[-1].tier is Tier.ESWITCH
