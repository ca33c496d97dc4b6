"""The daemons' command line: every daemon is started as `--config FILE --<role> NAME`."""

from __future__ import annotations

import argparse

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
    return load_config(args.config, args.run_dir), args.name
