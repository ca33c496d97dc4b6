"""What an operator reads off a NIC: its conntrack as rows (like `conntrack -L`).

Plain dicts for the control socket; the CLI formats them. Kept out of the datapath: nothing
here decides anything.
"""

from __future__ import annotations

from typing import Any

from nicd.datapath.conntrack import ConntrackTable, CtRecord
from nicd.datapath.decision import PortKind
from nicd.datapath.offload import Room, offload
from nicd.datapath.pipeline import Pipeline
from nicd.datapath.rows import conntrack_row, uplink_name, vm_name
from nicd.datapath.tiers import PathAction, Tier

MAX_ROWS = 10_000  # a control reply stays well under the bus's message size


def conntrack_rows(ct: ConntrackTable, now: float, limit: int = MAX_ROWS) -> dict[str, Any]:
    """Up to `limit` records, oldest first, and how many there are in all."""
    recs = sorted(ct, key=lambda r: r.created)[: max(0, min(limit, MAX_ROWS))]
    return {"total": len(ct), "records": [conntrack_row(ct, r, now) for r in recs]}


TIERS = ("eswitch", "cache", "slow")
_OUTS: dict[int, str] = {k: k.name.lower() for k in PortKind}


def port_name(p: Pipeline, out: int, target: int, nic: str = "") -> str:
    """A port as an operator names it: a VM for a VF, `nic1/p0` for an uplink."""
    if out == PortKind.VF:  # a VF here: name the VM plugged into it
        vpid = next((v for v in p.map.local_vpids() if p.map.ppid(v) == target), None)
        intf = p.vswitch.interface(vpid) if vpid is not None else None
        return intf.vm if intf is not None else f"vf{target}"
    if out in (PortKind.UPLINK, PortKind.PEER_TRANSMIT):
        return uplink_name(p.team, nic or p.nic, target)
    return f"{nic}:{vm_name(p.vswitch, target)}"  # to the sibling holding VPID `target`


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
            vm = vm_name(p.vswitch, port)
            rec = entry.records[0] if entry.records else None
            rows.append({
                "tier": name,
                "in_port": port_name(p, ingress, port) if ingress < 2 else f"peer:{vm}",
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
    """Why a record's packets go to the slow path: the offload decision, given room."""
    plan = offload((rec,), True, True, Room.FREE, Room.FREE)
    if not plan.cache:
        return plan.why[0].value
    return "no fast entry (evicted, or not seen since)"
