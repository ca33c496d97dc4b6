"""`python -m bench.e2e --quick` runs end to end: its JSON has every figure, each positive.

Behaviour only, never speed: the ceiling, each iperf3 path, the connections/s and their ratios
are there and above zero (root, iperf3 and `ip` needed; skipped without).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ctl.cluster import REPO
from tests.netns.netlab import can_make_namespaces

pytestmark = [pytest.mark.netns, pytest.mark.cluster]

# The NICs each path crosses: their frames counters must have moved during its run.
PATH_NICS = {"one_nic": ["nic1"], "across_nics": ["nic1", "nic2"], "to_peer": ["nic1", "nic2"]}


def _positive(where: str, value: Any) -> None:
    assert isinstance(value, (int, float)) and value > 0, f"{where}: {value!r}"


def test_quick_bench_writes_every_figure_positive(tmp_path: Path) -> None:
    why = can_make_namespaces()
    if why is None and shutil.which("iperf3") is None:
        why = "no iperf3 (`make setup` installs it)"
    if why is not None:
        pytest.skip(why)
    out = tmp_path / "e2e.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench.e2e", "--quick", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "across NICs" in done.stdout and f"wrote {out}" in done.stdout
    r = json.loads(out.read_text())

    assert r["quick"] is True and r["seconds"] == 1
    for key in ("mbit_s", "tap_frames_per_s"):
        _positive(f"ceiling.{key}", r["ceiling"][key])
    assert set(r["paths"]) == set(PATH_NICS)
    for name, nics in PATH_NICS.items():
        p = r["paths"][name]
        for key in ("mbit_s", "tap_frames_per_s", "ratio_to_ceiling"):
            _positive(f"paths.{name}.{key}", p[key])
        for nic in nics:
            _positive(f"paths.{name}.nic_frames_per_s.{nic}", p["nic_frames_per_s"][nic])
        for proc in ("h1", "nic1", "nic2"):
            assert proc in p["cpu_pct"], f"paths.{name}.cpu_pct: {p['cpu_pct']}"

    c = r["connects"]
    _positive("connects.across_nics.connects_per_s", c["across_nics"]["connects_per_s"])
    _positive("connects.across_nics.nic_slow_path", c["across_nics"]["nic_slow_path_frames_per_s"])
    _positive("connects.relay.connects_per_s", c["relay"]["connects_per_s"])
    _positive("connects.datapath_slow_miss_per_s", c["datapath_slow_miss_per_s"])

    t = r["target"]
    assert t["min_ratio"] == 0.3 and t["ratio"] == r["paths"]["across_nics"]["ratio_to_ceiling"]
    assert t["met"] is (t["ratio"] >= t["min_ratio"])
    # Profiled exactly when the target is missed: per process, or why not.
    assert (r["profile"] is None) is t["met"]
    if r["profile"] is not None and "skipped" not in r["profile"]:
        assert set(r["profile"]) == {"h1", "nic1", "nic2"}
