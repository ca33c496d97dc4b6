"""Failover figures from real processes, next to the raw bus ceiling measured in the same run.

    python -m bench.failover [--kills 20] [--new-flows 10000] [--seconds 10]

Phase 1, kills: the default cluster from the Procfile under its workload; NIC OS workers are
SIGKILLed in turn (`--kills`, nic1 and nic2 alternately), each time waiting until the NIC is
back, its VPIDs home and data flowing again. From the merged logs: detection (the `chaos.kill`
to hostd's `host.nic.down`) and takeover (the kill to the first `team.first_frame` of the new
map epoch: a frame of a moved VPID delivered on its new path); from the VM endpoints' own
books: connections reset and frames lost over all the kills.

Phase 2, sync: fabricd and both NIC cards as processes, hostd in this process with no workload
of its own; this process sends app1 (on nic1) UDP datagrams each of a new 5-tuple at
`--new-flows` per second for `--seconds`: every one is a new connection nic1 replicates to
nic2. nic2 measures the sync lag of every batch it applies. Then nic2's worker is SIGKILLed:
its card reboots it and it resyncs nic1's whole table (>= 100,000 records at the defaults).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from bench.common import bus_ceiling_fps, print_table, write_results
from bus.log import configure_logging
from bus.messages import FrameBatch
from bus.transport import BusNode
from configs import Config, load_config
from ctl.chaos import Chaos
from ctl.client import ControlError, control
from ctl.cluster import REPO, running_cluster, stop, wait_for
from ctl.logs import load, select
from ctl.session import resync_progress
from ctl.summary import books, losses
from hostd.daemon import HostDaemon
from wire.addr import mac_bytes
from wire.build import udp_frame

NICS = ("nic1", "nic2")


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank) of `values`, rounded to 0.1."""
    s = sorted(values)
    return round(s[min(len(s) - 1, max(0, round(q / 100 * len(s) + 0.5) - 1))], 1)


# ----------------------------------------------------------------------------- phase 1: kills


def _totals(config: Config) -> tuple[dict[str, int], dict[str, int]]:
    """Per flow that must deliver: datagrams/messages lost (sink gaps), and resets."""
    deliver = {f.name for f in config.flows if f.expect == "deliver"}
    per_flow = {name: lr for name, lr in losses(books(config)).items() if name in deliver}
    return ({n: lost for n, (lost, _) in per_flow.items()},
            {n: resets for n, (_, resets) in per_flow.items()})  # fmt: skip


def _delivered(config: Config) -> dict[str, int]:
    return {n: s.get("sink", {}).get("delivered", 0) for n, s in books(config).items()}


def kills(n: int) -> dict[str, Any]:
    """SIGKILL NIC workers `n` times under the default workload; figures from logs and books."""
    with running_cluster() as c:
        chaos = Chaos(c.config)
        deliver = [f.name for f in c.config.flows if f.expect == "deliver"]
        wait_for("every flow delivering",
                 lambda: all(_delivered(c.config).get(f, 0) > 5 for f in deliver))  # fmt: skip
        lost0, resets0 = _totals(c.config)
        for i in range(n):
            nic = NICS[i % 2]
            old = c.worker_pid(nic)
            before = _delivered(c.config)
            chaos.kill(nic)
            print(f"  kill {i + 1}/{n}: {nic} (pid {old})", flush=True)

            def back(nic: str = nic, old: int = old) -> bool:
                return c.worker_pid(nic) != old and c.control(nic, "stats")["state"] == "up"

            def resumed(b: dict[str, int] = before) -> bool:
                return all(_delivered(c.config).get(f, 0) > b.get(f, 0) + 3 for f in deliver)

            wait_for(f"kill {i}: {nic} back", back, timeout=30)
            wait_for(f"kill {i}: VPIDs home", lambda: not c.ports_away())
            wait_for(f"kill {i}: data resumed", resumed)
        lost1, resets1 = _totals(c.config)
        names = {"chaos.kill", "host.nic.down", "host.failover", "team.first_frame", "nic.fenced"}
        events = load(c.run_dir / "logs", names)
    detect, takeover, takeover_all = [], [], []
    for kill in select(events, "chaos.kill"):
        t0 = kill["t"]
        down = select(events, "host.nic.down", t0, nic=kill["nic"])[0]
        failover = select(events, "host.failover", t0, nic=kill["nic"])[0]
        firsts = select(events, "team.first_frame", t0, epoch=failover["epoch"])
        detect.append((down["t"] - t0) * 1000)
        takeover.append((firsts[0]["t"] - t0) * 1000)
        moved = {v for v, _ in failover["moves"]}
        if {e["vpid"] for e in firsts} >= moved:
            takeover_all.append((max(e["t"] for e in firsts) - t0) * 1000)
    lost = {f: lost1[f] - lost0.get(f, 0) for f in lost1}
    return {
        "kills": n,
        "detect_ms_p50": pct(detect, 50),
        "detect_ms_p99": pct(detect, 99),
        "takeover_ms_p50": pct(takeover, 50),
        "takeover_ms_p99": pct(takeover, 99),
        "takeover_all_vpids_ms_p50": pct(takeover_all, 50) if takeover_all else None,
        "takeover_all_vpids_ms_p99": pct(takeover_all, 99) if takeover_all else None,
        "connections_reset": sum(resets1.values()) - sum(resets0.values()),
        "frames_lost_total": sum(lost.values()),
        "frames_lost_per_flow": lost,
        "fenced": len(select(events, "nic.fenced")),  # none expected: kills are crashes
        "samples": {
            "detect_ms": [round(x, 1) for x in detect],
            "takeover_ms": [round(x, 1) for x in takeover],
        },
    }


# ----------------------------------------------------------------------------- phase 2: sync


def _sync_config(top: Path) -> Path:
    """The default topology with no workload, and a firewall that lets any UDP through."""
    text = (REPO / "configs/default.toml").read_text()
    text = text[: text.index("[flows.")]  # the flows are the last tables
    text = text.replace('default = "drop"', 'default = "allow"', 1)
    path = top / "sync.toml"
    path.write_text(text)
    return path


@contextlib.contextmanager
def nic_processes(config_path: Path, run_dir: Path) -> Iterator[None]:
    """fabricd and both NIC cards (not hostd: this process is h1), always stopped."""
    tag = f"bench-{os.getpid()}"
    env = os.environ | {"NICTEAM_RUN_DIR": str(run_dir), "NICTEAM_TEST_TAG": tag}
    cfg = ["--config", str(config_path)]
    procs = [subprocess.Popen([sys.executable, "-m", "fabricd", *cfg], env=env, cwd=REPO,
                              stdout=subprocess.DEVNULL)]  # fmt: skip
    for nic in NICS:
        cmd = [sys.executable, "-m", "nicd", *cfg, "--nic", nic]
        procs.append(subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL))
    try:
        yield
    finally:
        for p in procs:
            stop(p, tag, timeout=10)


async def _ask(config: Config, proc: str, cmd: str) -> dict[str, Any]:
    # The control client blocks: off the loop, so hostd (on this loop) keeps its heartbeats.
    return await asyncio.to_thread(control, config.endpoint(proc), cmd, None, 3.0)


async def _until(what: str, probe: Any, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(ControlError, OSError, KeyError, ValueError):
            if got := await probe():
                return got
        await asyncio.sleep(0.1)
    raise TimeoutError(f"timed out waiting for {what}")


async def _inject(host: HostDaemon, rate: int, seconds: float) -> int:
    """app1's datagrams to ext1, each of a new (sport, dport): `rate` new connections/s."""
    total = int(rate * seconds)
    sent, start = 0, time.monotonic()
    while sent < total:
        due = min(total, int((time.monotonic() - start) * rate)) - sent
        sent += _send_new_flows(host, sent, due)
        await asyncio.sleep(0.01)
    return sent


def _send_new_flows(host: HostDaemon, first: int, n: int) -> int:
    """Datagrams number `first`.. `first + n - 1`, each of its own (sport, dport), in one batch."""
    if n <= 0:
        return 0
    app1, ext1 = host.config.vm("app1").interfaces[0], host.config.peer("ext1")
    src, dst = IPv4Address(app1.ips[0].ip), IPv4Address(ext1.ips[0].ip)
    vpid = next(v for v, ep in host.endpoints.items() if ep.mac == app1.mac)
    binding = host.fpag.binding(vpid)
    frames = []
    for i in range(first, first + n):
        sport, dport = 1024 + i % 60000, 10000 + i // 60000
        frame = udp_frame(app1.mac, ext1.mac, src, dst, sport, dport, b"nicteam-bench")
        frames.append((binding.ppid, frame))
    host.node.send(binding.nic, FrameBatch(host.spec.name, frames))
    return n


async def _sync_phase(config: Config, rate: int, seconds: float) -> dict[str, Any]:
    configure_logging("h1", config.run_dir, host="h1", console=False)
    host = HostDaemon(config, config.host("h1"), BusNode("h1", config.endpoint("h1")))
    task = asyncio.create_task(host.run())
    try:
        for nic in NICS:
            await _until(f"{nic} up", lambda nic=nic: _state_is(config, nic, "up"))
        created0 = (await _ask(config, "nic1", "stats"))["ct"]["created"]
        print(f"  {rate:,} new flows/s for {seconds:g} s into nic1", flush=True)
        sent = await _inject(host, rate, seconds)
        nic1 = await _ask(config, "nic1", "stats")
        created = nic1["ct"]["created"] - created0

        async def caught_up() -> bool:
            peers = (await _ask(config, "nic2", "stats"))["sync"]["peers"]
            seq: int = (await _ask(config, "nic1", "stats"))["sync"]["seq"]
            return bool(peers["nic1"]["held"] >= seq)

        await _until("nic2 caught up with nic1", caught_up)
        nic2 = await _ask(config, "nic2", "stats")
        lag = nic2["sync"]["lag"]
        records = nic1["conntrack"]
        print(f"  nic1 holds {records:,} records; SIGKILL nic2, which resyncs them", flush=True)
        killed_at = time.time()
        Chaos(config).kill("nic2")
        shown: list[tuple[int, int]] = []

        async def resynced() -> dict[str, Any] | None:
            with contextlib.suppress(ControlError):  # progress, while the snapshot arrives
                got = resync_progress(await _ask(config, "nic2", "stats"))
                if got is not None and (not shown or got[0] >= shown[-1][0] + got[1] // 10):
                    shown.append(got)
                    print(f"  nic2 resync: {got[0]:,} / {got[1]:,} changes", flush=True)
            return await _resync_done(config, killed_at)

        done = await _until("nic2 resynced", resynced, 120)
        await _until("nic2 up", lambda: _state_is(config, "nic2", "up"))
        # A resync that kept a NIC's loop from its heartbeats would have fenced it.
        fences = select(load(config.run_dir / "logs", {"nic.fenced"}), "nic.fenced")
    finally:
        host.stop()
        await task
    return {
        "new_flows_per_s": rate,
        "sent": sent,
        "connections_created": created,
        "created_per_s": round(created / seconds),
        "sync_lag_ms_p50": lag.get("p50_ms"),
        "sync_lag_ms_p99": lag.get("p99_ms"),
        "sync_lag_ms_max": lag.get("max_ms"),
        "sync_lag_batches": lag.get("samples"),
        "resync_records": done["records"],
        "resync_s": round(done["ms"] / 1000, 3),  # from the rebooted worker's resync start
        "resync_transfer_s": round(done.get("transfer_ms", 0) / 1000, 3),
        "fenced_during_sync_phase": len(fences),
    }


async def _state_is(config: Config, nic: str, state: str) -> bool:
    return bool((await _ask(config, nic, "stats")).get("state") == state)


async def _resync_done(config: Config, after: float) -> dict[str, Any] | None:
    events = select(load(config.run_dir / "logs", {"sync.resync.done"}), "sync.resync.done",
                    after, nic="nic2")  # fmt: skip
    return events[0] if events else None


def sync(rate: int, seconds: float) -> dict[str, Any]:
    """Phase 2 in a run directory of its own (removed afterwards)."""
    with tempfile.TemporaryDirectory(prefix="nt-bench-") as top:
        run_dir = Path(top) / "run"
        config_path = _sync_config(Path(top))
        config = load_config(config_path, run_dir)
        with nic_processes(config_path, run_dir):
            return asyncio.run(_sync_phase(config, rate, seconds))


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    """Run both phases, print the table, write bench/results/failover.json."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--new-flows", type=int, default=10_000, help="new connections per second")
    ap.add_argument("--seconds", type=float, default=10.0, help="how long to send them")
    args = ap.parse_args(argv)
    app1, ext1 = mac_bytes("02:00:00:00:01:13"), mac_bytes("02:00:00:00:0e:01")
    frame = udp_frame(app1, ext1, IPv4Address("10.0.10.13"), IPv4Address("10.0.10.200"), 1024,
                      53, b"nicteam-bench")  # fmt: skip
    print("raw bus ceiling ...", flush=True)
    ceiling = bus_ceiling_fps(frame)
    print(f"phase 1: {args.kills} kills under the default workload", flush=True)
    k = kills(args.kills)
    print("phase 2: replication under new connections, then a bulk resync", flush=True)
    s = sync(args.new_flows, args.seconds)
    results = {"bus_ceiling_fps": round(ceiling), **k, **s}
    results["resync_s_100k"] = s["resync_s"] if s["resync_records"] >= 100_000 else None
    path = write_results("failover", results)
    print_table(
        f"nicteam failover ({args.kills} SIGKILLs; raw bus ceiling {round(ceiling):,} f/s)",
        [
            ("detect p50 / p99", f"{k['detect_ms_p50']} / {k['detect_ms_p99']} ms",
             "kill -> host.nic.down"),
            ("takeover p50 / p99", f"{k['takeover_ms_p50']} / {k['takeover_ms_p99']} ms",
             "kill -> first frame on the new path"),
            ("connections reset", str(k["connections_reset"]), "VM endpoints' books"),
            ("frames lost", str(k["frames_lost_total"]), "all flows, all kills"),
            ("sync lag p50 / p99", f"{s['sync_lag_ms_p50']} / {s['sync_lag_ms_p99']} ms",
             f"{s['created_per_s']:,} new connections/s"),
            ("bulk resync", f"{s['resync_s']} s", f"{s['resync_records']:,} records, from boot"),
            ("  of which transfer", f"{s['resync_transfer_s']} s", "first to last batch"),
            ("raw bus ceiling", f"{round(ceiling):,} f/s", "same run"),
        ],
    )  # fmt: skip
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
