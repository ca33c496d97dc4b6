"""The NIC's control plane without I/O: its state, fencing, siblings, the host's map. Sans-I/O.

Theory of operation: the worker owns the sockets, the loop and the one clock; it feeds
`NicControl` each control message with `now` (``handle``), calls ``heartbeat(now)`` and
``tick(now)`` on its timers and ``check_stall(now)`` as each batch arrives. Whatever the control
plane decides leaves through two outlets given at construction: bus messages through a `Sender`
(the node's queues) and datapath frames through `emit` (the worker groups them per destination).
Time is never read here, so fencing, liveness and resync are tested by moving `now` by hand.

What it holds:
- The NIC's state (`bus.nicstate`): moved only by `_signal`, through the transition table.
- Fencing: a loop that stood still as long as the host takes to declare us down (SIGSTOP, a
  hung OS) may have lost VPIDs meanwhile; it forwards nothing until the host's map says what it
  owns now, then resyncs before it rejoins.
- Sibling liveness and team membership: a sibling's uplinks are in our team only while it is
  heard and forwarding; its uplinks' carrier and its VPIDs' load come with its heartbeats.
- The host's map (takeover commit, release, rehome) and replication (`Replicator`).
- First-frame timing: how long after a takeover each VPID's first frame passes on its new path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bus.codec import encode
from bus.heartbeat import Liveness, LivenessTracker
from bus.messages import (
    Heartbeat,
    Hello,
    LinkState,
    MapUpdate,
    Probe,
    SyncAck,
    SyncBatch,
    SyncRequest,
)
from bus.nicstate import FORWARDING, NicSignal, NicState, next_state
from configs import FABRICD as FABRIC
from configs import NicSpec, Timers
from nicd.channels import ChannelHealth
from nicd.commands import Answer
from nicd.datapath.pipeline import Emit, Pipeline
from nicd.nicstats import FirstFrames, vpid_load
from nicd.replication import Replicator, Sender
from wire.malformed import Malformed

Emitter = Callable[[list[Emit]], None]


class NicControl:
    """One NIC's control plane, fed messages and `now`; see the module docstring."""

    def __init__(
        self,
        spec: NicSpec,
        siblings: list[str],
        timers: Timers,
        out: Sender,
        emit: Emitter,
        between_chunks: Callable[[], None],
        log: Any,
        now: float,
    ) -> None:
        self.spec = spec
        self.name = spec.name
        self.host = spec.host
        self.siblings = list(siblings)
        self.out = out
        self.emit = emit
        self.between_chunks = between_chunks  # the worker beats if its clock says one is due
        self.log = log
        self.pipeline: Pipeline | None = None
        self.state = NicState.STARTING
        self._reported = NicState.BOOTING  # what our heartbeats said last
        # Our uplinks without carrier (PPIDs), as the fabric told us; kept across policy loads.
        self.links_down: set[int] = set()
        self._sibling_links: dict[str, tuple[frozenset[int], tuple[int, ...]]] = {}  # last seen
        self._sibling_state: dict[str, NicState] = {}  # each sibling's state, from its heartbeats
        self._sibling_usable: dict[str, bool] = {}  # its uplinks are in our team
        self.sync = Replicator(spec.name, self.siblings, out, log)
        self._resynced = self.sync.resynced  # as the state machine last heard it
        self.channels = ChannelHealth(self.siblings)
        self.liveness = LivenessTracker(timers.heartbeat_s, timers.heartbeat_misses)
        self.heartbeat_s = timers.heartbeat_s
        self.stall_after = timers.down_after_s  # as long as the host takes to declare us down
        self._alive_at = now  # when the loop last ran: a heartbeat or a batch
        self.not_ready_drops = 0
        self.fenced_drops = 0
        self.first = FirstFrames(log)
        self._took: tuple[set[int], int] | None = None  # VPIDs taken over by the map in hand
        self.hb_seq = 0
        self.probe = 0  # the newest probe of the host we answered
        self._handlers: dict[type, Callable[[str, Any, float], None]] = {
            MapUpdate: self.on_map,
            Heartbeat: self.on_heartbeat,
            LinkState: self.on_link_state,
            SyncBatch: self.on_sync_batch,
            SyncAck: lambda peer, msg, now: self.sync.on_ack(peer, msg),
            SyncRequest: self.on_sync_request,
            Probe: self.on_probe,
        }

    @property
    def fenced(self) -> bool:
        """Forwarding nothing until the host's map says what we own."""
        return self.state is NicState.FENCED

    def handles(self, kind: type) -> bool:
        """True for the message types `handle` takes."""
        return kind in self._handlers

    def handle(self, peer: str, msg: Any, now: float) -> None:
        """A control message from `peer`."""
        self._handlers[type(msg)](peer, msg, now)

    # ------------------------------------------------------------- state

    def _signal(self, signal: NicSignal) -> None:
        self.state = next_state(self.state, signal)
        if self.state is NicState.RESYNCING and self.sync.resynced:
            self.state = next_state(self.state, NicSignal.RESYNCED)  # nothing left to wait for

    def _note_resync(self) -> None:
        """The replicator started or finished a resync: the state machine hears of it."""
        if self.sync.resynced != self._resynced:
            self._resynced = self.sync.resynced
            self._signal(NicSignal.RESYNCED if self._resynced else NicSignal.RESYNC)

    def start_resync(self, now: float) -> None:
        """Learn every sibling's state before (re)joining: after a boot or a fence."""
        self.sync.start_resync(now)
        self._note_resync()

    def _report_state(self) -> NicState:
        """The state our heartbeat tells now; a change is logged once, as the beat sees it."""
        state = self.state
        if state != self._reported:
            old, self._reported = self._reported, state
            p = self.pipeline
            self.log.info("nic.state", old=old, new=state, epoch=p.map.epoch if p else 0)
            if state is NicState.UP:
                # In the team (after a boot, a reboot or a fence): the host may fail back now.
                self.log.info("nic.rejoin", boot=self.sync.origin.boot, resyncs=self.sync.resyncs)
        return state

    # ------------------------------------------------------------- fencing

    def check_stall(self, now: float) -> None:
        """Fence ourselves if the loop stood still as long as the host takes to declare us down.

        `now` must be CLOCK_MONOTONIC: the loop's clock does not move inside one long callback.
        """
        last, self._alive_at = self._alive_at, now
        p = self.pipeline
        if now - last < self.stall_after or self.fenced:
            return
        if p is None or not p.map.epoch:
            return
        self._signal(NicSignal.STALLED)
        self.liveness.excuse(now)  # our silence, not theirs
        self.log.warning("nic.fenced", stalled_ms=round((now - last) * 1000, 1), epoch=p.map.epoch)

    def keepalive(self, now: float) -> None:
        """Long work between two turns of the loop must not look like a hang to the host."""
        if now - self._alive_at >= self.heartbeat_s:
            self.heartbeat(now)

    def _unfence(self, p: Pipeline, now: float) -> None:
        """The host's map is known again: forward for what we own, and resync before rejoining."""
        self.log.info("nic.unfenced", epoch=p.map.epoch, vpids=p.map.local_vpids(),
                      dropped=self.fenced_drops)  # fmt: skip
        self.start_resync(now)  # siblings' streams went on without us
        self._signal(NicSignal.UNFENCED)

    def ready(self, count: int) -> Pipeline | None:
        """The pipeline if `count` frames may be processed now; else they count as dropped."""
        if not count:
            return None
        if self.pipeline is None:
            self.not_ready_drops += count
        elif self.fenced:
            self.fenced_drops += count
        else:
            return self.pipeline
        return None

    # ------------------------------------------------------------- timers

    def heartbeat(self, now: float) -> None:
        """Our beat to the host and the siblings; resync and liveness are judged with it."""
        self.check_stall(now)
        self.hb_seq += 1
        epoch = self.pipeline.map.epoch if self.pipeline else 0
        # A sibling never heard since we booted may be cut off from us, not dead: the resync
        # waits for it (up to RESYNC_WAIT_S) rather than rejoin without its state.
        self.sync.poll_resync(self.gone, now)
        self._note_resync()
        state = self._report_state()
        if self.fenced:
            # The host answers with its map; every beat asks again until it comes. (A stalled
            # loop's overdue heartbeat runs as soon as it wakes, so the first ask is at once.)
            self.out.send(self.host, Hello(self.name, "nic"))
        self.sync.send_acks()
        data = encode(
            Heartbeat(
                self.name,
                self.hb_seq,
                epoch,
                state,
                sorted(self.links_down),
                vpid_load(self.pipeline),
                self.sync.origin.boot,
                self.sync.origin.seq,
                self.probe,
            )
        )
        for peer in (self.host, *self.siblings):
            self.out.send_raw(peer, data)
        self._check_liveness(now)

    def tick(self, now: float) -> None:
        """The datapath's aging and rebalancing; its expiries are replicated."""
        p = self.pipeline
        if p is None:
            return
        self.emit(p.tick(now))
        self.replicate(now)
        for vpid, src, dst in p.take_team_moves():
            self.log.info("team.rebalance", vpid=vpid, **{"from": src, "to": dst})

    # ------------------------------------------------------------- siblings

    def on_heartbeat(self, peer: str, msg: Heartbeat, now: float) -> None:
        """A beat from the host or a sibling: liveness, its stream's end, its team state."""
        self.liveness.heard(peer, now)
        if peer in self.siblings:
            behind = self.sync.check_behind(peer, msg.sync_boot, msg.sync_seq, now)
            self.channels.heartbeat(peer, behind, now)
            self._sibling_state[peer] = msg.state
            if self.pipeline is not None:
                self._sibling_team_state(self.pipeline, peer, msg)
                self.sibling_live(self.pipeline, peer)

    def on_disconnect(self, peer: str, now: float) -> None:
        """The transport saw a sibling's connection drop: it is down at once."""
        if peer in self.siblings:
            self.liveness.disconnected(peer, now)
            self._check_liveness(now)

    def sibling_live(self, p: Pipeline, peer: str) -> None:
        """A sibling's uplinks are in our team only while it is alive and forwarding: a rebooted
        NIC still waiting for its policy, or a fenced one, would drop what we hand it."""
        live = (
            self.liveness.state(peer) is not Liveness.DOWN
            and self._sibling_state.get(peer) in FORWARDING
        )
        if live == self._sibling_usable.get(peer):
            return
        self._sibling_usable[peer] = live
        state = self._sibling_state.get(peer, "unheard")
        self.log.info("nic.peer.up" if live else "nic.peer.down", peer=peer, state=state)
        self.emit(p.set_nic_live(peer, live))

    def _sibling_team_state(self, p: Pipeline, peer: str, msg: Heartbeat) -> None:
        """A sibling's uplink carrier and its VPIDs' load, from its heartbeat (on change)."""
        state = (frozenset(msg.links_down), tuple(msg.vpid_load))
        if self._sibling_links.get(peer) == state:
            return
        self._sibling_links[peer] = state
        down = p.team.links_down()
        for u in p.team.uplinks:
            up = u.ppid not in state[0]
            if u.nic == peer and up != (u.name not in down):
                self.log.info("team.uplink.up" if up else "team.uplink.down", uplink=u.name)
                self.emit(p.set_uplink_live(u.name, up))
        uplinks = p.team.uplinks
        load = msg.vpid_load
        rows = [
            (uplinks[load[i]].name, load[i + 1], float(load[i + 2]))
            for i in range(0, len(load), 3)
            if load[i] < len(uplinks)
        ]
        p.team.report_load(peer, rows)

    def _check_liveness(self, now: float) -> None:
        for peer, _old, new in self.liveness.poll(now):
            if peer not in self.siblings:
                continue
            if new is Liveness.DOWN:
                self._sibling_state[peer] = NicState.DOWN
                self.sync.forget(peer)
            if self.pipeline is not None:
                self.sibling_live(self.pipeline, peer)

    def gone(self, sib: str) -> bool:
        """A sibling a resync need not wait for: silent to us, and holding no VPID in the map.

        Silent alone is not enough: cut off from us by a partition, it still serves VMs the
        host gave it, and rejoining without its state would take them back with no records.
        A sibling that really died loses its VPIDs to a failover, and is not waited for then.
        """
        p = self.pipeline
        if p is None or not p.map.epoch:
            return False  # no map yet: whether it serves VMs is not known
        silent = self.liveness.peers().get(sib, Liveness.DOWN) is Liveness.DOWN
        return silent and not p.map.vpids_of(sib)

    # ------------------------------------------------------------- host and fabric

    def on_probe(self, peer: str, msg: Probe, now: float) -> None:
        """The host asks for proof that we run now (before it moves VPIDs to us): a beat."""
        if peer != self.host:
            return
        self.probe = max(self.probe, msg.seq)
        if msg.want_map and self.pipeline is not None and self.pipeline.map.epoch:
            m = self.pipeline.map
            self.out.send(self.host, MapUpdate(m.epoch, m.entries()))
        self.heartbeat(now)

    def on_link_state(self, peer: str, msg: LinkState, now: float) -> None:
        """The fabric says one of our uplinks lost or regained carrier."""
        if peer != FABRIC or not 1 <= msg.ppid <= len(self.spec.uplinks):
            return
        if (msg.ppid not in self.links_down) == msg.up:
            return
        if msg.up:
            self.links_down.discard(msg.ppid)
        else:
            self.links_down.add(msg.ppid)
        name = self.uplink_name(msg.ppid)
        self.log.info("team.uplink.up" if msg.up else "team.uplink.down", uplink=name, own=True)
        if self.pipeline is not None:
            self.emit(self.pipeline.set_uplink_live(name, msg.up))
        self.heartbeat(now)  # siblings and hostd hear it now, not at the next beat

    def uplink_name(self, ppid: int) -> str:
        """The team name of our uplink `ppid`."""
        return self.spec.uplink_name(self.spec.uplinks[ppid - 1])

    def on_map(self, peer: str, msg: MapUpdate, now: float) -> None:
        """The host's VPID map: take over, release and rehome records; unfence."""
        p = self.pipeline
        if peer != self.host or p is None:
            return
        self._apply_map(p, msg, now)
        if self.state is NicState.STARTING and p.map.epoch:
            self._signal(NicSignal.MAPPED)

    def _apply_map(self, p: Pipeline, msg: MapUpdate, now: float) -> None:
        # Changes made under the old map go out first: sent after a release, they would reach
        # siblings that filed the zone under its new home already, as a copy nobody deletes.
        self.replicate(now)
        if msg.epoch <= p.map.epoch:
            if self.fenced and msg.epoch == p.map.epoch:
                self._unfence(p, now)  # the host never remapped: what we own is still ours
            return
        before = set(p.map.local_vpids())
        gained = {vpid for vpid, nic, _ in msg.entries if nic == self.name} - before
        takeover = bool(gained) and p.map.epoch > 0  # not our first map: homed here from start
        committed = self.sync.commit(p, gained, msg.epoch) if takeover else 0
        try:
            change = p.apply_map(msg.epoch, msg.entries)
        except Malformed as e:  # hostd's map, checked here: an epoch or entries no map can have
            self.log.error("map.rejected", epoch=msg.epoch, error=str(e))
            return
        if change is None:
            return
        local = set(p.map.local_vpids())
        self.log.info("map.epoch", epoch=msg.epoch, moved=sorted(change.moved), vpids=sorted(local))
        self.sync.rehome(p, set(change.moved))
        lost = before - local
        if lost:
            dropped = self.sync.release(p, lost)
            self.log.info("ct.release", epoch=msg.epoch, vpids=sorted(lost), records=dropped)
        if takeover:
            self.log.info("team.takeover", epoch=msg.epoch, vpids=sorted(gained),
                          records=committed)  # fmt: skip
            self._took = (gained, msg.epoch)
        if gained:
            self.emit(p.announce(sorted(gained)))  # the network learns the VMs' new path
        if self.fenced:
            self._unfence(p, now)
        elif not before or not self.sync.resynced:
            self.log.info("nic.ready", epoch=msg.epoch, vpids=sorted(local))

    def map_settled(self, now: float) -> None:
        """After `on_map`, at a `now` read afresh: a takeover of many records takes a while, and
        its first-frame timing and the sync lag of its changes count from when it was done."""
        if self._took is not None and self.pipeline is not None:
            gained, epoch = self._took
            self.first.expect(self.pipeline, gained, epoch, now)
        self._took = None
        self.replicate(now)

    # ------------------------------------------------------------- replication

    def replicate(self, now: float) -> None:
        """Our changes since the last call go to every sibling, stamped `now`."""
        if self.pipeline is not None:
            self.sync.replicate(self.pipeline, now)

    def on_sync_batch(self, peer: str, msg: SyncBatch, now: float) -> None:
        """A batch of a sibling's stream."""
        self.channels.data(peer, now)
        self.sync.on_batch(peer, msg, self.pipeline, now)
        self._note_resync()

    def on_sync_request(self, peer: str, msg: SyncRequest, now: float) -> None:
        """A sibling asks for our stream (a snapshot's chunks may take longer than a beat)."""
        if self.pipeline is not None:
            self.sync.on_request(peer, msg, self.pipeline, now, self.between_chunks)

    def digest(self, now: float) -> Answer:
        """What `nicteam verify` compares: our table, each sibling's copy, their sequences."""
        if self.pipeline is None:
            return False, {}, "digest: no policy yet (the NIC is starting)"
        return True, self.sync.digests(self.pipeline, now) | {"nic": self.name}, ""
