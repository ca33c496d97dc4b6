"""hostd: one host's VMs, its FPAG and map, and the control socket, on one uvloop loop.

Each VM interface is an `Endpoint` (real frames, TCP/UDP with accounting) plugged into a VF port
of its home NIC. Frames a VM sends go to its home NIC as `FrameBatch(host, [(VF PPID, frame)])`;
frames a NIC delivers come back the same way. A NIC that says hello gets the host's policy and
the current VPID map.

A host daemon may be restarted by its card (`hostd.card`) while the NICs go on forwarding: it
starts *recovering*. It asks every NIC for the map it holds (`Probe` with ``want_map``) and
takes the newest one, so no epoch ever goes backwards, before it decides anything: no failover,
failback, migrate or map is sent, and the VMs' workload starts only then; on a fresh host, only
once every NIC is up too (holds its policy and map), and a flow to another host's VM only
once that VM answers ARP (`hostd.remote`), so nothing is lost at boot. Its built-in
VMs are new (a host crash ends their connections): their books carry the daemon's boot number,
and their ephemeral ports start elsewhere each boot so new connections never reuse a tracked
tuple.

    python -m hostd.daemon --config configs/default.toml --host h1
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Address
from typing import Any

import structlog

from bus.card import boot_number
from bus.heartbeat import Liveness, LivenessTracker
from bus.log import configure_logging
from bus.messages import (
    ControlReply,
    ControlRequest,
    FrameBatch,
    Heartbeat,
    Hello,
    MapUpdate,
    PolicyUpdate,
    Probe,
)
from bus.nicstate import NicState
from bus.node import BaseNode, BusClosed
from bus.policy import Policy, TeamPolicyName
from bus.runtime import crash_on_error, every, run_loop, run_until_signalled
from configs import Config, HostSpec, VmSpec
from configs.cmdline import daemon_args, daemon_node
from hostd.commands import HostCommands
from hostd.fpag import Fpag
from hostd.remote import RemoteStart
from hostd.supervisor import Supervisor
from hoststack.endpoint import EPHEMERAL, Endpoint
from hoststack.traffic import FlowSpec, wall_times
from kernel.port import KernelPort, cluster_tag, plug

POLL_S = 0.005
RECOVER_WAIT_S = 5.0  # NICs that say nothing for this long are recovered without
RECOVER_LINK_S = 0.5  # ... or, after a restart, this long with no connection to them
# A fresh host's workload waits for every NIC to be up (policy and map in force), so nothing is
# sent into a NIC that would drop it; a NIC neither up nor declared down by then is not awaited.
START_WAIT_S = 10.0
PORTS_PER_BOOT = 1024  # each boot's VMs start their ephemeral ports this much further
# Each boot of the daemon numbers its epochs from (boot - 1) << EPOCH_BOOT_SHIFT: a restarted
# daemon can never issue an epoch an earlier boot issued with another map (say to a NIC that
# was silent while it recovered), so one epoch always means one map.
EPOCH_BOOT_SHIFT = 32


class HostDaemon:
    """The VMs of one host, the FPAG, and the bus conversation with the host's NICs."""

    def __init__(self, config: Config, spec: HostSpec, node: BaseNode[Any], boot: int = 1) -> None:
        self.config = config
        self.boot = boot
        self.spec = spec
        self.node = node
        self.log = structlog.get_logger().bind(host=spec.name)
        self.fpag = Fpag([n.name for n in spec.nics])
        self.endpoints: dict[int, Endpoint] = {}  # the built-in VMs' interfaces, by VPID
        self.kernel: dict[int, KernelPort] = {}  # the netns VMs' interfaces, by VPID
        self._lost_taps: set[int] = set()  # TAPs deleted under us: logged once, then dropped to
        self.policy_version = 1
        # Changed at run time by the `team-policy` command.
        self.team_policy = TeamPolicyName(spec.team_policy)
        self.nic_state: dict[str, NicState] = {}
        self.links_down: dict[str, list[str]] = {}  # per NIC, from its heartbeats
        # Frames a NIC delivered for a port it does not hold (split brain, were it not 0).
        self.stale_frames: dict[str, int] = defaultdict(int)
        self._announced: set[str] = set()
        self._vms = {vm.name for vm in spec.vms}
        self._remote_vms = {vm.name for vm in config.vms} - self._vms
        self.remote = RemoteStart(START_WAIT_S)
        self._stopping = asyncio.Event()
        span = EPHEMERAL[1] - EPHEMERAL[0] + 1
        first_port = EPHEMERAL[0] + (boot - 1) * PORTS_PER_BOOT % span
        seed_of = (lambda n: n) if boot == 1 else (lambda n: f"{n}/{boot}")
        tag = cluster_tag(config.run_dir)
        for vm in spec.vms:
            if vm.kind == "netns":
                self._plug_netns(vm, tag)
                continue
            for i, iface in enumerate(vm.interfaces):
                vpid = self.fpag.attach(vm.name, i, vm.nic)
                name = vm.interface_name(i)
                ep = Endpoint(name, iface.mac, list(iface.ips), seed=seed_of(name),
                              first_port=first_port, stream=boot - 1)  # fmt: skip
                for port in vm.tcp_listen:
                    ep.listen_tcp(port)
                for port in vm.udp_listen:
                    ep.bind_udp(port)
                self.endpoints[vpid] = ep
        self.fpag.commit()
        self._add_v6_neighbors()
        homes = {vpid: self.fpag.binding(vpid).nic for vpid in self.ports()}
        self.supervisor = Supervisor(
            list(self.fpag.nics),
            homes,
            lambda vpid: self.fpag.binding(vpid).nic,
            failback=spec.failback,
            confirm_s=config.timers.heartbeat_s,
            first_probe=((boot - 1) << EPOCH_BOOT_SHIFT) + 1,  # above any earlier boot's
        )
        timers = config.timers
        self.liveness = LivenessTracker(timers.heartbeat_s, timers.heartbeat_misses)
        self._map_sent: dict[str, float] = {}
        # Liveness is judged only over time this loop was running: after a stall (SIGSTOP, a
        # long GC, a slow disk) the stalled time is discounted from every NIC's silence.
        self.stall_after = timers.heartbeat_s
        self._alive_at = time.monotonic()
        self.stalls = 0
        # Recovery (see the module docstring): the newest map a NIC told us, and when to stop
        # waiting for NICs that say nothing.
        self.recovering = True
        self._recovered: tuple[int, str, list[tuple[int, str, int]]] | None = None
        self._recover_from = self.supervisor.probe_seq + 1  # the first probe of this recovery
        # Each NIC's answer: the epoch its answering heartbeat named, and the newest map it sent.
        # An answer counts once its map is in (a reply can overtake a map the NIC sent before
        # its link to us was up, which the bus drops).
        self._answers: dict[str, int] = {}
        self._maps: dict[str, int] = {}
        self._recover_until = 0.0
        self.dropped_recovering = 0
        self._started = False  # the workload starts after the first recovery (see _may_start)
        self._start_by: float | None = None  # when it starts even if a NIC is not up yet
        self.crashed = False
        self.commands = HostCommands(self)

    def _plug_netns(self, vm: VmSpec, tag: str) -> None:
        """A netns VM's TAPs, at VF ports like built-in endpoints (see kernel.port)."""
        ifaces = [(vm.interface_name(i), f.mac, f.ips) for i, f in enumerate(vm.interfaces)]
        ports, made = plug(vm.name, ifaces, vm.run, tag, self.config.run_dir / "logs")
        for i, port in enumerate(ports):
            vpid = self.fpag.attach(vm.name, i, vm.nic)
            self.kernel[vpid] = port
        self.log.info("host.netns.made" if made else "host.netns.attached", vm=vm.name,
                      ifaces=[p.tap.name for p in ports])  # fmt: skip

    def ports(self) -> dict[int, Endpoint | KernelPort]:
        """Every VM interface, built-in or netns, by VPID."""
        return {**self.endpoints, **self.kernel}

    def _on_kernel(self, vpid: int) -> None:
        """A netns VM's TAP is readable: drain it onto its VF port now, in one batch."""
        port = self.kernel[vpid]
        frames = port.poll(self.now())
        if port.lost is not None:
            self._forget_tap(vpid, port)
        if self.recovering:  # which NIC holds the port is not known yet: the kernel retransmits
            self.dropped_recovering += len(frames)
            return
        self._send({vpid: frames})

    def _forget_tap(self, vpid: int, port: KernelPort) -> None:
        """Stop watching a TAP that went away (its fd would poll readable forever); log it once."""
        if asyncio.get_running_loop().remove_reader(port.tap.fd) or vpid not in self._lost_taps:
            self._lost_taps.add(vpid)
            self.log.warning("host.netns.lost", vpid=vpid, port=port.name, error=port.lost)

    def now(self) -> float:
        """The loop's monotonic clock."""
        return asyncio.get_running_loop().time()

    def policy(self) -> Policy:
        """The policy every NIC of this host runs: the config's, with the FPAG's VPIDs."""
        bindings = []
        for vpid in sorted(self.ports()):
            b = self.fpag.binding(vpid)
            bindings.append((vpid, b.vm, b.index))
        return self.config.policy(self.spec.name, bindings, self.team_policy)

    async def run(self) -> None:
        """Bind, connect to every NIC, start the workload, serve until `stop()`."""
        await self.node.start()
        for nic in self.spec.nics:
            self.node.connect(nic.name, self.config.endpoint(nic.name))
        self.node.on_peer_disconnect(self._on_disconnect)
        self.log.info("host.start", vpids=self.fpag.entries(), epoch=self.fpag.epoch,
                      boot=self.boot)  # fmt: skip
        self._begin_recovery()
        tasks = [
            asyncio.create_task(every(self.config.timers.heartbeat_s, self._recover)),
            asyncio.create_task(self._receive()),
            asyncio.create_task(every(POLL_S, self._poll)),
            asyncio.create_task(every(self.config.timers.stats_s, self._log_flows)),
            # Polled 5x per heartbeat: a hang is seen soon after the last miss, not a beat later.
            asyncio.create_task(every(self.config.timers.heartbeat_s / 5, self._check_liveness)),
        ]
        for task in tasks:
            crash_on_error(task, self._crash)
        loop = asyncio.get_running_loop()
        for vpid, port in self.kernel.items():
            loop.add_reader(port.tap.fd, self._on_kernel, vpid)
        await self._stopping.wait()
        for port in self.kernel.values():
            loop.remove_reader(port.tap.fd)
            port.close()  # the TAP and its namespace stay: the cluster's, not this daemon's
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._log_flows()
        await self.node.close()
        self.log.info("host.stop")

    def stop(self) -> None:
        """Ask the loop to finish."""
        self._stopping.set()

    def _crash(self, error: BaseException) -> None:
        self.log.error("host.crash", error=repr(error), exc_info=error)
        self.crashed = True
        self.stop()

    # ------------------------------------------------------------------ workload

    def _start_flows(self, now: float) -> None:
        for flow in self.config.flows:
            if flow.src not in self._vms:
                continue  # a flow of another host or of an external peer
            dst_ip = self.config.flow_target(flow)  # the loader picks the shared segment
            vpid, src = self._endpoint_facing(flow.src, dst_ip)
            spec = FlowSpec(
                flow.name, flow.proto, src.name, dst_ip, flow.dport, flow.rate, flow.size
            )
            remote = flow.dst in self._remote_vms
            if remote and isinstance(dst_ip, IPv4Address) and not src.knows(dst_ip):
                self.remote.wait(vpid, src, spec, dst_ip, now)
            else:
                src.add_flow(spec, now)

    def _start_remote(self, now: float) -> None:
        """Flows to another host's VMs whose destination answered (or waited long enough)."""
        ready, probes = self.remote.poll(now)
        for w, answered in ready:
            if not answered:
                self.log.warning("host.flow.unanswered", flow=w.spec.name, dst=str(w.dst))
            w.endpoint.add_flow(w.spec, now)
        if probes:
            self._send(probes)

    def _endpoint_facing(
        self, vm_name: str, dst_ip: IPv4Address | IPv6Address
    ) -> tuple[int, Endpoint]:
        """The sending VM's interface on the destination's subnet (else its first)."""
        mine = [(v, ep) for v, ep in self.endpoints.items() if self.fpag.binding(v).vm == vm_name]
        for vpid, ep in mine:
            if any(dst_ip in iface.network for iface in ep.interfaces):
                return vpid, ep
        return mine[0]

    def _add_v6_neighbors(self) -> None:
        # IPv6 neighbour discovery is not emulated: every endpoint knows every v6 neighbour.
        table = [(ip.ip, ep.mac) for ep in self.ports().values() for ip in ep.interfaces]
        table += [(ip.ip, p.mac) for p in self.config.peers for ip in p.ips]
        for ep in self.endpoints.values():
            for ip, mac in table:
                if ip.version == 6 and mac != ep.mac:
                    ep.add_neighbor(ip, mac)

    # ------------------------------------------------------------------ bus

    async def _receive(self) -> None:
        handlers: dict[type, Callable[[str, Any], None]] = {
            Hello: self._on_hello,
            MapUpdate: self._on_nic_map,
            Heartbeat: self._on_heartbeat,
            ControlRequest: self._on_control,
        }
        try:
            while True:
                out: dict[int, list[bytes]] = defaultdict(list)
                batch = await self.node.recv_batch(1024)
                self._check_stall()
                for peer, msg in batch:
                    if isinstance(msg, FrameBatch):
                        self._on_frames(peer, msg, out)
                    elif (handler := handlers.get(type(msg))) is not None:
                        handler(peer, msg)
                self._send(out)
        except BusClosed:
            self.stop()

    def _on_frames(self, peer: str, msg: FrameBatch, out: dict[int, list[bytes]]) -> None:
        if self.recovering:
            self.dropped_recovering += len(msg.frames)  # which port is which is not known yet
            return
        now = self.now()
        for ppid, frame in msg.frames:
            vpid = self.fpag.vpid_at(peer, ppid)
            if vpid is None:
                self.stale_frames[peer] += 1  # a stale NIC delivering for a port it lost
                continue
            ep = self.endpoints.get(vpid)
            if ep is not None:
                out[vpid].extend(ep.receive(frame, now))
            else:
                self.kernel[vpid].receive(frame, now)

    def _on_hello(self, peer: str, msg: Hello) -> None:
        if peer not in self.fpag.nics or self.recovering:
            return  # a NIC says hello until it has a map: it is answered once we know it
        self.node.send(peer, PolicyUpdate(self.policy_version, self.policy()))
        self.node.send(peer, MapUpdate(self.fpag.epoch, self.fpag.entries()))
        self.log.info("host.nic.hello", nic=peer, epoch=self.fpag.epoch)

    def _on_heartbeat(self, peer: str, msg: Heartbeat) -> None:
        if peer not in self.fpag.nics:
            return
        now = self.now()
        self.liveness.heard(peer, now)
        old = self.nic_state.get(peer)
        self.nic_state[peer] = msg.state
        if msg.probe:
            self.supervisor.answered(peer, msg.probe)
            self._supervise()
        if msg.epoch > self.fpag.epoch and not self.recovering:
            self._begin_recovery()  # a NIC holds a newer map than ours: learn it first
        if self.recovering:
            if msg.probe >= self._recover_from:
                self._answers[peer] = msg.epoch
            self._recover(probe=False)  # done once every NIC has answered
            return
        if msg.state is NicState.UP and peer in self.supervisor.down:
            self._remap("failback", peer, self.supervisor.nic_up(peer))
        if 0 < msg.epoch < self.fpag.epoch and now - self._map_sent.get(peer, -1.0) > 0.25:
            # A NIC that missed a map (paused, or its queue overflowed) gets the current one.
            self._map_sent[peer] = now
            self.node.send(peer, MapUpdate(self.fpag.epoch, self.fpag.entries()))
        spec = self.config.nic(peer)
        self.links_down[peer] = [
            spec.uplink_name(spec.uplinks[p - 1])
            for p in msg.links_down
            if 1 <= p <= len(spec.uplinks)
        ]
        if old != msg.state:
            self.log.info("host.nic.state", nic=peer, state=msg.state, epoch=msg.epoch)
        self._may_start()
        if msg.state is NicState.UP and self._started:
            self._announce(peer)

    def _announce(self, nic: str) -> None:
        """The VMs behind a NIC that came up tell the network where they are (once per NIC).

        Only once the workload runs: the fabric's external peers start sending to a VM when
        they have seen it announce itself, that is when its host is ready.
        """
        if nic in self._announced:
            return
        self._announced.add(nic)
        ports = self.ports()
        self._send({vpid: ports[vpid].announce() for vpid in self.fpag.vpids_on(nic)})

    def _on_disconnect(self, peer: str) -> None:
        if peer in self.fpag.nics:
            self.liveness.disconnected(peer, self.now())
            self._check_liveness()

    def _check_stall(self) -> None:
        """After our own loop stood still, that time is nobody's silence: it is discounted.

        CLOCK_MONOTONIC, not the loop clock: the loop's time does not move inside a callback.
        """
        now = time.monotonic()
        last, self._alive_at = self._alive_at, now
        if now - last >= self.stall_after:
            self.stalls += 1
            # Only the time we stood still is discounted: a NIC silent before the stall
            # keeps what it had used of its detection window.
            self.liveness.shift(now - last, self.now())
            self.log.warning("host.stalled", stalled_ms=round((now - last) * 1000, 1))

    def _check_liveness(self) -> None:
        self._check_stall()
        if self.recovering:
            return
        now = self.now()
        for nic, old, new in self.liveness.poll(now):
            if new is Liveness.DOWN and nic in self.fpag.nics:
                self.nic_state[nic] = NicState.DOWN
                self.log.info("host.nic.down", nic=nic, was=old.value)
                self.supervisor.nic_down(nic, now)
        self._supervise()
        self._may_start()

    def _supervise(self) -> None:
        """Send the supervisor's probes; commit its failover once the survivors answered."""
        if self.recovering:
            return
        lost = sorted(self.supervisor.down)
        step = self.supervisor.poll(self.now())
        if step.probe:
            probe = Probe(self.spec.name, step.probe)
            for nic in step.targets:
                self.node.send(nic, probe)
            self.log.info("host.probe", probe=step.probe, nics=step.targets, lost=lost)
        gone = sorted({self.fpag.binding(v).nic for v, _ in step.moves or []}) or lost
        if step.moves is not None and gone:  # (nothing lost: the NIC came back in the round)
            self._remap("failover", gone[0], step.moves, nics=gone)

    def _remap(self, why: str, nic: str, moves: list[tuple[int, str]], **fields: Any) -> None:
        """Commit moves as one new map epoch and tell every NIC (hostd alone remaps)."""
        for vpid, to in moves:
            self.fpag.move(vpid, to)
        epoch = self.fpag.commit()
        self.log.info(f"host.{why}", nic=nic, epoch=epoch, moves=[[v, to] for v, to in moves],
                      **fields)  # fmt: skip
        if not moves:
            return
        self.log.info("map.epoch", epoch=epoch, why=why)
        update = MapUpdate(epoch, self.fpag.entries())
        for n in self.fpag.nics:
            self.node.send(n, update)

    # ------------------------------------------------------------------ recovery

    def _begin_recovery(self) -> None:
        self.recovering = True
        self._recover_from = self.supervisor.probe_seq + 1
        self._answers.clear()
        self._maps.clear()
        self._recover_until = self.now() + RECOVER_WAIT_S
        self.log.info("host.recover.start", epoch=self.fpag.epoch, boot=self.boot)
        self._recover()

    def _on_nic_map(self, peer: str, msg: MapUpdate) -> None:
        """A NIC's answer to a recovery probe: the map it holds."""
        if peer not in self.fpag.nics or not self.recovering:
            return
        self._maps[peer] = max(msg.epoch, self._maps.get(peer, 0))
        problem = self.fpag.check_map(msg.entries)
        if problem is not None:
            self.log.warning("host.recover.bad_map", nic=peer, epoch=msg.epoch, error=problem)
            return
        if self._recovered is None or msg.epoch > self._recovered[0]:
            self._recovered = (msg.epoch, peer, list(msg.entries))

    def _recover(self, probe: bool = True) -> None:
        """Probe every NIC for its map until each has answered (or the wait is over)."""
        if not self.recovering:
            return
        waiting = self._unanswered()
        now = self.now()
        if self.boot > 1 and now >= self._recover_until - RECOVER_WAIT_S + RECOVER_LINK_S:
            # A restart: a NIC we cannot even connect to by now is dead, not slow to boot.
            waiting = [n for n in waiting if self.node.is_connected(n)]
        if not waiting or now >= self._recover_until:
            self._end_recovery(self._unanswered())
        elif probe:
            seq = self.supervisor.next_probe()
            for nic in waiting:
                self.node.send(nic, Probe(self.spec.name, seq, want_map=True))

    def _unanswered(self) -> list[str]:
        """NICs that have not answered this recovery, map included (none held counts too)."""
        return [
            n
            for n in self.fpag.nics
            if n not in self._answers or self._maps.get(n, 0) < self._answers[n]
        ]

    def _end_recovery(self, silent: list[str]) -> None:
        self.recovering = False
        first = not self._started
        if self._recovered is not None and self._recovered[0] >= self.fpag.epoch:
            epoch, nic, entries = self._recovered
            unknown = self.fpag.restore(epoch, entries)
            self.log.info("host.recovered", epoch=epoch, source=nic, vpids=self.fpag.entries(),
                          silent=silent, unknown=unknown)  # fmt: skip
        else:
            self.log.info("host.recovered", epoch=self.fpag.epoch, source=None, silent=silent)
        self._recovered = None
        self.fpag.raise_epoch((self.boot - 1) << EPOCH_BOOT_SHIFT)
        now = self.now()
        for nic in self.fpag.nics:
            # Every NIC gets a fresh detection window now: its transitions while we recovered
            # went unjudged, so one that hung meanwhile is declared down 150 ms from here.
            if nic not in self.supervisor.down:
                self.liveness.heard(nic, now)
            # A NIC that holds nothing and is not up (rebooting, resyncing) is no failover
            # target; it gets its VPIDs back when it says it is up (failback).
            if self.nic_state.get(nic) is not NicState.UP and not self.fpag.vpids_on(nic):
                self.supervisor.down.add(nic)
        self.liveness.poll(now)  # those "heard" transitions are ours, not news
        update = MapUpdate(self.fpag.epoch, self.fpag.entries())
        for nic in self.fpag.nics:
            self.node.send(nic, update)  # only a NIC behind applies it
        if first:
            # A restarted host's NICs are forwarding already: its VMs' workload resumes now.
            self._start_by = now + (START_WAIT_S if self.boot == 1 else 0.0)
            self._may_start()

    def _not_ready(self) -> list[str]:
        """This host's NICs the workload still waits for: neither up nor known to be down."""
        return [
            n
            for n in self.fpag.nics
            if self.nic_state.get(n) is not NicState.UP and n not in self.supervisor.down
        ]

    def _may_start(self) -> None:
        """Start the VMs' workload once every NIC holds its policy and map (or the wait is over),
        so a fresh cluster loses nothing at boot."""
        if self._started or self.recovering or self._start_by is None:
            return
        now = self.now()
        waiting = self._not_ready()
        if waiting and now < self._start_by:
            return
        self._started = True
        self.log.info("host.workload.start", not_up=waiting, boot=self.boot)
        for nic in self.fpag.nics:
            if self.nic_state.get(nic) is NicState.UP:
                self._announce(nic)
        self._start_flows(now)

    def _on_control(self, peer: str, msg: ControlRequest) -> None:
        try:
            reply = self.commands.answer(msg)
        except Exception as e:  # a bug in one command must not take the host's loop down
            self.log.exception("host.control.error", cmd=msg.cmd)
            reply = ControlReply(msg.req_id, False, {}, f"{msg.cmd}: internal error: {e}")
        self.node.reply(peer, reply)

    def _send(self, out: dict[int, list[bytes]]) -> None:
        per_nic: dict[str, list[tuple[int, bytes]]] = defaultdict(list)
        for vpid, frames in out.items():
            if frames:
                b = self.fpag.binding(vpid)
                per_nic[b.nic].extend((b.ppid, f) for f in frames)
        for nic, batch in per_nic.items():
            self.node.send(nic, FrameBatch(self.spec.name, batch))

    # ------------------------------------------------------------------ timers

    def _poll(self) -> None:
        self._check_stall()
        now = self.now()
        if self.remote.waiting:
            self._start_remote(now)
        self._send({vpid: ep.poll(now) for vpid, ep in self.endpoints.items()})
        for vpid in self.kernel:  # what the readers have not taken yet, if anything
            self._on_kernel(vpid)

    def flow_stats(self) -> dict[str, Any]:
        """Per-flow books of every VM endpoint: senders' and sinks' views."""
        now, wall = self.now(), time.time()
        flows: dict[str, Any] = {}
        for ep in self.endpoints.values():
            snap = ep.snapshot()
            for name, stats in snap["flows"].items():
                flows.setdefault(name, {})["sender"] = stats
            for name, stats in snap["sinks"].items():
                flows.setdefault(name, {})["sink"] = stats
        for sides in flows.values():
            wall_times(sides, now, wall)
        return flows

    def _log_flows(self) -> None:
        self.log.info("host.flows", flows=self.flow_stats(), boot=self.boot)


def main(argv: list[str] | None = None) -> None:
    """Entry point of `python -m hostd`."""
    config, host = daemon_args("hostd", __doc__, "host", argv)
    configure_logging(host, config.run_dir, host=host)
    node = daemon_node("hostd", config, host)
    daemon = HostDaemon(config, config.host(host), node, boot=boot_number())
    run_loop(run_until_signalled(daemon))
    if daemon.crashed:
        sys.exit(70)  # EX_SOFTWARE: the card restarts us


if __name__ == "__main__":
    main()
