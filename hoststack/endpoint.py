"""A VM interface as a host stack: ARP, IPv4/IPv6, TCP, UDP and ping, over real frames, sans-I/O.

Theory of operation. `Endpoint` is fed frames with `receive(frame, now)` and driven by
`poll(now)`; both return the frames to send. hostd moves them over the bus; the fabric uses
the same class for its external peers. Nothing here reads a clock or a socket.

Layer 2. A frame to an IP address needs a next-hop MAC: off-subnet destinations go to
`gateway_mac` when one is given; otherwise the static neighbour table (`add_neighbor`, the
only source for IPv6) or the ARP cache answers. An unresolved IPv4 next hop gets a broadcast
ARP request, repeated every `ARP_RETRY` seconds; frames wait for the answer (bounded queue,
built with a zero destination MAC that is patched in: no checksum covers it). After
`ARP_TRIES` unanswered requests the queue is dropped and counted, as Linux does; TCP's own
retransmissions start a fresh resolution.

The ARP cache learns from replies, from requests addressed to us and, for addresses already
known, from any ARP (RFC 826 merge), so a gratuitous ARP after a move updates it.

Layer 4. TCP connections (`hoststack.tcp`) are keyed by (local ip, local port, remote ip, remote
port). A listener books the messages it receives in `sink` and closes when the client does;
a segment that matches no connection and is not a SYN for a listener gets an RST. UDP ports
bound with `bind_udp` book datagrams in `sink` and may echo them. Client flows
(`hoststack.traffic`) are added with `add_flow`. Malformed frames are counted, never raised.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv6Address, IPv6Interface, ip_interface
from typing import Any

from hoststack.tcp import Segment, TcpConfig, TcpConnection, TcpState
from hoststack.traffic import (
    FlowSpec,
    FlowStats,
    SinkBook,
    StreamReader,
    TcpClientFlow,
    UdpClientFlow,
    decode_datagram_untrusted,
)
from wire.build import (
    arp_frame,
    gratuitous_arp,
    icmp_frame,
    packet_ips,
    tcp_frame,
    tcp_reset_for,
    udp_frame,
)
from wire.frames import Packet, parse_frame_untrusted
from wire.malformed import Malformed
from wire.protocols import (
    ETH_ARP,
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_TCP,
    PROTO_UDP,
    TCP_ACK,
    TCP_RST,
    TCP_SYN,
)

IPAddress = IPv4Address | IPv6Address
IPInterface = IPv4Interface | IPv6Interface
ConnKey = tuple[IPAddress, int, IPAddress, int]  # local ip, local port, remote ip, remote port

ARP_RETRY = 1.0  # seconds between ARP requests for one next hop
ARP_TRIES = 3
PENDING_LIMIT = 64  # frames waiting for one next hop
EPHEMERAL = (49152, 65535)  # RFC 6335 dynamic ports
_ZERO_MAC = b"\0" * 6
_ECHO = {PROTO_ICMP: (8, 0), PROTO_ICMPV6: (128, 129)}  # (request, reply) types


@dataclass(slots=True)
class EndpointStats:
    """Frame-level counters of one endpoint."""

    rx_frames: int = 0
    tx_frames: int = 0
    malformed: int = 0  # parse_frame_untrusted refused it
    not_for_us: int = 0  # another MAC or IP (flooded unicast)
    ignored: int = 0  # parsed, but nothing here handles it
    arp_requests: int = 0
    arp_replies: int = 0
    unresolved: int = 0  # frames dropped for want of a next-hop MAC
    rst_sent: int = 0  # to segments matching no connection
    no_port: int = 0  # UDP to a port nothing is bound to
    echo_replies: int = 0  # ICMP
    bad_app: int = 0  # payloads that are not application messages
    server_resets: int = 0  # accepted connections lost to an RST or a give-up


@dataclass(slots=True)
class _Pending:
    """Frames waiting for the MAC of one next hop."""

    frames: list[bytes] = field(default_factory=list)
    tries: int = 0
    next_try: float = 0.0


@dataclass(slots=True)
class _Socket:
    """A connection and the application on it: a client flow, or a listener's reader."""

    conn: TcpConnection
    flow: TcpClientFlow | None = None
    reader: StreamReader | None = None


class Endpoint:
    """One VM interface (or external peer): see the module docstring."""

    def __init__(
        self,
        name: str,
        mac: bytes,
        ips: list[IPAddress | IPInterface],
        gateway_mac: bytes | None = None,
        *,
        tcp_config: TcpConfig | None = None,
        seed: int | str | None = None,
        first_port: int = EPHEMERAL[0],
        stream: int = 0,
    ) -> None:
        """`ips` may carry a prefix (IPv4Interface); a bare address is a /24 or a /64.

        `first_port`: the first ephemeral port to use (a restarted host starts elsewhere, so
        its new connections do not reuse tuples the network still tracks); `stream`: which
        life of the sender this is (its flows number their messages from a new stream)."""
        if len(mac) != 6 or (gateway_mac is not None and len(gateway_mac) != 6):
            raise ValueError("MAC addresses are 6 bytes")
        self.name = name
        self.mac = mac
        self.gateway_mac = gateway_mac
        self.interfaces: list[IPInterface] = [_interface(ip) for ip in ips]
        self.ips: list[IPAddress] = [i.ip for i in self.interfaces]
        self.tcp_config = tcp_config or TcpConfig()
        self.stats = EndpointStats()
        self.sink = SinkBook(midstream=stream > 0)
        self.arp_cache: dict[IPv4Address, bytes] = {}
        self.flows: dict[str, TcpClientFlow | UdpClientFlow] = {}
        self._own = set(self.ips)
        self._static: dict[IPAddress, bytes] = {}
        self._pending: dict[IPv4Address, _Pending] = {}
        self._socks: dict[ConnKey, _Socket] = {}
        self._listeners: set[int] = set()
        self._udp_bound: dict[int, bool] = {}  # port -> echo
        self._udp_flows: dict[int, UdpClientFlow] = {}  # by source port
        self._rng = random.Random(name if seed is None else seed)  # ISNs, reproducibly
        if not EPHEMERAL[0] <= first_port <= EPHEMERAL[1]:
            raise ValueError(f"first_port must be an ephemeral port {EPHEMERAL}")
        self._next_port = first_port
        self.stream = stream

    # --- configuration ----------------------------------------------------------------------

    def announce(self) -> list[bytes]:
        """Gratuitous ARPs for our IPv4 addresses, so the fabric learns where our MAC is."""
        return [gratuitous_arp(self.mac, ip) for ip in self.ips if isinstance(ip, IPv4Address)]

    def knows(self, ip: IPAddress) -> bool:
        """Whether a frame to `ip` goes out at once (its next hop's MAC is known)."""
        if not self._on_link(ip) and self.gateway_mac is not None:
            return True
        return ip in self._static or (isinstance(ip, IPv4Address) and ip in self.arp_cache)

    def arp_probe(self, ip: IPv4Address) -> bytes:
        """One ARP request for `ip`, outside the queue of frames waiting for it: the caller
        paces it (an application waiting for its peer to be reachable)."""
        self.stats.arp_requests += 1
        src = self._source_for(ip)
        assert isinstance(src, IPv4Address)
        return arp_frame(1, self.mac, src, _ZERO_MAC, ip)

    def add_neighbor(self, ip: IPAddress, mac: bytes) -> None:
        """A static neighbour (the only way IPv6 destinations resolve)."""
        self._static[ip] = mac

    def listen_tcp(self, port: int) -> None:
        """Accept TCP connections on `port` (all our addresses) and book what arrives."""
        self._listeners.add(port)

    def bind_udp(self, port: int, echo: bool = False) -> None:
        """Book datagrams arriving on `port`; with `echo`, send each back to its source."""
        self._udp_bound[port] = echo

    def add_flow(self, spec: FlowSpec, now: float) -> FlowStats:
        """Start a client flow from this endpoint; returns its live book."""
        if spec.src != self.name:
            raise ValueError(f"flow {spec.name!r} belongs to {spec.src!r}, not {self.name!r}")
        if spec.name in self.flows:
            raise ValueError(f"flow {spec.name!r} already exists")
        self._source_for(spec.dst)  # fail now, not at the first send
        flow: TcpClientFlow | UdpClientFlow
        if spec.proto == "tcp":
            flow = TcpClientFlow(spec, now, self._open_connection, stream=self.stream)
        else:
            sport = self._ephemeral_port()
            flow = UdpClientFlow(spec, sport, now, stream=self.stream)
            self._udp_flows[sport] = flow
        self.flows[spec.name] = flow
        return flow.stats

    def connections(self) -> dict[ConnKey, TcpState]:
        """Every live connection and its state."""
        return {key: sock.conn.state for key, sock in self._socks.items()}

    def snapshot(self) -> dict[str, Any]:
        """Plain dicts: the flows we send, the flows we sink, our frame counters."""
        return {
            "name": self.name,
            "flows": {name: f.stats.as_dict() for name, f in self.flows.items()},
            "sinks": self.sink.snapshot(),
            "stats": asdict(self.stats),
        }

    # --- the two entry points ---------------------------------------------------------------

    def receive(self, frame: bytes, now: float) -> list[bytes]:
        """Handle one received frame; returns the frames to send in response."""
        self.stats.rx_frames += 1
        try:
            pkt = parse_frame_untrusted(frame)
        except Malformed:
            self.stats.malformed += 1
            return []
        if pkt.dst_mac != self.mac and not pkt.is_broadcast:
            self.stats.not_for_us += 1
            return []
        if pkt.ethertype == ETH_ARP:
            out = self._on_arp(pkt, now)
        elif pkt.family and not pkt.fragment:
            out = self._on_ip(frame, pkt, now)
        else:
            self.stats.ignored += 1
            out = []
        self.stats.tx_frames += len(out)
        return out

    def poll(self, now: float) -> list[bytes]:
        """Run the timers: ARP retries, flows' sends, TCP retransmissions and teardown."""
        out = self._arp_timers(now)
        for flow in self.flows.values():
            if isinstance(flow, TcpClientFlow):
                flow.poll(now)
            else:
                for payload in flow.poll(now):
                    out += self._send_udp(flow.spec.dst, flow.sport, flow.spec.dport, payload, now)
        for key, sock in list(self._socks.items()):
            sock.conn.poll(now)
            out += self._after_segment(key, sock, now)
        self.stats.tx_frames += len(out)
        return out

    # --- ARP and next hops ------------------------------------------------------------------

    def _on_arp(self, pkt: Packet, now: float) -> list[bytes]:
        spa, tpa = IPv4Address(pkt.arp_spa), IPv4Address(pkt.arp_tpa)
        out: list[bytes] = []
        usable = pkt.arp_spa != 0 and not pkt.arp_sha[0] & 1 and pkt.arp_sha != self.mac
        learn = pkt.arp_op == 2 or tpa in self._own or spa in self.arp_cache
        if usable and learn and spa not in self._own:
            self.arp_cache[spa] = pkt.arp_sha
            out += self._flush(spa)
        if pkt.arp_op == 1 and tpa in self._own and usable and spa != tpa:
            out.append(arp_frame(2, self.mac, tpa, pkt.arp_sha, spa))
            self.stats.arp_replies += 1
        return out

    def _flush(self, ip: IPv4Address) -> list[bytes]:
        pending = self._pending.pop(ip, None)
        if pending is None:
            return []
        mac = self.arp_cache[ip]
        return [mac + f[6:] for f in pending.frames]

    def _arp_timers(self, now: float) -> list[bytes]:
        out = []
        for ip, pending in list(self._pending.items()):
            if now < pending.next_try:
                continue
            if pending.tries >= ARP_TRIES:
                self.stats.unresolved += len(pending.frames)
                del self._pending[ip]
            else:
                out.append(self._arp_request(ip, pending, now))
        return out

    def _arp_request(self, ip: IPv4Address, pending: _Pending, now: float) -> bytes:
        pending.tries += 1
        pending.next_try = now + ARP_RETRY
        self.stats.arp_requests += 1
        src = self._source_for(ip)
        assert isinstance(src, IPv4Address)
        return arp_frame(1, self.mac, src, _ZERO_MAC, ip)

    def _on_link(self, ip: IPAddress) -> bool:
        return any(ip in i.network for i in self.interfaces)

    def _send_ip(self, dst: IPAddress, frame: bytes, now: float) -> list[bytes]:
        """Address `frame` (built with a zero destination MAC) to the next hop of `dst`."""
        if not self._on_link(dst) and self.gateway_mac is not None:
            return [self.gateway_mac + frame[6:]]
        mac = self._static.get(dst)
        if mac is None and isinstance(dst, IPv4Address):
            mac = self.arp_cache.get(dst)
        if mac is not None:
            return [mac + frame[6:]]
        if not isinstance(dst, IPv4Address):
            self.stats.unresolved += 1
            return []
        pending = self._pending.get(dst)
        out = []
        if pending is None:
            pending = self._pending[dst] = _Pending()
            out.append(self._arp_request(dst, pending, now))
        if len(pending.frames) < PENDING_LIMIT:
            pending.frames.append(frame)
        else:
            self.stats.unresolved += 1
        return out

    def _source_for(self, dst: IPAddress) -> IPAddress:
        same = [i for i in self.interfaces if i.version == dst.version]
        if not same:
            raise ValueError(f"{self.name} has no IPv{dst.version} address to reach {dst}")
        on_link = [i for i in same if dst in i.network]
        return (on_link or same)[0].ip

    # --- IP ---------------------------------------------------------------------------------

    def _on_ip(self, frame: bytes, pkt: Packet, now: float) -> list[bytes]:
        src, dst = packet_ips(pkt)
        if dst not in self._own:
            self.stats.not_for_us += 1
            return []
        payload = frame[pkt.payload_offset : pkt.payload_offset + pkt.payload_len]
        if pkt.proto == PROTO_TCP:
            return self._on_tcp(pkt, src, dst, payload, now)
        if pkt.proto == PROTO_UDP:
            return self._on_udp(pkt, src, dst, payload, now)
        echo = _ECHO.get(pkt.proto)
        if echo is not None and pkt.icmp_type == echo[0]:
            seq = int.from_bytes(frame[pkt.l4_offset + 6 : pkt.l4_offset + 8], "big")
            reply = icmp_frame(self.mac, _ZERO_MAC, dst, src, echo[1], 0, pkt.sport, seq, payload)
            self.stats.echo_replies += 1
            return self._send_ip(src, reply, now)
        self.stats.ignored += 1
        return []

    # --- UDP --------------------------------------------------------------------------------

    def _on_udp(
        self, pkt: Packet, src: IPAddress, dst: IPAddress, payload: bytes, now: float
    ) -> list[bytes]:
        flow = self._udp_flows.get(pkt.dport)
        if flow is not None and src == flow.spec.dst and pkt.sport == flow.spec.dport:
            flow.on_reply(payload, now)
            return []
        echo = self._udp_bound.get(pkt.dport)
        if echo is None:
            self.stats.no_port += 1
            return []
        try:
            name, seq, _n = decode_datagram_untrusted(payload)
            self.sink.record(name, seq, len(payload), now)
        except Malformed:
            self.stats.bad_app += 1
        if not echo:
            return []
        return self._send_udp(src, pkt.dport, pkt.sport, payload, now, dst)

    def _send_udp(
        self,
        dst: IPAddress,
        sport: int,
        dport: int,
        payload: bytes,
        now: float,
        src: IPAddress | None = None,
    ) -> list[bytes]:
        src = src or self._source_for(dst)
        return self._send_ip(
            dst, udp_frame(self.mac, _ZERO_MAC, src, dst, sport, dport, payload), now
        )

    # --- TCP --------------------------------------------------------------------------------

    def _on_tcp(
        self, pkt: Packet, src: IPAddress, dst: IPAddress, payload: bytes, now: float
    ) -> list[bytes]:
        key: ConnKey = (dst, pkt.dport, src, pkt.sport)
        seg = Segment(pkt.tcp_flags, pkt.seq, pkt.ack, payload, pkt.window)
        sock = self._socks.get(key)
        is_syn = pkt.tcp_flags & (TCP_SYN | TCP_ACK | TCP_RST) == TCP_SYN
        if sock is not None and is_syn and sock.conn.state in (TcpState.CLOSED, TcpState.TIME_WAIT):
            # A new incarnation of the same four-tuple (RFC 9293 §3.10.7.4 TIME-WAIT SYN).
            del self._socks[key]
            sock = None
        if sock is None:
            if is_syn and pkt.dport in self._listeners:
                conn = TcpConnection(self._rng.getrandbits(32), self.tcp_config)
                conn.listen()
                sock = self._socks[key] = _Socket(conn, reader=StreamReader())
            elif pkt.tcp_flags & TCP_RST or pkt.dst_mac != self.mac:
                self.stats.ignored += 1  # never answer an RST, nor a frame sent to all
                return []
            else:
                self.stats.rst_sent += 1
                return [tcp_reset_for(pkt)]
        sock.conn.receive(seg, now)
        return self._after_segment(key, sock, now)

    def _after_segment(self, key: ConnKey, sock: _Socket, now: float) -> list[bytes]:
        """Run the application on a connection, then frame what it has to send."""
        conn = sock.conn
        if sock.flow is not None:
            sock.flow.observe(now)
        elif sock.reader is not None:
            was_broken = sock.reader.broken
            for name, seq, length in sock.reader.feed(conn.read()):
                self.sink.record(name, seq, length, now)
            if sock.reader.broken and not was_broken:
                self.stats.bad_app += 1
            if conn.state is TcpState.CLOSE_WAIT:  # the client is done: so are we
                conn.close(now)
        out: list[bytes] = []
        local, lport, remote, rport = key
        for s in conn.take_output():
            frame = tcp_frame(
                self.mac,
                _ZERO_MAC,
                local,
                remote,
                lport,
                rport,
                s.flags,
                s.seq,
                s.ack,
                s.payload,
                s.window,
            )
            out += self._send_ip(remote, frame, now)
        if conn.state is TcpState.CLOSED:
            if sock.reader is not None and conn.reset:
                self.stats.server_resets += 1
            self._socks.pop(key, None)
        return out

    def _open_connection(self, flow: TcpClientFlow, now: float) -> TcpConnection:
        """The opener a TCP client flow calls to start a connection."""
        dst = flow.spec.dst
        src = self._source_for(dst)
        key: ConnKey = (src, self._ephemeral_port(), dst, flow.spec.dport)
        conn = TcpConnection(self._rng.getrandbits(32), self.tcp_config)
        self._socks[key] = _Socket(conn, flow=flow)
        conn.connect(now)
        return conn

    def _ephemeral_port(self) -> int:
        used = {k[1] for k in self._socks} | set(self._udp_flows) | set(self._udp_bound)
        lo, hi = EPHEMERAL
        for _ in range(hi - lo + 1):
            port = self._next_port
            self._next_port = lo if port >= hi else port + 1
            if port not in used and port not in self._listeners:
                return port
        raise RuntimeError(f"{self.name}: no free ephemeral port")


def _interface(ip: IPAddress | IPInterface) -> IPInterface:
    if isinstance(ip, IPv4Interface | IPv6Interface):
        return ip
    return ip_interface(f"{ip}/{24 if ip.version == 4 else 64}")
