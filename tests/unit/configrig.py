"""A small valid cluster config (BASE) and the helpers the config tests edit and load it with."""

from __future__ import annotations

from pathlib import Path

from configs import (
    Config,
    load_config,
)

BASE = """\
[[segments]]
name = "web"
vlan = 10

[[segments]]
name = "db"
vlan = 20

[firewall]
default = "drop"

[[firewall.rules]]
name = "http"
action = "allow"
direction = "to-vm"
proto = "tcp"
dport = 80

[[hosts]]
name = "h1"

[[hosts.nics]]
name = "nic1"
uplinks = ["p0", "p1"]

[[hosts.nics]]
name = "nic2"
uplinks = ["p0"]
eswitch_capacity = 16

[vms.web1]
nic = "nic1"
tcp_listen = [80]
[[vms.web1.interfaces]]
mac = "02:00:00:00:01:01"
ips = ["10.0.10.1/24"]
segment = "web"

[vms.web2]
nic = "nic2"
[[vms.web2.interfaces]]
mac = "02:00:00:00:01:02"
ips = ["10.0.10.2/24"]
segment = "web"

[vms.db1]
nic = "nic2"
tcp_listen = [5432]
[[vms.db1.interfaces]]
mac = "02:00:00:00:02:01"
ips = ["10.0.20.1/24"]
segment = "db"

[peers.ext1]
mac = "02:00:00:00:0e:01"
ips = ["10.0.10.200/24"]
segment = "web"
tcp_listen = [80]

[flows.f1]
proto = "tcp"
src = "web2"
dst = "web1"
dport = 80
"""


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cluster.toml"
    path.write_text(text, encoding="utf-8")
    return path


def load_text(tmp_path: Path, text: str = BASE) -> Config:
    return load_config(write_config(tmp_path, text), run_dir=tmp_path / "run")


def edit_base(replace: dict[str, str] | None = None, append: str = "") -> str:
    text = BASE
    for old, new in (replace or {}).items():
        assert text.count(old) == 1, f"edit target not unique in BASE: {old!r}"
        text = text.replace(old, new)
    return text + append
