"""Issue 14 review: a damaged state file of `up` (a crash mid-write, a hand edit) is no cluster,
not a KeyError traceback from `up`, `down` or `status`."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from configs import load_config
from configs.model import ConfigError
from ctl import session


@pytest.mark.parametrize("text", ["{}", '{"pid": 1}', '{"tag": 5, "pid": "x"}', "[1]", "{"])
def test_a_damaged_state_file_is_no_cluster(tmp_path: Path, text: str) -> None:
    (tmp_path / session.STATE_FILE).write_text(text)
    (tmp_path / "cluster-m1.json").write_text(text)
    assert session.launched_config(tmp_path) is None
    assert session.down(tmp_path) == 0
    assert session.down(tmp_path, "m1") == 0


@pytest.mark.parametrize("reserved", ["fabric", "system"])
def test_a_process_may_not_take_a_procfile_name_of_the_launcher(
    tmp_path: Path, reserved: str
) -> None:
    # A host named "fabric" was accepted: the generated Procfile then had two "fabric" lines,
    # and `procfile --machine` put that host on fabricd's machine and on none of its own.
    # "system" is honcho's name for its own lines: a process under it dies unseen at launch.
    text = re.sub(r"\bh2\b", reserved, Path("configs/two-hosts.toml").read_text())
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path, tmp_path / "run")
    assert "hosts[1].name" in str(err.value)


@pytest.mark.parametrize(("old", "new", "field"), [("nic4", "ctl", "hosts[1].nics[1].name"),
                                                   ("nic4", "ctl-1", "hosts[1].nics[1].name"),
                                                   ("h2", "ctl-h2", "hosts[1].name")])  # fmt: skip
def test_a_process_may_not_take_the_clis_names(
    tmp_path: Path, old: str, new: str, field: str
) -> None:
    # A NIC named "ctl" was given the CLI's key file (ctl.key_secret): the operator's secret in
    # a NIC's hands. One named "ctl-1" speaks under its own key as "ctl-1", which the guard
    # takes for the CLI: every changing command on every node, from one NIC's key.
    text = re.sub(rf"\b{old}\b", new, Path("configs/two-hosts.toml").read_text())
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path, tmp_path / "run")
    assert field in str(err.value)
