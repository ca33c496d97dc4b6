"""``python -m fabricd --config FILE [--run-dir DIR]``: run the fabric until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import uvloop

from bus.log import configure_logging
from configs import FABRICD, load_config
from configs.cmdline import private_run_dir
from fabricd.daemon import serve


def main(argv: Sequence[str] | None = None) -> int:
    """Load the config, log to ``<run_dir>/logs/fabricd.jsonl``, serve on uvloop; 0 when stopped."""
    parser = argparse.ArgumentParser(prog="fabricd", description=__doc__)
    parser.add_argument("--config", required=True, help="topology file (configs/*.toml)")
    parser.add_argument("--run-dir", default=None, help="run directory (default: ./run)")
    args = parser.parse_args(argv)
    config = load_config(args.config, run_dir=args.run_dir)
    private_run_dir("fabricd", config.run_dir)
    configure_logging(FABRICD, config.run_dir)
    uvloop.run(serve(config, name=FABRICD))
    return 0


if __name__ == "__main__":
    sys.exit(main())
