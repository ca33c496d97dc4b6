"""The card: the Procfile process of a daemon, a tiny supervisor of its worker process.

A Procfile runner stops the whole cluster when any Procfile process exits, so the card never
exits because its worker died: it logs the exit, waits `reboot_delay`, and boots a new worker.
It writes the worker's pid to `run/<name>.pid` (chaos commands kill that pid), tells each worker
its boot number (`NICTEAM_BOOT`: 1, 2, ...), and, on SIGTERM or SIGINT, stops the worker and
removes the pid file and any socket file the worker left behind. A smart NIC's card supervises
its NIC OS (`python -m nicd`), a host's card its host daemon (`python -m hostd`); events are
named for the role (`nic.worker.exit`, `host.reboot`, ...).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

import structlog

from bus.rundir import private_dir, write_private

STOP_GRACE_S = 3.0
BOOT_ENV = "NICTEAM_BOOT"


def boot_number() -> int:
    """This worker's boot number from its card (1 when started without one)."""
    try:
        return max(1, int(os.environ.get(BOOT_ENV, "1")))
    except ValueError:
        return 1


class Card:
    """Boot, watch and reboot one worker until told to stop."""

    def __init__(self, worker_cmd: list[str], pid_path: Path, socket_path: Path | None,
                 reboot_delay: float, role: str = "nic") -> None:  # fmt: skip
        self.worker_cmd = worker_cmd
        self.pid_path = pid_path
        self.socket_path = socket_path
        self.reboot_delay = reboot_delay
        self.role = role
        self.log = structlog.get_logger()
        self.boots = 0
        self._stopping = False
        self._worker: subprocess.Popen[bytes] | None = None

    def stop(self, signum: int = signal.SIGTERM, frame: FrameType | None = None) -> None:
        """Signal handler: stop rebooting and ask the worker to exit."""
        self._stopping = True
        worker = self._worker
        if worker is not None and worker.poll() is None:
            worker.send_signal(signal.SIGTERM)

    def run(self) -> int:
        """Supervise until stopped; returns the exit status of the card (always 0)."""
        while not self._stopping:
            self._boot()
            code = self._wait()
            self._cleanup_socket()
            self.log.info(f"{self.role}.worker.exit", code=code, boots=self.boots)
            if self._stopping:
                break
            self.log.info(f"{self.role}.reboot", delay_s=self.reboot_delay)
            self._sleep(self.reboot_delay)
        with contextlib.suppress(FileNotFoundError):
            self.pid_path.unlink()
        self.log.info(f"{self.role}.card.stop")
        return 0

    def _boot(self) -> None:
        self.boots += 1
        env = os.environ | {BOOT_ENV: str(self.boots)}
        self._worker = subprocess.Popen(self.worker_cmd, env=env)
        private_dir(self.pid_path.parent)
        write_private(self.pid_path, f"{self._worker.pid}\n")  # atomic: never half-written
        self.log.info(f"{self.role}.worker.start", pid=self._worker.pid, boots=self.boots)

    def _wait(self) -> int:
        worker = self._worker
        assert worker is not None
        kill_at: float | None = None
        while True:
            # Short waits, not one endless one: a SIGTERM handler returns into wait(), which
            # would resume with no timeout, and a hung (SIGSTOPped) worker would never stop.
            try:
                return worker.wait(timeout=0.1)
            except subprocess.TimeoutExpired:
                pass
            if not self._stopping:
                continue
            if kill_at is None:
                kill_at = time.monotonic() + STOP_GRACE_S
            elif time.monotonic() >= kill_at:
                self.log.warning(f"{self.role}.worker.kill", pid=worker.pid)
                worker.kill()
                kill_at = float("inf")

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self._stopping and (left := deadline - time.monotonic()) > 0:
            time.sleep(min(left, 0.05))

    def _cleanup_socket(self) -> None:
        # A SIGKILLed worker cannot remove its ipc socket file; the card does.
        if self.socket_path is not None:
            with contextlib.suppress(FileNotFoundError):
                self.socket_path.unlink()


def run_card(card: Card) -> None:
    """Supervise until SIGTERM or SIGINT, then exit 0."""
    signal.signal(signal.SIGTERM, card.stop)
    signal.signal(signal.SIGINT, card.stop)
    sys.exit(card.run())
