"""The host daemon's control commands: stats, the map, `migrate` and `team-policy`.

Each answers one `ControlRequest` from the operator's CLI; a bad argument is an error answer.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING

from bus.heartbeat import Liveness
from bus.messages import ControlReply, ControlRequest, PolicyUpdate
from bus.nicstate import NicState
from bus.policy import PolicyError, team_policy_name
from wire.addr import mac_str

if TYPE_CHECKING:
    from hostd.daemon import HostDaemon


class HostCommands:
    """The commands an operator sends a host daemon (`nicteam status`, `map`, `migrate`...)."""

    def __init__(self, host: HostDaemon) -> None:
        self.host = host

    def answer(self, msg: ControlRequest) -> ControlReply:
        """The reply to one operator command."""
        h = self.host
        if h.recovering and msg.cmd in ("migrate", "team-policy"):
            why = "the host is recovering its map from its NICs (it restarted); try again soon"
            return ControlReply(msg.req_id, False, {}, f"{msg.cmd}: {why}")
        if msg.cmd == "stats":
            result: dict[str, object] = {
                "boot": h.boot,
                "recovering": h.recovering,
                "dropped_recovering": h.dropped_recovering,
                "stalls": h.stalls,
                "flows": h.flow_stats(),
                "nics": {nic: state.value for nic, state in h.nic_state.items()},
                "team_policy": str(h.team_policy),
                "links_down": dict(h.links_down),
                "stale_frames": dict(h.stale_frames),
                "epoch": h.fpag.epoch,
                "bus": asdict(h.node.stats),
                # netns VMs' TAPs: what was relayed and dropped, and whether the TAP is gone
                "kernel": {p.name: {**asdict(p.stats), "lost": p.lost} for p in h.kernel.values()},
            }
        elif msg.cmd == "team-policy":
            try:
                result = self.set_team_policy(msg.args)
            except PolicyError as e:  # the operator's argument
                return ControlReply(msg.req_id, False, {}, str(e))
        elif msg.cmd == "migrate":
            try:
                result = self.migrate(msg.args)
            except ValueError as e:
                return ControlReply(msg.req_id, False, {}, str(e))
        elif msg.cmd == "map":
            result = {
                "epoch": h.fpag.epoch,
                "entries": [list(row) for row in h.fpag.entries()],
                "ports": self.ports(),
            }
        else:
            return ControlReply(msg.req_id, False, {}, f"unknown command {msg.cmd!r}")
        return ControlReply(msg.req_id, True, result, "")

    def ports(self) -> list[dict[str, object]]:
        """Every VM interface: its VPID, VM, MAC and where it is plugged now."""
        h = self.host
        out: list[dict[str, object]] = []
        for vpid, ep in sorted(h.ports().items()):
            b = h.fpag.binding(vpid)
            out.append(
                {"vpid": vpid, "vm": ep.name, "mac": mac_str(ep.mac), "nic": b.nic, "ppid": b.ppid}
            )
        return out

    def migrate(self, args: dict[str, object]) -> dict[str, object]:
        """The `migrate` command: plug a VM's interfaces into another NIC, as one new epoch.

        Only the map changes: the VPIDs stay, so the target NIC takes over the records it holds
        as copies and no flow entry is rewritten. The move also becomes the VM's home for
        failback, or the next failback would undo what the operator asked for.
        """
        h = self.host
        vm, nic = str(args.get("vm", "")), str(args.get("nic", ""))
        vpids = [v for v, ep in h.ports().items() if ep.name == vm or ep.name.startswith(f"{vm}/")]
        if not vpids:
            names = ", ".join(sorted(ep.name for ep in h.ports().values()))
            raise ValueError(f"no VM {vm!r} on host {h.spec.name} (VMs: {names})")
        if nic not in h.fpag.nics:
            raise ValueError(
                f"no NIC {nic!r} on host {h.spec.name} (NICs: {', '.join(h.fpag.nics)})"
            )
        if h.nic_state.get(nic) is not NicState.UP or h.liveness.state(nic) is not Liveness.UP:
            state = h.nic_state.get(nic, "not heard from")
            raise ValueError(f"{nic} is {state}: migrate only to a NIC that is up (nicteam status)")
        before = {v: h.fpag.binding(v) for v in sorted(vpids)}
        moves = [(v, nic) for v, b in before.items() if b.nic != nic]
        for v, _ in moves:
            h.supervisor.configured[v] = nic
        h._remap("migrate", nic, moves)
        return {
            "vm": vm,
            "nic": nic,
            "epoch": h.fpag.epoch,
            "moves": [
                {"vpid": v, "from": b.nic, "from_ppid": b.ppid, "to": nic,
                 "ppid": h.fpag.binding(v).ppid}
                for v, b in before.items() if b.nic != nic
            ],
        }  # fmt: skip

    def set_team_policy(self, args: dict[str, object]) -> dict[str, object]:
        """The `team-policy` command: every NIC of the host gets the new policy now."""
        h = self.host
        new = team_policy_name(args.get("policy"), "policy")
        old, h.team_policy = h.team_policy, new
        if new != old:
            h.policy_version += 1
            update = PolicyUpdate(h.policy_version, h.policy())
            for nic in h.fpag.nics:
                h.node.send(nic, update)
        h.log.info("host.team.policy", old=str(old), new=str(new), version=h.policy_version)
        return {"old": str(old), "policy": str(new), "version": h.policy_version}
