"""Typed sync rows: each kind round-trips its wire form; every malformed row is a SyncRowError."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address
from typing import Any

import msgpack
import pytest
import structlog
from structlog.testing import capture_logs

import nicd.replication
from bus.codec import decode_untrusted, encode
from bus.messages import SyncBatch
from bus.syncrows import (
    PSEUDO_STATE_NAMES,
    TCP_STATE_NAMES,
    DeleteRow,
    LearnRow,
    SyncOp,
    SyncRow,
    SyncRowError,
    UpsertRow,
    WireRow,
    rows_from_wire_untrusted,
    rows_to_wire,
)
from nicd.datapath.conntrack import PseudoState, TcpState
from nicd.replication import Replicator
from nicd.statesync import Origin, record_of, upsert
from tests.unit.test_replication import Sent
from tests.unit.test_statesync import table_with
from wire.malformed import Malformed
from wire.protocols import PROTO_TCP, PROTO_UDP

V6 = int(IPv6Address("2001:db8::1"))
V4 = int(IPv4Address("10.0.0.1"))

ROWS: list[SyncRow] = [
    UpsertRow(7, 4, PROTO_TCP, V4, V4 + 1, 1000, 80, 0, "ESTABLISHED", "web", True, False,
              1.5, 2.25, 3, 180),
    UpsertRow(2**32 - 1, 6, PROTO_UDP, V6, V6 + 1, 53, 5353, 1, "REPLIED", "", False, True,
              0.0, 0.0, 2**64 - 1, 0),
    DeleteRow(7, 4, PROTO_TCP, V4, V4 + 1, 1000, 80),
    DeleteRow(1, 6, 58, V6, 0, 9, 0),
    LearnRow("lan", 0x020000000009, V4),
    LearnRow("x" * 64, 0xFEFFFFFFFFFF, 0),
]  # fmt: skip


def good_upsert() -> WireRow:
    return ROWS[0].to_wire()


@pytest.mark.parametrize("row", ROWS, ids=lambda r: type(r).__name__)
def test_each_row_kind_round_trips_its_wire_form(row: SyncRow) -> None:
    wire = row.to_wire()
    assert wire[0] == row.op
    assert rows_from_wire_untrusted(msgpack.unpackb(msgpack.packb([wire]))) == [row]


def test_rows_round_trip_through_a_sync_batch() -> None:
    msg = SyncBatch("nic1", 1, rows_to_wire(ROWS), reset=True, boot=3, until=6)
    got = decode_untrusted(encode(msg))
    assert isinstance(got, SyncBatch) and rows_from_wire_untrusted(got.changes) == ROWS


def test_the_wire_form_is_the_records_own() -> None:
    # Mixed versions: an upsert is [UPSERT, *CtRecord.to_wire()], a delete its first 9 fields.
    for rec in table_with(3):
        row = upsert(rec)
        assert row.to_wire() == [SyncOp.UPSERT, *rec.to_wire()]
        assert row.key == rec.key
        again = record_of(row)
        assert again.to_wire() == rec.to_wire() and again.state is rec.state


def test_the_state_names_are_the_datapaths() -> None:
    assert {s.name for s in TcpState} == TCP_STATE_NAMES
    assert {s.name for s in PseudoState} == PSEUDO_STATE_NAMES


UP, DEL, LRN = 1, 2, 3  # as msgpack hands them over: plain ints, no enum


def mutated(index: int, value: object) -> WireRow:
    wire = good_upsert()
    wire[index] = value
    return wire


BAD: list[tuple[object, str]] = [
    ({}, "sync.row.shape"),
    ([1], "sync.row.shape"),
    ([[]], "sync.row.shape"),
    ([(1, 2)], "sync.row.shape"),
    ([[7, 1]], "sync.row.op"),
    ([[True, *good_upsert()[1:]]], "sync.row.op"),
    ([["1", *good_upsert()[1:]]], "sync.row.op"),
    ([good_upsert()[:-1]], "sync.row.arity"),
    ([[DEL, *range(8)]], "sync.row.arity"),
    ([[LRN, "lan", 1]], "sync.row.arity"),
    ([mutated(1, -1)], "sync.row.zone"),
    ([mutated(1, 2**32)], "sync.row.zone"),
    ([mutated(1, 1.0)], "sync.row.zone"),
    ([mutated(2, 5)], "sync.row.family"),
    ([mutated(2, 256)], "sync.row.family"),
    ([mutated(3, 256)], "sync.row.proto"),
    ([mutated(4, 1)], "sync.row.family"),  # an IPv4 address with high bits
    ([mutated(5, 2**64)], "sync.row.src"),
    ([mutated(7, 2**32)], "sync.row.family"),
    ([mutated(8, 65536)], "sync.row.sport"),
    ([mutated(9, False)], "sync.row.dport"),
    ([mutated(10, 2)], "sync.row.origin"),
    ([mutated(11, "REPLIED")], "sync.row.state"),  # a pseudo state for TCP
    ([mutated(11, "BOGUS")], "sync.row.state"),
    ([mutated(11, 3)], "sync.row.state"),
    ([mutated(12, None)], "sync.row.rule"),
    ([mutated(13, 1)], "sync.row.sw_ok"),
    ([mutated(14, "yes")], "sync.row.hw_capable"),
    ([mutated(15, -1.0)], "sync.row.created"),
    ([mutated(15, float("nan"))], "sync.row.created"),
    ([mutated(16, True)], "sync.row.last_seen"),
    ([mutated(17, -1)], "sync.row.packets"),
    ([mutated(18, 2**64)], "sync.row.bytes"),
    ([[UP, 1, 4, PROTO_UDP, *good_upsert()[4:11], "ESTABLISHED",
       *good_upsert()[12:]]], "sync.row.state"),  # a TCP state for UDP
    ([[DEL, 1, 4, 6, 0, 1, 0, 2, 3, -4]], "sync.row.dport"),
    ([[DEL, 1, 4, 6, 0, 2**32, 0, 2, 3, 4]], "sync.row.family"),
    ([[DEL, 1, 4, 6, 0, 1, 0, 2, 3, "4"]], "sync.row.dport"),
    ([[LRN, "", 1, 0]], "sync.row.segment"),
    ([[LRN, "x" * 65, 1, 0]], "sync.row.segment"),
    ([[LRN, b"lan", 1, 0]], "sync.row.segment"),
    ([[LRN, "lan", 1 << 48, 0]], "sync.row.mac"),
    ([[LRN, "lan", 0x010000000001, 0]], "sync.row.mac"),  # a group address
    ([[LRN, "lan", 1, -1]], "sync.row.ip"),
    ([[LRN, "lan", 1, 2**32]], "sync.row.ip"),
]  # fmt: skip


@pytest.mark.parametrize(("rows", "reason"), BAD)
def test_each_malformed_row_is_a_sync_row_error_naming_its_field(rows: object, reason: str) -> None:
    with pytest.raises(SyncRowError) as info:
        rows_from_wire_untrusted([ROWS[4].to_wire(), *rows] if type(rows) is list else rows)
    assert info.value.reason == reason
    assert isinstance(info.value, Malformed) and info.value.field == reason.rsplit(".", 1)[1]


def replicator() -> tuple[Replicator, Sent]:
    node = Sent()
    return Replicator("nic2", ["nic1"], node, structlog.get_logger()), node


def test_a_bad_row_from_a_sibling_is_a_counted_logged_drop() -> None:
    sync, _ = replicator()
    bad = SyncBatch("nic1", 1, [mutated(11, "BOGUS")], boot=5)
    with capture_logs() as logs:
        sync.on_batch("nic1", bad, None, 0.0)
    assert sync.malformed == 1 and sync.caches["nic1"].held == 0
    (event,) = [e for e in logs if e["event"] == "sync.malformed"]
    assert event["peer"] == "nic1" and event["error"].startswith("sync.row.state")


def test_a_bug_of_ours_while_decoding_is_not_taken_for_bad_input(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(rows: Any) -> list[SyncRow]:
        raise TypeError("our own bug")

    monkeypatch.setattr(nicd.replication, "rows_from_wire_untrusted", broken)
    sync, _ = replicator()
    batch = Origin().add([ROWS[4]])
    assert batch is not None
    msg = SyncBatch("nic1", 1, rows_to_wire(batch.changes), boot=batch.boot)
    with pytest.raises(TypeError):
        sync.on_batch("nic1", msg, None, 0.0)
    assert sync.malformed == 0
