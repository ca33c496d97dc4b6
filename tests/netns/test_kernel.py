"""kernel/ against the real kernel: two namespaces, each with a persistent TAP, joined by a relay
in this test that moves frames between the two TAP fds with read_batch/write_batch (what hostd
does between a TAP and a VF port, minus the NIC).

Through it: ping and an HTTP fetch between the namespaces; a TAP closed and re-attached (a
restarted hostd) still relays; a burst arrives in one read_batch; destroy removes a namespace, its
services and its TAP, and leftovers() finds a cluster's namespaces until then.
"""

from __future__ import annotations

import contextlib
import os
import random
import select
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Interface, IPv6Interface
from pathlib import Path

import pytest

from kernel import netns
from kernel.tap import Tap, TapMissing, open_tap

pytestmark = [pytest.mark.netns]

_missing = netns.missing_privilege()
if _missing is not None:
    pytestmark.append(pytest.mark.skip(reason=_missing))

IFNAME = "eth0"  # each namespace has its own: no clash with the host's or another run's
MACS = (bytes.fromhex("020000aa0001"), bytes.fromhex("020000aa0002"))
IPS = (IPv4Interface("10.200.0.1/24"), IPv4Interface("10.200.0.2/24"))
IP6S = (IPv6Interface("fd00:200::1/64"), IPv6Interface("fd00:200::2/64"))


@dataclass
class Relay:
    """A thread moving frames both ways between two TAPs until stopped."""

    a: Tap
    b: Tap
    frames: int = 0
    biggest_batch: int = 0
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    error: BaseException | None = None

    def start(self) -> Relay:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _run(self) -> None:
        try:
            while not self.stop.is_set():
                ready, _, _ = select.select([self.a.fd, self.b.fd], [], [], 0.1)
                for src, dst in ((self.a, self.b), (self.b, self.a)):
                    if src.fd in ready:
                        batch = src.read_batch()
                        self.biggest_batch = max(self.biggest_batch, len(batch))
                        self.frames += dst.write_batch(batch)
        except BaseException as e:  # surfaced by close(): a relay that died fails the test
            self.error = e

    def close(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(timeout=5)
        if self.error is not None:
            raise self.error


@dataclass
class Pair:
    """Two namespaces of one cluster tag, each with its TAP open and configured."""

    tag: str
    names: tuple[str, str]
    taps: list[Tap]

    def run(self, i: int, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Run `argv` in namespace `i` to the end."""
        return subprocess.run(netns.exec_argv(self.names[i], argv), capture_output=True,
                              text=True, timeout=timeout, check=False)  # fmt: skip

    @contextlib.contextmanager
    def relayed(self) -> Iterator[Relay]:
        relay = Relay(self.taps[0], self.taps[1]).start()
        try:
            yield relay
        finally:
            relay.close()


@pytest.fixture
def pair() -> Iterator[Pair]:
    tag = f"kt{os.getpid() % 100000}x{random.randrange(1 << 24):06x}"
    names = (netns.namespace(tag, "a"), netns.namespace(tag, "b"))
    taps: list[Tap] = []
    try:
        for i, ns in enumerate(names):
            netns.create(ns)
            taps.append(open_tap(ns, IFNAME, create=True))
            netns.configure(ns, IFNAME, MACS[i], [IPS[i], IP6S[i]])
        yield Pair(tag, names, taps)
    finally:
        for t in taps:
            t.close()
        for ns in names:
            try:
                netns.destroy(ns)
            except netns.NetnsError:
                subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


def ping(p: Pair, src: int, dst: str) -> subprocess.CompletedProcess[str]:
    return p.run(src, "ping", "-c", "3", "-W", "1", "-i", "0.2", dst)


def test_ping_crosses_the_relay_and_a_reattached_tap_still_relays(pair: Pair) -> None:
    with pair.relayed() as relay:
        done = ping(pair, 0, str(IPS[1].ip))
        assert done.returncode == 0, done.stdout + done.stderr
        assert " 0% packet loss" in done.stdout
        done = ping(pair, 1, str(IP6S[0].ip))
        assert done.returncode == 0, done.stdout + done.stderr
    assert relay.frames >= 12  # 3 requests and 3 replies each way, at least

    # a restarted hostd: the fd closed, the TAP (persistent) and its addresses stay
    pair.taps[0].close()
    shown = subprocess.run(["ip", "-n", pair.names[0], "addr", "show", "dev", IFNAME],
                           capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert "NO-CARRIER" in shown and str(IPS[0]) in shown
    pair.taps[0] = open_tap(pair.names[0], IFNAME, create=False)
    # and configures it again, as it did the first time: nothing changes, nothing fails
    netns.create(pair.names[0])
    netns.configure(pair.names[0], IFNAME, MACS[0], [IPS[0], IP6S[0]])
    with pair.relayed():
        done = ping(pair, 0, str(IPS[1].ip))
        assert done.returncode == 0, done.stdout + done.stderr


def test_attaching_to_a_missing_tap_or_namespace_raises_tap_missing(pair: Pair) -> None:
    with pytest.raises(TapMissing, match="nosuch0"):
        open_tap(pair.names[0], "nosuch0", create=False)
    # it made nothing on the way
    shown = subprocess.run(["ip", "-n", pair.names[0], "-o", "link"], capture_output=True,
                           text=True, check=True).stdout  # fmt: skip
    assert "nosuch0" not in shown
    with pytest.raises(TapMissing, match="no such network namespace"):
        open_tap(netns.namespace(pair.tag, "nobody"), IFNAME, create=False)


def _is_udp_to(frame: bytes, port: int) -> bool:
    return (frame[12:14] == b"\x08\x00" and frame[23] == 17
            and int.from_bytes(frame[36:38], "big") == port)  # fmt: skip


def test_a_burst_is_read_in_one_call(pair: Pair) -> None:
    # no relay: the frames wait in TAP a's queue; a permanent neighbour spares the ARP
    neigh = ["neigh", "replace", str(IPS[1].ip), "lladdr", "02:00:00:aa:00:02", "dev", IFNAME]
    subprocess.run(["ip", "-n", pair.names[0], *neigh, "nud", "permanent"], check=True)
    burst = (
        "import socket\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        f"for i in range(100): s.sendto(b'x' * 100, ('{IPS[1].ip}', 9999))\n"
    )
    done = pair.run(0, sys.executable, "-c", burst)
    assert done.returncode == 0, done.stderr
    first = pair.taps[0].read_batch(max_frames=10)
    rest = pair.taps[0].read_batch()
    assert len(first) == 10  # max_frames holds
    udp = [f for f in first + rest if _is_udp_to(f, 9999)]
    assert len(udp) == 100, f"{len(first)} + {len(rest)} frames read, {len(udp)} of the burst"
    assert len(rest) > 1
    assert pair.taps[0].read_batch() == []  # drained: EAGAIN, not a block


def test_a_service_inside_serves_a_page_to_the_other_namespace(pair: Pair, tmp_path: Path) -> None:
    site, logs = tmp_path / "site", tmp_path / "logs"
    site.mkdir()
    (site / "index.html").write_text("hello from b\n")
    server = f"cd {site} && exec {sys.executable} -m http.server 8080 --bind {IPS[1].ip}"
    (pid,) = netns.start_services(pair.names[1], [server], logs, "b")
    log = logs / "b.svc0.log"
    assert log.stat().st_mode & 0o777 == 0o600
    # `ip netns exec` enters the namespace after it starts: under load, a moment later.
    deadline = time.monotonic() + 10
    while pid not in netns.pids(pair.names[1]):
        assert time.monotonic() < deadline, f"service {pid} never entered {pair.names[1]}"
        time.sleep(0.05)
    fetch = (
        "import time, urllib.request\n"
        "deadline = time.monotonic() + 20\n"
        "while True:\n"
        "    try:\n"
        f"        print(urllib.request.urlopen('http://{IPS[1].ip}:8080/', timeout=2).read())\n"
        "        break\n"
        "    except OSError:\n"
        "        if time.monotonic() > deadline: raise\n"
        "        time.sleep(0.2)\n"
    )
    with pair.relayed():
        done = pair.run(0, sys.executable, "-c", fetch)
    assert done.returncode == 0, done.stderr + log.read_text()
    assert "hello from b" in done.stdout
    assert "GET / HTTP" in log.read_text()


def _gone(pid: int) -> bool:
    """Whether `pid` has exited (gone, or a zombie its parent has not reaped yet)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def test_destroy_removes_the_namespace_its_processes_and_its_tap(
    pair: Pair, tmp_path: Path
) -> None:
    a, b = pair.names
    assert netns.leftovers(pair.tag) == sorted([a, b])
    # a service that ignores SIGTERM, and one that does not: both must go
    pids = netns.start_services(b, ["trap '' TERM; while :; do sleep 0.1; done", "sleep 600"],
                                tmp_path, "b")  # fmt: skip
    deadline = time.monotonic() + 10
    while set(pids) - set(netns.pids(b)):
        assert time.monotonic() < deadline, "the services never showed up in the namespace"
        time.sleep(0.05)
    # TAP b's fd stays open (hostd alive): without destroy deleting the TAP, it would keep the
    # namespace (and itself) alive after `ip netns del`
    assert pair.taps[1].is_attached()
    netns.destroy(b)
    assert not netns.exists(b)
    assert netns.pids(b) == []
    assert all(_gone(pid) for pid in pids)
    assert not pair.taps[1].is_attached()
    assert netns.leftovers(pair.tag) == [a]
    netns.destroy(b)  # idempotent
    netns.destroy(a)
    assert netns.leftovers(pair.tag) == []


def test_a_refused_frame_is_skipped_and_a_down_device_ends_the_batch(pair: Pair) -> None:
    tap, ns = pair.taps[0], pair.names[0]
    frame = b"\xff" * 6 + MACS[0] + b"\x88\xb5" + bytes(50)  # local experimental EtherType
    # too short for an Ethernet header: EINVAL for that frame alone
    assert tap.write_batch([b"", frame, b"\x00" * 3, frame]) == 2
    subprocess.run(["ip", "-n", ns, "link", "set", "dev", IFNAME, "down"], check=True)
    assert tap.write_batch([frame, frame, frame]) == 0  # EIO: the rest would fail alike
