"""The slow-path rule classifier: first matching rule, in priority order, without a linear scan.

Theory of operation. The core is the bit-vector scheme of Lakshman & Stiliadis ("High-speed
policy-based packet forwarding using efficient multi-dimensional range matching", SIGCOMM 1998):

- Rules are put in evaluation order (priority, then order given) and a set of rules is a Python
  int used as a bitmask. Of n rules, rule i is bit n-1-i, so the *highest* set bit is the first
  rule in priority order and ``int.bit_length()`` finds it in constant time (the textbook
  lowest-set-bit trick, ``m & -m``, costs more than all the ANDs on a 10,000-bit int).
- A range field (src/dst address, sport, dport) is an axis. The rules' CIDRs and port ranges cut
  it into *elementary intervals*, inside each of which the same rules match; we keep the sorted
  interval starts and one mask per interval, built by one sweep that XORs each rule's bit in at
  its start and out at its end. A lookup finds its interval by ``bisect`` (or a dense index for
  ports), ANDs the masks of all fields and takes the highest bit.

Partitions. The exact-match fields (segment, direction, family, proto) are not AND-ed: rules are
split into *partitions* keyed by (segment, direction, family, proto), a wildcard rule being
copied into every partition it can match, and a lookup first picks its partition by dict. A
partition holds only the rules that can match its packets, so its masks are narrower (AND cost
and memory both scale with mask width) and it has fewer dimensions: a lookup is one dict get,
two bisects, at most two list indexings and four big-int ANDs. Segments and protocols that no
rule names share one fallback partition per (direction, family). Identical partitions are built
once. Copying wildcards can blow up (many segments x many segment-less rules), so segment and
proto are only partitioned on while the copies stay within ``_COPY_BUDGET`` x n; otherwise they
are ordinary mask dimensions inside the partitions.

Costs at n = 10,000 random rules: the ANDs are C loops over a few hundred machine words and the
bisects ~13 comparisons, so a lookup is about 1 us against ~0.3 us at n = 10 (dominated by
cache misses: memory is O(n^2) bits in the worst case, tens of MB here). Build is a few hundred
ms. Matching semantics from ``rules``: a port-range rule matches TCP and UDP only; a rule with
IPv4 CIDRs is absent from IPv6 partitions and vice versa; a rule without CIDRs is in both.
"""

from __future__ import annotations

from array import array
from bisect import bisect_right
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from itertools import product

from nicd.datapath.rules import PROTO_TCP, PROTO_UDP, Direction, Rule, RuleSet

__all__ = ["Classifier"]

_FAMILIES = (4, 6)
_PORT_PROTOS = (PROTO_TCP, PROTO_UDP)
_PORT_SPACE = 1 << 16
# Max rule copies across partitions, as a multiple of n, before we stop splitting on a field.
_COPY_BUDGET = 8
# Range tables with more intervals than this get a compact (array) or dense (ports) index: for
# short tables a plain list bisect is as fast and the index would only cost memory and build time.
_INDEX_MIN = 32


def _mask_of_indices(n: int, indices: Iterable[int]) -> int:
    """Mask of the rules at ``indices`` out of n; rule 0 is the most significant bit."""
    # One O(n) parse of a bit string; OR-ing single bits into a growing int is O(n^2).
    digits = bytearray(b"0") * (n + 1)  # the extra leading "0" keeps n == 0 parseable
    for i in indices:
        digits[i + 1] = 0x31  # "1"
    return int(digits, 2)


def _mask_of(rules: Sequence[Rule], pred: Callable[[Rule], bool]) -> int:
    """Mask of the rules satisfying pred."""
    return _mask_of_indices(len(rules), (i for i, r in enumerate(rules) if pred(r)))


class _RangeTable:
    """One range field of a partition: elementary interval starts and the mask of each."""

    __slots__ = ("dense", "masks", "starts")

    def __init__(self, wildcard: int, ranges: Iterable[tuple[int, int, int]], end: int) -> None:
        """``ranges`` are (lo, hi_exclusive, bit) on the axis [0, end)."""
        # One rule has one range per field, so XOR both adds its bit at lo and removes it at hi.
        delta: dict[int, int] = {0: 0}  # the axis starts at 0, so bisect never falls off it
        for lo, hi, bit in ranges:
            delta[lo] = delta.get(lo, 0) ^ bit
            delta[hi] = delta.get(hi, 0) ^ bit
        starts: list[int] = []
        masks: list[int] = []
        distinct: dict[int, int] = {}
        cur = wildcard
        for point in sorted(delta):
            cur ^= delta[point]
            if point >= end:
                break  # only the end of ranges reaching the top of the axis lands here
            if masks and masks[-1] == cur:
                continue  # same rules as the interval before: merge them
            starts.append(point)
            # Gaps between CIDRs / port ranges all hold the wildcard mask: share one object.
            masks.append(distinct.setdefault(cur, cur))
        self.masks = masks
        self.starts: Sequence[int] = starts
        self.dense: array[int] | None = None
        if len(starts) > _INDEX_MIN and end <= _PORT_SPACE:
            # Ports: interval number of every value, so a lookup is two indexings, no bisect.
            # At most _PORT_SPACE intervals, so their numbers fit an unsigned 16-bit "H".
            dense = array("H")
            for k, (lo, hi) in enumerate(zip(starts, [*starts[1:], end], strict=True)):
                dense.extend(array("H", [k]) * (hi - lo))
            self.dense = dense
        elif len(starts) > _INDEX_MIN and end <= 1 << 64:
            # IPv4: a flat 8-byte array keeps the bisect in a few cache lines instead of
            # chasing a pointer to a separate int object at every probe.
            self.starts = array("Q", starts)


class _Partition:
    """The rules that can match one (segment, direction, family, proto) key, with their tables."""

    __slots__ = ("any_segment", "dport", "dst", "n", "proto", "rules", "segment", "sport", "src")

    def __init__(self, rules: tuple[Rule, ...], family: int, by_segment: bool, by_proto: bool):
        self.rules = rules
        n = self.n = len(rules)
        bits = [1 << (n - 1 - i) for i in range(n)]

        # Fields not partitioned on are mask dimensions here; None means "already selected".
        self.segment: dict[str, int] | None = None
        self.any_segment = 0
        if not by_segment:
            self.any_segment = _mask_of(rules, lambda r: r.segment is None)
            segs = {r.segment for r in rules if r.segment is not None}
            self.segment = {
                s: self.any_segment | _mask_of(rules, lambda r, s=s: r.segment == s) for s in segs
            }
        self.proto: list[int] | None = None
        if not by_proto:
            has_ports = _mask_of(rules, lambda r: r.sport is not None or r.dport is not None)
            any_proto = _mask_of(rules, lambda r: r.proto is None)
            self.proto = [any_proto & ~has_ports] * 256  # port rules match TCP and UDP only
            for p in _PORT_PROTOS:
                self.proto[p] = any_proto
            for p in {r.proto for r in rules if r.proto is not None}:
                self.proto[p] |= _mask_of(rules, lambda r, p=p: r.proto == p)

        addr_end = 1 << (32 if family == 4 else 128)
        self.src, self.dst = (
            _RangeTable(
                _mask_of(rules, lambda r, a=attr: getattr(r, a) is None),
                [
                    (int(net.network_address), int(net.broadcast_address) + 1, bit)
                    for bit, r in zip(bits, rules, strict=True)
                    if (net := getattr(r, attr)) is not None
                ],
                addr_end,
            )
            for attr in ("src", "dst")
        )
        # A partition of a non-port protocol holds no port rules: skip those dimensions.
        self.sport: _RangeTable | None = None
        self.dport: _RangeTable | None = None
        if any(r.sport is not None or r.dport is not None for r in rules):
            self.sport, self.dport = (
                _RangeTable(
                    _mask_of(rules, lambda r, a=attr: getattr(r, a) is None),
                    [
                        (rng[0], rng[1], bit)
                        for bit, r in zip(bits, rules, strict=True)
                        if (rng := getattr(r, attr)) is not None
                    ],
                    _PORT_SPACE,
                )
                for attr in ("sport", "dport")
            )


class Classifier:
    """Finds the first rule of a RuleSet, in priority order, that matches a packet's headers."""

    __slots__ = ("_parts", "_protos", "_segments", "ruleset")

    def __init__(self, ruleset: RuleSet) -> None:
        self.ruleset = ruleset
        rules = ruleset.evaluation_order()
        named_segs = sorted({r.segment for r in rules if r.segment is not None})
        # TCP and UDP always get their own partitions so the fallback never needs port tables.
        named_protos = sorted({r.proto for r in rules if r.proto is not None} | set(_PORT_PROTOS))
        by_segment, by_proto = self._choose_split(rules, named_segs, named_protos)
        self._segments = frozenset(named_segs if by_segment else ())
        self._protos = frozenset(named_protos if by_proto else ())
        seg_keys: list[str | None] = [*(named_segs if by_segment else ()), None]
        proto_keys: list[int | None] = [*(named_protos if by_proto else ()), None]

        # Every rule goes to each partition key it can match; indices stay in priority order.
        members: dict[tuple[str | None, int, int, int | None], list[int]] = {
            key: [] for key in product(seg_keys, map(int, Direction), _FAMILIES, proto_keys)
        }
        for i, r in enumerate(rules):
            for key in product(
                _keys_for(r.segment, seg_keys),
                [int(r.direction)] if r.direction is not None else map(int, Direction),
                [r.family] if r.family is not None else _FAMILIES,
                _proto_keys_for(r, proto_keys),
            ):
                members[key].append(i)

        built: dict[tuple[int, tuple[int, ...]], _Partition] = {}
        self._parts: dict[tuple[str | None, int, int, int | None], _Partition] = {}
        for key, idx in members.items():
            fam = key[2]
            # Same rules, same family: same tables (e.g. every unnamed-proto key of a segment).
            ident = (fam, tuple(idx))
            if ident not in built:
                built[ident] = _Partition(
                    tuple(rules[i] for i in idx), fam, by_segment=by_segment, by_proto=by_proto
                )
            self._parts[key] = built[ident]

    @staticmethod
    def _choose_split(
        rules: tuple[Rule, ...], segs: list[str], protos: list[int]
    ) -> tuple[bool, bool]:
        """Which of segment/proto to partition on: the finest split within the copy budget."""
        # Copies per (segment, direction, family, proto) key, counted on a census of rule shapes.
        shapes = Counter(
            (r.segment, r.direction is None, r.family is None, r.proto, _has_ports(r))
            for r in rules
        )
        seg_keys: list[str | None] = [*segs, None]
        proto_keys: list[int | None] = [*protos, None]
        budget = _COPY_BUDGET * max(len(rules), 64)
        for by_segment, by_proto in ((True, True), (True, False), (False, True), (False, False)):
            copies = 0
            for (seg, any_dir, any_fam, proto, ports), count in shapes.items():
                n_seg = len(_keys_for(seg, seg_keys)) if by_segment else 1
                n_proto = len(_proto_keys_for_shape(proto, ports, proto_keys)) if by_proto else 1
                copies += count * n_seg * n_proto * (2 if any_dir else 1) * (2 if any_fam else 1)
            if copies <= budget:
                return by_segment, by_proto
        return False, False

    @property
    def version(self) -> int:
        """Version of the rule set this classifier was built from."""
        return self.ruleset.version

    def __len__(self) -> int:
        return len(self.ruleset.rules)

    def lookup(
        self,
        segment: str,
        direction: Direction,
        family: int,
        proto: int,
        src: int,
        dst: int,
        sport: int,
        dport: int,
    ) -> Rule | None:
        """First rule (priority order) matching the packet, or None: then apply the default.

        ``family`` is 4 or 6, ``proto`` 0..255, addresses are ints; ports are 0 unless TCP/UDP.
        """
        p = self._parts.get((segment, direction, family, proto))
        if p is None:  # a segment or protocol no rule names, or one we do not partition on
            p = self._parts[
                (
                    segment if segment in self._segments else None,
                    direction,
                    family,
                    proto if proto in self._protos else None,
                )
            ]
        t = p.src
        m = t.masks[bisect_right(t.starts, src) - 1]
        t = p.dst
        m &= t.masks[bisect_right(t.starts, dst) - 1]
        t = p.sport
        if t is not None:
            d = t.dense
            m &= t.masks[d[sport]] if d is not None else t.masks[bisect_right(t.starts, sport) - 1]
            t = p.dport
            d = t.dense
            m &= t.masks[d[dport]] if d is not None else t.masks[bisect_right(t.starts, dport) - 1]
        if p.segment is not None:
            m &= p.segment.get(segment, p.any_segment)
        if p.proto is not None:
            m &= p.proto[proto]
        if not m:
            return None
        return p.rules[p.n - m.bit_length()]


def _has_ports(r: Rule) -> bool:
    return r.sport is not None or r.dport is not None


def _keys_for(segment: str | None, seg_keys: list[str | None]) -> list[str | None]:
    """Segment keys a rule with this segment belongs to."""
    if segment is None:
        return seg_keys
    return [segment] if segment in seg_keys else [None]


def _proto_keys_for_shape(
    proto: int | None, has_ports: bool, proto_keys: list[int | None]
) -> list[int | None]:
    if proto is not None:
        return [proto] if proto in proto_keys else [None]
    if has_ports:  # a port range needs TCP or UDP, which always have their own keys
        return [p for p in proto_keys if p in _PORT_PROTOS] or [None]
    return proto_keys


def _proto_keys_for(r: Rule, proto_keys: list[int | None]) -> list[int | None]:
    """Proto keys a rule belongs to."""
    return _proto_keys_for_shape(r.proto, _has_ports(r), proto_keys)
