"""The daemons' command line: every daemon is started as `--config FILE --<role> NAME`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bus.rundir import RunDirError, private_dir, private_umask
from configs import Config, load_config


def daemon_args(
    prog: str, doc: str | None, role: str, argv: list[str] | None
) -> tuple[Config, str]:
    """Parse `--config FILE --<role> NAME [--run-dir DIR]`; returns the config and the name."""
    parser = argparse.ArgumentParser(prog=prog, description=doc)
    parser.add_argument("--config", required=True)
    parser.add_argument(f"--{role}", required=True, dest="name")
    parser.add_argument("--run-dir")
    args = parser.parse_args(argv)
    config = load_config(args.config, args.run_dir)
    private_run_dir(prog, config.run_dir)
    return config, args.name


def private_run_dir(prog: str, run_dir: Path) -> None:
    """Owner-only from here on: umask 077, the run directory 0700 (or exit with why not)."""
    private_umask()
    try:
        private_dir(run_dir)
    except RunDirError as e:
        sys.exit(f"{prog}: {e}")
