"""`nicteam exec` for real: the command runs in the netns VM's namespace with this process's
stdin, stdout and stderr, and nicteam exits with its status (root needed; skipped without).

The cluster is a stand-in (a process carrying a cluster's tag, as `up`'s processes do), and the
namespace is made here under the name the cluster's host daemon would give it.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from ctl.cluster import BIN, REPO
from kernel.netns import namespace
from tests.netns.netlab import can_make_namespaces, ip

pytestmark = pytest.mark.netns

NETNS_TOML = REPO / "configs" / "netns.toml"


@pytest.fixture
def running(tmp_path: Path) -> Iterator[str]:
    """A running stand-in of netns.toml's cluster and nsweb's namespace; the namespace."""
    why = can_make_namespaces()
    if why is not None:
        pytest.skip(why)
    tag = f"nt-{uuid.uuid4().hex[:12]}"
    ns = namespace(tag, "nsweb")
    proc = subprocess.Popen(["sleep", "300"], env={**os.environ, "NICTEAM_TEST_TAG": tag})
    try:
        state = {"pid": proc.pid, "tag": tag, "config": str(NETNS_TOML), "run_dir": str(tmp_path)}
        (tmp_path / "cluster.json").write_text(json.dumps(state))
        ip("netns", "add", ns)
        yield ns
    finally:
        ip("netns", "del", ns, check=False)
        proc.kill()
        proc.wait()


def test_the_command_runs_in_the_namespace_with_our_streams_and_its_status(
    tmp_path: Path, running: str
) -> None:
    script = "ip netns identify; read line; echo got $line; echo to-stderr >&2; exit 3"
    done = subprocess.run(
        [BIN / "nicteam", "exec", "--run-dir", str(tmp_path), "nsweb", "--", "sh", "-c", script],
        input="hello\n", capture_output=True, text=True, timeout=30, cwd=REPO,
    )  # fmt: skip
    assert done.returncode == 3, done.stderr
    assert done.stdout.splitlines() == [running, "got hello"]
    assert done.stderr == "to-stderr\n"


def test_a_vm_without_its_namespace_is_one_line(tmp_path: Path, running: str) -> None:
    done = subprocess.run(
        [BIN / "nicteam", "exec", "--run-dir", str(tmp_path), "nsclient", "--", "true"],
        capture_output=True, text=True, timeout=30, cwd=REPO,
    )  # fmt: skip
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.startswith(f"Error: namespace {running.replace('nsweb', 'nsclient')} ")
    assert len(done.stderr.splitlines()) == 1
