"""State replication between sibling NICs: an ordered change stream per origin, sans-I/O.

Theory of operation. Every NIC is the *origin* of the conntrack records of the VPIDs it owns
and of the remote MACs it learns on its uplinks. Each change it makes (a record created, its
state changed, a record deleted, a MAC learned) is a *change*: a typed row of
`bus.syncrows` (`UpsertRow`, `DeleteRow`, `LearnRow`), made here from the datapath's records.
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
from typing import Protocol

from bus.syncrows import DeleteRow, LearnRow, RowKey, SyncRow, UpsertRow
from nicd.datapath.conntrack import CtRecord, PseudoState, TcpState, digest_rows
from nicd.datapath.rules import Direction
from nicd.datapath.vswitch import LearnedMac

RESEND_MAX = 8192  # changes in one resend batch (a bus batch holds at most 32768)

_STATES = {s.name: s for s in (*TcpState, *PseudoState)}


class Records(Protocol):
    """What a snapshot reads: sized and iterable, as `ConntrackTable` (which has no `in`) is."""

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[CtRecord]: ...


def upsert(rec: CtRecord) -> UpsertRow:
    """The change that makes a sibling's copy of `rec` what it is now."""
    zone, family, proto, src, dst, sport, dport = rec.key
    # `_name_` (a documented sunder name) is the plain attribute: `.name` is a slow property.
    return UpsertRow(zone, family, proto, src, dst, sport, dport, int(rec.origin),
                     rec.state._name_, rec.rule, rec.sw_ok, rec.hw_capable, rec.created,
                     rec.last_seen, rec.packets, rec.bytes)  # fmt: skip


def delete(rec: CtRecord) -> DeleteRow:
    """The change that removes `rec` from a sibling's copy."""
    return DeleteRow(*rec.key)


def learn(entry: LearnedMac) -> LearnRow:
    """The change that tells a sibling a remote MAC (and its address) we learned."""
    return LearnRow(entry.segment, int.from_bytes(entry.mac, "big"), entry.ip or 0)


def record_of(row: UpsertRow) -> CtRecord:
    """The conntrack record an upsert (decoded, so checked) describes, ready to commit."""
    return CtRecord(row.key, Direction(row.origin), _STATES[row.state], row.rule, row.sw_ok,
                    row.hw_capable, row.created, row.last_seen, row.packets, row.bytes)  # fmt: skip


@dataclass(slots=True)
class Batch:
    """Changes `first_seq` .. `first_seq + len(changes) - 1` of one origin."""

    first_seq: int
    changes: list[SyncRow]
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
    _log: deque[tuple[int, SyncRow]] = field(default_factory=deque)

    def add(self, changes: list[SyncRow]) -> Batch | None:
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
        self, records: Records, macs: Collection[LearnedMac] = (), chunk: int = 2048
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
        rows: Iterator[SyncRow] = chain(map(upsert, records), map(learn, macs))
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
    records: dict[RowKey, UpsertRow] = field(default_factory=dict)
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

    def _apply(self, change: SyncRow) -> None:
        self.applied += 1
        if isinstance(change, UpsertRow):
            self.records[change.key] = change
        elif isinstance(change, DeleteRow):
            self.records.pop(change.key, None)
        else:
            self.macs[(change.segment, change.mac)] = change.ip

    def digest(self) -> str:
        """The digest the origin's own table has when this copy is faithful (`ConntrackTable`)."""
        return digest_rows(row.to_wire()[1:] for row in self.records.values())

    @property
    def held(self) -> int:
        """The highest sequence number held (what to ack)."""
        return self.next_seq - 1

    def take(self, zones: set[int]) -> list[CtRecord]:
        """Remove and return the records of `zones` (VPIDs now ours), ready to commit."""
        return [record_of(row) for row in self.pop_zones(zones)]

    def pop_zones(self, zones: Collection[int]) -> list[UpsertRow]:
        """Remove and return the upserts of `zones`, as they are held."""
        if not zones:
            return []
        keys = [k for k in self.records if k[0] in zones]
        return [self.records.pop(key) for key in keys]

    def hold(self, changes: list[UpsertRow]) -> int:
        """Keep copies handed to this origin's cache by a map move (a release, or a copy of a
        zone that moved between two others): what the origin streams itself stands over them.
        Returns how many were new here."""
        added = 0
        for change in changes:
            key = change.key
            if key not in self.records:
                self.records[key] = change
                added += 1
        return added
