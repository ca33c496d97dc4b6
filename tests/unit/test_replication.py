"""The worker's replication driver asks for what a sibling's heartbeat says it lacks."""

from __future__ import annotations

from typing import Any

import structlog

from bus.messages import SyncBatch, SyncRequest
from bus.syncrows import rows_to_wire
from nicd.replication import RESYNC_RETRY_S, Replicator
from nicd.statesync import Origin
from tests.unit.test_statesync import changes_of, table_with


class Sent:
    """A stand-in bus node that keeps what is sent."""

    def __init__(self) -> None:
        self.out: list[tuple[str, Any]] = []

    def send(self, peer: str, msg: Any) -> bool:
        self.out.append((peer, msg))
        return True

    def send_raw(self, peer: str, data: bytes) -> bool:
        self.out.append((peer, data))
        return True


def replicator() -> tuple[Replicator, Sent]:
    node = Sent()
    sync = Replicator("nic2", ["nic1"], node, structlog.get_logger())
    return sync, node


def synced_copy(sync: Replicator, origin: Origin, n: int) -> None:
    batch = origin.add(changes_of(table_with(n)))
    assert batch is not None
    msg = SyncBatch("nic1", batch.first_seq, rows_to_wire(batch.changes), False, batch.boot, 0, 0.0)
    sync.on_batch("nic1", msg, None, 0.0)


def test_a_quiet_stream_whose_last_batch_was_lost_is_repaired_from_the_heartbeat() -> None:
    clock = [100.0]
    sync, node = replicator()
    origin = Origin()
    synced_copy(sync, origin, 3)
    assert sync.caches["nic1"].synced and sync.caches["nic1"].held == 3
    origin.add(changes_of(table_with(1)))  # change 4: its batch never arrives
    sync.check_behind("nic1", origin.boot, origin.seq, clock[0])
    assert node.out == [("nic1", SyncRequest("nic2", 4))]
    sync.check_behind("nic1", origin.boot, origin.seq, clock[0])  # the next beat: asked already
    assert len(node.out) == 1
    clock[0] += RESYNC_RETRY_S  # the resend was lost too: ask again
    sync.check_behind("nic1", origin.boot, origin.seq, clock[0])
    assert len(node.out) == 2


def test_a_copy_that_holds_everything_or_awaits_a_snapshot_asks_nothing() -> None:
    clock = [100.0]
    sync, node = replicator()
    origin = Origin()
    sync.check_behind("nic1", origin.boot, 5, clock[0])  # not synced yet: the resync asks, not this
    synced_copy(sync, origin, 2)
    sync.check_behind("nic1", origin.boot, origin.seq, clock[0])
    assert node.out == []
    sync.check_behind("nic1", origin.boot + 1, 3, clock[0])  # a new boot we never heard from
    assert node.out == [("nic1", SyncRequest("nic2", 0))]


def test_a_copy_our_resync_ended_without_is_asked_for_when_its_origin_speaks() -> None:
    clock = [100.0]
    sync, node = replicator()
    sync.start_resync(clock[0])
    node.out.clear()
    sync.poll_resync(lambda sib: True, clock[0])  # nic1 silent: the resync ends without it ...
    clock[0] += 1.0
    sync.poll_resync(lambda sib: True, clock[0])
    assert sync.resynced and not sync.caches["nic1"].synced
    assert sync.check_behind(
        "nic1", 77, 12, clock[0]
    )  # ... so its first beat after brings a snapshot
    assert node.out == [("nic1", SyncRequest("nic2", 0))]
