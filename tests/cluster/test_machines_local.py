"""A config with [machines] whose every address is this machine's (loopback) launches whole with a
plain `up`: every process on its machine's tcp endpoint, every flow delivering."""

from __future__ import annotations

import pytest

from ctl.cluster import running_cluster
from ctl.summary import books
from tests.cluster.conftest import REPO, unused_ports, wait_for

pytestmark = pytest.mark.cluster


def test_machines_on_loopback_addresses_launch_together_over_tcp() -> None:
    port = unused_ports(3, ("127.0.0.1", "127.0.0.2", "127.0.0.3"))
    text = (REPO / "configs/two-hosts.toml").read_text() + "".join(
        f'[machines.m{i}]\naddress = "127.0.0.{i}"\nprocesses = ["{proc}"]\nport = {port}\n'
        for i, proc in ((1, "fabricd"), (2, "h1"), (3, "h2"))
    )
    with running_cluster(config_text=text) as c:
        assert c.config.endpoint("nic4") == f"tcp://127.0.0.3:{port + 2}"
        assert not list(c.run_dir.glob("*.sock"))  # nothing on ipc
        deliver = [f.name for f in c.config.flows if f.expect == "deliver"]

        def delivering() -> bool:
            got = books(c.config)
            return all(got.get(f, {}).get("sink", {}).get("delivered", 0) > 3 for f in deliver)

        wait_for("every flow delivering over tcp", delivering, timeout=30)
