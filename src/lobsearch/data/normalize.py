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
data before any statistic. Work is in float64, a chunk of rows at a time; results are float32.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import Enum
from functools import reduce

import numpy as np

from lobsearch.contract import NEVER_NORMALIZE, SIGN_FLIP_SCHEMA_2_0, FeatureIndex
from lobsearch.errors import ConfigError, DataError, unknown_choice

NORM_MODES = ("train", "per_day", "prior_days", "none")
TRAIN_SPLIT = "train"
ROW_CHUNK = 4096
"""Rows worked on at a time. A chunk's float64 working copy (4,096 x 98 x 8 B = 3.2 MB) is
allocated once per pass over a day and stays in cache, where a whole day's float64 copy (39 MB
at 50,000 rows) would be allocated, faulted in and streamed through memory by every operation:
on 40 days x 50,000 rows, normalize_day took half the time chunked."""
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


def _check_finite(x: np.ndarray, ok: np.ndarray, features: np.ndarray, row_ok: np.ndarray) -> np.ndarray | None:
    """(n, F) bool mask of the non-finite values of ``x`` (a chunk of ``features`` whose passing
    rows are ``ok``), None when all are finite.

    Raises DataError (the count of non-finite values in the day's passing rows, and the first),
    when one of the chunk's passing rows holds one.
    """
    bad = ~np.isfinite(x)
    if not bad.any():
        return None
    if (bad & ok[:, None]).any():
        _raise_if_not_finite(features, row_ok)
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


def day_moments(
    features: np.ndarray, row_ok: np.ndarray, schema_version: float | None, *, chunk_rows: int = ROW_CHUNK
) -> Moments:
    """Moments of one day's (N, F) raw features over its ``row_ok`` rows, after the sign fix.

    Two passes over the passing rows, ``chunk_rows`` at a time: column sums, then sums of
    squared deviations from the mean. For F >= 2 the result is bit-identical to the same steps
    on the whole (rows, F) float64 array (see ``_column_sums``; numpy sums a single column
    pairwise, so with F = 1 it is equal up to rounding). Gated rows are ignored, NaN included.
    Raises DataError when a passing row is not finite.
    """
    features = np.asarray(features)
    _check_chunk_rows(chunk_rows)
    row_ok = _rows_mask(row_ok, features.shape[0])
    count = int(np.count_nonzero(row_ok))
    if count == 0:
        return Moments.empty(features.shape[1])
    with np.errstate(invalid="ignore"):  # inf - inf in a passing row: the error below names it
        total = _column_sums(features, row_ok, schema_version, None, chunk_rows)
    if not np.isfinite(total).all():  # a NaN or inf in a passing row (or an overflow)
        _raise_if_not_finite(features, row_ok)
    mean = total / count
    return Moments(count, mean, _column_sums(features, row_ok, schema_version, mean, chunk_rows))


def _column_sums(
    features: np.ndarray, row_ok: np.ndarray, schema_version: float | None, center: np.ndarray | None,
    chunk_rows: int,
) -> np.ndarray:
    """(F,) float64 sums over the passing rows of x, or of (x - center)**2 when ``center`` is
    given; x is the row in float64 after the sign fix.

    numpy's ``sum(axis=0)`` of a C-ordered (rows, F) array adds the rows one after another, so
    each chunk is summed with the running total as its first row: the same additions in the
    same order as one sum over the passing rows of the whole day, without a float64 copy of the
    day. A chunk is copied whole and its gated rows are set so that they add exactly nothing:
    -0.0 to the sums (x + -0.0 == x, signed zeros included), 0.0 to the squared deviations
    (whose +0.0 changes no sum of squares).
    """
    features = np.asarray(features)  # a memmap's slices are slow to make; its ndarray view's are not
    n_rows, width = features.shape
    buffer = np.empty((min(chunk_rows, n_rows) + 1, width))
    total = None
    for start in range(0, n_rows, chunk_rows):
        ok = row_ok[start : start + chunk_rows]
        if not ok.any():
            continue
        offset = 0 if total is None else 1
        rows = buffer[offset : offset + ok.size]
        rows[...] = features[start : start + ok.size]
        sign_fix(rows, schema_version)
        if center is None:
            if not ok.all():
                rows[~ok] = -0.0
        else:
            with np.errstate(invalid="ignore"):  # a gated inf minus an overflowed (inf) center
                rows -= center
            if not ok.all():
                rows[~ok] = 0.0
            np.square(rows, out=rows)
        if total is not None:
            buffer[0] = total
        total = buffer[: offset + ok.size].sum(axis=0)
    assert total is not None, "callers pass at least one passing row"
    return total


def _check_chunk_rows(chunk_rows: int) -> None:
    if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, (int, np.integer)) or chunk_rows < 1:
        raise ValueError(f"chunk_rows: must be an integer >= 1, got {chunk_rows!r}")


def _raise_if_not_finite(features: np.ndarray, row_ok: np.ndarray) -> None:
    """Raises the DataError counting the non-finite values in the passing rows and naming the
    first, if there are any."""
    rows = np.flatnonzero(row_ok)
    bad_rows, cols = np.nonzero(~np.isfinite(np.asarray(features[row_ok], dtype=np.float64)))
    if bad_rows.size:
        raise _non_finite_error(rows[bad_rows], cols)


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


def _affine(stats: NormStats, width: int, clip: float | None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(shift, scale, bound), each (F,) float64: z = clip((x - shift) / scale, -bound, bound);
    the columns that are not scaled get shift 0, scale 1 and bound inf. Bound None: no clip."""
    if stats.mean.shape != (width,):
        raise DataError(f"normalization: statistics of {stats.mean.shape[0]} features applied to {width}")
    shift = np.where(stats.scaled, stats.mean, 0.0)
    scale = np.where(stats.scaled, stats.std, 1.0)
    return shift, scale, None if clip is None else np.where(stats.scaled, float(clip), np.inf)


def normalize_day(
    features: np.ndarray,
    stats: NormStats | None,
    *,
    schema_version: float | None,
    clip: float | None = 10.0,
    row_ok: np.ndarray | None = None,
    chunk_rows: int = ROW_CHUNK,
) -> np.ndarray:
    """One day's (N, F) raw features -> (N, F) float32: sign fix, then z-score and clip.

    ``stats`` None (mode none, or an export already normalized) only casts and applies the sign
    fix (pass ``schema_version=None`` to skip it). ``clip`` None disables clipping. Non-finite
    values in gated rows (``row_ok`` False) become 0, so no gathered window ever holds NaN;
    ``row_ok`` None treats every row as passing. The input is never modified. Work is in
    float64, ``chunk_rows`` rows at a time (``normalized_chunks``), cast into the result.
    Raises DataError when a passing row holds NaN or inf, or the widths differ; ConfigError
    when clip is not positive.
    """
    features = np.asarray(features)
    chunks = normalized_chunks(features, stats, schema_version=schema_version, clip=clip, row_ok=row_ok,
                               chunk_rows=chunk_rows)
    out = np.empty(features.shape, dtype=np.float32)
    start = 0
    for chunk in chunks:
        out[start : start + chunk.shape[0]] = chunk
        start += chunk.shape[0]
    return out


def normalized_chunks(
    features: np.ndarray,
    stats: NormStats | None,
    *,
    schema_version: float | None,
    clip: float | None = 10.0,
    row_ok: np.ndarray | None = None,
    chunk_rows: int = ROW_CHUNK,
) -> Iterator[np.ndarray]:
    """``normalize_day``'s result before its cast to float32, ``chunk_rows`` rows at a time, in
    row order: (n, F) float64 arrays that share one buffer (use each before taking the next).

    A consumer that writes the chunks out (``pipeline.day_arrays`` into its cache file) never
    holds a whole day: on a 2-core VM, 40 days x 50,000 rows took 0.85 CPU-s written chunk by
    chunk against 2.2-2.4 CPU-s normalized into memory and saved with ``np.save`` (measured).
    The arguments are checked here, before the first chunk; a NaN or inf in a passing row
    raises DataError when its chunk is reached.
    """
    if clip is not None and not clip > 0:
        raise ConfigError("normalization", [f"clip must be > 0 (or None), got {clip!r}"])
    features = np.asarray(features)
    if features.ndim != 2:
        raise DataError(f"features: expected a 2-D (rows, features) array, got {features.shape}")
    _check_chunk_rows(chunk_rows)
    row_ok = _rows_mask(row_ok, features.shape[0])
    affine = None if stats is None else _affine(stats, features.shape[1], clip)
    return _chunks(features, row_ok, schema_version, affine, chunk_rows)


def _chunks(
    features: np.ndarray, row_ok: np.ndarray, schema_version: float | None,
    affine: tuple[np.ndarray, np.ndarray, np.ndarray | None] | None, chunk_rows: int,
) -> Iterator[np.ndarray]:
    """The work of ``normalized_chunks`` (its checks done). ``features`` is a plain ndarray (a
    memmap's slices are slow to make; its ndarray view's are not)."""
    n_rows, width = features.shape
    buffer = np.empty((min(chunk_rows, n_rows), width))
    for start in range(0, n_rows, chunk_rows):
        x = buffer[: min(chunk_rows, n_rows - start)]
        x[...] = features[start : start + x.shape[0]]
        with np.errstate(over="ignore", invalid="ignore"):  # the sum only probes for NaN and inf
            finite = np.isfinite(x.sum())
        bad = None if finite else _check_finite(x, row_ok[start : start + x.shape[0]], features, row_ok)
        sign_fix(x, schema_version)
        if affine is not None:
            shift, scale, bound = affine
            x -= shift
            x /= scale
            if bound is not None:  # np.clip's result, in half its time
                np.minimum(x, bound, out=x)
                np.maximum(x, -bound, out=x)
        if bad is not None:
            x[bad] = 0.0
        yield x


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
