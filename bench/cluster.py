"""Clusters of 1, 2 and 4 hosts of two NICs each on this machine, next to the bus ceiling.

    python -m bench.cluster [--sizes 1,2,4] [--kills 10] [--quick] [--out PATH]

Per size, a config in two-hosts.toml's shape (`bench.clusterconf`), written into a temporary
directory and loaded by `configs.load_config`, is launched from the Procfile `ctl.cluster`
generates from it. Measured:

- launch: from honcho's start to every NIC up, and to every flow delivering;
- idle CPU per process (fabricd, each host's card and daemon, each NIC's card and worker,
  honcho): utime + stime from /proc/<pid>/stat over a window with the workload running at its
  configured rate, as % of one core;
- frames/s carried per host: the `frames_in` counter of its NICs' `stats` (what `nicteam top`
  shows as frames/s) over the same window, summed per host;
- takeover p50/p99 over `--kills` SIGKILLs of NIC workers, rotating over hosts and NICs, each
  NIC back up with its VPIDs home before the next kill; each takeover (the kill to the first
  frame on the new path) as `nicteam report` computes it from the logs.

The bus ceiling, frames/s one process pushes to another in batches of 32 (as the other
benches) over ipc and over tcp with CURVE on 127.0.0.1, is measured in the same run.
"""

from __future__ import annotations

import argparse
import itertools
import os
import shlex
import tempfile
import time
from collections.abc import Callable
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from bench.clusterconf import NICS_PER_HOST, cluster_toml
from bench.common import RESULTS, TRANSPORTS, bus_ceiling_fps, write_results
from bench.failover import pct
from configs import Config, load_config
from ctl.chaos import Chaos
from ctl.cluster import Cluster, running_cluster, wait_for
from ctl.report import report
from ctl.summary import books
from ctl.top import counters
from wire.addr import mac_bytes
from wire.build import udp_frame

BATCH = 32  # frames per bus message, as bench.handover and bench.datapath measure the bus
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- processes and their CPU ------------------------------------------------------------------


def proc_name(argv: list[str]) -> str:
    """Which process of the cluster a command line is: nic1, nic1-card, h1, h1-card, ...

    honcho runs each Procfile line through `sh -c`: such a shell is `sh(nic1-card)`.
    """
    args = dict(itertools.pairwise(argv))
    module = args.get("-m", "")
    if module == "fabricd":
        return "fabricd"
    if module in ("hostd", "hostd.daemon"):
        return args.get("--host", "?") + ("-card" if module == "hostd" else "")
    if module in ("nicd", "nicd.worker"):
        return args.get("--nic", "?") + ("-card" if module == "nicd" else "")
    if any(Path(a).name == "honcho" for a in argv[:2]):
        return "honcho"
    if argv and Path(argv[0]).name in ("sh", "dash", "bash") and "-c" in args:
        return f"sh({proc_name(shlex.split(args['-c']))})"
    return Path(argv[0]).name if argv else "?"


def cmdline(pid: int) -> list[str]:
    """The command line of `pid` (empty if it is gone)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def cpu_seconds(pid: int) -> float | None:
    """User plus system CPU seconds `pid` has used (None if it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime: fields 14 and 15


def parent(pid: int) -> int:
    """The parent pid of `pid` (0 if it is gone)."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def named_pids(c: Cluster) -> dict[str, int]:
    """Every process of the cluster by name. honcho keeps a process per Procfile line beside
    its main one: each is named after the shell it runs, `honcho(sh(nic1-card))`."""
    pids = sorted(c.pids())
    names = {pid: proc_name(cmdline(pid)) for pid in pids}
    for pid in pids:
        children = [names[p] for p in pids if parent(p) == pid and names[p].startswith("sh(")]
        if names[pid] == "honcho" and len(children) == 1:
            names[pid] = f"honcho({children[0]})"
    out: dict[str, int] = {}
    for pid in pids:
        key, i = names[pid], 1
        while key in out:  # (two of one name: a rebooted worker and its old self, briefly)
            i += 1
            key = f"{names[pid]}#{i}"
        out[key] = pid
    return out


# -- one window: CPU per process, frames/s per host --------------------------------------------


def _frames(c: Cluster, nic: str) -> tuple[float, int]:
    stats = c.control(nic, "stats")
    return time.monotonic(), counters(stats)["frames"]


def window(c: Cluster, seconds: float) -> tuple[dict[str, float], dict[str, float]]:
    """CPU % of one core per process and frames/s per host, over `seconds` of the workload."""
    pids = named_pids(c)
    nics = [(h.name, n.name) for h in c.config.hosts for n in h.nics]
    cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()}
    t0 = time.monotonic()
    frames0 = {nic: _frames(c, nic) for _, nic in nics}
    time.sleep(max(0.0, seconds - (time.monotonic() - t0)))  # the window itself, not a sync
    frames1 = {nic: _frames(c, nic) for _, nic in nics}
    cpu1 = {name: cpu_seconds(pid) for name, pid in pids.items()}
    dt = time.monotonic() - t0
    cpu = {}
    for name, before in cpu0.items():
        after = cpu1[name]
        if before is not None and after is not None:  # a process gone meanwhile is left out
            cpu[name] = round((after - before) / dt * 100, 1)
    per_host: dict[str, float] = {h.name: 0.0 for h in c.config.hosts}
    for host, nic in nics:
        (ta, a), (tb, b) = frames0[nic], frames1[nic]
        per_host[host] += (b - a) / (tb - ta) if b >= a and tb > ta else 0.0
    return cpu, {h: round(fps, 1) for h, fps in per_host.items()}


# -- launch ------------------------------------------------------------------------------------


def _deliver(config: Config) -> list[str]:
    return [f.name for f in config.flows if f.expect == "deliver"]


def _delivered(config: Config) -> dict[str, int]:
    return {n: int(s.get("sink", {}).get("delivered", 0)) for n, s in books(config).items()}


def delivering(config: Config) -> bool:
    """Every flow that must deliver has delivered something."""
    got = _delivered(config)
    return all(got.get(f, 0) > 0 for f in _deliver(config))


# -- kills -------------------------------------------------------------------------------------


def kill_order(config: Config, n: int) -> list[str]:
    """`n` NICs to kill in turn: each host in turn, and on each host its NICs in turn."""
    hosts = [[nic.name for nic in h.nics] for h in config.hosts]
    return [hosts[i % len(hosts)][(i // len(hosts)) % len(hosts[i % len(hosts)])]
            for i in range(n)]  # fmt: skip


def kills(c: Cluster, n: int, say: Callable[[str], None]) -> dict[str, Any]:
    """SIGKILL NIC workers `n` times, each back up with its VPIDs home before the next;
    takeover and detection per kill as `nicteam report` computes them from the logs."""
    chaos = Chaos(c.config)
    for i, nic in enumerate(kill_order(c.config, n)):
        old = chaos.kill(nic, step=f"bench-{i + 1}")
        say(f"kill {i + 1}/{n}: {nic} (pid {old})")

        def back(nic: str = nic, old: int = old) -> bool:
            return c.worker_pid(nic) != old and c.control(nic, "stats")["state"] == "up"

        wait_for(f"kill {i + 1}: {nic} rejoined", back, timeout=60)
        wait_for(f"kill {i + 1}: VPIDs home", lambda: not c.ports_away(), timeout=60)
    rep = report(c.run_dir / "logs", c.config)
    ours = [f for f in rep["faults"] if f["kind"] == "kill"]  # the run dir is this size's own
    takeover = [f["takeover_ms"] for f in ours if f["takeover_ms"] is not None]
    detect = [f["detect_ms"] for f in ours if f["detect_ms"] is not None]
    return {
        "takeover_ms": _spread(takeover),
        "detect_ms": _spread(detect),
        "kills": n,
        "frames_lost": sum(f["frames_lost"] for f in ours),
        "connections_reset": sum(f["connections_reset"] for f in ours),
    }


def _spread(xs: list[float]) -> dict[str, Any]:
    """p50/p99 (None without samples), how many there are, every sample."""
    return {
        "p50": pct(xs, 50) if xs else None,
        "p99": pct(xs, 99) if xs else None,
        "n": len(xs),
        "samples": [round(x, 1) for x in xs],
    }


# -- one size ----------------------------------------------------------------------------------


def one_size(hosts: int, kill_count: int, seconds: float, top: Path) -> dict[str, Any]:
    """Launch `hosts` hosts, measure launch, a window and the kills; always stopped."""
    say = _say(f"{hosts} host{'s' if hosts > 1 else ''}")
    path = top / f"cluster-{hosts}.toml"
    path.write_text(cluster_toml(hosts))
    config = load_config(path, top / "unused-run")  # range-checked like any user config
    ups: dict[str, float] = {}

    def up(nic: str, _s: float) -> None:
        ups[nic] = time.monotonic()

    t0 = time.monotonic()  # honcho starts inside running_cluster
    with running_cluster(config_path=path, on_up=up) as c:
        nics_up = max(ups.values()) - t0
        wait_for("every flow delivering", lambda: delivering(c.config), timeout=60)
        flows_up = time.monotonic() - t0
        say(f"launch: every NIC up after {nics_up:.2f} s, every flow after {flows_up:.2f} s")
        cpu, fps = window(c, seconds)
        say(f"{seconds:g} s window: {sum(cpu.values()):.1f}% CPU, {sum(fps.values()):,.0f} f/s")
        k = kills(c, kill_count, say)
    return {
        "hosts": hosts,
        "nics": len(config.nics),
        "flows": len(config.flows),
        "processes": len(cpu),
        "launch_s": {"nics_up": round(nics_up, 3), "flows_delivering": round(flows_up, 3)},
        "launch_nic_up_s": {nic: round(t - t0, 3) for nic, t in ups.items()},
        "idle_cpu_pct": cpu,
        "idle_cpu_pct_total": round(sum(cpu.values()), 1),
        "frames_per_s": fps,
        "frames_per_s_total": round(sum(fps.values()), 1),
        **k,
    }


def _say(prefix: str) -> Callable[[str], None]:
    def say(text: str) -> None:
        print(f"  {prefix}: {text}", flush=True)

    return say


def ceilings(seconds: float) -> dict[str, float]:
    """The bus ceiling over each transport, frames/s, batches of BATCH frames."""
    app, ext = mac_bytes("02:00:00:00:01:65"), mac_bytes("02:00:00:00:0e:01")
    frame = udp_frame(
        app, ext, IPv4Address("10.0.10.101"), IPv4Address("10.0.10.200"), 1024, 5000, b"x" * 128
    )  # fmt: skip  (the workload's app -> ext1 datagram)
    return {t: round(bus_ceiling_fps(frame, BATCH, seconds, t)) for t in TRANSPORTS}


# -- the table and its growth line -------------------------------------------------------------


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(b / a, 2) if a and b is not None else None


def _per_host(s: dict[str, Any], key: str) -> float:
    return float(s[key]) / int(s["hosts"])


GROWTH: tuple[tuple[str, Callable[[dict[str, Any]], float | None]], ...] = (
    ("launch time", lambda s: s["launch_s"]["nics_up"]),
    ("launch to every flow", lambda s: s["launch_s"]["flows_delivering"]),
    ("idle CPU", lambda s: s["idle_cpu_pct_total"]),
    ("idle CPU per host", lambda s: _per_host(s, "idle_cpu_pct_total")),
    ("frames/s", lambda s: s["frames_per_s_total"]),
    ("frames/s per host", lambda s: _per_host(s, "frames_per_s_total")),
    ("takeover p50", lambda s: s["takeover_ms"]["p50"]),
    ("takeover p99", lambda s: s["takeover_ms"]["p99"]),
)


def growth(sizes: list[dict[str, Any]]) -> dict[str, float | None]:
    """Each figure at the largest size over the same figure at the smallest."""
    first, last = sizes[0], sizes[-1]
    return {name: _ratio(get(first), get(last)) for name, get in GROWTH}


def growth_line(sizes: list[dict[str, Any]], g: dict[str, float | None]) -> str:
    """One sentence: how each figure grows from the smallest to the largest size."""
    a, b = sizes[0]["hosts"], sizes[-1]["hosts"]
    parts = [f"{name} x{r:g}" if r is not None else f"{name} n/a" for name, r in g.items()]
    return f"from {a} to {b} hosts: " + ", ".join(parts)


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


def _kind(cpu: dict[str, float], card: bool, hosts: bool) -> list[float]:
    """CPU % of the processes of one kind: host or NIC, its card or its daemon (worker)."""
    prefix = "h" if hosts else "nic"
    return [v for k, v in cpu.items()
            if k.startswith(prefix) and k[len(prefix):].split("-")[0].isdigit()
            and k.endswith("-card") == card]  # fmt: skip


def table(r: dict[str, Any]) -> list[str]:
    """The printed table: one column per size, the ceilings, the growth line."""
    sizes, ceil = r["sizes"], r["ceilings"]
    rows: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
        ("processes (NICs)", lambda s: f"{s['processes']} ({s['nics']})"),
        ("launch: every NIC up", lambda s: f"{s['launch_s']['nics_up']:.2f} s"),
        ("launch: every flow delivering", lambda s: f"{s['launch_s']['flows_delivering']:.2f} s"),
        ("idle CPU, all processes", lambda s: f"{s['idle_cpu_pct_total']:.0f}%"),
        ("  fabricd", lambda s: f"{s['idle_cpu_pct'].get('fabricd', 0):.1f}%"),
        ("  host daemon (mean)", lambda s: f"{_mean(_kind(s['idle_cpu_pct'], False, True)):.1f}%"),
        ("  NIC worker (mean)", lambda s: f"{_mean(_kind(s['idle_cpu_pct'], False, False)):.1f}%"),
        ("  card (mean, host+NIC)", lambda s: "{:.1f}%".format(_mean(
            _kind(s["idle_cpu_pct"], True, True) + _kind(s["idle_cpu_pct"], True, False)))),
        ("frames/s per host (mean)", lambda s: f"{_per_host(s, 'frames_per_s_total'):,.0f}"),
        ("frames/s all hosts", lambda s: f"{s['frames_per_s_total']:,.0f}"),
        ("  of the ipc ceiling", lambda s: f"{s['frames_per_s_total'] / ceil['ipc']:.2%}"),
        ("takeover p50 / p99",
         lambda s: f"{s['takeover_ms']['p50']} / {s['takeover_ms']['p99']} ms"),
        ("  takeovers / kills", lambda s: f"{s['takeover_ms']['n']} / {s['kills']}"),
        ("detect p50 / p99", lambda s: f"{s['detect_ms']['p50']} / {s['detect_ms']['p99']} ms"),
        ("resets / frames lost (kills)",
         lambda s: f"{s['connections_reset']} / {s['frames_lost']}"),
    ]  # fmt: skip
    width = max(len(name) for name, _ in rows)
    heads = [f"{s['hosts']} host{'s' if s['hosts'] > 1 else ''}" for s in sizes]
    lines = [
        f"nicteam cluster ({NICS_PER_HOST} NICs per host, {r['window_s']:g} s CPU/frames window, "
        f"{r['kills']} kills per size)",
        f"  {'':<{width}}" + "".join(f"  {h:>16}" for h in heads),
    ]
    for name, cell in rows:
        lines.append(f"  {name:<{width}}" + "".join(f"  {cell(s):>16}" for s in sizes))
    lines.append(f"  bus ceiling, same run (batches of {r['batch']}): ipc {ceil['ipc']:,} f/s, "
                 f"tcp+CURVE {ceil['tcp_curve']:,} f/s")  # fmt: skip
    if len(sizes) > 1:
        lines.append("  growth " + growth_line(sizes, r["growth"]))
    return lines


# -- main --------------------------------------------------------------------------------------


def _sizes(text: str) -> list[int]:
    try:
        sizes = sorted({int(s) for s in text.split(",") if s.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of integers") from None
    if not sizes or sizes[0] < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give host counts of 1 or more")
    return sizes


def _count(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a count of 1 or more")
    return n


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Measure every size, print the table, write the JSON; returns the results."""
    ap = argparse.ArgumentParser(prog="bench.cluster", description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=_sizes, default=[1, 2, 4], help="host counts (1,2,4)")
    ap.add_argument("--kills", type=_count, default=10, help="NIC kills per size (10)")
    ap.add_argument("--quick", action="store_true", help="short windows: a smoke run")
    ap.add_argument("--out", type=Path, default=RESULTS / "cluster.json")
    args = ap.parse_args(argv)
    window_s, ceiling_s = (1.0, 0.5) if args.quick else (5.0, 2.0)
    started = time.monotonic()
    print("bus ceiling: ipc and tcp+CURVE ...", flush=True)
    ceil = ceilings(ceiling_s)
    results: dict[str, Any] = {"batch": BATCH, "ceilings": ceil, "window_s": window_s,
                               "kills": args.kills, "quick": args.quick, "sizes": []}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="nt-bench-cluster-") as top:
        for hosts in args.sizes:
            print(f"{hosts} host(s) of {NICS_PER_HOST} NICs", flush=True)
            results["sizes"].append(one_size(hosts, args.kills, window_s, Path(top)))
    results["growth"] = growth(results["sizes"])
    results["wall_s"] = round(time.monotonic() - started, 1)
    path = write_results("cluster", results, args.out)
    print("\n".join(table(results)))
    print(f"wrote {path} in {results['wall_s']:g} s")
    return results


if __name__ == "__main__":
    main()
