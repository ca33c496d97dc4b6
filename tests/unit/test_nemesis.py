"""The nemesis' schedule: pure, seeded, overlapping on purpose, and never fatal to a host."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from click.testing import CliRunner

from configs import DEFAULT_CONFIG, load_config
from ctl.chaos import ChaosError
from ctl.cli import main
from ctl.cluster import REPO, procfile
from ctl.nemesis import (
    DEFAULT_FAULTS,
    KINDS,
    HostShape,
    Nemesis,
    Step,
    Topology,
    parse_faults,
    plan,
)

FOUR = REPO / "configs/four-nics.toml"


def topology(path: object = DEFAULT_CONFIG) -> Topology:
    return Topology.from_config(load_config(path, "/tmp/nt-unit"))  # type: ignore[arg-type]


def test_the_same_seed_plays_the_same_schedule_and_another_seed_another() -> None:
    topo = topology(FOUR)
    assert plan(42, 120, DEFAULT_FAULTS, topo) == plan(42, 120, DEFAULT_FAULTS, topo)
    assert plan(42, 120, DEFAULT_FAULTS, topo) != plan(43, 120, DEFAULT_FAULTS, topo)


def test_steps_are_in_time_order_within_the_run_and_name_real_targets() -> None:
    topo = topology(FOUR)
    steps = plan(7, 300, KINDS, topo)
    assert [s.at_s for s in steps] == sorted(s.at_s for s in steps)
    assert all(0 < s.at_s < 300 for s in steps)
    nics = {n for h in topo.hosts for n in h.nics}
    ports = {p for h in topo.hosts for p in h.uplinks}
    vms = {vm for h in topo.hosts for vm, _ in h.vms}
    for s in steps:
        if s.kind in ("kill", "kill2", "pause", "partition"):
            assert set(s.targets) <= nics, s
        elif s.kind == "link":
            assert set(s.targets) <= ports, s
        elif s.kind == "migrate":
            assert s.targets[0] in vms and s.targets[1] in nics, s
        else:
            assert s.targets == ("h1",), s
        lasting = s.kind in ("pause", "partition", "link", "hostd-pause")
        assert (s.duration_s > 0) == lasting, s


@pytest.mark.parametrize("path", [DEFAULT_CONFIG, FOUR], ids=["default", "four-nics"])
def test_a_long_plan_has_every_kind_it_may_have(path: object) -> None:
    topo = topology(path)
    kinds = Counter(s.kind for s in plan(1, 900, KINDS, topo))
    expected = set(KINDS) if path == FOUR else set(KINDS) - {"kill2"}
    assert set(kinds) == expected, kinds


def test_kill2_only_on_hosts_with_three_nics_or_more() -> None:
    two = topology()
    assert not [s for s in plan(5, 900, ("kill2",), two)]
    four = [s for s in plan(5, 900, ("kill2",), topology(FOUR))]
    assert four and all(len(set(s.targets)) == 2 for s in four)


def test_faults_overlap_on_purpose() -> None:
    """Kills while an earlier fault is in effect: a rebooted NIC resyncing, a migrate in
    flight, a partition still up."""
    topo = topology()
    steps = plan(3, 600, DEFAULT_FAULTS, topo)
    # A kill during the resync of a NIC killed before: the same NIC, after the reboot delay.
    kills = [s for s in steps if s.kind == "kill"]
    assert any(
        b.targets == a.targets and topo.reboot_s < b.at_s - a.at_s < topo.reboot_s + 1.7
        for a in kills for b in kills
    )  # fmt: skip
    migrates = [s for s in steps if s.kind == "migrate"]
    assert any(0 <= k.at_s - m.at_s <= 0.05 for m in migrates for k in kills)
    partitions = [s for s in steps if s.kind == "partition"]
    assert any(p.at_s < k.at_s < p.at_s + p.duration_s and set(k.targets) <= set(p.targets)
               for p in partitions for k in kills)  # fmt: skip


@pytest.mark.parametrize("path", [DEFAULT_CONFIG, FOUR], ids=["default", "four-nics"])
def test_no_plan_takes_out_every_nic_of_a_host_at_once(path: object) -> None:
    """Connection state lives on the NICs: one of them must always be there to hold it."""
    topo = topology(path)
    nics = topo.hosts[0].nics
    for seed in range(20):
        out: dict[str, float] = {}
        for s in plan(seed, 300, DEFAULT_FAULTS, topo):
            if s.kind in ("kill", "kill2", "pause"):
                for n in s.targets:
                    out[n] = s.at_s + (s.duration_s or topo.reboot_s)
                alive = [n for n in nics if out.get(n, 0) <= s.at_s]
                assert alive, (seed, s)


def test_a_single_nic_host_gets_no_nic_fault_that_would_leave_it_empty() -> None:
    topo = Topology((HostShape("h1", ("nic1",), ("nic1/p0", "nic1/p1"), (("vm", "nic1"),)),))
    steps = plan(9, 300, KINDS, topo)
    assert {s.kind for s in steps} == {"link", "hostd-pause", "hostd-kill"}


def test_parse_faults_names_what_is_unknown() -> None:
    assert parse_faults("kill, pause,kill") == ("kill", "pause")
    with pytest.raises(ValueError, match="nuke"):
        parse_faults("kill,nuke")


def test_a_step_prints_as_the_schedule_line() -> None:
    assert str(Step(1.5, "pause", ("nic1",), 0.25)) == "+   1.50 s  pause nic1 for 0.25 s"
    assert str(Step(12.0, "kill2", ("nic1", "nic3"))) == "+  12.00 s  kill2 nic1 nic3"


TEMPLATE = """\
fabric: python -m fabricd --config ${NICTEAM_CONFIG:-x.toml}
h1: python -m hostd.card --config ${NICTEAM_CONFIG:-x.toml} --host h1
nic1: python -m nicd --config ${NICTEAM_CONFIG:-x.toml} --nic nic1
"""


def test_the_procfile_of_a_config_copies_the_top_level_lines() -> None:
    lines = procfile(load_config(FOUR, "/tmp/nt-unit"), TEMPLATE).splitlines()
    assert [line.split(":")[0] for line in lines] == ["fabric", "h1"] + [f"nic{i}" for i in
                                                                           range(1, 5)]  # fmt: skip
    config = f"--config ${{NICTEAM_CONFIG:-{FOUR}}}"
    assert lines[1] == f"h1: python -m hostd.card {config} --host h1"
    assert lines[5] == f"nic4: python -m nicd {config} --nic nic4"


def test_the_cli_prints_a_config_s_procfile_and_a_seed_s_schedule() -> None:
    runner = CliRunner()
    out = runner.invoke(main, ["--run-dir", "/tmp/nt-unit", "procfile", "--config", str(FOUR)])
    assert out.exit_code == 0, out.output
    assert out.output == procfile(load_config(FOUR, "/tmp/nt-unit"))
    args = ["--run-dir", "/tmp/nt-unit", "--config", str(FOUR), "chaos", "run", "--dry-run",
            "--seed", "4", "--seconds", "30", "--faults", "kill2,migrate"]  # fmt: skip
    out = runner.invoke(main, args)
    assert out.exit_code == 0, out.output
    steps = plan(4, 30, ("kill2", "migrate"), topology(FOUR))
    assert out.output.splitlines() == [str(s) for s in steps]
    bad = runner.invoke(main, [*args[:-1], "kill,nuke"])
    assert bad.exit_code != 0 and "nuke" in bad.output


class FakeChaos:
    """Records what the player asks for, in order; `worker_pid` fails for NICs in `gone`."""

    def __init__(self, gone: frozenset[str] = frozenset()) -> None:
        self.calls: list[tuple[object, ...]] = []
        self.gone = gone
        self.pids = iter(range(100, 1000))

    def worker_pid(self, nic: str) -> int:
        if nic in self.gone:
            raise ChaosError(f"{nic} is rebooting")
        return 1

    def __getattr__(self, name: str) -> Any:
        def call(*args: object, **fields: object) -> Any:
            self.calls.append((name, *args))
            if name in ("stop", "hostd_stop", "kill"):
                return next(self.pids)
            return {}

        return call


def played(steps: list[Step], chaos: FakeChaos) -> list[tuple[object, ...]]:
    now = [0.0]
    config = load_config(FOUR, "/tmp/nt-unit")
    nemesis = Nemesis(config, chaos=chaos)  # type: ignore[arg-type]
    nemesis.play(steps, clock=lambda: now[0], sleep=lambda s: now.__setitem__(0, now[0] + s))
    return [c for c in chaos.calls if c[0] != "event" or c[1] != "chaos.skip"]


def test_the_player_injects_in_time_ends_what_lasts_and_heals_the_rest() -> None:
    chaos = FakeChaos()
    steps = [Step(1.0, "pause", ("nic1",), 0.5), Step(1.2, "link", ("nic2/p0",), 2.0),
             Step(1.3, "pause", ("nic3",), 0.4), Step(1.4, "kill", ("nic3",)),
             Step(2.0, "hostd-pause", ("h1",), 0.3)]  # fmt: skip
    calls = played(steps, chaos)
    # Cables are pulled and put back on the player's pool: in their own order, not the signals'.
    assert [c for c in calls if c[0] == "link"] == [("link", "nic2/p0", False),
                                                    ("link", "nic2/p0", True)]  # fmt: skip
    assert [c for c in calls if c[0] != "link"] == [
        ("stop", "nic1"), ("stop", "nic3"),
        ("event", "chaos.resume"),  # nic3's pause ends with its kill: no SIGCONT after
        ("kill", "nic3"), ("cont", "nic1", 100), ("hostd_stop", "h1"), ("hostd_cont", "h1", 103),
    ]  # fmt: skip


def test_a_step_whose_target_is_not_running_is_skipped_and_logged() -> None:
    chaos = FakeChaos(gone=frozenset({"nic1"}))
    nemesis = Nemesis(load_config(FOUR, "/tmp/nt-unit"), chaos=chaos)  # type: ignore[arg-type]
    outcomes = nemesis.play([Step(0.0, "kill", ("nic1",)), Step(0.0, "kill2", ("nic1", "nic2"))],
                            sleep=lambda s: None)  # fmt: skip
    assert [(o.status, o.step.kind) for o in outcomes] == [("skipped", "kill"), ("played", "kill2")]
    assert ("kill_many", ["nic2"]) in chaos.calls  # what still ran died, in one instant
