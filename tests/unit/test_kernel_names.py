"""The pure parts of kernel/: namespace names, interface names, struct ifreq, errors of `ip`.

No root needed: nothing here touches a namespace or a TAP.
"""

from __future__ import annotations

import os
import shutil
import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from kernel import netns, tap


def test_a_namespace_is_named_from_the_cluster_tag_and_the_owner() -> None:
    assert netns.namespace("nt-0123456789ab", "vm1") == "nt-0123456789ab.vm1"
    # two clusters on one machine never collide, nor do two owners in one cluster
    names = {netns.namespace(t, o) for t in ("nt-a", "nt-b") for o in ("vm1", "vm2", "peer")}
    assert len(names) == 6


@pytest.mark.parametrize("owner", ["", "a.b", "../x", "a/b", "a b", "-x", "x" * 64])
def test_a_bad_owner_is_one_error_naming_the_field(owner: str) -> None:
    with pytest.raises(ValueError, match=r"^owner "):
        netns.namespace("nt-1", owner)


@pytest.mark.parametrize("tag", ["", "nt.1", "nt/1"])
def test_a_bad_tag_is_one_error_naming_the_field(tag: str) -> None:
    with pytest.raises(ValueError, match=r"^tag "):
        netns.namespace(tag, "vm1")
    with pytest.raises(ValueError, match=r"^tag "):
        netns.leftovers(tag)


def test_one_cluster_s_leftovers_are_not_another_s(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in ("nt-a.vm1", "nt-a.peer", "nt-ab.vm1", "nt-a", "other"):
        (tmp_path / name).touch()
    monkeypatch.setattr(netns, "NETNS_DIR", tmp_path)
    assert netns.leftovers("nt-a") == ["nt-a.peer", "nt-a.vm1"]
    assert netns.leftovers("nt-ab") == ["nt-ab.vm1"]
    monkeypatch.setattr(netns, "NETNS_DIR", tmp_path / "absent")
    assert netns.leftovers("nt-a") == []


def test_ifreq_is_the_name_and_the_flags_padded_to_40_bytes() -> None:
    req = tap.pack_ifreq("eth0", tap.IFF_TAP | tap.IFF_NO_PI)
    assert len(req) == 40
    assert req[:16] == b"eth0" + bytes(12)
    assert struct.unpack_from("=H", req, 16)[0] == 0x1002
    assert req[18:] == bytes(22)
    assert tap.unpack_ifreq(req) == ("eth0", 0x1002)
    assert tap.unpack_ifreq(tap.pack_ifreq("x" * 15, 2)) == ("x" * 15, 2)


@pytest.mark.parametrize(
    "ifname", ["", "x" * 16, "a/b", "a b", "a:1", "a%d", ".", "..", "é0", "a\tb"]
)
def test_a_bad_interface_name_is_refused_before_any_syscall(ifname: str) -> None:
    with pytest.raises(ValueError, match=r"^ifname "):
        tap.pack_ifreq(ifname, 0)
    with pytest.raises(ValueError, match=r"^ifname "):
        tap.open_tap(None, ifname, create=False)


def test_exec_argv_runs_the_command_inside_the_namespace() -> None:
    assert netns.exec_argv("nt-a.vm1", ["ping", "-c", "1", "10.0.0.2"]) == [
        "ip", "netns", "exec", "nt-a.vm1", "ping", "-c", "1", "10.0.0.2",
    ]  # fmt: skip


def test_a_failed_command_is_one_netns_error_with_the_command_and_its_own_line() -> None:
    argv = ["sh", "-c", "echo noise >&2; echo 'Cannot find device \"eth9\"' >&2; exit 1"]
    with pytest.raises(netns.NetnsError) as caught:
        netns._run(argv)
    assert caught.value.argv == argv
    assert caught.value.message == 'Cannot find device "eth9"'
    assert str(caught.value).endswith(': Cannot find device "eth9"')
    with pytest.raises(netns.NetnsError, match="not found"):
        netns._run(["/nonexistent/ip", "link"])


def test_a_mac_is_six_bytes() -> None:
    assert netns._mac_text(bytes.fromhex("02000000010a")) == "02:00:00:00:01:0a"
    with pytest.raises(ValueError, match=r"^mac "):
        netns._mac_text(b"\x02\x00")


def test_missing_privilege_names_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setattr(netns, "_capabilities", lambda: 0)
    monkeypatch.setattr(netns, "TUN_PATH", "/nonexistent/tun")
    monkeypatch.setattr(shutil, "which", lambda _: None)
    line = netns.missing_privilege()
    assert line is not None and "\n" not in line
    assert "root" in line and "/nonexistent/tun" in line and "iproute2" in line
    both = 1 << netns.CAP_NET_ADMIN | 1 << netns.CAP_SYS_ADMIN
    monkeypatch.setattr(netns, "_capabilities", lambda: both)
    assert "root" not in (netns.missing_privilege() or "")


@pytest.fixture
def seqpacket() -> Iterator[tuple[tap.Tap, socket.socket]]:
    """A Tap on one end of a datagram socket pair (frame boundaries kept, like a TAP's)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ours.setblocking(False)
    theirs.setblocking(False)
    t = tap.Tap("fake0", ours.detach())
    try:
        yield t, theirs
    finally:
        t.close()
        theirs.close()


def test_read_batch_drains_until_eagain_or_max(seqpacket: tuple[tap.Tap, socket.socket]) -> None:
    t, peer = seqpacket
    assert t.read_batch() == []
    for i in range(30):
        peer.send(bytes([i]) * (60 + i))
    first = t.read_batch(max_frames=8)
    assert first == [bytes([i]) * (60 + i) for i in range(8)]
    assert len(t.read_batch()) == 22
    assert t.read_batch() == []


def test_write_batch_stops_on_a_full_queue_and_skips_a_refused_frame(
    seqpacket: tuple[tap.Tap, socket.socket],
) -> None:
    t, peer = seqpacket
    too_big = bytes(peer.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) * 4)
    assert t.write_batch([b"a" * 60, too_big, b"b" * 60]) == 2  # EMSGSIZE: that frame only
    assert [peer.recv(100), peer.recv(100)] == [b"a" * 60, b"b" * 60]
    written = t.write_batch(b"x" * 1500 for _ in range(100_000))
    assert 0 < written < 100_000  # EAGAIN ended the batch instead of raising
    t.close()
    assert t.fd == -1 and not t.is_attached()
    t.close()  # idempotent


def test_an_error_after_some_frames_returns_them_and_raises_next_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    outcomes: list[bytes | OSError] = [b"f1", b"f2", OSError(77, "File descriptor in bad state")]

    def read(fd: int, n: int) -> bytes:
        outcome = outcomes.pop(0) if outcomes else BlockingIOError()
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    monkeypatch.setattr(os, "read", read)
    t = tap.Tap("fake0", 1_000_000)
    assert t.read_batch() == [b"f1", b"f2"]
    with pytest.raises(OSError, match="bad state"):
        t.read_batch()
    assert t.read_batch() == []
