"""Feature selection, applied to normalized days: a preset name or a list of column indices.

Presets are ``contract.FEATURE_PRESETS`` (fixed 98-layout indices). Columns keep the order
given. With ``time_regime_onehot`` the TIME_REGIME column, when selected, is replaced in place
by 7 one-hot slots (codes 0..6; any other value, NaN included, gives all zeros).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lobsearch.contract import CATEGORICAL, FEATURE_PRESETS, FeatureIndex
from lobsearch.errors import ConfigError, unknown_choice

TIME_REGIME_CODES = CATEGORICAL[FeatureIndex.TIME_REGIME]
"""Slots of the TIME_REGIME one-hot encoding (7)."""

FeatureSpec = str | Sequence[int] | np.ndarray


def _is_index(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _column_problems(columns: Sequence, n_features: int, what: str) -> list[str]:
    """Every problem of ``columns`` as indices into ``n_features`` columns (empty when valid)."""
    if len(columns) == 0:
        return [f"{what}: selects no columns"]
    problems = [f"{what}: index {c!r} is not an integer" for c in columns if not _is_index(c)]
    valid = [int(c) for c in columns if _is_index(c)]
    problems += [
        f"{what}: index {c} is out of range for an export of {n_features} features "
        f"(valid 0..{n_features - 1})"
        for c in valid
        if not 0 <= c < n_features
    ]
    duplicates = sorted({c for c in valid if valid.count(c) > 1})
    if duplicates:
        problems.append(f"{what}: index(es) {duplicates} selected more than once")
    return problems


def feature_columns(spec: FeatureSpec, n_features: int) -> np.ndarray:
    """(F',) int64 column indices of ``spec``: a FEATURE_PRESETS name or a sequence of indices.

    Raises ConfigError (source "features") for an unknown preset (with the closest name and
    the choices), a non-integer, out-of-range or repeated index, or an empty selection.
    """
    if isinstance(spec, str):
        if spec not in FEATURE_PRESETS:
            raise ConfigError("features", [unknown_choice("feature preset", spec, FEATURE_PRESETS)])
        columns, what = FEATURE_PRESETS[spec], f"feature preset {spec!r}"
    elif isinstance(spec, np.ndarray) and spec.ndim == 1:
        columns, what = spec.tolist(), "feature indices"
    elif isinstance(spec, Sequence):
        columns, what = list(spec), "feature indices"
    else:
        problem = f"expected a preset name or a list of column indices, got {spec!r}"
        raise ConfigError("features", [problem])
    problems = _column_problems(columns, n_features, what)
    if problems:
        raise ConfigError("features", problems)
    return np.asarray(columns, dtype=np.int64)


def _onehot_position(columns: np.ndarray, time_regime_onehot: bool) -> int | None:
    """Where TIME_REGIME sits in ``columns`` when it is to be one-hot encoded, else None."""
    hits = np.flatnonzero(columns == FeatureIndex.TIME_REGIME)
    return int(hits[0]) if time_regime_onehot and hits.size else None


def n_selected(spec: FeatureSpec, n_features: int, time_regime_onehot: bool = False) -> int:
    """Width F' of ``select_features``'s output, without data. Raises as ``feature_columns``."""
    columns = feature_columns(spec, n_features)
    if _onehot_position(columns, time_regime_onehot) is None:
        return int(columns.size)
    return int(columns.size) + TIME_REGIME_CODES - 1


def time_regime_onehot_codes(codes: np.ndarray) -> np.ndarray:
    """(N,) TIME_REGIME values -> (N, 7) float32 one-hot; a value not in 0..6 gives all zeros."""
    codes = np.asarray(codes, dtype=np.float64)
    valid = np.isfinite(codes) & (codes == np.round(codes)) & (codes >= 0)
    valid &= codes < TIME_REGIME_CODES
    out = np.zeros((codes.shape[0], TIME_REGIME_CODES), dtype=np.float32)
    rows = np.flatnonzero(valid)
    out[rows, codes[rows].astype(np.int64)] = 1.0
    return out


def select_features(
    x: np.ndarray, columns: FeatureSpec, *, time_regime_onehot: bool = False
) -> np.ndarray:
    """(N, F) normalized features -> (N, F') float32 with the selected columns, in order.

    ``columns`` is anything ``feature_columns`` accepts. Raises ConfigError as it does.
    """
    columns = feature_columns(columns, x.shape[1])
    pos = _onehot_position(columns, time_regime_onehot)
    if pos is None:
        return np.ascontiguousarray(x[:, columns], dtype=np.float32)
    out = np.empty((x.shape[0], columns.size + TIME_REGIME_CODES - 1), dtype=np.float32)
    out[:, :pos] = x[:, columns[:pos]]
    out[:, pos : pos + TIME_REGIME_CODES] = time_regime_onehot_codes(x[:, columns[pos]])
    out[:, pos + TIME_REGIME_CODES :] = x[:, columns[pos + 1 :]]
    return out
