"""One NIC's datapath: frames in, decisions and frames to emit out. Sans-I/O.

Theory of operation. A frame enters on one of four kinds of port (`PortKind`): a VF (from a VM
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

Tracing (like OVS ofproto/trace) is a mode of this code, not a copy of it: `dry_copy` gives a
pipeline that shares the tables deciding reads and owns scratch ones for what it writes, with a
recorder (`_trace`, None in normal runs) that the decision methods below tell each step they
take. Periodic upkeep (tick, readback, team changes) is in upkeep.py.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass
from operator import itemgetter
from typing import TYPE_CHECKING

from nicd.datapath.classifier import Classifier
from nicd.datapath.config import DatapathConfig, PipelineStats
from nicd.datapath.conntrack import ConntrackTable, CtRecord
from nicd.datapath.decision import (
    HANDOVER_NAMES,
    Decision,
    Emit,
    PortKind,
    Verdict,
    path_emits,
    tag,
    untag,
)
from nicd.datapath.eswitch import ESwitch
from nicd.datapath.flowcache import FlowCache
from nicd.datapath.offload import offload_flags
from nicd.datapath.rules import Direction, RuleAction, RuleSet
from nicd.datapath.scratch import EntryCopies, ScratchConntrack, scratch_table
from nicd.datapath.teaming import Team, TeamPolicy, Uplink, flow_hash
from nicd.datapath.tiers import FastKey, PathEntry, Tier, fast_key
from nicd.datapath.upkeep import Upkeep
from nicd.datapath.vpidmap import VpidMap
from nicd.datapath.vswitch import Interface, Segment, VSwitch, VSwitchStats
from wire import build
from wire.frames import Packet, parse_frame_untrusted
from wire.malformed import Malformed
from wire.protocols import ETH_ARP, PROTO_TCP

if TYPE_CHECKING:
    from nicd.datapath.trace import TraceLog

# The types of a decision are decision.py's; the worker and tests take them from here too.
__all__ = ["DatapathConfig", "Decision", "Emit", "Pipeline", "PipelineStats", "PortKind", "Verdict"]


@dataclass(slots=True)
class _Stage:
    allowed: bool
    tier: Tier
    reason: str = ""
    rule: str = ""
    record: CtRecord | None = None
    reject: bool = False


class Pipeline(Upkeep):
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
        self._ingress_uplink: str | None = None
        self._team_moves: list[tuple[int, str, str]] = []
        self._trace: TraceLog | None = None  # set on a dry copy only

    @property
    def generation(self) -> int:
        """Fast entries stamped with an older generation are misses (map/team/topology moved)."""
        return self._gen

    def vf_vpid(self, ppid: int) -> int | None:
        """The VPID plugged into our VF `ppid`, if any."""
        return self._vf_vpid.get(ppid)

    def own_uplink(self, ppid: int) -> Uplink | None:
        """Our uplink with PPID `ppid`, if any."""
        return self._uplinks.get(ppid)

    def dry_copy(self, log: TraceLog, key: FastKey | None) -> Pipeline:
        """A pipeline to dry-run one frame (fast key `key`) on, recording its steps in `log`.

        It shares every table deciding reads and owns one for each it writes: counters,
        conntrack (copies of the records touched; new ones), the fast-tier entries read (the
        one at `key`; those of a record it evicts, their hits read back into the copies), the
        team's memo and load tally. So processing on it changes nothing here, and costs the
        same whatever the size of the tables. MAC learning is skipped (`_from_uplink`).
        """
        s = copy.copy(self)
        s.stats = PipelineStats()
        s._keys_of = {}
        s.ct = ct = ScratchConntrack(self.ct, self._keys_of, s._keys_of)
        copies = EntryCopies(ct)
        s.cache = scratch_table(self.cache, copies, key)
        s.eswitch = scratch_table(self.eswitch, copies, key)
        s.vswitch = copy.copy(self.vswitch)
        s.vswitch.stats = VSwitchStats()
        s.team = self.team.dry_copy()
        s._team_moves = []
        s._trace = log
        return s

    # ----------------------------------------------------------------- frames

    def process(self, ingress: PortKind, port: int, frame: bytes, now: float) -> Decision:
        """Decide one frame; never raises on bad input (drops are counted by reason)."""
        if ingress >= PortKind.PEER_DELIVER:
            self.stats.handover_received[HANDOVER_NAMES[ingress]] += 1
        # A transmit handover never has a fast entry: looking would only count false misses.
        key = fast_key(ingress, port, frame) if ingress != PortKind.PEER_TRANSMIT else None
        if key is not None:
            found = self._fast_lookup(key, len(frame), now)
            if self._trace is not None:
                self._trace.fast(self, key, found)
            if found is not None:
                entry, tier = found
                self.stats.frames_in += 1
                self.stats.forwarded += 1
                emits = self._apply(entry, frame)
                return Decision(Verdict.FORWARD, tier, "", entry.rule, emits, entry.records)
        elif self._trace is not None:
            self._trace.step("fast", tier="", hit=False, eligible=False)
        return self._slow(ingress, port, frame, now, key)

    def process_batch(self, batch: Iterable[tuple[PortKind, int, bytes]], now: float) -> list[Emit]:
        """Decide a batch of frames in order; returns every frame to emit.

        The worker's hot path: fast-tier hits are handled without `Decision` objects.
        """
        emits: list[Emit] = []
        fast = self._fast_lookup
        apply = self._apply
        hits = 0
        received = self.stats.handover_received
        for ingress, port, frame in batch:
            if ingress >= PortKind.PEER_DELIVER:
                received[HANDOVER_NAMES[ingress]] += 1
            key = fast_key(ingress, port, frame) if ingress != PortKind.PEER_TRANSMIT else None
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
        self, ingress: PortKind, port: int, frame: bytes, now: float, key: FastKey | None
    ) -> Decision:
        """The slow path for a frame no fast tier decided; installs its path when it may."""
        self.stats.frames_in += 1
        self.stats.slow_path += 1
        self._recs = []
        self._learn = self._account = self._ingress_uplink = None
        d = self._decide(ingress, port, frame, now)
        if d.verdict is Verdict.DROP:
            self.stats.drops[d.reason] += 1
        else:
            self.stats.forwarded += 1
            # A trace says why a frame without a fast key is not installed, too.
            if self._recs and (key is not None or self._trace is not None):
                self._install(key, frame, d)
        for e in d.emits:
            if e.out >= PortKind.PEER_DELIVER:
                self.stats.handover_sent[HANDOVER_NAMES[e.out]] += 1
        return d

    def _decide(self, ingress: PortKind, port: int, frame: bytes, now: float) -> Decision:
        if ingress is PortKind.PEER_TRANSMIT:
            return self._from_peer_transmit(port, frame)
        try:
            pkt = parse_frame_untrusted(frame)
        except Malformed as e:
            if self._trace is not None:
                self._trace.step("parse", ok=False, reason="malformed." + e.reason)
            return Decision(Verdict.DROP, reason="malformed." + e.reason)
        if ingress is PortKind.VF:
            return self._from_vf(port, pkt, frame, now)
        if ingress is PortKind.UPLINK:
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
            if self._trace is not None:
                self._trace.step("arp", segment=seg.name, op=pkt.arp_op, answered=bool(reply))
            if reply is not None:
                return Decision(Verdict.FORWARD, emits=[Emit(PortKind.VF, ppid, reply)])
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
        self._ingress_uplink = uplink.name
        seg = self.vswitch.segment_of_vlan(pkt.vlan)
        if seg is None:
            return Decision(Verdict.DROP, reason="l2.unknown_vlan")
        if not pkt.src_mac[0] & 1:
            arp_ip = pkt.arp_spa if pkt.ethertype == ETH_ARP else None
            if self._trace is None:
                self.vswitch.learn_remote(seg.name, pkt.src_mac, arp_ip, now)
            else:  # a dry run does not learn: it says it would (never for this frame's fate)
                self._trace.learn(self.vswitch, seg.name, pkt.src_mac, arp_ip or 0)
            self._learn = (seg.name, pkt.src_mac)
        untagged = frame
        if pkt.vlan is not None:
            # The VM side is untagged: parse what it will see, so a reject answers that frame.
            untagged = untag(frame)
            pkt = parse_frame_untrusted(untagged)
        if pkt.is_broadcast:
            accepted = self.team.accepts(uplink.name, None, True)
            if self._trace is not None:
                self._trace.team_ingress(uplink.name, True, accepted)
            if not accepted:
                return Decision(Verdict.DROP, reason="team.not_designated")
            return Decision(Verdict.FORWARD, emits=self._flood_emits(seg.name, None, untagged))
        vpid = self.vswitch.lookup(seg.name, pkt.dst_mac)
        if self._trace is not None:
            self._trace.switch(self, seg, pkt, vpid)
        if vpid is None:
            return Decision(Verdict.DROP, reason="l2.unknown_dst")
        accepted = self.team.accepts(uplink.name, vpid, False)
        if self._trace is not None:
            self._trace.team_ingress(uplink.name, False, accepted)
        if not accepted:
            return Decision(Verdict.DROP, reason="team.not_accepted")
        return self._to_vpid(vpid, pkt, untagged, now)

    def _from_peer_deliver(self, vpid: int, pkt: Packet, frame: bytes, now: float) -> Decision:
        if not self.map.owns(vpid):
            return Decision(Verdict.DROP, reason="fence.not_owner")
        home = self.map.home(vpid)
        assert home is not None
        if pkt.is_broadcast or not pkt.family:
            return Decision(Verdict.FORWARD, emits=[Emit(PortKind.VF, home.ppid, frame)])
        return self._to_vpid(vpid, pkt, frame, now)

    def _from_peer_transmit(self, ppid: int, frame: bytes) -> Decision:
        problem = self._transmit_problem(ppid, frame)
        if self._trace is not None:
            self._trace.transmit(self, ppid, not problem)
        if problem:
            return Decision(Verdict.DROP, reason=problem)
        return Decision(Verdict.FORWARD, emits=[Emit(PortKind.UPLINK, ppid, frame)])

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
        if self._trace is not None:
            self._trace.switch(self, seg, pkt, dst)
        if dst is None:
            return self._to_network(vpid, seg, pkt, frame)
        return self._to_vpid(dst, pkt, frame, now)

    def _to_vpid(self, vpid: int, pkt: Packet, frame: bytes, now: float) -> Decision:
        home = self.map.home(vpid)
        if home is None:
            return Decision(Verdict.DROP, reason="map.unknown_vpid")
        if home.nic != self.nic:
            if self._trace is not None:  # the sibling runs this VPID's to-VM stage, not traced
                self._trace.step("handover", kind="peer_deliver", vpid=vpid, nic=home.nic)
            emit = Emit(PortKind.PEER_DELIVER, vpid, frame, home.nic)
            return Decision(Verdict.FORWARD, emits=[emit])
        if not pkt.family:  # ARP replies and other non-IP unicast: L2 only, no firewall
            return Decision(Verdict.FORWARD, emits=[Emit(PortKind.VF, home.ppid, frame)])
        stage = self._stage(vpid, Direction.TO_VM, pkt, len(frame), now)
        if not stage.allowed:
            seg = self.vswitch.segment_of_vpid(vpid)
            assert seg is not None
            return self._denied(stage, vpid, seg, pkt, frame, Direction.TO_VM, now)
        return Decision(
            Verdict.FORWARD,
            stage.tier,
            rule=stage.rule,
            emits=[Emit(PortKind.VF, home.ppid, frame)],
            records=tuple(self._recs),
        )

    def _to_network(self, vpid: int, seg: Segment, pkt: Packet, frame: bytes) -> Decision:
        h = flow_hash(pkt.proto, pkt.src_ip, pkt.dst_ip, pkt.sport, pkt.dport) if pkt.family else 0
        uplink = self.team.select(vpid, h)
        if self._trace is not None:
            self._trace.team(self.team.policy, vpid, uplink)
        if uplink is None:
            return Decision(Verdict.DROP, reason="team.no_uplink")
        wire = tag(frame, seg.vlan)
        return Decision(Verdict.FORWARD, emits=[self._uplink_emit(uplink, vpid, wire)])

    def _uplink_emit(self, uplink: Uplink, vpid: int, wire: bytes) -> Emit:
        if self.team.policy is TeamPolicy.LOAD_BASED:
            self.team.account(uplink.name, vpid, len(wire), self._last_tick or 0.0)
            self._account = (uplink.name, vpid)
        if uplink.nic == self.nic:
            return Emit(PortKind.UPLINK, uplink.ppid, wire)
        return Emit(PortKind.PEER_TRANSMIT, uplink.ppid, wire, uplink.nic)

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
            if self._trace is not None:
                self._trace.switch(self, seg, pkt, dst)
            if dst is None:
                return self._to_network(vpid, seg, pkt, frame)
            home = self.map.home(dst)
            if home is None:
                return Decision(Verdict.DROP, reason="map.unknown_vpid")
            out = Emit(PortKind.VF, home.ppid, frame)
            if home.nic != self.nic:
                out = Emit(PortKind.PEER_DELIVER, dst, frame, home.nic)
            return Decision(Verdict.FORWARD, emits=[out])
        if self._trace is not None:
            self._trace.step("flood", segment=seg.name)
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
                emits.append(Emit(PortKind.VF, home.ppid, frame))
            else:
                emits.append(Emit(PortKind.PEER_DELIVER, vpid, frame, home.nic))
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
            return [Emit(PortKind.VF, home.ppid, answer)] if home else []
        src = self.vswitch.lookup(seg.name, pkt.src_mac)
        if src is None:
            uplink = self.team.select(vpid, 0)
            if self._trace is not None:
                self._trace.team(self.team.policy, vpid, uplink)
            return [self._uplink_emit(uplink, vpid, tag(answer, seg.vlan))] if uplink else []
        home = self.map.home(src)
        if home is None:
            return []
        if home.nic == self.nic:
            return [Emit(PortKind.VF, home.ppid, answer)]
        return [Emit(PortKind.PEER_DELIVER, src, answer, home.nic)]

    # ----------------------------------------------------------------- the firewall stage

    def _stage(
        self, vpid: int, direction: Direction, pkt: Packet, nbytes: int, now: float
    ) -> _Stage:
        """One VPID's firewall in one direction, in the slow path (fast tiers matched earlier)."""
        if pkt.fragment:
            if self._trace is not None:
                self._trace.fragment(vpid, direction)
            return _Stage(False, Tier.SLOW, "ip.fragment")
        stage = self._slow_path(vpid, direction, pkt, now)
        if stage.record is not None and stage.allowed:
            self._recs.append(stage.record)
        return stage

    def _slow_path(self, vpid: int, direction: Direction, pkt: Packet, now: float) -> _Stage:
        log = self._trace
        rec, is_reply = self.ct.lookup(vpid, pkt)
        if rec is not None:
            punt = rec.tier != Tier.SLOW  # a fast tier holds it, yet this frame came here
            if punt:
                self.cache.stats.punts += 1
            was_established = rec.established
            seen = log.row(self.ct, rec, now) if log is not None else None
            valid = self.ct.update(rec, is_reply, pkt, now)
            evict = valid and was_established and not rec.established
            if log is not None and seen is not None:
                log.conntrack(vpid, direction, seen, rec, is_reply, valid, punt, evict)
            if not valid:
                return _Stage(False, Tier.SLOW, "ct.invalid", rec.rule, rec)
            if evict:
                self._evict(rec)
            return _Stage(True, Tier.SLOW, rule=rec.rule, record=rec)
        if log is not None:
            log.no_record(vpid, direction)
        seg = self.vswitch.segment_of_vpid(vpid)
        segment = seg.name if seg else ""
        rule = self.classifier.lookup(
            segment, direction, pkt.family, pkt.proto, pkt.src_ip, pkt.dst_ip, pkt.sport, pkt.dport
        )
        action = rule.action if rule is not None else self.classifier.ruleset.default
        name = rule.name if rule is not None else "default"
        if log is not None:
            log.rule(vpid, direction, segment, rule, action)
        if action is RuleAction.DROP:
            return _Stage(False, Tier.SLOW, "fw.drop", name)
        if action is RuleAction.REJECT:
            return _Stage(False, Tier.SLOW, "fw.reject", name, reject=True)
        problem = self.ct.new_flow_check(pkt)
        if problem is not None:
            if log is not None:
                log.ct_create(self.ct, vpid, direction, None, problem, now)
            return _Stage(False, Tier.SLOW, problem, name)
        sw_ok, hw_capable = offload_flags(rule, pkt.proto)
        rec = self.ct.create(vpid, direction, pkt, now, name, sw_ok, hw_capable)
        if log is not None:
            log.ct_create(self.ct, vpid, direction, rec, "ct.full", now)
        if rec is None:
            return _Stage(False, Tier.SLOW, "ct.full", name)
        return _Stage(True, Tier.SLOW, rule=name, record=rec)

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
                if a.out >= PortKind.PEER_DELIVER:
                    self.stats.handover_sent[HANDOVER_NAMES[a.out]] += 1
        return path_emits(entry, frame)


_first = itemgetter(0)
_second = itemgetter(1)
