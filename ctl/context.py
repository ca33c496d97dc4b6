"""What every `nicteam` command stands on: the cluster's config and run directory, loaded once,
and a command group whose every command also takes `--config` and `--run-dir` after its verb.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from bus.curve import MissingKey
from bus.rundir import unreadable
from configs import DEFAULT_CONFIG, Config, ConfigError, load_config, resolve_run_dir
from ctl.client import ControlError, request
from ctl.session import launched_config


class Context:
    """What every command needs: the cluster's config, loaded once.

    Without --config, the config of the cluster `nicteam up` started in the run directory, else
    the default one: `nicteam up --config X` then `nicteam status` speaks to that cluster.
    """

    def __init__(self, config_path: str | None, run_dir: str | None) -> None:
        self._config_path = config_path
        self._run_dir = run_dir
        self._config: Config | None = None

    def override(self, config_path: str | None = None, run_dir: str | None = None) -> None:
        """`--config` / `--run-dir` given after the verb: they win over the group's."""
        if config_path is not None:
            self._config_path, self._config = config_path, None
        if run_dir is not None:
            self._run_dir, self._config = run_dir, None

    @property
    def run_dir(self) -> Path:
        """The run directory; one clean error if this user may not open it."""
        path = resolve_run_dir(self._run_dir)
        why = unreadable(path)
        if why is not None:
            raise click.ClickException(why)
        return path

    @property
    def config_path(self) -> str:
        """The config given, else the one `up` launched in the run directory, else default."""
        return self._config_path or launched_config(self.run_dir) or str(DEFAULT_CONFIG)

    @config_path.setter
    def config_path(self, path: str) -> None:
        self.override(config_path=path)

    @property
    def config(self) -> Config:
        if self._config is None:
            try:
                self._config = load_config(self.config_path, self.run_dir)
            except (ConfigError, OSError) as e:
                # A file-level error (size, syntax, nesting) names the file already.
                said = str(e)
                where = "" if said.startswith(str(self.config_path)) else f"{self.config_path}: "
                raise click.ClickException(f"config {where}{said}") from None
        return self._config

    def control(self, proc: str, cmd: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
        """One control request; a daemon that is down or says no is a clean CLI error."""
        try:
            return request(self.config, proc, cmd, args, timeout=3.0)
        except ControlError as e:
            raise click.ClickException(f"{proc}: {e}") from None


CONFIG_HELP = "The cluster's config file [default: the one `up` launched, else the default]."
RUN_DIR_HELP = "The cluster's run directory [default: $NICTEAM_RUN_DIR, else ./run]."


def _after_verb(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value is not None:
        ctx.find_object(Context).override(**{str(param.name): value})  # type: ignore[union-attr]


class Commands(click.Group):
    """A group whose every command also takes `--config` and `--run-dir` after its verb."""

    group_class = type  # `chaos` and other subgroups: the same kind of group

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        """Add `cmd` with `--config` / `--run-dir` (unless it has its own)."""
        have = {p.name for p in cmd.params}
        for flag, dest, text in (("--config", "config_path", CONFIG_HELP),
                                 ("--run-dir", "run_dir", RUN_DIR_HELP)):  # fmt: skip
            if dest not in have:
                cmd.params.append(click.Option([flag, dest], expose_value=False,
                                               callback=_after_verb, help=text))  # fmt: skip
        super().add_command(cmd, name)

    def invoke(self, ctx: click.Context) -> Any:
        """Run the command; a CURVE key this CLI lacks is one `Error:` line, not "down"."""
        try:
            return super().invoke(ctx)
        except MissingKey as e:
            raise click.ClickException(f"the cluster speaks CURVE on tcp: {e}") from None
