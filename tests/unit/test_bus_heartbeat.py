"""Liveness tracker: explicit ``now`` everywhere, transitions come from the one table."""

from __future__ import annotations

import itertools

import pytest

from bus.heartbeat import TRANSITIONS, Liveness, LivenessTracker, Signal

UP, SUSPECT, DOWN = Liveness.UP, Liveness.SUSPECT, Liveness.DOWN


def test_transition_table_is_complete() -> None:
    assert set(TRANSITIONS) == set(itertools.product(Liveness, Signal))


def test_unknown_peer_is_down_and_first_heartbeat_brings_it_up() -> None:
    tracker = LivenessTracker(interval=1.0, misses=3)
    assert tracker.state("nic1") is DOWN
    tracker.heard("nic1", now=10.0)
    assert tracker.state("nic1") is UP
    assert tracker.poll(now=10.0) == [("nic1", DOWN, UP)]
    assert tracker.poll(now=10.5) == []


def test_suspect_after_one_interval_down_after_misses() -> None:
    tracker = LivenessTracker(interval=1.0, misses=3)
    tracker.heard("nic1", now=0.0)
    tracker.poll(now=0.0)
    assert tracker.poll(now=0.5) == []
    assert tracker.poll(now=1.0) == [("nic1", UP, SUSPECT)]
    assert tracker.poll(now=2.0) == []  # still suspect: no repeated report
    assert tracker.state("nic1") is SUSPECT
    assert tracker.poll(now=3.0) == [("nic1", SUSPECT, DOWN)]
    assert tracker.poll(now=100.0) == []


def test_heartbeat_clears_suspicion() -> None:
    tracker = LivenessTracker(interval=1.0, misses=3)
    tracker.heard("nic1", now=0.0)
    assert tracker.poll(now=1.5) == [("nic1", DOWN, UP), ("nic1", UP, SUSPECT)]
    tracker.heard("nic1", now=1.6)
    assert tracker.poll(now=2.0) == [("nic1", SUSPECT, UP)]
    assert tracker.state("nic1") is UP


def test_late_poll_goes_straight_to_down() -> None:
    tracker = LivenessTracker(interval=1.0, misses=3)
    tracker.heard("nic1", now=0.0)
    tracker.poll(now=0.0)
    assert tracker.poll(now=7.0) == [("nic1", UP, DOWN)]


def test_disconnect_is_down_at_once() -> None:
    tracker = LivenessTracker(interval=1.0, misses=3)
    tracker.heard("nic1", now=0.0)
    tracker.heard("nic2", now=0.0)
    tracker.poll(now=0.0)
    tracker.disconnected("nic1", now=0.1)
    assert tracker.state("nic1") is DOWN
    assert tracker.poll(now=0.1) == [("nic1", UP, DOWN)]
    assert tracker.state("nic2") is UP


def test_disconnect_of_unknown_peer_is_ignored() -> None:
    tracker = LivenessTracker(interval=1.0, misses=3)
    tracker.disconnected("ghost", now=0.0)
    assert tracker.poll(now=0.0) == []
    assert tracker.peers() == {}


def test_restarted_peer_comes_back_up() -> None:
    tracker = LivenessTracker(interval=1.0, misses=2)
    tracker.heard("nic1", now=0.0)
    tracker.poll(now=5.0)
    assert tracker.state("nic1") is DOWN
    tracker.heard("nic1", now=6.0)
    assert tracker.poll(now=6.0) == [("nic1", DOWN, UP)]


def test_out_of_order_times_do_not_move_last_heard_back() -> None:
    tracker = LivenessTracker(interval=1.0, misses=3)
    tracker.heard("nic1", now=5.0)
    tracker.heard("nic1", now=4.0)
    tracker.poll(now=5.5)
    assert tracker.state("nic1") is UP


def test_peers_tracked_independently_and_forget() -> None:
    tracker = LivenessTracker(interval=1.0, misses=2)
    tracker.heard("nic1", now=0.0)
    tracker.heard("nic2", now=1.5)
    assert tracker.poll(now=1.5) == [
        ("nic1", DOWN, UP),
        ("nic2", DOWN, UP),
        ("nic1", UP, SUSPECT),
    ]
    assert tracker.poll(now=2.0) == [("nic1", SUSPECT, DOWN)]
    assert tracker.peers() == {"nic1": DOWN, "nic2": UP}
    tracker.forget("nic1")
    assert tracker.peers() == {"nic2": UP}


@pytest.mark.parametrize(("interval", "misses"), [(0.0, 3), (-1.0, 3), (1.0, 0)])
def test_bad_parameters(interval: float, misses: int) -> None:
    with pytest.raises(ValueError):
        LivenessTracker(interval=interval, misses=misses)


def test_our_own_stall_is_excused_but_a_down_peer_stays_down() -> None:
    t = LivenessTracker(interval=0.05, misses=3)
    t.heard("a", 0.0)
    t.heard("b", 0.0)
    t.disconnected("b", 0.01)
    t.poll(0.01)
    t.excuse(5.0)  # we were SIGSTOPped for 5 s: a's silence is ours
    assert t.poll(5.0) == []
    assert t.peers() == {"a": Liveness.UP, "b": Liveness.DOWN}
    assert t.poll(5.2) == [("a", Liveness.UP, Liveness.DOWN)]


def test_a_stall_of_ours_is_discounted_not_forgiven() -> None:
    t = LivenessTracker(0.05, 3)
    t.heard("a", 0.0)
    t.heard("b", 0.1)
    t.poll(0.1)
    t.shift(1.0, now=1.1)  # we stood still from 0.1 to 1.1
    assert all(new is not Liveness.DOWN for _, _, new in t.poll(1.1))  # a used 0.1 s, b none
    down = [p for p, _, new in t.poll(1.151) if new is Liveness.DOWN]
    assert down == ["a"] and t.state("b") is Liveness.SUSPECT
