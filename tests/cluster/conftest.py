"""A real cluster from the Procfile in a temporary run directory, always cleaned up."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from configs.loader import Config, load_config
from ctl.client import ControlError, control

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
T = TypeVar("T")


@dataclass
class Cluster:
    """A running Procfile cluster: its honcho process, run directory and config."""

    proc: subprocess.Popen[bytes]
    run_dir: Path
    config: Config
    output: Path

    def control(self, proc: str, cmd: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
        """One control request to a daemon of this cluster."""
        return control(self.config.endpoint(proc), cmd, args, timeout=2.0)

    def worker_pid(self, nic: str) -> int:
        """The pid of a NIC's OS worker, from the card's pid file."""
        return int((self.run_dir / f"{nic}.pid").read_text())

    def session_pids(self) -> list[int]:
        """Every live process of the cluster's session (honcho and all it started)."""
        return session_pids(self.proc.pid)


def session_pids(sid: int) -> list[int]:
    """Live (non-zombie) processes whose session id is `sid`."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z" and int(fields[3]) == sid:
            pids.append(int(entry.name))
    return pids


def wait_for(
    what: str, probe: Callable[[], T | None], timeout: float = 30.0, every: float = 0.1
) -> T:
    """Poll `probe` until it returns something truthy; fail the test with `what` on timeout."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            got = probe()
        except (ControlError, OSError, ValueError, KeyError) as e:
            got, last_error = None, e
        if got:
            return got
        time.sleep(every)
    pytest.fail(f"timed out after {timeout:g} s waiting for {what} (last error: {last_error})")


def stop(
    proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 20.0
) -> int | None:
    """Stop honcho with `sig`; SIGKILL the whole session if it does not finish in time."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
    for pid in session_pids(proc.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait(5)
    return None


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """The default cluster, launched from the Procfile exactly as `make up` does."""
    run_dir = tmp_path / "run"
    output = tmp_path / "honcho.out"
    env = os.environ | {
        "NICTEAM_RUN_DIR": str(run_dir),
        "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
        "PYTHONUNBUFFERED": "1",
    }
    with output.open("wb") as out:
        proc = subprocess.Popen(
            [str(BIN / "honcho"), "start", "-f", "Procfile"],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own session: cleanup finds every descendant
        )
    config = load_config(REPO / "configs/default.toml", run_dir)
    c = Cluster(proc, run_dir, config, output)
    try:
        for nic in (n.name for h in config.hosts for n in h.nics):
            wait_for(f"{nic} up", lambda nic=nic: c.control(nic, "stats")["state"] == "up")
        yield c
    finally:
        stop(proc)
        assert not session_pids(proc.pid), "processes left behind"
