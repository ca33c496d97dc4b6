"""Ethernet frame parsing at fixed offsets with `struct`.

Theory of operation: `parse_frame_untrusted` turns one frame (`bytes`) into a flat `Packet`
record that every tier reads. It can only raise `MalformedFrame`, whose `reason` is a short
dotted code the pipeline counts drops under; every length is checked before it is read, so no
`struct.error` or `IndexError` can escape. Checksums are not verified (the emulated NIC trusts
its own PCIe and wire); IPv4 fragments are parsed and flagged, and only the first fragment
carries ports.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from wire.malformed import Malformed
from wire.protocols import (
    ETH_ARP,
    ETH_IPV4,
    ETH_IPV6,
    ETH_VLAN,
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_TCP,
    PROTO_UDP,
)

_ETH = struct.Struct("!6s6sH")
_VLAN = struct.Struct("!HH")
_IPV4 = struct.Struct("!BBHHHBBH4s4s")
_IPV6 = struct.Struct("!IHBB16s16s")
_TCP = struct.Struct("!HHIIBBHHH")
_UDP = struct.Struct("!HHHH")
_ICMP = struct.Struct("!BBHHH")
_ARP = struct.Struct("!HHBBH6s4s6s4s")


class MalformedFrame(Malformed):
    """A frame that cannot be parsed; `reason` is the dotted code its drop is counted under."""


@dataclass(slots=True)
class Packet:
    """One parsed frame: L2 always, L3/L4 fields when present (zero otherwise)."""

    dst_mac: bytes
    src_mac: bytes
    vlan: int | None
    ethertype: int
    family: int = 0  # 4, 6 or 0 for non-IP
    src_ip: int = 0
    dst_ip: int = 0
    proto: int = 0
    ttl: int = 0
    fragment: bool = False  # any IPv4 fragment (MF set or offset != 0)
    first_fragment: bool = True
    sport: int = 0  # TCP/UDP port; ICMP echo identifier
    dport: int = 0
    tcp_flags: int = 0
    seq: int = 0
    ack: int = 0
    window: int = 0
    icmp_type: int = 0
    icmp_code: int = 0
    l4_offset: int = 0
    payload_offset: int = 0
    payload_len: int = 0
    arp_op: int = 0
    arp_sha: bytes = b""
    arp_spa: int = 0
    arp_tha: bytes = b""
    arp_tpa: int = 0

    @property
    def is_broadcast(self) -> bool:
        """True for broadcast and multicast destinations (group bit set)."""
        return bool(self.dst_mac[0] & 1)


def parse_frame_untrusted(frame: bytes) -> Packet:
    """Parse an Ethernet II frame, optionally 802.1Q tagged; raises only `MalformedFrame`."""
    n = len(frame)
    if n < 14:
        raise MalformedFrame("eth.short")
    dst, src, ethertype = _ETH.unpack_from(frame, 0)
    off = 14
    vlan = None
    if ethertype == ETH_VLAN:
        if n < 18:
            raise MalformedFrame("vlan.short")
        tci, ethertype = _VLAN.unpack_from(frame, 14)
        vlan = tci & 0x0FFF
        off = 18
    pkt = Packet(dst, src, vlan, ethertype)
    if ethertype == ETH_IPV4:
        _parse_ipv4(frame, off, pkt)
    elif ethertype == ETH_IPV6:
        _parse_ipv6(frame, off, pkt)
    elif ethertype == ETH_ARP:
        _parse_arp(frame, off, pkt)
    return pkt


def _parse_ipv4(frame: bytes, off: int, pkt: Packet) -> None:
    if len(frame) < off + 20:
        raise MalformedFrame("ipv4.short")
    vihl, _tos, total, _ident, frag, ttl, proto, _csum, src, dst = _IPV4.unpack_from(frame, off)
    if vihl >> 4 != 4:
        raise MalformedFrame("ipv4.version")
    ihl = (vihl & 0x0F) * 4
    if ihl < 20:
        raise MalformedFrame("ipv4.ihl")
    end = off + total
    if total < ihl or end > len(frame):
        raise MalformedFrame("ipv4.length")
    pkt.family = 4
    pkt.src_ip = int.from_bytes(src, "big")
    pkt.dst_ip = int.from_bytes(dst, "big")
    pkt.proto = proto
    pkt.ttl = ttl
    frag_offset = frag & 0x1FFF
    if frag & 0x2000 or frag_offset:
        pkt.fragment = True
        pkt.first_fragment = frag_offset == 0
        if frag_offset:
            pkt.l4_offset = pkt.payload_offset = off + ihl
            pkt.payload_len = end - pkt.payload_offset
            return
    _parse_l4(frame, off + ihl, end, pkt)


def _parse_ipv6(frame: bytes, off: int, pkt: Packet) -> None:
    if len(frame) < off + 40:
        raise MalformedFrame("ipv6.short")
    vtcfl, plen, nxt, hops, src, dst = _IPV6.unpack_from(frame, off)
    if vtcfl >> 28 != 6:
        raise MalformedFrame("ipv6.version")
    end = off + 40 + plen
    if end > len(frame):
        raise MalformedFrame("ipv6.length")
    pkt.family = 6
    pkt.src_ip = int.from_bytes(src, "big")
    pkt.dst_ip = int.from_bytes(dst, "big")
    pkt.proto = nxt
    pkt.ttl = hops
    _parse_l4(frame, off + 40, end, pkt)


def _parse_l4(frame: bytes, off: int, end: int, pkt: Packet) -> None:
    pkt.l4_offset = off
    proto = pkt.proto
    if proto == PROTO_TCP:
        if end - off < 20:
            raise MalformedFrame("tcp.short")
        sport, dport, seq, ack, doff, flags, window, _c, _u = _TCP.unpack_from(frame, off)
        hlen = (doff >> 4) * 4
        if hlen < 20 or off + hlen > end:
            raise MalformedFrame("tcp.offset")
        pkt.sport, pkt.dport, pkt.seq, pkt.ack = sport, dport, seq, ack
        pkt.tcp_flags, pkt.window = flags, window
        pkt.payload_offset = off + hlen
    elif proto == PROTO_UDP:
        if end - off < 8:
            raise MalformedFrame("udp.short")
        sport, dport, length, _c = _UDP.unpack_from(frame, off)
        if length < 8 or off + length > end:
            raise MalformedFrame("udp.length")
        pkt.sport, pkt.dport = sport, dport
        pkt.payload_offset = off + 8
        end = off + length
    elif proto in (PROTO_ICMP, PROTO_ICMPV6):
        if end - off < 8:
            raise MalformedFrame("icmp.short")
        itype, code, _c, ident, _seq = _ICMP.unpack_from(frame, off)
        pkt.icmp_type, pkt.icmp_code = itype, code
        if _is_echo(proto, itype):
            pkt.sport = ident
        pkt.payload_offset = off + 8
    else:
        pkt.payload_offset = off
    pkt.payload_len = end - pkt.payload_offset


def _is_echo(proto: int, itype: int) -> bool:
    if proto == PROTO_ICMP:
        return itype in (0, 8)
    return itype in (128, 129)


def _parse_arp(frame: bytes, off: int, pkt: Packet) -> None:
    if len(frame) < off + 28:
        raise MalformedFrame("arp.short")
    htype, ptype, hlen, plen, op, sha, spa, tha, tpa = _ARP.unpack_from(frame, off)
    if htype != 1 or ptype != ETH_IPV4 or hlen != 6 or plen != 4:
        raise MalformedFrame("arp.format")
    if op not in (1, 2):
        raise MalformedFrame("arp.op")
    pkt.arp_op = op
    pkt.arp_sha, pkt.arp_tha = sha, tha
    pkt.arp_spa = int.from_bytes(spa, "big")
    pkt.arp_tpa = int.from_bytes(tpa, "big")
