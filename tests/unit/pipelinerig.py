"""The two-NIC test host's pipeline driven the way the pipeline tests drive it."""

from __future__ import annotations

import struct
from collections.abc import Iterable

from nicd.datapath.conntrack import CtRecord
from nicd.datapath.pipeline import Decision, Emit, Pipeline, PortKind, Verdict
from nicd.datapath.rules import RuleSet
from nicd.datapath.tiers import Tier
from nicd.policy import ruleset_from_config
from tests.unit.dpfixtures import (
    DEFAULT_RULES,
    VM,
    tcp,
    tcp_in,
    tcp_out,
    vm,
)
from wire.frames import Packet, parse_frame_untrusted
from wire.protocols import (
    TCP_ACK,
    TCP_PSH,
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
