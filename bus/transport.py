"""The real bus: ZeroMQ (pyzmq, ``zmq.asyncio``), one ROUTER inbox plus one DEALER per peer.

Socket choices (libzmq docs, pyzmq source):
- Sends use ``DONTWAIT`` on a synchronous shadow of the DEALER: ``zmq.Again`` means the peer's
  queue is at its high-water mark or, with ``IMMEDIATE``, that no connection is up; the message
  is dropped and counted rather than queued towards a dead peer.
- The ZeroMQ fd is edge-triggered: ``recv_batch`` awaits one message on the asyncio ROUTER, then
  drains with synchronous ``NOBLOCK`` reads until ``Again`` (one awaited recv per message is
  about ten times slower).
- ``LINGER=0`` on every socket so close never blocks on unsent data; ``ROUTER_HANDOVER`` so a
  restarted peer that reconnects under the same name replaces its dead connection;
  ``MAXMSGSIZE`` disconnects a peer sending more than the codec accepts, before we allocate it.
- Disconnects come from a socket monitor (``EVENT_DISCONNECTED``) on each DEALER; the link is up
  from ``EVENT_HANDSHAKE_SUCCEEDED``, which is when ``IMMEDIATE`` starts accepting messages.
- With ``curve`` keys, tcp endpoints use CURVE: the ROUTER is a CURVE server whose ZAP handler
  (``AsyncioAuthenticator``, one per context, so the node owns its context) admits only keys in
  the key directory, under the ``ZAP_DOMAIN`` domain; a DEALER to a tcp peer is a CURVE client
  that pins the peer's public key. ipc endpoints rely on file permissions instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

import structlog
import zmq
import zmq.asyncio
from zmq.auth.asyncio import AsyncioAuthenticator
from zmq.utils.monitor import parse_monitor_message

from bus.codec import MAX_MESSAGE_BYTES
from bus.curve import ZAP_DOMAIN, CurveKeys
from bus.node import DEFAULT_HWM, BaseNode, BusClosed, BusStats, RawMessage

__all__ = ["BusClosed", "BusNode", "BusStats", "ipc_path"]

log = structlog.get_logger(__name__)

_MONITOR_EVENTS = (
    zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)
_MAX_IPC_PATH = 107  # sun_path is 108 bytes on Linux, including the NUL


def ipc_path(endpoint: str) -> Path | None:
    """The filesystem path of an ``ipc://`` endpoint (None for tcp or abstract sockets)."""
    if not endpoint.startswith("ipc://") or endpoint.startswith("ipc://@"):
        return None
    return Path(endpoint.removeprefix("ipc://"))


class _Link:
    """One outgoing connection: the DEALER, its sync shadow for sends, its monitor task."""

    __slots__ = ("dealer", "monitor", "sender", "task")

    def __init__(self, dealer: zmq.asyncio.Socket, monitor: zmq.asyncio.Socket) -> None:
        self.dealer = dealer
        self.monitor = monitor
        self.sender = zmq.Socket.shadow(dealer.underlying)  # non-blocking sends without futures
        self.task: asyncio.Task[None] | None = None


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
        self._auth: AsyncioAuthenticator | None = None

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
        router.setsockopt(zmq.ROUTER_HANDOVER, 1)
        router.setsockopt(zmq.ROUTER_MANDATORY, 1)  # reply() to an unknown peer fails loudly
        router.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
        if self._curve is not None and _is_tcp(self.bind_endpoint):
            self._auth = AsyncioAuthenticator(self._ctx)
            self._auth.start()
            self._auth.configure_curve(domain=ZAP_DOMAIN, location=self._curve.directory)
            public, secret = self._curve.pair(self.name)
            router.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN.encode())
            router.setsockopt(zmq.CURVE_SERVER, 1)
            router.setsockopt(zmq.CURVE_PUBLICKEY, public)
            router.setsockopt(zmq.CURVE_SECRETKEY, secret)
        path = ipc_path(self.bind_endpoint)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        router.bind(self.bind_endpoint)
        self.endpoint = router.getsockopt_string(zmq.LAST_ENDPOINT)
        if path is not None:
            self._ipc_inode = path.stat().st_ino
        self._receiver = zmq.Socket.shadow(router.underlying)

    def connect(self, peer: str, endpoint: str) -> None:
        """Open the link to ``peer`` at ``endpoint``; it comes up asynchronously (see events)."""
        if self._closed:
            raise BusClosed(self.name)
        if self._ctx is None:
            raise RuntimeError("start() the node before connect()")
        dealer = self._ctx.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.setsockopt(zmq.IDENTITY, self.name.encode())
        dealer.setsockopt(zmq.IMMEDIATE, 1)
        dealer.setsockopt(zmq.SNDHWM, self.hwm)
        dealer.setsockopt(zmq.RCVHWM, self.hwm)
        dealer.setsockopt(zmq.RECONNECT_IVL, self._reconnect_ivl_ms)
        if self._curve is not None and _is_tcp(endpoint):
            public, secret = self._curve.pair(self.name)
            dealer.setsockopt(zmq.CURVE_SERVERKEY, self._curve.public(peer))
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
        link.task = asyncio.create_task(self._watch(peer, monitor), name=f"bus-monitor-{peer}")

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
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._router is not None:
            self._router.close(linger=0)
        if self._auth is not None:
            self._auth.stop()
        if self._own_context and self._ctx is not None:
            self._ctx.destroy(linger=0)
        self._remove_ipc_file()

    # -- transport hooks -------------------------------------------------------------------

    def _transmit(self, link: _Link, data: bytes) -> bool:
        try:
            link.sender.send(data, zmq.DONTWAIT, copy=False)
        except zmq.Again:
            return False
        return True

    def _reply(self, peer: str, data: bytes) -> bool:
        receiver = self._receiver
        if receiver is None:
            return False
        try:
            receiver.send_multipart([peer.encode(), data], zmq.DONTWAIT, copy=False)
        except zmq.ZMQError:  # EHOSTUNREACH (unknown peer, ROUTER_MANDATORY) or Again (full)
            return False
        return True

    def _drain(self, max_messages: int, max_bytes: int) -> list[RawMessage]:
        receiver = self._receiver
        if receiver is None:
            raise RuntimeError("start() the node before receiving")
        out: list[RawMessage] = []
        while len(out) < max_messages and max_bytes > 0:
            try:
                msg = receiver.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            out.append(msg)
            max_bytes -= len(msg[-1])
        return out

    async def _recv_one(self) -> RawMessage:
        assert self._router is not None  # _drain checked start() already
        return await self._router.recv_multipart()

    # -- internals -------------------------------------------------------------------------

    async def _watch(self, peer: str, monitor: zmq.asyncio.Socket) -> None:
        while True:
            try:
                event = parse_monitor_message(await monitor.recv_multipart())["event"]
            except zmq.ZMQError:
                return  # the monitor socket was closed under us: the link is going away
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._peer_up(peer)
            elif event == zmq.EVENT_DISCONNECTED:
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


def _close_link(link: _Link) -> None:
    if link.task is not None:
        link.task.cancel()
    with contextlib.suppress(zmq.ZMQError):
        link.dealer.disable_monitor()
    link.monitor.close(linger=0)
    link.dealer.close(linger=0)
