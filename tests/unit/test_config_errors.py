"""Config loader: every error names its field (the path a user finds it under in the TOML)."""

from __future__ import annotations

from pathlib import Path

import pytest

from configs import (
    ConfigError,
    load_config,
)
from tests.unit.configrig import BASE, edit_base, load_text, write_config

# -- errors name their field ---------------------------------------------------------------------

ERROR_CASES: list[tuple[str, str, str, str]] = [
    # (id, config text, field, reason fragment)
    ("unknown-top-key", edit_base(append="[bogus]\nx = 1\n"), "bogus", "unknown key"),
    (
        "eswitch-negative",
        edit_base(replace={"eswitch_capacity = 16": "eswitch_capacity = -1"}),
        "hosts[0].nics[1].eswitch_capacity",
        "must be an integer >= 0",
    ),
    (
        "eswitch-bool",
        edit_base(replace={"eswitch_capacity = 16": "eswitch_capacity = true"}),
        "hosts[0].nics[1].eswitch_capacity",
        "must be an integer >= 0",
    ),
    (
        "eswitch-str",
        edit_base(replace={"eswitch_capacity = 16": 'eswitch_capacity = "big"'}),
        "hosts[0].nics[1].eswitch_capacity",
        "integer",
    ),
    (
        "nic-unknown-key",
        edit_base(replace={'uplinks = ["p0", "p1"]': 'uplinks = ["p0", "p1"]\nspeed = 25'}),
        "hosts[0].nics[0].speed",
        "unknown key",
    ),
    (
        "ct-limit-zero",
        edit_base(replace={"eswitch_capacity = 16": "ct_limit = 0"}),
        "hosts[0].nics[1].ct_limit",
        "must be an integer >= 1",
    ),
    (
        "uplinks-dup",
        edit_base(replace={'uplinks = ["p0", "p1"]': 'uplinks = ["p0", "p0"]'}),
        "hosts[0].nics[0].uplinks[1]",
        "listed twice",
    ),
    (
        "uplinks-empty",
        edit_base(replace={'uplinks = ["p0", "p1"]': "uplinks = []"}),
        "hosts[0].nics[0].uplinks",
        "at least one uplink",
    ),
    (
        "uplink-bad-name",
        edit_base(replace={'uplinks = ["p0", "p1"]': 'uplinks = ["p0", "p/1"]'}),
        "hosts[0].nics[0].uplinks[1]",
        "must be a name",
    ),
    (
        "nic-missing-uplinks",
        edit_base(replace={'uplinks = ["p0"]\n': ""}),
        "hosts[0].nics[1].uplinks",
        "missing",
    ),
    ("hosts-not-array", edit_base(append="").replace("[[hosts]]", "[hosts]"), "hosts", "array"),
    (
        "team-policy",
        edit_base(replace={'name = "h1"': 'name = "h1"\nteam_policy = "round-robin"'}),
        "hosts[0].team_policy",
        "must be one of",
    ),
    (
        "uplink-mbps-zero",
        edit_base(replace={'name = "h1"': 'name = "h1"\nuplink_mbps = 0'}),
        "hosts[0].uplink_mbps",
        "0.001..1e6",
    ),
    (
        "load-threshold-above-one",
        edit_base(replace={'name = "h1"': 'name = "h1"\nload_threshold = 1.5'}),
        "hosts[0].load_threshold",
        "0.01..1",
    ),
    (
        "failback-str",
        edit_base(replace={'name = "h1"': 'name = "h1"\nfailback = "yes"'}),
        "hosts[0].failback",
        "true or false",
    ),
    (
        "host-named-fabricd",
        edit_base(replace={'name = "h1"': 'name = "fabricd"'}),
        "hosts[0].name",
        "already used",
    ),
    (
        "nic-name-dup-across-hosts",
        edit_base(
            append='\n[[hosts]]\nname = "h2"\n[[hosts.nics]]\nname = "nic1"\nuplinks = ["p0"]\n'
        ),
        "hosts[1].nics[0].name",
        "'nic1' already used by hosts[0].nics[0].name",
    ),
    (
        "host-name-is-a-nic",
        edit_base(
            append='\n[[hosts]]\nname = "nic2"\n[[hosts.nics]]\nname = "nic3"\nuplinks = ["p0"]\n'
        ),
        "hosts[1].name",
        "already used",
    ),
    (
        "segment-dup-name",
        edit_base(replace={'name = "db"\nvlan = 20': 'name = "web"\nvlan = 20'}),
        "segments[1].name",
        "already defined",
    ),
    (
        "segment-dup-vlan",
        edit_base(replace={"vlan = 20": "vlan = 10"}),
        "segments[1].vlan",
        "vlan 10 already used by segments[0]",
    ),
    (
        "segment-vlan-range",
        edit_base(replace={"vlan = 20": "vlan = 4095"}),
        "segments[1].vlan",
        "1..4094",
    ),
    (
        "segment-unknown-key",
        edit_base(replace={"vlan = 20": "vlan = 20\ncolor = 1"}),
        "segments[1].color",
        "unknown key",
    ),
    (
        "vm-bad-mac",
        edit_base(replace={'mac = "02:00:00:00:01:01"': 'mac = "02:00:00:00:01"'}),
        "vms.web1.interfaces[0].mac",
        "not a MAC address",
    ),
    (
        "vm-mac-not-str",
        edit_base(replace={'mac = "02:00:00:00:01:01"': "mac = 42"}),
        "vms.web1.interfaces[0].mac",
        "not a MAC address",
    ),
    (
        "vm-multicast-mac",
        edit_base(replace={'mac = "02:00:00:00:01:01"': 'mac = "03:00:00:00:01:01"'}),
        "vms.web1.interfaces[0].mac",
        "not a unicast MAC address",
    ),
    (
        "vm-dup-mac",
        edit_base(replace={'mac = "02:00:00:00:01:02"': 'mac = "02:00:00:00:01:01"'}),
        "vms.web2.interfaces[0].mac",
        "already used by vms.web1.interfaces[0].mac",
    ),
    (
        "vm-dup-ip",
        edit_base(replace={'ips = ["10.0.10.2/24"]': 'ips = ["10.0.10.1/24"]'}),
        "vms.web2.interfaces[0].ips[0]",
        "10.0.10.1 already used in segment 'web' by vms.web1.interfaces[0].ips[0]",
    ),
    (
        "vm-ip-twice",
        edit_base(replace={'ips = ["10.0.10.2/24"]': 'ips = ["10.0.10.2/24", "10.0.10.2/16"]'}),
        "vms.web2.interfaces[0].ips[1]",
        "listed twice",
    ),
    (
        "vm-ip-no-prefix",
        edit_base(replace={'ips = ["10.0.10.1/24"]': 'ips = ["10.0.10.1"]'}),
        "vms.web1.interfaces[0].ips[0]",
        "prefix length",
    ),
    (
        "vm-ip-garbage",
        edit_base(replace={'ips = ["10.0.10.1/24"]': 'ips = ["10.0.10.300/24"]'}),
        "vms.web1.interfaces[0].ips[0]",
        "not an address",
    ),
    (
        "vm-ip-network-address",
        edit_base(replace={'ips = ["10.0.10.1/24"]': 'ips = ["10.0.10.0/24"]'}),
        "vms.web1.interfaces[0].ips[0]",
        "not a host address",
    ),
    (
        "vm-unknown-nic",
        edit_base(replace={'[vms.web1]\nnic = "nic1"': '[vms.web1]\nnic = "nic9"'}),
        "vms.web1.nic",
        "unknown NIC 'nic9'",
    ),
    (
        "vm-missing-nic",
        edit_base(replace={'[vms.web1]\nnic = "nic1"\n': "[vms.web1]\n"}),
        "vms.web1.nic",
        "missing",
    ),
    (
        "vm-wrong-host",
        edit_base(replace={'[vms.web1]\nnic = "nic1"': '[vms.web1]\nnic = "nic1"\nhost = "h2"'}),
        "vms.web1.host",
        "is on 'h1'",
    ),
    (
        "vm-unknown-segment",
        edit_base(replace={'ips = ["10.0.10.1/24"]\nsegment = "web"': 'segment = "dmz"'}),
        "vms.web1.interfaces[0].segment",
        "unknown segment 'dmz'",
    ),
    (
        "vm-unknown-key",
        edit_base(
            replace={"tcp_listen = [80]\n[[vms.web1": "cpus = 2\ntcp_listen = [80]\n[[vms.web1"}
        ),
        "vms.web1.cpus",
        "unknown key",
    ),
    (
        "vm-interfaces-not-array",
        edit_base(append='\n[vms.x]\nnic = "nic1"\ninterfaces = "eth0"\n'),
        "vms.x.interfaces",
        "must be an array",
    ),
    (
        "vm-no-interfaces",
        edit_base(append='\n[vms.x]\nnic = "nic1"\ninterfaces = []\n'),
        "vms.x.interfaces",
        "at least one interface",
    ),
    (
        "vm-bad-name",
        edit_base(append='\n["vms"."a b"]\nnic = "nic1"\ninterfaces = []\n'),
        "vms.a b",
        "must be a name",
    ),
    (
        "vm-listen-range",
        edit_base(
            replace={"tcp_listen = [80]\n[[vms.web1": "tcp_listen = [80, 70000]\n[[vms.web1"}
        ),
        "vms.web1.tcp_listen[1]",
        "1..65535",
    ),
    (
        "vm-listen-dup",
        edit_base(replace={"tcp_listen = [80]\n[[vms.web1": "tcp_listen = [80, 80]\n[[vms.web1"}),
        "vms.web1.tcp_listen[1]",
        "listed twice",
    ),
    (
        "peer-named-like-vm",
        edit_base(
            append='\n[peers.web1]\nmac = "02:00:00:00:0e:09"\nips = ["10.0.10.9/24"]\n'
            'segment = "web"\n'
        ),
        "peers.web1",
        "already used by vms.web1",
    ),
    (
        "peer-dup-ip",
        edit_base(replace={'ips = ["10.0.10.200/24"]': 'ips = ["10.0.10.2/24"]'}),
        "peers.ext1.ips[0]",
        "already used in segment 'web' by vms.web2",
    ),
    (
        "peer-dup-mac",
        edit_base(replace={'mac = "02:00:00:00:0e:01"': 'mac = "02:00:00:00:02:01"'}),
        "peers.ext1.mac",
        "already used by vms.db1",
    ),
    (
        "peer-bad-gateway",
        edit_base(
            replace={
                'segment = "web"\ntcp_listen = [80]\n\n[flows': 'segment = "web"\n'
                'gateway_mac = "zz"\ntcp_listen = [80]\n\n[flows'
            }
        ),
        "peers.ext1.gateway_mac",
        "not a MAC address",
    ),
    (
        "peer-unknown-segment",
        edit_base(
            replace={
                'ips = ["10.0.10.200/24"]\nsegment = "web"': 'ips = ["10.0.10.200/24"]\n'
                'segment = "wan"'
            }
        ),
        "peers.ext1.segment",
        "unknown segment 'wan'",
    ),
    (
        "peer-no-ips",
        edit_base(replace={'ips = ["10.0.10.200/24"]': "ips = []"}),
        "peers.ext1.ips",
        "at least one address",
    ),
    (
        "flow-unknown-src",
        edit_base(replace={'src = "web2"': 'src = "ghost"'}),
        "flows.f1.src",
        "unknown VM or peer 'ghost'",
    ),
    (
        "flow-unknown-dst",
        edit_base(replace={'dst = "web1"': 'dst = "ghost"'}),
        "flows.f1.dst",
        "unknown VM or peer 'ghost'",
    ),
    (
        "flow-to-self",
        edit_base(replace={'dst = "web1"': 'dst = "web2"'}),
        "flows.f1.dst",
        "same as src",
    ),
    (
        "flow-proto",
        edit_base(replace={'proto = "tcp"\nsrc': 'proto = "sctp"\nsrc'}),
        "flows.f1.proto",
        "'tcp' or 'udp'",
    ),
    (
        "flow-dport-zero",
        edit_base(replace={'dst = "web1"\ndport = 80': 'dst = "web1"\ndport = 0'}),
        "flows.f1.dport",
        "1..65535",
    ),
    (
        "flow-not-listening",
        edit_base(replace={'dst = "web1"\ndport = 80': 'dst = "web1"\ndport = 81'}),
        "flows.f1.dport",
        "'web1' does not listen on tcp 81",
    ),
    (
        "flow-across-segments",
        edit_base(replace={'dst = "web1"\ndport = 80': 'dst = "db1"\ndport = 5432'}),
        "flows.f1.dst",
        "segments are not routed",
    ),
    (
        "flow-expect",
        edit_base(append='expect = "maybe"\n'),
        "flows.f1.expect",
        "'deliver' or 'deny'",
    ),
    ("flow-rate", edit_base(append="rate = -1\n"), "flows.f1.rate", ">= 0"),
    ("flow-rate-nan", edit_base(append="rate = nan\n"), "flows.f1.rate", ">= 0"),
    ("flow-size", edit_base(append="size = 70000\n"), "flows.f1.size", "over the tcp limit"),
    ("flow-unknown-key", edit_base(append="burst = 3\n"), "flows.f1.burst", "unknown key"),
    (
        "firewall-bad-dport",
        edit_base(replace={"dport = 80\n\n[[hosts]]": 'dport = "eighty"\n\n[[hosts]]'}),
        "firewall.rules[0].dport",
        "bad port",
    ),
    (
        "firewall-unknown-rule-key",
        edit_base(replace={'name = "http"': 'name = "http"\nlog = true'}),
        "firewall.rules[0].log",
        "unknown key",
    ),
    (
        "firewall-inspect-on-drop",
        edit_base(replace={'action = "allow"': 'action = "drop"\ninspect = true'}),
        "firewall.rules[0].inspect",
        "only valid with action allow",
    ),
    (
        "firewall-rule-segment",
        edit_base(replace={'name = "http"': 'name = "http"\nsegment = "dmz"'}),
        "firewall.rules[0].segment",
        "unknown segment 'dmz'",
    ),
    (
        "firewall-dup-rule",
        edit_base(
            replace={"[[hosts]]": '[[firewall.rules]]\nname = "http"\naction = "drop"\n\n[[hosts]]'}
        ),
        "firewall.rules[1].name",
        "duplicates",
    ),
    (
        "firewall-default",
        edit_base(replace={'default = "drop"': 'default = "maybe"'}),
        "firewall.default",
        "unknown action",
    ),
    (
        "firewall-unknown-key",
        edit_base(replace={'default = "drop"': 'default = "drop"\nstateful = true'}),
        "firewall.stateful",
        "unknown key",
    ),
    ("timeouts-unknown", "[timeouts]\ntcp_forever = 1\n" + BASE, "timeouts.tcp_forever", "unknown"),
    ("timeouts-negative", "[timeouts]\nudp_first = -1\n" + BASE, "timeouts.udp_first", "positive"),
    ("timeouts-sub-ms", "[timeouts]\nudp_first = 0.0005\n" + BASE, "timeouts.udp_first", "ms"),
    (
        "timeouts-huge",
        "[timeouts]\ntcp_established = 1e17\n" + BASE,
        "timeouts.tcp_established",
        "at most",
    ),
    ("timers-zero", "[timers]\nheartbeat_s = 0\n" + BASE, "timers.heartbeat_s", "> 0"),
    (
        "timers-misses",
        "[timers]\nheartbeat_misses = 1.5\n" + BASE,
        "timers.heartbeat_misses",
        ">= 1",
    ),
    ("timers-unknown", "[timers]\nlease_s = 1\n" + BASE, "timers.lease_s", "unknown key"),
    (
        "endpoints-unknown-proc",
        '[endpoints]\nnic9 = "tcp://a:1"\n' + BASE,
        "endpoints.nic9",
        "fabricd",
    ),
    (
        "endpoints-not-tcp",
        '[endpoints]\nnic1 = "udp://a:1"\n' + BASE,
        "endpoints.nic1",
        "tcp://host:port",
    ),
    ("endpoints-port", '[endpoints]\nnic1 = "tcp://a:70000"\n' + BASE, "endpoints.nic1", "tcp://"),
    (
        "endpoints-dup",
        '[endpoints]\nnic1 = "tcp://a:7000"\nnic2 = "tcp://a:7000"\n' + BASE,
        "endpoints.nic2",
        "already used by endpoints.nic1",
    ),
    ("segments-renamed", BASE.replace("[[segments]]", "[[segment]]"), "segment", "unknown key"),
    (
        "segments-empty",
        "segments = []\n[firewall]" + BASE.split("[firewall]")[1],
        "segments",
        "at least one",
    ),
]


@pytest.mark.parametrize(
    ("text", "field", "reason"), [c[1:] for c in ERROR_CASES], ids=[c[0] for c in ERROR_CASES]
)
def test_errors_name_their_field(tmp_path: Path, text: str, field: str, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, text)
    err = info.value
    assert err.field == field, str(err)
    assert str(err).startswith(f"{field}: ")
    assert reason in err.reason, str(err)
    assert isinstance(err, ValueError)


def test_base_config_is_valid(tmp_path: Path) -> None:
    # The error cases above are meaningful only if each differs from a valid config.
    load_text(tmp_path)


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ('[[segments]]\nname = "web"\n', "hosts"),
        ("", "segments"),
        (BASE.split("[[hosts]]")[0], "hosts"),
    ],
)
def test_missing_sections(tmp_path: Path, text: str, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, text)
    assert info.value.field == field
    assert "missing" in info.value.reason


def test_toml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = write_config(tmp_path, BASE + "\n[flows.f2]\nproto = tcp\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    line = BASE.count("\n") + 3
    assert str(info.value).startswith(f"{path}: line {line}, column ")
    assert "TOML syntax error" in str(info.value)


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read") as info:
        load_config(tmp_path / "absent.toml")
    assert info.value.field == str(tmp_path / "absent.toml")
    bad = tmp_path / "latin1.toml"
    bad.write_bytes(b'# caf\xe9\n[[segments]]\nname = "web"\n')
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(bad)


# -- every number has a range; the file has a size and a depth ------------------------------------

RANGE_CASES: list[tuple[str, str, str, str]] = [
    # (id, config text, field, range as the error writes it); the accepted values first
    ("heartbeat-tiny", "[timers]\nheartbeat_s = 1e-6\n" + BASE, "timers.heartbeat_s", "0.01..10 s"),
    (
        "heartbeat-huge",
        "[timers]\nheartbeat_s = 1e300\n" + BASE,
        "timers.heartbeat_s",
        "0.01..10 s",
    ),
    ("heartbeat-inf", "[timers]\nheartbeat_s = inf\n" + BASE, "timers.heartbeat_s", "0.01..10 s"),
    (
        "misses",
        "[timers]\nheartbeat_misses = 1000000000\n" + BASE,
        "timers.heartbeat_misses",
        "1..100",
    ),
    ("reboot", "[timers]\nreboot_delay_s = 1e12\n" + BASE, "timers.reboot_delay_s", "0..600 s"),
    ("tick", "[timers]\ntick_s = 0.0001\n" + BASE, "timers.tick_s", "0.01..10 s"),
    ("stats", "[timers]\nstats_s = 1e9\n" + BASE, "timers.stats_s", "0.1..3600 s"),
    (
        "timeout-1e300",
        "[timeouts]\nudp_multiple = 1e300\n" + BASE,
        "timeouts.udp_multiple",
        "0.001..31536000 s",
    ),
    (
        "ct-limit-2**63",
        edit_base(replace={"eswitch_capacity = 16": "ct_limit = 9223372036854775807"}),
        "hosts[0].nics[1].ct_limit",
        "1..4194304",
    ),
    (
        "eswitch-huge",
        edit_base(replace={"eswitch_capacity = 16": "eswitch_capacity = 100000000"}),
        "hosts[0].nics[1].eswitch_capacity",
        "0..1048576",
    ),
    ("rate-1e12", edit_base(append="rate = 1e12\n"), "flows.f1.rate", "0..10000 messages/s"),
    (
        "uplink-mbps-huge",
        edit_base(replace={'name = "h1"': 'name = "h1"\nuplink_mbps = 1e9'}),
        "hosts[0].uplink_mbps",
        "0.001..1e6 Mb/s",
    ),
    (
        "priority-past-64-bits",
        edit_base(replace={'name = "http"': 'name = "http"\npriority = 100000000000000000000'}),
        "firewall.rules[0].priority",
        "0..65535",
    ),
]


@pytest.mark.parametrize(
    ("text", "field", "span"), [c[1:] for c in RANGE_CASES], ids=[c[0] for c in RANGE_CASES]
)
def test_out_of_range_names_field_and_range(
    tmp_path: Path, text: str, field: str, span: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, text)
    assert info.value.field == field, str(info.value)
    assert f"(range {span})" in info.value.reason, str(info.value)


@pytest.mark.parametrize("opener", ["[", "{a = "])
def test_deep_nesting_is_one_error(tmp_path: Path, opener: str) -> None:
    # tomllib recurses per level: 100,000 deep was a RecursionError and a 1,000-line traceback.
    closer = "]" if opener == "[" else "}"
    deep = "x = " + opener * 100_000 + "1" + closer * 100_000 + "\n"
    path = write_config(tmp_path, BASE + deep)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    line = BASE.count("\n") + 1
    assert str(info.value).startswith(f"{path}: line {line}: "), str(info.value)
    assert "nest more than 32 deep" in info.value.reason


def test_big_file_is_refused_before_parsing(tmp_path: Path) -> None:
    # A 50 MB array took 34 s and 330 MB before an error; the size is checked first.
    path = tmp_path / "cluster.toml"
    with path.open("w") as f:
        f.write(BASE + "x = [")
        for _ in range(20_000):  # 2.4 MB
            f.write("1, " * 40)
        f.write("1]\n")
    size = path.stat().st_size
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: file is {size} bytes, at most 1048576"


def test_integer_past_python_digit_limit(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="TOML value error") as info:
        load_text(tmp_path, "x = " + "9" * 5000 + "\n" + BASE)
    assert info.value.field.endswith("cluster.toml")
