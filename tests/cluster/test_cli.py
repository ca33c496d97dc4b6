"""The operator's read-only commands through the CLI, in a subprocess, against a real cluster."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.cluster.conftest import BIN, REPO, Cluster
from tests.cluster.test_teaming import nicteam

pytestmark = pytest.mark.cluster


def test_status_map_and_conntrack_read_the_running_cluster(cluster: Cluster) -> None:
    c = cluster
    st = json.loads(nicteam(c, "status", "--json"))
    nics = {n["name"]: n for n in st["nics"]}
    assert set(nics) == {"nic1", "nic2"}
    for n in nics.values():
        assert n["state"] == "up" and n["host_view"] == "up"
        assert n["uplinks"] == ["nic1/p0", "nic1/p1", "nic2/p0", "nic2/p1"]
        assert n["conntrack"] >= 1
    assert sorted(nics["nic1"]["vpids"] + nics["nic2"]["vpids"]) == [1, 2, 3, 4, 5]
    assert st["hosts"] == [{"name": "h1", "up": True, "epoch": 1, "team_policy": "port-id"}]

    rows = json.loads(nicteam(c, "map", "--json"))
    assert [(r["vm"], r["nic"], r["epoch"]) for r in rows][:2] == [("web1", "nic1", 1),
                                                                   ("web2", "nic2", 1)]  # fmt: skip
    text = nicteam(c, "map")
    assert "web1" in text and "02:00:00:00:01:11" in text

    ct = json.loads(nicteam(c, "conntrack", "nic1", "--json"))
    assert ct["total"] == len(ct["records"]) >= 1
    ssh = [r for r in ct["records"] if r["proto"] == "tcp" and r["dport"] == 22]
    assert ssh and ssh[0]["rule"] == "ssh-inspect" and ssh[0]["tier"] == "slow"
    assert not ssh[0]["sw_ok"] and not ssh[0]["hw_ok"]  # inspected: never offloaded
    assert "dport=22" in nicteam(c, "conntrack", "nic1")


def test_user_mistakes_are_one_line_errors_not_tracebacks(cluster: Cluster) -> None:
    env = {"NICTEAM_RUN_DIR": str(cluster.run_dir), "PATH": str(BIN)}
    for args in (["conntrack", "nic9"], ["kill", "nic9"], ["partition", "nic1", "nic1"]):
        done = subprocess.run([str(BIN / "nicteam"), "--config", str(cluster.config_path), *args],
                              cwd=REPO, env=env, capture_output=True, text=True)  # fmt: skip
        assert done.returncode != 0, args
        assert "Traceback" not in done.stderr and done.stderr.startswith("Error: "), done.stderr
