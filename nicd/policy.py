"""The datapath's own types built from the host's typed policy (``bus.policy.Policy``).

The datapath imports no bus, so this module, outside ``nicd/datapath``, is where the two meet:
``build_pipeline`` makes a NIC's Pipeline from a policy and ``update_policy`` applies a newer
one to a running Pipeline. The policy was validated when it was decoded, so nothing here
rejects input: an exception out of these functions is our own bug.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bus.policy import (
    ActionName,
    DirectionName,
    InterfaceSpec,
    Policy,
    RuleSpec,
    SegmentSpec,
    TeamPolicyName,
    rule_from_plain,
    rules_from_plain,
    timeouts_ms_from_plain,
)
from configs import NicSpec
from nicd.datapath.conntrack import Timeouts
from nicd.datapath.pipeline import DatapathConfig, Emit, Pipeline
from nicd.datapath.rules import Direction, Rule, RuleAction, RuleSet
from nicd.datapath.teaming import TeamPolicy, Uplink
from nicd.datapath.vswitch import Interface, Segment

__all__ = [
    "PolicyChange",
    "build_pipeline",
    "rule_from_dict",
    "rule_from_spec",
    "ruleset_from_config",
    "ruleset_from_spec",
    "team_policy",
    "timeouts_from_ms",
    "update_policy",
]

_ACTIONS = {name: RuleAction(name.value) for name in ActionName}
_DIRECTIONS = {DirectionName.FROM_VM: Direction.FROM_VM, DirectionName.TO_VM: Direction.TO_VM}


def rule_from_spec(r: RuleSpec) -> Rule:
    """The datapath's rule for a policy's rule."""
    return Rule(
        name=r.name,
        priority=r.priority,
        action=_ACTIONS[r.action],
        segment=r.segment,
        direction=None if r.direction is None else _DIRECTIONS[r.direction],
        src=r.src,
        dst=r.dst,
        proto=r.proto,
        sport=r.sport,
        dport=r.dport,
        inspect=r.inspect,
        sw_only=r.sw_only,
    )


def ruleset_from_spec(rules: Sequence[RuleSpec], default: ActionName, version: int = 0) -> RuleSet:
    """The datapath's rule set for a policy's rules and default action."""
    return RuleSet(tuple(map(rule_from_spec, rules)), _ACTIONS[default], version)


def rule_from_dict(d: Mapping[str, Any], where: str) -> Rule:
    """A datapath rule from its config table; raises ``bus.policy.PolicyError`` naming the field."""
    return rule_from_spec(rule_from_plain(d, where))


def ruleset_from_config(
    rules: Sequence[Mapping[str, Any]],
    default: str = "drop",
    version: int = 0,
    *,
    where: str = "rules",
) -> RuleSet:
    """A datapath rule set from config tables; raises ``PolicyError`` naming ``{where}[i]``."""
    specs, action = rules_from_plain(rules, default, where=where)
    if type(version) is not int or version < 0:
        from bus.policy import PolicyError

        raise PolicyError("version", f"must be an integer >= 0, got {version!r}")
    return ruleset_from_spec(specs, action, version)


def team_policy(name: TeamPolicyName) -> TeamPolicy:
    """The datapath's team policy of that name."""
    return TeamPolicy(name.value)


def timeouts_from_ms(d: Mapping[str, Any], where: str = "timeouts_ms") -> Timeouts:
    """The datapath's timeouts: its defaults overridden by a policy's milliseconds."""
    return Timeouts(**{k: v / 1000 for k, v in timeouts_ms_from_plain(d, where).items()})


def _segment(s: SegmentSpec) -> Segment:
    return Segment(s.name, s.vlan)


def _interface(i: InterfaceSpec) -> Interface:
    return Interface(i.vpid, i.vm, i.mac, i.ips, i.segment)


def build_pipeline(spec: NicSpec, policy: Policy, version: int) -> Pipeline:
    """A datapath for NIC ``spec`` from the host's policy at ``version``."""
    uplinks = [
        Uplink(nic.name, i + 1, f"{nic.name}/{port}")
        for nic in policy.nics
        for i, port in enumerate(nic.uplinks)
    ]
    config = DatapathConfig(
        eswitch_capacity=spec.eswitch_capacity,
        ct_limit=spec.ct_limit,
        timeouts=timeouts_from_ms(policy.timeouts_ms),
        failback=policy.failback,
        uplink_bps=policy.uplink_bps,
        load_threshold=policy.load_threshold_pct / 100,
    )
    return Pipeline(
        spec.name,
        config,
        ruleset_from_spec(policy.rules, policy.firewall_default, version),
        map(_segment, policy.segments),
        map(_interface, policy.interfaces),
        uplinks,
        team_policy(policy.team_policy),
    )


@dataclass(frozen=True, slots=True)
class PolicyChange:
    """What ``update_policy`` did: frames to send, and the team policy before and after."""

    emits: list[Emit]
    team_before: TeamPolicy
    team_after: TeamPolicy


def update_policy(p: Pipeline, old: Policy, new: Policy, version: int, now: float) -> PolicyChange:
    """Apply what changed: rules are revalidated only when they changed (O(connections))."""
    if (old.rules, old.firewall_default) != (new.rules, new.firewall_default):
        p.set_rules(ruleset_from_spec(new.rules, new.firewall_default, version), now)
    before, after = p.team.policy, team_policy(new.team_policy)
    emits = p.set_policy(after) if after is not before else []
    return PolicyChange(emits, before, after)
