"""The fabric's learning switch: learning, VLAN flooding, tags, moves, aging, ports, bad input."""

from __future__ import annotations

from ipaddress import IPv4Address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fabricd.switch import MacRow, PortMode, Switch
from wire.addr import mac_bytes
from wire.build import gratuitous_arp, rarp_frame, udp_frame
from wire.frames import parse_frame_untrusted
from wire.protocols import BROADCAST_MAC

A, B, C = (mac_bytes(f"02:00:00:00:00:0{i}") for i in (1, 2, 3))
IP_A, IP_B = IPv4Address("10.0.0.1"), IPv4Address("10.0.0.2")
N1P1, N1P2, N2P1, N2P2 = ("nic1", 1), ("nic1", 2), ("nic2", 1), ("nic2", 2)
EXT10, EXT20, EXTN = ("peer", "ext10"), ("peer", "ext20"), ("peer", "native")
TRUNKS = [N1P1, N1P2, N2P1, N2P2]


def frame(src: bytes, dst: bytes, vlan: int | None = None, payload: bytes = b"x") -> bytes:
    return udp_frame(src, dst, IP_A, IP_B, 1000, 2000, payload, vlan=vlan)


def tor(aging: float = 300.0, max_frame: int | None = None) -> Switch:
    """Four trunks (two NICs, two uplinks each) and access ports in VLAN 10, 20 and native."""
    sw = Switch(aging=aging, max_frame=max_frame)
    for port in TRUNKS:
        sw.add_port(port)
    sw.add_port(EXT10, PortMode.ACCESS, 10)
    sw.add_port(EXT20, "access", 20)
    sw.add_port(EXTN, PortMode.ACCESS, None)
    return sw


def ports(out: list[tuple[object, bytes]]) -> set[object]:
    return {p for p, _ in out}


def test_unknown_unicast_floods_the_vlan_then_known_unicast_goes_to_one_port() -> None:
    sw = tor()
    out = sw.process(N1P1, frame(A, B, 10), 0.0)
    assert ports(out) == {N1P2, N2P1, N2P2, EXT10}  # not ingress, not VLAN 20, not native
    assert sw.stats.floods == 1 and sw.stats.learned == 1
    back = sw.process(N2P2, frame(B, A, 10), 1.0)
    assert ports(back) == {N1P1}
    again = sw.process(N1P1, frame(A, B, 10), 2.0)
    assert ports(again) == {N2P2}
    assert sw.stats.floods == 1
    assert sw.stats.frames_in == 3 and sw.stats.frames_out == 4 + 1 + 1


def test_broadcast_and_multicast_flood_even_when_known() -> None:
    sw = tor()
    sw.process(N2P1, frame(B, A, 20), 0.0)
    assert ports(sw.process(N1P1, frame(A, BROADCAST_MAC, 20), 1.0)) == {N1P2, N2P1, N2P2, EXT20}
    mcast = mac_bytes("01:00:5e:00:00:01")
    assert ports(sw.process(EXT20, frame(C, mcast), 1.0)) == set(TRUNKS)


def test_native_vlan_is_separate_from_tagged_vlans() -> None:
    sw = tor()
    sw.process(N1P1, frame(A, B, 10), 0.0)  # A learned in VLAN 10 only
    out = sw.process(EXTN, frame(C, A), 1.0)
    assert ports(out) == set(TRUNKS)  # unknown in the native VLAN: flood, untagged
    assert all(parse_frame_untrusted(f).vlan is None for _, f in out)
    assert sw.lookup(None, A, 1.0) is None and sw.lookup(10, A, 1.0) == N1P1


def test_never_back_out_the_ingress_port() -> None:
    sw = tor()
    sw.process(N1P1, frame(A, C, 10), 0.0)
    sw.process(N1P1, frame(B, C, 10), 0.0)  # A and B both behind nic1 uplink 1
    assert sw.process(N1P1, frame(A, B, 10), 1.0) == []
    assert sw.stats.drops == {"fwd.same_port": 1}
    assert N1P1 not in ports(sw.process(N1P1, frame(A, BROADCAST_MAC, 10), 1.0))


def test_access_to_trunk_pushes_the_tag_and_trunk_to_access_pops_it() -> None:
    sw = tor()
    untagged = frame(C, BROADCAST_MAC)
    out = dict(sw.process(EXT10, untagged, 0.0))
    pkt = parse_frame_untrusted(out[N1P1])
    assert pkt.vlan == 10 and out[N1P1][:12] + out[N1P1][16:] == untagged
    reply = frame(A, C, 10)
    down = sw.process(N2P1, reply, 1.0)
    assert down == [(EXT10, reply[:12] + reply[16:])]
    assert parse_frame_untrusted(down[0][1]).vlan is None


def test_trunk_to_trunk_keeps_the_frame_bytes_and_priority_bits() -> None:
    sw = tor()
    tagged = bytearray(frame(A, BROADCAST_MAC, 10))
    tagged[14] |= 0xA0  # PCP 5
    out = dict(sw.process(N1P1, bytes(tagged), 0.0))
    assert out[N2P1] == bytes(tagged)


def test_priority_tag_vid0_belongs_to_the_port_vlan() -> None:
    sw = tor()
    f = frame(C, BROADCAST_MAC, 0)
    out = dict(sw.process(EXT10, f, 0.0))
    assert parse_frame_untrusted(out[N1P1]).vlan == 10
    assert sw.lookup(10, C, 0.0) == EXT10


def test_tagged_frame_on_an_access_port_is_dropped() -> None:
    sw = tor()
    assert sw.process(EXT10, frame(C, BROADCAST_MAC, 10), 0.0) == []
    assert sw.process(N1P1, frame(C, BROADCAST_MAC, 0xFFF), 0.0) == []
    assert sw.stats.drops == {"access.tagged": 1, "vlan.reserved": 1}
    assert sw.mac_table(0.0) == []


def test_station_move_after_gratuitous_arp_redirects_at_once() -> None:
    sw = tor()
    sw.process(N1P1, frame(A, C, 10), 0.0)
    sw.process(EXT10, frame(C, A), 1.0)
    assert sw.lookup(10, A, 1.0) == N1P1
    # nic1 fails, the team moves A to nic2 uplink 2, which announces it.
    garp = gratuitous_arp(A, IP_A, vlan=10)
    out = sw.process(N2P2, garp, 2.0)
    assert N2P2 not in ports(out) and EXT10 in ports(out)
    assert sw.stats.moves == 1 and sw.lookup(10, A, 2.0) == N2P2
    assert sw.mac_table(2.0)[0] == MacRow(10, "02:00:00:00:00:01", N2P2, 0.0)
    assert ports(sw.process(EXT10, frame(C, A), 2.5)) == {N2P2}
    (move,) = sw.take_moves()
    assert (move.vlan, move.mac, move.old, move.new, move.now) == (
        10,
        "02:00:00:00:00:01",
        N1P1,
        N2P2,
        2.0,
    )
    assert sw.take_moves() == []


def test_rarp_announcement_also_moves_the_station() -> None:
    sw = tor()
    sw.process(N1P2, frame(A, C, 20), 0.0)
    sw.process(N2P1, rarp_frame(A, vlan=20), 1.0)
    assert sw.lookup(20, A, 1.0) == N2P1 and sw.stats.moves == 1


def test_aging_with_explicit_now() -> None:
    sw = tor(aging=10.0)
    sw.process(N1P1, frame(A, C, 10), 0.0)
    sw.process(N1P1, frame(B, C, 10), 5.0)
    assert [(r.mac, r.age) for r in sw.mac_table(9.0)] == [
        ("02:00:00:00:00:01", 9.0),
        ("02:00:00:00:00:02", 4.0),
    ]
    # A is idle for 10 s: a frame to it floods again, and the lazy lookup counts it as aged.
    assert ports(sw.process(EXT10, frame(C, A), 10.0)) == set(TRUNKS)
    assert sw.stats.aged == 1
    assert sw.expire(14.9) == 0
    assert sw.expire(15.0) == 1  # B
    assert [r.mac for r in sw.mac_table(15.0)] == ["02:00:00:00:00:03"]
    assert sw.stats.aged == 2


def test_traffic_refreshes_an_entry() -> None:
    sw = tor(aging=10.0)
    for t in (0.0, 8.0, 16.0):
        sw.process(N1P1, frame(A, C, 10), t)
    assert sw.lookup(10, A, 25.0) == N1P1


def test_port_down_flushes_its_macs_and_drops_its_frames() -> None:
    sw = tor()
    sw.process(N1P1, frame(A, C, 10), 0.0)
    sw.process(N2P1, frame(B, C, 10), 0.0)
    sw.set_admin(N1P1, False)
    assert not sw.is_up(N1P1)
    assert sw.lookup(10, A, 1.0) is None and sw.lookup(10, B, 1.0) == N2P1
    assert sw.stats.flushed == 1
    assert sw.process(N1P1, frame(A, C, 10), 1.0) == []
    out = sw.process(EXT10, frame(C, A), 1.0)  # A unknown now: flood, but not to the down port
    assert ports(out) == {N1P2, N2P1, N2P2}
    assert sw.stats.drops == {"port.down": 1}
    sw.set_admin(N1P1, True)
    assert N1P1 in ports(sw.process(EXT10, frame(C, BROADCAST_MAC), 2.0))


def test_link_and_admin_state_are_independent() -> None:
    sw = tor()
    sw.set_link(N2P1, False)
    sw.set_admin(N2P1, False)
    sw.set_link(N2P1, True)
    assert not sw.is_up(N2P1)
    sw.set_admin(N2P1, True)
    assert sw.is_up(N2P1)
    want = {"mode": "trunk", "vlan": None, "admin_up": True, "link_up": True, "rx": 0, "tx": 0}
    assert sw.ports()[N2P1] == want


def test_removed_port_forgets_its_macs() -> None:
    sw = tor()
    sw.process(EXT20, frame(C, A), 0.0)
    sw.remove_port(EXT20)
    assert sw.lookup(20, C, 0.0) is None
    assert sw.process(EXT20, frame(C, A), 0.0) == []
    assert sw.stats.drops == {"port.unknown": 1}


def test_malformed_frames_are_counted_by_reason() -> None:
    sw = tor()
    assert sw.process(N1P1, b"\x00" * 13, 0.0) == []
    assert sw.process(N1P1, A + B + b"\x81\x00\x00", 0.0) == []
    assert sw.process(N1P1, frame(mac_bytes("01:00:00:00:00:01"), A, 10), 0.0) == []
    assert sw.stats.drops == {"eth.short": 1, "vlan.short": 1, "eth.src_group": 1}
    assert sw.stats.frames_in == 3 and sw.stats.frames_out == 0


def test_oversize_after_tag_push_is_dropped_per_egress() -> None:
    sw = tor(max_frame=100)
    f = frame(C, BROADCAST_MAC, payload=b"z" * (100 - 42))
    assert len(f) == 100
    out = sw.process(EXT10, f, 0.0)
    assert out == []
    assert sw.stats.drops == {"egress.oversize": 4}


def test_bad_port_configs_are_refused() -> None:
    sw = tor()
    with pytest.raises(ValueError):
        sw.add_port(N1P1)
    with pytest.raises(ValueError):
        sw.add_port(("nic3", 1), PortMode.TRUNK, 10)
    with pytest.raises(ValueError):
        sw.add_port(("peer", "x"), PortMode.ACCESS, 4095)
    with pytest.raises(ValueError):
        Switch(aging=0)


def test_stats_as_dict_is_plain() -> None:
    sw = tor()
    sw.process(N1P1, b"", 0.0)
    d = sw.stats.as_dict()
    assert d["drops"] == {"eth.short": 1} and d["frames_in"] == 1


# --- property: random frames never raise; every output is in the frame's VLAN ----------------

PORT_VLAN: dict[object, int | None] = {EXT10: 10, EXT20: 20, EXTN: None}
MACS = [A, B, C, BROADCAST_MAC, mac_bytes("33:33:00:00:00:01"), mac_bytes("01:00:00:00:00:01")]
all_ports = st.sampled_from([*TRUNKS, EXT10, EXT20, EXTN, ("nic9", 1)])


def l2_vlan(f: bytes) -> int | None:
    """The 802.1Q VID of a frame, None when untagged (the payload is not parsed)."""
    return int.from_bytes(f[14:16], "big") & 0xFFF if f[12:14] == b"\x81\x00" else None


@st.composite
def frames(draw: st.DrawFn) -> bytes:
    if draw(st.booleans()):
        return draw(st.binary(max_size=40))  # anything at all, mostly malformed
    dst, src = draw(st.sampled_from(MACS)), draw(st.sampled_from(MACS))
    vlan = draw(st.one_of(st.none(), st.sampled_from([0, 10, 20, 30, 0xFFF])))
    body = draw(st.binary(max_size=20))
    if vlan is None:
        return dst + src + b"\x08\x00" + body
    tci = draw(st.integers(0, 7)) << 13 | vlan
    return dst + src + b"\x81\x00" + tci.to_bytes(2, "big") + b"\x08\x00" + body


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(all_ports, frames(), st.floats(0, 1000)), max_size=40), st.data())
def test_random_frames_never_raise_and_stay_in_their_vlan(
    steps: list[tuple[object, bytes, float]], data: st.DataObject
) -> None:
    sw = tor(aging=50.0)
    for port, f, now in steps:
        if data.draw(st.integers(0, 9)) == 0 and port in TRUNKS:
            sw.set_admin(port, not sw.is_up(port))
        before = sw.stats.frames_in
        out = sw.process(port, f, now)
        assert sw.stats.frames_in == before + 1
        if not out:
            continue
        vlan = PORT_VLAN.get(port, l2_vlan(f) or None)  # VID 0 is the native VLAN on a trunk
        for egress, sent in out:
            assert egress != port and sw.is_up(egress)
            if egress in PORT_VLAN:
                assert PORT_VLAN[egress] == vlan and l2_vlan(sent) is None  # access: untagged
            else:
                assert l2_vlan(sent) == vlan  # trunk: tagged with the frame's VLAN (None: native)
            assert sent[:12] == f[:12]
    rows = sw.mac_table(1000.0)
    assert all(isinstance(r.port, tuple) and r.age >= 0 for r in rows)


def test_port_counters_and_sources_say_which_uplink_each_station_uses() -> None:
    sw = tor()
    sw.process(N1P1, frame(A, B, 10), 0.0)
    sw.process(N1P1, frame(A, B, 10), 0.1)
    sw.process(N2P2, frame(B, A, 10), 0.2)
    sw.process(N1P1, b"short", 0.3)  # dropped before it counts as switched
    assert sw.sources() == {N1P1: {"02:00:00:00:00:01": 2}, N2P2: {"02:00:00:00:00:02": 1}}
    state = sw.ports()
    assert (state[N1P1]["rx"], state[N2P2]["rx"]) == (2, 1)
    # Both A->B flood (B is unknown until it speaks); B->A then goes to N1P1 only.
    assert (state[N2P2]["tx"], state[EXT10]["tx"], state[N1P1]["tx"]) == (2, 2, 1)
