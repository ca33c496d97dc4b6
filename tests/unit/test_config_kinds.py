"""VM and peer kinds: built-in by default; a netns one's `run` and `checks`, every error naming
its field; no workload flow ends at a netns endpoint; configs/netns.toml loads and its firewall
allows and denies what its comments say."""

from __future__ import annotations

from ipaddress import ip_address
from pathlib import Path

import pytest

from configs import BUILTIN, NETNS, CheckSpec, ConfigError, PeerSpec, VmSpec, load_config
from configs.ranges import MAX_COMMAND_CHARS, MAX_COMMANDS
from nicd.datapath.classifier import Classifier
from nicd.datapath.rules import PROTO_NAMES, Direction
from nicd.policy import ruleset_from_spec
from tests.unit.configrig import BASE, edit_base, load_text

NETNS_TOML = Path(__file__).resolve().parents[2] / "configs" / "netns.toml"


def _vm(extra: str = "", name: str = "ns1", kind: str = 'kind = "netns"\n') -> str:
    """A VM on nic1 of BASE's web segment, of `kind`, with `extra` keys."""
    return (
        f'\n[vms.{name}]\nnic = "nic1"\n{kind}{extra}'
        f"[[vms.{name}.interfaces]]\n"
        'mac = "02:00:00:00:01:31"\nips = ["10.0.10.31/24", "fd00:10::31/64"]\nsegment = "web"\n'
    )


def _peer(extra: str = "", kind: str = 'kind = "netns"\n') -> str:
    return (
        f'\n[peers.nsext]\n{kind}mac = "02:00:00:00:0e:02"\nips = ["10.0.10.201/24"]\n'
        f'segment = "web"\n{extra}'
    )


def _runs(n: int) -> str:
    return "run = [" + ", ".join(f'"sleep {i}"' for i in range(n)) + "]\n"


def _checks(n: int) -> str:
    items = ", ".join(f'{{name = "c{i}", cmd = "true"}}' for i in range(n))
    return f"checks = [{items}]\n"


# -- defaults and a valid netns VM and peer ----------------------------------------------------


def test_every_existing_config_is_builtin(tmp_path: Path) -> None:
    cfg = load_text(tmp_path)
    specs: list[VmSpec | PeerSpec] = [*cfg.vms, *cfg.peers]
    for spec in specs:
        assert (spec.kind, spec.run, spec.checks) == (BUILTIN, (), ()), spec.name
        assert cfg.kind_of(spec.name) == BUILTIN
    for path in sorted(NETNS_TOML.parent.glob("*.toml")):
        if path != NETNS_TOML:
            shipped = load_config(path, run_dir=tmp_path / "run")
            kinds = {vm.kind for vm in shipped.vms} | {p.kind for p in shipped.peers}
            assert kinds == {BUILTIN}, path.name


def test_a_netns_vm_and_peer_with_services_and_checks(tmp_path: Path) -> None:
    checks = (
        'checks = [{name = "ping", cmd = "ping -c 1 10.0.10.2"},\n'
        '  {name = "no-telnet", cmd = "curl telnet://10.0.10.2", expect = "fail",'
        " timeout_s = 2.5}]\n"
    )
    run = 'run = ["python3 -m http.server 80", "iperf3 -s"]\n'
    text = edit_base(append=_vm(run + checks) + _peer('run = ["iperf3 -s"]\n'))
    cfg = load_text(tmp_path, text)
    ns1 = cfg.vm("ns1")
    assert ns1.kind == NETNS and cfg.kind_of("ns1") == NETNS
    assert ns1.run == ("python3 -m http.server 80", "iperf3 -s")
    assert ns1.checks == (
        CheckSpec("ping", "ping -c 1 10.0.10.2", "ok", 10.0),
        CheckSpec("no-telnet", "curl telnet://10.0.10.2", "fail", 2.5),
    )
    # Its interface is a VM interface like any other: MAC, v4 and v6, segment, home NIC.
    (iface,) = ns1.interfaces
    assert iface.mac == bytes.fromhex("020000000131") and iface.segment == "web"
    assert [str(ip) for ip in iface.ips] == ["10.0.10.31/24", "fd00:10::31/64"]
    assert (ns1.host, ns1.nic, ns1.tcp_listen, ns1.udp_listen) == ("h1", "nic1", (), ())
    assert [i.vm for i in cfg.policy("h1", [(9, "ns1", 0)]).interfaces] == ["ns1"]
    peer = cfg.peer("nsext")
    assert (peer.kind, peer.run, peer.checks) == (NETNS, ("iperf3 -s",), ())
    assert cfg.kind_of("nsext") == NETNS
    with pytest.raises(KeyError):
        cfg.kind_of("nobody")


def test_a_netns_vm_may_declare_nothing_to_run(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, edit_base(append=_vm()))
    assert (cfg.vm("ns1").kind, cfg.vm("ns1").run, cfg.vm("ns1").checks) == (NETNS, (), ())


def test_bounds_are_inclusive(tmp_path: Path) -> None:
    longest = "x" * MAX_COMMAND_CHARS
    extra = _runs(MAX_COMMANDS - 1)[:-2] + f', "{longest}"]\n' + _checks(MAX_COMMANDS)
    cfg = load_text(tmp_path, edit_base(append=_vm(extra)))
    assert len(cfg.vm("ns1").run) == len(cfg.vm("ns1").checks) == MAX_COMMANDS
    assert cfg.vm("ns1").run[-1] == longest


def test_a_builtin_kind_said_aloud_is_the_default(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, edit_base(append=_vm(kind='kind = "builtin"\n')))
    assert cfg.vm("ns1").kind == BUILTIN


# -- every error names its field ---------------------------------------------------------------

FLOW_TO_NS = '\n[flows.f2]\nproto = "tcp"\nsrc = "web2"\ndst = "ns1"\ndport = 80\n'
FLOW_FROM_PEER = '\n[flows.f3]\nproto = "tcp"\nsrc = "nsext"\ndst = "web1"\ndport = 80\n'

ERRORS: list[tuple[str, str, str, str]] = [
    # (id, appended to BASE, field, reason fragment)
    ("kind-unknown", _vm(kind='kind = "docker"\n'), "vms.ns1.kind",
     "must be 'builtin' or 'netns', got 'docker'"),
    ("kind-not-str", _vm(kind="kind = 1\n"), "vms.ns1.kind", "must be 'builtin' or 'netns'"),
    ("peer-kind-unknown", _peer(kind='kind = "vm"\n'), "peers.nsext.kind",
     "must be 'builtin' or 'netns'"),
    ("run-on-builtin-vm", _vm('run = ["iperf3 -s"]\n', kind=""), "vms.ns1.run",
     'only a netns VM runs commands (kind = "netns")'),
    ("checks-on-builtin-vm", _vm('checks = []\n', kind='kind = "builtin"\n'), "vms.ns1.checks",
     "only a netns VM runs commands"),
    ("run-on-builtin-peer", _peer('run = ["iperf3 -s"]\n', kind=""), "peers.nsext.run",
     "only a netns peer runs commands"),
    ("listen-on-netns-vm", _vm("tcp_listen = [80]\n"), "vms.ns1.tcp_listen",
     "a netns VM has no built-in listeners: its services are its `run` commands"),
    ("listen-on-netns-peer", _peer("udp_listen = [53]\n"), "peers.nsext.udp_listen",
     "a netns peer has no built-in listeners"),
    ("run-not-array", _vm('run = "iperf3 -s"\n'), "vms.ns1.run", "must be an array, got string"),
    ("run-empty-string", _vm('run = ["iperf3 -s", ""]\n'), "vms.ns1.run[1]", "an empty command"),
    ("run-blank", _vm('run = ["   "]\n'), "vms.ns1.run[0]", "an empty command"),
    ("run-not-string", _vm("run = [42]\n"), "vms.ns1.run[0]",
     "must be a command (a string), got integer"),
    ("run-too-long", _vm(f'run = ["{"x" * (MAX_COMMAND_CHARS + 1)}"]\n'), "vms.ns1.run[0]",
     f"at most {MAX_COMMAND_CHARS} characters, got {MAX_COMMAND_CHARS + 1}"),
    ("run-too-many", _vm(_runs(MAX_COMMANDS + 1)), "vms.ns1.run",
     f"at most {MAX_COMMANDS} entries, got {MAX_COMMANDS + 1}"),
    ("run-newline", _vm('run = ["iperf3 -s\\nreboot"]\n'), "vms.ns1.run[0]",
     "a control character ('\\n') in the command"),
    ("run-unbalanced-quote", _vm("run = [\"sh -c 'echo\"]\n"), "vms.ns1.run[0]",
     "not a command line a shell can split"),
    ("checks-too-many", _vm(_checks(MAX_COMMANDS + 1)), "vms.ns1.checks",
     f"at most {MAX_COMMANDS} entries"),
    ("check-not-table", _vm('checks = ["ping"]\n'), "vms.ns1.checks[0]", "must be a table"),
    ("check-no-cmd", _vm('checks = [{name = "a"}]\n'), "vms.ns1.checks[0].cmd", "missing"),
    ("check-no-name", _vm('checks = [{cmd = "true"}]\n'), "vms.ns1.checks[0].name", "missing"),
    ("check-bad-name", _vm('checks = [{name = "a b", cmd = "true"}]\n'),
     "vms.ns1.checks[0].name", "must be a name"),
    ("check-dup-name", _vm('checks = [{name = "a", cmd = "true"}, {name = "a", cmd = "false"}]\n'),
     "vms.ns1.checks[1].name", "check 'a' already declared"),
    ("check-unknown-key", _vm('checks = [{name = "a", cmd = "true", retries = 3}]\n'),
     "vms.ns1.checks[0].retries", "unknown key"),
    ("check-bad-expect", _vm('checks = [{name = "a", cmd = "true", expect = "pass"}]\n'),
     "vms.ns1.checks[0].expect", "must be 'ok' or 'fail', got 'pass'"),
    ("check-empty-cmd", _vm('checks = [{name = "a", cmd = ""}]\n'), "vms.ns1.checks[0].cmd",
     "an empty command"),
    ("check-timeout-zero", _vm('checks = [{name = "a", cmd = "true", timeout_s = 0}]\n'),
     "vms.ns1.checks[0].timeout_s", "(range 0.1..600 s)"),
    ("check-timeout-big", _vm('checks = [{name = "a", cmd = "true", timeout_s = 601}]\n'),
     "vms.ns1.checks[0].timeout_s", "must be a number of seconds <= 600"),
    ("peer-check-dup", _peer('checks = [{name = "a", cmd = "true"}, {name = "a", cmd = "ls"}]\n'),
     "peers.nsext.checks[1].name", "already declared"),
    ("flow-to-netns-vm", _vm() + FLOW_TO_NS, "flows.f2.dst",
     "'ns1' is a netns endpoint: the workload runs between built-in VMs and peers only"),
    ("flow-from-netns-peer", _peer() + FLOW_FROM_PEER, "flows.f3.src",
     "'nsext' is a netns endpoint: the workload runs between built-in VMs and peers only "
     "(a netns one carries real applications: see peers.nsext.run)"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("appended", "field", "reason"), [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS]
)
def test_errors_name_their_field(tmp_path: Path, appended: str, field: str, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, BASE + appended)
    err = info.value
    assert err.field == field, str(err)
    assert reason in err.reason, str(err)


def test_the_flow_error_is_about_the_kind(tmp_path: Path) -> None:
    # The same flow to a built-in VM of the same shape loads: it is the kind that is refused.
    text = BASE + _vm("tcp_listen = [80]\n", kind="") + FLOW_TO_NS
    assert load_text(tmp_path, text).flow("f2").dst == "ns1"


# -- configs/netns.toml ------------------------------------------------------------------------


def test_netns_toml_mixes_both_kinds(tmp_path: Path) -> None:
    cfg = load_config(NETNS_TOML, run_dir=tmp_path / "run")
    netns = [vm for vm in cfg.vms if vm.kind == NETNS]
    assert len({vm.nic for vm in netns}) >= 2 and len(netns) >= 3
    assert len({vm.nic for vm in netns if vm.run}) == 1  # one server; clients on both NICs
    assert any(p.kind == NETNS for p in cfg.peers) and any(p.kind == BUILTIN for p in cfg.peers)
    builtin = {vm.name for vm in cfg.vms if vm.kind == BUILTIN}
    assert builtin == {"web1", "web2", "app1", "db1"}
    assert cfg.flows and all({f.src, f.dst} <= builtin | {"ext1"} for f in cfg.flows)
    assert all(vm.checks for vm in netns)
    # Addresses in the web segment's subnet, MACs per the plan: 02:00:00:00:<segment>:<octet>,
    # segment 01 for the web VMs and 0e for the peer outside the host.
    ends = [(i.mac, i.ips, 0x01) for vm in netns for i in vm.interfaces]
    ends += [(p.mac, p.ips, 0x0E) for p in cfg.peers if p.kind == NETNS]
    for mac, ips, segment_byte in ends:
        v4 = [ip for ip in ips if ip.version == 4]
        assert v4 and all(str(ip.network) == "10.0.10.0/24" for ip in v4), ips
        assert any(ip.version == 6 for ip in ips), ips
        assert mac[:5] == bytes([2, 0, 0, 0, segment_byte]), mac.hex(":")


def _decide(cfg_path: Path, tmp_path: Path, proto: str, src: str, dst: str, dport: int) -> str:
    """The action of the rule deciding a first packet to-VM at `dst` from `src` (web segment)."""
    cfg = load_config(cfg_path, run_dir=tmp_path / "run")
    classifier = Classifier(ruleset_from_spec(cfg.rule_specs, cfg.firewall_default))
    rule = classifier.lookup(
        "web", Direction.TO_VM, 4, PROTO_NAMES[proto],
        int(ip_address(src)), int(ip_address(dst)), 40000, dport,
    )  # fmt: skip
    action = cfg.firewall_default if rule is None else rule.action.value
    return str(action)


@pytest.mark.parametrize(
    ("proto", "dport", "action"),
    [("tcp", 80, "allow"), ("tcp", 5201, "allow"), ("icmp", 0, "allow"),
     ("tcp", 23, "drop"), ("tcp", 8080, "reject"), ("tcp", 9999, "drop")],
)  # fmt: skip
def test_netns_toml_firewall(tmp_path: Path, proto: str, dport: int, action: str) -> None:
    # nsclient (10.0.10.23) to nsweb (10.0.10.21), and the peer nsext (.201) to nsweb.
    for src in ("10.0.10.23", "10.0.10.201"):
        got = _decide(NETNS_TOML, tmp_path, proto, src, "10.0.10.21", dport)
        assert got == action, (src, proto, dport)
