"""Safety gates: which rows, and which windows, a model may use.

A row passes when every enabled rule holds (``contract.GATE_RULES``): BOOK_VALID >= 0.5,
MBO_READY >= 0.5 and INVALIDITY_DELTA == 0. A NaN gate value fails its rule. Exports with
fewer than 97 columns carry no gate columns: every row passes. A window passes when all of its
rows pass, or, with ``last_row``, when its end row passes. Every drop is counted per rule.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np

from lobsearch.contract import GATE_RULES, Gate
from lobsearch.errors import ConfigError, DataError

RULES = MappingProxyType(
    {"book_valid": Gate.BOOK_VALID, "mbo_ready": Gate.MBO_READY, "invalidity": Gate.INVALIDITY}
)
"""Rule name (as used in configs and reports) -> the gate it checks."""

MIN_GATED_FEATURES = int(Gate.INVALIDITY) + 1
"""Exports with fewer columns than this (97) carry no gates."""

ROW_RULE = ", ".join(tuple(GATE_RULES.values())[:-1]) + " and " + tuple(GATE_RULES.values())[-1]
"""The rule a row meets to pass every gate, in words, for messages:
``BOOK_VALID >= 0.5, MBO_READY >= 0.5 and INVALIDITY_DELTA == 0``."""


@dataclass(frozen=True, eq=False)
class GateResult:
    """The gates applied to one day.

    row_ok: (N,) bool, True where every enabled rule holds.
    failed: rule name -> rows failing that rule (a row may fail several); 0 for a disabled rule.
    rule_ok: rule name -> (N,) bool pass mask, for the enabled rules of a gated export only.
    """

    row_ok: np.ndarray
    failed: dict[str, int]
    rule_ok: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def dropped(self) -> int:
        """Rows failing at least one enabled rule."""
        return int(self.row_ok.size - np.count_nonzero(self.row_ok))


def _rule_passes(column: np.ndarray, gate: Gate) -> np.ndarray:
    """(N,) bool: the rule of ``gate`` on its column; NaN fails."""
    if gate is Gate.INVALIDITY:
        return column == 0
    return column >= 0.5


def gate_rows(
    features: np.ndarray,
    *,
    book_valid: bool = True,
    mbo_ready: bool = True,
    invalidity: bool = True,
) -> GateResult:
    """Apply the enabled gates to one day's (N, F) raw features, or to any block of its rows
    (any float dtype, may be a memmap). ``gate_rows(x).row_ok`` is the (N,) bool mask of the rows
    that pass every gate.

    Raises DataError when ``features`` is not 2-D.
    """
    if features.ndim != 2:
        raise DataError(f"features: expected a 2-D (rows, features) array, got {features.shape}")
    n_rows, n_features = features.shape
    enabled = {"book_valid": book_valid, "mbo_ready": mbo_ready, "invalidity": invalidity}
    row_ok = np.ones(n_rows, dtype=bool)
    failed = dict.fromkeys(RULES, 0)
    rule_ok: dict[str, np.ndarray] = {}
    if n_features < MIN_GATED_FEATURES:
        return GateResult(row_ok, failed, rule_ok)
    first = min(int(g) for g in RULES.values())
    # the gate columns share cache lines: one strided read of all of them, not one per rule
    gate_columns = np.array(features[:, first : MIN_GATED_FEATURES])
    for name, gate in RULES.items():
        if enabled[name]:
            ok = _rule_passes(gate_columns[:, int(gate) - first], gate)
            rule_ok[name] = ok
            failed[name] = int(n_rows - np.count_nonzero(ok))
            row_ok &= ok
    return GateResult(row_ok, failed, rule_ok)


def candidate_ends(n_rows: int, window: int, stride: int) -> np.ndarray:
    """(M,) int64 end rows T-1, T-1+s, ... < n_rows of the windows a day could hold.

    Raises ConfigError when window or stride is below 1.
    """
    problems = [
        f"{name} must be an integer >= 1, got {value!r}"
        for name, value in (("window", window), ("stride", stride))
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1
    ]
    if problems:
        raise ConfigError("windows", problems)
    return np.arange(window - 1, n_rows, stride, dtype=np.int64)


def window_ok(
    row_ok: np.ndarray, ends: np.ndarray, window: int, *, last_row: bool = False
) -> np.ndarray:
    """(M,) bool: True where window [e-T+1, e] has no failing row (only row e with ``last_row``).

    ``ends`` must satisfy window-1 <= e < N. Uses a cumulative sum of failures: O(N + M).
    """
    if last_row:
        return row_ok[ends].astype(bool, copy=False)
    fails = np.concatenate(([0], np.cumsum(~row_ok, dtype=np.int64)))
    return fails[ends + 1] == fails[ends + 1 - window]


def window_gate_counts(
    source: GateResult | np.ndarray, window: int, stride: int, last_row: bool = False
) -> dict[str, int]:
    """Windows of one day dropped per rule, plus ``total`` (dropped by any rule), for the report.

    ``source`` is a GateResult or the day's (N, F) raw features (then every gate is enabled).
    A window counts under each rule it fails; ``total`` counts it once. Labels are not considered.
    """
    result = source if isinstance(source, GateResult) else gate_rows(source)
    ends = candidate_ends(result.row_ok.size, window, stride)

    def dropped(ok: np.ndarray) -> int:
        return int(ends.size - np.count_nonzero(window_ok(ok, ends, window, last_row=last_row)))

    counts = dict.fromkeys(RULES, 0)
    counts.update({name: dropped(ok) for name, ok in result.rule_ok.items()})
    counts["total"] = dropped(result.row_ok)
    return counts
