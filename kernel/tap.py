"""TAP devices: one fd per device, non-blocking, frames moved in batches.

A TAP is opened *inside* a network namespace. Python 3.11 has no `os.setns`, and setns on a
network namespace changes only the calling thread, so `open_tap` does it in a short-lived
thread: setns there (libc via ctypes), open /dev/net/tun, TUNSETIFF, hand the fd back. The
device belongs to the namespace it was made in, and the fd keeps working from any thread.

A TAP made with `create=True` is persistent (TUNSETPERSIST): it outlives the fd and the process,
so a restarted hostd re-attaches to it with `create=False`, and the kernel's connections in the
namespace never see their interface go away.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import socket
import struct
import threading
from collections.abc import Iterable
from pathlib import Path

__all__ = [
    "Tap",
    "TapError",
    "TapMissing",
    "open_tap",
    "pack_ifreq",
    "unpack_ifreq",
    "validate_ifname",
]

# <linux/if_tun.h>: _IOW('T', 202, int), _IOW('T', 203, int), _IOR('T', 210, unsigned int).
TUNSETIFF = 0x400454CA
TUNSETPERSIST = 0x400454CB
TUNGETIFF = 0x800454D2
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
CLONE_NEWNET = 0x40000000
IFNAMSIZ = 16
IFREQ_SIZE = 40  # struct ifreq: 16-byte name + a union padded to 24 bytes
TUN_PATH = "/dev/net/tun"
NETNS_DIR = Path("/run/netns")  # where `ip netns` keeps its named namespaces

# One read per frame; a TAP without IFF_VNET_HDR hands out no frame longer than its MTU + headers.
READ_SIZE = 65536
# A full queue or a device that is down: the rest of the batch would fail the same way.
_STOP_ERRNOS = frozenset({errno.EAGAIN, errno.ENOBUFS, errno.EIO})
# This one frame was refused (too short, too long): skip it, the next may pass.
_SKIP_ERRNOS = frozenset({errno.EINVAL, errno.EMSGSIZE, errno.EFAULT})


class TapMissing(LookupError):
    """Attaching to a TAP (or a namespace) that does not exist."""


class TapError(OSError):
    """Opening a TAP failed for another reason; the message names the namespace and device."""


def validate_ifname(ifname: str) -> bytes:
    """`ifname` as the kernel takes it; ValueError naming `ifname` if Linux would refuse it."""
    # dev_valid_name() in net/core/dev.c, plus ':' (alias labels) and '%' (name templates)
    bad = not ifname.isascii() or not ifname.isprintable() or any(c in ifname for c in "/:% ")
    if bad or not 0 < len(ifname) < IFNAMSIZ or ifname in (".", ".."):
        raise ValueError(f"ifname {ifname!r}: 1-15 ASCII characters, no '/', ':', '%' or space")
    return ifname.encode("ascii")


def pack_ifreq(ifname: str, flags: int) -> bytes:
    """struct ifreq with `ifname` and `flags` (ifr_flags), as TUNSETIFF takes it."""
    return struct.pack(f"{IFNAMSIZ}sH{IFREQ_SIZE - IFNAMSIZ - 2}x", validate_ifname(ifname), flags)


def unpack_ifreq(ifreq: bytes) -> tuple[str, int]:
    """(ifname, flags) of a struct ifreq, as TUNGETIFF returns it."""
    raw, flags = struct.unpack_from(f"{IFNAMSIZ}sH", ifreq)
    return raw.split(b"\0", 1)[0].decode("ascii", "replace"), flags


class Tap:
    """One TAP device's fd: non-blocking, IFF_TAP | IFF_NO_PI (whole Ethernet frames, no header)."""

    def __init__(self, name: str, fd: int, netns: str | None = None) -> None:
        self.name = name
        self.fd = fd
        self.netns = netns
        self._read_error: OSError | None = None

    def fileno(self) -> int:
        """The fd, for select() and loop.add_reader()."""
        return self.fd

    def read_batch(self, max_frames: int = 256) -> list[bytes]:
        """Every frame waiting, up to `max_frames`: os.read until EAGAIN, never one await each.

        An error after some frames were read returns those; the next call raises it.
        """
        if self._read_error is not None:
            err, self._read_error = self._read_error, None
            raise err
        frames: list[bytes] = []
        while len(frames) < max_frames:
            try:
                frames.append(os.read(self.fd, READ_SIZE))
            except BlockingIOError:
                break
            except InterruptedError:
                continue
            except OSError as e:
                if not frames:
                    raise
                self._read_error = e
                break
        return frames

    def write_batch(self, frames: Iterable[bytes]) -> int:
        """Write `frames` in order; how many were written (the caller counts the rest as dropped).

        A full queue or a down device (EAGAIN, ENOBUFS, EIO) ends the batch; a frame the kernel
        refuses (EINVAL, EMSGSIZE) is skipped. Only a dead fd (the device was deleted) raises.
        """
        written = 0
        for frame in frames:
            try:
                os.write(self.fd, frame)
            except OSError as e:
                if e.errno in _STOP_ERRNOS:
                    break
                if e.errno in _SKIP_ERRNOS:
                    continue
                raise
            written += 1
        return written

    def is_attached(self) -> bool:
        """Whether the fd still has its device (False once the TAP was deleted or closed)."""
        if self.fd < 0:
            return False
        try:
            fcntl.ioctl(self.fd, TUNGETIFF, bytes(IFREQ_SIZE))
        except OSError:
            return False
        return True

    def close(self) -> None:
        """Close the fd (a persistent TAP stays, with no carrier); idempotent."""
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)

    def __enter__(self) -> Tap:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Tap({self.name!r}, fd={self.fd}, netns={self.netns!r})"


def _setns(netns: str) -> None:
    """Move the calling thread (only it) into network namespace `netns`."""
    try:
        ns_fd = os.open(NETNS_DIR / netns, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise TapMissing(f"netns {netns!r}: no such network namespace") from None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.setns(ns_fd, CLONE_NEWNET) != 0:
            code = ctypes.get_errno()
            raise TapError(code, f"netns {netns!r}: setns: {os.strerror(code)}")
    finally:
        os.close(ns_fd)


def _exists_here(ifname: str) -> bool:
    """Whether the calling thread's namespace has a device `ifname`."""
    try:
        socket.if_nametoindex(ifname)
    except OSError:
        return False
    return True


def _open_here(ifname: str, create: bool) -> int:
    """Open TAP `ifname` in the calling thread's namespace; the fd."""
    if not create and not _exists_here(ifname):
        raise TapMissing(f"ifname {ifname!r}: no such TAP to attach to")
    ifreq = pack_ifreq(ifname, IFF_TAP | IFF_NO_PI)
    fd = os.open(TUN_PATH, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, TUNSETIFF, ifreq)
        if create:
            fcntl.ioctl(fd, TUNSETPERSIST, 1)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _where(netns: str | None, ifname: str) -> str:
    return f"TAP {ifname!r} in netns {netns!r}" if netns else f"TAP {ifname!r}"


def open_tap(netns: str | None, ifname: str, *, create: bool) -> Tap:
    """Open TAP `ifname` inside namespace `netns` (None: ours); non-blocking.

    create=True makes it (or attaches to it) and makes it persistent; create=False attaches to an
    existing one. TapMissing: no namespace `netns`, or (create=False) no TAP `ifname` in it;
    TapError: any other failure (no privilege, the TAP already attached to another fd...).
    """
    validate_ifname(ifname)
    result: list[int | BaseException] = []

    def run() -> None:
        try:
            if netns is not None:
                _setns(netns)
            result.append(_open_here(ifname, create))
        except BaseException as e:  # handed to the caller's thread, raised there
            result.append(e)

    if netns is None:
        run()
    else:
        worker = threading.Thread(target=run, name=f"open_tap-{ifname}", daemon=True)
        worker.start()
        worker.join()
    (outcome,) = result
    if isinstance(outcome, (TapMissing, TapError)):
        raise outcome
    if isinstance(outcome, OSError):
        raise TapError(outcome.errno, f"{_where(netns, ifname)}: {outcome.strerror}") from outcome
    if isinstance(outcome, BaseException):
        raise outcome
    return Tap(ifname, outcome, netns)
