"""The run directory is private whatever the umask: 0700, files 0600; closed to others."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bus.log import configure_logging
from bus.rundir import RunDirError, private_dir, private_file, unreadable, write_private

NOBODY = 65534


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.fixture
def open_umask() -> Iterator[None]:
    """The launcher's umask at its worst: 000."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def test_a_new_run_dir_and_its_parents_are_0700_under_umask_000(
    tmp_path: Path, open_umask: None
) -> None:
    run = private_dir(tmp_path / "a" / "run")
    assert mode(run) == 0o700


def test_a_wider_run_dir_of_ours_is_tightened(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    run.chmod(0o755)
    private_dir(run)
    assert mode(run) == 0o700


def test_a_shared_sticky_dir_is_refused_not_chmodded(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    with pytest.raises(RunDirError, match="shared"):
        private_dir(shared)
    assert mode(shared) == 0o1777


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a directory away")
def test_another_users_run_dir_is_refused(tmp_path: Path) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o755)
    theirs.chmod(0o755)
    os.chown(theirs, NOBODY, NOBODY)
    with pytest.raises(RunDirError, match=f"uid {NOBODY}"):
        private_dir(theirs)
    assert mode(theirs) == 0o755


def test_a_file_in_it_is_0600_under_umask_000_and_an_old_one_tightened(
    tmp_path: Path, open_umask: None
) -> None:
    new = tmp_path / "new"
    os.close(private_file(new))
    assert mode(new) == 0o600
    old = tmp_path / "old"
    old.write_text("x")
    old.chmod(0o644)
    os.close(private_file(old, os.O_WRONLY | os.O_APPEND))
    assert mode(old) == 0o600 and old.read_text() == "x"


def test_write_private_replaces_whole_at_0600(tmp_path: Path, open_umask: None) -> None:
    path = tmp_path / "cluster.json"
    write_private(path, "one")
    write_private(path, "two")
    assert path.read_text() == "two" and mode(path) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["cluster.json"]


def test_logs_are_private_under_umask_000(tmp_path: Path, open_umask: None) -> None:
    run = tmp_path / "run"
    configure_logging("nic1", run, console=False)
    assert mode(run) == 0o700 and mode(run / "logs") == 0o700
    assert mode(run / "logs" / "nic1.jsonl") == 0o600


def test_a_readable_or_absent_run_dir_is_no_error(tmp_path: Path) -> None:
    assert unreadable(tmp_path) is None
    assert unreadable(tmp_path / "absent") is None


def as_another_user(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run `argv` as root stripped of the capabilities that bypass file modes.

    A run dir owned by `nobody` is then closed to it as to any other user, while the checkout,
    the venv and the interpreter (root's own) stay readable wherever the clone lies.
    """
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        pytest.skip("needs root and setpriv to drop the file-mode capabilities")
    caps = "-dac_override,-dac_read_search"
    cmd = [setpriv, f"--inh-caps={caps}", f"--bounding-set={caps}", *argv]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("verb", [["status"], ["down"], ["map"], ["chaos", "check"]])
def test_a_user_who_cannot_open_the_run_dir_gets_one_error_line(
    tmp_path: Path, verb: list[str]
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    os.chown(run, NOBODY, NOBODY)  # another user's cluster
    run.chmod(0o700)
    repo = Path(__file__).resolve().parents[2]
    done = as_another_user(sys.executable, "-m", "ctl", *verb, "--run-dir", str(run), cwd=repo)
    assert done.returncode != 0
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("Error: run dir ") and "permission denied" in lines[0]
