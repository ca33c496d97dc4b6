"""The typed policy (bus.policy) and the datapath's own types (nicd.policy) agree."""

from __future__ import annotations

from dataclasses import fields

from bus.policy import TIMEOUT_NAMES, ActionName, DirectionName, TeamPolicyName
from nicd.datapath.conntrack import Timeouts
from nicd.datapath.rules import Direction, RuleAction
from nicd.datapath.teaming import TeamPolicy
from nicd.policy import team_policy, timeouts_from_ms


def test_names_match_the_datapath() -> None:
    assert tuple(f.name for f in fields(Timeouts)) == TIMEOUT_NAMES
    assert [p.value for p in TeamPolicyName] == [p.value for p in TeamPolicy]
    assert [a.value for a in ActionName] == [a.value for a in RuleAction]
    assert len(DirectionName) == len(Direction)
    assert all(team_policy(name).value == name for name in TeamPolicyName)


def test_timeouts_are_overrides_of_the_datapath_defaults() -> None:
    assert timeouts_from_ms({}) == Timeouts()
    assert timeouts_from_ms({"udp_first": 250}) == Timeouts(udp_first=0.25)
