"""Chaos figures: seeded nemesis runs against real clusters, each judged by the checker.

    python -m bench.chaos [--seconds 600] [--seeds 1,2,3,4] [--configs default,four-nics]

`--seconds` of faults in all, split evenly over the seeds; each seed runs on a fresh cluster,
the configs taken in turn (seed 1 on the first, seed 2 on the second, ...). From the
checker's verdicts: faults played, connections reset (goal: 0), frames lost per fault window
(p50/p99), detection and takeover (p50/p99/max: the fault to `team.first_frame` of the
failover epoch, for the kills and pauses that caused one) and every run's verdict with the
command that replays it. The logs of an invalid run, or of one with a takeover over 2 s, are
kept (their path is in the JSON).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from collections import Counter
from typing import Any

from bench.common import print_table, write_results
from bench.failover import pct
from ctl.cluster import REPO, running_cluster
from ctl.nemesis import DEFAULT_FAULTS, parse_faults, run_and_check

SLOW_TAKEOVER_MS = 2000.0


def one(config: str, seed: int, seconds: float, faults: tuple[str, ...]) -> dict[str, Any]:
    """One seed on a fresh cluster of `config`: the checker's verdict, logs kept if invalid."""
    path = REPO / "configs" / f"{config}.toml"
    with running_cluster(config_path=path) as c:
        verdict = run_and_check(c.config, seed, seconds, faults)
        slow = any((w["takeover_ms"] or 0) > SLOW_TAKEOVER_MS for w in verdict["windows"])
        if not verdict["valid"] or slow:  # a takeover that slow is worth reading the logs of
            kept = tempfile.mkdtemp(prefix=f"nt-bench-chaos-{config}-{seed}-")
            verdict["logs"] = shutil.copytree(c.run_dir / "logs", kept, dirs_exist_ok=True)
    return verdict


def summary(verdicts: list[dict[str, Any]]) -> dict[str, Any]:
    """Figures over every run's fault windows and flows."""
    windows = [w for v in verdicts for w in v["windows"]]
    takeover = [w["takeover_ms"] for w in windows if w["takeover_ms"] is not None]
    detect = [w["detect_ms"] for w in windows if w["detect_ms"] is not None]
    lost = [w["lost"] for w in windows if w["lost"] is not None]  # charged by the report

    def figures(name: str, xs: list[float], unit: str) -> dict[str, Any]:
        if not xs:
            return {f"{name}_{unit}_p50": None, f"{name}_{unit}_p99": None}
        return {f"{name}_{unit}_p50": pct(xs, 50), f"{name}_{unit}_p99": pct(xs, 99),
                f"{name}_{unit}_max": round(max(xs), 1)}  # fmt: skip

    return {
        "faults_played": len(windows),
        "faults_by_kind": dict(Counter(w["kind"] for w in windows)),
        "faults_skipped": sum(v["skipped"] for v in verdicts),
        "faults_failed": sum(v["failed"] for v in verdicts),
        "connections_reset": sum(v["totals"]["resets"] for v in verdicts),
        "connections_reset_excused": sum(v["totals"].get("resets_excused", 0) for v in verdicts),
        "frames_lost": sum(v["totals"]["lost"] for v in verdicts),
        **figures("frames_lost_per_fault", lost, "frames"),
        **figures("detect", detect, "ms"),
        **figures("takeover", takeover, "ms"),
        "takeover_samples": len(takeover),
        # The slowest takeovers, to be explained rather than averaged away.
        "takeover_slowest": sorted(
            (
                {
                    "config": v["config"],
                    "seed": v["seed"],
                    "kind": w["kind"],
                    "targets": w["targets"],
                    "at_s": w["at_s"],
                    "takeover_ms": w["takeover_ms"],
                    "overlapped": w.get("overlapped"),
                }
                for v in verdicts
                for w in v["windows"]
                if w["takeover_ms"] is not None
            ),
            key=lambda r: -r["takeover_ms"],
        )[:5],
        "longest_stall_ms": max((v["totals"]["longest_stall_ms"] for v in verdicts), default=0),
        "valid": sum(v["valid"] for v in verdicts),
        "invalid": sum(not v["valid"] for v in verdicts),
    }


def run_row(config: str, v: dict[str, Any]) -> dict[str, Any]:
    """What the JSON keeps of one run."""
    return {
        "config": config, "seed": v["seed"], "seconds": v["seconds"], "valid": v["valid"],
        "played": v["played"], "skipped": v["skipped"], "failed": v["failed"],
        "resets": v["totals"]["resets"], "resets_excused": v["totals"].get("resets_excused"),
        "lost": v["totals"]["lost"],
        "violated": [i["name"] for i in v["invariants"] if not i["ok"]],
        "findings": [f for i in v["invariants"] for f in i["findings"]][:20],
        "command": v["command"], "logs": v.get("logs"),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    """Run every seed, print the table, write bench/results/chaos.json."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=600.0, help="faults in all, over the seeds")
    ap.add_argument("--seeds", default="1,2,3,4", help="comma-separated seeds")
    ap.add_argument("--configs", default="default,four-nics", help="configs/<name>.toml, in turn")
    ap.add_argument("--faults", default=",".join(DEFAULT_FAULTS))
    args = ap.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    faults = parse_faults(args.faults)
    if not seeds or not configs:
        ap.error("give at least one seed and one config")
    each = max(10.0, args.seconds / len(seeds))
    started, runs, verdicts = time.monotonic(), [], []
    for i, seed in enumerate(seeds):
        config = configs[i % len(configs)]
        print(f"  {config} seed {seed}: {each:g} s of faults", flush=True)
        v = one(config, seed, each, faults)
        verdicts.append(v)
        runs.append(run_row(config, v))
        print(f"    {'valid' if v['valid'] else 'INVALID'}: {v['played']} faults, "
              f"{v['totals']['resets']} reset, {v['totals']['lost']} lost", flush=True)  # fmt: skip
        results = {"seconds_per_run": each, "faults": list(faults), **summary(verdicts),
                   "runs": runs, "wall_s": round(time.monotonic() - started, 1)}  # fmt: skip
        # After every run: a long bench keeps what it measured so far, whatever comes next.
        path = write_results("chaos", results)
    show(results, f"{len(seeds)} seeds x {each:g} s, {','.join(configs)}")
    print(f"wrote {path}")


def show(r: dict[str, Any], title: str) -> None:
    """The table of the figures, then one line per run."""
    rows = [
        ("faults played", str(r["faults_played"]),
         f"{r['faults_skipped']} skipped, {r['faults_failed']} failed"),
        ("connections reset", str(r["connections_reset"] - r["connections_reset_excused"]),
         f"goal 0 (deliver flows); {r['connections_reset_excused']} more with a host daemon "
         "crash or a whole host lost"),
        ("frames lost / fault p50 / p99",
         f"{r['frames_lost_per_fault_frames_p50']} / {r['frames_lost_per_fault_frames_p99']}",
         "per fault window"),
        ("detect p50 / p99", f"{r['detect_ms_p50']} / {r['detect_ms_p99']} ms",
         "fault -> host.nic.down"),
        ("takeover p50 / p99", f"{r['takeover_ms_p50']} / {r['takeover_ms_p99']} ms",
         "fault -> first frame on the new path"),
        ("takeover max", f"{r.get('takeover_ms_max')} ms", f"{r['takeover_samples']} takeovers"
         + "".join(f"; slowest: {w['kind']} {','.join(w['targets'])} at {w['at_s']} s "
                   f"({w['config']} seed {w['seed']}{', overlapping' if w['overlapped'] else ''})"
                   for w in r["takeover_slowest"][:1])),
        ("verdicts", f"{r['valid']} valid", f"{r['invalid']} invalid"),
    ]  # fmt: skip
    print_table(f"nicteam chaos ({title})", rows)
    for run in r["runs"]:
        verdict = "valid" if run["valid"] else "INVALID: " + "; ".join(run["violated"])
        print(f"  {run['config']:<10} seed {run['seed']:<4} {verdict}")


if __name__ == "__main__":
    main()
