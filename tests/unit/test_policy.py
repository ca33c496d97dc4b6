"""The typed policy (bus.policy) and the datapath's own types (nicd.policy) agree."""

from __future__ import annotations

from dataclasses import fields

import pytest

from bus.policy import (
    MAX_TIMEOUT_MS,
    TIMEOUT_NAMES,
    ActionName,
    DirectionName,
    PolicyError,
    TeamPolicyName,
    timeouts_ms_from_plain,
)
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


def test_a_timeout_past_a_year_is_refused_before_it_reaches_the_codec() -> None:
    assert timeouts_ms_from_plain({"tcp_established": MAX_TIMEOUT_MS}) == {
        "tcp_established": MAX_TIMEOUT_MS
    }
    with pytest.raises(PolicyError, match=r"timeouts_ms\.tcp_established"):
        timeouts_ms_from_plain({"tcp_established": MAX_TIMEOUT_MS + 1})
    with pytest.raises(PolicyError):
        timeouts_ms_from_plain({"tcp_established": 10**20})
