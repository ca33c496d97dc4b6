"""State replication between sibling NICs: an ordered change stream per origin, sans-I/O.

Theory of operation. Every NIC is the *origin* of the conntrack records of the VPIDs it owns
and of the remote MACs it learns on its uplinks. Each change it makes (a record created, its
state changed, a record deleted, a MAC learned) is a *change*: a plain list,
``[UPSERT, *record.to_wire()]``, ``[DELETE, *key wire]`` or ``[LEARN, segment, mac, ip]``.
`Origin` numbers its changes 1, 2, 3, ... (the per-origin sequence number), keeps them in a
bounded log until every sibling has acknowledged them, and sends them in batches
``(first_seq, changes)``.

A sibling keeps a `PeerCache` per origin: the origin's records as it last heard them, and the
next sequence number it expects. A batch that starts later than expected is a *gap*: the cache
asks for a resend from the number it expects (`want`), and the origin answers from its log, or,
when the log no longer reaches that far (or the sibling asks from 0, as a rebooted NIC does),
with a *snapshot*: every record it holds, as a batch flagged ``reset`` whose numbering ends at
the origin's current sequence number. A batch that starts earlier than expected overlaps what
the cache holds; the overlap is skipped. Acks say the highest sequence number a sibling holds.
Every batch names the origin's *boot* (a random id per start of its OS worker): a restarted
origin numbers from 1 again, so a batch of a new boot makes the cache forget the old stream.

When hostd moves an origin's VPIDs to this NIC, `PeerCache.take(zones)` hands over those zones'
records, which the worker commits into its own conntrack before it takes their traffic.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from itertools import chain, islice
from typing import Any

from nicd.datapath.conntrack import CtRecord, digest_rows
from nicd.datapath.vswitch import LearnedMac

UPSERT = 1
DELETE = 2
LEARN = 3  # [LEARN, segment, MAC as a 48-bit int, IPv4 as an int (0: none known)]
KEY_FIELDS = 9  # zone, family, proto, src hi/lo, dst hi/lo, sport, dport: the key in wire form
RECORD_FIELDS = 18
RESEND_MAX = 8192  # changes in one resend batch (a bus batch holds at most 32768)

Change = list[Any]
WireKey = tuple[int, ...]


def upsert(rec: CtRecord) -> Change:
    """The change that makes a sibling's copy of `rec` what it is now."""
    return [UPSERT, *rec.to_wire()]


def delete(rec: CtRecord) -> Change:
    """The change that removes `rec` from a sibling's copy."""
    return [DELETE, *rec.to_wire()[:KEY_FIELDS]]


def learn(entry: LearnedMac) -> Change:
    """The change that tells a sibling a remote MAC (and its address) we learned."""
    return [LEARN, entry.segment, int.from_bytes(entry.mac, "big"), entry.ip or 0]


@dataclass(slots=True)
class Batch:
    """Changes `first_seq` .. `first_seq + len(changes) - 1` of one origin."""

    first_seq: int
    changes: list[Change]
    reset: bool = False  # a snapshot's first batch: forget everything held of this origin
    boot: int = 0  # the origin's boot id
    until: int = 0  # on a snapshot's first batch: the number its last batch ends at

    @property
    def last_seq(self) -> int:
        return self.first_seq + len(self.changes) - 1


@dataclass(slots=True)
class Origin:
    """Our own change stream: numbering, the resend log, and what each sibling acknowledged."""

    log_limit: int = 65_536
    seq: int = 0  # the last number given out
    boot: int = field(default_factory=lambda: random.getrandbits(62) + 1)
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
        return Batch(first, changes, boot=self.boot)

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
            return Batch(self.seq + 1, [], boot=self.boot)
        if from_seq < 1 or not self._log or self._log[0][0] > from_seq:
            return None
        if self.seq - from_seq >= RESEND_MAX:
            return None  # one batch that large is past what a sibling accepts: a snapshot
        start = from_seq - self._log[0][0]
        return Batch(from_seq, [c for _, c in list(self._log)[start:]], boot=self.boot)

    def snapshot(
        self, records: Collection[CtRecord], macs: Collection[LearnedMac] = (), chunk: int = 2048
    ) -> Iterator[Batch]:
        """Every record and learned MAC we hold, numbered to end at our current sequence number.

        Lazily, a chunk at a time: the caller can keep its heartbeats going in between.
        """
        total = len(records) + len(macs)
        if total > self.seq:
            # More rows than numbers given out (state held before numbering began): skip
            # ahead, so the snapshot's numbers stay >= 1; live holders see a gap and ask. The
            # log cannot resend the skipped numbers: it starts again after them.
            self.seq = total
            self._log.clear()
        first = self.seq + 1 - total
        if not total:
            yield Batch(first, [], reset=True, boot=self.boot, until=self.seq)
            return
        rows = chain((upsert(r) for r in records), (learn(m) for m in macs))
        for start in range(0, total, chunk):
            changes = list(islice(rows, chunk))
            reset = start == 0
            until = self.seq if reset else 0
            yield Batch(first + start, changes, reset=reset, boot=self.boot, until=until)


@dataclass(slots=True)
class PeerCache:
    """One origin's records as this NIC last heard them, and where its stream is."""

    origin: str
    next_seq: int = 1
    synced: bool = False  # holds a whole snapshot or the stream from its start
    _until: int = 0  # a snapshot is arriving: synced once held up to here
    _from: int = 0  # ... and its first sequence number
    records: dict[WireKey, Change] = field(default_factory=dict)
    macs: dict[tuple[str, int], int] = field(default_factory=dict)  # (segment, MAC) -> IPv4
    gaps: int = 0
    applied: int = 0
    boot: int = 0  # the origin's boot this cache follows (0: none yet)
    restarts: int = 0

    def apply(self, batch: Batch) -> int | None:
        """Apply a batch in order; returns the sequence number to ask a resend from on a gap."""
        if batch.boot != self.boot:
            # The origin restarted: its old stream (and what it said) is over.
            self.restarts += self.boot != 0
            self.boot = batch.boot
            self.records.clear()
            self.macs.clear()
            self.next_seq = 1
            self.synced = False
        if batch.reset:
            self.records.clear()
            self.macs.clear()
            self.next_seq = batch.first_seq
            self.synced = False
            self._until, self._from = batch.until, batch.first_seq
            if batch.until < batch.first_seq:
                self.synced, self._until = True, 0  # an empty snapshot: nothing more to come
        elif batch.first_seq == 1 and self.next_seq == 1:
            self.synced = True  # the origin's stream from its very start
        if batch.first_seq > self.next_seq:
            self.gaps += 1
            return self.next_seq
        skip = self.next_seq - batch.first_seq
        for change in batch.changes[skip:]:
            self._apply(change)
        self.next_seq = max(self.next_seq, batch.last_seq + 1)
        if not self.synced and self._until and self.held >= self._until:
            self.synced, self._until = True, 0  # the snapshot's last batch is in
        return None

    @property
    def snapshot_progress(self) -> tuple[int, int] | None:
        """(changes held, changes in all) of the snapshot arriving now; None if none is."""
        if self.synced or not self._until:
            return None
        total = self._until - self._from + 1
        return min(total, max(0, self.held - self._from + 1)), total

    def _apply(self, change: Change) -> None:
        self.applied += 1
        if change[0] == LEARN:
            self.macs[(change[1], change[2])] = change[3]
            return
        key = tuple(change[1 : 1 + KEY_FIELDS])
        if change[0] == UPSERT:
            self.records[key] = change
        else:
            self.records.pop(key, None)

    def digest(self) -> str:
        """The digest the origin's own table has when this copy is faithful (`ConntrackTable`)."""
        return digest_rows(change[1:] for change in self.records.values())

    @property
    def held(self) -> int:
        """The highest sequence number held (what to ack)."""
        return self.next_seq - 1

    def take(self, zones: set[int]) -> list[CtRecord]:
        """Remove and return the records of `zones` (VPIDs now ours), ready to commit."""
        return [CtRecord.from_wire(change[1:]) for change in self.pop_zones(zones)]

    def pop_zones(self, zones: Collection[int]) -> list[Change]:
        """Remove and return the upserts of `zones`, as they are held."""
        if not zones:
            return []
        keys = [k for k in self.records if k[0] in zones]
        return [self.records.pop(key) for key in keys]

    def hold(self, changes: list[Change]) -> int:
        """Keep copies handed to this origin's cache by a map move (a release, or a copy of a
        zone that moved between two others): what the origin streams itself stands over them.
        Returns how many were new here."""
        added = 0
        for change in changes:
            key = tuple(change[1 : 1 + KEY_FIELDS])
            if key not in self.records:
                self.records[key] = change
                added += 1
        return added


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
        elif op == LEARN and len(change) == 4:
            _check_learn(change)
        else:
            raise ValueError(f"changes: unknown change {op!r} of {len(change)} items")
    return changes  # type: ignore[return-value]


def _check_learn(change: Change) -> None:
    _, segment, mac, ip = change
    if type(segment) is not str or not 0 < len(segment) <= 64:
        raise ValueError("changes: a learn's segment must be a name of 1..64 characters")
    if type(mac) is not int or not 0 <= mac < 1 << 48 or (mac >> 40) & 1:
        raise ValueError("changes: a learn's MAC must be a unicast 48-bit int")
    if type(ip) is not int or not 0 <= ip < 1 << 32:
        raise ValueError("changes: a learn's address must be an IPv4 int (0: none)")
