"""Conntrack rows as the operator reads them."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address

from nicd.datapath.conntrack import ConntrackTable, Timeouts
from nicd.inspect import conntrack_rows
from wire import build
from wire.addr import mac_bytes
from wire.frames import parse_frame_untrusted
from wire.protocols import TCP_SYN

A, B = mac_bytes("02:00:00:00:00:01"), mac_bytes("02:00:00:00:00:02")


def test_rows_name_the_tuple_state_timeout_and_tier() -> None:
    ct = ConntrackTable(Timeouts(tcp_syn_sent=30), 100)
    v4 = build.tcp_frame(A, B, IPv4Address("10.0.0.1"), IPv4Address("10.0.0.2"), 1000, 80, TCP_SYN)
    v6 = build.tcp_frame(A, B, IPv6Address("fd00::1"), IPv6Address("fd00::2"), 1001, 80, TCP_SYN)
    ct.create(3, 0, parse_frame_untrusted(v4), 1.0, "web", True, True)
    ct.create(3, 0, parse_frame_untrusted(v6), 2.0, "web", False, False)
    out = conntrack_rows(ct, now=11.0)
    assert out["total"] == 2
    first, second = out["records"]
    assert first == {
        "zone": 3, "proto": "tcp", "src": "10.0.0.1", "dst": "10.0.0.2", "sport": 1000,
        "dport": 80, "state": "SYN_SENT", "timeout_s": 20, "packets": 1, "bytes": 54,
        "sw_ok": True, "hw_ok": False, "tier": "slow", "rule": "web",
    }  # fmt: skip
    assert (second["src"], second["dst"], second["timeout_s"]) == ("fd00::1", "fd00::2", 21)
    assert conntrack_rows(ct, 11.0, limit=1)["records"] == [first]
