"""The NIC policy a host sends its NICs, typed: segments, interfaces, rules, team, timeouts.

Theory of operation. The policy is declared once here, as frozen, slotted dataclasses, and read
from outside in one place: ``policy_from_plain_untrusted`` (a peer's ``PolicyUpdate``) and the
per-part readers the config loader uses on its TOML tables (``rule_from_plain``,
``segment_from_plain``, ``team_policy_name``, ``timeouts_ms_from_plain``). Every reader raises
only ``PolicyError`` (a ``Malformed``) whose message starts with the offending field's path
(``rules[3].dport: inverted range 2-1``), so the loader turns it into a ``ConfigError`` at
``nicteam up`` and a NIC drops and counts a bad policy. ``Policy.to_plain`` is the wire form:
a msgpack-able dict without floats (timeouts in whole milliseconds, rates in bits/s). The
datapath keeps its own types; ``nicd.policy`` builds them from this one.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from typing import Any, Final, TypeGuard

from wire.addr import mac_bytes, mac_str
from wire.malformed import Malformed

__all__ = [
    "DEFAULT_PRIORITY",
    "PROTO_NAMES",
    "TIMEOUT_NAMES",
    "ActionName",
    "DirectionName",
    "InterfaceSpec",
    "NicUplinks",
    "Policy",
    "PolicyError",
    "RuleSpec",
    "SegmentSpec",
    "TeamPolicyName",
    "policy_from_plain_untrusted",
    "rule_from_plain",
    "rules_from_plain",
    "segment_from_plain",
    "team_policy_name",
    "timeouts_ms_from_plain",
]

#: Priority of a rule that gives none.
DEFAULT_PRIORITY: Final = 1000
PROTO_NAMES: Final[Mapping[str, int]] = {"icmp": 1, "tcp": 6, "udp": 17, "icmpv6": 58}
_PORT_PROTOS: Final = frozenset({6, 17})
# ICMP is family-specific; a rule pairing it with the other family's CIDR could never match.
_PROTO_FAMILY: Final = {1: 4, 58: 6}
#: The conntrack timeouts a policy may set (nicd.datapath.conntrack.Timeouts' fields).
TIMEOUT_NAMES: Final = (
    "tcp_syn_sent", "tcp_syn_recv", "tcp_established", "tcp_fin_wait", "tcp_close_wait",
    "tcp_last_ack", "tcp_time_wait", "tcp_close", "udp_first", "udp_multiple", "icmp_first",
    "icmp_reply", "other_first", "other_multiple",
)  # fmt: skip
MAX_UINT: Final = 2**64 - 1


class PolicyError(Malformed):
    """A policy (or config table of one) is invalid; ``field`` names the offending field."""

    def __init__(self, field_name: str, why: str) -> None:
        super().__init__("policy", why)
        self.args = (f"{field_name}: {why}" if field_name else why,)
        self.field = field_name
        self.why = why


class TeamPolicyName(enum.StrEnum):
    """How the team picks an egress uplink (the datapath's ``TeamPolicy``, by name)."""

    PORT_ID = "port-id"
    L4_HASH = "l4-hash"
    ACTIVE_BACKUP = "active-backup"
    LOAD_BASED = "load-based"


class ActionName(enum.StrEnum):
    """What a rule does with a flow's first packet (the datapath's ``RuleAction``, by name)."""

    ALLOW = "allow"
    DROP = "drop"
    REJECT = "reject"


class DirectionName(enum.StrEnum):
    """Direction of a packet relative to the VM interface a rule protects."""

    FROM_VM = "from-vm"
    TO_VM = "to-vm"


Network = IPv4Network | IPv6Network
IPAddress = IPv4Address | IPv6Address


@dataclass(frozen=True, slots=True)
class SegmentSpec:
    """A layer-2 segment; ``vlan`` is its 802.1Q tag on the uplinks, None for untagged."""

    name: str
    vlan: int | None = None


@dataclass(frozen=True, slots=True)
class InterfaceSpec:
    """One VM interface of the host: its VPID (from the FPAG), VM, MAC, addresses, segment."""

    vpid: int
    vm: str
    mac: bytes
    ips: tuple[IPAddress, ...]
    segment: str


@dataclass(frozen=True, slots=True)
class RuleSpec:
    """One firewall rule as configured; ``None`` fields are wildcards."""

    name: str
    action: ActionName
    priority: int = DEFAULT_PRIORITY
    segment: str | None = None
    direction: DirectionName | None = None
    src: Network | None = None
    dst: Network | None = None
    proto: int | None = None
    sport: tuple[int, int] | None = None
    dport: tuple[int, int] | None = None
    inspect: bool = False
    sw_only: bool = False

    def to_plain(self) -> dict[str, Any]:
        """The rule's table, as ``rule_from_plain`` reads it back."""
        d: dict[str, Any] = {"name": self.name, "priority": self.priority}
        d["action"] = str(self.action)
        optional = {
            "segment": self.segment,
            "direction": None if self.direction is None else str(self.direction),
            "src": None if self.src is None else str(self.src),
            "dst": None if self.dst is None else str(self.dst),
            "proto": self.proto,
            "sport": None if self.sport is None else list(self.sport),
            "dport": None if self.dport is None else list(self.dport),
        }
        d.update((k, v) for k, v in optional.items() if v is not None)
        d.update(inspect=self.inspect, sw_only=self.sw_only)
        return d


@dataclass(frozen=True, slots=True)
class NicUplinks:
    """A NIC of the host and its uplink port names (``uplinks[i]`` has PPID ``i + 1``)."""

    name: str
    uplinks: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Policy:
    """What every NIC of a host runs: topology, firewall, team policy and conntrack timeouts."""

    segments: tuple[SegmentSpec, ...]
    interfaces: tuple[InterfaceSpec, ...]
    rules: tuple[RuleSpec, ...]
    firewall_default: ActionName
    team_policy: TeamPolicyName
    failback: bool
    uplink_bps: int
    load_threshold_pct: int
    nics: tuple[NicUplinks, ...]
    # Overrides of the datapath's defaults, in whole milliseconds (the wire carries no floats).
    timeouts_ms: Mapping[str, int] = field(default_factory=dict)

    def to_plain(self) -> dict[str, Any]:
        """The wire form: nested dicts and lists of str, int and bool."""
        return {
            "segments": [{"name": s.name, "vlan": s.vlan} for s in self.segments],
            "interfaces": [
                {
                    "vpid": i.vpid,
                    "vm": i.vm,
                    "mac": mac_str(i.mac),
                    "ips": [str(ip) for ip in i.ips],
                    "segment": i.segment,
                }
                for i in self.interfaces
            ],
            "rules": [r.to_plain() for r in self.rules],
            "firewall_default": str(self.firewall_default),
            "team_policy": str(self.team_policy),
            "failback": self.failback,
            "uplink_bps": self.uplink_bps,
            "load_threshold_pct": self.load_threshold_pct,
            "timeouts_ms": dict(self.timeouts_ms),
            "nics": [{"name": n.name, "uplinks": list(n.uplinks)} for n in self.nics],
        }


# -- readers: each raises only PolicyError ----------------------------------------------------


def _is_int(v: object) -> TypeGuard[int]:
    # bool is an int subclass; `priority = true` in TOML is a mistake, not 1.
    return isinstance(v, int) and not isinstance(v, bool)


def _table(
    d: object, where: str, allowed: Iterable[str], required: tuple[str, ...]
) -> Mapping[str, Any]:
    if not isinstance(d, Mapping):
        raise PolicyError(where, f"must be a table, got {type(d).__name__}")
    allowed = frozenset(allowed)
    unknown = sorted(str(k) for k in d if k not in allowed)
    if unknown:
        raise PolicyError(f"{where}.{unknown[0]}", "unknown key")
    for key in required:
        if key not in d:
            raise PolicyError(f"{where}.{key}", "missing")
    return d


def _text(v: object, where: str) -> str:
    if not isinstance(v, str) or not v:
        raise PolicyError(where, f"must be a non-empty string, got {v!r}")
    return v


def _list(v: object, where: str) -> Sequence[Any]:
    if isinstance(v, str | bytes) or not isinstance(v, Sequence):
        raise PolicyError(where, f"must be a list, got {type(v).__name__}")
    return v


def _uint(v: object, where: str, high: int = MAX_UINT) -> int:
    if not _is_int(v) or not 0 <= v <= high:
        raise PolicyError(where, f"must be an integer in 0..{high}, got {v!r}")
    return v


def _flag(v: object, where: str) -> bool:
    if not isinstance(v, bool):
        raise PolicyError(where, f"must be true or false, got {v!r}")
    return v


def segment_from_plain(d: object, where: str) -> SegmentSpec:
    """A segment from ``{name="web", vlan=10}``; errors name the field (``segments[0].vlan``)."""
    t = _table(d, where, ("name", "vlan"), ("name",))
    name = _text(t["name"], f"{where}.name")
    vlan = t.get("vlan")
    # 0 is priority tagging and 4095 is reserved (IEEE 802.1Q §9.6).
    if vlan is not None and (not _is_int(vlan) or not 1 <= vlan <= 4094):
        raise PolicyError(f"{where}.vlan", f"must be an integer 1..4094, got {vlan!r}")
    return SegmentSpec(name, vlan)


def interface_from_plain(d: object, where: str) -> InterfaceSpec:
    """One interface of a policy's ``interfaces``; errors name the field."""
    t = _table(d, where, ("vpid", "vm", "mac", "ips", "segment"), ("vpid", "vm", "mac", "segment"))
    vpid = _uint(t["vpid"], f"{where}.vpid", 0xFFFF_FFFF)
    vm = _text(t["vm"], f"{where}.vm")
    segment = _text(t["segment"], f"{where}.segment")
    mac_text = t["mac"]
    try:
        mac = mac_bytes(mac_text) if isinstance(mac_text, str) else b""
    except ValueError:
        mac = b""
    if len(mac) != 6 or mac[0] & 1:
        raise PolicyError(f"{where}.mac", f"not a unicast MAC address: {mac_text!r}")
    ips: list[IPAddress] = []
    for i, text in enumerate(_list(t.get("ips", []), f"{where}.ips")):
        try:
            if not isinstance(text, str):
                raise ValueError
            addr = ip_address(text)
        except ValueError:
            raise PolicyError(f"{where}.ips[{i}]", f"not an IP address: {text!r}") from None
        if addr in ips:
            raise PolicyError(f"{where}.ips[{i}]", f"{text} listed twice")
        ips.append(addr)
    return InterfaceSpec(vpid, vm, mac, tuple(ips), segment)


def team_policy_name(v: object, where: str) -> TeamPolicyName:
    """A team policy by name; errors name the field (``where``)."""
    for policy in TeamPolicyName:
        if v == policy.value:
            return policy
    names = ", ".join(repr(p.value) for p in TeamPolicyName)
    raise PolicyError(where, f"must be one of {names}, got {v!r}")


#: The longest conntrack timeout a policy may set: a year (Linux's longest default is 5 days).
MAX_TIMEOUT_MS: Final = 365 * 86_400 * 1000


def timeouts_ms_from_plain(d: object, where: str = "timeouts_ms") -> dict[str, int]:
    """Conntrack timeout overrides in whole milliseconds; errors name ``where.field``."""
    if not isinstance(d, Mapping):
        raise PolicyError(where, "must be a table of timeouts")
    out: dict[str, int] = {}
    for key, value in d.items():
        if key not in TIMEOUT_NAMES:
            raise PolicyError(f"{where}.{key}", "unknown timeout")
        if not _is_int(value) or not 0 < value <= MAX_TIMEOUT_MS:
            raise PolicyError(
                f"{where}.{key}", f"must be a positive integer (milliseconds) <= {MAX_TIMEOUT_MS}"
            )
        out[key] = value
    return out


# -- rules ------------------------------------------------------------------------------------

_RULE_KEYS: Final = frozenset(
    {"name", "priority", "action", "segment", "direction", "src", "dst", "proto", "sport"}
    | {"dport", "inspect", "sw_only"}
)


def _action(v: object, where: str) -> ActionName:
    for action in ActionName:
        if v == action.value:
            return action
    names = ", ".join(a.value for a in ActionName)
    raise PolicyError(where, f"unknown action {v!r} (use {names})")


def _network(v: object, where: str) -> Network:
    if not isinstance(v, str):
        raise PolicyError(where, f"must be a CIDR string, got {v!r}")
    try:
        return ip_network(v)  # strict: host bits set is a typo worth reporting
    except ValueError as e:
        raise PolicyError(where, f"bad CIDR {v!r}: {e}") from None


def _proto(v: object, where: str) -> int:
    if isinstance(v, str):
        if v in PROTO_NAMES:
            return PROTO_NAMES[v]
        names = ", ".join(PROTO_NAMES)
        raise PolicyError(where, f"unknown protocol {v!r} (use {names} or 0..255)")
    if _is_int(v) and 0 <= v <= 255:
        return int(v)
    raise PolicyError(where, f"must be a protocol name or number 0..255, got {v!r}")


def _port(v: object, where: str) -> int:
    if isinstance(v, str):
        s = v.strip()
        if not (s.isascii() and s.isdigit()):
            raise PolicyError(where, f"bad port {v!r}")
        v = int(s)
    if not _is_int(v) or not 0 <= v <= 65535:
        raise PolicyError(where, f"port must be 0..65535, got {v!r}")
    return int(v)


def _ports(v: object, where: str) -> tuple[int, int]:
    if isinstance(v, str) and "-" in v:
        lo_s, _, hi_s = v.partition("-")
        lo, hi = _port(lo_s, where), _port(hi_s, where)
    elif isinstance(v, list | tuple):
        if len(v) != 2:
            raise PolicyError(where, f"port range must be [lo, hi], got {v!r}")
        lo, hi = _port(v[0], where), _port(v[1], where)
    elif isinstance(v, str) or _is_int(v):
        lo = hi = _port(v, where)
    else:
        raise PolicyError(where, f"must be a port, 'lo-hi' or [lo, hi], got {v!r}")
    if lo > hi:
        raise PolicyError(where, f"inverted range {lo}-{hi}")
    return lo, hi


def rule_from_plain(d: object, where: str) -> RuleSpec:
    """A rule from its config table; ``where`` (e.g. ``rules[3]``) prefixes error fields."""
    if not isinstance(d, Mapping):
        raise PolicyError(where, f"must be a table, got {type(d).__name__}")
    t = _table(d, where, _RULE_KEYS, ())
    for key in ("name", "action"):
        if key not in t:
            raise PolicyError(f"{where}.{key}", "missing")
    direction = None
    if "direction" in t:
        v = t["direction"]
        direction = next((n for n in DirectionName if n.value == v), None)
        if direction is None:
            raise PolicyError(f"{where}.direction", f"must be 'to-vm' or 'from-vm', got {v!r}")

    def opt(key: str, read: Any) -> Any:
        return read(t[key], f"{where}.{key}") if key in t else None

    if not isinstance(t["name"], str) or not t["name"]:
        got = t["name"]
        raise PolicyError(f"{where}.name", f"must be a non-empty string, got {got!r}")
    rule = RuleSpec(
        name=t["name"],
        action=_action(t["action"], f"{where}.action"),
        priority=t.get("priority", DEFAULT_PRIORITY),
        segment=t.get("segment"),
        direction=direction,
        src=opt("src", _network),
        dst=opt("dst", _network),
        proto=opt("proto", _proto),
        sport=opt("sport", _ports),
        dport=opt("dport", _ports),
        inspect=_flag(t.get("inspect", False), f"{where}.inspect"),
        sw_only=_flag(t.get("sw_only", False), f"{where}.sw_only"),
    )
    _check_rule(rule, where)
    return rule


def _check_rule(r: RuleSpec, where: str) -> None:
    """The checks across fields (the datapath's ``Rule`` makes the same ones)."""

    def fail(attr: str, why: str) -> PolicyError:
        return PolicyError(f"{where}.{attr}", why)

    if not _is_int(r.priority) or r.priority < 0:
        raise fail("priority", f"must be an integer >= 0, got {r.priority!r}")
    if r.segment is not None and (not isinstance(r.segment, str) or not r.segment):
        raise fail("segment", f"must be a non-empty string, got {r.segment!r}")
    if r.src is not None and r.dst is not None and r.src.version != r.dst.version:
        raise fail("dst", f"IPv{r.dst.version} but src is IPv{r.src.version}")
    net = r.src if r.src is not None else r.dst
    want = _PROTO_FAMILY.get(r.proto) if r.proto is not None else None
    if net is not None and want is not None and net.version != want:
        raise fail("proto", f"protocol {r.proto} is IPv{want}-only but CIDRs are IPv{net.version}")
    for attr, rng in (("sport", r.sport), ("dport", r.dport)):
        if rng is not None and r.proto is not None and r.proto not in _PORT_PROTOS:
            raise fail(attr, f"ports need proto tcp or udp (or none), not {r.proto}")
    for attr, flag in (("inspect", r.inspect), ("sw_only", r.sw_only)):
        if flag and r.action is not ActionName.ALLOW:
            raise fail(attr, f"only valid with action allow, not {r.action.value}")
    if r.inspect and r.sw_only:
        # inspect keeps every packet in the slow path; sw_only would promise the flow cache.
        raise fail("sw_only", "contradicts inspect (an inspected flow is never offloaded)")


def rules_from_plain(
    rules: object, default: object = "drop", *, where: str = "rules"
) -> tuple[tuple[RuleSpec, ...], ActionName]:
    """Rules and default action from config tables; errors name ``{where}[i].field``."""
    if isinstance(rules, str | bytes) or not isinstance(rules, Sequence):
        raise PolicyError(where, f"must be a list of tables, got {type(rules).__name__}")
    built = tuple(rule_from_plain(d, f"{where}[{i}]") for i, d in enumerate(rules))
    seen: dict[str, int] = {}
    for i, r in enumerate(built):
        if r.name in seen:
            # trace and counters report rules by name, so names must be unique.
            raise PolicyError(f"{where}[{i}].name", f"{r.name!r} duplicates rules[{seen[r.name]}]")
        seen[r.name] = i
    return built, _action(default, "default")


# -- the whole policy -------------------------------------------------------------------------

_POLICY_KEYS: Final = (
    "segments", "interfaces", "rules", "firewall_default", "team_policy", "failback",
    "uplink_bps", "load_threshold_pct", "timeouts_ms", "nics",
)  # fmt: skip


def _nic_uplinks(d: object, where: str) -> NicUplinks:
    t = _table(d, where, ("name", "uplinks"), ("name", "uplinks"))
    ports = _list(t["uplinks"], f"{where}.uplinks")
    uplinks = tuple(_text(p, f"{where}.uplinks[{i}]") for i, p in enumerate(ports))
    return NicUplinks(_text(t["name"], f"{where}.name"), uplinks)


def policy_from_plain_untrusted(d: object) -> Policy:
    """A policy from its wire form (a peer's ``PolicyUpdate``); raises only ``PolicyError``."""
    t = _table(d, "policy", _POLICY_KEYS, _POLICY_KEYS)

    def each(key: str, read: Any) -> tuple[Any, ...]:
        return tuple(read(x, f"{key}[{i}]") for i, x in enumerate(_list(t[key], key)))

    rules, default = rules_from_plain(t["rules"], t["firewall_default"])
    pct = _uint(t["load_threshold_pct"], "load_threshold_pct", 100)
    if pct < 1:
        raise PolicyError("load_threshold_pct", "must be in 1..100")
    policy = Policy(
        segments=each("segments", segment_from_plain),
        interfaces=each("interfaces", interface_from_plain),
        rules=rules,
        firewall_default=default,
        team_policy=team_policy_name(t["team_policy"], "team_policy"),
        failback=_flag(t["failback"], "failback"),
        uplink_bps=max(1, _uint(t["uplink_bps"], "uplink_bps")),
        load_threshold_pct=pct,
        nics=each("nics", _nic_uplinks),
        timeouts_ms=timeouts_ms_from_plain(t["timeouts_ms"]),
    )
    _check_references(policy)
    return policy


def _unique(seen: dict[Any, str], key: object, where: str, what: str) -> None:
    if key in seen:
        raise PolicyError(where, f"{what} already used by {seen[key]}")
    seen[key] = where


def _check_references(p: Policy) -> None:
    """What the datapath needs across fields: names, VLANs, VPIDs, MACs, IPv4s, uplinks unique;
    interfaces on known segments."""
    names: dict[Any, str] = {}
    vlans: dict[Any, str] = {}
    for i, seg in enumerate(p.segments):
        _unique(names, seg.name, f"segments[{i}].name", f"segment {seg.name!r}")
        _unique(vlans, seg.vlan, f"segments[{i}].vlan", f"vlan {seg.vlan}")
    vpids: dict[Any, str] = {}
    addrs: dict[Any, str] = {}
    for i, intf in enumerate(p.interfaces):
        where = f"interfaces[{i}]"
        if intf.segment not in names:
            raise PolicyError(f"{where}.segment", f"unknown segment {intf.segment!r}")
        _unique(vpids, intf.vpid, f"{where}.vpid", f"VPID {intf.vpid}")
        _unique(addrs, (intf.segment, intf.mac), f"{where}.mac", f"MAC {mac_str(intf.mac)}")
        for j, ip in enumerate(intf.ips):
            if ip.version == 4:  # the vswitch answers ARP, so IPv4 is unique per segment
                _unique(addrs, (intf.segment, ip), f"{where}.ips[{j}]", f"{ip}")
    uplinks: dict[Any, str] = {}
    for i, nic in enumerate(p.nics):
        _unique(uplinks, nic.name, f"nics[{i}].name", f"NIC {nic.name!r}")
        for j, port in enumerate(nic.uplinks):
            _unique(uplinks, (nic.name, port), f"nics[{i}].uplinks[{j}]", f"port {port!r}")
