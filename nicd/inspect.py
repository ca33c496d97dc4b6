"""What an operator reads off a NIC: its conntrack as rows (like `conntrack -L`).

Plain dicts for the control socket; the CLI formats them. Kept out of the datapath: nothing
here decides anything.
"""

from __future__ import annotations

from ipaddress import ip_address
from typing import Any

from nicd.datapath.conntrack import ConntrackTable, CtRecord
from nicd.datapath.pipeline import Pipeline
from nicd.datapath.tiers import Action as PathAction
from nicd.datapath.tiers import Tier
from wire.protocols import PROTO_NAMES

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


TIERS = ("eswitch", "cache", "slow")
_OUTS = {0: "vf", 1: "uplink", 2: "peer_deliver", 3: "peer_transmit"}


def port_name(p: Pipeline, out: int, target: int, nic: str = "") -> str:
    """A port as an operator names it: a VM for a VF, `nic1/p0` for an uplink."""
    if out == 0:  # a VF here: name the VM plugged into it
        vpid = next((v for v in p.map.local_vpids() if p.map.ppid(v) == target), None)
        intf = p.vswitch.interface(vpid) if vpid is not None else None
        return intf.vm if intf is not None else f"vf{target}"
    if out == 1 or out == 3:
        owner = nic or p.nic
        up = next((u for u in p.team.uplinks if u.nic == owner and u.ppid == target), None)
        return up.name if up is not None else f"{owner}/uplink{target}"
    return f"{nic}:{vm(p, target)}"  # a handover to the sibling holding VPID `target`


def vm(p: Pipeline, vpid: int) -> str:
    """The VM interface behind a VPID, by name."""
    intf = p.vswitch.interface(vpid)
    return intf.vm if intf is not None else f"vpid{vpid}"


def _action(p: Pipeline, a: PathAction) -> str:
    text = f"{_OUTS[int(a.out)]}({port_name(p, int(a.out), a.target, a.nic)})"
    if a.vlan == 0:
        return "pop_vlan," + text
    return text if a.vlan is None else f"push_vlan({a.vlan}),{text}"


def flow_rows(p: Pipeline, tier: str | None, now: float, limit: int = MAX_ROWS) -> dict[str, Any]:
    """Entries of the fast tiers (like `dpctl/dump-flows`) and the flows left to the slow path.

    A fast entry matches one ingress port and the header of one flow; its counters are the hits
    since the last readback, the records' counters hold the totals. `slow` lists the conntrack
    records no fast tier holds: every one of their packets is decided by the slow path.
    """
    rows: list[dict[str, Any]] = []
    gen = p.generation
    for name, table in (("eswitch", p.eswitch), ("cache", p.cache)):
        if tier not in (None, name):
            continue
        for (prefix, _), entry in table.entries.items():
            if name == "cache" and p.eswitch.entries.get((prefix, _)) is entry:
                continue  # the same entry, listed under the eSwitch that serves it
            ingress, port = prefix >> 32 & 0xFFFF, prefix & 0xFFFFFFFF
            rec = entry.records[0] if entry.records else None
            rows.append({
                "tier": name,
                "in_port": port_name(p, ingress, port) if ingress < 2 else f"peer:{vm(p, port)}",
                "match": conntrack_row(p.ct, rec, now) if rec is not None else {},
                "zones": [r.zone for r in entry.records],
                "actions": [_action(p, a) for a in entry.actions],
                "rule": entry.rule,
                "packets": entry.packets,
                "bytes": entry.bytes,
                "used_s": round(now - entry.last_hit, 3) if entry.last_hit else None,
                "stale": entry.gen != gen,
            })  # fmt: skip
    if tier in (None, "slow"):
        for rec in sorted(p.ct, key=lambda r: r.created):
            if rec.tier == Tier.SLOW:
                row = conntrack_row(p.ct, rec, now)
                rows.append({"tier": "slow", "match": row, "zones": [rec.zone], "rule": rec.rule,
                             "packets": rec.packets, "bytes": rec.bytes,
                             "why": _why_slow(rec)})  # fmt: skip
    return {"total": len(rows), "flows": rows[: max(0, min(limit, MAX_ROWS))]}


def _why_slow(rec: CtRecord) -> str:
    if not rec.sw_ok:
        return "rule inspects every packet"
    if not rec.established:
        return "not established yet"
    return "no fast entry (evicted, or not seen since)"
