"""configs/two-hosts.toml placed on three machines, emulated by network namespaces on a bridge:
fabricd on m1, h1 and its NICs on m2, h2 and its NICs on m3, each launched there with
`nicteam up --machine M` (in parallel: each waits for the whole cluster), every bus link over tcp
between the machines' own addresses. The operator's CLI runs in the root namespace.

Then, under the two-hosts workload: a NIC of h2 killed (no connection reset, it reboots and its
VMs come home), and m3's cable pulled for 2 s: nothing crashes (every process alive, no NIC
worker restarted), `nicteam report` shows the cut and the recovery, and every flow delivers again.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from configs import Config, load_config
from ctl.chaos import Chaos, note
from ctl.client import request
from ctl.cluster import BIN, REPO
from tests.cluster.books import deliver_flows, delivered, resets, resumed
from tests.cluster.conftest import wait_for
from tests.netns.netlab import Lab, can_make_namespaces, kill_run_dir, lab, pids_in_run_dir

pytestmark = [pytest.mark.netns, pytest.mark.cluster]

TWO_HOSTS = REPO / "configs/two-hosts.toml"
PLACEMENT = (("m1", "fabricd"), ("m2", "h1"), ("m3", "h2"))
CUT_S = 2.0


@dataclass
class Placed:
    """The cluster on the lab's machines: its config, files, and the operator's CLI."""

    net: Lab
    config: Config
    config_path: Path
    run_dir: Path

    def argv(self, *args: str, ns: str | None = None) -> list[str]:
        """The CLI's command line, in the root namespace (the operator's machine) or in `ns`."""
        where = [] if ns is None else ["ip", "netns", "exec", ns]
        return [*where, str(BIN / "nicteam"), "--config", str(self.config_path),
                "--run-dir", str(self.run_dir), *args]  # fmt: skip

    def nicteam(self, *args: str, ns: str | None = None, check: bool = True) -> str:
        """Run the CLI to the end; fail the test with its output if it fails (and `check`)."""
        argv = self.argv(*args, ns=ns)
        done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=120)
        if check:
            assert done.returncode == 0, f"nicteam {' '.join(args)}: {done.stdout}{done.stderr}"
        return done.stdout

    def control(self, proc: str, cmd: str) -> dict[str, Any]:
        return request(self.config, proc, cmd, timeout=2.0)

    def worker_pids(self) -> dict[str, int]:
        return {n.name: int((self.run_dir / f"{n.name}.pid").read_text()) for n in self.config.nics}


def placed_config(net: Lab, top: Path) -> Path:
    """two-hosts.toml with a [machines] section on the lab's addresses."""
    text = TWO_HOSTS.read_text()
    for i, (machine, proc) in enumerate(PLACEMENT, 1):
        text += f'\n[machines.{machine}]\naddress = "{net.address(i)}"\nprocesses = ["{proc}"]\n'
    path = top / "machines.toml"
    path.write_text(text)
    return path


def launch(p: Placed) -> None:
    """`up --machine M` in each machine's namespace at once; each returns once all are up."""
    p.nicteam("keys")  # CURVE: one set of keys for the cluster, before any up
    ups = [
        subprocess.Popen(p.argv("up", "--machine", machine, "--timeout", "60", ns=ns), cwd=REPO,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for ns, (machine, _) in zip(p.net.namespaces, PLACEMENT, strict=True)
    ]  # fmt: skip
    try:
        outputs = [up.communicate(timeout=90)[0] for up in ups]
    finally:
        for up in ups:
            if up.poll() is None:
                up.kill()
                up.wait()
    for up, out in zip(ups, outputs, strict=True):
        assert up.returncode == 0, f"up --machine: {out}"
    for machine, _ in PLACEMENT:
        state = json.loads((p.run_dir / f"cluster-{machine}.json").read_text())
        assert state["machine"] == machine


@pytest.fixture
def placed() -> Iterator[Placed]:
    why = can_make_namespaces()
    if why is not None:
        pytest.skip(why)
    top = Path(tempfile.mkdtemp(prefix="nt-"))
    run_dir = top / "run"
    try:
        with lab(len(PLACEMENT)) as net:
            path = placed_config(net, top)
            p = Placed(net, load_config(path, run_dir), path, run_dir)
            try:
                launch(p)
                yield p
            finally:
                p.nicteam("down", check=False)
                left = kill_run_dir(run_dir)
        assert not left, f"processes left behind after down: {left}"
    finally:
        if not pids_in_run_dir(run_dir):
            shutil.rmtree(top, ignore_errors=True)


def _home(p: Placed) -> bool:
    home = {vm.name: vm.nic for vm in p.config.vms}
    return all(port["nic"] == home[str(port["vm"]).split("/")[0]]
               for h in p.config.hosts for port in p.control(h.name, "map")["ports"])  # fmt: skip


def test_two_hosts_on_three_machines_survive_a_kill_and_a_cable_cut(placed: Placed) -> None:
    p, c = placed, placed.config
    assert {c.endpoint(proc).rsplit(":", 1)[0] for proc in c.processes} == {
        f"tcp://{p.net.address(i)}" for i in (1, 2, 3)
    }
    wait_for("every flow delivering",
             lambda: set(deliver_flows(c)) <= set(delivered(c))
             and all(n > 5 for f, n in delivered(c).items() if f in deliver_flows(c)),
             timeout=30)  # fmt: skip
    summary = p.nicteam("summary")
    assert all(f in summary for f in deliver_flows(c))
    status = p.nicteam("status", ns=p.net.namespaces[0])  # any machine reads every process
    assert "host h1:" in status and "host h2:" in status
    base = resets(c)

    # A NIC of h2 (on m3) dies and reboots: no connection resets, its VMs come home.
    old = Chaos(c).kill("nic3")
    wait_for("nic3 rebooted and up",
             lambda: p.worker_pids()["nic3"] != old
             and p.control("nic3", "stats")["state"] == "up", timeout=30)  # fmt: skip
    wait_for("VPIDs home again", lambda: _home(p), timeout=30)
    resumed(c, "after the kill")
    assert resets(c) == base, "an established connection was reset (nic3 killed)"

    # m3's cable pulled for 2 s: nothing crashes, nothing restarts, traffic resumes.
    workers, alive = p.worker_pids(), set(pids_in_run_dir(p.run_dir))
    m3 = [n.name for n in c.nics if c.machine_of(n.name) == c.machine("m3")]
    note(c, "chaos.machine_cut", machine="m3", nics=m3, seconds=CUT_S)
    p.net.cut(3, down=True)
    time.sleep(CUT_S)  # the fault's own length, not a wait for something to happen
    p.net.cut(3, down=False)
    note(c, "chaos.machine_heal", machine="m3")
    resumed(c, "after the cut", timeout=45)
    assert resets(c) == base, "an established connection was reset by a 2 s cable cut"
    assert p.worker_pids() == workers, "a NIC worker restarted across the cut"
    gone = alive - set(pids_in_run_dir(p.run_dir))
    assert not gone, f"processes died across the cut: {sorted(gone)}"
    for proc in c.processes:
        assert p.control(proc, "stats") is not None

    # The report shows the cut: fabricd lost both NICs of m3, and reached them again.
    report = json.loads(p.nicteam("report", "--json", str(p.run_dir / "logs")))
    (cut,) = [f for f in report["faults"] if f["kind"] == "machine-cut"]
    assert cut["nic"] == "m3 (nic3,nic4)" and cut["healed"], cut
    steps = [(s["event"], s["detail"]) for s in cut["timeline"]]
    for nic in m3:
        assert ("fabric.nic.down", f"fabricd loses {nic}") in steps, steps
        assert ("fabric.nic.up", f"fabricd reaches {nic}") in steps, steps
    assert ("chaos.machine_heal", "cable back") in steps, steps
    assert cut["detect_ms"] is not None and cut["detect_ms"] < CUT_S * 1000, cut
    print(p.nicteam("report", str(p.run_dir / "logs")))  # for the record (pytest -s)
