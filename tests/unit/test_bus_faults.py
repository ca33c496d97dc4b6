"""Fault table: sans-I/O decisions with explicit ``now`` and a scripted random source."""

from __future__ import annotations

import math

import pytest

from bus.faults import ANY, FaultTable
from bus.messages import Fault, FaultKind
from bus.testing import Scripted


def test_no_fault_delivers_at_once() -> None:
    table = FaultTable()
    assert not table.active
    assert table.decide("nic2", now=0.0) == (True, 0.0)


def test_partition_until_then_heals() -> None:
    table = FaultTable()
    table.partition("nic2", until=10.0)
    assert table.active
    assert table.decide("nic2", now=9.9) == (False, 0.0)
    assert table.decide("nic1", now=9.9) == (True, 0.0)
    assert table.decide("nic2", now=10.0) == (True, 0.0)
    assert not table.active  # expired rules are forgotten


def test_partition_any_peer_and_clear_all() -> None:
    table = FaultTable()
    table.partition(ANY)
    assert table.decide("nic1", now=1e9) == (False, 0.0)
    table.clear(ANY)
    assert table.decide("nic1", now=0.0) == (True, 0.0)


def test_drop_uses_probability() -> None:
    table = FaultTable(rng=Scripted(0.1, 0.7, 0.29))
    table.drop("nic2", probability=0.3, until=5.0)
    assert [table.decide("nic2", now=1.0)[0] for _ in range(3)] == [False, True, False]


def test_delay_and_partition_precedence() -> None:
    table = FaultTable()
    table.delay("nic2", 0.25, until=math.inf)
    assert table.decide("nic2", now=0.0) == (True, 0.25)
    table.partition("nic2", until=1.0)
    assert table.decide("nic2", now=0.5) == (False, 0.0)
    assert table.decide("nic2", now=1.5) == (True, 0.25)
    table.clear("nic2")
    assert table.decide("nic2", now=2.0) == (True, 0.0)


def test_peer_rule_wins_over_any() -> None:
    table = FaultTable()
    table.delay(ANY, 1.0)
    table.delay("nic2", 0.1)
    assert table.decide("nic2", now=0.0) == (True, 0.1)
    assert table.decide("nic3", now=0.0) == (True, 1.0)


def test_apply_fault_commands_count_from_now() -> None:
    table = FaultTable(rng=Scripted(0.0))
    table.apply(Fault(FaultKind.PARTITION, "nic2", 2.0), now=100.0)
    assert table.decide("nic2", now=101.9) == (False, 0.0)
    assert table.decide("nic2", now=102.0) == (True, 0.0)
    table.apply(Fault(FaultKind.DELAY, "nic3", 5.0, delay=0.05), now=100.0)
    table.apply(Fault(FaultKind.DROP, "nic4", 5.0, probability=0.5), now=100.0)
    assert table.snapshot(now=101.0) == [("delay", "nic3", 0.05, 4.0), ("drop", "nic4", 0.5, 4.0)]
    assert table.decide("nic4", now=101.0) == (False, 0.0)
    table.apply(Fault(FaultKind.CLEAR, ANY, 0.0), now=101.0)
    assert table.snapshot(now=101.0) == []


def test_bad_values_are_refused() -> None:
    table = FaultTable()
    with pytest.raises(ValueError):
        table.drop("nic2", probability=1.5)
    with pytest.raises(ValueError):
        table.delay("nic2", -1.0)
