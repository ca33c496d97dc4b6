"""The card of a smart NIC: the Procfile process that boots and reboots its NIC OS worker.

python -m nicd --config configs/default.toml --nic nic1
"""

from __future__ import annotations

import sys

from bus.card import Card, run_card
from bus.log import configure_logging
from bus.transport import ipc_path
from configs.cmdline import daemon_args


def main(argv: list[str] | None = None) -> None:
    """Entry point of the card process (`python -m nicd`)."""
    config, nic = daemon_args("nicd", __doc__, "nic", argv)
    spec = config.nic(nic)
    configure_logging(f"{nic}-card", config.run_dir, host=spec.host, nic=nic)
    cmd = [sys.executable, "-m", "nicd.worker", "--config", str(config.path), "--nic", nic,
           "--run-dir", str(config.run_dir)]  # fmt: skip
    card = Card(cmd, config.run_dir / f"{nic}.pid", ipc_path(config.endpoint(nic)),
                config.timers.reboot_delay_s)  # fmt: skip
    run_card(card)


if __name__ == "__main__":
    main()
