"""The fabric's learning switch (a top-of-rack switch), sans-I/O and 802.1Q aware.

Theory of operation. Ports are any hashable ids (``("nic1", 1)`` for uplink PPID 1 of nic1,
``("peer", "ext1")`` for an external peer). A *trunk* port carries every VLAN: a tagged frame
belongs to its tag, an untagged one to the native VLAN (``None``). An *access* port belongs to
one VLAN and carries it untagged. `process` classifies a frame into its VLAN, learns the source
MAC under ``(vlan, mac)``, then forwards: known unicast to its one port, everything else
(unknown unicast, broadcast, multicast) flooded to every up port of the VLAN. A frame never
leaves by its ingress port. The tag is pushed or popped per egress port, so a frame is always
tagged on a trunk (unless native) and untagged on an access port.

A source MAC seen on a new port moves at once (a NIC failover's gratuitous ARP or RARP must
redirect traffic with its first frame) and is counted as a station move; `take_moves` hands the
moves to the driver for logging. Entries expire `aging` seconds after they were last seen:
lazily on lookup, and in bulk with `expire(now)`. A port is up when it is administratively up
and its link is up; a port going down flushes its MACs and drops frames to and from it.

Only the Ethernet and 802.1Q headers are read (a switch forwards payloads it does not parse).
Bad frames are dropped and counted under a dotted reason, never raised; VID 0 is a priority
tag (IEEE 802.1Q §9.6) and is treated as untagged, VID 4095 is reserved and dropped.
"""

from __future__ import annotations

import struct
from collections.abc import Hashable
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any

from wire.addr import mac_str
from wire.frames import MalformedFrame
from wire.malformed import Malformed
from wire.protocols import ETH_VLAN

__all__ = ["DEFAULT_AGING", "MacMove", "MacRow", "PortMode", "Switch", "SwitchStats"]

Port = Hashable
Vlan = int | None

DEFAULT_AGING = 300.0  # seconds; the IEEE 802.1Q default ageing time
_TPID = struct.Struct("!HH")
_TPID_BYTES = ETH_VLAN.to_bytes(2, "big")


class PortMode(StrEnum):
    """How a port carries VLANs."""

    TRUNK = "trunk"  # every VLAN, tagged; untagged = native VLAN (None)
    ACCESS = "access"  # one VLAN, untagged


@dataclass(slots=True)
class _PortState:
    mode: PortMode
    vlan: Vlan  # the access VLAN; None on trunks
    admin_up: bool = True
    link_up: bool = True
    rx: int = 0  # frames received and switched
    tx: int = 0  # frames sent

    @property
    def up(self) -> bool:
        return self.admin_up and self.link_up


@dataclass(slots=True)
class _Entry:
    port: Port
    last_seen: float


@dataclass(slots=True)
class MacRow:
    """One row of the MAC table, for inspection."""

    vlan: Vlan
    mac: str
    port: Port
    age: float


@dataclass(slots=True)
class MacMove:
    """A station move: `mac` in `vlan` was learned on `new` after `old`."""

    vlan: Vlan
    mac: str
    old: Port
    new: Port
    now: float


@dataclass(slots=True)
class SwitchStats:
    """Counters of the switch; `drops` is keyed by dotted reason."""

    frames_in: int = 0
    frames_out: int = 0
    floods: int = 0  # frames flooded (unknown unicast, broadcast, multicast)
    learned: int = 0  # new (vlan, mac) entries
    moves: int = 0  # entries that changed port
    aged: int = 0  # entries expired
    flushed: int = 0  # entries removed because their port went down or away
    drops: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """A plain dict for logs and the control socket."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["drops"] = dict(self.drops)
        return out


class Switch:
    """A VLAN-aware learning switch; see the module docstring."""

    def __init__(self, aging: float = DEFAULT_AGING, max_frame: int | None = None) -> None:
        """`max_frame` bounds egress frames (a pushed tag may exceed it: dropped and counted)."""
        if aging <= 0:
            raise ValueError("aging must be positive")
        self.aging = aging
        self.max_frame = max_frame
        self.stats = SwitchStats()
        self._ports: dict[Port, _PortState] = {}
        self._table: dict[tuple[Vlan, bytes], _Entry] = {}
        self._members: dict[Vlan, list[Port]] = {}  # up ports of a VLAN, rebuilt on changes
        self._trunks: list[Port] = []  # up trunks, members of every VLAN
        self._moves: list[MacMove] = []
        self._sources: dict[tuple[Port, bytes], int] = {}  # frames per (ingress port, source)

    # --- ports ------------------------------------------------------------------------------

    def add_port(
        self, port: Port, mode: PortMode | str = PortMode.TRUNK, vlan: Vlan = None
    ) -> None:
        """Add a trunk port, or an access port of `vlan` (None: the native VLAN)."""
        if port in self._ports:
            raise ValueError(f"port {port!r} exists")
        mode = PortMode(mode)
        if mode is PortMode.TRUNK and vlan is not None:
            raise ValueError("a trunk carries every VLAN: give no vlan")
        if vlan is not None and not 1 <= vlan <= 4094:
            raise ValueError(f"vlan must be 1..4094, got {vlan}")
        self._ports[port] = _PortState(mode, vlan)
        self._rebuild()

    def remove_port(self, port: Port) -> None:
        """Remove a port and the MACs learned on it."""
        del self._ports[port]
        self._flush(port)
        self._rebuild()

    def set_admin(self, port: Port, up: bool) -> None:
        """Operator up/down (`port-down`); a port going down flushes its MACs."""
        self._ports[port].admin_up = up
        self._changed(port)

    def set_link(self, port: Port, up: bool) -> None:
        """Link up/down (the peer process came or went); a port going down flushes its MACs."""
        self._ports[port].link_up = up
        self._changed(port)

    def is_up(self, port: Port) -> bool:
        """True when `port` exists and is administratively and physically up."""
        state = self._ports.get(port)
        return state is not None and state.up

    def ports(self) -> dict[Port, dict[str, Any]]:
        """Every port with its mode, VLAN and states."""
        return {
            p: {
                "mode": str(s.mode),
                "vlan": s.vlan,
                "admin_up": s.admin_up,
                "link_up": s.link_up,
                "rx": s.rx,
                "tx": s.tx,
            }
            for p, s in self._ports.items()
        }

    def sources(self) -> dict[Port, dict[str, int]]:
        """Frames received per port and source MAC: which uplink each station sends on."""
        out: dict[Port, dict[str, int]] = {}
        for (port, mac), n in self._sources.items():
            out.setdefault(port, {})[mac_str(mac)] = n
        return out

    # --- forwarding -------------------------------------------------------------------------

    def process(self, port: Port, frame: bytes, now: float) -> list[tuple[Port, bytes]]:
        """Switch one frame received on `port`; returns (egress port, frame) pairs."""
        self.stats.frames_in += 1
        state = self._ports.get(port)
        if state is None:
            return self._drop("port.unknown")
        if not state.up:
            return self._drop("port.down")
        try:
            dst, src, tag = _l2_untrusted(frame)
        except Malformed as exc:
            return self._drop(exc.reason)
        if src[0] & 1:
            return self._drop("eth.src_group")  # a group address is never a source (802.3 §3.2.3)
        if tag is None or tag == 0:
            vlan = state.vlan
        elif tag == 0xFFF:
            return self._drop("vlan.reserved")
        elif state.mode is PortMode.ACCESS:
            return self._drop("access.tagged")
        else:
            vlan = tag
        self._learn(vlan, src, port, now)
        state.rx += 1
        key = (port, src)
        self._sources[key] = self._sources.get(key, 0) + 1
        if not dst[0] & 1:
            entry = self._lookup(vlan, dst, now)
            if entry is not None:
                if entry.port == port:
                    return self._drop("fwd.same_port")  # the station is on the ingress segment
                return self._emit([entry.port], frame, tag, vlan)
        self.stats.floods += 1
        members = self._members.get(vlan, self._trunks)
        return self._emit([p for p in members if p != port], frame, tag, vlan)

    def _emit(
        self, out_ports: list[Port], frame: bytes, tag: int | None, vlan: Vlan
    ) -> list[tuple[Port, bytes]]:
        # Two variants at most: untagged and tagged with `vlan`; the ingress bytes are reused
        # when they already are the right variant (a trunk-to-trunk frame keeps its PCP bits).
        untagged = frame if tag is None else frame[:12] + frame[16:]
        if vlan is None:
            tagged = untagged
        elif tag == vlan:
            tagged = frame
        else:
            tagged = untagged[:12] + _TPID.pack(ETH_VLAN, vlan) + untagged[12:]
        out = []
        for p in out_ports:
            f = tagged if self._ports[p].mode is PortMode.TRUNK else untagged
            if self.max_frame is not None and len(f) > self.max_frame:
                self._drop("egress.oversize")
                continue
            out.append((p, f))
            self._ports[p].tx += 1
        self.stats.frames_out += len(out)
        return out

    # --- the MAC table ----------------------------------------------------------------------

    def _learn(self, vlan: Vlan, mac: bytes, port: Port, now: float) -> None:
        key = (vlan, mac)
        entry = self._table.get(key)
        if entry is None:
            self._table[key] = _Entry(port, now)
            self.stats.learned += 1
            return
        if entry.port != port:
            self.stats.moves += 1
            self._moves.append(MacMove(vlan, mac_str(mac), entry.port, port, now))
            entry.port = port
        entry.last_seen = now

    def _lookup(self, vlan: Vlan, mac: bytes, now: float) -> _Entry | None:
        entry = self._table.get((vlan, mac))
        if entry is not None and now - entry.last_seen >= self.aging:
            del self._table[(vlan, mac)]
            self.stats.aged += 1
            return None
        return entry

    def expire(self, now: float) -> int:
        """Remove entries idle for `aging` seconds; returns how many."""
        old = [k for k, e in self._table.items() if now - e.last_seen >= self.aging]
        for key in old:
            del self._table[key]
        self.stats.aged += len(old)
        return len(old)

    def lookup(self, vlan: Vlan, mac: bytes, now: float) -> Port | None:
        """The port `mac` was learned on in `vlan`, or None (unknown or aged out)."""
        entry = self._lookup(vlan, mac, now)
        return None if entry is None else entry.port

    def mac_table(self, now: float) -> list[MacRow]:
        """Live entries, sorted by VLAN (native first) then MAC."""
        rows = [
            MacRow(vlan, mac_str(mac), e.port, now - e.last_seen)
            for (vlan, mac), e in self._table.items()
            if now - e.last_seen < self.aging
        ]
        rows.sort(key=lambda r: (-1 if r.vlan is None else r.vlan, r.mac))
        return rows

    def take_moves(self) -> list[MacMove]:
        """Station moves since the last call (for the driver to log)."""
        moves, self._moves = self._moves, []
        return moves

    # --- internals --------------------------------------------------------------------------

    def _drop(self, reason: str) -> list[tuple[Port, bytes]]:
        drops = self.stats.drops
        drops[reason] = drops.get(reason, 0) + 1
        return []

    def _changed(self, port: Port) -> None:
        if not self._ports[port].up:
            self._flush(port)
        self._rebuild()

    def _flush(self, port: Port) -> None:
        gone = [k for k, e in self._table.items() if e.port == port]
        for key in gone:
            del self._table[key]
        self.stats.flushed += len(gone)

    def _rebuild(self) -> None:
        self._trunks = [p for p, s in self._ports.items() if s.up and s.mode is PortMode.TRUNK]
        members: dict[Vlan, list[Port]] = {}
        for p, s in self._ports.items():
            if s.up and s.mode is PortMode.ACCESS:
                members.setdefault(s.vlan, list(self._trunks)).append(p)
        self._members = members


def _l2_untrusted(frame: bytes) -> tuple[bytes, bytes, int | None]:
    """(dst, src, VID or None) of an Ethernet II frame; raises only `MalformedFrame`."""
    if len(frame) < 14:
        raise MalformedFrame("eth.short")
    if frame[12:14] != _TPID_BYTES:
        return frame[:6], frame[6:12], None
    if len(frame) < 18:
        raise MalformedFrame("vlan.short")
    return frame[:6], frame[6:12], int.from_bytes(frame[14:16], "big") & 0x0FFF
