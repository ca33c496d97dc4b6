"""`--host NAME`: the read commands' view narrowed to one host of a several-host cluster.

Pure functions of the config (and of a report's plain dict), so the views stay pure: `only`
gives the config of one host (its NICs, and the flows with an end on it), which every view
that walks `config.hosts` / `config.nics` / `config.flows` then reads as a whole cluster.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

from configs import Config, HostSpec


class UnknownHost(ValueError):
    """A `--host` that names no host of the config; the message lists the hosts."""


def host_spec(config: Config, name: str) -> HostSpec:
    """The host called `name`, or UnknownHost naming the config's hosts."""
    for h in config.hosts:
        if h.name == name:
            return h
    names = ", ".join(h.name for h in config.hosts)
    raise UnknownHost(f"--host: unknown host {name!r}; hosts: {names}")


def flows_of(config: Config, host: HostSpec) -> frozenset[str]:
    """The workload flows with an end (sender or receiver) on a VM of `host`."""
    vms = {vm.name for vm in host.vms}
    return frozenset(f.name for f in config.flows if f.src in vms or f.dst in vms)


def only(config: Config, name: str | None) -> Config:
    """The config narrowed to host `name` (None: the whole cluster, unchanged)."""
    if name is None:
        return config
    host = host_spec(config, name)
    keep = flows_of(config, host)
    return replace(config, hosts=(host,), flows=tuple(f for f in config.flows if f.name in keep))


def on_host(target: str, host: HostSpec) -> bool:
    """Whether a fault's target (`nic1`, `nic1,nic2`, `nic1/p0`, `h1`, `web1->nic2`) is on it."""
    names = {host.name, *(n.name for n in host.nics), *(vm.name for vm in host.vms)}
    return any(tok in names for tok in re.split(r"->|[,/+\s]+", target) if tok)


def report_of(rep: dict[str, Any], config: Config, name: str | None) -> dict[str, Any]:
    """A report (`ctl.report.report`'s dict) narrowed to host `name`: its faults, its flows."""
    if name is None or not rep.get("faults"):
        return rep
    host = host_spec(config, name)
    flows = flows_of(config, host)
    faults = [f for f in rep["faults"] if on_host(str(f.get("nic", "")), host)]
    out = dict(rep, faults=faults)
    if "no_fault" in rep:
        out["no_fault"] = _tally_of(rep["no_fault"], flows)
    if "resets" in rep:
        out["resets"] = [r for r in rep["resets"] if r.get("flow") in flows]
    if "totals" in rep:
        tallies = [*faults, out.get("no_fault", {})]
        out["totals"] = {
            k: sum(int(t.get(k, 0)) for t in tallies) for k in ("frames_lost", "connections_reset")
        }
    return out


def _tally_of(tally: dict[str, Any], flows: frozenset[str]) -> dict[str, Any]:
    """A fault-free tally's per-flow figures kept for `flows` only, and its sums to match."""
    lost = {f: n for f, n in tally.get("lost_per_flow", {}).items() if f in flows}
    resets = {f: n for f, n in tally.get("resets_per_flow", {}).items() if f in flows}
    return dict(
        tally,
        lost_per_flow=lost,
        resets_per_flow=resets,
        frames_lost=sum(lost.values()),
        connections_reset=sum(resets.values()),
    )
