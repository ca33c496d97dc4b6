"""Team egress selection over the live uplinks of all NICs of one host, and the ingress filter.

Theory of operation: the team is every uplink of every NIC of the host, in configured order.
Every NIC keeps its own `Team` and must pick the same uplink from the same inputs (the VPID, the
flow hash, the live set), so nothing here depends on Python's randomised `hash()` or on call
history, except where noted. Policies:

- ``port-id``: all flows of a VPID leave on one uplink, chosen by rendezvous (highest random
  weight) hashing of (VPID, uplink name) over the live uplinks; an uplink going down moves only
  the VPIDs it carried, and one coming back takes back only its own.
- ``l4-hash``: rendezvous on the 5-tuple's `flow_hash`, so flows of one VPID spread out.
- ``active-backup``: the first live uplink in configured order carries everything; when it goes
  down the next live one takes over. With ``failback=True`` (the default) the earlier uplink
  takes back over when it returns; with ``failback=False`` the active one stays until it dies,
  which depends on the order liveness changes were seen (all NICs see them from hostd).
- ``load-based``: port-id, plus per-VPID overrides decided by `rebalance` from the bytes each
  (uplink, VPID) sent in the last interval (VMware's "route based on physical NIC load"). An
  override lasts until its uplink dies; `set_override` applies a move another NIC decided.

Ingress (`accepts`): the fabric learned one port per MAC, so unicast for a VPID of this host is
taken on whichever live uplink it arrives; a flooded frame arrives on every uplink, so broadcast
and multicast are taken on one designated uplink only (the active one in active-backup, else the
first live one) and each frame reaches the VMs once.
"""

from __future__ import annotations

import copy
import hashlib
import struct
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum

__all__ = ["Team", "TeamPolicy", "Uplink", "flow_hash", "team_policy_from_str"]

_MASK64 = (1 << 64) - 1
_PORTS = struct.Struct("!BHH")


class TeamPolicy(Enum):
    """How the team picks an egress uplink."""

    PORT_ID = "port-id"
    L4_HASH = "l4-hash"
    ACTIVE_BACKUP = "active-backup"
    LOAD_BASED = "load-based"


def team_policy_from_str(s: object, where: str) -> TeamPolicy:
    """Parse a config policy name; errors name the field (`where`)."""
    for policy in TeamPolicy:
        if s == policy.value:
            return policy
    names = ", ".join(repr(p.value) for p in TeamPolicy)
    raise ValueError(f"{where}: must be one of {names}, got {s!r}")


@dataclass(frozen=True, slots=True)
class Uplink:
    """One physical uplink port: its NIC, that NIC's PPID for it, and its team-wide name."""

    nic: str
    ppid: int
    name: str  # e.g. "nic1/p0"; the rendezvous key, so it must be the same on every NIC

    def __post_init__(self) -> None:
        if not isinstance(self.nic, str) or not self.nic:
            raise ValueError(f"nic: must be a non-empty string, got {self.nic!r}")
        if not isinstance(self.ppid, int) or isinstance(self.ppid, bool) or self.ppid < 0:
            raise ValueError(f"ppid: must be an integer >= 0, got {self.ppid!r}")
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"name: must be a non-empty string, got {self.name!r}")


def flow_hash(proto: int, src: int, dst: int, sport: int, dport: int) -> int:
    """A 32-bit hash of a 5-tuple (IPs as ints, v4 or v6), the same in every process."""
    data = src.to_bytes(16, "big") + dst.to_bytes(16, "big") + _PORTS.pack(proto, sport, dport)
    return zlib.crc32(data)


def _mix64(x: int) -> int:
    # splitmix64's finaliser: every input bit flips about half the output bits.
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def _name_seed(name: str) -> int:
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big")


class Team:
    """The host's team: liveness, policy, egress selection, ingress filter, load rebalancing."""

    def __init__(
        self,
        uplinks: Sequence[Uplink],
        policy: TeamPolicy,
        *,
        failback: bool = True,
        load_interval: float = 1.0,
        load_threshold: float = 0.75,
        capacity_bps: float = 1e9,
    ) -> None:
        if not load_interval > 0:
            raise ValueError(f"load_interval: must be > 0, got {load_interval!r}")
        if not 0 < load_threshold <= 1:
            raise ValueError(f"load_threshold: must be in (0, 1], got {load_threshold!r}")
        if not capacity_bps > 0:
            raise ValueError(f"capacity_bps: must be > 0, got {capacity_bps!r}")
        self._uplinks = tuple(uplinks)
        self._by_name: dict[str, Uplink] = {}
        ports: set[tuple[str, int]] = set()
        for u in self._uplinks:
            if u.name in self._by_name:
                raise ValueError(f"uplink {u.name!r} listed twice")
            if (u.nic, u.ppid) in ports:
                raise ValueError(f"uplink {u.name!r}: port {u.ppid} of {u.nic} listed twice")
            self._by_name[u.name] = u
            ports.add((u.nic, u.ppid))
        self._seeds = {u.name: _name_seed(u.name) for u in self._uplinks}
        self.policy = policy
        self.failback = failback
        self.load_interval = load_interval
        self.load_threshold = load_threshold
        self.capacity_bps = capacity_bps
        self._live: set[str] = set(self._by_name)  # all start live; hostd reports failures
        self._link_down: set[str] = set()  # no carrier (a cable pulled)
        self._nic_down: set[str] = set()  # whole NICs lost
        # Load-based: bytes/s per (uplink, VPID) of the last interval, ours and the siblings'.
        self._published: dict[tuple[str, int], float] = {}
        self._peer_load: dict[str, dict[tuple[str, int], float]] = {}
        self._live_list: list[Uplink] = []
        self._active: str | None = None
        self._hrw_cache: dict[int, Uplink] = {}
        self._overrides: dict[int, str] = {}
        self._bytes: dict[tuple[str, int], int] = {}
        self._interval_start: float | None = None
        self._refresh()

    def set_policy(self, policy: TeamPolicy) -> None:
        """Switch policy; load overrides and tallies belong to the old one and are dropped."""
        if policy is not self.policy:
            self.policy = policy
            self._overrides.clear()
            self._bytes.clear()
            self._interval_start = None

    def set_live(self, uplink_name: str, up: bool) -> bool:
        """An uplink's carrier went down or came back; True if team membership changed."""
        if uplink_name not in self._by_name:
            raise ValueError(f"unknown uplink {uplink_name!r}")
        if up:
            self._link_down.discard(uplink_name)
        else:
            self._link_down.add(uplink_name)
        return self._refresh()

    def set_nic_live(self, nic: str, up: bool) -> list[str]:
        """A NIC left or rejoined: its uplinks with carrier follow; returns the names that moved."""
        before = set(self._live)
        if up:
            self._nic_down.discard(nic)
        else:
            self._nic_down.add(nic)
            self._peer_load.pop(nic, None)
        self._refresh()
        return [u.name for u in self._uplinks if (u.name in before) != (u.name in self._live)]

    def links_down(self) -> list[str]:
        """Uplinks without carrier, whatever their NIC's state, in configured order."""
        return [u.name for u in self._uplinks if u.name in self._link_down]

    def published_load(self) -> list[tuple[str, int, float]]:
        """This NIC's (uplink, VPID, bytes/s) of the last load interval, for its siblings."""
        return [(name, vpid, rate) for (name, vpid), rate in sorted(self._published.items())]

    def report_load(self, nic: str, rows: Iterable[tuple[str, int, float]]) -> None:
        """A sibling's published load: with it every NIC plans from the same team-wide loads."""
        self._peer_load[nic] = {
            (name, vpid): rate for name, vpid, rate in rows if name in self._by_name and rate > 0
        }

    def live(self) -> list[Uplink]:
        """The live uplinks in configured order."""
        return list(self._live_list)

    @property
    def uplinks(self) -> tuple[Uplink, ...]:
        """Every uplink of the team in configured order, live or not."""
        return self._uplinks

    def is_live(self, uplink_name: str) -> bool:
        """True if the uplink is in the team now (False for an unknown name)."""
        return uplink_name in self._live

    def dry_copy(self) -> Team:
        """This team for a dry run: its state shared, but a memo and a load tally of its own."""
        c = copy.copy(self)
        c._hrw_cache = {}
        c._bytes = dict(self._bytes)
        return c

    def select(self, vpid: int, flow_hash: int) -> Uplink | None:
        """The egress uplink for a frame of `vpid` with that flow hash; None if none is live."""
        if not self._live_list:
            return None
        if self.policy is TeamPolicy.L4_HASH:
            return self._rendezvous(flow_hash)
        return self._per_vpid(vpid)

    def accepts(self, uplink_name: str, vpid: int | None, broadcast: bool) -> bool:
        """Ingress duplicate filter: take this frame from this uplink? (`vpid` None: not ours)."""
        if uplink_name not in self._live:
            return False
        if broadcast:
            return uplink_name == self._designated()
        # Unicast for no VPID of this host is flooded unknown unicast: it is not for our VMs.
        return vpid is not None

    def account(self, uplink_name: str, vpid: int, nbytes: int, now: float) -> None:
        """Tally bytes a VPID sent on an uplink in the current load interval."""
        if uplink_name not in self._by_name:
            raise ValueError(f"unknown uplink {uplink_name!r}")
        if nbytes < 0:
            raise ValueError(f"nbytes: must be >= 0, got {nbytes!r}")
        if self._interval_start is None:
            self._interval_start = now
        key = (uplink_name, vpid)
        self._bytes[key] = self._bytes.get(key, 0) + nbytes

    def rebalance(self, now: float) -> list[tuple[int, str, str]]:
        """Once per `load_interval`: move the busiest VPID off each overloaded uplink.

        The plan reads the team-wide loads (ours and the siblings' published ones), so every
        NIC plans the same moves and each carries out those of its own VPIDs. A move happens
        only if it lowers the peak (the target ends below the source's old load); returns
        (vpid, from, to) and starts a new interval.
        """
        if self._interval_start is None:
            self._interval_start = now
            return []
        elapsed = now - self._interval_start
        if elapsed < self.load_interval:
            return []
        self._published = {key: n / elapsed for key, n in self._bytes.items() if n}
        moves: list[tuple[int, str, str]] = []
        if self.policy is TeamPolicy.LOAD_BASED and self._live_list:
            moves = self._plan_moves()
            for vpid, _src, dst in moves:
                self.set_override(vpid, dst)
        self._bytes.clear()
        self._interval_start = now
        return moves

    def _plan_moves(self) -> list[tuple[int, str, str]]:
        order = {u.name: i for i, u in enumerate(self._live_list)}
        per: dict[str, dict[int, float]] = {name: {} for name in order}
        for table in (*self._peer_load.values(), self._published):
            for (name, vpid), rate in table.items():
                if name in per:
                    per[name][vpid] = per[name].get(vpid, 0.0) + rate
        loads = {name: sum(v.values()) for name, v in per.items()}
        limit = self.load_threshold * self.capacity_bps / 8  # bytes/s
        moves: list[tuple[int, str, str]] = []
        for src in sorted(order, key=lambda n: (-loads[n], order[n])):
            if loads[src] <= limit or not per[src]:
                continue
            # Busiest VPID; ties go to the lowest VPID so every NIC picks the same one.
            vpid, vbytes = max(per[src].items(), key=lambda kv: (kv[1], -kv[0]))
            others = [n for n in order if n != src]
            if not others:
                break
            dst = min(others, key=lambda n: (loads[n], order[n]))
            if loads[dst] + vbytes >= loads[src]:
                continue  # the move would only shift the peak, not lower it
            moves.append((vpid, src, dst))
            del per[src][vpid]
            per[dst][vpid] = per[dst].get(vpid, 0.0) + vbytes
            loads[src] -= vbytes
            loads[dst] += vbytes
        return moves

    def set_override(self, vpid: int, uplink_name: str) -> None:
        """Pin a VPID to a live uplink under load-based (a move decided here or by a peer)."""
        if uplink_name not in self._live:
            raise ValueError(f"uplink {uplink_name!r} is not live")
        if self._rendezvous(vpid, self._hrw_cache).name == uplink_name:
            self._overrides.pop(vpid, None)  # port-id already puts it there
        else:
            self._overrides[vpid] = uplink_name

    def overrides(self) -> dict[int, str]:
        """Current load-based pins, VPID -> uplink name (for replication and inspection)."""
        return dict(sorted(self._overrides.items()))

    def assignments(self, vpids: Iterable[int]) -> dict[int, str]:
        """The uplink each VPID uses now (under l4-hash: the one its port-id choice announces)."""
        if not self._live_list:
            return {}
        return {v: self._per_vpid(v).name for v in vpids}

    def _per_vpid(self, vpid: int) -> Uplink:
        if self.policy is TeamPolicy.ACTIVE_BACKUP:
            assert self._active is not None  # set whenever an uplink is live
            return self._by_name[self._active]
        if self.policy is TeamPolicy.LOAD_BASED:
            pinned = self._overrides.get(vpid)
            if pinned is not None:
                return self._by_name[pinned]
        return self._rendezvous(vpid, self._hrw_cache)

    def _rendezvous(self, key: int, cache: dict[int, Uplink] | None = None) -> Uplink:
        if cache is not None and (hit := cache.get(key)) is not None:
            return hit
        k = _mix64(key & _MASK64)
        # Highest random weight wins; the name breaks a (practically impossible) tie.
        best = max(self._live_list, key=lambda u: (_mix64(k ^ self._seeds[u.name]), u.name))
        if cache is not None:
            cache[key] = best
        return best

    def _designated(self) -> str | None:
        if self.policy is TeamPolicy.ACTIVE_BACKUP:
            return self._active
        return self._live_list[0].name if self._live_list else None

    def _refresh(self) -> bool:
        """Recompute the live set; True if it changed."""
        live = {
            u.name
            for u in self._uplinks
            if u.nic not in self._nic_down and u.name not in self._link_down
        }
        changed = live != self._live
        for vpid in [v for v, n in self._overrides.items() if n not in live]:
            del self._overrides[vpid]
        self._live = live
        self._live_list = [u for u in self._uplinks if u.name in live]
        self._hrw_cache.clear()
        if self.failback or self._active not in self._live:
            self._active = self._live_list[0].name if self._live_list else None
        return changed
