"""`nicteam up` / `down` / `up --test`: a Procfile cluster that outlives the command.

`up` starts honcho detached in the run directory and leaves `cluster.json` there (honcho's pid,
the tag every process inherits, the config), so `down` finds everything it started, even
processes whose parent died. `up --machine M` launches only machine M's processes and leaves
`cluster-M.json` and `honcho-M.out` instead, so the machines of a cluster may share one run
directory; it still waits until every NIC of every machine is up. `selftest` is Mininet's
`--test pingall` for nicteam: launch in a run directory of its own, let the workload run,
compare the endpoints' books over that window.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bus.nicstate import NicState
from bus.rundir import RunDirError, write_private
from configs import Config
from ctl.checks import CheckResult, OnCheck, Runner, check_problems, netns_checks, run_checks
from ctl.cluster import (
    ClusterExited,
    NotReady,
    PlacementError,
    launch,
    remove_namespaces,
    running_cluster,
    stop,
    tagged_pids,
    wait_for,
    wait_ready,
)
from ctl.summary import books, losses, rows, window
from ctl.views import ask
from kernel import netns

STATE_FILE = "cluster.json"


class SessionError(RuntimeError):
    """A cluster that cannot be started or stopped as asked; the message says what to do."""


def state_file(run_dir: Path, machine: str | None = None) -> Path:
    """Where `up` keeps its state: `cluster.json`, or `cluster-<machine>.json` for one machine."""
    return run_dir / (STATE_FILE if machine is None else f"cluster-{machine}.json")


def _state(path: Path) -> dict[str, Any] | None:
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    # A damaged file (a crash mid-write, a hand edit) is no cluster: not a KeyError later.
    ok = isinstance(state, dict) and isinstance(state.get("tag"), str)
    return state if ok and type(state.get("pid")) is int else None


def _state_files(run_dir: Path) -> list[Path]:
    """Every state file in `run_dir`: the whole cluster's and each machine's."""
    return [state_file(run_dir), *sorted(run_dir.glob("cluster-*.json"))]


def launched_config(run_dir: Path) -> str | None:
    """The config of the cluster `up` started in `run_dir` (or of a machine's share of it),
    if one is running there."""
    for path in _state_files(run_dir):
        state = _state(path)
        if state is not None and tagged_pids(state["tag"]):
            return str(state["config"])
    return None


def running_states(run_dir: Path) -> list[dict[str, Any]]:
    """The state of each cluster, or machine's share of one, that `up` started in `run_dir` and
    that still runs: `tag`, `pid`, `config`, and `machine` for a share."""
    states = (_state(path) for path in _state_files(run_dir))
    return [s for s in states if s is not None and tagged_pids(s["tag"])]


def up(
    config_path: Path,
    run_dir: Path,
    timeout: float,
    on_up: Callable[[str, float], None],
    machine: str | None = None,
) -> dict[str, Any]:
    """Launch the cluster (`machine`'s share of it) detached; return its state once every NIC
    of the whole cluster is up."""
    path = state_file(run_dir, machine)
    old = _state(path)
    if old is not None and tagged_pids(old["tag"]):
        what = "a cluster is" if machine is None else f"machine {machine}'s share is"
        raise SessionError(
            f"{what} already up in {run_dir} (honcho pid {old['pid']}); "
            "`nicteam down` first, or give another --run-dir"
        )
    tag = f"nt-{uuid.uuid4().hex[:12]}"
    output = run_dir / ("honcho.out" if machine is None else f"honcho-{machine}.out")
    try:
        c = launch(config_path, run_dir, tag, output, machine)
    except (RunDirError, PlacementError) as e:
        raise SessionError(str(e)) from None
    state = {"pid": c.proc.pid, "tag": tag, "config": str(config_path), "run_dir": str(run_dir)}
    state |= {} if machine is None else {"machine": machine}
    write_private(path, json.dumps(state))
    try:
        wait_ready(c, timeout, on_up)
    except (NotReady, ClusterExited) as e:
        stop(c.proc, tag)
        path.unlink(missing_ok=True)
        raise SessionError(f"{e}; stopped it again (log: {c.output})") from None
    return state


def down(run_dir: Path, machine: str | None = None, timeout: float = 20.0) -> int:
    """Stop what `up` started in `run_dir`: `machine`'s share, or without one everything `up`
    started there (every machine's share too); the number of processes (0: none)."""
    paths = [state_file(run_dir, machine)] if machine is not None else _state_files(run_dir)
    return sum(_down(path, timeout) for path in paths)


def _down(path: Path, timeout: float) -> int:
    state = _state(path)
    if state is None:
        return 0
    tag = state["tag"]
    pids = tagged_pids(tag)
    with contextlib.suppress(ProcessLookupError):
        os.kill(state["pid"], signal.SIGTERM)  # honcho stops its processes in order
    deadline = time.monotonic() + timeout
    while tagged_pids(tag) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in tagged_pids(tag):  # whatever did not stop in time
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    remove_namespaces(tag)  # also when the whole cluster was SIGKILLed: found by its tag
    path.unlink(missing_ok=True)
    return len(pids)


@dataclass(slots=True)
class TestResult:
    """What `up --test` measured: per-flow rows over the window, the netns endpoints' checks,
    and what was unexpected in either."""

    rows: list[dict[str, Any]]
    problems: list[str]
    seconds: float
    checks: list[CheckResult] = field(default_factory=list)


def judge(config: Config, before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """Unexpected outcomes between two sets of books: loss or resets, silence, a leak."""
    lost_before, lost_after = losses(before), losses(after)
    problems = []
    for flow in config.flows:
        side = after.get(flow.name, {}).get("sink", {})
        got = side.get("delivered", 0) - before.get(flow.name, {}).get("sink", {}).get(
            "delivered", 0
        )
        gaps0, resets0 = lost_before.get(flow.name, (0, 0))
        gaps, resets = lost_after.get(flow.name, (0, 0))
        if flow.expect == "deny":
            if got:
                problems.append(f"{flow.name}: denied by the firewall, yet {got} delivered")
            continue
        if got <= 0:
            problems.append(f"{flow.name}: nothing delivered")
        if gaps > gaps0:
            problems.append(f"{flow.name}: {gaps - gaps0} frames lost")
        if resets > resets0:
            problems.append(f"{flow.name}: {resets - resets0} connections reset")
    return problems


def selftest(
    config_path: Path,
    seconds: float,
    on_up: Callable[[str, float], None],
    on_tick: Callable[[float], None],
    on_check: OnCheck | None = None,
    runner: Runner | None = None,
) -> TestResult:
    """Launch a private cluster, run the workload `seconds`, judge the books, run the netns
    endpoints' checks (with `runner`, default: for real) and judge them, stop it.

    SessionError (one line) if the cluster cannot start: the place, the privilege, a daemon.
    """
    try:
        return _selftest(config_path, seconds, on_up, on_tick, on_check, runner)
    except (RunDirError, PlacementError) as e:
        raise SessionError(str(e)) from None
    except (NotReady, ClusterExited) as e:
        raise SessionError(f"{e}; the test's cluster is stopped") from None


def _selftest(
    config_path: Path,
    seconds: float,
    on_up: Callable[[str, float], None],
    on_tick: Callable[[float], None],
    on_check: OnCheck | None,
    runner: Runner | None,
) -> TestResult:
    with running_cluster(config_path=config_path, on_up=on_up) as c:
        # Datagrams sent before the NICs were up count as gaps at the first delivery: the
        # window opens once every flow that should deliver does.
        wanted = [f.name for f in c.config.flows if f.expect == "deliver"]

        def flowing() -> dict[str, Any] | None:
            got = books(c.config)
            ok = all(got.get(n, {}).get("sink", {}).get("delivered", 0) > 0 for n in wanted)
            return got if ok else None

        before = wait_for("every flow that should deliver to deliver", flowing, timeout=30)
        t0 = time.monotonic()
        while (left := seconds - (time.monotonic() - t0)) > 0:
            time.sleep(min(0.5, left))
            on_tick(time.monotonic() - t0)
        after = books(c.config)
        # After the window, one at a time: a check's traffic never competes with the workload.
        checks = _netns_checks(c.config, c.tag, on_check, runner)
    table = window(rows(c.config, before), rows(c.config, after))
    problems = judge(c.config, before, after) + check_problems(checks)
    return TestResult(table, problems, seconds, checks)


def _netns_checks(
    config: Config, tag: str, on_check: OnCheck | None, runner: Runner | None
) -> list[CheckResult]:
    """Every netns endpoint's checks, once its namespace is there (its daemon makes it)."""
    names = [netns.namespace(tag, name) for name, _ in netns_checks(config)]
    if names:
        wait_for("every netns VM's and peer's namespace", lambda: all(map(netns.exists, names)))
    return run_checks(config, tag, runner, on_check=on_check)


def resync_progress(stats: dict[str, Any]) -> tuple[int, int] | None:
    """(changes held, of) of the snapshots a NIC is receiving, from its `stats`; None if none."""
    parts = [p["snapshot"] for p in stats.get("sync", {}).get("peers", {}).values()]
    parts = [p for p in parts if p]
    if not parts:
        return None
    return sum(p[0] for p in parts), sum(p[1] for p in parts)


def wait_up(config: Config, timeout: float, update: Callable[[str, float], None]) -> None:
    """Wait until every NIC is up, telling `update(text, 0..1)` how a boot or resync goes."""
    names = [n.name for n in config.nics]
    last = ""

    def all_up() -> bool:
        nonlocal last
        states = {
            n: ask(config, n, "stats", timeout=1.0) or {"state": NicState.DOWN} for n in names
        }
        waiting = [n for n in names if states[n].get("state") != NicState.UP]
        text, done = "every NIC up", 1.0
        if waiting:
            nic = waiting[0]
            text, done = f"{nic} {states[nic].get('state', NicState.STARTING)}", 0.0
            got = resync_progress(states[nic])
            if got is not None:
                text += f": {got[0]:,} / {got[1]:,} changes of its siblings' state"
                done = got[0] / got[1]
        if text != last:
            last = text
            update(text, done)
        return not waiting

    wait_for("every NIC up", all_up, timeout=timeout)
