"""The one base class of every "bad input from outside" error.

Frames, bus messages, the policy, sync rows and stream payloads each have their own subclass,
and each carries a short dotted ``reason`` that its drop is counted under. A receive path
catches ``Malformed`` only: anything else escaping a decoder is our own bug and must crash
loudly (the card restarts the worker), never be dropped as bad input.
"""

from __future__ import annotations

__all__ = ["Malformed"]


class Malformed(Exception):
    """Input from outside that is not what it claims; ``reason`` is a dotted counter key."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
