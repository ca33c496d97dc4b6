"""Launching one machine's share: its Procfile, where it may run, and the CLI's --machine."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from configs import Config, load_config
from ctl.cli import main
from ctl.cluster import PlacementError, is_local, launchable, procfile, procfile_for
from ctl.session import SessionError, state_file, up

TWO_HOSTS = Path(__file__).resolve().parents[2] / "configs/two-hosts.toml"
TEMPLATE = """\
fabric: python -m fabricd --config ${NICTEAM_CONFIG:-x.toml}
h1: python -m hostd.card --config ${NICTEAM_CONFIG:-x.toml} --host h1
nic1: python -m nicd --config ${NICTEAM_CONFIG:-x.toml} --nic nic1
"""


def machines(m1: str, m2: str, m3: str) -> str:
    """two-hosts.toml's three machines: fabricd on m1, h1 and its NICs on m2, h2's on m3."""
    return "".join(
        f'[machines.m{i}]\naddress = "{addr}"\nprocesses = ["{proc}"]\n'
        for i, (addr, proc) in enumerate(((m1, "fabricd"), (m2, "h1"), (m3, "h2")), 1)
    )


def config(tmp_path: Path, m1: str = "10.99.0.1", m2: str = "10.99.0.2",
           m3: str = "10.99.0.3", port: str = "") -> Config:  # fmt: skip
    path = tmp_path / "placed.toml"
    path.write_text(TWO_HOSTS.read_text() + machines(m1, m2, m3) + port)
    return load_config(path, tmp_path / "run")


def names(text: str) -> list[str]:
    return [line.split(":")[0] for line in text.splitlines()]


def test_a_machine_s_procfile_has_only_its_processes(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    assert names(procfile(cfg, TEMPLATE, "m1")) == ["fabric"]
    assert names(procfile(cfg, TEMPLATE, "m2")) == ["h1", "nic1", "nic2"]
    m3 = procfile(cfg, TEMPLATE, "m3").splitlines()
    assert names("\n".join(m3)) == ["h2", "nic3", "nic4"]
    assert m3[2] == f"nic4: python -m nicd --config ${{NICTEAM_CONFIG:-{cfg.path}}} --nic nic4"
    # Without a machine: the whole cluster, as before.
    assert names(procfile(cfg, TEMPLATE)) == ["fabric", "h1", "h2", "nic1", "nic2", "nic3", "nic4"]


def test_each_machine_writes_its_own_procfile_into_the_shared_run_dir(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    paths = {m: procfile_for(cfg, m) for m in ("m1", "m2", "m3")}
    assert {m: p.name for m, p in paths.items()} == {
        "m1": "Procfile.m1", "m2": "Procfile.m2", "m3": "Procfile.m3",
    }  # fmt: skip
    assert names(paths["m3"].read_text()) == ["h2", "nic3", "nic4"]
    assert state_file(cfg.run_dir, "m2").name == "cluster-m2.json"


def test_unknown_machine_and_no_machines_are_one_error(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    with pytest.raises(PlacementError, match=r"--machine m9: unknown machine \(machines: m1, m2"):
        procfile(cfg, TEMPLATE, "m9")
    plain = load_config(TWO_HOSTS, tmp_path / "run")
    with pytest.raises(PlacementError, match="the config has no \\[machines\\] section"):
        procfile(plain, TEMPLATE, "m1")


def test_where_a_share_may_launch(tmp_path: Path) -> None:
    # Every address this machine's (loopback): the whole cluster launches here.
    local = config(tmp_path, "127.0.0.1", "127.0.0.2", "127.0.0.3")
    assert len(launchable(local, None)) == 7
    assert launchable(local, "m2") == ("h1", "nic1", "nic2")
    # TEST-NET-3 is nobody's: without --machine, one error naming the machines.
    assert not is_local("203.0.113.77")
    away = config(tmp_path, "127.0.0.1", "203.0.113.77", "127.0.0.3")
    with pytest.raises(PlacementError, match=r"machines m1 \(127.0.0.1\), m2 \(203.0.113.77\)"):
        launchable(away, None)
    assert launchable(away, "m1") == ("fabricd",)
    with pytest.raises(PlacementError, match=r"its address 203\.0\.113\.77 is not this machine's"):
        launchable(away, "m2")


def test_up_refuses_a_machine_that_is_not_here_before_starting_anything(tmp_path: Path) -> None:
    cfg = config(tmp_path, "127.0.0.1", "203.0.113.77", "127.0.0.3")
    with pytest.raises(SessionError, match="not this machine's"):
        up(cfg.path, cfg.run_dir, 1.0, lambda nic, t: None, "m2")
    assert not state_file(cfg.run_dir, "m2").exists()
    assert not (cfg.run_dir / "honcho-m2.out").exists()


def test_the_cli_prints_a_machine_s_procfile(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    runner = CliRunner()
    base = ["--run-dir", str(cfg.run_dir), "procfile", "--config", str(cfg.path)]
    out = runner.invoke(main, [*base, "--machine", "m3"])
    assert out.exit_code == 0, out.output
    assert out.output == procfile(cfg, machine="m3")
    out = runner.invoke(main, [*base, "--machine", "m9"])
    assert out.exit_code == 2
    assert "Error: --machine m9: unknown machine (machines: m1, m2, m3)" in out.output
    assert "Traceback" not in out.output
