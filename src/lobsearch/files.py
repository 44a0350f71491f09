"""Result files that a crash never leaves half-written, and values made JSON-plain.

Every results file lobsearch writes (``results.json``, ``results.csv``, ``best_config.yaml``,
``report.html``, a run's ``metrics.json`` and ``best.pt``, the trial checkpoints) goes through
``atomic_write``: the content is written to a temporary file beside the target, then renamed
over it, so a reader sees the old file or the new one, never a part.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any


def atomic_write(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp)`` on a temporary path beside ``path``, then rename it onto ``path``.

    The temporary file carries the process id (two writers never share one) and is removed when
    ``write`` raises. Returns ``path``.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | Path, text: str) -> Path:
    """``text`` written to ``path`` atomically (UTF-8)."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def dump_json(path: str | Path, payload: Any) -> Path:
    """``payload`` as indented JSON, written atomically; values made plain first (``plain``)."""
    return write_text(path, json.dumps(plain(payload, finite=True), indent=2))


def plain(value: Any, *, finite: bool = False) -> Any:
    """``value`` with Python types only: numpy scalars and arrays and torch tensors become
    numbers and lists, tuples become lists, mapping keys strings, anything else (a path) its
    ``str``. ``finite``: NaN and infinities become None, as JSON has neither.
    """
    if isinstance(value, Mapping):
        return {str(k): plain(v, finite=finite) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [plain(v, finite=finite) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, (bool, int, float, str)):
        return plain(value.tolist(), finite=finite)  # numpy arrays and scalars, torch tensors
    if isinstance(value, float):
        return None if finite and not math.isfinite(value) else value
    if value is None or isinstance(value, (bool, int, str)):
        return value
    return str(value)
