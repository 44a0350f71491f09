"""Normalization: z-scores whose statistics come only from rows that pass the gates.

Per day, the work is three steps: ``day_moments`` (Chan partials, combinable across days and
workers), ``stats_for_days`` (which statistics each day uses, by mode) and ``normalize_day``.

Modes (``NORM_MODES``):

- ``train`` (default): one set of statistics fitted on the training days only, used by every day.
- ``per_day``: each day uses its own statistics. This is a look-ahead: the statistics of a day
  include its rows after the prediction time of every window in it.
- ``prior_days``: day i uses the statistics of the k days before it in chronological order,
  whatever their split (val days may use train days); the first k days are dropped.
- ``none``: no scaling.

Column rules (contract indices, applied only to columns that exist, index < F): gate,
categorical and version columns (``NEVER_NORMALIZE``) are never scaled or clipped; DT_SECONDS is
scaled only with ``normalize_dt``; NET_CANCEL_FLOW and NET_TRADE_FLOW are negated for schema 2.0
data before any statistic. Work is in float64, one day at a time; results are float32.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from functools import reduce

import numpy as np

from lobsearch.contract import NEVER_NORMALIZE, SIGN_FLIP_SCHEMA_2_0, FeatureIndex
from lobsearch.errors import ConfigError, DataError, unknown_choice

NORM_MODES = ("train", "per_day", "prior_days", "none")
TRAIN_SPLIT = "train"
ZERO_STD_RTOL = 1e-10
"""A column whose std is at most this fraction of its |mean| is constant (rounding noise only)."""


class Drop(Enum):
    """Marks a day that a normalization mode cannot serve (no prior days, or no usable rows)."""

    DROP = "drop"


DROP = Drop.DROP


def _present(indices: Iterable[int], n_features: int) -> list[int]:
    """The contract column indices that exist in an export of ``n_features`` columns."""
    return sorted(int(i) for i in indices if int(i) < n_features)


def sign_fix(x: np.ndarray, schema_version: float | None) -> None:
    """Negate NET_CANCEL_FLOW and NET_TRADE_FLOW in place when ``schema_version`` is 2.0."""
    if schema_version is not None and math.isclose(schema_version, 2.0, abs_tol=1e-6):
        columns = _present(SIGN_FLIP_SCHEMA_2_0, x.shape[1])
        x[:, columns] *= -1.0


def _non_finite_error(rows: np.ndarray, cols: np.ndarray) -> DataError:
    """The error for NaN/inf at (rows[i], cols[i]) in rows that pass the gates."""
    return DataError(
        f"features: {rows.size} non-finite value(s) in rows that pass the gates "
        f"(first at row {rows[0]}, column {cols[0]}); only gated rows may hold NaN or inf"
    )


def _check_finite(x: np.ndarray, row_ok: np.ndarray) -> np.ndarray | None:
    """(N, F) bool mask of non-finite values, None when all are finite.

    Raises DataError when a row that passes the gates holds a non-finite value.
    """
    bad = ~np.isfinite(x)
    if not bad.any():
        return None
    rows, cols = np.nonzero(bad & row_ok[:, None])
    if rows.size:
        raise _non_finite_error(rows, cols)
    return bad


def _rows_mask(row_ok: np.ndarray | None, n_rows: int) -> np.ndarray:
    """(N,) bool pass mask; all True when ``row_ok`` is None. Raises DataError on a bad shape."""
    if row_ok is None:
        return np.ones(n_rows, dtype=bool)
    row_ok = np.asarray(row_ok)
    if row_ok.shape != (n_rows,) or row_ok.dtype != bool:
        raise DataError(
            f"row_ok: expected a ({n_rows},) bool array, got {row_ok.dtype} {row_ok.shape}"
        )
    return row_ok


@dataclass(frozen=True, eq=False)
class Moments:
    """Chan/Welford partial statistics of the rows that pass the gates.

    count: rows; mean: (F,) float64; m2: (F,) float64 sum of squared deviations from ``mean``.
    """

    count: int
    mean: np.ndarray
    m2: np.ndarray

    @classmethod
    def empty(cls, n_features: int) -> Moments:
        """Moments of no rows: the identity of ``combine``."""
        return cls(0, np.zeros(n_features), np.zeros(n_features))

    def combine(self, other: Moments) -> Moments:
        """Moments of the union of both row sets (Chan et al.); DataError if widths differ."""
        if self.mean.shape != other.mean.shape:
            raise DataError(
                f"moments: cannot combine {self.mean.shape[0]} with {other.mean.shape[0]} features"
            )
        if other.count == 0:
            return self
        if self.count == 0:
            return other
        count = self.count + other.count
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.count / count)
        m2 = self.m2 + other.m2 + delta * delta * (self.count * other.count / count)
        return Moments(count, mean, m2)


def day_moments(features: np.ndarray, row_ok: np.ndarray, schema_version: float | None) -> Moments:
    """Moments of one day's (N, F) raw features over its ``row_ok`` rows, after the sign fix.

    Gated rows are ignored, NaN included. Raises DataError when a passing row is not finite.
    """
    row_ok = _rows_mask(row_ok, features.shape[0])
    x = np.asarray(features[row_ok], dtype=np.float64)
    if x.shape[0] == 0:
        return Moments.empty(features.shape[1])
    rows, cols = np.nonzero(~np.isfinite(x))
    if rows.size:
        raise _non_finite_error(np.flatnonzero(row_ok)[rows], cols)
    sign_fix(x, schema_version)
    mean = x.mean(axis=0)
    x -= mean
    np.square(x, out=x)
    return Moments(int(x.shape[0]), mean, x.sum(axis=0))


@dataclass(frozen=True, eq=False)
class NormStats:
    """Per-column z-score statistics.

    mean, std: (F,) float64; std is 1 where the column is constant. scaled: (F,) bool, the
    columns that are z-scored and clipped; the others pass through unchanged.
    """

    mean: np.ndarray
    std: np.ndarray
    scaled: np.ndarray


def scaled_columns(n_features: int, *, normalize_dt: bool = True) -> np.ndarray:
    """(F,) bool: False for the NEVER_NORMALIZE columns, and DT_SECONDS unless ``normalize_dt``."""
    scaled = np.ones(n_features, dtype=bool)
    kept = set(NEVER_NORMALIZE) | (set() if normalize_dt else {FeatureIndex.DT_SECONDS})
    scaled[_present(kept, n_features)] = False
    return scaled


def norm_stats(m: Moments, *, normalize_dt: bool = True) -> NormStats:
    """Population std of ``m`` (constant columns get std 1). Raises DataError when m has no rows."""
    if m.count == 0:
        raise DataError("normalization: no rows pass the gates, so there are no statistics to fit")
    std = np.sqrt(m.m2 / m.count)
    std = np.where(std <= ZERO_STD_RTOL * np.abs(m.mean), 1.0, std)
    return NormStats(m.mean, std, scaled_columns(m.mean.shape[0], normalize_dt=normalize_dt))


def _apply(x: np.ndarray, stats: NormStats, clip: float | None) -> None:
    """z-score and clip the scaled columns of ``x`` (float64) in place."""
    if stats.mean.shape != (x.shape[1],):
        raise DataError(
            f"normalization: statistics of {stats.mean.shape[0]} features applied to {x.shape[1]}"
        )
    x -= np.where(stats.scaled, stats.mean, 0.0)
    x /= np.where(stats.scaled, stats.std, 1.0)
    if clip is not None:
        bound = np.where(stats.scaled, clip, np.inf)
        np.clip(x, -bound, bound, out=x)


def normalize_day(
    features: np.ndarray,
    stats: NormStats | None,
    *,
    schema_version: float | None,
    clip: float | None = 10.0,
    row_ok: np.ndarray | None = None,
) -> np.ndarray:
    """One day's (N, F) raw features -> (N, F) float32: sign fix, then z-score and clip.

    ``stats`` None (mode none, or an export already normalized) only casts and applies the sign
    fix (pass ``schema_version=None`` to skip it). ``clip`` None disables clipping. Non-finite
    values in gated rows (``row_ok`` False) become 0, so no gathered window ever holds NaN;
    ``row_ok`` None treats every row as passing. The input is never modified.
    Raises DataError when a passing row holds NaN or inf, or the widths differ; ConfigError
    when clip is not positive.
    """
    if clip is not None and not clip > 0:
        raise ConfigError("normalization", [f"clip must be > 0 (or None), got {clip!r}"])
    x = np.array(features, dtype=np.float64)
    bad = _check_finite(x, _rows_mask(row_ok, x.shape[0]))
    sign_fix(x, schema_version)
    if stats is not None:
        _apply(x, stats, clip)
    if bad is not None:
        x[bad] = 0.0
    return x.astype(np.float32)


def _check_mode(mode: str, k: int) -> None:
    """Raises ConfigError for an unknown mode or, with prior_days, a k below 1."""
    if mode not in NORM_MODES:
        problem = unknown_choice("normalization mode", mode, NORM_MODES)
        raise ConfigError("normalization", [problem])
    if mode == "prior_days" and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
        raise ConfigError("normalization", [f"prior_days k must be an integer >= 1, got {k!r}"])


def _train_stats(days: Sequence[tuple[str, Moments]], normalize_dt: bool) -> NormStats:
    """Statistics of the training days combined in order. Raises DataError when there are none."""
    train = [m for split, m in days if split == TRAIN_SPLIT]
    total = reduce(Moments.combine, train) if train else None
    if total is None or total.count == 0:
        raise DataError("normalization 'train': no training day has rows that pass the gates")
    return norm_stats(total, normalize_dt=normalize_dt)


def _prior_stats(
    days: Sequence[tuple[str, Moments]], k: int, normalize_dt: bool
) -> list[NormStats | Drop]:
    """Day i -> statistics of days i-k .. i-1; DROP for the first k days, or if those are empty."""
    out: list[NormStats | Drop] = [DROP] * min(k, len(days))
    for i in range(k, len(days)):
        prior = reduce(Moments.combine, [m for _, m in days[i - k : i]])
        out.append(norm_stats(prior, normalize_dt=normalize_dt) if prior.count else DROP)
    return out


def stats_for_days(
    mode: str, days: Sequence[tuple[str, Moments]], k: int = 1, *, normalize_dt: bool = True
) -> list[NormStats | None | Drop]:
    """The statistics each day uses: for ``days`` as (split, moments) in chronological order
    (all splits interleaved by date), one entry per day: NormStats, None (no scaling: mode
    none) or DROP (the day is not used: the first k days under prior_days, a day with no
    passing rows under per_day or whose k prior days have none).

    Mode train reads the moments of training days only, so val/test days may carry
    ``Moments.empty``; train statistics do not depend on any other day.
    Raises ConfigError for an unknown mode or bad k; DataError when train has no usable rows.
    """
    _check_mode(mode, k)
    if mode == "none":
        return [None] * len(days)
    if mode == "train":
        stats = _train_stats(days, normalize_dt)
        return [stats] * len(days)
    if mode == "per_day":
        return [norm_stats(m, normalize_dt=normalize_dt) if m.count else DROP for _, m in days]
    return _prior_stats(days, k, normalize_dt)
