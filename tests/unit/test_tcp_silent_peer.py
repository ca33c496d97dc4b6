"""A tcp peer that goes silent without closing (a machine cut off, or frozen) is seen down.

The peer is a real BusNode in a child process, frozen with SIGSTOP: its kernel keeps the TCP
connection open and sends no FIN, so only the bus's ZMTP heartbeats can tell.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bus.curve import CurveKeys, generate_keys
from bus.transport import TCP_HEARTBEAT_TIMEOUT_MS, BusNode
from tests.ports import unused_ports

PEER = """
import asyncio, sys
from pathlib import Path
from bus.curve import CurveKeys
from bus.transport import BusNode
async def main():
    node = BusNode("peer", sys.argv[1], curve=CurveKeys(Path(sys.argv[2])))
    await node.start()
    print("ready", flush=True)
    await asyncio.sleep(3600)
asyncio.run(main())
"""


@pytest.fixture
def keys(tmp_path: Path) -> CurveKeys:
    return generate_keys(tmp_path / "keys", ["me", "peer"])


@pytest.fixture
def peer_process(keys: CurveKeys) -> Iterator[tuple[subprocess.Popen[str], str]]:
    endpoint = f"tcp://127.0.0.1:{unused_ports(1)}"
    argv = [sys.executable, "-c", PEER, endpoint, str(keys.directory)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE,
                            text=True, cwd=os.getcwd())  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        yield proc, endpoint
    finally:
        proc.kill()  # SIGKILL also ends a stopped process
        proc.wait(5)


async def test_a_frozen_tcp_peer_is_declared_down_within_the_heartbeat_timeout(
    nodes: list[BusNode], peer_process: tuple[subprocess.Popen[str], str], keys: CurveKeys
) -> None:
    proc, endpoint = peer_process
    node = BusNode("me", "tcp://127.0.0.1:*", curve=keys)
    nodes.append(node)
    await node.start()
    down = asyncio.Event()
    node.on_peer_disconnect(lambda peer: down.set())
    node.connect("peer", endpoint)
    await asyncio.wait_for(node.wait_connected("peer"), 5.0)
    os.kill(proc.pid, signal.SIGSTOP)
    t0 = time.monotonic()
    await asyncio.wait_for(down.wait(), TCP_HEARTBEAT_TIMEOUT_MS / 1000 * 3)
    assert not node.is_connected("peer")
    assert time.monotonic() - t0 >= TCP_HEARTBEAT_TIMEOUT_MS / 1000 / 2
