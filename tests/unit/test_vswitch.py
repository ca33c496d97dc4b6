"""VSwitch: lookup, ARP answering, remote learning and aging, flood sets, config errors."""

from __future__ import annotations

import re
from ipaddress import IPv4Address, ip_address
from typing import Any

import pytest

from nicd.datapath.vswitch import (
    Interface,
    Segment,
    VSwitch,
    interface_from_dict,
    segment_from_dict,
)
from wire.addr import mac_bytes
from wire.build import arp_frame, gratuitous_arp, udp_frame
from wire.frames import parse_frame_untrusted
from wire.protocols import BROADCAST_MAC, ETH_ARP

WEB1_MAC = mac_bytes("02:00:00:00:01:01")
WEB2_MAC = mac_bytes("02:00:00:00:01:02")
DB1_MAC = mac_bytes("02:00:00:00:02:01")
ROUTER_MAC = mac_bytes("02:aa:00:00:00:01")
PEER_MAC = mac_bytes("02:bb:00:00:00:01")
OTHER_MAC = mac_bytes("02:bb:00:00:00:02")


def _ip(text: str) -> Any:
    return ip_address(text)


SEGMENTS = [Segment("web", 10), Segment("db", None)]
INTERFACES = [
    Interface(1, "web1", WEB1_MAC, (_ip("10.1.0.11"), _ip("2001:db8:1::11")), "web"),
    Interface(2, "web2", WEB2_MAC, (_ip("10.1.0.12"),), "web"),
    Interface(3, "db1", DB1_MAC, (_ip("10.2.0.21"),), "db"),
]


def _ipint(text: str) -> int:
    return int(IPv4Address(text))


def _arp_request(sha: bytes, spa: str, tpa: str, vlan: int | None = None) -> Any:
    frame = arp_frame(1, sha, IPv4Address(spa), b"\0" * 6, IPv4Address(tpa), vlan=vlan)
    return parse_frame_untrusted(frame)


@pytest.fixture
def vs() -> VSwitch:
    return VSwitch(SEGMENTS, INTERFACES, mac_age=60.0)


def test_lookup_and_segments(vs: VSwitch) -> None:
    assert vs.lookup("web", WEB2_MAC) == 2
    assert vs.lookup("db", WEB2_MAC) is None  # right MAC, wrong segment
    assert vs.lookup("web", PEER_MAC) is None  # the network
    assert vs.interface(3) == INTERFACES[2]
    assert vs.segment_of_vpid(1) == Segment("web", 10)
    assert vs.segment_of_vpid(99) is None


def test_segment_of_vlan(vs: VSwitch) -> None:
    assert vs.segment_of_vlan(10) == Segment("web", 10)
    assert vs.segment_of_vlan(None) == Segment("db", None)
    assert vs.segment_of_vlan(20) is None


def test_flood_set_excludes_sender(vs: VSwitch) -> None:
    assert vs.flood_vpids("web", exclude=1) == [2]
    assert vs.flood_vpids("web", exclude=None) == [1, 2]
    assert vs.flood_vpids("db", exclude=None) == [3]
    assert vs.flood_vpids("nope", exclude=None) == []


def test_arp_for_vm_ip_is_answered_from_uplink(vs: VSwitch) -> None:
    req = _arp_request(PEER_MAC, "10.1.0.1", "10.1.0.12", vlan=10)
    reply = vs.answer_arp("web", req)
    assert reply is not None
    pkt = parse_frame_untrusted(reply)
    assert pkt.ethertype == ETH_ARP
    assert pkt.arp_op == 2
    assert pkt.dst_mac == PEER_MAC
    assert pkt.src_mac == WEB2_MAC
    assert pkt.vlan == 10  # back out tagged the way the request came
    assert pkt.arp_sha == WEB2_MAC
    assert pkt.arp_spa == _ipint("10.1.0.12")
    assert pkt.arp_tha == PEER_MAC
    assert pkt.arp_tpa == _ipint("10.1.0.1")
    assert vs.stats.arp_answered == 1


def test_arp_between_vms_is_answered(vs: VSwitch) -> None:
    reply = vs.answer_arp("web", _arp_request(WEB1_MAC, "10.1.0.11", "10.1.0.12"))
    assert reply is not None
    pkt = parse_frame_untrusted(reply)
    assert (pkt.dst_mac, pkt.arp_sha, pkt.vlan) == (WEB1_MAC, WEB2_MAC, None)


def test_arp_for_unknown_ip_is_not_answered(vs: VSwitch) -> None:
    assert vs.answer_arp("web", _arp_request(WEB1_MAC, "10.1.0.11", "10.1.0.99")) is None
    # A VM address, but asked in another segment.
    assert vs.answer_arp("db", _arp_request(DB1_MAC, "10.2.0.21", "10.1.0.12")) is None
    assert vs.stats.arp_flooded == 2
    assert vs.stats.arp_answered == 0


def test_arp_probe_for_vm_ip_is_answered(vs: VSwitch) -> None:
    # RFC 5227 duplicate-address probe: the owner must answer so the prober backs off.
    reply = vs.answer_arp("web", _arp_request(PEER_MAC, "0.0.0.0", "10.1.0.11", vlan=10))
    assert reply is not None
    pkt = parse_frame_untrusted(reply)
    assert (pkt.arp_sha, pkt.arp_tha, pkt.arp_tpa) == (WEB1_MAC, PEER_MAC, 0)


def test_arp_reply_and_gratuitous_arp_are_not_answered(vs: VSwitch) -> None:
    garp = parse_frame_untrusted(gratuitous_arp(WEB1_MAC, IPv4Address("10.1.0.11")))
    assert vs.answer_arp("web", garp) is None
    reply = arp_frame(2, PEER_MAC, IPv4Address("10.1.0.1"), WEB1_MAC, IPv4Address("10.1.0.11"))
    assert vs.answer_arp("web", parse_frame_untrusted(reply)) is None
    assert vs.stats.arp_answered == 0


def test_learned_ip_answered_for_vm_but_not_for_remote_requester(vs: VSwitch) -> None:
    assert vs.learn_remote("web", ROUTER_MAC, _ipint("10.1.0.1"), now=0.0)
    reply = vs.answer_arp("web", _arp_request(WEB1_MAC, "10.1.0.11", "10.1.0.1"))
    assert reply is not None
    pkt = parse_frame_untrusted(reply)
    assert (pkt.arp_sha, pkt.arp_spa, pkt.dst_mac) == (ROUTER_MAC, _ipint("10.1.0.1"), WEB1_MAC)
    # A remote requester hears the router itself on the wire.
    assert vs.answer_arp("web", _arp_request(PEER_MAC, "10.1.0.2", "10.1.0.1", vlan=10)) is None


def test_learning_reports_state_changes(vs: VSwitch) -> None:
    assert vs.learn_remote("web", PEER_MAC, None, now=0.0) is True  # new
    assert vs.learn_remote("web", PEER_MAC, None, now=1.0) is False  # refresh only
    assert vs.learn_remote("web", PEER_MAC, _ipint("10.1.0.5"), now=2.0) is True  # got an IP
    assert vs.learn_remote("web", PEER_MAC, None, now=3.0) is False  # keeps its IP
    (entry,) = vs.learned()
    assert (entry.segment, entry.mac, entry.ip, entry.last_seen) == (
        "web",
        PEER_MAC,
        _ipint("10.1.0.5"),
        3.0,
    )
    assert vs.stats.learned == 1


def test_learning_ignores_own_vm_macs_and_group_macs(vs: VSwitch) -> None:
    assert vs.learn_remote("web", WEB1_MAC, None, now=0.0) is False
    assert vs.learn_remote("web", BROADCAST_MAC, None, now=0.0) is False
    assert vs.learn_remote("nope", PEER_MAC, None, now=0.0) is False
    assert vs.learned() == []


def test_ip_move_between_remote_macs(vs: VSwitch) -> None:
    vs.learn_remote("web", PEER_MAC, _ipint("10.1.0.5"), now=0.0)
    assert vs.learn_remote("web", OTHER_MAC, _ipint("10.1.0.5"), now=1.0) is True
    assert vs.stats.moved == 1
    by_mac = {e.mac: e.ip for e in vs.learned()}
    assert by_mac == {PEER_MAC: None, OTHER_MAC: _ipint("10.1.0.5")}
    reply = vs.answer_arp("web", _arp_request(WEB1_MAC, "10.1.0.11", "10.1.0.5"))
    assert reply is not None and parse_frame_untrusted(reply).arp_sha == OTHER_MAC


def test_aging_removes_idle_entries_only(vs: VSwitch) -> None:
    vs.learn_remote("web", PEER_MAC, _ipint("10.1.0.5"), now=0.0)
    vs.learn_remote("db", OTHER_MAC, None, now=0.0)
    vs.learn_remote("db", OTHER_MAC, None, now=30.0)
    assert vs.age(now=60.0) == []  # exactly mac_age idle is not yet "longer than"
    assert vs.age(now=61.0) == [("web", PEER_MAC)]
    assert [e.mac for e in vs.learned()] == [OTHER_MAC]
    assert vs.stats.aged == 1
    # Its ARP entry went with it.
    assert vs.answer_arp("web", _arp_request(WEB1_MAC, "10.1.0.11", "10.1.0.5")) is None
    assert vs.age(now=91.0) == [("db", OTHER_MAC)]


def test_set_topology_keeps_valid_entries_and_drops_shadowed(vs: VSwitch) -> None:
    vs.learn_remote("web", PEER_MAC, None, now=0.0)
    vs.learn_remote("db", OTHER_MAC, None, now=0.0)
    vs.learn_remote("web", ROUTER_MAC, None, now=0.0)
    # The VM with PEER_MAC migrates into this host; segment db is removed.
    migrated = Interface(4, "app1", PEER_MAC, (_ip("10.1.0.5"),), "web")
    vs.set_topology([Segment("web", 10)], [*INTERFACES[:2], migrated])
    assert [(e.segment, e.mac) for e in vs.learned()] == [("web", ROUTER_MAC)]
    assert vs.lookup("web", PEER_MAC) == 4
    assert vs.stats.moved == 1
    assert vs.flood_vpids("web", exclude=4) == [1, 2]
    assert vs.segment_of_vlan(None) is None


def test_udp_frame_source_learning_roundtrip(vs: VSwitch) -> None:
    frame = udp_frame(
        PEER_MAC, WEB1_MAC, _ip("10.1.0.5"), _ip("10.1.0.11"), 5000, 53, b"x", vlan=10
    )
    pkt = parse_frame_untrusted(frame)
    seg = vs.segment_of_vlan(pkt.vlan)
    assert seg is not None
    assert vs.learn_remote(seg.name, pkt.src_mac, None, now=0.0)
    assert vs.lookup(seg.name, pkt.dst_mac) == 1


@pytest.mark.parametrize(
    ("segments", "interfaces", "message"),
    [
        ([Segment("a", 1), Segment("a", 2)], [], "defined twice"),
        ([Segment("a", 1), Segment("b", 1)], [], "vlan 1 already used"),
        ([Segment("a", 1)], [Interface(1, "x", WEB1_MAC, (), "b")], "unknown segment"),
        (
            [Segment("a", 1)],
            [Interface(1, "x", WEB1_MAC, (), "a"), Interface(1, "y", WEB2_MAC, (), "a")],
            "VPID already used",
        ),
        (
            [Segment("a", 1)],
            [Interface(1, "x", WEB1_MAC, (), "a"), Interface(2, "y", WEB1_MAC, (), "a")],
            "MAC already used",
        ),
    ],
)
def test_inconsistent_topology_raises(
    segments: list[Segment], interfaces: list[Interface], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        VSwitch(segments, interfaces)


def test_config_helpers_build_records() -> None:
    assert segment_from_dict({"name": "web", "vlan": 10}, "segments[0]") == Segment("web", 10)
    assert segment_from_dict({"name": "flat"}, "segments[1]") == Segment("flat", None)
    intf = interface_from_dict(
        {
            "vm": "web1",
            "mac": "02:00:00:00:01:01",
            "ips": ["10.1.0.11", "2001:db8:1::11"],
            "segment": "web",
        },
        vpid=7,
        where="vms.web1",
    )
    assert intf == Interface(7, "web1", WEB1_MAC, INTERFACES[0].ips, "web")


GOOD_VM = {"vm": "web1", "mac": "02:00:00:00:01:01", "ips": ["10.1.0.11"], "segment": "web"}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"mac": "02:00:00:00:01"}, "vms.web1.mac: not a MAC address"),
        ({"mac": "zz:00:00:00:01:01"}, "vms.web1.mac: not a MAC address"),
        ({"mac": 5}, "vms.web1.mac: not a MAC address"),
        ({"mac": "01:00:5e:00:00:01"}, "vms.web1.mac: not a unicast MAC address"),
        ({"ips": ["10.1.0.11", "10.1.0.300"]}, "vms.web1.ips[1]: not an IP address"),
        ({"ips": "10.1.0.11"}, "vms.web1.ips: must be a list"),
        ({"ips": ["10.1.0.11", "10.1.0.11"]}, "vms.web1.ips[1]:"),
        ({"segment": ""}, "vms.web1.segment: must be a non-empty string"),
        ({"vm": None}, "vms.web1.vm: must be a non-empty string"),
        ({"colour": "red"}, "vms.web1.colour: unknown key"),
    ],
)
def test_interface_config_errors_name_the_field(change: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match="^" + re.escape(field)):
        interface_from_dict({**GOOD_VM, **change}, vpid=1, where="vms.web1")


def test_interface_config_missing_field() -> None:
    with pytest.raises(ValueError, match=r"^vms\.web1\.mac: missing"):
        interface_from_dict({"vm": "web1", "segment": "web"}, vpid=1, where="vms.web1")


@pytest.mark.parametrize(
    ("d", "field"),
    [
        ({"name": "web", "vlan": 0}, "segments[0].vlan: must be an integer 1..4094"),
        ({"name": "web", "vlan": 4095}, "segments[0].vlan:"),
        ({"name": "web", "vlan": "10"}, "segments[0].vlan:"),
        ({"name": "web", "vlan": True}, "segments[0].vlan:"),
        ({"vlan": 10}, "segments[0].name: missing"),
        ({"name": ""}, "segments[0].name: must be a non-empty string"),
        ({"name": "web", "mtu": 9000}, "segments[0].mtu: unknown key"),
        ("web", "segments[0]: must be a table"),
    ],
)
def test_segment_config_errors_name_the_field(d: Any, field: str) -> None:
    with pytest.raises(ValueError, match="^" + re.escape(field)):
        segment_from_dict(d, "segments[0]")


def test_the_journal_lists_what_siblings_must_learn_but_not_what_they_taught(vs: VSwitch) -> None:
    vs.journal = []
    vs.learn_remote("web", PEER_MAC, None, now=0.0)
    vs.learn_remote("web", PEER_MAC, None, now=1.0)  # a refresh: nothing new to tell
    vs.learn_remote("web", PEER_MAC, _ipint("10.1.0.5"), now=2.0)
    vs.learn_remote("web", OTHER_MAC, None, now=2.0, replicated=True)
    (entry,) = vs.take_journal()  # one entry per MAC, as it is now
    assert (entry.mac, entry.ip) == (PEER_MAC, _ipint("10.1.0.5"))
    assert vs.take_journal() == []
    assert {e.mac for e in vs.learned()} == {PEER_MAC, OTHER_MAC}
