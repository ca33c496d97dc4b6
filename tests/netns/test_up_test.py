"""`nicteam up --test` on configs/netns.toml for real: the built-in flows judged by their books,
and every netns VM's and peer's declared check run in its namespace (root needed; skipped
without). A check wrong on purpose (its expect flipped) makes the run exit 1, naming it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from configs import load_config
from ctl.checks import netns_checks
from ctl.cluster import BIN, REPO
from tests.netns.netlab import can_make_namespaces

pytestmark = [pytest.mark.netns, pytest.mark.cluster]

NETNS_TOML = REPO / "configs" / "netns.toml"


@pytest.fixture(autouse=True)
def _root() -> None:
    why = can_make_namespaces()
    if why is not None:
        pytest.skip(why)


def up_test(config: Path, run_dir: Path) -> subprocess.CompletedProcess[str]:
    """`nicteam up --test --seconds 2` of `config`; it launches and stops a cluster of its own."""
    env = {**os.environ, "NICTEAM_RUN_DIR": str(run_dir), "PATH": f"{BIN}:/usr/bin:/bin"}
    return subprocess.run(
        [str(BIN / "nicteam"), "up", "--test", "--config", str(config), "--seconds", "2"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def check_rows(stdout: str) -> dict[tuple[str, str], list[str]]:
    """(endpoint, check) -> the rest of its row in the checks table."""
    lines = stdout.splitlines()
    start = lines.index("checks of the netns VMs and peers, in their namespaces:")
    assert lines[start + 1].split() == ["endpoint", "check", "expect", "got", "seconds"]
    rows = {}
    for line in lines[start + 2 :]:
        if line.startswith(("UNEXPECTED:", "***")):
            break
        words = line.split()
        rows[words[0], words[1]] = words[2:]
    return rows


def test_a_netns_config_passes_every_declared_check(tmp_path: Path) -> None:
    done = up_test(NETNS_TOML, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = check_rows(done.stdout)
    declared = [(n, c) for n, checks in netns_checks(load_config(NETNS_TOML, tmp_path))
                for c in checks]  # fmt: skip
    assert list(rows) == [(n, c.name) for n, c in declared]
    for (name, check), row in zip(declared, rows.values(), strict=True):
        assert row[0] == check.expect and row[1] == check.expect, (name, row)
    assert rows["nsclient", "telnet-dropped"][1:3] == ["fail", "(exit"]
    assert done.stdout.splitlines()[-1].endswith(f"; {len(declared)} checks as declared")
    assert "web1-web2-http" in done.stdout  # the built-in flows' table is there too


def test_a_check_wrong_on_purpose_fails_the_run_naming_it(tmp_path: Path) -> None:
    # web1's built-in listener does answer a kernel client: "fail" is the wrong expectation.
    text = NETNS_TOML.read_text()
    right = "cmd = \"bash -c 'exec 3<>/dev/tcp/10.0.10.11/80'\", timeout_s = 5}"
    assert right in text
    wrong = tmp_path / "wrong.toml"
    wrong.write_text(text.replace(right, right[:-1] + ', expect = "fail"}'))
    done = up_test(wrong, tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert check_rows(done.stdout)["nsclient", "tcp-web1"][:2] == ["fail", "ok"]
    unexpected = [line for line in done.stdout.splitlines() if line.startswith("UNEXPECTED:")]
    assert unexpected == ["UNEXPECTED: nsclient check tcp-web1: expected fail, got ok"]
    assert "*** Results: 1 unexpected outcomes" in done.stdout
