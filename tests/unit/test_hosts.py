"""Several hosts: every read command covers every host of configs/two-hosts.toml, `--host`
narrows it to one, and an unknown host is one usage error listing the hosts.

The views are pure functions of the daemons' replies: the control requests are answered here
by fakes shaped like hostd's and nicd's replies, so no process runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import ctl.verify
import ctl.views
from configs import Config, load_config
from ctl.cli import main
from ctl.context import Context
from ctl.hosts import UnknownHost, on_host, only, report_of
from ctl.verify import pairs_now
from ctl.views import format_map, format_status, status, vpid_map

TWO = Path(__file__).resolve().parents[2] / "configs" / "two-hosts.toml"
H1_ONLY = {"web1-app1-http", "app1-ext1-udp", "ext1-web1-udp", "ext1-web1-ssh", "ext1-web1-telnet"}
H2_ONLY = {"web3-web2-http", "web2-ext1-http", "ext1-web3-http"}
BETWEEN = {"web1-web2-http", "app1-db1-sql", "web2-app1-dns", "app1-web3-udp"}


@pytest.fixture
def two(tmp_path: Path) -> Config:
    return load_config(TWO, tmp_path)


def _nic_stats(nic: str) -> dict[str, Any]:
    return {"state": "up", "team": [f"{nic}/p0", f"{nic}/p1"], "vpids": [1], "conntrack": 3,
            "epoch": 2}  # fmt: skip


def _host_stats(config: Config, host: str) -> dict[str, Any]:
    nics = config.host(host).nics
    return {"epoch": 2, "team_policy": "port-id", "nics": {n.name: "up" for n in nics}}


def fake_control(config: Config, asked: list[tuple[str, str]]) -> Any:
    """A `request` answering hostd's `stats`/`map` and nicd's `stats`/`digest`, noting who."""
    hosts = {h.name for h in config.hosts}

    def request(_: Config, proc: str, cmd: str, args: Any = None, timeout: float = 2.0) -> Any:
        asked.append((proc, cmd))
        if proc in hosts and cmd == "stats":
            return _host_stats(config, proc)
        if proc in hosts and cmd == "map":
            vms = config.host(proc).vms
            return {"epoch": 5 if proc == "h2" else 2,
                    "ports": [{"vpid": i + 1, "vm": vm.name, "mac": "02:00:00:00:00:01",
                               "nic": vm.nic, "ppid": 3} for i, vm in enumerate(vms)]}  # fmt: skip
        if cmd == "stats":
            return _nic_stats(proc)
        if cmd == "digest":
            sibs = [
                n.name for h in config.hosts for n in h.nics if proc in [m.name for m in h.nics]
            ]
            return {"seq": 4, "digest": "d", "records": 3,
                    "peers": {s: {"held": 4, "digest": "d", "records": 3}
                              for s in sibs if s != proc}}  # fmt: skip
        raise AssertionError(f"unexpected {proc} {cmd}")

    return request


# -- ctl/hosts.py ------------------------------------------------------------------------------


def test_only_narrows_to_one_host_its_nics_and_the_flows_with_an_end_on_it(two: Config) -> None:
    assert only(two, None) is two
    h2 = only(two, "h2")
    assert [h.name for h in h2.hosts] == ["h2"]
    assert [n.name for n in h2.nics] == ["nic3", "nic4"]
    assert {f.name for f in h2.flows} == H2_ONLY | BETWEEN
    assert {f.name for f in only(two, "h1").flows} == H1_ONLY | BETWEEN
    assert {f.name for f in two.flows} == H1_ONLY | H2_ONLY | BETWEEN


def test_an_unknown_host_lists_the_hosts(two: Config) -> None:
    with pytest.raises(UnknownHost, match=r"--host: unknown host 'h3'; hosts: h1, h2"):
        only(two, "h3")


@pytest.mark.parametrize(
    ("target", "h1", "h2"),
    [("nic1", True, False), ("nic3,nic4", False, True), ("nic4/p1", False, True),
     ("h1", True, False), ("web3->nic3", False, True), ("app1->nic1", True, False)],
)  # fmt: skip
def test_a_fault_target_is_on_its_host(two: Config, target: str, h1: bool, h2: bool) -> None:
    assert (on_host(target, two.host("h1")), on_host(target, two.host("h2"))) == (h1, h2)


def test_report_of_keeps_the_hosts_faults_and_its_flows_figures(two: Config) -> None:
    rep = {
        "faults": [
            {"id": 1, "nic": "nic3", "frames_lost": 4, "connections_reset": 0},
            {"id": 2, "nic": "nic1", "frames_lost": 7, "connections_reset": 1},
        ],
        "no_fault": {
            "frames_lost": 5,
            "connections_reset": 2,
            "lost_per_flow": {"web3-web2-http": 2, "web1-app1-http": 3},
            "resets_per_flow": {"ext1-web1-ssh": 2},
        },
        "totals": {"frames_lost": 16, "connections_reset": 3},
        "resets": [{"flow": "ext1-web1-ssh"}, {"flow": "ext1-web3-http"}],
    }
    assert report_of(rep, two, None) is rep
    h2 = report_of(rep, two, "h2")
    assert [f["id"] for f in h2["faults"]] == [1]
    assert h2["no_fault"]["lost_per_flow"] == {"web3-web2-http": 2}
    assert (h2["no_fault"]["frames_lost"], h2["no_fault"]["connections_reset"]) == (2, 0)
    assert h2["totals"] == {"frames_lost": 6, "connections_reset": 0}
    assert h2["resets"] == [{"flow": "ext1-web3-http"}]
    h1 = report_of(rep, two, "h1")
    assert [f["id"] for f in h1["faults"]] == [2]
    assert h1["totals"] == {"frames_lost": 10, "connections_reset": 3}


# -- the views over every host, and over one ---------------------------------------------------


def test_status_map_and_verify_cover_every_host(two: Config, monkeypatch: Any) -> None:
    asked: list[tuple[str, str]] = []
    monkeypatch.setattr(ctl.views, "request", fake_control(two, asked))
    monkeypatch.setattr(ctl.verify, "request", fake_control(two, asked))
    st = status(two)
    assert [h["name"] for h in st["hosts"]] == ["h1", "h2"]
    assert [(n["host"], n["name"]) for n in st["nics"]] == [
        ("h1", "nic1"), ("h1", "nic2"), ("h2", "nic3"), ("h2", "nic4")]  # fmt: skip
    assert "h2     nic4   up" in format_status(st)
    rows = vpid_map(two)
    assert {(r["host"], r["vm"], r["epoch"]) for r in rows} == {
        ("h1", "web1", 2), ("h1", "app1", 2), ("h2", "web2", 5), ("h2", "db1", 5),
        ("h2", "web3", 5)}  # fmt: skip
    assert any(line.startswith("h2") and "db1" in line for line in format_map(rows).splitlines())
    pairs = pairs_now(two)
    assert {(p.host, p.origin, p.holder) for p in pairs} == {
        ("h1", "nic1", "nic2"), ("h1", "nic2", "nic1"), ("h2", "nic3", "nic4"),
        ("h2", "nic4", "nic3")}  # fmt: skip
    assert all(p.status == "match" for p in pairs)


def test_one_host_is_asked_only_of_its_daemons(two: Config, monkeypatch: Any) -> None:
    asked: list[tuple[str, str]] = []
    monkeypatch.setattr(ctl.views, "request", fake_control(two, asked))
    monkeypatch.setattr(ctl.verify, "request", fake_control(two, asked))
    h2 = only(two, "h2")
    assert [n["name"] for n in status(h2)["nics"]] == ["nic3", "nic4"]
    assert {r["host"] for r in vpid_map(h2)} == {"h2"}
    assert {p.host for p in pairs_now(h2)} == {"h2"}
    assert {proc for proc, _ in asked} == {"h2", "nic3", "nic4"}


# -- the CLI -----------------------------------------------------------------------------------

READS = [
    ["status"], ["top", "--count", "1"], ["map"], ["flows"], ["flows", "nic1"], ["conntrack"],
    ["summary"], ["verify"], ["team-policy", "l4-hash"],
]  # fmt: skip


def _cli(tmp_path: Path, *args: str) -> Any:
    return CliRunner().invoke(main, ["--config", str(TWO), "--run-dir", str(tmp_path), *args])


@pytest.mark.parametrize("args", [*READS, ["report", "."]], ids=lambda a: a[0])
def test_an_unknown_host_is_a_usage_error_listing_the_hosts(
    tmp_path: Path, args: list[str], monkeypatch: Any
) -> None:
    monkeypatch.chdir(tmp_path)  # `report .`: a directory that exists
    result = _cli(tmp_path, *args, "--host", "h9")
    assert result.exit_code == 2, result.output
    assert "--host: unknown host 'h9'; hosts: h1, h2" in result.output
    assert "Traceback" not in result.output


@pytest.fixture
def answers(two: Config, monkeypatch: Any) -> list[tuple[str, str]]:
    """Every `Context.control` request the CLI makes, answered like the daemons would."""
    asked: list[tuple[str, str]] = []

    def control(self: Context, proc: str, cmd: str, args: Any = None) -> dict[str, Any]:
        asked.append((proc, cmd))
        if cmd == "team-policy":
            return {"old": "port-id", "policy": args["policy"]}
        if cmd == "flows":
            return {"total": 1, "flows": []}
        return {"total": 0, "records": []}

    monkeypatch.setattr(Context, "control", control)
    return asked


@pytest.mark.parametrize("cmd", ["flows", "conntrack"])
def test_flows_and_conntrack_without_a_nic_ask_every_nic_of_the_scope(
    tmp_path: Path, answers: list[tuple[str, str]], cmd: str
) -> None:
    every = _cli(tmp_path, cmd, "--json")
    assert every.exit_code == 0, every.output
    assert sorted(json.loads(every.output)) == ["nic1", "nic2", "nic3", "nic4"]
    answers.clear()
    h2 = _cli(tmp_path, cmd, "--host", "h2")
    assert h2.exit_code == 0, h2.output
    assert answers == [("nic3", cmd), ("nic4", cmd)]
    assert "# nic3:" in h2.output and "# nic1:" not in h2.output
    answers.clear()
    one = _cli(tmp_path, cmd, "nic4", "--json")  # one NIC: its own reply, as before
    assert answers == [("nic4", cmd)] and "nic4" not in json.loads(one.output)
    wrong = _cli(tmp_path, cmd, "nic1", "--host", "h2")
    assert wrong.exit_code == 1 and "unknown NIC 'nic1' on host h2; NICs: nic3, nic4" in (
        wrong.output
    )


def test_team_policy_changes_every_host_or_the_one_named(
    tmp_path: Path, answers: list[tuple[str, str]]
) -> None:
    every = _cli(tmp_path, "team-policy", "l4-hash")
    assert every.exit_code == 0, every.output
    assert answers == [("h1", "team-policy"), ("h2", "team-policy")]
    assert "h1: team policy port-id -> l4-hash" in every.output
    assert "h2: team policy port-id -> l4-hash" in every.output
    answers.clear()
    one = _cli(tmp_path, "team-policy", "l4-hash", "--host", "h2", "--json")
    assert answers == [("h2", "team-policy")]
    assert json.loads(one.output) == {"old": "port-id", "policy": "l4-hash"}


def test_summary_of_one_host_lists_the_flows_with_an_end_on_it(
    tmp_path: Path, monkeypatch: Any
) -> None:
    import ctl.summary

    seen: list[list[str]] = []

    def books(config: Config) -> dict[str, Any]:
        seen.append([h.name for h in config.hosts])  # the books of every host, always
        return {"web1-web2-http": {"sender": {"sent": 9}, "sink": {"delivered": 9}}}

    monkeypatch.setattr(ctl.summary, "books", books)
    result = _cli(tmp_path, "summary", "--host", "h2", "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert {r["flow"] for r in rows} == H2_ONLY | BETWEEN
    assert seen == [["h1", "h2"]]
    assert next(r for r in rows if r["flow"] == "web1-web2-http")["delivered"] == 9
