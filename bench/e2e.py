"""Real kernel TCP through the NICs: iperf3 and connections/s between netns VMs, by a ceiling.

    python -m bench.e2e [--seconds 5] [--quick] [--no-profile] [--out PATH]

configs/netns.toml is launched and iperf3 (TCP, one stream, `--seconds` per run) is run on three
paths: between netns VMs on one NIC (nslocal -> nsweb), across NICs through the private channel
(nsclient -> nsweb), and from a VM to the netns peer through the team and the fabric
(nsclient -> nsext). Each gives Mbit/s, frames/s through the client's TAP (the kernel's counters)
and each NIC's `frames_in` per second (a frame crossing NICs counts on both).

The ceiling, measured in the same run before the cluster starts (`bench.tapceiling`): the same
iperf3 run between two fresh namespaces whose TAPs one process relays with hostd's TAP I/O
(`Tap.read_batch` / `write_batch` from `loop.add_reader`), with no NIC in between. Each path is
given as a fraction of it; the target is across NICs >= 0.3. When it is missed, py-spy samples
the host daemon and both NIC workers during one more across-NIC run and the top entries print.

Connections/s: a client of 4 threads in nsclient opening connections to a server in nslocal
(across NICs: every connection's first packet is a slow-path miss on both NICs) that accepts
and closes each; the same over the relay pair; next to bench.datapath's in-process rate of
slow-path misses.
"""

from __future__ import annotations

import argparse
import functools
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.cluster import cpu_seconds, named_pids
from bench.common import RESULTS, print_table, write_results
from bench.datapath import slow_miss_rate
from bench.e2erun import conn_rate, iperf, profile, py_spy
from bench.tapceiling import relay_pair
from ctl.cluster import REPO, Cluster, running_cluster
from ctl.top import counters
from kernel.netns import namespace, start_services

TARGET = 0.3  # across-NIC throughput over the ceiling's
CONN_PORT = 80  # the firewall lets TCP 80 into any VM of the web segment
# (name, client VM, server VM or peer, server address)
PATHS = (
    ("one_nic", "nslocal", "nsweb", "10.0.10.21"),
    ("across_nics", "nsclient", "nsweb", "10.0.10.21"),
    ("to_peer", "nsclient", "nsext", "10.0.10.201"),
)
LABELS = {
    "one_nic": "one NIC: nslocal -> nsweb",
    "across_nics": "across NICs: nsclient -> nsweb",
    "to_peer": "to the peer: nsclient -> nsext",
}
PROFILED = ("h1", "nic1", "nic2")  # the host daemon and the NIC workers on every path


def cpu_during(pids: dict[str, int], run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """`run()`'s result with `cpu_pct`: % of one core each of `pids` used meanwhile."""
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    t0 = time.monotonic()
    result = run()
    dt = time.monotonic() - t0
    cpu = {}
    for name, pid in pids.items():
        a, b = before[name], cpu_seconds(pid)
        if a is not None and b is not None:
            cpu[name] = round((b - a) / dt * 100, 1)
    return {**result, "cpu_pct": cpu}


def measure_ceiling(seconds: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The iperf3 run and connections/s over the TAP relay, no NIC."""
    with relay_pair() as pair, tempfile.TemporaryDirectory(prefix="nt-e2e-") as logs:
        # the iperf3 server, started as a netns VM's services are
        start_services(pair.server, ["iperf3 -s"], Path(logs), "server")
        run = cpu_during(
            {"relay": pair.relay_pid}, lambda: iperf(pair.client, pair.server_ip, seconds)
        )
        conns = conn_rate(pair.server, pair.client, pair.server_ip, CONN_PORT, seconds)
    return run, conns


def _nic_counter(c: Cluster, key: str) -> Callable[[], dict[str, int]]:
    nics = [n.name for n in c.config.nics]
    return lambda: {n: counters(c.control(n, "stats"))[key] for n in nics}


def measure_cluster(seconds: int, ceiling_mbit: float, want_profile: bool) -> dict[str, Any]:
    """Every path's iperf3 run, connections/s across NICs, and the profile if it falls short."""
    with running_cluster(config_path=REPO / "configs" / "netns.toml") as c:
        ns = {vm: namespace(c.tag, vm) for vm in ("nsweb", "nslocal", "nsclient", "nsext")}
        pids = {k: v for k, v in named_pids(c).items() if k in (*PROFILED, "fabricd")}
        frames = _nic_counter(c, "frames")
        paths: dict[str, Any] = {}
        for name, client, _server, ip in PATHS:
            run = functools.partial(iperf, ns[client], ip, seconds, frames)
            paths[name] = cpu_during(pids, run)
            paths[name]["ratio_to_ceiling"] = round(paths[name]["mbit_s"] / ceiling_mbit, 3)
        slow = _nic_counter(c, "slow")
        conns = conn_rate(ns["nslocal"], ns["nsclient"], "10.0.10.22", CONN_PORT, seconds,
                          lambda: sum(slow().values()))  # fmt: skip
        prof: dict[str, Any] | None = None
        if want_profile and paths["across_nics"]["ratio_to_ceiling"] < TARGET:
            prof = _profile(pids, seconds, lambda: iperf(ns["nsclient"], "10.0.10.21", seconds))
    return {"paths": paths, "connects": conns, "profile": prof}


def _profile(pids: dict[str, int], seconds: int, run: Callable[[], Any]) -> dict[str, Any]:
    if py_spy() is None:
        return {"skipped": "py-spy not installed (`make setup` installs it)"}
    return profile({k: v for k, v in pids.items() if k in PROFILED}, seconds, run)


def table(r: dict[str, Any]) -> list[tuple[str, str, str]]:
    """The printed rows: each path by the ceiling, connections/s, the target."""
    ceil = r["ceiling"]
    rows = [("TAP relay ceiling (no NIC)", f"{ceil['mbit_s']:,.1f} Mbit/s",
             f"{ceil['tap_frames_per_s']:,} f/s at the TAP; relay "
             f"{ceil['cpu_pct'].get('relay', 0):.0f}% CPU")]  # fmt: skip
    for name, p in r["paths"].items():
        nic_fps = ", ".join(f"{n} {v:,}" for n, v in p["nic_frames_per_s"].items())
        rows.append((LABELS[name], f"{p['mbit_s']:,.1f} Mbit/s",
                     f"{p['ratio_to_ceiling']:.2f} of ceiling; {p['tap_frames_per_s']:,} f/s at "
                     f"the TAP; NICs in: {nic_fps} f/s"))  # fmt: skip
    t = r["target"]
    rows.append(("target across NICs", "met" if t["met"] else "NOT met",
                 f"{t['ratio']:.2f} of ceiling (>= {t['min_ratio']})"))  # fmt: skip
    cx, cr = r["connects"]["across_nics"], r["connects"]["relay"]
    rows += [
        ("connects/s across NICs", f"{cx['connects_per_s']:,.0f} /s",
         f"{cx['threads']} threads, {cx['failed']} failed; NIC slow path "
         f"{cx['nic_slow_path_frames_per_s']:,} f/s"),
        ("connects/s, TAP relay", f"{cr['connects_per_s']:,.0f} /s", "no NIC: the ceiling"),
        ("slow-path misses in-process", f"{r['connects']['datapath_slow_miss_per_s']:,.0f} /s",
         "bench.datapath: one SYN per new connection, one NIC"),
    ]  # fmt: skip
    return rows


# Leaf frames that are not Python work of nicteam's own.
_NOTES = {
    "Runner.run (asyncio/runners.py)": "  (uvloop's own C code: epoll, callbacks, socket I/O)",
    "GarbageCollectorThread.run (zmq/utils/garbage.py)": "  (pyzmq's zero-copy GC thread)",
}


def profile_lines(prof: dict[str, Any] | None) -> list[str]:
    """Where the time goes, per process: the top self-time functions."""
    if prof is None:
        return []
    if "skipped" in prof:
        return [f"profile skipped: {prof['skipped']}"]
    lines = ["where the time goes across NICs (py-spy, self time, % of samples):"]
    for name, p in prof.items():
        lines.append(f"  {name} ({p.get('samples', 0)} samples)")
        lines += [f"    {e['pct']:5.1f}%  {e['function']}{_NOTES.get(e['function'], '')}"
                  for e in p.get("top", [])]  # fmt: skip
    return lines


def _seconds(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of seconds >= 1")
    return n


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Measure the ceiling, then every path in the cluster; print the table, write the JSON."""
    ap = argparse.ArgumentParser(prog="bench.e2e", description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=_seconds, default=5, help="per iperf3 run (5)")
    ap.add_argument("--quick", action="store_true", help="1 s runs: a smoke run")
    ap.add_argument("--no-profile", action="store_true", help="never run py-spy")
    ap.add_argument("--out", type=Path, default=RESULTS / "e2e.json")
    args = ap.parse_args(argv)
    seconds = 1 if args.quick else args.seconds
    started = time.monotonic()
    print(f"ceiling: TAP relay between two namespaces, {seconds} s iperf3 ...", flush=True)
    ceiling, relay_conns = measure_ceiling(seconds)
    print("cluster: configs/netns.toml ...", flush=True)
    cluster = measure_cluster(seconds, ceiling["mbit_s"], not args.no_profile)
    ratio = cluster["paths"]["across_nics"]["ratio_to_ceiling"]
    slow_s, repeats = (0.3, 1) if args.quick else (1.0, 3)
    results: dict[str, Any] = {
        "seconds": seconds,
        "quick": args.quick,
        "ceiling": ceiling,
        "paths": cluster["paths"],
        "connects": {
            "across_nics": cluster["connects"],
            "relay": relay_conns,
            "datapath_slow_miss_per_s": round(slow_miss_rate(False, slow_s, repeats)),
        },
        "target": {"min_ratio": TARGET, "ratio": ratio, "met": ratio >= TARGET},
        "profile": cluster["profile"],
    }
    results["wall_s"] = round(time.monotonic() - started, 1)
    path = write_results("e2e", results, args.out)
    print_table(f"nicteam end to end (iperf3 TCP, {seconds} s per run; ceiling same run)",
                table(results))  # fmt: skip
    for line in profile_lines(results["profile"]):
        print(line)
    print(f"wrote {path} in {results['wall_s']:g} s")
    return results


if __name__ == "__main__":
    main()
