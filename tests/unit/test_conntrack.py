"""Conntrack: TCP state machine, pseudo states, zones, limits, expiry, wire form and digest."""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address
from itertools import pairwise

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nicd.datapath.conntrack import (
    HORIZON,
    TCP_TRANSITIONS,
    ConntrackTable,
    CtRecord,
    PseudoState,
    TcpEvent,
    TcpState,
    Timeouts,
    classify,
    is_further,
)
from nicd.datapath.rules import Direction
from wire import build
from wire.build import IPAddress
from wire.frames import Packet, parse_frame_untrusted
from wire.protocols import TCP_ACK, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN

MAC_VM = b"\x02\x00\x00\x00\x00\x01"
MAC_PEER = b"\x02\x00\x00\x00\x00\x02"
VM4, PEER4 = IPv4Address("10.0.0.1"), IPv4Address("10.0.0.2")
VM6, PEER6 = IPv6Address("fd00::1"), IPv6Address("fd00::2")
SYNACK, FINACK, PSHACK = TCP_SYN | TCP_ACK, TCP_FIN | TCP_ACK, TCP_PSH | TCP_ACK
S = TcpState


def tcp(
    src: IPAddress, dst: IPAddress, sport: int, dport: int, flags: int, data: bytes = b""
) -> Packet:
    frame = build.tcp_frame(MAC_VM, MAC_PEER, src, dst, sport, dport, flags, payload=data)
    return parse_frame_untrusted(frame)


def udp(src: IPAddress, dst: IPAddress, sport: int, dport: int) -> Packet:
    frame = build.udp_frame(MAC_VM, MAC_PEER, src, dst, sport, dport, b"x")
    return parse_frame_untrusted(frame)


def icmp(src: IPAddress, dst: IPAddress, itype: int, ident: int) -> Packet:
    frame = build.icmp_frame(MAC_VM, MAC_PEER, src, dst, itype, ident=ident, seq=1)
    return parse_frame_untrusted(frame)


def short_timeouts(**over: float) -> Timeouts:
    base = dict.fromkeys(Timeouts.__dataclass_fields__, 10.0)
    base.update(over)
    return Timeouts(**base)


@dataclass
class Conn:
    """A TCP connection from the VM (client) to a peer (server), driven through the table."""

    table: ConntrackTable
    zone: int = 7
    client: IPAddress = VM4
    server: IPAddress = PEER4
    cport: int = 40000
    sport: int = 80
    hw_capable: bool = True
    now: float = 100.0
    rec: CtRecord | None = field(default=None)

    def send(self, from_client: bool, flags: int, data: bytes = b"") -> bool:
        """Feed one segment as the slow path would; returns whether it was accepted."""
        if from_client:
            pkt = tcp(self.client, self.server, self.cport, self.sport, flags, data)
        else:
            pkt = tcp(self.server, self.client, self.sport, self.cport, flags, data)
        rec, is_reply = self.table.lookup(self.zone, pkt)
        if rec is None:
            if self.table.new_flow_check(pkt) is not None:
                return False
            origin = Direction.FROM_VM if from_client else Direction.TO_VM
            self.rec = self.table.create(
                self.zone, origin, pkt, self.now, "allow", True, self.hw_capable
            )
            return self.rec is not None
        assert rec is self.rec
        assert is_reply is not from_client
        return self.table.update(rec, is_reply, pkt, self.now)

    @property
    def record(self) -> CtRecord:
        """The connection's record (it has one once its first segment was accepted)."""
        assert self.rec is not None
        return self.rec

    @property
    def state(self) -> TcpState:
        state = self.record.state
        assert isinstance(state, TcpState)  # a TCP connection's record
        return state


def handshake(conn: Conn) -> None:
    assert conn.send(True, TCP_SYN)
    assert conn.state is S.SYN_SENT
    assert conn.send(False, SYNACK)
    assert conn.state is S.SYN_RECV
    assert conn.send(True, TCP_ACK)
    assert conn.state is S.ESTABLISHED


@pytest.mark.parametrize(("client", "server"), [(VM4, PEER4), (VM6, PEER6)])
def test_handshake_data_and_client_close(client: IPAddress, server: IPAddress) -> None:
    table = ConntrackTable(Timeouts(), limit=10)
    conn = Conn(table, client=client, server=server)
    assert conn.send(True, TCP_SYN)
    assert conn.rec is not None and not conn.rec.established and not conn.rec.hw_ok
    assert conn.send(False, SYNACK)
    assert not conn.rec.hw_ok
    assert conn.send(True, TCP_ACK)
    assert conn.rec.established and conn.rec.hw_ok
    assert conn.send(True, PSHACK, b"GET /") and conn.send(False, PSHACK, b"200 OK")
    assert conn.state is S.ESTABLISHED
    assert conn.send(True, FINACK)
    assert conn.state is S.FIN_WAIT and not conn.rec.hw_ok  # hardware cannot track teardown
    assert conn.send(False, TCP_ACK)
    assert conn.state is S.CLOSE_WAIT
    assert conn.send(False, FINACK)
    assert conn.state is S.LAST_ACK
    assert conn.send(True, TCP_ACK)
    assert conn.state is S.TIME_WAIT
    assert conn.rec.packets == 9
    assert conn.rec.bytes > 9 * 54 and conn.rec.family == client.version
    assert table.stats.invalid == 0 and len(table) == 1


def test_server_closes_first() -> None:
    conn = Conn(ConntrackTable(Timeouts(), limit=10))
    handshake(conn)
    for from_client, flags, state in [
        (False, FINACK, S.FIN_WAIT),
        (True, TCP_ACK, S.CLOSE_WAIT),
        (True, FINACK, S.LAST_ACK),
        (False, TCP_ACK, S.TIME_WAIT),
        (False, TCP_ACK, S.TIME_WAIT),  # retransmitted last ACK
    ]:
        assert conn.send(from_client, flags)
        assert conn.state is state


def test_simultaneous_close() -> None:
    conn = Conn(ConntrackTable(Timeouts(), limit=10))
    handshake(conn)
    assert conn.send(True, FINACK) and conn.state is S.FIN_WAIT
    assert conn.send(False, FINACK) and conn.state is S.LAST_ACK
    assert conn.send(True, TCP_ACK) and conn.state is S.TIME_WAIT
    assert conn.send(False, TCP_ACK) and conn.state is S.TIME_WAIT


@pytest.mark.parametrize("steps", range(1, 9))
@pytest.mark.parametrize("from_client", [True, False])
def test_rst_closes_from_any_state(steps: int, from_client: bool) -> None:
    conn = Conn(ConntrackTable(Timeouts(), limit=10))
    script = [
        (True, TCP_SYN),  # SYN_SENT
        (False, SYNACK),  # SYN_RECV
        (True, TCP_ACK),  # ESTABLISHED
        (True, FINACK),  # FIN_WAIT
        (False, TCP_ACK),  # CLOSE_WAIT
        (False, FINACK),  # LAST_ACK
        (True, TCP_ACK),  # TIME_WAIT
        (True, TCP_RST),  # CLOSE
    ]
    for sender, flags in script[:steps]:
        assert conn.send(sender, flags)
    assert conn.send(from_client, TCP_RST | TCP_ACK)
    assert conn.state is S.CLOSE and not conn.record.hw_ok


def test_midstream_segments_without_record_are_refused() -> None:
    table = ConntrackTable(Timeouts(), limit=10)
    for flags in (TCP_ACK, PSHACK, SYNACK, FINACK, TCP_RST, 0):
        assert table.new_flow_check(tcp(VM4, PEER4, 1, 2, flags)) == "ct.invalid.no_conn"
    assert table.new_flow_check(tcp(VM4, PEER4, 1, 2, TCP_SYN)) is None
    assert table.new_flow_check(tcp(VM4, PEER4, 1, 2, TCP_SYN | 0xC0)) is None  # ECE|CWR: ECN
    arp = parse_frame_untrusted(build.arp_frame(1, MAC_VM, VM4, b"\0" * 6, PEER4))
    assert table.new_flow_check(arp) == "ct.invalid.not_ip"
    conn = Conn(table)
    assert not conn.send(True, TCP_ACK) and conn.rec is None and len(table) == 0


def test_invalid_segments_are_counted_and_change_nothing() -> None:
    conn = Conn(ConntrackTable(Timeouts(), limit=10))
    assert conn.send(True, TCP_SYN)
    rec = conn.rec
    assert rec is not None
    before = (rec.state, rec.packets, rec.bytes, rec.last_seen)
    conn.now += 1
    assert not conn.send(True, SYNACK)  # a client cannot answer its own SYN
    assert not conn.send(True, TCP_ACK)  # nothing to acknowledge yet
    assert not conn.send(True, FINACK)  # no FIN before the SYN/ACK
    assert not conn.send(False, TCP_FIN)  # bare FIN: not a valid flag combination (Linux)
    assert conn.table.stats.invalid == 4
    assert (rec.state, rec.packets, rec.bytes, rec.last_seen) == before


def test_retransmitted_syn_and_reopen_from_time_wait() -> None:
    conn = Conn(ConntrackTable(Timeouts(), limit=10))
    assert conn.send(True, TCP_SYN) and conn.send(True, TCP_SYN)
    assert conn.state is S.SYN_SENT
    assert conn.send(False, SYNACK) and conn.send(True, TCP_ACK)
    for sender, flags in [(True, FINACK), (False, FINACK), (True, TCP_ACK)]:
        assert conn.send(sender, flags)
    assert conn.state is S.TIME_WAIT
    assert not conn.send(False, TCP_SYN)  # the server may not reopen with roles swapped
    assert conn.send(True, TCP_SYN) and conn.state is S.SYN_SENT
    assert conn.send(False, SYNACK) and conn.send(True, TCP_ACK)
    assert conn.state is S.ESTABLISHED and conn.table.stats.created == 1


def test_transition_table_examples() -> None:
    assert TCP_TRANSITIONS[(S.SYN_SENT, True, TcpEvent.SYNACK)] is S.SYN_RECV
    assert TCP_TRANSITIONS[(S.SYN_RECV, False, TcpEvent.ACK)] is S.ESTABLISHED
    assert TCP_TRANSITIONS[(S.CLOSE, False, TcpEvent.SYN)] is S.SYN_SENT
    assert (S.SYN_SENT, False, TcpEvent.SYNACK) not in TCP_TRANSITIONS
    assert all((s, d, TcpEvent.RST) in TCP_TRANSITIONS for s in S for d in (False, True))
    assert classify(TCP_SYN | TCP_ACK | TCP_RST) is TcpEvent.RST
    assert classify(FINACK | TCP_PSH) is TcpEvent.FIN
    assert classify(TCP_SYN | TCP_FIN) is None


def test_table_limit_refuses_new_flows_and_keeps_old_ones() -> None:
    table = ConntrackTable(Timeouts(), limit=2)
    a, b = Conn(table, cport=1000), Conn(table, cport=1001)
    assert a.send(True, TCP_SYN) and b.send(True, TCP_SYN)
    c = Conn(table, cport=1002)
    assert not c.send(True, TCP_SYN) and c.rec is None
    assert table.create(1, 0, udp(VM4, PEER4, 5, 53), 0.0, "r", True, True) is None
    assert table.stats.full_drops == 2 and len(table) == 2
    assert a.send(False, SYNACK) and a.send(True, TCP_ACK) and a.state is S.ESTABLISHED
    table.remove(b.record)
    assert c.send(True, TCP_SYN) and len(table) == 2 and table.stats.removed == 1


@pytest.mark.parametrize(("client", "server"), [(VM4, PEER4), (VM6, PEER6)])
@pytest.mark.parametrize("hw_capable", [True, False])
def test_udp_replied_and_hw_ok(client: IPAddress, server: IPAddress, hw_capable: bool) -> None:
    table = ConntrackTable(Timeouts(), limit=10)
    rec = table.create(
        3, Direction.FROM_VM, udp(client, server, 5353, 53), 1.0, "dns", True, hw_capable
    )
    assert rec is not None and rec.state is PseudoState.UNREPLIED and not rec.hw_ok
    found, is_reply = table.lookup(3, udp(client, server, 5353, 53))
    assert (
        found is rec
        and not is_reply
        and table.update(rec, False, udp(client, server, 5353, 53), 2.0)
    )
    assert rec.state is PseudoState.UNREPLIED
    found, is_reply = table.lookup(3, udp(server, client, 53, 5353))
    assert found is rec and is_reply
    assert table.update(rec, True, udp(server, client, 53, 5353), 3.0)
    assert rec.state is PseudoState.REPLIED and rec.established
    assert rec.hw_ok is hw_capable and rec.packets == 3 and rec.last_seen == 3.0


@pytest.mark.parametrize(
    ("client", "server", "req", "rep"), [(VM4, PEER4, 8, 0), (VM6, PEER6, 128, 129)]
)
def test_icmp_echo_pairs_request_and_reply(
    client: IPAddress, server: IPAddress, req: int, rep: int
) -> None:
    table = ConntrackTable(Timeouts(), limit=10)
    assert table.new_flow_check(icmp(server, client, rep, 9)) == "ct.invalid.no_conn"
    ping = icmp(client, server, req, 9)
    assert table.new_flow_check(ping) is None
    rec = table.create(1, Direction.FROM_VM, ping, 0.0, "ping", True, True)
    assert rec is not None and (rec.sport, rec.dport) == (9, 0)
    assert rec.reply_key == (1, client.version, rec.proto, int(server), int(client), 9, 0)
    assert table.lookup(1, icmp(client, server, req, 10)) == (None, False)  # other identifier
    found, is_reply = table.lookup(1, icmp(server, client, rep, 9))
    assert found is rec and is_reply
    assert not table.update(
        rec, True, icmp(server, client, req, 9), 1.0
    )  # request from the far end
    assert table.update(rec, True, icmp(server, client, rep, 9), 1.0)
    assert rec.state is PseudoState.REPLIED and rec.hw_ok


def test_other_protocols_track_without_ports() -> None:
    table = ConntrackTable(Timeouts(), limit=10)
    gre = Packet(MAC_VM, MAC_PEER, None, 0x0800, family=4, src_ip=1, dst_ip=2, proto=47, sport=5)
    rec = table.create(1, 0, gre, 0.0, "gre", True, False)
    assert rec is not None and rec.key == (1, 4, 47, 1, 2, 0, 0)
    back = Packet(MAC_PEER, MAC_VM, None, 0x0800, family=4, src_ip=2, dst_ip=1, proto=47)
    assert table.lookup(1, back) == (rec, True)
    assert table.update(rec, True, back, 1.0) and rec.established and not rec.hw_ok
    assert Timeouts().timeout_for(rec) == 30


def test_expiry_follows_state_timeouts() -> None:
    t = short_timeouts(tcp_syn_sent=2, tcp_established=100, tcp_close=1, udp_first=5)
    table = ConntrackTable(t, limit=100)
    syn = Conn(table, cport=1, now=0.0)
    est = Conn(table, cport=2, now=0.0)
    closing = Conn(table, cport=3, now=0.0)
    for c in (est, closing):
        handshake(c)
    dns = table.create(9, 0, udp(VM4, PEER4, 5, 53), 0.0, "dns", True, True)
    assert dns is not None
    assert syn.send(True, TCP_SYN)
    assert table.expire(1.9) == [] and len(table) == 4
    assert table.expire(2.0) == [syn.rec]
    closing.now = 2.5
    assert closing.send(False, TCP_RST)  # CLOSE: 1 s from now, earlier than its old deadline
    assert table.expire(3.4) == []
    assert table.expire(3.5) == [closing.rec]
    table.touch(dns, 4.0, packets=3, nbytes=300)
    assert table.expire(8.9) == [] and dns.packets == 4
    assert table.expire(9.0) == [dns]
    assert table.lookup(9, udp(VM4, PEER4, 5, 53)) == (None, False)
    assert table.expire(99.0) == [] and table.expire(100.0) == [est.rec]
    assert len(table) == 0 and table.stats.expired == 4 and table.stats.removed == 0
    assert table.expire(1e9) == []


def test_catch_up_moves_a_record_only_further_along_journaled_and_rescheduled() -> None:
    """A copy's later word (the old home's stream, late) moves a record forward, never back."""
    table = ConntrackTable(short_timeouts(tcp_syn_sent=30, tcp_established=100, tcp_time_wait=2),
                           limit=10)  # fmt: skip
    table.journal = []
    conn = Conn(table, now=0.0)
    assert conn.send(True, TCP_SYN)
    table.take_journal()
    rec = conn.record
    assert not table.catch_up(rec, S.SYN_SENT, 5.0) and table.take_journal() == []
    assert table.catch_up(rec, S.ESTABLISHED, 5.0)
    assert rec.state is S.ESTABLISHED and rec.last_seen == 5.0
    assert table.take_journal() == [(True, rec)]  # its siblings' copies hear of it
    assert not table.catch_up(rec, S.SYN_RECV, 6.0)  # older than ours: ours stands
    assert rec.state is S.ESTABLISHED and rec.last_seen == 5.0
    assert not table.catch_up(rec, PseudoState.REPLIED, 6.0)  # another protocol's state
    assert table.catch_up(rec, S.TIME_WAIT, 6.0)
    assert table.expire(7.9) == [] and table.expire(8.0) == [rec]  # TIME_WAIT's 2 s, not 30


def test_is_further_follows_a_connections_life() -> None:
    life = list(TcpState)
    assert life[0] is S.SYN_SENT and life[2] is S.ESTABLISHED and life[-1] is S.CLOSE
    assert all(is_further(b, a) and not is_further(a, b) for a, b in pairwise(life))
    assert is_further(PseudoState.REPLIED, PseudoState.UNREPLIED)
    assert not is_further(PseudoState.UNREPLIED, PseudoState.REPLIED)
    assert not is_further(S.CLOSE, PseudoState.UNREPLIED)


def test_set_timeouts_shrinking_takes_effect() -> None:
    table = ConntrackTable(Timeouts(), limit=10)
    conn = Conn(table, now=0.0)
    handshake(conn)
    assert table.expire(1000.0) == []
    table.set_timeouts(short_timeouts(tcp_established=5))
    assert table.expire(1000.0) == [conn.rec]


def test_removed_record_is_not_expired_later_nor_kept_alive() -> None:
    table = ConntrackTable(short_timeouts(), limit=10)
    rec = table.create(1, 0, udp(VM4, PEER4, 5, 53), 0.0, "dns", True, True)
    assert rec is not None
    table.remove(rec)
    table.remove(rec)
    assert table.stats.removed == 1 and table.expire(100.0) == [] and len(table) == 0
    long_lived = Conn(table, now=0.0)  # ESTABLISHED: a day's timeout, far past HORIZON
    table.set_timeouts(Timeouts())
    handshake(long_lived)
    assert table.expire(31.0) == []  # past SYN_SENT's bucket: re-bucketed for ESTABLISHED
    table.remove(long_lived.record)
    table.expire(32 + HORIZON)
    assert not any(long_lived.rec in bucket for bucket in table._buckets.values())


def test_long_timeouts_expire_on_time_past_the_horizon() -> None:
    table = ConntrackTable(short_timeouts(tcp_established=3 * HORIZON + 0.5), limit=10)
    conn = Conn(table, now=0.0)
    handshake(conn)
    for t in range(0, int(3 * HORIZON), 7):
        assert table.expire(float(t)) == []
    assert table.expire(3 * HORIZON + 0.4) == []
    assert table.expire(3 * HORIZON + 0.5) == [conn.rec]


def test_zones_isolate_identical_tuples() -> None:
    table = ConntrackTable(Timeouts(), limit=10)
    a, b = Conn(table, zone=1), Conn(table, zone=2)
    handshake(a)
    assert b.send(True, TCP_SYN) and b.rec is not a.rec
    assert b.state is S.SYN_SENT and a.state is S.ESTABLISHED
    assert table.lookup(3, tcp(VM4, PEER4, 40000, 80, TCP_ACK)) == (None, False)
    assert len(table) == 2 and {r.zone for r in table} == {1, 2}
    assert table.get(a.record.reply_key) is a.rec


@pytest.mark.parametrize(("client", "server"), [(VM4, PEER4), (VM6, PEER6)])
def test_wire_round_trip(client: IPAddress, server: IPAddress) -> None:
    conn = Conn(
        ConntrackTable(Timeouts(), limit=10), client=client, server=server, hw_capable=False
    )
    handshake(conn)
    rec = conn.rec
    assert rec is not None
    wire = rec.to_wire()
    assert msgpack.unpackb(msgpack.packb(wire)) == wire  # every value fits msgpack
    copy = CtRecord.from_wire(wire)
    assert copy.to_wire() == wire and copy.key == rec.key and copy.state is rec.state
    assert copy.origin is Direction.FROM_VM and copy.hw_ok is rec.hw_ok is False
    other = ConntrackTable(Timeouts(), limit=10)
    other.insert(copy)
    assert other.lookup(rec.zone, tcp(server, client, 80, 40000, TCP_ACK)) == (copy, True)
    assert other.digest() == conn.table.digest()
    with pytest.raises(ValueError, match="already tracked"):
        other.insert(CtRecord.from_wire(wire))


@pytest.mark.parametrize(
    ("index", "value", "field"),
    [
        (0, -1, "zone"),
        (1, 5, "family"),
        (3, 1, "family"),  # a v4 address with high bits set
        (7, 70000, "sport"),
        (9, 2, "origin"),
        (10, "BOGUS", "state"),
        (10, "REPLIED", "state"),  # a pseudo state on a TCP record
        (11, 3, "rule"),
        (12, 1, "sw_ok"),
        (14, float("nan"), "created"),
        (16, True, "packets"),
    ],
)
def test_from_wire_rejects_bad_fields(index: int, value: object, field: str) -> None:
    conn = Conn(ConntrackTable(Timeouts(), limit=10))
    assert conn.send(True, TCP_SYN) and conn.rec is not None
    wire = conn.rec.to_wire()
    wire[index] = value
    with pytest.raises(ValueError, match=f"ct record.{field}"):
        CtRecord.from_wire(wire)
    with pytest.raises(ValueError, match="must be a list"):
        CtRecord.from_wire(wire[:-1])


def test_timeouts_from_dict() -> None:
    t = Timeouts.from_dict({"tcp_established": 60, "udp_first": 1.5})
    assert t.tcp_established == 60 and t.udp_first == 1.5 and t.tcp_time_wait == 45
    with pytest.raises(ValueError, match=r"^timeouts\.tcp_established: must be a positive"):
        Timeouts.from_dict({"tcp_established": 0})
    with pytest.raises(ValueError, match=r"^ct\.timeouts\.udp_first: must be a positive"):
        Timeouts.from_dict({"udp_first": True}, where="ct.timeouts")
    with pytest.raises(ValueError, match=r"^timeouts\.tcp_bogus: unknown"):
        Timeouts.from_dict({"tcp_bogus": 1})


def test_digest_ignores_counters_and_order_but_not_state() -> None:
    def build_table(order: list[int], now: float) -> tuple[ConntrackTable, list[Conn]]:
        table = ConntrackTable(Timeouts(), limit=10)
        conns = [Conn(table, cport=1000 + i, now=now) for i in range(3)]
        for i in order:
            assert conns[i].send(True, TCP_SYN)
        return table, conns

    t1, _ = build_table([0, 1, 2], 0.0)
    t2, conns = build_table([2, 0, 1], 50.0)
    conns[0].send(True, TCP_SYN)  # a retransmission: counters move, state does not
    assert t1.digest() == t2.digest()
    assert conns[0].send(False, SYNACK)
    assert t1.digest() != t2.digest()


_SEGMENTS = st.lists(
    st.tuples(st.booleans(), st.integers(0, 0xFF), st.floats(0, 5, allow_nan=False)), max_size=25
)


@settings(max_examples=60, deadline=None)
@given(_SEGMENTS, st.booleans())
def test_random_flag_sequences_keep_a_valid_state(
    segments: list[tuple[bool, int, float]], hw_capable: bool
) -> None:
    table = ConntrackTable(short_timeouts(), limit=10)
    conn = Conn(table, hw_capable=hw_capable, now=0.0)
    assert conn.send(True, TCP_SYN)
    rec = conn.rec
    assert rec is not None
    for from_client, flags, dt in segments:
        conn.now += dt
        state, packets, invalid = rec.state, rec.packets, table.stats.invalid
        if conn.send(from_client, flags):
            assert rec.packets == packets + 1 and table.stats.invalid == invalid
        else:
            assert (rec.state, rec.packets, table.stats.invalid) == (state, packets, invalid + 1)
        assert rec.state in TcpState
        assert not rec.hw_ok or (rec.established and rec.hw_capable)
        assert rec.established == (rec.state is S.ESTABLISHED)
        if table.expire(conn.now):
            assert len(table) == 0
            break


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["tcp", "udp", "icmp"]), st.booleans(), st.booleans()),
        max_size=20,
    )
)
def test_hw_ok_implies_established_and_hw_capable(ops: list[tuple[str, bool, bool]]) -> None:
    table = ConntrackTable(Timeouts(), limit=50)
    for i, (kind, hw_capable, reply) in enumerate(ops):
        if kind == "tcp":
            conn = Conn(table, cport=2000 + i, hw_capable=hw_capable)
            if reply:
                handshake(conn)
            else:
                assert conn.send(True, TCP_SYN)
            continue
        fwd = udp(VM4, PEER4, 3000 + i, 53) if kind == "udp" else icmp(VM4, PEER4, 8, i)
        rec = table.create(1, 0, fwd, 0.0, "r", True, hw_capable)
        back = udp(PEER4, VM4, 53, 3000 + i) if kind == "udp" else icmp(PEER4, VM4, 0, i)
        if reply and rec is not None:
            assert table.update(rec, True, back, 1.0)
    for rec in table:
        assert rec.hw_ok == (rec.hw_capable and rec.established)
        assert rec.established == (rec.state in (S.ESTABLISHED, PseudoState.REPLIED))
    assert len(list(table)) == len(table) == len(ops)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["new", "reply", "touch", "remove", "expire"]),
            st.integers(0, 30),
            st.floats(0, 3, allow_nan=False),
        ),
        max_size=60,
    )
)
def test_expire_matches_a_full_scan(ops: list[tuple[str, int, float]]) -> None:
    timeouts = short_timeouts(udp_first=4.0, udp_multiple=1.5)
    table = ConntrackTable(timeouts, limit=1000)
    now = 0.0
    for op, n, dt in ops:
        now += dt
        fwd, back = udp(VM4, PEER4, 1000 + n, 53), udp(PEER4, VM4, 53, 1000 + n)
        rec, _ = table.lookup(0, fwd)
        if op == "new" and rec is None:
            table.create(0, 0, fwd, now, "r", True, True)
        elif op == "reply" and rec is not None:
            assert table.update(rec, True, back, now)
        elif op == "touch" and rec is not None:
            table.touch(rec, now, 1, 60)
        elif op == "remove" and rec is not None:
            table.remove(rec)
        elif op == "expire":
            due = {id(r) for r in table if r.last_seen + timeouts.timeout_for(r) <= now}
            assert {id(r) for r in table.expire(now)} == due
            assert all(r.last_seen + timeouts.timeout_for(r) > now for r in table)
    assert len(table) == len(list(table))
