"""The nemesis of `nicteam chaos run`: a seeded schedule of faults, and the player that runs it.

As in Jepsen, faults are drawn at random but from a seed: `plan(seed, seconds, faults,
topology)` is pure (no clock, no I/O), so the same arguments give the same list of `Step`s and
a run that went wrong can be replayed with its seed. The schedule overlaps faults on purpose:
after a step it often starts a second one while the first is still in effect (a kill during
the rebooted NIC's resync, during a migrate, during a partition). It never plans the loss of
every NIC of a host at once: connection state lives only on the NICs, and a test that wipes
it out proves nothing about failover.

`Nemesis.play()` executes a plan with real timers against a running cluster (sleeping until
each step's time is the point here: it is the driver, not a test's synchronisation), logs each
fault as a `chaos.*` event (ctl/chaos.py) carrying its step number, and heals whatever is
still broken at the end. `run_and_check()` is the whole `nicteam chaos run`: plan, play, heal,
wait for quiet (`ctl.chaos.wait_quiet`), compare state digests, and judge (`ctl.checker`).
"""

from __future__ import annotations

import heapq
import random
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any

from configs import Config
from ctl.chaos import Chaos, ChaosError, live_books, stale_frames, wait_quiet
from ctl.checker import check_logs
from ctl.client import ControlError
from ctl.verify import verify

KINDS = ("kill", "kill2", "pause", "partition", "link", "migrate", "hostd-pause", "hostd-kill")
DEFAULT_FAULTS = KINDS
WEIGHTS = {"kill": 3, "kill2": 1, "pause": 2, "partition": 2, "link": 2, "migrate": 2,
           "hostd-pause": 1, "hostd-kill": 1}  # fmt: skip
MEAN_GAP_S = 1.5  # between two independent faults (exponential, clipped)
OVERLAP_P = 0.45  # chance a fault gets a second one started while it is in effect
PAUSE_S = (0.05, 1.0)  # SIGSTOP lengths, NIC workers and host daemons
CUT_S = (0.3, 3.0)  # partitions and pulled cables
BOOT_S = 2.0  # planning guess: a rebooted NIC's boot and bulk resync, after the reboot delay
BOOT_MIN_S = 0.3  # ... of which its new worker surely does not run yet (nothing to kill)


@dataclass(frozen=True, slots=True)
class HostShape:
    """What the planner needs of one host: its NICs, uplinks and VMs with their homes."""

    name: str
    nics: tuple[str, ...]
    uplinks: tuple[str, ...]
    vms: tuple[tuple[str, str], ...]  # (VM, home NIC)


@dataclass(frozen=True, slots=True)
class Topology:
    """The cluster as the planner sees it (no I/O): hosts and the timers that shape faults."""

    hosts: tuple[HostShape, ...]
    reboot_s: float = 1.0
    detect_s: float = 0.15

    @classmethod
    def from_config(cls, config: Config) -> Topology:
        """The topology of a loaded config."""
        hosts = tuple(
            HostShape(
                h.name,
                tuple(n.name for n in h.nics),
                tuple(n.uplink_name(p) for n in h.nics for p in n.uplinks),
                tuple((vm.name, vm.nic) for vm in h.vms),
            )
            for h in config.hosts
        )
        t = config.timers
        return cls(hosts, t.reboot_delay_s, t.down_after_s)

    def host_of(self, nic: str) -> HostShape:
        """The host a NIC (or an uplink `nic/port`) belongs to."""
        nic = nic.split("/")[0]
        return next(h for h in self.hosts if nic in h.nics)


@dataclass(frozen=True, slots=True)
class Step:
    """One fault of a schedule: what, on which targets, when (s after start), for how long."""

    at_s: float
    kind: str
    targets: tuple[str, ...]
    duration_s: float = 0.0

    def __str__(self) -> str:
        lasting = f" for {self.duration_s:.2f} s" if self.duration_s else ""
        return f"+{self.at_s:7.2f} s  {self.kind} {' '.join(self.targets)}{lasting}"


def parse_faults(text: str) -> tuple[str, ...]:
    """`kill,pause,...` as fault kinds; ValueError naming the unknown ones."""
    kinds = tuple(dict.fromkeys(k.strip() for k in text.split(",") if k.strip()))
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise ValueError(f"unknown fault kinds {unknown or [text]}; choose from {','.join(KINDS)}")
    return kinds


def plan(seed: int, seconds: float, faults: Iterable[str], topology: Topology) -> list[Step]:
    """The seeded schedule: faults of the given kinds over `seconds`, in time order."""
    wanted = set(faults)
    if unknown := wanted - set(KINDS):
        raise ValueError(f"unknown fault kinds {sorted(unknown)}")
    kinds = tuple(k for k in KINDS if k in wanted)
    rng = random.Random(seed)
    planner = _Planner(rng, topology, kinds)
    steps: list[Step] = []
    t = rng.uniform(0.5, 1.5)
    while t < seconds:
        step = planner.any(t)
        if step is not None:
            steps.append(step)
            follow = planner.follow(step) if rng.random() < OVERLAP_P else None
            if follow is not None and follow.at_s < seconds:
                steps.append(follow)
                t = follow.at_s
        t += min(max(rng.expovariate(1 / MEAN_GAP_S), 0.1), 5.0)
    return steps


class _Planner:
    """The planner's picture of the cluster over time: what each planned fault takes out."""

    def __init__(self, rng: random.Random, topo: Topology, kinds: tuple[str, ...]) -> None:
        self.rng, self.topo, self.kinds = rng, topo, kinds
        self.out: dict[str, float] = {}  # NIC -> until when it is dead, hung or resyncing
        self.dead: dict[str, float] = {}  # NIC -> until its card has booted a new worker
        self.paused: dict[str, float] = {}
        self.cut: dict[str, float] = {}  # uplink -> until its cable is back
        self.split: dict[tuple[str, str], float] = {}
        self.hostd: dict[str, float] = {}  # host -> until its daemon runs again
        self.home = {vm: nic for h in topo.hosts for vm, nic in h.vms}
        self.came_from = dict(self.home)  # VM -> the NIC its latest planned migrate left
        self.booting_s = topo.reboot_s + BOOT_S

    # -- choosing ---------------------------------------------------------------------------

    def any(self, t: float) -> Step | None:
        """A fault of any allowed kind at `t` (by weight; the first kind that fits)."""
        kinds = list(self.kinds)
        while kinds:
            kind = self.rng.choices(kinds, [WEIGHTS[k] for k in kinds])[0]
            kinds.remove(kind)
            step = self.make(kind, t)
            if step is not None:
                return step
        return None

    def follow(self, prev: Step) -> Step | None:
        """A fault that starts while `prev` is still in effect, chosen to compose with it."""
        options = [o for o in self._combos(prev) if o[0] in self.kinds]
        self.rng.shuffle(options)
        for kind, at, target in options:
            step = self.make(kind, max(at, prev.at_s), target)
            if step is not None:
                return step
        return None

    def _combos(self, prev: Step) -> list[tuple[str, float, str | None]]:
        """(kind, when, target) candidates that overlap `prev`, the ones we want to see fail."""
        u, t, d = self.rng.uniform, prev.at_s, prev.duration_s
        if prev.kind in ("kill", "kill2"):
            nic = self.rng.choice(prev.targets)
            resync = t + self.topo.reboot_s + u(0.6, 1.6)  # booting, or resyncing from siblings
            sibling = self._sibling(nic)
            return [("kill", resync, nic), ("partition", resync, f"{nic},{sibling}"),
                    ("migrate", t + u(0.0, 2 * self.topo.detect_s), None),
                    ("pause", t + u(0.0, self.topo.detect_s), sibling)]  # fmt: skip
        if prev.kind == "migrate":
            vm, to = prev.targets
            during = t + u(0.0, 0.05)  # while the map update is in flight
            return [("kill", during, to), ("kill", during, self.came_from[vm]),
                    ("pause", during, to)]  # fmt: skip
        if prev.kind in ("partition", "pause", "link"):
            nic = self.rng.choice(prev.targets).split("/")[0]
            during = t + u(0.05, max(0.1, d))
            return [("kill", during, nic), ("migrate", during, None),
                    ("partition", during, None), ("link", during, None)]  # fmt: skip
        if prev.kind in ("hostd-pause", "hostd-kill"):
            during = t + u(0.0, max(0.1, d or 1.0))
            nic = self.rng.choice(self._host(prev.targets[0]).nics)
            return [("kill", during, nic), ("pause", during, nic), ("link", during, None)]
        return []

    def make(self, kind: str, t: float, target: str | None = None) -> Step | None:
        """A step of `kind` at `t` (on `target` if given) if it fits the plan so far; applied."""
        maker: Callable[[float, str | None], Step | None]
        maker = getattr(self, "_" + kind.replace("-", "_"))
        return maker(round(t, 3), target)

    # -- one maker per kind: pick targets that fit, record what the fault takes out -----------

    def _kill(self, t: float, nic: str | None) -> Step | None:
        nics = [nic] if nic else self._all_nics()
        fit = [n for n in nics if self.dead.get(n, 0) <= t and self._survivor(t, {n})]
        if not fit:
            return None
        n = self.rng.choice(fit)
        self._kill_out(n, t)
        return Step(t, "kill", (n,))

    def _kill2(self, t: float, _: str | None) -> Step | None:
        pairs = [(a, b) for h in self.topo.hosts if len(h.nics) >= 3
                 for i, a in enumerate(h.nics) for b in h.nics[i + 1 :]
                 if self.dead.get(a, 0) <= t and self.dead.get(b, 0) <= t
                 and self._survivor(t, {a, b})]  # fmt: skip
        if not pairs:
            return None
        pair = self.rng.choice(pairs)
        for n in pair:
            self._kill_out(n, t)
        return Step(t, "kill2", pair)

    def _pause(self, t: float, nic: str | None) -> Step | None:
        nics = [nic] if nic else self._all_nics()
        fit = [n for n in nics if max(self.paused.get(n, 0), self.dead.get(n, 0)) <= t
               and self._survivor(t, {n})]  # fmt: skip
        if not fit:
            return None
        n = self.rng.choice(fit)
        d = round(self.rng.uniform(*PAUSE_S), 3)
        self.paused[n] = t + d
        # Stopped past detection, it is declared down, fenced, and resyncs when it wakes.
        self._take_out(n, t + d + (BOOT_S if d >= self.topo.detect_s else 0.0))
        return Step(t, "pause", (n,), d)

    def _partition(self, t: float, pair: str | None) -> Step | None:
        pairs = [(a, b) for h in self.topo.hosts for i, a in enumerate(h.nics)
                 for b in h.nics[i + 1 :]]  # fmt: skip
        if pair:
            pairs = [p for p in pairs if set(p) == set(pair.split(","))]
        fit = [p for p in pairs if self.split.get(p, 0) <= t]
        if not fit:
            return None
        a, b = self.rng.choice(fit)
        d = round(self.rng.uniform(*CUT_S), 3)
        self.split[(a, b)] = t + d
        return Step(t, "partition", (a, b), d)

    def _link(self, t: float, _: str | None) -> Step | None:
        # Never every uplink of a host at once: north-south traffic must have a way out.
        fit = [p for h in self.topo.hosts for p in h.uplinks if self.cut.get(p, 0) <= t
               and sum(self.cut.get(q, 0) <= t for q in h.uplinks) > 1]  # fmt: skip
        if not fit:
            return None
        port = self.rng.choice(fit)
        d = round(self.rng.uniform(*CUT_S), 3)
        self.cut[port] = t + d
        return Step(t, "link", (port,), d)

    def _migrate(self, t: float, _: str | None) -> Step | None:
        moves = [(vm, n) for h in self.topo.hosts for vm, _home in h.vms for n in h.nics
                 if n != self.home[vm] and self.out.get(n, 0) <= t]  # fmt: skip
        if not moves:
            return None
        vm, nic = self.rng.choice(moves)
        self.came_from[vm], self.home[vm] = self.home[vm], nic
        return Step(t, "migrate", (vm, nic))

    def _hostd_pause(self, t: float, _: str | None) -> Step | None:
        fit = [h.name for h in self.topo.hosts if self.hostd.get(h.name, 0) <= t]
        if not fit:
            return None
        host = self.rng.choice(fit)
        d = round(self.rng.uniform(*PAUSE_S), 3)
        self.hostd[host] = t + d
        return Step(t, "hostd-pause", (host,), d)

    def _hostd_kill(self, t: float, _: str | None) -> Step | None:
        fit = [h.name for h in self.topo.hosts if self.hostd.get(h.name, 0) <= t]
        if not fit:
            return None
        host = self.rng.choice(fit)
        self.hostd[host] = t + self.booting_s
        return Step(t, "hostd-kill", (host,))

    # -- helpers ------------------------------------------------------------------------------

    def _survivor(self, t: float, victims: set[str]) -> bool:
        """Whether a NIC of the victims' host stays healthy: one must hold the state."""
        host = self._host_of(next(iter(victims)))
        return any(n not in victims and self.out.get(n, 0) <= t for n in host.nics)

    def _kill_out(self, nic: str, t: float) -> None:
        # Not running until the card's reboot delay and a boot; short of the team until resynced.
        self.dead[nic] = t + self.topo.reboot_s + BOOT_MIN_S
        self.paused.pop(nic, None)
        self._take_out(nic, t + self.booting_s)

    def _take_out(self, nic: str, until: float) -> None:
        self.out[nic] = max(self.out.get(nic, 0), until)

    def _all_nics(self) -> list[str]:
        return [n for h in self.topo.hosts for n in h.nics]

    def _host_of(self, nic: str) -> HostShape:
        return self.topo.host_of(nic)

    def _host(self, name: str) -> HostShape:
        return next(h for h in self.topo.hosts if h.name == name)

    def _sibling(self, nic: str) -> str:
        others = [n for n in self._host_of(nic).nics if n != nic]
        return self.rng.choice(others) if others else nic


# ------------------------------------------------------------------------------- the player


@dataclass(slots=True)
class Outcome:
    """What became of one step: `played`, `skipped` (its target was not there) or `failed`."""

    index: int
    step: Step
    status: str
    detail: str = ""


LASTING = ("pause", "partition", "link", "hostd-pause")  # faults that end after duration_s
RETRIES = 3  # reconnecting a cable is idempotent: a lost answer is asked again


class Nemesis:
    """Plays a schedule against the running cluster of `config`, with real timers.

    Signals go out from the playing thread at their time; control commands (partitions,
    cables, migrates), which wait for a daemon's answer, run on a small pool so that a slow
    answer never delays the next fault or a SIGCONT.
    """

    def __init__(self, config: Config, on_outcome: Callable[[Outcome], None] | None = None,
                 chaos: Chaos | None = None) -> None:  # fmt: skip
        self.config = config
        self.chaos = chaos or Chaos(config)
        self.on_outcome = on_outcome
        self.outcomes: list[Outcome] = []
        self._paused: dict[str, int] = {}  # NIC -> the worker pid we stopped
        self._hostd_paused: dict[str, int] = {}
        self._pulled: dict[str, Future[Any]] = {}  # uplink -> its link-down call
        self._splits: dict[tuple[str, str], float] = {}  # NIC pair -> when it ends (monotonic)
        self._stuck: set[str] = set()  # uplinks whose reconnect failed
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(4, thread_name_prefix="nemesis")

    def play(self, steps: list[Step], clock: Callable[[], float] = time.monotonic,
             sleep: Callable[[float], None] = time.sleep) -> list[Outcome]:  # fmt: skip
        """Inject every step at its time, end lasting ones after their duration, heal all."""
        t0 = clock()
        agenda = [(s.at_s, 0, i) for i, s in enumerate(steps)]  # (time, 0 inject | 1 end, step)
        heapq.heapify(agenda)
        try:
            while agenda:
                at, end, i = heapq.heappop(agenda)
                if (left := t0 + at - clock()) > 0:
                    sleep(left)
                if end:
                    self._end(i, steps[i])
                elif self._inject(i, steps[i], clock) and steps[i].kind in LASTING:
                    heapq.heappush(agenda, (at + steps[i].duration_s, 1, i))
        finally:
            self.heal_all(clock)
        return sorted(self.outcomes, key=lambda o: o.index)

    def _inject(self, i: int, step: Step, clock: Callable[[], float]) -> bool:
        """Start one fault; False if it could not be (logged as `chaos.skip`)."""
        kind, targets = step.kind, step.targets
        try:
            if kind in ("kill", "kill2"):
                self._kill(i, step)
                return True
            if kind == "pause":
                self._paused[targets[0]] = self.chaos.stop(targets[0], step=i)
            elif kind == "hostd-pause":
                self._hostd_paused[targets[0]] = self.chaos.hostd_stop(targets[0], step=i)
            elif kind == "hostd-kill":
                self._hostd_paused.pop(targets[0], None)  # dead: nothing left to SIGCONT
                self.chaos.hostd_kill(targets[0], step=i)
            elif kind == "partition":
                self._splits[(targets[0], targets[1])] = clock() + step.duration_s
                a, b = targets[0], targets[1]
                call = partial(self.chaos.partition, a, b, step.duration_s, step=i)
                self._background(i, step, call)
                return True
            elif kind == "link":
                call = partial(self.chaos.link, targets[0], False, step=i)
                self._pulled[targets[0]] = self._background(i, step, call)
                return True
            elif kind == "migrate":
                self._migrate(i, step)
                return True
        except ChaosError as e:
            self._skip(i, step, str(e))
            return False
        self._record(Outcome(i, step, "played"))
        return True

    def _kill(self, i: int, step: Step) -> None:
        running, gone = [], []
        for nic in step.targets:
            try:
                self.chaos.worker_pid(nic)
                running.append(nic)
            except ChaosError as e:
                gone.append(str(e))
        if not running:
            raise ChaosError("; ".join(gone))
        for nic in running:
            if (pid := self._paused.pop(nic, None)) is not None:
                # A stopped worker dies of SIGKILL too: its pause ends here, without SIGCONT.
                self.chaos.event("chaos.resume", nic=nic, pid=pid, step=i, killed=True)
        if step.kind == "kill":
            self.chaos.kill(running[0], step=i)
        else:
            self.chaos.kill_many(running, step=i)
        self._record(Outcome(i, step, "played", "; ".join(gone)))

    def _migrate(self, i: int, step: Step) -> None:
        vm, nic = step.targets
        host = self.config.vm(vm).host
        if host in self._hostd_paused:
            # The request would wait in a stopped daemon's socket and run when it wakes, after
            # our client gave up: a migrate at an unknown time, not a fault we can log truly.
            # (A killed one is different: our request dies with the client's socket.)
            raise ChaosError(f"the host daemon of {host} is paused")
        self._background(i, step, partial(self.chaos.migrate, vm, nic, step=i))

    def _end(self, i: int, step: Step) -> None:
        """End a lasting fault: SIGCONT, cable back in; a partition ends by itself."""
        target = step.targets[0]
        if step.kind == "pause" and (pid := self._paused.pop(target, None)) is not None:
            self.chaos.cont(target, pid, step=i)
        elif step.kind == "hostd-pause" and (pid := self._hostd_paused.pop(target, None)):
            self.chaos.hostd_cont(target, pid, step=i)
        elif step.kind == "link" and (pulled := self._pulled.pop(target, None)) is not None:

            def reconnect() -> Any:
                pulled.exception()  # after the pull's own answer, whatever it was
                for attempt in range(RETRIES):
                    try:
                        return self.chaos.link(target, True, step=i, attempt=attempt)
                    except ControlError:
                        if attempt == RETRIES - 1:
                            with self._lock:
                                self._stuck.add(target)  # heal_all tries again
                            raise
                return None

            self._pool.submit(self._guarded, i, step, reconnect, None, "end")

    def heal_all(self, clock: Callable[[], float] = time.monotonic) -> None:
        """Whatever is still broken (the play was cut short): resume, reconnect, unpartition."""
        self._pool.shutdown(wait=True)
        for nic, pid in self._paused.items():
            self.chaos.cont(nic, pid, healed=True)
        for host, pid in self._hostd_paused.items():
            self.chaos.hostd_cont(host, pid, healed=True)
        for port in sorted(set(self._pulled) | self._stuck):
            try:
                self.chaos.link(port, True, healed=True)
            except ControlError as e:
                self.chaos.event("chaos.error", kind="link", targets=[port], error=str(e))
        for (a, b), end in self._splits.items():
            if end > clock():
                self.chaos.unpartition(a, b, healed=True)
        self._paused, self._hostd_paused, self._pulled, self._splits = {}, {}, {}, {}
        self._stuck = set()

    def _background(self, i: int, step: Step, call: Callable[[], Any]) -> Future[Any]:
        outcome = Outcome(i, step, "played")
        return self._pool.submit(self._guarded, i, step, call, outcome)

    def _guarded(self, i: int, step: Step, call: Callable[[], Any], ok: Outcome | None,
                 phase: str = "inject") -> Any:  # fmt: skip
        try:
            result = call()
        except (ChaosError, ControlError) as e:
            self.chaos.event("chaos.error", step=i, kind=step.kind, targets=list(step.targets),
                             phase=phase, error=str(e))  # fmt: skip
            self._record(Outcome(i, step, "failed", str(e)))
            return None
        if ok is not None:
            self._record(ok)
        return result

    def _skip(self, i: int, step: Step, reason: str) -> None:
        self.chaos.event("chaos.skip", step=i, kind=step.kind, targets=list(step.targets),
                         reason=reason)  # fmt: skip
        self._record(Outcome(i, step, "skipped", reason))

    def _record(self, outcome: Outcome) -> None:
        with self._lock:
            self.outcomes.append(outcome)
            if self.on_outcome is not None:
                self.on_outcome(outcome)


# ------------------------------------------------------------------------------- the run


def run_and_check(config: Config, seed: int, seconds: float, faults: tuple[str, ...],
                  quiet_s: float = 60.0, say: Callable[[str], None] | None = None,
                  ) -> dict[str, Any]:  # fmt: skip
    """`nicteam chaos run`: plan, play against the running cluster, heal, wait for quiet,
    compare digests, judge. The cluster must be quiet to begin with (ChaosError if not)."""
    say = say or (lambda _: None)
    steps = plan(seed, seconds, faults, Topology.from_config(config))
    before = wait_quiet(config, quiet_s)
    if not before.ok:
        raise ChaosError("the cluster is not quiet before the run: " + "; ".join(before.problems))
    chaos = Chaos(config)
    chaos.event("chaos.nemesis.start", seed=seed, seconds=seconds, faults=list(faults),
                steps=len(steps), config=str(config.path), books=live_books(config),
                stale=stale_frames(config))  # fmt: skip
    say(f"seed {seed}: {len(steps)} faults over {seconds:g} s")

    def told(o: Outcome) -> None:
        say(f"{o.step}{'' if o.status == 'played' else f'  [{o.status}: {o.detail}]'}")

    outcomes = Nemesis(config, told, chaos).play(steps)
    counts = {s: sum(o.status == s for o in outcomes) for s in ("played", "skipped", "failed")}
    chaos.event("chaos.nemesis.stop", seed=seed, **counts)
    say("healed; waiting for quiet")
    quiet = wait_quiet(config, quiet_s)
    say(f"quiet after {quiet.seconds} s" if quiet.ok else f"not quiet: {quiet.problems}")
    same, pairs = verify(config, 10.0 if quiet.ok else 2.0)
    chaos.event("chaos.quiet", ok=quiet.ok, seconds=quiet.seconds, problems=quiet.problems,
                digests_ok=same, digests=[p.as_dict() for p in pairs],
                books=live_books(config), stale=stale_frames(config))  # fmt: skip
    return check_logs(config)
