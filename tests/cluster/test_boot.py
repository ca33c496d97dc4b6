"""Boot: any config launches exactly its processes, and a fresh cluster loses nothing at boot."""

from __future__ import annotations

import json
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from configs import Config, WorkloadFlow, load_config
from ctl import summary
from ctl.session import down
from tests.cluster.conftest import BIN, REPO, running_cluster, wait_for

pytestmark = pytest.mark.cluster

TWO_HOSTS = REPO / "configs/two-hosts.toml"
ENOUGH = 40  # messages every deliver flow passes: the slowest (20/s) runs two seconds


def rows_once_flowing(config: Any) -> list[dict[str, Any]]:
    """The books once every deliver flow has passed ENOUGH messages."""

    def flowing() -> list[dict[str, Any]] | None:
        rows = summary.rows(config)
        deliver = [r for r in rows if r["expect"] == "deliver"]
        return rows if all(r["delivered"] >= ENOUGH for r in deliver) else None

    return wait_for(f"every deliver flow to pass {ENOUGH} messages", flowing, timeout=40)


def boot_losses(rows: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Per deliver flow, what its first seconds lost: gaps, TCP retransmissions, resets."""
    return {
        r["flow"]: {k: r[k] for k in ("gaps", "retransmits", "resets") if r[k]}
        for r in rows
        if r["expect"] == "deliver" and (r["gaps"] or r["retransmits"] or r["resets"])
    }


def test_a_fresh_default_cluster_loses_nothing_at_boot() -> None:
    with running_cluster() as c:
        rows = rows_once_flowing(c.config)
    assert boot_losses(rows) == {}, rows


@pytest.fixture
def run_dir() -> Iterator[Path]:
    """A run directory of its own (short: unix socket paths), its cluster always stopped."""
    top = Path(tempfile.mkdtemp(prefix="nt-"))
    try:
        yield top / "run"
    finally:
        down(top / "run")
        subprocess.run(["rm", "-rf", str(top)], check=False)


def nicteam(run_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "nicteam"), "--run-dir", str(run_dir), "--config", str(TWO_HOSTS), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )


def test_two_hosts_launch_exactly_their_processes_and_deliver_every_flow(run_dir: Path) -> None:
    up = nicteam(run_dir, "up", "--config", str(TWO_HOSTS))
    assert up.returncode == 0, up.stdout + up.stderr
    config = load_config(TWO_HOSTS, run_dir)
    names = [line.split(":")[0] for line in (run_dir / "Procfile").read_text().splitlines()]
    assert names == ["fabric", "h1", "h2", "nic1", "nic2", "nic3", "nic4"]
    status = nicteam(run_dir, "status", "--json")
    assert status.returncode == 0, status.stdout + status.stderr
    st = json.loads(status.stdout)
    assert {n["name"]: n["state"] for n in st["nics"]} == {n.name: "up" for n in config.nics}
    assert all(h["up"] for h in st["hosts"]) and len(st["hosts"]) == 2
    rows = rows_once_flowing(config)
    assert {path(config, f) for f in config.flows} >= {"within-host", "between-hosts", "peer"}
    denied = [r for r in rows if r["expect"] == "deny"]
    assert denied and all(r["delivered"] == 0 for r in denied)
    assert boot_losses(rows) == {}, rows
    stopped = nicteam(run_dir, "down")
    assert stopped.returncode == 0 and "stopped" in stopped.stdout, stopped.stdout


def path(config: Config, flow: WorkloadFlow) -> str:
    """Within a host, between hosts (through the fabric), or to or from an external peer."""
    vms = {vm.name: vm.host for vm in config.vms}
    if flow.src not in vms or flow.dst not in vms:
        return "peer"
    return "within-host" if vms[flow.src] == vms[flow.dst] else "between-hosts"
