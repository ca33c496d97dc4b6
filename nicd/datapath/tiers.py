"""What the two fast tiers (flow cache, eSwitch) share: an exact-match table of path entries.

Theory of operation. Like an OVS datapath flow or an eSwitch rule, a fast-tier entry matches the
header bytes that identify one path through this NIC: ingress port, Ethernet header (MACs, VLAN
tag), IP addresses, protocol and ports (`fast_key`). Its action is what the slow path decided for
the first such frame: the frames to emit, each as (where, VLAN push/pop). It keeps references to
the conntrack records of the stages that allowed it (one or two: from-VM on the sender's VPID,
to-VM on the receiver's), and is installed only while every one of them is established and
permits the tier (`sw_ok` for the cache, `hw_ok` for the eSwitch).

What a hit does not do, the entry carries for `readback`: counters handed to conntrack
(`last_seen`), MAC-learning refreshes, load accounting. Entries are stamped with the generation
of the map, team and topology they were resolved under; a stale stamp is a miss, so a remap or a
team change never needs to rewrite an entry. Segments that may change TCP state (SYN, FIN, RST,
no ACK), fragments, IP options and anything malformed never get a key: the slow path sees them.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

from nicd.datapath.conntrack import CtRecord

FastKey = tuple[int, bytes]


class Tier(enum.IntEnum):
    """Which tier decided a packet or holds a flow (higher is closer to the wire)."""

    SLOW = 0
    CACHE = 1
    ESWITCH = 2


@dataclass(slots=True)
class PathAction:
    """One frame to emit on a hit: `vlan` None keeps the frame, 0 pops the tag, N pushes tag N."""

    out: enum.IntEnum
    target: int
    nic: str
    vlan: int | None


@dataclass(slots=True)
class PathEntry:
    """One cached path: its actions, the records that allowed it, and hit counters."""

    actions: tuple[PathAction, ...]
    records: tuple[CtRecord, ...]
    rule: str
    gen: int
    vpids: frozenset[int]  # VPIDs it depends on: a map change that moves one evicts it
    to_network: bool  # leaves through the team: a team change evicts it
    learn: tuple[str, bytes] | None = None  # (segment, MAC) to refresh: frames from an uplink
    account: tuple[str, int] | None = None  # (uplink, VPID) for load-based teaming
    from_uplink: str | None = None  # came in on this uplink: evicted when it leaves the team
    packets: int = 0
    bytes: int = 0
    last_hit: float = 0.0
    handovers: bool = field(init=False)

    def __post_init__(self) -> None:
        self.handovers = any(a.out >= 2 for a in self.actions)


@dataclass(slots=True)
class TierStats:
    """Counters every tier keeps; `full` counts installs refused for lack of room."""

    hits: int = 0
    misses: int = 0
    installs: int = 0
    evictions: int = 0
    full: int = 0
    punts: int = 0

    def as_dict(self) -> dict[str, int]:
        """Plain dict for logs and the control socket."""
        return {k: getattr(self, k) for k in self.__slots__}


@dataclass(slots=True)
class ExactMatchTable:
    """An exact-match table of at most `capacity` path entries (0: the tier is off)."""

    tier: Tier
    capacity: int
    entries: dict[FastKey, PathEntry] = field(default_factory=dict)
    stats: TierStats = field(default_factory=TierStats)

    def __len__(self) -> int:
        return len(self.entries)

    def install(self, key: FastKey, entry: PathEntry) -> bool:
        """Install or replace an entry; False (counted) when a new one does not fit."""
        if key not in self.entries and len(self.entries) >= self.capacity:
            self.stats.full += 1
            return False
        self.entries[key] = entry
        self.stats.installs += 1
        return True

    def evict(self, key: FastKey, rec: CtRecord | None = None) -> bool:
        """Remove the entry at `key` (only if it depends on `rec`, when given)."""
        entry = self.entries.get(key)
        if entry is None or (rec is not None and rec not in entry.records):
            return False
        del self.entries[key]
        self.stats.evictions += 1
        return True

    def hit_entries(self) -> Iterator[PathEntry]:
        """Entries hit since their counters were last cleared."""
        for entry in self.entries.values():
            if entry.packets:
                yield entry

    def records(self) -> Iterator[CtRecord]:
        """Each record some entry here depends on, once."""
        seen: set[int] = set()
        for entry in self.entries.values():
            for rec in entry.records:
                if id(rec) not in seen:
                    seen.add(id(rec))
                    yield rec


# Ethertype, version/IHL, total length, flags/fragment offset, protocol: one unpack for IPv4.
_V4 = struct.Struct("!2sBxH2xHxB")


def fast_key(ingress: int, port: int, frame: bytes) -> FastKey | None:
    """The exact-match key of a frame a fast tier may handle, or None: the slow path decides.

    Only well-formed IPv4 (no options, not a fragment) or IPv6 (fixed header) carrying UDP,
    ICMP echo, or TCP with ACK and none of SYN/FIN/RST qualify; every length is checked, so a
    malformed frame can never share a key with a good one.
    """
    n = len(frame)
    if n < 42:
        return None
    off = 18 if frame[12:14] == b"\x81\x00" else 14
    et, vihl, total, frag, proto = _V4.unpack_from(frame, off - 2)
    if et == b"\x08\x00":
        if vihl != 0x45 or frag & 0x3FFF:
            return None
        end = off + total
        l4 = off + 20
        addrs = frame[off + 12 : off + 20]
    elif et == b"\x86\xdd":
        if n < off + 48 or vihl >> 4 != 6:
            return None
        end = off + 40 + (frame[off + 4] << 8 | frame[off + 5])
        proto = frame[off + 6]
        l4 = off + 40
        addrs = frame[off + 8 : off + 40]
    else:
        return None
    if end > n:
        return None
    prefix = proto << 48 | ingress << 32 | port
    if proto == 6:
        if l4 + 20 > end:
            return None
        doff = frame[l4 + 12] >> 2 & 0x3C
        if doff < 20 or l4 + doff > end or frame[l4 + 13] & 0x17 != 0x10:
            return None
    elif proto == 17:
        if l4 + 8 > end:
            return None
        ulen = frame[l4 + 4] << 8 | frame[l4 + 5]
        if ulen < 8 or l4 + ulen > end:
            return None
    elif proto == 1 or proto == 58:
        # ICMP echo only: type and identifier are what conntrack keys it by.
        if l4 + 8 > end or frame[l4] not in (0, 8, 128, 129):
            return None
        return prefix, frame[:off] + addrs + frame[l4 : l4 + 1] + frame[l4 + 4 : l4 + 6]
    else:
        return None
    return prefix, frame[:off] + addrs + frame[l4 : l4 + 4]
