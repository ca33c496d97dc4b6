"""`nicteam migrate VM NIC`: move a VM's interfaces to another NIC of its host by a map update.

hostd moves the VPIDs under a new epoch; the target NIC takes over the connections it holds as
replicated copies (`ct.commit`), so nothing is rewritten: the records keep their VPID zone and
their counters, and go on counting on the new NIC.
"""

from __future__ import annotations

from typing import Any

from configs import Config
from ctl.client import ControlError, request
from ctl.cluster import NotReady, wait_for


def _records(config: Config, nic: str, zones: set[int]) -> list[dict[str, Any]]:
    rows = request(config, nic, "conntrack", {"limit": 10_000})["records"]
    return [r for r in rows if r["zone"] in zones]


def migrate(config: Config, vm: str, nic: str, wait_s: float = 5.0) -> dict[str, Any]:
    """Ask the VM's host to move it; wait until `nic` owns it; what moved and what was kept."""
    try:
        host = config.vm(vm).host
    except KeyError:
        names = ", ".join(v.name for v in config.vms)
        raise ValueError(f"no VM {vm!r} in the config (VMs: {names})") from None
    nics = [n.name for n in config.host(host).nics]
    if nic not in nics:
        raise ValueError(f"{vm} is on host {host}, whose NICs are {', '.join(nics)}, not {nic!r}")
    sync = request(config, nic, "stats").get("sync", {})
    before, boot = sync.get("committed", 0), sync.get("boot")
    result = request(config, host, "migrate", {"vm": vm, "nic": nic})
    vpids = {m["vpid"] for m in result["moves"]}

    def owned() -> dict[str, Any] | None:
        s = request(config, nic, "stats")
        return s if s.get("epoch", 0) >= result["epoch"] and vpids <= set(s["vpids"]) else None

    try:
        after = wait_for(f"{nic} to own VPIDs {sorted(vpids)}", owned, timeout=wait_s)
    except NotReady as e:
        raise ControlError(str(e)) from None
    # A target that restarted inside the move counts its commits from 0 again: no difference
    # of two boots' counters means anything (it printed "took over -2" once).
    same_boot = after["sync"].get("boot") == boot
    result["taken_over"] = after["sync"]["committed"] - before if same_boot else None
    result["connections"] = _records(config, nic, vpids) if vpids else []
    return result


def format_migrate(r: dict[str, Any]) -> str:
    """What moved, the epoch, and the connections the target NIC now carries."""
    if not r["moves"]:
        return f"{r['vm']}: already on {r['nic']} (epoch {r['epoch']}, nothing to do)"
    lines = [
        f"{r['vm']}: vpid {m['vpid']} {m['from']}/vf{m['from_ppid']} -> {m['to']}/vf{m['ppid']}"
        for m in r["moves"]
    ]
    if r["taken_over"] is None:
        took = f"{r['nic']} restarted during the move and carries {len(r['connections'])}"
    else:
        took = f"{r['nic']} took over {r['taken_over']}"
    lines.append(
        f"map epoch {r['epoch']}; {took} connections from its replicated copies; "
        "flow entries rewritten: 0 (VPIDs unchanged)"
    )
    for c in r["connections"]:
        lines.append(
            f"  {c['proto']:<4} {c['src']}:{c['sport']} -> {c['dst']}:{c['dport']} "
            f"zone={c['zone']} {c['state']} packets={c['packets']} tier={c['tier']}"
        )
    return "\n".join(lines)
