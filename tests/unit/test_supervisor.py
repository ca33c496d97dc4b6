"""Failover and failback planning, driven by time: probes, answers, rounds, moves."""

from __future__ import annotations

import pytest

from hostd.supervisor import TRANSITIONS, Event, Phase, Step, Supervisor

NICS = ["nic1", "nic2", "nic3"]


def make(
    failback: bool = True, nics: list[str] | None = None, where: dict[int, str] | None = None
) -> tuple[Supervisor, dict[int, str]]:
    where = where or {1: "nic1", 2: "nic2", 3: "nic1", 4: "nic1", 5: "nic2"}
    sup = Supervisor(
        nics or NICS, dict(where), where.__getitem__, failback=failback, confirm_s=0.05
    )
    return sup, where


def apply(where: dict[int, str], moves: list[tuple[int, str]] | None) -> None:
    for vpid, nic in moves or []:
        where[vpid] = nic


def answer_all(sup: Supervisor, step: Step, dead: set[str] = frozenset()) -> None:  # type: ignore[assignment]
    for nic in step.targets:
        if nic not in dead:
            sup.answered(nic, step.probe)


def fail(sup: Supervisor, where: dict[int, str], nic: str, now: float) -> list[tuple[int, str]]:
    """`nic` lost, every other NIC answers at once: the moves of the round."""
    sup.nic_down(nic, now)
    step = sup.poll(now)
    answer_all(sup, step, sup.down)
    moves = sup.poll(now + 0.001).moves
    assert moves is not None
    apply(where, moves)
    return moves


def test_every_phase_event_pair_that_can_happen_is_in_the_table() -> None:
    assert (Phase.STEADY, Event.LOST) in TRANSITIONS
    assert all(new in Phase for new in TRANSITIONS.values())
    assert {e for _, e in TRANSITIONS} == set(Event)


def test_a_lost_nic_moves_nothing_until_the_survivors_answer_a_probe() -> None:
    sup, _ = make()
    sup.nic_down("nic1", 10.0)
    step = sup.poll(10.0)
    assert step.probe == 1 and step.targets == ["nic2", "nic3"] and step.moves is None
    sup.answered("nic2", 1)
    assert sup.poll(10.01).moves is None  # nic3 has not answered yet
    sup.answered("nic3", 1)
    assert sup.poll(10.011).moves == [(1, "nic2"), (3, "nic3"), (4, "nic2")]
    assert sup.phase is Phase.STEADY


def test_a_vpid_is_never_moved_to_a_nic_that_did_not_answer_after_the_loss() -> None:
    sup, _ = make()
    sup.answered("nic2", 0)  # heard long ago: not proof of life now
    sup.nic_down("nic1", 10.0)
    step = sup.poll(10.0)
    sup.answered("nic3", step.probe)  # nic2 is hung: it never answers
    assert sup.poll(10.049).moves is None
    moves = sup.poll(10.05).moves  # the deadline: decide with who answered
    assert moves == [(1, "nic3"), (3, "nic3"), (4, "nic3")]


def test_two_nics_lost_at_once_move_each_vpid_exactly_once_to_a_live_nic() -> None:
    # The issue's trial: nic1 and nic2 of a four-NIC host killed in one command. nic2's loss
    # is detected 3 ms after nic1's; it must not be given nic1's VPIDs meanwhile.
    where = {1: "nic1", 2: "nic2", 3: "nic3", 4: "nic4", 5: "nic1", 6: "nic2"}
    sup, where = make(nics=["nic1", "nic2", "nic3", "nic4"], where=where)
    sup.nic_down("nic1", 10.0)
    first = sup.poll(10.0)
    assert first.targets == ["nic2", "nic3", "nic4"]
    sup.answered("nic3", first.probe)
    sup.answered("nic4", first.probe)
    assert sup.poll(10.002).moves is None  # nic2 (dead) has not answered
    sup.nic_down("nic2", 10.003)
    second = sup.poll(10.003)
    assert second.probe == first.probe + 1 and second.targets == ["nic3", "nic4"]
    assert second.moves is None  # fresh proof of life is asked after the second loss
    answer_all(sup, second)
    moves = sup.poll(10.004).moves
    assert moves is not None
    assert sorted(v for v, _ in moves) == [1, 2, 5, 6]  # every lost VPID, each once
    assert {nic for _, nic in moves} <= {"nic3", "nic4"}
    apply(where, moves)
    assert sup.poll(10.5).moves is None  # one epoch, nothing more to move


def test_nobody_answering_keeps_the_vpids_waiting_and_probes_again() -> None:
    sup, _ = make()
    sup.nic_down("nic1", 10.0)
    first = sup.poll(10.0)
    again = sup.poll(10.05)
    assert again.moves is None and again.probe == first.probe + 1
    sup.answered("nic2", again.probe)
    assert sup.poll(10.11).moves == [(1, "nic2"), (3, "nic2"), (4, "nic2")]


def test_a_lost_nics_vpids_spread_over_the_survivors_and_come_back() -> None:
    sup, where = make()
    assert fail(sup, where, "nic1", 1.0) == [(1, "nic2"), (3, "nic3"), (4, "nic2")]
    sup.nic_down("nic1", 1.1)  # already down: no new round
    assert sup.poll(1.1) == Step()
    fail(sup, where, "nic2", 2.0)
    assert set(where.values()) == {"nic3"}
    back = sup.nic_up("nic1")
    assert back == [(1, "nic1"), (3, "nic1"), (4, "nic1")]
    apply(where, back)
    assert sup.nic_up("nic1") == []


def test_without_failback_vpids_stay_where_they_went() -> None:
    sup, where = make(failback=False)
    fail(sup, where, "nic2", 1.0)
    assert sup.nic_up("nic2") == []
    assert where[2] != "nic2"


def test_with_every_nic_down_the_first_back_takes_everything() -> None:
    sup, where = make(failback=False)
    fail(sup, where, "nic1", 1.0)
    fail(sup, where, "nic2", 2.0)
    sup.nic_down("nic3", 3.0)
    step = sup.poll(3.0)
    assert step.targets == [] and step.moves == []  # nobody left: nothing moves
    assert sup.nic_up("nic2") == [(v, "nic2") for v in sorted(where)]


@pytest.mark.parametrize("failback", [True, False])
def test_a_nic_back_during_a_round_is_a_candidate_of_that_round(failback: bool) -> None:
    sup, where = make(failback=failback)
    fail(sup, where, "nic3", 1.0)  # nothing homed there
    sup.nic_down("nic1", 2.0)
    step = sup.poll(2.0)
    sup.answered("nic2", step.probe)
    assert sup.nic_up("nic3") == []  # its own VPIDs: none away from it
    moves = sup.poll(2.001).moves
    assert moves is not None and {n for _, n in moves} == {"nic2", "nic3"}


def test_a_slow_answer_to_an_earlier_probe_of_the_round_still_counts() -> None:
    # A survivor whose round trip is longer than the round (a loaded box) must not livelock it.
    sup, _ = make(nics=["nic1", "nic2"], where={1: "nic1", 2: "nic2"})
    sup.nic_down("nic1", 10.0)
    first = sup.poll(10.0)
    for t in (10.05, 10.10, 10.15):
        assert sup.poll(t).moves is None  # nobody yet: asked again
    sup.answered("nic2", first.probe)  # the answer to the first probe, 160 ms late
    assert sup.poll(10.16).moves == [(1, "nic2")]


def test_the_lost_nic_back_inside_the_round_ends_it_with_nothing_to_move() -> None:
    sup, _ = make()
    sup.nic_down("nic3", 10.0)  # only slow: it beats "up" 20 ms later
    sup.poll(10.0)
    assert sup.nic_up("nic3") == []
    assert sup.phase is Phase.STEADY
    assert sup.poll(10.1).moves is None
