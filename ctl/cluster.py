"""A Procfile cluster in its own run directory, launched and always stopped cleanly.

Used by the cluster tests and the benchmarks (and `nicteam up`): `running_cluster()` starts
honcho with a run directory of its own, waits until every NIC is up, and on the way out stops
everything it started, found by an environment tag. The default config runs the repository's
Procfile; any other config runs the Procfile `procfile()` generates from it into the run
directory: fabricd, hostd per host, a card per NIC, with the top-level Procfile's command lines.
A config with `[machines]` launches one machine's share (`machine`, its own `Procfile.<machine>`)
or, without one, every process here if every machine's address is this machine's.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from bus.curve import CLI, KEY_DIR, generate_keys
from bus.nicstate import NicState
from bus.rundir import PRIVATE_UMASK, private_dir, private_file, write_private
from configs import FABRICD, Config, load_config
from configs.cmdline import curve_keys
from ctl.client import ControlError, request
from kernel import netns

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DEFAULT_CONFIG = REPO / "configs/default.toml"
T = TypeVar("T")
# Command lines when the top-level Procfile has no line to copy for a role.
_FALLBACK = {
    "fabric": "python -m fabricd --config ${NICTEAM_CONFIG:-configs/default.toml}",
    "host": "python -m hostd --config ${NICTEAM_CONFIG:-configs/default.toml} --host h1",
    "nic": "python -m nicd --config ${NICTEAM_CONFIG:-configs/default.toml} --nic nic1",
}


class NotReady(TimeoutError):
    """What was waited for did not happen in time."""


class ClusterExited(RuntimeError):
    """honcho stopped while we waited for the cluster (a daemon failed to start)."""


class PlacementError(ValueError):
    """The processes asked for cannot be launched here (no such machine, or not this one)."""


@dataclass
class Cluster:
    """A running Procfile cluster: its honcho process, run directory and config."""

    proc: subprocess.Popen[bytes]
    run_dir: Path
    config: Config
    output: Path
    config_path: Path
    tag: str

    def control(self, proc: str, cmd: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
        """One control request to a daemon of this cluster."""
        return request(self.config, proc, cmd, args, timeout=2.0)

    def worker_pid(self, nic: str) -> int:
        """The pid of a NIC's OS worker, from the card's pid file."""
        return int((self.run_dir / f"{nic}.pid").read_text())

    def ports_away(self) -> list[dict[str, Any]]:
        """VM interfaces not plugged into the NIC the config homes them on (none: all home)."""
        home = {vm.name: vm.nic for vm in self.config.vms}
        return [
            p
            for host in self.config.hosts
            for p in self.control(host.name, "map")["ports"]
            if p["nic"] != home[str(p["vm"]).split("/")[0]]
        ]

    def pids(self) -> list[int]:
        """Every live process of the cluster: honcho and everything it started."""
        return tagged_pids(self.tag)


def tagged_pids(tag: str) -> list[int]:
    """Live (non-zombie) processes whose environment carries NICTEAM_TEST_TAG=`tag`.

    honcho gives each process its own session, and orphans are reparented, so neither the
    session nor the parent chain finds every descendant; the inherited environment does.
    """
    return pids_with_env("NICTEAM_TEST_TAG", tag)


def pids_with_env(name: str, value: str) -> list[int]:
    """Live (non-zombie) processes other than this one whose environment has `name`=`value`."""
    marker = f"{name}={value}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            pids.append(int(entry.name))
    return pids


def wait_for(
    what: str, probe: Callable[[], T | None], timeout: float = 30.0, every: float = 0.1
) -> T:
    """Poll `probe` until it returns something truthy; fail the test with `what` on timeout."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            got = probe()
        except (ControlError, OSError, ValueError, KeyError) as e:
            got, last_error = None, e
        if got:
            return got
        time.sleep(every)
    raise NotReady(f"timed out after {timeout:g} s waiting for {what} (last error: {last_error})")


def stop(
    proc: subprocess.Popen[bytes], tag: str, sig: int = signal.SIGTERM, timeout: float = 20.0
) -> int | None:
    """Stop honcho with `sig`; SIGKILL every tagged process if it does not finish in time;
    then remove the netns VMs' namespaces (they outlive their daemons on purpose)."""
    rc: int | None = None
    if proc.poll() is None:
        proc.send_signal(sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            rc = proc.wait(timeout)
    if rc is None:
        for pid in tagged_pids(tag):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait(5)
    remove_namespaces(tag)
    return rc


def remove_namespaces(tag: str) -> list[str]:
    """Every network namespace of cluster `tag` (netns VMs and peers, their TAPs and services),
    gone; the names removed."""
    gone = netns.leftovers(tag)
    for ns in gone:
        netns.destroy(ns)
    return gone


def _templates(text: str) -> dict[str, str]:
    """The top-level Procfile's command line per role: fabric, host (`--host`), NIC (`--nic`)."""
    out = dict(_FALLBACK)
    lines = [line.partition(":") for line in text.splitlines() if not line.startswith("#")]
    for _, sep, command in lines:
        command = command.strip()
        if not sep or not command:
            continue
        if re.search(r"--host\s+\S", command):
            out["host"] = command
        elif re.search(r"--nic\s+\S", command):
            out["nic"] = command
        elif "fabricd" in command:
            out["fabric"] = command
    return out


def is_local(address: str) -> bool:
    """Whether `address` is one of this machine's (this network namespace's): it binds."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind((address, 0))
        except OSError:
            return False
    return True


def machine_processes(config: Config, machine: str | None) -> tuple[str, ...]:
    """The processes of `machine`, or every process of the cluster without one."""
    if machine is None:
        return config.processes
    if not config.machines:
        raise PlacementError(f"--machine {machine}: the config has no [machines] section")
    try:
        return config.machine(machine).processes
    except KeyError:
        names = ", ".join(m.name for m in config.machines)
        raise PlacementError(f"--machine {machine}: unknown machine (machines: {names})") from None


def launchable(config: Config, machine: str | None) -> tuple[str, ...]:
    """The processes to launch on this machine; PlacementError if that cannot be done here.

    Without `machine`, a config with machines launches everything here only if every machine's
    address is this machine's (e.g. all on 127.0.0.x); else each machine launches its own share.
    """
    procs = machine_processes(config, machine)
    if machine is not None and not is_local(address := config.machine(machine).address):
        raise PlacementError(f"--machine {machine}: its address {address} is not this machine's")
    away = [m for m in config.machines if machine is None and not is_local(m.address)]
    if away:
        where = ", ".join(f"{m.name} ({m.address})" for m in config.machines)
        raise PlacementError(
            f"the config places its processes on machines {where}; run "
            f"`nicteam up --machine NAME` on each ({away[0].address} is not this machine's)"
        )
    kernel = [v.name for v in config.vms if v.kind == "netns"]
    kernel += [p.name for p in config.peers if p.kind == "netns"]
    if kernel and (why := netns.missing_privilege()) is not None:
        raise PlacementError(f"netns VMs and peers ({', '.join(kernel)}) need privilege: {why}")
    return procs


def procfile(config: Config, template: str | None = None, machine: str | None = None) -> str:
    """The Procfile of `config`'s cluster: fabricd, hostd per host, a card per NIC (only
    `machine`'s processes if given).

    Each line copies the top-level Procfile's line for its role (`template`, default the
    repository's), with the process's own name and this config as the default `--config`.
    """
    if template is None:
        template = (REPO / "Procfile").read_text()
    roles = _templates(template)
    lines = [("fabric", roles["fabric"])]
    lines += [(h.name, re.sub(r"--host\s+\S+", f"--host {h.name}", roles["host"]))
              for h in config.hosts]  # fmt: skip
    lines += [(n.name, re.sub(r"--nic\s+\S+", f"--nic {n.name}", roles["nic"]))
              for n in config.nics]  # fmt: skip
    wanted = machine_processes(config, machine)
    # The fabric's Procfile line is called "fabric", its process fabricd.
    lines = [
        (name, cmd) for name, cmd in lines if (FABRICD if name == "fabric" else name) in wanted
    ]
    return "".join(f"{name}: {_config_default(cmd, config.path)}\n" for name, cmd in lines)


def _config_default(command: str, path: Path) -> str:
    # A function replacement: a path is not a regex replacement template.
    default = f"${{NICTEAM_CONFIG:-{path}}}"
    return re.sub(r"\$\{NICTEAM_CONFIG:-[^}]*\}", lambda _: default, command)


def procfile_for(config: Config, machine: str | None = None) -> Path:
    """The Procfile to start: the top-level one for the default config, else one generated
    into the run directory (0700, the file 0600, like everything a run writes); a machine's
    is `Procfile.<machine>`, so machines can share one run directory."""
    if machine is None and config.path.resolve() == DEFAULT_CONFIG.resolve():
        return REPO / "Procfile"
    name = "Procfile" if machine is None else f"Procfile.{machine}"
    path = private_dir(config.run_dir) / name
    write_private(path, procfile(config, machine=machine))
    return path


def make_keys(config: Config) -> list[str]:
    """CURVE key pairs for every process of `config` and the CLI, those not made yet (a tcp
    cluster's; nothing on ipc): the names made."""
    names = [*config.processes, CLI]
    directory = config.run_dir / KEY_DIR
    missing = [n for n in names if not (directory / f"{n}.key_secret").exists()]
    if missing:
        private_dir(config.run_dir)
        generate_keys(directory, missing)
    return missing


def launch(
    config_path: Path, run_dir: Path, tag: str, output: Path, machine: str | None = None
) -> Cluster:
    """Start honcho on the Procfile for `config_path` in `run_dir`, every process tagged `tag`:
    `machine`'s processes only if given; PlacementError before anything starts if not here."""
    config = load_config(config_path, run_dir)
    launchable(config, machine)
    procfile_path = procfile_for(config, machine)
    if curve_keys(config) is not None:
        make_keys(config)
    env = os.environ | {
        "NICTEAM_CONFIG": str(config_path),
        "NICTEAM_RUN_DIR": str(run_dir),
        "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
        "PYTHONUNBUFFERED": "1",
        "NICTEAM_TEST_TAG": tag,
    }
    private_dir(run_dir)
    private_dir(output.parent)
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    with os.fdopen(private_file(output, flags), "wb") as out:
        proc = subprocess.Popen(
            [str(BIN / "honcho"), "start", "-f", str(procfile_path)],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own session: cleanup finds every descendant
            umask=PRIVATE_UMASK,  # whatever ours is, the cluster's files and sockets are 0600
        )
    return Cluster(proc, run_dir, config, output, config_path, tag)


# honcho's output: `HH:MM:SS name.1 | text`; a daemon's console lines: `HH:MM:SS.mmm proc event`.
_HONCHO_LINE = re.compile(r"^\d\d:\d\d:\d\d (\S+?)(?:\.\d+)?\s+\| ?(.*)$")
_STOPPED = re.compile(r"^(\S+?)(?:\.\d+)? stopped \(rc=(-?\d+)\)")
_INFO_LINE = re.compile(r"^\d\d:\d\d:\d\d\.\d{3} \S+ [a-z][\w.]*( |$)")  # no WARNING/ERROR
_WORKER_EXIT = re.compile(r"^\d\d:\d\d:\d\d\.\d{3} \S+-card \w+\.worker\.exit code=(-?\d+)")
ERROR_LINES = 3


def launch_death(output: str) -> str | None:
    """The first process of honcho's `output` that died (or whose worker did), with its own
    last lines before it did; None while nothing has died."""
    seen: dict[str, list[str]] = {}
    for line in output.splitlines():
        m = _HONCHO_LINE.match(line)
        if m is None:
            continue
        name, text = m.groups()
        if name == "system":
            stopped = _STOPPED.match(text)
            if stopped is not None:
                return _died(stopped[1], f"exited ({stopped[2]})", seen.get(stopped[1], []))
            continue
        worker_exit = _WORKER_EXIT.match(text)
        if worker_exit is not None:
            return _died(name, f"worker exited ({worker_exit[1]})", seen.get(name, []))
        if text.strip() and not _INFO_LINE.match(text):
            seen.setdefault(name, []).append(text.rstrip())
    return None


def _died(name: str, how: str, lines: list[str]) -> str:
    last = " | ".join(line.strip() for line in lines[-ERROR_LINES:]) or "no output"
    return f"{name} {how} during launch: {last}"


def launch_failure(c: Cluster) -> str | None:
    """Why the launch of `c` failed: a process (or a card's worker) died; None if none did."""
    try:
        text = c.output.read_text(errors="replace")
    except OSError:
        text = ""
    died = launch_death(text)
    if died is None and c.proc.poll() is not None:
        died = f"honcho exited ({c.proc.returncode}) during launch"
    return died


def wait_ready(
    c: Cluster, timeout: float = 30.0, on_up: Callable[[str, float], None] | None = None
) -> None:
    """Wait until every NIC says it is up; `on_up(nic, seconds)` as each one is (progress)."""
    t0 = time.monotonic()
    for nic in (n.name for h in c.config.hosts for n in h.nics):
        left = max(0.1, timeout - (time.monotonic() - t0))

        def up(nic: str = nic) -> bool:
            died = launch_failure(c)
            if died is not None:
                raise ClusterExited(died)
            # A short wait per ask: a death elsewhere is seen within about this long.
            stats = request(c.config, nic, "stats", timeout=0.5)
            return bool(stats["state"] == NicState.UP)

        wait_for(f"{nic} up", up, timeout=left)
        if on_up is not None:
            on_up(nic, time.monotonic() - t0)


@contextlib.contextmanager
def running_cluster(
    config_text: str | None = None,
    config_path: Path | None = None,
    on_up: Callable[[str, float], None] | None = None,
) -> Iterator[Cluster]:
    """A Procfile cluster of the default config (or of `config_text` / `config_path`).

    It gets a run directory of its own and is always stopped on the way out.
    """
    # Not pytest's tmp_path: unix socket paths must stay under ~107 bytes.
    top = Path(tempfile.mkdtemp(prefix="nt-"))
    if config_text is not None:
        config_path = top / "cluster.toml"
        config_path.write_text(config_text)
    try:
        c = launch(config_path or DEFAULT_CONFIG, top / "run", top.name, top / "honcho.out")
    except BaseException:  # nothing started (no place, no privilege): nothing left either
        shutil.rmtree(top, ignore_errors=True)
        raise
    try:
        wait_ready(c, on_up=on_up)
        yield c
    finally:
        stop(c.proc, c.tag)
        left = tagged_pids(c.tag)
        if not left:
            shutil.rmtree(top, ignore_errors=True)
        if left:
            raise RuntimeError(f"processes left behind: {left} (output in {c.output})")
