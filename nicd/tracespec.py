"""An operator's words for a trace: a port name and a packet spec, made into the real frame.

`resolve_port` reads a port name (``app1``, ``nic1/p0``) against one NIC's topology, `parse_spec`
reads ``tcp dst=10.0.20.13 dport=80``, and `build_frame` makes the Ethernet frame that packet
would be on that port (the MACs and tag the pipeline knows); `trace_packet` traces it. The
datapath itself (nicd/datapath/trace.py) takes only ports and frames.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address

from nicd.datapath.decision import PortKind
from nicd.datapath.pipeline import Pipeline
from nicd.datapath.trace import FLAG_LETTERS, KIND_NAMES, Trace, TraceError, port_kind, trace
from nicd.datapath.vswitch import Interface, Segment
from wire import build
from wire.addr import mac_bytes
from wire.protocols import PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, TCP_SYN

__all__ = [
    "PacketSpec",
    "TraceError",
    "build_frame",
    "parse_spec",
    "resolve_port",
    "trace_packet",
]

IPAddress = IPv4Address | IPv6Address
_PROTOS = {"tcp": PROTO_TCP, "udp": PROTO_UDP, "icmp": PROTO_ICMP, "icmpv6": PROTO_ICMPV6}
_FIELDS = {
    PROTO_TCP: ("src", "dst", "sport", "dport", "flags", "vlan", "smac", "dmac"),
    PROTO_UDP: ("src", "dst", "sport", "dport", "vlan", "smac", "dmac"),
    PROTO_ICMP: ("src", "dst", "type", "code", "id", "vlan", "smac", "dmac"),
}
_ECHO = {PROTO_ICMP: (8, 0), PROTO_ICMPV6: (128, 129)}  # (request, reply)
DEFAULT_SPORT = 40000
UNTAGGED = 0  # `PacketSpec.vlan`: send the frame without a tag whatever the ingress


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
        if c not in FLAG_LETTERS:
            raise TraceError(
                f"bad token 'flags={text}': unknown TCP flag {c!r}; "
                f"expected letters of {''.join(FLAG_LETTERS)} or 'none'"
            )
        bits |= FLAG_LETTERS[c]
    return bits


def _icmp_type(text: str, version: int) -> int:
    names = {"echo-request": 0, "echo": 0, "echo-reply": 1}
    which = names.get(text.lower())
    if which is not None:
        return _ECHO[PROTO_ICMP if version == 4 else PROTO_ICMPV6][which]
    return _int(text, "type", 0, 255, "echo-request, echo-reply or an ICMP type")


# ---------------------------------------------------------------------------- ports


def resolve_port(p: Pipeline, name: str) -> tuple[PortKind, int]:
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
        return PortKind.VF, home.ppid
    if name.startswith("vf") and name[2:].isdigit() and p.vf_vpid(int(name[2:])) is not None:
        return PortKind.VF, int(name[2:])
    for u in p.team.uplinks:
        if name == u.name or (u.nic == p.nic and name == u.name.rpartition("/")[2]):
            if u.nic != p.nic:
                raise TraceError(f"uplink {name!r} belongs to {u.nic}: trace it there")
            return PortKind.UPLINK, u.ppid
    if name.startswith("uplink") and name[6:].isdigit() and p.own_uplink(int(name[6:])) is not None:
        return PortKind.UPLINK, int(name[6:])
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


# ---------------------------------------------------------------------------- frames


def build_frame(p: Pipeline, ingress: PortKind, port: int, spec: PacketSpec) -> bytes:
    """The real Ethernet frame `spec` describes, as it would arrive on that port of `p`.

    From a VF: untagged, from the VM's MAC, to the MAC the vswitch knows for `dst` in the VM's
    segment (a host VM, or one ARP taught from the uplinks), else to a made-up remote MAC, which
    the pipeline sends to the network like any unknown destination. From an uplink: tagged for
    the segment of the VM owning `dst`, from the MAC learned for `src` or a made-up one.
    """
    ingress = port_kind(ingress)
    dst = spec.dst
    vlan: int | None = None
    if ingress is PortKind.VF or ingress is PortKind.PEER_DELIVER:
        vpid = p.vf_vpid(port) if ingress is PortKind.VF else port
        iface = p.vswitch.interface(vpid) if vpid is not None else None
        if iface is None:
            raise TraceError(f"no VM interface on {KIND_NAMES[ingress]} port {port}")
        if ingress is PortKind.VF:
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


def _need_src(spec: PacketSpec, ingress: PortKind) -> IPAddress:
    if spec.src is None:
        raise TraceError(f"src= is required for a frame arriving on {KIND_NAMES[ingress]}")
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


def trace_packet(p: Pipeline, port_name: str, spec: str, now: float) -> Trace:
    """`trace` from an operator's words: a port name and a packet spec (TraceError if bad)."""
    ingress, port = resolve_port(p, port_name)
    return trace(p, ingress, port, build_frame(p, ingress, port, parse_spec(spec)), now)
