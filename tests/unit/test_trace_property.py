"""The property: a trace predicts `Pipeline.process` frame after frame, and changes nothing.

Random flows, rules, team policies and table sizes on the two-NIC test host; every frame is
traced, the pipeline pickled before and after, then processed for real and compared.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from nicd.datapath.pipeline import Pipeline, PortKind
from nicd.datapath.teaming import TeamPolicy
from nicd.datapath.tiers import fast_key
from nicd.datapath.trace import trace
from nicd.policy import ruleset_from_config
from nicd.tracespec import (
    PacketSpec,
    build_frame,
    resolve_port,
)
from tests.unit.dpfixtures import (
    DEFAULT_RULES,
    PEER_IP,
    SEGMENTS,
    interfaces,
    make_pipeline,
)
from tests.unit.tracerig import (
    VM1,
    VM2,
    VM3,
    learn_peer,
    plain,
    same_as_process,
    snapshot,
    step,
)
from wire.protocols import (
    PROTO_ICMP,
    PROTO_TCP,
    PROTO_UDP,
    TCP_ACK,
    TCP_FIN,
    TCP_PSH,
    TCP_RST,
    TCP_SYN,
)

# -- the property: trace predicts process, frame after frame -----------------------------------

# Flows seen from nic1: (proto, sender port, sender ip, receiver port, receiver ip, sport, dport)
FLOWS: list[
    tuple[str, str, IPv4Address | IPv6Address, str, IPv4Address | IPv6Address, int, int]
] = [
    ("tcp", "vm1", VM1.ip, "nic1/p0", PEER_IP, 1000, 80),
    ("tcp", "nic1/p1", PEER_IP, "vm2", VM2.ip, 1001, 80),
    ("tcp", "vm1", VM1.ip, "vm2", VM2.ip, 1002, 22),
    ("udp", "vm1", VM1.ip, "peer:1", VM3.ip, 1003, 53),
    ("udp", "vm2", VM2.ip, "nic1/p0", PEER_IP, 1004, 53),
    ("tcp", "vm2", VM2.ip, "nic1/p0", PEER_IP, 1005, 5432),
    ("icmp", "vm1", VM1.ip, "nic1/p1", PEER_IP, 9, 0),
    ("tcp", "vm1", VM1.ip6, "vm2", VM2.ip6, 1006, 80),
]
FLAGS = [TCP_SYN, TCP_SYN | TCP_ACK, TCP_ACK, TCP_ACK | TCP_PSH, TCP_FIN | TCP_ACK, TCP_RST, 0]
OPEN = [(False, TCP_SYN), (True, TCP_SYN | TCP_ACK), (False, TCP_ACK)]


def _port(p: Pipeline, name: str) -> tuple[PortKind, int]:
    if name.startswith("peer:"):  # a frame from a VM on nic2, delivered to VPID N here
        return PortKind.PEER_DELIVER, int(name[5:])
    return resolve_port(p, name)


def flow_frame(p: Pipeline, flow: int, back: bool, flags: int) -> tuple[PortKind, int, bytes]:
    proto, a_port, a_ip, b_port, b_ip, sport, dport = FLOWS[flow]
    if back:
        a_port, a_ip, b_port, b_ip, sport, dport = b_port, b_ip, a_port, a_ip, dport, sport
    if a_port.startswith("peer:"):
        a_port = "peer:" + str(next(v.vpid for v in (VM1, VM2) if v.ip == b_ip))
    ingress, port = _port(p, a_port)
    spec = PacketSpec(PROTO_TCP, b_ip, a_ip, sport, dport, flags)
    if proto == "udp":
        spec.proto = PROTO_UDP
    elif proto == "icmp":
        spec.proto, spec.ident, spec.icmp_type = PROTO_ICMP, sport or dport, 0 if back else 8
    return ingress, port, build_frame(p, ingress, port, spec)


RULES = st.lists(
    st.fixed_dictionaries(
        {
            "priority": st.integers(1, 50),
            "action": st.sampled_from(["allow", "allow", "drop", "reject"]),
        },
        optional={
            "direction": st.sampled_from(["to-vm", "from-vm"]),
            "proto": st.sampled_from(["tcp", "udp", "icmp"]),
            "dport": st.sampled_from([80, 53, 22, "5000-6000"]),
            "inspect": st.booleans(),
            "sw_only": st.booleans(),
        },
    ),
    max_size=5,
)


def _rules(dicts: list[dict], default: str) -> Any:
    out = []
    for i, r in enumerate(dicts):
        r = dict(r, name=f"r{i}")
        if "dport" in r and r.get("proto") not in ("tcp", "udp"):
            r["proto"] = "tcp"
        if r["action"] != "allow" or r.get("inspect"):
            r.pop("sw_only", None)  # flags need allow, and inspect excludes sw-only
        if r["action"] != "allow":
            r.pop("inspect", None)
        out.append(r)
    return ruleset_from_config([*out, *DEFAULT_RULES], default)


flow_ids = st.integers(0, len(FLOWS) - 1)
EVENTS = st.lists(
    st.one_of(
        st.tuples(st.just("open"), flow_ids),
        st.tuples(st.just("pkt"), flow_ids, st.booleans(), st.sampled_from(FLAGS)),
        st.tuples(st.just("pkt"), flow_ids, st.booleans(), st.just(TCP_ACK | TCP_PSH)),
        st.tuples(
            st.just("mutate"), flow_ids, st.booleans(), st.integers(0, 70), st.integers(0, 255)
        ),
        st.tuples(
            st.just("raw"),
            st.sampled_from(list(PortKind)),
            st.integers(0, 4),
            st.binary(max_size=70),
        ),
        st.tuples(st.just("time"), st.floats(0.1, 40.0)),
        st.tuples(
            st.just("link"), st.sampled_from(["nic1/p0", "nic2/p0", "nic2/p1"]), st.booleans()
        ),
        st.tuples(st.just("topology")),  # same topology, new generation: stale fast entries
    ),
    min_size=1,
    max_size=30,
)


def traced_process(p: Pipeline, ingress: PortKind, port: int, frame: bytes, now: float) -> None:
    """Trace, check nothing changed, process, check the trace foresaw it all."""
    before = snapshot(p)
    t = trace(p, ingress, port, frame, now)
    assert snapshot(p) == before
    assert plain(t.as_dict())
    key = fast_key(ingress, port, frame) if ingress is not PortKind.PEER_TRANSMIT else None
    tables = (("eswitch", p.eswitch), ("cache", p.cache))
    old = {n: None if key is None else tb.entries.get(key) for n, tb in tables}
    d = p.process(ingress, port, frame, now)
    same_as_process(t, d)
    installed = {
        n: key is not None and tb.entries.get(key) is not None and tb.entries.get(key) is not old[n]
        for n, tb in tables
    }
    predicted = step(t, "install")
    want = {n: bool(predicted and predicted[0][n]) for n in ("eswitch", "cache")}
    assert installed == want, (predicted, installed)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    EVENTS,
    RULES,
    st.sampled_from(["allow", "drop"]),
    st.sampled_from(list(TeamPolicy)),
    st.sampled_from([0, 1, 2, 64]),
    st.integers(2, 40),
)
# The FIN evicts the cache entry the second handshake's ACK hit: that hit is read back into the
# record (7 packets), and the dry run must read it back into its copy too.
@example([("open", 0), ("open", 0), ("pkt", 0, False, TCP_FIN | TCP_ACK)], [], "allow",
         TeamPolicy.PORT_ID, 0, 2)  # fmt: skip
def test_trace_always_predicts_process_and_never_changes_state(
    events: list[tuple], rules: list[dict], default: str, policy: TeamPolicy, es: int, ct: int
) -> None:
    p = make_pipeline("nic1", _rules(rules, default), eswitch_capacity=es, ct_limit=ct,
                      policy=policy)  # fmt: skip
    learn_peer(p)
    now = 0.0
    for ev in events:
        now += 0.01
        kind = ev[0]
        if kind == "open":
            for back, flags in OPEN:
                traced_process(p, *flow_frame(p, ev[1], back, flags), now)
        elif kind == "pkt":
            traced_process(p, *flow_frame(p, ev[1], ev[2], ev[3]), now)
        elif kind == "mutate":
            ingress, port, frame = flow_frame(p, ev[1], ev[2], TCP_ACK)
            b = bytearray(frame)
            if ev[3] < len(b):
                b[ev[3]] = ev[4]
            traced_process(p, ingress, port, bytes(b), now)
        elif kind == "raw":
            traced_process(p, ev[1], ev[2], ev[3], now)
        elif kind == "time":
            now += ev[1]
            p.tick(now)
        elif kind == "topology":
            p.set_topology(SEGMENTS, interfaces())
        else:
            p.set_uplink_live(ev[1], ev[2])
