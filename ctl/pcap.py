"""Captured frames to a classic libpcap file (what `tcpdump -w` writes) and to tcpdump-like text.

The format is two fixed structs (a 24-byte file header, 16 bytes before each frame); writing
them is smaller than any dependency. Microsecond timestamps: every reader opens that variant.
"""

from __future__ import annotations

import struct
from datetime import datetime
from ipaddress import ip_address
from typing import BinaryIO

from wire.addr import mac_str
from wire.frames import MalformedFrame, parse_frame_untrusted
from wire.protocols import ETH_ARP, PROTO_NAMES

MAGIC = 0xA1B2C3D4  # microsecond resolution, written in our byte order (readers swap)
LINKTYPE_ETHERNET = 1
_FILE = struct.Struct("=IHHiIII")
_RECORD = struct.Struct("=IIII")


class PcapWriter:
    """Append Ethernet frames to an open binary file as pcap records."""

    def __init__(self, f: BinaryIO, snaplen: int = 65535) -> None:
        self.f = f
        self.frames = 0
        # Header at once and every record whole and flushed: whatever stops the writer, the
        # file on disk is a valid pcap (a reader never sees a half record).
        f.write(_FILE.pack(MAGIC, 2, 4, 0, 0, snaplen, LINKTYPE_ETHERNET))
        f.flush()

    def write(self, ts: float, frame: bytes, orig_len: int | None = None) -> None:
        """One frame seen at epoch time `ts`; `orig_len` if it was cut to the snap length."""
        sec = int(ts)
        usec = min(999_999, round((ts - sec) * 1e6))
        self.f.write(_RECORD.pack(sec, usec, len(frame), orig_len or len(frame)) + frame)
        self.f.flush()
        self.frames += 1


def _ip(family: int, value: int) -> str:
    return str(ip_address(value if family == 4 else value.to_bytes(16, "big")))


def summary(ts: float, direction: str, frame: bytes) -> str:
    """One tcpdump-like line for a frame."""
    when = datetime.fromtimestamp(ts).strftime("%H:%M:%S.%f")
    try:
        p = parse_frame_untrusted(frame)
    except MalformedFrame as e:
        return f"{when} {direction:<3} malformed ({e.reason}), length {len(frame)}"
    head = f"{when} {direction:<3} {mac_str(p.src_mac)} > {mac_str(p.dst_mac)}"
    if p.vlan is not None:
        head += f", vlan {p.vlan}"
    if p.ethertype == ETH_ARP:
        op = "request" if p.arp_op == 1 else "reply"
        return f"{head}, ARP {op} {_ip(4, p.arp_tpa)} from {_ip(4, p.arp_spa)}"
    if not p.family:
        return f"{head}, ethertype 0x{p.ethertype:04x}, length {len(frame)}"
    proto = PROTO_NAMES.get(p.proto, str(p.proto))
    src, dst = _ip(p.family, p.src_ip), _ip(p.family, p.dst_ip)
    return f"{head}, {src}.{p.sport} > {dst}.{p.dport}: {proto}, length {len(frame)}"
