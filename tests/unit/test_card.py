"""The card: a worker that ignores SIGTERM (or is stopped) is killed after the grace period."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

from bus.card import STOP_GRACE_S, Card


def test_a_worker_that_will_not_stop_is_killed_after_the_grace(tmp_path: Path) -> None:
    cmd = ["sh", "-c", 'trap "" TERM; while :; do sleep 0.05; done']
    card = Card(cmd, tmp_path / "w.pid", None, reboot_delay=0.1, role="host")
    done: list[int] = []
    runner = threading.Thread(target=lambda: done.append(card.run()), daemon=True)
    runner.start()
    deadline = time.monotonic() + 5
    while not (tmp_path / "w.pid").exists():
        assert time.monotonic() < deadline, "the worker never started"
        time.sleep(0.01)
    t0 = time.monotonic()
    card.stop(signal.SIGTERM)
    runner.join(STOP_GRACE_S + 5)
    assert done == [0], "the card is still waiting on its worker"
    assert time.monotonic() - t0 >= STOP_GRACE_S - 0.5  # it was given its grace first
    assert not (tmp_path / "w.pid").exists()
