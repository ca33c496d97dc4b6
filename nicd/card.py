"""The card: the Procfile process of a NIC, a tiny supervisor of its NIC OS worker.

A Procfile runner stops the whole cluster when any Procfile process exits, so the card never
exits because its worker died: it logs the exit, waits `reboot_delay`, and boots a new worker.
It writes the worker's pid to `run/<nic>.pid` (chaos commands kill that pid) and, on SIGTERM or
SIGINT, stops the worker and removes the pid file and any socket file the worker left behind.

    python -m nicd --config configs/default.toml --nic nic1
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

import structlog

from bus.log import configure_logging
from bus.runtime import daemon_args
from bus.transport import ipc_path

STOP_GRACE_S = 3.0


class Card:
    """Boot, watch and reboot one NIC OS worker until told to stop."""

    def __init__(self, worker_cmd: list[str], pid_path: Path, socket_path: Path | None,
                 reboot_delay: float) -> None:  # fmt: skip
        self.worker_cmd = worker_cmd
        self.pid_path = pid_path
        self.socket_path = socket_path
        self.reboot_delay = reboot_delay
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
            self.log.info("nic.worker.exit", code=code, boots=self.boots)
            if self._stopping:
                break
            self.log.info("nic.reboot", delay_s=self.reboot_delay)
            self._sleep(self.reboot_delay)
        with contextlib.suppress(FileNotFoundError):
            self.pid_path.unlink()
        self.log.info("nic.card.stop")
        return 0

    def _boot(self) -> None:
        self._worker = subprocess.Popen(self.worker_cmd)
        self.boots += 1
        self.pid_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.pid_path.with_suffix(".pid.tmp")
        tmp.write_text(f"{self._worker.pid}\n")
        tmp.replace(self.pid_path)  # readers never see a half-written pid
        self.log.info("nic.worker.start", pid=self._worker.pid, boots=self.boots)

    def _wait(self) -> int:
        worker = self._worker
        assert worker is not None
        while True:
            try:
                return worker.wait(timeout=STOP_GRACE_S if self._stopping else None)
            except subprocess.TimeoutExpired:
                self.log.warning("nic.worker.kill", pid=worker.pid)
                worker.kill()

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self._stopping and (left := deadline - time.monotonic()) > 0:
            time.sleep(min(left, 0.05))

    def _cleanup_socket(self) -> None:
        # A SIGKILLed worker cannot remove its ipc socket file; the card does.
        if self.socket_path is not None:
            with contextlib.suppress(FileNotFoundError):
                self.socket_path.unlink()


def main(argv: list[str] | None = None) -> None:
    """Entry point of the card process (`python -m nicd`)."""
    config, nic = daemon_args("nicd", __doc__, "nic", argv)
    spec = config.nic(nic)
    configure_logging(f"{nic}-card", config.run_dir, host=spec.host, nic=nic)
    cmd = [sys.executable, "-m", "nicd.worker", "--config", str(config.path), "--nic", nic,
           "--run-dir", str(config.run_dir)]  # fmt: skip
    card = Card(cmd, config.run_dir / f"{nic}.pid", ipc_path(config.endpoint(nic)),
                config.timers.reboot_delay_s)  # fmt: skip
    signal.signal(signal.SIGTERM, card.stop)
    signal.signal(signal.SIGINT, card.stop)
    sys.exit(card.run())


if __name__ == "__main__":
    main()
