"""Issue 14 review: a tcp connection that never completes the CURVE handshake is dropped soon.

Anyone who can reach a daemon's port (no key needed) holds one of its fds per idle connection
for libzmq's default handshake interval (30 s): opened faster than that, they exhaust the
daemon's fds, and a restarted peer of the cluster can no longer connect.
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from bus.curve import generate_keys
from bus.transport import BusNode

DEADLINE = 3.0  # a real peer completes the handshake in milliseconds


async def test_an_idle_unauthenticated_connection_is_dropped(tmp_path: Path) -> None:
    keys = generate_keys(tmp_path, ["nic1"])
    server = BusNode("nic1", "tcp://127.0.0.1:*", curve=keys)
    await server.start()
    host, port = server.endpoint.removeprefix("tcp://").rsplit(":", 1)
    conn = socket.create_connection((host, int(port)))
    conn.setblocking(False)
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DEADLINE
        closed = False
        while not closed and loop.time() < deadline:
            try:
                closed = conn.recv(4096) == b""  # the server's greeting first, then EOF
            except BlockingIOError:
                await asyncio.sleep(0.05)
            except ConnectionResetError:
                closed = True
        assert closed, f"an idle connection is still open after {DEADLINE:g} s"
    finally:
        conn.close()
        await server.close()
