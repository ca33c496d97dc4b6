"""Port taps for `nicteam capture`: copies of the frames crossing one port of a NIC. Sans-I/O.

A tap names a VF (a VM's port) or one of our uplinks, and takes every frame that enters or
leaves it, stamped with the wall clock (pcap wants epoch time), until `count` frames. The CLI
drains it with `read` over the control socket; a reader that falls behind loses frames (counted,
never blocking the datapath), and a tap nobody reads for `IDLE_S` is removed, so a CLI killed
mid-capture leaves nothing running.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

BUFFER_FRAMES = 8192  # per tap, between two reads
READ_BYTES = 4 * 1024 * 1024  # one control reply stays well under the bus's 8 MiB
IDLE_S = 10.0
IN, OUT = "in", "out"


class CaptureError(ValueError):
    """A capture request that cannot be served (unknown tap, bad count)."""


@dataclass(slots=True)
class Tap:
    """One port's tap: (kind, PPID) with kind 0 a VF and 1 an uplink (as `PortKind`)."""

    id: int
    kind: int
    ppid: int
    count: int  # frames to take in all; 0 is no limit
    snaplen: int
    last_read: float
    frames: list[tuple[float, str, bytes, int]] = field(default_factory=list)  # +original length
    taken: int = 0
    missed: int = 0  # frames lost because the reader fell behind

    @property
    def full(self) -> bool:
        return bool(self.count) and self.taken >= self.count


class Captures:
    """Every tap of one NIC; the worker feeds it the frames of each batch while `taps` is set."""

    def __init__(self) -> None:
        self.taps: dict[int, Tap] = {}
        self._ids = itertools.count(1)
        self._by_port: dict[tuple[int, int], list[Tap]] = {}

    def start(self, kind: int, ppid: int, count: int, snaplen: int, now: float) -> int:
        """Open a tap on port (kind, PPID); returns its id."""
        if count < 0 or snaplen < 14:
            raise CaptureError(f"count must be >= 0 and snaplen >= 14, not {count}, {snaplen}")
        tap = Tap(next(self._ids), kind, ppid, count, snaplen, now)
        self.taps[tap.id] = tap
        self._by_port.setdefault((kind, ppid), []).append(tap)
        return tap.id

    def see(
        self, kind: int, direction: str, frames: Iterable[tuple[int, bytes]], wall: float
    ) -> None:
        """Frames of one batch crossing ports of `kind` in `direction`: (PPID, frame) pairs."""
        by_port = self._by_port
        for ppid, frame in frames:
            taps = by_port.get((kind, ppid))
            if taps is None:
                continue
            for tap in taps:
                if tap.full:
                    continue
                tap.taken += 1
                if len(tap.frames) >= BUFFER_FRAMES:
                    tap.missed += 1
                    continue
                tap.frames.append((wall, direction, frame[: tap.snaplen], len(frame)))

    def read(self, tap_id: int, now: float) -> dict[str, Any]:
        """What the tap took since the last read (up to `READ_BYTES`), and whether it is done."""
        tap = self.taps.get(tap_id)
        if tap is None:
            raise CaptureError(f"no capture {tap_id} (finished, stopped or idle > {IDLE_S:g} s)")
        tap.last_read = now
        size, n = 0, 0
        for _, _, frame, _ in tap.frames:
            size += len(frame) + 32
            if size > READ_BYTES:
                break
            n += 1
        out, tap.frames = tap.frames[:n], tap.frames[n:]
        done = tap.full and not tap.frames
        if done:
            self.stop(tap_id)
        return {
            "frames": [[ts, d, f, n] for ts, d, f, n in out],
            "taken": tap.taken,
            "missed": tap.missed,
            "done": done,
        }

    def stop(self, tap_id: int) -> bool:
        """Remove a tap; False if there was none."""
        tap = self.taps.pop(tap_id, None)
        if tap is None:
            return False
        port = self._by_port[(tap.kind, tap.ppid)]
        port.remove(tap)
        if not port:
            del self._by_port[(tap.kind, tap.ppid)]
        return True

    def expire(self, now: float) -> list[int]:
        """Remove taps no reader asked for in `IDLE_S`; their ids."""
        idle = [t.id for t in self.taps.values() if now - t.last_read > IDLE_S]
        for tap_id in idle:
            self.stop(tap_id)
        return idle
