"""Review of issue 15: a netns VM (root in its namespace, CAP_NET_RAW) may send frames with any
number of made-up source MACs. Both learning tables they reach grow without bound: the fabric's
(every frame out of the team is learned) and each NIC's remote-MAC table (the fabric floods the
frames back to the other NIC's uplinks, which learn them and replicate them to the sibling).
Seen live: 200k broadcast frames from nsclient left 26k MACs learned on both NICs and the
fabric (+25 MB per NIC); aging (300 s) is the only bound, so the rate a VM sends at sets it."""

from __future__ import annotations

import pytest

from fabricd.switch import Switch
from tests.unit.test_fabric_switch import N1P1, TRUNKS
from wire.protocols import BROADCAST_MAC

FRAMES = 70_000  # more MACs than any real top-of-rack switch's table holds for one VLAN


@pytest.mark.xfail(
    strict=True,
    reason="not fixed (a capacity and a counted learn.full drop in fabricd's switch and the "
    "NICs' vswitch, with what it means for replication, is a design change)",
)
def test_a_source_mac_flood_from_one_port_does_not_grow_the_fabrics_table_without_bound() -> None:
    sw = Switch(aging=300.0)
    for port in TRUNKS:
        sw.add_port(port)
    body = b"\x81\x00\x00\x0a\x88\xb5" + bytes(46)  # VLAN 10, a local experimental ethertype
    for i in range(FRAMES):
        src = b"\x02" + i.to_bytes(5, "big")
        sw.process(N1P1, BROADCAST_MAC + src + body, 0.0)
    assert sw.stats.learned < FRAMES, f"{sw.stats.learned} MACs learned from one port"
