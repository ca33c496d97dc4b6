"""Failover and failback planning."""

from __future__ import annotations

from hostd.supervisor import Supervisor


def make(failback: bool = True) -> tuple[Supervisor, dict[int, str]]:
    where = {1: "nic1", 2: "nic2", 3: "nic1", 4: "nic1", 5: "nic2"}
    sup = Supervisor(["nic1", "nic2", "nic3"], dict(where), where.__getitem__, failback=failback)
    return sup, where


def apply(where: dict[int, str], moves: list[tuple[int, str]]) -> None:
    for vpid, nic in moves:
        where[vpid] = nic


def test_a_lost_nics_vpids_spread_over_the_survivors_and_come_back() -> None:
    sup, where = make()
    moves = sup.nic_down("nic1")
    assert moves == [(1, "nic2"), (3, "nic3"), (4, "nic2")]
    apply(where, moves)
    assert sup.nic_down("nic1") == []  # already down
    apply(where, sup.nic_down("nic2"))
    assert set(where.values()) == {"nic3"}
    back = sup.nic_up("nic1")
    assert back == [(1, "nic1"), (3, "nic1"), (4, "nic1")]
    apply(where, back)
    assert sup.nic_up("nic1") == []


def test_without_failback_vpids_stay_where_they_went() -> None:
    sup, where = make(failback=False)
    apply(where, sup.nic_down("nic2"))
    assert sup.nic_up("nic2") == []
    assert where[2] != "nic2"


def test_with_every_nic_down_the_first_back_takes_everything() -> None:
    sup, where = make(failback=False)
    for nic in ("nic1", "nic2", "nic3"):
        apply(where, sup.nic_down(nic))
    assert sup.nic_down("nic3") == []
    assert sup.nic_up("nic2") == [(v, "nic2") for v in sorted(where)]
