"""The cluster configuration: a TOML file read with tomllib into frozen, validated dataclasses.

Theory of operation. ``load_config`` parses the file and checks it top-down in one pass:
segments, timers, conntrack timeouts and the firewall first (they reference nothing), then
hosts and their NICs, then VMs (which name a NIC), external peers (which name a segment), the
workload flows (which name VMs and peers) and last the endpoint overrides (which name
processes). The first problem raises ``ConfigError``; its message starts with the path of the
offending field as written in the file (``hosts[0].nics[1].eswitch_capacity: ...``,
``vms.web1.interfaces[0].mac: ...``), so an operator can go straight to it. Errors of the
datapath's own validators (rules, segments, timeouts, team policy) are re-raised as
ConfigError under the same path.

File shape (``configs/default.toml`` is the commented example)::

    [timers]  [timeouts]  [endpoints]          periods, conntrack timeouts, tcp endpoints
    [[segments]]                               name, vlan
    [firewall]  [[firewall.rules]]             default action, rule tables (nicd.datapath.rules)
    [[hosts]]  [[hosts.nics]]                  team policy, failback; NIC uplinks and sizes
    [vms.<name>]  [[vms.<name>.interfaces]]    home NIC, listening ports; MAC, IPs, segment
    [peers.<name>]                             external endpoints on the fabric
    [flows.<name>]                             the workload: proto, src, dst, dport, rate, size

Conventions every process shares, fixed here:

- Process names are ``fabricd``, each host's name (its hostd) and each NIC's name (its nicd);
  host and NIC names are therefore unique together, across the whole cluster.
- A NIC's ``uplinks[i]`` has PPID ``i + 1``; its team-wide name is ``"<nic>/<port>"``.
- MACs are unique in the cluster; IP addresses are unique per segment.
- A flow targets the destination's first IPv4 address on a segment the source is also on
  (first IPv6 if it has none there); there is no router between segments.
- ``policy_dict`` carries conntrack timeouts as integer milliseconds (``timeouts_ms``) because
  ``bus.messages.PolicyUpdate`` refuses floats; ``timeouts_from_ms`` turns them back.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from ipaddress import (
    IPv4Address,
    IPv4Interface,
    IPv6Address,
    IPv6Interface,
    ip_interface,
)
from pathlib import Path
from typing import Any, Protocol, TypeVar

from hoststack.traffic import MAX_MESSAGE, MAX_UDP_PAYLOAD, FlowSpec, message_length
from nicd.datapath.conntrack import Timeouts
from nicd.datapath.rules import RuleError, RuleSet, ruleset_from_config
from nicd.datapath.teaming import team_policy_from_str
from nicd.datapath.vswitch import Segment, segment_from_dict
from wire.addr import mac_bytes, mac_str

__all__ = [
    "FABRICD",
    "RUN_DIR_ENV",
    "Config",
    "ConfigError",
    "HostSpec",
    "IfaceSpec",
    "NicSpec",
    "PeerSpec",
    "Timers",
    "VmSpec",
    "WorkloadFlow",
    "config_from_dict",
    "load_config",
    "resolve_run_dir",
    "timeouts_from_ms",
    "timeouts_to_ms",
]

IPInterface = IPv4Interface | IPv6Interface
IPAddress = IPv4Address | IPv6Address

#: The process name of the fabric daemon; no host or NIC may take it.
FABRICD = "fabricd"
#: Environment variable naming the run directory when load_config is not given one.
RUN_DIR_ENV = "NICTEAM_RUN_DIR"
MAX_NICS_PER_HOST = 8
EXPECTS = ("deliver", "deny")

# Names become file names (run/<proc>.sock, logs/<proc>.jsonl), ZeroMQ identities and parts of
# field paths, so no '.', '/' or spaces.
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")
_TCP_ENDPOINT_RE = re.compile(r"tcp://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9][A-Za-z0-9.-]*):([0-9]{1,5})")
_TOML_POS_RE = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")


class ConfigError(ValueError):
    """The config is invalid; the message starts with the offending field's path."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}" if field else reason)
        self.field = field
        self.reason = reason

    @classmethod
    def wrap(cls, exc: ValueError) -> ConfigError:
        """A datapath validator's ``"<path>: <reason>"`` error as a ConfigError."""
        if isinstance(exc, RuleError):
            return cls(exc.field, exc.reason)
        path, sep, reason = str(exc).partition(": ")
        return cls(path, reason) if sep else cls("", str(exc))


# -- the model ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Timers:
    """Liveness and housekeeping periods in seconds (``heartbeat_misses`` is a count)."""

    heartbeat_s: float = 0.05
    heartbeat_misses: int = 3
    reboot_delay_s: float = 1.0
    tick_s: float = 0.1
    stats_s: float = 1.0

    @property
    def down_after_s(self) -> float:
        """Silence after which a peer is declared down."""
        return self.heartbeat_s * self.heartbeat_misses


@dataclass(frozen=True, slots=True)
class NicSpec:
    """One smart NIC: its host and uplink ports; ``uplinks[i]`` has PPID ``i + 1``."""

    name: str
    host: str
    uplinks: tuple[str, ...]
    eswitch_capacity: int = 4096
    ct_limit: int = 262144

    def uplink_ppid(self, port: str) -> int:
        """The PPID of uplink ``port``; KeyError if this NIC has no such port."""
        try:
            return self.uplinks.index(port) + 1
        except ValueError:
            raise KeyError(f"NIC {self.name!r} has no uplink {port!r}") from None

    def uplink_name(self, port: str) -> str:
        """The team-wide name of uplink ``port``, e.g. ``"nic1/p0"``."""
        self.uplink_ppid(port)
        return f"{self.name}/{port}"


@dataclass(frozen=True, slots=True)
class IfaceSpec:
    """One VM interface: MAC, addresses with prefix length, segment."""

    mac: bytes
    ips: tuple[IPv4Interface | IPv6Interface, ...]
    segment: str


@dataclass(frozen=True, slots=True)
class VmSpec:
    """One VM: its host, home NIC, interfaces and the ports its endpoint listens on."""

    name: str
    host: str
    nic: str
    interfaces: tuple[IfaceSpec, ...]
    tcp_listen: tuple[int, ...] = ()
    udp_listen: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class HostSpec:
    """One host: its NICs (the team), its VMs, team policy and whether VMs fail back."""

    name: str
    nics: tuple[NicSpec, ...]
    vms: tuple[VmSpec, ...]
    team_policy: str = "port-id"
    failback: bool = True
    uplink_mbps: float = 10_000.0  # each uplink's capacity, for load-based teaming
    load_threshold: float = 0.75  # load-based moves a VPID off an uplink busier than this


@dataclass(frozen=True, slots=True)
class PeerSpec:
    """An external endpoint on the fabric (outside every host), e.g. a client on the internet."""

    name: str
    mac: bytes
    ips: tuple[IPv4Interface | IPv6Interface, ...]
    segment: str
    gateway_mac: bytes | None
    tcp_listen: tuple[int, ...]
    udp_listen: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class WorkloadFlow:
    """One flow of the default workload; ``src``/``dst`` name a VM or peer."""

    name: str
    proto: str  # "tcp" | "udp"
    src: str
    dst: str
    dport: int
    rate: float  # messages per second
    size: int  # payload bytes per message
    expect: str  # "deliver" | "deny": what the firewall should do with it


@dataclass(frozen=True, slots=True)
class Config:
    """A whole cluster: topology, firewall, timers, workload and where processes listen."""

    path: Path
    run_dir: Path
    segments: tuple[Segment, ...]
    firewall_default: str
    rules: tuple[dict[str, Any], ...]  # raw rule tables, validated into ``ruleset``
    ruleset: RuleSet
    timeouts: dict[str, Any]  # raw conntrack timeout overrides (Timeouts.from_dict form)
    timers: Timers
    hosts: tuple[HostSpec, ...]
    peers: tuple[PeerSpec, ...]
    flows: tuple[WorkloadFlow, ...]
    endpoints: Mapping[str, str] = field(default_factory=dict)  # proc -> "tcp://host:port"

    @property
    def nics(self) -> tuple[NicSpec, ...]:
        """Every NIC of every host, in config order."""
        return tuple(nic for h in self.hosts for nic in h.nics)

    @property
    def vms(self) -> tuple[VmSpec, ...]:
        """Every VM of every host, host by host."""
        return tuple(vm for h in self.hosts for vm in h.vms)

    @property
    def processes(self) -> tuple[str, ...]:
        """Every process name of the cluster: fabricd, the hosts (hostd), the NICs (nicd)."""
        return (FABRICD, *(h.name for h in self.hosts), *(n.name for n in self.nics))

    def host(self, name: str) -> HostSpec:
        """The host called ``name``; KeyError if none."""
        return _find(self.hosts, name, "host")

    def nic(self, name: str) -> NicSpec:
        """The NIC called ``name`` (NIC names are cluster-wide); KeyError if none."""
        return _find(self.nics, name, "NIC")

    def vm(self, name: str) -> VmSpec:
        """The VM called ``name``; KeyError if none."""
        return _find(self.vms, name, "VM")

    def peer(self, name: str) -> PeerSpec:
        """The external peer called ``name``; KeyError if none."""
        return _find(self.peers, name, "peer")

    def flow(self, name: str) -> WorkloadFlow:
        """The workload flow called ``name``; KeyError if none."""
        return _find(self.flows, name, "flow")

    def endpoint(self, proc: str) -> str:
        """Bus endpoint of ``proc``: ``[endpoints]`` if listed, else ``ipc://<run_dir>/<proc>.sock``."""
        if not isinstance(proc, str) or not _NAME_RE.fullmatch(proc):
            raise ValueError(f"not a process name: {proc!r}")
        mapped = self.endpoints.get(proc)
        return mapped if mapped is not None else f"ipc://{self.run_dir / proc}.sock"

    def ct_timeouts(self) -> Timeouts:
        """The conntrack timeouts: OVS defaults overridden by ``[timeouts]``."""
        return Timeouts.from_dict(self.timeouts)

    def flow_target(self, flow: WorkloadFlow) -> IPv4Address | IPv6Address:
        """The address ``flow`` is sent to (see the module docstring)."""
        target = _flow_target(self._ifaces_of(flow.src), self._ifaces_of(flow.dst))
        if target is None:  # the loader refused such a flow
            raise ValueError(f"flow {flow.name!r}: no address of {flow.dst!r} is reachable")
        return target

    def flow_spec(self, flow: WorkloadFlow) -> FlowSpec:
        """``flow`` as the sender's hoststack.traffic.FlowSpec (runs until stopped)."""
        return FlowSpec(
            name=flow.name,
            proto=flow.proto,
            src=flow.src,
            dst=self.flow_target(flow),
            dport=flow.dport,
            rate=flow.rate,
            size=flow.size,
        )

    def policy_dict(self, host: str) -> dict[str, Any]:
        """Plain (msgpack-able, float-free) NIC policy of ``host`` for a PolicyUpdate."""
        h = self.host(host)
        return {
            "segments": [{"name": s.name, "vlan": s.vlan} for s in self.segments],
            # vswitch.interface_from_dict form: bare addresses, no prefix length.
            "interfaces": [
                {
                    "vm": vm.name,
                    "mac": mac_str(iface.mac),
                    "ips": [str(ip.ip) for ip in iface.ips],
                    "segment": iface.segment,
                }
                for vm in h.vms
                for iface in vm.interfaces
            ],
            "rules": copy.deepcopy(list(self.rules)),  # the receiver may not alias our config
            "firewall_default": self.firewall_default,
            "team_policy": h.team_policy,
            "failback": h.failback,
            # The policy travels without floats: bits/s and a percentage.
            "uplink_bps": round(h.uplink_mbps * 1e6),
            "load_threshold_pct": round(h.load_threshold * 100),
            "timeouts_ms": timeouts_to_ms(self.ct_timeouts()),
            "nics": [{"name": n.name, "uplinks": list(n.uplinks)} for n in h.nics],
        }

    def _ifaces_of(self, endpoint: str) -> list[tuple[str, tuple[IPInterface, ...]]]:
        for vm in self.vms:
            if vm.name == endpoint:
                return [(i.segment, i.ips) for i in vm.interfaces]
        peer = self.peer(endpoint)
        return [(peer.segment, peer.ips)]


class _Named(Protocol):
    @property
    def name(self) -> str: ...


_N = TypeVar("_N", bound=_Named)


def _find(items: Iterable[_N], name: str, what: str) -> _N:
    for item in items:
        if item.name == name:
            return item
    raise KeyError(f"unknown {what} {name!r}")


def _flow_target(
    src: list[tuple[str, tuple[IPInterface, ...]]], dst: list[tuple[str, tuple[IPInterface, ...]]]
) -> IPAddress | None:
    """First IPv4 (else IPv6) of ``dst`` on a segment where ``src`` has the same family."""
    src_families = {(seg, ip.version) for seg, ips in src for ip in ips}
    for version in (4, 6):
        for seg, ips in dst:
            if (seg, version) in src_families:
                for ip in ips:
                    if ip.version == version:
                        return ip.ip
    return None


def timeouts_to_ms(timeouts: Timeouts) -> dict[str, int]:
    """Every conntrack timeout in whole milliseconds (the policy's float-free form)."""
    return {f.name: round(getattr(timeouts, f.name) * 1000) for f in fields(Timeouts)}


def timeouts_from_ms(d: Mapping[str, Any], where: str = "timeouts_ms") -> Timeouts:
    """Timeouts from a policy's ``timeouts_ms``; ValueError naming ``where.field`` if bad."""
    if not isinstance(d, Mapping):
        raise ValueError(f"{where}: must be a table of timeouts")
    for key, value in d.items():
        if type(value) is not int or value <= 0:
            raise ValueError(f"{where}.{key}: must be a positive integer (milliseconds)")
    return Timeouts.from_dict({k: v / 1000 for k, v in d.items()}, where)


# -- loading -----------------------------------------------------------------------------------


def resolve_run_dir(run_dir: str | Path | None = None) -> Path:
    """``run_dir`` if given, else $NICTEAM_RUN_DIR, else ``./run``; always absolute."""
    if run_dir is None:
        run_dir = os.environ.get(RUN_DIR_ENV) or "run"
    return Path(run_dir).absolute()


def load_config(path: str | Path, run_dir: str | Path | None = None) -> Config:
    """Read and validate the cluster config at ``path``; raises ConfigError."""
    p = Path(path).absolute()
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(str(p), f"cannot read: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(str(p), f"not UTF-8 text (byte {e.start})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        msg = str(e)
        pos = _TOML_POS_RE.search(msg)
        if pos is None:
            raise ConfigError(str(p), f"TOML syntax error: {msg}") from None
        where = f"{p}: line {pos[1]}, column {pos[2]}"
        raise ConfigError(where, f"TOML syntax error: {msg[: pos.start()]}") from None
    return config_from_dict(data, path=p, run_dir=run_dir)


_TOP_KEYS = frozenset(
    {"timers", "timeouts", "endpoints", "segments", "firewall", "hosts", "vms", "peers", "flows"}
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
    default, rules, ruleset = _firewall(top.get("firewall", {}), seg_names)
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
        ruleset=ruleset,
        timeouts=timeouts,
        timers=timers,
        hosts=host_specs,
        peers=peers,
        flows=(),
    )
    flows = _flows(top.get("flows", {}), cfg)
    endpoints = _endpoints(top.get("endpoints", {}), cfg.processes)
    return dataclasses.replace(cfg, flows=flows, endpoints=endpoints)


# -- field readers: each raises only ConfigError -----------------------------------------------

_TOML_TYPES = {bool: "boolean", int: "integer", float: "float", str: "string", list: "array"}


def _type_name(v: object) -> str:
    if isinstance(v, dict):
        return "table"
    return _TOML_TYPES.get(type(v), type(v).__name__)


def _at(where: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{where}[{key}]"
    return f"{where}.{key}" if where else key


def _table(
    v: object, where: str, allowed: Iterable[str] | None, required: tuple[str, ...] = ()
) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise ConfigError(where, f"must be a table, got {_type_name(v)}")
    if allowed is not None:
        allowed = frozenset(allowed)
        for key in v:
            if key not in allowed:
                names = ", ".join(sorted(allowed))
                raise ConfigError(_at(where, key), f"unknown key (expected one of: {names})")
    for key in required:
        if key not in v:
            raise ConfigError(_at(where, key), "missing")
    return v


def _array(v: object, where: str) -> list[Any]:
    if not isinstance(v, list):
        raise ConfigError(where, f"must be an array, got {_type_name(v)}")
    return v


def _name(v: object, where: str) -> str:
    if not isinstance(v, str) or not _NAME_RE.fullmatch(v):
        raise ConfigError(
            where,
            f"must be a name (letters, digits, '-' and '_', at most 63 characters), got {v!r}",
        )
    return v


def _int(v: object, where: str, lo: int, hi: int | None = None) -> int:
    # bool is an int subclass; `capacity = true` is a mistake, not 1.
    if type(v) is not int or v < lo or (hi is not None and v > hi):
        bound = f">= {lo}" if hi is None else f"in {lo}..{hi}"
        raise ConfigError(where, f"must be an integer {bound}, got {v!r}")
    return v


def _number(v: object) -> float | None:
    """``v`` as a finite float, or None if it is not a finite int or float (bool is not)."""
    if type(v) not in (int, float):
        return None
    f = float(v)  # type: ignore[arg-type]
    return f if math.isfinite(f) else None


def _seconds(v: object, where: str, *, zero_ok: bool = False) -> float:
    f = _number(v)
    if f is None or f < 0 or (f == 0 and not zero_ok):
        bound = ">= 0" if zero_ok else "> 0"
        raise ConfigError(where, f"must be a number of seconds {bound}, got {v!r}")
    return f


def _bool(v: object, where: str) -> bool:
    if not isinstance(v, bool):
        raise ConfigError(where, f"must be true or false, got {v!r}")
    return v


def _ports(v: object, where: str) -> tuple[int, ...]:
    ports: list[int] = []
    for i, p in enumerate(_array(v, where)):
        port = _int(p, _at(where, i), 1, 65535)
        if port in ports:
            raise ConfigError(_at(where, i), f"port {port} listed twice")
        ports.append(port)
    return tuple(ports)


def _mac(v: object, where: str) -> bytes:
    try:
        if not isinstance(v, str):
            raise ValueError
        mac = mac_bytes(v)
    except ValueError:
        raise ConfigError(where, f"not a MAC address: {v!r}") from None
    if mac[0] & 1 or mac == bytes(6):
        raise ConfigError(where, f"not a unicast MAC address: {v!r}")
    return mac


def _ips(v: object, where: str) -> tuple[IPInterface, ...]:
    ips: list[IPInterface] = []
    for i, text in enumerate(_array(v, where)):
        at = _at(where, i)
        try:
            if not isinstance(text, str) or "/" not in text:
                raise ValueError
            ip = ip_interface(text)
        except ValueError:
            raise ConfigError(
                at, f"not an address with prefix length (e.g. 10.0.10.11/24): {text!r}"
            ) from None
        net = ip.network
        if net.num_addresses > 2 and ip.ip in (net.network_address, net.broadcast_address):
            raise ConfigError(at, f"{ip.ip} is not a host address of {net}")
        if any(ip.ip == other.ip for other in ips):
            raise ConfigError(at, f"{ip.ip} listed twice")
        ips.append(ip)
    return tuple(ips)


def _ref(v: object, where: str, known: Iterable[str], what: str) -> str:
    if not isinstance(v, str) or v not in known:
        raise ConfigError(where, f"unknown {what} {v!r}")
    return v


# -- sections ----------------------------------------------------------------------------------


def _segments(v: object) -> tuple[Segment, ...]:
    if v is None:
        raise ConfigError("segments", "missing (at least one [[segments]] is needed)")
    items = _array(v, "segments")
    if not items:
        raise ConfigError("segments", "at least one segment is needed")
    by_name: dict[str, str] = {}
    by_vlan: dict[int | None, str] = {}
    out: list[Segment] = []
    for i, d in enumerate(items):
        where = _at("segments", i)
        try:
            seg = segment_from_dict(d, where)
        except ValueError as e:
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
            values[key] = _int(value, where, 1)
        else:
            values[key] = _seconds(value, where, zero_ok=key == "reboot_delay_s")
    return Timers(**values)


def _timeouts(v: object) -> dict[str, Any]:
    try:
        Timeouts.from_dict(v, "timeouts")  # type: ignore[arg-type]
    except ValueError as e:
        raise ConfigError.wrap(e) from None
    d: dict[str, Any] = v  # type: ignore[assignment]
    for key, value in d.items():
        # The policy carries timeouts as whole milliseconds (PolicyUpdate has no floats).
        ms = value * 1000
        if round(ms) < 1 or abs(ms - round(ms)) > 1e-6:
            raise ConfigError(f"timeouts.{key}", f"must be a whole number of ms, got {value!r} s")
    return dict(d)


def _firewall(v: object, seg_names: set[str]) -> tuple[str, tuple[dict[str, Any], ...], RuleSet]:
    d = _table(v, "firewall", ("default", "rules"))
    default = d.get("default", "drop")
    if not isinstance(default, str):
        raise ConfigError("firewall.default", f"must be a string, got {_type_name(default)}")
    rules = _array(d.get("rules", []), "firewall.rules")
    try:
        ruleset = ruleset_from_config(rules, default, 0, where="firewall.rules")
    except RuleError as e:
        path = "firewall.default" if e.field == "default" else e.field
        raise ConfigError(path, e.reason) from None
    for i, rule in enumerate(ruleset.rules):
        if rule.segment is not None and rule.segment not in seg_names:
            raise ConfigError(f"firewall.rules[{i}].segment", f"unknown segment {rule.segment!r}")
    return default, tuple(rules), ruleset


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


def _hosts(v: object) -> list[_HostDraft]:
    if v is None:
        raise ConfigError("hosts", "missing (at least one [[hosts]] is needed)")
    items = _array(v, "hosts")
    if not items:
        raise ConfigError("hosts", "at least one host is needed")
    procs: dict[str, str] = {FABRICD: "the fabric daemon"}  # process names: hosts and NICs
    hosts: list[_HostDraft] = []
    for i, raw in enumerate(items):
        where = _at("hosts", i)
        d = _table(raw, where, _HOST_KEYS, ("name", "nics"))
        name = _claim(procs, _name(d["name"], f"{where}.name"), f"{where}.name")
        try:
            policy = team_policy_from_str(d.get("team_policy", "port-id"), f"{where}.team_policy")
        except ValueError as e:
            raise ConfigError.wrap(e) from None
        failback = _bool(d.get("failback", True), f"{where}.failback")
        mbps = _number(d.get("uplink_mbps", 10_000))
        if mbps is None or not 0.001 <= mbps <= 1e6:
            raise ConfigError(
                f"{where}.uplink_mbps", f"must be a number in 0.001..1e6, got {d['uplink_mbps']!r}"
            )
        threshold = _number(d.get("load_threshold", 0.75))
        if threshold is None or not 0.01 <= threshold <= 1:
            raise ConfigError(
                f"{where}.load_threshold",
                f"must be a number in 0.01..1, got {d['load_threshold']!r}",
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
            nic_name = _claim(procs, _name(nd["name"], f"{nwhere}.name"), f"{nwhere}.name")
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
                    eswitch_capacity=_int(
                        nd.get("eswitch_capacity", 4096), f"{nwhere}.eswitch_capacity", 0
                    ),
                    ct_limit=_int(nd.get("ct_limit", 262144), f"{nwhere}.ct_limit", 1),
                )
            )
        hosts.append(_HostDraft(name, tuple(nics), policy.value, failback, mbps, threshold))
    return hosts


def _claim(owners: dict[str, str], name: str, where: str) -> str:
    """Register ``name`` as owned by ``where``; ConfigError if someone already owns it."""
    if name in owners:
        raise ConfigError(where, f"name {name!r} already used by {owners[name]}")
    owners[name] = where
    return name


class _Identities:
    """Names of VMs and peers, MACs (cluster-wide) and IPs (per segment) seen so far."""

    def __init__(self) -> None:
        self.names: dict[str, str] = {}
        self.macs: dict[bytes, str] = {}
        self.ips: dict[tuple[str, IPAddress], str] = {}

    def add_mac(self, mac: bytes, where: str) -> None:
        if mac in self.macs:
            raise ConfigError(where, f"MAC {mac_str(mac)} already used by {self.macs[mac]}")
        self.macs[mac] = where

    def add_ips(self, segment: str, ips: tuple[IPInterface, ...], where: str) -> None:
        for i, ip in enumerate(ips):
            key = (segment, ip.ip)
            if key in self.ips:
                raise ConfigError(
                    f"{where}[{i}]",
                    f"{ip.ip} already used in segment {segment!r} by {self.ips[key]}",
                )
            self.ips[key] = f"{where}[{i}]"


_VM_KEYS = ("host", "nic", "interfaces", "tcp_listen", "udp_listen")
_IFACE_KEYS = ("mac", "ips", "segment")


def _vms(v: object, hosts: list[_HostDraft], seg_names: set[str], ids: _Identities) -> list[VmSpec]:
    nic_host = {nic.name: h.name for h in hosts for nic in h.nics}
    vms: list[VmSpec] = []
    for name, raw in _table(v, "vms", None).items():
        where = f"vms.{name}"
        _claim(ids.names, _name(name, where), where)
        d = _table(raw, where, _VM_KEYS, ("nic", "interfaces"))
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
            )
        )
    return vms


_PEER_KEYS = ("mac", "ips", "segment", "gateway_mac", "tcp_listen", "udp_listen")


def _peers(v: object, seg_names: set[str], ids: _Identities) -> tuple[PeerSpec, ...]:
    peers: list[PeerSpec] = []
    for name, raw in _table(v, "peers", None).items():
        where = f"peers.{name}"
        _claim(ids.names, _name(name, where), where)
        d = _table(raw, where, _PEER_KEYS, ("mac", "ips", "segment"))
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
            )
        )
    return tuple(peers)


_FLOW_KEYS = ("proto", "src", "dst", "dport", "rate", "size", "expect")


def _flows(v: object, cfg: Config) -> tuple[WorkloadFlow, ...]:
    endpoints = {vm.name: vm for vm in cfg.vms} | {p.name: p for p in cfg.peers}
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
        dport = _int(d["dport"], f"{where}.dport", 1, 65535)
        rate = _number(d.get("rate", 10.0))
        if rate is None or rate < 0:
            got = d.get("rate")
            raise ConfigError(f"{where}.rate", f"must be messages per second >= 0, got {got!r}")
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
    for proc, url in d.items():
        where = f"endpoints.{proc}"
        m = _TCP_ENDPOINT_RE.fullmatch(url) if isinstance(url, str) else None
        if m is None or not 1 <= int(m[2]) <= 65535:
            raise ConfigError(where, f"must be 'tcp://host:port', got {url!r}")
        if url in seen:
            raise ConfigError(where, f"{url} already used by endpoints.{seen[url]}")
        seen[url] = proc
    return dict(d)
