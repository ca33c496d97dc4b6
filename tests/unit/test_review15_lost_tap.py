"""Review of issue 15: a netns VM's TAP deleted under hostd (`ip link del eth0` inside the
namespace, by its own root, or from outside) is a counted drop and a logged loss, never a
hostd crash: one guest must not restart the whole host's daemon (and every VM's endpoint)."""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import Iterable
from ipaddress import IPv4Interface
from pathlib import Path
from typing import Any

from kernel.port import KernelPort
from kernel.tap import Tap
from tests.unit.test_hostd import rig


class DeletedTap(Tap):
    """A TAP whose device was deleted: its fd answers EBADFD to reads and writes, as Linux's."""

    def read_batch(self, max_frames: int = 256) -> list[bytes]:
        raise OSError(errno.EBADFD, os.strerror(errno.EBADFD))

    def write_batch(self, frames: Iterable[bytes]) -> int:
        raise OSError(errno.EBADFD, os.strerror(errno.EBADFD))

    def close(self) -> None:
        """The test owns the fd (a pipe standing for the TAP's)."""


def lost_port(fd: int) -> KernelPort:
    tap = DeletedTap("eth0", fd, "nt-test.nsvm")
    return KernelPort("nsvm.0", b"\x02\0\0\0\x01\x99", [IPv4Interface("10.0.10.99/24")], tap)


def test_a_deleted_tap_is_a_counted_drop_not_an_exception() -> None:
    port = lost_port(-1)
    assert port.poll(0.0) == []
    assert port.lost is not None and "eth0" in port.lost
    assert port.receive(b"\0" * 60, 0.0) == []
    assert port.stats.dropped_to_kernel == 1
    assert port.stats.to_kernel == 0


async def test_hostd_outlives_a_netns_vm_deleting_its_tap(tmp_path: Path) -> None:
    r_fd, w_fd = os.pipe()
    os.write(w_fd, b"x")  # readable for ever, as a deleted TAP's fd polls (EPOLLERR)
    try:
        async with rig(tmp_path) as r:
            loop = asyncio.get_running_loop()
            vpid = 999
            r.daemon.kernel[vpid] = lost_port(r_fd)
            loop.add_reader(r_fd, r.daemon._on_kernel, vpid)
            r.daemon._poll()  # the periodic sweep also reads every TAP
            await asyncio.sleep(0)  # let the reader fire too
            assert not r.daemon.crashed
            assert not loop.remove_reader(r_fd), "hostd still watches the dead TAP's fd"
            stats = await r.control("stats")
            kernel: Any = stats.result["kernel"]
            assert kernel["nsvm.0"]["lost"], stats  # the operator sees why
            del r.daemon.kernel[vpid]  # (an unbound VPID: `map` would not know it)
            reply = await r.control("map")
            assert reply.ok, reply
    finally:
        os.close(r_fd)
        os.close(w_fd)


class ChattyTap(Tap):
    """A TAP whose kernel sent one frame of each length in `lengths` (as a raised MTU lets it)."""

    def __init__(self, lengths: list[int]) -> None:
        super().__init__("eth0", -1, "nt-test.nsvm")
        self.lengths = lengths

    def read_batch(self, max_frames: int = 256) -> list[bytes]:
        frames, self.lengths = [bytes(n) for n in self.lengths], []
        return frames


def test_frames_beyond_the_interfaces_mtu_are_counted_drops_not_relayed() -> None:
    # `ip link set eth0 mtu 16000` inside, then big UDP: a frame past the bus's 9216-byte limit
    # would make the NIC refuse the whole batch (every frame in it), a jumbo one reached a VM
    # whose MTU is 1500; a VF port with MTU 1500 drops both, as a real NIC's would.
    tap = ChattyTap([60, 1514, 1515, 9000, 15014])
    port = KernelPort("nsvm.0", b"\x02\0\0\0\x01\x99", [IPv4Interface("10.0.10.99/24")], tap)
    assert [len(f) for f in port.poll(0.0)] == [60, 1514]
    assert port.stats.dropped_oversize == 3
