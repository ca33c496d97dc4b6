"""The NIC OS: one uvloop event loop that moves frame batches between the bus and the datapath.

Everything that decides lives in `nicd.datapath`; this module only receives bus messages, hands
frames to `Pipeline.process_batch` in batches, sends what comes out (grouped per destination:
the host's VF channel, the fabric's uplinks, sibling NICs over the private channel), and runs
the timers (datapath tick, heartbeats, stats). It starts with no policy: hostd sends the
policy and the VPID map when the NIC says hello.

    python -m nicd.worker --config configs/default.toml --nic nic1
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import structlog

from bus.codec import encode
from bus.heartbeat import Liveness, LivenessTracker
from bus.log import configure_logging
from bus.messages import (
    ControlReply,
    ControlRequest,
    Fault,
    FrameBatch,
    Handover,
    HandoverKind,
    Heartbeat,
    Hello,
    InvalidField,
    LinkState,
    MapUpdate,
    PolicyUpdate,
    Probe,
    SyncAck,
    SyncBatch,
    SyncRequest,
    frame_chunks,
    trusted,
)
from bus.node import BaseNode, BusClosed
from bus.policy import Policy
from bus.runtime import crash_on_error, every, run_loop, run_until_signalled
from bus.transport import BusNode
from configs import FABRICD as FABRIC
from configs import Config, NicSpec
from configs.cmdline import daemon_args
from nicd.capture import IN, OUT
from nicd.channels import ChannelHealth
from nicd.commands import Answer, InspectCommands
from nicd.datapath.pipeline import Emit, Pipeline, PortKind
from nicd.policy import build_pipeline, update_policy
from nicd.replication import Replicator

HELLO_EVERY_S = 0.25
# Sibling states (from heartbeats) in which it moves frames: it has a pipeline and a map, and is
# not fenced.
FORWARDING = frozenset({"up", "resyncing"})


class NicWorker:
    """One NIC's event loop: bus in, datapath, bus out; timers for tick, heartbeat and stats."""

    def __init__(self, config: Config, spec: NicSpec, node: BaseNode[Any]) -> None:
        self.config = config
        self.spec = spec
        self.node = node
        self.host = spec.host
        self.siblings = [n.name for n in config.host(spec.host).nics if n.name != spec.name]
        self.pipeline: Pipeline | None = None
        self.policy_version = -1
        self.policy: Policy | None = None
        # Our uplinks without carrier (PPIDs), as the fabric told us; kept across policy loads.
        self.links_down: set[int] = set()
        self._sibling_links: dict[str, tuple[frozenset[int], tuple[int, ...]]] = {}  # last seen
        self._sibling_state: dict[str, str] = {}  # each sibling's state, from its heartbeats
        self._sibling_usable: dict[str, bool] = {}  # its uplinks are in our team
        self._last_state = "booting"  # what our heartbeats said last
        self.log = structlog.get_logger().bind(nic=spec.name, host=spec.host)
        self.sync = Replicator(spec.name, self.siblings, node, self.log, self.now)
        self.channels = ChannelHealth(self.siblings)
        timers = config.timers
        self.liveness = LivenessTracker(timers.heartbeat_s, timers.heartbeat_misses)
        self.not_ready_drops = 0
        # Fencing: a loop that stood still as long as the host takes to declare us down (SIGSTOP,
        # a hung OS) may have lost VPIDs meanwhile; it forwards nothing until the host's map
        # says what it owns now.
        self.stall_after = timers.down_after_s
        self.fenced = False
        self.fenced_drops = 0
        self._alive_at = time.monotonic()  # when the loop last ran: a heartbeat or a batch
        # VPIDs taken over and not yet seen on their new path: (VPID, epoch, taken at) per VF
        # PPID, and the VF PPID of each one's MAC (frames it sends to the network).
        self._first_pending: dict[int, tuple[int, int, float]] = {}
        self._first_macs: dict[bytes, int] = {}
        self.hb_seq = 0
        self.probe = 0  # the newest probe of the host we answered
        self._stopping = asyncio.Event()
        self.crashed = False
        self._handlers: dict[type, Callable[[str, Any], None]] = {
            MapUpdate: self._on_map,
            PolicyUpdate: self._on_policy,
            Heartbeat: self._on_heartbeat,
            LinkState: self._on_link_state,
            SyncBatch: self._on_sync_batch,
            SyncAck: self._on_sync_ack,
            SyncRequest: self._on_sync_request,
            ControlRequest: self._on_control,
            Probe: self._on_probe,
            Hello: lambda peer, msg: None,
        }
        self.inspect = InspectCommands(lambda: self.pipeline, self.now)
        self.captures = self.inspect.captures
        self._commands: dict[str, Callable[[dict[str, Any]], Answer]] = {
            "stats": lambda _: (True, self.stats(), ""),
            "ping": lambda _: (True, {"nic": self.spec.name}, ""),
            "digest": self._digest,
            "fault": self._fault,
            **self.inspect.table(),
        }

    def now(self) -> float:
        """The loop's monotonic clock: the only clock the datapath sees."""
        return asyncio.get_running_loop().time()

    async def run(self) -> None:
        """Bind, connect to host, fabric and siblings, then serve until `stop()`."""
        await self.node.start()
        self.node.connect(self.host, self.config.endpoint(self.host))
        self.node.connect(FABRIC, self.config.endpoint(FABRIC))
        for sib in self.siblings:
            self.node.connect(sib, self.config.endpoint(sib))
        self.node.on_peer_disconnect(self._on_disconnect)
        self.log.info("nic.start", siblings=self.siblings)
        timers = [
            asyncio.create_task(every(self.config.timers.tick_s, self._tick)),
            asyncio.create_task(every(self.config.timers.heartbeat_s, self._heartbeat)),
            asyncio.create_task(every(self.config.timers.stats_s, self._log_stats)),
            asyncio.create_task(self._hello_until_ready()),
        ]
        receiver = asyncio.create_task(self._receive())
        for task in timers:
            crash_on_error(task, self._crash)
        await self._stopping.wait()
        for task in [*timers, receiver]:
            task.cancel()
        await asyncio.gather(*timers, receiver, return_exceptions=True)
        await self.node.close()
        self.log.info("nic.stop")

    def stop(self) -> None:
        """Ask the loop to finish (signal handlers call this)."""
        self._stopping.set()

    def _crash(self, error: BaseException) -> None:
        # A dead heartbeat timer would leave a NIC forwarding that nobody hears: exit instead.
        self.log.error("nic.crash", error=repr(error), exc_info=error)
        self.crashed = True
        self.stop()

    async def _receive(self) -> None:
        try:
            while True:
                self._handle(await self.node.recv_batch(1024))
        except BusClosed:
            self.stop()
        except Exception:
            # Crash-only: a NIC whose receive loop died must not go on sending heartbeats as if
            # it forwarded. Exit non-zero; the card reboots us and we resync like after a kill.
            self.log.exception("nic.crash")
            self.crashed = True
            self.stop()

    def _handle(self, batch: list[tuple[str, Any]]) -> None:
        made_at = time.monotonic()
        self._check_stall(made_at)
        frames: list[tuple[PortKind, int, bytes]] = []
        # Transmit handovers of the whole batch go out together: fewer, fuller wire messages.
        transmit: list[tuple[int, bytes]] = []
        for peer, msg in batch:
            if isinstance(msg, FrameBatch):
                ingress = _frame_ingress(peer, self.host)
                if ingress is None:
                    self.log.warning("nic.drop.unexpected_frames", peer=peer)
                    continue
                frames.extend((ingress, port, f) for port, f in msg.frames)
                if self.captures.taps:
                    self.captures.see(ingress, IN, msg.frames, time.time())
            elif isinstance(msg, Handover) and msg.kind is HandoverKind.DELIVER:
                self.channels.data(peer, made_at)
                frames.extend((PortKind.PEER_DELIVER, port, f) for port, f in msg.frames)
            elif isinstance(msg, Handover):
                self.channels.data(peer, made_at)
                transmit += msg.frames
            else:
                self._flush(frames)  # frames before a map or policy change see the old one
                self._transmit(transmit)
                frames, transmit = [], []
                handler = self._handlers.get(type(msg))
                if handler is not None:
                    handler(peer, msg)
                    self._keepalive()  # a resync's snapshot chunks add up
        self._flush(frames)
        self._transmit(transmit)
        self._replicate(made_at)

    def _flush(self, frames: list[tuple[PortKind, int, bytes]]) -> None:
        p = self._ready(frames)
        if p is None:
            return
        emits = p.process_batch(frames, self.now())
        if self._first_pending:
            self._first_frames(emits)
        self._send(emits)

    def _ready(self, frames: list[Any]) -> Pipeline | None:
        """The pipeline if frames may be processed now; else they are counted as dropped."""
        if not frames:
            return None
        if self.pipeline is None:
            self.not_ready_drops += len(frames)
        elif self.fenced:
            self.fenced_drops += len(frames)
        else:
            return self.pipeline
        return None

    def _transmit(self, frames: list[tuple[int, bytes]]) -> None:
        """A sibling chose one of our uplinks: straight onto the wire, as few batches as fit."""
        p = self._ready(frames)
        if p is None:
            return
        wire = p.transmit_batch(frames)
        if self.captures.taps:
            self.captures.see(PortKind.UPLINK, OUT, wire, time.time())
        if wire:
            for chunk in frame_chunks(wire):
                self.node.send(FABRIC, trusted(FrameBatch, self.spec.name, chunk))

    def _send(self, emits: list[Emit]) -> None:
        """Group emitted frames per destination, one bus message each."""
        if not emits:
            return
        to_host: list[tuple[int, bytes]] = []
        to_fabric: list[tuple[int, bytes]] = []
        handovers: dict[tuple[str, HandoverKind], list[tuple[int, bytes]]] = defaultdict(list)
        for e in emits:
            if e.out is PortKind.VF:
                to_host.append((e.target, e.frame))
            elif e.out is PortKind.UPLINK:
                to_fabric.append((e.target, e.frame))
            elif e.out is PortKind.PEER_DELIVER:
                handovers[(e.nic, HandoverKind.DELIVER)].append((e.target, e.frame))
            else:
                handovers[(e.nic, HandoverKind.TRANSMIT)].append((e.target, e.frame))
        name = self.spec.name
        if self.captures.taps:
            wall = time.time()
            self.captures.see(PortKind.VF, OUT, to_host, wall)
            self.captures.see(PortKind.UPLINK, OUT, to_fabric, wall)
        # Our own frames, already checked: built without re-validation (the receiver validates).
        if to_host:
            self.node.send(self.host, trusted(FrameBatch, name, to_host))
        if to_fabric:
            self.node.send(FABRIC, trusted(FrameBatch, name, to_fabric))
        for (nic, kind), frames in handovers.items():
            self.node.send(nic, trusted(Handover, name, kind, frames))

    # ------------------------------------------------------------- control plane messages

    def _on_policy(self, peer: str, msg: PolicyUpdate) -> None:
        # The policy was validated when decoded (a bad one is a counted MalformedMessage drop),
        # so building from it cannot fail on input: an exception here is our bug, and crashes.
        if peer != self.host or msg.version <= self.policy_version:
            return
        policy = msg.policy
        if self.pipeline is None or self.policy is None:
            self.pipeline = build_pipeline(self.spec, policy, msg.version)
            self.pipeline.ct.journal = []  # every change is replicated to the siblings
            self.pipeline.vswitch.journal = []
            for sib in self.siblings:  # a sibling not heard forwarding yet gets nothing
                self._sibling_live(self.pipeline, sib)
            for ppid in self.links_down:
                self.pipeline.set_uplink_live(self._uplink_name(ppid), False)
        else:
            change = update_policy(self.pipeline, self.policy, policy, msg.version, self.now())
            if change.team_after is not change.team_before:
                self._send(change.emits)
                self.log.info(
                    "team.policy", old=change.team_before.value, new=change.team_after.value
                )
        self.policy_version = msg.version
        self.policy = policy
        self.log.info("nic.policy", version=msg.version, team_policy=str(policy.team_policy))

    def _on_map(self, peer: str, msg: MapUpdate) -> None:
        p = self.pipeline
        if peer != self.host or p is None:
            return
        # Changes made under the old map go out first: sent after a release, they would reach
        # siblings that filed the zone under its new home already, as a copy nobody deletes.
        self._replicate(time.monotonic())
        if msg.epoch <= p.map.epoch:
            if self.fenced and msg.epoch == p.map.epoch:
                self._unfence(p)  # the host never remapped: what we own is still ours
            return
        before = set(p.map.local_vpids())
        gained = {vpid for vpid, nic, _ in msg.entries if nic == self.spec.name} - before
        takeover = bool(gained) and p.map.epoch > 0  # not our first map: homed here from start
        committed = self.sync.commit(p, gained, msg.epoch) if takeover else 0
        try:
            change = p.apply_map(msg.epoch, msg.entries)
        except ValueError as e:
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
            self._await_first_frames(p, gained, msg.epoch)
        if gained:
            self._send(p.announce(sorted(gained)))  # the network learns the VMs' new path
        if self.fenced:
            self._unfence(p)
        elif not before or not self.sync.resynced:
            self.log.info("nic.ready", epoch=msg.epoch, vpids=sorted(local))
        self._replicate(time.monotonic())

    # ------------------------------------------------------------- fencing

    def _keepalive(self) -> None:
        """Long work between two turns of the loop must not look like a hang to the host."""
        if time.monotonic() - self._alive_at >= self.config.timers.heartbeat_s:
            self._heartbeat()

    def _check_stall(self, now: float) -> None:
        """Fence ourselves if the loop stood still as long as the host takes to declare us down.

        `now` is CLOCK_MONOTONIC: the loop's clock does not move inside one long callback.
        """
        last, self._alive_at = self._alive_at, now
        p = self.pipeline
        if now - last < self.stall_after or self.fenced:
            return
        if p is None or not p.map.epoch:
            return
        self.fenced = True
        self.liveness.excuse(now)  # our silence, not theirs
        self.log.warning("nic.fenced", stalled_ms=round((now - last) * 1000, 1), epoch=p.map.epoch)

    def _unfence(self, p: Pipeline) -> None:
        """The host's map is known again: forward for what we own, and resync before rejoining."""
        self.fenced = False
        self.log.info("nic.unfenced", epoch=p.map.epoch, vpids=p.map.local_vpids(),
                      dropped=self.fenced_drops)  # fmt: skip
        self.sync.start_resync()  # siblings' streams went on without us

    # ------------------------------------------------------------- first frame on a new path

    def _await_first_frames(self, p: Pipeline, gained: set[int], epoch: int) -> None:
        taken = time.monotonic()  # not the loop clock: it ticks in whole milliseconds
        for vpid in gained:
            ppid = p.map.ppid(vpid)
            iface = p.vswitch.interface(vpid)
            if ppid is not None and iface is not None:
                self._first_pending[ppid] = (vpid, epoch, taken)
                self._first_macs[iface.mac] = ppid

    def _first_frames(self, emits: list[Emit]) -> None:
        """Log the first frame each taken-over VPID gets or sends on its new path (a short
        window after a takeover, so the scan costs nothing in steady state)."""
        for e in emits:
            if e.out is PortKind.VF:
                ppid = e.target
            elif e.out is PortKind.UPLINK and (mac := e.frame[6:12]) in self._first_macs:
                ppid = self._first_macs[mac]
            else:
                continue
            pending = self._first_pending.pop(ppid, None)
            if pending is not None:
                vpid, epoch, taken = pending
                way = "to_vm" if e.out is PortKind.VF else "to_network"
                self.log.info("team.first_frame", vpid=vpid, epoch=epoch, way=way,
                              after_ms=round((time.monotonic() - taken) * 1000, 3))  # fmt: skip
                if not self._first_pending:
                    self._first_macs.clear()
                    return

    # ------------------------------------------------------------- replication

    def _replicate(self, made_at: float) -> None:
        if self.pipeline is not None:
            self.sync.replicate(self.pipeline, made_at)

    def _on_sync_batch(self, peer: str, msg: SyncBatch) -> None:
        self.channels.data(peer, time.monotonic())
        self.sync.on_batch(peer, msg, self.pipeline)

    def _on_sync_ack(self, peer: str, msg: SyncAck) -> None:
        self.sync.on_ack(peer, msg)

    def _on_sync_request(self, peer: str, msg: SyncRequest) -> None:
        if self.pipeline is not None:
            self.sync.on_request(peer, msg, self.pipeline, self._keepalive)

    def _on_probe(self, peer: str, msg: Probe) -> None:
        """The host asks for proof that we run now (before it moves VPIDs to us): a beat."""
        if peer != self.host:
            return
        self.probe = max(self.probe, msg.seq)
        if msg.want_map and self.pipeline is not None and self.pipeline.map.epoch:
            m = self.pipeline.map
            self.node.send(self.host, MapUpdate(m.epoch, m.entries()))
        self._heartbeat()

    def _on_heartbeat(self, peer: str, msg: Heartbeat) -> None:
        self.liveness.heard(peer, self.now())
        if peer in self.siblings:
            behind = self.sync.check_behind(peer, msg.sync_boot, msg.sync_seq)
            self.channels.heartbeat(peer, behind, time.monotonic())
            self._sibling_state[peer] = msg.state
            if self.pipeline is not None:
                self._sibling_team_state(self.pipeline, peer, msg)
                self._sibling_live(self.pipeline, peer)

    def _sibling_live(self, p: Pipeline, peer: str) -> None:
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
        self._send(p.set_nic_live(peer, live))

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
                self._send(p.set_uplink_live(u.name, up))
        uplinks = p.team.uplinks
        load = msg.vpid_load
        rows = [
            (uplinks[load[i]].name, load[i + 1], float(load[i + 2]))
            for i in range(0, len(load), 3)
            if load[i] < len(uplinks)
        ]
        p.team.report_load(peer, rows)

    def _on_link_state(self, peer: str, msg: LinkState) -> None:
        """The fabric says one of our uplinks lost or regained carrier."""
        if peer != FABRIC or not 1 <= msg.ppid <= len(self.spec.uplinks):
            return
        if (msg.ppid not in self.links_down) == msg.up:
            return
        if msg.up:
            self.links_down.discard(msg.ppid)
        else:
            self.links_down.add(msg.ppid)
        name = self._uplink_name(msg.ppid)
        self.log.info("team.uplink.up" if msg.up else "team.uplink.down", uplink=name, own=True)
        if self.pipeline is not None:
            self._send(self.pipeline.set_uplink_live(name, msg.up))
        self._heartbeat()  # siblings and hostd hear it now, not at the next beat

    def _uplink_name(self, ppid: int) -> str:
        return self.spec.uplink_name(self.spec.uplinks[ppid - 1])

    def _on_disconnect(self, peer: str) -> None:
        if peer in self.siblings:
            self.liveness.disconnected(peer, self.now())
            self._check_liveness()

    def _on_control(self, peer: str, msg: ControlRequest) -> None:
        command = self._commands.get(msg.cmd)
        try:
            if command is None:
                reply = ControlReply(msg.req_id, False, {}, f"unknown command {msg.cmd!r}")
            else:
                reply = ControlReply(msg.req_id, *command(msg.args))
        except Exception as e:  # a bug in one command (or its reply) must not stop the loop
            self.log.exception("nic.control.error", cmd=msg.cmd)
            reply = ControlReply(msg.req_id, False, {}, f"{msg.cmd}: internal error: {e}")
        self.node.reply(peer, reply)

    def _digest(self, args: dict[str, Any]) -> Answer:
        if self.pipeline is None:
            return False, {}, "digest: no policy yet (the NIC is starting)"
        return True, self.sync.digests(self.pipeline) | {"nic": self.spec.name}, ""

    def _fault(self, args: dict[str, Any]) -> Answer:
        """Chaos: a fault on our bus channels (a partition of the private channel, say)."""
        try:
            fault = Fault(**args)
        except (TypeError, InvalidField) as e:
            return False, {}, f"fault: {e}"
        self.node.apply_fault(fault)
        self.log.warning(
            "chaos.fault", kind=fault.kind.value, peer=fault.peer, seconds=fault.seconds
        )
        faults = [list(f) for f in self.node.faults.snapshot(self.now())]
        return True, {"faults": faults}, ""

    # ------------------------------------------------------------- timers

    def _tick(self) -> None:
        if self.pipeline is not None:
            made_at = time.monotonic()
            self._send(self.pipeline.tick(self.now()))
            self._replicate(made_at)  # expiries
            for vpid, src, dst in self.pipeline.take_team_moves():
                self.log.info("team.rebalance", vpid=vpid, **{"from": src, "to": dst})
        for tap in self.captures.expire(self.now()) if self.captures.taps else ():
            self.log.info("capture.expired", tap=tap)  # its reader went away

    def _heartbeat(self) -> None:
        self._check_stall(time.monotonic())
        self.hb_seq += 1
        epoch = self.pipeline.map.epoch if self.pipeline else 0
        # A sibling never heard since we booted may be cut off from us, not dead: the resync
        # waits for it (up to RESYNC_WAIT_S) rather than rejoin without its state.
        self.sync.poll_resync(self._gone)
        state = self._state(self.pipeline)
        if state != self._last_state:
            self._state_changed(self._last_state, state)
        if self.fenced:
            # The host answers with its map; every beat asks again until it comes. (A stalled
            # loop's overdue heartbeat runs as soon as it wakes, so the first ask is at once.)
            self.node.send(self.host, Hello(self.spec.name, "nic"))
        self.sync.send_acks()
        data = encode(
            Heartbeat(
                self.spec.name,
                self.hb_seq,
                epoch,
                state,
                sorted(self.links_down),
                self._vpid_load(),
                self.sync.origin.boot,
                self.sync.origin.seq,
                self.probe,
            )
        )
        for peer in (self.host, *self.siblings):
            self.node.send_raw(peer, data)
        self._check_liveness()

    def _gone(self, sib: str) -> bool:
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

    def _state_changed(self, old: str, new: str) -> None:
        self._last_state = new
        self.log.info("nic.state", old=old, new=new, epoch=self.pipeline.map.epoch if
                      self.pipeline else 0)  # fmt: skip
        if new == "up":
            # In the team (after a boot, a reboot or a fence): the host may fail VPIDs back now.
            self.log.info("nic.rejoin", boot=self.sync.origin.boot, resyncs=self.sync.resyncs)

    def _state(self, p: Pipeline | None) -> str:
        """What heartbeats tell: starting, fenced, resyncing (not yet to fail back to), up."""
        if p is None or not p.map.epoch:
            return "starting"
        if self.fenced:
            return "fenced"
        return "up" if self.sync.resynced else "resyncing"

    def _check_liveness(self) -> None:
        for peer, _old, new in self.liveness.poll(self.now()):
            if peer not in self.siblings:
                continue
            if new is Liveness.DOWN:
                self._sibling_state[peer] = "down"
                self.sync.forget(peer)
            if self.pipeline is not None:
                self._sibling_live(self.pipeline, peer)

    async def _hello_until_ready(self) -> None:
        if self.siblings:
            self.sync.start_resync()  # a (re)started NIC learns its siblings' state first
        while self.pipeline is None or not self.pipeline.map.epoch:
            self.node.send(self.host, Hello(self.spec.name, "nic"))
            await asyncio.sleep(HELLO_EVERY_S)

    def _vpid_load(self) -> list[int]:
        if self.pipeline is None:
            return []
        index = {u.name: i for i, u in enumerate(self.pipeline.team.uplinks)}
        return [
            x
            for name, vpid, rate in self.pipeline.team.published_load()
            for x in (index[name], vpid, round(rate))
        ]

    def _log_stats(self) -> None:
        if self.pipeline is not None:
            s = self.stats()
            self.log.info("nic.stats", **{k: s[k] for k in ("frames_in", "slow_path", "tiers")})

    def stats(self) -> dict[str, Any]:
        """Counters for the control socket and the periodic `nic.stats` event."""
        out: dict[str, Any] = {
            "nic": self.spec.name,
            "not_ready_drops": self.not_ready_drops,
            "fenced": self.fenced,
            "fenced_drops": self.fenced_drops,
            "channels": self.channels.states(time.monotonic()),
        }
        bus = self.node.stats
        out["bus"] = {
            "sent": bus.sent,
            "received": bus.received,
            "dropped_full": bus.dropped_full,
            "dropped_unknown_peer": bus.dropped_unknown_peer,
            "identity_refused": bus.identity_refused,
            "malformed": dict(bus.malformed),
        }
        p = self.pipeline
        if p is None:
            return out | {
                "state": "waiting-for-policy",
                "frames_in": 0,
                "slow_path": 0,
                "tiers": {},
            }
        ct = p.ct.stats
        out |= {
            "state": self._state(p),
            "epoch": p.map.epoch,
            "vpids": p.map.local_vpids(),
            "frames_in": p.stats.frames_in,
            "forwarded": p.stats.forwarded,
            "slow_path": p.stats.slow_path,
            "drops": dict(p.stats.drops),
            "conntrack": len(p.ct),
            "ct": {"created": ct.created, "expired": ct.expired, "invalid": ct.invalid},
            "tiers": {
                "eswitch": p.eswitch.stats.as_dict() | {"entries": len(p.eswitch)},
                "cache": p.cache.stats.as_dict() | {"entries": len(p.cache)},
            },
            "handover_sent": dict(p.stats.handover_sent),
            "handover_received": dict(p.stats.handover_received),
            "team": [u.name for u in p.team.live()],
            "team_policy": p.team.policy.value,
            # The uplink each local VPID leaves by (under l4-hash: the one its MAC announces).
            "assignments": {
                str(v): name for v, name in p.team.assignments(p.map.local_vpids()).items()
            },
            "links_down": p.team.links_down(),
            "team_moves": p.stats.team_moves,
            "sync": self.sync.stats(),
            "learned_macs": len(p.vswitch.learned()),
            "announcements": p.stats.announcements,
        }
        return out


def _frame_ingress(peer: str, host: str) -> PortKind | None:
    if peer == host:
        return PortKind.VF
    if peer == FABRIC:
        return PortKind.UPLINK
    return None


def main(argv: list[str] | None = None) -> None:
    """Entry point of the NIC OS worker process."""
    config, nic = daemon_args("nicd.worker", __doc__, "nic", argv)
    spec = config.nic(nic)
    configure_logging(nic, config.run_dir, host=spec.host, nic=nic)
    worker = NicWorker(config, spec, BusNode(nic, config.endpoint(nic)))
    run_loop(run_until_signalled(worker))
    if worker.crashed:
        sys.exit(70)  # EX_SOFTWARE


if __name__ == "__main__":
    main()
