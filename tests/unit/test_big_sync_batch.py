"""More changes at once than one bus message carries (a takeover of more than 32,768
connections, a SYN flood in one receive batch, a mass expiry) replicate as batches a sibling
takes, numbered without a gap: before, one oversize batch was dropped as malformed
(`field.changes`) and repaired only later by a resend or a snapshot."""

from __future__ import annotations

from itertools import pairwise

import structlog

from bus.codec import decode_untrusted
from bus.messages import MAX_FRAMES_PER_BATCH, SyncBatch
from nicd.datapath.pipeline import PortKind
from nicd.replication import Replicator
from tests.unit.dpfixtures import make_pipeline, vm
from wire import build
from wire.protocols import TCP_SYN


class Wire:
    def __init__(self) -> None:
        self.raw: list[bytes] = []

    def send(self, peer: str, msg: object) -> bool:
        return True

    def send_raw(self, peer: str, data: bytes) -> bool:
        self.raw.append(data)
        return True


def test_many_changes_at_once_replicate_as_batches_a_sibling_accepts() -> None:
    p = make_pipeline("nic1", ct_limit=100_000)
    p.ct.journal, p.vswitch.journal = [], []
    a = vm(1)
    n = MAX_FRAMES_PER_BATCH + 10
    frames = [
        (PortKind.VF, a.ppid,
         build.tcp_frame(a.mac, vm(2).mac, a.ip, vm(2).ip, 1024 + i % 60000, 80 + i // 60000,
                         TCP_SYN))
        for i in range(n)
    ]  # fmt: skip
    p.process_batch(frames, 1.0)
    wire = Wire()
    rep = Replicator("nic1", ["nic2"], wire, structlog.get_logger())
    rep.replicate(p, 1.0)
    batches = [decode_untrusted(data) for data in wire.raw]  # what nic2's bus does with them
    assert all(isinstance(b, SyncBatch) for b in batches) and len(batches) > 1
    seqs = [(b.first_seq, len(b.changes)) for b in batches if isinstance(b, SyncBatch)]
    assert seqs[0][0] == 1 and sum(count for _, count in seqs) == rep.origin.seq >= n
    assert all(first + count == after for (first, count), (after, _) in pairwise(seqs))
