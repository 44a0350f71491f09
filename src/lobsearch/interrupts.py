"""Ctrl-C that Python can lose: the driver records it and checks between its phases.

A SIGINT that arrives while Ray's start forks a process is raised inside an at-fork handler
(``logging``'s lock release), where Python prints "Exception ignored" and drops the
KeyboardInterrupt: the search would then run to the end as if nothing happened. ``install``
makes SIGINT both raise KeyboardInterrupt, as Python's own handler does, and record that it came;
``check`` raises it again at the next phase boundary when it was lost.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

_RECEIVED = threading.Event()


def install() -> None:
    """SIGINT raises KeyboardInterrupt and is recorded (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        return
    _RECEIVED.clear()

    def interrupted(signum: int, frame: Any) -> None:
        _RECEIVED.set()
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, interrupted)


def check() -> None:
    """Raise KeyboardInterrupt when a SIGINT came since ``install``."""
    if _RECEIVED.is_set():
        raise KeyboardInterrupt
