"""Issue 14 review: a damaged state file of `up` (a crash mid-write, a hand edit) is no cluster,
not a KeyError traceback from `up`, `down` or `status`."""

from __future__ import annotations

from pathlib import Path

import pytest

from ctl import session


@pytest.mark.parametrize("text", ["{}", '{"pid": 1}', '{"tag": 5, "pid": "x"}', "[1]", "{"])
def test_a_damaged_state_file_is_no_cluster(tmp_path: Path, text: str) -> None:
    (tmp_path / session.STATE_FILE).write_text(text)
    (tmp_path / "cluster-m1.json").write_text(text)
    assert session.launched_config(tmp_path) is None
    assert session.down(tmp_path) == 0
    assert session.down(tmp_path, "m1") == 0
