"""Trace, a dry run of one NIC's datapath for one frame, like OVS ``ofproto/trace``.

Theory of operation. There is no second copy of the decision code: `trace` runs the pipeline's
own `process` on `Pipeline.dry_copy`, a pipeline that shares the tables deciding reads and owns
scratch ones for everything it writes (counters, conntrack records, the fast-tier entry the
frame would hit, the team's memo and load tally; MAC learning is skipped), so a trace changes
nothing and cannot drift from what processing the frame does. The decision methods tell the
`TraceLog` each step they take (`Pipeline._trace`, None outside a dry run); it keeps them as
plain dicts, with the conntrack records seen or made.

`Trace.as_dict()` is a plain dict, so it can cross the bus; the text rendering is the CLI's
(ctl/trace.py) and an operator's words (a port name, a packet spec) are read by nicd/tracespec.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import Any

from nicd.datapath.conntrack import ConntrackTable, CtRecord
from nicd.datapath.decision import Decision, Emit, PortKind, Verdict, vlan_op
from nicd.datapath.offload import Offload, Why
from nicd.datapath.pipeline import Pipeline
from nicd.datapath.rows import conntrack_row, uplink_name, vm_name
from nicd.datapath.rules import Direction, Rule, RuleAction
from nicd.datapath.scratch import ScratchConntrack
from nicd.datapath.teaming import TeamPolicy, Uplink
from nicd.datapath.tiers import FastKey, PathEntry, Tier, fast_key
from nicd.datapath.vswitch import Segment, VSwitch
from wire import build
from wire.addr import mac_str
from wire.frames import MalformedFrame, Packet, parse_frame_untrusted
from wire.protocols import (
    ETH_ARP,
    ETH_VLAN,
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_NAMES,
    PROTO_TCP,
    TCP_ACK,
    TCP_FIN,
    TCP_PSH,
    TCP_RST,
    TCP_SYN,
)

__all__ = ["FLAG_LETTERS", "Egress", "Trace", "TraceError", "TraceLog", "flag_letters", "trace"]

TCP_URG = 0x20
# Letter order as tcpdump prints them; a packet spec's `flags=` takes them in any order.
FLAG_LETTERS = {"S": TCP_SYN, "A": TCP_ACK, "F": TCP_FIN, "R": TCP_RST, "P": TCP_PSH, "U": TCP_URG}
KIND_NAMES = {k: k.name.lower() for k in PortKind}
_TIER_NAMES = {t: t.name.lower() for t in Tier}
_DIR_NAMES = {Direction.FROM_VM: "from_vm", Direction.TO_VM: "to_vm"}
# How the trace words two of the offload reasons (`flows` has shorter ones).
_WHY_WORDS = {
    Why.INSPECT: "not sw_ok: the rule inspects every packet",
    Why.NOT_ESTABLISHED: "connection not established yet",
}


class TraceError(ValueError):
    """A packet spec, port name or ingress kind a trace cannot use; the message says why."""


def flag_letters(flags: int) -> str:
    """TCP flag bits as letters (``SA``), ``none`` for no flags."""
    return "".join(c for c, bit in FLAG_LETTERS.items() if flags & bit) or "none"


class TraceLog:
    """The steps a dry run of pipeline `p` takes, as plain dicts, and the records it touches.

    The pipeline's decision methods call it where they decide; it only reads.
    """

    def __init__(self, p: Pipeline, now: float) -> None:
        self.p = p
        self.now = now
        self.steps: list[dict[str, Any]] = []
        self.records: list[dict[str, Any]] = []

    def step(self, kind: str, /, **fields: Any) -> None:
        """Record one step."""
        self.steps.append({"step": kind, **fields})

    def fast(self, s: Pipeline, key: FastKey, found: tuple[PathEntry, Tier] | None) -> None:
        """The fast-tier lookup `s` (the dry copy) just made, tier by tier."""
        for table in (s.eswitch, s.cache):
            name = _TIER_NAMES[table.tier]
            if found is not None and table.stats.hits:
                entry = found[0]
                # `packets - 1`: the lookup counted this frame on the entry's scratch copy.
                self.step("fast", tier=name, hit=True, eligible=True, rule=entry.rule,
                          packets=entry.packets - 1)  # fmt: skip
                for rec in entry.records:
                    self.records.append(_record_row(s.ct, rec, self.now, "existing"))
                return
            # An entry of an older map/team/topology generation is a miss.
            self.step("fast", tier=name, hit=False, eligible=True, stale=key in table.entries)

    def learn(self, vswitch: VSwitch, segment: str, mac: bytes, ip: int) -> None:
        """The pipeline would learn `mac` (say so only when it is new)."""
        if vswitch.lookup(segment, mac) is None:
            self.step("learn", segment=segment, mac=mac_str(mac), ip=_ip4(ip))

    def team_ingress(self, uplink: str, broadcast: bool, accepted: bool) -> None:
        """The team's ingress filter on `uplink`."""
        self.step("team_ingress", uplink=uplink, broadcast=broadcast, accepted=accepted)

    def switch(self, s: Pipeline, seg: Segment, pkt: Packet, vpid: int | None) -> None:
        """The virtual switch's lookup of the destination MAC."""
        home = s.map.home(vpid) if vpid is not None else None
        self.step(
            "switch",
            segment=seg.name,
            dst_mac=mac_str(pkt.dst_mac),
            dst_vpid=vpid if vpid is not None else -1,
            name=vm_name(s.vswitch, vpid) if vpid is not None else "",
            nic=home.nic if home is not None else "",
        )

    def transmit(self, s: Pipeline, ppid: int, ok: bool) -> None:
        """A sibling's transmit-only handover on our uplink `ppid`."""
        self.step("transmit", uplink=uplink_name(s.team, s.nic, ppid), ok=ok)

    def team(self, policy: TeamPolicy, vpid: int, uplink: Uplink | None) -> None:
        """The team's egress choice for `vpid`."""
        self.step(
            "team",
            policy=policy.value,
            vpid=vpid,
            uplink=uplink.name if uplink is not None else "",
            nic=uplink.nic if uplink is not None else "",
            accounts=policy is TeamPolicy.LOAD_BASED,
        )

    def fragment(self, vpid: int, direction: Direction) -> None:
        """A firewall stage drops an IP fragment before conntrack."""
        self.step("firewall", vpid=vpid, direction=_DIR_NAMES[direction], fragment=True)

    def row(self, ct: ConntrackTable, rec: CtRecord, now: float) -> dict[str, Any]:
        """A record as found, before this frame updates it."""
        new = isinstance(ct, ScratchConntrack) and ct.is_new(rec)
        return _record_row(ct, rec, now, "new" if new else "existing")

    def conntrack(
        self,
        vpid: int,
        direction: Direction,
        seen: dict[str, Any],
        rec: CtRecord,
        is_reply: bool,
        valid: bool,
        punt: bool,
        evict: bool,
    ) -> None:
        """The stage found a record (`seen` as it was) and updated it to `rec`."""
        where = _where(vpid, direction)
        row = dict(seen, next_state=rec.state.name, reply=is_reply, valid=valid, **where)
        self.records.append(row)
        self.step("conntrack", **where, found=True, record=row, punt=punt, evict=evict)

    def no_record(self, vpid: int, direction: Direction) -> None:
        """The stage found no record: the rules decide."""
        self.step("conntrack", **_where(vpid, direction), found=False)

    def rule(
        self, vpid: int, direction: Direction, segment: str, rule: Rule | None, action: RuleAction
    ) -> None:
        """The classifier's match (None: the default action)."""
        self.step(
            "rule",
            **_where(vpid, direction),
            segment=segment,
            rule=rule.name if rule is not None else "default",
            action=action.value,
            priority=rule.priority if rule is not None else -1,
            inspect=bool(rule and rule.inspect),
            sw_only=bool(rule and rule.sw_only),
        )

    def ct_create(
        self,
        ct: ConntrackTable,
        vpid: int,
        direction: Direction,
        rec: CtRecord | None,
        reason: str,
        now: float,
    ) -> None:
        """A new record, or none and `reason`."""
        where = _where(vpid, direction)
        if rec is None:
            self.step("ct_create", **where, created=False, reason=reason)
            return
        row = dict(_record_row(ct, rec, now, "new"), **where)
        self.records.append(row)
        self.step("ct_create", **where, created=True, record=row)

    def install(self, plan: Offload) -> None:
        """Where the decided path would go down to, and what keeps it out of a tier."""
        why = "; ".join(_WHY_WORDS.get(w, w.value) for w in plan.why)
        self.step("install", cache=plan.cache, eswitch=plan.eswitch, why=why)


def _where(vpid: int, direction: Direction) -> dict[str, Any]:
    return {"vpid": vpid, "direction": _DIR_NAMES[direction]}


def _record_row(ct: ConntrackTable, rec: CtRecord, now: float, status: str) -> dict[str, Any]:
    """A conntrack row as `nicteam conntrack` shows it, plus what the trace knows."""
    row = conntrack_row(ct, rec, now)
    row["status"] = status  # "existing", or "new": this packet would create it
    row["hw_capable"] = rec.hw_capable
    row["origin"] = _DIR_NAMES[Direction(rec.origin)]
    return row


# ---------------------------------------------------------------------------- the result


@dataclass(slots=True)
class Egress:
    """One frame the pipeline would emit: where to, and what it is."""

    out: str  # "vf", "uplink", "peer_deliver", "peer_transmit"
    port: int  # PPID here (vf, uplink), VPID (peer_deliver) or the sibling's uplink PPID
    nic: str  # the NIC that puts it out (this one for vf/uplink)
    name: str  # VM interface or uplink name
    vlan: int  # its 802.1Q tag, 0 if untagged
    what: str  # "frame" (the one traced), "tcp-rst", "icmp-unreachable", "arp-reply"

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for the control socket."""
        return {
            "out": self.out,
            "port": self.port,
            "nic": self.nic,
            "name": self.name,
            "vlan": self.vlan,
            "what": self.what,
        }


@dataclass(slots=True)
class Trace:
    """Steps and outcome of one dry run; `decision` is what `Pipeline.process` would return."""

    nic: str
    ingress: str
    port: int
    port_name: str
    packet: dict[str, Any]
    steps: list[dict[str, Any]]
    verdict: str  # "forward" or "drop"
    tier: str  # "eswitch", "cache", "slow", or "" when no firewall stage ran
    rule: str
    reason: str  # the drop code, as `PipelineStats.drops` counts it
    records: list[dict[str, Any]]
    egress: list[Egress]
    decision: Decision = field(repr=False)

    def as_dict(self) -> dict[str, Any]:
        """Plain str/int/bool/list/dict values only: it crosses the bus as a control reply."""
        return {
            "nic": self.nic,
            "ingress": {"kind": self.ingress, "port": self.port, "name": self.port_name},
            "packet": self.packet,
            "steps": self.steps,
            "verdict": self.verdict,
            "tier": self.tier,
            "rule": self.rule,
            "reason": self.reason,
            "records": self.records,
            "egress": [e.as_dict() for e in self.egress],
        }


def trace(p: Pipeline, ingress: PortKind, port: int, frame: bytes, now: float) -> Trace:
    """What `p.process(ingress, port, frame, now)` would do, step by step; `p` is not changed."""
    kind = port_kind(ingress)
    key = fast_key(kind, port, frame) if kind is not PortKind.PEER_TRANSMIT else None
    log = TraceLog(p, now)
    name = _port_name(p, kind, port)
    log.step("ingress", kind=KIND_NAMES[kind], port=port, nic=p.nic, name=name)
    d = p.dry_copy(log, key).process(kind, port, frame, now)
    if d.verdict is Verdict.DROP:
        log.step("drop", reason=d.reason, rule=d.rule)
    return Trace(
        nic=p.nic,
        ingress=KIND_NAMES[kind],
        port=port,
        port_name=name,
        packet=_packet_summary(frame),
        steps=log.steps,
        verdict=d.verdict.name.lower(),
        tier=_TIER_NAMES[d.tier] if d.tier is not None else "",
        rule=d.rule,
        reason=d.reason,
        records=log.records,
        egress=[_egress(p, frame, e) for e in d.emits],
        decision=d,
    )


def port_kind(value: int) -> PortKind:
    """`value` as a `PortKind`; TraceError names the valid ones."""
    try:
        return PortKind(value)
    except ValueError:
        kinds = ", ".join(f"{int(i)} ({n})" for i, n in KIND_NAMES.items())
        raise TraceError(f"unknown ingress {value!r}: expected one of {kinds}") from None


def _port_name(p: Pipeline, kind: PortKind, port: int) -> str:
    if kind is PortKind.VF:
        vpid = p.vf_vpid(port)
        return vm_name(p.vswitch, vpid) if vpid is not None else f"vf{port}"
    if kind is PortKind.PEER_DELIVER:
        return vm_name(p.vswitch, port)
    return uplink_name(p.team, p.nic, port)


def _ip4(value: int) -> str:
    return str(IPv4Address(value)) if value else ""


def _packet_summary(frame: bytes) -> dict[str, Any]:
    """The traced frame's headers as the pipeline parses them."""
    try:
        pkt = parse_frame_untrusted(frame)
    except MalformedFrame as e:
        return {"len": len(frame), "malformed": e.reason}
    out: dict[str, Any] = {
        "len": len(frame),
        "src_mac": mac_str(pkt.src_mac),
        "dst_mac": mac_str(pkt.dst_mac),
        "vlan": pkt.vlan if pkt.vlan is not None else 0,
        "ethertype": pkt.ethertype,
    }
    if pkt.family:
        src, dst = build.packet_ips(pkt)
        out |= {
            "proto": PROTO_NAMES.get(pkt.proto, str(pkt.proto)),
            "src": str(src),
            "dst": str(dst),
            "sport": pkt.sport,
            "dport": pkt.dport,
        }
        if pkt.proto == PROTO_TCP:
            out["flags"] = flag_letters(pkt.tcp_flags)
        elif pkt.proto in (PROTO_ICMP, PROTO_ICMPV6):
            out |= {"icmp_type": pkt.icmp_type, "icmp_code": pkt.icmp_code}
        if pkt.fragment:
            out["fragment"] = True
    elif pkt.ethertype == ETH_ARP:
        out |= {"arp_op": pkt.arp_op, "arp_spa": _ip4(pkt.arp_spa), "arp_tpa": _ip4(pkt.arp_tpa)}
    return out


def _egress(p: Pipeline, frame: bytes, e: Emit) -> Egress:
    out = PortKind(e.out)
    nic = e.nic or p.nic
    if out is PortKind.VF:
        vpid = p.vf_vpid(e.target)
        name = vm_name(p.vswitch, vpid) if vpid is not None else f"vf{e.target}"
    elif out is PortKind.PEER_DELIVER:
        name = vm_name(p.vswitch, e.target)
    else:
        name = uplink_name(p.team, nic, e.target)
    vlan = int.from_bytes(e.frame[14:16], "big") & 0x0FFF if _tagged(e.frame) else 0
    return Egress(KIND_NAMES[out], e.target, nic, name, vlan, _what(frame, e.frame))


def _tagged(frame: bytes) -> bool:
    return len(frame) >= 18 and int.from_bytes(frame[12:14], "big") == ETH_VLAN


def _what(frame: bytes, out: bytes) -> str:
    """The traced frame itself (maybe re-tagged), or the answer the datapath made up."""
    if vlan_op(frame, out) != -1:
        return "frame"
    try:
        pkt = parse_frame_untrusted(out)
    except MalformedFrame:
        return "frame"
    if pkt.ethertype == ETH_ARP:
        return "arp-reply"
    if pkt.proto == PROTO_TCP and pkt.tcp_flags & TCP_RST:
        return "tcp-rst"
    if pkt.proto in (PROTO_ICMP, PROTO_ICMPV6):
        return "icmp-unreachable"
    return "frame"
