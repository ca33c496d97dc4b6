"""The NIC's read-only control commands: conntrack, flows, trace, capture.

They read the worker's pipeline and port taps and answer plain dicts; nothing here changes how
a frame is decided. A bad argument is an error answer, never an exception in the loop.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from nicd.capture import CaptureError, Captures
from nicd.datapath.pipeline import Pipeline
from nicd.inspect import MAX_ROWS, TIERS, conntrack_rows, flow_rows
from nicd.tracespec import resolve_port, trace_packet

Answer = tuple[bool, dict[str, Any], str]  # ok, result, error


def _int(args: dict[str, Any], key: str, default: int, lo: int = 0) -> int:
    value = args.get(key, default)
    if type(value) is not int or value < lo:
        raise ValueError(f"{key} must be an int >= {lo}, not {value!r}")
    return value


class InspectCommands:
    """Control commands of one NIC that read its datapath; `table()` maps names to handlers."""

    def __init__(self, pipeline: Callable[[], Pipeline | None], now: Callable[[], float]) -> None:
        self._pipeline = pipeline
        self._now = now
        self.captures = Captures()

    def table(self) -> dict[str, Callable[[dict[str, Any]], Answer]]:
        """Command name -> handler."""
        commands = {
            "conntrack": self._conntrack,
            "flows": self._flows,
            "trace": self._trace,
            "capture-start": self._capture_start,
            "capture-read": self._capture_read,
            "capture-stop": self._capture_stop,
        }
        return {name: self._guarded(name, fn) for name, fn in commands.items()}

    def _guarded(
        self, name: str, fn: Callable[[Pipeline, dict[str, Any]], dict[str, Any]]
    ) -> Callable[[dict[str, Any]], Answer]:
        def handler(args: dict[str, Any]) -> Answer:
            p = self._pipeline()
            if p is None:
                return False, {}, f"{name}: no policy yet (the NIC is starting)"
            try:
                return True, fn(p, args), ""
            except ValueError as e:  # CaptureError too; the client names the command
                return False, {}, str(e)

        return handler

    def _conntrack(self, p: Pipeline, args: dict[str, Any]) -> dict[str, Any]:
        """Records like `conntrack -L`: `limit` rows at most (the oldest first)."""
        return conntrack_rows(p.ct, self._now(), _int(args, "limit", MAX_ROWS))

    def _flows(self, p: Pipeline, args: dict[str, Any]) -> dict[str, Any]:
        """Fast-tier entries and slow-path flows, of one tier or all."""
        tier = args.get("tier")
        if tier is not None and tier not in TIERS:
            raise ValueError(f"tier must be one of {', '.join(TIERS)}, not {tier!r}")
        return flow_rows(p, tier, self._now(), _int(args, "limit", MAX_ROWS))

    def _trace(self, p: Pipeline, args: dict[str, Any]) -> dict[str, Any]:
        """What the datapath would do with a described packet entering a port (a dry run)."""
        port, spec = args.get("port"), args.get("spec")
        if not isinstance(port, str) or not isinstance(spec, str):
            raise ValueError("give port (a VM or uplink name) and spec ('tcp dst=... dport=...')")
        return trace_packet(p, port, spec, self._now()).as_dict()

    def _capture_start(self, p: Pipeline, args: dict[str, Any]) -> dict[str, Any]:
        port = args.get("port")
        if not isinstance(port, str):
            raise ValueError("port must be a port name (a VM, or an uplink like nic1/p0)")
        kind, ppid = resolve_port(p, port)
        count, snaplen = _int(args, "count", 0), _int(args, "snaplen", 65535, 14)
        tap = self.captures.start(kind, ppid, count, snaplen, self._now())
        return {"id": tap, "kind": "uplink" if kind else "vf", "ppid": ppid}

    def _capture_read(self, p: Pipeline, args: dict[str, Any]) -> dict[str, Any]:
        return self.captures.read(_int(args, "id", 0), self._now())

    def _capture_stop(self, p: Pipeline, args: dict[str, Any]) -> dict[str, Any]:
        if not self.captures.stop(_int(args, "id", 0)):
            raise CaptureError(f"no capture {args.get('id')!r}")
        return {"stopped": True}
