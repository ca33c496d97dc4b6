"""The real bus: ZeroMQ (pyzmq, ``zmq.asyncio``), one ROUTER inbox plus one DEALER per peer.

Socket choices (libzmq docs, pyzmq source):
- Sends use ``DONTWAIT`` on a synchronous shadow of the DEALER: ``zmq.Again`` means the peer's
  queue is at its high-water mark or, with ``IMMEDIATE``, that no connection is up; the message
  is dropped and counted rather than queued towards a dead peer.
- The ZeroMQ fd is edge-triggered: ``recv_batch`` awaits one message on the asyncio ROUTER, then
  drains with synchronous ``NOBLOCK`` reads until ``Again`` (one awaited recv per message is
  about ten times slower).
- ``LINGER=0`` on every socket so close never blocks on unsent data; ``MAXMSGSIZE`` disconnects
  a peer sending more than the codec accepts, before we allocate it.
- Disconnects come from a socket monitor (``EVENT_DISCONNECTED``) on each DEALER; the link is up
  from ``EVENT_HANDSHAKE_SUCCEEDED``, which is when ``IMMEDIATE`` starts accepting messages.
- On tcp, ZMTP heartbeats (``HEARTBEAT_IVL``/``HEARTBEAT_TIMEOUT``, in libzmq's I/O thread): a
  peer machine that vanishes (cable cut, power off) sends no FIN, and without them its
  connection would look up for TCP's own timeouts (minutes); with them it drops within
  ``TCP_HEARTBEAT_TIMEOUT_MS`` and reconnects when the machine is back.

Names (the policy is ``BaseNode``'s, "Names"; libzmq 4.3 ``router.cpp``, ``identify_peer``):
- With ``ROUTER_HANDOVER`` a second connection under a routing id in use takes the id over and
  the first one's pipe is renamed and terminated while its TCP/unix connection stays up: the
  real peer is cut off for good and never told. Without it, the second connection's routing id
  frame is read and dropped and its pipe is parked as anonymous, never read again (even after
  the first one leaves) and reported by nothing: no monitor event, and ``ROUTER_NOTIFY`` is a
  draft option (EINVAL in this build) whose notice would sit unread in that parked pipe too.
- So a bus node's DEALER sets no routing id: the ROUTER gives each connection its own, and the
  name travels as the ``X-Name`` handshake property (``ZMQ_METADATA``), which every received
  message carries. The inbox sees every connection and its claim, and decides itself. A plain
  client (the control client) that sets a routing id claims that id. ``ROUTER_HANDOVER`` stays
  off, so two connections that set one routing id still cannot take each other's route (the
  second is parked by libzmq, unseen).
- Which connection a message came from, and when it closed: each message's metadata has the
  connection's fd (``ZMQ_SRCFD``) and ``Peer-Address`` (on ipc with the kernel's
  ``SO_PEERCRED`` uid, gid and pid appended); a monitor on the ROUTER reports ``ACCEPTED`` and
  ``DISCONNECTED`` with the fd. libzmq emits ``DISCONNECTED`` before it closes the fd, so read
  in order the events say which connection holds each fd; they are read up to date before any
  decision that depends on them.
- tcp endpoints always use CURVE, and a node without keys refuses to bind or connect one (never
  silent plaintext): the ROUTER is a CURVE server whose ZAP handler (``ClusterAuthenticator``,
  one per context, so the node owns its context) admits only keys in the key directory, under
  the ``ZAP_DOMAIN`` domain, and names the key's owner as the user id every message carries; a
  connection whose claimed name is not its key's is refused (``bus.auth.denied``, reason
  ``name``). A DEALER to a tcp peer is a CURVE client that pins the peer's public key. A
  connection that fails the handshake (no CURVE at all, garbage) is counted and logged too.
  ipc endpoints rely on file permissions instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
from pathlib import Path

import structlog
import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from bus.codec import MAX_MESSAGE_BYTES
from bus.curve import USER_ID, ZAP_DOMAIN, ClusterAuthenticator, CurveKeys, speaks_as
from bus.messages import check_name
from bus.node import DEFAULT_HWM, BaseNode, BusClosed, BusStats, RawMessage, Sender
from wire.malformed import Malformed

__all__ = ["BusClosed", "BusNode", "BusStats", "ipc_path"]

log = structlog.get_logger(__name__)

_MONITOR_EVENTS = (
    zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)
_INBOX_EVENTS = zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED
# A client that fails the CURVE handshake before ZAP is asked (no CURVE at all, garbage).
_HANDSHAKE_FAILED = zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
NAME_PROPERTY = "X-Name"  # the handshake property a bus node's connections claim its name with
_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
_MAX_IPC_PATH = 107  # sun_path is 108 bytes on Linux, including the NUL
TCP_HEARTBEAT_IVL_MS = 200
TCP_HANDSHAKE_IVL_MS = 2000  # a real peer's CURVE handshake takes milliseconds, even loaded
TCP_HEARTBEAT_TIMEOUT_MS = 1000  # several lost pings: a busy Python loop does not delay them


def ipc_path(endpoint: str) -> Path | None:
    """The filesystem path of an ``ipc://`` endpoint (None for tcp or abstract sockets)."""
    if not endpoint.startswith("ipc://") or endpoint.startswith("ipc://@"):
        return None
    return Path(endpoint.removeprefix("ipc://"))


class _Link:
    """One outgoing connection: the DEALER, its sync shadow for sends, its monitor task."""

    __slots__ = ("dealer", "monitor", "sender", "task", "up")

    def __init__(self, dealer: zmq.asyncio.Socket, monitor: zmq.asyncio.Socket) -> None:
        self.dealer = dealer
        self.monitor = monitor
        # a sync shadow: non-blocking sends without futures
        self.sender: zmq.Socket[bytes] = zmq.Socket.shadow(dealer.underlying)
        self.task: asyncio.Task[None] | None = None
        # As the monitor last said. libzmq alone is not enough: a send within about 1 ms of the
        # previous one skips its pending commands, so it can still queue into a pipe whose
        # connection is gone (and the message is lost, not counted).
        self.up = False


class BusNode(BaseNode[_Link]):
    """A process's bus endpoint over ZeroMQ; ``bind_endpoint`` is ``ipc://path`` or ``tcp://``.

    ``tcp://host:*`` binds an ephemeral port; ``endpoint`` then holds the bound address.
    """

    def __init__(
        self,
        name: str,
        bind_endpoint: str,
        *,
        hwm: int = DEFAULT_HWM,
        reconnect_ivl_ms: int = 100,
        context: zmq.asyncio.Context | None = None,
        curve: CurveKeys | None = None,
    ) -> None:
        super().__init__(name, bind_endpoint, hwm=hwm)
        if curve is not None and context is not None:
            raise ValueError("a CURVE node owns its context (one ZAP handler per context)")
        if curve is None and _is_tcp(bind_endpoint):
            raise ValueError(
                f"{name}: tcp endpoint {bind_endpoint} needs CURVE keys (no plaintext)"
            )
        path = ipc_path(bind_endpoint)
        if path is not None and len(os.fsencode(path)) > _MAX_IPC_PATH:
            raise ValueError(f"ipc path too long for a unix socket: {path}")
        self._reconnect_ivl_ms = reconnect_ivl_ms
        self._own_context = context is None
        self._ctx = context
        self._router: zmq.asyncio.Socket | None = None
        self._receiver: zmq.Socket[bytes] | None = None
        self._ipc_inode: int | None = None
        self._curve = curve
        self._auth: ClusterAuthenticator | None = None
        self._ipc = bind_endpoint.startswith("ipc://")
        self._events: zmq.asyncio.Socket | None = None  # the ROUTER's monitor
        self._event_reader: zmq.Socket[bytes] | None = None
        self._events_task: asyncio.Task[None] | None = None
        self._open: dict[int, list[Sender]] = {}  # fd -> senders heard on its open connection
        self._senders: dict[bytes, Sender] = {}  # routing id -> its sender, while open

    async def start(self) -> None:
        """Bind the ROUTER inbox (creating an ipc socket's parent directories)."""
        if self._closed:
            raise BusClosed(self.name)
        if self._router is not None:
            raise RuntimeError(f"{self.name} is already started")
        self._running_loop()
        if self._ctx is None:
            self._ctx = zmq.asyncio.Context()
        router = self._ctx.socket(zmq.ROUTER)
        self._router = router  # set first so close() cleans up even if bind fails
        router.setsockopt(zmq.LINGER, 0)
        router.setsockopt(zmq.RCVHWM, self.hwm)
        router.setsockopt(zmq.SNDHWM, self.hwm)
        router.setsockopt(zmq.ROUTER_HANDOVER, 0)  # never hand a routing id in use over
        router.setsockopt(zmq.ROUTER_MANDATORY, 1)  # reply() to an unknown peer fails loudly
        router.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
        events = _INBOX_EVENTS
        if _is_tcp(self.bind_endpoint):
            _heartbeat(router)
            # Anyone who reaches the port may connect; one who never finishes the handshake
            # holds an fd for libzmq's default 30 s: opened faster, they exhaust our fds.
            router.setsockopt(zmq.HANDSHAKE_IVL, TCP_HANDSHAKE_IVL_MS)
        if self._curve is not None and _is_tcp(self.bind_endpoint):
            public, secret = self._curve.pair(self.name)  # first: a missing key starts nothing
            self._auth = ClusterAuthenticator(self._ctx, self._curve, self._auth_denied)
            self._auth.start()
            events |= _HANDSHAKE_FAILED
            router.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN.encode())
            router.setsockopt(zmq.CURVE_SERVER, 1)
            router.setsockopt(zmq.CURVE_PUBLICKEY, public)
            router.setsockopt(zmq.CURVE_SECRETKEY, secret)
        # Monitored before bind, so no connection is accepted unseen.
        self._events = router.get_monitor_socket(events)
        self._event_reader = zmq.Socket.shadow(self._events.underlying)
        path = ipc_path(self.bind_endpoint)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        router.bind(self.bind_endpoint)
        self.endpoint = router.getsockopt_string(zmq.LAST_ENDPOINT)
        if path is not None:
            # zmq makes it 0777 less the umask (0700 at best): only the owner may connect.
            os.chmod(path, 0o600)
            self._ipc_inode = path.stat().st_ino
        self._receiver = zmq.Socket.shadow(router.underlying)
        self._events_task = asyncio.create_task(
            self._watch_inbox(self._events), name=f"bus-inbox-{self.name}"
        )

    def connect(self, peer: str, endpoint: str) -> None:
        """Open the link to ``peer`` at ``endpoint``; it comes up asynchronously (see events)."""
        if self._closed:
            raise BusClosed(self.name)
        if self._ctx is None:
            raise RuntimeError("start() the node before connect()")
        if self._curve is None and _is_tcp(endpoint):
            raise ValueError(f"{self.name}: tcp link to {peer} needs CURVE keys (no plaintext)")
        dealer = self._ctx.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        # No routing id (see "Names"): the peer's ROUTER gives each connection its own.
        dealer.setsockopt(zmq.METADATA, f"{NAME_PROPERTY}:{self.name}".encode())
        dealer.setsockopt(zmq.IMMEDIATE, 1)
        dealer.setsockopt(zmq.SNDHWM, self.hwm)
        dealer.setsockopt(zmq.RCVHWM, self.hwm)
        dealer.setsockopt(zmq.RECONNECT_IVL, self._reconnect_ivl_ms)
        if _is_tcp(endpoint):
            _heartbeat(dealer)
        if self._curve is not None and _is_tcp(endpoint):
            public, secret = self._curve.pair(self.name)
            try:
                dealer.setsockopt(zmq.CURVE_SERVERKEY, self._curve.public(peer))
            except BaseException:
                dealer.close(linger=0)
                raise
            dealer.setsockopt(zmq.CURVE_PUBLICKEY, public)
            dealer.setsockopt(zmq.CURVE_SECRETKEY, secret)
        monitor = dealer.get_monitor_socket(_MONITOR_EVENTS)
        link = _Link(dealer, monitor)
        try:
            self._add_link(peer, link)
        except BaseException:
            _close_link(link)
            raise
        dealer.connect(endpoint)
        link.task = asyncio.create_task(self._watch(peer, link), name=f"bus-monitor-{peer}")

    def disconnect(self, peer: str) -> None:
        """Close the link to ``peer``; later sends to it count as unknown peer."""
        link = self._remove_link(peer)
        if link is not None:
            _close_link(link)

    async def close(self) -> None:
        """Close every socket with linger 0 and remove our ipc socket file. Idempotent."""
        if self._closed:
            return
        links = list(self._links.values())
        self._mark_closed()
        tasks = [link.task for link in links if link.task is not None]
        for link in links:
            _close_link(link)
        if self._events_task is not None:
            self._events_task.cancel()
            tasks.append(self._events_task)
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._router is not None:
            if self._events is not None:
                with contextlib.suppress(zmq.ZMQError):
                    self._router.disable_monitor()
                self._events.close(linger=0)
            self._router.close(linger=0)
        self._open.clear()
        self._senders.clear()
        if self._auth is not None:
            self._auth.stop()
        if self._own_context and self._ctx is not None:
            self._ctx.destroy(linger=0)
        self._remove_ipc_file()

    # -- transport hooks -------------------------------------------------------------------

    def _transmit(self, link: _Link, data: bytes) -> bool:
        if not link.up:
            return False
        try:
            link.sender.send(data, zmq.DONTWAIT, copy=False)
        except zmq.Again:
            return False
        return True

    def _reply(self, sender: Sender, data: bytes) -> bool:
        receiver = self._receiver
        if receiver is None or not isinstance(sender.route, bytes):
            return False
        try:
            receiver.send_multipart([sender.route, data], zmq.DONTWAIT, copy=False)
        except zmq.ZMQError:  # EHOSTUNREACH (gone, ROUTER_MANDATORY) or Again (full)
            return False
        return True

    def _drain(self, max_messages: int, max_bytes: int) -> list[RawMessage]:
        receiver = self._receiver
        if receiver is None:
            raise RuntimeError("start() the node before receiving")
        out: list[RawMessage] = []
        while len(out) < max_messages and max_bytes > 0:
            try:
                envelope = receiver.recv(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            raw = self._take(envelope)
            out.append(raw)
            max_bytes -= len(raw[1][-1]) if raw[1] else 0
        return out

    async def _recv_one(self) -> RawMessage:
        assert self._router is not None  # _drain checked start() already
        return self._take(await self._router.recv(copy=False))

    def _refresh_senders(self) -> None:
        reader = self._event_reader
        if reader is None or self._closed:
            return
        while True:
            try:
                event = reader.recv_multipart(zmq.NOBLOCK)
            except zmq.ZMQError:  # Again: up to date (or the monitor closed: the node is closing)
                return
            self._on_inbox_event(event)

    # -- internals -------------------------------------------------------------------------

    def _take(self, envelope: zmq.Frame) -> RawMessage:
        """The rest of the message ``envelope`` (its routing id) starts, and who sent it."""
        assert self._receiver is not None
        parts: list[bytes] = []
        frame = envelope
        while frame.more:  # the parts of one message arrive together: no waiting here
            frame = self._receiver.recv(zmq.NOBLOCK, copy=False)
            parts.append(frame.bytes)
        route = envelope.bytes
        sender = self._senders.get(route)
        if sender is None:
            sender = self._identify(route, envelope)
        return sender, parts

    def _identify(self, route: bytes, frame: zmq.Frame) -> Sender:
        """A ``Sender`` for a connection heard from for the first time, from its metadata."""
        self._refresh_senders()  # its connection's ACCEPTED was emitted before its messages
        claimed = _property(frame, NAME_PROPERTY)
        if claimed is None and route[:1] not in (b"", b"\x00"):  # a routing id it chose itself
            with contextlib.suppress(UnicodeDecodeError):
                claimed = route.decode()
        if claimed is not None:
            try:
                check_name("name", claimed)
            except Malformed:
                claimed = None
        fd = _source_fd(frame)
        facts: dict[str, object] = {"fd": fd}
        denied = ""
        if self._auth is not None:  # a CURVE inbox: the name must be the key's
            key_name = _property(frame, USER_ID) or ""
            facts["key"] = key_name
            if claimed is None or not speaks_as(key_name, claimed):
                denied = "name"
        address = _property(frame, "Peer-Address") or ""
        pid: int | None = None
        if self._ipc:  # "<address>:<uid>:<gid>:<pid>", from SO_PEERCRED when it was accepted
            _, uid, _, pid_field = (":::" + address).rsplit(":", 3)
            if uid.isdigit() and pid_field.isdigit():
                pid = int(pid_field)
                facts |= {"pid": pid, "uid": int(uid)}
        else:
            facts["address"] = address
        senders = self._open.get(fd) if fd is not None else None
        # Its first message can be read after its connection closed and another took the fd:
        # the kernel says whose the fd is now (ipc; tcp has no such check until CURVE).
        if senders is not None and pid is not None and fd is not None and _peer_pid(fd) != pid:
            senders = None
        sender = Sender(claimed, route, facts, closed=senders is None, denied=denied)
        if senders is not None:
            senders.append(sender)
            self._senders[route] = sender
        return sender

    def _on_inbox_event(self, event: list[bytes]) -> None:
        parsed = parse_monitor_message(event)
        if parsed["event"] & _HANDSHAKE_FAILED:  # its value is an errno, not an fd
            self._auth_denied("handshake", "", "")
            return
        fd = int(parsed["value"])
        if parsed["event"] == zmq.EVENT_ACCEPTED:
            gone = self._open.get(fd)  # its DISCONNECTED never came (libzmq closed it quietly)
            self._open[fd] = []
        else:
            gone = self._open.pop(fd, None)
        for sender in gone or ():
            route = sender.route
            if isinstance(route, bytes) and self._senders.get(route) is sender:
                del self._senders[route]
            self._sender_closed(sender)

    async def _watch_inbox(self, events: zmq.asyncio.Socket) -> None:
        # Keeps names freed and the fd table small while nothing is received. It only waits:
        # an awaited recv would take an event off the socket in a loop callback, out of sight
        # of a _refresh_senders() that runs before this task resumes.
        while True:
            try:
                await events.poll()
            except zmq.ZMQError:
                return  # closed under us: the node is closing
            self._refresh_senders()

    async def _watch(self, peer: str, link: _Link) -> None:
        while True:
            try:
                event = parse_monitor_message(await link.monitor.recv_multipart())["event"]
            except zmq.ZMQError:
                return  # the monitor socket was closed under us: the link is going away
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                # Claim our name on the new connection at once (an empty message), so that a
                # connection claiming it later is refused even while we have nothing to say.
                with contextlib.suppress(zmq.Again):
                    link.sender.send(b"", zmq.DONTWAIT)
                link.up = True
                self._peer_up(peer)
            elif event == zmq.EVENT_DISCONNECTED:
                link.up = False
                self._peer_down(peer)
            elif event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                log.warning("bus.auth.failed", node=self.name, peer=peer)

    def _remove_ipc_file(self) -> None:
        # Only our own file: a restarted process may already have bound a new one at this path.
        path = ipc_path(self.bind_endpoint)
        if path is None or self._ipc_inode is None:
            return
        with contextlib.suppress(FileNotFoundError):
            if path.stat().st_ino == self._ipc_inode:
                path.unlink()


def _is_tcp(endpoint: str) -> bool:
    return endpoint.startswith("tcp://")


def _heartbeat(sock: zmq.asyncio.Socket) -> None:
    """ZMTP pings on every connection of `sock`; one silent for the timeout is dropped."""
    sock.setsockopt(zmq.HEARTBEAT_IVL, TCP_HEARTBEAT_IVL_MS)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, TCP_HEARTBEAT_TIMEOUT_MS)


def _property(frame: zmq.Frame, name: str) -> str | None:
    """A metadata property of a received message, None if it has none (or not UTF-8)."""
    try:
        value = frame.get(name)
    except (zmq.ZMQError, UnicodeDecodeError):
        return None
    return value if isinstance(value, str) else None  # the int ones are not properties


def _source_fd(frame: zmq.Frame) -> int | None:
    """The fd of the connection a message came in on (deprecated in libzmq, still there)."""
    try:
        fd = frame.get(zmq.SRCFD)
    except zmq.ZMQError:
        return None
    return fd if isinstance(fd, int) and fd >= 0 else None


def _peer_pid(fd: int) -> int | None:
    """The pid the kernel recorded for the unix socket at ``fd`` (None: gone, or not one)."""
    try:
        # fromfd dups: libzmq keeps its own fd, and closing ours leaves the connection alone.
        with socket.fromfd(fd, socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            pid, _, _ = _UCRED.unpack(
                sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
            )
    except OSError:
        return None
    return int(pid)


def _close_link(link: _Link) -> None:
    if link.task is not None:
        link.task.cancel()
    with contextlib.suppress(zmq.ZMQError):
        link.dealer.disable_monitor()
    link.monitor.close(linger=0)
    link.dealer.close(linger=0)
