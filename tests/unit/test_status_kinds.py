"""`nicteam status` shows each VM's and peer's kind (built-in stack or netns), as text and JSON,
and keeps every line it printed before."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import ctl.views
from configs import load_config
from ctl.cli import main
from ctl.views import format_status, status
from tests.unit.test_hosts import fake_control

NETNS_TOML = Path(__file__).resolve().parents[2] / "configs" / "netns.toml"


@pytest.fixture
def answering(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Every daemon of netns.toml answers `stats` as a healthy one would."""
    config = load_config(NETNS_TOML, run_dir=tmp_path)
    monkeypatch.setattr(ctl.views, "request", fake_control(config, []))


def test_status_lists_each_vm_and_peer_with_its_kind(tmp_path: Path, answering: None) -> None:
    st = status(load_config(NETNS_TOML, run_dir=tmp_path))
    assert st["vms"] == [
        {"name": "web1", "host": "h1", "kind": "builtin"},
        {"name": "web2", "host": "h1", "kind": "builtin"},
        {"name": "app1", "host": "h1", "kind": "builtin"},
        {"name": "db1", "host": "h1", "kind": "builtin"},
        {"name": "nsweb", "host": "h1", "kind": "netns"},
        {"name": "nslocal", "host": "h1", "kind": "netns"},
        {"name": "nsclient", "host": "h1", "kind": "netns"},
    ]
    assert st["peers"] == [{"name": "ext1", "kind": "builtin"}, {"name": "nsext", "kind": "netns"}]
    lines = format_status(st).splitlines()
    assert lines[0].startswith("host h1: epoch ")
    assert lines[1] == (
        "  vms: web1 builtin, web2 builtin, app1 builtin, db1 builtin, nsweb netns, "
        "nslocal netns, nsclient netns"
    )
    assert lines[2] == "peers: ext1 builtin, nsext netns"
    # The NIC table as before.
    assert lines[3].split() == ["host", "nic", "state", "epoch", "conntrack", "vpids", "team"]
    assert [line.split()[:3] for line in lines[4:6]] == [["h1", "nic1", "up"], ["h1", "nic2", "up"]]


def test_status_command_json_and_text(tmp_path: Path, answering: None) -> None:
    args = ["status", "--config", str(NETNS_TOML), "--run-dir", str(tmp_path)]
    got = CliRunner().invoke(main, [*args, "--json"])
    assert got.exit_code == 0, got.output
    st: dict[str, Any] = json.loads(got.output)
    assert {vm["name"]: vm["kind"] for vm in st["vms"]}["nsclient"] == "netns"
    assert set(st) == {"hosts", "nics", "vms", "peers"}
    text = CliRunner().invoke(main, args).output
    assert "nsweb netns" in text and "web1 builtin" in text and "nsext netns" in text


def test_a_host_without_vms_has_no_vms_line(tmp_path: Path) -> None:
    st = {
        "hosts": [{"name": "h9", "up": False, "epoch": None, "team_policy": "port-id"}],
        "nics": [],
        "vms": [],
        "peers": [],
    }
    assert format_status(st).splitlines()[:1] == ["host h9: DOWN"]
    assert "vms:" not in format_status(st) and "peers:" not in format_status(st)
