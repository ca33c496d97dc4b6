"""The NIC's control socket commands: stats, ping, digest, fault and the read-only inspection.

`OperatorCommands.answer` turns a `ControlRequest` into its `ControlReply`; a bad argument is an
error answer, and a bug in one command is an error answer too, never an exception in the loop.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bus.messages import ControlReply, ControlRequest, Fault, InvalidField
from bus.node import BaseNode
from nicd.commands import Answer, InspectCommands
from nicd.control import NicControl
from nicd.nicstats import nic_stats


class OperatorCommands:
    """Every control command of one NIC; `answer` dispatches a request by name."""

    def __init__(
        self,
        core: NicControl,
        node: BaseNode[Any],
        inspect: InspectCommands,
        log: Any,
        now: Callable[[], float],
    ) -> None:
        self.core = core
        self.node = node
        self.log = log
        self.now = now
        self._commands: dict[str, Callable[[dict[str, Any]], Answer]] = {
            "stats": lambda _: (True, self.stats(), ""),
            "ping": lambda _: (True, {"nic": core.name}, ""),
            "digest": lambda _: core.digest(now()),
            "fault": self._fault,
            **inspect.table(),
        }

    def answer(self, msg: ControlRequest) -> ControlReply:
        """The reply to `msg`."""
        command = self._commands.get(msg.cmd)
        try:
            if command is None:
                return ControlReply(msg.req_id, False, {}, f"unknown command {msg.cmd!r}")
            return ControlReply(msg.req_id, *command(msg.args))
        except Exception as e:  # a bug in one command (or its reply) must not stop the loop
            self.log.exception("nic.control.error", cmd=msg.cmd)
            return ControlReply(msg.req_id, False, {}, f"{msg.cmd}: internal error: {e}")

    def stats(self) -> dict[str, Any]:
        """Counters for the control socket and the periodic `nic.stats` event."""
        return nic_stats(self.core, self.now(), self.node.stats)

    def _fault(self, args: dict[str, Any]) -> Answer:
        """Chaos: a fault on our bus channels (a partition of the private channel, say)."""
        try:
            fault = Fault(**args)
        except (TypeError, InvalidField) as e:
            return False, {}, f"fault: {e}"
        self.node.apply_fault(fault)
        self.log.warning(
            "chaos.fault", kind=fault.kind.value, peer=fault.peer, seconds=fault.seconds
        )
        faults = [list(f) for f in self.node.faults.snapshot(self.now())]
        return True, {"faults": faults}, ""
