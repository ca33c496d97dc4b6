"""The NIC OS: one uvloop event loop between the bus and the NIC's sans-I/O code. I/O glue only.

It moves frame batches between the bus and `Pipeline.process_batch` (`nicd.datapath`), hands
control messages to `NicControl` (`nicd.control`: state, fencing, siblings, the host's map,
replication), sends what comes out, and runs the timers (tick, heartbeat, stats). It owns the
one clock, `now()`. It starts with no policy: hostd sends the policy and the VPID map when the
NIC says hello.

    python -m nicd.worker --config configs/default.toml --nic nic1
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from typing import Any

import structlog

from bus.log import configure_logging
from bus.messages import (
    ControlRequest,
    FrameBatch,
    Handover,
    HandoverKind,
    Hello,
    MapUpdate,
    PolicyUpdate,
    frame_chunks,
    trusted,
)
from bus.node import BaseNode, BusClosed
from bus.policy import Policy
from bus.runtime import crash_on_error, every, run_loop, run_until_signalled
from configs import FABRICD as FABRIC
from configs import Config, NicSpec
from configs.cmdline import daemon_args, daemon_node
from nicd.capture import IN, OUT
from nicd.commands import InspectCommands
from nicd.control import NicControl
from nicd.datapath.pipeline import Emit, Pipeline, PortKind
from nicd.nicstats import LOGGED
from nicd.opcommands import OperatorCommands
from nicd.outlets import group
from nicd.policy import build_pipeline, update_policy

HELLO_EVERY_S = 0.25


class NicWorker:
    """One NIC's event loop: bus in, datapath and control plane, bus out; timers."""

    def __init__(self, config: Config, spec: NicSpec, node: BaseNode[Any]) -> None:
        self.config = config
        self.spec = spec
        self.node = node
        self.host = spec.host
        self.siblings = [n.name for n in config.host(spec.host).nics if n.name != spec.name]
        self.policy_version = -1
        self.policy: Policy | None = None
        self.log = structlog.get_logger().bind(nic=spec.name, host=spec.host)
        # Capture timestamps are wall clock: taken from the one clock, at the offset of the start.
        # Its messages leave by the node, its frames by `_send`; it beats when `_keepalive` asks.
        self.core = NicControl(
            spec, self.siblings, config.timers, node, self._send, self._keepalive, self.log,
            self.now(),
        )  # fmt: skip
        self.sync, self.liveness = self.core.sync, self.core.liveness
        # Delegates the policy handlers call by these names.
        self._sibling_live, self._uplink_name = self.core.sibling_live, self.core.uplink_name
        self._ingress = {self.host: PortKind.VF, FABRIC: PortKind.UPLINK}  # who sends frames
        self._stopping = asyncio.Event()
        self.crashed = False
        self.unexpected: dict[str, int] = {}  # messages from a peer that may not send them
        self._handlers: dict[type, Callable[[str, Any], object]] = {
            PolicyUpdate: self._on_policy,
            MapUpdate: self._on_map,  # the core's, then `map_settled` at a fresh `now`
            ControlRequest: lambda peer, msg: node.reply(peer, self.commands.answer(msg)),
            Hello: lambda peer, msg: None,
        }
        self.inspect = InspectCommands(lambda: self.pipeline, self.now)
        self.captures = self.inspect.captures
        self.commands = OperatorCommands(self.core, node, self.inspect, self.log, self.now)

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
        for peer in (self.host, FABRIC, *self.siblings):
            self.node.connect(peer, self.config.endpoint(peer))
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
        frames: list[tuple[PortKind, int, bytes]] = []
        # Transmit handovers of the whole batch go out together: fewer, fuller wire messages.
        transmit: list[tuple[int, bytes]] = []
        for peer, msg in batch:
            if isinstance(msg, FrameBatch):
                ingress = self._ingress.get(peer)
                if ingress is None:
                    self._unexpected("nic.drop.unexpected_frames", peer)
                    continue
                frames.extend((ingress, port, f) for port, f in msg.frames)
                if self.captures.taps:
                    self.captures.see(ingress, IN, msg.frames, self._wall())
            elif isinstance(msg, Handover) and peer not in core.siblings:
                self._unexpected("nic.drop.unexpected_handover", peer)
            elif isinstance(msg, Handover) and msg.kind is HandoverKind.DELIVER:
                core.channels.data(peer, made_at)
                frames.extend((PortKind.PEER_DELIVER, port, f) for port, f in msg.frames)
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

    def _unexpected(self, event: str, peer: str) -> None:
        """Counted; logged the 1st, 2nd, 4th... time: a peer's key must not flood the logs."""
        count = self.unexpected[event] = self.unexpected.get(event, 0) + 1
        if count & (count - 1) == 0:
            self.log.warning(event, peer=peer, count=count)

    @staticmethod
    def _wall() -> float:
        # pcap stamps are wall time by format; read afresh, so a clock step shows as in tcpdump.
        return time.time()

    def _keepalive(self) -> None:
        self.core.keepalive(self.now())

    def _flush(self, frames: list[tuple[PortKind, int, bytes]]) -> None:
        p = self.core.ready(len(frames))
        if p is None:
            return
        # The time read now, not the batch's: the datapath never sees its clock go back.
        emits = p.process_batch(frames, self.now())
        if self.core.first.pending:  # a short window after a takeover
            self.core.first.seen(emits, self.now())
        self._send(emits)

    def _transmit(self, frames: list[tuple[int, bytes]]) -> None:
        """A sibling chose one of our uplinks: straight onto the wire, as few batches as fit."""
        p = self.core.ready(len(frames))
        if p is None:
            return
        wire = p.transmit_batch(frames)
        if self.captures.taps:
            self.captures.see(PortKind.UPLINK, OUT, wire, self._wall())
        if wire:
            for chunk in frame_chunks(wire):
                self.node.send(FABRIC, trusted(FrameBatch, self.spec.name, chunk))

    def _send(self, emits: list[Emit]) -> None:
        """Send emitted frames, one bus message per destination."""
        if not emits:
            return
        out, name = group(emits), self.spec.name
        if self.captures.taps:
            wall = self._wall()
            self.captures.see(PortKind.VF, OUT, out.to_host, wall)
            self.captures.see(PortKind.UPLINK, OUT, out.to_fabric, wall)
        # Our own frames, already checked: built without re-validation (the receiver validates).
        if out.to_host:
            self.node.send(self.host, trusted(FrameBatch, name, out.to_host))
        if out.to_fabric:
            self.node.send(FABRIC, trusted(FrameBatch, name, out.to_fabric))
        for (nic, kind), frames in out.handovers.items():
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
        self.core.on_map(peer, msg, self.now())
        self.core.map_settled(self.now())

    def stats(self) -> dict[str, Any]:
        """Counters for the control socket and the periodic `nic.stats` event."""
        return self.commands.stats()

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


def main(argv: list[str] | None = None) -> None:
    """Entry point of the NIC OS worker process."""
    config, nic = daemon_args("nicd.worker", __doc__, "nic", argv)
    spec = config.nic(nic)
    configure_logging(nic, config.run_dir, host=spec.host, nic=nic)
    worker = NicWorker(config, spec, daemon_node("nicd", config, nic))
    run_loop(run_until_signalled(worker))
    if worker.crashed:
        sys.exit(70)  # EX_SOFTWARE


if __name__ == "__main__":
    main()
