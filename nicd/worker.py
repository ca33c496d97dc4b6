"""The NIC OS: one uvloop event loop that moves frame batches between the bus and the datapath.

I/O glue only. Everything that decides lives elsewhere and reads no clock: the datapath in
`nicd.datapath`; the control plane (state, fencing, siblings, the host's map, replication) in
`nicd.control`. This module receives bus messages, hands frames to `Pipeline.process_batch` in
batches and control messages to `NicControl`, sends what comes out (grouped per destination:
the host's VF channel, the fabric's uplinks, sibling NICs over the private channel), and runs
the timers (datapath tick, heartbeats, stats). It owns the one clock, `now()`. It starts with no
policy: hostd sends the policy and the VPID map when the NIC says hello.

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

from bus.log import configure_logging
from bus.messages import (
    ControlReply,
    ControlRequest,
    Fault,
    FrameBatch,
    Handover,
    HandoverKind,
    Hello,
    InvalidField,
    PolicyUpdate,
    SyncRequest,
    frame_chunks,
    trusted,
)
from bus.node import BaseNode, BusClosed
from bus.runtime import crash_on_error, every, run_loop, run_until_signalled
from bus.transport import BusNode
from configs.cmdline import daemon_args
from configs.loader import FABRICD as FABRIC
from configs.loader import Config, NicSpec, timeouts_from_ms
from nicd.capture import IN, OUT
from nicd.commands import Answer, InspectCommands
from nicd.control import NicControl
from nicd.datapath.pipeline import DatapathConfig, Emit, Ingress, Out, Pipeline
from nicd.datapath.rules import ruleset_from_config
from nicd.datapath.teaming import Uplink, team_policy_from_str
from nicd.datapath.vswitch import interface_from_dict, segment_from_dict
from nicd.nicstats import LOGGED, nic_stats

HELLO_EVERY_S = 0.25


def build_pipeline(spec: NicSpec, policy: dict[str, Any]) -> Pipeline:
    """A datapath for NIC `spec` from the host's policy (raises ValueError on a bad policy)."""
    segments = [segment_from_dict(s, f"segments[{i}]") for i, s in enumerate(policy["segments"])]
    interfaces = [
        interface_from_dict({k: v for k, v in d.items() if k != "vpid"}, d["vpid"], f"if[{i}]")
        for i, d in enumerate(policy["interfaces"])
    ]
    uplinks = [
        Uplink(nic["name"], i + 1, f"{nic['name']}/{port}")
        for nic in policy["nics"]
        for i, port in enumerate(nic["uplinks"])
    ]
    config = DatapathConfig(
        eswitch_capacity=spec.eswitch_capacity,
        ct_limit=spec.ct_limit,
        timeouts=timeouts_from_ms(policy["timeouts_ms"]),
        failback=policy["failback"],
        uplink_bps=policy["uplink_bps"],
        load_threshold=policy["load_threshold_pct"] / 100,
    )
    rules = ruleset_from_config(policy["rules"], policy["firewall_default"], policy["version"])
    policy_kind = team_policy_from_str(policy["team_policy"], "team_policy")
    return Pipeline(spec.name, config, rules, segments, interfaces, uplinks, policy_kind)


class NicWorker:
    """One NIC's event loop: bus in, datapath and control plane, bus out; timers."""

    def __init__(self, config: Config, spec: NicSpec, node: BaseNode[Any]) -> None:
        self.config = config
        self.spec = spec
        self.node = node
        self.host = spec.host
        self.siblings = [n.name for n in config.host(spec.host).nics if n.name != spec.name]
        self.policy_version = -1
        self.policy: dict[str, Any] = {}
        self.log = structlog.get_logger().bind(nic=spec.name, host=spec.host)
        # Capture timestamps are wall clock: taken from the one clock, at the offset of the start.
        self._wall_offset = time.time() - self.now()
        self.core = NicControl(
            spec, self.siblings, config.timers, node, self._send, self.log, self.now()
        )
        self.sync = self.core.sync
        self.liveness = self.core.liveness
        self._stopping = asyncio.Event()
        self.crashed = False
        self._handlers: dict[type, Callable[[str, Any], None]] = {
            PolicyUpdate: self._on_policy,
            SyncRequest: lambda peer, msg: self.core.on_sync_request(
                peer, msg, self.now(), self._keepalive
            ),
            ControlRequest: self._on_control,
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
        """The one clock of this NIC, CLOCK_MONOTONIC: shared by every local process (sync lag),
        finer than the loop's (whole ms) and moving inside a long callback (fencing)."""
        return time.monotonic()

    @property
    def pipeline(self) -> Pipeline | None:
        """The datapath, once the host's policy has come (held by the control plane)."""
        return self.core.pipeline

    @pipeline.setter
    def pipeline(self, p: Pipeline | None) -> None:
        self.core.pipeline = p

    @property
    def links_down(self) -> set[int]:
        """Our uplinks without carrier (PPIDs), as the fabric told us."""
        return self.core.links_down

    async def run(self) -> None:
        """Bind, connect to host, fabric and siblings, then serve until `stop()`."""
        await self.node.start()
        self.node.connect(self.host, self.config.endpoint(self.host))
        self.node.connect(FABRIC, self.config.endpoint(FABRIC))
        for sib in self.siblings:
            self.node.connect(sib, self.config.endpoint(sib))
        self.node.on_peer_disconnect(lambda peer: self.core.on_disconnect(peer, self.now()))
        self.log.info("nic.start", siblings=self.siblings)
        timers = self.config.timers
        tasks = [
            asyncio.create_task(every(timers.tick_s, self._tick)),
            asyncio.create_task(every(timers.heartbeat_s, lambda: self.core.heartbeat(self.now()))),
            asyncio.create_task(every(timers.stats_s, self._log_stats)),
            asyncio.create_task(self._hello_until_ready()),
        ]
        receiver = asyncio.create_task(self._receive())
        for task in tasks:
            crash_on_error(task, self._crash)
        await self._stopping.wait()
        for task in [*tasks, receiver]:
            task.cancel()
        await asyncio.gather(*tasks, receiver, return_exceptions=True)
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
        made_at = self.now()
        core = self.core
        core.check_stall(made_at)
        frames: list[tuple[Ingress, int, bytes]] = []
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
                    self.captures.see(ingress, IN, msg.frames, self._wall(made_at))
            elif isinstance(msg, Handover) and msg.kind is HandoverKind.DELIVER:
                core.channels.data(peer, made_at)
                frames.extend((Ingress.PEER_DELIVER, port, f) for port, f in msg.frames)
            elif isinstance(msg, Handover):
                core.channels.data(peer, made_at)
                transmit += msg.frames
            else:
                self._flush(frames)  # frames before a map or policy change see the old one
                self._transmit(transmit)
                frames, transmit = [], []
                handler = self._handlers.get(type(msg))
                if handler is not None:
                    handler(peer, msg)
                elif core.handles(type(msg)):
                    core.handle(peer, msg, self.now())
                else:
                    continue
                self._keepalive()  # a resync's snapshot chunks add up
        self._flush(frames)
        self._transmit(transmit)
        core.replicate(made_at)

    def _wall(self, now: float) -> float:
        return now + self._wall_offset

    def _keepalive(self) -> None:
        self.core.keepalive(self.now())

    def _flush(self, frames: list[tuple[Ingress, int, bytes]]) -> None:
        p = self.core.ready(len(frames))
        if p is None:
            return
        emits = p.process_batch(frames, self.now())
        self.core.first_frames(emits, self.now())
        self._send(emits)

    def _transmit(self, frames: list[tuple[int, bytes]]) -> None:
        """A sibling chose one of our uplinks: straight onto the wire, as few batches as fit."""
        p = self.core.ready(len(frames))
        if p is None:
            return
        wire = p.transmit_batch(frames)
        if self.captures.taps:
            self.captures.see(Out.UPLINK, OUT, wire, self._wall(self.now()))
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
            if e.out is Out.VF:
                to_host.append((e.target, e.frame))
            elif e.out is Out.UPLINK:
                to_fabric.append((e.target, e.frame))
            elif e.out is Out.PEER_DELIVER:
                handovers[(e.nic, HandoverKind.DELIVER)].append((e.target, e.frame))
            else:
                handovers[(e.nic, HandoverKind.TRANSMIT)].append((e.target, e.frame))
        name = self.spec.name
        if self.captures.taps:
            wall = self._wall(self.now())
            self.captures.see(Out.VF, OUT, to_host, wall)
            self.captures.see(Out.UPLINK, OUT, to_fabric, wall)
        # Our own frames, already checked: built without re-validation (the receiver validates).
        if to_host:
            self.node.send(self.host, trusted(FrameBatch, name, to_host))
        if to_fabric:
            self.node.send(FABRIC, trusted(FrameBatch, name, to_fabric))
        for (nic, kind), frames in handovers.items():
            self.node.send(nic, trusted(Handover, name, kind, frames))

    # ------------------------------------------------------------- control plane messages

    def _on_policy(self, peer: str, msg: PolicyUpdate) -> None:
        if peer != self.host or msg.version <= self.policy_version:
            return
        try:
            policy = dict(msg.policy, version=msg.version)
            if self.pipeline is None:
                self.pipeline = build_pipeline(self.spec, policy)
                self.pipeline.ct.journal = []  # every change is replicated to the siblings
                self.pipeline.vswitch.journal = []
                for sib in self.siblings:  # a sibling not heard forwarding yet gets nothing
                    self._sibling_live(self.pipeline, sib)
                for ppid in self.links_down:
                    self.pipeline.set_uplink_live(self._uplink_name(ppid), False)
            else:
                self._update_policy(self.pipeline, self.policy, policy)
        except (KeyError, TypeError, ValueError) as e:
            self.log.error("nic.policy.rejected", version=msg.version, error=str(e))
            return
        self.policy_version = msg.version
        self.policy = policy
        self.log.info("nic.policy", version=msg.version, team_policy=policy["team_policy"])

    def _update_policy(self, p: Pipeline, old: dict[str, Any], new: dict[str, Any]) -> None:
        """Apply what changed: rules are revalidated only when they changed (O(connections))."""
        team_policy = team_policy_from_str(new["team_policy"], "team_policy")
        rules = (new["rules"], new["firewall_default"])
        if (old.get("rules"), old.get("firewall_default")) != rules:
            p.set_rules(ruleset_from_config(*rules, new["version"]), self.now())
        if team_policy is not p.team.policy:
            old_policy = p.team.policy.value
            self._send(p.set_policy(team_policy))
            self.log.info("team.policy", old=old_policy, new=team_policy.value)

    def _sibling_live(self, p: Pipeline, peer: str) -> None:
        self.core.sibling_live(p, peer)

    def _uplink_name(self, ppid: int) -> str:
        return self.core.uplink_name(ppid)

    def _on_map(self, peer: str, msg: Any) -> None:
        self.core.on_map(peer, msg, self.now())

    # ------------------------------------------------------------- control commands

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
        return True, self.sync.digests(self.pipeline, self.now()) | {"nic": self.spec.name}, ""

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

    def stats(self) -> dict[str, Any]:
        """Counters for the control socket and the periodic `nic.stats` event."""
        return nic_stats(self.core, self.now(), self.node.stats)

    # ------------------------------------------------------------- timers

    def _tick(self) -> None:
        self.core.tick(self.now())
        for tap in self.captures.expire(self.now()) if self.captures.taps else ():
            self.log.info("capture.expired", tap=tap)  # its reader went away

    def _log_stats(self) -> None:
        if self.pipeline is not None:
            s = self.stats()
            self.log.info("nic.stats", **{k: s[k] for k in LOGGED})

    async def _hello_until_ready(self) -> None:
        if self.siblings:
            self.core.start_resync(self.now())  # a (re)started NIC learns its siblings' state first
        while self.pipeline is None or not self.pipeline.map.epoch:
            self.node.send(self.host, Hello(self.spec.name, "nic"))
            await asyncio.sleep(HELLO_EVERY_S)


def _frame_ingress(peer: str, host: str) -> Ingress | None:
    if peer == host:
        return Ingress.VF
    if peer == FABRIC:
        return Ingress.UPLINK
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
