"""`up --test`'s judging of netns endpoints by their declared checks (ctl/checks.py), with a fake
runner standing in for `ip netns exec`; and the real runner's timeout on plain processes."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from click.testing import CliRunner

from configs import CheckSpec, Config, load_config
from ctl.checks import (
    CheckResult,
    Outcome,
    check_problems,
    count_checks,
    format_checks,
    netns_checks,
    passes,
    run_checks,
    run_in_namespace,
)
from ctl.cli import main
from ctl.cluster import REPO
from kernel import netns
from kernel.netns import namespace

TAG = "nt-checks0"


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return load_config(REPO / "configs" / "netns.toml", tmp_path)


class FakeRunner:
    """Answers each check by the command it runs; records what it was asked, and advances a
    fake clock by a second per command."""

    def __init__(self, answers: dict[str, Outcome]) -> None:
        self.answers = answers
        self.calls: list[tuple[list[str], float]] = []
        self.now = 0.0

    def __call__(self, argv: Sequence[str], timeout: float) -> Outcome:
        self.calls.append((list(argv), timeout))
        self.now += 1.0
        return self.answers.get(argv[-1], Outcome(0))

    def clock(self) -> float:
        return self.now


def test_expect_ok_is_exit_zero_and_expect_fail_anything_else() -> None:
    assert passes("ok", 0) and not passes("ok", 7) and not passes("ok", None)
    assert passes("fail", 28) and passes("fail", None) and not passes("fail", 0)


def test_every_netns_vm_and_peer_and_nothing_built_in(config: Config) -> None:
    ends = {name: [c.name for c in checks] for name, checks in netns_checks(config)}
    assert list(ends) == ["nsweb", "nslocal", "nsclient", "nsext"]
    assert ends["nsclient"][-2:] == ["telnet-dropped", "8080-rejected"]


def test_each_check_runs_in_its_endpoints_namespace_with_its_timeout(config: Config) -> None:
    runner = FakeRunner({})
    results = run_checks(config, TAG, runner, runner.clock)
    specs = [(n, c) for n, checks in netns_checks(config) for c in checks]
    assert len(results) == len(runner.calls) == len(specs) == 15
    for (argv, timeout), (name, check), r in zip(runner.calls, specs, results, strict=True):
        assert argv == ["ip", "netns", "exec", namespace(TAG, name), "sh", "-c", check.cmd]
        assert timeout == check.timeout_s
        assert (r.endpoint, r.check, r.seconds) == (name, check, 1.0)
    iperf3 = next(r for r in results if r.check.name == "iperf3-nsweb")
    assert runner.calls[results.index(iperf3)][1] == 15


def test_the_declared_outcomes_are_no_problem(config: Config) -> None:
    # What the firewall does: curl times out on the dropped port (28), is refused on 8080 (7).
    runner = FakeRunner({
        "curl -s --max-time 3 http://10.0.10.21:23/": Outcome(28),
        "curl -s --max-time 3 http://10.0.10.21:8080/": Outcome(7),
    })  # fmt: skip
    results = run_checks(config, TAG, runner, runner.clock)
    assert all(r.passed for r in results)
    assert check_problems(results) == []
    table = format_checks(results).splitlines()
    assert table[0].split() == ["endpoint", "check", "expect", "got", "seconds"]
    assert len(table) == 16 and "UNEXPECTED" not in "\n".join(table)
    assert table[-4].split() == ["nsclient", "telnet-dropped", "fail", "fail", "(exit", "28)",
                                 "1.00"]  # fmt: skip


def test_each_unexpected_outcome_is_one_problem_naming_the_check(config: Config) -> None:
    runner = FakeRunner({
        # a denied port that answers: the firewall let it through
        "curl -s --max-time 3 http://10.0.10.21:23/": Outcome(0),
        "curl -s --max-time 3 http://10.0.10.21:8080/": Outcome(7),
        # a page that never came, and a ping that outlived its timeout
        "curl -sf --max-time 5 -o /dev/null http://10.0.10.21/": Outcome(22, "error: 404"),
        "ping -c 3 -i 0.2 -W 1 10.0.10.23": Outcome(None),
    })  # fmt: skip
    results = run_checks(config, TAG, runner, runner.clock)
    assert check_problems(results) == [
        "nslocal check curl-nsweb: expected ok, got fail (exit 22): error: 404",
        "nsclient check curl-nsweb: expected ok, got fail (exit 22): error: 404",
        "nsclient check telnet-dropped: expected fail, got ok",
        "nsext check curl-nsweb: expected ok, got fail (exit 22): error: 404",
        "nsext check ping-nsclient: expected ok, got fail (timeout 10 s)",
    ]
    marked = [line.split()[:2] for line in format_checks(results).splitlines()
              if line.endswith("UNEXPECTED")]  # fmt: skip
    assert marked == [["nslocal", "curl-nsweb"], ["nsclient", "curl-nsweb"],
                      ["nsclient", "telnet-dropped"], ["nsext", "curl-nsweb"],
                      ["nsext", "ping-nsclient"]]  # fmt: skip


def test_a_config_without_netns_endpoints_runs_no_check(tmp_path: Path) -> None:
    config = load_config(REPO / "configs" / "default.toml", tmp_path)
    runner = FakeRunner({})
    assert run_checks(config, TAG, runner, runner.clock) == [] and runner.calls == []


def test_the_real_runner_gives_the_status_and_the_last_line() -> None:
    assert run_in_namespace(["sh", "-c", "echo one; echo two >&2; exit 3"], 5) == Outcome(3, "two")
    assert run_in_namespace(["/nonexistent/cmd"], 5).status == 127


def test_the_real_runner_kills_the_whole_command_at_its_timeout(tmp_path: Path) -> None:
    # sh starts a child that holds the output pipe: it must die too, or we would wait for it.
    marker = tmp_path / "late"
    t0 = time.monotonic()
    got = run_in_namespace(["sh", "-c", f"(sleep 30; touch {marker}) & sleep 30"], 0.5)
    assert got.status is None and time.monotonic() - t0 < 5
    r = CheckResult("vm", CheckSpec("slow", "sleep 30", "ok", 0.5), got, 0.5)
    assert r.got == "fail (timeout 0.5 s)" and not r.passed


def test_progress_is_told_each_check_as_it_starts(config: Config) -> None:
    runner, told = FakeRunner({}), []

    def on_check(vm: str, check: CheckSpec, i: int) -> None:
        told.append((vm, check.name, i))

    results = run_checks(config, TAG, runner, runner.clock, on_check=on_check)
    assert told == [(r.endpoint, r.check.name, i) for i, r in enumerate(results)]
    assert count_checks(config) == len(told) == 15


def test_up_test_without_the_privilege_is_one_line_and_leaves_nothing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    why = "netns VMs need root (or CAP_NET_ADMIN and CAP_SYS_ADMIN): run as root, e.g. with sudo"
    monkeypatch.setattr(netns, "missing_privilege", lambda: why)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where running_cluster makes its own
    args = ["up", "--test", "--config", str(REPO / "configs" / "netns.toml"), "--seconds", "1"]
    done = CliRunner().invoke(main, [*args, "--run-dir", str(tmp_path / "run")])
    assert done.exit_code == 1
    (line,) = done.output.splitlines()
    assert line == (
        "Error: netns VMs and peers (nsweb, nslocal, nsclient, nsext) need privilege: " + why
    )
    assert list(tmp_path.iterdir()) == []
