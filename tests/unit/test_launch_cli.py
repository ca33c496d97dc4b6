"""`up`'s launch-failure report from honcho's output; --config/--run-dir after the verb."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

import kernel.netns
from ctl.cli import main
from ctl.cluster import launch_death

BOOT = """\
08:07:19 system   | fabric.1 started (pid=10621)
08:07:19 system   | nic2.1 started (pid=10630)
08:07:19 nic2.1   | 08:07:19.888 nic2-card nic.worker.start pid=10653 boots=1
08:07:19 fabric.1 | 08:07:19.901 fabricd fabric.start
"""
TRACEBACK = """\
08:07:20 nic2.1   | Traceback (most recent call last):
08:07:20 nic2.1   |   File "bus/transport.py", line 167, in start
08:07:20 nic2.1   |     router.bind(self.bind_endpoint)
08:07:20 nic2.1   | zmq.error.ZMQError: Cannot assign requested address
"""


def test_nothing_died_yet() -> None:
    assert launch_death(BOOT + TRACEBACK) is None


def test_a_worker_that_died_is_named_with_its_own_last_lines() -> None:
    out = (
        BOOT
        + TRACEBACK
        + (
            "08:07:20 fabric.1 | 08:07:20.100 fabricd fabric.link peer=nic1\n"
            "08:07:20 nic2.1   | 08:07:20.353 nic2-card nic.worker.exit code=1 boots=1\n"
            "08:07:20 nic2.1   | 08:07:20.353 nic2-card nic.reboot delay_s=1.0\n"
        )
    )
    died = launch_death(out)
    assert died is not None
    assert died.startswith("nic2 worker exited (1) during launch: ")
    assert died.endswith("router.bind(self.bind_endpoint) | zmq.error.ZMQError: "
                         "Cannot assign requested address")  # fmt: skip
    assert "fabric" not in died and "worker.start" not in died


def test_a_procfile_process_that_stopped_is_the_first_one_to_stop() -> None:
    out = BOOT + (
        "08:08:01 fabric.1 | usage: fabricd [-h] --config CONFIG\n"
        "08:08:01 fabric.1 | fabricd: error: the following arguments are required: --config\n"
        "08:08:01 system   | fabric.1 stopped (rc=2)\n"
        "08:08:01 system   | sending SIGTERM to nic2.1 (pid 10630)\n"
        "08:08:01 system   | nic2.1 stopped (rc=-15)\n"
    )
    died = launch_death(out)
    assert died is not None
    assert died.startswith("fabric exited (2) during launch: usage: fabricd")
    assert died.endswith("required: --config")


def test_a_silent_death_says_so() -> None:
    died = launch_death("08:08:01 system   | h1.1 stopped (rc=1)\n")
    assert died == "h1 exited (1) during launch: no output"


def run(*args: str) -> tuple[int, str]:
    done = CliRunner().invoke(main, list(args), env={"NICTEAM_RUN_DIR": None})
    return done.exit_code, done.output


def test_run_dir_after_the_verb_is_the_run_dir_before_it(tmp_path: Path) -> None:
    run_dir = str(tmp_path / "nowhere")
    before = run("--run-dir", run_dir, "down")
    after = run("down", "--run-dir", run_dir)
    assert after == before == (0, f"no cluster running in {run_dir}\n")


def test_the_verbs_run_dir_wins_over_the_groups(tmp_path: Path) -> None:
    code, out = run("--run-dir", str(tmp_path / "a"), "down", "--run-dir", str(tmp_path / "b"))
    assert code == 0 and out == f"no cluster running in {tmp_path / 'b'}\n"


def test_config_after_the_verb_is_the_config_before_it(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[timers]\nheartbeat_s = 'soon'\n")
    before = run("--config", str(bad), "map")
    after = run("map", "--config", str(bad), "--run-dir", str(tmp_path))
    assert after == before and after[0] != 0
    assert f"config {bad}" in after[1]


def test_subgroups_take_them_too(tmp_path: Path) -> None:
    code, out = run("chaos", "check", "--run-dir", str(tmp_path))
    assert code != 0 and f"{tmp_path / 'logs'}" in out


def test_keys_makes_one_owner_only_pair_per_process_and_the_cli_once(tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = ["keys", "--run-dir", str(run), "--config", "configs/two-hosts.toml"]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    names = ["fabricd", "h1", "h2", "nic1", "nic2", "nic3", "nic4", "ctl"]
    assert first.output.startswith(f"made 8 key pairs in {run / 'keys'}: {', '.join(names)}")
    files = sorted((run / "keys").iterdir())
    assert [p.name for p in files] == sorted(
        f"{n}{e}" for n in names for e in (".key", ".key_secret")
    )
    assert {p.stat().st_mode & 0o777 for p in files} == {0o600}
    assert (run / "keys").stat().st_mode & 0o777 == 0o700
    secret = (run / "keys/h1.key_secret").read_bytes()
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0 and again.output.startswith("every key pair is already in")
    assert (run / "keys/h1.key_secret").read_bytes() == secret  # never replaced


def test_a_tcp_cluster_without_the_cli_key_is_one_error_line_not_down(tmp_path: Path) -> None:
    text = Path("configs/default.toml").read_text()
    config = tmp_path / "tcp.toml"
    config.write_text(text.replace("[endpoints]\n", '[endpoints]\nh1 = "tcp://127.0.0.1:9"\n', 1))
    got = CliRunner().invoke(main, ["status", "--config", str(config), "--run-dir", str(tmp_path)])
    assert got.exit_code == 1
    (line,) = got.output.splitlines()
    assert line.startswith("Error: the cluster speaks CURVE on tcp: no CURVE secret key for ctl")


def test_a_netns_config_without_privilege_is_one_line_before_anything_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kernel.netns, "missing_privilege",
                        lambda: "not root: run nicteam as root (sudo)")  # fmt: skip
    run = tmp_path / "run"
    got = CliRunner().invoke(main, ["up", "--config", "configs/netns.toml", "--run-dir", str(run)])
    assert got.exit_code == 1
    (line,) = [x for x in got.output.splitlines() if x.startswith("Error:")]
    assert "netns VMs and peers (nsweb, nslocal, nsclient, nsext) need privilege: not root" in line
    assert not (run / "cluster.json").exists()
