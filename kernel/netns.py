"""Network namespaces for netns VMs and peers, driven through iproute2's `ip`.

A namespace is named `<tag>.<owner>`: the cluster's tag and the VM's (or peer's) name. Neither
may contain a dot, so the names of one cluster are exactly those starting with `<tag>.`, which is
how `leftovers` finds them after the cluster was SIGKILLed. Every failure of `ip` is one
NetnsError carrying the command and ip's own message.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from ipaddress import IPv4Interface, IPv6Interface
from pathlib import Path

from kernel.tap import NETNS_DIR, TUN_PATH

__all__ = [
    "NetnsError",
    "configure",
    "create",
    "destroy",
    "exec_argv",
    "exists",
    "leftovers",
    "missing_privilege",
    "namespace",
    "pids",
    "start_services",
]

IP_TIMEOUT_S = 10.0
TERM_GRACE_S = 3.0  # a service's time to exit after SIGTERM before SIGKILL
KILL_WAIT_S = 5.0
# Tags and owners: config names ([A-Za-z0-9][A-Za-z0-9_-]*); no dot, the separator.
_PART_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")
CAP_NET_ADMIN = 12
CAP_SYS_ADMIN = 21  # `ip netns add` mounts the namespace on /run/netns


class NetnsError(RuntimeError):
    """`ip` (or a command run for a namespace) failed: the command and its own error line."""

    def __init__(self, argv: Sequence[str], message: str) -> None:
        self.argv = list(argv)
        self.message = message
        super().__init__(f"{' '.join(self.argv)}: {message}")


def _run(argv: Sequence[str]) -> str:
    """Run `argv` to the end; its stdout, or NetnsError with its last stderr line."""
    try:
        done = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=IP_TIMEOUT_S, check=False
        )
    except FileNotFoundError:
        raise NetnsError(argv, f"{argv[0]}: not found (install iproute2)") from None
    except subprocess.TimeoutExpired:
        raise NetnsError(argv, f"no answer in {IP_TIMEOUT_S:g} s") from None
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or [f"exit status {done.returncode}"]
        raise NetnsError(argv, lines[-1])
    return done.stdout


def _ip(*args: str) -> str:
    return _run(["ip", *args])


def namespace(tag: str, owner: str) -> str:
    """The namespace of VM/peer `owner` in cluster `tag`: `<tag>.<owner>`."""
    for field, value in (("tag", tag), ("owner", owner)):
        if not _PART_RE.fullmatch(value):
            raise ValueError(f"{field} {value!r}: letters, digits, '_' and '-', at most 63")
    return f"{tag}.{owner}"


def exists(ns: str) -> bool:
    """Whether network namespace `ns` exists (as `ip netns` names it)."""
    return (NETNS_DIR / ns).exists()


def create(ns: str) -> None:
    """`ip netns add ns` and bring its loopback up; idempotent."""
    if not exists(ns):
        try:
            _ip("netns", "add", ns)
        except NetnsError:
            if not exists(ns):  # lost a race to another creator: that is fine
                raise
    _ip("-n", ns, "link", "set", "dev", "lo", "up")


def _mac_text(mac: bytes) -> str:
    if len(mac) != 6:
        raise ValueError(f"mac {mac.hex()!r}: 6 bytes expected")
    return ":".join(f"{b:02x}" for b in mac)


def configure(
    ns: str,
    ifname: str,
    mac: bytes,
    ips: Sequence[IPv4Interface | IPv6Interface],
    mtu: int = 1500,
) -> None:
    """Give `ifname` in `ns` its MAC, MTU and addresses (IPv6 without DAD), and bring it up.

    Idempotent: a restarted daemon may configure again what is already configured.
    """
    _ip("-n", ns, "link", "set", "dev", ifname, "address", _mac_text(mac), "mtu", str(mtu))
    for addr in ips:
        # nodad: the address is usable at once, not after a second of duplicate detection
        extra = ["nodad"] if addr.version == 6 else []
        _ip("-n", ns, "addr", "replace", str(addr), "dev", ifname, *extra)
    _ip("-n", ns, "link", "set", "dev", ifname, "up")


def exec_argv(ns: str, argv: Sequence[str]) -> list[str]:
    """The command line running `argv` inside namespace `ns`."""
    return ["ip", "netns", "exec", ns, *argv]


def start_services(ns: str, commands: Sequence[str], log_dir: Path, owner: str) -> list[int]:
    """Start each `sh -c CMD` inside `ns` in its own session; their pids.

    Output goes to log_dir/<owner>.svc<i>.log (mode 0600). The services are not waited for:
    they outlive the caller (a netns VM outlives its hostd) and `destroy` stops them.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    started = []
    for i, command in enumerate(commands):
        log = log_dir / f"{owner}.svc{i}.log"
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        argv = exec_argv(ns, ["sh", "-c", command])
        try:
            os.fchmod(fd, 0o600)
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=fd, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        except OSError as e:
            raise NetnsError(argv, e.strerror or str(e)) from None
        finally:
            os.close(fd)
        started.append(proc.pid)
    return started


def pids(ns: str) -> list[int]:
    """The processes in namespace `ns` (`ip netns pids`); none if it does not exist."""
    if not exists(ns):
        return []
    return sorted(int(word) for word in _ip("netns", "pids", ns).split())


def _signal_all(ns: str, sig: signal.Signals) -> None:
    for pid in pids(ns):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _wait_empty(ns: str, timeout: float) -> bool:
    """Poll until no process is left in `ns` or `timeout` passes; whether it emptied."""
    deadline = time.monotonic() + timeout
    while pids(ns):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def links(ns: str) -> list[str]:
    """The names of the network devices in `ns` (loopback included)."""
    names = []
    for line in _ip("-n", ns, "-o", "link", "show").splitlines():
        # "2: eth0@if7: <BROADCAST,...> ..." -> eth0
        parts = line.split(":", 2)
        if len(parts) == 3:
            names.append(parts[1].strip().split("@", 1)[0])
    return names


def destroy(ns: str) -> None:
    """Stop every process in `ns` (SIGTERM, then SIGKILL), delete its devices, `ip netns del`.

    The devices go first: a TAP whose fd a daemon still holds keeps the namespace alive (and the
    TAP with it) after `ip netns del`. Idempotent; NetnsError if anything is left.
    """
    if not exists(ns):
        return
    _signal_all(ns, signal.SIGTERM)
    if not _wait_empty(ns, TERM_GRACE_S):
        _signal_all(ns, signal.SIGKILL)
        if not _wait_empty(ns, KILL_WAIT_S):
            raise NetnsError(["ip", "netns", "pids", ns], f"processes left: {pids(ns)}")
    for name in links(ns):
        if name != "lo":
            _ip("-n", ns, "link", "del", "dev", name)
    left = [name for name in links(ns) if name != "lo"]
    if left:
        raise NetnsError(["ip", "-n", ns, "link", "show"], f"devices left: {left}")
    _ip("netns", "del", ns)
    if exists(ns):
        raise NetnsError(["ip", "netns", "del", ns], "the namespace is still there")


def leftovers(tag: str) -> list[str]:
    """The namespaces of cluster `tag` still present."""
    namespace(tag, "x")  # the same check of `tag` as the names were made with
    try:
        names = os.listdir(NETNS_DIR)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if n.startswith(f"{tag}."))


def _capabilities() -> int:
    """This process's effective capabilities (CapEff of /proc/self/status)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0


def missing_privilege() -> str | None:
    """One line naming what netns VMs need and this process lacks, and how to get it; or None."""
    missing = []
    caps = _capabilities()
    if os.geteuid() != 0 and not (caps >> CAP_NET_ADMIN & 1 and caps >> CAP_SYS_ADMIN & 1):
        missing.append("root (or CAP_NET_ADMIN and CAP_SYS_ADMIN): run as root, e.g. with sudo")
    if not os.path.exists(TUN_PATH):
        missing.append(f"{TUN_PATH}: `modprobe tun` (in a container: --device /dev/net/tun)")
    elif not os.access(TUN_PATH, os.R_OK | os.W_OK):
        missing.append(f"{TUN_PATH} is not read-writable by this user")
    if shutil.which("ip") is None:
        missing.append("`ip`: apt-get install iproute2 (`make setup` does)")
    if not missing:
        return None
    return "netns VMs need " + "; ".join(missing)
