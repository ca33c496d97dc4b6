"""Chaos on a real cluster: NIC OS workers SIGKILLed under the default workload.

Judged by the VM endpoints' own books: no established TCP connection is reset, data resumes on
every flow, and frames lost stay within what the flow sends while the host detects the loss
and moves its VPIDs.
"""

from __future__ import annotations

import json
import os
import signal
import time
from datetime import datetime
from pathlib import Path

import pytest

from tests.cluster.conftest import Cluster, wait_for
from tests.cluster.test_teaming import count, delivered

pytestmark = [pytest.mark.cluster, pytest.mark.chaos]

ROUNDS = 10


def events(run_dir: Path, name: str) -> list[dict[str, object]]:
    out = []
    for path in (run_dir / "logs").glob("*.jsonl"):
        for line in path.read_text().splitlines():
            if f'"{name}"' in line:
                e = json.loads(line)
                if e["event"] == name:
                    out.append(e)
    return sorted(out, key=lambda e: str(e["ts"]))


def ts(e: dict[str, object]) -> float:
    return datetime.fromisoformat(str(e["ts"]).replace("Z", "+00:00")).timestamp()


def resets(c: Cluster) -> dict[str, int]:
    """Resets per flow that must deliver (a denied flow's sender gives up by design)."""
    deliver = {f.name for f in c.config.flows if f.expect == "deliver"}
    flows = c.control("h1", "stats")["flows"]
    peers = c.control("fabricd", "stats")["peers"]
    out = {name: sum(s.get("resets", 0) for s in sides.values()) for name, sides in flows.items()}
    for peer in peers.values():
        for name, s in peer["flows"].items():
            out[name] = out.get(name, 0) + s.get("resets", 0)
    return {name: n for name, n in out.items() if name in deliver}


def test_sigkill_each_nic_in_turn_keeps_every_connection(cluster: Cluster) -> None:
    c = cluster
    deliver = [f.name for f in c.config.flows if f.expect == "deliver"]
    rates = {f.name: f.rate for f in c.config.flows}
    wait_for("every flow delivering", lambda: all(count(delivered(c), f) > 5 for f in deliver))
    base_resets = resets(c)
    start = delivered(c)
    kills: list[tuple[str, float]] = []
    for i in range(ROUNDS):
        nic = ("nic1", "nic2")[i % 2]
        old = c.worker_pid(nic)
        before = delivered(c)
        kills.append((nic, time.time()))
        os.kill(old, signal.SIGKILL)
        wait_for(f"round {i}: {nic} rebooted and back", lambda n=nic, o=old: c.worker_pid(n) != o
                 and c.control(n, "stats")["state"] == "up", timeout=30)  # fmt: skip
        wait_for(
            f"round {i}: VPIDs home again",
            lambda: all(p["nic"] == p["home"] for p in homes(c)),
        )
        wait_for(
            f"round {i}: data resumed on every flow",
            lambda b=before: all(count(delivered(c), f) > count(b, f) + 3 for f in deliver),
        )
    assert resets(c) == base_resets, "an established connection was reset"
    end = delivered(c)
    for f in deliver:
        lost = count(end, f, "gaps") - count(start, f, "gaps")
        assert lost <= rates[f] * 0.5 * ROUNDS, (f, lost)  # at most 0.5 s of the flow per kill
    downs = events(c.run_dir, "host.nic.down")
    assert len(downs) == ROUNDS
    detect_ms = [(ts(d) - t) * 1000 for (_, t), d in zip(kills, downs, strict=True)]
    print(f"detect_ms={sorted(round(d, 1) for d in detect_ms)} lost=", {
        f: count(end, f, "gaps") - count(start, f, "gaps") for f in deliver})  # fmt: skip
    assert max(detect_ms) <= 50, detect_ms  # a crash: the transport's disconnect, default timers
    commits = events(c.run_dir, "ct.commit")
    assert len(commits) >= ROUNDS  # every takeover committed replicated connections


def homes(c: Cluster) -> list[dict[str, object]]:
    config_home = {vm.name: vm.nic for vm in c.config.vms}
    ports = c.control("h1", "map")["ports"]
    return [p | {"home": config_home[str(p["vm"]).split("/")[0]]} for p in ports]
