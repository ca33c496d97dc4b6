"""A trace is a dry run in states the other trace tests do not reach.

Random sequences of real processing, ticks, rule changes, uplink changes, map moves and team
policy changes, with a small conntrack limit (full table) and a tiny eSwitch; before every real
frame the same frame is traced first: the trace must change nothing (pickle) and must predict
what processing then does.
"""

from __future__ import annotations

import copy
import pickle

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nicd.datapath.pipeline import Pipeline, PortKind
from nicd.datapath.teaming import TeamPolicy
from nicd.datapath.trace import trace
from nicd.policy import ruleset_from_config
from tests.unit.dpfixtures import PEER_IP, PEER_MAC, VMS, make_pipeline, map_entries
from tests.unit.test_pipeline_property import FLOWS, SHORT, _frames, _valid, rules
from wire import build
from wire.protocols import TCP_ACK, TCP_SYN

flow_ids = st.integers(0, len(FLOWS) - 1)


def _extra(i: int) -> tuple[PortKind, int, bytes]:
    v1, v2, v3 = VMS[0], VMS[1], VMS[2]
    frames = [
        # ARP on the uplink: a reply teaches the peer's MAC; a request for a VM is answered.
        (PortKind.UPLINK, 1, build.arp_frame(2, PEER_MAC, PEER_IP, v1.mac, v1.ip, vlan=10)),
        (PortKind.UPLINK, 2, build.arp_frame(1, PEER_MAC, PEER_IP, b"\0" * 6, v1.ip, vlan=10)),
        (PortKind.VF, v1.ppid, build.arp_frame(1, v1.mac, v1.ip, b"\0" * 6, v2.ip)),
        (PortKind.VF, v1.ppid, build.arp_frame(1, v1.mac, v1.ip, b"\0" * 6, PEER_IP)),
        # tagged from the network, unknown VLAN, broadcast
        (
            PortKind.UPLINK,
            1,
            build.udp_frame(PEER_MAC, v1.mac, PEER_IP, v1.ip, 53, 999, b"x", vlan=10),
        ),
        (
            PortKind.UPLINK,
            1,
            build.udp_frame(PEER_MAC, v1.mac, PEER_IP, v1.ip, 53, 999, b"x", vlan=77),
        ),
        (PortKind.VF, v1.ppid, build.udp_frame(v1.mac, b"\xff" * 6, v1.ip, v2.ip, 1, 53, b"b")),
        # a sibling's transmit-only handover, a delivery, garbage
        (
            PortKind.PEER_TRANSMIT,
            1,
            build.tcp_frame(v3.mac, PEER_MAC, v3.ip, PEER_IP, 5, 80, TCP_SYN, vlan=10),
        ),
        (PortKind.PEER_TRANSMIT, 9, b"\x00" * 60),
        (PortKind.PEER_DELIVER, 1, build.tcp_frame(v3.mac, v1.mac, v3.ip, v1.ip, 7, 80, TCP_SYN)),
        (PortKind.PEER_DELIVER, 1, build.tcp_frame(v3.mac, v1.mac, v3.ip, v1.ip, 7, 80, TCP_ACK)),
        (PortKind.VF, v1.ppid, b"\x01" * 30),
        # a new source MAC on the uplink (learning) in the web segment
        (
            PortKind.UPLINK,
            2,
            build.tcp_frame(
                b"\x02\0\0\0\xee\x77", v2.mac, PEER_IP, v2.ip, 80, 4000, TCP_SYN | TCP_ACK, vlan=10
            ),
        ),
    ]
    return frames[i % len(frames)]


EXTRA = 13
events = st.lists(
    st.one_of(
        st.tuples(st.just("open"), flow_ids),
        st.tuples(st.just("data"), flow_ids, st.booleans()),
        st.tuples(st.just("close"), flow_ids),
        st.tuples(st.just("extra"), st.integers(0, EXTRA - 1)),
        st.tuples(st.just("time"), st.floats(0.1, 6.0)),
        st.tuples(st.just("rules"), rules, st.sampled_from(["allow", "drop"])),
        st.tuples(
            st.just("uplink"), st.sampled_from(["nic1/p0", "nic1/p1", "nic2/p0"]), st.booleans()
        ),
        st.tuples(st.just("nic"), st.booleans()),
        st.tuples(st.just("team"), st.sampled_from(list(TeamPolicy))),
        st.tuples(st.just("move")),
    ),
    min_size=4,
    max_size=40,
)


def _traced(p: Pipeline, ingress: PortKind, port: int, frame: bytes, now: float) -> None:
    before = pickle.dumps(p)
    t = trace(p, ingress, port, frame, now)
    assert pickle.dumps(p) == before, ("the trace wrote to the pipeline", ingress, port, frame)
    d = p.process(ingress, port, frame, now)
    got = (t.decision.verdict, t.decision.reason, t.decision.tier, t.decision.rule)
    assert got == (d.verdict, d.reason, d.tier, d.rule)
    assert [(e.out, e.target, e.nic, e.frame) for e in t.decision.emits] == [
        (e.out, e.target, e.nic, e.frame) for e in d.emits
    ]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rules,
    st.sampled_from([TeamPolicy.PORT_ID, TeamPolicy.LOAD_BASED]),
    st.sampled_from([2, 4, 1000]),
    events,
)
def test_trace_is_a_dry_run_in_any_state(initial, policy, ct_limit, evs) -> None:
    rs = ruleset_from_config(_valid(initial), default="allow")
    p = make_pipeline(
        rules=rs, eswitch_capacity=2, timeouts=SHORT, ct_limit=ct_limit, policy=policy
    )
    now, epoch = 0.0, 1
    for ev in evs:
        kind = ev[0]
        if kind == "time":
            now += ev[1]
            p.tick(now)
        elif kind == "rules":
            p.set_rules(ruleset_from_config(_valid(ev[1]), default=ev[2]), now)
        elif kind == "uplink":
            p.set_uplink_live(ev[1], ev[2])
        elif kind == "nic":
            p.set_nic_live("nic2", ev[1])
        elif kind == "team":
            p.set_policy(ev[1])
        elif kind == "move":
            epoch += 1
            entries = map_entries()
            if epoch % 2 == 0:  # VM2 moves to nic2, VM3 to nic1
                entries = [(1, "nic1", 101), (2, "nic2", 103), (3, "nic1", 103), (4, "nic2", 102)]
            p.apply_map(epoch, entries)
        elif kind == "extra":
            _traced(p, *_extra(ev[1]), now)
        else:
            for ingress, port, frame in _frames(ev):
                _traced(p, ingress, port, frame, now)
    _ = copy
