"""Windows: the usable end rows of each day, and batches gathered from them by index.

A window of T rows ending at row e covers rows [e-T+1, e] of one day and is labelled with row
e's label. On a flat day the candidate ends are T-1, T-1+s, ...; on a windowed day
(``day.layout``, a ``layout.WindowLayout``) they are the end rows of the exported windows, every
ceil(s / stride)-th one, so each window is the last T rows of one exported window (T at most the
export's). An end is kept when its window passes the gates (every row, or only row e with
``last_row``) and its label is not MISSING_LABEL. A split's days are concatenated into one
(N_total, F') tensor and windows are gathered from it by index, so the N x T x F array of all
windows is never built.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from lobsearch.contract import MISSING_LABEL, N_CLASSES
from lobsearch.data.features import (
    FeatureSpec,
    feature_columns,
    n_selected,
    select_features,
)
from lobsearch.data.gating import candidate_ends, window_ok
from lobsearch.data.layout import WindowLayout
from lobsearch.errors import ConfigError, DataError


class DayArrays(Protocol):
    """What ``build_window_set`` reads from a day (``pipeline.PreparedDay`` has these)."""

    x: np.ndarray  # (N, F) float32, normalized
    labels: np.ndarray  # (N, H) int8 class indices, MISSING_LABEL where none
    row_ok: np.ndarray  # (N,) bool
    layout: WindowLayout | None  # a windowed day's exported windows; None for a flat day


def window_ends(
    row_ok: np.ndarray,
    label: np.ndarray,
    window: int,
    stride: int,
    *,
    last_row: bool = False,
    layout: WindowLayout | None = None,
    name: str = "the day",
) -> np.ndarray:
    """(M,) int64 end rows of the usable windows of one day, ascending.

    row_ok: (N,) bool; label: (N,) int class indices of one horizon, MISSING_LABEL where none;
    layout: a windowed day's exported windows (``WindowLayout.candidate_ends`` gives the
    candidates), None for a flat day. Raises ConfigError for window or stride < 1 or a window
    longer than a windowed day's T (naming ``name``); DataError when the lengths differ.
    """
    row_ok = np.asarray(row_ok, dtype=bool)
    label = np.asarray(label)
    if row_ok.ndim != 1 or label.shape != row_ok.shape:
        raise DataError(f"windows: row_ok {row_ok.shape} and label {label.shape} must both be (N,)")
    if layout is None:
        ends = candidate_ends(row_ok.size, window, stride)
    else:
        ends = layout.candidate_ends(window, stride, name)
    keep = window_ok(row_ok, ends, window, last_row=last_row) & (label[ends] != MISSING_LABEL)
    return ends[keep]


def gather_windows(x: torch.Tensor, ends: torch.Tensor, window: int) -> torch.Tensor:
    """(N, F) rows and (B,) end rows (each >= window-1) -> (B, T, F) windows, on x's device.

    Row t of window b is x[ends[b] - (T-1) + t]: oldest row first, end row last.
    """
    ends = ends.to(device=x.device, dtype=torch.long)
    back = torch.arange(window - 1, -1, -1, device=x.device)
    return x[ends[:, None] - back]


@dataclass
class WindowSet:
    """One split ready for training: its days' rows and the usable windows into them.

    x: (N_total, F') float32, the days concatenated in order; ends: (M,) int64 global end rows
    (no window crosses a day); y: (M,) int64 class index of each end row; window: T.
    """

    x: torch.Tensor
    ends: torch.Tensor
    y: torch.Tensor
    window: int

    def __len__(self) -> int:
        return int(self.ends.shape[0])

    @property
    def n_features(self) -> int:
        """F', the width of every window."""
        return int(self.x.shape[1])

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Windows number ``idx`` (B,) -> x (B, T, F') float32 and y (B,) int64, on x's device."""
        idx = torch.as_tensor(idx, dtype=torch.long, device=self.ends.device)
        return gather_windows(self.x, self.ends[idx], self.window), self.y[idx]

    def to(self, device: torch.device | str) -> WindowSet:
        """A copy whose tensors live on ``device`` (no copy for tensors already there)."""
        return WindowSet(self.x.to(device), self.ends.to(device), self.y.to(device), self.window)

    def class_counts(self) -> torch.Tensor:
        """(3,) int64 windows per class (Down, Stable, Up), on y's device."""
        return torch.bincount(self.y, minlength=N_CLASSES)


def _horizon_label(day: DayArrays, horizon_index: int, name: str) -> np.ndarray:
    """(N,) labels of one horizon. Raises ConfigError / DataError on a bad index or shape."""
    labels = np.asarray(day.labels)
    if labels.ndim != 2 or labels.shape[0] != day.x.shape[0]:
        raise DataError(f"{name}: labels {labels.shape} must be (rows={day.x.shape[0]}, horizons)")
    if not 0 <= horizon_index < labels.shape[1]:
        problem = (
            f"horizon_index {horizon_index} is out of range for {labels.shape[1]} "
            f"horizon(s) (valid 0..{labels.shape[1] - 1})"
        )
        raise ConfigError("windows", [problem])
    return labels[:, horizon_index]


def _check_widths(days: Sequence[DayArrays]) -> int:
    """The common feature count F of ``days``. Raises DataError when empty or widths differ."""
    if not days:
        raise DataError("windows: no days to build windows from")
    widths = {int(day.x.shape[1]) for day in days}
    if len(widths) != 1:
        raise DataError(f"windows: days have different feature counts {sorted(widths)}")
    return widths.pop()


def _check_classes(y: np.ndarray, name: str) -> None:
    """Raises DataError when a kept label is not a class index 0..N_CLASSES-1."""
    bad = (y < 0) | (y >= N_CLASSES)
    if bad.any():
        raise DataError(f"{name}: label {int(y[bad][0])} is not a class index 0..{N_CLASSES - 1}")


@dataclass(frozen=True)
class _Cut:
    """How each day of a split is cut into windows."""

    columns: np.ndarray
    horizon_index: int
    window: int
    stride: int
    last_row: bool
    time_regime_onehot: bool


def _add_day(
    x: torch.Tensor, offset: int, day: DayArrays, name: str, cut: _Cut
) -> tuple[np.ndarray, np.ndarray]:
    """Copy ``day``'s selected rows into x[offset:]; its global window ends and their labels."""
    label = _horizon_label(day, cut.horizon_index, name)
    selected = select_features(day.x, cut.columns, time_regime_onehot=cut.time_regime_onehot)
    x[offset : offset + selected.shape[0]] = torch.from_numpy(selected)
    ends = window_ends(day.row_ok, label, cut.window, cut.stride, last_row=cut.last_row, layout=day.layout,
                       name=f"day {name}")
    _check_classes(label[ends], name)
    return ends + offset, label[ends].astype(np.int64)


def build_window_set(
    days: Sequence[DayArrays],
    *,
    columns: FeatureSpec,
    horizon_index: int,
    window: int,
    stride: int,
    last_row: bool = False,
    time_regime_onehot: bool = False,
) -> WindowSet:
    """The WindowSet of one split's ``days`` (chronological), on the CPU.

    Each day's rows are selected (``select_features``: preset name or indices) and copied once
    into a preallocated tensor; its window ends are offset by the rows before it.
    Raises ConfigError for bad columns, horizon_index, window or stride, or a window longer than
    the T of a windowed day's export (naming the day and T); DataError for no days, mixed
    feature counts, or labels outside the class indices.
    """
    n_features = _check_widths(days)
    cols = feature_columns(columns, n_features)
    width = n_selected(cols, n_features, time_regime_onehot)
    starts = np.cumsum([0] + [day.x.shape[0] for day in days])
    x = torch.empty((int(starts[-1]), width), dtype=torch.float32)
    cut = _Cut(cols, horizon_index, window, stride, last_row, time_regime_onehot)
    parts = [
        _add_day(x, int(start), day, str(getattr(day, "date", f"day {i}")), cut)
        for i, (start, day) in enumerate(zip(starts, days))
    ]
    ends = torch.from_numpy(np.concatenate([e for e, _ in parts]))
    return WindowSet(x, ends, torch.from_numpy(np.concatenate([y for _, y in parts])), window)
