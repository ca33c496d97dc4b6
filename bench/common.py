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
from bus.curve import CurveKeys, generate_keys
from bus.messages import FrameBatch

RESULTS = Path("bench/results")
TRANSPORTS = ("ipc", "tcp_curve")
_SINK, _SOURCE = "bench-sink", "bench-source"


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


def _push(
    endpoint: str, frames: list[tuple[int, bytes]], seconds: float, keys: Path | None = None
) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, 0)
    if keys is not None:  # a CURVE client of the sink, under a key of the cluster's key folder
        curve = CurveKeys(keys)
        public, secret = curve.pair(_SOURCE)
        sock.setsockopt(zmq.CURVE_SERVERKEY, curve.public(_SINK))
        sock.setsockopt(zmq.CURVE_PUBLICKEY, public)
        sock.setsockopt(zmq.CURVE_SECRETKEY, secret)
    sock.connect(endpoint)
    data = encode(FrameBatch("bench", frames))
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        for _ in range(64):
            sock.send(data)
    sock.close(0)
    ctx.term()


def bus_ceiling_fps(
    frame: bytes, batch: int = 32, seconds: float = 2.0, transport: str = "ipc"
) -> float:
    """Frames/s one process pushes to another over ZeroMQ in `batch`-frame bus messages.

    `transport` is "ipc", or "tcp_curve": tcp on 127.0.0.1 encrypted with CURVE keys made as
    `nicteam` makes them (the key check is in the handshake; the ceiling is the per-message
    cost). The receiver decodes every message with the bus codec, as every nicteam process does.
    """
    if transport not in TRANSPORTS:
        raise ValueError(f"transport: {transport!r} is not one of {', '.join(TRANSPORTS)}")
    with tempfile.TemporaryDirectory() as tmp:
        ctx = zmq.Context()
        sock = ctx.socket(zmq.PULL)
        sock.setsockopt(zmq.LINGER, 0)
        keys = None
        if transport == "tcp_curve":
            keys = generate_keys(Path(tmp) / "keys", [_SINK, _SOURCE]).directory
            public, secret = CurveKeys(keys).pair(_SINK)
            sock.setsockopt(zmq.CURVE_SERVER, 1)
            sock.setsockopt(zmq.CURVE_PUBLICKEY, public)
            sock.setsockopt(zmq.CURVE_SECRETKEY, secret)
            sock.bind("tcp://127.0.0.1:*")
        else:
            sock.bind(f"ipc://{tmp}/ceiling.sock")
        endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        child = mp.get_context("spawn").Process(
            target=_push, args=(endpoint, [(1, frame)] * batch, seconds + 1.0, keys)
        )
        child.start()
        try:
            return _pull(sock, seconds)
        finally:
            child.terminate()  # measured: the sender's remaining second is not waited for
            child.join(timeout=5)
            if child.is_alive():
                child.kill()
            sock.close(0)
            ctx.term()


def _pull(sock: zmq.Socket[bytes], seconds: float) -> float:
    """Frames/s decoded from `sock` over `seconds`, from its second message on."""
    sock.recv()  # the sender is up: start the clock on the next message
    frames = 0
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        msg = decode_untrusted(sock.recv())
        assert isinstance(msg, FrameBatch)  # _push sends nothing else
        frames += len(msg.frames)
    return frames / elapsed


def write_results(name: str, results: dict[str, object], path: Path | None = None) -> Path:
    """Write bench/results/<name>.json (or `path`) and return its path."""
    if path is None:
        path = RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    return path


def print_table(title: str, rows: list[tuple[str, str, str]]) -> None:
    """A plain three-column table: figure, value, target or note."""
    width = max(len(r[0]) for r in rows)
    print(title)
    for name, value, note in rows:
        print(f"  {name:<{width}}  {value:>14}  {note}")
