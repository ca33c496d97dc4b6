"""`nicteam exec VM -- CMD`: each reason there is nothing to exec into is one `Error:` line, and a
netns VM's namespace (named from the running cluster's tag) gets the command line as given.

No root needed: the "running cluster" is a sleeping process carrying a cluster's tag, as `up`'s
processes do, and the final exec is replaced by a recorder.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

import ctl.nsexec
from configs import load_config
from ctl.cli import main
from ctl.nsexec import ExecError, _tag

NETNS_TOML = Path(__file__).resolve().parents[2] / "configs" / "netns.toml"
LISTING = "netns VMs: nsweb, nslocal, nsclient; netns peers: nsext"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[str]:
    """A cluster.json for netns.toml whose tag a live process carries; its tag."""
    tag = f"nt-{uuid.uuid4().hex[:12]}"
    proc = subprocess.Popen(["sleep", "60"], env={**os.environ, "NICTEAM_TEST_TAG": tag})
    try:
        state = {"pid": proc.pid, "tag": tag, "config": str(NETNS_TOML), "run_dir": str(tmp_path)}
        (tmp_path / "cluster.json").write_text(json.dumps(state))
        yield tag
    finally:
        proc.kill()
        proc.wait()


def _exec(run_dir: Path, *args: str) -> Result:
    return CliRunner().invoke(main, ["exec", "--run-dir", str(run_dir), *args])


def _one_error(got: Result) -> str:
    assert got.exit_code == 1, got.output
    (line,) = got.output.splitlines()
    assert line.startswith("Error: "), line
    return line.removeprefix("Error: ")


def test_no_cluster_running(tmp_path: Path) -> None:
    said = _one_error(_exec(tmp_path, "nsweb", "--", "true"))
    assert said == f"no cluster running in {tmp_path}: `nicteam up` first, or give its --run-dir"


def test_a_cluster_whose_processes_are_gone_is_no_cluster(tmp_path: Path) -> None:
    state = {"pid": 1, "tag": f"nt-{uuid.uuid4().hex[:12]}", "config": str(NETNS_TOML)}
    (tmp_path / "cluster.json").write_text(json.dumps(state))
    assert _one_error(_exec(tmp_path, "nsweb", "--", "true")).startswith("no cluster running")


def test_unknown_vm_lists_the_netns_ones(tmp_path: Path, cluster: str) -> None:
    said = _one_error(_exec(tmp_path, "nsnope", "--", "true"))
    assert said == f"unknown VM or peer 'nsnope'; {LISTING}"


@pytest.mark.parametrize(("name", "what"), [("web1", "VM"), ("ext1", "peer")])
def test_a_builtin_endpoint_has_nothing_to_exec_into(
    tmp_path: Path, cluster: str, name: str, what: str
) -> None:
    said = _one_error(_exec(tmp_path, name, "--", "true"))
    assert said == f"{name} is a built-in {what}: nothing to exec into; {LISTING}"


def test_a_config_without_netns_endpoints_says_so(tmp_path: Path, cluster: str) -> None:
    said = _one_error(_exec(tmp_path, "--config", "configs/default.toml", "web1", "--", "true"))
    none = 'this config has no netns VM or peer (kind = "netns")'
    assert said == f"web1 is a built-in VM: nothing to exec into; {none}"


@pytest.mark.parametrize(("name", "owner"), [("nsweb", "h1"), ("nsext", "fabricd")])
def test_a_missing_namespace(tmp_path: Path, cluster: str, name: str, owner: str) -> None:
    said = _one_error(_exec(tmp_path, name, "--", "true"))
    assert said == (
        f"namespace {cluster}.{name} of {name} is missing: {owner} makes it at launch "
        "(is it up? nicteam status)"
    )


def _entered(monkeypatch: pytest.MonkeyPatch, may_enter: bool = True) -> list[list[str]]:
    """Namespaces exist; exec records its command line and exits 5 as the command would."""
    calls: list[list[str]] = []

    def execvp(path: str, argv: list[str]) -> None:
        calls.append([path, *argv])
        raise SystemExit(5)

    monkeypatch.setattr(ctl.nsexec, "exists", lambda ns: True)
    monkeypatch.setattr(ctl.nsexec, "_may_enter", lambda: may_enter)
    monkeypatch.setattr(ctl.nsexec.os, "execvp", execvp)
    return calls


def test_the_command_runs_in_the_namespace_with_its_exit_status(
    tmp_path: Path, cluster: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _entered(monkeypatch)
    # Options after VM belong to the command, --run-dir and --help included.
    got = _exec(tmp_path, "nsclient", "--", "curl", "-s", "--run-dir", "http://10.0.10.21/")
    assert got.exit_code == 5, got.output
    argv = ["ip", "netns", "exec", f"{cluster}.nsclient", "curl", "-s", "--run-dir"]
    assert calls == [["ip", *argv, "http://10.0.10.21/"]]
    got = _exec(tmp_path, "nsext", "ping", "-c", "1", "10.0.10.21")  # `--` is optional
    assert got.exit_code == 5 and calls[-1][4:] == [f"{cluster}.nsext", "ping", "-c", "1",
                                                    "10.0.10.21"]  # fmt: skip


def test_no_command_is_a_usage_error(tmp_path: Path, cluster: str) -> None:
    got = _exec(tmp_path, "nsweb", "--")
    assert got.exit_code == 2 and "no command: nicteam exec VM -- CMD ..." in got.output
    got = _exec(tmp_path, "nsweb")
    assert got.exit_code == 2 and "Missing argument '-- CMD...'" in got.output


def test_without_privilege_one_line(
    tmp_path: Path, cluster: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _entered(monkeypatch, may_enter=False)
    said = _one_error(_exec(tmp_path, "nsweb", "--", "true"))
    assert said == (
        f"entering namespace {cluster}.nsweb needs root (or CAP_SYS_ADMIN): run nicteam exec "
        "as root, e.g. with sudo"
    )
    assert calls == []


def test_without_ip_one_line(tmp_path: Path, cluster: str, monkeypatch: pytest.MonkeyPatch) -> None:
    _entered(monkeypatch)

    def missing(path: str, argv: list[str]) -> None:
        raise FileNotFoundError(path)

    monkeypatch.setattr(ctl.nsexec.os, "execvp", missing)
    said = _one_error(_exec(tmp_path, "nsweb", "--", "true"))
    assert said == "ip: not found: apt-get install iproute2 (`make setup` does)"


def test_with_machines_the_tag_is_that_of_the_share_running_the_owner(tmp_path: Path) -> None:
    machines = (
        '\n[machines.m1]\naddress = "192.0.2.10"\nprocesses = ["fabricd"]\n'
        '[machines.m2]\naddress = "192.0.2.11"\nprocesses = ["h1"]\n'
    )
    path = tmp_path / "machines.toml"
    path.write_text(NETNS_TOML.read_text() + machines)
    config = load_config(path, run_dir=tmp_path)
    states = [{"tag": "nt-m2", "pid": 1, "machine": "m2"}]
    assert _tag(config, states, "nsweb", "h1") == "nt-m2"
    with pytest.raises(ExecError, match="nsext lives on machine m1 \\(with fabricd\\)"):
        _tag(config, states, "nsext", "fabricd")
    whole = [{"tag": "nt-all", "pid": 1}]
    assert _tag(config, whole, "nsext", "fabricd") == "nt-all"
