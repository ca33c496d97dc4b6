"""The `[machines]` section: placement checks (one error naming the field) and derived endpoints."""

from __future__ import annotations

from pathlib import Path

import pytest

from configs import ConfigError, load_config
from configs.model import MachineSpec
from tests.unit.configrig import edit_base, load_text

TWO_HOSTS = Path(__file__).resolve().parents[2] / "configs/two-hosts.toml"

# BASE's processes: fabricd, h1, nic1, nic2.
TWO = """
[machines.m1]
address = "10.99.0.1"
processes = ["fabricd"]
[machines.m2]
address = "10.99.0.2"
processes = ["h1"]
"""


def test_a_host_brings_its_nics_and_ports_follow_the_process_order(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, edit_base(append=TWO))
    assert cfg.machines == (
        MachineSpec("m1", "10.99.0.1", 7100, ("fabricd",)),
        MachineSpec("m2", "10.99.0.2", 7100, ("h1", "nic1", "nic2")),
    )
    assert cfg.endpoint("fabricd") == "tcp://10.99.0.1:7100"
    assert [cfg.endpoint(p) for p in ("h1", "nic1", "nic2")] == [
        "tcp://10.99.0.2:7100", "tcp://10.99.0.2:7101", "tcp://10.99.0.2:7102",
    ]  # fmt: skip
    assert cfg.machine_of("nic2") == cfg.machine("m2")
    with pytest.raises(KeyError):
        cfg.machine_of("nic9")


def test_a_nic_listed_elsewhere_stays_there_and_endpoints_override(tmp_path: Path) -> None:
    text = edit_base(append=TWO.replace('["fabricd"]', '["fabricd", "nic2"]')
                     + 'port = 9000\n[endpoints]\nh1 = "tcp://10.99.0.9:7000"\n')  # fmt: skip
    cfg = load_text(tmp_path, text)
    assert cfg.machine("m1").processes == ("fabricd", "nic2")
    assert cfg.machine("m2").processes == ("h1", "nic1")
    assert cfg.endpoint("nic2") == "tcp://10.99.0.1:7101"
    assert cfg.endpoint("h1") == "tcp://10.99.0.9:7000"  # [endpoints] wins
    assert cfg.endpoint("nic1") == "tcp://10.99.0.2:9001"


def test_without_machines_nothing_changes(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, edit_base())
    assert cfg.machines == ()
    assert cfg.machine_of("nic1") is None
    assert cfg.endpoint("nic1") == f"ipc://{tmp_path / 'run'}/nic1.sock"


def test_two_hosts_on_three_machines(tmp_path: Path) -> None:
    text = TWO_HOSTS.read_text() + TWO.replace(
        '"h1"]', '"h1"]\n[machines.m3]\naddress = "10.99.0.3"\nprocesses = ["h2"]'
    )
    path = tmp_path / "c.toml"
    path.write_text(text)
    cfg = load_config(path, tmp_path / "run")
    assert cfg.machine("m3").processes == ("h2", "nic3", "nic4")
    assert cfg.endpoint("nic4") == "tcp://10.99.0.3:7102"


M1 = '[machines.m1]\naddress = "10.99.0.1"\n'
CASES = [
    # (id, appended text, field, reason fragment)
    ("not-a-table", "[machines]\nm1 = 3\n", "machines.m1", "must be a table"),
    ("bad-name", '[machines."a b"]\naddress = "10.0.0.1"\nprocesses = ["fabricd", "h1"]\n',
     "machines.a b", "must be a name"),
    ("no-address", '[machines.m1]\nprocesses = ["fabricd", "h1"]\n', "machines.m1.address",
     "missing"),
    ("no-processes", M1, "machines.m1.processes", "missing"),
    ("unknown-key", M1 + 'processes = ["fabricd", "h1"]\ncores = 4\n', "machines.m1.cores",
     "unknown key"),
    ("bad-address", '[machines.m1]\naddress = "10.99.0.300"\nprocesses = ["fabricd", "h1"]\n',
     "machines.m1.address", "not an IP address"),
    ("address-number", '[machines.m1]\naddress = 10\nprocesses = ["fabricd", "h1"]\n',
     "machines.m1.address", "not an IP address"),
    ("ipv6", '[machines.m1]\naddress = "fd00::1"\nprocesses = ["fabricd", "h1"]\n',
     "machines.m1.address", "IPv4"),
    ("unspecified", '[machines.m1]\naddress = "0.0.0.0"\nprocesses = ["fabricd", "h1"]\n',
     "machines.m1.address", "unicast"),
    ("empty", M1 + "processes = []\n", "machines.m1.processes", "at least one process"),
    ("unknown-proc", M1 + 'processes = ["fabricd", "h9"]\n', "machines.m1.processes[1]",
     "unknown process 'h9'"),
    ("twice", M1 + 'processes = ["fabricd", "h1", "fabricd"]\n', "machines.m1.processes[2]",
     "already placed by machines.m1.processes[0]"),
    ("twice-across", TWO.replace('["fabricd"]', '["fabricd", "nic1"]')
     .replace('["h1"]', '["h1", "nic1"]'), "machines.m2.processes[1]",
     "'nic1' already placed by machines.m1.processes[1]"),
    ("unplaced", M1 + 'processes = ["h1"]\n', "machines", "not placed on any machine: fabricd"),
    ("unplaced-nics", M1 + 'processes = ["fabricd", "nic1"]\n', "machines",
     "not placed on any machine: h1, nic2"),
    ("port-low", M1 + 'processes = ["fabricd", "h1"]\nport = 80\n', "machines.m1.port",
     "range 1024..65535"),
    ("port-float", M1 + 'processes = ["fabricd", "h1"]\nport = 7100.0\n', "machines.m1.port",
     "integer"),
    ("port-past-end", M1 + 'processes = ["fabricd", "h1"]\nport = 65534\n', "machines.m1.port",
     "4 processes from port 65534 run past 65535"),
    ("same-address-same-ports", TWO.replace("10.99.0.2", "10.99.0.1"), "machines.m2.port",
     "h1 would listen on tcp://10.99.0.1:7100, already fabricd's"),
    ("override-clash", TWO + '[endpoints]\nnic1 = "tcp://10.99.0.1:7100"\n', "endpoints.nic1",
     "fabricd's endpoint"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "field", "reason"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])  # fmt: skip
def test_errors_name_their_field(tmp_path: Path, text: str, field: str, reason: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_text(tmp_path, edit_base(append=text))
    assert err.value.field == field, str(err.value)
    assert reason in err.value.reason, str(err.value)


def test_shared_address_with_ports_apart_is_fine(tmp_path: Path) -> None:
    text = TWO.replace("10.99.0.2", "10.99.0.1") + "port = 7200\n"
    cfg = load_text(tmp_path, edit_base(append=text))
    assert cfg.endpoint("h1") == "tcp://10.99.0.1:7200"


def test_machines_not_a_table(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_text(tmp_path, "machines = 3\n" + edit_base())
    assert (err.value.field, err.value.reason) == ("machines", "must be a table, got integer")
