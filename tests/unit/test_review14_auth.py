"""Issue 14 review: what one process's key (or a damaged key folder) can still do.

Each test here failed on the code as reviewed; see the review report for the findings.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bus.curve import CLI, CurveKeys, MissingKey, generate_keys
from bus.guard import MUTATING
from bus.messages import ControlRequest, Fault, FaultKind
from configs import FABRICD, load_config
from configs.cmdline import daemon_node
from configs.model import ConfigError

TWO_HOSTS = Path("configs/two-hosts.toml")


def _tcp_two_hosts(tmp_path: Path) -> Path:
    """configs/two-hosts.toml with nic1 on tcp (so every process needs CURVE keys)."""
    text = TWO_HOSTS.read_text()
    assert "[endpoints]\n" in text
    path = tmp_path / "tcp.toml"
    path.write_text(text.replace("[endpoints]\n", '[endpoints]\nnic1 = "tcp://127.0.0.1:7101"\n'))
    return path


@pytest.mark.parametrize("cmd", sorted(MUTATING))
def test_another_hosts_key_cannot_change_a_nic_of_h1(tmp_path: Path, cmd: str) -> None:
    # h2's key (one stolen key of host h2) must not capture h1's traffic, fault or re-team
    # nic1: only nic1's own host and the CLI may.
    config = load_config(TWO_HOSTS, tmp_path / "run")
    assert config.nic("nic1").host == "h1"
    guard = daemon_node("nicd", config, "nic1").guard
    assert guard is not None
    assert guard("h2", ControlRequest(1, cmd, {})) == f"command.{cmd}"
    assert guard("h1", ControlRequest(1, cmd, {})) is None  # its own host still may
    assert guard(f"{CLI}-1-1", ControlRequest(1, cmd, {})) is None


def test_another_hosts_key_cannot_fault_a_nic_of_h1(tmp_path: Path) -> None:
    config = load_config(TWO_HOSTS, tmp_path / "run")
    guard = daemon_node("nicd", config, "nic1").guard
    assert guard is not None
    assert guard("h2", Fault(FaultKind.PARTITION, "h1", 5.0)) == "command.fault"


def test_a_hosts_key_cannot_cut_cables_or_migrate_elsewhere(tmp_path: Path) -> None:
    # No host daemon sends a changing command to the fabric or to another host: a host's key
    # that does is not the operator.
    config = load_config(TWO_HOSTS, tmp_path / "run")
    fabric = daemon_node("fabricd", config, FABRICD).guard
    h1 = daemon_node("hostd", config, "h1").guard
    assert fabric is not None and h1 is not None
    assert fabric("h1", ControlRequest(1, "link-down", {"port": "nic3.p0"})) is not None
    assert fabric("h2", Fault(FaultKind.PARTITION, "nic1", 5.0)) is not None
    assert h1("h2", ControlRequest(1, "migrate", {"vm": "web1", "nic": "nic2"})) is not None
    assert h1("h2", ControlRequest(1, "team-policy", {})) is not None
    assert fabric(f"{CLI}-1-1", ControlRequest(1, "link-down", {})) is None


@pytest.mark.parametrize("which", ["key", "key_secret"])
def test_a_garbled_key_file_is_one_clear_error_not_a_zmq_traceback(
    tmp_path: Path, which: str
) -> None:
    # A truncated key (a bad copy between machines) loaded fine and then made setsockopt raise
    # ZMQError(EINVAL) from inside start()/connect(): a traceback, after daemon_node said OK.
    keys = generate_keys(tmp_path, ["nic1", "nic2"])
    path = tmp_path / f"nic2.{which}"
    text = path.read_text()
    public = keys.public("nic2").decode()
    path.write_text(text.replace(public, public[:20]))
    with pytest.raises(MissingKey, match="nic2"):
        keys.public("nic2") if which == "key" else keys.pair("nic2")


def test_a_daemon_missing_a_peers_public_key_exits_with_one_line(tmp_path: Path) -> None:
    # daemon_node checked only the process's own pair; a peer's missing public key raised
    # MissingKey from connect() inside run(): a traceback instead of one line.
    config = load_config(_tcp_two_hosts(tmp_path), tmp_path / "run")
    generate_keys(tmp_path / "run" / "keys", [*config.processes, CLI])
    (tmp_path / "run" / "keys" / "h1.key").unlink()
    (tmp_path / "run" / "keys" / "h1.key_secret").unlink()
    with pytest.raises(SystemExit) as exit_:
        daemon_node("nicd", config, "nic1")
    message = str(exit_.value.code)
    assert "\n" not in message
    assert message.startswith("nicd nic1: tcp endpoints need CURVE keys: ")
    assert "h1" in message


def test_a_daemon_with_a_garbled_own_key_exits_with_one_line(tmp_path: Path) -> None:
    config = load_config(_tcp_two_hosts(tmp_path), tmp_path / "run")
    keys: CurveKeys = generate_keys(tmp_path / "run" / "keys", [*config.processes, CLI])
    secret = tmp_path / "run" / "keys" / "nic1.key_secret"
    public, _ = keys.pair("nic1")
    secret.write_text(secret.read_text().replace(public.decode(), public.decode()[:20]))
    with pytest.raises(SystemExit) as exit_:
        daemon_node("nicd", config, "nic1")
    assert "\n" not in str(exit_.value.code)


_MACHINES = """
[machines.m1]
address = "10.99.0.1"
processes = ["fabricd"]
[machines.m2]
address = "10.99.0.2"
processes = ["h1"]
[machines.m3]
address = "10.99.0.3"
processes = ["h2"]
"""


@pytest.mark.parametrize(
    ("endpoints", "field"),
    [
        ('h2 = "tcp://10.99.0.2:07100"\n', "endpoints.h2"),  # h1's derived 10.99.0.2:7100
        ('h2 = "tcp://10.99.0.3:7200"\nnic4 = "tcp://10.99.0.3:07200"\n', "endpoints.nic4"),
    ],
)
def test_an_endpoint_spelled_another_way_still_collides(
    tmp_path: Path, endpoints: str, field: str
) -> None:
    # Compared as strings, a leading zero in the port slipped past the collision checks: two
    # processes on one port, found only when the second one's bind fails at launch.
    text = TWO_HOSTS.read_text().replace("[endpoints]\n", "[endpoints]\n" + endpoints, 1)
    path = tmp_path / "m.toml"
    path.write_text(text + _MACHINES)
    with pytest.raises(ConfigError) as err:
        load_config(path, tmp_path / "run")
    assert field in str(err.value)
