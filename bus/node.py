"""What every bus node does regardless of transport: stats, faults, peer events, the receive path.

Theory of operation: a node has one inbox (on ZeroMQ a ROUTER bound at its own endpoint) and one
outgoing link per peer (a DEALER whose identity is the node's name), so every received message
carries the sender's name. ``BaseNode`` owns everything above the socket: encoding, counting,
fault injection (drop/partition on send and receive, delay on send with order kept), decoding
untrusted bytes, names of the connections into the inbox, and peer connect/disconnect events. A
transport subclass supplies the non-blocking primitives ``_transmit``, ``_reply``, ``_drain`` and
``_recv_one``, and reports the inbox's connections as ``Sender`` objects.

Names: every connection into the inbox claims a name (on ZeroMQ the ``X-Name`` handshake property
a bus node's DEALER sets, else the routing id a plain client chose), and a bus node claims its
name the moment each of its connections comes up. The first connection heard under a name speaks
for it for as long as that connection stays open: anything from another connection claiming the
same name is refused (counted in ``identity_refused``, logged once per connection as
``bus.identity.refused``), and ``reply`` reaches only the connection that speaks for the name.
Once that connection is closed (the process exited or was killed), the next connection heard
under the name takes it over; for the peers this node links to, each new speaker is logged as
``bus.identity.claimed`` (a warning if that connection had been refused before: it waited for
the peer to go). Nothing here tells a restarted process from another local process that claims
the name first: that takes keys (CURVE on tcp).

Peer events: callbacks registered with ``on_peer_connect`` / ``on_peer_disconnect`` run on the
event loop with the peer's name when the link to that peer completes its handshake or drops
(a crash or close of the peer). If a callback raises, that is our bug: the exception is re-raised
from the next ``recv_batch`` so it cannot be lost inside a background task.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import structlog

from bus.codec import decode_untrusted, encode
from bus.faults import ANY, FaultTable
from bus.messages import Fault, InvalidField, Message, check_name
from wire.malformed import Malformed

log = structlog.get_logger(__name__)

DEFAULT_HWM = 1000  # the ZeroMQ default, in messages
# Bytes one receive batch takes at most (beyond its first message): decoding is done before the
# caller sees the batch, and a burst of big messages (a 100k-record snapshot) must not keep a
# loop from its heartbeats for longer than a peer waits before declaring it hung.
DRAIN_BYTES = 512 * 1024
LinkT = TypeVar("LinkT")
PeerCallback = Callable[[str], None]


class BusClosed(RuntimeError):
    """The node was closed; raised by send/recv on a closed node."""


@dataclass(slots=True)
class BusStats:
    """Counters of one node, in messages (a batch counts once)."""

    sent: int = 0
    received: int = 0
    dropped_full: int = 0  # peer queue at its high-water mark, or no live connection yet
    dropped_unknown_peer: int = 0  # sent to a name never passed to connect()
    dropped_fault: int = 0  # dropped by fault injection, either direction
    # Received from a connection claiming a name another open connection speaks for (its
    # connect-time claim included): see "Names" in the module docstring.
    identity_refused: int = 0
    # Connections refused by CURVE (handshake, unknown key, a name not its key's) and messages
    # refused by the guard (a command only the operator may send): reason -> count.
    auth_denied: dict[str, int] = field(default_factory=dict)
    malformed: dict[str, int] = field(default_factory=dict)  # reason -> count


@dataclass(eq=False, slots=True)
class Sender:
    """One connection into a node's inbox, as its transport knows it (see "Names" above).

    ``claimed`` is the name it speaks as (None if it gave no valid one); ``route`` is how the
    transport answers it (the ROUTER's routing id on ZeroMQ); ``facts`` are what the logs say of
    it (on ipc the connecting process's pid and uid, from the kernel); ``closed`` is set once the
    transport has seen the connection close.
    """

    claimed: str | None
    route: object
    facts: dict[str, object] = field(default_factory=dict)
    closed: bool = False
    refused: int = 0  # its messages refused so far; the first is logged
    denied: str = ""  # why everything it sends is refused (its name is not its key's), if so


RawMessage = tuple[Sender, list[bytes]]  # who sent it, and the message parts after the envelope


class BaseNode(ABC, Generic[LinkT]):
    """Transport-independent part of a bus node; see the module docstring."""

    def __init__(self, name: str, bind_endpoint: str, *, hwm: int = DEFAULT_HWM) -> None:
        try:
            check_name("name", name)
        except InvalidField as exc:
            raise ValueError(f"bad node name {name!r}: {exc}") from None
        if name == ANY:
            raise ValueError(f"bad node name {name!r}: reserved for fault rules on every peer")
        if hwm < 1:
            raise ValueError("hwm must be >= 1")
        self.name = name
        self.bind_endpoint = bind_endpoint
        self.endpoint = bind_endpoint  # the transport replaces it with the bound address
        self.hwm = hwm
        self.stats = BusStats()
        self.faults = FaultTable()
        self._links: dict[str, LinkT] = {}
        self._connected: set[str] = set()
        self._speakers: dict[str, Sender] = {}  # name -> the open connection that speaks for it
        self._on_connect: list[PeerCallback] = []
        self._on_disconnect: list[PeerCallback] = []
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._delayed: dict[str, deque[tuple[float, bytes]]] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._failure: BaseException | None = None
        # Says why a message may not be taken from a peer (None: it may): see bus.guard.
        self.guard: Callable[[str, Message], str | None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    # -- public API ------------------------------------------------------------------------

    def send(self, peer: str, msg: Message) -> bool:
        """Queue ``msg`` to ``peer`` without blocking; False (and counted) if it was dropped."""
        return self.send_raw(peer, encode(msg))

    def send_raw(self, peer: str, data: bytes) -> bool:
        """Queue already-encoded (or deliberately malformed) bytes to ``peer``."""
        if self._closed:
            raise BusClosed(self.name)
        link = self._links.get(peer)
        if link is None:
            self.stats.dropped_unknown_peer += 1
            return False
        if self.faults.active or self._delayed:
            return self._send_with_faults(peer, link, data)
        return self._count_transmit(link, data)

    def reply(self, peer: str, msg: Message) -> bool:
        """Answer ``peer`` on our own inbox socket (it need not be bound: a control client).

        Only the connection that speaks for ``peer`` (see "Names") gets it, never another one
        claiming the name. False, counted as unknown peer, if no connection speaks for it.
        """
        if self._closed:
            raise BusClosed(self.name)
        speaker = self._speakers.get(peer)
        if speaker is not None and self._reply(speaker, encode(msg)):
            self.stats.sent += 1
            return True
        self.stats.dropped_unknown_peer += 1
        return False

    async def recv_batch(self, max_messages: int = 256) -> list[tuple[str, Message]]:
        """Await at least one valid message, then take what is ready, up to ``max_messages``.

        Malformed and fault-dropped messages are counted and skipped; raises ``BusClosed`` if the
        node is (or gets) closed, and re-raises an exception from a peer-event callback.
        """
        if max_messages < 1:
            raise ValueError("max_messages must be >= 1")
        while True:
            self._check_usable()
            raw = self._drain(max_messages, DRAIN_BYTES)
            if not raw:
                try:
                    first = await self._recv_one()
                except asyncio.CancelledError:
                    task = asyncio.current_task()
                    if self._closed and task is not None and not task.cancelling():
                        raise BusClosed(self.name) from None  # closed under us, not cancelled
                    raise
                raw = [first, *self._drain(max_messages - 1, DRAIN_BYTES - _payload_size(first))]
            batch = [got for got in map(self._accept, raw) if got is not None]
            if batch:
                return batch

    def on_peer_connect(self, callback: PeerCallback) -> None:
        """Call ``callback(peer)`` each time the link to ``peer`` becomes usable."""
        self._on_connect.append(callback)

    def on_peer_disconnect(self, callback: PeerCallback) -> None:
        """Call ``callback(peer)`` each time an established link to ``peer`` drops."""
        self._on_disconnect.append(callback)

    def is_connected(self, peer: str) -> bool:
        """True while the link to ``peer`` is established (sends can be queued)."""
        return peer in self._connected

    async def wait_connected(self, peer: str) -> None:
        """Return once the link to ``peer`` is established; wrap in a timeout."""
        if peer not in self._links:
            raise KeyError(f"{peer!r} is not connected; call connect() first")
        if peer in self._connected:
            return
        waiter = self._running_loop().create_future()
        self._waiters.setdefault(peer, []).append(waiter)
        await waiter

    def apply_fault(self, fault: Fault) -> None:
        """Apply a ``Fault`` command with this node's clock."""
        self.faults.apply(fault, self._running_loop().time())

    @property
    def peers(self) -> list[str]:
        """Names passed to ``connect``."""
        return list(self._links)

    # -- transport API and hooks -----------------------------------------------------------

    @abstractmethod
    async def start(self) -> None:
        """Bind this node's inbox at ``bind_endpoint``; the bound address is ``endpoint``."""

    @abstractmethod
    def connect(self, peer: str, endpoint: str) -> None:
        """Open the link to ``peer`` at ``endpoint``; it comes up asynchronously."""

    @abstractmethod
    def disconnect(self, peer: str) -> None:
        """Close the link to ``peer``; later sends to it count as unknown peer."""

    @abstractmethod
    async def close(self) -> None:
        """Close everything (idempotent); pending and later receives raise ``BusClosed``."""

    @abstractmethod
    def _transmit(self, link: LinkT, data: bytes) -> bool:
        """Queue ``data`` on ``link`` without blocking; False if it would block."""

    @abstractmethod
    def _reply(self, sender: Sender, data: bytes) -> bool:
        """Send ``data`` back to ``sender``'s connection over the inbox; False if it cannot go."""

    @abstractmethod
    def _drain(self, max_messages: int, max_bytes: int) -> list[RawMessage]:
        """Take up to ``max_messages`` already-arrived messages without blocking, stopping
        once they hold ``max_bytes`` of payload (always at least one, if any)."""

    @abstractmethod
    async def _recv_one(self) -> RawMessage:
        """Await one message."""

    # -- helpers for subclasses ------------------------------------------------------------

    def _add_link(self, peer: str, link: LinkT) -> None:
        if self._closed:
            raise BusClosed(self.name)
        if self._loop is None:
            raise RuntimeError("start() the node before connect()")
        try:
            check_name("peer", peer)
        except InvalidField as exc:
            raise ValueError(f"bad peer name {peer!r}: {exc}") from None
        if peer in self._links:
            raise ValueError(f"{self.name} is already connected to {peer!r}")
        self._links[peer] = link

    def _remove_link(self, peer: str) -> LinkT | None:
        self._connected.discard(peer)
        self._delayed.pop(peer, None)
        timer = self._timers.pop(peer, None)
        if timer is not None:
            timer.cancel()
        for waiter in self._waiters.pop(peer, []):
            waiter.cancel()
        return self._links.pop(peer, None)

    def _peer_up(self, peer: str) -> None:
        if self._closed or peer not in self._links or peer in self._connected:
            return
        self._connected.add(peer)
        for waiter in self._waiters.pop(peer, []):
            if not waiter.done():
                waiter.set_result(None)
        self._notify(self._on_connect, peer)

    def _peer_down(self, peer: str) -> None:
        if self._closed or peer not in self._connected:
            return
        self._connected.discard(peer)
        self._notify(self._on_disconnect, peer)

    def _sender_closed(self, sender: Sender) -> None:
        """The transport saw ``sender``'s connection close: the name it spoke for is free."""
        sender.closed = True
        if sender.claimed is not None and self._speakers.get(sender.claimed) is sender:
            del self._speakers[sender.claimed]

    def _refresh_senders(self) -> None:
        """Report inbox connections closed since last asked (for transports that learn late)."""

    def _mark_closed(self) -> None:
        """Forget links, timers and waiters; the subclass then closes its sockets."""
        self._closed = True
        self._speakers.clear()
        for peer in list(self._links):
            self._remove_link(peer)

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    # -- internals -------------------------------------------------------------------------

    def _notify(self, callbacks: list[PeerCallback], peer: str) -> None:
        for callback in callbacks:
            try:
                callback(peer)
            except Exception as exc:  # our bug: surface it from recv_batch, do not lose it
                if self._failure is None:
                    self._failure = exc

    def _check_usable(self) -> None:
        if self._failure is not None:
            raise self._failure
        if self._closed:
            raise BusClosed(self.name)

    def _count_transmit(self, link: LinkT, data: bytes) -> bool:
        if self._transmit(link, data):
            self.stats.sent += 1
            return True
        self.stats.dropped_full += 1
        return False

    def _send_with_faults(self, peer: str, link: LinkT, data: bytes) -> bool:
        now = self._running_loop().time()
        deliver, delay = self.faults.decide(peer, now) if self.faults.active else (True, 0.0)
        if not deliver:
            self.stats.dropped_fault += 1
            return False
        queue = self._delayed.get(peer)
        if delay <= 0.0 and not queue:
            return self._count_transmit(link, data)
        # Held messages go out in order: nothing overtakes an earlier delayed message.
        due = now + delay
        if queue is None:
            queue = self._delayed[peer] = deque()
        elif queue[-1][0] > due:
            due = queue[-1][0]
        queue.append((due, data))
        if peer not in self._timers:
            self._timers[peer] = self._running_loop().call_at(due, self._flush_delayed, peer, due)
        return True

    def _flush_delayed(self, peer: str, upto: float) -> None:
        # ``upto`` is the due time the timer was set for: the loop may fire a little early.
        del self._timers[peer]
        queue = self._delayed[peer]
        link = self._links[peer]
        while queue and queue[0][0] <= upto:
            self._count_transmit(link, queue.popleft()[1])
        if queue:
            due = queue[0][0]
            self._timers[peer] = self._running_loop().call_at(due, self._flush_delayed, peer, due)
        else:
            del self._delayed[peer]

    def _accept(self, raw: RawMessage) -> tuple[str, Message] | None:
        sender, parts = raw
        if len(parts) != 1:
            self._malformed("?", "parts")
            return None
        peer = sender.claimed
        if sender.denied:
            sender.refused += 1
            if sender.refused == 1:  # once per connection: a flood cannot fill the logs
                self._auth_denied(sender.denied, str(sender.facts.get("address", "")),
                                  str(sender.facts.get("key", "")), claimed=peer)  # fmt: skip
            return None
        if peer is None:  # ZeroMQ's anonymous ids, an invalid name: not a node
            self._malformed("?", "identity")
            return None
        if self._speakers.get(peer) is not sender and not self._admit(peer, sender):
            return None
        payload = parts[0]
        if not payload:  # a connection's claim of its name (see "Names"): nothing to deliver
            return None
        if self.faults.active and not self.faults.decide(peer, self._running_loop().time())[0]:
            self.stats.dropped_fault += 1
            return None
        try:
            msg = decode_untrusted(payload)
        except Malformed as exc:
            self._malformed(peer, exc.reason, exc.detail)
            return None
        if self.guard is not None and (why := self.guard(peer, msg)) is not None:
            self._auth_denied(why, str(sender.facts.get("address", "")),
                              str(sender.facts.get("key", "")), claimed=peer)  # fmt: skip
            return None
        self.stats.received += 1
        return peer, msg

    def _admit(self, name: str, sender: Sender) -> bool:
        """Whether ``sender`` may speak as ``name`` (it then speaks for it); counts a refusal."""
        speaker = self._speakers.get(name)
        if speaker is not None:
            self._refresh_senders()  # its connection may have closed since we last heard
            speaker = self._speakers.get(name)
        if speaker is not None:
            self.stats.identity_refused += 1
            sender.refused += 1
            if sender.refused == 1:  # once per connection: a flood cannot fill the logs
                log.warning(
                    "bus.identity.refused",
                    node=self.name,
                    claimed=name,
                    conn=sender.facts,
                    speaker=speaker.facts,
                )
            return False
        if sender.closed:  # the last messages of a connection already gone: it speaks for none
            return True
        self._speakers[name] = sender
        if sender.refused:  # it claimed the name while the peer was up, and outlived it
            log.warning(
                "bus.identity.claimed",
                node=self.name,
                claimed=name,
                conn=sender.facts,
                refused=sender.refused,
            )
        elif name in self._links:  # who speaks for each of our peers, after every restart
            log.info("bus.identity.claimed", node=self.name, claimed=name, conn=sender.facts)
        return True

    def _auth_denied(self, reason: str, address: str, key: str, claimed: str | None = None) -> None:
        """A connection or message refused for who it is (see ``auth_denied``): counted, logged."""
        counts = self.stats.auth_denied
        count = counts[reason] = counts.get(reason, 0) + 1
        if count & (count - 1) == 0:  # the 1st, 2nd, 4th...: a flood cannot fill the logs
            log.warning(
                "bus.auth.denied", node=self.name, reason=reason, address=address, key=key,
                claimed=claimed, count=count,
            )  # fmt: skip

    def _malformed(self, peer: str, reason: str, detail: str = "") -> None:
        counts = self.stats.malformed
        count = counts[reason] = counts.get(reason, 0) + 1
        if count & (count - 1) == 0:  # log the 1st, 2nd, 4th, 8th...: a flood cannot fill logs
            # `error` names the field at fault (a policy's `rules[0].dport`, say): the operator's
            # only clue when a NIC sits waiting for a policy it keeps dropping.
            log.warning(
                "bus.drop.malformed",
                node=self.name, peer=peer, reason=reason, error=detail, count=count,
            )  # fmt: skip


def _payload_size(raw: RawMessage) -> int:
    parts = raw[1]
    return len(parts[-1]) if parts else 0
