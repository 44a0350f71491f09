"""How values read in a terminal line or a table cell: numbers, durations, elapsed clocks."""

from __future__ import annotations

import math
import time
from typing import Any


def fmt(value: Any) -> str:
    """4 significant digits for a float, ``—`` for None, ``str`` for anything else."""
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return str(value)


def clock(seconds: float) -> str:
    """``MM:SS`` (minutes keep counting past 59): the status line's elapsed time."""
    whole = int(max(0.0, seconds))
    return f"{whole // 60:02d}:{whole % 60:02d}"


def elapsed(start: float) -> str:
    """``clock`` of the time since ``start`` (a ``time.monotonic()`` reading)."""
    return clock(time.monotonic() - start)


def duration(seconds: float | None) -> str:
    """``12.3 s``, ``3 min 12 s`` or ``1 h 02 min``; ``—`` when unknown."""
    if seconds is None or not isinstance(seconds, (int, float)) or not math.isfinite(seconds):
        return "—"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes} min {secs:02d} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"
