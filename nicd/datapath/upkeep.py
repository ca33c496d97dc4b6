"""A NIC datapath's upkeep, apart from deciding frames: configuration changes, tier
bookkeeping, the periodic tick, team changes and their announcements.

Theory of operation. The slow path's decision goes down to the fast tiers `offload` allows
(`_install`). A fast-tier entry depends on the conntrack records that allowed it
(`_keys_of` indexes the keys by record), so whatever ends or changes a record evicts its
entries first, their hits read back into it. On each `tick` the counters of every hit entry are
read back into conntrack (`last_seen`), MAC learning and load accounting; idle records expire;
offload-rebalance swaps idle eSwitch entries for busier waiting ones; load-based teaming may
move VPIDs. A team change evicts every path to the network and every path in from an uplink
that left the team, and announces (RARP) each local MAC whose uplink moved. A rule change
revalidates every connection, so no tier keeps forwarding a flow the new rules deny.
`Pipeline` inherits this; the frame decision lives in pipeline.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from nicd.datapath.classifier import Classifier
from nicd.datapath.conntrack import ConntrackTable, CtRecord, CtState
from nicd.datapath.decision import Decision, Emit, PortKind, path_actions
from nicd.datapath.eswitch import ESwitch
from nicd.datapath.flowcache import FlowCache
from nicd.datapath.offload import offload, offload_flags, room
from nicd.datapath.rules import Direction, Rule, RuleAction, RuleSet
from nicd.datapath.teaming import Team, TeamPolicy, Uplink
from nicd.datapath.tiers import FastKey, PathEntry, Tier, TierStats
from nicd.datapath.vpidmap import MapChange, VpidMap
from nicd.datapath.vswitch import Interface, Segment, VSwitch
from wire import build

if TYPE_CHECKING:
    from nicd.datapath.config import DatapathConfig, PipelineStats
    from nicd.datapath.trace import TraceLog


class Upkeep:
    """Bookkeeping of the fast tiers and the periodic work of a `Pipeline` (its base class)."""

    # Set by Pipeline.__init__.
    nic: str
    config: DatapathConfig
    classifier: Classifier
    ct: ConntrackTable
    cache: FlowCache
    eswitch: ESwitch
    map: VpidMap
    vswitch: VSwitch
    team: Team
    stats: PipelineStats
    _gen: int
    _vf_vpid: dict[int, int]
    _keys_of: dict[int, set[FastKey]]
    _recs: list[CtRecord]
    _learn: tuple[str, bytes] | None
    _account: tuple[str, int] | None
    _ingress_uplink: str | None
    _trace: TraceLog | None
    _last_tick: float | None
    _team_moves: list[tuple[int, str, str]]

    def _uplink_emit(self, uplink: Uplink, vpid: int, wire: bytes) -> Emit:
        raise NotImplementedError  # the pipeline's

    # ----------------------------------------------------------------- configuration

    def set_rules(self, ruleset: RuleSet, now: float) -> None:
        """Swap the rule set, then revalidate every connection so no tier keeps a denied flow."""
        self.classifier = Classifier(ruleset)
        for rec in list(self.ct):
            self.stats.revalidated += 1
            rule, action = self._classify_record(rec)
            if action is not RuleAction.ALLOW:
                self._forget(rec)
                self.stats.revalidate_removed += 1
                continue
            name = rule.name if rule is not None else "default"
            sw_ok, hw_capable = offload_flags(rule, rec.proto)
            if (rec.rule, rec.sw_ok, rec.hw_capable) != (name, sw_ok, hw_capable):
                rec.rule, rec.sw_ok, rec.hw_capable = name, sw_ok, hw_capable
                self._evict(rec)

    def set_topology(self, segments: Iterable[Segment], interfaces: Iterable[Interface]) -> None:
        """Replace the host's segments and VM interfaces."""
        self.vswitch.set_topology(segments, interfaces)
        self._gen += 1

    def apply_map(self, epoch: int, entries: Iterable[tuple[int, str, int]]) -> MapChange | None:
        """Apply the host's VPID map; flows keep referring to VPIDs, none is rewritten."""
        change = self.map.apply(epoch, entries)
        if change is None:
            return None
        self._evict_where(lambda e: not e.vpids.isdisjoint(change.moved))
        self._vf_vpid = {ppid: vpid for vpid, nic, ppid in self.map.entries() if nic == self.nic}
        moved = set(change.moved)
        kept = sum(1 for rec in self.ct if rec.zone in moved)
        self.stats.remap_flows_kept += kept
        return change

    def _classify_record(self, rec: CtRecord) -> tuple[Rule | None, RuleAction]:
        seg = self.vswitch.segment_of_vpid(rec.zone)
        rule = self.classifier.lookup(
            seg.name if seg else "",
            Direction(rec.origin),
            rec.family,
            rec.proto,
            rec.src,
            rec.dst,
            rec.sport,
            rec.dport,
        )
        return rule, rule.action if rule is not None else self.classifier.ruleset.default

    # ----------------------------------------------------------------- team changes

    def announce(self, vpids: Iterable[int]) -> list[Emit]:
        """RARP for each VPID's MAC on the uplink it leaves by (after a takeover)."""
        emits = []
        for vpid in vpids:
            iface = self.vswitch.interface(vpid)
            seg = self.vswitch.segment_of_vpid(vpid)
            uplink = self.team.select(vpid, 0)
            if iface is None or seg is None or uplink is None:
                continue
            emits.append(self._uplink_emit(uplink, vpid, build.rarp_frame(iface.mac, seg.vlan)))
        self.stats.announcements += len(emits)
        return emits

    def set_uplink_live(self, name: str, up: bool) -> list[Emit]:
        """Take an uplink out of or back into the team; returns the moved MACs' announcements."""
        before = self.team.assignments(self.map.local_vpids())
        if not self.team.set_live(name, up):
            return []
        return self._announce_moves(before)

    def set_nic_live(self, nic: str, up: bool) -> list[Emit]:
        """A whole NIC leaves or rejoins the team."""
        before = self.team.assignments(self.map.local_vpids())
        if not self.team.set_nic_live(nic, up):
            return []
        return self._announce_moves(before)

    def set_policy(self, policy: TeamPolicy) -> list[Emit]:
        """Change the team policy at run time."""
        before = self.team.assignments(self.map.local_vpids())
        self.team.set_policy(policy)
        return self._announce_moves(before)

    def _announce_moves(self, before: dict[int, str]) -> list[Emit]:
        """RARP for every local MAC whose uplink changed, sent on its new uplink.

        Paths out through the team are evicted (the team may pick another uplink now), and so
        are paths in from an uplink that left it (the team no longer accepts its frames)."""
        live = self.team.is_live
        self._evict_where(
            lambda e: e.to_network or (e.from_uplink is not None and not live(e.from_uplink))
        )
        after = self.team.assignments(self.map.local_vpids())
        return self.announce(v for v, name in after.items() if before.get(v) != name)

    # ----------------------------------------------------------------- the tick

    def tick(self, now: float) -> list[Emit]:
        """Periodic work: read tier counters back, expire, age MACs, rebalance eSwitch and team."""
        interval = now - self._last_tick if self._last_tick is not None else 0.0
        self._last_tick = now
        rates, waiting = self._readback(interval)
        for rec in self.ct.expire(now):
            self._evict(rec)
        self.vswitch.age(now)
        if self.eswitch.capacity and waiting:
            self._rebalance_eswitch(rates, waiting)
        if self.team.policy is TeamPolicy.LOAD_BASED:
            before = self.team.assignments(self.map.local_vpids())
            moves = self.team.rebalance(now)
            if moves:
                # Every NIC plans from the same loads; each acts for its own VPIDs only.
                local = set(self.map.local_vpids())
                moves = [m for m in moves if m[0] in local]
            if moves:
                self._team_moves.extend(moves)
                self.stats.team_moves += len(moves)
                return self._announce_moves(before)
        return []

    def take_team_moves(self) -> list[tuple[int, str, str]]:
        """Load-based moves of local VPIDs since the last call: (VPID, from, to) uplink names."""
        moves, self._team_moves = self._team_moves, []
        return moves

    def _readback(
        self, interval: float
    ) -> tuple[dict[FastKey, float], list[tuple[float, FastKey, PathEntry]]]:
        """Hand hit counts to conntrack, refresh learned MACs; rates for offload-rebalance."""
        rates: dict[FastKey, float] = {}
        waiting: list[tuple[float, FastKey, PathEntry]] = []
        scale = 1.0 / interval if interval > 0 else 0.0
        hw = self.eswitch.entries
        for table in (self.eswitch, self.cache):
            for key, entry in table.entries.items():
                if table is self.cache and hw.get(key) is entry:
                    continue  # the same entry, already read back through the eSwitch
                rate = entry.packets * scale
                if table is self.eswitch:
                    rates[key] = rate
                elif entry.gen == self._gen and all(r.hw_ok for r in entry.records):
                    waiting.append((rate, key, entry))
                if not entry.packets:
                    continue
                for rec in entry.records:
                    self.ct.touch(rec, entry.last_hit, entry.packets, entry.bytes)
                if entry.learn is not None:
                    seg, mac = entry.learn
                    self.vswitch.learn_remote(seg, mac, None, entry.last_hit)
                if entry.account is not None:
                    name, vpid = entry.account
                    self.team.account(name, vpid, entry.bytes, entry.last_hit)
                entry.packets = entry.bytes = 0
        return rates, waiting

    def _rebalance_eswitch(
        self, rates: dict[FastKey, float], waiting: list[tuple[float, FastKey, PathEntry]]
    ) -> None:
        """Swap idle eSwitch entries for busier ones waiting in the cache (read back before
        expiry: only those the cache still holds, or the eSwitch would take an entry whose
        connection has ended, which no eviction would ever find again)."""
        cached = self.cache.entries
        waiting = [w for w in waiting if cached.get(w[1]) is w[2]]
        for old, new in self.eswitch.rebalance(rates, waiting, self.config.rebalance_swaps):
            for r in old.records:
                r.tier = Tier.CACHE
            for r in new.records:
                r.tier = Tier.ESWITCH

    # ----------------------------------------------------------------- tier bookkeeping

    def _install(self, key: FastKey | None, frame: bytes, d: Decision) -> None:
        """Push the path the slow path just decided down to the tiers `offload` allows."""
        recs = tuple(self._recs)
        actions = path_actions(frame, d.emits)
        plan = offload(
            recs, key is not None, bool(actions), room(self.cache, key), room(self.eswitch, key)
        )
        if self._trace is not None:
            self._trace.install(plan)
        for full in plan.full:
            (self.cache if full is Tier.CACHE else self.eswitch).stats.full += 1
        if key is None or not actions or not (plan.cache or plan.eswitch):
            return
        vpids = {r.zone for r in recs}
        vpids.update(e.target for e in d.emits if e.out is PortKind.PEER_DELIVER)
        to_network = any(e.out in (PortKind.UPLINK, PortKind.PEER_TRANSMIT) for e in d.emits)
        entry = PathEntry(
            actions, recs, d.rule, self._gen, frozenset(vpids), to_network,
            self._learn, self._account, self._ingress_uplink,
        )  # fmt: skip
        tier = Tier.SLOW
        if plan.cache:
            self.cache.install(key, entry)
            tier = Tier.CACHE
        if plan.eswitch:
            self.eswitch.install(key, entry)
            tier = Tier.ESWITCH
        for r in recs:
            self._keys_of.setdefault(id(r), set()).add(key)
            r.tier = max(r.tier, tier)

    def _evict_where(self, doomed: Callable[[PathEntry], bool]) -> int:
        """Evict every fast-tier entry for which `doomed` holds (a map or team change), its
        hits read back first."""
        gone = 0
        for table in (self.eswitch, self.cache):
            for key in [k for k, e in table.entries.items() if doomed(e)]:
                self._touch_records(table.entries[key])
                table.evict(key)
                gone += 1
        return gone

    def _evict(self, rec: CtRecord) -> None:
        """Remove every fast-tier entry that depends on this record, its hits read back first."""
        for key in self._keys_of.pop(id(rec), ()):
            for table in (self.eswitch, self.cache):
                entry = table.entries.get(key)
                if entry is not None:
                    self._touch_records(entry)
            self.eswitch.evict(key, rec)
            self.cache.evict(key, rec)
        rec.tier = Tier.SLOW

    def _touch_records(self, entry: PathEntry) -> None:
        """Hand an entry's pending hits to its records before it goes (or they would age as if
        those packets never came, and expire while in use)."""
        if entry.packets:
            for r in entry.records:
                self.ct.touch(r, entry.last_hit, entry.packets, entry.bytes)
            entry.packets = entry.bytes = 0

    def _forget(self, rec: CtRecord) -> None:
        self._evict(rec)
        self.ct.remove(rec)

    def drop_zones(self, vpids: set[int]) -> int:
        """Forget the connections of VPIDs that moved away (their new home holds them now).

        A handover, not an end: no deletes are journaled, or siblings would drop the copies the
        new home is about to commit (it may apply the map after our deletes reach it).
        """
        doomed = [rec for rec in self.ct if rec.zone in vpids]
        journal, self.ct.journal = self.ct.journal, None
        try:
            for rec in doomed:
                self._forget(rec)
        finally:
            self.ct.journal = journal
        return len(doomed)

    def catch_up(self, rec: CtRecord, state: CtState, last_seen: float) -> bool:
        """Move a tracked record to a later state its copy's origin reported (`ConntrackTable.
        catch_up`); a record no longer established leaves the fast tiers. True if it moved."""
        was_established = rec.established
        if not self.ct.catch_up(rec, state, last_seen):
            return False
        if was_established and not rec.established:
            self._evict(rec)
        return True

    def tier_stats(self) -> dict[str, TierStats]:
        """Counters of each fast tier."""
        return {"eswitch": self.eswitch.stats, "cache": self.cache.stats}
