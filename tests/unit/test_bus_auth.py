"""Who may speak on a tcp bus: CURVE keys of the cluster only, each bound to its one name, and
changing commands only from the operator's CLI and the host daemons (`bus.curve`, `bus.guard`)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import zmq
import zmq.asyncio
from structlog.testing import capture_logs

from bus.codec import encode
from bus.curve import CLI, CurveKeys, MissingKey, generate_keys
from bus.guard import MUTATING, operator_only
from bus.messages import ControlRequest, Fault, FaultKind, Hello
from bus.transport import NAME_PROPERTY, BusNode
from configs import load_config
from configs.cmdline import daemon_node

DEADLINE = 5.0


@pytest.fixture
async def keys(tmp_path: Path) -> CurveKeys:
    return generate_keys(tmp_path / "keys", ["h1", "nic1", "nic3", CLI])


@pytest.fixture
async def server(keys: CurveKeys) -> AsyncIterator[BusNode]:
    node = BusNode("nic1", "tcp://127.0.0.1:*", curve=keys)
    node.guard = operator_only(["h1"])
    await node.start()
    yield node
    await node.close()


class Client:
    """A raw DEALER, as a rogue (or the CLI) would open one: any key, any claimed name."""

    def __init__(self) -> None:
        self.ctx = zmq.asyncio.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)

    def curve(self, server: bytes, pair: tuple[bytes, bytes]) -> Client:
        self.sock.setsockopt(zmq.CURVE_SERVERKEY, server)
        self.sock.setsockopt(zmq.CURVE_PUBLICKEY, pair[0])
        self.sock.setsockopt(zmq.CURVE_SECRETKEY, pair[1])
        return self

    def named(self, name: str, routing_id: bool = False) -> Client:
        if routing_id:
            self.sock.setsockopt(zmq.IDENTITY, name.encode())
        else:
            self.sock.setsockopt(zmq.METADATA, f"{NAME_PROPERTY}:{name}".encode())
        return self

    def close(self) -> None:
        self.sock.close(linger=0)
        self.ctx.term()


async def heard(node: BusNode, timeout: float = 0.5) -> list[tuple[str, Any]]:
    """What `node` takes within `timeout` (nothing: the empty list)."""
    try:
        return await asyncio.wait_for(node.recv_batch(), timeout)
    except TimeoutError:
        return []


async def denied(node: BusNode, reason: str) -> None:
    """Poll with a deadline until `node` has counted a denial for `reason`."""
    deadline = asyncio.get_running_loop().time() + DEADLINE
    while not node.stats.auth_denied.get(reason):
        assert asyncio.get_running_loop().time() < deadline, node.stats.auth_denied
        await heard(node, 0.05)


def test_tcp_without_keys_is_refused_never_plaintext(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs CURVE keys"):
        BusNode("a", "tcp://127.0.0.1:*")


async def test_a_link_to_a_tcp_peer_needs_keys(tmp_path: Path) -> None:
    node = BusNode("a", f"ipc://{tmp_path}/a.sock")
    await node.start()
    try:
        with pytest.raises(ValueError, match="needs CURVE keys"):
            node.connect("b", "tcp://127.0.0.1:7")
    finally:
        await node.close()


def test_a_missing_key_names_the_file_and_what_to_do(keys: CurveKeys) -> None:
    with pytest.raises(MissingKey, match=r"nic9\.key_secret .*nicteam keys"):
        keys.pair("nic9")


def test_every_key_file_is_owner_only(keys: CurveKeys) -> None:
    assert keys.directory.stat().st_mode & 0o777 == 0o700
    modes = {p.name: p.stat().st_mode & 0o777 for p in keys.directory.iterdir()}
    assert modes and set(modes.values()) == {0o600}, modes


async def test_a_client_without_curve_is_denied_at_the_handshake(server: BusNode) -> None:
    rogue = Client().named("h1")
    try:
        with capture_logs() as logs:
            rogue.sock.connect(server.endpoint)
            await rogue.sock.send(encode(Hello("h1", "host")))
            await denied(server, "handshake")
        assert server.stats.received == 0
        assert any(e["event"] == "bus.auth.denied" for e in logs), logs
    finally:
        rogue.close()


async def test_a_key_not_of_the_cluster_is_denied(
    server: BusNode, keys: CurveKeys, tmp_path: Path
) -> None:
    outsider = generate_keys(tmp_path / "outsider", ["h1"])  # even under a cluster name
    rogue = Client().curve(keys.public("nic1"), outsider.pair("h1"))
    try:
        with capture_logs() as logs:
            rogue.named("h1").sock.connect(server.endpoint)
            await rogue.sock.send(encode(Hello("h1", "host")))
            await denied(server, "unknown-key")
        assert server.stats.received == 0
        denial = [e for e in logs if e["event"] == "bus.auth.denied"]
        assert denial and denial[0]["address"] == "127.0.0.1", denial
    finally:
        rogue.close()


@pytest.mark.parametrize("routing_id", [False, True], ids=["x-name", "routing-id"])
async def test_a_cluster_key_cannot_speak_as_another_name(
    server: BusNode, keys: CurveKeys, routing_id: bool
) -> None:
    rogue = Client().curve(keys.public("nic1"), keys.pair("nic3")).named("h1", routing_id)
    try:
        with capture_logs() as logs:
            rogue.sock.connect(server.endpoint)
            await rogue.sock.send(encode(Hello("h1", "host")))
            await rogue.sock.send(encode(ControlRequest(1, "stats", {})))
            await denied(server, "name")
        assert await heard(server) == []
        assert server.stats.received == 0 and server.stats.auth_denied["name"] == 1
        (denial,) = [e for e in logs if e["event"] == "bus.auth.denied"]
        assert (denial["claimed"], denial["key"]) == ("h1", "nic3")
        assert await rogue.sock.poll(300) == 0  # no reply
    finally:
        rogue.close()


async def test_the_cli_key_speaks_only_as_cli_names(server: BusNode, keys: CurveKeys) -> None:
    cli = Client().curve(keys.public("nic1"), keys.pair(CLI)).named(f"{CLI}-7-1", routing_id=True)
    posing = Client().curve(keys.public("nic1"), keys.pair(CLI)).named("h1", routing_id=True)
    try:
        for c in (cli, posing):
            c.sock.connect(server.endpoint)
            await c.sock.send(encode(ControlRequest(1, "migrate", {})))
        got = await asyncio.wait_for(server.recv_batch(), DEADLINE)
        assert got == [(f"{CLI}-7-1", ControlRequest(1, "migrate", {}))]
        await denied(server, "name")
    finally:
        cli.close()
        posing.close()


async def test_changing_commands_only_from_the_cli_and_hosts(
    server: BusNode, keys: CurveKeys
) -> None:
    sibling = BusNode("nic3", "tcp://127.0.0.1:*", curve=keys)
    host = BusNode("h1", "tcp://127.0.0.1:*", curve=keys)
    try:
        for node in (sibling, host):
            await node.start()
            node.connect("nic1", server.endpoint)
            await asyncio.wait_for(node.wait_connected("nic1"), DEADLINE)
        with capture_logs() as logs:
            for n, cmd in enumerate(sorted(MUTATING)):
                sibling.send("nic1", ControlRequest(n, cmd, {}))
            sibling.send("nic1", Fault(FaultKind.PARTITION, "h1", 1.0))
            sibling.send("nic1", ControlRequest(99, "stats", {}))  # reading is open
            host.send("nic1", ControlRequest(100, "migrate", {}))
            got: list[tuple[str, Any]] = []
            while len(got) < 2:
                got += await asyncio.wait_for(server.recv_batch(), DEADLINE)
        assert sorted(got, key=repr) == [("h1", ControlRequest(100, "migrate", {})),
                                         ("nic3", ControlRequest(99, "stats", {}))]  # fmt: skip
        assert sum(server.stats.auth_denied.values()) == len(MUTATING) + 1
        assert {e["reason"] for e in logs if e["event"] == "bus.auth.denied"} == {
            f"command.{c}" for c in MUTATING
        }
    finally:
        await sibling.close()
        await host.close()


def test_a_daemon_on_tcp_without_its_key_exits_with_one_line(tmp_path: Path) -> None:
    text = Path("configs/default.toml").read_text()
    config_path = tmp_path / "tcp.toml"
    config_path.write_text(
        text.replace("[endpoints]\n", '[endpoints]\nnic2 = "tcp://127.0.0.1:7102"\n', 1)
    )
    config = load_config(config_path, tmp_path / "run")
    with pytest.raises(SystemExit) as exit_:
        daemon_node("nicd", config, "nic1")  # nic1 is on ipc, but talks to nic2 over tcp
    message = str(exit_.value.code)
    assert "\n" not in message
    assert message.startswith("nicd nic1: tcp endpoints need CURVE keys: no CURVE secret key")
    assert "nicteam keys" in message
    generate_keys(tmp_path / "run" / "keys", [*config.processes, CLI])
    assert daemon_node("nicd", config, "nic1").guard is not None


def test_keys_made_at_once_by_several_launchers_are_made_once(tmp_path: Path) -> None:
    names = [f"nic{i}" for i in range(20)]
    with ThreadPoolExecutor(4) as pool:
        folders = list(pool.map(lambda _: generate_keys(tmp_path, names), range(4)))
    pairs = {n: folders[0].pair(n) for n in names}
    for folder in folders:  # every launcher sees the same, whole key pairs
        assert {n: (folder.public(n), *folder.pair(n)[1:]) for n in names} == {
            n: (p[0], p[1]) for n, p in pairs.items()
        }


async def test_a_key_of_no_member_admits_nobody(tmp_path: Path) -> None:
    folder = generate_keys(tmp_path / "keys", ["nic1", "nic7"])  # nic7: another config's
    server = BusNode(
        "nic1", "tcp://127.0.0.1:*", curve=CurveKeys(folder.directory, frozenset({"nic1"}))
    )
    await server.start()
    rogue = Client().curve(folder.public("nic1"), folder.pair("nic7")).named("nic7")
    try:
        rogue.sock.connect(server.endpoint)
        await rogue.sock.send(encode(ControlRequest(1, "stats", {})))
        await denied(server, "unknown-key")
        assert server.stats.received == 0
    finally:
        rogue.close()
        await server.close()
