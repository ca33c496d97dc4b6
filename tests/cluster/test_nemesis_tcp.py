"""The seeded nemesis against the default cluster with every process on tcp + CURVE: the same
composed faults as over ipc (kills, pauses, partitions, cable pulls, migrates, host-daemon
pauses and kills), now also through CURVE reconnections and ZMTP keepalive drops (a paused
process's tcp links time out). It must come out `valid`; on failure the message says how to
replay it, like test_nemesis.py."""

from __future__ import annotations

import os

import pytest

from ctl.checker import format_verdict
from ctl.nemesis import DEFAULT_FAULTS, run_and_check
from tests.cluster.conftest import running_cluster
from tests.cluster.test_curve import tcp_config
from tests.cluster.test_nemesis import check_report

pytestmark = [pytest.mark.cluster, pytest.mark.chaos]

SECONDS = float(os.environ.get("NICTEAM_NEMESIS_SECONDS", "45"))
SEED = int(os.environ.get("NICTEAM_NEMESIS_SEED", "5"))


@pytest.mark.timeout(SECONDS + 300)
def test_a_seeded_nemesis_over_tcp_and_curve_comes_out_valid() -> None:
    with running_cluster(config_text=tcp_config()) as c:
        verdict = run_and_check(c.config, SEED, SECONDS, DEFAULT_FAULTS, say=print)
        check_report(c.run_dir / "logs", c.config, c.run_dir / "chaos.png")
        text = format_verdict(verdict)
    print(text)
    assert verdict["played"] >= SECONDS / 3, "the nemesis played too few faults"
    assert verdict["valid"], (
        f"INVALID run over tcp: seed {SEED}; replay: {verdict['command']}\n{text}"
    )
