"""Builders for real Ethernet frames with correct IPv4, TCP, UDP and ICMP checksums.

VM endpoints, the fabric's external peers, the slow path's `reject` and the tests all build
frames here, so what crosses the bus is what Wireshark would decode.
"""

from __future__ import annotations

import struct
from ipaddress import IPv4Address, IPv6Address

from wire.frames import Packet
from wire.protocols import (
    ETH_ARP,
    ETH_IPV4,
    ETH_IPV6,
    ETH_RARP,
    ETH_VLAN,
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_TCP,
    PROTO_UDP,
    TCP_ACK,
    TCP_RST,
)

IPAddress = IPv4Address | IPv6Address

_IPV4 = struct.Struct("!BBHHHBBH4s4s")
_TCP = struct.Struct("!HHIIBBHHH")


def checksum(data: bytes) -> int:
    """RFC 1071 Internet checksum."""
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ethernet(
    dst: bytes, src: bytes, ethertype: int, payload: bytes, vlan: int | None = None
) -> bytes:
    """An Ethernet II frame, 802.1Q tagged when `vlan` is given."""
    if vlan is None:
        return dst + src + ethertype.to_bytes(2, "big") + payload
    tag = struct.pack("!HHH", ETH_VLAN, vlan & 0x0FFF, ethertype)
    return dst + src + tag + payload


def ipv4(
    src: IPv4Address,
    dst: IPv4Address,
    proto: int,
    payload: bytes,
    ttl: int = 64,
    ident: int = 0,
    frag: int = 0,
) -> bytes:
    """An IPv4 packet (no options) with its header checksum; `frag` is flags<<13 | offset."""
    total = 20 + len(payload)
    hdr = _IPV4.pack(0x45, 0, total, ident, frag, ttl, proto, 0, src.packed, dst.packed)
    csum = checksum(hdr)
    return hdr[:10] + csum.to_bytes(2, "big") + hdr[12:] + payload


def ipv6(src: IPv6Address, dst: IPv6Address, proto: int, payload: bytes, hops: int = 64) -> bytes:
    """An IPv6 packet with the fixed header only."""
    return (
        struct.pack("!IHBB", 6 << 28, len(payload), proto, hops) + src.packed + dst.packed + payload
    )


def _pseudo(src: IPAddress, dst: IPAddress, proto: int, length: int) -> bytes:
    if src.version == 4:
        return src.packed + dst.packed + struct.pack("!BBH", 0, proto, length)
    return src.packed + dst.packed + struct.pack("!IxxxB", length, proto)


def _ip(src: IPAddress, dst: IPAddress, proto: int, l4: bytes, ttl: int) -> tuple[int, bytes]:
    if src.version != dst.version:
        raise ValueError("source and destination of different IP families")
    if src.version == 4:
        return ETH_IPV4, ipv4(src, dst, proto, l4, ttl)  # type: ignore[arg-type]
    return ETH_IPV6, ipv6(src, dst, proto, l4, ttl)  # type: ignore[arg-type]


def tcp_frame(
    src_mac: bytes,
    dst_mac: bytes,
    src: IPAddress,
    dst: IPAddress,
    sport: int,
    dport: int,
    flags: int,
    seq: int = 0,
    ack: int = 0,
    payload: bytes = b"",
    window: int = 65535,
    vlan: int | None = None,
    ttl: int = 64,
) -> bytes:
    """A TCP segment in IPv4 or IPv6 (by the address family) in an Ethernet frame."""
    hdr = _TCP.pack(sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, 5 << 4, flags, window, 0, 0)
    seg = hdr + payload
    csum = checksum(_pseudo(src, dst, PROTO_TCP, len(seg)) + seg)
    seg = seg[:16] + csum.to_bytes(2, "big") + seg[18:]
    ethertype, packet = _ip(src, dst, PROTO_TCP, seg, ttl)
    return ethernet(dst_mac, src_mac, ethertype, packet, vlan)


def udp_frame(
    src_mac: bytes,
    dst_mac: bytes,
    src: IPAddress,
    dst: IPAddress,
    sport: int,
    dport: int,
    payload: bytes = b"",
    vlan: int | None = None,
    ttl: int = 64,
) -> bytes:
    """A UDP datagram in IPv4 or IPv6 in an Ethernet frame."""
    length = 8 + len(payload)
    dgram = struct.pack("!HHHH", sport, dport, length, 0) + payload
    csum = checksum(_pseudo(src, dst, PROTO_UDP, length) + dgram) or 0xFFFF
    dgram = dgram[:6] + csum.to_bytes(2, "big") + dgram[8:]
    ethertype, packet = _ip(src, dst, PROTO_UDP, dgram, ttl)
    return ethernet(dst_mac, src_mac, ethertype, packet, vlan)


def icmp_frame(
    src_mac: bytes,
    dst_mac: bytes,
    src: IPAddress,
    dst: IPAddress,
    icmp_type: int,
    code: int = 0,
    ident: int = 0,
    seq: int = 0,
    payload: bytes = b"",
    vlan: int | None = None,
) -> bytes:
    """An ICMP (IPv4) or ICMPv6 (IPv6) message; echo types carry `ident` and `seq`."""
    proto = PROTO_ICMP if src.version == 4 else PROTO_ICMPV6
    body = struct.pack("!BBHHH", icmp_type, code, 0, ident, seq) + payload
    pseudo = b"" if proto == PROTO_ICMP else _pseudo(src, dst, proto, len(body))
    csum = checksum(pseudo + body)
    body = body[:2] + csum.to_bytes(2, "big") + body[4:]
    ethertype, packet = _ip(src, dst, proto, body, 64)
    return ethernet(dst_mac, src_mac, ethertype, packet, vlan)


def arp_frame(
    op: int,
    sha: bytes,
    spa: IPv4Address,
    tha: bytes,
    tpa: IPv4Address,
    dst_mac: bytes | None = None,
    vlan: int | None = None,
) -> bytes:
    """An ARP request (op 1, broadcast) or reply (op 2, to `tha`)."""
    body = struct.pack("!HHBBH", 1, ETH_IPV4, 6, 4, op) + sha + spa.packed + tha + tpa.packed
    if dst_mac is None:
        dst_mac = b"\xff" * 6 if op == 1 else tha
    return ethernet(dst_mac, sha, ETH_ARP, body, vlan)


def gratuitous_arp(mac: bytes, ip: IPv4Address, vlan: int | None = None) -> bytes:
    """A gratuitous ARP announcing that `ip` is at `mac` (teaming uses it after a move)."""
    return arp_frame(1, mac, ip, b"\0" * 6, ip, dst_mac=b"\xff" * 6, vlan=vlan)


def rarp_frame(mac: bytes, vlan: int | None = None) -> bytes:
    """A RARP announcement of `mac` (what a vSphere switch sends after a NIC failover)."""
    body = struct.pack("!HHBBH", 1, ETH_IPV4, 6, 4, 3) + mac + b"\0" * 4 + mac + b"\0" * 4
    return ethernet(b"\xff" * 6, mac, ETH_RARP, body, vlan)


def packet_ips(pkt: Packet) -> tuple[IPAddress, IPAddress]:
    """The packet's source and destination as `ipaddress` objects."""
    if pkt.family == 4:
        return IPv4Address(pkt.src_ip), IPv4Address(pkt.dst_ip)
    return IPv6Address(pkt.src_ip), IPv6Address(pkt.dst_ip)


def tcp_reset_for(pkt: Packet) -> bytes:
    """The RST a firewall `reject` answers a TCP segment with (RFC 9293 §3.10.7.1)."""
    src, dst = packet_ips(pkt)
    seg_len = (
        pkt.payload_len + (1 if pkt.tcp_flags & 0x02 else 0) + (1 if pkt.tcp_flags & 0x01 else 0)
    )
    if pkt.tcp_flags & TCP_ACK:
        return tcp_frame(
            pkt.dst_mac,
            pkt.src_mac,
            dst,
            src,
            pkt.dport,
            pkt.sport,
            TCP_RST,
            seq=pkt.ack,
            vlan=pkt.vlan,
        )
    return tcp_frame(
        pkt.dst_mac,
        pkt.src_mac,
        dst,
        src,
        pkt.dport,
        pkt.sport,
        TCP_RST | TCP_ACK,
        seq=0,
        ack=pkt.seq + seg_len,
        vlan=pkt.vlan,
    )


def icmp_unreachable_for(pkt: Packet, frame: bytes) -> bytes:
    """ICMP destination unreachable, administratively prohibited (v4 3/13, v6 1/1)."""
    src, dst = packet_ips(pkt)
    l3 = 18 if pkt.vlan is not None else 14
    if pkt.family == 4:
        quoted = frame[l3 : pkt.l4_offset + 8]
        return icmp_frame(pkt.dst_mac, pkt.src_mac, dst, src, 3, 13, payload=quoted, vlan=pkt.vlan)
    quoted = frame[l3 : l3 + 1232]
    return icmp_frame(pkt.dst_mac, pkt.src_mac, dst, src, 1, 1, payload=quoted, vlan=pkt.vlan)
