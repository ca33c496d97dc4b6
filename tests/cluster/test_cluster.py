"""The default cluster as a user runs it: traffic, offload, a crashed NIC OS, a clean stop."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest

from configs import FABRICD, Config, WorkloadFlow
from tests.cluster.conftest import Cluster, stop, tagged_pids, wait_for

pytestmark = pytest.mark.cluster

ENOUGH = 20  # messages delivered before a flow counts as flowing


def _is_vm(config: Config, name: str) -> bool:
    return any(vm.name == name for vm in config.vms)


def path_of(config: Config, flow: WorkloadFlow) -> str:
    """Which kind of path a flow takes: same NIC, across NICs, to or from the external peer."""
    if not _is_vm(config, flow.dst):
        return "vm-to-peer"
    if not _is_vm(config, flow.src):
        return "peer-to-vm"
    same = config.vm(flow.src).nic == config.vm(flow.dst).nic
    return "same-nic" if same else "across-nics"


def sinks(cluster: Cluster) -> dict[str, dict[str, Any]]:
    """Every flow's receiving side, from the VMs (hostd) and the external peers (fabricd)."""
    out: dict[str, dict[str, Any]] = {}
    for host in cluster.config.hosts:
        for name, books in cluster.control(host.name, "stats")["flows"].items():
            if "sink" in books:
                out[name] = books["sink"]
    for peer in cluster.control(FABRICD, "stats")["peers"].values():
        out.update(peer["sinks"])
    return out


def delivered(cluster: Cluster) -> dict[str, int]:
    return {name: s["delivered"] for name, s in sinks(cluster).items()}


def nic_stats(cluster: Cluster) -> dict[str, dict[str, Any]]:
    return {n.name: cluster.control(n.name, "stats") for n in cluster.config.nics}


def wait_until_flowing(cluster: Cluster) -> dict[str, int]:
    wanted = [f.name for f in cluster.config.flows if f.expect == "deliver"]

    def all_flowing() -> dict[str, int] | None:
        got = delivered(cluster)
        return got if all(got.get(name, 0) >= ENOUGH for name in wanted) else None

    return wait_for(f"every deliver flow to pass {ENOUGH} messages", all_flowing, timeout=40)


def test_workload_is_delivered_on_every_path_and_denied_flows_never(cluster: Cluster) -> None:
    config = cluster.config
    got = wait_until_flowing(cluster)
    paths = {path_of(config, f) for f in config.flows if f.expect == "deliver"}
    assert {"same-nic", "across-nics", "vm-to-peer"} <= paths
    denied = [f.name for f in config.flows if f.expect == "deny"]
    assert denied, "the default workload has a denied flow"
    for name in denied:
        assert got.get(name, 0) == 0, f"denied flow {name} delivered {got[name]} messages"
    drops = [s.get("drops", {}) for s in nic_stats(cluster).values()]
    assert sum(d.get("fw.drop", 0) for d in drops) > 0, "denied traffic is counted as fw.drop"


def test_established_flows_move_to_the_eswitch_and_the_slow_path_stays_flat(
    cluster: Cluster,
) -> None:
    wait_until_flowing(cluster)
    before = nic_stats(cluster)

    def hits_rose() -> dict[str, dict[str, Any]] | None:
        now = nic_stats(cluster)
        rose = all(
            now[n]["tiers"]["eswitch"]["hits"] >= before[n]["tiers"]["eswitch"]["hits"] + 100
            for n in now
        )
        return now if rose else None

    after = wait_for("eSwitch hits to rise on every NIC", hits_rose, timeout=30)
    for nic in after:
        # A slow-path miss is a frame that found no connection: it creates one (or is denied).
        assert after[nic]["ct"]["created"] == before[nic]["ct"]["created"], nic
        assert after[nic]["tiers"]["eswitch"]["entries"] > 0


def test_a_killed_nic_os_is_rebooted_by_its_card(cluster: Cluster) -> None:
    nic = cluster.config.nics[0].name
    old = cluster.worker_pid(nic)
    others = [p for p in cluster.pids() if p != old]
    assert old in cluster.pids() and len(others) >= 5  # honcho, shells, daemons, cards, workers
    os.kill(old, signal.SIGKILL)

    def rebooted() -> int | None:
        pid = cluster.worker_pid(nic)
        return pid if pid != old and cluster.control(nic, "stats")["state"] == "up" else None

    new = wait_for(f"{nic} to boot a new worker", rebooted, timeout=30)
    assert cluster.proc.poll() is None, "the cluster kept running"
    alive = set(cluster.pids())
    assert set(others) <= alive, "no other process died with the worker"
    assert new in alive and old not in alive


@pytest.mark.parametrize("how", ["SIGTERM to honcho", "Ctrl-C (SIGINT to the group)"])
def test_stopping_the_cluster_leaves_no_process_and_no_socket(cluster: Cluster, how: str) -> None:
    wait_until_flowing(cluster)
    if how.startswith("Ctrl-C"):
        os.killpg(cluster.proc.pid, signal.SIGINT)
    else:
        cluster.proc.send_signal(signal.SIGTERM)
    code = stop(cluster.proc, cluster.tag)  # already signalled: this waits, then escalates
    assert code is not None, "the cluster did not stop by itself"
    assert not tagged_pids(cluster.tag)
    leftovers = [p.name for p in Path(cluster.run_dir).iterdir() if p.suffix in (".sock", ".pid")]
    assert not leftovers, f"left in the run directory: {leftovers}"
