"""The NIC's sans-I/O control plane: its state machine, fencing and siblings, on a hand clock.

No loop, no sockets, no sleep: every call gets `now`, and time moves when the test says so.
"""

from __future__ import annotations

from typing import Any

import structlog
from structlog.testing import capture_logs

from bus.codec import decode_untrusted
from bus.heartbeat import Liveness
from bus.messages import Heartbeat, Hello, LinkState, MapUpdate, Probe, SyncBatch
from bus.nicstate import NicState
from bus.node import BusStats
from bus.syncrows import rows_to_wire
from configs import NicSpec, Timers
from nicd.control import NicControl
from nicd.datapath.pipeline import DatapathConfig, Emit, Pipeline
from nicd.datapath.teaming import TeamPolicy
from nicd.nicstats import nic_stats
from nicd.policy import ruleset_from_config
from nicd.statesync import Origin
from tests.unit.dpfixtures import DEFAULT_RULES, SEGMENTS, UPLINKS, interfaces, map_entries

T0 = 1024.0
# heartbeat_s, a binary fraction so that sums of beats are exact; down after 3 misses (0.1875 s),
# which is also the stall that fences
BEAT = 0.0625
TIMERS = Timers(heartbeat_s=BEAT, heartbeat_misses=3)


class Outbox:
    """The bus as the control plane sees it: everything sent, decoded."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, Any]] = []

    def send(self, peer: str, msg: Any) -> bool:
        self.sent.append((peer, msg))
        return True

    def send_raw(self, peer: str, data: bytes) -> bool:
        self.sent.append((peer, decode_untrusted(data)))
        return True

    def beats(self, peer: str = "h1") -> list[Heartbeat]:
        return [m for p, m in self.sent if p == peer and isinstance(m, Heartbeat)]

    def of(self, kind: type, peer: str = "h1") -> list[Any]:
        return [m for p, m in self.sent if p == peer and isinstance(m, kind)]


class Nic:
    """nic1 of the test host (siblings as asked), its outbox and its clock."""

    def __init__(self, siblings: list[str]) -> None:
        self.out = Outbox()
        self.emitted: list[Emit] = []
        self.now = T0
        spec = NicSpec("nic1", "h1", ("p0", "p1"))
        self.core = NicControl(spec, siblings, TIMERS, self.out, self.emitted.extend,
                               lambda: None, structlog.get_logger(), self.now)  # fmt: skip

    def policy(self) -> Pipeline:
        """The host's policy arrives: a pipeline with no map yet (as the worker builds it)."""
        config = DatapathConfig(eswitch_capacity=64, ct_limit=1000)
        p = Pipeline("nic1", config, ruleset_from_config(DEFAULT_RULES), SEGMENTS, interfaces(),
                     UPLINKS, TeamPolicy.PORT_ID)  # fmt: skip
        p.ct.journal, p.vswitch.journal = [], []
        self.core.pipeline = p
        for sib in self.core.siblings:  # as the worker does: none is in the team unheard
            self.core.sibling_live(p, sib)
        return p

    def map(self, epoch: int = 1) -> None:
        self.core.handle("h1", MapUpdate(epoch, map_entries()), self.now)

    def beat(self, seconds: float = BEAT) -> Heartbeat:
        """Time passes; our heartbeat timer fires; what it told the host."""
        self.now += seconds
        self.core.heartbeat(self.now)
        return self.out.beats()[-1]

    def sibling_says(self, state: NicState, peer: str = "nic2") -> None:
        self.core.handle(peer, Heartbeat(peer, 1, 1, state), self.now)

    def snapshot_from(self, peer: str = "nic2") -> None:
        """A sibling answers our resync with its (empty) snapshot."""
        (b,) = Origin().snapshot([], [])
        msg = SyncBatch(peer, b.first_seq, rows_to_wire(b.changes), b.reset, b.boot, b.until)
        self.core.handle(peer, msg, self.now)


def up(nic: Nic) -> Nic:
    nic.policy()
    nic.map()
    for sib in nic.core.siblings:
        nic.snapshot_from(sib)
    assert nic.core.state is NicState.UP
    return nic


# -- the state machine ---------------------------------------------------------------------------


def test_a_nic_without_siblings_is_up_once_it_has_a_map() -> None:
    nic = Nic([])
    assert nic.beat().state is NicState.STARTING
    nic.policy()
    assert nic.beat().state is NicState.STARTING  # a policy, no map yet
    nic.map()
    assert nic.beat().state is NicState.UP


def test_a_nic_with_a_sibling_resyncs_before_it_is_up() -> None:
    nic = Nic(["nic2"])
    nic.core.start_resync(nic.now)
    nic.policy()
    nic.map()
    assert nic.beat().state is NicState.RESYNCING
    nic.snapshot_from()
    assert nic.beat().state is NicState.UP


def test_a_resync_done_before_the_map_makes_the_map_bring_it_up_at_once() -> None:
    nic = Nic(["nic2"])
    nic.core.start_resync(nic.now)
    nic.policy()
    nic.snapshot_from()
    assert nic.beat().state is NicState.STARTING
    nic.map()
    assert nic.beat().state is NicState.UP


def test_a_resync_waits_for_a_silent_sibling_that_serves_vms_until_the_timeout() -> None:
    nic = Nic(["nic2"])
    nic.core.start_resync(nic.now)
    nic.policy()
    nic.map()  # nic2 holds VPIDs 3 and 4: silent is not gone
    for _ in range(int(9.5 / BEAT)):
        assert nic.beat().state is NicState.RESYNCING
    for _ in range(int(1.0 / BEAT)):
        nic.beat()
    assert nic.core.state is NicState.UP  # RESYNC_WAIT_S passed: it rejoins without it


def test_state_changes_are_logged_once_each_as_the_beats_see_them() -> None:
    nic = Nic(["nic2"])
    with capture_logs() as logs:
        nic.beat()
        nic.core.start_resync(nic.now)
        nic.policy()
        nic.map()
        nic.snapshot_from()  # resyncing and up between two beats: the beat sees "up"
        nic.beat()
        nic.beat()
    changes = [(e["old"], e["new"]) for e in logs if e["event"] == "nic.state"]
    assert changes == [("booting", "starting"), ("starting", "up")]
    assert [e["event"] for e in logs].count("nic.rejoin") == 1


def test_stats_say_waiting_for_policy_then_the_machines_state() -> None:
    nic = Nic([])
    stats = nic_stats(nic.core, nic.now, BusStats())
    assert stats["state"] == "waiting-for-policy" and type(stats["state"]) is str
    up(nic)
    stats = nic_stats(nic.core, nic.now, BusStats())
    assert stats["state"] == "up" and type(stats["state"]) is str and stats["epoch"] == 1


# -- fencing -------------------------------------------------------------------------------------


def test_a_loop_that_stood_still_as_long_as_the_detection_fences_itself() -> None:
    nic = up(Nic([]))
    nic.core.check_stall(nic.now)
    nic.now += TIMERS.down_after_s + 0.001
    nic.core.check_stall(nic.now)  # the batch that arrives after the stall
    assert nic.core.state is NicState.FENCED and nic.core.fenced
    assert nic.core.ready(5) is None and nic.core.fenced_drops == 5
    beat = nic.beat()
    assert beat.state is NicState.FENCED
    assert nic.out.of(Hello), "a fenced NIC asks the host for its map with every beat"


def test_a_shorter_stall_does_not_fence() -> None:
    nic = up(Nic([]))
    nic.core.check_stall(nic.now)
    nic.now += TIMERS.down_after_s - 0.001
    nic.core.check_stall(nic.now)
    assert nic.core.state is NicState.UP
    assert nic.core.ready(5) is nic.core.pipeline


def test_a_nic_with_no_map_is_never_fenced() -> None:
    nic = Nic([])
    assert nic.core.ready(2) is None and nic.core.not_ready_drops == 2  # no policy yet
    nic.policy()
    nic.now += 10.0
    nic.core.check_stall(nic.now)
    assert nic.core.state is NicState.STARTING
    assert nic.core.ready(2) is nic.core.pipeline and nic.core.fenced_drops == 0


def test_the_hosts_map_of_the_same_epoch_unfences_and_a_resync_follows() -> None:
    nic = up(Nic(["nic2"]))
    nic.now += 1.0
    nic.core.check_stall(nic.now)
    assert nic.core.fenced
    resyncs = nic.core.sync.resyncs
    nic.map(epoch=1)  # the host never remapped: what we own is still ours
    assert nic.core.state is NicState.RESYNCING
    assert nic.core.sync.resyncs == resyncs + 1
    assert nic.core.ready(1) is nic.core.pipeline  # forwarding again for what it owns
    nic.snapshot_from()
    assert nic.beat().state is NicState.UP


def test_a_stall_is_our_silence_not_the_siblings() -> None:
    nic = up(Nic(["nic2"]))
    nic.sibling_says(NicState.UP)
    nic.beat(BEAT / 2)
    assert team(nic) == {"nic1", "nic2"}
    nic.beat(2.0)  # we stood still 2 s: the overdue beat runs first
    assert nic.core.fenced
    assert nic.core.liveness.state("nic2") is not Liveness.DOWN
    assert team(nic) == {"nic1", "nic2"}


def test_keepalive_beats_only_once_a_beat_is_due() -> None:
    nic = up(Nic([]))
    nic.beat()
    beats = len(nic.out.beats())
    nic.core.keepalive(nic.now + BEAT / 2)
    assert len(nic.out.beats()) == beats
    nic.core.keepalive(nic.now + BEAT)
    assert len(nic.out.beats()) == beats + 1


# -- siblings ------------------------------------------------------------------------------------


def team(nic: Nic) -> set[str]:
    p = nic.core.pipeline
    assert p is not None
    return {u.nic for u in p.team.live()}


def test_a_sibling_is_in_the_team_while_heard_forwarding() -> None:
    nic = up(Nic(["nic2"]))
    assert team(nic) == {"nic1"}  # not heard yet
    nic.sibling_says(NicState.STARTING)
    assert team(nic) == {"nic1"}  # heard, but it has no map: it would drop what we hand it
    nic.sibling_says(NicState.RESYNCING)
    assert team(nic) == {"nic1", "nic2"}
    nic.sibling_says(NicState.FENCED)
    assert team(nic) == {"nic1"}
    nic.sibling_says(NicState.UP)
    assert team(nic) == {"nic1", "nic2"}


def test_a_silent_sibling_leaves_the_team_after_the_misses() -> None:
    nic = up(Nic(["nic2"]))
    nic.sibling_says(NicState.UP)
    with capture_logs() as logs:
        nic.beat()
        nic.beat()
        assert team(nic) == {"nic1", "nic2"}
        nic.beat()  # three beats of silence: down
    assert team(nic) == {"nic1"}
    assert [e["peer"] for e in logs if e["event"] == "nic.peer.down"] == ["nic2"]


def test_a_disconnected_sibling_leaves_the_team_at_once() -> None:
    nic = up(Nic(["nic2"]))
    nic.sibling_says(NicState.UP)
    nic.core.on_disconnect("nic2", nic.now)
    assert team(nic) == {"nic1"}


def test_a_sibling_gone_silent_holding_vpids_is_waited_for() -> None:
    nic = up(Nic(["nic2", "nic3"]))
    assert not nic.core.gone("nic2")  # silent, but the map gives it VPIDs 3 and 4
    assert nic.core.gone("nic3")  # silent and holding nothing


def test_the_heartbeat_tells_the_hosts_probe_and_our_carrier() -> None:
    nic = up(Nic([]))
    nic.core.handle("fabricd", LinkState("fabricd", 2, False), nic.now)
    beat = nic.out.beats()[-1]  # sent at once, not at the next beat
    assert beat.links_down == [2]
    nic.core.handle("h1", Probe("h1", 7, want_map=True), nic.now)
    assert nic.out.beats()[-1].probe == 7
    assert nic.out.of(MapUpdate)[-1].epoch == 1
