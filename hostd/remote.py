"""Flows to a VM of another host start once that VM answers ARP. Sans-I/O.

A fresh cluster's hosts come up one after another: a host whose NICs are ready first would send
into the fabric towards a host whose NICs are not, and Linux-like TCP would count the SYNs
waiting on ARP as retransmissions (and UDP would lose datagrams). So, like an application that
waits for its peer to be reachable, such a flow first probes its destination with ARP every
`PROBE_EVERY_S`, and starts on the answer, or after `wait_s` whatever happened.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address

from hoststack.endpoint import Endpoint
from hoststack.traffic import FlowSpec

PROBE_EVERY_S = 0.1


@dataclass(slots=True)
class _Waiting:
    vpid: int
    endpoint: Endpoint
    spec: FlowSpec
    dst: IPv4Address
    give_up: float
    next_probe: float


class RemoteStart:
    """The flows waiting for a destination on another host to answer."""

    def __init__(self, wait_s: float) -> None:
        self.wait_s = wait_s
        self._waiting: list[_Waiting] = []

    @property
    def waiting(self) -> list[str]:
        """The names of the flows still waiting."""
        return [w.spec.name for w in self._waiting]

    def wait(self, vpid: int, ep: Endpoint, spec: FlowSpec, dst: IPv4Address, now: float) -> None:
        """Start `spec` from `ep` (plugged in at `vpid`) once `dst` answers."""
        self._waiting.append(_Waiting(vpid, ep, spec, dst, now + self.wait_s, now))

    def poll(self, now: float) -> tuple[list[tuple[_Waiting, bool]], dict[int, list[bytes]]]:
        """The flows to start now (each with whether its destination answered), and the ARP
        probes to send per VPID."""
        ready: list[tuple[_Waiting, bool]] = []
        probes: dict[int, list[bytes]] = {}
        still = []
        for w in self._waiting:
            answered = w.endpoint.knows(w.dst)
            if answered or now >= w.give_up:
                ready.append((w, answered))
                continue
            still.append(w)
            if now >= w.next_probe:
                w.next_probe = now + PROBE_EVERY_S
                probes.setdefault(w.vpid, []).append(w.endpoint.arp_probe(w.dst))
        self._waiting = still
        return ready, probes
