"""`nicteam`: the operator's command line (also `python -m ctl`).

Commands talk to a running cluster over the daemons' control sockets, found through the same
config and run directory the cluster was launched with (``--config``, ``NICTEAM_RUN_DIR``).
"""

from __future__ import annotations

import json
import secrets
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.live import Live
from rich.text import Text

from bus.policy import TeamPolicyName
from configs import FABRICD, Config
from ctl import summary, top
from ctl.capture import as_dict as capture_dict
from ctl.capture import capture, stop_on_signals
from ctl.chaos import Chaos, ChaosError, note
from ctl.checker import check_logs, format_verdict
from ctl.client import ControlError
from ctl.cluster import NotReady, wait_for
from ctl.context import CONFIG_HELP, RUN_DIR_HELP, Commands, Context
from ctl.hosts import UnknownHost, only, report_of
from ctl.lifecycle import down_command, keys_command, procfile_command, up_command
from ctl.migrate import format_migrate, migrate
from ctl.nemesis import DEFAULT_FAULTS, KINDS, Topology, parse_faults, plan, run_and_check
from ctl.nsexec import exec_command
from ctl.params import Count, Seconds
from ctl.pcap import PcapWriter
from ctl.pcap import summary as pcap_summary
from ctl.plot import plot
from ctl.progress import progress
from ctl.report import format_report, report
from ctl.session import wait_up
from ctl.trace import format_trace
from ctl.verify import format_pairs, verify
from ctl.views import (
    format_conntrack,
    format_flows,
    format_map,
    format_status,
    status,
    unreachable,
    vpid_map,
)


def _emit(result: dict[str, Any], as_json: bool, text: str) -> None:
    click.echo(json.dumps(result, indent=2, sort_keys=True) if as_json else text)


HOST_HELP = "Only this host (default: every host)."


def _scope(obj: Context, host: str | None) -> Config:
    """The config of `--host` (every host without it); an unknown name is a usage error."""
    try:
        return only(obj.config, host)
    except UnknownHost as e:
        raise click.UsageError(str(e)) from None


@click.group(cls=Commands)
@click.option("--config", "config_path", envvar="NICTEAM_CONFIG", help=CONFIG_HELP)
@click.option("--run-dir", envvar="NICTEAM_RUN_DIR", help=RUN_DIR_HELP)
@click.pass_context
def main(ctx: click.Context, config_path: str | None, run_dir: str | None) -> None:
    """Operate a nicteam cluster."""
    ctx.obj = Context(config_path, run_dir)


def _uplink_command(up: bool) -> click.Command:
    verb = "link-up" if up else "link-down"

    @click.command(verb)
    @click.argument("port")
    @click.option("--json", "as_json", is_flag=True, help="Print the daemon's answer as JSON.")
    @click.pass_obj
    def command(obj: Context, port: str, as_json: bool) -> None:
        result = obj.control(FABRICD, verb, {"port": port})
        note(obj.config, f"chaos.{verb.replace('-', '_')}", port=port)
        state = "carrier up" if result["carrier"] else "carrier down"
        _emit(result, as_json, f"{port}: {state}")

    command.help = (
        f"{'Reconnect' if up else 'Pull'} the cable of uplink PORT (NIC/PORT, e.g. nic1/p0): "
        "the fabric and the NIC both see the carrier change."
    )
    return command


main.add_command(_uplink_command(False))
main.add_command(_uplink_command(True))


@main.command("team-policy")
@click.argument("policy", type=click.Choice([p.value for p in TeamPolicyName]))
@click.option("--host", help="The host whose team changes (default: every host).")
@click.option("--json", "as_json", is_flag=True,
              help="The daemon's answer as JSON ({host: answer} for several hosts).")  # fmt: skip
@click.pass_obj
def team_policy(obj: Context, policy: str, host: str | None, as_json: bool) -> None:
    """Change the team policy at run time (every NIC of each host applies it)."""
    names = [h.name for h in _scope(obj, host).hosts]
    results = {name: obj.control(name, "team-policy", {"policy": policy}) for name in names}
    text = "\n".join(f"{n}: team policy {r['old']} -> {r['policy']}" for n, r in results.items())
    _emit(results[names[0]] if len(names) == 1 else results, as_json, text)


@main.command("summary")
@click.option("--host", help="Only the flows with an end on this host (default: every flow).")
@click.option("--json", "as_json", is_flag=True, help="Rows as JSON.")
@click.pass_obj
def summary_command(obj: Context, host: str | None, as_json: bool) -> None:
    """Per-flow delivery, from the endpoints' own books."""
    scope = _scope(obj, host)
    try:
        # A flow's other end may be on another host: every host's books, the scope's flows.
        table = summary.rows(scope, summary.books(obj.config))
    except ControlError as e:
        raise click.ClickException(str(e)) from None
    if as_json:
        click.echo(json.dumps(table, indent=2))
    else:
        click.echo(summary.format_table(table))


def _chaos(obj: Context) -> Chaos:
    return Chaos(obj.config)


def _wait_all_up(obj: Context, timeout: float) -> None:
    with progress("wait", 1.0) as step:
        try:
            wait_up(obj.config, timeout, step)
        except NotReady as e:
            raise click.ClickException(f"{e} (see nicteam status)") from None


@main.command("kill")
@click.argument("nic")
@click.option("--wait", "wait_s", type=Seconds(0, 600, lo_open=True), default=None,
              is_flag=False, flag_value=60.0,
              help="Then wait (seconds, default 60) for it to reboot and resync.")  # fmt: skip
@click.pass_obj
def kill(obj: Context, nic: str, wait_s: float | None) -> None:
    """SIGKILL NIC's OS worker (a crash); its card reboots it after `reboot_delay_s`."""
    try:
        pid = _chaos(obj).kill(nic)
    except ChaosError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"{nic}: worker pid {pid} killed (SIGKILL)")
    if wait_s is not None:
        t0 = time.monotonic()

        # The card reboots it after a delay: first its new worker, then that one up.
        def rebooted() -> bool:
            try:
                return _chaos(obj).worker_pid(nic) != pid
            except ChaosError:  # the old pid is gone and the new one not written yet
                return False

        try:
            wait_for(f"{nic} rebooted", rebooted, wait_s)
        except NotReady as e:
            raise click.ClickException(str(e)) from None
        _wait_all_up(obj, max(1.0, wait_s - (time.monotonic() - t0)))
        click.echo(f"{nic}: back up and resynced after {time.monotonic() - t0:.1f} s")


@main.command("wait")
@click.option("--timeout", type=Seconds(0, 600, lo_open=True), default=60.0, show_default=True)
@click.pass_obj
def wait_command(obj: Context, timeout: float) -> None:
    """Wait until every NIC is up, showing boots and bulk resyncs as they go."""
    _wait_all_up(obj, timeout)
    click.echo("every NIC up")


@main.command("pause")
@click.argument("nic")
@click.option("--for", "seconds", type=Seconds(0, 3600, lo_open=True), default=1.0,
              show_default=True, help="Seconds to keep it stopped.")  # fmt: skip
@click.pass_obj
def pause(obj: Context, nic: str, seconds: float) -> None:
    """SIGSTOP NIC's OS worker (a hang), then SIGCONT it after --for seconds."""
    try:
        pid = _chaos(obj).pause(nic, seconds)
    except ChaosError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"{nic}: worker pid {pid} paused for {seconds:g} s, resumed")


@main.command("partition")
@click.argument("nic_a")
@click.argument("nic_b")
@click.option("--for", "seconds", type=Seconds(0, 3600, lo_open=True), default=1.0,
              show_default=True, help="Seconds the channel drops everything.")  # fmt: skip
@click.pass_obj
def partition(obj: Context, nic_a: str, nic_b: str, seconds: float) -> None:
    """Cut the private channel between two NICs of a host for --for seconds (both ways)."""
    try:
        _chaos(obj).partition(nic_a, nic_b, seconds)
    except (ChaosError, ControlError) as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"{nic_a} <-/-> {nic_b}: private channel cut for {seconds:g} s")


@main.command("verify")
@click.option("--wait", "wait_s", type=Seconds(0, 600), default=5.0,
              show_default=True, help="Seconds to wait for every copy to catch up.")  # fmt: skip
@click.option("--host", help=HOST_HELP)
@click.option("--json", "as_json", is_flag=True, help="The pairs as JSON.")
@click.pass_obj
def verify_command(obj: Context, wait_s: float, host: str | None, as_json: bool) -> None:
    """Compare each NIC's conntrack digest with its siblings' copies; exit 1 if they differ."""
    ok, pairs = verify(_scope(obj, host), wait_s)
    if as_json:
        click.echo(json.dumps({"ok": ok, "pairs": [p.as_dict() for p in pairs]}, indent=2))
    else:
        click.echo(format_pairs(pairs))
        click.echo("state digests agree" if ok else "state digests DIFFER or never caught up")
    if not ok:
        sys.exit(1)


@main.command("status")
@click.option("--host", help=HOST_HELP)
@click.option("--json", "as_json", is_flag=True, help="As JSON.")
@click.pass_obj
def status_command(obj: Context, host: str | None, as_json: bool) -> None:
    """Hosts, NICs (up/resyncing/fenced/down), their team uplinks, epoch, VPIDs, conntrack."""
    scope = _scope(obj, host)
    st = status(scope)
    _emit(st, as_json, format_status(st))
    why = unreachable(scope, st)
    if why is not None:
        click.echo(f"Error: {why}", err=True)
        sys.exit(1)


main.add_command(exec_command)


@main.command("top")
@click.option("--interval", type=Seconds(0.1, 60), default=1.0, show_default=True,
              help="Seconds between refreshes.")  # fmt: skip
@click.option("--count", type=Count(0), default=0,
              help="Refreshes before exiting (0: until Ctrl-C).")  # fmt: skip
@click.option("--host", help=HOST_HELP)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per refresh.")
@click.pass_obj
def top_command(obj: Context, interval: float, count: int, host: str | None, as_json: bool) -> None:
    """Live per-NIC view: frames/s per tier, handovers, conntrack, sync lag, drops by reason."""
    scope = _scope(obj, host)
    console = Console()
    if as_json or not console.is_terminal:
        for dt, rows in top.refreshes(scope, interval, count):
            text = json.dumps({"interval_s": dt, "nics": rows}) if as_json else None
            click.echo(text or top.format_top(rows, interval) + "\n")
        return
    with Live(console=console, auto_refresh=False) as view:
        for _, rows in top.refreshes(scope, interval, count):
            view.update(Text(top.format_top(rows, interval)), refresh=True)


@main.command("map")
@click.option("--host", help=HOST_HELP)
@click.option("--json", "as_json", is_flag=True, help="As JSON.")
@click.pass_obj
def map_command(obj: Context, host: str | None, as_json: bool) -> None:
    """The VPID map of every host: each VM interface's VPID, NIC and PPID, and the map epoch."""
    scope = _scope(obj, host)
    try:
        rows = vpid_map(scope)
    except ControlError as e:
        raise click.ClickException(f"{e} (is the cluster up?)") from None
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        click.echo(format_map(rows))


@main.command("conntrack")
@click.argument("nic", required=False)
@click.option("--host", help="Every NIC of this host (default: of every host).")
@click.option("--limit", type=Count(0, 10_000), default=1000, show_default=True,
              help="Records to list at most (the oldest first), per NIC.")  # fmt: skip
@click.option("--json", "as_json", is_flag=True,
              help="As JSON ({nic: table} without NIC).")  # fmt: skip
@click.pass_obj
def conntrack_command(
    obj: Context, nic: str | None, host: str | None, limit: int, as_json: bool
) -> None:
    """NIC's connection tracking table, like `conntrack -L` (no NIC: every NIC's, in turn)."""
    _per_nic(obj, nic, host, as_json, "conntrack", {"limit": limit},
             lambda r: (format_conntrack(r["records"]),
                        f"{r['total']} flow entries ({len(r['records'])} shown)"))  # fmt: skip


@main.command("flows")
@click.argument("nic", required=False)
@click.option("--host", help="Every NIC of this host (default: of every host).")
@click.option("--tier", type=click.Choice(["eswitch", "cache", "slow"]),
              help="Only this tier (default: all three).")  # fmt: skip
@click.option("--limit", type=Count(0, 10_000), default=1000, show_default=True,
              help="Flows to list at most, per NIC.")  # fmt: skip
@click.option("--json", "as_json", is_flag=True,
              help="As JSON ({nic: flows} without NIC).")  # fmt: skip
@click.pass_obj
def flows_command(
    obj: Context, nic: str | None, host: str | None, tier: str | None, limit: int, as_json: bool
) -> None:
    """NIC's flows per tier, like `dpctl/dump-flows` (no NIC: every NIC's, in turn)."""
    _per_nic(obj, nic, host, as_json, "flows", {"tier": tier, "limit": limit},
             lambda r: (format_flows(r["flows"]),
                        f"{r['total']} flows ({len(r['flows'])} shown)"))  # fmt: skip


def _nic_arg(obj: Context, nic: str, host: str | None = None) -> str:
    names = [n.name for n in _scope(obj, host).nics]
    if nic not in names:
        where = f" on host {host}" if host else ""
        raise click.ClickException(f"unknown NIC {nic!r}{where}; NICs: {', '.join(names)}")
    return nic


def _per_nic(
    obj: Context, nic: str | None, host: str | None, as_json: bool, cmd: str,
    args: dict[str, Any], show: Callable[[dict[str, Any]], tuple[str, str]],
) -> None:  # fmt: skip
    """`cmd` asked of NIC, or of every NIC in `--host`'s scope: one table, or one per NIC."""
    if nic is not None:
        result = obj.control(_nic_arg(obj, nic, host), cmd, args)
        if as_json:
            click.echo(json.dumps(result, indent=2))
            return
        text, count = show(result)
        click.echo(text)
        click.echo(f"nicteam: {count}", err=True)
        return
    results = {n.name: obj.control(n.name, cmd, args) for n in _scope(obj, host).nics}
    if as_json:
        click.echo(json.dumps(results, indent=2))
        return
    for name, result in results.items():
        text, count = show(result)
        click.echo(f"# {name}: {count}")
        if text:
            click.echo(text)


@main.command("trace")
@click.argument("nic")
@click.argument("packet")
@click.option("--in", "port", required=True,
              help="Where it enters: a VM on NIC (web1), or its uplink (nic1/p0).")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="As JSON.")
@click.pass_obj
def trace_command(obj: Context, nic: str, packet: str, port: str, as_json: bool) -> None:
    """Dry-run PACKET through NIC, like ofproto/trace: tier, rule, conntrack record, egress.

    PACKET is e.g. 'tcp src=10.0.10.11 dst=10.0.10.13 sport=40000 dport=80 flags=S'.
    Nothing changes on the NIC: no counter, no connection, no cache entry.
    """
    result = obj.control(_nic_arg(obj, nic), "trace", {"port": port, "spec": packet})
    _emit(result, as_json, format_trace(result))


@main.command("capture")
@click.argument("port")
@click.option("-w", "--write", "out", type=click.File("wb", lazy=False),
              help="Write a pcap file (tcpdump/Wireshark) instead of printing lines.")  # fmt: skip
@click.option("-c", "--count", type=Count(0), default=0,
              help="Stop after this many frames (0: until --seconds or Ctrl-C).")  # fmt: skip
@click.option("--seconds", type=Seconds(0, 86400, lo_open=True), help="Stop after this long.")
@click.option("-s", "--snaplen", type=Count(14, 65535), default=65535,
              show_default=True, help="Bytes kept of each frame.")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="The final counts as JSON.")
@click.pass_obj
def capture_command(
    obj: Context, port: str, out: Any, count: int, seconds: float | None, snaplen: int,
    as_json: bool,
) -> None:  # fmt: skip
    """Capture the frames in and out of NIC/PORT (nic1/p0, nic1/web1), like tcpdump."""
    writer = PcapWriter(out, snaplen) if out is not None else None

    def sink(ts: float, direction: str, frame: bytes, length: int) -> None:
        if writer is not None:
            writer.write(ts, frame, length)
        elif not as_json:
            click.echo(pcap_summary(ts, direction, frame))

    try:
        with stop_on_signals() as stop:  # SIGTERM too ends it cleanly, the pcap whole
            result = capture(obj.config, port, sink, count, seconds, snaplen, stop)
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    except ControlError as e:
        raise click.ClickException(f"{port}: {e}") from None
    if as_json:
        click.echo(json.dumps(capture_dict(result)))
    missed = f", {result.missed} missed (reader too slow)" if result.missed else ""
    click.echo(f"{result.written} frames captured{missed}", err=True)


@main.command("report")
@click.argument("logs", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--host", help="Only the faults on this host and its flows' losses.")
@click.option("--json", "as_json", is_flag=True, help="As JSON: {faults: [...]}.")
@click.option("--plot", "plot_to", type=click.Path(dir_okay=False, path_type=Path),
              help="Draw per-NIC throughput over time, faults marked, to this PNG.")  # fmt: skip
@click.pass_obj
def report_command(
    obj: Context, logs: Path, host: str | None, as_json: bool, plot_to: Path | None
) -> None:
    """How each fault in a run's logs went: timeline, frames lost, connections reset."""
    _scope(obj, host)  # an unknown --host before the logs are read
    if not any(logs.glob("*.jsonl")):
        raise click.ClickException(f"{logs}: no *.jsonl logs here (give RUNDIR/logs)")
    rep = report_of(report(logs, obj.config), obj.config, host)
    _emit(rep, as_json, format_report(rep))
    if plot_to is not None:
        try:
            series = plot(logs, plot_to)
        except (ValueError, OSError) as e:
            raise click.ClickException(f"--plot: {e}") from None
        nics = ", ".join(s.nic for s in series)
        click.echo(f"plot: {plot_to} (throughput of {nics})", err=True)


@main.command("migrate")
@click.argument("vm")
@click.argument("nic")
@click.option("--json", "as_json", is_flag=True, help="As JSON.")
@click.pass_obj
def migrate_command(obj: Context, vm: str, nic: str, as_json: bool) -> None:
    """Move VM's interfaces to NIC (same host) by a map update; its connections carry on."""
    try:
        result = migrate(obj.config, vm, nic)
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    except ControlError as e:
        raise click.ClickException(f"{e} (is the cluster up? nicteam status)") from None
    _emit(result, as_json, format_migrate(result))


@main.group("chaos")
def chaos_group() -> None:
    """Seeded random faults against the running cluster (a nemesis), and a checker's verdict."""


@chaos_group.command("run")
@click.option("--seconds", type=Seconds(1, 86400), default=60.0, show_default=True,
              help="How long to play faults.")  # fmt: skip
@click.option("--seed", type=Count(0), help="The schedule's seed [default: random].")
@click.option("--faults", default=",".join(DEFAULT_FAULTS), show_default=True,
              help=f"Fault kinds, comma-separated, from {','.join(KINDS)}.")  # fmt: skip
@click.option("--quiet-timeout", type=Seconds(1, 600), default=60.0,
              show_default=True, help="Seconds to wait for the cluster to settle.")  # fmt: skip
@click.option("--dry-run", is_flag=True, help="Print the schedule only; inject nothing.")
@click.option("--json", "as_json", is_flag=True, help="The verdict as JSON.")
@click.pass_obj
def chaos_run_command(
    obj: Context, seconds: float, seed: int | None, faults: str, quiet_timeout: float,
    dry_run: bool, as_json: bool,
) -> None:  # fmt: skip
    """Play faults from a seeded schedule, heal, wait for quiet, judge; exit 1 if invalid.

    Kills (kill2: two NICs of a host in one instant), pauses, partitions of the private
    channel, cable pulls, migrates, host-daemon pauses and kills, overlapping on purpose.
    The same --seed, --seconds and --faults play the same schedule again.
    """
    try:
        kinds = parse_faults(faults)
    except ValueError as e:
        raise click.ClickException(f"--faults: {e}") from None
    seed = secrets.randbelow(1_000_000) if seed is None else seed
    if dry_run:
        for step in plan(seed, seconds, kinds, Topology.from_config(obj.config)):
            click.echo(str(step))
        return
    click.echo(f"chaos: seed {seed}", err=True)
    try:
        verdict = run_and_check(obj.config, seed, seconds, kinds, quiet_timeout,
                                lambda line: click.echo(f"chaos: {line}", err=True))  # fmt: skip
    except (ChaosError, ControlError) as e:
        raise click.ClickException(f"{e} (is the cluster up? nicteam status)") from None
    _emit(verdict, as_json, format_verdict(verdict))
    if not verdict["valid"]:
        sys.exit(1)


@chaos_group.command("check")
@click.argument("logs", required=False,
                type=click.Path(exists=True, file_okay=False, path_type=Path))  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="The verdict as JSON.")
@click.pass_obj
def chaos_check_command(obj: Context, logs: Path | None, as_json: bool) -> None:
    """Judge the latest `chaos run` in a run's logs again (default: RUNDIR/logs)."""
    verdict = check_logs(obj.config, logs)
    if verdict["seed"] is None:
        raise click.ClickException(f"{logs or obj.run_dir / 'logs'}: no chaos run in these logs")
    _emit(verdict, as_json, format_verdict(verdict))
    if not verdict["valid"]:
        sys.exit(1)


for command in (up_command, down_command, keys_command, procfile_command):
    main.add_command(command)


if __name__ == "__main__":
    sys.exit(main())
