"""A seeded nemesis against real clusters: 90 s of overlapping faults, then the checker's verdict.

Each run plays the fixed seed's schedule (kills, two NICs killed at once on four NICs, pauses,
partitions, cable pulls, migrates, host-daemon pauses and kills) under the config's workload, heals,
waits for quiet, and must come out `valid`. On failure the message has the seed, the command
that replays the schedule, the whole verdict, and where the run's logs were kept
(`nicteam --config CONFIG chaos check LOGS` judges them again). `NICTEAM_NEMESIS_SEED` and
`NICTEAM_NEMESIS_SECONDS` override the seed and the length, to chase a failure.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from configs import Config
from ctl.checker import format_verdict
from ctl.nemesis import DEFAULT_FAULTS, run_and_check
from ctl.plot import plot
from ctl.report import report
from tests.cluster.conftest import REPO, running_cluster

pytestmark = [pytest.mark.cluster, pytest.mark.chaos]

SECONDS = float(os.environ.get("NICTEAM_NEMESIS_SECONDS", "90"))
SEED = os.environ.get("NICTEAM_NEMESIS_SEED")


@pytest.mark.timeout(SECONDS + 300)
@pytest.mark.parametrize(
    ("config", "seed"), [("default.toml", 11), ("four-nics.toml", 12)], ids=["default", "four-nics"]
)
def test_a_seeded_nemesis_run_comes_out_valid(config: str, seed: int) -> None:
    seed = int(SEED) if SEED is not None else seed
    path = REPO / "configs" / config
    with running_cluster(config_path=path) as c:
        verdict = run_and_check(c.config, seed, SECONDS, DEFAULT_FAULTS, say=print)
        check_report(c.run_dir / "logs", c.config, c.run_dir / "chaos.png")
        if not verdict["valid"]:  # kept outside pytest's rotating temporary directories
            kept = tempfile.mkdtemp(prefix=f"nt-nemesis-{path.stem}-{seed}-")
            shutil.copytree(c.run_dir / "logs", kept, dirs_exist_ok=True)
    print(format_verdict(verdict))
    assert verdict["played"] >= SECONDS / 3, "the nemesis played too few faults"
    assert verdict["valid"], (
        f"INVALID run: seed {seed}; replay: {verdict['command']}\n"
        f"logs kept in {kept}: nicteam --config {path} chaos check {kept}\n"
        + format_verdict(verdict)
    )


def check_report(logs: Path, config: Config, png: Path) -> None:
    """The report on a real composed run: every fault healed and explained, overlaps shown
    both ways, deny flows never counted, every reset charged to a fault that exists."""
    rep = report(logs, config)
    faults = {f["id"]: f for f in rep["faults"]}
    deny = {f.name for f in config.flows if f.expect == "deny"}
    assert faults, "no fault in the report"
    for f in faults.values():
        assert f["healed"], f"fault #{f['id']} {f['kind']} {f['nic']} never recovered"
        assert f["detect_ms"] is not None or f["undetected_why"], f
        assert all(f["id"] in faults[o]["overlaps"] for o in f["overlaps"]), f
        assert not deny & (set(f["resets_per_flow"]) | set(f["lost_per_flow"])), f
    assert any(f["overlaps"] for f in faults.values()), "the nemesis overlaps faults on purpose"
    assert not deny & set(rep["no_fault"]["resets_per_flow"])
    assert all(r["fault"] is None or r["fault"] in faults for r in rep["resets"])
    plot(logs, png, config)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
