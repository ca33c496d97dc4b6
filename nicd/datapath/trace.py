"""A dry run of one NIC's datapath for one packet, like OVS ``ofproto/trace``.

Theory of operation. `trace` walks the decision order of `Pipeline.process` step by step (fast
tiers, then the slow path's ingress checks, firewall stages, virtual switch and team) and
records each step, but changes nothing: no counters, no conntrack create or update, no fast-tier
install or hit counting, no MAC learning, no load accounting. Where the pipeline reads, the
tracer calls the same lookups (`fast_key`, `ConntrackTable.lookup`, `Classifier.lookup`,
`VSwitch.lookup`, `VpidMap`, `Team.accepts`). Where the pipeline's own step writes, the tracer
runs that same code on scratch objects, so the outcome cannot drift from the real one:

- a conntrack update runs on a copy of the record, inside an empty scratch table; a new record
  is created in that scratch table (the real table is only asked whether it is full);
- an ARP answer comes from a shallow copy of the vswitch with its own counters;
- the team's egress choice comes from a shallow copy of the team with its own rendezvous memo
  (`Team.select` fills a memo, harmless but still a write).

Everything else the pipeline decides with small private helpers (`_offload_flags`, `_tag`,
`_untag`, `_vlan_op`), which are reused here. The unit tests check the result against
`Pipeline.process` on the same frames and that the pickled pipeline is unchanged by a trace.

`parse_spec`, `resolve_port` and `build_frame` turn an operator's words (``app1``,
``tcp dst=10.0.20.13 dport=80``) into the real frame the pipeline would receive; `format_trace`
renders `Trace.as_dict()` (a plain dict, so it can cross the bus) as text.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Any

from nicd.datapath.conntrack import ConntrackTable, CtRecord
from nicd.datapath.pipeline import (
    Decision,
    Emit,
    Ingress,
    Out,
    Pipeline,
    Verdict,
    _offload_flags,
    _Stage,
    _tag,
    _untag,
    _vlan_op,
    path_emits,
)
from nicd.datapath.rules import Direction
from nicd.datapath.rules import RuleAction as Action
from nicd.datapath.teaming import Team, TeamPolicy, Uplink, flow_hash
from nicd.datapath.tiers import FastKey, PathEntry, Tier, fast_key
from nicd.datapath.vswitch import Interface, Segment, VSwitch, VSwitchStats
from nicd.inspect import conntrack_row
from wire import build
from wire.addr import mac_bytes, mac_str
from wire.frames import MalformedFrame, Packet, parse_frame_untrusted
from wire.protocols import (
    ETH_ARP,
    ETH_VLAN,
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_NAMES,
    PROTO_TCP,
    PROTO_UDP,
    TCP_ACK,
    TCP_FIN,
    TCP_PSH,
    TCP_RST,
    TCP_SYN,
)

__all__ = [
    "Egress",
    "PacketSpec",
    "Trace",
    "TraceError",
    "build_frame",
    "format_trace",
    "parse_spec",
    "resolve_port",
    "trace",
    "trace_packet",
]

IPAddress = IPv4Address | IPv6Address
TCP_URG = 0x20
# Letter order as tcpdump prints them; `flags=` accepts them in any order.
_FLAG_LETTERS = {"S": TCP_SYN, "A": TCP_ACK, "F": TCP_FIN, "R": TCP_RST, "P": TCP_PSH, "U": TCP_URG}
_PROTOS = {"tcp": PROTO_TCP, "udp": PROTO_UDP, "icmp": PROTO_ICMP, "icmpv6": PROTO_ICMPV6}
_FIELDS = {
    PROTO_TCP: ("src", "dst", "sport", "dport", "flags", "vlan", "smac", "dmac"),
    PROTO_UDP: ("src", "dst", "sport", "dport", "vlan", "smac", "dmac"),
    PROTO_ICMP: ("src", "dst", "type", "code", "id", "vlan", "smac", "dmac"),
}
_ECHO = {PROTO_ICMP: (8, 0), PROTO_ICMPV6: (128, 129)}  # (request, reply)
DEFAULT_SPORT = 40000
UNTAGGED = 0  # `PacketSpec.vlan`: send the frame without a tag whatever the ingress
_INGRESS_NAMES = {i: i.name.lower() for i in Ingress}
_OUT_NAMES = {o: o.name.lower() for o in Out}
_TIER_NAMES = {t: t.name.lower() for t in Tier}
_DIR_NAMES = {Direction.FROM_VM: "from_vm", Direction.TO_VM: "to_vm"}


class TraceError(ValueError):
    """A packet spec or port name the tracer cannot use; the message says what was expected."""


# ---------------------------------------------------------------------------- packet specs


@dataclass(slots=True)
class PacketSpec:
    """What to trace, as an operator writes it; None fields take defaults from the ports."""

    proto: int  # PROTO_TCP, PROTO_UDP or PROTO_ICMP (ICMPv6 when the addresses are IPv6)
    dst: IPAddress
    src: IPAddress | None = None  # None: the sending VM's own address
    sport: int = DEFAULT_SPORT
    dport: int = 0
    flags: int = TCP_SYN
    icmp_type: int | None = None  # None: echo request
    icmp_code: int = 0
    ident: int = 1
    vlan: int | None = None  # None: as the ingress port sends it; UNTAGGED (0): no tag
    smac: bytes | None = None
    dmac: bytes | None = None


_SPEC_EXAMPLE = "e.g. 'tcp src=10.0.10.11 dst=10.0.20.13 sport=40000 dport=80 flags=S'"


def parse_spec(text: str) -> PacketSpec:
    """Parse ``'<tcp|udp|icmp> key=value ...'``; TraceError names the bad token."""
    words = text.split()
    if not words:
        raise TraceError(f"empty packet spec: expected {_SPEC_EXAMPLE}")
    proto = _PROTOS.get(words[0].lower())
    if proto is None:
        raise TraceError(f"bad token {words[0]!r}: expected the protocol tcp, udp or icmp first")
    allowed = _FIELDS[PROTO_ICMP if proto == PROTO_ICMPV6 else proto]
    values: dict[str, str] = {}
    for word in words[1:]:
        key, eq, value = word.partition("=")
        key = key.lower()
        if not eq or not value:
            raise TraceError(f"bad token {word!r}: expected key=value, {_SPEC_EXAMPLE}")
        if key not in allowed:
            raise TraceError(
                f"bad token {word!r}: unknown field {key!r} for {words[0].lower()}; "
                f"expected one of {', '.join(allowed)}"
            )
        if key in values:
            raise TraceError(f"bad token {word!r}: {key} given twice")
        values[key] = value
    if "dst" not in values:
        raise TraceError(f"missing dst=: the destination address is required, {_SPEC_EXAMPLE}")
    dst = _ip(values["dst"], "dst")
    src = _ip(values["src"], "src") if "src" in values else None
    if src is not None and src.version != dst.version:
        raise TraceError(f"bad token 'src={src}': src and dst must be both IPv4 or both IPv6")
    if proto == PROTO_ICMPV6 and dst.version != 6:
        raise TraceError(f"bad token 'dst={dst}': icmpv6 needs IPv6 addresses")
    spec = PacketSpec(PROTO_ICMP if proto == PROTO_ICMPV6 else proto, dst, src)
    if proto in (PROTO_TCP, PROTO_UDP):
        if "dport" not in values:
            raise TraceError(f"missing dport=: {words[0].lower()} needs a destination port")
        spec.dport = _int(values["dport"], "dport", 0, 65535, "a port number")
        if "sport" in values:
            spec.sport = _int(values["sport"], "sport", 0, 65535, "a port number")
    if "flags" in values:
        spec.flags = _flags(values["flags"])
    if "type" in values:
        spec.icmp_type = _icmp_type(values["type"], dst.version)
    if "code" in values:
        spec.icmp_code = _int(values["code"], "code", 0, 255, "an ICMP code")
    if "id" in values:
        spec.ident = _int(values["id"], "id", 0, 65535, "an echo identifier")
    if "vlan" in values:
        v = values["vlan"]
        untagged = v.lower() in ("none", "untagged")
        spec.vlan = UNTAGGED if untagged else _int(v, "vlan", 1, 4094, "a VLAN id or 'none'")
    for key in ("smac", "dmac"):
        if key in values:
            try:
                mac = mac_bytes(values[key])
            except ValueError:
                raise TraceError(
                    f"bad token '{key}={values[key]}': expected a MAC like 02:00:00:00:00:01"
                ) from None
            setattr(spec, key, mac)
    return spec


def _ip(text: str, key: str) -> IPAddress:
    try:
        return ip_address(text)
    except ValueError:
        raise TraceError(f"bad token '{key}={text}': expected an IPv4 or IPv6 address") from None


def _int(text: str, key: str, lo: int, hi: int, what: str) -> int:
    try:
        n = int(text, 10)
    except ValueError:
        n = -1
    if not lo <= n <= hi:
        raise TraceError(f"bad token '{key}={text}': expected {what} {lo}..{hi}")
    return n


def _flags(text: str) -> int:
    if text.lower() == "none":
        return 0  # no flags at all: an invalid segment, worth tracing too
    bits = 0
    for c in text.upper():
        if c not in _FLAG_LETTERS:
            raise TraceError(
                f"bad token 'flags={text}': unknown TCP flag {c!r}; "
                f"expected letters of {''.join(_FLAG_LETTERS)} or 'none'"
            )
        bits |= _FLAG_LETTERS[c]
    return bits


def _icmp_type(text: str, version: int) -> int:
    names = {"echo-request": 0, "echo": 0, "echo-reply": 1}
    which = names.get(text.lower())
    if which is not None:
        return _ECHO[PROTO_ICMP if version == 4 else PROTO_ICMPV6][which]
    return _int(text, "type", 0, 255, "echo-request, echo-reply or an ICMP type")


def flag_letters(flags: int) -> str:
    """TCP flag bits as letters (``SA``), ``none`` for no flags."""
    return "".join(c for c, bit in _FLAG_LETTERS.items() if flags & bit) or "none"


# ---------------------------------------------------------------------------- ports


def resolve_port(p: Pipeline, name: str) -> tuple[Ingress, int]:
    """An ingress port of `p` from a VM interface name, an uplink name, ``vf<N>``/``uplink<N>``.

    VM interfaces are named as hostd names them (``app1``, ``app1/0`` for a VM with several;
    ``app1/eth0`` is accepted too) and must be homed on `p`; uplinks are `p`'s own
    (``nic1/p0``, or just ``p0``), since a frame can only arrive on an uplink of this NIC.
    """
    names = _interface_names(p)
    vpid = names.get(name)
    if vpid is None and name.startswith("vpid") and name[4:].isdigit():
        vpid = int(name[4:])
    if vpid is not None:
        home = p.map.home(vpid)
        if home is None:
            raise TraceError(f"{name!r} (VPID {vpid}) is not in the VPID map of {p.nic}")
        if home.nic != p.nic:
            raise TraceError(f"{name!r} is homed on {home.nic}, not {p.nic}: trace it there")
        return Ingress.VF, home.ppid
    if name.startswith("vf") and name[2:].isdigit() and int(name[2:]) in p._vf_vpid:
        return Ingress.VF, int(name[2:])
    for u in p.team.uplinks:
        if name == u.name or (u.nic == p.nic and name == u.name.rpartition("/")[2]):
            if u.nic != p.nic:
                raise TraceError(f"uplink {name!r} belongs to {u.nic}: trace it there")
            return Ingress.UPLINK, u.ppid
    if name.startswith("uplink") and name[6:].isdigit() and int(name[6:]) in p._uplinks:
        return Ingress.UPLINK, int(name[6:])
    valid = [i.vm for i in _interfaces(p) if _is_local(p, i.vpid)]
    valid += [u.name for u in p.team.uplinks if u.nic == p.nic]
    raise TraceError(f"unknown port {name!r} on {p.nic}: expected one of {', '.join(valid)}")


def _interfaces(p: Pipeline) -> Iterable[Interface]:
    """Every VM interface of the host the map lists (the ones frames can reach)."""
    for vpid, _nic, _ppid in p.map.entries():
        iface = p.vswitch.interface(vpid)
        if iface is not None:
            yield iface


def _interface_names(p: Pipeline) -> dict[str, int]:
    """Names (and aliases) of the host's VM interfaces -> VPID."""
    names: dict[str, int] = {}
    for iface in _interfaces(p):
        vm, slash, index = iface.vm.partition("/")
        names[iface.vm] = iface.vpid
        if not slash:  # hostd names a VM's only interface after the VM
            names.setdefault(f"{vm}/0", iface.vpid)
            names.setdefault(f"{vm}/eth0", iface.vpid)
        elif index.isdigit():
            names.setdefault(f"{vm}/eth{index}", iface.vpid)
    return names


def _is_local(p: Pipeline, vpid: int) -> bool:
    home = p.map.home(vpid)
    return home is not None and home.nic == p.nic


def _vm_name(p: Pipeline, vpid: int) -> str:
    iface = p.vswitch.interface(vpid)
    return iface.vm if iface is not None else f"vpid{vpid}"


def _uplink_name(p: Pipeline, nic: str, ppid: int) -> str:
    for u in p.team.uplinks:
        if u.nic == nic and u.ppid == ppid:
            return u.name
    return f"{nic}/uplink{ppid}"


def _port_name(p: Pipeline, ingress: Ingress, port: int) -> str:
    if ingress is Ingress.VF:
        vpid = p._vf_vpid.get(port)
        return _vm_name(p, vpid) if vpid is not None else f"vf{port}"
    if ingress is Ingress.PEER_DELIVER:
        return _vm_name(p, port)
    return _uplink_name(p, p.nic, port)


# ---------------------------------------------------------------------------- frames


def build_frame(p: Pipeline, ingress: Ingress, port: int, spec: PacketSpec) -> bytes:
    """The real Ethernet frame `spec` describes, as it would arrive on that port of `p`.

    From a VF: untagged, from the VM's MAC, to the MAC the vswitch knows for `dst` in the VM's
    segment (a host VM, or one ARP taught from the uplinks), else to a made-up remote MAC, which
    the pipeline sends to the network like any unknown destination. From an uplink: tagged for
    the segment of the VM owning `dst`, from the MAC learned for `src` or a made-up one.
    """
    ingress = _ingress(ingress)
    dst = spec.dst
    vlan: int | None = None
    if ingress is Ingress.VF or ingress is Ingress.PEER_DELIVER:
        vpid = p._vf_vpid.get(port) if ingress is Ingress.VF else port
        iface = p.vswitch.interface(vpid) if vpid is not None else None
        if iface is None:
            raise TraceError(f"no VM interface on {_INGRESS_NAMES[ingress]} port {port}")
        if ingress is Ingress.VF:
            src = spec.src or _own_address(iface, dst.version)
            smac = spec.smac or iface.mac
            dmac = spec.dmac or _mac_for(p, iface.segment, dst) or _made_up_mac(dst)
        else:
            src = _need_src(spec, ingress)
            smac = spec.smac or _mac_for(p, iface.segment, src) or _made_up_mac(src)
            dmac = spec.dmac or iface.mac
    else:
        src = _need_src(spec, ingress)
        seg = _wire_segment(p, spec)
        if seg is not None:
            vlan = seg.vlan
        owner = _owner(p, dst, seg.name if seg is not None else None)
        dmac = spec.dmac or (owner.mac if owner else _made_up_mac(dst))
        learned = _mac_for(p, seg.name, src) if seg is not None else None
        smac = spec.smac or learned or _made_up_mac(src)
    if spec.vlan is not None:
        vlan = None if spec.vlan == UNTAGGED else spec.vlan
    if src.version != dst.version:
        raise TraceError(f"src {src} and dst {dst} must be both IPv4 or both IPv6")
    if spec.proto == PROTO_TCP:
        return build.tcp_frame(
            smac, dmac, src, dst, spec.sport, spec.dport, spec.flags, 1, 1, vlan=vlan
        )
    if spec.proto == PROTO_UDP:
        return build.udp_frame(smac, dmac, src, dst, spec.sport, spec.dport, b"trace", vlan=vlan)
    icmp_type = spec.icmp_type
    if icmp_type is None:
        icmp_type = _ECHO[PROTO_ICMP if dst.version == 4 else PROTO_ICMPV6][0]
    return build.icmp_frame(
        smac, dmac, src, dst, icmp_type, spec.icmp_code, ident=spec.ident, seq=1, vlan=vlan
    )


def _ingress(value: int) -> Ingress:
    try:
        return Ingress(value)
    except ValueError:
        kinds = ", ".join(f"{int(i)} ({n})" for i, n in _INGRESS_NAMES.items())
        raise TraceError(f"unknown ingress {value!r}: expected one of {kinds}") from None


def _need_src(spec: PacketSpec, ingress: Ingress) -> IPAddress:
    if spec.src is None:
        raise TraceError(f"src= is required for a frame arriving on {_INGRESS_NAMES[ingress]}")
    return spec.src


def _own_address(iface: Interface, version: int) -> IPAddress:
    for ip in iface.ips:
        if ip.version == version:
            return ip
    raise TraceError(f"{iface.vm} has no IPv{version} address: give src=")


def _owner(p: Pipeline, ip: IPAddress, segment: str | None) -> Interface | None:
    """The host VM interface with address `ip` (in `segment`, unless None)."""
    for iface in _interfaces(p):
        if ip in iface.ips and (segment is None or iface.segment == segment):
            return iface
    return None


def _mac_for(p: Pipeline, segment: str, ip: IPAddress) -> bytes | None:
    """The MAC the vswitch knows for `ip` in `segment`: a host VM's, or one learned by ARP."""
    owner = _owner(p, ip, segment)
    if owner is not None:
        return owner.mac
    if ip.version == 4:
        for e in p.vswitch.learned():
            if e.segment == segment and e.ip == int(ip):
                return e.mac
    return None


def _made_up_mac(ip: IPAddress) -> bytes:
    """A locally administered unicast MAC ending in the address: a host outside this one."""
    return b"\x0a\xff" + int(ip).to_bytes(16, "big")[-4:]


def _wire_segment(p: Pipeline, spec: PacketSpec) -> Segment | None:
    """The segment an uplink frame for `spec` belongs to: by its tag, else by who owns dst."""
    if spec.vlan is not None:
        return p.vswitch.segment_of_vlan(None if spec.vlan == UNTAGGED else spec.vlan)
    owner = _owner(p, spec.dst, None)
    return p.vswitch.segment_of_vpid(owner.vpid) if owner is not None else None


# ---------------------------------------------------------------------------- the trace


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


def trace(p: Pipeline, ingress: Ingress, port: int, frame: bytes, now: float) -> Trace:
    """What `p.process(ingress, port, frame, now)` would do, step by step; `p` is not changed."""
    ingress = _ingress(ingress)
    t = _Tracer(p, now)
    d = t.process(ingress, port, frame)
    return Trace(
        nic=p.nic,
        ingress=_INGRESS_NAMES[ingress],
        port=port,
        port_name=_port_name(p, ingress, port),
        packet=_packet_summary(frame),
        steps=t.steps,
        verdict=d.verdict.name.lower(),
        tier=_TIER_NAMES[d.tier] if d.tier is not None else "",
        rule=d.rule,
        reason=d.reason,
        records=t.records,
        egress=[_egress(p, frame, e) for e in d.emits],
        decision=d,
    )


def trace_packet(p: Pipeline, port_name: str, spec: str, now: float) -> Trace:
    """`trace` from an operator's words: a port name and a packet spec (TraceError if bad)."""
    ingress, port = resolve_port(p, port_name)
    return trace(p, ingress, port, build_frame(p, ingress, port, parse_spec(spec)), now)


class _Tracer:
    """`Pipeline`'s slow-path methods, mirrored in order, reading only (see the module doc).

    Each method has the name of the pipeline method it mirrors and returns the same `Decision`;
    `recs` mirrors the pipeline's `_recs` scratch (records of allowed stages).
    """

    def __init__(self, p: Pipeline, now: float) -> None:
        self.p = p
        self.now = now
        self.steps: list[dict[str, Any]] = []
        self.records: list[dict[str, Any]] = []
        self.recs: list[CtRecord] = []
        # Would-be records live here; `limit` is checked against the real table first.
        self.scratch = ConntrackTable(p.ct.timeouts, max(p.ct.limit, 1))
        self.copies: dict[int, CtRecord] = {}  # id(real record) -> its scratch copy
        self.vswitch = _scratch_vswitch(p.vswitch)
        self.team = _scratch_team(p.team)

    def step(self, kind: str, /, **fields: Any) -> None:
        self.steps.append({"step": kind, **fields})

    # -- process ---------------------------------------------------------------------------

    def process(self, ingress: Ingress, port: int, frame: bytes) -> Decision:
        p = self.p
        self.step(
            "ingress",
            kind=_INGRESS_NAMES[ingress],
            port=port,
            nic=p.nic,
            name=_port_name(p, ingress, port),
        )
        key = fast_key(ingress, port, frame) if ingress != Ingress.PEER_TRANSMIT else None
        if key is None:
            self.step("fast", tier="", hit=False, eligible=False)
        else:
            found = self.fast_lookup(key)
            if found is not None:
                entry, tier = found
                for rec in entry.records:
                    self.records.append(_record_row(p.ct, rec, self.now, "existing"))
                emits = path_emits(entry, frame)
                return Decision(Verdict.FORWARD, tier, "", entry.rule, emits, entry.records)
        d = self.decide(ingress, port, frame)
        if d.verdict is Verdict.FORWARD and self.recs:
            self.install(key, frame, d)
        if d.verdict is Verdict.DROP:
            self.step("drop", reason=d.reason, rule=d.rule)
        return d

    def fast_lookup(self, key: FastKey) -> tuple[PathEntry, Tier] | None:
        p = self.p
        for table, tier in ((p.eswitch, Tier.ESWITCH), (p.cache, Tier.CACHE)):
            entry = table.entries.get(key)
            # An entry of an older map/team/topology generation is a miss (Pipeline.generation).
            if entry is not None and entry.gen == p.generation:
                self.step(
                    "fast",
                    tier=_TIER_NAMES[tier],
                    hit=True,
                    eligible=True,
                    rule=entry.rule,
                    packets=entry.packets,
                )
                return entry, tier
            self.step(
                "fast", tier=_TIER_NAMES[tier], hit=False, eligible=True, stale=entry is not None
            )
        return None

    def install(self, key: FastKey | None, frame: bytes, d: Decision) -> None:
        """Whether `Pipeline._install` would push this path down, and if not, why."""
        p, recs = self.p, self.recs
        cache = eswitch = False
        if key is None:
            why = "not a fast-path frame (TCP SYN/FIN/RST, fragment, IP options, ...)"
        elif not all(r.sw_ok for r in recs):
            why = "not sw_ok: the rule inspects every packet"
        elif not all(r.established for r in recs):
            why = "connection not established yet"
        elif not d.emits or any(_vlan_op(frame, e.frame) == -1 for e in d.emits):
            why = "action not expressible by the fast tiers"
        else:
            c, es = p.cache, p.eswitch
            cache = bool(c.capacity) and (key in c.entries or len(c.entries) < c.capacity)
            hw_ok = all(r.hw_ok for r in recs)
            room = key in es.entries or len(es.entries) < es.capacity
            eswitch = bool(es.capacity) and hw_ok and room
            reasons = [] if cache else ["cache off or full"]
            if eswitch:
                pass
            elif not es.capacity:
                reasons.append("eswitch off")
            elif not hw_ok:
                reasons.append("not hw_ok: sw-only rule or a protocol the hardware cannot do")
            else:
                reasons.append("eswitch full")
            why = "; ".join(reasons)
        self.step("install", cache=cache, eswitch=eswitch, why=why)

    # -- _decide and the ingress kinds -------------------------------------------------------

    def decide(self, ingress: Ingress, port: int, frame: bytes) -> Decision:
        if ingress is Ingress.PEER_TRANSMIT:
            return self.from_peer_transmit(port, frame)
        try:
            pkt = parse_frame_untrusted(frame)
        except MalformedFrame as e:
            self.step("parse", ok=False, reason="malformed." + e.reason)
            return Decision(Verdict.DROP, reason="malformed." + e.reason)
        if ingress is Ingress.VF:
            return self.from_vf(port, pkt, frame)
        if ingress is Ingress.UPLINK:
            return self.from_uplink(port, pkt, frame)
        return self.from_peer_deliver(port, pkt, frame)

    def from_vf(self, ppid: int, pkt: Packet, frame: bytes) -> Decision:
        p = self.p
        vpid = p._vf_vpid.get(ppid)
        if vpid is None:
            return Decision(Verdict.DROP, reason="port.unknown_vf")
        if not p.map.owns(vpid):
            return Decision(Verdict.DROP, reason="fence.not_owner")
        seg = p.vswitch.segment_of_vpid(vpid)
        if seg is None:
            return Decision(Verdict.DROP, reason="l2.no_segment")
        if pkt.vlan is not None:
            return Decision(Verdict.DROP, reason="l2.tagged_from_vm")
        if pkt.ethertype == ETH_ARP:
            reply = self.vswitch.answer_arp(seg.name, pkt) if pkt.arp_op == 1 else None
            self.step("arp", segment=seg.name, op=pkt.arp_op, answered=reply is not None)
            if reply is not None:
                return Decision(Verdict.FORWARD, emits=[Emit(Out.VF, ppid, reply)])
        if pkt.is_broadcast or not pkt.family:
            return self.flood_or_l2(vpid, seg, pkt, frame)
        stage = self.stage(vpid, Direction.FROM_VM, pkt)
        if not stage.allowed:
            return self.denied(stage, vpid, seg, pkt, frame, Direction.FROM_VM)
        d = self.switch(vpid, seg, pkt, frame)
        if d.tier is None or stage.tier < d.tier:
            d.tier = stage.tier
        if d.verdict is Verdict.FORWARD:
            d.rule = stage.rule
        d.records = tuple(self.recs)
        return d

    def from_uplink(self, ppid: int, pkt: Packet, frame: bytes) -> Decision:
        p = self.p
        uplink = p._uplinks.get(ppid)
        if uplink is None:
            return Decision(Verdict.DROP, reason="port.unknown_uplink")
        seg = p.vswitch.segment_of_vlan(pkt.vlan)
        if seg is None:
            return Decision(Verdict.DROP, reason="l2.unknown_vlan")
        if not pkt.src_mac[0] & 1 and p.vswitch.lookup(seg.name, pkt.src_mac) is None:
            # The pipeline learns here (never a host VM's MAC); learning never feeds back into
            # this frame's decision, so the trace only says so.
            arp_ip = pkt.arp_spa if pkt.ethertype == ETH_ARP else 0
            self.step("learn", segment=seg.name, mac=mac_str(pkt.src_mac), ip=_ip4(arp_ip))
        untagged = frame
        if pkt.vlan is not None:
            untagged = _untag(frame)
            pkt = parse_frame_untrusted(untagged)
        if pkt.is_broadcast:
            accepted = self.team.accepts(uplink.name, None, True)
            self.step("team_ingress", uplink=uplink.name, broadcast=True, accepted=accepted)
            if not accepted:
                return Decision(Verdict.DROP, reason="team.not_designated")
            return Decision(Verdict.FORWARD, emits=self.p._flood_emits(seg.name, None, untagged))
        vpid = p.vswitch.lookup(seg.name, pkt.dst_mac)
        self.switch_step(seg, pkt, vpid)
        if vpid is None:
            return Decision(Verdict.DROP, reason="l2.unknown_dst")
        accepted = self.team.accepts(uplink.name, vpid, False)
        self.step("team_ingress", uplink=uplink.name, broadcast=False, accepted=accepted)
        if not accepted:
            return Decision(Verdict.DROP, reason="team.not_accepted")
        return self.to_vpid(vpid, pkt, untagged)

    def from_peer_deliver(self, vpid: int, pkt: Packet, frame: bytes) -> Decision:
        p = self.p
        if not p.map.owns(vpid):
            return Decision(Verdict.DROP, reason="fence.not_owner")
        home = p.map.home(vpid)
        assert home is not None
        if pkt.is_broadcast or not pkt.family:
            return Decision(Verdict.FORWARD, emits=[Emit(Out.VF, home.ppid, frame)])
        return self.to_vpid(vpid, pkt, frame)

    def from_peer_transmit(self, ppid: int, frame: bytes) -> Decision:
        problem = self.p._transmit_problem(ppid, frame)  # reads only
        self.step("transmit", uplink=_uplink_name(self.p, self.p.nic, ppid), ok=not problem)
        if problem:
            return Decision(Verdict.DROP, reason=problem)
        return Decision(Verdict.FORWARD, emits=[Emit(Out.UPLINK, ppid, frame)])

    # -- switching ---------------------------------------------------------------------------

    def switch_step(self, seg: Segment, pkt: Packet, vpid: int | None) -> None:
        home = self.p.map.home(vpid) if vpid is not None else None
        self.step(
            "switch",
            segment=seg.name,
            dst_mac=mac_str(pkt.dst_mac),
            dst_vpid=vpid if vpid is not None else -1,
            name=_vm_name(self.p, vpid) if vpid is not None else "",
            nic=home.nic if home is not None else "",
        )

    def switch(self, vpid: int, seg: Segment, pkt: Packet, frame: bytes) -> Decision:
        dst = self.p.vswitch.lookup(seg.name, pkt.dst_mac)
        self.switch_step(seg, pkt, dst)
        if dst is None:
            return self.to_network(vpid, seg, pkt, frame)
        return self.to_vpid(dst, pkt, frame)

    def to_vpid(self, vpid: int, pkt: Packet, frame: bytes) -> Decision:
        p = self.p
        home = p.map.home(vpid)
        if home is None:
            return Decision(Verdict.DROP, reason="map.unknown_vpid")
        if home.nic != p.nic:
            # The sibling runs this VPID's to-VM stage: its firewall is not traced here.
            self.step("handover", kind="peer_deliver", vpid=vpid, nic=home.nic)
            return Decision(Verdict.FORWARD, emits=[Emit(Out.PEER_DELIVER, vpid, frame, home.nic)])
        if not pkt.family:
            return Decision(Verdict.FORWARD, emits=[Emit(Out.VF, home.ppid, frame)])
        stage = self.stage(vpid, Direction.TO_VM, pkt)
        if not stage.allowed:
            seg = p.vswitch.segment_of_vpid(vpid)
            assert seg is not None
            return self.denied(stage, vpid, seg, pkt, frame, Direction.TO_VM)
        return Decision(
            Verdict.FORWARD,
            stage.tier,
            rule=stage.rule,
            emits=[Emit(Out.VF, home.ppid, frame)],
            records=tuple(self.recs),
        )

    def to_network(self, vpid: int, seg: Segment, pkt: Packet, frame: bytes) -> Decision:
        h = flow_hash(pkt.proto, pkt.src_ip, pkt.dst_ip, pkt.sport, pkt.dport) if pkt.family else 0
        uplink = self.team.select(vpid, h)
        self.team_step(vpid, uplink)
        if uplink is None:
            return Decision(Verdict.DROP, reason="team.no_uplink")
        wire = _tag(frame, seg.vlan)
        return Decision(Verdict.FORWARD, emits=[self.uplink_emit(uplink, wire)])

    def team_step(self, vpid: int, uplink: Uplink | None) -> None:
        policy = self.p.team.policy
        self.step(
            "team",
            policy=policy.value,
            vpid=vpid,
            uplink=uplink.name if uplink is not None else "",
            nic=uplink.nic if uplink is not None else "",
            accounts=policy is TeamPolicy.LOAD_BASED,
        )

    def uplink_emit(self, uplink: Uplink, wire: bytes) -> Emit:
        # Unlike Pipeline._uplink_emit, no load accounting (the team step says it would).
        if uplink.nic == self.p.nic:
            return Emit(Out.UPLINK, uplink.ppid, wire)
        return Emit(Out.PEER_TRANSMIT, uplink.ppid, wire, uplink.nic)

    def flood_or_l2(self, vpid: int, seg: Segment, pkt: Packet, frame: bytes) -> Decision:
        p = self.p
        if pkt.family:
            stage = self.stage(vpid, Direction.FROM_VM, pkt)
            if not stage.allowed:
                return self.denied(stage, vpid, seg, pkt, frame, Direction.FROM_VM)
        if not pkt.is_broadcast:
            dst = p.vswitch.lookup(seg.name, pkt.dst_mac)
            self.switch_step(seg, pkt, dst)
            if dst is None:
                return self.to_network(vpid, seg, pkt, frame)
            home = p.map.home(dst)
            if home is None:
                return Decision(Verdict.DROP, reason="map.unknown_vpid")
            out = Emit(Out.VF, home.ppid, frame)
            if home.nic != p.nic:
                out = Emit(Out.PEER_DELIVER, dst, frame, home.nic)
            return Decision(Verdict.FORWARD, emits=[out])
        self.step("flood", segment=seg.name)
        emits = self.p._flood_emits(seg.name, vpid, frame)
        net = self.to_network(vpid, seg, pkt, frame)
        emits.extend(net.emits)
        return Decision(Verdict.FORWARD, emits=emits)

    def denied(
        self,
        stage: _Stage,
        vpid: int,
        seg: Segment,
        pkt: Packet,
        frame: bytes,
        direction: Direction,
    ) -> Decision:
        d = Decision(Verdict.DROP, stage.tier, stage.reason, stage.rule)
        if stage.reject:
            d.emits = self.reject_emits(vpid, seg, pkt, frame, direction)
        return d

    def reject_emits(
        self, vpid: int, seg: Segment, pkt: Packet, frame: bytes, direction: Direction
    ) -> list[Emit]:
        p = self.p
        if pkt.proto == PROTO_TCP:
            answer = build.tcp_reset_for(pkt)
        else:
            answer = build.icmp_unreachable_for(pkt, frame)
        if direction is Direction.FROM_VM:
            home = p.map.home(vpid)
            return [Emit(Out.VF, home.ppid, answer)] if home else []
        src = p.vswitch.lookup(seg.name, pkt.src_mac)
        if src is None:
            uplink = self.team.select(vpid, 0)
            self.team_step(vpid, uplink)
            return [self.uplink_emit(uplink, _tag(answer, seg.vlan))] if uplink else []
        home = p.map.home(src)
        if home is None:
            return []
        if home.nic == p.nic:
            return [Emit(Out.VF, home.ppid, answer)]
        return [Emit(Out.PEER_DELIVER, src, answer, home.nic)]

    # -- the firewall stage ------------------------------------------------------------------

    def stage(self, vpid: int, direction: Direction, pkt: Packet) -> _Stage:
        if pkt.fragment:
            self.step("firewall", vpid=vpid, direction=_DIR_NAMES[direction], fragment=True)
            return _Stage(False, Tier.SLOW, "ip.fragment")
        stage = self.slow_path(vpid, direction, pkt)
        if stage.record is not None and stage.allowed:
            self.recs.append(stage.record)
        return stage

    def slow_path(self, vpid: int, direction: Direction, pkt: Packet) -> _Stage:
        p = self.p
        where = {"vpid": vpid, "direction": _DIR_NAMES[direction]}
        rec, is_reply, real = self.ct_lookup(vpid, pkt)
        if rec is not None:
            before = _record_row(self.scratch, rec, self.now, "existing" if real else "new")
            punt = rec.tier != Tier.SLOW  # a fast tier holds it, yet this frame came here
            was_established = rec.established
            # The real update, on the copy: same state machine, same validity checks.
            valid = self.scratch.update(rec, is_reply, pkt, self.now)
            evict = valid and was_established and not rec.established
            row = dict(before, next_state=rec.state.name, reply=is_reply, valid=valid, **where)
            self.records.append(row)
            self.step("conntrack", **where, found=True, record=row, punt=punt, evict=evict)
            if not valid:
                return _Stage(False, Tier.SLOW, "ct.invalid", rec.rule, rec)
            return _Stage(True, Tier.SLOW, rule=rec.rule, record=rec)
        self.step("conntrack", **where, found=False)
        seg = p.vswitch.segment_of_vpid(vpid)
        segment = seg.name if seg else ""
        rule = p.classifier.lookup(
            segment, direction, pkt.family, pkt.proto, pkt.src_ip, pkt.dst_ip, pkt.sport, pkt.dport
        )
        action = rule.action if rule is not None else p.classifier.ruleset.default
        name = rule.name if rule is not None else "default"
        self.step(
            "rule",
            **where,
            segment=segment,
            rule=name,
            action=action.value,
            priority=rule.priority if rule is not None else -1,
            inspect=bool(rule and rule.inspect),
            sw_only=bool(rule and rule.sw_only),
        )
        if action is Action.DROP:
            return _Stage(False, Tier.SLOW, "fw.drop", name)
        if action is Action.REJECT:
            return _Stage(False, Tier.SLOW, "fw.reject", name, reject=True)
        problem = p.ct.new_flow_check(pkt)
        if problem is not None:
            self.step("ct_create", **where, created=False, reason=problem)
            return _Stage(False, Tier.SLOW, problem, name)
        sw_ok, hw_capable = _offload_flags(rule, pkt.proto)
        if len(p.ct) + len(self.scratch) >= p.ct.limit:
            self.step("ct_create", **where, created=False, reason="ct.full")
            return _Stage(False, Tier.SLOW, "ct.full", name)
        new = self.scratch.create(vpid, direction, pkt, self.now, name, sw_ok, hw_capable)
        assert new is not None  # the scratch table is never fuller than the real one
        row = dict(_record_row(self.scratch, new, self.now, "new"), **where)
        self.records.append(row)
        self.step("ct_create", **where, created=True, record=row)
        return _Stage(True, Tier.SLOW, rule=name, record=new)

    def ct_lookup(self, zone: int, pkt: Packet) -> tuple[CtRecord | None, bool, CtRecord | None]:
        """(record to work on, is_reply, the real record or None if created in this trace)."""
        real, is_reply = self.p.ct.lookup(zone, pkt)
        if real is not None:
            mine = self.copies.get(id(real))
            if mine is None:
                mine = self.copies[id(real)] = copy.copy(real)
            return mine, is_reply, real
        rec, is_reply = self.scratch.lookup(zone, pkt)
        return rec, is_reply, None


def _scratch_vswitch(vs: VSwitch) -> VSwitch:
    """The vswitch sharing its tables, with counters of its own (`answer_arp` counts)."""
    scratch = copy.copy(vs)
    scratch.stats = VSwitchStats()
    return scratch


def _scratch_team(team: Team) -> Team:
    """The team sharing its state, with a rendezvous memo of its own (`select` fills it)."""
    scratch = copy.copy(team)
    scratch._hrw_cache = {}
    return scratch


def _record_row(ct: ConntrackTable, rec: CtRecord, now: float, status: str) -> dict[str, Any]:
    """A conntrack row as `nicteam conntrack` shows it, plus what the trace knows."""
    row = conntrack_row(ct, rec, now)
    row["status"] = status  # "existing", or "new": this packet would create it
    row["hw_capable"] = rec.hw_capable
    row["origin"] = _DIR_NAMES[Direction(rec.origin)]
    return row


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
    out = Out(e.out)
    nic = e.nic or p.nic
    if out is Out.VF:
        vpid = p._vf_vpid.get(e.target)
        name = _vm_name(p, vpid) if vpid is not None else f"vf{e.target}"
    elif out is Out.PEER_DELIVER:
        name = _vm_name(p, e.target)
    else:
        name = _uplink_name(p, nic, e.target)
    vlan = int.from_bytes(e.frame[14:16], "big") & 0x0FFF if _tagged(e.frame) else 0
    return Egress(_OUT_NAMES[out], e.target, nic, name, vlan, _what(frame, e.frame))


def _tagged(frame: bytes) -> bool:
    return len(frame) >= 18 and int.from_bytes(frame[12:14], "big") == ETH_VLAN


def _what(frame: bytes, out: bytes) -> str:
    """The traced frame itself (maybe re-tagged), or the answer the datapath made up."""
    if _vlan_op(frame, out) != -1:
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


# ---------------------------------------------------------------------------- text


def format_trace(d: dict[str, Any]) -> str:
    """`Trace.as_dict()` as text, like ``ovs-appctl ofproto/trace``: one block per step."""
    pkt = d.get("packet", {})
    ing = d.get("ingress", {})
    lines = [f"Flow: {_flow_text(pkt)}"]
    lines.append(
        f"Ingress: {ing.get('kind', '?')} {ing.get('port', '?')} ({ing.get('name', '?')})"
        f" on {d.get('nic', '?')}"
    )
    lines.append("")
    n = 0
    for s in d.get("steps", []):
        if s.get("step") == "ingress":
            continue
        n += 1
        text = _step_text(s)
        lines.append(f"{n:2d}. {text[0]}")
        lines.extend(f"    {more}" for more in text[1:])
    lines.append("")
    for r in d.get("records", []):  # the fast path names no record in its step: say it here
        lines.append(f"Conntrack ({r.get('status', '?')}): {_record_text(r)}")
    tier = d.get("tier") or "none"
    rule = d.get("rule") or "-"
    if d.get("verdict") == "forward":
        outs = ", ".join(_egress_text(e) for e in d.get("egress", [])) or "nowhere"
        lines.append(f"Final: forward via {outs}")
        lines.append(f"Datapath action: forward (tier {tier}, rule {rule})")
    else:
        answers = [e for e in d.get("egress", []) if e.get("what") != "frame"]
        lines.append(f"Final: drop, reason {d.get('reason', '?')}")
        if answers:
            lines.append("  answered with " + ", ".join(_egress_text(e) for e in answers))
        lines.append(f"Datapath action: drop (tier {tier}, rule {rule})")
    return "\n".join(lines)


def _flow_text(pkt: dict[str, Any]) -> str:
    if "malformed" in pkt:
        return f"malformed frame ({pkt['malformed']}), {pkt.get('len', 0)} bytes"
    l2 = f"{pkt.get('src_mac', '?')} > {pkt.get('dst_mac', '?')}"
    if pkt.get("vlan"):
        l2 += f" vlan {pkt['vlan']}"
    if "proto" not in pkt:
        if "arp_op" in pkt:
            op = "request" if pkt["arp_op"] == 1 else "reply"
            return f"arp {op} {pkt['arp_spa']} asks {pkt['arp_tpa']}, {l2}"
        return f"ethertype 0x{pkt.get('ethertype', 0):04x}, {l2}"
    proto, src, dst = pkt["proto"], pkt.get("src", "?"), pkt.get("dst", "?")
    if proto in ("tcp", "udp"):
        flow = f"{proto} {_bracket(src)}:{pkt.get('sport')} > {_bracket(dst)}:{pkt.get('dport')}"
        if "flags" in pkt:
            flow += f" flags={pkt['flags']}"
    elif "icmp_type" in pkt:
        flow = f"{proto} {src} > {dst} type {pkt['icmp_type']} code {pkt.get('icmp_code', 0)}"
    else:
        flow = f"{proto} {src} > {dst}"
    if pkt.get("fragment"):
        flow += " (fragment)"
    return f"{flow}, {l2}, {pkt.get('len', 0)} bytes"


def _yes(b: Any) -> str:
    return "yes" if b else "no"


def _record_text(r: dict[str, Any]) -> str:
    flags = f"sw_ok={_yes(r.get('sw_ok'))} hw_ok={_yes(r.get('hw_ok'))}"
    if not r.get("hw_ok") and r.get("hw_capable"):
        flags += " (hw once established)"
    src, dst = _bracket(r.get("src")), _bracket(r.get("dst"))
    if r.get("proto") in ("tcp", "udp"):
        tup = f"{r['proto']} {src}:{r.get('sport')} > {dst}:{r.get('dport')}"
    else:
        tup = f"{r.get('proto')} {src} > {dst} id {r.get('sport')}"
    return f"zone {r.get('zone')} {tup} {r.get('state')} {flags} tier={r.get('tier')}"


def _bracket(addr: Any) -> str:
    return f"[{addr}]" if ":" in str(addr) else str(addr)


def _step_text(s: dict[str, Any]) -> list[str]:
    kind = s.get("step")
    where = f"vpid {s.get('vpid')} {str(s.get('direction', '')).replace('_', '-')}"
    if kind == "fast":
        if not s.get("eligible", True):
            return ["fast path: frame not eligible (SYN/FIN/RST, fragment, ...): slow path"]
        if s.get("hit"):
            return [f"fast path: {s['tier']} hit, rule {s.get('rule')} ({s.get('packets')} pkts)"]
        stale = " (stale entry: map/team/topology changed)" if s.get("stale") else ""
        return [f"fast path: {s.get('tier')} miss{stale}"]
    if kind == "parse":
        return [f"parse: {s.get('reason')}"]
    if kind == "arp":
        return [f"arp in {s.get('segment')}: {'answered here' if s.get('answered') else 'passed'}"]
    if kind == "learn":
        ip = f" at {s['ip']}" if s.get("ip") else ""
        return [f"learn: {s.get('mac')}{ip} in {s.get('segment')} (by the pipeline, not the trace)"]
    if kind == "team_ingress":
        ok = "accepted" if s.get("accepted") else "not accepted"
        return [f"team ingress: {ok} on {s.get('uplink')}"]
    if kind == "switch":
        dst = s.get("dst_mac")
        if s.get("dst_vpid", -1) < 0:
            return [f"switch {s.get('segment')}: {dst} is not a host VM -> network"]
        return [
            f"switch {s.get('segment')}: {dst} -> vpid {s.get('dst_vpid')} ({s.get('name')})"
            f" homed on {s.get('nic') or '?'}"
        ]
    if kind == "handover":
        return [
            f"handover: vpid {s.get('vpid')} lives on {s.get('nic')}; its to-VM firewall runs there"
        ]
    if kind == "team":
        if not s.get("uplink"):
            return [f"team {s.get('policy')}: no live uplink"]
        acct = " (counts toward its load)" if s.get("accounts") else ""
        return [
            f"team {s.get('policy')}: vpid {s.get('vpid')} -> uplink {s.get('uplink')}"
            f" on {s.get('nic')}{acct}"
        ]
    if kind == "firewall":
        return [f"firewall {where}: IP fragment, dropped"]
    if kind == "conntrack":
        if not s.get("found"):
            return [f"conntrack {where}: no record, rules decide"]
        r = s.get("record", {})
        lines = [
            f"conntrack {where}: {r.get('status')} record, "
            f"{'reply' if r.get('reply') else 'original'} direction, rule {r.get('rule')}",
            _record_text(r),
        ]
        if not r.get("valid"):
            lines.append(f"invalid in state {r.get('state')}")
        elif r.get("next_state") != r.get("state"):
            lines.append(f"-> {r.get('next_state')}")
        if s.get("punt"):
            lines.append("punted from the fast tiers (TCP SYN/FIN/RST or a miss)")
        if s.get("evict"):
            lines.append("leaves ESTABLISHED: its fast-tier entries would be evicted")
        return lines
    if kind == "rule":
        extra = "".join(f" +{k}" for k in ("inspect", "sw_only") if s.get(k))
        prio = f" priority {s['priority']}" if s.get("priority", -1) >= 0 else ""
        return [
            f"rule {s.get('rule')!r}{prio} ({where}, segment {s.get('segment')}):"
            f" {s.get('action')}{extra}"
        ]
    if kind == "ct_create":
        if not s.get("created"):
            return [f"conntrack {where}: no record created ({s.get('reason')})"]
        return [f"conntrack {where}: would create", _record_text(s.get("record", {}))]
    if kind == "transmit":
        return [f"transmit handover on {s.get('uplink')}: {'ok' if s.get('ok') else 'refused'}"]
    if kind == "flood":
        return [f"flood in {s.get('segment')}: every other VM and the network"]
    if kind == "install":
        tiers = [t for t in ("eswitch", "cache") if s.get(t)]
        if tiers:
            more = f" ({s['why']})" if s.get("why") else ""
            return [f"would install in {' and '.join(tiers)}{more}"]
        return [f"no fast-tier install: {s.get('why')}"]
    if kind == "drop":
        return [f"drop: {s.get('reason')}" + (f" (rule {s['rule']})" if s.get("rule") else "")]
    return [" ".join(f"{k}={v}" for k, v in s.items())]


def _egress_text(e: dict[str, Any]) -> str:
    out = e.get("out")
    if out == "vf":
        where = f"vf {e.get('port')} ({e.get('name')})"
    elif out == "uplink":
        where = f"uplink {e.get('name')}"
    elif out == "peer_deliver":
        where = f"peer_deliver to {e.get('nic')} vpid {e.get('port')} ({e.get('name')})"
    else:
        where = f"peer_transmit to {e.get('nic')} uplink {e.get('name')}"
    if e.get("vlan"):
        where += f" vlan {e['vlan']}"
    if e.get("what", "frame") != "frame":
        where += f" [{e['what']}]"
    return where
