"""The worker's side of state sharing: our change stream out, each sibling's stream in, resync.

`nicd.statesync` is the protocol (sans-I/O); `Replicator` feeds it from the pipeline's journals
(conntrack and MAC learning) and speaks it over the bus: `SyncBatch` to every sibling after
each receive batch and tick, `SyncAck` with every heartbeat, `SyncRequest` on a gap or when a
(re)started or fenced NIC resyncs before it rejoins. It also measures the sync lag: the time
from the origin's change to its apply here, on the CLOCK_MONOTONIC every local process shares.
It reads no clock: every call that needs the time is handed `now` (that clock) by the worker.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from bus.codec import encode
from bus.messages import SyncAck, SyncBatch, SyncRequest, trusted
from bus.syncrows import LearnRow, SyncRow, UpsertRow, rows_from_wire_untrusted, rows_to_wire
from nicd.datapath.conntrack import CtRecord
from nicd.datapath.pipeline import Pipeline
from nicd.statesync import RESEND_MAX, Batch, Origin, PeerCache, delete, learn, upsert
from wire.malformed import Malformed

RESYNC_RETRY_S = 0.25  # a resync request unanswered (the sibling's link to us not up yet)
RESYNC_WAIT_S = 10.0  # a sibling silent for this long is taken as having nothing for us
LAG_SAMPLES = 8192
MAX_SEQ = 1 << 62  # a stream numbered past this is not one of ours (and would overflow acks)


class Sender(Protocol):
    """Where messages go: the bus node in the worker, a recorder in tests."""

    def send(self, peer: str, msg: Any) -> bool:
        """Queue `msg` for `peer`; False if it was dropped."""
        ...

    def send_raw(self, peer: str, data: bytes) -> bool:
        """Queue an encoded message for `peer`; False if it was dropped."""
        ...


class Replicator:
    """Replication and resync of one NIC with its siblings; see the module docstring."""

    def __init__(
        self,
        name: str,
        siblings: list[str],
        node: Sender,
        log: Any,
    ) -> None:
        self.name = name
        self.siblings = list(siblings)
        self.node = node
        self.log = log
        self.origin = Origin()
        self.caches = {sib: PeerCache(sib) for sib in siblings}
        self.resynced = not siblings
        self.resyncs = 0
        self.malformed = 0
        self.committed = 0  # sibling records taken over as ours (failover, migrate)
        self.lag_ms: deque[float] = deque(maxlen=LAG_SAMPLES)
        self._asked: dict[str, tuple[int, float]] = {}  # resend asked of each sibling: from, when
        self._resync_started: float | None = None
        self._resync_t0 = 0.0
        self._snapshot_t0: dict[str, float] = {}  # first snapshot batch of this resync, per sibling
        self._resync_asked = 0.0

    # ------------------------------------------------------------- our stream

    def replicate(self, p: Pipeline, made_at: float) -> None:
        """Send every change since the last call to every sibling, in batches a sibling takes.

        A takeover, a mass expiry or a SYN flood can journal more changes at once than one bus
        message may carry: they go as consecutive batches of at most `RESEND_MAX`.
        """
        if not self.siblings:
            return
        journal = p.ct.take_journal()
        macs = p.vswitch.take_journal()
        if not journal and not macs:
            return
        changes: list[SyncRow] = [upsert(r) if alive else delete(r) for alive, r in journal]
        changes += map(learn, macs)
        for start in range(0, len(changes), RESEND_MAX):
            batch = self.origin.add(changes[start : start + RESEND_MAX])
            if batch is None:
                continue
            msg = trusted(SyncBatch, self.name, batch.first_seq, rows_to_wire(batch.changes),
                          False, batch.boot, 0, made_at)  # fmt: skip
            data = encode(msg)
            for sib in self.siblings:
                self.node.send_raw(sib, data)

    def on_request(
        self,
        peer: str,
        msg: SyncRequest,
        p: Pipeline,
        now: float,
        keepalive: Callable[[], None],
    ) -> None:
        """Answer a sibling from the resend log, or with a snapshot when the log falls short.

        `keepalive` runs between snapshot chunks: 100k records take longer than a heartbeat.
        """
        if peer not in self.caches:
            return
        self.replicate(p, now)  # what it gets must include every change so far
        resend = self.origin.resend(msg.from_seq) if msg.from_seq else None
        if resend is not None:
            batches: Iterable[Batch] = [resend]
        else:
            batches = self.origin.snapshot(p.ct, p.vswitch.learned())
            self.log.info("sync.snapshot", to=peer, records=len(p.ct), seq=self.origin.seq)
        for b in batches:
            # Our own changes, made from validated state: no need to check them again here.
            wire = rows_to_wire(b.changes)
            msg_out = trusted(
                SyncBatch, self.name, b.first_seq, wire, b.reset, b.boot, b.until, 0.0
            )
            self.node.send_raw(peer, encode(msg_out))
            keepalive()

    def on_ack(self, peer: str, msg: SyncAck) -> None:
        """A sibling holds our stream up to `msg.seq`."""
        if peer in self.caches:
            self.origin.ack(peer, msg.seq)

    def forget(self, peer: str) -> None:
        """A sibling is down: it no longer holds back our resend log."""
        self.origin.forget(peer)

    def send_acks(self) -> None:
        """Tell each sibling how much of its stream we hold (with every heartbeat)."""
        for sib, cache in self.caches.items():
            if cache.held:
                self.node.send(sib, SyncAck(self.name, cache.held))

    # ------------------------------------------------------------- siblings' streams

    def on_batch(self, peer: str, msg: SyncBatch, p: Pipeline | None, now: float) -> None:
        """Apply a sibling's batch; adopt records of zones that are ours; ask again on a gap."""
        cache = self.caches.get(peer)
        if cache is None:
            return
        if msg.first_seq + len(msg.changes) > MAX_SEQ:
            self._malformed(peer, f"first_seq: {msg.first_seq} past {MAX_SEQ}")
            return
        try:
            changes = rows_from_wire_untrusted(msg.changes)
        except Malformed as e:  # only bad input: a bug of ours raises on, and the card restarts us
            self._malformed(peer, str(e))
            return
        if msg.reset:
            self._snapshot_t0.setdefault(peer, now)
        want = cache.apply(Batch(msg.first_seq, changes, msg.reset, msg.boot, msg.until))
        if msg.made_at and not msg.reset and want is None:
            self.lag_ms.append((now - msg.made_at) * 1000)
        if p is not None:
            self._learn(p, changes, now)
            local = set(p.map.local_vpids())
            zones = {c.zone for c in changes if type(c) is UpsertRow} & local
            if zones or (msg.reset and local):
                self._adopt(p, cache, local if msg.reset else zones)
        if want is not None:
            self._ask(peer, want, msg.first_seq, now)
        if not self.resynced and all(c.synced for c in self.caches.values()):
            self._resync_done("all siblings", now)

    def check_behind(self, peer: str, boot: int, seq: int, now: float) -> bool:
        """A sibling's heartbeat says where its stream is: ask for what we lack (True if we
        lack some). A lost last batch leaves no later batch to show the gap, so a quiet stream
        is repaired here."""
        cache = self.caches.get(peer)
        if cache is None or not boot or cache.snapshot_progress:
            return False  # a snapshot is arriving: it ends behind nobody
        if not cache.synced:
            if not self.resynced:
                return False  # our resync asks for its snapshot itself
            # Our resync ended without it (it was cut off, or silent too long): ask now.
            self._ask(peer, 0, seq, now)
            return True
        if cache.boot == boot and cache.held < seq:
            self._ask(peer, cache.held + 1, seq, now)
            return True
        if cache.boot != boot and seq:
            self._ask(peer, 0, seq, now)  # a new boot whose stream never reached us
            return True
        return False

    def _malformed(self, peer: str, error: str) -> None:
        """A sibling's batch is not a valid piece of its stream: count it, log it, drop it."""
        self.malformed += 1
        self.log.warning("sync.malformed", peer=peer, error=error)

    def _ask(self, peer: str, want: int, got: int, now: float) -> None:
        """Ask `peer` to resend from `want` (0: a snapshot), at most once per retry period."""
        last = self._asked.get(peer)
        if last is not None and now - last[1] < RESYNC_RETRY_S and (last[0] == want or want == 0):
            return  # asked lately: a snapshot (0) most of all is not asked for twice in a row
        self._asked[peer] = (want, now)
        self.log.info("sync.gap", origin=peer, want=want, got=got)
        self.node.send(peer, SyncRequest(self.name, want))

    def _learn(self, p: Pipeline, changes: list[SyncRow], now: float) -> None:
        for c in changes:
            if isinstance(c, LearnRow):
                p.vswitch.learn_remote(c.segment, c.mac.to_bytes(6, "big"), c.ip or None, now,
                                       replicated=True)  # fmt: skip

    def _adopt(self, p: Pipeline, cache: PeerCache, zones: set[int]) -> None:
        """A sibling's changes to VPIDs that are ours now, made before it applied the map that
        moved them (or before a partition let them reach us): connections it opened join our
        conntrack, and those we committed from an older copy catch up, so nothing the old home
        saw in the handover is lost (a copy stuck at SYN_SENT drops every segment of its client)."""
        added, caught_up = merge_copies(p, cache.take(zones))
        if added:
            self.log.info("ct.adopt", origin=cache.origin, records=added)
        if caught_up:
            self.log.info("ct.catch_up", origin=cache.origin, records=caught_up)

    def rehome(self, p: Pipeline, moved: set[int]) -> int:
        """Move copies of `moved` zones that now belong to another sibling into its cache.

        A zone's copies live in the cache of the NIC that owns it, whoever streamed them: the
        old home released them without deletes (a handover), and until the new home streams
        them as its own, the copies we hold are the only ones left should it die before it
        commits (a kill inside a migrate, two NICs lost at once). Zones that came to us were
        committed already: most maps (every failover of two NICs) skip the scan.
        """
        gone = moved - set(p.map.local_vpids())
        if not gone:
            return 0
        owner = {vpid: nic for vpid, nic, _ in p.map.entries() if vpid in gone}
        rehomed = 0
        for origin, cache in self.caches.items():
            away = {z for z in gone if owner.get(z) != origin}
            for change in cache.pop_zones(away):
                target = self.caches.get(owner.get(change.zone, ""))
                if target is not None:
                    rehomed += target.hold([change])
        return rehomed

    def release(self, p: Pipeline, vpids: set[int]) -> int:
        """Our records of `vpids` (moved away) go to their new home's cache as copies; then the
        pipeline forgets them (no deletes journaled). Returns how many records were released."""
        if not vpids:
            return 0
        owner = {vpid: nic for vpid, nic, _ in p.map.entries() if vpid in vpids}
        for rec in p.ct:
            cache = self.caches.get(owner.get(rec.zone, "")) if rec.zone in vpids else None
            if cache is not None:
                cache.hold([upsert(rec)])
        return p.drop_zones(vpids)

    def commit(self, p: Pipeline, vpids: set[int], epoch: int) -> int:
        """Take over VPIDs: their records from the peer caches become our active conntrack."""
        committed = 0
        for origin, cache in self.caches.items():
            records = cache.take(vpids)
            merge_copies(p, records)
            committed += len(records)  # each is tracked now (one we tracked already caught up)
            if records:
                self.log.info(
                    "ct.commit", origin=origin, epoch=epoch, vpids=sorted(vpids),
                    records=len(records),
                )  # fmt: skip
        self.committed += committed
        return committed

    # ------------------------------------------------------------- resync

    def start_resync(self, now: float) -> None:
        """Ask every sibling for a snapshot; `resynced` once every live one has answered."""
        self.resynced = not self.siblings
        self.resyncs += 1
        self._snapshot_t0.clear()
        for cache in self.caches.values():
            cache.synced = False  # only a snapshot answered from now on counts
        self._resync_started = self._resync_asked = self._resync_t0 = now
        self._asked.clear()
        self.log.info("sync.resync.start", siblings=self.siblings, attempt=self.resyncs)
        for sib in self.siblings:
            self.node.send(sib, SyncRequest(self.name, 0))

    def poll_resync(self, is_down: Callable[[str], bool], now: float) -> None:
        """Ask again until every live sibling has answered; a dead one is not waited for."""
        if self.resynced or self._resync_started is None:
            return
        waiting = [s for s, c in self.caches.items() if not c.synced and not is_down(s)]
        started = self._resync_started
        if not waiting and now - started >= RESYNC_RETRY_S:
            self._resync_done("siblings down", now)
        elif now - started >= RESYNC_WAIT_S:
            self._resync_done("timeout", now)
        elif now - self._resync_asked >= RESYNC_RETRY_S:
            self._resync_asked = now
            for sib in waiting:
                self.node.send(sib, SyncRequest(self.name, 0))

    def _resync_done(self, why: str, now: float) -> None:
        self.resynced = True
        records = sum(len(c.records) for c in self.caches.values())
        ms = round((now - self._resync_t0) * 1000, 3)
        # The transfer alone: from the first snapshot batch to the last (the rest is waiting for
        # the siblings' links to come up after a reboot).
        first = min(self._snapshot_t0.values(), default=now)
        transfer_ms = round((now - first) * 1000, 3)
        self.log.info("sync.resync.done", why=why, records=records, ms=ms, transfer_ms=transfer_ms)

    # ------------------------------------------------------------- inspection

    def lag(self) -> dict[str, float | int]:
        """Sync lag of the recent batches applied here, in milliseconds."""
        samples = sorted(self.lag_ms)
        if not samples:
            return {"samples": 0}
        n = len(samples)
        return {
            "samples": n,
            "p50_ms": round(samples[n // 2], 3),
            "p99_ms": round(samples[min(n - 1, n * 99 // 100)], 3),
            "max_ms": round(samples[-1], 3),
        }

    def digests(self, p: Pipeline, now: float) -> dict[str, Any]:
        """What `nicteam verify` compares: our table and each sibling's copy, with sequences.

        O(records): a control command's work, never the periodic stats'.
        """
        self.replicate(p, now)  # the sequence number must cover the whole table
        return {
            "seq": self.origin.seq,
            "digest": p.ct.digest(),
            "records": len(p.ct),
            "peers": {
                o: {"held": c.held, "digest": c.digest(), "records": len(c.records)}
                for o, c in self.caches.items()
            },
        }

    def stats(self) -> dict[str, Any]:
        """Our stream, what each sibling acked, and what we hold of each sibling's stream."""
        return {
            "boot": self.origin.boot,
            "seq": self.origin.seq,
            "acked": dict(self.origin.acked),
            "resynced": self.resynced,
            "resyncs": self.resyncs,
            "malformed": self.malformed,
            "committed": self.committed,
            "lag": self.lag(),
            "peers": {
                o: {
                    "held": c.held,
                    "synced": c.synced,
                    "records": len(c.records),
                    "macs": len(c.macs),
                    "gaps": c.gaps,
                    "snapshot": list(c.snapshot_progress or ()),  # [held, of] while arriving
                }
                for o, c in self.caches.items()
            },
        }


def merge_copies(p: Pipeline, records: list[CtRecord]) -> tuple[int, int]:
    """Take replicated records into our conntrack: (tracked anew, caught up).

    A record we track already stands, moved only to a state further along that a copy reports
    (a later word of the stream, which our own traffic has not overtaken).
    """
    added = caught_up = 0
    for rec in records:
        mine = p.ct.get(rec.key) or p.ct.get(rec.reply_key)
        if mine is None:
            p.ct.insert(rec)
            added += 1
        elif mine.key == rec.key and p.catch_up(mine, rec.state, rec.last_seen):
            caught_up += 1
    return added, caught_up
