"""Loading a cluster config: the TOML file read with tomllib, checked section by section.

Theory of operation. ``load_config`` parses the file and checks it top-down in one pass:
segments, timers, conntrack timeouts and the firewall first (they reference nothing), then
hosts and their NICs, then VMs (which name a NIC), external peers (which name a segment), the
workload flows (which name VMs and peers), the endpoint overrides (which name processes) and
last the machines (configs/machines.py), which place processes and derive their endpoints.
The first problem raises ``ConfigError``; its message starts with the path of the offending
field as written in the file (``hosts[0].nics[1].eswitch_capacity: ...``,
``vms.web1.interfaces[0].mac: ...``), so an operator can go straight to it. The policy parts
(rules, segments, team policy) are read by ``bus.policy``'s readers, whose errors are re-raised
as ConfigError under the same path.

File shape (``configs/default.toml`` is the commented example)::

    [timers]  [timeouts]  [endpoints]          periods, conntrack timeouts, tcp endpoints
    [machines.<name>]                          address, processes, first port (placement)
    [[segments]]                               name, vlan
    [firewall]  [[firewall.rules]]             default action, rule tables (bus.policy)
    [[hosts]]  [[hosts.nics]]                  team policy, failback; NIC uplinks and sizes
    [vms.<name>]  [[vms.<name>.interfaces]]    home NIC, listening ports; MAC, IPs, segment
                                               kind; a netns VM's run and checks (kinds.py)
    [peers.<name>]                             external endpoints on the fabric (kinds too)
    [flows.<name>]                             the workload: proto, src, dst, dport, rate, size
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from bus.curve import CLI
from bus.policy import (
    MAX_TIMEOUT_MS,
    TIMEOUT_NAMES,
    ActionName,
    PolicyError,
    RuleSpec,
    SegmentSpec,
    rules_from_plain,
    segment_from_plain,
    team_policy_name,
)
from configs.kinds import KIND_KEYS, kind_fields, netns_flow_end
from configs.machines import machines_section
from configs.model import (
    EXPECTS,
    FABRICD,
    MAX_NICS_PER_HOST,
    Config,
    ConfigError,
    HostSpec,
    IfaceSpec,
    NicSpec,
    PeerSpec,
    Timers,
    VmSpec,
    WorkloadFlow,
    _flow_target,
    resolve_run_dir,
)
from configs.ranges import RANGES
from configs.rawtoml import check_nesting, read_bounded
from configs.tomlcheck import (
    _array,
    _at,
    _bool,
    _claim,
    _Identities,
    _int,
    _ips,
    _mac,
    _name,
    _number,
    _ports,
    _ranged,
    _ranged_int,
    _ref,
    _table,
    _type_name,
)
from hoststack.traffic import MAX_MESSAGE, MAX_UDP_PAYLOAD, message_length

__all__ = ["config_from_dict", "load_config"]

_TCP_ENDPOINT_RE = re.compile(r"tcp://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9][A-Za-z0-9.-]*):([0-9]{1,5})")
_TOML_POS_RE = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")


def load_config(path: str | Path, run_dir: str | Path | None = None) -> Config:
    """Read and validate the cluster config at ``path``; raises ConfigError."""
    p = Path(path).absolute()
    raw = read_bounded(p)  # size and nesting first: tomllib would choke on either
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(str(p), f"not UTF-8 text (byte {e.start})") from None
    check_nesting(text, p)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        msg = str(e)
        pos = _TOML_POS_RE.search(msg)
        if pos is None:
            raise ConfigError(str(p), f"TOML syntax error: {msg}") from None
        where = f"{p}: line {pos[1]}, column {pos[2]}"
        raise ConfigError(where, f"TOML syntax error: {msg[: pos.start()]}") from None
    except ValueError as e:  # e.g. an integer of more than 4300 digits (int()'s own limit)
        raise ConfigError(str(p), f"TOML value error: {e}") from None
    return config_from_dict(data, path=p, run_dir=run_dir)


_TOP_KEYS = frozenset(
    {
        "timers",
        "timeouts",
        "endpoints",
        "machines",
        "segments",
        "firewall",
        "hosts",
        "vms",
        "peers",
        "flows",
    }
)


def config_from_dict(
    data: Mapping[str, Any], *, path: str | Path = "<dict>", run_dir: str | Path | None = None
) -> Config:
    """Validate an already parsed config (tomllib's output); raises ConfigError."""
    top = _table(data, "", _TOP_KEYS)
    segments = _segments(top.get("segments"))
    seg_names = {s.name for s in segments}
    timers = _timers(top.get("timers", {}))
    timeouts = _timeouts(top.get("timeouts", {}))
    default, rules, rule_specs = _firewall(top.get("firewall", {}), seg_names)
    hosts = _hosts(top.get("hosts"))
    ids = _Identities()
    vms = _vms(top.get("vms", {}), hosts, seg_names, ids)
    peers = _peers(top.get("peers", {}), seg_names, ids)
    host_specs = tuple(
        HostSpec(
            name=h.name,
            nics=h.nics,
            vms=tuple(vm for vm in vms if vm.host == h.name),
            team_policy=h.team_policy,
            failback=h.failback,
            uplink_mbps=h.uplink_mbps,
            load_threshold=h.load_threshold,
        )
        for h in hosts
    )
    # Flows are checked against the topology through Config's own lookups, so build it twice.
    cfg = Config(
        path=Path(path),
        run_dir=resolve_run_dir(run_dir),
        segments=segments,
        firewall_default=default,
        rules=rules,
        rule_specs=rule_specs,
        timeouts=timeouts,
        timers=timers,
        hosts=host_specs,
        peers=peers,
        flows=(),
    )
    flows = _flows(top.get("flows", {}), cfg)
    endpoints = _endpoints(top.get("endpoints", {}), cfg.processes)
    machines, endpoints = machines_section(top.get("machines", {}), cfg, endpoints)
    return dataclasses.replace(cfg, flows=flows, endpoints=endpoints, machines=machines)


# -- sections ----------------------------------------------------------------------------------


def _segments(v: object) -> tuple[SegmentSpec, ...]:
    if v is None:
        raise ConfigError("segments", "missing (at least one [[segments]] is needed)")
    items = _array(v, "segments")
    if not items:
        raise ConfigError("segments", "at least one segment is needed")
    by_name: dict[str, str] = {}
    by_vlan: dict[int | None, str] = {}
    out: list[SegmentSpec] = []
    for i, d in enumerate(items):
        where = _at("segments", i)
        try:
            seg = segment_from_plain(d, where)
        except PolicyError as e:
            raise ConfigError.wrap(e) from None
        _name(seg.name, f"{where}.name")
        if seg.name in by_name:
            raise ConfigError(
                f"{where}.name", f"{seg.name!r} already defined by {by_name[seg.name]}"
            )
        if seg.vlan in by_vlan:
            tag = "untagged" if seg.vlan is None else f"vlan {seg.vlan}"
            raise ConfigError(f"{where}.vlan", f"{tag} already used by {by_vlan[seg.vlan]}")
        by_name[seg.name] = by_vlan[seg.vlan] = where
        out.append(seg)
    return tuple(out)


def _timers(v: object) -> Timers:
    d = _table(v, "timers", (f.name for f in fields(Timers)))
    values: dict[str, Any] = {}
    for key, value in d.items():
        where = f"timers.{key}"
        if key == "heartbeat_misses":
            values[key] = _ranged_int(value, where, where)
        else:
            values[key] = _ranged(value, where, where)
    return Timers(**values)


def _timeouts(v: object) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise ConfigError("timeouts", "must be a table of timeouts")
    d: dict[str, Any] = v
    for key, value in d.items():
        if key not in TIMEOUT_NAMES:
            raise ConfigError(f"timeouts.{key}", "unknown timeout")
        span = RANGES["timeouts.*"].text
        if _number(value) is None or value <= 0:
            raise ConfigError(f"timeouts.{key}", f"must be a positive number (range {span})")
        if value * 1000 > MAX_TIMEOUT_MS:
            raise ConfigError(
                f"timeouts.{key}",
                f"must be at most {MAX_TIMEOUT_MS // 1000} s (range {span}), got {value!r}",
            )
        # The policy carries timeouts as whole milliseconds (PolicyUpdate has no floats).
        ms = value * 1000
        if round(ms) < 1 or abs(ms - round(ms)) > 1e-6:
            raise ConfigError(f"timeouts.{key}", f"must be a whole number of ms, got {value!r} s")
    return dict(d)


def _firewall(
    v: object, seg_names: set[str]
) -> tuple[ActionName, tuple[dict[str, Any], ...], tuple[RuleSpec, ...]]:
    d = _table(v, "firewall", ("default", "rules"))
    default = d.get("default", "drop")
    if not isinstance(default, str):
        raise ConfigError("firewall.default", f"must be a string, got {_type_name(default)}")
    rules = _array(d.get("rules", []), "firewall.rules")
    try:
        specs, action = rules_from_plain(rules, default, where="firewall.rules")
    except PolicyError as e:
        path = "firewall.default" if e.field == "default" else e.field
        raise ConfigError(path, e.why) from None
    for i, rule in enumerate(specs):
        _ranged_int(rule.priority, f"firewall.rules[{i}].priority", "firewall.rules.priority")
        if rule.segment is not None and rule.segment not in seg_names:
            raise ConfigError(f"firewall.rules[{i}].segment", f"unknown segment {rule.segment!r}")
    return action, tuple(rules), specs


@dataclass(frozen=True, slots=True)
class _HostDraft:
    name: str
    nics: tuple[NicSpec, ...]
    team_policy: str
    failback: bool
    uplink_mbps: float
    load_threshold: float


_HOST_KEYS = ("name", "nics", "team_policy", "failback", "uplink_mbps", "load_threshold")
_NIC_KEYS = ("name", "uplinks", "eswitch_capacity", "ct_limit")


def _process_name(v: object, where: str) -> str:
    """A host's or NIC's name: not the CLI's (its key is ``ctl``, and ``ctl-...`` names may
    send every changing command: a process under one would hold the operator's rights)."""
    name = _name(v, where)
    if name == CLI or name.startswith(f"{CLI}-"):
        raise ConfigError(where, f"{name!r}: {CLI!r} and {CLI}-... are the operator CLI's names")
    return name


def _hosts(v: object) -> list[_HostDraft]:
    if v is None:
        raise ConfigError("hosts", "missing (at least one [[hosts]] is needed)")
    items = _array(v, "hosts")
    if not items:
        raise ConfigError("hosts", "at least one host is needed")
    # Process names: hosts and NICs. "fabric" names fabricd's Procfile line and "system" is
    # honcho's own: a process under either would be launched (or judged) as the wrong one.
    procs: dict[str, str] = {
        FABRICD: "the fabric daemon",
        "fabric": "the fabric daemon's Procfile line",
        "system": "honcho's own messages",
    }
    hosts: list[_HostDraft] = []
    for i, raw in enumerate(items):
        where = _at("hosts", i)
        d = _table(raw, where, _HOST_KEYS, ("name", "nics"))
        name = _claim(procs, _process_name(d["name"], f"{where}.name"), f"{where}.name")
        try:
            policy = team_policy_name(d.get("team_policy", "port-id"), f"{where}.team_policy")
        except PolicyError as e:
            raise ConfigError.wrap(e) from None
        failback = _bool(d.get("failback", True), f"{where}.failback")
        mbps = _ranged(d.get("uplink_mbps", 10_000), f"{where}.uplink_mbps", "hosts.uplink_mbps")
        threshold = _ranged(
            d.get("load_threshold", 0.75), f"{where}.load_threshold", "hosts.load_threshold"
        )
        nic_items = _array(d["nics"], f"{where}.nics")
        if not 1 <= len(nic_items) <= MAX_NICS_PER_HOST:
            raise ConfigError(
                f"{where}.nics", f"a host has 1..{MAX_NICS_PER_HOST} NICs, got {len(nic_items)}"
            )
        nics: list[NicSpec] = []
        for j, nraw in enumerate(nic_items):
            nwhere = f"{where}.nics[{j}]"
            nd = _table(nraw, nwhere, _NIC_KEYS, ("name", "uplinks"))
            nic_name = _claim(procs, _process_name(nd["name"], f"{nwhere}.name"), f"{nwhere}.name")
            uplinks = _array(nd["uplinks"], f"{nwhere}.uplinks")
            if not uplinks:
                raise ConfigError(f"{nwhere}.uplinks", "a NIC needs at least one uplink")
            ports: list[str] = []
            for k, port in enumerate(uplinks):
                port = _name(port, f"{nwhere}.uplinks[{k}]")
                if port in ports:
                    raise ConfigError(f"{nwhere}.uplinks[{k}]", f"port {port!r} listed twice")
                ports.append(port)
            nics.append(
                NicSpec(
                    name=nic_name,
                    host=name,
                    uplinks=tuple(ports),
                    eswitch_capacity=_ranged_int(
                        nd.get("eswitch_capacity", 4096),
                        f"{nwhere}.eswitch_capacity",
                        "hosts.nics.eswitch_capacity",
                    ),
                    ct_limit=_ranged_int(
                        nd.get("ct_limit", 262144), f"{nwhere}.ct_limit", "hosts.nics.ct_limit"
                    ),
                )
            )
        hosts.append(_HostDraft(name, tuple(nics), policy.value, failback, mbps, threshold))
    return hosts


_VM_KEYS = ("host", "nic", "interfaces", "tcp_listen", "udp_listen", *KIND_KEYS)
_IFACE_KEYS = ("mac", "ips", "segment")


def _vms(v: object, hosts: list[_HostDraft], seg_names: set[str], ids: _Identities) -> list[VmSpec]:
    nic_host = {nic.name: h.name for h in hosts for nic in h.nics}
    vms: list[VmSpec] = []
    for name, raw in _table(v, "vms", None).items():
        where = f"vms.{name}"
        _claim(ids.names, _name(name, where), where)
        d = _table(raw, where, _VM_KEYS, ("nic", "interfaces"))
        kind = kind_fields(d, where, "VM")
        nic = _ref(d["nic"], f"{where}.nic", nic_host, "NIC")
        host = nic_host[nic]
        if "host" in d and d["host"] != host:
            raise ConfigError(f"{where}.host", f"{d['host']!r}, but NIC {nic!r} is on {host!r}")
        iface_items = _array(d["interfaces"], f"{where}.interfaces")
        if not iface_items:
            raise ConfigError(f"{where}.interfaces", "a VM needs at least one interface")
        ifaces: list[IfaceSpec] = []
        for i, iraw in enumerate(iface_items):
            iwhere = f"{where}.interfaces[{i}]"
            idict = _table(iraw, iwhere, _IFACE_KEYS, ("mac", "segment"))
            mac = _mac(idict["mac"], f"{iwhere}.mac")
            ips = _ips(idict.get("ips", []), f"{iwhere}.ips")
            segment = _ref(idict["segment"], f"{iwhere}.segment", seg_names, "segment")
            ids.add_mac(mac, f"{iwhere}.mac")
            ids.add_ips(segment, ips, f"{iwhere}.ips")
            ifaces.append(IfaceSpec(mac, ips, segment))
        vms.append(
            VmSpec(
                name=name,
                host=host,
                nic=nic,
                interfaces=tuple(ifaces),
                tcp_listen=_ports(d.get("tcp_listen", []), f"{where}.tcp_listen"),
                udp_listen=_ports(d.get("udp_listen", []), f"{where}.udp_listen"),
                kind=kind.kind,
                run=kind.run,
                checks=kind.checks,
            )
        )
    return vms


_PEER_KEYS = ("mac", "ips", "segment", "gateway_mac", "tcp_listen", "udp_listen", *KIND_KEYS)


def _peers(v: object, seg_names: set[str], ids: _Identities) -> tuple[PeerSpec, ...]:
    peers: list[PeerSpec] = []
    for name, raw in _table(v, "peers", None).items():
        where = f"peers.{name}"
        _claim(ids.names, _name(name, where), where)
        d = _table(raw, where, _PEER_KEYS, ("mac", "ips", "segment"))
        kind = kind_fields(d, where, "peer")
        mac = _mac(d["mac"], f"{where}.mac")
        ips = _ips(d["ips"], f"{where}.ips")
        if not ips:
            raise ConfigError(f"{where}.ips", "a peer needs at least one address")
        segment = _ref(d["segment"], f"{where}.segment", seg_names, "segment")
        gateway = d.get("gateway_mac")
        ids.add_mac(mac, f"{where}.mac")
        ids.add_ips(segment, ips, f"{where}.ips")
        peers.append(
            PeerSpec(
                name=name,
                mac=mac,
                ips=ips,
                segment=segment,
                gateway_mac=None if gateway is None else _mac(gateway, f"{where}.gateway_mac"),
                tcp_listen=_ports(d.get("tcp_listen", []), f"{where}.tcp_listen"),
                udp_listen=_ports(d.get("udp_listen", []), f"{where}.udp_listen"),
                kind=kind.kind,
                run=kind.run,
                checks=kind.checks,
            )
        )
    return tuple(peers)


_FLOW_KEYS = ("proto", "src", "dst", "dport", "rate", "size", "expect")


def _flows(v: object, cfg: Config) -> tuple[WorkloadFlow, ...]:
    endpoints = {vm.name: vm for vm in cfg.vms} | {p.name: p for p in cfg.peers}
    kinds = {name: e.kind for name, e in endpoints.items()}
    flows: list[WorkloadFlow] = []
    for name, raw in _table(v, "flows", None).items():
        where = f"flows.{name}"
        _name(name, where)
        d = _table(raw, where, _FLOW_KEYS, ("proto", "src", "dst", "dport"))
        proto = d["proto"]
        if proto not in ("tcp", "udp"):
            raise ConfigError(f"{where}.proto", f"must be 'tcp' or 'udp', got {proto!r}")
        src = _ref(d["src"], f"{where}.src", endpoints, "VM or peer")
        dst = _ref(d["dst"], f"{where}.dst", endpoints, "VM or peer")
        if src == dst:
            raise ConfigError(f"{where}.dst", "same as src")
        netns = netns_flow_end(kinds, src, dst)
        if netns is not None:
            key, end = netns
            section = "vms" if end in {vm.name for vm in cfg.vms} else "peers"
            raise ConfigError(
                f"{where}.{key}",
                f"{end!r} is a netns endpoint: the workload runs between built-in VMs and peers "
                f"only (a netns one carries real applications: see {section}.{end}.run)",
            )
        dport = _int(d["dport"], f"{where}.dport", 1, 65535)
        rate = _ranged(d.get("rate", 10.0), f"{where}.rate", "flows.rate")
        size = _int(d.get("size", 64), f"{where}.size", 1)
        limit = MAX_UDP_PAYLOAD if proto == "udp" else MAX_MESSAGE
        if message_length(name, size) > limit:
            raise ConfigError(f"{where}.size", f"{size} bytes is over the {proto} limit {limit}")
        expect = d.get("expect", "deliver")
        if expect not in EXPECTS:
            raise ConfigError(f"{where}.expect", f"must be 'deliver' or 'deny', got {expect!r}")
        if _flow_target(cfg._ifaces_of(src), cfg._ifaces_of(dst)) is None:
            raise ConfigError(
                f"{where}.dst",
                f"{dst!r} has no address on a segment {src!r} is on (segments are not routed)",
            )
        listening = getattr(endpoints[dst], f"{proto}_listen")
        if expect == "deliver" and dport not in listening:
            kind = "vms" if dst in {vm.name for vm in cfg.vms} else "peers"
            raise ConfigError(
                f"{where}.dport",
                f"{dst!r} does not listen on {proto} {dport} (see {kind}.{dst}.{proto}_listen)",
            )
        flow = WorkloadFlow(name, proto, src, dst, dport, rate, size, expect)
        try:
            cfg.flow_spec(flow)  # the traffic generator's own checks, before any process starts
        except ValueError as e:
            raise ConfigError(where, str(e)) from None
        flows.append(flow)
    return tuple(flows)


def _endpoints(v: object, processes: tuple[str, ...]) -> dict[str, str]:
    d = _table(v, "endpoints", processes)
    seen: dict[str, str] = {}
    out: dict[str, str] = {}
    for proc, url in d.items():
        where = f"endpoints.{proc}"
        m = _TCP_ENDPOINT_RE.fullmatch(url) if isinstance(url, str) else None
        if m is None or not 1 <= int(m[2]) <= 65535:
            raise ConfigError(where, f"must be 'tcp://host:port', got {url!r}")
        # One spelling per endpoint (port 07100 is 7100): collisions are found by comparing them.
        url = out[proc] = f"tcp://{m[1]}:{int(m[2])}"
        if url in seen:
            raise ConfigError(where, f"{url} already used by endpoints.{seen[url]}")
        seen[url] = proc
    return out
