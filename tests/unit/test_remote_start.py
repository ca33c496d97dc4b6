"""A flow to a VM of another host starts once its destination answers ARP (hostd/remote.py),
so a fresh cluster whose hosts come up one after another loses nothing at boot."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Interface

from hostd.remote import PROBE_EVERY_S, RemoteStart
from hoststack.endpoint import Endpoint
from hoststack.traffic import FlowSpec
from wire.frames import parse_frame_untrusted as parse

A_MAC, B_MAC = bytes.fromhex("020000000111"), bytes.fromhex("020000000212")
A_IP, B_IP = IPv4Address("10.0.10.11"), IPv4Address("10.0.10.12")


def endpoints() -> tuple[Endpoint, Endpoint]:
    return (Endpoint("a", A_MAC, [IPv4Interface(f"{A_IP}/24")]),
            Endpoint("b", B_MAC, [IPv4Interface(f"{B_IP}/24")]))  # fmt: skip


def test_probes_until_answered_then_starts_and_sent_nothing_before() -> None:
    a, b = endpoints()
    spec = FlowSpec("a-b", "tcp", "a", B_IP, 80)
    start = RemoteStart(wait_s=10.0)
    start.wait(7, a, spec, B_IP, now=0.0)
    # The destination's host is not up yet: probes go out, paced, and are lost.
    sent = []
    for t in (0.0, 0.05, PROBE_EVERY_S, PROBE_EVERY_S + 0.05):
        ready, probes = start.poll(t)
        assert ready == []
        sent += probes.get(7, [])
    assert len(sent) == 2 and all(parse(f).arp_op == 1 for f in sent)
    assert a.flows == {} and start.waiting == ["a-b"]
    # It comes up: the next probe is answered, and the flow starts; no SYN was ever queued.
    _, probes = start.poll(2 * PROBE_EVERY_S)
    (reply,) = b.receive(probes[7][0], 0.2)
    assert a.receive(reply, 0.2) == []
    ready, probes = start.poll(0.21)
    assert [(w.spec.name, answered) for w, answered in ready] == [("a-b", True)]
    assert probes == {} and start.waiting == []


def test_starts_anyway_after_the_wait_and_says_so() -> None:
    a, _ = endpoints()
    start = RemoteStart(wait_s=1.0)
    start.wait(7, a, FlowSpec("a-b", "udp", "a", B_IP, 53), B_IP, now=0.0)
    assert start.poll(0.99)[0] == []
    ready, _ = start.poll(1.0)
    assert [(w.spec.name, answered) for w, answered in ready] == [("a-b", False)]
