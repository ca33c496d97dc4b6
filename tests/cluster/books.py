"""What the cluster tests read from the endpoints' books: which flows must deliver, how much
each delivered, the connections reset, and waiting for data to move again."""

from __future__ import annotations

from configs import Config
from ctl.summary import books, losses
from tests.cluster.conftest import wait_for


def deliver_flows(config: Config) -> list[str]:
    """The workload flows the firewall lets through (their books must grow)."""
    return [f.name for f in config.flows if f.expect == "deliver"]


def delivered(config: Config) -> dict[str, int]:
    """Messages delivered per flow, from every host's and fabricd's books."""
    return {name: int(sides.get("sink", {}).get("delivered", 0))
            for name, sides in books(config).items()}  # fmt: skip


def resets(config: Config) -> dict[str, int]:
    """Connections reset per deliver flow, as the senders' books count them."""
    deliver = set(deliver_flows(config))
    return {name: n for name, (_, n) in losses(books(config)).items() if name in deliver}


def resumed(config: Config, what: str, timeout: float = 30) -> None:
    """Return once every deliver flow has delivered more than 3 messages since the call."""
    before = delivered(config)
    wait_for(f"{what}: data resumed on every flow",
             lambda: all(delivered(config).get(f, 0) > before.get(f, 0) + 3
                         for f in deliver_flows(config)),
             timeout=timeout)  # fmt: skip
