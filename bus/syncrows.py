"""The rows of the replication stream (`SyncBatch.changes`), declared once and typed.

A row is one change of an origin NIC's state: an `UpsertRow` (a conntrack record as it is now,
its fields by name), a `DeleteRow` (a record's key: the record is gone) or a `LearnRow` (a
remote MAC, and the IPv4 address ARP showed for it, learned on an uplink). On the wire a row is
the compact msgpack array it always was: ``[op, *fields]``, addresses as (high, low) u64 halves;
``to_wire`` makes it, and `rows_from_wire_untrusted` is the one way back for rows from a peer.
It checks every field and raises only `SyncRowError` (a `Malformed`) naming the field.

Rows are slotted dataclasses but not frozen: a frozen dataclass's ``__init__`` costs eight
times as much per row (1.2 against 0.15 us, 16 fields), and every conntrack change and every
record of a 100k snapshot makes one. They are values all the same: nothing mutates a row (the
log, the caches and `hold` share them); a change is a new row.

Bus knows no datapath: the conntrack state names a record may carry are declared here as data
(a unit test holds them equal to the datapath's ``TcpState`` and ``PseudoState``).
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Final, NoReturn

from wire.malformed import Malformed
from wire.protocols import PROTO_TCP

__all__ = [
    "PSEUDO_STATE_NAMES",
    "TCP_STATE_NAMES",
    "DeleteRow",
    "LearnRow",
    "RowKey",
    "SyncOp",
    "SyncRow",
    "SyncRowError",
    "UpsertRow",
    "WireRow",
    "rows_from_wire_untrusted",
    "rows_to_wire",
]

# The datapath's conntrack states by name (nicd.datapath.conntrack.TcpState / PseudoState).
TCP_STATE_NAMES: Final = frozenset(
    {"SYN_SENT", "SYN_RECV", "ESTABLISHED", "FIN_WAIT", "CLOSE_WAIT", "LAST_ACK", "TIME_WAIT",
     "CLOSE"}
)  # fmt: skip
PSEUDO_STATE_NAMES: Final = frozenset({"UNREPLIED", "REPLIED"})

MAX_SEGMENT: Final = 64  # characters of a segment name in a learn
_U16: Final = 0xFFFF
_U32: Final = 0xFFFF_FFFF
_U64: Final = 2**64 - 1

RowKey = tuple[int, int, int, int, int, int, int]  # zone, family, proto, src, dst, sport, dport
WireRow = list[Any]  # a row as msgpack carries it: [op, *fields]


class SyncOp(enum.IntEnum):
    """What a row does to a sibling's copy; the first item of its wire form."""

    UPSERT = 1
    DELETE = 2
    LEARN = 3


class SyncRowError(Malformed):
    """A row from a peer that is not a valid change; ``reason`` is ``sync.row.<field>``."""

    def __init__(self, field: str, why: str) -> None:
        super().__init__(f"sync.row.{field}", why)
        self.field = field


@dataclass(slots=True)
class UpsertRow:
    """A conntrack record as it is now: a sibling's copy of it becomes this."""

    op: ClassVar[SyncOp] = SyncOp.UPSERT
    zone: int
    family: int
    proto: int
    src: int
    dst: int
    sport: int
    dport: int
    origin: int  # rules.Direction of the first packet
    state: str  # a name of TCP_STATE_NAMES (TCP) or PSEUDO_STATE_NAMES (everything else)
    rule: str
    sw_ok: bool
    hw_capable: bool
    created: float
    last_seen: float
    packets: int
    bytes: int

    @property
    def key(self) -> RowKey:
        """The record's original-direction key (the datapath's ``CtKey``)."""
        return (self.zone, self.family, self.proto, self.src, self.dst, self.sport, self.dport)

    def to_wire(self) -> WireRow:
        """``[UPSERT, *record fields]``: the same 18 fields as ``CtRecord.to_wire``."""
        src, dst = self.src, self.dst
        return [
            1, self.zone, self.family, self.proto, src >> 64, src & _U64, dst >> 64, dst & _U64,
            self.sport, self.dport, self.origin, self.state, self.rule, self.sw_ok,
            self.hw_capable, self.created, self.last_seen, self.packets, self.bytes,
        ]  # fmt: skip


@dataclass(slots=True)
class DeleteRow:
    """A conntrack record is gone: a sibling drops its copy of the record with this key."""

    op: ClassVar[SyncOp] = SyncOp.DELETE
    zone: int
    family: int
    proto: int
    src: int
    dst: int
    sport: int
    dport: int

    @property
    def key(self) -> RowKey:
        """The record's original-direction key."""
        return (self.zone, self.family, self.proto, self.src, self.dst, self.sport, self.dport)

    def to_wire(self) -> WireRow:
        """``[DELETE, *key]``: the 9 ints of the key's wire form."""
        src, dst = self.src, self.dst
        return [2, self.zone, self.family, self.proto, src >> 64, src & _U64, dst >> 64,
                dst & _U64, self.sport, self.dport]  # fmt: skip


@dataclass(slots=True)
class LearnRow:
    """A remote MAC learned on an uplink of `segment`, with its IPv4 address (0: none known)."""

    op: ClassVar[SyncOp] = SyncOp.LEARN
    segment: str
    mac: int  # 48-bit, unicast
    ip: int

    def to_wire(self) -> WireRow:
        """``[LEARN, segment, mac, ip]``."""
        return [3, self.segment, self.mac, self.ip]


SyncRow = UpsertRow | DeleteRow | LearnRow


def rows_to_wire(rows: list[SyncRow]) -> list[WireRow]:
    """The wire form of our own rows (made from validated state: not checked again)."""
    return [row.to_wire() for row in rows]


# -- decoding rows from a peer -----------------------------------------------------------------

# Key fields in wire order -> inclusive upper bound (every one is an int >= 0).
_KEY_BOUNDS: Final = (
    ("zone", _U32), ("family", 0xFF), ("proto", 0xFF), ("src", _U64), ("src", _U64),
    ("dst", _U64), ("dst", _U64), ("sport", _U16), ("dport", _U16),
)  # fmt: skip
# The record's fields after the key, in wire order -> an int's inclusive bound, or the type.
_REST: Final[tuple[tuple[str, int | type], ...]] = (
    ("origin", 1), ("state", str), ("rule", str), ("sw_ok", bool), ("hw_capable", bool),
    ("created", float), ("last_seen", float), ("packets", _U64), ("bytes", _U64),
)  # fmt: skip
_UPSERT_LEN: Final = 1 + len(_KEY_BOUNDS) + len(_REST)
_DELETE_LEN: Final = 1 + len(_KEY_BOUNDS)
_INT: Final = {int}


def rows_from_wire_untrusted(rows: object) -> list[SyncRow]:
    """Decode a peer's rows (`SyncBatch.changes`); raises only `SyncRowError`, naming the field."""
    if type(rows) is not list:
        raise SyncRowError("shape", "rows must be a list")
    out: list[SyncRow] = []
    append = out.append
    for row in rows:
        if type(row) is not list or not row:
            raise SyncRowError("shape", "a row must be a non-empty list")
        op = row[0]
        if type(op) is not int:
            raise SyncRowError("op", f"unknown op {op!r}")
        if op == 1 and len(row) == _UPSERT_LEN:
            append(_upsert(row))
        elif op == 2 and len(row) == _DELETE_LEN:
            append(DeleteRow(*_key(row)))
        elif op == 3 and len(row) == 4:
            append(_learn(row))
        elif 1 <= op <= 3:
            raise SyncRowError("arity", f"a {SyncOp(op).name} row of {len(row)} items")
        else:
            raise SyncRowError("op", f"unknown op {op!r}")
    return out


def _key(row: WireRow) -> RowKey:
    """The key of an upsert or delete row, checked: ranges, family and address sizes."""
    wire = row[1:_DELETE_LEN]
    # One C-level pass for the usual, valid row; the field-by-field pass only names the culprit.
    if set(map(type, wire)) != _INT or min(wire) < 0:
        _name_bad_key(wire)
    zone, family, proto, src_hi, src_lo, dst_hi, dst_lo, sport, dport = wire
    if zone > _U32 or proto > 0xFF or max(src_hi, src_lo, dst_hi, dst_lo) > _U64:
        _name_bad_key(wire)
    if sport > _U16 or dport > _U16:
        _name_bad_key(wire)
    src, dst = src_hi << 64 | src_lo, dst_hi << 64 | dst_lo
    if family not in (4, 6) or max(src, dst) >> (32 if family == 4 else 128):
        raise SyncRowError("family", "must be 4 or 6, with addresses to match")
    return zone, family, proto, src, dst, sport, dport


def _name_bad_key(wire: WireRow) -> NoReturn:
    for (name, high), value in zip(_KEY_BOUNDS, wire, strict=True):
        if type(value) is not int or not 0 <= value <= high:
            raise SyncRowError(name, f"must be an int in 0..{high}")
    raise AssertionError("unreachable: a key field the fast check refused passes here")


def _upsert(row: WireRow) -> UpsertRow:
    zone, family, proto, src, dst, sport, dport = _key(row)
    (origin, state, rule, sw_ok, hw_capable, created, last_seen, packets, nbytes) = row[
        _DELETE_LEN:
    ]
    if not (
        type(origin) is int
        and 0 <= origin <= 1
        and type(state) is str
        and type(rule) is str
        and type(sw_ok) is bool
        and type(hw_capable) is bool
        and type(packets) is int
        and 0 <= packets <= _U64
        and type(nbytes) is int
        and 0 <= nbytes <= _U64
    ):
        _name_bad_rest(row[_DELETE_LEN:])
    created = _seconds("created", created)
    last_seen = _seconds("last_seen", last_seen)
    if state not in (TCP_STATE_NAMES if proto == PROTO_TCP else PSEUDO_STATE_NAMES):
        raise SyncRowError("state", "unknown or wrong for the protocol")
    return UpsertRow(zone, family, proto, src, dst, sport, dport, origin, state, rule, sw_ok,
                     hw_capable, created, last_seen, packets, nbytes)  # fmt: skip


def _name_bad_rest(wire: WireRow) -> NoReturn:
    for (name, kind), value in zip(_REST, wire, strict=True):
        if isinstance(kind, int):
            if type(value) is not int or not 0 <= value <= kind:
                raise SyncRowError(name, f"must be an int in 0..{kind}")
        elif kind is not float and type(value) is not kind:
            raise SyncRowError(name, f"must be a {kind.__name__}")
    raise AssertionError("unreachable: a record field the fast check refused passes here")


def _seconds(name: str, value: object) -> float:
    # Exact types: a bool is an int, and must not pass for seconds.
    if type(value) is float:
        if math.isfinite(value) and value >= 0:
            return value
    elif type(value) is int and value >= 0:
        return float(value)
    raise SyncRowError(name, "must be finite seconds >= 0")


def _learn(row: WireRow) -> LearnRow:
    _, segment, mac, ip = row
    if type(segment) is not str or not 0 < len(segment) <= MAX_SEGMENT:
        raise SyncRowError("segment", f"must be a name of 1..{MAX_SEGMENT} characters")
    if type(mac) is not int or not 0 <= mac < 1 << 48 or (mac >> 40) & 1:
        raise SyncRowError("mac", "must be a unicast 48-bit int")
    if type(ip) is not int or not 0 <= ip <= _U32:
        raise SyncRowError("ip", "must be an IPv4 int (0: none)")
    return LearnRow(segment, mac, ip)
