"""Connection tracking for the slow path: zones, the TCP state machine, timeouts and expiry.

Theory of operation. Every VPID has its own zone (zone = VPID), so identical tuples on two VMs
never meet. A record is keyed by ``(zone, family, proto, src, dst, sport, dport)`` in its
original direction; the table dict holds that key and the reply key, both mapping to the same
`CtRecord`, so one lookup tells the record and the direction. TCP and UDP use their ports;
ICMP/ICMPv6 echo uses ``(identifier, 0)`` in *both* directions so request and reply pair up;
every other protocol tracks ports ``(0, 0)``.

TCP follows Linux's ``tcp_conntracks`` table (nf_conntrack_proto_tcp.c) restricted to our
states: a segment's flags are classified into one `TcpEvent` (Linux ``get_conntrack_index``,
after its ``tcp_valid_flags`` check), and ``TCP_TRANSITIONS[(state, is_reply, event)]`` gives
the next state; a missing pair is Linux's ``sIV``, an invalid segment the caller drops.
Window tracking (sequence numbers) is not modelled.
UDP, ICMP and other protocols only have `PseudoState`: UNREPLIED until the first reply.

A record is ``established`` once TCP is ESTABLISHED or a pseudo flow has been REPLIED;
``hw_ok`` is derived (``hw_capable and established``), so it can never disagree with the
state. Timeouts follow OVS userspace conntrack and depend on the state.

Expiry never scans the table: each record sits in one bucket of a timer wheel (buckets of
`TICK` seconds on a heap of bucket times), scheduled no later than its true deadline
``last_seen + timeout`` nor more than `HORIZON` ahead. Traffic only moves ``last_seen``
forward, so it needs no rescheduling; a state change to a shorter timeout moves the record to
an earlier bucket. `expire` pops the due buckets, removes records whose deadline has passed
and re-buckets the rest.
"""

from __future__ import annotations

import hashlib
import heapq
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from enum import Enum
from typing import Any

from nicd.datapath.rules import Direction
from wire.frames import Packet
from wire.protocols import (
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_TCP,
    PROTO_UDP,
    TCP_ACK,
    TCP_FIN,
    TCP_RST,
    TCP_SYN,
)

CtKey = tuple[int, int, int, int, int, int, int]  # zone, family, proto, src, dst, sport, dport

TICK = 1.0  # timer wheel bucket width, seconds
# A record is looked at again at least this often, even when its deadline is a day away: that
# bounds how long a stale bucket entry (left by a reschedule or `remove`) keeps a record alive.
HORIZON = 300.0


class TcpState(Enum):
    """Linux conntrack TCP states (nf_conntrack_tcp.h) that we track."""

    SYN_SENT = "SYN_SENT"
    SYN_RECV = "SYN_RECV"
    ESTABLISHED = "ESTABLISHED"
    FIN_WAIT = "FIN_WAIT"
    CLOSE_WAIT = "CLOSE_WAIT"
    LAST_ACK = "LAST_ACK"
    TIME_WAIT = "TIME_WAIT"
    CLOSE = "CLOSE"


class TcpEvent(Enum):
    """What a TCP segment means to the state machine (Linux ``TCP_*_SET``)."""

    SYN = "SYN"
    SYNACK = "SYNACK"
    FIN = "FIN"
    ACK = "ACK"
    RST = "RST"


class PseudoState(Enum):
    """State of a UDP, ICMP or other-protocol flow."""

    UNREPLIED = "UNREPLIED"
    REPLIED = "REPLIED"


CtState = TcpState | PseudoState

# Linux tcp_valid_flags: apart from RST, only these combinations are segments at all (PSH,
# URG, ECE and CWR never change state); a bare FIN, SYN+FIN or no flags is invalid. RST wins
# over any other flag (Linux would rather drop RST+SYN as malformed; we close either way).
_STATE_FLAGS = TCP_FIN | TCP_SYN | TCP_ACK
_EVENTS: dict[int, TcpEvent] = {
    TCP_SYN: TcpEvent.SYN,
    TCP_SYN | TCP_ACK: TcpEvent.SYNACK,
    TCP_FIN | TCP_ACK: TcpEvent.FIN,
    TCP_ACK: TcpEvent.ACK,
}


def classify(tcp_flags: int) -> TcpEvent | None:
    """The event a segment's flags stand for, or None for an invalid flag combination."""
    if tcp_flags & TCP_RST:
        return TcpEvent.RST
    return _EVENTS.get(tcp_flags & _STATE_FLAGS)


_SS, _SR, _ES, _FW, _CW, _LA, _TW, _CL = TcpState
_IV = None  # invalid: the caller drops the segment
_ORIG, _REPLY = False, True

# Linux tcp_conntracks[dir][event][state], our states only; a cell equal to its column is
# Linux's sIG (ignored: accepted, state kept) or a plain self-loop. Departures from Linux:
# - SYN_SENT2 (simultaneous open: reply SYN in SYN_SENT) is folded into SYN_RECV;
# - a reply SYN in TIME_WAIT is invalid, not a reopen with the roles swapped: the record's
#   direction and rule would be wrong; the caller may remove the record and retry.
# fmt: off
_TCP_GRID: dict[tuple[bool, TcpEvent], tuple[TcpState | None, ...]] = {
    #                        SYN_SENT SYN_RECV ESTABL FIN_WAIT CLOSE_WT LAST_ACK TIME_WT CLOSE
    (_ORIG, TcpEvent.SYN):    (_SS,   _SR,     _ES,   _FW,     _CW,     _LA,     _SS,    _SS),
    (_ORIG, TcpEvent.SYNACK): (_IV,   _SR,     _IV,   _IV,     _IV,     _IV,     _IV,    _IV),
    (_ORIG, TcpEvent.FIN):    (_IV,   _FW,     _FW,   _LA,     _LA,     _LA,     _TW,    _CL),
    (_ORIG, TcpEvent.ACK):    (_IV,   _ES,     _ES,   _CW,     _CW,     _TW,     _TW,    _CL),
    (_ORIG, TcpEvent.RST):    (_CL,   _CL,     _CL,   _CL,     _CL,     _CL,     _CL,    _CL),
    (_REPLY, TcpEvent.SYN):   (_SR,   _IV,     _IV,   _IV,     _IV,     _IV,     _IV,    _IV),
    (_REPLY, TcpEvent.SYNACK):(_SR,   _SR,     _ES,   _FW,     _CW,     _LA,     _TW,    _CL),
    (_REPLY, TcpEvent.FIN):   (_IV,   _FW,     _FW,   _LA,     _LA,     _LA,     _TW,    _CL),
    (_REPLY, TcpEvent.ACK):   (_SS,   _SR,     _ES,   _CW,     _CW,     _TW,     _TW,    _CL),
    (_REPLY, TcpEvent.RST):   (_CL,   _CL,     _CL,   _CL,     _CL,     _CL,     _CL,    _CL),
}
# fmt: on

#: (state, is_reply, event) -> next state; a missing pair is an invalid segment. Notably:
#: ESTABLISHED + FIN -> FIN_WAIT; FIN_WAIT + ACK (either side, as Linux) -> CLOSE_WAIT; the
#: second FIN -> LAST_ACK; its ACK -> TIME_WAIT; an original SYN in TIME_WAIT/CLOSE reopens
#: (RFC 1122 4.2.2.13); RST -> CLOSE from anywhere (Linux also checks its sequence number).
TCP_TRANSITIONS: dict[tuple[TcpState, bool, TcpEvent], TcpState] = {
    (state, is_reply, event): new
    for (is_reply, event), row in _TCP_GRID.items()
    for state, new in zip(TcpState, row, strict=True)
    if new is not None
}

_TCP_TIMEOUT = {s: "tcp_" + s.name.lower() for s in TcpState}
_PSEUDO_TIMEOUT = {
    PROTO_UDP: ("udp_first", "udp_multiple"),
    PROTO_ICMP: ("icmp_first", "icmp_reply"),
    PROTO_ICMPV6: ("icmp_first", "icmp_reply"),
}
_OTHER_TIMEOUT = ("other_first", "other_multiple")
_STATES: dict[str, CtState] = {s.name: s for s in (*TcpState, *PseudoState)}
_ECHO = {PROTO_ICMP: (8, 0), PROTO_ICMPV6: (128, 129)}  # (request, reply) types
_PORT_PROTOS = frozenset({PROTO_TCP, PROTO_UDP})


@dataclass(slots=True)
class Timeouts:
    """Per-state idle timeouts in seconds (OVS userspace conntrack defaults)."""

    tcp_syn_sent: float = 30
    tcp_syn_recv: float = 30
    tcp_established: float = 86400
    tcp_fin_wait: float = 900
    tcp_close_wait: float = 900
    tcp_last_ack: float = 900
    tcp_time_wait: float = 45
    tcp_close: float = 30
    udp_first: float = 60
    udp_multiple: float = 30
    icmp_first: float = 60
    icmp_reply: float = 30
    other_first: float = 60
    other_multiple: float = 30

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "timeouts") -> Timeouts:
        """Defaults overridden by `d`; ValueError naming ``where.field`` on a bad key or value."""
        if not isinstance(d, Mapping):
            raise ValueError(f"{where}: must be a table of timeouts")
        known = {f.name for f in fields(cls)}
        values: dict[str, float] = {}
        for name, value in d.items():
            if name not in known:
                raise ValueError(f"{where}.{name}: unknown timeout")
            if type(value) not in (int, float) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"{where}.{name}: must be a positive number")
            values[name] = float(value)
        return cls(**values)

    def timeout_for(self, rec: CtRecord) -> float:
        """Idle seconds after which `rec` expires in its current state."""
        state = rec.state
        if type(state) is TcpState:
            return getattr(self, _TCP_TIMEOUT[state])  # type: ignore[no-any-return]
        pair = _PSEUDO_TIMEOUT.get(rec.key[2], _OTHER_TIMEOUT)
        return getattr(self, pair[state is PseudoState.REPLIED])  # type: ignore[no-any-return]


_U64 = (1 << 64) - 1
# Wire field -> exclusive upper bound for ints, or the required type.
_WIRE_FIELDS: dict[str, int | type] = {
    "zone": 1 << 32, "family": 256, "proto": 256,
    "src_hi": 1 << 64, "src_lo": 1 << 64, "dst_hi": 1 << 64, "dst_lo": 1 << 64,
    "sport": 1 << 16, "dport": 1 << 16, "origin": 2, "state": str, "rule": str,
    "sw_ok": bool, "hw_capable": bool, "created": float, "last_seen": float,
    "packets": 1 << 64, "bytes": 1 << 64,
}  # fmt: skip


class _Bucket(list["CtRecord"]):
    """Records due for a look at time `due` (a timer wheel slot)."""

    __slots__ = ("due",)

    def __init__(self, due: int) -> None:
        super().__init__()
        self.due = due


@dataclass(slots=True, eq=False)
class CtRecord:
    """One tracked connection. Kept small: the tuple lives only in `key` (shared with the table).

    `origin` is the direction of the first packet relative to the zone's VM; `rule` names the
    rule that allowed it; `tier` says which tier holds it (set by the tiers). Bytes are frame
    bytes, as the fast tiers count them. Identity equality: records are used as set members.
    """

    key: CtKey
    origin: Direction
    state: CtState
    rule: str
    sw_ok: bool
    hw_capable: bool
    created: float
    last_seen: float
    packets: int = 0
    bytes: int = 0
    tier: int = 0
    _bucket: _Bucket | None = field(default=None, init=False, repr=False)

    @property
    def zone(self) -> int:
        """Conntrack zone (the VPID)."""
        return self.key[0]

    @property
    def family(self) -> int:
        """IP version, 4 or 6."""
        return self.key[1]

    @property
    def proto(self) -> int:
        """IP protocol number."""
        return self.key[2]

    @property
    def src(self) -> int:
        """Original-direction source address."""
        return self.key[3]

    @property
    def dst(self) -> int:
        """Original-direction destination address."""
        return self.key[4]

    @property
    def sport(self) -> int:
        """Original-direction source port, or the echo identifier."""
        return self.key[5]

    @property
    def dport(self) -> int:
        """Original-direction destination port (0 for ICMP echo)."""
        return self.key[6]

    @property
    def established(self) -> bool:
        """TCP ESTABLISHED, or a UDP/ICMP/other flow that has seen a reply."""
        return self.state is TcpState.ESTABLISHED or self.state is PseudoState.REPLIED

    @property
    def hw_ok(self) -> bool:
        """May go to the eSwitch: the hardware can express it and it is established."""
        return self.hw_capable and self.established

    @property
    def reply_key(self) -> CtKey:
        """The table key of the reply direction."""
        zone, family, proto, src, dst, sport, dport = self.key
        if proto in _PORT_PROTOS:
            return (zone, family, proto, dst, src, dport, sport)
        return (zone, family, proto, dst, src, sport, dport)  # echo id stays first both ways

    def to_wire(self) -> list[Any]:
        """Plain values for replication; addresses as (high, low) u64 halves for msgpack."""
        zone, family, proto, src, dst, sport, dport = self.key
        return [
            zone, family, proto, src >> 64, src & _U64, dst >> 64, dst & _U64, sport, dport,
            int(self.origin), self.state.name, self.rule, self.sw_ok, self.hw_capable,
            self.created, self.last_seen, self.packets, self.bytes,
        ]  # fmt: skip

    @classmethod
    def from_wire(cls, wire: list[Any]) -> CtRecord:
        """Inverse of `to_wire`; ValueError naming the field on anything malformed."""
        if type(wire) is not list or len(wire) != len(_WIRE_FIELDS):
            raise ValueError(f"ct record: must be a list of {len(_WIRE_FIELDS)} items")
        for (name, kind), value in zip(_WIRE_FIELDS.items(), wire, strict=True):
            if isinstance(kind, int):
                if type(value) is not int or not 0 <= value < kind:
                    raise ValueError(f"ct record.{name}: must be an int in 0..{kind - 1}")
            elif kind is float:
                if type(value) not in (int, float) or not math.isfinite(value) or value < 0:
                    raise ValueError(f"ct record.{name}: must be finite seconds >= 0")
            elif type(value) is not kind:
                raise ValueError(f"ct record.{name}: must be a {kind.__name__}")
        (zone, family, proto, src_hi, src_lo, dst_hi, dst_lo, sport, dport, origin, state_name,
         rule, sw_ok, hw_capable, created, last_seen, packets, nbytes) = wire  # fmt: skip
        src, dst = src_hi << 64 | src_lo, dst_hi << 64 | dst_lo
        if family not in (4, 6) or max(src, dst) >> (32 if family == 4 else 128):
            raise ValueError("ct record.family: must be 4 or 6, with addresses to match")
        state = _STATES.get(state_name)
        if state is None or (type(state) is TcpState) != (proto == PROTO_TCP):
            raise ValueError("ct record.state: unknown or wrong for the protocol")
        key = (zone, family, proto, src, dst, sport, dport)
        return cls(key, Direction(origin), state, rule, sw_ok, hw_capable,
                   float(created), float(last_seen), packets, nbytes)  # fmt: skip


@dataclass(slots=True)
class CtStats:
    """Conntrack counters: `removed` counts explicit removals, `expired` timeouts."""

    created: int = 0
    removed: int = 0
    expired: int = 0
    invalid: int = 0
    full_drops: int = 0


def _ports(pkt: Packet) -> tuple[int, int]:
    proto = pkt.proto
    if proto in _PORT_PROTOS:
        return pkt.sport, pkt.dport
    # The parser puts the echo identifier in sport and leaves 0 for every other ICMP type.
    return (pkt.sport, 0) if proto in _ECHO else (0, 0)


def _frame_bytes(pkt: Packet) -> int:
    # payload_offset is a frame offset, so this is the frame up to the end of the IP payload.
    return pkt.payload_offset + pkt.payload_len


class ConntrackTable:
    """All zones' records of one NIC, at most `limit` of them."""

    def __init__(self, timeouts: Timeouts, limit: int) -> None:
        if limit < 0:
            raise ValueError("conntrack limit: must be >= 0")
        self.timeouts = timeouts
        self.limit = limit
        self.stats = CtStats()
        self._table: dict[CtKey, CtRecord] = {}
        self._count = 0
        self._buckets: dict[int, _Bucket] = {}
        self._due: list[int] = []  # heap of bucket times, one entry per bucket
        # Replication: (created-or-changed?, record) for every change, when someone drains it.
        self.journal: list[tuple[bool, CtRecord]] | None = None

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[CtRecord]:
        """Each record once (from its original-direction key)."""
        # A snapshot, so callers may remove records while iterating.
        yield from [rec for key, rec in self._table.items() if key is rec.key]

    def get(self, key: CtKey) -> CtRecord | None:
        """The record an original or reply key belongs to."""
        return self._table.get(key)

    def lookup(self, zone: int, pkt: Packet) -> tuple[CtRecord | None, bool]:
        """The packet's record in `zone` and whether the packet is in the reply direction."""
        sport, dport = _ports(pkt)
        key = (zone, pkt.family, pkt.proto, pkt.src_ip, pkt.dst_ip, sport, dport)
        rec = self._table.get(key)
        if rec is None:
            return None, False
        return rec, key != rec.key

    def new_flow_check(self, pkt: Packet) -> str | None:
        """None if `pkt` may open a connection, else the reason it is dropped."""
        if pkt.family == 0:
            return "ct.invalid.not_ip"
        if pkt.fragment and not pkt.first_fragment:
            return "ct.invalid.fragment"  # no ports to key on; reassembly is not modelled
        if pkt.proto == PROTO_TCP:
            # Only a SYN opens: no mid-stream pickup (Linux nf_conntrack_tcp_loose=0).
            return None if classify(pkt.tcp_flags) is TcpEvent.SYN else "ct.invalid.no_conn"
        echo = _ECHO.get(pkt.proto)
        if echo is not None and pkt.icmp_type == echo[1]:
            return "ct.invalid.no_conn"
        return None

    def create(
        self,
        zone: int,
        origin: int,
        pkt: Packet,
        now: float,
        rule: str,
        sw_ok: bool,
        hw_capable: bool,
    ) -> CtRecord | None:
        """Track a new connection opened by `pkt` (which passed `new_flow_check`); None if full."""
        if self._count >= self.limit:
            self.stats.full_drops += 1
            return None
        state: CtState = TcpState.SYN_SENT if pkt.proto == PROTO_TCP else PseudoState.UNREPLIED
        sport, dport = _ports(pkt)
        key = (zone, pkt.family, pkt.proto, pkt.src_ip, pkt.dst_ip, sport, dport)
        rec = CtRecord(
            key, Direction(origin), state, rule, sw_ok, hw_capable, now, now, 1, _frame_bytes(pkt)
        )
        self.insert(rec)
        return rec

    def insert(self, rec: CtRecord) -> None:
        """Track a record built elsewhere (`CtRecord.from_wire`); ValueError if already tracked.

        Not bounded by `limit`: replicated state must not be lost to a full table.
        """
        reply = rec.reply_key
        if rec.key in self._table or reply in self._table:
            raise ValueError(f"conntrack: tuple already tracked: {rec.key}")
        self._table[rec.key] = rec
        self._table[reply] = rec
        self._count += 1
        self.stats.created += 1
        self._schedule(rec, rec.last_seen + self.timeouts.timeout_for(rec), rec.last_seen)
        if self.journal is not None:
            self.journal.append((True, rec))

    def update(self, rec: CtRecord, is_reply: bool, pkt: Packet, now: float) -> bool:
        """Account `pkt` to `rec` and advance its state; False (counted) if `pkt` is invalid."""
        state = rec.state
        new: TcpState | PseudoState
        if type(state) is TcpState:
            event = classify(pkt.tcp_flags)
            moved = None if event is None else TCP_TRANSITIONS.get((state, is_reply, event))
            if moved is None:
                self.stats.invalid += 1
                return False
            new = moved
        else:
            # An echo request in the reply direction (or the reverse) is not part of this flow.
            echo = _ECHO.get(rec.key[2])
            if echo is not None and pkt.icmp_type in echo and pkt.icmp_type != echo[is_reply]:
                self.stats.invalid += 1
                return False
            new = PseudoState.REPLIED if is_reply else state
        rec.last_seen = max(rec.last_seen, now)
        rec.packets += 1
        rec.bytes += _frame_bytes(pkt)
        if new is not state:
            rec.state = new
            if self.journal is not None:
                self.journal.append((True, rec))
            deadline = rec.last_seen + self.timeouts.timeout_for(rec)
            if rec._bucket is not None and math.floor(deadline / TICK) < rec._bucket.due:
                self._schedule(rec, deadline, rec.last_seen)
        return True

    def catch_up(self, rec: CtRecord, state: CtState, last_seen: float) -> bool:
        """Move `rec` to `state` if that is further along its connection's life (a later word of
        the stream it was copied from); True if it moved. Journaled, as any state change."""
        if not is_further(state, rec.state):
            return False
        rec.state = state
        rec.last_seen = max(rec.last_seen, last_seen)
        if self.journal is not None:
            self.journal.append((True, rec))
        deadline = rec.last_seen + self.timeouts.timeout_for(rec)
        if rec._bucket is not None and math.floor(deadline / TICK) < rec._bucket.due:
            self._schedule(rec, deadline, rec.last_seen)
        return True

    def touch(self, rec: CtRecord, now: float, packets: int, nbytes: int) -> None:
        """Add counters read back from a fast tier; `now` is when it last saw the flow."""
        rec.last_seen = max(rec.last_seen, now)
        rec.packets += packets
        rec.bytes += nbytes

    def remove(self, rec: CtRecord) -> None:
        """Stop tracking `rec` (no-op if it is not in the table)."""
        if self._unlink(rec):
            self.stats.removed += 1

    def expire(self, now: float) -> list[CtRecord]:
        """Remove and return the records idle for at least their state's timeout at `now`."""
        due: list[_Bucket] = []
        while self._due and self._due[0] <= now / TICK:
            due.append(self._buckets.pop(heapq.heappop(self._due)))
        expired: list[CtRecord] = []
        timeout_for = self.timeouts.timeout_for
        for bucket in due:
            for rec in bucket:
                if rec._bucket is not bucket:
                    continue  # moved to an earlier bucket since, or removed
                rec._bucket = None
                deadline = rec.last_seen + timeout_for(rec)
                if deadline <= now:
                    if self._unlink(rec):
                        expired.append(rec)
                else:
                    self._schedule(rec, deadline, now)
        self.stats.expired += len(expired)
        return expired

    def take_journal(self) -> list[tuple[bool, CtRecord]]:
        """Changes since the last call: (True, record) created or changed, (False, r) removed."""
        if not self.journal:
            return []
        out, self.journal = self.journal, []
        return out

    def set_timeouts(self, timeouts: Timeouts) -> None:
        """Use new timeouts; every record is rescheduled, since a timeout may have shrunk."""
        self.timeouts = timeouts
        self._buckets.clear()
        self._due.clear()
        for rec in self:
            rec._bucket = None
            self._schedule(rec, rec.last_seen + timeouts.timeout_for(rec), rec.last_seen)

    def digest(self) -> str:
        """SHA-256 over every record's identity, state and flags (not counters or times)."""
        return digest_rows(rec.to_wire() for rec in self)

    def _schedule(self, rec: CtRecord, deadline: float, now: float) -> None:
        due = math.floor(min(deadline, now + HORIZON) / TICK)
        bucket = self._buckets.get(due)
        if bucket is None:
            bucket = self._buckets[due] = _Bucket(due)
            heapq.heappush(self._due, due)
        bucket.append(rec)
        rec._bucket = bucket

    def _unlink(self, rec: CtRecord) -> bool:
        if self._table.get(rec.key) is not rec:
            return False
        del self._table[rec.key]
        self._table.pop(rec.reply_key, None)  # absent when both keys are one (a self-connection)
        self._count -= 1
        rec._bucket = None
        if self.journal is not None:
            self.journal.append((False, rec))
        return True


def is_further(state: CtState, than: CtState) -> bool:
    """True if `state` comes later than `than` in one connection's life.

    TCP's states are declared in the order a connection goes through them (SYN_SENT ...
    CLOSE), pseudo states likewise (UNREPLIED, REPLIED). Only a reopen (a SYN in TIME_WAIT or
    CLOSE) goes back, and a record of the old life can then look further along than the new.
    """
    return type(state) is type(than) and _PROGRESS[state] > _PROGRESS[than]


_PROGRESS: dict[CtState, int] = {
    **{s: i for i, s in enumerate(TcpState)},
    **{s: i for i, s in enumerate(PseudoState)},
}


DIGEST_FIELDS = 14  # a wire record's key, origin, state, rule and flags: what must agree


def digest_rows(wires: Iterable[Sequence[Any]]) -> str:
    """SHA-256 over wire records' first `DIGEST_FIELDS` fields, in sorted order.

    A NIC's table and a sibling's copy of it digest alike whatever their insertion order.
    """
    rows = sorted(tuple(w[:DIGEST_FIELDS]) for w in wires)
    h = hashlib.sha256()
    for row in rows:
        h.update(repr(row).encode())
        h.update(b"\n")
    return h.hexdigest()
