"""The default cluster with every process on tcp 127.0.0.1: CURVE on every endpoint, each key
bound to its process's name, and rogue clients that get nowhere.

The oracle for "not plaintext" is the ZMTP greeting each endpoint sends (its mechanism field);
for "gets nowhere", what the cluster does: no reply reaches a rogue, its frames leave on no
uplink (the fabric never learns their source MAC), its commands change nothing (map epoch,
team policy, faults), the denials are in each daemon's counters and logs, and the workload's
books show no loss or reset. Then a NIC is killed, as in the ipc tests: nothing resets.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest
import zmq

from bus.codec import encode
from bus.curve import KEY_DIR, CurveKeys, generate_keys
from bus.messages import ControlRequest, FrameBatch, Hello, Message
from bus.transport import NAME_PROPERTY
from configs import FABRICD
from ctl.chaos import Chaos
from ctl.cluster import running_cluster
from ctl.logs import load
from tests.cluster.books import resets, resumed
from tests.cluster.conftest import REPO, Cluster, unused_ports, wait_for
from wire.build import gratuitous_arp

pytestmark = [pytest.mark.cluster, pytest.mark.chaos]

ROGUE_MAC = bytes.fromhex("026666666601")
PROCS = (FABRICD, "h1", "nic1", "nic2")
# A cluster key each endpoint's rogue speaks under its own name: only fabricd's is free at h1.
OWN_NAME = {FABRICD: "nic2", "h1": FABRICD, "nic1": "nic2", "nic2": "nic1"}


def tcp_config() -> str:
    """configs/default.toml with every process on its own tcp port of 127.0.0.1."""
    text = (REPO / "configs/default.toml").read_text()
    base = unused_ports(len(PROCS))
    lines = "".join(f'{p} = "tcp://127.0.0.1:{base + i}"\n' for i, p in enumerate(PROCS))
    return text.replace("[endpoints]\n", f"[endpoints]\n{lines}", 1)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with running_cluster(config_text=tcp_config()) as c:
        yield c


def _greeting_mechanism(endpoint: str) -> bytes:
    """The security mechanism an endpoint's ZMTP 3 greeting names (bytes 12..31)."""
    host, port = endpoint.removeprefix("tcp://").rsplit(":", 1)
    # Our signature and major version only: the server then sends its whole greeting, and
    # we never name a mechanism it would close the connection over before that.
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(b"\xff" + bytes(8) + b"\x7f" + bytes([3]))
        got = b""
        while len(got) < 64:
            chunk = s.recv(64 - len(got))
            assert chunk, f"{endpoint} closed before its greeting ({got!r})"
            got += chunk
    return got[12:32].rstrip(b"\0")


def test_every_endpoint_speaks_curve_with_owner_only_keys(cluster: Cluster) -> None:
    for proc in PROCS:
        assert _greeting_mechanism(cluster.config.endpoint(proc)) == b"CURVE", proc
    folder = cluster.run_dir / KEY_DIR
    assert folder.stat().st_mode & 0o777 == 0o700
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted(f"{n}{ext}" for n in (*PROCS, "ctl") for ext in (".key", ".key_secret"))
    assert {p.stat().st_mode & 0o777 for p in folder.iterdir()} == {0o600}
    resumed(cluster.config, "over tcp + CURVE")


class Rogue:
    """A DEALER at one endpoint: no CURVE, an outsider's key, or a cluster key under a name."""

    def __init__(self, ctx: zmq.Context[Any], endpoint: str, claimed: str) -> None:
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.METADATA, f"{NAME_PROPERTY}:{claimed}".encode())
        self.endpoint = endpoint
        self.claimed = claimed

    def keyed(self, server: bytes, pair: tuple[bytes, bytes]) -> Rogue:
        self.sock.setsockopt(zmq.CURVE_SERVERKEY, server)
        self.sock.setsockopt(zmq.CURVE_PUBLICKEY, pair[0])
        self.sock.setsockopt(zmq.CURVE_SECRETKEY, pair[1])
        return self

    def attack(self, c: Cluster) -> None:
        """Everything a process of the cluster could say, in the project's own codec."""
        self.sock.connect(self.endpoint)
        arp = gratuitous_arp(ROGUE_MAC, IPv4Address("10.0.10.66"), vlan=10)
        messages: list[Message] = [
            Hello(self.claimed, "host"),
            ControlRequest(1, "stats", {}),
            ControlRequest(2, "migrate", {"vm": "web1", "nic": "nic2"}),
            ControlRequest(3, "team-policy", {"policy": "active-backup"}),
            ControlRequest(4, "fault", {"kind": "partition", "peer": "*", "seconds": 30.0}),
            ControlRequest(5, "link-down", {"port": "nic1/p0"}),
            FrameBatch(self.claimed, [(ppid, arp) for ppid in range(1, 9)]),
        ]
        for msg in messages:
            self.sock.send(encode(msg))

    def replies(self) -> int:
        n = 0
        while self.sock.poll(0):
            self.sock.recv()
            n += 1
        return n


def _bus(c: Cluster, proc: str) -> dict[str, Any]:
    return dict(c.control(proc, "stats")["bus"])


def test_rogue_clients_on_every_endpoint_get_nowhere(cluster: Cluster, tmp_path: Path) -> None:
    c = cluster
    resumed(c.config, "before the rogues")
    keys = CurveKeys(c.run_dir / KEY_DIR)
    outsider = generate_keys(tmp_path / "outsider", ["h1"])
    base_resets = resets(c.config)
    epoch = c.control("h1", "map")["epoch"]
    policy = c.control("h1", "stats")["team_policy"]
    refused = {p: _bus(c, p)["identity_refused"] for p in PROCS}
    ctx: zmq.Context[Any] = zmq.Context()
    rogues: list[Rogue] = []
    try:
        for proc in PROCS:
            endpoint = c.config.endpoint(proc)
            server = keys.public(proc)
            other = "nic2" if proc != "nic2" else "nic1"
            own = OWN_NAME[proc]
            rogues += [
                Rogue(ctx, endpoint, "h1"),  # no key at all
                Rogue(ctx, endpoint, "h1").keyed(server, outsider.pair("h1")),
                Rogue(ctx, endpoint, "h1").keyed(server, keys.pair(other)),
                # A stolen key under its own name: refused while its owner speaks for the
                # name there; where the name is free, it may read but change nothing.
                Rogue(ctx, endpoint, own).keyed(server, keys.pair(own)),
            ]
        for rogue in rogues:
            rogue.attack(c)
        reasons = {"handshake", "unknown-key", "name"}
        wait_for("every endpoint counted every kind of rogue",
                 lambda: all(reasons <= set(_bus(c, p)["auth_denied"])
                             and _bus(c, p)["identity_refused"] > refused[p]
                             for p in PROCS if p != "h1")
                 and reasons | {"command.migrate", "command.link-down"}
                 <= set(_bus(c, "h1")["auth_denied"]), timeout=15)  # fmt: skip
        resumed(c.config, "with the rogues connected")
        # The only reply any rogue may get: fabricd's key reading h1's stats.
        answered = {(r.endpoint, r.claimed): r.replies() for r in rogues}
        assert sum(answered.values()) == 1, answered
        assert answered[(c.config.endpoint("h1"), "fabricd")] == 1, answered
    finally:
        for rogue in rogues:
            rogue.sock.close(linger=0)
        ctx.term()
    assert c.control("h1", "map")["epoch"] == epoch
    assert c.control("h1", "stats")["team_policy"] == policy
    assert not c.ports_away()
    for nic in ("nic1", "nic2"):
        assert c.control(nic, "stats")["state"] == "up"
    learned = {row["mac"] for row in c.control(FABRICD, "mac-table")["rows"]}
    assert ROGUE_MAC.hex(":") not in learned, "a rogue's frame left on an uplink"
    changes = {"chaos.fault", "fabric.fault", "fabric.link.down", "host.team.policy"}
    events = load(c.run_dir / "logs", {"bus.auth.denied", *changes})
    denied = {(e["proc"], e["reason"]) for e in events if e["event"] == "bus.auth.denied"}
    for proc in PROCS:
        assert {(proc, "handshake"), (proc, "unknown-key"), (proc, "name")} <= denied, denied
    assert not [e for e in events if e["event"] != "bus.auth.denied"], "a rogue's command ran"
    assert resets(c.config) == base_resets


def test_a_nic_kill_over_tcp_resets_nothing(cluster: Cluster) -> None:
    c = cluster
    resumed(c.config, "before the kill")
    base = resets(c.config)
    old = Chaos(c.config).kill("nic1")
    wait_for("nic1 rebooted and up",
             lambda: c.worker_pid("nic1") != old and c.control("nic1", "stats")["state"] == "up",
             timeout=30)  # fmt: skip
    wait_for("VPIDs home again", lambda: not c.ports_away(), timeout=30)
    resumed(c.config, "after the kill")
    assert resets(c.config) == base, "an established connection was reset (nic1 killed over tcp)"
