"""Faults injected into a running cluster, each logged as a `chaos.*` event for the report.

No root needed: a NIC's OS worker is killed or paused with signals (its card wrote the pid to
`<run_dir>/<nic>.pid`), and a partition of the private channel is a bus fault both NICs apply.
Events go to `<run_dir>/logs/ctl.jsonl`, beside the daemons' own, so one merge of the logs
has the fault and everything that followed it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import structlog

from bus.log import configure_logging
from configs.loader import Config
from ctl.client import control


class ChaosError(RuntimeError):
    """The fault cannot be injected (no such NIC, NIC not running); the message says why."""


class Chaos:
    """Fault injection against the cluster of one config and run directory."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.log = configure_logging("ctl", config.run_dir, console=False)

    def worker_pid(self, nic: str) -> int:
        """The pid of `nic`'s OS worker, from the pid file its card keeps."""
        names = [n.name for n in self.config.nics]
        if nic not in names:
            raise ChaosError(f"unknown NIC {nic!r}; NICs: {', '.join(names)}")
        path = self.config.run_dir / f"{nic}.pid"
        try:
            pid = int(path.read_text())
        except (OSError, ValueError):
            msg = f"{nic} is not running: no pid in {path} (is the cluster up?)"
            raise ChaosError(msg) from None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            msg = f"{nic}: its worker (pid {pid}) is gone; it may be rebooting"
            raise ChaosError(msg) from None
        return pid

    def kill(self, nic: str) -> int:
        """SIGKILL `nic`'s OS worker (its card reboots it); returns the pid killed."""
        pid = self.worker_pid(nic)
        self.log.warning("chaos.kill", nic=nic, pid=pid)
        os.kill(pid, signal.SIGKILL)
        return pid

    @contextlib.contextmanager
    def paused(self, nic: str) -> Iterator[int]:
        """SIGSTOP `nic`'s OS worker for the body of the `with`; SIGCONT however it ends."""
        pid = self.worker_pid(nic)
        self.log.warning("chaos.pause", nic=nic, pid=pid)
        os.kill(pid, signal.SIGSTOP)
        try:
            yield pid
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
            self.log.warning("chaos.resume", nic=nic, pid=pid)

    def pause(self, nic: str, seconds: float, tick: Callable[[float], None] | None = None) -> int:
        """Pause `nic` for `seconds` (a hang); `tick(left)` is called while waiting."""
        with self.paused(nic) as pid:
            deadline = time.monotonic() + seconds
            while (left := deadline - time.monotonic()) > 0:
                if tick is not None:
                    tick(left)
                time.sleep(min(left, 0.1))
        return pid

    def partition(self, a: str, b: str, seconds: float) -> dict[str, Any]:
        """Drop everything on the private channel between NICs `a` and `b` for `seconds`."""
        if a == b:
            raise ChaosError("a partition needs two different NICs")
        spec_a, spec_b = self._nic(a), self._nic(b)
        if spec_a.host != spec_b.host:
            raise ChaosError(f"{a} and {b} are on different hosts: they share no private channel")
        self.log.warning("chaos.partition", nics=[a, b], seconds=seconds)
        out = {}
        for nic, peer in ((a, b), (b, a)):
            args = {"kind": "partition", "peer": peer, "seconds": seconds}
            out[nic] = control(self.config.endpoint(nic), "fault", args, timeout=3.0)
        return out

    def _nic(self, name: str) -> Any:
        try:
            return self.config.nic(name)
        except KeyError:
            names = ", ".join(n.name for n in self.config.nics)
            raise ChaosError(f"unknown NIC {name!r}; NICs: {names}") from None


def note(config: Config, event: str, **fields: Any) -> None:
    """Log a chaos event of the CLI's own (e.g. a cable pulled) to the run's logs."""
    configure_logging("ctl", config.run_dir, console=False)
    structlog.get_logger().warning(event, **fields)
