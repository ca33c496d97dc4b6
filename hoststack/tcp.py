"""A minimal but real TCP connection (RFC 9293) for the VM endpoints, sans-I/O.

Theory of operation. `TcpConnection` is one end of one connection and knows nothing of
addresses, ports or frames: the endpoint feeds it `Segment`s with `receive(seg, now)`, calls
`poll(now)` on a timer, and drains the segments it wants sent with `take_output()`. The
application side is `send(data)` / `read()` / `close(now)` / `abort(now)`.

The state is a `TcpState`; every change goes through ``TRANSITIONS[(state, event)]``. A
missing pair for a *received* segment means the segment means nothing in this state and is
ignored; application calls check the table before acting.

What is modelled: the three-way handshake (no simultaneous open), byte sequence numbers with
cumulative ACKs, a bounded out-of-order buffer, retransmission on timeout (RTO starts at
`rto_initial`, doubles up to `rto_max`, resets on progress; no RTT estimation because the
emulated links are fast), fast retransmit after three duplicate ACKs and NewReno-style partial
ACK recovery (RFC 6582), FIN teardown with CLOSING and a short TIME_WAIT, RST in both
directions, and giving up after `give_up` seconds without progress (counted as a reset).
Every segment after the first SYN carries ACK, because the NIC firewall drops flagless or bare
FIN segments (Linux ``tcp_valid_flags``). Not modelled: congestion control, window scaling,
options, urgent data, keepalive.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from enum import Enum

from wire.protocols import TCP_ACK, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN

MASK = 0xFFFFFFFF
WINDOW = 65535  # what we advertise; the application reads every segment at once


def seq_lt(a: int, b: int) -> bool:
    """a < b in 32-bit sequence space (RFC 9293 §3.4)."""
    return ((a - b) & MASK) > 0x7FFFFFFF


def seq_le(a: int, b: int) -> bool:
    """a <= b in 32-bit sequence space."""
    return a == b or seq_lt(a, b)


class TcpError(Exception):
    """An application call the connection's state does not allow."""


class TcpState(Enum):
    """RFC 9293 §3.3.2 connection states."""

    CLOSED = "CLOSED"
    LISTEN = "LISTEN"
    SYN_SENT = "SYN_SENT"
    SYN_RECEIVED = "SYN_RECEIVED"
    ESTABLISHED = "ESTABLISHED"
    FIN_WAIT_1 = "FIN_WAIT_1"
    FIN_WAIT_2 = "FIN_WAIT_2"
    CLOSING = "CLOSING"
    CLOSE_WAIT = "CLOSE_WAIT"
    LAST_ACK = "LAST_ACK"
    TIME_WAIT = "TIME_WAIT"


class TcpEvent(Enum):
    """What drives a state change: application calls, received segments, timers."""

    OPEN = "OPEN"  # application active open: SYN goes out
    LISTEN = "LISTEN"  # application passive open
    RCV_SYN = "RCV_SYN"  # a SYN for a listening connection
    RCV_SYN_ACK = "RCV_SYN_ACK"  # SYN+ACK acknowledging our SYN
    RCV_ACK_OF_SYN = "RCV_ACK_OF_SYN"  # the ACK completing a passive open
    CLOSE = "CLOSE"  # application close: FIN queued behind the data
    RCV_FIN = "RCV_FIN"  # the peer's FIN, in sequence
    RCV_ACK_OF_FIN = "RCV_ACK_OF_FIN"  # the peer acknowledged our FIN
    RCV_RST = "RCV_RST"  # an acceptable RST
    ABORT = "ABORT"  # application abort, or give-up after no progress
    TIME_WAIT_DONE = "TIME_WAIT_DONE"


_S, _E = TcpState, TcpEvent

#: (state, event) -> next state (RFC 9293 figure 5, without simultaneous open).
TRANSITIONS: dict[tuple[TcpState, TcpEvent], TcpState] = {
    (_S.CLOSED, _E.OPEN): _S.SYN_SENT,
    (_S.CLOSED, _E.LISTEN): _S.LISTEN,
    (_S.LISTEN, _E.RCV_SYN): _S.SYN_RECEIVED,
    (_S.SYN_SENT, _E.RCV_SYN_ACK): _S.ESTABLISHED,
    (_S.SYN_SENT, _E.CLOSE): _S.CLOSED,
    (_S.SYN_RECEIVED, _E.RCV_ACK_OF_SYN): _S.ESTABLISHED,
    (_S.SYN_RECEIVED, _E.CLOSE): _S.FIN_WAIT_1,
    (_S.ESTABLISHED, _E.CLOSE): _S.FIN_WAIT_1,
    (_S.ESTABLISHED, _E.RCV_FIN): _S.CLOSE_WAIT,
    (_S.FIN_WAIT_1, _E.RCV_ACK_OF_FIN): _S.FIN_WAIT_2,
    (_S.FIN_WAIT_1, _E.RCV_FIN): _S.CLOSING,
    (_S.FIN_WAIT_2, _E.RCV_FIN): _S.TIME_WAIT,
    (_S.CLOSING, _E.RCV_ACK_OF_FIN): _S.TIME_WAIT,
    (_S.CLOSE_WAIT, _E.CLOSE): _S.LAST_ACK,
    (_S.LAST_ACK, _E.RCV_ACK_OF_FIN): _S.CLOSED,
    (_S.TIME_WAIT, _E.TIME_WAIT_DONE): _S.CLOSED,
    **{(s, _E.RCV_RST): _S.CLOSED for s in TcpState if s not in (_S.CLOSED, _S.LISTEN)},
    **{(s, _E.ABORT): _S.CLOSED for s in TcpState if s is not _S.CLOSED},
}

_SYNCHRONIZED = frozenset(TcpState) - {_S.CLOSED, _S.LISTEN, _S.SYN_SENT}
_RECEIVING = frozenset({_S.ESTABLISHED, _S.FIN_WAIT_1, _S.FIN_WAIT_2})  # before their FIN
_SENDING = frozenset({_S.ESTABLISHED, _S.CLOSE_WAIT, _S.FIN_WAIT_1, _S.LAST_ACK})
_WRITABLE = frozenset({_S.SYN_SENT, _S.SYN_RECEIVED, _S.ESTABLISHED, _S.CLOSE_WAIT})


@dataclass(slots=True)
class TcpConfig:
    """Timers and limits of a connection (seconds, bytes, segments)."""

    rto_initial: float = 0.2
    rto_max: float = 2.0
    give_up: float = 15.0
    time_wait: float = 1.0
    mss: int = 1440  # fits IPv6 in a 1500-byte MTU as well as IPv4
    max_inflight: int = 64
    ooo_limit: int = 256


@dataclass(slots=True)
class Segment:
    """One TCP segment as a connection sees it; addresses and ports stay with the caller."""

    flags: int
    seq: int
    ack: int = 0
    payload: bytes = b""
    window: int = WINDOW


@dataclass(slots=True)
class _Tx:
    """A sent, unacknowledged segment kept for retransmission."""

    seq: int
    flags: int
    payload: bytes

    @property
    def end(self) -> int:
        return (
            self.seq + len(self.payload) + bool(self.flags & TCP_SYN) + bool(self.flags & TCP_FIN)
        ) & MASK


class TcpConnection:
    """One end of one TCP connection; see the module docstring."""

    def __init__(self, iss: int, config: TcpConfig | None = None) -> None:
        self.config = config or TcpConfig()
        self.state = TcpState.CLOSED
        self.iss = iss & MASK
        self.snd_una = self.snd_nxt = self.iss
        self.snd_wnd = WINDOW
        self.irs = 0
        self.rcv_nxt = 0
        self.close_reason: str | None = None  # "fin", "rst", "timeout", "abort", "closed"
        self.opened_at: float | None = None
        self.established_at: float | None = None
        self.retransmits = 0
        self.segments_sent = 0  # first transmissions, any kind
        self.acked_bytes = 0  # payload bytes the peer has acknowledged
        self.received_bytes = 0  # payload bytes accepted in order
        self.ignored = 0  # received segments that meant nothing in their state
        self._unsent: deque[bytes | None] = deque()  # None stands for our FIN
        self._unacked: deque[_Tx] = deque()
        self._ooo: dict[int, tuple[bytes, bool]] = {}
        self._rx = bytearray()
        self._out: list[Segment] = []
        self._rto = self.config.rto_initial
        self._rto_at: float | None = None
        self._progress_at = 0.0
        self._recover: int | None = None  # snd_nxt when loss recovery began
        self._dupacks = 0
        self._tw_until = 0.0

    @property
    def progress_at(self) -> float:
        """When the connection last made progress (opened, or new data acknowledged)."""
        return self._progress_at

    # --- application side -------------------------------------------------------------------

    @property
    def reset(self) -> bool:
        """True once the connection died by RST or by giving up."""
        return self.close_reason in ("rst", "timeout")

    @property
    def queued(self) -> int:
        """Segments written but not yet acknowledged (sent or not)."""
        return len(self._unsent) + len(self._unacked)

    def connect(self, now: float) -> None:
        """Active open: send a SYN."""
        self._app(TcpEvent.OPEN)
        self.opened_at = self._progress_at = now
        self._send_new(_Tx(self.snd_nxt, TCP_SYN, b""), now)

    def listen(self) -> None:
        """Passive open: the next `receive` should be the SYN that created this connection."""
        self._app(TcpEvent.LISTEN)

    def send(self, data: bytes) -> None:
        """Queue application bytes; they leave on the next `poll` or ACK, cut at the MSS."""
        if self.state not in _WRITABLE or (self._unsent and self._unsent[-1] is None):
            raise TcpError(f"cannot send in {self.state.name}")
        mss = self.config.mss
        for i in range(0, len(data), mss):
            self._unsent.append(data[i : i + mss])

    def read(self) -> bytes:
        """Bytes received in order since the last read."""
        data = bytes(self._rx)
        self._rx.clear()
        return data

    def close(self, now: float) -> None:
        """Orderly close: FIN after the queued data. Closing twice is harmless."""
        if (self.state, TcpEvent.CLOSE) not in TRANSITIONS:
            return
        self._fire(TcpEvent.CLOSE)
        if self.state is TcpState.CLOSED:  # closed before the handshake finished
            self._finish("closed")
            return
        self._unsent.append(None)
        self._transmit(now)

    def abort(self, now: float, reason: str = "abort") -> None:
        """Drop the connection, telling a synchronized peer with an RST."""
        if self.state in _SYNCHRONIZED:
            self._emit(TCP_RST | TCP_ACK, self.snd_nxt)
        if self._fire(TcpEvent.ABORT):
            self._finish(reason)

    def take_output(self) -> list[Segment]:
        """The segments to send since the last call."""
        out, self._out = self._out, []
        return out

    # --- timers -----------------------------------------------------------------------------

    def poll(self, now: float) -> None:
        """Run the timers (retransmission, give-up, TIME_WAIT) and send what the window allows."""
        if self.state is TcpState.TIME_WAIT:
            if now >= self._tw_until and self._fire(TcpEvent.TIME_WAIT_DONE):
                self._finish(self.close_reason or "fin")
            return
        if self._unacked:
            if now - self._progress_at >= self.config.give_up:
                self.abort(now, "timeout")
                return
            if self._rto_at is not None and now >= self._rto_at:
                self._recover = self.snd_nxt
                self._retransmit_head()
                self._rto = min(self._rto * 2, self.config.rto_max)
                self._rto_at = now + self._rto
        self._transmit(now)

    # --- receiving --------------------------------------------------------------------------

    def receive(self, seg: Segment, now: float) -> None:
        """Process one received segment (RFC 9293 §3.10.7, simplified)."""
        state = self.state
        if state is TcpState.CLOSED:
            self.ignored += 1
        elif state is TcpState.LISTEN:
            self._receive_listen(seg, now)
        elif state is TcpState.SYN_SENT:
            self._receive_syn_sent(seg, now)
        else:
            self._receive_synchronized(seg, now)

    def _receive_listen(self, seg: Segment, now: float) -> None:
        if seg.flags & (TCP_RST | TCP_ACK) or not seg.flags & TCP_SYN:
            self.ignored += 1
            return
        self.irs, self.rcv_nxt = seg.seq, (seg.seq + 1) & MASK
        self.snd_wnd = seg.window
        self._fire(TcpEvent.RCV_SYN)
        self.opened_at = now
        self._send_new(_Tx(self.snd_nxt, TCP_SYN | TCP_ACK, b""), now)

    def _receive_syn_sent(self, seg: Segment, now: float) -> None:
        f = seg.flags
        ack_ok = bool(f & TCP_ACK) and seq_lt(self.iss, seg.ack) and seq_le(seg.ack, self.snd_nxt)
        if f & TCP_ACK and not ack_ok:
            if not f & TCP_RST:  # RFC 9293 §3.10.7.3: an unacceptable ACK gets an RST
                self._emit(TCP_RST, seg.ack)
            return
        if f & TCP_RST:
            if ack_ok and self._fire(TcpEvent.RCV_RST):
                self._finish("rst")
            return
        if not (f & TCP_SYN and ack_ok):  # no simultaneous open
            self.ignored += 1
            return
        self.irs, self.rcv_nxt = seg.seq, (seg.seq + 1) & MASK
        self.snd_wnd = seg.window
        self._advance(seg.ack, now)  # acknowledges our SYN: ESTABLISHED
        self._emit_ack()
        self._transmit(now)

    def _receive_synchronized(self, seg: Segment, now: float) -> None:
        f = seg.flags
        if f & TCP_RST:
            # Acceptable only inside the receive window (RFC 9293 §3.10.7.4).
            if seq_le(self.rcv_nxt, seg.seq) and seq_lt(seg.seq, self.rcv_nxt + WINDOW):
                if self._fire(TcpEvent.RCV_RST):
                    self._finish("rst")
            else:
                self.ignored += 1
            return
        if f & TCP_SYN:
            if self.state is TcpState.SYN_RECEIVED and seg.seq == self.irs:
                self._retransmit_head()  # our SYN+ACK was lost; the peer repeats its SYN
            else:
                self._emit_ack()  # RFC 5961 §4.2 challenge ACK
            return
        if not f & TCP_ACK or not self._on_ack(seg, now):
            self.ignored += 1
            return
        self._on_data(seg, now)
        self._transmit(now)

    def _on_ack(self, seg: Segment, now: float) -> bool:
        """Process the ACK field; False when the segment must be dropped."""
        ack = seg.ack
        if seq_lt(self.snd_nxt, ack):  # acknowledges data never sent
            self._emit_ack()
            return False
        if self.state is TcpState.SYN_RECEIVED and not seq_lt(self.snd_una, ack):
            return False  # the handshake's ACK must acknowledge our SYN
        if seq_lt(self.snd_una, ack):
            self._advance(ack, now)
        elif (
            ack == self.snd_una
            and self._unacked
            and not seg.payload
            and not seg.flags & TCP_FIN
            and seg.window == self.snd_wnd
        ):
            self._dupacks += 1
            if self._dupacks == 3 and self._recover is None:  # RFC 5681 fast retransmit
                self._recover = self.snd_nxt
                self._retransmit_head()
        self.snd_wnd = seg.window
        return True

    def _advance(self, ack: int, now: float) -> None:
        """The peer acknowledged up to `ack` (exclusive): free segments, restart the timer."""
        while self._unacked:
            head = self._unacked[0]
            if seq_le(head.end, ack):
                self._unacked.popleft()
                self.acked_bytes += len(head.payload)
                if head.flags & TCP_SYN:
                    self._syn_acked(now)
                if head.flags & TCP_FIN:
                    self._fin_acked(now)
                continue
            if seq_lt(head.seq, ack) and not head.flags & TCP_SYN:  # a peer acked mid-segment
                n = (ack - head.seq) & MASK
                head.payload, head.seq = head.payload[n:], ack
                self.acked_bytes += n
            break
        self.snd_una = ack
        self._progress_at = now
        self._rto = self.config.rto_initial
        self._dupacks = 0
        self._rto_at = now + self._rto if self._unacked else None
        if self._recover is not None:
            if self._unacked and seq_lt(ack, self._recover):
                self._retransmit_head()  # partial ACK: the next hole (RFC 6582 §3.2)
            else:
                self._recover = None

    def _syn_acked(self, now: float) -> None:
        if self.state is TcpState.SYN_SENT:
            self._fire(TcpEvent.RCV_SYN_ACK)
        else:
            self._fire(TcpEvent.RCV_ACK_OF_SYN)
        self.established_at = now

    def _fin_acked(self, now: float) -> None:
        self._fire(TcpEvent.RCV_ACK_OF_FIN)
        if self.state is TcpState.TIME_WAIT:
            self._tw_until = now + self.config.time_wait
        elif self.state is TcpState.CLOSED:
            self._finish("fin")

    def _on_data(self, seg: Segment, now: float) -> None:
        data, fin, seq = seg.payload, bool(seg.flags & TCP_FIN), seg.seq
        if not data and not fin:
            return
        if self.state not in _RECEIVING:  # after their FIN only retransmissions come: re-ACK
            self._emit_ack()
            return
        if seq_lt(seq, self.rcv_nxt):
            skip = (self.rcv_nxt - seq) & MASK
            if skip >= len(data) + fin:  # entirely old: a duplicate
                self._emit_ack()
                return
            data, seq = data[skip:], self.rcv_nxt
        if seq != self.rcv_nxt:
            # Out of order: keep it if there is room in the window, and send a duplicate ACK
            # so the sender retransmits the hole quickly.
            ahead = (seq - self.rcv_nxt) & MASK
            if ahead < WINDOW and len(self._ooo) < self.config.ooo_limit:
                self._ooo[seq] = (data, fin)
            self._emit_ack()
            return
        self._accept(data, fin, now)
        while self.rcv_nxt in self._ooo and self.state in _RECEIVING:
            data, fin = self._ooo.pop(self.rcv_nxt)
            self._accept(data, fin, now)
        # Anything still buffered behind rcv_nxt overlapped what we took; the peer resends.
        for key in [k for k in self._ooo if seq_lt(k, self.rcv_nxt)]:
            del self._ooo[key]
        self._emit_ack()

    def _accept(self, data: bytes, fin: bool, now: float) -> None:
        self._rx += data
        self.received_bytes += len(data)
        self.rcv_nxt = (self.rcv_nxt + len(data)) & MASK
        if fin:
            self.rcv_nxt = (self.rcv_nxt + 1) & MASK
            self._ooo.clear()
            self._fire(TcpEvent.RCV_FIN)
            if self.state is TcpState.TIME_WAIT:
                self._tw_until = now + self.config.time_wait

    # --- sending ----------------------------------------------------------------------------

    def _transmit(self, now: float) -> None:
        """Send queued segments while the peer's window and our in-flight limit allow."""
        if self.state not in _SENDING:
            return
        while self._unsent and len(self._unacked) < self.config.max_inflight:
            item = self._unsent[0]
            inflight = (self.snd_nxt - self.snd_una) & MASK
            # With nothing in flight one segment always goes: it probes a closed window.
            if item is not None and self._unacked and inflight + len(item) > self.snd_wnd:
                break
            self._unsent.popleft()
            if item is None:
                self._send_new(_Tx(self.snd_nxt, TCP_FIN | TCP_ACK, b""), now)
            else:
                self._send_new(_Tx(self.snd_nxt, TCP_PSH | TCP_ACK, item), now)

    def _send_new(self, tx: _Tx, now: float) -> None:
        if not self._unacked:  # the give-up clock counts from when we start waiting
            self._progress_at = now
            self._rto_at = now + self._rto
        self._unacked.append(tx)
        self.snd_nxt = tx.end
        self.segments_sent += 1
        self._emit(tx.flags, tx.seq, tx.payload)

    def _retransmit_head(self) -> None:
        head = self._unacked[0]
        self.retransmits += 1
        self._emit(head.flags, head.seq, head.payload)

    def _emit_ack(self) -> None:
        self._emit(TCP_ACK, self.snd_nxt)

    def _emit(self, flags: int, seq: int, payload: bytes = b"") -> None:
        ack = self.rcv_nxt if flags & TCP_ACK else 0
        self._out.append(Segment(flags, seq & MASK, ack, payload))

    # --- state ------------------------------------------------------------------------------

    def _fire(self, event: TcpEvent) -> bool:
        new = TRANSITIONS.get((self.state, event))
        if new is None:
            return False
        self.state = new
        return True

    def _app(self, event: TcpEvent) -> None:
        if not self._fire(event):
            raise TcpError(f"{event.name} not allowed in {self.state.name}")

    def _finish(self, reason: str) -> None:
        """The connection reached CLOSED: drop every queue and timer."""
        if self.close_reason is None or reason in ("rst", "timeout"):
            self.close_reason = reason
        self._unsent.clear()
        self._unacked.clear()
        self._ooo.clear()
        self._rto_at = None
        self._recover = None
