"""`nicteam exec VM -- CMD ...`: run a command inside a netns VM's (or peer's) namespace, like
`ip netns exec` or Mininet's `h1 ping h2`.

The namespace is named from the running cluster's tag (its state file in the run directory;
with [machines], the share that runs the VM's host, or fabricd for a peer) and the VM's name.
This process then becomes `ip netns exec NS CMD...` (exec, no child): CMD gets the terminal,
stdin, stdout and stderr, and its exit status is the command's.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from configs import FABRICD, NETNS, Config, PeerSpec, VmSpec
from ctl.context import Context
from ctl.session import running_states
from kernel.netns import exec_argv, exists, namespace

__all__ = ["ExecError", "exec_command", "target"]

CAP_SYS_ADMIN = 21  # setns() into a named network namespace needs it (ip-netns(8))


class ExecError(RuntimeError):
    """Nothing to exec into: the message says why and what there is."""


def _netns_names(config: Config) -> str:
    """The netns VMs and peers of `config`, for the errors."""
    vms = [vm.name for vm in config.vms if vm.kind == NETNS]
    peers = [p.name for p in config.peers if p.kind == NETNS]
    if not vms and not peers:
        return 'this config has no netns VM or peer (kind = "netns")'
    parts = [f"netns VMs: {', '.join(vms) or '-'}"]
    if peers:
        parts.append(f"netns peers: {', '.join(peers)}")
    return "; ".join(parts)


def _endpoint(config: Config, name: str) -> tuple[VmSpec | PeerSpec, str]:
    """The netns VM or peer called `name` and the process that owns it (its host, fabricd)."""
    for vm in config.vms:
        if vm.name == name:
            spec: VmSpec | PeerSpec = vm
            owner, what = vm.host, "VM"
            break
    else:
        for peer in config.peers:
            if peer.name == name:
                spec, owner, what = peer, FABRICD, "peer"
                break
        else:
            raise ExecError(f"unknown VM or peer {name!r}; {_netns_names(config)}")
    if spec.kind != NETNS:
        raise ExecError(
            f"{name} is a built-in {what}: nothing to exec into; {_netns_names(config)}"
        )
    return spec, owner


def _tag(config: Config, states: list[dict[str, Any]], name: str, owner: str) -> str:
    """The tag of the running cluster, or of the machine's share of it that runs `owner`."""
    whole = [s for s in states if "machine" not in s]
    if whole:
        return str(whole[0]["tag"])
    machine = config.machine_of(owner)
    share = [s for s in states if machine is not None and s.get("machine") == machine.name]
    if not share:
        where = machine.name if machine is not None else "another machine"
        raise ExecError(
            f"{name} lives on machine {where} (with {owner}), whose share was not started "
            "from this run dir: run nicteam exec there"
        )
    return str(share[0]["tag"])


def target(config: Config, run_dir: Path, name: str) -> str:
    """The namespace of netns VM or peer `name` in the cluster running in `run_dir`; ExecError
    if there is none (no cluster, an unknown or built-in endpoint, a missing namespace)."""
    states = running_states(run_dir)
    if not states:  # before the names: without a cluster, `config` is merely the default
        raise ExecError(
            f"no cluster running in {run_dir}: `nicteam up` first, or give its --run-dir"
        )
    _, owner = _endpoint(config, name)
    ns = namespace(_tag(config, states, name, owner), name)
    if not exists(ns):
        raise ExecError(
            f"namespace {ns} of {name} is missing: {owner} makes it at launch "
            "(is it up? nicteam status)"
        )
    return ns


def _may_enter() -> bool:
    """Whether this process may setns(): root, or CAP_SYS_ADMIN in its effective set."""
    if os.geteuid() == 0:
        return True
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return False
    for line in status.splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> CAP_SYS_ADMIN & 1)
    return False


@click.command(
    "exec", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False}
)
@click.argument("vm")
@click.argument("argv", metavar="-- CMD...", nargs=-1, required=True, type=click.UNPROCESSED)
@click.pass_obj
def exec_command(obj: Context, vm: str, argv: tuple[str, ...]) -> None:
    """Run CMD inside netns VM's (or peer's) namespace, like `ip netns exec`: its stdin, stdout
    and stderr are this terminal's, its exit status is nicteam's. E.g. `nicteam exec nsclient
    -- curl http://10.0.10.21/`."""
    # Options stop at VM (so CMD's own reach it intact): the `--` after VM is still here.
    argv = argv[1:] if argv[:1] == ("--",) else argv
    if not argv:
        raise click.UsageError("no command: nicteam exec VM -- CMD ...")
    try:
        ns = target(obj.config, obj.run_dir, vm)
    except ExecError as e:
        raise click.ClickException(str(e)) from None
    if not _may_enter():
        raise click.ClickException(
            f"entering namespace {ns} needs root (or CAP_SYS_ADMIN): run nicteam exec as root, "
            "e.g. with sudo"
        )
    cmd = exec_argv(ns, argv)
    try:
        os.execvp(cmd[0], cmd)  # no return: this process becomes the command
    except FileNotFoundError:
        raise click.ClickException(
            f"{cmd[0]}: not found: apt-get install iproute2 (`make setup` does)"
        ) from None
