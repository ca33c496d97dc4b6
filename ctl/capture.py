"""`nicteam capture NIC/PORT`: a NIC's port tap drained into a pcap file (or printed).

The NIC copies every frame in and out of the port into the tap; this side reads it every
`POLL_S` and writes pcap records, until `count` frames, `seconds`, Ctrl-C or SIGTERM (both only
set a flag the loop reads between records, so no record is cut short). The tap is always
removed on the way out (and the NIC drops it by itself if this process dies).
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from configs import Config
from ctl.client import ControlError, request

POLL_S = 0.05


@dataclass(slots=True)
class CaptureResult:
    """How a capture ended: frames written, frames the NIC took, frames lost to reader lag."""

    written: int
    taken: int
    missed: int


def split_port(config: Config, spec: str) -> tuple[str, str]:
    """`nic1/p0` (an uplink), `nic1/web1` or `nic1/app1/0` (a VM's VF) -> (NIC, port name)."""
    nic, _, port = spec.partition("/")
    names = [n.name for n in config.nics]
    if nic not in names or not port:
        raise ValueError(
            f"{spec!r}: give NIC/PORT, e.g. nic1/p0 or nic1/web1 (NICs: {', '.join(names)})"
        )
    return nic, port  # the NIC names its ports itself (`p0` is its uplink nic1/p0)


def capture(
    config: Config,
    spec: str,
    sink: Callable[[float, str, bytes, int], None],
    count: int = 0,
    seconds: float | None = None,
    snaplen: int = 65535,
    stop: threading.Event | None = None,
) -> CaptureResult:
    """Tap NIC/PORT and give each frame to `sink(ts, direction, frame, original length)`;
    ends early once `stop` is set."""
    stop = stop or threading.Event()
    nic, port = split_port(config, spec)
    tap = request(config, nic, "capture-start", {"port": port, "count": count, "snaplen": snaplen})
    deadline = None if seconds is None else time.monotonic() + seconds
    written = 0
    got: dict[str, Any] = {"taken": 0, "missed": 0}
    try:
        while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
            got = request(config, nic, "capture-read", {"id": tap["id"]})
            for ts, direction, frame, length in got["frames"]:
                sink(ts, direction, frame, length)
                written += 1
            if got["done"]:
                break
            stop.wait(POLL_S)
    except KeyboardInterrupt:
        pass  # Ctrl-C ends a capture, as in tcpdump: what was taken is kept
    finally:
        with contextlib.suppress(ControlError):
            request(config, nic, "capture-stop", {"id": tap["id"]}, timeout=1.0)
    return CaptureResult(written, got["taken"], got["missed"])


@contextlib.contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """An Event SIGTERM and SIGINT set while the block runs (instead of killing mid-write)."""
    stop = threading.Event()
    handler = lambda signum, frame: stop.set()  # noqa: E731
    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stop
    finally:
        for sig, previous in old.items():
            signal.signal(sig, previous)


def as_dict(r: CaptureResult) -> dict[str, Any]:
    """The result for --json."""
    return {"written": r.written, "taken": r.taken, "missed": r.missed}
