"""`nicteam up`, `down`, `keys` and `procfile`: a cluster's launch and stop, whole or one
machine's share, and what it needs first (keys, its Procfile). Registered on `ctl.cli.main`."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import click

from bus.curve import KEY_DIR
from configs import Config
from ctl import summary
from ctl.checks import count_checks, format_checks
from ctl.cluster import PlacementError, make_keys, procfile
from ctl.context import Context
from ctl.params import Seconds
from ctl.progress import Update, progress
from ctl.session import SessionError, down, selftest, up
from ctl.views import format_status, status

MACHINE_HELP = "Launch only this machine's processes (see the config's [machines] section)."


@click.command("up")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False),
              help="Launch this config instead (default: configs/default.toml).")  # fmt: skip
@click.option("--test", "as_test", is_flag=True,
              help="Run the workload privately, print delivery; exit 1 on loss.")  # fmt: skip
@click.option("--seconds", type=Seconds(0.5, 3600), default=5.0, show_default=True,
              help="With --test: how long the workload runs.")  # fmt: skip
@click.option("--timeout", type=Seconds(1, 600), default=60.0, show_default=True,
              help="Seconds to wait for every NIC to come up.")  # fmt: skip
@click.option("--machine", help=MACHINE_HELP)
@click.pass_obj
def up_command(
    obj: Context, config_path: str | None, as_test: bool, seconds: float, timeout: float,
    machine: str | None,
) -> None:  # fmt: skip
    """Launch a cluster from the Procfile in the run directory (stop it with `nicteam down`).

    With --machine M, only the processes the config's [machines] section places on M; it
    returns once every NIC of every machine is up.
    """
    if config_path is not None:
        obj.config_path = str(Path(config_path).absolute())
    config = obj.config  # a bad config is reported before anything starts
    path = Path(obj.config_path).absolute()
    if as_test:
        if machine is not None:
            raise click.UsageError("--test runs the whole cluster here: no --machine")
        _up_test(config, path, seconds)
        return
    with progress("launch", len(config.nics)) as step:
        try:
            state = up(path, obj.run_dir, timeout, _nic_up(config, step), machine)
        except SessionError as e:
            raise click.ClickException(str(e)) from None
    share = "cluster" if machine is None else f"machine {machine}"
    click.echo(f"{share} up: {path.name}, run dir {obj.run_dir} (honcho pid {state['pid']})")
    click.echo(format_status(status(config)))
    click.echo("logs: nicteam report " + str(obj.run_dir / "logs") + "; stop: nicteam down")


def _nic_up(config: Config, step: Update) -> Callable[[str, float], None]:
    """Progress of a launch: one step per NIC that comes up."""
    names = [n.name for n in config.nics]
    return lambda nic, t: step(f"{nic} up after {t:.1f} s", names.index(nic) + 1)


def _up_test(config: Config, path: Path, seconds: float) -> None:
    n, checks = len(config.nics), count_checks(config)
    with progress("test", n + seconds + checks) as step:
        try:
            result = selftest(
                path,
                seconds,
                _nic_up(config, step),
                lambda t: step(f"workload {t:.1f} / {seconds:g} s", n + t),
                lambda vm, check, i: step(f"check {vm} {check.name}", n + seconds + i),
            )
        except SessionError as e:
            raise click.ClickException(str(e)) from None
    click.echo(f"over the {seconds:g} s after every flow delivered:")
    click.echo(summary.format_table(result.rows))
    if result.checks:
        click.echo("checks of the netns VMs and peers, in their namespaces:")
        click.echo(format_checks(result.checks))
    if result.problems:
        for problem in result.problems:
            click.echo(f"UNEXPECTED: {problem}")
        click.echo(f"*** Results: {len(result.problems)} unexpected outcomes in {seconds:g} s")
        sys.exit(1)
    declared = f"; {len(result.checks)} checks as declared" if result.checks else ""
    click.echo(
        f"*** Results: every flow as expected over {seconds:g} s (0 lost, 0 reset){declared}"
    )


@click.command("down")
@click.option("--machine", help="Only what `up --machine` started for this machine.")
@click.pass_obj
def down_command(obj: Context, machine: str | None) -> None:
    """Stop the cluster `nicteam up` started in the run directory, every process of it."""
    n = down(obj.run_dir, machine)
    share = "cluster" if machine is None else f"machine {machine}"
    if n:
        click.echo(f"{share} in {obj.run_dir} stopped ({n} processes)")
    else:
        click.echo(f"no {share} running in {obj.run_dir}")


@click.command("keys")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False),
              help="Of this config instead (default: as for every command).")  # fmt: skip
@click.pass_obj
def keys_command(obj: Context, config_path: str | None) -> None:
    """Make a CURVE key pair per process and one for this CLI in RUNDIR/keys (those missing).

    Every tcp endpoint is CURVE: copy the folder to each machine's run directory.
    """
    if config_path is not None:
        obj.config_path = str(Path(config_path).absolute())
    config = obj.config
    try:
        made = make_keys(config)
    except OSError as e:
        raise click.ClickException(f"keys: {e}") from None
    folder = config.run_dir / KEY_DIR
    if made:
        click.echo(f"made {len(made)} key pairs in {folder}: {', '.join(made)}")
    else:
        click.echo(f"every key pair is already in {folder}")


@click.command("procfile")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False),
              help="Of this config instead (default: as for every command).")  # fmt: skip
@click.option("--machine", help="Only the processes [machines] places on this machine.")
@click.pass_obj
def procfile_command(obj: Context, config_path: str | None, machine: str | None) -> None:
    """Print the Procfile of the config's cluster: fabricd, hostd per host, a card per NIC."""
    if config_path is not None:
        obj.config_path = str(Path(config_path).absolute())
    try:
        click.echo(procfile(obj.config, machine=machine), nl=False)
    except PlacementError as e:
        raise click.UsageError(str(e)) from None
