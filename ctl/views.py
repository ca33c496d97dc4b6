"""Read-only views of a running cluster for the CLI: status, the VPID map, conntrack.

Each gathers plain dicts from the daemons' control sockets (the `--json` form) and formats them
as text. A daemon that does not answer is shown as down, never as a traceback.
"""

from __future__ import annotations

from typing import Any

from bus.nicstate import NicState
from configs import Config
from ctl.client import ControlError, request


def ask(
    config: Config, proc: str, cmd: str, args: dict[str, Any] | None = None, timeout: float = 2.0
) -> Any:
    """One control request; None if the daemon does not answer (it shows as down, not an error)."""
    try:
        return request(config, proc, cmd, args, timeout=timeout)
    except ControlError:
        return None


def status(config: Config) -> dict[str, Any]:
    """Hosts (map epoch, NIC states as the host sees them), every NIC's own view, and each VM's
    and external peer's kind (built-in stack or netns)."""
    hosts, nics = [], []
    for host in config.hosts:
        stats = ask(config, host.name, "stats")
        seen = stats["nics"] if stats else {}
        hosts.append({
            "name": host.name,
            "up": stats is not None,
            "epoch": stats.get("epoch") if stats else None,
            "team_policy": stats.get("team_policy") if stats else host.team_policy,
        })  # fmt: skip
        for spec in host.nics:
            s = ask(config, spec.name, "stats")
            nic: dict[str, Any] = {"name": spec.name, "host": host.name}
            if s is None:
                nic |= {
                    "state": NicState.DOWN,
                    "uplinks": [],
                    "vpids": [],
                    "conntrack": 0,
                    "epoch": 0,
                }
            else:
                nic |= {
                    "state": s.get("state", NicState.STARTING),
                    "host_view": seen.get(spec.name, "unknown"),
                    "uplinks": s.get("team", []),
                    "links_down": s.get("links_down", []),
                    "vpids": s.get("vpids", []),
                    "conntrack": s.get("conntrack", 0),
                    "epoch": s.get("epoch", 0),
                    "sync_lag_ms_p99": s.get("sync", {}).get("lag", {}).get("p99_ms"),
                    # Siblings' channels that carry one half only (heartbeats xor data).
                    "channels": {
                        peer: state
                        for peer, state in s.get("channels", {}).items()
                        if state in ("no-data", "no-heartbeats")
                    },
                }
            nics.append(nic)
    vms = [{"name": vm.name, "host": vm.host, "kind": vm.kind} for vm in config.vms]
    peers = [{"name": p.name, "kind": p.kind} for p in config.peers]
    return {"hosts": hosts, "nics": nics, "vms": vms, "peers": peers}


def format_status(st: dict[str, Any]) -> str:
    """Hosts (each with its VMs' kinds), the peers' kinds, then one line per NIC."""
    lines = []
    for h in st["hosts"]:
        state = f"epoch {h['epoch']}, team {h['team_policy']}" if h["up"] else "DOWN"
        lines.append(f"host {h['name']}: {state}")
        vms = [vm for vm in st.get("vms", []) if vm["host"] == h["name"]]
        if vms:
            lines.append(f"  vms: {_kinds(vms)}")
    if st.get("peers"):
        lines.append(f"peers: {_kinds(st['peers'])}")
    head = f"{'host':<6} {'nic':<6} {'state':<10} {'epoch':>5} {'conntrack':>9}  {'vpids':<14}"
    lines.append(head + " team")
    for n in st["nics"]:
        vpids = ",".join(map(str, n["vpids"])) or "-"
        team = " ".join(n["uplinks"]) or "-"
        head = f"{n['host']:<6} {n['name']:<6} {n['state']:<10} {n['epoch']:>5} {n['conntrack']:>9}"
        lines.append(f"{head}  {vpids:<14} {team}")
    for n in st["nics"]:
        for peer, state in sorted(n.get("channels", {}).items()):
            lines.append(f"channel {n['name']} <- {peer}: {state}")
    return "\n".join(lines)


def _kinds(items: list[dict[str, Any]]) -> str:
    """`web1 builtin, nsweb netns`: names with their kinds, in config order."""
    return ", ".join(f"{item['name']} {item['kind']}" for item in items)


def unreachable(config: Config, st: dict[str, Any]) -> str | None:
    """Why the cluster cannot be read (no host daemon answers), or None."""
    down = [h["name"] for h in st["hosts"] if not h["up"]]
    if not down:
        return None
    where = ", ".join(f"{h} at {config.endpoint(h)}" for h in down)
    return f"no answer from host daemon {where}: is the cluster up (nicteam up), with this run dir?"


def vpid_map(config: Config) -> list[dict[str, Any]]:
    """Every VM interface of every host: VPID, VM, MAC, NIC, PPID, the map epoch."""
    rows = []
    for host in config.hosts:
        m = request(config, host.name, "map", timeout=2.0)
        rows += [p | {"host": host.name, "epoch": m["epoch"]} for p in m["ports"]]
    return rows


def format_map(rows: list[dict[str, Any]]) -> str:
    """One line per VPID."""
    lines = [f"{'host':<6} {'vpid':>4}  {'vm':<8} {'mac':<17}  {'nic':<6} {'ppid':>4}  epoch"]
    for r in rows:
        where = f"{r['nic']:<6} {r['ppid']:>4}"
        vm = f"{r['vpid']:>4}  {r['vm']:<8} {r['mac']:<17}"
        lines.append(f"{r['host']:<6} {vm}  {where}  {r['epoch']}")
    return "\n".join(lines)


def format_conntrack(rows: list[dict[str, Any]]) -> str:
    """`conntrack -L` style: one line per record."""
    out = []
    for r in rows:
        out.append(
            f"{r['proto']:<6} {r['timeout_s']:>6} {r['state']:<12} src={r['src']} dst={r['dst']} "
            f"sport={r['sport']} dport={r['dport']} packets={r['packets']} bytes={r['bytes']} "
            f"zone={r['zone']} sw_ok={int(r['sw_ok'])} hw_ok={int(r['hw_ok'])} tier={r['tier']} "
            f"rule={r['rule']}"
        )
    return "\n".join(out)


def format_flows(rows: list[dict[str, Any]]) -> str:
    """`ovs-appctl dpctl/dump-flows` style: one line per fast entry or slow-path flow."""
    out = []
    for r in rows:
        m = r["match"]
        what = f"{m['proto']}({m['src']}:{m['sport']}->{m['dst']}:{m['dport']})" if m else "-"
        zones = ",".join(map(str, r["zones"]))
        if r["tier"] == "slow":
            out.append(
                f"slow     {what} zone={zones} packets:{r['packets']} bytes:{r['bytes']} "
                f"rule={r['rule']} ({r['why']})"
            )
            continue
        used = "never" if r["used_s"] is None else f"{r['used_s']:g}s"
        stale = " STALE" if r["stale"] else ""
        out.append(
            f"{r['tier']:<8} in_port({r['in_port']}),{what} zone={zones} packets:{r['packets']} "
            f"bytes:{r['bytes']} used:{used} rule={r['rule']}{stale} "
            f"actions:{';'.join(r['actions'])}"
        )
    return "\n".join(out)
