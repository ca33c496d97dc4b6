"""What every nicteam daemon's event loop shares: periodic timers, signals, command line."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

import uvloop


class Daemon(Protocol):
    """A daemon that runs until `stop()` is called."""

    async def run(self) -> None: ...

    def stop(self) -> None: ...


async def every(period: float, action: Callable[[], None]) -> None:
    """Call `action` every `period` seconds, on a fixed schedule (no drift), until cancelled."""
    loop = asyncio.get_running_loop()
    due = loop.time()
    while True:
        due += period
        await asyncio.sleep(max(0.0, due - loop.time()))
        action()


def crash_on_error(task: asyncio.Task[Any], on_crash: Callable[[BaseException], None]) -> None:
    """A background task (a timer, a receive loop) that dies of our own bug must not die
    silently, leaving a process that looks alive: `on_crash(error)` (crash-only: its card
    restarts it)."""

    def done(t: asyncio.Task[Any]) -> None:
        if not t.cancelled() and t.exception() is not None:
            on_crash(t.exception())  # type: ignore[arg-type]

    task.add_done_callback(done)


async def run_until_signalled(daemon: Daemon) -> None:
    """Run `daemon`; SIGTERM or SIGINT asks it to stop cleanly."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, daemon.stop)
    await daemon.run()


def run_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run a daemon's coroutine on uvloop; a late Ctrl-C during shutdown is not a traceback."""
    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(main)
