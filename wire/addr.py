"""MAC address helpers: the text operators write and the 6 bytes frames carry."""

from __future__ import annotations


def mac_bytes(text: str) -> bytes:
    """'02:00:00:00:00:01' -> 6 bytes; raises ValueError on anything else."""
    parts = text.split(":")
    if len(parts) != 6 or not all(len(p) == 2 for p in parts):
        raise ValueError(f"not a MAC address: {text!r}")
    return bytes(int(p, 16) for p in parts)


def mac_str(mac: bytes) -> str:
    """6 bytes -> '02:00:00:00:00:01'."""
    return ":".join(f"{b:02x}" for b in mac)
