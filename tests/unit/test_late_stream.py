"""An old home's stream that arrives after its VPIDs were taken over, on a hand clock.

The nemesis found it (seed 11, a loaded machine): a partition cut nic2's stream to nic1 right
after a connection's SYN was replicated, so nic1's copy said SYN_SENT while nic2 carried the
connection ESTABLISHED. nic2 then hung, and nic1 took its VPIDs over with that copy. When nic2
came back, its stream's missing part (the record ESTABLISHED) reached nic1, which dropped it
because it tracked the key already: nic1 kept SYN_SENT, in which every segment of the client is
invalid, and the connection stalled until the VM's TCP gave up, 15 s later. Two sans-I/O NIC
control planes (`NicControl`) with real pipelines replay it; the test is the bus between them.
"""

from __future__ import annotations

from typing import Any

import structlog
from structlog.testing import capture_logs

from bus.codec import decode_untrusted
from bus.messages import MapUpdate
from configs import NicSpec, Timers
from nicd.control import NicControl
from nicd.datapath.conntrack import CtRecord, TcpState
from nicd.datapath.pipeline import DatapathConfig, Decision, Pipeline, PortKind, Verdict
from nicd.datapath.teaming import TeamPolicy
from nicd.policy import ruleset_from_config
from tests.unit.dpfixtures import (
    DEFAULT_RULES,
    SEGMENTS,
    UPLINKS,
    interfaces,
    map_entries,
    tcp_in,
    tcp_out,
    vm,
)
from tests.unit.pipelinerig import DATA
from wire.protocols import TCP_ACK, TCP_FIN, TCP_SYN

T0 = 1024.0
BEAT = 0.0625
TIMERS = Timers(heartbeat_s=BEAT, heartbeat_misses=3)
VM3 = vm(3)  # homed on nic2 at epoch 1
SPORT, DPORT = 40000, 80
# Epoch 2: nic2 is lost, its VPIDs 3 and 4 move to nic1 (VFs 103 and 104).
FAILOVER = [(1, "nic1", 101), (2, "nic1", 102), (3, "nic1", 103), (4, "nic1", 104)]


class Outbox:
    """What one control plane sent, decoded, until the bus delivers it."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, Any]] = []

    def send(self, peer: str, msg: Any) -> bool:
        self.sent.append((peer, msg))
        return True

    def send_raw(self, peer: str, data: bytes) -> bool:
        self.sent.append((peer, decode_untrusted(data)))
        return True


class Pair:
    """nic1 and nic2 of host h1, their pipelines, and a private channel that can be cut."""

    def __init__(self) -> None:
        self.now = T0
        self.cut = False
        self.out = {n: Outbox() for n in ("nic1", "nic2")}
        self.core: dict[str, NicControl] = {}
        for name, sib in (("nic1", "nic2"), ("nic2", "nic1")):
            spec = NicSpec(name, "h1", ("p0", "p1"))
            core = NicControl(spec, [sib], TIMERS, self.out[name], lambda _: None,
                              lambda: None, structlog.get_logger(), self.now)  # fmt: skip
            config = DatapathConfig(eswitch_capacity=64, ct_limit=1000)
            p = Pipeline(name, config, ruleset_from_config(DEFAULT_RULES), SEGMENTS,
                         interfaces(), UPLINKS, TeamPolicy.PORT_ID)  # fmt: skip
            p.ct.journal, p.vswitch.journal = [], []
            core.pipeline = p
            core.sibling_live(p, sib)
            self.core[name] = core
        for core in self.core.values():
            self.map(core, MapUpdate(1, map_entries()))
            core.start_resync(self.now)
        self.pump()

    def p(self, nic: str) -> Pipeline:
        p = self.core[nic].pipeline
        assert p is not None
        return p

    def map(self, core: NicControl, msg: MapUpdate) -> None:
        """The host's map reaches a NIC (as the worker hands it on)."""
        core.handle("h1", msg, self.now)
        core.map_settled(self.now)

    def pump(self) -> None:
        """Deliver what the NICs sent each other (nothing while the channel is cut)."""
        while any(box.sent for box in self.out.values()):
            for name, box in self.out.items():
                sent, box.sent = box.sent, []
                for peer, msg in sent:
                    core = self.core.get(peer)
                    if core is not None and not self.cut and core.handles(type(msg)):
                        core.handle(name, msg, self.now)

    def replicate(self) -> None:
        for core in self.core.values():
            core.replicate(self.now)
        self.pump()

    def from_vm(self, nic: str, ppid: int, frame: bytes) -> Decision:
        return self.p(nic).process(PortKind.VF, ppid, frame, self.now)

    def from_peer(self, nic: str, frame: bytes) -> Decision:
        return self.p(nic).process(PortKind.UPLINK, 1, frame, self.now)

    def record(self, nic: str) -> CtRecord:
        (rec,) = [r for r in self.p(nic).ct if r.zone == VM3.vpid and r.sport == SPORT]
        return rec


def established_on_nic2_while_cut_after_the_syn(pair: Pair) -> None:
    """VM3 opens a connection on nic2; only the SYN's record reaches nic1's copy."""
    assert pair.from_vm("nic2", VM3.ppid, tcp_out(VM3, SPORT, DPORT, TCP_SYN, 100)).emits
    pair.replicate()
    pair.cut = True
    pair.from_peer("nic2", tcp_in(VM3, DPORT, SPORT, TCP_SYN | TCP_ACK, 500, 101))
    pair.from_vm("nic2", VM3.ppid, tcp_out(VM3, SPORT, DPORT, TCP_ACK, 101, 501))
    pair.replicate()
    assert pair.record("nic2").state is TcpState.ESTABLISHED
    (row,) = [r for r in pair.core["nic1"].sync.caches["nic2"].records.values() if r.sport == SPORT]
    assert row.state == "SYN_SENT"  # what the cut left nic1 with


def nic2_hangs_and_nic1_takes_over(pair: Pair) -> None:
    """nic2's loop stands still; the host moves its VPIDs to nic1, which commits its copy."""
    pair.now += 1.0
    pair.core["nic2"].check_stall(pair.now)
    assert pair.core["nic2"].fenced
    pair.map(pair.core["nic1"], MapUpdate(2, FAILOVER))
    assert pair.record("nic1").state is TcpState.SYN_SENT  # all nic1 could know


def nic2_returns(pair: Pair) -> None:
    """The channel heals; nic2 learns the map and beats; the stream's missing part flows."""
    pair.cut = False
    pair.map(pair.core["nic2"], MapUpdate(2, FAILOVER))  # release, unfence, resync
    for core in pair.core.values():
        core.heartbeat(pair.now)  # heartbeats tell each sibling where the other's stream is
    pair.pump()
    pair.replicate()


def data_from_vm3_on_nic1(pair: Pair) -> Decision:
    return pair.from_vm("nic1", 103, tcp_out(VM3, SPORT, DPORT, DATA, 101, 501, b"more"))


def test_the_old_homes_late_stream_brings_a_taken_over_connection_up_to_date() -> None:
    pair = Pair()
    established_on_nic2_while_cut_after_the_syn(pair)
    nic2_hangs_and_nic1_takes_over(pair)
    with capture_logs() as logs:
        nic2_returns(pair)
    assert pair.core["nic1"].sync.caches["nic2"].held == pair.core["nic2"].sync.origin.seq
    rec = pair.record("nic1")
    assert rec.state is TcpState.ESTABLISHED, "nic1 kept the stale state of its copy"
    d = data_from_vm3_on_nic1(pair)
    assert d.verdict is Verdict.FORWARD, d.reason
    caught_up = [e for e in logs if e["event"] == "ct.catch_up"]
    assert caught_up and caught_up[0]["origin"] == "nic2" and caught_up[0]["records"] == 1
    # nic1 is the record's origin now: nic2's copy of it (what a failback commits) agrees.
    pair.replicate()
    (row,) = [r for r in pair.core["nic2"].sync.caches["nic1"].records.values()
              if r.sport == SPORT]  # fmt: skip
    assert row.state == "ESTABLISHED"


def test_a_record_the_new_home_moved_on_itself_keeps_its_own_state() -> None:
    pair = Pair()
    established_on_nic2_while_cut_after_the_syn(pair)
    nic2_hangs_and_nic1_takes_over(pair)
    # On nic1 the peer answers again (SYN_RECV), the VM acks (ESTABLISHED) and closes (FIN):
    # nic1's record is past anything nic2's stream can say of it.
    pair.from_peer("nic1", tcp_in(VM3, DPORT, SPORT, TCP_SYN | TCP_ACK, 500, 101))
    pair.from_vm("nic1", 103, tcp_out(VM3, SPORT, DPORT, TCP_ACK, 101, 501))
    pair.from_vm("nic1", 103, tcp_out(VM3, SPORT, DPORT, TCP_FIN | TCP_ACK, 101, 501))
    assert pair.record("nic1").state is TcpState.FIN_WAIT
    nic2_returns(pair)
    assert pair.record("nic1").state is TcpState.FIN_WAIT
