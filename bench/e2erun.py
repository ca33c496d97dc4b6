"""What bench.e2e runs inside namespaces: an iperf3 TCP run, a connect/close loop, py-spy.

Each takes namespace names, so it measures the relay pair and the cluster's netns VMs alike.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from kernel.netns import exec_argv

IFNAME = "eth0"
IPERF_PORT = 5201
READY_S = 30.0  # a server's (and the cluster's path's) time to answer the first time
CONN_THREADS = 4

# A server that accepts and at once closes every connection; "ready" once it listens.
CONN_SERVER = """
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(4096)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    c.close()
"""

# Threads that each open a connection, wait for the server's close and close theirs, as fast
# as they can for argv[3] s; the connections completed (and failed) as JSON.
CONN_CLIENT = """
import json, socket, sys, threading, time
ip, port, secs, nthreads = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
done, failed = [0] * nthreads, [0] * nthreads
t0 = time.perf_counter()
def loop(i):
    while time.perf_counter() - t0 < secs:
        try:
            with socket.create_connection((ip, port), timeout=2) as s:
                s.settimeout(2)
                if s.recv(1) == b"":
                    done[i] += 1
                    continue
        except OSError:
            pass
        failed[i] += 1
threads = [threading.Thread(target=loop, args=(i,)) for i in range(nthreads)]
for t in threads: t.start()
for t in threads: t.join()
print(json.dumps({"connects": sum(done), "failed": sum(failed),
                  "seconds": time.perf_counter() - t0}))
"""


def tap_packets(ns: str) -> int:
    """Frames both ways through `ns`'s interface so far (the kernel's own counters)."""
    out = subprocess.run(
        ["ip", "-n", ns, "-j", "-s", "link", "show", "dev", IFNAME],
        capture_output=True, text=True, timeout=10, check=True,
    )  # fmt: skip
    stats = json.loads(out.stdout)[0]["stats64"]
    return int(stats["rx"]["packets"]) + int(stats["tx"]["packets"])


def _iperf_once(ns: str, server_ip: str, seconds: int) -> dict[str, Any] | None:
    argv = ["iperf3", "-c", server_ip, "-t", str(seconds), "-J", "--connect-timeout", "3000"]
    done = subprocess.run(
        exec_argv(ns, argv), capture_output=True, text=True, timeout=seconds + 30, check=False
    )
    try:
        result: dict[str, Any] = json.loads(done.stdout)
    except json.JSONDecodeError:
        return None
    if done.returncode != 0 or "error" in result:
        return None  # not up yet, or busy with the last run: the caller tries again
    return result


def iperf(
    client_ns: str,
    server_ip: str,
    seconds: int,
    nic_frames: Callable[[], dict[str, int]] | None = None,
) -> dict[str, Any]:
    """One iperf3 TCP run from `client_ns` to `server_ip`: Mbit/s and frames/s through the
    client's TAP (and, given `nic_frames`, the NICs' frames counters over the run)."""
    deadline = time.monotonic() + READY_S
    while True:
        nics0 = nic_frames() if nic_frames else {}
        tap0, t0 = tap_packets(client_ns), time.monotonic()
        result = _iperf_once(client_ns, server_ip, seconds)
        dt, tap1 = time.monotonic() - t0, tap_packets(client_ns)
        nics1 = nic_frames() if nic_frames else {}
        if result is not None:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"iperf3 -c {server_ip} in {client_ns}: no run in {READY_S:g} s")
        time.sleep(0.3)  # the server is not listening yet: poll again, up to the deadline
    end = result["end"]
    out: dict[str, Any] = {
        "mbit_s": round(end["sum_received"]["bits_per_second"] / 1e6, 1),
        "tap_frames_per_s": round((tap1 - tap0) / dt),
        "retransmits": int(end["sum_sent"].get("retransmits", 0)),
        "seconds": round(dt, 2),
    }
    if nic_frames is not None:
        per_nic = {n: round((nics1[n] - nics0[n]) / dt) for n in nics1}
        out["nic_frames_per_s"] = per_nic
    return out


@contextlib.contextmanager
def conn_server(ns: str, port: int) -> Iterator[None]:
    """CONN_SERVER listening on `port` in `ns` while the block runs."""
    proc = subprocess.Popen(
        exec_argv(ns, [sys.executable, "-c", CONN_SERVER, str(port)]),
        stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], READY_S)
        if not ready or proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the connection server in {ns} did not start")
        yield
    finally:
        proc.kill()
        proc.wait(5)


def conn_rate(
    server_ns: str,
    client_ns: str,
    server_ip: str,
    port: int,
    seconds: float,
    slow_path: Callable[[], int] | None = None,
) -> dict[str, Any]:
    """Connections opened and closed per second from `client_ns` to a server in `server_ns`
    (and, given `slow_path`, the NICs' slow-path frames/s over the run)."""
    with conn_server(server_ns, port):
        argv = [sys.executable, "-c", CONN_CLIENT, server_ip, str(port), str(seconds),
                str(CONN_THREADS)]  # fmt: skip
        slow0 = slow_path() if slow_path else 0
        done = subprocess.run(
            exec_argv(client_ns, argv), capture_output=True, text=True,
            timeout=seconds + 30, check=False,
        )  # fmt: skip
        slow1 = slow_path() if slow_path else 0
    if done.returncode != 0:
        raise RuntimeError(f"connection client in {client_ns}: {done.stderr.strip()[-300:]}")
    got = json.loads(done.stdout)
    out = {
        "connects_per_s": round(got["connects"] / got["seconds"], 1),
        "connects": got["connects"],
        "failed": got["failed"],
        "threads": CONN_THREADS,
    }
    if slow_path is not None:
        out["nic_slow_path_frames_per_s"] = round((slow1 - slow0) / got["seconds"])
    return out


# -- where the time goes: py-spy --------------------------------------------------------------


def py_spy() -> str | None:
    """py-spy next to this Python (`make setup` installs it), else on PATH, else None."""
    here = Path(sys.executable).parent / "py-spy"
    return str(here) if os.access(here, os.X_OK) else shutil.which("py-spy")


def start_profiles(pids: dict[str, int], seconds: int, top: Path) -> list[subprocess.Popen[bytes]]:
    """py-spy recording each process in `pids` for `seconds`, raw stacks into `top`/NAME.txt."""
    exe = py_spy()
    assert exe is not None
    procs = []
    for name, pid in pids.items():
        out = str(top / f"{name}.txt")
        argv = [exe, "record", "--pid", str(pid), "--duration", str(seconds), "--rate", "200",
                "--format", "raw", "--nonblocking", "--output", out]  # fmt: skip
        procs.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    return procs


def _function(frame: str) -> str:
    """`func (file.py:12)` -> `func (file.py)`: one entry per function, not per line."""
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rsplit(':', 1)[0]})" if where else name


def top_entries(raw: str, n: int = 8) -> dict[str, Any]:
    """The `n` functions with the most samples on top of the stack (self time), from py-spy's
    raw (collapsed) output, as % of every sample taken while the process ran."""
    own: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        total += int(count)
        own[_function(stack.split(";")[-1])] += int(count)
    top = [{"function": f, "pct": round(100 * c / total, 1)} for f, c in own.most_common(n)]
    return {"samples": total, "top": top}


def profile(pids: dict[str, int], seconds: int, run: Callable[[], Any]) -> dict[str, Any]:
    """`run()` while py-spy samples each of `pids`; the top self-time entries per process."""
    with tempfile.TemporaryDirectory(prefix="nt-e2e-prof-") as tmp:
        procs = start_profiles(pids, seconds, Path(tmp))
        try:
            run()
        finally:
            for p in procs:
                try:
                    p.wait(seconds + 30)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(5)
        out = {}
        for name in pids:
            path = Path(tmp) / f"{name}.txt"
            out[name] = top_entries(path.read_text()) if path.exists() else {"samples": 0}
        return out
