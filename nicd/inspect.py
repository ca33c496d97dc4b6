"""What an operator reads off a NIC: its conntrack as rows (like `conntrack -L`).

Plain dicts for the control socket; the CLI formats them. Kept out of the datapath: nothing
here decides anything.
"""

from __future__ import annotations

from ipaddress import ip_address
from typing import Any

from nicd.datapath.conntrack import ConntrackTable, CtRecord
from nicd.datapath.tiers import Tier

PROTO_NAMES = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6"}
MAX_ROWS = 10_000  # a control reply stays well under the bus's message size


def _addr(family: int, value: int) -> str:
    return str(ip_address(value)) if family == 4 else str(ip_address(value.to_bytes(16, "big")))


def conntrack_row(ct: ConntrackTable, rec: CtRecord, now: float) -> dict[str, Any]:
    """One record: tuple, state, seconds left, counters, which tiers may and do hold it."""
    zone, family, proto, src, dst, sport, dport = rec.key
    return {
        "zone": zone,
        "proto": PROTO_NAMES.get(proto, str(proto)),
        "src": _addr(family, src),
        "dst": _addr(family, dst),
        "sport": sport,
        "dport": dport,
        "state": rec.state.name,
        "timeout_s": max(0, round(rec.last_seen + ct.timeouts.timeout_for(rec) - now)),
        "packets": rec.packets,
        "bytes": rec.bytes,
        "sw_ok": rec.sw_ok,
        "hw_ok": rec.hw_ok,
        "tier": Tier(rec.tier).name.lower(),
        "rule": rec.rule,
    }


def conntrack_rows(ct: ConntrackTable, now: float, limit: int = MAX_ROWS) -> dict[str, Any]:
    """Up to `limit` records, oldest first, and how many there are in all."""
    recs = sorted(ct, key=lambda r: r.created)[: max(0, min(limit, MAX_ROWS))]
    return {"total": len(ct), "records": [conntrack_row(ct, r, now) for r in recs]}
