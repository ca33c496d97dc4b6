"""Protocol numbers and names every process speaks: EtherTypes, IP protocols, TCP flags."""

from __future__ import annotations

ETH_IPV4 = 0x0800
ETH_ARP = 0x0806
ETH_VLAN = 0x8100
ETH_RARP = 0x8035
ETH_IPV6 = 0x86DD

PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_UDP = 17
PROTO_ICMPV6 = 58

TCP_FIN = 0x01
TCP_SYN = 0x02
TCP_RST = 0x04
TCP_PSH = 0x08
TCP_ACK = 0x10

BROADCAST_MAC = b"\xff" * 6

PROTO_NAMES = {PROTO_ICMP: "icmp", PROTO_TCP: "tcp", PROTO_UDP: "udp", PROTO_ICMPV6: "icmpv6"}
PROTO_NUMBERS = {name: number for number, name in PROTO_NAMES.items()}
