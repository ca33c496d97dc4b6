"""What the two fast tiers (flow cache, eSwitch) share: an exact-match table of flow entries.

Theory of operation: a fast-tier key is one firewall *stage* of one packet, `(vpid, direction,
family, proto, src, dst, sport, dport)`: the VPID whose rules and conntrack zone apply, and
whether the packet leaves (from-VM) or enters (to-VM) that VM. An entry points at the
conntrack record that allowed the flow; a record is installed as two entries, one per
direction of the connection, or not at all. Hits only count (packets, bytes, last hit);
`readback` hands the counts to conntrack periodically, as a driver reads hardware counters.
Only segments that cannot change TCP state may hit (pure ACKs): SYN, FIN, RST and flagless
segments always go back to the slow path, which alone runs the state machine.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass, field

from nicd.datapath.conntrack import CtRecord

FlowKey = tuple[int, int, int, int, int, int, int, int]


class Tier(enum.IntEnum):
    """Which tier decided a packet or holds a flow (higher is closer to the wire)."""

    SLOW = 0
    CACHE = 1
    ESWITCH = 2


@dataclass(slots=True)
class FlowEntry:
    """One direction of one offloaded connection: the record it enforces plus hit counters."""

    record: CtRecord
    packets: int = 0
    bytes: int = 0
    last_hit: float = 0.0
    total_packets: int = 0


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
        return {k: getattr(self, k) for k in self.__slots__}  # type: ignore[attr-defined]


def record_keys(rec: CtRecord) -> tuple[FlowKey, FlowKey]:
    """The two fast-tier keys of a record: its original and its reply direction."""
    origin = int(rec.origin)
    o, r = rec.key, rec.reply_key
    return (o[0], origin, *o[1:]), (r[0], 1 - origin, *r[1:])  # type: ignore[return-value]


@dataclass(slots=True)
class ExactMatchTable:
    """An exact-match flow table of bounded size (`capacity` entries; 0 means none fit)."""

    tier: Tier
    capacity: int
    entries: dict[FlowKey, FlowEntry] = field(default_factory=dict)
    stats: TierStats = field(default_factory=TierStats)

    def __len__(self) -> int:
        return len(self.entries)

    def hit(self, key: FlowKey, nbytes: int, now: float) -> FlowEntry | None:
        """Look a key up and count the packet on a hit."""
        entry = self.entries.get(key)
        if entry is None:
            self.stats.misses += 1
            return None
        self.stats.hits += 1
        entry.packets += 1
        entry.bytes += nbytes
        entry.last_hit = now
        return entry

    def holds(self, rec: CtRecord) -> bool:
        """True if this record is installed here."""
        orig, _ = record_keys(rec)
        entry = self.entries.get(orig)
        return entry is not None and entry.record is rec

    def room(self) -> bool:
        """True if one more connection (two entries) fits."""
        return len(self.entries) + 2 <= self.capacity

    def install(self, rec: CtRecord, now: float) -> bool:
        """Install both directions of a record; False (counted) when the table is full."""
        if self.holds(rec):
            return True
        if not self.room():
            self.stats.full += 1
            return False
        for key in record_keys(rec):
            self.entries[key] = FlowEntry(rec, last_hit=now)
        self.stats.installs += 1
        return True

    def evict(self, rec: CtRecord) -> bool:
        """Remove a record's entries if they are this record's; True if anything went."""
        gone = False
        for key in record_keys(rec):
            entry = self.entries.get(key)
            if entry is not None and entry.record is rec:
                del self.entries[key]
                gone = True
        if gone:
            self.stats.evictions += 1
        return gone

    def readback(self) -> Iterator[FlowEntry]:
        """Entries hit since the last readback, their counters then cleared by the caller."""
        for entry in self.entries.values():
            if entry.packets:
                yield entry

    def records(self) -> Iterator[CtRecord]:
        """Each installed record once."""
        seen: set[int] = set()
        for entry in self.entries.values():
            if id(entry.record) not in seen:
                seen.add(id(entry.record))
                yield entry.record

    def clear(self) -> None:
        """Drop every entry (counted as evictions of connections)."""
        self.stats.evictions += len(self.entries) // 2
        self.entries.clear()
