"""Faults injected into a running cluster, each logged as a `chaos.*` event for the report.

No root needed: a NIC's OS worker is killed or paused with signals (its card wrote the pid to
`<run_dir>/<nic>.pid`), and so is a host daemon (`<run_dir>/<host>.pid` once a host card keeps
one; until then found by its command line). A partition of the private channel is a bus fault
both NICs apply, a pulled cable a fabricd command, a migrate a hostd command. Events go to
`<run_dir>/logs/ctl.jsonl`, beside the daemons' own, so one merge of the logs has the fault and
everything that followed it; each is logged just before the fault is injected, so the timeline
starts at the injection. Extra keyword fields (the nemesis' `step`) go into the event.

After faults, `wait_quiet()` waits until the cluster has settled: every NIC up and holding the
VPIDs its host's map gives it, every flow that must deliver delivering again.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from bus.log import configure_logging
from bus.nicstate import NicState
from configs import FABRICD, Config
from ctl.client import ControlError, request


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

    def kill(self, nic: str, **fields: Any) -> int:
        """SIGKILL `nic`'s OS worker (its card reboots it); returns the pid killed."""
        pid = self.worker_pid(nic)
        self.log.warning("chaos.kill", nic=nic, pid=pid, **fields)
        os.kill(pid, signal.SIGKILL)
        return pid

    def kill_many(self, nics: list[str], **fields: Any) -> dict[str, int]:
        """SIGKILL several NICs' workers in one instant (a `chaos.kill` each, `together`).

        Every pid is read and every event logged first, so the signals go out back to back.
        """
        pids = {nic: self.worker_pid(nic) for nic in nics}
        for nic, pid in pids.items():  # one event per NIC, as a single kill: the report reads it
            self.log.warning("chaos.kill", nic=nic, pid=pid, together=list(pids), **fields)
        for pid in pids.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return pids

    def stop(self, nic: str, **fields: Any) -> int:
        """SIGSTOP `nic`'s OS worker (a hang) until `cont`; returns its pid."""
        pid = self.worker_pid(nic)
        self.log.warning("chaos.pause", nic=nic, pid=pid, **fields)
        os.kill(pid, signal.SIGSTOP)
        return pid

    def cont(self, nic: str, pid: int, **fields: Any) -> None:
        """SIGCONT the worker `stop` stopped (gone already, e.g. killed meanwhile: nothing)."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
        self.log.warning("chaos.resume", nic=nic, pid=pid, **fields)

    @contextlib.contextmanager
    def paused(self, nic: str) -> Iterator[int]:
        """SIGSTOP `nic`'s OS worker for the body of the `with`; SIGCONT however it ends."""
        pid = self.stop(nic)
        try:
            yield pid
        finally:
            self.cont(nic, pid)

    def pause(self, nic: str, seconds: float, tick: Callable[[float], None] | None = None) -> int:
        """Pause `nic` for `seconds` (a hang); `tick(left)` is called while waiting."""
        with self.paused(nic) as pid:
            deadline = time.monotonic() + seconds
            while (left := deadline - time.monotonic()) > 0:
                if tick is not None:
                    tick(left)
                time.sleep(min(left, 0.1))
        return pid

    def partition(self, a: str, b: str, seconds: float, **fields: Any) -> dict[str, Any]:
        """Drop everything on the private channel between NICs `a` and `b` for `seconds`."""
        self._pair(a, b)
        self.log.warning("chaos.partition", nics=[a, b], seconds=seconds, **fields)
        out = {}
        for nic, peer in ((a, b), (b, a)):
            args = {"kind": "partition", "peer": peer, "seconds": seconds}
            out[nic] = request(self.config, nic, "fault", args, timeout=3.0)
        return out

    def unpartition(self, a: str, b: str, **fields: Any) -> None:
        """End a partition early: both NICs clear their faults on each other (best effort)."""
        self._pair(a, b)
        self.log.warning("chaos.unpartition", nics=[a, b], **fields)
        for nic, peer in ((a, b), (b, a)):
            args = {"kind": "clear", "peer": peer, "seconds": 0.0}
            with contextlib.suppress(ControlError):  # a NIC rebooting has no faults left
                request(self.config, nic, "fault", args, timeout=2.0)

    def link(self, port: str, up: bool, **fields: Any) -> dict[str, Any]:
        """Pull (`up=False`) or reconnect the cable of uplink `port` (e.g. nic1/p0)."""
        verb = "link-up" if up else "link-down"
        self.log.warning(f"chaos.{verb.replace('-', '_')}", port=port, **fields)
        return request(self.config, FABRICD, verb, {"port": port}, timeout=3.0)

    def migrate(self, vm: str, nic: str, **fields: Any) -> dict[str, Any]:
        """Ask the VM's host to move it to `nic` (a map update); hostd's answer, not waited on."""
        try:
            host = self.config.vm(vm).host
        except KeyError:
            raise ChaosError(f"unknown VM {vm!r}") from None
        self.log.warning("chaos.migrate", vm=vm, nic=nic, host=host, **fields)
        return request(self.config, host, "migrate", {"vm": vm, "nic": nic}, timeout=3.0)

    def hostd_pid(self, host: str) -> int:
        """The pid of `host`'s daemon: from `<host>.pid` (its card's), else its command line."""
        if host not in [h.name for h in self.config.hosts]:
            names = ", ".join(h.name for h in self.config.hosts)
            raise ChaosError(f"unknown host {host!r}; hosts: {names}")
        path = self.config.run_dir / f"{host}.pid"
        try:
            pid: int | None = int(path.read_text())
        except (OSError, ValueError):
            pid = find_hostd(host, self.config.run_dir)
        if pid is None:
            raise ChaosError(f"{host}: no host daemon running (no {path}, no such process)")
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            msg = f"{host}: its daemon (pid {pid}) is gone; it may be restarting"
            raise ChaosError(msg) from None
        return pid

    def hostd_stop(self, host: str, **fields: Any) -> int:
        """SIGSTOP `host`'s daemon (its VMs and its liveness clock stand still); its pid."""
        pid = self.hostd_pid(host)
        self.log.warning("chaos.hostd_pause", host=host, pid=pid, **fields)
        os.kill(pid, signal.SIGSTOP)
        return pid

    def hostd_cont(self, host: str, pid: int, **fields: Any) -> None:
        """SIGCONT the host daemon `hostd_stop` stopped."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
        self.log.warning("chaos.hostd_resume", host=host, pid=pid, **fields)

    def hostd_kill(self, host: str, **fields: Any) -> int:
        """SIGKILL `host`'s daemon (its card restarts it); returns the pid killed."""
        pid = self.hostd_pid(host)
        self.log.warning("chaos.hostd_kill", host=host, pid=pid, **fields)
        os.kill(pid, signal.SIGKILL)
        return pid

    def event(self, name: str, **fields: Any) -> None:
        """Log an event of the chaos driver's own (`chaos.nemesis.start`, a skipped step...)."""
        self.log.warning(name, **fields)

    def _pair(self, a: str, b: str) -> None:
        if a == b:
            raise ChaosError("a partition needs two different NICs")
        spec_a, spec_b = self._nic(a), self._nic(b)
        if spec_a.host != spec_b.host:
            raise ChaosError(f"{a} and {b} are on different hosts: they share no private channel")

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


def find_hostd(host: str, run_dir: Path) -> int | None:
    """The pid of the `python -m hostd ... --host <host>` serving `run_dir`, if one runs.

    Only for host daemons without a card (no pid file): the process is told apart by its
    command line and by the run directory it inherited (`NICTEAM_RUN_DIR` or `--run-dir`).
    """
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
            if "hostd" not in argv or argv[argv.index("hostd") - 1] != "-m":
                continue
            if _arg(argv, "--host") != host:
                continue
            env = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        inherited = [e.split(b"=", 1)[1] for e in env if e.startswith(b"NICTEAM_RUN_DIR=")]
        where = _arg(argv, "--run-dir") or (inherited[0].decode() if inherited else "run")
        with contextlib.suppress(OSError):  # relative to the daemon's cwd, not ours
            if (Path(os.readlink(entry / "cwd")) / where).resolve() == run_dir.resolve():
                return int(entry.name)
    return None


def _arg(argv: list[str], flag: str) -> str | None:
    return argv[argv.index(flag) + 1] if flag in argv[:-1] else None


# ------------------------------------------------------------------------------- quiet


@dataclass(slots=True)
class Quiet:
    """Whether the cluster settled after the faults, how long that took, and what did not."""

    ok: bool
    seconds: float
    problems: list[str] = field(default_factory=list)


def unsettled(config: Config) -> list[str]:
    """What keeps the cluster from quiet: NICs not up, or not holding what the map says."""
    problems = []
    for host in config.hosts:
        m = _ask(config, host.name, "map")
        if m is None:
            problems.append(f"{host.name}: its daemon does not answer")
            continue
        for nic in host.nics:
            want = sorted(v for v, n, _ in m["entries"] if n == nic.name)
            s = _ask(config, nic.name, "stats")
            if s is None:
                problems.append(f"{nic.name}: does not answer")
            elif s.get("state") != NicState.UP:
                problems.append(f"{nic.name}: {s.get('state')}")
            elif s.get("epoch") != m["epoch"]:
                problems.append(f"{nic.name}: at epoch {s.get('epoch')}, {host.name} at "
                                f"{m['epoch']}")  # fmt: skip
            elif sorted(s.get("vpids", [])) != want:
                problems.append(f"{nic.name}: holds VPIDs {sorted(s.get('vpids', []))}, "
                                f"the map says {want}")  # fmt: skip
    return problems


def wait_quiet(config: Config, timeout: float = 60.0, every: float = 0.25,
               on_wait: Callable[[str], None] | None = None) -> Quiet:  # fmt: skip
    """Wait until every NIC is up with the VPIDs the map gives it and every flow that must
    deliver delivers again (3 messages more than when the map first held)."""
    t0 = time.monotonic()
    wanted = [f.name for f in config.flows if f.expect == "deliver"]
    mark: dict[str, int] | None = None
    while True:
        problems = unsettled(config)
        if problems:
            mark = None
        else:
            got = _delivered(config, wanted)
            if mark is None:
                mark, problems = got, ["every flow to deliver again"]
            else:
                mark = {f: min(n, got[f]) for f, n in mark.items()}  # a restarted endpoint
                problems = [f"{f}: not delivering" for f in wanted if got[f] <= mark[f] + 2]
                if not problems:
                    return Quiet(True, round(time.monotonic() - t0, 2))
        if time.monotonic() - t0 >= timeout:
            return Quiet(False, round(time.monotonic() - t0, 2), problems)
        if on_wait is not None:
            on_wait(problems[0])
        time.sleep(every)


def _delivered(config: Config, flows: list[str]) -> dict[str, int]:
    books = live_books(config)
    sinks: dict[str, int] = {}
    for flows_of_host in books["hosts"].values():
        for name, sides in flows_of_host.items():
            sinks[name] = sinks.get(name, 0) + sides.get("sink", {}).get("delivered", 0)
    for peer in books["peers"].values():
        for name, stats in peer.get("sinks", {}).items():
            sinks[name] = sinks.get(name, 0) + stats.get("delivered", 0)
    return {f: sinks.get(f, 0) for f in flows}


def live_books(config: Config) -> dict[str, Any]:
    """Every endpoint's books now, per source as the daemons log them (a daemon that does not
    answer is left out): {"hosts": {host: flows}, "boots": {host: boot}, "peers": {...}}."""
    stats = {h.name: s for h in config.hosts if (s := _ask(config, h.name, "stats")) is not None}
    fabric = _ask(config, FABRICD, "stats")
    return {
        "hosts": {h: s["flows"] for h, s in stats.items()},
        "boots": {h: s.get("boot") for h, s in stats.items()},
        "peers": fabric["peers"] if fabric else {},
    }


def _ask(config: Config, proc: str, cmd: str) -> dict[str, Any] | None:
    try:
        return request(config, proc, cmd, timeout=1.0)
    except ControlError:
        return None


def stale_frames(config: Config) -> dict[str, Any]:
    """Per host, frames each NIC delivered for a port it did not hold (hostd's counter)."""
    out = {}
    for h in config.hosts:
        with contextlib.suppress(ControlError):
            out[h.name] = request(config, h.name, "stats", timeout=1.0)["stale_frames"]
    return out
