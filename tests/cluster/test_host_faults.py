"""Faults of the host daemon itself on a real cluster: a stall (SIGSTOP) and a crash (SIGKILL).

A host daemon that was not running cannot judge that its NICs missed heartbeats; one that
crashed is restarted by its card while the NICs go on forwarding, and recovers the map from
them. Judged by the logs (no NIC declared down, no epoch backwards, no VPID on two NICs) and by
the endpoints' books (traffic resumes).
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from ctl.logs import load
from tests.cluster.conftest import Cluster, wait_for
from tests.cluster.test_chaos import deliver_flows, events, wait_resumed
from tests.cluster.test_teaming import count, delivered

pytestmark = [pytest.mark.cluster, pytest.mark.chaos]


def map_claims(c: Cluster) -> dict[int, dict[int, set[str]]]:
    """epoch -> VPID -> the NICs whose applied map at that epoch made it theirs."""
    out: dict[int, dict[int, set[str]]] = {}
    for e in load(c.run_dir / "logs", {"map.epoch"}):
        if e.get("nic"):
            for vpid in e["vpids"]:
                out.setdefault(int(e["epoch"]), {}).setdefault(int(vpid), set()).add(e["nic"])
    return out


def test_a_stalled_host_daemon_declares_no_healthy_nic_down(cluster: Cluster) -> None:
    c = cluster
    wait_for("every flow delivering",
             lambda: all(count(delivered(c), f) > 5 for f in deliver_flows(c)))  # fmt: skip
    epoch = c.control("h1", "map")["epoch"]
    pid = c.worker_pid("h1")
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(2.0)  # the fault itself: a 2 s stall, as in the trial
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_for("hostd noticed its own stall", lambda: events(c.run_dir, "host.stalled"))
    wait_resumed(c, "after the host's stall")
    assert not events(c.run_dir, "host.nic.down"), "a healthy NIC was declared down"
    assert not events(c.run_dir, "host.failover")
    assert c.control("h1", "map")["epoch"] == epoch


def test_a_killed_host_daemon_is_restarted_and_recovers_the_map_from_its_nics(
    cluster: Cluster,
) -> None:
    c = cluster
    wait_for("every flow delivering",
             lambda: all(count(delivered(c), f) > 5 for f in deliver_flows(c)))  # fmt: skip
    # Move app1 first, so the map in force is not the config's: the new daemon must learn it.
    c.control("h1", "migrate", {"vm": "app1", "nic": "nic2"})
    wait_for("nic2 owns app1", lambda: {3, 4} <= set(c.control("nic2", "stats")["vpids"]))
    before = c.control("h1", "map")
    old = c.worker_pid("h1")
    os.kill(old, signal.SIGKILL)
    wait_for(
        "hostd restarted by its card",
        lambda: c.worker_pid("h1") != old and c.control("h1", "stats")["boot"] == 2,
    )
    wait_for("hostd recovered", lambda: not c.control("h1", "stats")["recovering"])
    after = c.control("h1", "map")
    assert after["epoch"] >= before["epoch"]
    assert after["entries"] == before["entries"], "the new daemon took another map"
    assert c.proc.poll() is None, "the cluster stopped with its host daemon"
    # Built-in VMs live in hostd: theirs is a new boot, with new connections, and they flow.
    wait_for(
        "every flow delivering again",
        lambda: all(count(delivered(c), f) > 5 for f in deliver_flows(c)),
        timeout=45,
    )
    (recovered,) = events(c.run_dir, "host.recovered", epoch=before["epoch"])
    assert recovered["source"] in ("nic1", "nic2")
    for epoch, vpids in map_claims(c).items():
        assert all(len(nics) == 1 for nics in vpids.values()), (epoch, vpids)
    epochs = [int(e["epoch"]) for e in events(c.run_dir, "map.epoch") if e.get("nic") == "nic1"]
    assert epochs == sorted(epochs), "a NIC's map epoch went backwards"
    assert not events(c.run_dir, "host.failover"), "the restart moved VPIDs"
