"""The ``[machines]`` section: which machine each process runs on, and the tcp endpoints that
placement gives every process.

Shape (``configs/default.toml`` has the commented example)::

    [machines.m1]
    address = "10.99.0.1"      # its IPv4 address: its processes bind and are reached there
    processes = ["fabricd"]
    [machines.m2]
    address = "10.99.0.2"
    processes = ["h1"]         # a host brings its NICs along, unless a NIC is listed elsewhere
    port = 7100                # the first bus port (the default); see below

Rules. Every process (fabricd, each host, each NIC) is placed exactly once: listed by name, or,
for a NIC, brought along by its host. A machine's processes take the ports ``port``,
``port + 1``, ... in the config's process order (fabricd, the hosts, the NICs), so every machine
and the operator's CLI derive the same endpoints from the same file. An ``[endpoints]`` entry
still overrides a process's derived endpoint; no two processes may end up on the same one.
Without ``[machines]`` nothing changes: every process listens on ``ipc://`` in the run directory.
"""

from __future__ import annotations

from collections.abc import Mapping
from ipaddress import IPv4Address, ip_address

from configs.model import Config, ConfigError, MachineSpec
from configs.ranges import RANGES
from configs.tomlcheck import _array, _name, _ranged_int, _table

__all__ = ["DEFAULT_PORT", "machines_section"]

#: The first bus port of a machine whose table gives no ``port``.
DEFAULT_PORT = 7100
_KEYS = ("address", "processes", "port")


def machines_section(
    v: object, cfg: Config, overrides: Mapping[str, str]
) -> tuple[tuple[MachineSpec, ...], dict[str, str]]:
    """The machines of ``v`` (the ``[machines]`` table) and every process's tcp endpoint:
    derived from its machine, then ``overrides`` (``[endpoints]``); raises ConfigError."""
    tables = _table(v, "machines", None)
    if not tables:
        return (), dict(overrides)
    placed: dict[str, str] = {}  # process -> the field that placed it
    drafts: list[tuple[str, str, int, list[str]]] = []
    for name, raw in tables.items():
        where = f"machines.{name}"
        _name(name, where)
        d = _table(raw, where, _KEYS, ("address", "processes"))
        address = _address(d["address"], f"{where}.address")
        port = _ranged_int(d.get("port", DEFAULT_PORT), f"{where}.port", "machines.port")
        procs = _listed(d["processes"], f"{where}.processes", cfg, placed)
        drafts.append((name, address, port, procs))
    _bring_nics(drafts, cfg, placed)
    missing = [p for p in cfg.processes if p not in placed]
    if missing:
        raise ConfigError("machines", f"not placed on any machine: {', '.join(missing)}")
    machines = tuple(_machine(cfg, *draft) for draft in drafts)
    return machines, _endpoints(machines, overrides)


def _address(v: object, where: str) -> str:
    try:
        if not isinstance(v, str):
            raise ValueError
        ip = ip_address(v)
    except ValueError:
        raise ConfigError(where, f"not an IP address (e.g. 10.99.0.1): {v!r}") from None
    if not isinstance(ip, IPv4Address):
        raise ConfigError(where, f"must be an IPv4 address (the bus binds IPv4), got {v!r}")
    if ip.is_unspecified or ip.is_multicast or ip == IPv4Address("255.255.255.255"):
        raise ConfigError(where, f"must be a unicast address a machine can own, got {v!r}")
    return str(ip)


def _listed(v: object, where: str, cfg: Config, placed: dict[str, str]) -> list[str]:
    items = _array(v, where)
    if not items:
        raise ConfigError(where, "a machine needs at least one process")
    known = cfg.processes
    out: list[str] = []
    for i, proc in enumerate(items):
        at = f"{where}[{i}]"
        if not isinstance(proc, str) or proc not in known:
            raise ConfigError(at, f"unknown process {proc!r} (processes: {', '.join(known)})")
        if proc in placed:
            raise ConfigError(at, f"{proc!r} already placed by {placed[proc]}")
        placed[proc] = at
        out.append(proc)
    return out


def _bring_nics(
    drafts: list[tuple[str, str, int, list[str]]], cfg: Config, placed: dict[str, str]
) -> None:
    """A listed host brings every NIC of its own that no machine lists."""
    for _, _, _, procs in drafts:
        for host in cfg.hosts:
            if host.name not in procs:
                continue
            for nic in host.nics:
                if nic.name not in placed:
                    placed[nic.name] = f"{placed[host.name]} (a NIC of {host.name})"
                    procs.append(nic.name)


def _machine(cfg: Config, name: str, address: str, port: int, procs: list[str]) -> MachineSpec:
    ordered = tuple(p for p in cfg.processes if p in procs)
    last = port + len(ordered) - 1
    hi = int(RANGES["machines.port"].hi)
    if last > hi:
        raise ConfigError(
            f"machines.{name}.port",
            f"{len(ordered)} processes from port {port} run past {hi} (the last would be {last})",
        )
    return MachineSpec(name, address, port, ordered)


def _endpoints(machines: tuple[MachineSpec, ...], overrides: Mapping[str, str]) -> dict[str, str]:
    endpoints: dict[str, str] = {}
    owner: dict[str, str] = {}  # endpoint -> the process that has it
    for m in machines:
        for i, proc in enumerate(m.processes):
            if proc in overrides:
                continue
            url = f"tcp://{m.address}:{m.port + i}"
            if url in owner:
                raise ConfigError(
                    f"machines.{m.name}.port",
                    f"{proc} would listen on {url}, already {owner[url]}'s "
                    "(machines that share an address need port ranges apart)",
                )
            endpoints[proc], owner[url] = url, proc
    for proc, url in overrides.items():
        if url in owner:
            raise ConfigError(
                f"endpoints.{proc}", f"{url} is {owner[url]}'s endpoint on its machine"
            )
        endpoints[proc], owner[url] = url, proc
    return endpoints
