"""State replication between sibling NICs: an ordered change stream per origin, sans-I/O.

Theory of operation. Every NIC is the *origin* of the conntrack records of the VPIDs it owns.
Each change it makes (a record created, its state changed, a record deleted) is a *change*: a
plain list, ``[UPSERT, *record.to_wire()]`` or ``[DELETE, *key wire]``. `Origin` numbers its
changes 1, 2, 3, ... (the per-origin sequence number), keeps them in a bounded log until every
sibling has acknowledged them, and sends them in batches ``(first_seq, changes)``.

A sibling keeps a `PeerCache` per origin: the origin's records as it last heard them, and the
next sequence number it expects. A batch that starts later than expected is a *gap*: the cache
asks for a resend from the number it expects (`want`), and the origin answers from its log, or,
when the log no longer reaches that far (or the sibling asks from 0, as a rebooted NIC does),
with a *snapshot*: every record it holds, as a batch flagged ``reset`` whose numbering ends at
the origin's current sequence number. A batch that starts earlier than expected overlaps what
the cache holds; the overlap is skipped. Acks say the highest sequence number a sibling holds.

When hostd moves an origin's VPIDs to this NIC, `PeerCache.take(zones)` hands over those zones'
records, which the worker commits into its own conntrack before it takes their traffic.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from nicd.datapath.conntrack import CtRecord

UPSERT = 1
DELETE = 2
KEY_FIELDS = 9  # zone, family, proto, src hi/lo, dst hi/lo, sport, dport: the key in wire form
RECORD_FIELDS = 18

Change = list[Any]
WireKey = tuple[int, ...]


def upsert(rec: CtRecord) -> Change:
    """The change that makes a sibling's copy of `rec` what it is now."""
    return [UPSERT, *rec.to_wire()]


def delete(rec: CtRecord) -> Change:
    """The change that removes `rec` from a sibling's copy."""
    return [DELETE, *rec.to_wire()[:KEY_FIELDS]]


@dataclass(slots=True)
class Batch:
    """Changes `first_seq` .. `first_seq + len(changes) - 1` of one origin."""

    first_seq: int
    changes: list[Change]
    reset: bool = False  # a snapshot's first batch: forget everything held of this origin

    @property
    def last_seq(self) -> int:
        return self.first_seq + len(self.changes) - 1


@dataclass(slots=True)
class Origin:
    """Our own change stream: numbering, the resend log, and what each sibling acknowledged."""

    log_limit: int = 65_536
    seq: int = 0  # the last number given out
    acked: dict[str, int] = field(default_factory=dict)
    _log: deque[tuple[int, Change]] = field(default_factory=deque)

    def add(self, changes: list[Change]) -> Batch | None:
        """Number new changes; the batch to send every sibling (None if there are none)."""
        if not changes:
            return None
        first = self.seq + 1
        for change in changes:
            self.seq += 1
            self._log.append((self.seq, change))
        while len(self._log) > self.log_limit:
            self._log.popleft()
        return Batch(first, changes)

    def ack(self, sibling: str, seq: int) -> None:
        """`sibling` holds every change up to `seq`; the log keeps only what someone lacks."""
        if seq > self.seq:
            return  # an ack from before our restart: ignore it, a resync will follow
        self.acked[sibling] = max(seq, self.acked.get(sibling, 0))
        low = min(self.acked.values())
        while self._log and self._log[0][0] <= low:
            self._log.popleft()

    def forget(self, sibling: str) -> None:
        """A sibling is gone: it no longer holds back the log."""
        self.acked.pop(sibling, None)

    def resend(self, from_seq: int) -> Batch | None:
        """Changes from `from_seq` on from the log; None if the log no longer reaches back."""
        if from_seq > self.seq:
            return Batch(self.seq + 1, [])
        if from_seq < 1 or not self._log or self._log[0][0] > from_seq:
            return None
        start = from_seq - self._log[0][0]
        return Batch(from_seq, [c for _, c in list(self._log)[start:]])

    def snapshot(self, records: Iterable[CtRecord], chunk: int = 2048) -> list[Batch]:
        """Every record we hold, numbered to end at our current sequence number."""
        changes = [upsert(r) for r in records]
        first = self.seq + 1 - len(changes)
        batches = [
            Batch(first + i, changes[i : i + chunk], reset=i == 0)
            for i in range(0, len(changes), chunk)
        ]
        return batches or [Batch(self.seq + 1, [], reset=True)]


@dataclass(slots=True)
class PeerCache:
    """One origin's records as this NIC last heard them, and where its stream is."""

    origin: str
    next_seq: int = 1
    synced: bool = False  # holds a snapshot or the stream from its start
    records: dict[WireKey, Change] = field(default_factory=dict)
    gaps: int = 0
    applied: int = 0

    def apply(self, batch: Batch) -> int | None:
        """Apply a batch in order; returns the sequence number to ask a resend from on a gap."""
        if batch.reset:
            self.records.clear()
            self.next_seq = batch.first_seq
            self.synced = True
        elif batch.first_seq == 1 and self.next_seq == 1:
            self.synced = True  # the origin's stream from its very start
        if batch.first_seq > self.next_seq:
            self.gaps += 1
            return self.next_seq
        skip = self.next_seq - batch.first_seq
        for change in batch.changes[skip:]:
            self._apply(change)
        self.next_seq = max(self.next_seq, batch.last_seq + 1)
        return None

    def _apply(self, change: Change) -> None:
        key = tuple(change[1 : 1 + KEY_FIELDS])
        if change[0] == UPSERT:
            self.records[key] = change
        else:
            self.records.pop(key, None)
        self.applied += 1

    @property
    def held(self) -> int:
        """The highest sequence number held (what to ack)."""
        return self.next_seq - 1

    def take(self, zones: set[int]) -> list[CtRecord]:
        """Remove and return the records of `zones` (VPIDs now ours), ready to commit."""
        keys = [k for k in self.records if k[0] in zones]
        out = []
        for key in keys:
            out.append(CtRecord.from_wire(self.records.pop(key)[1:]))
        return out


def check_changes(changes: object) -> list[Change]:
    """Validate a batch from a sibling: ValueError naming the problem (records fully checked)."""
    if type(changes) is not list:
        raise ValueError("changes: must be a list")
    for change in changes:
        if type(change) is not list or not change:
            raise ValueError("changes: items must be non-empty lists")
        op = change[0]
        if op == UPSERT and len(change) == 1 + RECORD_FIELDS:
            CtRecord.from_wire(change[1:])
        elif op == DELETE and len(change) == 1 + KEY_FIELDS:
            if any(type(v) is not int or v < 0 for v in change[1:]):
                raise ValueError("changes: a delete's key must be ints >= 0")
        else:
            raise ValueError(f"changes: unknown change {op!r} of {len(change)} items")
    return changes  # type: ignore[return-value]
