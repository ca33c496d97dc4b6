"""Machines emulated by Linux network namespaces: each namespace a machine with its own address,
joined by a bridge in the root namespace over veth pairs (the root namespace is the operator's
machine: it reaches every one through the bridge's own address).

Every name carries a per-run suffix (interface names stay under 16 bytes), and the subnet is one
no interface here uses yet, so a leftover of a crashed run cannot collide with this one.
`Lab.close` removes everything it made, whatever was made before a failure.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ctl.cluster import pids_with_env

__all__ = ["Lab", "can_make_namespaces", "lab", "pids_in_run_dir"]


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run `ip ARGS`; fail with its stderr."""
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done


def can_make_namespaces() -> str | None:
    """Why this test cannot run here (not root, no `ip`), or None."""
    if os.geteuid() != 0:
        return "needs root (ip netns, veth, bridge)"
    try:
        ip("-V")
    except (OSError, RuntimeError) as e:
        return f"no usable `ip` ({e}); `make setup` installs iproute2"
    return None


def _free_subnet() -> str:
    """A 10.99.X prefix no address or route here uses."""
    used = ip("-o", "addr").stdout + ip("route", "show", "table", "all").stdout
    choices = [x for x in range(256) if f"10.99.{x}." not in used]
    return f"10.99.{random.choice(choices)}"


@dataclass
class Lab:
    """The namespaces (machines), their veths and the bridge made so far."""

    suffix: str
    prefix: str  # "10.99.X": machine i has .i, the bridge .254
    namespaces: list[str] = field(default_factory=list)
    veths: list[str] = field(default_factory=list)  # the root-namespace end of each
    bridge: str | None = None

    def address(self, i: int) -> str:
        """Machine `i`'s address (1-based)."""
        return f"{self.prefix}.{i}"

    def add_bridge(self) -> None:
        name = f"ntb{self.suffix}"
        ip("link", "add", name, "type", "bridge")
        self.bridge = name
        ip("addr", "add", f"{self.prefix}.254/24", "dev", name)
        ip("link", "set", name, "up")

    def add_machine(self) -> str:
        """One more namespace on the bridge; its name."""
        i = len(self.namespaces) + 1
        ns, here, there = f"nt{self.suffix}m{i}", f"ntv{self.suffix}{i}", f"ntp{self.suffix}{i}"
        ip("netns", "add", ns)
        self.namespaces.append(ns)
        ip("link", "add", here, "type", "veth", "peer", "name", there)
        self.veths.append(here)
        ip("link", "set", there, "netns", ns)
        ip("link", "set", here, "master", str(self.bridge))
        ip("link", "set", here, "up")
        ip("-n", ns, "addr", "add", f"{self.address(i)}/24", "dev", there)
        ip("-n", ns, "link", "set", there, "up")
        ip("-n", ns, "link", "set", "lo", "up")
        return ns

    def cut(self, i: int, down: bool) -> None:
        """Pull (or plug back) machine `i`'s cable: its veth's end on the bridge."""
        ip("link", "set", self.veths[i - 1], "down" if down else "up")

    def close(self) -> None:
        """Remove everything made (namespaces take their veth ends with them)."""
        for veth in self.veths:
            ip("link", "del", veth, check=False)
        for ns in self.namespaces:
            ip("netns", "del", ns, check=False)
        if self.bridge is not None:
            ip("link", "del", self.bridge, check=False)


@contextlib.contextmanager
def lab(machines: int) -> Iterator[Lab]:
    """`machines` namespaces on a fresh bridge; removed on the way out, even after a failure."""
    made = Lab(suffix=f"{os.getpid() % 10000:04d}{random.randrange(100):02d}",
               prefix=_free_subnet())  # fmt: skip
    try:
        made.add_bridge()
        for _ in range(machines):
            made.add_machine()
        yield made
    finally:
        made.close()


def pids_in_run_dir(run_dir: Path) -> list[int]:
    """Live processes launched for `run_dir` (each inherits NICTEAM_RUN_DIR=<run_dir>)."""
    return pids_with_env("NICTEAM_RUN_DIR", str(run_dir))


def kill_run_dir(run_dir: Path, timeout: float = 10.0) -> list[int]:
    """SIGKILL whatever still runs for `run_dir`; the pids that had to be killed."""
    left = pids_in_run_dir(run_dir)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while pids_in_run_dir(run_dir) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left
