"""VpidMap: epochs, stale updates, fencing and the moved set."""

from __future__ import annotations

import re

import pytest

from nicd.datapath.vpidmap import PortBinding, VpidMap

MAP_1 = [(1, "nic1", 0), (2, "nic1", 1), (3, "nic2", 0)]


def test_starts_empty_at_epoch_zero() -> None:
    m = VpidMap("nic1")
    assert m.epoch == 0
    assert m.home(1) is None
    assert not m.owns(1)
    assert m.local_vpids() == []


def test_apply_sets_home_and_ownership() -> None:
    m = VpidMap("nic1")
    change = m.apply(1, MAP_1)
    assert change is not None and change.epoch == 1
    assert m.epoch == 1
    assert m.home(3) == PortBinding("nic2", 0)
    assert m.owns(1) and m.owns(2) and not m.owns(3)
    assert m.ppid(2) == 1 and m.ppid(3) is None
    assert m.local_vpids() == [1, 2]
    assert m.vpids_of("nic2") == [3]
    assert m.entries() == sorted(MAP_1)
    assert change.moved == {
        1: (None, PortBinding("nic1", 0)),
        2: (None, PortBinding("nic1", 1)),
        3: (None, PortBinding("nic2", 0)),
    }


@pytest.mark.parametrize("epoch", [0, 4, 5])
def test_stale_epoch_is_ignored_and_counted(epoch: int) -> None:
    m = VpidMap("nic1")
    m.apply(5, MAP_1)
    assert m.apply(epoch, [(1, "nic2", 7)]) is None
    assert m.epoch == 5
    assert m.home(1) == PortBinding("nic1", 0)
    assert m.stats.stale_ignored == 1
    assert m.stats.applied == 1


def test_fencing_owns_false_after_remap() -> None:
    m = VpidMap("nic1")
    m.apply(1, MAP_1)
    assert m.owns(1)
    m.apply(2, [(1, "nic2", 1), (2, "nic1", 1), (3, "nic2", 0)])
    assert not m.owns(1)
    assert m.ppid(1) is None
    # A delayed copy of the old map must not give ownership back.
    assert m.apply(1, MAP_1) is None
    assert not m.owns(1)


def test_moved_set_lists_only_changes() -> None:
    m = VpidMap("nic2")
    m.apply(1, MAP_1)
    change = m.apply(3, [(1, "nic2", 1), (2, "nic1", 1), (4, "nic1", 2)])
    assert change is not None and change.epoch == 3
    assert change.moved == {
        1: (PortBinding("nic1", 0), PortBinding("nic2", 1)),
        3: (PortBinding("nic2", 0), None),
        4: (None, PortBinding("nic1", 2)),
    }
    assert change.gained("nic2") == [1]
    assert change.lost("nic2") == [3]
    assert change.lost("nic1") == [1]
    assert m.stats.vpids_moved == 3 + 3


def test_same_map_at_newer_epoch_moves_nothing() -> None:
    m = VpidMap("nic1")
    m.apply(1, MAP_1)
    change = m.apply(2, MAP_1)
    assert change is not None and change.moved == {}
    assert m.epoch == 2


@pytest.mark.parametrize(
    ("entries", "field"),
    [
        ([(1, "nic1", 0), (1, "nic2", 0)], "entries[1].vpid"),
        ([(-1, "nic1", 0)], "entries[0].vpid"),
        ([(True, "nic1", 0)], "entries[0].vpid"),
        ([(1, "", 0)], "entries[0].nic"),
        ([(1, "nic1", -2)], "entries[0].ppid"),
        ([(1, "nic1", 0), (2, "nic1", 0)], "entries[1].ppid"),
        ([(1, "nic1")], "entries[0]"),
    ],
)
def test_invalid_entries_raise_and_leave_map_unchanged(
    entries: list[tuple[int, str, int]], field: str
) -> None:
    m = VpidMap("nic1")
    m.apply(1, MAP_1)
    with pytest.raises(ValueError, match="^" + re.escape(field) + ":"):
        m.apply(2, entries)
    assert m.epoch == 1
    assert m.entries() == sorted(MAP_1)


def test_bad_epoch_raises() -> None:
    with pytest.raises(ValueError, match="epoch"):
        VpidMap("nic1").apply(-1, [])
