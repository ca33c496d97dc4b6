"""Every numeric config field's range, and the bounds on the config file itself.

One table, read by the section parsers (configs/sections.py) and documented in
``configs/default.toml`` (tests/unit/test_config_ranges.py checks the two agree). A value outside
its range is one ConfigError naming the field and the range, before any process starts: a value
that parses but that no network would use (a heartbeat every microsecond, a NIC rebooting in
30,000 years, 2**63 conntrack entries) fails later and far from its cause.
"""

from __future__ import annotations

from dataclasses import dataclass

from bus.policy import MAX_TIMEOUT_MS

__all__ = [
    "MAX_COMMANDS",
    "MAX_COMMAND_CHARS",
    "MAX_CONFIG_BYTES",
    "MAX_NESTING",
    "RANGES",
    "Range",
    "fmt_number",
]

#: A config is a few KB (default.toml is ~10 KB); a megabyte is a mistake or an attack, and
#: tomllib would spend seconds and hundreds of MB on it before any field is checked.
MAX_CONFIG_BYTES = 1 << 20
#: Arrays and inline tables nest at most this deep (a config needs 3; tomllib recurses per level).
MAX_NESTING = 32
#: A netns VM or peer runs at most this many services (``run``) and declares as many ``checks``:
#: each is a process in its namespace, and a VM is a test endpoint, not a server farm.
MAX_COMMANDS = 32
#: One command line, in characters: a shell's whole script does not belong in a config.
MAX_COMMAND_CHARS = 4096


def fmt_number(x: float) -> str:
    """``x`` as a person writes it in a config: 4096, 0.01, 1e6."""
    if float(x).is_integer():
        digits = str(int(x))
        if len(digits) > 6 and digits.rstrip("0") == "1":  # 1e6, not 1000000
            return f"1e{len(digits) - 1}"
        return digits
    return f"{x:g}"


@dataclass(frozen=True, slots=True)
class Range:
    """An inclusive range ``lo..hi``; ``integer`` fields refuse floats (and booleans)."""

    lo: float
    hi: float
    integer: bool = False
    unit: str = ""

    @property
    def text(self) -> str:
        """The range as the errors and the docs write it: ``0.01..10 s``."""
        span = f"{fmt_number(self.lo)}..{fmt_number(self.hi)}"
        return f"{span} {self.unit}" if self.unit else span


# The key is the field as it appears in the TOML: "<section>.<key>", with [[hosts]] and
# [[hosts.nics]] written "hosts.<key>" and "hosts.nics.<key>", [flows.<name>] "flows.<key>".
RANGES: dict[str, Range] = {
    # Below 10 ms a Python event loop cannot keep the beat under load and NICs flap; above 10 s
    # a dead NIC goes unnoticed for minutes (bonding's miimon is 100 ms, BFD's slowest 10 s).
    "timers.heartbeat_s": Range(0.01, 10, unit="s"),
    # One miss is allowed (declared down after one lost heartbeat); past 100 detection is
    # measured in minutes whatever the period.
    "timers.heartbeat_misses": Range(1, 100, integer=True),
    # 0 restarts a crashed NIC OS at once; a real card reboots in seconds to a few minutes.
    "timers.reboot_delay_s": Range(0, 600, unit="s"),
    # Housekeeping: conntrack ageing and offload rebalance granularity.
    "timers.tick_s": Range(0.01, 10, unit="s"),
    "timers.stats_s": Range(0.1, 3600, unit="s"),
    # Conntrack timeouts: whole milliseconds, at most a year (bus.policy.MAX_TIMEOUT_MS).
    "timeouts.*": Range(0.001, MAX_TIMEOUT_MS // 1000, unit="s"),
    # 1 kb/s to 1 Tb/s per uplink; 400G is today's fastest port.
    "hosts.uplink_mbps": Range(0.001, 1e6, unit="Mb/s"),
    # A share of the uplink's capacity.
    "hosts.load_threshold": Range(0.01, 1),
    # Hardware flow table: 0 (no eSwitch tier) to 2**20, what a ConnectX-class eSwitch holds.
    "hosts.nics.eswitch_capacity": Range(0, 1 << 20, integer=True),
    # Conntrack table: Linux's nf_conntrack_max on a big host is a few million; 2**22.
    "hosts.nics.ct_limit": Range(1, 1 << 22, integer=True),
    # OpenFlow's 16-bit priority; the bus carries it as an integer.
    "firewall.rules.priority": Range(0, 65535, integer=True),
    # A Python sender paces a few thousand messages/s; 0 defines a flow that sends nothing.
    "flows.rate": Range(0, 10_000, unit="messages/s"),
    "flows.dport": Range(1, 65535, integer=True),
    # Also capped by the protocol: a UDP datagram's payload, a TCP message's framing.
    "flows.size": Range(1, 65535, integer=True, unit="bytes"),
    "vms.tcp_listen": Range(1, 65535, integer=True),
    # A netns check's command: ping -c 3 takes 2 s, curl with retries some more; past ten
    # minutes `up --test` seems to hang.
    "vms.checks.timeout_s": Range(0.1, 600, unit="s"),
    "segments.vlan": Range(1, 4094, integer=True),  # IEEE 802.1Q: 0 and 4095 are reserved
    # A machine's first bus port: unprivileged (the daemons need no root), and its processes'
    # ports (port, port + 1, ...) must all stay below 65536.
    "machines.port": Range(1024, 65535, integer=True),
}
