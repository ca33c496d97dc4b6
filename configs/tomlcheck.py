"""TOML field checks: each reads one value of a parsed config table and raises only ConfigError,
whose message starts with the value's path (``hosts[0].nics[1].eswitch_capacity: ...``)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from ipaddress import ip_interface
from typing import Any

from configs.model import _NAME_RE, ConfigError, IPAddress, IPInterface
from configs.ranges import RANGES, fmt_number
from wire.addr import mac_bytes, mac_str

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


def _ranged_int(v: object, where: str, key: str) -> int:
    """An integer field checked against ``RANGES[key]`` (see _ranged)."""
    return int(_ranged(v, where, key))


def _ranged(v: object, where: str, key: str) -> float:
    """``v`` checked against ``RANGES[key]``; the error names the bound crossed and the range."""
    r = RANGES[key]
    ok_type = type(v) is int if r.integer else _number(v) is not None
    unit = "seconds" if r.unit == "s" else r.unit
    noun = "an integer" if r.integer else f"a number of {unit}" if unit else "a number"
    if ok_type and r.lo <= v <= r.hi:  # type: ignore[operator]
        return v if r.integer else float(v)  # type: ignore[return-value,arg-type]
    if ok_type and v > r.hi:  # type: ignore[operator]
        bound = f"<= {fmt_number(r.hi)}"
    elif r.unit == "s" and r.lo > 0 and (not ok_type or v <= 0):  # type: ignore[operator]
        bound = "> 0"  # a duration's first requirement; the range says how far above
    else:
        bound = f">= {fmt_number(r.lo)}"
    raise ConfigError(where, f"must be {noun} {bound} (range {r.text}), got {v!r}")


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
