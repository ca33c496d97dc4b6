"""Failover is per host: configs/two-hosts.toml under its workload (within each host, between
the hosts through the fabric, to and from the external peer), a NIC of h2 killed, then one of h1.

Judged by the endpoints' books of every host and of fabricd (no TCP connection reset, data
resumes on every flow) and by each host daemon's own log and map: the kill on one host moves
nothing on the other (its map epoch stays, it logs no `host.failover`).
"""

from __future__ import annotations

from typing import Any

import pytest

from ctl.chaos import Chaos
from ctl.cluster import running_cluster
from ctl.logs import Event, load, select
from tests.cluster.books import deliver_flows, delivered, resets, resumed
from tests.cluster.conftest import REPO, Cluster, wait_for
from tests.cluster.test_teaming import nicteam

pytestmark = [pytest.mark.cluster, pytest.mark.chaos]

TWO_HOSTS = REPO / "configs/two-hosts.toml"


def _settled(c: Cluster, nic: str, old_pid: int, what: str) -> dict[str, int]:
    """`nic` rebooted and up, every VPID home, data flowing: each host's map epoch then."""
    wait_for(f"{what}: {nic} rebooted and up",
             lambda: c.worker_pid(nic) != old_pid
             and c.control(nic, "stats")["state"] == "up", timeout=30)  # fmt: skip
    wait_for(f"{what}: VPIDs home again", lambda: not c.ports_away(), timeout=30)
    resumed(c.config, what)
    return {h.name: c.control(h.name, "map")["epoch"] for h in c.config.hosts}


def _failovers(c: Cluster, host: str, after: float) -> list[Event]:
    """`host.failover` events host daemon `host` logged at or after `after`."""
    logs = load(c.run_dir / "logs", {"host.failover"})
    return [e for e in select(logs, "host.failover", after) if e.get("proc") == host]


def _kill_time(c: Cluster, nic: str) -> float:
    (kill,) = select(load(c.run_dir / "logs", {"chaos.kill"}), "chaos.kill", 0.0, nic=nic)
    return float(kill["t"])


def _map(c: Cluster, host: str) -> dict[str, Any]:
    return dict(c.control(host, "map"))


def test_a_nic_killed_on_each_host_resets_nothing_and_leaves_the_other_host_alone() -> None:
    with running_cluster(config_path=TWO_HOSTS) as c:
        deliver = deliver_flows(c.config)
        wait_for("every flow delivering",
                 lambda: all(n > 5 for f, n in delivered(c.config).items() if f in deliver)
                 and set(deliver) <= set(delivered(c.config)), timeout=30)  # fmt: skip
        base = resets(c.config)
        chaos = Chaos(c.config)

        # A NIC of h2 dies, then one of h1: each time the other host sees nothing of it.
        _kill_leaves_the_other_host_alone(c, chaos, base, "nic3", "h2", "h1")
        _kill_leaves_the_other_host_alone(c, chaos, base, "nic2", "h1", "h2")

        # The read commands see both hosts, and --host one of them.
        status = nicteam(c, "status")
        assert "host h1:" in status and "host h2:" in status
        assert "nic4" not in nicteam(c, "status", "--host", "h1")
        assert "state digests agree" in nicteam(c, "verify")


def _kill_leaves_the_other_host_alone(
    c: Cluster, chaos: Chaos, base: dict[str, int], nic: str, host: str, other: str
) -> None:
    """Kill `nic` of `host` under traffic: no reset, `host` fails it over, `other` sees nothing."""
    before = _map(c, other)
    old = chaos.kill(nic)
    epochs = _settled(c, nic, old, f"{host}'s {nic} killed")
    t = _kill_time(c, nic)
    assert resets(c.config) == base, f"an established connection was reset ({nic} killed)"
    assert [e["nic"] for e in _failovers(c, host, t)] == [nic]
    assert _failovers(c, other, t) == []
    after = _map(c, other)
    assert after["epoch"] == before["epoch"] == epochs[other]
    assert after["ports"] == before["ports"]
