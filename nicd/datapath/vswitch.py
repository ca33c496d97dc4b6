"""The virtual switch of one NIC: segments, the host's VM interfaces, remote MAC learning, ARP.

Theory of operation: every NIC holds the whole host map, so its switch knows every VM interface
of the host (VPID, MAC, IPs, segment) from config, not by learning. A destination MAC that is a
host interface in the frame's segment resolves to that VPID (whose home NIC may be a peer's); any
other destination is "the network", reached through the team. Only MACs seen on the uplinks are
learned, with the IPv4 address ARP revealed for them, so ARP requests for known addresses are
answered here instead of flooded (ARP suppression) and idle entries age out after `mac_age`.
Segments map one-to-one to uplink VLAN tags (None = untagged). A learned entry never shadows a
host interface: the configured interface always wins, and `set_topology` drops learned entries a
new interface now owns (a VM migrated in from another host).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Any

from wire.addr import mac_bytes
from wire.build import arp_frame
from wire.frames import Packet
from wire.protocols import ETH_ARP

__all__ = [
    "Interface",
    "LearnedMac",
    "Segment",
    "VSwitch",
    "VSwitchStats",
    "interface_from_dict",
    "segment_from_dict",
]

IPAddress = IPv4Address | IPv6Address
_ARP_REQUEST = 1
_ARP_REPLY = 2


@dataclass(frozen=True, slots=True)
class Segment:
    """A layer-2 segment; `vlan` is its 802.1Q tag on the uplinks, None for untagged."""

    name: str
    vlan: int | None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"name: must be a non-empty string, got {self.name!r}")
        # 0 is priority tagging and 4095 is reserved (IEEE 802.1Q §9.6).
        if self.vlan is not None and (
            not isinstance(self.vlan, int)
            or isinstance(self.vlan, bool)
            or not 1 <= self.vlan <= 4094
        ):
            raise ValueError(f"vlan: must be an integer 1..4094, got {self.vlan!r}")


@dataclass(frozen=True, slots=True)
class Interface:
    """One VM interface of the host: its VPID, owning VM, MAC, addresses and segment."""

    vpid: int
    vm: str
    mac: bytes
    ips: tuple[IPAddress, ...]
    segment: str

    def __post_init__(self) -> None:
        if not isinstance(self.vpid, int) or isinstance(self.vpid, bool) or self.vpid < 0:
            raise ValueError(f"vpid: must be an integer >= 0, got {self.vpid!r}")
        if not isinstance(self.mac, bytes) or len(self.mac) != 6 or self.mac[0] & 1:
            raise ValueError(f"mac: must be 6 bytes of a unicast MAC, got {self.mac!r}")


@dataclass(frozen=True, slots=True)
class LearnedMac:
    """A MAC learned on an uplink, with the IPv4 address ARP showed for it (None if none yet)."""

    segment: str
    mac: bytes
    ip: int | None
    last_seen: float


@dataclass(slots=True)
class VSwitchStats:
    """Counters: MACs learned, moves (IP to another MAC, remote MAC now a VM), aged, ARP."""

    learned: int = 0
    moved: int = 0
    aged: int = 0
    arp_answered: int = 0
    arp_flooded: int = 0


_SEGMENT_KEYS = frozenset({"name", "vlan"})
_INTERFACE_KEYS = frozenset({"vm", "mac", "ips", "segment"})


def _check_keys(d: Any, allowed: frozenset[str], required: tuple[str, ...], where: str) -> None:
    if not isinstance(d, Mapping):
        raise ValueError(f"{where}: must be a table, got {type(d).__name__}")
    unknown = sorted(str(k) for k in d if k not in allowed)
    if unknown:
        raise ValueError(f"{where}.{unknown[0]}: unknown key")
    for key in required:
        if key not in d:
            raise ValueError(f"{where}.{key}: missing")


def _name(d: Mapping[str, Any], key: str, where: str) -> str:
    value = d[key]
    if not isinstance(value, str) or not value:
        raise ValueError(f"{where}.{key}: must be a non-empty string, got {value!r}")
    return value


def segment_from_dict(d: Mapping[str, Any], where: str) -> Segment:
    """Build a Segment from `{name="web", vlan=10}`; errors name the field (`segments[0].vlan`)."""
    _check_keys(d, _SEGMENT_KEYS, ("name",), where)
    name = _name(d, "name", where)
    try:
        return Segment(name, d.get("vlan"))
    except ValueError as e:
        raise ValueError(f"{where}.{e}") from None


def interface_from_dict(d: Mapping[str, Any], vpid: int, where: str) -> Interface:
    """Build an Interface from its config table (VPID from the FPAG); errors name the field."""
    _check_keys(d, _INTERFACE_KEYS, ("vm", "mac", "segment"), where)
    vm = _name(d, "vm", where)
    segment = _name(d, "segment", where)
    mac_text = d["mac"]
    try:
        if not isinstance(mac_text, str):
            raise ValueError
        mac = mac_bytes(mac_text)
    except ValueError:
        raise ValueError(f"{where}.mac: not a MAC address: {mac_text!r}") from None
    if mac[0] & 1:
        raise ValueError(f"{where}.mac: not a unicast MAC address: {mac_text!r}")
    raw_ips = d.get("ips", [])
    if not isinstance(raw_ips, list | tuple):
        raise ValueError(f"{where}.ips: must be a list of addresses, got {raw_ips!r}")
    ips: list[IPAddress] = []
    for i, text in enumerate(raw_ips):
        try:
            if not isinstance(text, str):
                raise ValueError
            addr = ip_address(text)
        except ValueError:
            raise ValueError(f"{where}.ips[{i}]: not an IP address: {text!r}") from None
        if addr in ips:
            raise ValueError(f"{where}.ips[{i}]: {text} listed twice")
        ips.append(addr)
    return Interface(vpid, vm, mac, tuple(ips), segment)


class VSwitch:
    """The virtual switch: host interfaces from config, remote MACs learned from the uplinks."""

    def __init__(
        self, segments: Iterable[Segment], interfaces: Iterable[Interface], mac_age: float = 300.0
    ) -> None:
        if not mac_age > 0:
            raise ValueError(f"mac_age: must be > 0, got {mac_age!r}")
        self.mac_age = mac_age
        self.stats = VSwitchStats()
        self._segments: dict[str, Segment] = {}
        self._by_vlan: dict[int | None, Segment] = {}
        self._interfaces: dict[int, Interface] = {}
        self._members: dict[str, list[int]] = {}
        self._local_mac: dict[tuple[str, bytes], int] = {}
        self._local_ip: dict[tuple[str, int], bytes] = {}
        self._learned: dict[tuple[str, bytes], LearnedMac] = {}
        self._remote_ip: dict[tuple[str, int], bytes] = {}
        # MACs learned (new, or their address changed) since the last `take_journal`, for
        # replication to sibling NICs; None when nobody replicates.
        self.journal: list[tuple[str, bytes]] | None = None
        self.set_topology(segments, interfaces)

    def set_topology(self, segments: Iterable[Segment], interfaces: Iterable[Interface]) -> None:
        """Replace segments and interfaces; keep learned entries that are still valid."""
        by_name: dict[str, Segment] = {}
        by_vlan: dict[int | None, Segment] = {}
        for seg in segments:
            if seg.name in by_name:
                raise ValueError(f"segment {seg.name!r} defined twice")
            if seg.vlan in by_vlan:
                taken = by_vlan[seg.vlan].name
                raise ValueError(f"segment {seg.name!r}: vlan {seg.vlan} already used by {taken!r}")
            by_name[seg.name] = by_vlan[seg.vlan] = seg
        by_vpid: dict[int, Interface] = {}
        members: dict[str, list[int]] = {name: [] for name in by_name}
        local_mac: dict[tuple[str, bytes], int] = {}
        local_ip: dict[tuple[str, int], bytes] = {}
        for intf in interfaces:
            where = f"interface {intf.vm} (vpid {intf.vpid})"
            if intf.vpid in by_vpid:
                raise ValueError(f"{where}: VPID already used by {by_vpid[intf.vpid].vm}")
            if intf.segment not in by_name:
                raise ValueError(f"{where}: unknown segment {intf.segment!r}")
            if (intf.segment, intf.mac) in local_mac:
                raise ValueError(f"{where}: MAC already used in segment {intf.segment!r}")
            by_vpid[intf.vpid] = intf
            members[intf.segment].append(intf.vpid)
            local_mac[(intf.segment, intf.mac)] = intf.vpid
            for ip in intf.ips:
                if ip.version != 4:
                    continue  # ARP is IPv4 only; IPv6 neighbour discovery is not answered here
                key = (intf.segment, int(ip))
                if key in local_ip:
                    raise ValueError(f"{where}: {ip} already used in segment {intf.segment!r}")
                local_ip[key] = intf.mac
        self._segments, self._by_vlan, self._interfaces = by_name, by_vlan, by_vpid
        self._members = {name: sorted(vpids) for name, vpids in members.items()}
        self._local_mac, self._local_ip = local_mac, local_ip
        for mac_key in list(self._learned):
            if mac_key[0] not in by_name:
                self._forget(mac_key)
            elif mac_key in local_mac:
                self._forget(mac_key)  # a VM with that MAC migrated into this host
                self.stats.moved += 1
        for ip_key in list(self._remote_ip):
            if ip_key in local_ip:
                self._forget_ip(ip_key)

    def interface(self, vpid: int) -> Interface | None:
        """The host interface with that VPID, or None."""
        return self._interfaces.get(vpid)

    def segment_of_vpid(self, vpid: int) -> Segment | None:
        """The segment of a host interface (VF ingress), or None for an unknown VPID."""
        intf = self._interfaces.get(vpid)
        return None if intf is None else self._segments[intf.segment]

    def segment_of_vlan(self, vlan: int | None) -> Segment | None:
        """The segment an uplink frame with this tag belongs to (None tag = untagged)."""
        return self._by_vlan.get(vlan)

    def lookup(self, segment: str, mac: bytes) -> int | None:
        """The VPID owning `mac` in `segment`, or None: the network (through the team)."""
        return self._local_mac.get((segment, mac))

    def learn_remote(
        self, segment: str, mac: bytes, ip: int | None, now: float, *, replicated: bool = False
    ) -> bool:
        """Note a source MAC (and its ARP IPv4 address) seen on an uplink; True if new/changed.

        `replicated`: a sibling learned it; it is not journaled again (no echo between NICs).
        """
        if segment not in self._segments or len(mac) != 6 or mac[0] & 1:
            return False  # a group address is never a valid source
        key = (segment, mac)
        if key in self._local_mac:
            return False  # our own VM's frame reflected by the fabric; never learn it remote
        if ip == 0:
            ip = None  # ARP probe (RFC 5227 §2.1.1): the sender has no address yet
        if ip is not None and (segment, ip) in self._local_ip:
            ip = None  # someone else claims a VM's address; do not let ARP answers follow it
        old = self._learned.get(key)
        if ip is None and old is not None:
            ip = old.ip  # a non-ARP frame refreshes the MAC without forgetting its address
        changed = old is None or old.ip != ip
        if old is None:
            self.stats.learned += 1
        elif old.ip is not None and old.ip != ip and self._remote_ip.get((segment, old.ip)) == mac:
            del self._remote_ip[(segment, old.ip)]
        if ip is not None:
            holder = self._remote_ip.get((segment, ip))
            if holder is not None and holder != mac:
                # The address moved to another MAC (failover, VM move, DHCP reuse).
                self.stats.moved += 1
                prev = self._learned[(segment, holder)]
                self._learned[(segment, holder)] = LearnedMac(segment, holder, None, prev.last_seen)
                changed = True
            self._remote_ip[(segment, ip)] = mac
        self._learned[key] = LearnedMac(segment, mac, ip, now)
        if changed and not replicated and self.journal is not None:
            self.journal.append(key)
        return changed

    def take_journal(self) -> list[LearnedMac]:
        """MACs learned or changed since the last call, as they are now (aged ones left out)."""
        if not self.journal:
            return []
        keys, self.journal = self.journal, []
        return [e for key in dict.fromkeys(keys) if (e := self._learned.get(key)) is not None]

    def answer_arp(self, segment: str, pkt: Packet) -> bytes | None:
        """An ARP reply frame (op 2) for a request about a known address, else None (flood it).

        VM addresses are answered for any requester; learned remote addresses only for a
        requester that is a host VM, since a remote requester hears the owner on the wire.
        """
        if pkt.ethertype != ETH_ARP or pkt.arp_op != _ARP_REQUEST:
            return None
        if pkt.arp_spa == pkt.arp_tpa and pkt.arp_spa != 0:
            return None  # gratuitous ARP announces, it asks nothing; pass it on
        answer = self._local_ip.get((segment, pkt.arp_tpa))
        if answer is None and (segment, pkt.src_mac) in self._local_mac:
            answer = self._remote_ip.get((segment, pkt.arp_tpa))
        if answer is None or answer == pkt.arp_sha:
            self.stats.arp_flooded += 1
            return None
        self.stats.arp_answered += 1
        # Mirror the request's tagging: the caller returns the reply where the request came from.
        return arp_frame(
            _ARP_REPLY,
            answer,
            IPv4Address(pkt.arp_tpa),
            pkt.arp_sha,
            IPv4Address(pkt.arp_spa),
            dst_mac=pkt.src_mac,
            vlan=pkt.vlan,
        )

    def flood_vpids(self, segment: str, exclude: int | None) -> list[int]:
        """All host interfaces of the segment but the sender, ascending."""
        return [v for v in self._members.get(segment, ()) if v != exclude]

    def age(self, now: float) -> list[tuple[str, bytes]]:
        """Remove learned remote MACs idle longer than `mac_age`; returns (segment, mac) removed."""
        gone = [k for k, e in self._learned.items() if now - e.last_seen > self.mac_age]
        for key in gone:
            self._forget(key)
        self.stats.aged += len(gone)
        return sorted(gone)

    def learned(self) -> list[LearnedMac]:
        """All learned remote MACs, by (segment, mac), for replication and inspection."""
        return [self._learned[k] for k in sorted(self._learned)]

    def _forget(self, key: tuple[str, bytes]) -> None:
        entry = self._learned.pop(key)
        if entry.ip is not None and self._remote_ip.get((key[0], entry.ip)) == key[1]:
            del self._remote_ip[(key[0], entry.ip)]

    def _forget_ip(self, ip_key: tuple[str, int]) -> None:
        mac = self._remote_ip.pop(ip_key)
        entry = self._learned.get((ip_key[0], mac))
        if entry is not None:
            self._learned[(ip_key[0], mac)] = LearnedMac(ip_key[0], mac, None, entry.last_seen)
