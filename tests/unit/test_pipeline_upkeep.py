"""One NIC's datapath (`Pipeline`) over time: expiry, rule changes, the VPID map, limits.

Same host and helpers as tests/unit/test_pipeline.py; `now` is a number the test chooses.
"""

from __future__ import annotations

from nicd.datapath.conntrack import CtRecord, TcpState, Timeouts
from nicd.datapath.pipeline import Emit, Pipeline, PortKind, Verdict
from nicd.datapath.tiers import Tier
from tests.unit.dpfixtures import (
    make_pipeline,
    map_entries,
    tcp,
    tcp_in,
    tcp_out,
)
from tests.unit.pipelinerig import (
    DATA,
    VM1,
    VM2,
    all_forward,
    connect_out,
    data_in,
    data_out,
    fast_records,
    from_uplink,
    from_vf,
    handshake_vms,
    in_fast_tiers,
    record,
    records,
    rules_plus,
)
from wire.protocols import (
    TCP_ACK,
    TCP_SYN,
)

# -- 9. Expiry ----------------------------------------------------------------------------------

SHORT = Timeouts(tcp_syn_sent=3, tcp_syn_recv=3, tcp_established=5, udp_first=3, udp_multiple=5)


def test_idle_established_flow_expires_from_every_tier() -> None:
    """An idle flow's record times out at `tick` and takes its fast entries with it."""
    p = make_pipeline("nic1", timeouts=SHORT)
    assert all_forward(connect_out(p, VM2, 40000, 80, 0.0))
    data_in(p, VM2, 40000, 80, 0.0)
    assert data_out(p, VM2, 40000, 80, 0.0).tier is Tier.ESWITCH
    rec = record(p, 2, 80)
    p.tick(4.0)
    assert len(p.ct) == 1 and in_fast_tiers(p, rec)
    p.tick(6.0)
    assert len(p.ct) == 0 and p.ct.stats.expired == 1
    assert not in_fast_tiers(p, rec)
    assert len(p.eswitch) == 0 and len(p.cache) == 0
    d = data_out(p, VM2, 40000, 80, 6.5)  # mid-stream data of a forgotten connection
    assert (d.verdict, d.reason) == (Verdict.DROP, "ct.invalid.no_conn")


def test_flow_kept_busy_on_the_eswitch_does_not_expire() -> None:
    """eSwitch hit counters are read back into `last_seen`, so a busy flow stays alive."""
    p = make_pipeline("nic1", timeouts=SHORT)
    assert all_forward(connect_out(p, VM2, 40000, 80, 0.0))
    assert all_forward(connect_out(p, VM2, 40001, 81, 0.0))
    busy, idle = record(p, 2, 80), record(p, 2, 81)
    data_in(p, VM2, 40000, 80, 0.0)
    created = p.ct.stats.created
    for t in range(1, 13):
        d = data_out(p, VM2, 40000, 80, float(t))
        assert d.verdict is Verdict.FORWARD and d.tier is Tier.ESWITCH
        p.tick(t + 0.5)
        assert busy.last_seen == float(t)
    assert busy in records(p) and idle not in records(p)
    assert p.ct.stats.expired == 1 and p.ct.stats.created == created
    assert in_fast_tiers(p, busy) and busy.packets > 12


# -- 10. Rule changes revalidate ----------------------------------------------------------------


def _offloaded_8080(p: Pipeline) -> CtRecord:
    """VM2 -> peer:8080 (allowed by `out`), established and on the eSwitch both ways."""
    assert all_forward(connect_out(p, VM2, 40000, 8080))
    data_in(p, VM2, 40000, 8080)
    assert data_out(p, VM2, 40000, 8080).tier is Tier.ESWITCH
    assert data_in(p, VM2, 40000, 8080).tier is Tier.ESWITCH
    rec = record(p, 2, 8080)
    assert rec.rule == "out"
    return rec


def test_rule_change_that_denies_a_flow_removes_it_from_every_tier() -> None:
    """After `set_rules` no tier forwards the now-denied flow; the next packet is dropped."""
    p = make_pipeline("nic1")
    rec = _offloaded_8080(p)
    p.set_rules(rules_plus({"name": "no-8080", "priority": 1, "action": "drop",
                            "proto": "tcp", "dport": 8080}), 1.0)  # fmt: skip
    assert p.stats.revalidated == 1 and p.stats.revalidate_removed == 1
    assert len(p.ct) == 0 and not in_fast_tiers(p, rec)
    assert len(p.eswitch) == 0 and len(p.cache) == 0
    d = data_out(p, VM2, 40000, 8080, 1.0)
    assert (d.verdict, d.reason, d.rule, d.emits) == (Verdict.DROP, "fw.drop", "no-8080", [])
    d = data_in(p, VM2, 40000, 8080, 1.0)
    assert d.verdict is Verdict.DROP and d.emits == []
    assert p.stats.drops["fw.drop"] == 2


def test_rule_change_to_inspect_evicts_from_fast_tiers_but_keeps_the_flow() -> None:
    """A flow that becomes `inspect` stays allowed, in the slow path only."""
    p = make_pipeline("nic1")
    rec = _offloaded_8080(p)
    p.set_rules(rules_plus({"name": "watch-8080", "priority": 1, "action": "allow",
                            "proto": "tcp", "dport": 8080, "inspect": True}), 1.0)  # fmt: skip
    assert p.stats.revalidate_removed == 0
    assert rec in records(p) and rec.rule == "watch-8080"
    assert not rec.sw_ok and not rec.hw_ok and rec.state is TcpState.ESTABLISHED
    assert not in_fast_tiers(p, rec) and len(p.eswitch) == 0 and len(p.cache) == 0
    for _ in range(3):
        for d in (data_out(p, VM2, 40000, 8080, 1.0), data_in(p, VM2, 40000, 8080, 1.0)):
            assert d.verdict is Verdict.FORWARD and d.tier is Tier.SLOW
    assert len(p.eswitch) == 0 and len(p.cache) == 0


def test_rule_change_that_keeps_a_flow_allowed_leaves_it_offloaded() -> None:
    """Revalidation does not disturb a flow whose verdict and flags are unchanged."""
    p = make_pipeline("nic1")
    rec = _offloaded_8080(p)
    p.set_rules(rules_plus({"name": "no-smb", "priority": 1, "action": "drop",
                            "proto": "tcp", "dport": 445}), 1.0)  # fmt: skip
    assert p.stats.revalidate_removed == 0 and rec in fast_records(p, Tier.ESWITCH)
    assert data_out(p, VM2, 40000, 8080, 1.0).tier is Tier.ESWITCH


# -- 11. The VPID map ---------------------------------------------------------------------------


def _map_with(**moves: tuple[str, int]) -> list[tuple[int, str, int]]:
    """The test map with some VPIDs (`vm1=("nic2", 103)`) bound elsewhere."""
    moved = {int(k.removeprefix("vm")): v for k, v in moves.items()}
    return [(v, *moved.get(v, (nic, ppid))) for v, nic, ppid in map_entries()]


def test_vm_moved_away_is_fenced_on_its_old_nic() -> None:
    """After VM1 moves to nic2, nic1 refuses its old VF and its handovers, even fast ones."""
    p = make_pipeline("nic1")
    assert all_forward(connect_out(p, VM1, 40000, 80))
    assert data_out(p, VM1, 40000, 80).tier in (Tier.ESWITCH, Tier.CACHE)
    change = p.apply_map(2, _map_with(vm1=("nic2", 103)))
    assert change is not None and change.lost("nic1") == [1]
    d = data_out(p, VM1, 40000, 80)  # would hit the old fast entry
    assert d.verdict is Verdict.DROP and d.reason in ("port.unknown_vf", "fence.not_owner")
    assert d.emits == []
    d = p.process(PortKind.PEER_DELIVER, 1, tcp(VM2, VM1, 5, 80, TCP_SYN), 0.0)
    assert (d.verdict, d.reason) == (Verdict.DROP, "fence.not_owner")
    # Frames for VM1 from the network now go to its new home.
    d = data_in(p, VM1, 40000, 80)
    assert [(e.out, e.target, e.nic) for e in d.emits] == [(PortKind.PEER_DELIVER, 1, "nic2")]
    assert sum(p.stats.drops[r] for r in ("port.unknown_vf", "fence.not_owner")) == 2

    assert p.apply_map(1, map_entries()) is None  # a stale epoch changes nothing
    assert p.map.epoch == 2 and p.map.stats.stale_ignored == 1
    home = p.map.home(1)
    assert home is not None and home.nic == "nic2"
    assert from_vf(p, VM1, tcp_out(VM1, 40002, 80, TCP_SYN)).verdict is Verdict.DROP


def test_remap_to_another_vf_on_the_same_nic_keeps_the_flow() -> None:
    """VM2 moves to PPID 103 on nic1: its connection continues, delivered to the new VF."""
    p = make_pipeline("nic1")
    handshake_vms(p, VM1, VM2, 40000, 80)
    fwd = tcp(VM1, VM2, 40000, 80, DATA, 101, 501, b"x")
    back = tcp(VM2, VM1, 80, 40000, DATA, 501, 102, b"y")
    from_vf(p, VM2, back)
    assert from_vf(p, VM1, fwd).tier is Tier.ESWITCH
    created = p.ct.stats.created
    assert p.apply_map(2, _map_with(vm2=("nic1", 103))) is not None
    assert p.stats.remap_flows_kept > 0
    old_vf = p.process(PortKind.VF, 102, back, 1.0)
    assert (old_vf.verdict, old_vf.reason) == (Verdict.DROP, "port.unknown_vf")
    tiers = []
    for _ in range(3):
        d = from_vf(p, VM1, fwd, 1.0)
        assert d.emits == [Emit(PortKind.VF, 103, fwd)]
        tiers.append(d.tier)
        d = p.process(PortKind.VF, 103, back, 1.0)
        assert d.emits == [Emit(PortKind.VF, VM1.ppid, back)]
        tiers.append(d.tier)
    assert tiers[-2:] == [Tier.ESWITCH, Tier.ESWITCH]
    assert p.ct.stats.created == created and len(p.ct) == 2
    assert all(r.state is TcpState.ESTABLISHED for r in records(p))


def test_moving_an_unrelated_vm_keeps_other_flows_on_the_eswitch() -> None:
    """VM4 moving on nic2 does not concern VM1<->VM2 on nic1: still the eSwitch's."""
    p = make_pipeline("nic1")
    handshake_vms(p, VM1, VM2, 40000, 80)
    fwd = tcp(VM1, VM2, 40000, 80, DATA, 101, 501, b"x")
    assert from_vf(p, VM1, fwd).tier is Tier.ESWITCH
    assert p.apply_map(2, _map_with(vm4=("nic2", 104))) is not None
    assert from_vf(p, VM1, fwd, 1.0).tier is Tier.ESWITCH


def test_a_vm_that_moves_away_frees_its_hardware_entries_at_once() -> None:
    """The remap evicts the moved VM's entries, so another flow gets the eSwitch slots."""
    p = make_pipeline("nic1", eswitch_capacity=2)
    assert all_forward(connect_out(p, VM1, 40000, 80))
    data_in(p, VM1, 40000, 80)
    assert len(p.eswitch) == 2
    p.apply_map(2, _map_with(vm1=("nic2", 103)))
    assert len(p.eswitch) == 0
    assert all_forward(connect_out(p, VM2, 40000, 80, 1.0))
    data_in(p, VM2, 40000, 80, 1.0)
    assert data_out(p, VM2, 40000, 80, 1.0).tier is Tier.ESWITCH
    assert fast_records(p, Tier.ESWITCH) == [record(p, 2, 80)]


# -- 12. Conntrack limit ------------------------------------------------------------------------


def test_conntrack_limit_drops_new_flows_but_not_existing_ones() -> None:
    """With room for two records a third connection is refused; the two keep flowing."""
    p = make_pipeline("nic1", ct_limit=2)
    assert all_forward(connect_out(p, VM1, 40000, 80))
    assert all_forward(connect_out(p, VM2, 40001, 80))
    d = from_vf(p, VM1, tcp_out(VM1, 40002, 80, TCP_SYN))
    assert (d.verdict, d.reason, d.emits) == (Verdict.DROP, "ct.full", [])
    assert p.stats.drops == {"ct.full": 1} and p.ct.stats.full_drops == 1
    assert len(p.ct) == 2
    for _ in range(3):
        for a, sport in ((VM1, 40000), (VM2, 40001)):
            assert data_out(p, a, sport, 80).verdict is Verdict.FORWARD
            assert data_in(p, a, sport, 80).verdict is Verdict.FORWARD
    assert p.stats.drops == {"ct.full": 1}


# -- 13. Mid-stream ACK -------------------------------------------------------------------------


def test_mid_stream_ack_without_a_record_is_invalid() -> None:
    """No loose pickup: an ACK of no tracked connection is dropped `ct.invalid.no_conn`."""
    p = make_pipeline("nic1")
    d = data_out(p, VM1, 40000, 80)
    assert (d.verdict, d.reason, d.emits) == (Verdict.DROP, "ct.invalid.no_conn", [])
    d = from_uplink(p, tcp_in(VM1, 5555, 80, TCP_ACK, 1, 1))  # web-in allows, but no SYN
    assert (d.verdict, d.reason) == (Verdict.DROP, "ct.invalid.no_conn")
    assert p.stats.drops == {"ct.invalid.no_conn": 2}
    assert len(p.ct) == 0
