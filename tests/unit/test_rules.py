"""Firewall rule model: config parsing, validation and the error messages an operator sees."""

from __future__ import annotations

import re
from ipaddress import IPv4Network, IPv6Network
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bus.policy import PolicyError
from nicd.datapath.rules import (
    DEFAULT_PRIORITY,
    Direction,
    Rule,
    RuleAction,
    RuleError,
    RuleSet,
)
from nicd.policy import rule_from_dict, ruleset_from_config


def test_full_rule_from_config() -> None:
    r = rule_from_dict(
        {
            "name": "web-in",
            "priority": 100,
            "action": "allow",
            "segment": "web",
            "direction": "to-vm",
            "src": "10.0.0.0/24",
            "dst": "10.1.2.3",
            "proto": "tcp",
            "sport": "1024-65535",
            "dport": 443,
            "inspect": True,
        },
        "rules[0]",
    )
    assert r == Rule(
        name="web-in",
        priority=100,
        action=RuleAction.ALLOW,
        segment="web",
        direction=Direction.TO_VM,
        src=IPv4Network("10.0.0.0/24"),
        dst=IPv4Network("10.1.2.3/32"),
        proto=6,
        sport=(1024, 65535),
        dport=(443, 443),
        inspect=True,
    )
    assert r.family == 4


def test_minimal_rule_is_all_wildcards() -> None:
    r = rule_from_dict({"name": "deny-all", "action": "drop"}, "rules[0]")
    assert r == Rule(name="deny-all", priority=DEFAULT_PRIORITY, action=RuleAction.DROP)
    assert r.family is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (80, (80, 80)),
        ("80", (80, 80)),
        ("1024-65535", (1024, 65535)),
        ("1024 - 2048", (1024, 2048)),
        ([1024, 65535], (1024, 65535)),
        ([0, 0], (0, 0)),
        ("7-7", (7, 7)),
    ],
)
def test_port_forms(value: Any, expected: tuple[int, int]) -> None:
    r = rule_from_dict({"name": "x", "action": "allow", "proto": "udp", "dport": value}, "r")
    assert r.dport == expected


@pytest.mark.parametrize(
    ("value", "expected"), [("tcp", 6), ("udp", 17), ("icmp", 1), ("icmpv6", 58), (47, 47)]
)
def test_proto_forms(value: Any, expected: int) -> None:
    assert rule_from_dict({"name": "x", "action": "drop", "proto": value}, "r").proto == expected


def test_ports_without_proto_are_allowed() -> None:
    r = rule_from_dict({"name": "x", "action": "allow", "dport": "53"}, "r")
    assert r.proto is None and r.dport == (53, 53)


def test_ipv6_rule() -> None:
    r = rule_from_dict(
        {"name": "v6", "action": "allow", "src": "2001:db8::/64", "proto": "icmpv6"}, "r"
    )
    assert r.src == IPv6Network("2001:db8::/64") and r.family == 6 and r.proto == 58


BAD_RULES: list[tuple[dict[str, Any], str]] = [
    ({"name": "x", "action": "allow", "colour": "red"}, "colour"),
    ({"action": "allow"}, "name"),
    ({"name": "", "action": "allow"}, "name"),
    ({"name": "x"}, "action"),
    ({"name": "x", "action": "accept"}, "action"),
    ({"name": "x", "action": "allow", "priority": -1}, "priority"),
    ({"name": "x", "action": "allow", "priority": True}, "priority"),
    ({"name": "x", "action": "allow", "priority": "10"}, "priority"),
    ({"name": "x", "action": "allow", "segment": ""}, "segment"),
    ({"name": "x", "action": "allow", "direction": "inbound"}, "direction"),
    ({"name": "x", "action": "allow", "direction": ["to-vm"]}, "direction"),
    ({"name": "x", "action": "allow", "src": "10.0.0.0/33"}, "src"),
    ({"name": "x", "action": "allow", "src": "10.0.0.1/24"}, "src"),  # host bits set
    ({"name": "x", "action": "allow", "dst": "not-an-ip"}, "dst"),
    ({"name": "x", "action": "allow", "dst": 167772160}, "dst"),
    ({"name": "x", "action": "allow", "src": "10.0.0.0/8", "dst": "2001:db8::/32"}, "dst"),
    ({"name": "x", "action": "allow", "proto": "sctp"}, "proto"),
    ({"name": "x", "action": "allow", "proto": 256}, "proto"),
    ({"name": "x", "action": "allow", "proto": "icmp", "dst": "2001:db8::/32"}, "proto"),
    ({"name": "x", "action": "allow", "proto": "icmpv6", "src": "10.0.0.0/8"}, "proto"),
    ({"name": "x", "action": "allow", "proto": "tcp", "dport": "80-79"}, "dport"),
    ({"name": "x", "action": "allow", "proto": "tcp", "dport": [90, 80]}, "dport"),
    ({"name": "x", "action": "allow", "proto": "tcp", "dport": 65536}, "dport"),
    ({"name": "x", "action": "allow", "proto": "tcp", "sport": -1}, "sport"),
    ({"name": "x", "action": "allow", "proto": "tcp", "sport": "http"}, "sport"),
    # "80" in Arabic-Indic digits, which str.isdigit() and int() accept:
    ({"name": "x", "action": "allow", "proto": "tcp", "sport": "\u0668\u0660"}, "sport"),
    ({"name": "x", "action": "allow", "proto": "tcp", "sport": [1, 2, 3]}, "sport"),
    ({"name": "x", "action": "allow", "proto": "tcp", "sport": 1.5}, "sport"),
    ({"name": "x", "action": "allow", "proto": "icmp", "dport": 80}, "dport"),
    ({"name": "x", "action": "allow", "proto": 47, "sport": "1-2"}, "sport"),
    ({"name": "x", "action": "drop", "inspect": True}, "inspect"),
    ({"name": "x", "action": "reject", "sw_only": True}, "sw_only"),
    ({"name": "x", "action": "allow", "inspect": "yes"}, "inspect"),
    ({"name": "x", "action": "allow", "inspect": True, "sw_only": True}, "sw_only"),
]


@pytest.mark.parametrize(("table", "field"), BAD_RULES)
def test_bad_rule_names_the_field(table: dict[str, Any], field: str) -> None:
    with pytest.raises(PolicyError, match=rf"^rules\[3\]\.{field}: ") as info:
        rule_from_dict(table, "rules[3]")
    assert info.value.field == f"rules[3].{field}"


def test_rule_that_is_not_a_table() -> None:
    with pytest.raises(PolicyError, match=r"^rules\[0\]: must be a table"):
        rule_from_dict(["allow"], "rules[0]")  # type: ignore[arg-type]


def test_direct_construction_is_validated() -> None:
    with pytest.raises(RuleError, match=re.escape("rule 'x'.dport: inverted range 9-1")):
        Rule(name="x", priority=1, action=RuleAction.ALLOW, proto=6, dport=(9, 1))
    with pytest.raises(RuleError, match=re.escape("rule 'x'.src: must be")):
        Rule(name="x", priority=1, action=RuleAction.ALLOW, src="10.0.0.0/8")  # type: ignore[arg-type]


def test_ruleset_from_config_orders_and_versions() -> None:
    rs = ruleset_from_config(
        [
            {"name": "late", "priority": 200, "action": "drop"},
            {"name": "tie-1", "priority": 100, "action": "allow"},
            {"name": "tie-2", "priority": 100, "action": "reject"},
            {"name": "first", "priority": 0, "action": "allow"},
        ],
        default="reject",
        version=7,
    )
    assert [r.name for r in rs.rules] == ["late", "tie-1", "tie-2", "first"]
    assert [r.name for r in rs.evaluation_order()] == ["first", "tie-1", "tie-2", "late"]
    assert rs.default is RuleAction.REJECT and rs.version == 7


def test_ruleset_error_names_the_rule_index() -> None:
    rules = [{"name": f"r{i}", "action": "allow"} for i in range(5)]
    rules[3] = {"name": "r3", "action": "allow", "proto": "tcp", "dport": "2-1"}
    with pytest.raises(PolicyError, match=r"^rules\[3\]\.dport: inverted range 2-1"):
        ruleset_from_config(rules)
    with pytest.raises(PolicyError, match=r"^firewall\.rules\[3\]\.dport: "):
        ruleset_from_config(rules, where="firewall.rules")


def test_ruleset_rejects_duplicate_names() -> None:
    rules = [{"name": "a", "action": "allow"}, {"name": "b", "action": "drop"}]
    rules.append({"name": "a", "action": "drop"})
    with pytest.raises(PolicyError, match=r"^rules\[2\]\.name: 'a' duplicates rules\[0\]"):
        ruleset_from_config(rules)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"default": "accept"}, "default"), ({"version": -1}, "version")],
)
def test_ruleset_bad_default_or_version(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(PolicyError, match=rf"^{field}: "):
        ruleset_from_config([], **kwargs)


def test_ruleset_rejects_non_list() -> None:
    with pytest.raises(PolicyError, match=r"^rules: must be a list"):
        ruleset_from_config({"name": "x", "action": "allow"})  # type: ignore[arg-type]


def test_ruleset_default_is_drop() -> None:
    assert RuleSet(()).default is RuleAction.DROP
    assert ruleset_from_config([]).default is RuleAction.DROP


CONFIG_KEYS = [
    "name", "priority", "action", "segment", "direction", "src", "dst", "proto", "sport",
    "dport", "inspect", "sw_only", "colour",
]  # fmt: skip
toml_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats()
    | st.text(max_size=20)
    | st.sampled_from(["allow", "drop", "tcp", "to-vm", "10.0.0.0/8", "::/0", "1-2", "80"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=5,
)


@given(st.dictionaries(st.sampled_from(CONFIG_KEYS), toml_values))
def test_any_config_table_yields_a_rule_or_policy_error(table: dict[str, Any]) -> None:
    try:
        r = rule_from_dict(table, "rules[0]")
    except PolicyError as e:
        assert str(e).startswith("rules[0]")
    else:
        assert isinstance(r, Rule)
