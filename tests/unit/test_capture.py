"""Port taps of `nicteam capture` (nicd/capture.py): what a tap takes, keeps, hands out, drops."""

from __future__ import annotations

import pytest

from nicd.capture import (
    BUFFER_FRAMES,
    IDLE_S,
    IN,
    OUT,
    READ_BYTES,
    CaptureError,
    Captures,
    Tap,
)

VF, UPLINK = 0, 1  # tap kinds, as `PortKind` numbers them


def frame(tag: int, size: int = 60) -> bytes:
    """A recognisable frame: `size` bytes of `tag` (a tap never parses what it copies)."""
    return bytes([tag]) * size


def test_tap_takes_only_its_port_and_kind_in_both_directions() -> None:
    c = Captures()
    tap = c.start(VF, 101, count=0, snaplen=65535, now=0.0)
    assert tap == 1
    c.see(VF, IN, [(101, frame(1)), (102, frame(2)), (101, frame(3, 70))], 1.5)
    c.see(UPLINK, OUT, [(101, frame(4))], 2.0)  # uplink 101 is another port than VF 101
    c.see(VF, OUT, [(100, frame(5)), (101, frame(6, 80))], 2.5)
    got = c.read(tap, now=3.0)
    assert got == {
        "frames": [
            [1.5, IN, frame(1), 60],
            [1.5, IN, frame(3, 70), 70],
            [2.5, OUT, frame(6, 80), 80],
        ],
        "taken": 3,
        "missed": 0,
        "done": False,
    }
    assert (IN, OUT) == ("in", "out")
    assert c.read(tap, now=3.5) == {"frames": [], "taken": 3, "missed": 0, "done": False}
    assert tap in c.taps  # no count: runs until stopped


def test_uplink_tap_ignores_the_vf_with_the_same_ppid() -> None:
    c = Captures()
    tap = c.start(UPLINK, 1, 0, 65535, 0.0)
    c.see(VF, IN, [(1, frame(1))], 1.0)
    c.see(UPLINK, IN, [(1, frame(2)), (2, frame(3))], 2.0)
    c.see(UPLINK, OUT, [(1, frame(4))], 3.0)
    got = c.read(tap, 4.0)
    assert got["frames"] == [[2.0, IN, frame(2), 60], [3.0, OUT, frame(4), 60]]
    assert got["taken"] == 2


def test_count_stops_taking_and_done_removes_the_tap() -> None:
    c = Captures()
    tap = c.start(VF, 101, count=2, snaplen=65535, now=0.0)
    c.see(VF, IN, [(101, frame(1)), (101, frame(2)), (101, frame(3))], 1.0)
    c.see(VF, OUT, [(101, frame(4))], 2.0)
    assert c.taps[tap].taken == 2
    assert c.taps[tap].full
    got = c.read(tap, 3.0)
    assert got == {
        "frames": [[1.0, IN, frame(1), 60], [1.0, IN, frame(2), 60]],
        "taken": 2,
        "missed": 0,
        "done": True,
    }
    assert c.taps == {}
    assert c._by_port == {}
    c.see(VF, IN, [(101, frame(5))], 4.0)  # nothing listens any more; must not raise
    with pytest.raises(CaptureError):
        c.read(tap, 5.0)


def test_a_full_tap_is_done_only_once_its_buffer_is_drained() -> None:
    c = Captures()
    size = 60_000
    per_read = READ_BYTES // (size + 32)  # 32: what `read` charges per frame besides its bytes
    assert per_read == 69
    total = per_read + 31
    tap = c.start(VF, 101, count=total, snaplen=65535, now=0.0)
    c.see(VF, IN, [(101, frame(i % 256, size)) for i in range(total)], 1.0)
    first = c.read(tap, 2.0)
    assert len(first["frames"]) == per_read
    assert sum(len(f) + 32 for _, _, f, _ in first["frames"]) <= READ_BYTES
    assert first["done"] is False
    assert first["taken"] == total
    assert tap in c.taps  # full, but not drained: still there
    second = c.read(tap, 3.0)
    assert len(second["frames"]) == 31
    assert second["done"] is True
    assert [f[0] for _, _, f, _ in first["frames"] + second["frames"]] == [
        i % 256 for i in range(total)
    ]  # in order, none twice, none lost
    assert tap not in c.taps


def test_one_read_returns_at_most_read_bytes_and_the_rest_comes_next() -> None:
    c = Captures()
    tap = c.start(VF, 101, count=0, snaplen=65535, now=0.0)
    size = 1500
    n = READ_BYTES // (size + 32) + 10  # a few more than one read holds
    c.see(VF, IN, [(101, frame(7, size))] * n, 1.0)
    first = c.read(tap, 2.0)
    assert len(first["frames"]) == READ_BYTES // (size + 32)
    assert sum(len(f) + 32 for _, _, f, _ in first["frames"]) <= READ_BYTES
    second = c.read(tap, 3.0)
    assert len(second["frames"]) == 10
    assert (first["done"], second["done"]) == (False, False)
    assert c.read(tap, 4.0)["frames"] == []


def test_snaplen_cuts_frames_but_keeps_the_original_length() -> None:
    c = Captures()
    tap = c.start(VF, 101, count=0, snaplen=20, now=0.0)
    long, short = bytes(range(60)), bytes(range(14))
    c.see(VF, IN, [(101, long), (101, short)], 1.0)
    got = c.read(tap, 2.0)["frames"]
    assert got == [[1.0, IN, long[:20], 60], [1.0, IN, short, 14]]


def test_a_full_buffer_counts_missed_frames_instead_of_growing() -> None:
    c = Captures()
    tap = c.start(VF, 101, count=0, snaplen=65535, now=0.0)
    c.see(VF, IN, [(101, frame(i % 256, 64)) for i in range(BUFFER_FRAMES + 5)], 1.0)
    assert len(c.taps[tap].frames) == BUFFER_FRAMES
    got = c.read(tap, 2.0)
    assert len(got["frames"]) == BUFFER_FRAMES
    assert [f[0] for _, _, f, _ in got["frames"]] == [i % 256 for i in range(BUFFER_FRAMES)]
    assert (got["taken"], got["missed"]) == (BUFFER_FRAMES + 5, 5)
    c.see(VF, OUT, [(101, frame(9))], 3.0)  # drained: room again
    got = c.read(tap, 4.0)
    assert got["frames"] == [[3.0, OUT, frame(9), 60]]
    assert (got["taken"], got["missed"]) == (BUFFER_FRAMES + 6, 5)


def test_two_taps_on_one_port_both_get_frames_and_stopping_one_leaves_the_other() -> None:
    c = Captures()
    a = c.start(VF, 101, count=0, snaplen=65535, now=0.0)
    b = c.start(VF, 101, count=0, snaplen=14, now=0.0)
    assert (a, b) == (1, 2)
    c.see(VF, IN, [(101, frame(1))], 1.0)
    assert c.read(a, 1.5)["frames"] == [[1.0, IN, frame(1), 60]]
    assert c.read(b, 1.5)["frames"] == [[1.0, IN, frame(1, 14), 60]]  # each its own snaplen
    assert c.stop(a) is True
    assert c.stop(a) is False
    c.see(VF, OUT, [(101, frame(2))], 2.0)
    assert c.read(b, 2.5)["frames"] == [[2.0, OUT, frame(2, 14), 60]]
    with pytest.raises(CaptureError):
        c.read(a, 2.5)
    assert c.stop(b) is True
    assert c.taps == {} and c._by_port == {}
    assert c.start(VF, 101, 0, 65535, 3.0) == 3  # ids are never reused


def test_expire_removes_taps_not_read_for_idle_s() -> None:
    c = Captures()
    a = c.start(VF, 101, count=0, snaplen=65535, now=0.0)
    b = c.start(UPLINK, 1, count=0, snaplen=65535, now=0.0)
    c.read(b, now=5.0)  # a read keeps a tap alive
    assert c.expire(IDLE_S) == []  # exactly IDLE_S idle: not yet
    assert c.expire(IDLE_S + 0.1) == [a]
    assert set(c.taps) == {b}
    c.see(VF, IN, [(101, frame(1))], IDLE_S + 0.2)  # its port has no tap any more
    with pytest.raises(CaptureError, match="no capture 1"):
        c.read(a, IDLE_S + 0.3)
    assert c.expire(5.0 + IDLE_S + 0.1) == [b]
    assert c.taps == {} and c._by_port == {}


@pytest.mark.parametrize(("count", "snaplen"), [(-1, 65535), (0, 13), (5, 0), (-3, 2)])
def test_bad_count_or_snaplen_is_refused(count: int, snaplen: int) -> None:
    c = Captures()
    with pytest.raises(CaptureError):
        c.start(VF, 101, count, snaplen, 0.0)
    assert c.taps == {} and c._by_port == {}


def test_smallest_valid_tap_and_unknown_ids() -> None:
    c = Captures()
    tap = c.start(VF, 101, count=0, snaplen=14, now=0.0)  # an Ethernet header is the least
    assert isinstance(c.taps[tap], Tap)
    assert issubclass(CaptureError, ValueError)
    with pytest.raises(CaptureError):
        c.read(999, 0.0)
    assert c.stop(999) is False
    assert set(c.taps) == {tap}
