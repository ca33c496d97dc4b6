"""The ceiling of bench.e2e: two fresh namespaces whose TAPs one relay process joins, with no NIC.

The relay is hostd's TAP I/O and nothing else: one uvloop loop, `loop.add_reader` on both TAP
fds, each readable TAP drained with `Tap.read_batch` and written to the other with
`Tap.write_batch`. Whatever the cluster paths fall short of it is the NICs' and the bus's cost.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import signal
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Interface
from multiprocessing.synchronize import Event

import uvloop

from kernel import netns
from kernel.tap import Tap, open_tap

IFNAME = "eth0"
# The pair's addresses and MACs: its own namespaces, so they collide with nothing.
SERVER_IP, CLIENT_IP = IPv4Interface("10.0.10.21/24"), IPv4Interface("10.0.10.23/24")
SERVER_MAC, CLIENT_MAC = bytes.fromhex("020000000121"), bytes.fromhex("020000000123")
READY_S = 15.0


@dataclass(frozen=True)
class Pair:
    """Two namespaces joined by the relay: run the server in `server`, the client in `client`."""

    server: str
    client: str
    server_ip: str
    relay_pid: int


def _pump(src: Tap, dst: Tap, counts: list[int]) -> None:
    """One readable TAP drained onto the other, as hostd drains a TAP onto a VF port."""
    frames = src.read_batch(256)
    counts[0] += len(frames)
    counts[1] += len(frames) - dst.write_batch(frames)


async def _relay(a_ns: str, b_ns: str, ready: Event) -> None:
    a = open_tap(a_ns, IFNAME, create=False)
    b = open_tap(b_ns, IFNAME, create=False)
    counts = [0, 0]  # frames relayed, frames the other TAP refused
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_reader(a.fd, _pump, a, b, counts)
    loop.add_reader(b.fd, _pump, b, a, counts)
    ready.set()
    await stop.wait()
    for tap in (a, b):
        loop.remove_reader(tap.fd)
        tap.close()


def relay_main(a_ns: str, b_ns: str, ready: Event) -> None:
    """The relay process: TAP `eth0` of `a_ns` and of `b_ns` joined until SIGTERM."""
    uvloop.run(_relay(a_ns, b_ns, ready))


def _make(ns: str, mac: bytes, addr: IPv4Interface) -> None:
    netns.create(ns)
    with open_tap(ns, IFNAME, create=True):  # persistent: the relay attaches to it
        pass
    netns.configure(ns, IFNAME, mac, [addr])


@contextlib.contextmanager
def relay_pair() -> Iterator[Pair]:
    """Two fresh namespaces and their relay; everything removed on the way out."""
    tag = f"nt-e2e-{uuid.uuid4().hex[:8]}"
    server, client = netns.namespace(tag, "server"), netns.namespace(tag, "client")
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    proc: mp.process.BaseProcess | None = None
    try:
        _make(server, SERVER_MAC, SERVER_IP)
        _make(client, CLIENT_MAC, CLIENT_IP)
        proc = ctx.Process(target=relay_main, args=(server, client, ready), name="tap-relay")
        proc.start()
        if not ready.wait(READY_S):
            raise RuntimeError(f"the TAP relay was not ready in {READY_S:g} s")
        assert proc.pid is not None
        yield Pair(server, client, str(SERVER_IP.ip), proc.pid)
    finally:
        if proc is not None:
            proc.terminate()
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
        for ns in (client, server):
            netns.destroy(ns)
