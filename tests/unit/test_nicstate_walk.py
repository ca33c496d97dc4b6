"""Random walks of the NIC control core never hit a missing transition, and the
state its heartbeats tell is the one the old worker computed (starting / fenced / up /
resyncing from pipeline, map, fence flag and `sync.resynced`)."""

from __future__ import annotations

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from bus.messages import MapUpdate, Probe
from bus.nicstate import NicState
from tests.unit.dpfixtures import map_entries
from tests.unit.test_nic_control import BEAT, Nic

OPS = st.lists(
    st.one_of(
        st.just(("policy",)),
        st.tuples(st.just("map"), st.integers(-1, 2)),  # relative epoch: older, same, newer
        st.tuples(st.just("beat"), st.sampled_from([BEAT, BEAT / 2, 4 * BEAT, 200.0])),
        st.tuples(st.just("stall"), st.sampled_from([4 * BEAT, 20 * BEAT])),
        st.tuples(
            st.just("sib"), st.sampled_from(["nic2", "nic3"]), st.sampled_from(list(NicState))
        ),
        st.tuples(st.just("snap"), st.sampled_from(["nic2", "nic3"])),
        st.tuples(
            st.just("resync"),
        ),
        st.tuples(st.just("disc"), st.sampled_from(["nic2", "nic3"])),
        st.tuples(st.just("probe"), st.booleans()),
    ),
    max_size=40,
)


def old_state(nic: Nic) -> NicState:
    """What the old worker's `_state` said."""
    c = nic.core
    p = c.pipeline
    if p is None or not p.map.epoch:
        return NicState.STARTING
    if c.fenced:
        return NicState.FENCED
    return NicState.UP if c.sync.resynced else NicState.RESYNCING


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from([[], ["nic2"], ["nic2", "nic3"]]), st.booleans(), OPS)
def test_no_invalid_transition_and_old_state(siblings, prelude, ops) -> None:
    nic = Nic(siblings)
    nic.core.start_resync(nic.now) if siblings else None
    probe = 0
    if prelude:
        ops = [("policy",), ("map", 1), *ops]
    for op in ops:
        kind = op[0]
        p = nic.core.pipeline
        if kind == "policy":
            if p is None:
                nic.policy()
        elif kind == "map":
            epoch = (p.map.epoch if p is not None else 0) + op[1]
            if epoch >= 0:
                nic.core.handle("h1", MapUpdate(epoch, map_entries()), nic.now)
        elif kind == "beat":
            nic.beat(op[1])
        elif kind == "stall":
            nic.now += op[1]
            nic.core.check_stall(nic.now)
        elif kind == "sib":
            if op[1] in siblings:
                nic.sibling_says(op[2], op[1])
        elif kind == "snap":
            if op[1] in siblings:
                nic.snapshot_from(op[1])
        elif kind == "resync":
            nic.core.start_resync(nic.now)
        elif kind == "disc":
            nic.core.on_disconnect(op[1], nic.now)
        elif kind == "probe":
            probe += 1
            nic.core.handle("h1", Probe("h1", probe, op[1]), nic.now)
        assert nic.core.state is old_state(nic), (op, nic.core.state, old_state(nic))
        event(f"state {nic.core.state.value}")
