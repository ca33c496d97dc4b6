"""A VM's or external peer's ``kind``, and what a netns one declares: ``run`` and ``checks``.

A ``builtin`` endpoint is nicteam's own host stack inside its daemon; it listens on
``tcp_listen``/``udp_listen`` and the workload's ``[flows.*]`` run between such endpoints. A
``netns`` endpoint is a Linux network namespace with real applications: the ``run`` commands
are its services (started in the namespace at launch) and ``checks`` are commands `up --test`
runs there. So ``run``/``checks`` belong to netns endpoints only, the listener lists to
built-in ones only, and no workload flow ends at a netns endpoint: its traffic is whatever its
applications send, which the endpoints' books cannot judge.

Every command is one line of at most ``MAX_COMMAND_CHARS`` characters that a shell splits into
at least one word (balanced quotes); no control characters, so what the config shows is what
runs. At most ``MAX_COMMANDS`` of each list; check names are unique per endpoint.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Any

from configs.model import BUILTIN, CHECK_EXPECTS, KINDS, NETNS, CheckSpec, ConfigError
from configs.ranges import MAX_COMMAND_CHARS, MAX_COMMANDS
from configs.tomlcheck import _array, _at, _name, _ranged, _table, _type_name

__all__ = ["KIND_KEYS", "KindFields", "kind_fields", "netns_flow_end"]

#: The keys kind_fields reads from a ``[vms.<name>]`` or ``[peers.<name>]`` table.
KIND_KEYS = ("kind", "run", "checks")
_LISTEN_KEYS = ("tcp_listen", "udp_listen")
_CHECK_KEYS = ("name", "cmd", "expect", "timeout_s")


@dataclass(frozen=True, slots=True)
class KindFields:
    """A VM's or peer's kind, its services and its checks (both empty for a built-in one)."""

    kind: str
    run: tuple[str, ...] = ()
    checks: tuple[CheckSpec, ...] = ()


def kind_fields(d: dict[str, Any], where: str, what: str) -> KindFields:
    """The kind, ``run`` and ``checks`` of the VM or peer table ``d`` at ``where``; ``what`` is
    "VM" or "peer", for the errors."""
    kind = d.get("kind", BUILTIN)
    if kind not in KINDS:
        names = " or ".join(repr(k) for k in KINDS)
        raise ConfigError(f"{where}.kind", f"must be {names}, got {kind!r}")
    if kind == BUILTIN:
        for key in ("run", "checks"):
            if key in d:
                raise ConfigError(
                    f"{where}.{key}",
                    f'only a netns {what} runs commands (kind = "netns"); '
                    f"this one is the built-in stack",
                )
        return KindFields(kind)
    for key in _LISTEN_KEYS:
        if key in d:
            raise ConfigError(
                f"{where}.{key}",
                f"a netns {what} has no built-in listeners: its services are its `run` commands",
            )
    run = tuple(_command(c, _at(f"{where}.run", i)) for i, c in enumerate(_list(d, "run", where)))
    return KindFields(kind, run, _checks(_list(d, "checks", where), f"{where}.checks"))


def netns_flow_end(kinds: dict[str, str], src: str, dst: str) -> tuple[str, str] | None:
    """(field, endpoint) of a workload flow's end that is a netns VM or peer, or None."""
    for key, end in (("src", src), ("dst", dst)):
        if kinds[end] == NETNS:
            return key, end
    return None


def _list(d: dict[str, Any], key: str, where: str) -> list[Any]:
    items = _array(d.get(key, []), f"{where}.{key}")
    if len(items) > MAX_COMMANDS:
        raise ConfigError(f"{where}.{key}", f"at most {MAX_COMMANDS} entries, got {len(items)}")
    return items


def _checks(items: list[Any], where: str) -> tuple[CheckSpec, ...]:
    checks: dict[str, CheckSpec] = {}
    for i, raw in enumerate(items):
        at = _at(where, i)
        c = _table(raw, at, _CHECK_KEYS, ("name", "cmd"))
        name = _name(c["name"], f"{at}.name")
        if name in checks:
            raise ConfigError(f"{at}.name", f"check {name!r} already declared")
        expect = c.get("expect", "ok")
        if expect not in CHECK_EXPECTS:
            raise ConfigError(f"{at}.expect", f"must be 'ok' or 'fail', got {expect!r}")
        timeout = _ranged(c.get("timeout_s", 10.0), f"{at}.timeout_s", "vms.checks.timeout_s")
        checks[name] = CheckSpec(name, _command(c["cmd"], f"{at}.cmd"), expect, timeout)
    return tuple(checks.values())


def _command(v: object, where: str) -> str:
    """One command line: a non-empty string of words a shell can split, within the bounds."""
    if not isinstance(v, str):
        raise ConfigError(where, f"must be a command (a string), got {_type_name(v)}")
    if not v.strip():
        raise ConfigError(where, "an empty command")
    if len(v) > MAX_COMMAND_CHARS:
        raise ConfigError(where, f"at most {MAX_COMMAND_CHARS} characters, got {len(v)}")
    bad = next((ch for ch in v if ch < " " or ch == "\x7f"), None)
    if bad is not None:
        raise ConfigError(where, f"a control character ({bad!r}) in the command: one line only")
    try:
        shlex.split(v)
    except ValueError as e:  # unbalanced quotes
        raise ConfigError(where, f"not a command line a shell can split: {e}") from None
    return v
