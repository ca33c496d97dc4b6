"""Transmit-only handover throughput over the private channel, next to the raw bus ceiling.

    python -m bench.handover      (prints a table, writes bench/results/handover.json)

A sender process plays nic1: it pushes `Handover(TRANSMIT)` messages of 32 frames, each for
an uplink of nic2, as fast as the bus takes them. Phase 1 (the ceiling): the bench process binds
nic2's endpoint itself and only decodes and counts. Phase 2: a real NIC OS worker for nic2 (the
default config's) receives them, checks them and puts them on its uplink; the bench process,
bound as fabricd, counts the frames that arrive on the wire. Same transport, messages, batch.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import uvloop

from bench.common import print_table, write_results
from bus.messages import FrameBatch, Handover, HandoverKind, Hello, MapUpdate, PolicyUpdate
from bus.transport import BusNode
from configs import DEFAULT_CONFIG, FABRICD, Config, load_config
from hostd.daemon import HostDaemon
from wire import build
from wire.addr import mac_bytes
from wire.protocols import TCP_ACK

BATCH = 32
SENDER, RECEIVER, HOST = "nic1", "nic2", "h1"


def _frame() -> bytes:
    from ipaddress import IPv4Address

    a, b = mac_bytes("02:00:00:00:01:11"), mac_bytes("02:00:00:00:0e:01")
    return build.tcp_frame(a, b, IPv4Address("10.0.10.11"), IPv4Address("10.0.10.200"), 40000,
                           80, TCP_ACK, payload=b"x" * 64, vlan=10)  # fmt: skip


async def send(config: Config, seconds: float) -> None:
    """The sender: Handover batches to nic2 for `seconds`, backing off when the bus is full."""
    node = BusNode(SENDER, config.endpoint(SENDER))
    await node.start()
    node.connect(RECEIVER, config.endpoint(RECEIVER))
    await asyncio.wait_for(node.wait_connected(RECEIVER), 30)
    msg = Handover(SENDER, HandoverKind.TRANSMIT, [(1, _frame())] * BATCH)
    from bus.codec import encode

    data = encode(msg)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for _ in range(64):
            if not node.send_raw(RECEIVER, data):
                await asyncio.sleep(0.0005)  # the queue is full: let the receiver drain
                break
        await asyncio.sleep(0)
    await node.close()


def _sender(config: Config, seconds: float) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "bench.handover", "--send", "--run-dir", str(config.run_dir),
           "--seconds", str(seconds)]  # fmt: skip
    return subprocess.Popen(cmd)


async def _count(node: BusNode, seconds: float, kind: type[Handover] | type[FrameBatch]) -> float:
    """Frames/s arriving at `node` in messages of `kind`, over `seconds` after the first one."""
    while not any(isinstance(m, kind) for _, m in await node.recv_batch()):
        pass
    frames = 0
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        try:
            batch = await asyncio.wait_for(node.recv_batch(1024), seconds - elapsed)
        except TimeoutError:
            break
        frames += sum(len(m.frames) for _, m in batch if isinstance(m, kind))
    return frames / (time.perf_counter() - start)


async def ceiling(config: Config, seconds: float) -> float:
    """Phase 1: the sender straight to a receiver that only decodes."""
    node = BusNode(RECEIVER, config.endpoint(RECEIVER))
    await node.start()
    sender = _sender(config, seconds + 3)
    try:
        return await _count(node, seconds, Handover)
    finally:
        await node.close()
        sender.wait(30)


async def handover(config: Config, seconds: float) -> tuple[float, dict[str, object]]:
    """Phase 2: the sender to a real nic2 worker, counted on the wire at fabricd."""
    host = BusNode(HOST, config.endpoint(HOST))
    fabric = BusNode(FABRICD, config.endpoint(FABRICD))
    await host.start()
    await fabric.start()
    stand_in = HostDaemon(config, config.host(HOST), host)  # for its policy and map only
    cmd = [sys.executable, "-m", "nicd.worker", "--config", str(config.path), "--nic", RECEIVER,
           "--run-dir", str(config.run_dir)]  # fmt: skip
    worker = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    host.connect(RECEIVER, config.endpoint(RECEIVER))
    try:
        while True:  # answer the worker's hello with the policy and the map
            got = await asyncio.wait_for(host.recv_batch(), 30)
            if any(isinstance(m, Hello) for _, m in got):
                await asyncio.wait_for(host.wait_connected(RECEIVER), 30)
                host.send(RECEIVER, PolicyUpdate(1, stand_in.policy()))
                host.send(RECEIVER, MapUpdate(stand_in.fpag.epoch, stand_in.fpag.entries()))
                break
        sender = _sender(config, seconds + 3)
        fps = await _count(fabric, seconds, FrameBatch)
        sender.wait(30)
        from ctl.client import control

        stats = await asyncio.to_thread(control, config.endpoint(RECEIVER), "stats")
        return fps, {"drops": stats.get("drops", {}), "bus": stats.get("bus", {})}
    finally:
        worker.terminate()
        worker.wait(10)
        await host.close()
        await fabric.close()


async def run(seconds: float, rounds: int) -> dict[str, object]:
    """Both phases, alternated `rounds` times in one run; medians, and every sample."""
    buses, handovers = [], []
    worker: dict[str, object] = {}
    for _ in range(rounds):
        with tempfile.TemporaryDirectory(prefix="nt-bench-") as tmp:
            config = load_config(DEFAULT_CONFIG, Path(tmp))
            buses.append(await ceiling(config, seconds))
            fps, worker = await handover(config, seconds)
            handovers.append(fps)
    bus, fps = statistics.median(buses), statistics.median(handovers)
    return {
        "batch": BATCH,
        "bus_ceiling_fps": round(bus),
        "handover_fps": round(fps),
        "handover_vs_ceiling": round(fps / bus, 3),
        "samples": {
            "bus_ceiling_fps": [round(b) for b in buses],
            "handover_fps": [round(h) for h in handovers],
        },
        "receiver_last_round": worker,
    }


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark (or, with --send, be its sender process)."""
    parser = argparse.ArgumentParser(prog="bench.handover", description=__doc__)
    parser.add_argument("--send", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    if args.send:
        uvloop.run(send(load_config(DEFAULT_CONFIG, args.run_dir), args.seconds))
        return
    results = uvloop.run(run(args.seconds, args.rounds))
    path = write_results("handover", results)
    bus, fps = results["bus_ceiling_fps"], results["handover_fps"]
    print_table(
        f"nicteam transmit-only handover (batches of {BATCH}, ipc; medians of {args.rounds})",
        [
            ("raw bus ceiling", f"{bus:,} f/s", "sender -> receiver that only decodes"),
            ("handover", f"{fps:,} f/s", "sender -> nic2 worker -> uplink (counted at fabricd)"),
            ("ratio", f"{results['handover_vs_ceiling']}", "target >= 0.5"),
        ],
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
