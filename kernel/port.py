"""VMs and peers of kind "netns": a Linux network namespace whose interfaces are persistent TAPs,
plugged into a VF port (hostd) or a fabric access port (fabricd) like a built-in endpoint.

A `KernelPort` stands where a built-in `Endpoint` stands: frames delivered to it are written to
the TAP, and `poll` drains what the kernel sent (until EAGAIN, never one awaited read per
frame). The namespace, its TAPs and its services belong to the cluster, not to the daemon: they
are made on the cluster's first boot and only re-attached by a restarted daemon, so the
kernel's connections inside carry on across a daemon crash. `nicteam down` removes them (found
by the cluster's tag).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Interface, IPv6Interface
from pathlib import Path
from typing import Any

from kernel import netns
from kernel.tap import Tap, TapMissing, open_tap
from wire.build import gratuitous_arp

TAG_ENV = "NICTEAM_TEST_TAG"  # every process a launcher starts inherits its cluster's tag
MTU = 1500  # every netns interface's; root inside may raise it, the VF port does not follow
MAX_FRAME = MTU + 14  # Ethernet header, untagged (a VM's tagged frame is dropped anyway)


def cluster_tag(run_dir: Path, env: dict[str, str] | None = None) -> str:
    """The cluster's tag: the launcher's, else one derived from the run directory (`make up`)."""
    tag = (env if env is not None else dict(os.environ)).get(TAG_ENV)
    if tag:
        return tag
    digest = hashlib.sha256(str(run_dir.resolve()).encode()).hexdigest()[:12]
    return f"nt-{digest}"


def ifname(index: int) -> str:
    """The name of a netns VM's interface `index` inside its namespace."""
    return f"eth{index}"


@dataclass(slots=True)
class KernelStats:
    """Frames between the TAP and the VF port (the kernel counts its own side)."""

    to_kernel: int = 0
    from_kernel: int = 0
    dropped_to_kernel: int = 0  # the TAP's queue was full (the namespace is not reading)
    dropped_oversize: int = 0  # longer than the interface's MTU allows (root inside raised it)


@dataclass(slots=True)
class KernelPort:
    """One interface of a netns VM, seen by hostd like a built-in endpoint."""

    name: str
    mac: bytes
    interfaces: list[IPv4Interface | IPv6Interface]
    tap: Tap
    stats: KernelStats = field(default_factory=KernelStats)
    kind: str = "netns"
    # Why the TAP is gone (deleted from inside the namespace or outside it): from then on every
    # frame to it is a counted drop, never an exception in the daemon (a guest may do this).
    lost: str | None = None

    def receive(self, frame: bytes, now: float) -> list[bytes]:
        """A frame the NIC delivered: into the kernel (nothing to answer ourselves)."""
        written = 0
        if self.lost is None:
            try:
                written = self.tap.write_batch((frame,))
            except OSError as e:
                self._lose(e)
        if written:
            self.stats.to_kernel += 1
        else:
            self.stats.dropped_to_kernel += 1
        return []

    def poll(self, now: float, max_frames: int = 256) -> list[bytes]:
        """What the kernel sent since the last call, up to `max_frames`; none once it is lost."""
        if self.lost is not None:
            return []
        try:
            frames = self.tap.read_batch(max_frames)
        except OSError as e:
            self._lose(e)
            return []
        self.stats.from_kernel += len(frames)
        if any(len(f) > MAX_FRAME for f in frames):  # a VF port's MTU, as a real NIC's
            kept = [f for f in frames if len(f) <= MAX_FRAME]
            self.stats.dropped_oversize += len(frames) - len(kept)
            return kept
        return frames

    def _lose(self, error: OSError) -> None:
        self.lost = f"TAP {self.tap.name!r} in netns {self.tap.netns!r}: {error.strerror or error}"

    def announce(self) -> list[bytes]:
        """Gratuitous ARPs for its IPv4 addresses, as a hypervisor announces a VM it plugs in
        (the kernel sends none at link up): the fabric learns where the MAC is at once."""
        return [gratuitous_arp(self.mac, i.ip) for i in self.interfaces if i.version == 4]

    def add_neighbor(self, ip: Any, mac: bytes) -> None:
        """Nothing: the kernel resolves its neighbours (ARP, IPv6 ND) itself."""

    def knows(self, ip: Any) -> bool:
        """A netns VM is never a workload sender; its applications wait for themselves."""
        return True

    def snapshot(self) -> dict[str, Any]:
        """No books: a netns VM's traffic is its applications' own."""
        return {"name": self.name, "flows": {}, "sinks": {}, "stats": {}}

    def close(self) -> None:
        """Let go of the TAP; the device and the namespace stay (the cluster's, not ours)."""
        self.tap.close()


Iface = tuple[str, bytes, Sequence[IPv4Interface | IPv6Interface]]  # port name, MAC, addresses


def plug(
    owner: str, ifaces: Sequence[Iface], run: Sequence[str], tag: str, log_dir: Path
) -> tuple[list[KernelPort], bool]:
    """The ports of netns VM or peer `owner`: made with its namespace and services (`run`) on
    the cluster's first boot, re-attached otherwise; returns them and whether they were made."""
    ns = netns.namespace(tag, owner)
    made = not netns.exists(ns)
    if made:
        netns.create(ns)
    ports = []
    for i, (name, mac, ips) in enumerate(ifaces):
        try:
            tap = open_tap(ns, ifname(i), create=made)
        except TapMissing:  # a namespace left half made by a daemon that died making it
            tap = open_tap(ns, ifname(i), create=True)
            made = True
        if made:
            netns.configure(ns, ifname(i), mac, list(ips), mtu=MTU)
        ports.append(KernelPort(name, mac, list(ips), tap))
    if made and run:
        netns.start_services(ns, run, log_dir, owner)
    return ports, made
