"""Cluster configurations: the TOML loader and the embedded default topology."""

from __future__ import annotations

from pathlib import Path

from configs.loader import (
    FABRICD,
    RUN_DIR_ENV,
    Config,
    ConfigError,
    HostSpec,
    IfaceSpec,
    NicSpec,
    PeerSpec,
    Timers,
    VmSpec,
    WorkloadFlow,
    config_from_dict,
    load_config,
    resolve_run_dir,
    timeouts_from_ms,
    timeouts_to_ms,
)

__all__ = [
    "DEFAULT_CONFIG",
    "FABRICD",
    "RUN_DIR_ENV",
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
    "timeouts_from_ms",
    "timeouts_to_ms",
]

#: The embedded default cluster: one host, two NICs, four VMs, one external peer.
DEFAULT_CONFIG = Path(__file__).with_name("default.toml")


def load_default(run_dir: str | Path | None = None) -> Config:
    """Load the embedded ``default.toml``."""
    return load_config(DEFAULT_CONFIG, run_dir)
