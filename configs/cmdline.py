"""The daemons' command line (`--config FILE --<role> NAME`) and the bus node each one opens."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bus.curve import CLI, KEY_DIR, CurveKeys, MissingKey
from bus.guard import operator_only
from bus.rundir import RunDirError, private_dir, private_umask
from bus.transport import BusNode
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


def curve_keys(config: Config) -> CurveKeys | None:
    """The cluster's key folder when any process listens on tcp (then every process uses CURVE)."""
    if any(config.endpoint(p).startswith("tcp://") for p in config.processes):
        return CurveKeys(config.run_dir / KEY_DIR, frozenset((*config.processes, CLI)))
    return None


def daemon_node(prog: str, config: Config, name: str) -> BusNode:
    """The bus node of daemon `name`: CURVE on tcp, changing commands only from the operator
    (and, for a NIC, its own host: another host's key is not the operator of this one).

    A tcp cluster without this process's keys or a peer's public key (or with damaged ones)
    exits with one line
    saying which file and how to make it: never plaintext.
    """
    keys = curve_keys(config)
    if keys is not None:
        try:
            keys.pair(name)
            for peer in config.processes:  # whichever it links to: checked before any link
                keys.public(peer)
        except MissingKey as e:
            sys.exit(f"{prog} {name}: tcp endpoints need CURVE keys: {e}")
    node = BusNode(name, config.endpoint(name), curve=keys)
    own_host = [n.host for n in config.nics if n.name == name]
    node.guard = operator_only(own_host)
    return node
