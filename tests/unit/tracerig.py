"""The trace tests' helpers: run a spec for real, compare a trace with `process`, snapshots."""

from __future__ import annotations

import pickle
from typing import Any

from nicd.datapath.pipeline import Decision, Pipeline, PortKind, Verdict
from nicd.datapath.trace import Trace
from nicd.tracespec import (
    build_frame,
    parse_spec,
    resolve_port,
)
from tests.unit.dpfixtures import (
    PEER_IP,
    PEER_MAC,
    vm,
)
from wire import build

VM1, VM2, VM3, VM4 = vm(1), vm(2), vm(3), vm(4)


# -- helpers -----------------------------------------------------------------------------------


def snapshot(p: Pipeline) -> bytes:
    """Every bit of the pipeline's state: conntrack, tiers, counters, vswitch, team, map."""
    return pickle.dumps(p)


def run(p: Pipeline, port: str, spec: str, now: float = 0.0) -> Decision:
    """Really process the frame `trace_packet` would trace."""
    ingress, ppid = resolve_port(p, port)
    return p.process(ingress, ppid, build_frame(p, ingress, ppid, parse_spec(spec)), now)


def emits(d: Decision) -> list[tuple[int, int, str, bytes]]:
    return [(int(e.out), e.target, e.nic, e.frame) for e in d.emits]


def same_as_process(t: Trace, d: Decision) -> None:
    """The trace's decision is the one `process` made, records included (as they end up)."""
    assert t.decision.verdict is d.verdict
    assert t.decision.reason == d.reason
    assert t.decision.tier == d.tier
    assert t.decision.rule == d.rule
    assert emits(t.decision) == emits(d)
    assert [r.to_wire() for r in t.decision.records] == [r.to_wire() for r in d.records]
    assert t.verdict == d.verdict.name.lower()
    assert t.reason == d.reason


def learn_peer(p: Pipeline, now: float = 0.0) -> None:
    """The external peer answers VM1's ARP on nic1/p0: the vswitch learns PEER_IP's MAC."""
    reply = build.arp_frame(2, PEER_MAC, PEER_IP, VM1.mac, VM1.ip, vlan=10)
    assert p.process(PortKind.UPLINK, 1, reply, now).verdict is Verdict.FORWARD


def connect(p: Pipeline, dport: int = 80, sport: int = 40000) -> None:
    """VM1 opens a TCP connection to the peer; the last ACK installs the fast path."""
    out = f"tcp dst={PEER_IP} sport={sport} dport={dport}"
    back = f"tcp src={PEER_IP} dst={VM1.ip} sport={dport} dport={sport}"
    for port, spec in (("vm1", out + " flags=S"), ("nic1/p0", back + " flags=SA")):
        assert run(p, port, spec).verdict is Verdict.FORWARD
    assert run(p, "vm1", out + " flags=A").verdict is Verdict.FORWARD


def plain(x: Any) -> bool:
    """Only str/int/bool/list/dict (exact types: an IntEnum or a tuple would not do)."""
    if type(x) is dict:
        return all(type(k) is str and plain(v) for k, v in x.items())
    if type(x) is list:
        return all(plain(v) for v in x)
    return type(x) in (str, int, bool)


def step(t: Trace, kind: str) -> list[dict[str, Any]]:
    return [s for s in t.steps if s["step"] == kind]
