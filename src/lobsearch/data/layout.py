"""Windowed days: where the exported windows of a ``_sequences.npy`` sit among the day's rows.

The exporter cuts window j from rows ``j*S .. j*S + T - 1`` of the day's snapshots (T rows,
stride S) and keeps the windows whose end row has a label, so the kept windows are consecutive.
The stride comes from the export's files (``claims.DayStatements.stride``), else from the data
(window 1 repeating rows s.. of window 0), and is checked on up to ``PAIRS_CHECKED`` evenly spaced
pairs of consecutive windows: with S < T they overlap by T - S rows, with S >= T not at all.

- S < T: the day's contiguous rows are recovered once, window 0 then the last S rows of every
  later window (T + (M-1)*S rows, never a copy per window); window j ends at row T-1 + j*S.
- S >= T, or windows that do not overlap: the windows stay independent samples, laid one after
  another (M*T rows, a view of the file); window j ends at row j*T + T-1, and no window cut from
  these rows may join rows of two exported windows.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lobsearch.data.claims import error
from lobsearch.errors import ConfigError

PAIRS_CHECKED = 64
"""Consecutive window pairs of a ``_sequences.npy`` whose overlap is checked (a big file is not read whole)."""


@dataclass(frozen=True)
class WindowLayout:
    """The exported windows of one windowed day, as rows of ``Day.features``.

    window: T rows per exported window; stride: S rows of the day from one window's start to the
    next (stated by the export or observed; T when the windows do not overlap and nothing states
    S); count: M windows. See the module docstring for where the windows end.
    """

    window: int
    stride: int
    count: int

    @property
    def overlapping(self) -> bool:
        """True when consecutive windows share rows (S < T): the rows are the day's contiguous rows."""
        return self.stride < self.window

    @property
    def pitch(self) -> int:
        """Rows of ``Day.features`` between the end rows of consecutive windows: S, or T when S >= T."""
        return min(self.stride, self.window)

    @property
    def rows(self) -> int:
        """Rows of the day once laid out: T + (M-1)*S when overlapping, else M*T (0 without windows)."""
        if self.count == 0:
            return 0
        return self.window + (self.count - 1) * self.pitch if self.overlapping else self.count * self.window

    def ends(self) -> np.ndarray:
        """(M,) int64 end row of each exported window, ascending."""
        return self.window - 1 + self.pitch * np.arange(self.count, dtype=np.int64)

    def candidate_ends(self, window: int, stride: int, name: str = "a windowed day") -> np.ndarray:
        """(K,) int64 end rows of the windows of ``window`` rows at a searched ``stride`` (rows).

        The windows end where exported windows end, so each is the last ``window`` rows of one
        exported window; the stride keeps every ceil(stride / S)-th one (ends at least ``stride``
        rows of the day apart). Raises ConfigError for window or stride below 1, or a window
        longer than T (naming T and ``name``).
        """
        problems = [f"{key} must be an integer >= 1, got {value!r}" for key, value in
                    (("window", window), ("stride", stride))
                    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1]
        if not problems and window > self.window:
            problems.append(f"window {window} is longer than the {self.window} rows of each exported window "
                            f"of {name} (rule: a window cut from a windowed export has at most T = "
                            f"{self.window} rows)")
        if problems:
            raise ConfigError("windows", problems)
        return self.ends()[:: -(-int(stride) // self.stride)]

    def to_json(self) -> dict:
        return {"window": self.window, "stride": self.stride, "count": self.count}

    @classmethod
    def from_json(cls, value: dict | None) -> WindowLayout | None:
        return None if value is None else cls(int(value["window"]), int(value["stride"]), int(value["count"]))


def _rows_equal(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(..., F) rows -> (...) bool: every value equal, NaN equal to NaN."""
    same = a == b
    if a.dtype.kind == "f":
        same |= np.isnan(a) & np.isnan(b)
    return same.all(axis=-1)


def observed_stride(first: np.ndarray, second: np.ndarray) -> int | None:
    """The smallest s in 1..T-1 with ``second[:T-s] == first[s:]`` for two (T, F) windows, else
    None (they do not overlap). Only the offsets where ``second[0]`` equals a row of ``first``
    are compared in full."""
    width = first.shape[0]
    for s in np.flatnonzero(_rows_equal(first, second[0])):
        if s >= 1 and _rows_equal(first[s:], second[: width - s]).all():
            return int(s)
    return None


def sampled_pairs(count: int) -> np.ndarray:
    """Up to PAIRS_CHECKED evenly spaced first indices i of consecutive window pairs (i, i+1)."""
    if count < 2:
        return np.empty(0, dtype=np.int64)
    return np.unique(np.linspace(0, count - 2, num=min(count - 1, PAIRS_CHECKED)).round()).astype(np.int64)


def _describe(stride: int | None) -> str:
    return f"stride {stride}" if stride else "no overlap (stride >= T)"


def _first_misfit(sequences: np.ndarray, pairs: np.ndarray, stride: int) -> int | None:
    """The position in ``pairs`` of the first pair (i, i+1) whose windows do not overlap by T - stride
    rows (``_rows_equal`` on the overlap), or None. All pairs at once: equal bits are equal values,
    and only the values whose bits differ are compared as numbers (0.0 == -0.0, NaN == NaN)."""
    width = sequences.shape[1]
    a = np.asarray(sequences[pairs])[:, stride:]
    b = np.asarray(sequences[pairs + 1])[:, : width - stride]
    if a.dtype.kind == "f":
        bits = np.dtype(f"u{a.dtype.itemsize}")
        same = a.view(bits) == b.view(bits)
    else:
        same = a == b
    if same.all():
        return None
    which = np.nonzero(~same)
    x, y = a[which], b[which]
    equal = x == y
    if a.dtype.kind == "f":
        equal |= np.isnan(x) & np.isnan(y)
    if equal.all():
        return None
    return int(which[0][np.flatnonzero(~equal)[0]])


def check_stride(path: Path, date: str, sequences: np.ndarray, stride: int, where: str) -> None:
    """Check the sampled consecutive window pairs of (M, T, F) ``sequences`` against ``stride``.

    With stride < T the overlaps of every sampled pair are compared at once (``_first_misfit``);
    the first pair that does not fit is then described. Raises DataError naming the day, the
    window index, the stated and the observed stride.
    """
    width = sequences.shape[1]
    pairs = sampled_pairs(sequences.shape[0])
    if stride < width and pairs.size:
        misfit = _first_misfit(sequences, pairs, stride)
        pairs = pairs[:0] if misfit is None else pairs[misfit : misfit + 1]
    for i in pairs:
        first, second = np.asarray(sequences[i]), np.asarray(sequences[i + 1])
        if stride < width:
            fits = bool(_rows_equal(first[stride:], second[: width - stride]).all())
        else:
            fits = observed_stride(first, second) is None
        if not fits:
            overlap = f"overlap by T - stride = {width - stride} rows" if stride < width else "do not overlap"
            raise error(path, f"day {date}: windows {i} and {i + 1} show {_describe(observed_stride(first, second))}, "
                        f"but the stride is {stride} ({where})",
                        f"consecutive windows of an export at stride {stride} with T = {width} {overlap}")


def window_layout(path: Path, date: str, sequences: np.ndarray, stated: int | None, where: str, *,
                  check_pairs: bool = True) -> WindowLayout:
    """The layout of one day's (M, T, F) ``sequences`` at its ``stated`` stride (from ``where``),
    else at the stride its first two windows show; checked with ``check_stride`` (unless
    ``check_pairs`` is False: a caller that checked the same file already)."""
    count, width = sequences.shape[:2]
    stride = stated
    if stride is None:
        seen = observed_stride(np.asarray(sequences[0]), np.asarray(sequences[1])) if count >= 2 else None
        stride, where = seen or width, "observed on windows 0 and 1; no file states it"
    if check_pairs:
        check_stride(path, date, sequences, stride, where)
    return WindowLayout(window=width, stride=stride, count=count)


def laid_out_rows(sequences: np.ndarray, layout: WindowLayout) -> np.ndarray:
    """(M, T, F) windows -> (layout.rows, F) rows, read-only, in the file's dtype.

    Overlapping: window 0 then the last S rows of each later window (one copy of the day's rows).
    Otherwise: the windows one after another, a view of ``sequences`` (no copy of a memory map).
    """
    count, width, n_features = sequences.shape
    if count == 0:
        return np.empty((0, n_features), sequences.dtype)
    if not layout.overlapping:
        rows = sequences.reshape(count * width, n_features)
    else:  # one copy, straight from the file: the tails land in place (no reshaped copy, no concatenate)
        stride = layout.stride
        rows = np.empty((layout.rows, n_features), sequences.dtype)
        rows[:width] = sequences[0]
        rows[width:].reshape(count - 1, stride, n_features)[...] = sequences[1:, width - stride:]
    rows.flags.writeable = False
    return rows


def labels_at_ends(labels: np.ndarray, layout: WindowLayout, missing: int) -> np.ndarray:
    """(M, H) labels, one per window -> (layout.rows, H) int8 with each at its window's end row
    and ``missing`` on every other row."""
    rows = np.full((layout.rows, labels.shape[1]), missing, dtype=np.int8)
    rows[layout.ends()] = labels
    return rows
