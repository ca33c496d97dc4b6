"""`up --test` for netns VMs and peers: run each declared check in its namespace and judge it.

A built-in endpoint is judged by its books; a netns one runs real programs whose traffic no
book records, so it is judged by the `checks` its config declares (configs/kinds.py): each is a
shell command run inside the endpoint's namespace, which passes when its exit status matches
`expect` ("ok": exit 0 within timeout_s; "fail": anything else, a timeout included). Running a
command is a `Runner` given to `run_checks`, so the judging is tested without namespaces.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from configs import NETNS, CheckSpec, Config
from kernel.netns import exec_argv, namespace

__all__ = [
    "CheckResult",
    "OnCheck",
    "Outcome",
    "Runner",
    "check_problems",
    "count_checks",
    "format_checks",
    "netns_checks",
    "passes",
    "run_checks",
    "run_in_namespace",
]

KILL_WAIT_S = 5.0  # a timed-out check's processes, after SIGKILL, to be reaped
OUTPUT_TAIL = 2000  # bytes of a check's output kept: its last line names what went wrong


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one command ended: its exit status (None: killed at its timeout), its last line."""

    status: int | None
    last_line: str = ""


#: Runs argv with a timeout in seconds; how it ended.
Runner = Callable[[Sequence[str], float], Outcome]
#: Told (endpoint, check, how many ran before it) as each check starts: progress.
OnCheck = Callable[[str, CheckSpec, int], None]


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One check of one netns endpoint: what it expected, how it ended, how long it took."""

    endpoint: str
    check: CheckSpec
    outcome: Outcome
    seconds: float

    @property
    def passed(self) -> bool:
        """Whether the outcome is the one the check expects."""
        return passes(self.check.expect, self.outcome.status)

    @property
    def got(self) -> str:
        """The outcome in the check's own words: "ok", or "fail" and why."""
        status = self.outcome.status
        if status == 0:
            return "ok"
        if status is None:
            return f"fail (timeout {self.check.timeout_s:g} s)"
        return f"fail (exit {status})"


def passes(expect: str, status: int | None) -> bool:
    """Whether exit `status` (None: timed out) is what `expect` ("ok" or "fail") asks."""
    return (status == 0) == (expect == "ok")


def netns_checks(config: Config) -> list[tuple[str, tuple[CheckSpec, ...]]]:
    """Every netns VM and peer of `config` with its checks, VMs first, in config order."""
    ends = [(vm.name, vm.checks) for vm in config.vms if vm.kind == NETNS]
    return ends + [(p.name, p.checks) for p in config.peers if p.kind == NETNS]


def count_checks(config: Config) -> int:
    """How many checks `run_checks` runs for `config`."""
    return sum(len(checks) for _, checks in netns_checks(config))


def run_checks(
    config: Config,
    tag: str,
    runner: Runner | None = None,
    clock: Callable[[], float] = time.monotonic,
    on_check: OnCheck | None = None,
) -> list[CheckResult]:
    """Run every check of every netns endpoint of cluster `tag`, one after the other (so that
    an iperf3 check does not starve a ping), in its namespace with its timeout."""
    run = runner or run_in_namespace
    results: list[CheckResult] = []
    for endpoint, checks in netns_checks(config):
        ns = namespace(tag, endpoint)
        for check in checks:
            if on_check is not None:
                on_check(endpoint, check, len(results))
            t0 = clock()
            outcome = run(exec_argv(ns, ["sh", "-c", check.cmd]), check.timeout_s)
            results.append(CheckResult(endpoint, check, outcome, clock() - t0))
    return results


def check_problems(results: Sequence[CheckResult]) -> list[str]:
    """One line per check whose outcome is not the expected one, naming it."""
    problems = []
    for r in results:
        if not r.passed:
            why = f": {r.outcome.last_line}" if r.outcome.last_line else ""
            problems.append(
                f"{r.endpoint} check {r.check.name}: expected {r.check.expect}, got {r.got}{why}"
            )
    return problems


def format_checks(results: Sequence[CheckResult]) -> str:
    """The checks as an aligned text table: endpoint, check, expect, got, seconds."""
    rows = [["endpoint", "check", "expect", "got", "seconds"]]
    rows += [
        [r.endpoint, r.check.name, r.check.expect, r.got, f"{r.seconds:.2f}"]
        + ([] if r.passed else ["UNEXPECTED"])
        for r in results
    ]
    widths = [max(len(row[i]) for row in rows if i < len(row)) for i in range(5)]
    lines = []
    for row in rows:
        cells = [f"{cell:<{widths[i]}}" if i < 4 else f"{cell:>{widths[i]}}"
                 for i, cell in enumerate(row[:5])]  # fmt: skip
        lines.append("  ".join(cells + row[5:]).rstrip())
    return "\n".join(lines)


def run_in_namespace(argv: Sequence[str], timeout: float) -> Outcome:
    """Run `argv` (an `ip netns exec` line) to its end or `timeout`, in a session of its own so
    that a timeout kills whatever it started too (curl under sh, say)."""
    try:
        proc = subprocess.Popen(
            list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    except OSError as e:
        return Outcome(127, f"{argv[0]}: {e.strerror or e}")
    status: int | None
    try:
        out, _ = proc.communicate(timeout=timeout)
        status = proc.returncode
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        try:
            out, _ = proc.communicate(timeout=KILL_WAIT_S)
        except subprocess.TimeoutExpired:  # a daemon it left holds the pipe: not ours to wait
            out = b""
            proc.wait(KILL_WAIT_S)
        status = None
    lines = out[-OUTPUT_TAIL:].decode(errors="replace").strip().splitlines()
    return Outcome(status, lines[-1].strip() if lines else "")
