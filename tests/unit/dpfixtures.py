"""A small host for datapath tests: two NICs, two segments, four VMs, an external peer."""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

from nicd.datapath.conntrack import Timeouts
from nicd.datapath.pipeline import DatapathConfig, Pipeline
from nicd.datapath.rules import RuleSet
from nicd.datapath.teaming import TeamPolicy, Uplink
from nicd.datapath.vswitch import Interface, Segment
from nicd.policy import ruleset_from_config
from wire import build
from wire.addr import mac_bytes

SEGMENTS = [Segment("web", 10), Segment("db", None)]


@dataclass(frozen=True)
class VM:
    """A VM interface of the test host: VPID, home NIC, VF PPID and addresses."""

    vpid: int
    nic: str
    ppid: int
    mac: bytes
    ip: IPv4Address
    ip6: IPv6Address
    segment: str


VMS = [
    VM(1, "nic1", 101, mac_bytes("02:00:00:00:01:01"), IPv4Address("10.1.0.11"),
       IPv6Address("2001:db8:1::11"), "web"),
    VM(2, "nic1", 102, mac_bytes("02:00:00:00:01:02"), IPv4Address("10.1.0.12"),
       IPv6Address("2001:db8:1::12"), "web"),
    VM(3, "nic2", 101, mac_bytes("02:00:00:00:02:03"), IPv4Address("10.1.0.13"),
       IPv6Address("2001:db8:1::13"), "web"),
    VM(4, "nic2", 102, mac_bytes("02:00:00:00:02:04"), IPv4Address("10.2.0.14"),
       IPv6Address("2001:db8:2::14"), "db"),
]  # fmt: skip
PEER_MAC = mac_bytes("02:00:00:00:ee:01")
PEER_IP = IPv4Address("192.0.2.50")
UPLINKS = [
    Uplink("nic1", 1, "nic1/p0"),
    Uplink("nic1", 2, "nic1/p1"),
    Uplink("nic2", 1, "nic2/p0"),
    Uplink("nic2", 2, "nic2/p1"),
]

DEFAULT_RULES = [
    {"name": "no-telnet", "priority": 10, "action": "reject", "proto": "tcp", "dport": 23},
    {"name": "web-in", "priority": 20, "action": "allow", "direction": "to-vm",
     "proto": "tcp", "dport": 80},
    {"name": "dns", "priority": 30, "action": "allow", "proto": "udp", "dport": 53},
    {"name": "ssh-inspect", "priority": 40, "action": "allow", "proto": "tcp", "dport": 22,
     "inspect": True},
    {"name": "db-sw-only", "priority": 50, "action": "allow", "proto": "tcp", "dport": 5432,
     "sw_only": True},
    {"name": "icmp", "priority": 60, "action": "allow", "proto": "icmp"},
    {"name": "out", "priority": 100, "action": "allow", "direction": "from-vm"},
]  # fmt: skip


def interfaces() -> list[Interface]:
    return [Interface(v.vpid, f"vm{v.vpid}", v.mac, (v.ip, v.ip6), v.segment) for v in VMS]


def map_entries() -> list[tuple[int, str, int]]:
    return [(v.vpid, v.nic, v.ppid) for v in VMS]


def make_pipeline(
    nic: str = "nic1",
    rules: RuleSet | None = None,
    *,
    eswitch_capacity: int = 64,
    cache_enabled: bool = True,
    ct_limit: int = 1000,
    timeouts: Timeouts | None = None,
    policy: TeamPolicy = TeamPolicy.PORT_ID,
) -> Pipeline:
    """A pipeline for `nic` with the test host's topology and map at epoch 1."""
    config = DatapathConfig(
        eswitch_capacity=eswitch_capacity,
        cache_enabled=cache_enabled,
        ct_limit=ct_limit,
        timeouts=timeouts or Timeouts(),
    )
    rs = rules if rules is not None else ruleset_from_config(DEFAULT_RULES)
    p = Pipeline(nic, config, rs, SEGMENTS, interfaces(), UPLINKS, policy)
    p.apply_map(1, map_entries())
    return p


def tcp(
    a: VM,
    b: VM,
    sport: int,
    dport: int,
    flags: int,
    seq: int = 0,
    ack: int = 0,
    payload: bytes = b"",
) -> bytes:
    """A TCP frame from VM a to VM b."""
    return build.tcp_frame(a.mac, b.mac, a.ip, b.ip, sport, dport, flags, seq, ack, payload)


# -- helpers added for tests/unit/test_pipeline.py ----------------------------------------------

VLAN_OF: dict[str, int | None] = {s.name: s.vlan for s in SEGMENTS}


def vm(vpid: int) -> VM:
    """The test host's VM interface with that VPID."""
    return next(v for v in VMS if v.vpid == vpid)


def tcp_out(
    a: VM, sport: int, dport: int, flags: int, seq: int = 0, ack: int = 0, payload: bytes = b""
) -> bytes:
    """A TCP frame from VM a to the external peer, as the VM sends it (untagged)."""
    return build.tcp_frame(a.mac, PEER_MAC, a.ip, PEER_IP, sport, dport, flags, seq, ack, payload)


def tcp_in(
    a: VM, sport: int, dport: int, flags: int, seq: int = 0, ack: int = 0, payload: bytes = b""
) -> bytes:
    """A TCP frame from the external peer to VM a, as the fabric delivers it (segment tag)."""
    return build.tcp_frame(
        PEER_MAC, a.mac, PEER_IP, a.ip, sport, dport, flags, seq, ack, payload,
        vlan=VLAN_OF[a.segment],
    )  # fmt: skip


def udp(a: VM, b: VM, sport: int, dport: int, payload: bytes = b"q") -> bytes:
    """A UDP frame from VM a to VM b."""
    return build.udp_frame(a.mac, b.mac, a.ip, b.ip, sport, dport, payload)


def udp_out(a: VM, sport: int, dport: int, payload: bytes = b"q") -> bytes:
    """A UDP frame from VM a to the external peer (untagged, as the VM sends it)."""
    return build.udp_frame(a.mac, PEER_MAC, a.ip, PEER_IP, sport, dport, payload)


def udp_in(a: VM, sport: int, dport: int, payload: bytes = b"r") -> bytes:
    """A UDP frame from the external peer to VM a, tagged as on the wire."""
    return build.udp_frame(
        PEER_MAC, a.mac, PEER_IP, a.ip, sport, dport, payload, vlan=VLAN_OF[a.segment]
    )


def echo(a: VM, b: VM, icmp_type: int, ident: int, seq: int = 0) -> bytes:
    """An ICMP echo request (8) or reply (0) from VM a to VM b."""
    return build.icmp_frame(a.mac, b.mac, a.ip, b.ip, icmp_type, ident=ident, seq=seq)


def arp_request(a: VM, target: IPv4Address) -> bytes:
    """VM a's broadcast ARP request for `target`."""
    return build.arp_frame(1, a.mac, a.ip, b"\0" * 6, target)
