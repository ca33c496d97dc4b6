"""The replication stream: numbering, gaps and resends, snapshots, acks, and the commit."""

from __future__ import annotations

import dataclasses
import random
from ipaddress import IPv4Address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bus.syncrows import (
    DeleteRow,
    SyncOp,
    SyncRow,
    SyncRowError,
    UpsertRow,
    WireRow,
    rows_from_wire_untrusted,
    rows_to_wire,
)
from nicd.datapath.conntrack import ConntrackTable, Timeouts
from nicd.datapath.vswitch import LearnedMac
from nicd.statesync import Batch, Origin, PeerCache, delete, learn, upsert
from wire import build
from wire.addr import mac_bytes
from wire.frames import parse_frame_untrusted
from wire.protocols import TCP_ACK, TCP_SYN

UPSERT, DELETE, LEARN = SyncOp.UPSERT, SyncOp.DELETE, SyncOp.LEARN
A, B = mac_bytes("02:00:00:00:00:01"), mac_bytes("02:00:00:00:00:02")
IP_A, IP_B = IPv4Address("10.0.0.1"), IPv4Address("10.0.0.2")


def table_with(n: int, zone: int = 1) -> ConntrackTable:
    ct = ConntrackTable(Timeouts(), 1000)
    ct.journal = []
    for i in range(n):
        frame = build.tcp_frame(A, B, IP_A, IP_B, 1000 + i, 80, TCP_SYN)
        ct.create(zone, 0, parse_frame_untrusted(frame), 1.0, "r", True, True)
    return ct


def changes_of(ct: ConntrackTable) -> list[SyncRow]:
    return [upsert(r) if alive else delete(r) for alive, r in ct.take_journal()]


def ct_changes_of(ct: ConntrackTable) -> list[UpsertRow | DeleteRow]:
    return [upsert(r) if alive else delete(r) for alive, r in ct.take_journal()]


def added(origin: Origin, changes: list[SyncRow]) -> Batch:
    """`Origin.add` of changes there are (so never None)."""
    batch = origin.add(changes)
    assert batch is not None
    return batch


def test_journal_records_creates_state_changes_and_removals() -> None:
    ct = table_with(2)
    first, second = list(ct)
    reply = build.tcp_frame(B, A, IP_B, IP_A, 80, 1000, TCP_SYN | TCP_ACK)
    assert ct.update(first, True, parse_frame_untrusted(reply), 2.0)
    ack = build.tcp_frame(A, B, IP_A, IP_B, 1000, 80, TCP_ACK)
    ct.update(first, False, parse_frame_untrusted(ack), 2.0)  # established: a change
    ct.update(first, False, parse_frame_untrusted(ack), 2.1)  # same state: not a change
    ct.remove(second)
    ops = [(c.op, c.state if isinstance(c, UpsertRow) else c.key[5]) for c in ct_changes_of(ct)]
    # Four changes to `first` and `second`, each sent as the record is when drained.
    est, sent = (UPSERT, "ESTABLISHED"), (UPSERT, "SYN_SENT")
    assert ops == [est, sent, est, est, (DELETE, 1001)]
    assert ct.take_journal() == []


def test_in_order_batches_build_the_same_state() -> None:
    ct = table_with(3)
    origin, cache = Origin(), PeerCache("nic1")
    batch = origin.add(changes_of(ct))
    assert batch is not None and (batch.first_seq, batch.last_seq) == (1, 3)
    assert cache.apply(batch) is None and cache.synced and cache.held == 3
    ct.remove(next(iter(ct)))
    assert cache.apply(added(origin, changes_of(ct))) is None
    assert len(cache.records) == 2 == len(ct)


def test_a_gap_asks_for_a_resend_which_the_log_answers() -> None:
    ct = table_with(0)
    origin, cache = Origin(), PeerCache("nic1")
    batches = []
    for i in range(3):
        frame = build.tcp_frame(A, B, IP_A, IP_B, 2000 + i, 80, TCP_SYN)
        ct.create(1, 0, parse_frame_untrusted(frame), 1.0, "r", True, True)
        batches.append(added(origin, changes_of(ct)))
    assert cache.apply(batches[0]) is None
    assert cache.apply(batches[2]) == 2 and cache.gaps == 1
    resend = origin.resend(2)
    assert resend is not None and (resend.first_seq, resend.last_seq) == (2, 3)
    assert cache.apply(resend) is None and len(cache.records) == 3
    assert cache.apply(batches[1]) is None and cache.held == 3  # a late duplicate: skipped


def test_acks_trim_the_log_and_a_lost_start_needs_a_snapshot() -> None:
    ct = table_with(4)
    origin = Origin()
    origin.add(changes_of(ct))
    origin.ack("nic2", 2)
    origin.ack("nic3", 3)
    assert origin.resend(3) is not None and origin.resend(2) is None  # 1..2 acked by everyone
    origin.ack("nic2", 99)  # from before a restart of ours: ignored
    assert origin.acked["nic2"] == 2
    cache = PeerCache("nic1", next_seq=7)  # held state from an older life of the origin
    stale = upsert(next(iter(table_with(1, zone=9))))
    cache.records[stale.key] = stale
    progress = []
    for batch in origin.snapshot(ct, chunk=3):
        assert cache.apply(batch) is None
        progress.append(cache.snapshot_progress)
    assert progress == [(3, 4), None]  # what `nicteam wait` shows while a resync runs
    assert cache.held == origin.seq == 4 and len(cache.records) == 4


def test_take_hands_over_one_zones_records() -> None:
    cache = PeerCache("nic1")
    for zone in (1, 2):
        ct = table_with(2, zone)
        cache.apply(Batch(cache.next_seq, changes_of(ct)))
    taken = cache.take({2})
    assert sorted(r.zone for r in taken) == [2, 2] and len(cache.records) == 2
    mine = ConntrackTable(Timeouts(), 10)
    for rec in taken:
        mine.insert(rec)
    assert len(mine) == 2


@pytest.mark.parametrize(
    "bad",
    [
        {},
        [[]],
        [[UPSERT, 1]],
        [[DELETE, *range(8)]],
        [[DELETE, *range(8), -1]],
        [[7, 1]],
        [[UPSERT, *([0] * 18)]],
    ],
)
def test_bad_changes_are_refused(bad: object) -> None:
    with pytest.raises(SyncRowError):
        rows_from_wire_untrusted(bad)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 5)), max_size=40), st.randoms())
def test_any_delivery_order_converges_with_resends(
    script: list[tuple[bool, int]], rnd: random.Random
) -> None:
    """Batches lost, reordered or duplicated: with resends the cache ends equal to the origin."""
    ct = ConntrackTable(Timeouts(), 100)
    ct.journal = []
    origin, cache = Origin(), PeerCache("nic1")
    sent: list[Batch] = []
    for create, port in script:
        frame = build.tcp_frame(A, B, IP_A, IP_B, 3000 + port, 80, TCP_SYN)
        pkt = parse_frame_untrusted(frame)
        rec, _ = ct.lookup(1, pkt)
        if create and rec is None:
            ct.create(1, 0, pkt, 1.0, "r", True, True)
        elif not create and rec is not None:
            ct.remove(rec)
        batch = origin.add(changes_of(ct))
        if batch is not None:
            sent.append(batch)
    delivered = [b for b in sent if rnd.random() < 0.7]
    rnd.shuffle(delivered)
    delivered += [b for b in sent if rnd.random() < 0.2]
    for batch in delivered:
        want = cache.apply(batch)
        if want is not None:
            resend = origin.resend(want)
            assert resend is not None
            cache.apply(resend)
    final = origin.resend(cache.next_seq)
    assert final is not None
    cache.apply(final)
    want_keys = {upsert(r).key for r in ct}
    assert set(cache.records) == want_keys


def test_a_restarted_origin_replaces_its_old_stream() -> None:
    old, cache = Origin(), PeerCache("nic1")
    ct = table_with(3)
    assert cache.apply(added(old, changes_of(ct))) is None
    assert cache.held == 3
    new = Origin()  # the origin's worker rebooted: numbering starts again at 1
    assert new.boot != old.boot
    fresh = table_with(1, zone=2)
    assert cache.apply(added(new, changes_of(fresh))) is None  # not skipped as an overlap
    assert cache.restarts == 1 and cache.held == 1 and cache.synced
    assert {k[0] for k in cache.records} == {2}
    assert cache.digest() == fresh.digest()


def test_a_restarted_origin_mid_stream_is_a_gap_from_its_start() -> None:
    old, new, cache = Origin(), Origin(), PeerCache("nic1")
    cache.apply(added(old, changes_of(table_with(3))))
    new.add(changes_of(table_with(2)))
    second = added(new, changes_of(table_with(1, zone=5)))
    assert cache.apply(second) == 1  # ask from the new boot's first change
    assert cache.records == {} and not cache.synced


def test_the_copy_digests_like_the_origin_table() -> None:
    ct = table_with(4)
    origin, cache = Origin(), PeerCache("nic1")
    cache.apply(added(origin, changes_of(ct)))
    assert cache.digest() == ct.digest()
    ct.remove(next(iter(ct)))
    assert cache.digest() != ct.digest()
    cache.apply(added(origin, changes_of(ct)))
    assert cache.digest() == ct.digest()


def test_learned_macs_travel_in_the_stream_and_in_snapshots() -> None:
    mac = LearnedMac("lan", mac_bytes("02:00:00:00:00:09"), int(IP_B), 1.0)
    change = learn(mac)
    assert change.to_wire() == [LEARN, "lan", 0x020000000009, int(IP_B)]
    rows: list[SyncRow] = [change, learn(LearnedMac("lan", B, None, 1.0))]
    assert rows_from_wire_untrusted(rows_to_wire(rows)) == rows
    origin, cache = Origin(), PeerCache("nic1")
    cache.apply(added(origin, [change]))
    assert cache.macs == {("lan", 0x020000000009): int(IP_B)}
    late = PeerCache("nic1")
    for batch in origin.snapshot(table_with(1), [mac]):
        late.apply(batch)
    assert late.macs == cache.macs and len(late.records) == 1


@pytest.mark.parametrize(
    "change",
    [
        [LEARN, "", 1, 0],
        [LEARN, "lan", 1 << 48, 0],
        [LEARN, "lan", 0x010000000001, 0],  # a group address
        [LEARN, "lan", 1, -1],
        [LEARN, "lan", 1],
    ],
)
def test_malformed_learns_are_refused(change: WireRow) -> None:
    with pytest.raises(SyncRowError):
        rows_from_wire_untrusted([change])


def test_a_snapshot_of_more_rows_than_numbers_still_numbers_from_1() -> None:
    ct = table_with(5)
    ct.take_journal()
    origin = Origin()  # numbering began after the table filled (no journal then)
    (batch,) = origin.snapshot(ct)
    assert batch.first_seq == 1 and batch.last_seq == origin.seq == 5


def test_a_cache_is_synced_only_once_the_snapshots_last_batch_is_in() -> None:
    ct = table_with(7)
    origin, cache = Origin(), PeerCache("nic1")
    origin.add(changes_of(ct))
    first, *rest = origin.snapshot(ct, chunk=3)
    assert first.until == origin.seq == 7 and all(b.until == 0 for b in rest)
    cache.apply(first)
    assert not cache.synced and len(cache.records) == 3
    for batch in rest:
        cache.apply(batch)
    assert cache.synced and cache.digest() == ct.digest()


def test_an_empty_snapshot_leaves_the_cache_synced() -> None:
    # A NIC with no VMs has nothing to stream: its siblings must not wait 10 s for more.
    cache = PeerCache("nic3")
    (batch,) = Origin().snapshot([])
    assert cache.apply(batch) is None
    assert cache.synced and cache.snapshot_progress is None


def test_a_resend_past_numbers_a_snapshot_skipped_is_a_snapshot() -> None:
    ct = table_with(5)
    origin = Origin()
    origin.add(changes_of(table_with(2)))
    list(origin.snapshot(ct))  # 5 rows, 2 numbers given out: the sequence skips to 5
    assert origin.resend(2) is None  # the log cannot say what 3..5 were


def test_hold_keeps_what_the_origin_streamed_over_a_handed_copy() -> None:
    ct = table_with(2)
    cache = PeerCache("nic2")
    own = changes_of(ct)
    cache.apply(Batch(1, own, boot=7))
    assert all(isinstance(c, UpsertRow) for c in own)
    ups = [c for c in own if isinstance(c, UpsertRow)]
    stale = [dataclasses.replace(ups[0], rule="other-rule"), *ups[1:]]  # older than the origin's
    assert cache.hold(stale) == 0 and cache.records[ups[0].key] == own[0]
    assert cache.hold([upsert(r) for r in table_with(1, zone=9)]) == 1
    assert len(cache.pop_zones({9})) == 1 and len(cache.records) == 2
