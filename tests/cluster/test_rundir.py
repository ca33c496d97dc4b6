"""`nicteam up` under umask 000 keeps its run directory private; a death in launch fails fast."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from configs import DEFAULT_CONFIG
from tests.cluster.conftest import BIN, REPO, tagged_pids

pytestmark = pytest.mark.cluster


def run_dir_pids(run: Path) -> list[int]:
    """Processes started for run dir `run` (they inherit NICTEAM_RUN_DIR)."""
    marker = f"NICTEAM_RUN_DIR={run}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if entry.name.isdigit() and marker in (entry / "environ").read_bytes().split(b"\0"):
                pids.append(int(entry.name))
    return pids


@pytest.fixture
def top() -> Iterator[Path]:
    """A short temporary directory (unix socket paths); whatever ran in it is killed after."""
    path = Path(tempfile.mkdtemp(prefix="nt-"))
    try:
        yield path
    finally:
        for pid in run_dir_pids(path / "run"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(path, ignore_errors=True)


def nicteam(*args: str, run: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """The CLI as a launcher with umask 000 would run it."""
    return subprocess.run(
        [str(BIN / "nicteam"), *args, "--run-dir", str(run)],
        cwd=REPO, capture_output=True, text=True, timeout=timeout,
        env={"PATH": f"{BIN}:{os.environ.get('PATH', '')}"},
        preexec_fn=lambda: os.umask(0),
    )  # fmt: skip


def test_the_run_dir_is_private_under_umask_000(top: Path) -> None:
    run = top / "run"
    done = nicteam("up", "--config", str(DEFAULT_CONFIG), "--timeout", "90", run=run)
    try:
        assert done.returncode == 0, done.stdout + done.stderr
        wide = []
        for path in [run, *run.rglob("*")]:
            st = path.lstat()
            want = 0o700 if stat.S_ISDIR(st.st_mode) else 0o600
            if stat.S_IMODE(st.st_mode) != want:
                wide.append(f"{path.relative_to(top)} {stat.S_IMODE(st.st_mode):04o}")
        kinds = {stat.S_IFMT(p.lstat().st_mode) for p in run.rglob("*")}
        assert stat.S_IFSOCK in kinds and stat.S_IFREG in kinds  # sockets were walked too
        assert {p.name for p in run.glob("*.pid")} >= {"nic1.pid", "nic2.pid", "h1.pid"}
        assert wide == []
    finally:
        tag = json.loads((run / "cluster.json").read_text())["tag"] if done.returncode == 0 else ""
        assert nicteam("down", run=run).returncode == 0
        assert not tag or tagged_pids(tag) == []


def test_a_nic_that_dies_in_launch_fails_up_at_once_with_its_own_error(top: Path) -> None:
    bad = top / "bad.toml"
    text = DEFAULT_CONFIG.read_text()
    endpoint = '# fabricd = "tcp://192.0.2.10:7100"'
    assert endpoint in text
    # TEST-NET-1: no machine has this address, so nic2 cannot bind it and dies at start.
    bad.write_text(text.replace(endpoint, 'nic2 = "tcp://192.0.2.10:7100"'))
    t0 = time.monotonic()
    done = nicteam("up", "--config", str(bad), "--timeout", "120", run=top / "run")
    took = time.monotonic() - t0
    assert done.returncode != 0
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: nic2 worker exited (1) during launch")
    assert "Cannot assign requested address" in lines[0]
    assert took < 30, f"took {took:.1f} s: waited for the readiness timeout?"
    assert run_dir_pids(top / "run") == []
