"""An in-memory bus with the same API as ``bus.transport.BusNode``, for one-process tests.

``MemoryNetwork`` plays the role of the kernel and ZeroMQ: it maps endpoints to started nodes.
Messages are still encoded and decoded (so codec bugs show), links come up and go down through
the same peer events (one loop iteration later, as a socket monitor would report them), sends
before a link is up are dropped as with ``IMMEDIATE``, and each inbox holds ``hwm`` messages.

Each time a link comes up it is a new connection into the target's inbox that claims the linking
node's name at once, as a bus node's DEALER does; the target applies the same rules to names as
on ZeroMQ (``bus.node``, "Names"), so a second live node linking under a name already heard is
refused and counted there, and gets the name only once the first one's connection is closed.

    net = MemoryNetwork()
    host, nic1 = net.node("h1"), net.node("nic1")
    await host.start(); await nic1.start()
    host.connect("nic1", nic1.endpoint)
    await asyncio.wait_for(host.wait_connected("nic1"), 1)
    net.kill("nic1")  # a crash: nodes linked to nic1 get their disconnect callbacks
"""

from __future__ import annotations

import asyncio
import random
from collections import deque

from bus.node import DEFAULT_HWM, BaseNode, BusClosed, BusStats, RawMessage, Sender

__all__ = ["BusClosed", "BusStats", "MemoryNetwork", "MemoryNode", "Scripted"]

_CLAIM = [b""]  # the parts of a connection's claim: an empty message, told apart by identity


class _Connection:
    """One link's connection from ``src`` into the inbox of ``dst``, the node bound at its end.

    ``sender`` is how ``dst`` sees ``src`` (its ``route`` is this connection, for replies);
    ``replies`` is how ``src`` sees the replies ``dst`` sends back on it.
    """

    __slots__ = ("dst", "replies", "sender", "src")

    def __init__(self, src: MemoryNode, dst: MemoryNode) -> None:
        self.src = src
        self.dst = dst
        self.sender = Sender(src.name, self, {"endpoint": src.endpoint})
        self.replies = Sender(dst.name, None, {"endpoint": dst.endpoint})

    def close(self) -> None:
        self.dst._sender_closed(self.sender)
        self.src._sender_closed(self.replies)


class MemoryNode(BaseNode[tuple[str, str]]):
    """A bus node whose links are endpoint names resolved by its ``MemoryNetwork``."""

    def __init__(
        self, name: str, bind_endpoint: str, network: MemoryNetwork, *, hwm: int = DEFAULT_HWM
    ) -> None:
        super().__init__(name, bind_endpoint, hwm=hwm)
        self._network = network
        self._inbox: deque[RawMessage] = deque()
        self._readable = asyncio.Event()
        self._claims = 0  # claims in the inbox, which the high-water mark does not count
        self._conns: dict[str, _Connection] = {}  # peer -> the connection its link has up

    async def start(self) -> None:
        """Bind this node's endpoint; links other nodes opened to it come up."""
        if self._closed:
            raise BusClosed(self.name)
        self._running_loop()
        self._network._bind(self)

    def connect(self, peer: str, endpoint: str) -> None:
        """Open the link to ``peer`` at ``endpoint`` (which may be bound later)."""
        self._add_link(peer, (peer, endpoint))
        self._network._link(self, peer, endpoint)

    def disconnect(self, peer: str) -> None:
        """Close the link to ``peer``; later sends to it count as unknown peer."""
        link = self._remove_link(peer)
        if link is not None:
            self._network._unlink(self, *link)

    async def close(self) -> None:
        """Unbind and drop every link, as a process exit would. Idempotent."""
        self._shutdown()

    # -- transport hooks -------------------------------------------------------------------

    def _transmit(self, link: tuple[str, str], data: bytes) -> bool:
        peer, _ = link
        conn = self._conns.get(peer)
        # Like IMMEDIATE: nothing is queued towards a peer whose link is not up (yet).
        if conn is None or peer not in self._connected:
            return False
        return conn.dst._deliver(conn.sender, data)

    def _reply(self, sender: Sender, data: bytes) -> bool:
        conn = sender.route
        if not isinstance(conn, _Connection) or sender.closed:
            return False
        # On ZeroMQ the answer reaches the linking node's DEALER; here its inbox, as coming
        # from us over our own link to it if we have one (one connection speaks for us there).
        ours = self._conns.get(conn.src.name)
        back = ours.sender if ours is not None and ours.dst is conn.src else conn.replies
        return conn.src._deliver(back, data)

    def _drain(self, max_messages: int, max_bytes: int) -> list[RawMessage]:
        inbox = self._inbox
        out: list[RawMessage] = []
        while inbox and len(out) < max_messages and max_bytes > 0:
            out.append(self._pop())
            max_bytes -= len(out[-1][1][-1])
        return out

    async def _recv_one(self) -> RawMessage:
        while not self._inbox:
            self._readable.clear()
            await self._readable.wait()
            if self._closed:
                raise BusClosed(self.name)
        return self._pop()

    # -- used by MemoryNetwork -------------------------------------------------------------

    def _deliver(self, sender: Sender, data: bytes) -> bool:
        if self._closed or len(self._inbox) - self._claims >= self.hwm:
            return False
        self._inbox.append((sender, [data]))
        self._readable.set()
        return True

    def _deliver_claim(self, sender: Sender) -> None:
        # Not held to the high-water mark: on ZeroMQ it is one tiny message, and counting it
        # here would shift every inbox limit a test sets by one.
        if not self._closed:
            self._inbox.append((sender, _CLAIM))
            self._claims += 1
            self._readable.set()

    def _pop(self) -> RawMessage:
        raw = self._inbox.popleft()
        if raw[1] is _CLAIM:
            self._claims -= 1
        return raw

    def _shutdown(self) -> None:
        if self._closed:
            return
        links = list(self._links.values())
        self._mark_closed()
        for peer, endpoint in links:
            self._network._unlink(self, peer, endpoint)
        self._network._unbind(self)
        self._inbox.clear()
        self._claims = 0
        self._readable.set()  # wake a pending recv_batch so it raises BusClosed

    def _schedule(self, up: bool, peer: str) -> None:
        # A socket monitor reports from another thread: never call back synchronously.
        self._running_loop().call_soon(self._peer_up if up else self._peer_down, peer)


class MemoryNetwork:
    """Endpoints and links of in-memory nodes; ``kill(name)`` simulates a process crash.

    Several live nodes may share a name (a test's impostor): the network does not stop them,
    the nodes they link to do (see the module docstring).
    """

    def __init__(self) -> None:
        self._nodes: dict[str, list[MemoryNode]] = {}
        self._bound: dict[str, MemoryNode] = {}
        self._links: dict[str, set[tuple[MemoryNode, str]]] = {}  # endpoint -> (node, peer)

    def node(self, name: str, endpoint: str | None = None, *, hwm: int = DEFAULT_HWM) -> MemoryNode:
        """Create a node named ``name``, bound (once started) at ``endpoint`` or ``mem://name``."""
        node = MemoryNode(name, endpoint or f"mem://{name}", self, hwm=hwm)
        live = [other for other in self._nodes.get(name, []) if not other._closed]
        self._nodes[name] = [*live, node]
        return node

    def nodes(self) -> list[MemoryNode]:
        """Every node made that is not closed yet."""
        return [node for made in self._nodes.values() for node in made if not node._closed]

    def kill(self, name: str) -> None:
        """Crash every node named ``name`` at once: unbound, inbox lost, peers told."""
        for node in self._nodes[name]:
            node._shutdown()

    def _bind(self, node: MemoryNode) -> None:
        current = self._bound.get(node.endpoint)
        if current is not None and current is not node:
            raise OSError(f"endpoint {node.endpoint} already bound by {current.name}")
        self._bound[node.endpoint] = node
        for linked, peer in self._links.get(node.endpoint, ()):
            self._open(linked, peer, node)

    def _unbind(self, node: MemoryNode) -> None:
        if self._bound.get(node.endpoint) is node:
            del self._bound[node.endpoint]
            for linked, peer in self._links.get(node.endpoint, ()):
                conn = linked._conns.pop(peer, None)
                if conn is not None:
                    conn.close()
                linked._schedule(False, peer)

    def _link(self, node: MemoryNode, peer: str, endpoint: str) -> None:
        self._links.setdefault(endpoint, set()).add((node, peer))
        target = self._bound.get(endpoint)
        if target is not None:
            self._open(node, peer, target)

    def _unlink(self, node: MemoryNode, peer: str, endpoint: str) -> None:
        self._links.get(endpoint, set()).discard((node, peer))
        conn = node._conns.pop(peer, None)
        if conn is not None:
            conn.close()  # at once, as the kernel closes a dead process's sockets

    def _open(self, node: MemoryNode, peer: str, target: MemoryNode) -> None:
        conn = node._conns[peer] = _Connection(node, target)
        target._deliver_claim(conn.sender)  # as a bus node's DEALER does on each handshake
        node._schedule(True, peer)


class Scripted(random.Random):
    """A random source that returns the given values in order (scripted fault decisions)."""

    def __init__(self, *values: float) -> None:
        super().__init__(0)
        self.values = list(values)

    def random(self) -> float:
        return self.values.pop(0)
