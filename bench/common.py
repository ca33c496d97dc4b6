"""Shared benchmark plumbing: the raw bus ceiling, timing loops, tables and JSON results."""

from __future__ import annotations

import json
import multiprocessing as mp
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import zmq

from bus.codec import decode_untrusted, encode
from bus.messages import FrameBatch

RESULTS = Path("bench/results")


def rate(run_batches: Callable[[], int], seconds: float = 1.0, repeats: int = 3) -> float:
    """Median items/s of `repeats` runs; `run_batches` does some work and returns its count."""
    rates = []
    for _ in range(repeats):
        n = 0
        start = time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds:
            n += run_batches()
        rates.append(n / elapsed)
    return statistics.median(rates)


def _push(endpoint: str, frames: list[tuple[int, bytes]], seconds: float) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    data = encode(FrameBatch("bench", frames))
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        for _ in range(64):
            sock.send(data)
    sock.close(0)
    ctx.term()


def bus_ceiling_fps(frame: bytes, batch: int = 32, seconds: float = 2.0) -> float:
    """Frames/s one process pushes to another over ZeroMQ ipc in `batch`-frame bus messages.

    The receiver decodes every message with the bus codec, as every nicteam process does.
    """
    with tempfile.TemporaryDirectory() as tmp:
        endpoint = f"ipc://{tmp}/ceiling.sock"
        ctx = zmq.Context()
        sock = ctx.socket(zmq.PULL)
        sock.setsockopt(zmq.LINGER, 0)
        sock.bind(endpoint)
        child = mp.get_context("spawn").Process(
            target=_push, args=(endpoint, [(1, frame)] * batch, seconds + 1.0)
        )
        child.start()
        try:
            sock.recv()  # the sender is up: start the clock on the next message
            frames = 0
            start = time.perf_counter()
            while (elapsed := time.perf_counter() - start) < seconds:
                msg = decode_untrusted(sock.recv())
                assert isinstance(msg, FrameBatch)  # _push sends nothing else
                frames += len(msg.frames)
            return frames / elapsed
        finally:
            child.join(timeout=5)
            if child.is_alive():
                child.kill()
            sock.close(0)
            ctx.term()


def write_results(name: str, results: dict[str, object]) -> Path:
    """Write bench/results/<name>.json and return its path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    return path


def print_table(title: str, rows: list[tuple[str, str, str]]) -> None:
    """A plain three-column table: figure, value, target or note."""
    width = max(len(r[0]) for r in rows)
    print(title)
    for name, value, note in rows:
        print(f"  {name:<{width}}  {value:>14}  {note}")
