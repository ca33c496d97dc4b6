"""Click parameter types for durations and counts: one clear usage error, never NaN or infinity.

click's FloatRange lets NaN through (every comparison with NaN is false), so `pause --for nan`
"succeeded" after a 0.2 ms pause and `partition --for nan` ended in a traceback. These types
refuse NaN, infinities and values outside their range with a usage error naming the option.
"""

from __future__ import annotations

import math

import click

__all__ = ["Count", "Seconds"]


def _num(x: float) -> str:
    return f"{x:g}"


class Seconds(click.ParamType):
    """A finite duration in seconds in ``lo..hi``; ``lo`` excluded when ``lo_open``."""

    name = "seconds"

    def __init__(self, lo: float, hi: float, *, lo_open: bool = False) -> None:
        self.lo, self.hi, self.lo_open = lo, hi, lo_open

    @property
    def span(self) -> str:
        """The range as the error writes it: ``0 < s <= 3600``."""
        return f"{_num(self.lo)} {'<' if self.lo_open else '<='} s <= {_num(self.hi)}"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        """``value`` as float seconds, or a usage error naming the option and the range."""
        try:
            f = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number of seconds ({self.span})", param, ctx)
        low_ok = f > self.lo if self.lo_open else f >= self.lo
        if not math.isfinite(f) or not low_ok or f > self.hi:
            self.fail(f"{value!r} is not a number of seconds in {self.span}", param, ctx)
        return f

    def __repr__(self) -> str:
        return f"Seconds({self.span})"


class Count(click.ParamType):
    """An integer count in ``lo..hi`` (``hi`` None: no upper bound)."""

    name = "count"

    def __init__(self, lo: int = 0, hi: int | None = None) -> None:
        self.lo, self.hi = lo, hi

    @property
    def span(self) -> str:
        """The range as the error writes it: ``n >= 0`` or ``0 <= n <= 10000``."""
        return f"n >= {self.lo}" if self.hi is None else f"{self.lo} <= n <= {self.hi}"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> int:
        """``value`` as an int, or a usage error naming the option and the range."""
        if isinstance(value, int) and not isinstance(value, bool):
            n = value
        else:
            try:
                n = int(str(value), 10)
            except ValueError:
                self.fail(f"{value!r} is not a whole number ({self.span})", param, ctx)
        if n < self.lo or (self.hi is not None and n > self.hi):
            self.fail(f"{value!r} is not a whole number in {self.span}", param, ctx)
        return n

    def __repr__(self) -> str:
        return f"Count({self.span})"
