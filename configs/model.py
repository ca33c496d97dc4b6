"""The cluster configuration model: frozen dataclasses a validated config is made of.

Conventions every process shares, fixed here:

- Process names are ``fabricd``, each host's name (its hostd) and each NIC's name (its nicd);
  host and NIC names are therefore unique together, across the whole cluster.
- A NIC's ``uplinks[i]`` has PPID ``i + 1``; its team-wide name is ``"<nic>/<port>"``.
- MACs are unique in the cluster; IP addresses are unique per segment.
- A flow targets the destination's first IPv4 address on a segment the source is also on
  (first IPv6 if it has none there); there is no router between segments.
- A VM or external peer is of one of ``KINDS``: ``builtin`` (nicteam's own host stack in its
  daemon, which runs the workload's flows) or ``netns`` (a Linux network namespace with real
  applications: its ``run`` services and ``checks``; no workload flow ends there).
- ``Config.policy`` is a host's typed ``bus.policy.Policy``; it carries conntrack timeouts as
  integer milliseconds (``timeouts_ms``) because the bus carries no floats.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv6Address, IPv6Interface
from pathlib import Path
from typing import Any, Protocol, TypeVar

from bus.policy import (
    ActionName,
    InterfaceSpec,
    NicUplinks,
    Policy,
    PolicyError,
    RuleSpec,
    SegmentSpec,
    TeamPolicyName,
)
from hoststack.traffic import FlowSpec

__all__ = [
    "BUILTIN",
    "CHECK_EXPECTS",
    "FABRICD",
    "KINDS",
    "NETNS",
    "RUN_DIR_ENV",
    "CheckSpec",
    "Config",
    "ConfigError",
    "HostSpec",
    "IfaceSpec",
    "MachineSpec",
    "NicSpec",
    "PeerSpec",
    "Timers",
    "VmSpec",
    "WorkloadFlow",
    "resolve_run_dir",
]

IPInterface = IPv4Interface | IPv6Interface
IPAddress = IPv4Address | IPv6Address

#: The process name of the fabric daemon; no host or NIC may take it.
FABRICD = "fabricd"
#: Environment variable naming the run directory when load_config is not given one.
RUN_DIR_ENV = "NICTEAM_RUN_DIR"
MAX_NICS_PER_HOST = 8
EXPECTS = ("deliver", "deny")
#: A VM's or peer's kind: the built-in sans-I/O stack (the default), or a network namespace.
BUILTIN = "builtin"
NETNS = "netns"
KINDS = (BUILTIN, NETNS)
#: What a netns check's command should do: exit 0 ("ok"), or exit non-zero or time out ("fail").
CHECK_EXPECTS = ("ok", "fail")

# Names become file names (run/<proc>.sock, logs/<proc>.jsonl), ZeroMQ identities and parts of
# field paths, so no '.', '/' or spaces.
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")


class ConfigError(ValueError):
    """The config is invalid; the message starts with the offending field's path."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}" if field else reason)
        self.field = field
        self.reason = reason

    @classmethod
    def wrap(cls, exc: PolicyError) -> ConfigError:
        """A policy reader's error (it names the field's path) as a ConfigError."""
        return cls(exc.field, exc.why)


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
class CheckSpec:
    """A command `up --test` runs in a netns VM or peer: passes if its outcome is ``expect``."""

    name: str
    cmd: str
    expect: str = "ok"  # "ok": exits 0 in time; "fail": exits non-zero or times out
    timeout_s: float = 10.0


@dataclass(frozen=True, slots=True)
class VmSpec:
    """One VM: its host, home NIC, interfaces and the ports its endpoint listens on; a netns
    VM (``kind``) instead runs the ``run`` commands and declares ``checks``."""

    name: str
    host: str
    nic: str
    interfaces: tuple[IfaceSpec, ...]
    tcp_listen: tuple[int, ...] = ()
    udp_listen: tuple[int, ...] = ()
    kind: str = BUILTIN
    run: tuple[str, ...] = ()
    checks: tuple[CheckSpec, ...] = ()

    def interface_name(self, index: int) -> str:
        """The name of interface ``index``: the VM's own, or ``"<vm>/<index>"`` if it has more."""
        return self.name if len(self.interfaces) == 1 else f"{self.name}/{index}"


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
    kind: str = BUILTIN  # and run, checks: as VmSpec's
    run: tuple[str, ...] = ()
    checks: tuple[CheckSpec, ...] = ()


@dataclass(frozen=True, slots=True)
class MachineSpec:
    """A machine of ``[machines]``: its IPv4 address and the processes placed on it, whose bus
    endpoints are ``tcp://<address>:<port + i>`` (``i``: the process's rank on the machine)."""

    name: str
    address: str
    port: int
    processes: tuple[str, ...]


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
    segments: tuple[SegmentSpec, ...]
    firewall_default: ActionName
    rules: tuple[dict[str, Any], ...]  # raw rule tables, validated into ``rule_specs``
    rule_specs: tuple[RuleSpec, ...]
    timeouts: dict[str, Any]  # raw conntrack timeout overrides in seconds, names checked
    timers: Timers
    hosts: tuple[HostSpec, ...]
    peers: tuple[PeerSpec, ...]
    flows: tuple[WorkloadFlow, ...]
    # proc -> "tcp://host:port": the machines' derived endpoints, then [endpoints] overrides.
    endpoints: Mapping[str, str] = field(default_factory=dict)
    machines: tuple[MachineSpec, ...] = ()  # empty: every process on this machine (ipc)

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

    def kind_of(self, name: str) -> str:
        """The kind (``KINDS``) of the VM or external peer called ``name``; KeyError if none."""
        items: tuple[VmSpec | PeerSpec, ...] = (*self.vms, *self.peers)
        for item in items:
            if item.name == name:
                return item.kind
        raise KeyError(f"unknown VM or peer {name!r}")

    def flow(self, name: str) -> WorkloadFlow:
        """The workload flow called ``name``; KeyError if none."""
        return _find(self.flows, name, "flow")

    def machine(self, name: str) -> MachineSpec:
        """The machine called ``name``; KeyError if none."""
        return _find(self.machines, name, "machine")

    def machine_of(self, proc: str) -> MachineSpec | None:
        """The machine ``proc`` is placed on; None without ``[machines]``; KeyError if unknown."""
        if proc not in self.processes:
            raise KeyError(f"unknown process {proc!r}")
        return next((m for m in self.machines if proc in m.processes), None)

    def endpoint(self, proc: str) -> str:
        """Bus endpoint of ``proc``: ``[endpoints]`` if listed, else its machine's
        ``tcp://<address>:<port>`` (see MachineSpec), else ``ipc://<run_dir>/<proc>.sock``."""
        if not isinstance(proc, str) or not _NAME_RE.fullmatch(proc):
            raise ValueError(f"not a process name: {proc!r}")
        mapped = self.endpoints.get(proc)
        return mapped if mapped is not None else f"ipc://{self.run_dir / proc}.sock"

    def timeouts_ms(self) -> dict[str, int]:
        """The ``[timeouts]`` overrides in whole milliseconds (the loader checked they are)."""
        return {name: round(seconds * 1000) for name, seconds in self.timeouts.items()}

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

    def policy(
        self,
        host: str,
        bindings: Iterable[tuple[int, str, int]] = (),
        team_policy: TeamPolicyName | None = None,
    ) -> Policy:
        """The typed NIC policy of ``host``; ``bindings`` are (VPID, VM, interface index) from
        the FPAG, and ``team_policy`` overrides the config's (the `team-policy` command)."""
        h = self.host(host)
        interfaces = []
        for vpid, vm_name, index in bindings:
            vm = self.vm(vm_name)
            iface = vm.interfaces[index]
            ips = tuple(ip.ip for ip in iface.ips)
            name = vm.interface_name(index)
            interfaces.append(InterfaceSpec(vpid, name, iface.mac, ips, iface.segment))
        return Policy(
            segments=self.segments,
            interfaces=tuple(interfaces),
            rules=self.rule_specs,
            firewall_default=self.firewall_default,
            team_policy=TeamPolicyName(h.team_policy) if team_policy is None else team_policy,
            failback=h.failback,
            # The policy travels without floats: bits/s and a percentage.
            uplink_bps=round(h.uplink_mbps * 1e6),
            load_threshold_pct=round(h.load_threshold * 100),
            nics=tuple(NicUplinks(n.name, n.uplinks) for n in h.nics),
            timeouts_ms=self.timeouts_ms(),
        )

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


def resolve_run_dir(run_dir: str | Path | None = None) -> Path:
    """``run_dir`` if given, else $NICTEAM_RUN_DIR, else ``./run``; always absolute."""
    if run_dir is None:
        run_dir = os.environ.get(RUN_DIR_ENV) or "run"
    return Path(run_dir).absolute()
