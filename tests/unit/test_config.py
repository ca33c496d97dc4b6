"""Config loader: the embedded default, the model, the policy over the bus, endpoints."""

from __future__ import annotations

import dataclasses
import importlib.resources
from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path

import pytest

from bus.codec import decode_untrusted, encode
from bus.messages import PolicyUpdate
from bus.policy import PolicyError
from configs import (
    DEFAULT_CONFIG,
    RUN_DIR_ENV,
    Config,
    WorkloadFlow,
    load_config,
    load_default,
)
from nicd.datapath.classifier import Classifier
from nicd.datapath.conntrack import Timeouts
from nicd.datapath.rules import PROTO_NAMES, Direction, Rule, RuleAction, RuleSet
from nicd.policy import build_pipeline, ruleset_from_spec, timeouts_from_ms
from tests.unit.configrig import BASE, edit_base, load_text
from wire.addr import mac_bytes


def _ruleset(cfg: Config) -> RuleSet:
    """The datapath's rule set of the config's firewall."""
    return ruleset_from_spec(cfg.rule_specs, cfg.firewall_default)


def _bindings(cfg: Config, host: str) -> list[tuple[int, str, int]]:
    """(VPID, VM, interface index) of every interface of ``host``, numbered as an FPAG would."""
    ifaces = [(vm.name, j) for vm in cfg.host(host).vms for j in range(len(vm.interfaces))]
    return [(vpid, vm, j) for vpid, (vm, j) in enumerate(ifaces, start=1)]


# A small valid cluster; error cases edit it by exact text replacement or by appending.
# -- the embedded default ------------------------------------------------------------------------


def test_default_config_loads(tmp_path: Path) -> None:
    cfg = load_default(run_dir=tmp_path)
    assert cfg.path == DEFAULT_CONFIG
    assert [h.name for h in cfg.hosts] == ["h1"]
    h1 = cfg.host("h1")
    assert [n.name for n in h1.nics] == ["nic1", "nic2"]
    assert all(n.uplinks == ("p0", "p1") for n in h1.nics)
    assert {(s.name, s.vlan) for s in cfg.segments} == {("web", 10), ("db", 20)}
    assert {vm.name: vm.nic for vm in h1.vms} == {
        "web1": "nic1",
        "app1": "nic1",
        "web2": "nic2",
        "db1": "nic2",
    }
    assert [p.name for p in cfg.peers] == ["ext1"]
    ext1 = cfg.peer("ext1")
    assert str(ext1.ips[0]) == "10.0.10.200/24" and ext1.segment == "web"
    assert 80 in ext1.tcp_listen and 5000 in ext1.udp_listen
    assert cfg.timers.heartbeat_s == 0.05 and cfg.timers.heartbeat_misses == 3
    assert cfg.timers.reboot_delay_s == 1.0
    assert cfg.firewall_default == "drop" and _ruleset(cfg).default is RuleAction.DROP
    actions = {r.action for r in _ruleset(cfg).rules}
    assert {RuleAction.ALLOW, RuleAction.DROP} <= actions
    assert any(r.inspect for r in _ruleset(cfg).rules)
    assert any(r.sw_only for r in _ruleset(cfg).rules)
    for f in cfg.flows:
        assert 20 <= f.rate <= 100 and 64 <= f.size <= 512
    assert {f.proto for f in cfg.flows} == {"tcp", "udp"}
    assert any(f.expect == "deny" for f in cfg.flows)


def test_default_workload_covers_every_path(tmp_path: Path) -> None:
    cfg = load_default(run_dir=tmp_path)
    paths = set()
    for f in cfg.flows:
        ends = []
        for name in (f.src, f.dst):
            ends.append(cfg.vm(name).nic if name in {vm.name for vm in cfg.vms} else "peer")
        if "peer" in ends:
            paths.add(("north-south", f.proto))
        elif ends[0] == ends[1]:
            paths.add(("same-nic", f.proto))
        else:
            paths.add(("cross-nic", f.proto))
    assert {
        ("same-nic", "tcp"),
        ("cross-nic", "tcp"),
        ("cross-nic", "udp"),
        ("north-south", "tcp"),
        ("north-south", "udp"),
    } <= paths


def _addresses(cfg: Config, name: str) -> list[tuple[str, IPv4Address | IPv6Address]]:
    """(segment, address) of every address of a VM or peer."""
    if name in {vm.name for vm in cfg.vms}:
        return [(i.segment, ip.ip) for i in cfg.vm(name).interfaces for ip in i.ips]
    peer = cfg.peer(name)
    return [(peer.segment, ip.ip) for ip in peer.ips]


def _first_rules(cfg: Config, flow: WorkloadFlow) -> list[Rule | None]:
    """The rule deciding the flow's first packet at each VM end (None: the default action)."""
    dst_ip = cfg.flow_target(flow)
    segment = next(seg for seg, ip in _addresses(cfg, flow.dst) if ip == dst_ip)
    src_ip = next(ip for seg, ip in _addresses(cfg, flow.src) if seg == segment and ip.version == 4)
    classifier = Classifier(_ruleset(cfg))
    vm_names = {vm.name for vm in cfg.vms}
    ends = ((flow.src, Direction.FROM_VM), (flow.dst, Direction.TO_VM))
    return [
        classifier.lookup(
            segment,
            direction,
            4,
            PROTO_NAMES[flow.proto],
            int(src_ip),
            int(dst_ip),
            40000,
            flow.dport,
        )
        for name, direction in ends
        if name in vm_names  # external peers have no distributed firewall
    ]


def test_default_flow_expectations_match_the_firewall(tmp_path: Path) -> None:
    cfg = load_default(run_dir=tmp_path)
    allow_default = _ruleset(cfg).default is RuleAction.ALLOW
    for flow in cfg.flows:
        rules = _first_rules(cfg, flow)
        allowed = all(allow_default if r is None else r.action is RuleAction.ALLOW for r in rules)
        assert allowed == (flow.expect == "deliver"), (flow.name, rules)
    ssh = next(f for f in cfg.flows if f.dport == 22)
    assert any(r is not None and r.inspect for r in _first_rules(cfg, ssh))
    sql = next(f for f in cfg.flows if f.dport == 5432)
    assert any(r is not None and r.sw_only for r in _first_rules(cfg, sql))


def test_default_toml_ships_as_package_data() -> None:
    assert importlib.resources.files("configs").joinpath("default.toml").is_file()


def test_config_is_frozen(tmp_path: Path) -> None:
    cfg = load_text(tmp_path)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.flows = ()  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.host("h1").nics[0].eswitch_capacity = 1  # type: ignore[misc]


# -- the model -----------------------------------------------------------------------------------


def test_specs_and_lookups(tmp_path: Path) -> None:
    cfg = load_text(tmp_path)
    nic1, nic2 = cfg.nic("nic1"), cfg.nic("nic2")
    assert nic1.host == "h1" and nic1.eswitch_capacity == 4096 and nic1.ct_limit == 262144
    assert nic2.eswitch_capacity == 16
    assert nic1.uplink_ppid("p0") == 1 and nic1.uplink_ppid("p1") == 2
    assert nic1.uplink_name("p1") == "nic1/p1"
    with pytest.raises(KeyError):
        nic2.uplink_ppid("p1")
    with pytest.raises(KeyError):
        nic2.uplink_name("p1")
    web1 = cfg.vm("web1")
    assert web1.host == "h1" and web1.tcp_listen == (80,) and web1.udp_listen == ()
    assert web1.interfaces[0].mac == mac_bytes("02:00:00:00:01:01")
    assert str(web1.interfaces[0].ips[0]) == "10.0.10.1/24"
    assert [vm.name for vm in cfg.host("h1").vms] == ["web1", "web2", "db1"]
    assert cfg.peer("ext1").gateway_mac is None
    assert cfg.processes == ("fabricd", "h1", "nic1", "nic2")
    for lookup in (cfg.host, cfg.nic, cfg.vm, cfg.peer, cfg.flow):
        with pytest.raises(KeyError):
            lookup("nope")
    flow = cfg.flow("f1")
    assert (flow.proto, flow.src, flow.dst, flow.dport) == ("tcp", "web2", "web1", 80)
    assert (flow.rate, flow.size, flow.expect) == (10.0, 64, "deliver")
    spec = cfg.flow_spec(flow)
    assert spec.dst == ip_address("10.0.10.1") and spec.src == "web2" and spec.duration is None


def test_defaults_when_sections_are_left_out(tmp_path: Path) -> None:
    cfg = load_text(tmp_path)
    assert cfg.timers == type(cfg.timers)()
    assert cfg.timers.down_after_s == pytest.approx(0.15)
    assert cfg.timeouts == {} and timeouts_from_ms(cfg.timeouts_ms()) == Timeouts()
    h1 = cfg.host("h1")
    assert h1.team_policy == "port-id" and h1.failback is True
    assert cfg.endpoints == {}


def test_flow_targets_first_ipv4_on_a_shared_segment(tmp_path: Path) -> None:
    text = edit_base(
        replace={
            'ips = ["10.0.10.1/24"]': 'ips = ["fd00:10::1/64", "10.0.10.1/24", "10.0.10.11/24"]',
            'ips = ["10.0.10.2/24"]': 'ips = ["fd00:10::2/64", "10.0.10.2/24"]',
        },
        append="""
[[vms.db1.interfaces]]
mac = "02:00:00:00:01:03"
ips = ["10.0.10.3/24"]
segment = "web"

[flows.to-db1]
proto = "tcp"
src = "web1"
dst = "db1"
dport = 5432

[flows.v6-only]
proto = "udp"
src = "web2"
dst = "web1"
dport = 9
expect = "deny"
""",
    )
    cfg = load_text(tmp_path, text)
    assert cfg.flow_target(cfg.flow("f1")) == ip_address("10.0.10.1")
    # db1's first IPv4 is on db, which web1 is not on: its web leg is the one reachable.
    assert cfg.flow_target(cfg.flow("to-db1")) == ip_address("10.0.10.3")


def test_flow_to_a_ipv6_only_destination(tmp_path: Path) -> None:
    text = edit_base(replace={'ips = ["10.0.10.2/24"]': 'ips = ["fd00:10::2/64"]'})
    text = text.replace('ips = ["10.0.10.1/24"]', 'ips = ["10.0.10.1/24", "fd00:10::1/64"]')
    text = text.replace('src = "web2"\ndst = "web1"', 'src = "web1"\ndst = "web2"')
    text = text.replace("[vms.web2]\n", "[vms.web2]\ntcp_listen = [80]\n")
    cfg = load_text(tmp_path, text)
    assert cfg.flow_target(cfg.flow("f1")) == ip_address("fd00:10::2")


# -- policy_dict ---------------------------------------------------------------------------------


def test_policy_round_trips_through_the_bus(tmp_path: Path) -> None:
    cfg = load_default(run_dir=tmp_path)
    policy = cfg.policy("h1", _bindings(cfg, "h1"))
    msg = PolicyUpdate(version=1, policy=policy)
    back = decode_untrusted(encode(msg))
    assert back == msg
    assert isinstance(back, PolicyUpdate)
    got = back.policy
    assert set(got.to_plain()) == {
        "segments",
        "interfaces",
        "rules",
        "firewall_default",
        "team_policy",
        "failback",
        "uplink_bps",
        "load_threshold_pct",
        "timeouts_ms",
        "nics",
    }
    # Everything in it is what the NIC side builds its datapath from, and means the same.
    assert got.segments == cfg.segments
    # The interface names hostd's endpoints go by: a VM's own, "<vm>/<i>" if it has several.
    assert [i.vm for i in got.interfaces] == ["web1", "web2", "app1/0", "app1/1", "db1"]
    assert got.interfaces[3].mac == cfg.vm("app1").interfaces[1].mac
    assert got.interfaces[3].ips == (ip_address("10.0.20.13"),)
    assert ruleset_from_spec(got.rules, got.firewall_default) == _ruleset(cfg)
    assert timeouts_from_ms(got.timeouts_ms) == timeouts_from_ms(cfg.timeouts_ms()) == Timeouts()
    assert got.team_policy == "port-id"
    assert got.failback is True
    assert (got.uplink_bps, got.load_threshold_pct) == (10_000_000_000, 75)
    assert got.to_plain()["nics"] == [
        {"name": "nic1", "uplinks": ["p0", "p1"]},
        {"name": "nic2", "uplinks": ["p0", "p1"]},
    ]
    p = build_pipeline(cfg.nic("nic1"), got, 1)
    assert p.classifier.ruleset == ruleset_from_spec(got.rules, got.firewall_default, 1)


def test_policy_carries_fractional_timeouts_as_ms(tmp_path: Path) -> None:
    text = "[timeouts]\nudp_first = 0.25\ntcp_established = 3\n" + BASE
    cfg = load_text(tmp_path, text)
    assert cfg.timeouts == {"udp_first": 0.25, "tcp_established": 3}
    policy = cfg.policy("h1")
    assert policy.timeouts_ms["udp_first"] == 250
    assert policy.timeouts_ms["tcp_established"] == 3000
    back = decode_untrusted(encode(PolicyUpdate(version=0, policy=policy)))
    assert isinstance(back, PolicyUpdate)
    timeouts = timeouts_from_ms(back.policy.timeouts_ms)
    assert timeouts.udp_first == 0.25 and timeouts == Timeouts.from_dict(cfg.timeouts)
    with pytest.raises(PolicyError, match=r"timeouts_ms\.udp_first"):
        timeouts_from_ms({"udp_first": 0.5})


def test_policy_is_a_copy(tmp_path: Path) -> None:
    cfg = load_text(tmp_path)
    plain = cfg.policy("h1").to_plain()
    plain["rules"][0]["dport"] = [9999, 9999]
    assert cfg.rules[0]["dport"] == 80
    assert cfg.policy("h1").rules[0].dport == (80, 80)
    with pytest.raises(KeyError):
        cfg.policy("h9")


# -- endpoints and the run directory -------------------------------------------------------------


def test_endpoint_is_an_absolute_ipc_path_under_run_dir(tmp_path: Path) -> None:
    cfg = load_default(run_dir=tmp_path / "r")
    assert cfg.run_dir == (tmp_path / "r").absolute()
    for proc in cfg.processes:
        ep = cfg.endpoint(proc)
        assert ep == f"ipc://{tmp_path / 'r' / proc}.sock"
        assert Path(ep.removeprefix("ipc://")).is_absolute()
    with pytest.raises(ValueError):
        cfg.endpoint("../escape")


def test_run_dir_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(RUN_DIR_ENV, raising=False)
    assert load_config(DEFAULT_CONFIG).run_dir == tmp_path / "run"
    monkeypatch.setenv(RUN_DIR_ENV, "elsewhere")
    assert load_config(DEFAULT_CONFIG).run_dir == tmp_path / "elsewhere"
    assert load_config(DEFAULT_CONFIG, run_dir="arg").run_dir == tmp_path / "arg"
    assert load_config(DEFAULT_CONFIG).endpoint("nic1") == f"ipc://{tmp_path}/elsewhere/nic1.sock"


def test_tcp_endpoints_override_ipc(tmp_path: Path) -> None:
    text = (
        '[endpoints]\nfabricd = "tcp://192.0.2.10:7100"\nnic2 = "tcp://[2001:db8::2]:7102"\n' + BASE
    )
    cfg = load_text(tmp_path, text)
    assert cfg.endpoint("fabricd") == "tcp://192.0.2.10:7100"
    assert cfg.endpoint("nic2") == "tcp://[2001:db8::2]:7102"
    assert cfg.endpoint("nic1") == f"ipc://{tmp_path}/run/nic1.sock"
