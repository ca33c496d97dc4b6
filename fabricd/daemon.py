"""The fabricd process: the learning switch and the external peers, driven over the bus.

Theory of operation. `Fabric` is the sans-I/O core: it owns the `Switch`, one trunk port per
uplink of every NIC (``(nic, ppid)``, PPID of ``uplinks[i]`` is ``i + 1``) and one access port
per external peer (``("peer", name)``, in its segment's VLAN), where an `Endpoint` answers ARP,
TCP and UDP and runs the workload flows the peer sources; a flow to a VM starts on the first ARP
the peer hears from that VM (a VM speaks once its host is ready), so a fresh cluster loses none.
Frames go in with a clock and come out as per-NIC lists of ``(ppid, frame)``; a peer's answers
are switched again at once.

`FabricDaemon` is the driver: one uvloop event loop and one bus node. Each iteration awaits a
batch of messages or the next tick, switches every frame, polls the peers on the tick, then
sends one `FrameBatch` per NIC. A NIC's uplinks are link-up while the bus link to that NIC is
up (or it is sending to us) and link-down when it drops, which flushes its MACs as a real ToR
does on carrier loss; when a NIC (re)connects the peers announce themselves again.

Control replies go back to the requester by name; a requester we have no link to is reached at
``config.endpoint(name)`` and its replies wait (bounded) until that link is up.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections import deque
from collections.abc import Hashable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, cast

import structlog

from bus.messages import (
    MAX_FRAME,
    ControlReply,
    ControlRequest,
    Fault,
    FrameBatch,
    Hello,
    LinkState,
    Message,
    frame_chunks,
)
from bus.node import BaseNode, BusClosed
from configs.cmdline import daemon_node
from fabricd.switch import DEFAULT_AGING, MacMove, PortMode, Switch
from hoststack.endpoint import Endpoint
from hoststack.traffic import wall_times
from kernel.port import KernelPort, cluster_tag, plug
from wire.protocols import ETH_ARP

__all__ = ["NAME", "Fabric", "FabricDaemon", "FabricStats", "serve"]

log = structlog.get_logger()

Port = Hashable
PortId = tuple[str, int | str]  # how the fabric names its ports: (nic, uplink ppid), (PEER, name)
NAME = "fabricd"  # process name, bus identity and endpoint key (configs.FABRICD)
PEER = "peer"  # first element of an external peer's port id
_ARP = ETH_ARP.to_bytes(2, "big")


@dataclass(slots=True)
class FabricStats:
    """Counters of the fabric process outside the switch."""

    batches_in: int = 0
    batches_out: int = 0
    frames_tx_dropped: int = 0  # in batches the bus refused (NIC queue full or link down)
    unknown_src: int = 0  # frame batches from no NIC of the config, or naming another as src
    unexpected: int = 0  # messages of a type the fabric does not handle
    control: int = 0
    replies_dropped: int = 0


class Fabric:
    """The sans-I/O core of fabricd; see the module docstring."""

    def __init__(
        self, config: Any, now: float, kernel_peers: Mapping[str, KernelPort] | None = None
    ) -> None:
        """Build ports, peers and peer flows from `config` (the `configs` objects); a peer of
        kind netns is its namespace's TAP from `kernel_peers` (made by the daemon: I/O)."""
        aging = getattr(config.timers, "mac_aging_s", None) or DEFAULT_AGING
        self.switch = Switch(aging=aging, max_frame=MAX_FRAME)
        self.stats = FabricStats()
        self.nics: dict[str, list[int]] = {}  # NIC name -> its uplink PPIDs
        self.peers: dict[str, Endpoint] = {}  # the built-in peers
        self.kernel_peers: dict[str, KernelPort] = {}  # the netns peers
        self.labels: dict[Port, str] = {}
        self.ports_by_label: dict[str, PortId] = {}
        self._peer_ports: dict[Port, Endpoint | KernelPort] = {}
        self._out: dict[str, list[tuple[int, bytes]]] = {}
        self._linked: set[str] = set()  # NICs whose uplinks have carrier
        self._cut: set[Port] = set()  # uplinks whose cable is pulled (`link-down`)
        self._carrier: list[tuple[str, int, bool]] = []  # to tell NICs: (nic, ppid, up)
        for host in config.hosts:
            for nic in host.nics:
                if nic.name in self.nics:
                    raise ValueError(f"NIC {nic.name!r} is configured twice")
                self.nics[nic.name] = []
                for i, uplink in enumerate(nic.uplinks):
                    port = (nic.name, i + 1)
                    self._add(port, f"{nic.name}/{uplink}", PortMode.TRUNK, None)
                    self.switch.set_link(port, False)  # until the bus link to the NIC is up
                    self.nics[nic.name].append(i + 1)
        vlans = {seg.name: seg.vlan for seg in config.segments}
        for spec in config.peers:
            if spec.segment not in vlans:
                raise ValueError(f"peer {spec.name!r}: unknown segment {spec.segment!r}")
            port = (PEER, spec.name)
            self._add(port, f"{PEER}/{spec.name}", PortMode.ACCESS, vlans[spec.segment])
            if kernel_peers and spec.name in kernel_peers:
                self.kernel_peers[spec.name] = self._peer_ports[port] = kernel_peers[spec.name]
                continue
            peer = Endpoint(spec.name, spec.mac, list(spec.ips), spec.gateway_mac)
            for tcp in spec.tcp_listen:
                peer.listen_tcp(tcp)
            for udp in spec.udp_listen:
                peer.bind_udp(udp, echo=True)  # senders measure UDP by its echoes
            self.peers[spec.name] = self._peer_ports[port] = peer
        # A peer's flow to a VM starts on the first ARP frame the peer hears from that VM: a
        # VM says nothing until its host is ready (every NIC holds its policy and map) and
        # announces itself then, so the peer sends nothing a NIC would drop at boot. (A NIC's
        # RARP for the VM says only that this one NIC has its map: it does not count.)
        self._waiting: list[tuple[str, Any, bytes]] = []
        self._heard: set[tuple[Port, bytes]] = set()  # (peer port, VM MAC) heard, while waiting
        macs = _vm_macs(config)
        for flow in config.flows:
            if flow.src in self.peers:  # flows from VMs are hostd's
                spec = config.flow_spec(flow)
                self._waiting.append((flow.src, spec, macs.get(spec.dst, b"")))
        self._start_ready(now)

    def _add(self, port: PortId, label: str, mode: PortMode, vlan: int | None) -> None:
        self.switch.add_port(port, mode, vlan)
        self.labels[port] = label
        self.ports_by_label[label] = port

    # --- frames -----------------------------------------------------------------------------

    def from_nic(self, nic: str, frames: list[tuple[int, bytes]], now: float) -> None:
        """Switch a batch of ``(uplink ppid, frame)`` received from `nic`."""
        if nic not in self.nics:
            self.stats.unknown_src += 1
            return
        if nic not in self._linked:
            self.set_nic_link(nic, True)  # it is sending, so it is alive (our link may lag)
        for ppid, frame in frames:
            self._switch((nic, ppid), frame, now)

    def announce(self, now: float) -> None:
        """Every peer's gratuitous ARPs, so the fabric and the NICs learn where peers are."""
        for port, peer in self._peer_ports.items():
            for frame in peer.announce():
                self._switch(port, frame, now)

    def _start_ready(self, now: float) -> None:
        """Start the peers' flows whose destination VM has announced itself (or is no VM)."""
        if not self._waiting:
            return
        still = []
        for peer, spec, mac in self._waiting:
            if mac and ((PEER, peer), mac) not in self._heard:
                still.append((peer, spec, mac))
                continue
            self.peers[peer].add_flow(spec, now)
            log.info("fabric.flow.start", peer=peer, flow=spec.name, dst=str(spec.dst))
        self._waiting = still
        if not still:
            self._heard.clear()

    def _hear(self, port: Port, mac: bytes) -> None:
        if any(m == mac for _, _, m in self._waiting):  # only what is waited for: bounded
            self._heard.add((port, mac))

    def tick(self, now: float) -> None:
        """Start the flows now ready, run the peers' timers and flows, age the MAC table."""
        self._start_ready(now)
        for port, peer in self._peer_ports.items():
            for frame in peer.poll(now):
                self._switch(port, frame, now)
        self.switch.expire(now)

    def from_kernel(self, name: str, now: float) -> None:
        """Switch what netns peer `name`'s kernel sent (its TAP is readable)."""
        port: Port = (PEER, name)
        for frame in self.kernel_peers[name].poll(now):
            self._switch(port, frame, now)

    def take_output(self) -> dict[str, list[tuple[int, bytes]]]:
        """Frames to send since the last call: NIC name -> ``(uplink ppid, frame)``."""
        out, self._out = self._out, {}
        return out

    def _switch(self, port: Port, frame: bytes, now: float) -> None:
        # Breadth-first: a peer's answer is switched after the frames already on the wire.
        work = deque([(port, frame)])
        while work:
            ingress, data = work.popleft()
            for egress, out in self.switch.process(ingress, data, now):
                peer = self._peer_ports.get(egress)
                if peer is None:
                    nic, ppid = cast("tuple[str, int]", egress)
                    self._out.setdefault(nic, []).append((ppid, out))
                else:
                    if self._waiting and out[12:14] == _ARP:  # untagged: an access port
                        self._hear(egress, out[6:12])
                    work.extend((egress, answer) for answer in peer.receive(out, now))

    # --- link state and control -------------------------------------------------------------

    def set_nic_link(self, nic: str, up: bool) -> None:
        """The bus link to `nic` came up or went down: so did the carrier of its uplinks."""
        if up:
            self._linked.add(nic)
        else:
            self._linked.discard(nic)
        for ppid in self.nics[nic]:
            self.switch.set_link((nic, ppid), up and (nic, ppid) not in self._cut)
        if up:  # a (re)started NIC learns which of its cables are pulled
            self._carrier.extend(
                (nic, ppid, (nic, ppid) not in self._cut) for ppid in self.nics[nic]
            )

    def set_cable(self, label: object, up: bool) -> dict[str, object]:
        """`link-down` / `link-up`: pull or reconnect an uplink's cable; both ends lose carrier."""
        port = self.ports_by_label.get(label) if isinstance(label, str) else None
        if port is None or port[0] == PEER:
            uplinks = sorted(lb for lb, p in self.ports_by_label.items() if p[0] != PEER)
            raise ValueError(f"unknown uplink {label!r}; uplinks: {uplinks}")
        nic, ppid = cast("tuple[str, int]", port)
        if up:
            self._cut.discard(port)
        else:
            self._cut.add(port)
        self.switch.set_link(port, up and nic in self._linked)
        self._carrier.append((nic, ppid, up))
        log.info("fabric.link.up" if up else "fabric.link.down", port=label)
        return {"port": label, "carrier": up, "up": self.switch.is_up(port)}

    def take_carrier(self) -> list[tuple[str, int, bool]]:
        """Carrier changes to tell the NICs since the last call: (nic, uplink ppid, up)."""
        out, self._carrier = self._carrier, []
        return out

    def control(self, cmd: str, args: dict[str, object], now: float) -> dict[str, object]:
        """Answer a control command; raises ValueError for a bad command or argument."""
        if cmd == "stats":
            return {
                "switch": self.switch.stats.as_dict(),
                "fabric": asdict(self.stats),
                "ports": {self.labels[p]: s for p, s in self.switch.ports().items()},
                "peers": {name: peer.snapshot() for name, peer in self.peers.items()},
            }
        if cmd == "sources":
            sources = self.switch.sources()
            name = self.labels.__getitem__
            return {name(p): sources[p] for p in sorted(sources, key=name)}
        if cmd == "mac-table":
            rows = [
                {"vlan": r.vlan, "mac": r.mac, "port": self.labels[r.port], "age": round(r.age, 6)}
                for r in self.switch.mac_table(now)
            ]
            return {"rows": rows}
        if cmd in ("link-down", "link-up"):
            return self.set_cable(args.get("port"), cmd == "link-up")
        if cmd in ("port-down", "port-up"):
            label = args.get("port")
            port = self.ports_by_label.get(label) if isinstance(label, str) else None
            if port is None:
                raise ValueError(f"unknown port {label!r}; ports: {sorted(self.ports_by_label)}")
            up = cmd == "port-up"
            self.switch.set_admin(port, up)
            log.info("fabric.port.up" if up else "fabric.port.down", port=label)
            return {"port": label, "up": self.switch.is_up(port)}
        raise ValueError(f"unknown command {cmd!r}")

    def log_moves(self) -> list[MacMove]:
        """Log the switch's station moves since the last call."""
        moves = self.switch.take_moves()
        for m in moves:
            extra = {"from": self.labels[m.old], "to": self.labels[m.new]}
            log.info("fabric.mac.move", vlan=m.vlan, mac=m.mac, **extra)
        return moves


def _vm_macs(config: Any) -> dict[Any, bytes]:
    """Every VM interface's MAC by its addresses (a peer flow's destination)."""
    return {
        ip.ip: iface.mac
        for vm in getattr(config, "vms", ())
        for iface in vm.interfaces
        for ip in iface.ips
    }


class FabricDaemon:
    """fabricd's event loop around a `Fabric` and one bus node; see the module docstring."""

    def __init__(self, config: Any, node: BaseNode[Any], *, max_messages: int = 256) -> None:
        self.config = config
        self.node = node
        self.tick_s: float = config.timers.tick_s
        if not self.tick_s > 0:
            raise ValueError(f"timers.tick_s must be positive, got {self.tick_s!r}")
        self.max_messages = max_messages
        self.stats_s: float = config.timers.stats_s
        self.fabric: Fabric | None = None
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        """Ask the loop to finish (safe from a signal handler); `run` then closes the node."""
        self._stopping.set()

    async def run(self) -> None:
        """Start, loop until `stop`, close the node (linger 0, ipc socket file removed)."""
        try:
            await self.start()
            await self._loop()
        finally:
            await self.node.close()
            if self.fabric is not None:
                loop = asyncio.get_running_loop()
                for port in self.fabric.kernel_peers.values():
                    loop.remove_reader(port.tap.fd)
                    port.close()  # the namespace stays: the cluster's, not this daemon's
                self._log_flows()
                log.info("fabric.stop", **self.fabric.switch.stats.as_dict())

    async def start(self) -> None:
        """Bind the node, connect to every NIC and announce the peers."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        kernel = self._plug_peers()
        fabric = self.fabric = Fabric(self.config, now, kernel)
        for name, port in kernel.items():
            loop.add_reader(port.tap.fd, self._on_kernel, name)
        await self.node.start()
        self.node.on_peer_connect(self._on_connect)
        self.node.on_peer_disconnect(self._on_disconnect)
        for nic in fabric.nics:
            self.node.connect(nic, self.config.endpoint(nic))
        fabric.announce(now)
        log.info(
            "fabric.start",
            endpoint=self.node.endpoint,
            nics=sorted(fabric.nics),
            peers=sorted(fabric.peers),
            ports=len(fabric.labels),
        )
        self._flush()

    def _plug_peers(self) -> dict[str, KernelPort]:
        """The netns peers' TAPs: made with their namespaces on the first boot, else re-attached."""
        tag = cluster_tag(self.config.run_dir)
        out = {}
        for spec in self.config.peers:
            if spec.kind != "netns":
                continue
            ifaces = [(spec.name, spec.mac, spec.ips)]
            (port,), made = plug(spec.name, ifaces, spec.run, tag, self.config.run_dir / "logs")
            log.info("fabric.netns.made" if made else "fabric.netns.attached", peer=spec.name)
            out[spec.name] = port
        return out

    def _on_kernel(self, name: str) -> None:
        assert self.fabric is not None
        loop = asyncio.get_running_loop()
        self.fabric.from_kernel(name, loop.time())
        port = self.fabric.kernel_peers[name]
        # A TAP deleted under us may poll readable for ever: stop watching it (drops from now).
        if port.lost is not None and loop.remove_reader(port.tap.fd):
            log.warning("fabric.netns.lost", peer=name, error=port.lost)
        self._flush()

    async def _loop(self) -> None:
        assert self.fabric is not None
        loop = asyncio.get_running_loop()
        stop = asyncio.ensure_future(self._stopping.wait())
        recv: asyncio.Future[list[tuple[str, Message]]] | None = None
        next_tick = next_stats = loop.time()
        try:
            while not self._stopping.is_set():
                if recv is None:
                    # One receive outlives the tick timeouts: cancelling it could lose a message.
                    recv = asyncio.ensure_future(self.node.recv_batch(self.max_messages))
                timeout = max(0.0, next_tick - loop.time())
                await asyncio.wait(
                    (recv, stop), timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
                now = loop.time()
                if recv.done():
                    batch, recv = recv.result(), None
                    for peer, msg in batch:
                        self._handle(peer, msg, now)
                if now >= next_stats:
                    # The external peers' books, for the failover report (as hostd's VMs').
                    self._log_flows()
                    next_stats = now + self.stats_s
                if now >= next_tick:
                    self.fabric.tick(now)
                    next_tick += self.tick_s
                    if next_tick <= now:  # late (a long batch): skip, do not catch up in a burst
                        next_tick = now + self.tick_s
                self._flush()
        finally:
            for task in (recv, stop):
                if task is not None:
                    task.cancel()
            await asyncio.gather(*(t for t in (recv, stop) if t), return_exceptions=True)

    def _log_flows(self) -> None:
        assert self.fabric is not None
        peers = {name: peer.snapshot() for name, peer in self.fabric.peers.items()}
        now, wall = asyncio.get_running_loop().time(), time.time()
        for snap in peers.values():
            wall_times(snap["flows"], now, wall)
        log.info("fabric.flows", peers=peers, boot=1)  # fabricd is not restarted in a run

    def _handle(self, peer: str, msg: Message, now: float) -> None:
        fabric = self.fabric
        assert fabric is not None
        if isinstance(msg, FrameBatch):
            fabric.stats.batches_in += 1
            # The connection's name, not the batch's own claim: a NIC speaks only for itself.
            fabric.from_nic(peer if msg.src == peer else "", msg.frames, now)
        elif isinstance(msg, ControlRequest):
            fabric.stats.control += 1
            try:
                result = fabric.control(msg.cmd, msg.args, now)
                if msg.cmd == "stats":
                    result["bus"] = asdict(self.node.stats)
                reply = ControlReply(msg.req_id, True, result, "")
            except ValueError as exc:
                reply = ControlReply(msg.req_id, False, {}, str(exc))
            except Exception as exc:  # a bug in one command must not take the fabric down
                log.exception("fabric.control.error", cmd=msg.cmd)
                reply = ControlReply(msg.req_id, False, {}, f"{msg.cmd}: internal error: {exc}")
            self._reply(peer, reply)
        elif isinstance(msg, Fault):
            self.node.apply_fault(msg)
            log.info("fabric.fault", peer=msg.peer, kind=str(msg.kind), seconds=msg.seconds)
        elif not isinstance(msg, Hello):
            fabric.stats.unexpected += 1

    def _reply(self, peer: str, reply: ControlReply) -> None:
        # Answered over our own inbox socket: control clients have no endpoint to connect to.
        assert self.fabric is not None
        if not self.node.reply(peer, reply):
            self.fabric.stats.replies_dropped += 1

    def _on_connect(self, peer: str) -> None:
        fabric = self.fabric
        assert fabric is not None
        if peer in fabric.nics:
            fabric.set_nic_link(peer, True)
            log.info("fabric.nic.up", nic=peer)
            fabric.announce(asyncio.get_running_loop().time())  # a (re)started NIC learns peers
        self._flush()

    def _on_disconnect(self, peer: str) -> None:
        fabric = self.fabric
        assert fabric is not None
        if peer in fabric.nics:
            fabric.set_nic_link(peer, False)
            log.info("fabric.nic.down", nic=peer)

    def _flush(self) -> None:
        """Log station moves, then send each NIC its frames in as few batches as fit."""
        fabric = self.fabric
        assert fabric is not None
        fabric.log_moves()
        for nic, ppid, up in fabric.take_carrier():
            with contextlib.suppress(BusClosed):
                self.node.send(nic, LinkState(self.node.name, ppid, up))
        for nic, frames in fabric.take_output().items():
            for chunk in frame_chunks(frames):
                fabric.stats.batches_out += 1
                try:
                    sent = self.node.send(nic, FrameBatch(self.node.name, chunk))
                except BusClosed:
                    return
                if not sent:
                    fabric.stats.frames_tx_dropped += len(chunk)


async def serve(config: Any, node: BaseNode[Any] | None = None, name: str = NAME) -> None:
    """Run fabricd until SIGINT or SIGTERM (the ``python -m fabricd`` entry point)."""
    daemon = FabricDaemon(config, node or daemon_node("fabricd", config, name))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, daemon.stop)
    try:
        await daemon.run()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
