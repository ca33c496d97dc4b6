"""Team: egress policies, rendezvous stability, failover, load rebalancing, ingress filter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nicd.datapath.teaming import Team, TeamPolicy, Uplink, flow_hash, team_policy_from_str

UPLINKS = [
    Uplink("nic1", 0, "nic1/p0"),
    Uplink("nic1", 1, "nic1/p1"),
    Uplink("nic2", 0, "nic2/p0"),
    Uplink("nic2", 1, "nic2/p1"),
]
NAMES = [u.name for u in UPLINKS]
VPIDS = range(1, 201)


def _flows(n: int) -> list[int]:
    return [flow_hash(6, 0x0A010000 + i, 0x0A020001, 10000 + i * 7, 443) for i in range(n)]


def test_port_id_keeps_all_flows_of_a_vpid_on_one_uplink() -> None:
    team = Team(UPLINKS, TeamPolicy.PORT_ID)
    for vpid in (1, 2, 77):
        chosen = {team.select(vpid, h) for h in _flows(100)}
        assert len(chosen) == 1
    # ...while different VPIDs use every uplink.
    assert set(team.assignments(VPIDS).values()) == set(NAMES)


def test_rendezvous_moves_only_the_dead_uplinks_vpids() -> None:
    team = Team(UPLINKS, TeamPolicy.PORT_ID)
    before = team.assignments(VPIDS)
    assert team.set_live("nic2/p0", False) is True
    assert team.set_live("nic2/p0", False) is False  # no change the second time
    after = team.assignments(VPIDS)
    moved = {v for v in VPIDS if before[v] != after[v]}
    assert moved == {v for v in VPIDS if before[v] == "nic2/p0"}
    assert moved  # 200 VPIDs over 4 uplinks: the dead one carried some
    assert "nic2/p0" not in after.values()
    # Coming back takes back exactly its own VPIDs.
    team.set_live("nic2/p0", True)
    assert team.assignments(VPIDS) == before


def test_nic_down_removes_all_its_uplinks() -> None:
    team = Team(UPLINKS, TeamPolicy.PORT_ID)
    before = team.assignments(VPIDS)
    assert team.set_nic_live("nic1", False) == ["nic1/p0", "nic1/p1"]
    assert [u.name for u in team.live()] == ["nic2/p0", "nic2/p1"]
    after = team.assignments(VPIDS)
    assert {v for v in VPIDS if before[v] != after[v]} == {
        v for v in VPIDS if before[v].startswith("nic1/")
    }
    assert not team.is_live("nic1/p1") and team.is_live("nic2/p1")
    assert team.uplinks == tuple(UPLINKS)  # configured uplinks, live or not
    assert team.set_nic_live("nic1", True) == ["nic1/p0", "nic1/p1"]
    assert team.set_nic_live("nic1", True) == []


def test_l4_hash_spreads_flows_over_all_live_uplinks() -> None:
    team = Team(UPLINKS, TeamPolicy.L4_HASH)
    used = [team.select(5, h) for h in _flows(200)]
    counts = {name: sum(1 for u in used if u is not None and u.name == name) for name in NAMES}
    assert all(c > 20 for c in counts.values()), counts
    # The same flow always takes the same uplink.
    h = _flows(1)[0]
    assert {team.select(v, h) for v in (1, 2, 3)} == {team.select(5, h)}


def test_active_backup_order_takeover_and_failback() -> None:
    team = Team(UPLINKS, TeamPolicy.ACTIVE_BACKUP)
    assert set(team.assignments(VPIDS).values()) == {"nic1/p0"}
    team.set_live("nic1/p0", False)
    assert {team.select(v, h) for v in (1, 2) for h in _flows(10)} == {UPLINKS[1]}
    team.set_nic_live("nic1", False)
    assert team.select(1, 0) == UPLINKS[2]
    assert not team.set_live("nic1/p1", True)  # carrier, but its NIC is still lost
    assert team.set_nic_live("nic1", True) == ["nic1/p1"]  # p0 still has no carrier
    assert team.select(1, 0) == UPLINKS[1]  # failback to the earlier uplink
    assert team.links_down() == ["nic1/p0"]
    team.set_live("nic1/p0", True)
    assert team.select(1, 0) == UPLINKS[0]


def test_active_backup_without_failback_stays_on_backup() -> None:
    team = Team(UPLINKS, TeamPolicy.ACTIVE_BACKUP, failback=False)
    team.set_live("nic1/p0", False)
    assert team.select(1, 0) == UPLINKS[1]
    team.set_live("nic1/p0", True)
    assert team.select(1, 0) == UPLINKS[1]
    # Broadcast is taken on the active uplink, so a VM hears a flood once.
    assert team.accepts("nic1/p1", None, broadcast=True)
    assert not team.accepts("nic1/p0", None, broadcast=True)
    team.set_live("nic1/p1", False)
    assert team.select(1, 0) == UPLINKS[0]


def test_load_based_moves_busiest_vpid_off_overloaded_uplink() -> None:
    team = Team(
        UPLINKS, TeamPolicy.LOAD_BASED, load_interval=1.0, load_threshold=0.75, capacity_bps=8e6
    )
    home = team.assignments(VPIDS)
    # Two VPIDs that port-id puts on the same uplink.
    busy_uplink = home[1]
    a, b = [v for v in VPIDS if home[v] == busy_uplink][:2]
    assert team.rebalance(now=100.0) == []  # first call only starts the interval
    team.account(busy_uplink, a, 500_000, now=100.2)  # 4 Mbit/s
    team.account(busy_uplink, b, 400_000, now=100.4)  # 3.2 Mbit/s: 7.2 > 0.75 * 8 Mbit/s
    assert team.rebalance(now=100.5) == []  # interval not over yet
    moves = team.rebalance(now=101.0)
    assert len(moves) == 1
    vpid, src, dst = moves[0]
    assert (vpid, src) == (a, busy_uplink)
    assert dst != busy_uplink
    assert team.select(a, 0) == next(u for u in UPLINKS if u.name == dst)
    assert team.assignments([a, b]) == {a: dst, b: busy_uplink}
    # The next interval is quiet: no further moves, and the override stays.
    assert team.rebalance(now=102.0) == []
    assert team.assignments([a]) == {a: dst}
    # The override lasts until its uplink dies; then port-id decides again.
    team.set_live(dst, False)
    assert team.assignments([a]) == {a: busy_uplink}
    assert team.overrides() == {}


def test_load_based_does_not_move_when_it_would_not_lower_the_peak() -> None:
    team = Team(UPLINKS[:2], TeamPolicy.LOAD_BASED, capacity_bps=8e6)
    home = team.assignments(VPIDS)
    on0 = [v for v in VPIDS if home[v] == "nic1/p0"]
    on1 = [v for v in VPIDS if home[v] == "nic1/p1"]
    team.rebalance(now=0.0)
    team.account("nic1/p0", on0[0], 1_000_000, now=0.1)  # one VPID alone overloads nic1/p0
    team.account("nic1/p1", on1[0], 100_000, now=0.1)
    assert team.rebalance(now=1.0) == []  # moving it only moves the peak
    assert team.overrides() == {}


def test_load_tallies_ignored_under_other_policies() -> None:
    team = Team(UPLINKS, TeamPolicy.PORT_ID, capacity_bps=8e6)
    team.rebalance(now=0.0)
    team.account("nic1/p0", 1, 10_000_000, now=0.5)
    assert team.rebalance(now=1.0) == []


def test_no_live_uplink_selects_none() -> None:
    for policy in TeamPolicy:
        team = Team(UPLINKS, policy)
        for nic in ("nic1", "nic2"):
            team.set_nic_live(nic, False)
        assert team.live() == []
        assert team.select(1, 12345) is None
        assert team.assignments([1, 2]) == {}
        assert not team.accepts("nic1/p0", 1, broadcast=False)
        assert not team.accepts("nic1/p0", None, broadcast=True)


def test_two_teams_agree() -> None:
    for policy in TeamPolicy:
        one, two = Team(UPLINKS, policy), Team(list(UPLINKS), policy)
        for team in (one, two):
            team.set_live("nic2/p1", False)
        for vpid, h in zip(VPIDS, _flows(200), strict=True):
            assert one.select(vpid, h) == two.select(vpid, h)


_CHILD = """
import json
from nicd.datapath.teaming import Team, TeamPolicy, Uplink, flow_hash
ups = [Uplink(n, p, f"{n}/p{p}") for n in ("nic1", "nic2") for p in (0, 1)]
pid, l4 = Team(ups, TeamPolicy.PORT_ID), Team(ups, TeamPolicy.L4_HASH)
hashes = [flow_hash(17, 0x0A000001 + i, 0x20010DB8 << 96, 5000 + i, 53) for i in range(50)]
print(json.dumps([hashes, pid.assignments(range(50)), [l4.select(1, h).name for h in hashes]]))
"""


def test_choices_do_not_depend_on_hash_randomisation() -> None:
    root = Path(__file__).resolve().parents[2]
    outputs = []
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(root)}
        run = subprocess.run(
            [sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, check=True
        )
        outputs.append(json.loads(run.stdout))
    assert outputs[0] == outputs[1]


def test_accepts_rules() -> None:
    team = Team(UPLINKS, TeamPolicy.PORT_ID)
    # Unicast for a VPID of this host: any live uplink (the fabric picked one per MAC).
    assert all(team.accepts(name, 7, broadcast=False) for name in NAMES)
    # Unicast for no VPID of ours is flooded unknown unicast: not ours.
    assert not team.accepts("nic1/p0", None, broadcast=False)
    # Broadcast: only the first live uplink in configured order.
    assert [n for n in NAMES if team.accepts(n, None, broadcast=True)] == ["nic1/p0"]
    team.set_live("nic1/p0", False)
    assert not team.accepts("nic1/p0", 7, broadcast=False)
    assert [n for n in NAMES if team.accepts(n, None, broadcast=True)] == ["nic1/p1"]


def test_policy_from_str() -> None:
    assert team_policy_from_str("load-based", "hosts.h1.team.policy") is TeamPolicy.LOAD_BASED
    with pytest.raises(ValueError, match=r"^hosts\.h1\.team\.policy: must be one of"):
        team_policy_from_str("round-robin", "hosts.h1.team.policy")


def test_set_policy_drops_overrides() -> None:
    team = Team(UPLINKS, TeamPolicy.LOAD_BASED)
    home = team.assignments([1])[1]
    other = next(n for n in NAMES if n != home)
    team.set_override(1, other)
    assert team.overrides() == {1: other}
    team.set_policy(TeamPolicy.PORT_ID)
    team.set_policy(TeamPolicy.LOAD_BASED)
    assert team.assignments([1]) == {1: home}


@pytest.mark.parametrize(
    ("uplinks", "message"),
    [
        ([UPLINKS[0], Uplink("nic9", 5, "nic1/p0")], "listed twice"),
        ([UPLINKS[0], Uplink("nic1", 0, "other")], "port 0 of nic1 listed twice"),
    ],
)
def test_bad_uplinks_raise(uplinks: list[Uplink], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Team(uplinks, TeamPolicy.PORT_ID)


def test_unknown_uplink_raises() -> None:
    with pytest.raises(ValueError, match="unknown uplink"):
        Team(UPLINKS, TeamPolicy.PORT_ID).set_live("nic9/p0", False)


@given(
    policy=st.sampled_from(list(TeamPolicy)),
    live=st.sets(st.sampled_from(NAMES)),
    vpids=st.lists(st.integers(min_value=0, max_value=2**32), min_size=1, max_size=20),
    fhash=st.integers(min_value=0, max_value=2**32 - 1),
    failback=st.booleans(),
)
def test_select_returns_a_live_uplink_or_none_iff_none_live(
    policy: TeamPolicy, live: set[str], vpids: list[int], fhash: int, failback: bool
) -> None:
    team = Team(UPLINKS, policy, failback=failback)
    for name in NAMES:
        team.set_live(name, name in live)
    for vpid in vpids:
        chosen = team.select(vpid, fhash)
        if live:
            assert chosen is not None and chosen.name in live
        else:
            assert chosen is None
    broadcast_takers = [n for n in NAMES if team.accepts(n, None, broadcast=True)]
    assert len(broadcast_takers) == (1 if live else 0)


def test_load_based_plans_from_the_siblings_loads_too() -> None:
    # Two VPIDs on one uplink, homed on different NICs: each NIC alone sees no overload; with
    # each other's published load both plan the same single move.
    by_uplink: dict[str, list[int]] = {}
    probe = Team(UPLINKS, TeamPolicy.LOAD_BASED)
    for v in range(1, 40):
        by_uplink.setdefault(probe.assignments([v])[v], []).append(v)
    src = max(by_uplink, key=lambda n: len(by_uplink[n]))
    a, b = by_uplink[src][:2]
    teams = [Team(UPLINKS, TeamPolicy.LOAD_BASED, capacity_bps=8_000, load_threshold=0.5)]
    teams.append(Team(UPLINKS, TeamPolicy.LOAD_BASED, capacity_bps=8_000, load_threshold=0.5))
    for team, vpid in zip(teams, (a, b), strict=True):
        team.rebalance(0.0)
        team.account(src, vpid, 400, 0.5)
        assert team.rebalance(1.0) == []  # 400 B/s is not over 0.5 * 1000 B/s
        team.account(src, vpid, 400, 1.5)
    plans = []
    for team, other in ((teams[0], teams[1]), (teams[1], teams[0])):
        team.report_load("other", other.published_load())
        plans.append(team.rebalance(2.0))
    assert plans[0] == plans[1] and len(plans[0]) == 1
    ((moved, frm, to),) = plans[0]
    assert moved == a and frm == src and to != src  # equal load: the lower VPID moves
    assert all(t.assignments([a])[a] == to for t in teams)
    teams[0].set_nic_live("other", False)  # a lost NIC's load is forgotten
    assert teams[0]._peer_load == {}
