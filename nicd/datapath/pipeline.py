"""One NIC's datapath: frames in, decisions and frames to emit out. Sans-I/O.

Theory of operation. A frame enters on one of four kinds of port (`Ingress`): a VF (from a VM
homed here), an uplink (from the fabric), or the private channel (a sibling hands over a frame
to deliver to a VPID homed here, or to transmit on one of our uplinks). Every stateful step for
a VPID happens on its home NIC, in a *stage*: the firewall of one VPID in one direction
(from-VM or to-VM), looked up tier by tier: eSwitch, flow cache, slow path (conntrack, then the
rule classifier). Between stages the virtual switch picks the destination by MAC: a VPID here
(its to-VM stage runs here), a VPID on a sibling (handed over; the sibling runs the to-VM
stage), or the network (the team picks an uplink, maybe a sibling's: a transmit-only handover).

The slow path alone decides; the fast tiers only replay its decisions for connections it has
marked `sw_ok` / `hw_ok`, and only for segments that cannot change conntrack state. With the
tiers switched off (`cache_enabled=False`, `eswitch_capacity=0`) the same class is the
reference the property tests compare against.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from operator import itemgetter

from nicd.datapath.classifier import Classifier
from nicd.datapath.conntrack import ConntrackTable, CtRecord, Timeouts
from nicd.datapath.eswitch import DEFAULT_ESWITCH_CAPACITY, ESwitch
from nicd.datapath.flowcache import DEFAULT_CACHE_CAPACITY, FlowCache
from nicd.datapath.rules import Direction, Rule, RuleSet
from nicd.datapath.rules import RuleAction as Action
from nicd.datapath.teaming import Team, TeamPolicy, Uplink, flow_hash
from nicd.datapath.tiers import Action as PathAction
from nicd.datapath.tiers import FastKey, PathEntry, Tier, TierStats, fast_key
from nicd.datapath.vpidmap import MapChange, VpidMap
from nicd.datapath.vswitch import Interface, Segment, VSwitch
from wire import build
from wire.frames import MalformedFrame, Packet, parse_frame_untrusted
from wire.protocols import ETH_ARP, ETH_VLAN, PROTO_TCP, PROTO_UDP


class Ingress(enum.IntEnum):
    """Where a frame entered this NIC; `port` means PPID, PPID, VPID, PPID respectively."""

    VF = 0
    UPLINK = 1
    PEER_DELIVER = 2
    PEER_TRANSMIT = 3


class Out(enum.IntEnum):
    """Where a frame leaves: a VF here, an uplink here, or a sibling over the private channel."""

    VF = 0
    UPLINK = 1
    PEER_DELIVER = 2
    PEER_TRANSMIT = 3


class Verdict(enum.IntEnum):
    """What became of the frame that entered."""

    FORWARD = 0
    DROP = 1


@dataclass(slots=True)
class Emit:
    """A frame to send: `target` is a PPID here (VF, UPLINK), a VPID or PPID on `nic`."""

    out: Out
    target: int
    frame: bytes
    nic: str = ""


@dataclass(slots=True)
class Decision:
    """The fate of one input frame: verdict, the tier and rule that decided, frames to emit."""

    verdict: Verdict
    tier: Tier | None = None  # the slowest tier of the stages that ran; None if none ran
    reason: str = ""
    rule: str = ""
    emits: list[Emit] = field(default_factory=list)
    records: tuple[CtRecord, ...] = ()


@dataclass(slots=True)
class DatapathConfig:
    """Sizes and switches of one NIC's datapath."""

    eswitch_capacity: int = DEFAULT_ESWITCH_CAPACITY
    cache_capacity: int = DEFAULT_CACHE_CAPACITY
    cache_enabled: bool = True
    ct_limit: int = 262_144
    timeouts: Timeouts = field(default_factory=Timeouts)
    rebalance_swaps: int = 64
    failback: bool = True  # active-backup: the first uplink takes back over when it returns
    uplink_bps: float = 1e10  # load-based: each uplink's capacity ...
    load_threshold: float = 0.75  # ... and the share of it that counts as overloaded


@dataclass(slots=True)
class PipelineStats:
    """Datapath-wide counters; drops by reason (dotted codes)."""

    frames_in: int = 0
    slow_path: int = 0  # frames no fast tier decided
    forwarded: int = 0
    drops: Counter[str] = field(default_factory=Counter)
    handover_sent: Counter[str] = field(default_factory=Counter)
    handover_received: Counter[str] = field(default_factory=Counter)
    remap_flows_kept: int = 0
    revalidated: int = 0
    revalidate_removed: int = 0
    announcements: int = 0
    team_moves: int = 0  # VPIDs load-based teaming moved to another uplink


@dataclass(slots=True)
class _Stage:
    allowed: bool
    tier: Tier
    reason: str = ""
    rule: str = ""
    record: CtRecord | None = None
    reject: bool = False


class Pipeline:
    """The datapath of NIC `nic`: feed it frames and `now`, get `Decision`s back."""

    def __init__(
        self,
        nic: str,
        config: DatapathConfig,
        ruleset: RuleSet,
        segments: Iterable[Segment],
        interfaces: Iterable[Interface],
        uplinks: Iterable[Uplink],
        policy: TeamPolicy = TeamPolicy.PORT_ID,
    ) -> None:
        self.nic = nic
        self.config = config
        self.classifier = Classifier(ruleset)
        self.ct = ConntrackTable(config.timeouts, config.ct_limit)
        self.cache = FlowCache(capacity=config.cache_capacity if config.cache_enabled else 0)
        self.eswitch = ESwitch(capacity=config.eswitch_capacity)
        self.map = VpidMap(nic)
        self.vswitch = VSwitch(segments, interfaces)
        self.team = Team(
            list(uplinks),
            policy,
            failback=config.failback,
            capacity_bps=config.uplink_bps,
            load_threshold=config.load_threshold,
        )
        self.stats = PipelineStats()
        self._vf_vpid: dict[int, int] = {}
        self._uplinks: dict[int, Uplink] = {u.ppid: u for u in self.team.uplinks if u.nic == nic}
        self._last_tick: float | None = None
        # Bumped whenever the map, the team or the topology changes: older entries are misses.
        self._gen = 0
        self._keys_of: dict[int, set[FastKey]] = {}
        # Scratch of the frame being decided by the slow path, for installing its fast entry.
        self._recs: list[CtRecord] = []
        self._learn: tuple[str, bytes] | None = None
        self._account: tuple[str, int] | None = None
        self._team_moves: list[tuple[int, str, str]] = []

    @property
    def generation(self) -> int:
        """Fast entries stamped with an older generation are misses (map/team/topology moved)."""
        return self._gen

    # ----------------------------------------------------------------- configuration

    def set_rules(self, ruleset: RuleSet, now: float) -> None:
        """Swap the rule set, then revalidate every connection so no tier keeps a denied flow."""
        self.classifier = Classifier(ruleset)
        for rec in list(self.ct):
            self.stats.revalidated += 1
            rule, action = self._classify_record(rec)
            if action is not Action.ALLOW:
                self._forget(rec)
                self.stats.revalidate_removed += 1
                continue
            name = rule.name if rule is not None else "default"
            sw_ok, hw_capable = _offload_flags(rule, rec.proto)
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

    # ----------------------------------------------------------------- frames

    def process(self, ingress: Ingress, port: int, frame: bytes, now: float) -> Decision:
        """Decide one frame; never raises on bad input (drops are counted by reason)."""
        if ingress >= Ingress.PEER_DELIVER:
            self.stats.handover_received[_HANDOVER_NAMES[ingress]] += 1
        # A transmit handover never has a fast entry: looking would only count false misses.
        key = fast_key(ingress, port, frame) if ingress != Ingress.PEER_TRANSMIT else None
        if key is not None:
            found = self._fast_lookup(key, len(frame), now)
            if found is not None:
                entry, tier = found
                self.stats.frames_in += 1
                self.stats.forwarded += 1
                emits = self._apply(entry, frame)
                return Decision(Verdict.FORWARD, tier, "", entry.rule, emits, entry.records)
        return self._slow(ingress, port, frame, now, key)

    def process_batch(self, batch: Iterable[tuple[Ingress, int, bytes]], now: float) -> list[Emit]:
        """Decide a batch of frames in order; returns every frame to emit.

        The worker's hot path: fast-tier hits are handled without `Decision` objects.
        """
        emits: list[Emit] = []
        fast = self._fast_lookup
        apply = self._apply
        hits = 0
        received = self.stats.handover_received
        for ingress, port, frame in batch:
            if ingress >= Ingress.PEER_DELIVER:
                received[_HANDOVER_NAMES[ingress]] += 1
            key = fast_key(ingress, port, frame) if ingress != Ingress.PEER_TRANSMIT else None
            found = fast(key, len(frame), now) if key is not None else None
            if found is not None:
                hits += 1
                emits += apply(found[0], frame)
            else:
                emits += self._slow(ingress, port, frame, now, key).emits
        self.stats.frames_in += hits
        self.stats.forwarded += hits
        return emits

    def _slow(
        self, ingress: Ingress, port: int, frame: bytes, now: float, key: FastKey | None
    ) -> Decision:
        """The slow path for a frame no fast tier decided; installs its path when it may."""
        self.stats.frames_in += 1
        self.stats.slow_path += 1
        self._recs = []
        self._learn = self._account = None
        d = self._decide(ingress, port, frame, now)
        if d.verdict is Verdict.DROP:
            self.stats.drops[d.reason] += 1
        else:
            self.stats.forwarded += 1
            if key is not None and self._recs:
                self._install(key, frame, d)
        for e in d.emits:
            if e.out >= Out.PEER_DELIVER:
                self.stats.handover_sent[_HANDOVER_NAMES[e.out]] += 1
        return d

    def _decide(self, ingress: Ingress, port: int, frame: bytes, now: float) -> Decision:
        if ingress is Ingress.PEER_TRANSMIT:
            return self._from_peer_transmit(port, frame)
        try:
            pkt = parse_frame_untrusted(frame)
        except MalformedFrame as e:
            return Decision(Verdict.DROP, reason="malformed." + e.reason)
        if ingress is Ingress.VF:
            return self._from_vf(port, pkt, frame, now)
        if ingress is Ingress.UPLINK:
            return self._from_uplink(port, pkt, frame, now)
        return self._from_peer_deliver(port, pkt, frame, now)

    def _from_vf(self, ppid: int, pkt: Packet, frame: bytes, now: float) -> Decision:
        vpid = self._vf_vpid.get(ppid)
        if vpid is None:
            return Decision(Verdict.DROP, reason="port.unknown_vf")
        if not self.map.owns(vpid):
            return Decision(Verdict.DROP, reason="fence.not_owner")
        seg = self.vswitch.segment_of_vpid(vpid)
        if seg is None:
            return Decision(Verdict.DROP, reason="l2.no_segment")
        if pkt.vlan is not None:
            return Decision(Verdict.DROP, reason="l2.tagged_from_vm")
        if pkt.ethertype == ETH_ARP:
            reply = self.vswitch.answer_arp(seg.name, pkt) if pkt.arp_op == 1 else None
            if reply is not None:
                return Decision(Verdict.FORWARD, emits=[Emit(Out.VF, ppid, reply)])
        if pkt.is_broadcast or not pkt.family:
            return self._flood_or_l2(vpid, seg, pkt, frame, now)
        stage = self._stage(vpid, Direction.FROM_VM, pkt, len(frame), now)
        if not stage.allowed:
            return self._denied(stage, vpid, seg, pkt, frame, Direction.FROM_VM, now)
        d = self._switch(vpid, seg, pkt, frame, now)
        if d.tier is None or stage.tier < d.tier:
            d.tier = stage.tier
        if d.verdict is Verdict.FORWARD:
            d.rule = stage.rule
        d.records = tuple(self._recs)
        return d

    def _from_uplink(self, ppid: int, pkt: Packet, frame: bytes, now: float) -> Decision:
        uplink = self._uplinks.get(ppid)
        if uplink is None:
            return Decision(Verdict.DROP, reason="port.unknown_uplink")
        seg = self.vswitch.segment_of_vlan(pkt.vlan)
        if seg is None:
            return Decision(Verdict.DROP, reason="l2.unknown_vlan")
        if not pkt.src_mac[0] & 1:
            arp_ip = pkt.arp_spa if pkt.ethertype == ETH_ARP else None
            self.vswitch.learn_remote(seg.name, pkt.src_mac, arp_ip, now)
            self._learn = (seg.name, pkt.src_mac)
        untagged = frame
        if pkt.vlan is not None:
            # The VM side is untagged: parse what it will see, so a reject answers that frame.
            untagged = _untag(frame)
            pkt = parse_frame_untrusted(untagged)
        if pkt.is_broadcast:
            if not self.team.accepts(uplink.name, None, True):
                return Decision(Verdict.DROP, reason="team.not_designated")
            return Decision(Verdict.FORWARD, emits=self._flood_emits(seg.name, None, untagged))
        vpid = self.vswitch.lookup(seg.name, pkt.dst_mac)
        if vpid is None:
            return Decision(Verdict.DROP, reason="l2.unknown_dst")
        if not self.team.accepts(uplink.name, vpid, False):
            return Decision(Verdict.DROP, reason="team.not_accepted")
        return self._to_vpid(vpid, pkt, untagged, now)

    def _from_peer_deliver(self, vpid: int, pkt: Packet, frame: bytes, now: float) -> Decision:
        if not self.map.owns(vpid):
            return Decision(Verdict.DROP, reason="fence.not_owner")
        home = self.map.home(vpid)
        assert home is not None
        if pkt.is_broadcast or not pkt.family:
            return Decision(Verdict.FORWARD, emits=[Emit(Out.VF, home.ppid, frame)])
        return self._to_vpid(vpid, pkt, frame, now)

    def _from_peer_transmit(self, ppid: int, frame: bytes) -> Decision:
        problem = self._transmit_problem(ppid, frame)
        if problem:
            return Decision(Verdict.DROP, reason=problem)
        return Decision(Verdict.FORWARD, emits=[Emit(Out.UPLINK, ppid, frame)])

    def _transmit_problem(self, ppid: int, frame: bytes) -> str:
        """Why a transmit handover cannot go on uplink `ppid` ("" if it can).

        The sibling already ran the firewall (DESIGN: transmit-only), so only the wire matters:
        a whole Ethernet header and a live uplink of ours.
        """
        n = len(frame)
        if n < 14:
            return "malformed.eth.short"
        if n < 18 and frame[12:14] == b"\x81\x00":
            return "malformed.vlan.short"
        uplink = self._uplinks.get(ppid)
        if uplink is None:
            return "port.unknown_uplink"
        if not self.team.is_live(uplink.name):
            return "uplink.down"
        return ""

    def transmit_batch(self, frames: list[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
        """A sibling's transmit-only handovers: the (uplink PPID, frame) pairs to put on the wire.

        The worker's path for a whole `Handover(TRANSMIT)` batch: no parse, no firewall, no
        `Decision` per frame; drops are counted by reason like every other drop.
        """
        live = {ppid for ppid, u in self._uplinks.items() if self.team.is_live(u.name)}
        if not frames:
            return []
        # The usual batch: every port live, every frame longer than a tagged header. C-level.
        if min(map(len, map(_second, frames))) >= 18 and live.issuperset(map(_first, frames)):
            out = frames
        else:
            out = [
                (ppid, f)
                for ppid, f in frames
                if ppid in live and (len(f) >= 18 or (len(f) >= 14 and f[12:14] != b"\x81\x00"))
            ]
            for ppid, frame in frames:  # name each drop's reason
                if problem := self._transmit_problem(ppid, frame):
                    self.stats.drops[problem] += 1
        self.stats.frames_in += len(frames)
        self.stats.forwarded += len(out)
        self.stats.handover_received["peer_transmit"] += len(frames)
        return out

    # ----------------------------------------------------------------- switching

    def _switch(self, vpid: int, seg: Segment, pkt: Packet, frame: bytes, now: float) -> Decision:
        """After the from-VM stage: to a VPID (here or on a sibling) or to the network."""
        dst = self.vswitch.lookup(seg.name, pkt.dst_mac)
        if dst is None:
            return self._to_network(vpid, seg, pkt, frame)
        return self._to_vpid(dst, pkt, frame, now)

    def _to_vpid(self, vpid: int, pkt: Packet, frame: bytes, now: float) -> Decision:
        home = self.map.home(vpid)
        if home is None:
            return Decision(Verdict.DROP, reason="map.unknown_vpid")
        if home.nic != self.nic:
            return Decision(Verdict.FORWARD, emits=[Emit(Out.PEER_DELIVER, vpid, frame, home.nic)])
        if not pkt.family:  # ARP replies and other non-IP unicast: L2 only, no firewall
            return Decision(Verdict.FORWARD, emits=[Emit(Out.VF, home.ppid, frame)])
        stage = self._stage(vpid, Direction.TO_VM, pkt, len(frame), now)
        if not stage.allowed:
            seg = self.vswitch.segment_of_vpid(vpid)
            assert seg is not None
            return self._denied(stage, vpid, seg, pkt, frame, Direction.TO_VM, now)
        return Decision(
            Verdict.FORWARD,
            stage.tier,
            rule=stage.rule,
            emits=[Emit(Out.VF, home.ppid, frame)],
            records=tuple(self._recs),
        )

    def _to_network(self, vpid: int, seg: Segment, pkt: Packet, frame: bytes) -> Decision:
        h = flow_hash(pkt.proto, pkt.src_ip, pkt.dst_ip, pkt.sport, pkt.dport) if pkt.family else 0
        uplink = self.team.select(vpid, h)
        if uplink is None:
            return Decision(Verdict.DROP, reason="team.no_uplink")
        wire = _tag(frame, seg.vlan)
        return Decision(Verdict.FORWARD, emits=[self._uplink_emit(uplink, vpid, wire)])

    def _uplink_emit(self, uplink: Uplink, vpid: int, wire: bytes) -> Emit:
        if self.team.policy is TeamPolicy.LOAD_BASED:
            self.team.account(uplink.name, vpid, len(wire), self._last_tick or 0.0)
            self._account = (uplink.name, vpid)
        if uplink.nic == self.nic:
            return Emit(Out.UPLINK, uplink.ppid, wire)
        return Emit(Out.PEER_TRANSMIT, uplink.ppid, wire, uplink.nic)

    def _flood_or_l2(
        self, vpid: int, seg: Segment, pkt: Packet, frame: bytes, now: float
    ) -> Decision:
        """Broadcast, multicast and non-IP frames: the firewall sees only IP ones (from-VM)."""
        if pkt.family:
            stage = self._stage(vpid, Direction.FROM_VM, pkt, len(frame), now)
            if not stage.allowed:
                return self._denied(stage, vpid, seg, pkt, frame, Direction.FROM_VM, now)
        if not pkt.is_broadcast:
            dst = self.vswitch.lookup(seg.name, pkt.dst_mac)
            if dst is None:
                return self._to_network(vpid, seg, pkt, frame)
            home = self.map.home(dst)
            if home is None:
                return Decision(Verdict.DROP, reason="map.unknown_vpid")
            out = Emit(Out.VF, home.ppid, frame)
            if home.nic != self.nic:
                out = Emit(Out.PEER_DELIVER, dst, frame, home.nic)
            return Decision(Verdict.FORWARD, emits=[out])
        emits = self._flood_emits(seg.name, vpid, frame)
        net = self._to_network(vpid, seg, pkt, frame)
        emits.extend(net.emits)
        return Decision(Verdict.FORWARD, emits=emits)

    def _flood_emits(self, segment: str, exclude: int | None, frame: bytes) -> list[Emit]:
        """One copy for every other VM of the segment, here or handed to its home sibling."""
        emits: list[Emit] = []
        for vpid in self.vswitch.flood_vpids(segment, exclude):
            home = self.map.home(vpid)
            if home is None:
                continue
            if home.nic == self.nic:
                emits.append(Emit(Out.VF, home.ppid, frame))
            else:
                emits.append(Emit(Out.PEER_DELIVER, vpid, frame, home.nic))
        return emits

    def _denied(
        self,
        stage: _Stage,
        vpid: int,
        seg: Segment,
        pkt: Packet,
        frame: bytes,
        direction: Direction,
        now: float,
    ) -> Decision:
        d = Decision(Verdict.DROP, stage.tier, stage.reason, stage.rule)
        if stage.reject:
            d.emits = self._reject_emits(vpid, seg, pkt, frame, direction)
        return d

    def _reject_emits(
        self, vpid: int, seg: Segment, pkt: Packet, frame: bytes, direction: Direction
    ) -> list[Emit]:
        """The RST or ICMP unreachable goes back to whoever sent the rejected packet."""
        if pkt.proto == PROTO_TCP:
            answer = build.tcp_reset_for(pkt)
        else:
            answer = build.icmp_unreachable_for(pkt, frame)
        if direction is Direction.FROM_VM:
            home = self.map.home(vpid)
            return [Emit(Out.VF, home.ppid, answer)] if home else []
        src = self.vswitch.lookup(seg.name, pkt.src_mac)
        if src is None:
            uplink = self.team.select(vpid, 0)
            return [self._uplink_emit(uplink, vpid, _tag(answer, seg.vlan))] if uplink else []
        home = self.map.home(src)
        if home is None:
            return []
        if home.nic == self.nic:
            return [Emit(Out.VF, home.ppid, answer)]
        return [Emit(Out.PEER_DELIVER, src, answer, home.nic)]

    # ----------------------------------------------------------------- the firewall stage

    def _stage(
        self, vpid: int, direction: Direction, pkt: Packet, nbytes: int, now: float
    ) -> _Stage:
        """One VPID's firewall in one direction, in the slow path (fast tiers matched earlier)."""
        if pkt.fragment:
            return _Stage(False, Tier.SLOW, "ip.fragment")
        stage = self._slow_path(vpid, direction, pkt, now)
        if stage.record is not None and stage.allowed:
            self._recs.append(stage.record)
        return stage

    def _slow_path(self, vpid: int, direction: Direction, pkt: Packet, now: float) -> _Stage:
        rec, is_reply = self.ct.lookup(vpid, pkt)
        if rec is not None:
            if rec.tier != Tier.SLOW:
                self.cache.stats.punts += 1
            was_established = rec.established
            if not self.ct.update(rec, is_reply, pkt, now):
                return _Stage(False, Tier.SLOW, "ct.invalid", rec.rule, rec)
            if was_established and not rec.established:
                self._evict(rec)
            return _Stage(True, Tier.SLOW, rule=rec.rule, record=rec)
        seg = self.vswitch.segment_of_vpid(vpid)
        segment = seg.name if seg else ""
        rule = self.classifier.lookup(
            segment, direction, pkt.family, pkt.proto, pkt.src_ip, pkt.dst_ip, pkt.sport, pkt.dport
        )
        action = rule.action if rule is not None else self.classifier.ruleset.default
        name = rule.name if rule is not None else "default"
        if action is Action.DROP:
            return _Stage(False, Tier.SLOW, "fw.drop", name)
        if action is Action.REJECT:
            return _Stage(False, Tier.SLOW, "fw.reject", name, reject=True)
        problem = self.ct.new_flow_check(pkt)
        if problem is not None:
            return _Stage(False, Tier.SLOW, problem, name)
        sw_ok, hw_capable = _offload_flags(rule, pkt.proto)
        rec = self.ct.create(vpid, direction, pkt, now, name, sw_ok, hw_capable)
        if rec is None:
            return _Stage(False, Tier.SLOW, "ct.full", name)
        return _Stage(True, Tier.SLOW, rule=name, record=rec)

    def _classify_record(self, rec: CtRecord) -> tuple[Rule | None, Action]:
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

    # ----------------------------------------------------------------- tiers

    def _fast_lookup(self, key: FastKey, nbytes: int, now: float) -> tuple[PathEntry, Tier] | None:
        """eSwitch, then flow cache: a current-generation entry counts the hit and decides."""
        es = self.eswitch
        entry = es.entries.get(key)
        if entry is None or entry.gen != self._gen:
            es.stats.misses += 1
            cache = self.cache
            entry = cache.entries.get(key)
            if entry is None or entry.gen != self._gen:
                cache.stats.misses += 1
                return None
            cache.stats.hits += 1
            tier = Tier.CACHE
        else:
            es.stats.hits += 1
            tier = Tier.ESWITCH
        entry.packets += 1
        entry.bytes += nbytes
        entry.last_hit = now
        return entry, tier

    def _apply(self, entry: PathEntry, frame: bytes) -> list[Emit]:
        if entry.handovers:
            for a in entry.actions:
                if a.out >= Out.PEER_DELIVER:
                    self.stats.handover_sent[_HANDOVER_NAMES[a.out]] += 1
        return path_emits(entry, frame)

    def _install(self, key: FastKey, frame: bytes, d: Decision) -> None:
        """Push the path the slow path just decided down to the flow cache and the eSwitch.

        Only when every stage's record is established and `sw_ok` (cache) or also `hw_ok`
        (eSwitch), and the action is a plain forward (the frame kept, or a tag pushed/popped).
        """
        recs = tuple(self._recs)
        if not all(r.sw_ok and r.established for r in recs) or not d.emits:
            return
        actions = []
        for e in d.emits:
            vlan = _vlan_op(frame, e.frame)
            if vlan == -1:
                return
            actions.append(PathAction(e.out, e.target, e.nic, vlan))
        vpids = {r.zone for r in recs} | {e.target for e in d.emits if e.out is Out.PEER_DELIVER}
        to_network = any(e.out in (Out.UPLINK, Out.PEER_TRANSMIT) for e in d.emits)
        entry = PathEntry(
            tuple(actions), recs, d.rule, self._gen, frozenset(vpids), to_network,
            self._learn, self._account,
        )  # fmt: skip
        tier = Tier.SLOW
        if self.cache.capacity and self.cache.install(key, entry):
            tier = Tier.CACHE
        if (
            self.eswitch.capacity
            and all(r.hw_ok for r in recs)
            and self.eswitch.install(key, entry)
        ):
            tier = Tier.ESWITCH
        if tier is Tier.SLOW:
            return
        for r in recs:
            self._keys_of.setdefault(id(r), set()).add(key)
            r.tier = max(r.tier, tier)

    def _evict_where(self, doomed: Callable[[PathEntry], bool]) -> int:
        """Evict every fast-tier entry for which `doomed` holds (a map or team change)."""
        gone = 0
        for table in (self.eswitch, self.cache):
            for key in [k for k, e in table.entries.items() if doomed(e)]:
                table.evict(key)
                gone += 1
        return gone

    def _evict(self, rec: CtRecord) -> None:
        """Remove every fast-tier entry that depends on this record, its hits read back first
        (or the record would age as if those packets never came, and expire while in use)."""
        for key in self._keys_of.pop(id(rec), ()):
            for table in (self.eswitch, self.cache):
                entry = table.entries.get(key)
                if entry is not None and entry.packets:
                    for r in entry.records:
                        self.ct.touch(r, entry.last_hit, entry.packets, entry.bytes)
                    entry.packets = entry.bytes = 0
            self.eswitch.evict(key, rec)
            self.cache.evict(key, rec)
        rec.tier = Tier.SLOW

    def _forget(self, rec: CtRecord) -> None:
        self._evict(rec)
        self.ct.remove(rec)

    def tick(self, now: float) -> list[Emit]:
        """Periodic work: read tier counters back, expire, age MACs, rebalance eSwitch and team."""
        interval = now - self._last_tick if self._last_tick is not None else 0.0
        self._last_tick = now
        rates, waiting = self._readback(interval)
        for rec in self.ct.expire(now):
            self._evict(rec)
        self.vswitch.age(now)
        if self.eswitch.capacity and waiting:
            for old, new in self.eswitch.rebalance(rates, waiting, self.config.rebalance_swaps):
                for r in old.records:
                    r.tier = Tier.CACHE
                for r in new.records:
                    r.tier = Tier.ESWITCH
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

    # ----------------------------------------------------------------- teaming

    def _announce_moves(self, before: dict[int, str]) -> list[Emit]:
        """RARP for every local MAC whose uplink changed, sent on its new uplink."""
        self._evict_where(lambda e: e.to_network)
        after = self.team.assignments(self.map.local_vpids())
        return self.announce(v for v, name in after.items() if before.get(v) != name)

    def tier_stats(self) -> dict[str, TierStats]:
        """Counters of each fast tier."""
        return {"eswitch": self.eswitch.stats, "cache": self.cache.stats}


_HANDOVER_NAMES = {2: "peer_deliver", 3: "peer_transmit"}
_first = itemgetter(0)
_second = itemgetter(1)


def path_emits(entry: PathEntry, frame: bytes) -> list[Emit]:
    """The frames a fast-tier entry emits for `frame` (its VLAN pushed or popped per action)."""
    emits = []
    for a in entry.actions:
        vlan = a.vlan
        if vlan is None:
            f = frame
        elif vlan == 0:
            f = _untag(frame)
        else:
            f = _tag(frame, vlan)
        emits.append(Emit(a.out, a.target, f, a.nic))  # type: ignore[arg-type]
    return emits


def _offload_flags(rule: Rule | None, proto: int) -> tuple[bool, bool]:
    """(sw_ok, hw_capable): `inspect` is neither, `sw-only` no hardware, hardware speaks TCP/UDP."""
    inspect = rule is not None and rule.inspect
    sw_only = rule is not None and rule.sw_only
    sw_ok = not inspect
    return sw_ok, sw_ok and not sw_only and proto in (PROTO_TCP, PROTO_UDP)


def _tag(frame: bytes, vlan: int | None) -> bytes:
    if vlan is None:
        return frame
    return (
        frame[:12] + ETH_VLAN.to_bytes(2, "big") + (vlan & 0x0FFF).to_bytes(2, "big") + frame[12:]
    )


def _untag(frame: bytes) -> bytes:
    return frame[:12] + frame[16:]


def _vlan_op(frame: bytes, out: bytes) -> int | None:
    """How `out` derives from `frame`: None kept, 0 tag popped, N tag N pushed, -1 otherwise."""
    if out is frame or out == frame:
        return None
    if len(out) == len(frame) + 4 and out == _tag(frame, int.from_bytes(out[14:16]) & 0x0FFF):
        return int.from_bytes(out[14:16]) & 0x0FFF
    if len(out) + 4 == len(frame) and out == _untag(frame):
        return 0
    return -1
