"""The workload: flow specs, pacing, application messages and per-flow books, sans-I/O.

Theory of operation. A *flow* is one stream a client endpoint sends (`FlowSpec`). Its payload
is a run of application messages, each carrying the flow's name and an application sequence
number 0, 1, 2, ... (`encode_message`). A sink books every message it receives, in a UDP
datagram or anywhere in a TCP byte stream, under the sender's flow name (`SinkBook`), so it
detects missing, duplicate and reordered messages with no side channel. The application
sequence survives TCP reconnects, so messages lost with a reset connection show up as gaps.

The sender's book (`FlowStats`) counts what it sent and what came back: UDP echoes, or TCP
acknowledgements. A failover test compares the two books and reads `resets`.

Pacing is by the clock passed in: slot k of a flow is due at ``start + k / rate``;
`Pacer.due(now)` says how many slots are due, at most `burst`, and books the rest as skipped,
so a late poll catches up without a storm. Slots the application could not send (skipped, or
the TCP send buffer full) are `blocked`; for a finished flow ``sent + blocked`` is the number
of slots.
"""

from __future__ import annotations

import math
import struct
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Any

from hoststack.tcp import TcpConnection, TcpState
from wire.malformed import Malformed

RESET_TIMES = 32  # reset times kept per book: the latest ones

IPAddress = IPv4Address | IPv6Address

MAGIC = 0x4E54  # "NT"
_HDR = struct.Struct("!HHQB")  # magic, message length, application seq, name length
MAX_MESSAGE = 0xFFFF
MAX_UDP_PAYLOAD = 1452  # IPv6 + UDP headers in a 1500-byte MTU: no fragmentation
_SEQ_MASK = (1 << 64) - 1
# A sender numbers its messages from `stream << STREAM_BITS`: a restarted sender (a host daemon's
# new boot) starts a new stream, which its sink tells from a straggler of the old one, instead
# of reading its small numbers as late arrivals that fill old gaps.
STREAM_BITS = 40


@dataclass(slots=True)
class FlowSpec:
    """One flow of the workload: who sends what to whom, how fast, for how long."""

    name: str
    proto: str  # "tcp" | "udp"
    src: str  # the sending endpoint's name
    dst: IPAddress
    dport: int
    rate: float = 10.0  # messages per second
    size: int = 64  # payload bytes per message (at least the message header)
    duration: float | None = None  # seconds; None runs forever

    def __post_init__(self) -> None:
        if self.proto not in ("tcp", "udp"):
            raise ValueError(f"flow {self.name!r}: proto must be tcp or udp")
        if not 0 < self.dport < 65536:
            raise ValueError(f"flow {self.name!r}: bad dport {self.dport}")
        if self.rate < 0 or (self.duration is not None and self.duration < 0):
            raise ValueError(f"flow {self.name!r}: rate and duration must not be negative")
        if len(self.name.encode()) > 255:
            raise ValueError(f"flow {self.name!r}: name longer than 255 bytes")
        limit = MAX_UDP_PAYLOAD if self.proto == "udp" else MAX_MESSAGE
        if message_length(self.name, self.size) > limit:
            raise ValueError(f"flow {self.name!r}: size {self.size} over {limit}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FlowSpec:
        """Build from a config table; `dst` may be a string."""
        args = dict(d)
        args["dst"] = ip_address(args["dst"])
        return cls(**args)


@dataclass(slots=True)
class FlowStats:
    """One flow's book, sender side or sink side (each fills its own fields)."""

    # sender side
    sent: int = 0  # messages written (first transmissions)
    received: int = 0  # udp: echoes back; tcp: messages acknowledged
    retransmits: int = 0  # tcp segments sent again
    resets: int = 0  # connections lost to an RST or to giving up
    blocked: int = 0  # pacing slots not sent (not connected, buffer full, late poll)
    connects: int = 0  # connections established
    connect_ms: float | None = None  # time to establish the latest connection (udp: 1st echo)
    established: bool = False
    # sink side
    delivered: int = 0  # distinct messages received
    delivered_bytes: int = 0
    gaps: int = 0  # sequence numbers missing now (a late arrival fills its gap)
    dup: int = 0
    reordered: int = 0  # arrived after a later sequence number
    max_silence_ms: float = 0.0  # longest time between two arrivals
    last_rx: float | None = None  # when the latest echo/ack (sender) or message (sink) came
    # sender side: when each of the latest resets' connections last made progress (its stall
    # began there: a report charges the reset to the fault then, not to when it gave up)
    reset_progress: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """A plain dict for logs and the control socket."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def wall_times(books: dict[str, Any], now: float, wall: float) -> dict[str, Any]:
    """Books as logged: each book's `reset_progress` (loop time `now` is wall time `wall`)
    becomes `reset_progress_ts`, wall-clock seconds like the logs' `ts`. Modifies in place."""
    for book in books.values():
        progress = book.pop("reset_progress", None)
        if progress:
            book["reset_progress_ts"] = [round(wall - (now - t), 6) for t in progress]
    return books


def snapshot(books: Mapping[str, FlowStats]) -> dict[str, dict[str, Any]]:
    """Flow name -> plain dict of its stats."""
    return {name: stats.as_dict() for name, stats in books.items()}


# --- application messages -------------------------------------------------------------------


class BadMessage(Malformed):
    """Bytes that are not an application message; ``reason`` is its dotted counter key."""


def message_length(name: str, size: int) -> int:
    """The encoded length of a message of flow `name` asked to be `size` bytes."""
    return max(size, _HDR.size + len(name.encode()))


def encode_message(name: str, seq: int, size: int) -> bytes:
    """Header (magic, length, seq, name) then zero padding up to `size` bytes."""
    nb = name.encode()
    length = message_length(name, size)
    return (
        _HDR.pack(MAGIC, length, seq & _SEQ_MASK, len(nb))
        + nb
        + bytes(length - _HDR.size - len(nb))
    )


def decode_message_untrusted(buf: bytes | bytearray, off: int = 0) -> tuple[str, int, int] | None:
    """(name, seq, length) of the message at `off`; None if cut short; raises only BadMessage."""
    if len(buf) - off < _HDR.size:
        return None
    magic, length, seq, nlen = _HDR.unpack_from(buf, off)
    if magic != MAGIC or length < _HDR.size + nlen:
        raise BadMessage("app.header")
    if len(buf) - off < length:
        return None
    name = bytes(buf[off + _HDR.size : off + _HDR.size + nlen]).decode("utf-8", "replace")
    return name, seq, length


def decode_datagram_untrusted(payload: bytes) -> tuple[str, int, int]:
    """A whole datagram as one message; raises only BadMessage."""
    msg = decode_message_untrusted(payload)
    if msg is None:
        raise BadMessage("app.short")
    return msg


class StreamReader:
    """Cuts a TCP byte stream into messages; a corrupt stream is marked `broken` for good."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self.broken = False

    def feed(self, data: bytes) -> list[tuple[str, int, int]]:
        """The messages completed by `data`."""
        if self.broken:
            return []
        self._buf += data
        out: list[tuple[str, int, int]] = []
        off = 0
        while True:
            try:
                msg = decode_message_untrusted(self._buf, off)
            except Malformed:
                self.broken = True  # no way to find the next boundary in a byte stream
                self._buf.clear()
                return out
            if msg is None:
                break
            out.append(msg)
            off += msg[2]
        del self._buf[:off]
        return out


# --- sink side ------------------------------------------------------------------------------


@dataclass(slots=True)
class _RxState:
    next: int = 0  # one past the highest sequence seen
    missing: set[int] = field(default_factory=set)
    stream: int = 0  # the sender's stream (restart) being received


class SinkBook:
    """Per-flow receive accounting: delivered, gaps, duplicates, reordering."""

    def __init__(
        self, max_missing: int = 65536, max_flows: int = 4096, midstream: bool = False
    ) -> None:
        """`midstream`: this sink starts while its senders are under way (a restarted host's
        VMs): what they sent before its first message was never this sink's to count."""
        self.flows: dict[str, FlowStats] = {}
        self._midstream = midstream
        self.overflow = 0  # messages of flows beyond `max_flows`, not booked
        self._rx: dict[str, _RxState] = {}
        self._max_missing = max_missing
        self._max_flows = max_flows

    def record(self, name: str, seq: int, nbytes: int, now: float) -> None:
        """Book one received message of flow `name`."""
        st = self.flows.get(name)
        if st is None:
            if len(self.flows) >= self._max_flows:  # names come off the wire: bound them
                self.overflow += 1
                return
            st = self.flows[name] = FlowStats()
            self._rx[name] = _RxState()
            if self._midstream:
                self._rx[name].stream, self._rx[name].next = seq >> STREAM_BITS, seq
        rx = self._rx[name]
        stream = seq >> STREAM_BITS
        if stream != rx.stream:
            if stream < rx.stream:
                st.dup += 1  # a straggler of the sender's previous life
                return
            # The sender restarted: its old stream's missing messages are lost for good (they
            # stay in `gaps`); the new one is numbered from its own start.
            rx.stream, rx.next = stream, stream << STREAM_BITS
            rx.missing.clear()
        if st.last_rx is not None:
            st.max_silence_ms = max(st.max_silence_ms, (now - st.last_rx) * 1000)
        st.last_rx = now
        if seq >= rx.next:
            if seq > rx.next:
                st.gaps += seq - rx.next
                # Remember the missing numbers (bounded), so a late arrival fills its gap; a
                # forgotten one that arrives late is booked as a duplicate.
                room = self._max_missing - len(rx.missing)
                if room > 0:
                    rx.missing.update(range(rx.next, min(seq, rx.next + room)))
            rx.next = seq + 1
        elif seq in rx.missing:
            rx.missing.discard(seq)
            st.gaps -= 1
            st.reordered += 1
        else:
            st.dup += 1
            return
        st.delivered += 1
        st.delivered_bytes += nbytes

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Flow name -> plain dict of its sink stats."""
        return snapshot(self.flows)


# --- pacing and client flows ----------------------------------------------------------------


@dataclass(slots=True)
class Pacer:
    """Slots at ``start + k / rate``, handed out at most `burst` at a time."""

    rate: float
    start: float
    duration: float | None = None
    burst: int = 32
    issued: int = 0
    skipped: int = 0

    @property
    def total(self) -> int | None:
        """The number of slots of a bounded flow, None for a flow that runs forever."""
        if self.duration is None:
            return None
        return math.ceil(self.duration * self.rate - 1e-9)

    @property
    def done(self) -> bool:
        """Every slot of a bounded flow has been issued or skipped."""
        total = self.total
        return total is not None and self.issued + self.skipped >= total

    def ended(self, now: float) -> bool:
        """The flow's duration has passed."""
        return self.duration is not None and now >= self.start + self.duration

    def due(self, now: float) -> int:
        """How many slots to send now; slots beyond `burst` are skipped."""
        if self.rate <= 0 or now < self.start:
            return 0
        slots = math.floor((now - self.start) * self.rate + 1e-9) + 1
        total = self.total
        if total is not None:
            slots = min(slots, total)
        n = slots - self.issued - self.skipped
        if n <= 0:
            return 0
        if n > self.burst:
            self.skipped += n - self.burst
            n = self.burst
        self.issued += n
        return n

    def skip_rest(self) -> None:
        """Give up every slot not issued yet (a bounded flow that could not send)."""
        total = self.total
        if total is not None:
            self.skipped = max(self.skipped, total - self.issued)


class UdpClientFlow:
    """The sending side of a UDP flow: paced datagrams; echoes count as received."""

    def __init__(
        self, spec: FlowSpec, sport: int, now: float, burst: int = 32, stream: int = 0
    ) -> None:
        self.spec = spec
        self.sport = sport
        self.start = now
        self.stats = FlowStats()
        self.pacer = Pacer(spec.rate, now, spec.duration, burst)
        self.finished = False
        self._seq = stream << STREAM_BITS

    def poll(self, now: float) -> list[bytes]:
        """Payloads of the datagrams due now."""
        if self.finished:
            return []
        out = []
        for _ in range(self.pacer.due(now)):
            out.append(encode_message(self.spec.name, self._seq, self.spec.size))
            self._seq += 1
        self.stats.sent += len(out)
        self.stats.blocked = self.pacer.skipped
        self.finished = self.pacer.done
        return out

    def on_reply(self, payload: bytes, now: float) -> None:
        """A datagram came back from the destination (an echo server)."""
        try:
            name, _seq, _n = decode_datagram_untrusted(payload)
        except Malformed:
            return
        if name != self.spec.name:
            return
        st = self.stats
        st.received += 1
        st.last_rx = now
        if not st.established:
            st.established = True
            st.connect_ms = (now - self.start) * 1000


Opener = Callable[["TcpClientFlow", float], TcpConnection]


class TcpClientFlow:
    """The sending side of a TCP flow: connects, writes paced messages, reconnects on reset."""

    def __init__(
        self,
        spec: FlowSpec,
        now: float,
        opener: Opener,
        *,
        burst: int = 32,
        reconnect_delay: float = 1.0,
        send_buffer: int = 256,
        stream: int = 0,
    ) -> None:
        self.spec = spec
        self.start = now
        self.stats = FlowStats()
        self.pacer = Pacer(spec.rate, now, spec.duration, burst)
        self.conn: TcpConnection | None = None
        self.finished = False
        self._opener = opener
        self._reconnect_delay = reconnect_delay
        self._send_buffer = send_buffer  # segments queued before the application blocks
        self._reconnect_at = now
        self._closing = False
        self._seq = stream << STREAM_BITS
        self._ends: deque[int] = deque()  # stream offset where each unacked message ends
        self._written = 0  # bytes written on the current connection
        self._retx_before = 0  # retransmits of earlier connections
        self._booked = False  # the current connection's establishment is counted
        self._full = 0

    def poll(self, now: float) -> None:
        """Connect, write the messages due, close at the end of the duration."""
        self.observe(now)
        if self.finished:
            return
        c = self.conn
        if c is not None and c.state is TcpState.ESTABLISHED and not self._closing:
            self._write(c, now)
        elif self.pacer.ended(now):
            self.pacer.skip_rest()
        if self.pacer.done and not self._closing:
            self._closing = True
            if c is not None:
                c.close(now)
        if self._closing:
            self.finished = self.conn is None
        elif c is None and now >= self._reconnect_at:
            self.conn = self._opener(self, now)
            self._booked = False
        self.stats.blocked = self.pacer.skipped + self._full

    def _write(self, c: TcpConnection, now: float) -> None:
        for _ in range(self.pacer.due(now)):
            if c.queued >= self._send_buffer:
                self._full += 1
                continue
            msg = encode_message(self.spec.name, self._seq, self.spec.size)
            c.send(msg)
            self._seq += 1
            self._written += len(msg)
            self._ends.append(self._written)
            self.stats.sent += 1

    def observe(self, now: float) -> None:
        """Bring the book up to date with the connection (call after every segment)."""
        c = self.conn
        if c is None:
            return
        st = self.stats
        if c.established_at is not None and not self._booked:
            self._booked = True
            st.connects += 1
            st.connect_ms = (c.established_at - (c.opened_at or c.established_at)) * 1000
        st.established = c.state is TcpState.ESTABLISHED
        while self._ends and self._ends[0] <= c.acked_bytes:
            self._ends.popleft()
            st.received += 1
            st.last_rx = now
        st.retransmits = self._retx_before + c.retransmits
        if c.state is TcpState.CLOSE_WAIT:  # the server closed: close too, then reconnect
            c.close(now)
        if c.state in (TcpState.CLOSED, TcpState.TIME_WAIT):
            if c.reset:
                st.resets += 1
                st.reset_progress.append(c.progress_at)
                del st.reset_progress[:-RESET_TIMES]
            self._reconnect_at = now + (self._reconnect_delay if c.reset else 0.0)
            self._retx_before += c.retransmits
            self.conn = None
            self._ends.clear()
            self._written = 0
            st.established = False
            if self._closing:
                self.finished = True
