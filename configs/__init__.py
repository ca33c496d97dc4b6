"""Cluster configurations: the model (model.py), TOML checks (tomlcheck.py), the section
parsers and loader (sections.py), the daemons' command line, and the embedded default."""

from __future__ import annotations

from pathlib import Path

from configs.model import (
    BUILTIN,
    FABRICD,
    KINDS,
    NETNS,
    RUN_DIR_ENV,
    CheckSpec,
    Config,
    ConfigError,
    HostSpec,
    IfaceSpec,
    NicSpec,
    PeerSpec,
    Timers,
    VmSpec,
    WorkloadFlow,
    resolve_run_dir,
)
from configs.sections import config_from_dict, load_config

__all__ = [
    "BUILTIN",
    "DEFAULT_CONFIG",
    "FABRICD",
    "KINDS",
    "NETNS",
    "RUN_DIR_ENV",
    "CheckSpec",
    "Config",
    "ConfigError",
    "HostSpec",
    "IfaceSpec",
    "NicSpec",
    "PeerSpec",
    "Timers",
    "VmSpec",
    "WorkloadFlow",
    "config_from_dict",
    "load_config",
    "load_default",
    "resolve_run_dir",
]

#: The embedded default cluster: one host, two NICs, four VMs, one external peer.
DEFAULT_CONFIG = Path(__file__).with_name("default.toml")


def load_default(run_dir: str | Path | None = None) -> Config:
    """Load the embedded ``default.toml``."""
    return load_config(DEFAULT_CONFIG, run_dir)
