"""Datapath state as an operator reads it: a conntrack record as a row, ports by name.

Plain values for the control socket (the trace and the NIC's inspect commands); nothing here
decides anything.
"""

from __future__ import annotations

from ipaddress import ip_address
from typing import Any

from nicd.datapath.conntrack import ConntrackTable, CtRecord
from nicd.datapath.teaming import Team
from nicd.datapath.tiers import Tier
from nicd.datapath.vswitch import VSwitch
from wire.protocols import PROTO_NAMES


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


def vm_name(vswitch: VSwitch, vpid: int) -> str:
    """The VM interface behind a VPID, by name (``vpid<N>`` if the topology has none)."""
    intf = vswitch.interface(vpid)
    return intf.vm if intf is not None else f"vpid{vpid}"


def uplink_name(team: Team, nic: str, ppid: int) -> str:
    """Uplink `ppid` of `nic` by name (``nic1/p0``; ``<nic>/uplink<N>`` if the team has none)."""
    for u in team.uplinks:
        if u.nic == nic and u.ppid == ppid:
            return u.name
    return f"{nic}/uplink{ppid}"
