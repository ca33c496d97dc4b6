"""Frame parsing and building: round trips, and only MalformedFrame escapes on bad input."""

from __future__ import annotations

import contextlib
import struct
from ipaddress import IPv4Address, IPv6Address

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wire import build
from wire.addr import mac_bytes, mac_str
from wire.frames import MalformedFrame, parse_frame_untrusted
from wire.protocols import (
    ETH_ARP,
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_TCP,
    PROTO_UDP,
    TCP_ACK,
    TCP_RST,
    TCP_SYN,
)

A = mac_bytes("02:00:00:00:00:01")
B = mac_bytes("02:00:00:00:00:02")
V4A, V4B = IPv4Address("10.1.0.11"), IPv4Address("10.1.0.12")
V6A, V6B = IPv6Address("2001:db8::11"), IPv6Address("2001:db8::12")


def sample_frames() -> list[bytes]:
    return [
        build.tcp_frame(A, B, V4A, V4B, 40000, 80, TCP_SYN, seq=7, payload=b"x" * 10),
        build.tcp_frame(A, B, V6A, V6B, 40000, 443, TCP_ACK, seq=1, ack=2, vlan=20),
        build.udp_frame(A, B, V4A, V4B, 5000, 53, b"query"),
        build.udp_frame(A, B, V6A, V6B, 5000, 53, b"query", vlan=10),
        build.icmp_frame(A, B, V4A, V4B, 8, ident=9, seq=1, payload=b"ping"),
        build.icmp_frame(A, B, V6A, V6B, 128, ident=9, seq=1),
        build.arp_frame(1, A, V4A, b"\0" * 6, V4B),
    ]


def test_tcp_fields() -> None:
    f = build.tcp_frame(A, B, V4A, V4B, 40000, 80, TCP_SYN | TCP_ACK, seq=7, ack=9, payload=b"hey")
    p = parse_frame_untrusted(f)
    assert (p.src_mac, p.dst_mac, p.family, p.proto) == (A, B, 4, PROTO_TCP)
    assert (p.src_ip, p.dst_ip) == (int(V4A), int(V4B))
    assert (p.sport, p.dport, p.seq, p.ack, p.tcp_flags) == (40000, 80, 7, 9, TCP_SYN | TCP_ACK)
    assert f[p.payload_offset : p.payload_offset + p.payload_len] == b"hey"


def test_vlan_and_ipv6_udp() -> None:
    p = parse_frame_untrusted(build.udp_frame(A, B, V6A, V6B, 1, 2, b"abc", vlan=300))
    assert (p.vlan, p.family, p.proto, p.sport, p.dport, p.payload_len) == (
        300,
        6,
        PROTO_UDP,
        1,
        2,
        3,
    )


def test_icmp_echo_identifier_is_the_port() -> None:
    p = parse_frame_untrusted(build.icmp_frame(A, B, V4A, V4B, 8, ident=77, seq=3))
    assert (p.proto, p.icmp_type, p.sport, p.dport) == (PROTO_ICMP, 8, 77, 0)
    p6 = parse_frame_untrusted(build.icmp_frame(A, B, V6A, V6B, 129, ident=77))
    assert (p6.proto, p6.icmp_type, p6.sport) == (PROTO_ICMPV6, 129, 77)


def test_arp_fields() -> None:
    p = parse_frame_untrusted(build.arp_frame(1, A, V4A, b"\0" * 6, V4B))
    assert p.ethertype == ETH_ARP and p.is_broadcast
    assert (p.arp_op, p.arp_sha, p.arp_spa, p.arp_tpa) == (1, A, int(V4A), int(V4B))


def test_ipv4_fragments_are_flagged() -> None:
    seg = struct.pack("!HHHH", 1, 2, 16, 0) + b"x" * 8
    first = build.ethernet(B, A, 0x0800, build.ipv4(V4A, V4B, PROTO_UDP, seg, frag=0x2000))
    later = build.ethernet(B, A, 0x0800, build.ipv4(V4A, V4B, PROTO_UDP, b"y" * 8, frag=3))
    p1, p2 = parse_frame_untrusted(first), parse_frame_untrusted(later)
    assert p1.fragment and p1.first_fragment and p1.dport == 2
    assert p2.fragment and not p2.first_fragment and p2.dport == 0


def test_checksums_are_valid() -> None:
    f = build.tcp_frame(A, B, V4A, V4B, 1, 2, TCP_SYN, payload=b"odd")
    assert build.checksum(f[14:34]) == 0
    pseudo = V4A.packed + V4B.packed + struct.pack("!BBH", 0, PROTO_TCP, len(f) - 34)
    assert build.checksum(pseudo + f[34:]) == 0


def test_reject_frames() -> None:
    syn = build.tcp_frame(A, B, V4A, V4B, 40000, 80, TCP_SYN, seq=100)
    rst = parse_frame_untrusted(build.tcp_reset_for(parse_frame_untrusted(syn)))
    assert (rst.src_mac, rst.dst_mac, rst.sport, rst.dport) == (B, A, 80, 40000)
    assert rst.tcp_flags == TCP_RST | TCP_ACK and rst.ack == 101
    udp = build.udp_frame(A, B, V6A, V6B, 1, 2, b"x")
    unreach = parse_frame_untrusted(build.icmp_unreachable_for(parse_frame_untrusted(udp), udp))
    assert (unreach.proto, unreach.icmp_type, unreach.dst_ip) == (PROTO_ICMPV6, 1, int(V6A))


def test_mac_text() -> None:
    assert mac_str(mac_bytes("02:aa:00:00:00:0F")) == "02:aa:00:00:00:0f"
    with pytest.raises(ValueError):
        mac_bytes("02:aa:00")


@pytest.mark.parametrize("frame", sample_frames())
def test_every_truncation_is_a_malformed_frame_or_a_shorter_packet(frame: bytes) -> None:
    parse_frame_untrusted(frame)
    for cut in range(len(frame)):
        try:
            parse_frame_untrusted(frame[:cut])
        except MalformedFrame as e:
            assert e.reason


EDITS = st.lists(st.tuples(st.integers(0, 200), st.binary(min_size=1, max_size=4)))


@given(st.sampled_from(sample_frames()), EDITS)
def test_random_mutations_raise_only_malformed_frame(
    frame: bytes, edits: list[tuple[int, bytes]]
) -> None:
    data = bytearray(frame)
    for pos, chunk in edits:
        pos %= len(data) + 1
        data[pos : pos + len(chunk)] = chunk
    with contextlib.suppress(MalformedFrame):
        parse_frame_untrusted(bytes(data))


@given(st.binary(max_size=120))
def test_random_bytes_raise_only_malformed_frame(data: bytes) -> None:
    with contextlib.suppress(MalformedFrame):
        parse_frame_untrusted(data)
