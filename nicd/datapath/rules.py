"""The slow-path firewall rule model: rules and rule sets (the datapath's own types).

A rule matches on segment, direction (relative to the VM interface), source and destination
CIDR, IP protocol and source/destination port ranges; every field left out is a wildcard.
Rules are evaluated by ascending ``priority``; equal priorities keep the order given. Matching
semantics (implemented by ``classifier.Classifier``):

- a rule with a port range only matches TCP and UDP packets;
- a rule with an IPv4 CIDR never matches an IPv6 packet and vice versa; a rule without any CIDR
  matches both families.

Everything is validated on construction; a bad rule raises ``RuleError`` naming the field. The
config (TOML) form is read in ``bus.policy`` and built into these types by ``nicd.policy``.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network

__all__ = [
    "DEFAULT_PRIORITY",
    "PROTO_ICMP",
    "PROTO_ICMPV6",
    "PROTO_NAMES",
    "PROTO_TCP",
    "PROTO_UDP",
    "Direction",
    "Rule",
    "RuleAction",
    "RuleError",
    "RuleSet",
]

PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_UDP = 17
PROTO_ICMPV6 = 58
PROTO_NAMES: Mapping[str, int] = {
    "icmp": PROTO_ICMP,
    "tcp": PROTO_TCP,
    "udp": PROTO_UDP,
    "icmpv6": PROTO_ICMPV6,
}
_PORT_PROTOS = frozenset({PROTO_TCP, PROTO_UDP})
# ICMP is family-specific; a rule pairing it with the other family's CIDR could never match.
_PROTO_FAMILY = {PROTO_ICMP: 4, PROTO_ICMPV6: 6}

#: Priority of a config rule that gives none.
DEFAULT_PRIORITY = 1000


class Direction(enum.IntEnum):
    """Direction of a packet relative to the VM interface the rule protects."""

    FROM_VM = 0
    TO_VM = 1


class RuleAction(enum.Enum):
    """What the slow path does with the first packet of a flow a rule matches."""

    ALLOW = "allow"
    DROP = "drop"
    REJECT = "reject"


class RuleError(ValueError):
    """A rule or rule set is invalid; ``field`` names the offending field."""

    def __init__(self, field: str, reason: str, *, attr: str | None = None) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason
        self.attr = attr  # the Rule attribute at fault


Network = IPv4Network | IPv6Network
PortRange = tuple[int, int]


@dataclass(frozen=True, slots=True)
class Rule:
    """One firewall rule; ``None`` fields are wildcards. Validated on construction."""

    name: str
    priority: int
    action: RuleAction
    segment: str | None = None
    direction: Direction | None = None
    src: IPv4Network | IPv6Network | None = None
    dst: IPv4Network | IPv6Network | None = None
    proto: int | None = None
    sport: tuple[int, int] | None = None
    dport: tuple[int, int] | None = None
    inspect: bool = False
    sw_only: bool = False

    def __post_init__(self) -> None:
        _check_rule(self)

    @property
    def family(self) -> int | None:
        """IP version the rule's CIDRs restrict it to (4 or 6), or None if it has no CIDR."""
        net = self.src if self.src is not None else self.dst
        return None if net is None else net.version


def _fail(rule: Rule, attr: str, reason: str) -> RuleError:
    return RuleError(f"rule {rule.name!r}.{attr}", reason, attr=attr)


def _is_int(v: object) -> bool:
    # bool is an int subclass; `priority = true` in TOML is a mistake, not 1.
    return isinstance(v, int) and not isinstance(v, bool)


def _check_rule(r: Rule) -> None:
    if not isinstance(r.name, str) or not r.name:
        raise RuleError("rule.name", f"must be a non-empty string, got {r.name!r}", attr="name")
    if not _is_int(r.priority) or r.priority < 0:
        raise _fail(r, "priority", f"must be an integer >= 0, got {r.priority!r}")
    if not isinstance(r.action, RuleAction):
        raise _fail(r, "action", f"must be a RuleAction, got {r.action!r}")
    if r.segment is not None and (not isinstance(r.segment, str) or not r.segment):
        raise _fail(r, "segment", f"must be a non-empty string, got {r.segment!r}")
    if r.direction is not None and not isinstance(r.direction, Direction):
        raise _fail(r, "direction", f"must be a Direction, got {r.direction!r}")
    for attr in ("src", "dst"):
        net = getattr(r, attr)
        if net is not None and not isinstance(net, IPv4Network | IPv6Network):
            raise _fail(r, attr, f"must be an IPv4Network or IPv6Network, got {net!r}")
    if r.src is not None and r.dst is not None and r.src.version != r.dst.version:
        raise _fail(r, "dst", f"IPv{r.dst.version} but src is IPv{r.src.version}")
    if r.proto is not None:
        if not _is_int(r.proto) or not 0 <= r.proto <= 255:
            raise _fail(r, "proto", f"must be an IP protocol number 0..255, got {r.proto!r}")
        fam = r.family
        want = _PROTO_FAMILY.get(r.proto)
        if fam is not None and want is not None and fam != want:
            raise _fail(r, "proto", f"protocol {r.proto} is IPv{want}-only but CIDRs are IPv{fam}")
    for attr in ("sport", "dport"):
        rng = getattr(r, attr)
        if rng is None:
            continue
        if (
            not isinstance(rng, tuple)
            or len(rng) != 2
            or not all(_is_int(p) and 0 <= p <= 65535 for p in rng)
        ):
            raise _fail(r, attr, f"must be a (lo, hi) tuple of ports 0..65535, got {rng!r}")
        if rng[0] > rng[1]:
            raise _fail(r, attr, f"inverted range {rng[0]}-{rng[1]}")
        if r.proto is not None and r.proto not in _PORT_PROTOS:
            raise _fail(r, attr, f"ports need proto tcp or udp (or none), not {r.proto}")
    for attr in ("inspect", "sw_only"):
        flag = getattr(r, attr)
        if not isinstance(flag, bool):
            raise _fail(r, attr, f"must be a boolean, got {flag!r}")
        if flag and r.action is not RuleAction.ALLOW:
            raise _fail(r, attr, f"only valid with action allow, not {r.action.value}")
    if r.inspect and r.sw_only:
        # inspect keeps every packet in the slow path; sw_only would promise the flow cache.
        raise _fail(r, "sw_only", "contradicts inspect (an inspected flow is never offloaded)")


@dataclass(frozen=True, slots=True)
class RuleSet:
    """An ordered, versioned set of rules plus the action applied when no rule matches."""

    rules: tuple[Rule, ...]
    default: RuleAction = RuleAction.DROP
    version: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.rules, tuple):
            raise RuleError("rules", f"must be a tuple, got {type(self.rules).__name__}")
        seen: dict[str, int] = {}
        for i, r in enumerate(self.rules):
            if not isinstance(r, Rule):
                raise RuleError(f"rules[{i}]", f"must be a Rule, got {type(r).__name__}")
            if r.name in seen:
                # trace and counters report rules by name, so names must be unique.
                raise RuleError(f"rules[{i}].name", f"{r.name!r} duplicates rules[{seen[r.name]}]")
            seen[r.name] = i
        if not isinstance(self.default, RuleAction):
            raise RuleError("default", f"must be a RuleAction, got {self.default!r}")
        if not _is_int(self.version) or self.version < 0:
            raise RuleError("version", f"must be an integer >= 0, got {self.version!r}")

    def evaluation_order(self) -> tuple[Rule, ...]:
        """The rules in the order they are evaluated: by priority, ties in the order given."""
        return tuple(sorted(self.rules, key=lambda r: r.priority))  # sorted() is stable
