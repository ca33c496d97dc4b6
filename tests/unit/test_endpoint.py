"""VM endpoints back to back: ARP, TCP (handshake, data, loss, give-up, RST, FIN), UDP, IPv6."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from ipaddress import IPv4Address, ip_address, ip_interface

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hoststack.endpoint import ARP_TRIES, Endpoint
from hoststack.tcp import TRANSITIONS, Segment, TcpConnection, TcpEvent, TcpState
from hoststack.traffic import (
    STREAM_BITS,
    FlowSpec,
    Pacer,
    SinkBook,
    TcpClientFlow,
    decode_datagram_untrusted,
    encode_message,
)
from wire import build
from wire.addr import mac_bytes
from wire.frames import Packet, parse_frame_untrusted
from wire.protocols import (
    ETH_ARP,
    ETH_IPV6,
    PROTO_TCP,
    PROTO_UDP,
    TCP_ACK,
    TCP_FIN,
    TCP_RST,
    TCP_SYN,
)

MAC_A, MAC_B = mac_bytes("02:00:00:00:00:0a"), mac_bytes("02:00:00:00:00:0b")
GW_MAC = mac_bytes("02:00:00:00:00:fe")
IP_A, IP_B = IPv4Address("10.0.0.1"), IPv4Address("10.0.0.2")
IP6_A, IP6_B = ip_address("2001:db8::a"), ip_address("2001:db8::b")

Drop = Callable[[bytes, Packet, "Endpoint"], bool]


def check_frame(frame: bytes) -> Packet:
    """Every emitted frame parses; TCP never sends a flag set without ACK but SYN or RST."""
    pkt = parse_frame_untrusted(frame)
    if pkt.family and pkt.proto == PROTO_TCP:
        flags = pkt.tcp_flags
        assert flags, "flagless TCP segment"
        if not flags & TCP_ACK:
            assert flags == TCP_SYN or flags & TCP_RST, f"flags {flags:#x} without ACK"
    return pkt


class Wire:
    """Two endpoints on one cable, a virtual clock, and an optional drop filter."""

    def __init__(self, a: Endpoint, b: Endpoint, drop: Drop | None = None) -> None:
        self.a, self.b = a, b
        self.now = 0.0
        self.drop: Drop = drop or (lambda frame, pkt, src: False)
        self.sent: list[tuple[Endpoint, Packet]] = []
        self.dropped = 0

    def deliver(self, frames: list[bytes], src: Endpoint) -> None:
        queue = [(f, src) for f in frames]
        while queue:
            frame, sender = queue.pop(0)
            pkt = check_frame(frame)
            self.sent.append((sender, pkt))
            if self.drop(frame, pkt, sender):
                self.dropped += 1
                continue
            peer = self.b if sender is self.a else self.a
            queue += [(f, peer) for f in peer.receive(frame, self.now)]

    def run(self, seconds: float, step: float = 0.005) -> None:
        end = self.now + seconds
        while self.now < end - 1e-9:
            self.now = round(self.now + step, 9)
            self.deliver(self.a.poll(self.now), self.a)
            self.deliver(self.b.poll(self.now), self.b)

    def tcp_from(self, ep: Endpoint) -> list[Packet]:
        return [p for s, p in self.sent if s is ep and p.family and p.proto == PROTO_TCP]


def pair() -> tuple[Endpoint, Endpoint]:
    """Two endpoints on 10.0.0.0/24 and 2001:db8::/64."""
    a = Endpoint("a", MAC_A, [ip_interface("10.0.0.1/24"), ip_interface("2001:db8::a/64")])
    b = Endpoint("b", MAC_B, [ip_interface("10.0.0.2/24"), ip_interface("2001:db8::b/64")])
    return a, b


def tcp_spec(**kw: object) -> FlowSpec:
    args: dict[str, object] = dict(
        name="t1", proto="tcp", src="a", dst=IP_B, dport=80, rate=100, size=200, duration=1.0
    )
    args.update(kw)
    return FlowSpec(**args)  # type: ignore[arg-type]


def udp_spec(**kw: object) -> FlowSpec:
    args: dict[str, object] = dict(
        name="u1", proto="udp", src="a", dst=IP_B, dport=5000, rate=100, size=100, duration=1.0
    )
    args.update(kw)
    return FlowSpec(**args)  # type: ignore[arg-type]


def app_seq(frame_pkt: Packet, frame: bytes) -> int:
    payload = frame[frame_pkt.payload_offset : frame_pkt.payload_offset + frame_pkt.payload_len]
    return decode_datagram_untrusted(payload)[1]


# --- ARP and the handshake ------------------------------------------------------------------


def test_arp_resolution_then_handshake() -> None:
    a, b = pair()
    b.listen_tcp(80)
    wire = Wire(a, b)
    stats = a.add_flow(tcp_spec(duration=None), 0.0)
    wire.run(0.005)
    kinds = []
    for sender, p in wire.sent[:5]:
        if p.ethertype == ETH_ARP:
            kinds.append((sender.name, "arp", p.arp_op))
        else:
            kinds.append((sender.name, "tcp", p.tcp_flags & (TCP_SYN | TCP_ACK | TCP_FIN)))
    assert kinds == [
        ("a", "arp", 1),
        ("b", "arp", 2),
        ("a", "tcp", TCP_SYN),
        ("b", "tcp", TCP_SYN | TCP_ACK),
        ("a", "tcp", TCP_ACK),
    ]
    assert wire.sent[0][1].dst_mac == b"\xff" * 6
    assert a.arp_cache[IP_B] == MAC_B and b.arp_cache[IP_A] == MAC_A
    assert stats.established and stats.connects == 1 and stats.connect_ms == 0.0
    assert list(a.connections().values()) == [TcpState.ESTABLISHED]
    assert list(b.connections().values()) == [TcpState.ESTABLISHED]


def test_announce_is_a_gratuitous_arp_and_requests_are_answered() -> None:
    a, b = pair()
    (garp,) = a.announce()
    p = parse_frame_untrusted(garp)
    assert (p.ethertype, p.arp_op, p.arp_sha, p.arp_spa, p.arp_tpa) == (
        ETH_ARP,
        1,
        MAC_A,
        int(IP_A),
        int(IP_A),
    )
    assert b.receive(garp, 0.0) == []  # not asked, nothing cached: nothing to learn
    req = build.arp_frame(1, MAC_A, IP_A, b"\0" * 6, IP_B)
    (reply,) = b.receive(req, 0.0)
    r = parse_frame_untrusted(reply)
    assert (r.arp_op, r.dst_mac, r.arp_sha, r.arp_spa, r.arp_tha) == (
        2,
        MAC_A,
        MAC_B,
        int(IP_B),
        MAC_A,
    )
    moved = mac_bytes("02:00:00:00:00:0c")
    b.receive(build.gratuitous_arp(moved, IP_A), 1.0)  # a known address moves: merge
    assert b.arp_cache[IP_A] == moved


def test_arp_retries_every_second_then_drops_the_queue() -> None:
    a, b = pair()
    wire = Wire(a, b, drop=lambda f, p, s: True)
    stats = a.add_flow(udp_spec(rate=10, duration=None), 0.0)
    wire.run(3.5)
    requests = [(s, p) for s, p in wire.sent if p.ethertype == ETH_ARP]
    assert a.stats.arp_requests == len(requests) == 4  # 0, 1, 2 s; the queue dies at 3 s; anew
    assert all(p.arp_op == 1 and p.dst_mac == b"\xff" * 6 for _, p in requests)
    # The first request went at 0.005 s; datagrams of 0.0 .. 3.0 s waited and were dropped at
    # 3.005 s, after ARP_TRIES requests; the one of 3.1 s started a new resolution.
    assert ARP_TRIES == 3 and a.stats.unresolved == 31 and stats.sent == 36


def test_gateway_for_off_subnet_and_ping() -> None:
    a = Endpoint("a", MAC_A, [ip_interface("10.0.0.1/24")], gateway_mac=GW_MAC)
    a.add_flow(udp_spec(dst=ip_address("192.0.2.9"), duration=0.005), 0.0)
    (frame,) = a.poll(0.0)
    p = check_frame(frame)
    assert (p.dst_mac, p.proto, p.dst_ip) == (GW_MAC, PROTO_UDP, int(ip_address("192.0.2.9")))
    a.add_neighbor(IP_B, MAC_B)
    ping = build.icmp_frame(MAC_B, MAC_A, IP_B, IP_A, 8, ident=7, seq=3, payload=b"hi")
    (pong,) = a.receive(ping, 0.0)
    q = check_frame(pong)
    assert (q.dst_mac, q.icmp_type, q.sport, q.dst_ip) == (MAC_B, 0, 7, int(IP_B))
    assert pong.endswith(b"\x00\x03hi")


# --- TCP ------------------------------------------------------------------------------------


def test_tcp_transfer_counts_and_fin_teardown() -> None:
    a, b = pair()
    b.listen_tcp(80)
    wire = Wire(a, b)
    stats = a.add_flow(tcp_spec(), 0.0)
    wire.run(3.0)
    sink = b.sink.flows["t1"]
    assert (stats.sent, stats.received, stats.retransmits, stats.resets, stats.blocked) == (
        100,
        100,
        0,
        0,
        0,
    )
    assert (sink.delivered, sink.gaps, sink.dup, sink.delivered_bytes) == (100, 0, 0, 100 * 200)
    assert a.flows["t1"].finished and not stats.established
    fins = [p for _, p in wire.sent if p.family and p.tcp_flags & TCP_FIN]
    assert len(fins) == 2 and all(p.tcp_flags & TCP_ACK for p in fins)
    assert a.connections() == {} and b.connections() == {}  # TIME_WAIT (1 s) is over too
    assert not [p for _, p in wire.sent if p.family and p.tcp_flags & TCP_RST]


def test_tcp_loss_is_recovered_without_reset() -> None:
    a, b = pair()
    b.listen_tcp(80)
    rng = random.Random(7)
    seen_syn: list[Packet] = []

    def drop(frame: bytes, p: Packet, src: Endpoint) -> bool:
        if not p.family:
            return False
        if p.tcp_flags == TCP_SYN and not seen_syn:
            seen_syn.append(p)
            return True  # the first SYN is lost too
        return rng.random() < 0.1

    wire = Wire(a, b, drop)
    stats = a.add_flow(tcp_spec(rate=200, duration=2.0), 0.0)
    wire.run(8.0)
    sink = b.sink.flows["t1"]
    assert wire.dropped > 20
    assert stats.retransmits > 0 and stats.resets == 0 and stats.connects == 1
    # The lost SYN cost 200 ms: the slots due meanwhile went out as one burst, the rest blocked.
    assert stats.sent == stats.received == sink.delivered and stats.sent + stats.blocked == 400
    assert stats.blocked > 0
    assert (sink.gaps, sink.dup) == (0, 0)
    assert a.flows["t1"].finished
    assert stats.connect_ms is not None and stats.connect_ms >= 200  # one SYN timeout


def test_blackout_longer_than_give_up_counts_a_reset_and_the_flow_reconnects() -> None:
    a, b = pair()
    b.listen_tcp(80)
    dark = (1.5, 21.5)
    wire = Wire(a, b, drop=lambda f, p, s: dark[0] <= wire.now < dark[1])
    stats = a.add_flow(tcp_spec(rate=50, duration=30.0), 0.0)
    wire.run(1.0)
    assert stats.established and stats.sent == stats.received
    wire.run(16.0)  # 15 s without progress: the connection gives up
    assert stats.resets == 1 and not stats.established
    # The book says when the stall began (the last progress), not only when it gave up.
    (stalled,) = stats.reset_progress
    assert dark[0] - 0.1 <= stalled <= dark[0]
    wire.run(20.0)
    sink = b.sink.flows["t1"]
    assert stats.resets == 1 and stats.connects == 2 and a.flows["t1"].finished
    # Messages lost with the dead connection are exactly the sink's gaps.
    assert stats.sent - sink.delivered == sink.gaps > 0
    assert sink.dup == 0 and sink.max_silence_ms > 20_000
    assert stats.sent + stats.blocked == 1500


def test_rst_on_a_closed_port() -> None:
    a, b = pair()
    b.listen_tcp(80)
    syn = build.tcp_frame(MAC_A, MAC_B, IP_A, IP_B, 40000, 81, TCP_SYN, seq=1000)
    (rst,) = b.receive(syn, 0.0)
    p = check_frame(rst)
    assert (p.tcp_flags, p.ack, p.sport, p.dport) == (TCP_RST | TCP_ACK, 1001, 81, 40000)
    assert b.stats.rst_sent == 1
    assert b.receive(build.tcp_frame(MAC_A, MAC_B, IP_A, IP_B, 1, 81, TCP_RST, seq=5), 0.0) == []

    wire = Wire(a, b)
    stats = a.add_flow(tcp_spec(dport=81, duration=None), 0.0)
    wire.run(2.5)  # refused at once, retried every second
    assert stats.resets == 3 and stats.connects == 0 and stats.sent == 0


def test_tcp_over_ipv6_with_static_neighbours() -> None:
    a, b = pair()
    a.add_neighbor(IP6_B, MAC_B)
    b.add_neighbor(IP6_A, MAC_A)
    b.listen_tcp(443)
    wire = Wire(a, b)
    stats = a.add_flow(tcp_spec(dst=IP6_B, dport=443, size=1400), 0.0)
    wire.run(3.0)
    assert stats.sent == stats.received == b.sink.flows["t1"].delivered == 100
    assert all(p.ethertype == ETH_IPV6 for _, p in wire.sent)


def test_tcp_state_machine_simultaneous_close_passes_closing() -> None:
    x, y = TcpConnection(100), TcpConnection(900)
    y.listen()
    x.connect(0.0)
    (syn,) = x.take_output()
    y.receive(syn, 0.0)
    (synack,) = y.take_output()
    x.receive(synack, 0.0)
    y.receive(x.take_output()[0], 0.0)
    assert x.state is y.state is TcpState.ESTABLISHED
    x.close(0.1)
    y.close(0.1)
    fin_x, fin_y = x.take_output(), y.take_output()
    assert fin_x[0].flags == fin_y[0].flags == TCP_FIN | TCP_ACK
    x.receive(fin_y[0], 0.2)
    y.receive(fin_x[0], 0.2)
    assert x.state is y.state is TcpState.CLOSING
    x.receive(y.take_output()[0], 0.3)
    y.receive(x.take_output()[0], 0.3)
    assert x.state is y.state is TcpState.TIME_WAIT
    x.poll(1.3)
    assert x.state is TcpState.CLOSED and x.close_reason == "fin" and not x.reset
    assert TRANSITIONS[(TcpState.FIN_WAIT_1, TcpEvent.RCV_FIN)] is TcpState.CLOSING
    # An RST inside the window kills a connection; one outside it is ignored.
    p, q = TcpConnection(1), TcpConnection(2)
    q.listen()
    p.connect(0.0)
    q.receive(p.take_output()[0], 0.0)
    p.receive(q.take_output()[0], 0.0)
    p.receive(Segment(TCP_RST, p.rcv_nxt + 70000), 0.1)
    assert p.state is TcpState.ESTABLISHED
    p.receive(Segment(TCP_RST, p.rcv_nxt), 0.1)
    assert p.state is TcpState.CLOSED and p.reset


# --- UDP ------------------------------------------------------------------------------------


def test_udp_stream_loss_gives_exact_gaps() -> None:
    a, b = pair()
    b.bind_udp(5000)
    lost = {5, 17, 18, 50, 98}

    def drop(frame: bytes, p: Packet, src: Endpoint) -> bool:
        return p.proto == PROTO_UDP and app_seq(p, frame) in lost

    wire = Wire(a, b, drop)
    stats = a.add_flow(udp_spec(), 0.0)
    wire.run(1.5)
    sink = b.sink.flows["u1"]
    assert stats.sent == 100 and stats.received == 0
    assert (sink.delivered, sink.gaps, sink.dup, sink.reordered) == (95, 5, 0, 0)
    assert sink.delivered_bytes == 95 * 100


def test_udp_sink_sees_duplicates_and_reordering_on_the_wire() -> None:
    a, b = pair()
    a.add_neighbor(IP_B, MAC_B)
    b.bind_udp(5000)
    a.add_flow(udp_spec(rate=100, duration=0.06), 0.0)
    frames = a.poll(0.1)  # one late poll: all six datagrams at once
    assert len(frames) == 6
    for i in (0, 2, 1, 1, 5, 3, 4):
        assert b.receive(frames[i], 0.2) == []
    sink = b.sink.flows["u1"]
    assert (sink.delivered, sink.gaps, sink.dup, sink.reordered) == (6, 0, 1, 3)


def test_udp_echo_counts_replies() -> None:
    a, b = pair()
    b.bind_udp(5000, echo=True)
    wire = Wire(a, b)
    stats = a.add_flow(udp_spec(rate=50), 0.0)
    wire.run(1.5)
    assert stats.sent == stats.received == 50 and stats.established
    assert b.sink.flows["u1"].delivered == 50


def test_udp_over_ipv6_with_a_static_neighbour() -> None:
    a, b = pair()
    b.bind_udp(5000)
    stats = a.add_flow(udp_spec(name="nope", dst=IP6_B, duration=0.1), 0.0)
    a.poll(0.0)
    assert a.stats.unresolved == 1  # no neighbour, no NDP: dropped and counted
    a.add_neighbor(IP6_B, MAC_B)
    wire = Wire(a, b)
    wire.now = 0.2
    stats = a.add_flow(udp_spec(name="u6", dst=IP6_B), 0.2)
    wire.run(1.5)
    assert stats.sent == b.sink.flows["u6"].delivered == 100
    assert all(p.ethertype == ETH_IPV6 for _, p in wire.sent)
    assert a.stats.arp_requests == 0


def test_sink_book_gaps_dups_reordering() -> None:
    book = SinkBook()
    for i, seq in enumerate([0, 1, 4, 2, 2, 3, 9]):
        book.record("f", seq, 10, i * 0.1)
    s = book.flows["f"]
    assert (s.delivered, s.gaps, s.dup, s.reordered) == (6, 4, 1, 2)  # 5..8 missing
    assert s.max_silence_ms == pytest.approx(100)


def test_pacer_catches_up_in_bounded_bursts() -> None:
    pacer = Pacer(rate=100, start=0.0, duration=2.0, burst=32)
    got = [pacer.due(t) for t in (0.0, 0.05, 1.0, 1.0, 5.0)]
    assert got == [1, 5, 32, 0, 32]
    assert pacer.done and pacer.issued + pacer.skipped == 200


# --- robustness -----------------------------------------------------------------------------


def test_malformed_frames_are_counted() -> None:
    a, _ = pair()
    good = build.udp_frame(MAC_B, MAC_A, IP_B, IP_A, 1, 2, b"x")
    for bad in (b"", b"\x00" * 5, good[:20], good[:14] + b"\x65" + good[15:]):
        assert a.receive(bad, 0.0) == []
    assert a.stats.malformed == 4 and a.stats.rx_frames == 4
    a.bind_udp(2)
    assert a.receive(good, 0.0) == [] and a.stats.bad_app == 1  # not an app message


def test_snapshot_is_plain_json() -> None:
    a, b = pair()
    b.listen_tcp(80)
    wire = Wire(a, b)
    a.add_flow(tcp_spec(), 0.0)
    wire.run(0.5)
    snap = json.loads(json.dumps(a.snapshot()))
    sent = snap["flows"]["t1"]["sent"]
    assert sent > 40 and snap["flows"]["t1"]["received"] == sent
    assert snap["stats"]["malformed"] == 0
    assert json.loads(json.dumps(b.snapshot()))["sinks"]["t1"]["delivered"] == sent
    assert isinstance(a.flows["t1"], TcpClientFlow)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200))
def test_random_bytes_never_raise(data: bytes) -> None:
    a, _ = pair()
    a.listen_tcp(80)
    a.bind_udp(53, echo=True)
    for frame in (data, MAC_A + data, MAC_A + MAC_B + b"\x08\x00" + data):
        for out in a.receive(frame, 0.0):
            check_frame(out)


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 255),
            st.integers(0, 2**32 - 1),
            st.integers(0, 2**32 - 1),
            st.binary(max_size=40),
            st.sampled_from([80, 81]),
        ),
        max_size=12,
    )
)
def test_random_segments_never_raise(segs: list[tuple[int, int, int, bytes, int]]) -> None:
    a, b = pair()
    b.listen_tcp(80)
    wire = Wire(a, b)
    a.add_flow(tcp_spec(), 0.0)
    wire.run(0.05)
    (key,) = a.connections()
    sport = key[1]
    flow = a.flows["t1"]
    assert isinstance(flow, TcpClientFlow) and isinstance(flow.conn, TcpConnection)
    conn = flow.conn
    for i, (flags, seq, ack, payload, dport) in enumerate(segs):
        if i % 2:  # half of them near the live connection's sequence numbers, half anywhere
            seq = (conn.snd_nxt + seq % 3000 - 1000) & 0xFFFFFFFF
            ack = (conn.rcv_nxt + ack % 3000 - 1000) & 0xFFFFFFFF
        frame = build.tcp_frame(MAC_A, MAC_B, IP_A, IP_B, sport, dport, flags, seq, ack, payload)
        for out in b.receive(frame, wire.now):
            check_frame(out)
        wire.run(0.01)
    wire.run(20.0, step=0.1)  # whatever happened, timers run to completion without raising


def test_encode_message_round_trip() -> None:
    msg = encode_message("flow", 42, 100)
    assert len(msg) == 100 and decode_datagram_untrusted(msg) == ("flow", 42, 100)


def test_a_restarted_senders_new_stream_fills_no_old_gap() -> None:
    sink = SinkBook()
    for seq in (0, 1, 2, 5, 6):  # 3 and 4 lost
        sink.record("f", seq, 10, 0.0)
    new = 1 << STREAM_BITS  # the sender's host daemon restarted: its messages from 0 again
    for seq in (new, new + 1, new + 3):  # new + 2 lost
        sink.record("f", seq, 10, 1.0)
    sink.record("f", 4, 10, 1.1)  # a straggler of the old life: not a fill, a duplicate
    st = sink.flows["f"]
    assert (st.delivered, st.gaps, st.dup, st.reordered) == (8, 3, 1, 0)


def test_a_restarted_hosts_sink_counts_from_the_first_message_it_gets() -> None:
    # A VM of a restarted host daemon joins a long-running sender mid-stream: the 5000
    # messages before its birth are not its losses.
    sink = SinkBook(midstream=True)
    for seq in (5000, 5001, 5003):
        sink.record("f", seq, 10, 0.0)
    st = sink.flows["f"]
    assert (st.delivered, st.gaps) == (3, 1)
    fresh = SinkBook()  # a sink there from the start does count what never came
    fresh.record("f", 3, 10, 0.0)
    assert fresh.flows["f"].gaps == 3
