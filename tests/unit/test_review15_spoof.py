"""Review of issue 15: a netns VM is root in its own kernel and may send any source MAC. Nothing
on the VF port checks it (the built-in stack never spoofs, so nothing had to): a gratuitous ARP
claiming the external peer's MAC leaves on the uplinks, the fabric moves that MAC to the team,
and every VM's traffic to the peer is black-holed while the spoofing lasts (seen live: nsclient
spoofing nsext's MAC stops nsweb's ping and curl to nsext)."""

from __future__ import annotations

import pytest

from nicd.datapath.pipeline import PortKind, Verdict
from tests.unit.dpfixtures import PEER_IP, PEER_MAC, make_pipeline
from tests.unit.pipelinerig import VM1, VM2, from_vf, only_uplinks_of
from wire.build import gratuitous_arp


@pytest.mark.xfail(
    strict=True,
    reason="design limit: no source-MAC check (port security) on VF ingress, and the fast-tier "
    "key has no MAC, so a check in the slow path alone would leave established flows open",
)
def test_a_vm_cannot_announce_another_stations_mac_on_the_uplinks() -> None:
    p = make_pipeline("nic1")
    only_uplinks_of(p, "nic1")
    d = from_vf(p, VM1, gratuitous_arp(PEER_MAC, PEER_IP))
    out = [e for e in d.emits if e.out is PortKind.UPLINK]
    assert d.verdict is Verdict.DROP and not out, "a spoofed source MAC reached the fabric"


@pytest.mark.xfail(
    strict=True,
    reason="design limit: no ARP/IP source guard on VF ingress; the NIC keeps its own ARP "
    "answers right (vswitch ignores claims on a local VM's address) but forwards the claim",
)
def test_a_vm_cannot_claim_another_vms_address_to_the_network() -> None:
    # Seen live: nsclient's gratuitous ARP for nsweb's 10.0.10.21 re-pointed the external
    # peer nsext's neighbour entry to nsclient's MAC; nsext's curl to nsweb then failed, and a
    # VM that also added the address would have answered in nsweb's place.
    p = make_pipeline("nic1")
    only_uplinks_of(p, "nic1")
    d = from_vf(p, VM1, gratuitous_arp(VM1.mac, VM2.ip))
    out = [e for e in d.emits if e.out is PortKind.UPLINK]
    assert not out, "a claim on another VM's address reached the fabric"
