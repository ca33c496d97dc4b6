"""`nicteam capture -w` stopped by SIGTERM leaves a pcap tcpdump reads whole."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.cluster.conftest import BIN, REPO, Cluster
from tests.cluster.test_cluster import wait_until_flowing

pytestmark = pytest.mark.cluster


def test_sigterm_leaves_a_valid_pcap(cluster: Cluster, tmp_path: Path) -> None:
    c = cluster
    wait_until_flowing(c)
    pcap = tmp_path / "p0.pcap"
    env = {"NICTEAM_RUN_DIR": str(c.run_dir), "PATH": str(BIN)}
    cmd = [str(BIN / "nicteam"), "--config", str(c.config_path), "capture", "nic1/p0"]
    proc = subprocess.Popen([*cmd, "-w", str(pcap)], cwd=REPO, env=env, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while not (pcap.exists() and pcap.stat().st_size > 24 + 16 * 5):  # a few records
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "no frames captured in 30 s"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    shown = subprocess.run(["tcpdump", "-nn", "-r", str(pcap)], capture_output=True, text=True)
    assert shown.returncode == 0 and "truncated" not in shown.stderr, shown.stderr
    assert len(shown.stdout.splitlines()) > 0
    assert b"frames captured" in err
