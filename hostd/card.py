"""The card of a host: the Procfile process that boots and reboots its host daemon.

A host daemon that crashes must not take the cluster down with it (a Procfile runner stops
everything when one process exits): its card restarts it at once, the NICs forward on the map
they hold meanwhile, and the new daemon recovers the map and epoch from them.

    python -m hostd --config configs/default.toml --host h1
"""

from __future__ import annotations

import sys

from bus.card import Card, run_card
from bus.log import configure_logging
from bus.transport import ipc_path
from configs.cmdline import daemon_args

RESTART_DELAY_S = 0.1  # the host's VMs and decisions wait on it: no reboot_delay here


def main(argv: list[str] | None = None) -> None:
    """Entry point of the host's card (`python -m hostd`)."""
    config, host = daemon_args("hostd", __doc__, "host", argv)
    configure_logging(f"{host}-card", config.run_dir, host=host)
    cmd = [sys.executable, "-m", "hostd.daemon", "--config", str(config.path), "--host", host,
           "--run-dir", str(config.run_dir)]  # fmt: skip
    card = Card(cmd, config.run_dir / f"{host}.pid", ipc_path(config.endpoint(host)),
                RESTART_DELAY_S, role="host")  # fmt: skip
    run_card(card)


if __name__ == "__main__":
    main()
