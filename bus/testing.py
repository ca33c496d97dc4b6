"""An in-memory bus with the same API as ``bus.transport.BusNode``, for one-process tests.

``MemoryNetwork`` plays the role of the kernel and ZeroMQ: it maps endpoints to started nodes.
Messages are still encoded and decoded (so codec bugs show), links come up and go down through
the same peer events (one loop iteration later, as a socket monitor would report them), sends
before a link is up are dropped as with ``IMMEDIATE``, and each inbox holds ``hwm`` messages.

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

from bus.node import DEFAULT_HWM, BaseNode, BusClosed, BusStats, RawMessage

__all__ = ["BusClosed", "BusStats", "MemoryNetwork", "MemoryNode", "Scripted"]


class MemoryNode(BaseNode[tuple[str, str]]):
    """A bus node whose links are endpoint names resolved by its ``MemoryNetwork``."""

    def __init__(
        self, name: str, bind_endpoint: str, network: MemoryNetwork, *, hwm: int = DEFAULT_HWM
    ) -> None:
        super().__init__(name, bind_endpoint, hwm=hwm)
        self._network = network
        self._inbox: deque[RawMessage] = deque()
        self._readable = asyncio.Event()
        self._identity = name.encode()

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
        peer, endpoint = link
        target = self._network._bound.get(endpoint)
        # Like IMMEDIATE: nothing is queued towards a peer whose link is not up (yet).
        if target is None or peer not in self._connected or len(target._inbox) >= target.hwm:
            return False
        target._inbox.append([self._identity, data])
        target._readable.set()
        return True

    def _reply(self, peer: str, data: bytes) -> bool:
        target = self._network._nodes.get(peer)
        if target is None or target._closed or len(target._inbox) >= target.hwm:
            return False
        target._inbox.append([self._identity, data])
        target._readable.set()
        return True

    def _drain(self, max_messages: int, max_bytes: int) -> list[RawMessage]:
        inbox = self._inbox
        out: list[RawMessage] = []
        while inbox and len(out) < max_messages and max_bytes > 0:
            out.append(inbox.popleft())
            max_bytes -= len(out[-1][-1])
        return out

    async def _recv_one(self) -> RawMessage:
        while not self._inbox:
            self._readable.clear()
            await self._readable.wait()
            if self._closed:
                raise BusClosed(self.name)
        return self._inbox.popleft()

    # -- used by MemoryNetwork -------------------------------------------------------------

    def _shutdown(self) -> None:
        if self._closed:
            return
        links = list(self._links.values())
        self._mark_closed()
        for peer, endpoint in links:
            self._network._unlink(self, peer, endpoint)
        self._network._unbind(self)
        self._inbox.clear()
        self._readable.set()  # wake a pending recv_batch so it raises BusClosed

    def _schedule(self, up: bool, peer: str) -> None:
        # A socket monitor reports from another thread: never call back synchronously.
        self._running_loop().call_soon(self._peer_up if up else self._peer_down, peer)


class MemoryNetwork:
    """Endpoints and links of in-memory nodes; ``kill(name)`` simulates a process crash."""

    def __init__(self) -> None:
        self._nodes: dict[str, MemoryNode] = {}
        self._bound: dict[str, MemoryNode] = {}
        self._links: dict[str, set[tuple[MemoryNode, str]]] = {}  # endpoint -> (node, peer)

    def node(self, name: str, endpoint: str | None = None, *, hwm: int = DEFAULT_HWM) -> MemoryNode:
        """Create a node named ``name``, bound (once started) at ``endpoint`` or ``mem://name``."""
        current = self._nodes.get(name)
        if current is not None and not current._closed:
            raise ValueError(f"a live node named {name!r} exists")
        node = MemoryNode(name, endpoint or f"mem://{name}", self, hwm=hwm)
        self._nodes[name] = node
        return node

    def kill(self, name: str) -> None:
        """Crash node ``name`` at once: unbound, inbox lost, peers told it disconnected."""
        self._nodes[name]._shutdown()

    def _bind(self, node: MemoryNode) -> None:
        current = self._bound.get(node.endpoint)
        if current is not None and current is not node:
            raise OSError(f"endpoint {node.endpoint} already bound by {current.name}")
        self._bound[node.endpoint] = node
        for linked, peer in self._links.get(node.endpoint, ()):
            linked._schedule(True, peer)

    def _unbind(self, node: MemoryNode) -> None:
        if self._bound.get(node.endpoint) is node:
            del self._bound[node.endpoint]
            for linked, peer in self._links.get(node.endpoint, ()):
                linked._schedule(False, peer)

    def _link(self, node: MemoryNode, peer: str, endpoint: str) -> None:
        self._links.setdefault(endpoint, set()).add((node, peer))
        if endpoint in self._bound:
            node._schedule(True, peer)

    def _unlink(self, node: MemoryNode, peer: str, endpoint: str) -> None:
        self._links.get(endpoint, set()).discard((node, peer))


class Scripted(random.Random):
    """A random source that returns the given values in order (scripted fault decisions)."""

    def __init__(self, *values: float) -> None:
        super().__init__(0)
        self.values = list(values)

    def random(self) -> float:
        return self.values.pop(0)
