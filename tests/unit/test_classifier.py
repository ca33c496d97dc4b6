"""The rule classifier: edge cases by hand, then agreement with a naive linear scan."""

from __future__ import annotations

import random
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from itertools import product
from unittest.mock import patch

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nicd.datapath import classifier
from nicd.datapath.classifier import Classifier, _RangeTable
from nicd.datapath.rules import Direction, Rule, RuleAction, RuleSet
from nicd.policy import ruleset_from_config

TCP, UDP, ICMP, ICMPV6, GRE = 6, 17, 1, 58, 47
FROM, TO = Direction.FROM_VM, Direction.TO_VM


@dataclass(frozen=True)
class Pkt:
    """A packet's classifier inputs, written the readable way."""

    src: str = "10.0.0.1"
    dst: str = "10.0.0.2"
    proto: int = TCP
    sport: int = 40000
    dport: int = 80
    segment: str = "web"
    direction: Direction = TO

    def args(self) -> tuple[str, Direction, int, int, int, int, int, int]:
        s, d = ip_address(self.src), ip_address(self.dst)
        assert s.version == d.version
        ported = self.proto in (TCP, UDP)
        return (
            self.segment,
            self.direction,
            s.version,
            self.proto,
            int(s),
            int(d),
            self.sport if ported else 0,
            self.dport if ported else 0,
        )


def naive_lookup(
    rules: Sequence[Rule],
    segment: str,
    direction: Direction,
    family: int,
    proto: int,
    src: int,
    dst: int,
    sport: int,
    dport: int,
) -> Rule | None:
    """The obviously correct reference: scan the rules in priority order (sort is stable)."""
    addr = IPv4Address if family == 4 else IPv6Address
    packet_src, packet_dst = addr(src), addr(dst)
    for r in sorted(rules, key=lambda r: r.priority):
        if r.segment is not None and r.segment != segment:
            continue
        if r.direction is not None and r.direction != direction:
            continue
        if r.src is not None and (r.src.version != family or packet_src not in r.src):
            continue
        if r.dst is not None and (r.dst.version != family or packet_dst not in r.dst):
            continue
        if r.proto is not None and r.proto != proto:
            continue
        if (r.sport is not None or r.dport is not None) and proto not in (TCP, UDP):
            continue
        if r.sport is not None and not r.sport[0] <= sport <= r.sport[1]:
            continue
        if r.dport is not None and not r.dport[0] <= dport <= r.dport[1]:
            continue
        return r
    return None


def classify(rules: list[dict[str, object]], pkt: Pkt) -> str | None:
    """Name of the rule the classifier picks for pkt (checked against the naive scan)."""
    rs = ruleset_from_config(rules)
    hit = Classifier(rs).lookup(*pkt.args())
    assert hit is naive_lookup(rs.rules, *pkt.args())
    return None if hit is None else hit.name


def rule(name: str, **kw: object) -> dict[str, object]:
    return {"name": name, "action": "allow", **kw}


# -- hand-written cases --------------------------------------------------------------------------


def test_empty_ruleset_matches_nothing() -> None:
    c = Classifier(RuleSet((), default=RuleAction.REJECT, version=3))
    assert c.lookup(*Pkt().args()) is None
    assert c.version == 3 and len(c) == 0 and c.ruleset.default is RuleAction.REJECT


def test_priority_lower_number_first() -> None:
    rules = [rule("low", priority=200), rule("high", priority=100), rule("mid", priority=150)]
    assert classify(rules, Pkt()) == "high"


def test_priority_ties_keep_config_order() -> None:
    rules = [rule("b", priority=5), rule("a", priority=5), rule("c", priority=1, proto="udp")]
    assert classify(rules, Pkt()) == "b"
    assert classify(rules, Pkt(proto=UDP)) == "c"


def test_first_match_skips_higher_priority_non_matches() -> None:
    rules = [
        rule("ssh", priority=1, proto="tcp", dport=22),
        rule("web", priority=2, proto="tcp", dport="80-443"),
        rule("any", priority=3),
    ]
    assert classify(rules, Pkt(dport=22)) == "ssh"
    assert classify(rules, Pkt(dport=80)) == "web"
    assert classify(rules, Pkt(dport=23)) == "any"


@pytest.mark.parametrize(
    ("src", "expected"),
    [
        ("0.0.0.0", "all-v4"),
        ("255.255.255.255", "all-v4"),
        ("192.168.1.10", "host"),
        ("192.168.1.9", "net"),
        ("192.168.1.11", "net"),
        ("192.168.1.0", "net"),
        ("192.168.1.255", "net"),
        ("192.168.0.255", "all-v4"),
        ("192.168.2.0", "all-v4"),
    ],
)
def test_ipv4_cidr_edges(src: str, expected: str) -> None:
    rules = [
        rule("host", priority=1, src="192.168.1.10/32"),
        rule("net", priority=2, src="192.168.1.0/24"),
        rule("all-v4", priority=3, src="0.0.0.0/0"),
    ]
    assert classify(rules, Pkt(src=src)) == expected


@pytest.mark.parametrize(
    ("dst", "expected"),
    [
        ("::", "all-v6"),
        ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "all-v6"),
        ("2001:db8::1", "host"),
        ("2001:db8::", "net"),
        ("2001:db8::2", "net"),
        ("2001:db8::ffff:ffff:ffff:ffff", "net"),
        ("2001:db8:0:1::", "all-v6"),
        ("2001:db7:ffff:ffff:ffff:ffff:ffff:ffff", "all-v6"),
    ],
)
def test_ipv6_cidr_edges(dst: str, expected: str) -> None:
    rules = [
        rule("host", priority=1, dst="2001:db8::1/128"),
        rule("net", priority=2, dst="2001:db8::/64"),
        rule("all-v6", priority=3, dst="::/0"),
    ]
    assert classify(rules, Pkt(src="2001:db8::99", dst=dst)) == expected


@pytest.mark.parametrize(
    ("dport", "expected"),
    [
        (0, "zero"),
        (1, "low"),
        (1023, "low"),
        (1024, "single"),
        (1025, "high"),
        (65534, "high"),
        (65535, "top"),
    ],
)
def test_port_range_edges(dport: int, expected: str) -> None:
    rules = [
        rule("zero", priority=1, dport=0),
        rule("top", priority=1, dport=65535),
        rule("single", priority=2, dport=1024),
        rule("low", priority=3, dport="1-1023"),
        rule("high", priority=3, dport="1025-65535"),
    ]
    assert classify(rules, Pkt(dport=dport)) == expected


def test_sport_and_dport_both_must_match() -> None:
    rules = [rule("both", sport="1000-2000", dport=53, proto="udp")]
    assert classify(rules, Pkt(proto=UDP, sport=1000, dport=53)) == "both"
    assert classify(rules, Pkt(proto=UDP, sport=2000, dport=53)) == "both"
    assert classify(rules, Pkt(proto=UDP, sport=2001, dport=53)) is None
    assert classify(rules, Pkt(proto=UDP, sport=1500, dport=54)) is None
    assert classify(rules, Pkt(proto=TCP, sport=1500, dport=53)) is None


def test_family_separation() -> None:
    rules = [
        rule("v4", priority=1, src="0.0.0.0/0"),
        rule("v6", priority=2, dst="::/0"),
        rule("any", priority=3),
    ]
    assert classify(rules, Pkt(src="10.0.0.1", dst="10.0.0.2")) == "v4"
    assert classify(rules, Pkt(src="2001:db8::1", dst="2001:db8::2")) == "v6"
    # An IPv4 CIDR never matches an IPv6 packet, even one whose integer value falls inside it.
    only_v4 = [rule("v4", src="0.0.0.0/0")]
    assert classify(only_v4, Pkt(src="::1", dst="::2")) is None
    only_v6 = [rule("v6", src="::/96")]
    assert classify(only_v6, Pkt(src="0.0.0.1", dst="0.0.0.2")) is None


def test_proto_wildcard() -> None:
    rules = [rule("tcp", priority=1, proto="tcp"), rule("any", priority=2)]
    assert classify(rules, Pkt(proto=TCP)) == "tcp"
    for proto in (UDP, ICMP, GRE, 0, 255):
        assert classify(rules, Pkt(proto=proto)) == "any"
    assert classify(rules, Pkt(src="::1", dst="::2", proto=ICMPV6)) == "any"


def test_port_rule_without_proto_matches_only_tcp_and_udp() -> None:
    rules = [rule("p", priority=1, dport="0-65535"), rule("rest", priority=2)]
    assert classify(rules, Pkt(proto=TCP)) == "p"
    assert classify(rules, Pkt(proto=UDP)) == "p"
    # Non-TCP/UDP packets carry ports 0, which the range holds; still no match.
    assert classify(rules, Pkt(proto=ICMP)) == "rest"
    assert classify(rules, Pkt(proto=GRE)) == "rest"


def test_named_protocol_partition_and_unnamed_protocol() -> None:
    rules = [
        rule("gre", priority=1, proto=GRE),
        rule("icmp", priority=2, proto="icmp"),
        rule("v6-icmp", priority=3, proto="icmpv6", src="::/0"),
        rule("rest", priority=4),
    ]
    assert classify(rules, Pkt(proto=GRE)) == "gre"
    assert classify(rules, Pkt(proto=ICMP)) == "icmp"
    assert classify(rules, Pkt(proto=ICMPV6)) == "rest"  # no v4 ICMPv6 rule
    assert classify(rules, Pkt(src="::1", dst="::2", proto=ICMPV6)) == "v6-icmp"
    assert classify(rules, Pkt(proto=99)) == "rest"


def test_segment_and_direction_wildcards() -> None:
    rules = [
        rule("web-in", priority=1, segment="web", direction="to-vm"),
        rule("web-any", priority=2, segment="web"),
        rule("any-out", priority=3, direction="from-vm"),
        rule("db-in", priority=4, segment="db", direction="to-vm"),
    ]
    assert classify(rules, Pkt(segment="web", direction=TO)) == "web-in"
    assert classify(rules, Pkt(segment="web", direction=FROM)) == "web-any"
    assert classify(rules, Pkt(segment="db", direction=FROM)) == "any-out"
    assert classify(rules, Pkt(segment="db", direction=TO)) == "db-in"
    assert classify(rules, Pkt(segment="nowhere", direction=FROM)) == "any-out"
    assert classify(rules, Pkt(segment="nowhere", direction=TO)) is None


def test_lookup_returns_the_rule_object() -> None:
    rs = ruleset_from_config([rule("a", proto="udp"), rule("b")], version=9)
    c = Classifier(rs)
    assert c.lookup(*Pkt(proto=UDP).args()) is rs.rules[0]
    assert c.lookup(*Pkt(proto=TCP).args()) is rs.rules[1]
    assert c.ruleset is rs and c.version == 9 and len(c) == 2


# -- agreement with the naive scan ---------------------------------------------------------------

V4_BASE = int(IPv4Address("10.0.0.0"))  # packets live in 10.0.0.0/28
V6_BASE = int(IPv6Address("2001:db8::"))  # and 2001:db8::/124
SEGMENTS = ("a", "b")
# Every way the classifier can split: the budget decides in production; here we force each one.
SPLITS = [(True, True), (True, False), (False, True), (False, False)]
# Head level sizes: the default, and tiny ones so that small rule sets also get a second level.
HEADS = [None, 1, 5]


def networks(family: int) -> st.SearchStrategy[IPv4Network | IPv6Network]:
    """CIDRs from /0 to host routes around the packets' 16 addresses."""
    width, base = (32, V4_BASE) if family == 4 else (128, V6_BASE)
    return st.builds(
        lambda plen, host: ip_network((base + host, plen), strict=False),
        st.sampled_from([0, *range(width - 6, width + 1)]),
        st.integers(0, 15),
    )


port_ranges = st.tuples(st.integers(0, 20), st.integers(0, 20)).map(lambda t: (min(t), max(t)))


@st.composite
def rule_sets(draw: st.DrawFn) -> RuleSet:
    rules = []
    for i in range(draw(st.integers(1, 60))):
        family = draw(st.sampled_from([None, 4, 6]))
        src = dst = None
        if family is not None:
            src = draw(st.none() | networks(family))
            dst = draw(st.none() | networks(family))
        protos: list[int | None] = [None, TCP, UDP, GRE]
        protos += [ICMP] if family != 6 else []
        protos += [ICMPV6] if family != 4 else []
        proto = draw(st.sampled_from(protos))
        ported = proto in (None, TCP, UDP)
        rules.append(
            Rule(
                name=f"r{i}",
                priority=draw(st.integers(0, 5)),  # small, so ties are common
                action=draw(st.sampled_from(RuleAction)),
                segment=draw(st.sampled_from([None, *SEGMENTS])),
                direction=draw(st.sampled_from([None, FROM, TO])),
                src=src,
                dst=dst,
                proto=proto,
                sport=draw(st.none() | port_ranges) if ported else None,
                dport=draw(st.none() | port_ranges) if ported else None,
            )
        )
    return RuleSet(tuple(rules))


@st.composite
def packets(draw: st.DrawFn) -> tuple[str, Direction, int, int, int, int, int, int]:
    family = draw(st.sampled_from([4, 6]))
    base, top = (V4_BASE, 2**32 - 1) if family == 4 else (V6_BASE, 2**128 - 1)
    addrs = st.integers(0, 15).map(lambda h: base + h) | st.sampled_from([0, top])
    proto = draw(st.sampled_from([TCP, UDP, ICMP, ICMPV6, GRE]))
    ported = proto in (TCP, UDP)
    return (
        draw(st.sampled_from([*SEGMENTS, "c"])),
        draw(st.sampled_from([FROM, TO])),
        family,
        proto,
        draw(addrs),
        draw(addrs),
        draw(st.integers(0, 20)) if ported else 0,
        draw(st.integers(0, 20) | st.just(65535)) if ported else 0,
    )


def build(rs: RuleSet, split: tuple[bool, bool] | None, head: int | None) -> Classifier:
    """A classifier with its split and head size forced (None: its own choice)."""
    with ExitStack() as stack:
        if split is not None:
            stack.enter_context(
                patch.object(Classifier, "_choose_split", staticmethod(lambda *_: split))
            )
        if head is not None:
            stack.enter_context(patch.object(classifier, "_HEAD", head))
        return Classifier(rs)


def assert_agrees(
    rs: RuleSet, pkts: Sequence[tuple], split: tuple[bool, bool] | None, head: int | None = None
) -> None:
    c = build(rs, split, head)
    for pkt in pkts:
        assert c.lookup(*pkt) is naive_lookup(rs.rules, *pkt), pkt


@settings(max_examples=200, deadline=None)
@given(rs=rule_sets(), pkts=st.lists(packets(), min_size=1, max_size=40))
def test_matches_naive_scan(rs: RuleSet, pkts: list[tuple]) -> None:
    # One draw, every build variant: data generation is the slow part.
    for split, head in product([None, *SPLITS], HEADS):
        assert_agrees(rs, pkts, split, head)


@settings(max_examples=300, deadline=None)
@given(
    wildcard=st.integers(0, 7),
    ranges=st.lists(
        st.tuples(st.integers(0, 1023), st.integers(1, 300)).map(lambda t: (t[0], t[0] + t[1])),
        max_size=40,
    ),
)
def test_range_table_bucket_lookup_is_exact(wildcard: int, ranges: list[tuple[int, int]]) -> None:
    # Exhaustive over a 1024-value axis: buckets hold one or many boundaries, boundaries sit on
    # bucket starts or inside, ranges reach the top of the axis or stop short.
    end = 1 << 10
    # Rule i is bit 3 + i; bits 0..2 are the wildcard rules.
    clipped = [(lo, min(hi, end), 1 << (3 + i)) for i, (lo, hi) in enumerate(ranges)]
    table = _RangeTable(wildcard, clipped, end)
    for value in range(end):
        expected = wildcard
        for lo, hi, bit in clipped:
            if lo <= value < hi:
                expected |= bit
        assert table.mask(value) == expected, value


def _space(family: int, spread: bool) -> tuple[int, int]:
    """(base, bits) of the addresses a random rule or packet uses."""
    if spread:  # the whole IPv4 space, or all of 2000::/3
        return (0, 32) if family == 4 else (1 << 125, 125)
    return (V4_BASE, 12) if family == 4 else (V6_BASE, 12)


def random_rule(rng: random.Random, i: int, segments: Sequence[str], spread: bool) -> Rule:
    """A rule over wide spaces, so tables get many boundaries and a second level."""
    family = rng.choice([4, 6])
    width = 32 if family == 4 else 128
    cls = IPv4Network if family == 4 else IPv6Network
    base, bits = _space(family, spread)

    def net() -> IPv4Network | IPv6Network | None:
        if rng.random() < 0.3:
            return None
        plen = rng.randrange(width - bits, width + 1)
        return cls((base + rng.getrandbits(bits), plen), strict=False)

    proto = rng.choice([None, TCP, TCP, UDP, GRE])

    def ports() -> tuple[int, int] | None:
        if proto not in (None, TCP, UDP) or rng.random() < 0.3:
            return None
        lo = rng.randrange(65536)
        return (lo, min(65535, lo + rng.choice([0, 0, 10, 1000])))

    return Rule(
        name=f"r{i}",
        priority=rng.randrange(50),
        action=RuleAction.ALLOW,
        segment=None if rng.random() < 0.4 else rng.choice(segments),
        direction=rng.choice([None, FROM, TO]),
        src=net(),
        dst=net(),
        proto=proto,
        sport=ports() if rng.random() < 0.3 else None,
        dport=ports(),
    )


def random_packet(
    rng: random.Random, rules: Sequence[Rule], segments: Sequence[str], spread: bool
) -> tuple:
    """A packet aimed at a random rule, so most packets match something."""
    r = rng.choice(rules)
    family = r.family or rng.choice([4, 6])
    base, bits = _space(family, spread)

    def addr(net: IPv4Network | IPv6Network | None) -> int:
        if net is not None and net.version == family and rng.random() < 0.8:
            return int(net.network_address) + rng.randrange(net.num_addresses)
        return base + rng.getrandbits(bits)

    proto = r.proto if r.proto is not None and rng.random() < 0.8 else rng.choice([TCP, UDP, 1])
    ported = proto in (TCP, UDP)

    def port(rng_: tuple[int, int] | None) -> int:
        if not ported:
            return 0
        return rng.randint(*rng_) if rng_ is not None else rng.randrange(65536)

    return (
        r.segment if r.segment is not None and rng.random() < 0.8 else rng.choice(segments),
        r.direction if r.direction is not None else rng.choice([FROM, TO]),
        family,
        proto,
        addr(r.src),
        addr(r.dst),
        port(r.sport),
        port(r.dport),
    )


@pytest.mark.parametrize(
    ("n", "segments", "spread"),
    [
        (300, ["web", "app", "db"], False),  # crowded addresses: heavy buckets
        (300, ["web", "app", "db"], True),  # addresses all over: mostly single-mask buckets
        (400, [f"s{i}" for i in range(120)], True),  # over the copy budget: segment not split
    ],
)
@pytest.mark.parametrize("split", [None, *SPLITS])
def test_large_tables_match_naive_scan(
    n: int, segments: list[str], spread: bool, split: tuple[bool, bool] | None
) -> None:
    rng = random.Random(n)
    rs = RuleSet(tuple(random_rule(rng, i, segments, spread) for i in range(n)))
    pkts = [random_packet(rng, rs.rules, segments, spread) for _ in range(1500)]
    for head in (None, 8):  # with a head of 8 most matches are in the big second level
        assert_agrees(rs, pkts, split, head)
    hits = [naive_lookup(rs.rules, *p) for p in pkts]
    assert sum(h is not None for h in hits) > len(pkts) // 2  # the comparison was not vacuous
