"""Choosing the winner honestly: seeds, intervals, the chance of beating the rival, a verdict.

- ``rank_configurations``: each of the top k configurations trained again with r seeds; the
  winner is the best mean. Each gets a t interval of its mean, and a probability of beating its
  rival (the winner's rival is the runner-up; everyone else's is the winner): Welch's
  approximation, P = T_nu((mean_a - mean_b) / se), se^2 = s_a^2 / n_a + s_b^2 / n_b, nu the
  Welch-Satterthwaite degrees of freedom rounded down (heavier tails, so P leans to 1/2).
- ``lift_interval``: the interval of a macro-F1 lift from one evaluation set. Neighbouring LOB
  windows share rows and label prices, so windows are resampled in blocks (non-overlapping block
  bootstrap, Carlstein 1986); ``block_length`` sizes the blocks. With several seeds' predictions
  the seeds are resampled too, so the interval covers both the test windows' and the training
  noise. The lift in each resample is against the best baseline *of that resample*.
- ``verdict``: one line from a lift interval. A lift is distinguishable only when the whole
  interval lies above zero (lower bound > 0): a model reliably worse than the baseline has no
  lift either. With a 95 % two-sided interval and no signal, the line says "no lift
  distinguishable from zero" at least ~97.5 % of the time.

The t distribution is computed without scipy: the finite series of Abramowitz & Stegun 26.7.3-4
for integer degrees of freedom, and the normal distribution beyond ``NORMAL_BEYOND_DF``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import NamedTuple

import numpy as np

from lobsearch.contract import N_CLASSES
from lobsearch.errors import ConfigError, DataError

NORMAL_BEYOND_DF = 1000
"""Above this many degrees of freedom the t distribution is taken as normal (t_0.975 differs by
< 0.12 %: 1.9623 against 1.9600)."""

MIN_BLOCKS = 10
"""A block bootstrap over fewer blocks than this cannot estimate a spread."""

POSITIVE = "lift distinguishable from zero"
NEGATIVE = "no lift distinguishable from zero"


@dataclass(frozen=True)
class Interval:
    """An estimate with a two-sided interval at ``level``; ``method`` says how it was made."""

    estimate: float
    low: float
    high: float
    level: float
    method: str

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high


@dataclass(frozen=True)
class Ranked:
    """One configuration re-evaluated over n seeds: mean and sample std of its scores, the t
    interval of the mean, its rival (None for a lone configuration) and P(it beats the rival)."""

    name: str
    rank: int
    n: int
    mean: float
    std: float
    interval: Interval
    rival: str | None
    p_beats_rival: float | None


class Verdict(NamedTuple):
    """``distinguishable``: the interval lies above 0; ``line`` begins ``verdict:``."""

    distinguishable: bool
    line: str
    interval: Interval


def t_cdf(t: float, df: int) -> float:
    """P(T <= t) for Student's t with ``df`` (integer >= 1) degrees of freedom."""
    _check_df(df)
    if df > NORMAL_BEYOND_DF:
        return NormalDist().cdf(t)
    theta = math.atan(abs(t) / math.sqrt(df))
    cos2, term, total = math.cos(theta) ** 2, 1.0, 1.0
    if df % 2 == 0:
        for j in range(1, df // 2):
            term *= cos2 * (2 * j - 1) / (2 * j)
            total += term
        inside = math.sin(theta) * total
    else:
        for j in range(1, (df - 1) // 2):
            term *= cos2 * (2 * j) / (2 * j + 1)
            total += term
        series = math.sin(theta) * math.cos(theta) * total if df > 1 else 0.0
        inside = 2.0 / math.pi * (theta + series)
    return 0.5 + math.copysign(0.5 * min(inside, 1.0), t)


def t_quantile(p: float, df: int) -> float:
    """The t with P(T <= t) = p, by bisection on ``t_cdf``; e.g. t_quantile(0.975, 2) = 4.303."""
    _check_df(df)
    if not 0.0 < p < 1.0:
        raise ConfigError("t_quantile", [f"p must be in (0, 1), got {p!r}"])
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    if df > NORMAL_BEYOND_DF:
        return NormalDist().inv_cdf(p)
    low, high = 0.0, 1.0
    while t_cdf(high, df) < p:
        low, high = high, high * 2.0
    for _ in range(200):
        mid = (low + high) / 2.0
        if t_cdf(mid, df) < p:
            low = mid
        else:
            high = mid
        if high - low <= 1e-12 * high:
            break
    return (low + high) / 2.0


def mean_interval(samples: Sequence[float], *, level: float = 0.95, name: str = "samples") -> Interval:
    """The t interval of the mean of >= 2 finite ``samples`` (e.g. one score per seed)."""
    _check_level(level)
    values = _finite(name, samples)
    n, mean, std = values.size, float(values.mean()), float(values.std(ddof=1))
    half = t_quantile(0.5 + level / 2.0, n - 1) * std / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, level, f"t interval over {n} seeds")


def p_beats(a: Sequence[float], b: Sequence[float], *, mode: str = "max") -> float:
    """P(the mean of ``a`` beats the mean of ``b``) by Welch's approximation; better = higher
    with mode "max", lower with "min". Identical constant samples give 0.5."""
    a, b = _finite("a", a), _finite("b", b)
    sign = _sign(mode)
    diff = sign * (a.mean() - b.mean())
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    if va + vb == 0.0:
        return 0.5 if diff == 0 else float(diff > 0)
    wa, wb = va / (va + vb), vb / (va + vb)  # shares of the variance: no underflow in the squares
    df = 1.0 / (wa**2 / (a.size - 1) + wb**2 / (b.size - 1))
    return t_cdf(diff / math.sqrt(va + vb), max(1, math.floor(df)))


def rank_configurations(
    scores: Mapping[str, Sequence[float]], *, mode: str = "max", level: float = 0.95
) -> list[Ranked]:
    """The configurations best mean first (ties by name), each with its interval and rival.

    scores: name -> r >= 2 finite scores, one per seed (e.g. val_macro_f1; mode "min" for
    losses). Raises ConfigError for a bad mode or level; DataError for no configuration or a
    configuration with fewer than 2 finite scores.
    """
    _sign(mode)
    if not scores:
        raise DataError("rank_configurations: no configuration to rank")
    stats = {name: _finite(f"configuration {name!r}", values) for name, values in scores.items()}
    order = sorted(stats, key=lambda name: (-_sign(mode) * stats[name].mean(), name))
    ranked = []
    for rank, name in enumerate(order, start=1):
        rival = None if len(order) == 1 else order[1] if rank == 1 else order[0]
        p = None if rival is None else p_beats(stats[name], stats[rival], mode=mode)
        interval = mean_interval(stats[name], level=level, name=f"configuration {name!r}")
        values = stats[name]
        ranked.append(Ranked(name, rank, values.size, float(values.mean()), float(values.std(ddof=1)),
                             interval, rival, p))
    return ranked


def block_length(n_windows: int, *, window: int, horizon: int, smoothing: int, stride: int) -> int:
    """Windows per bootstrap block: at least the span over which two windows still share a row
    of input or of their labels' prices, ceil((window + horizon + smoothing) / stride) windows
    (all counts in rows), so that dependence is kept inside blocks; at least
    ceil(n_windows^(1/3)) (the usual rate for block bootstrap variance); at most n_windows."""
    values = {"n_windows": n_windows, "window": window, "horizon": horizon, "stride": stride}
    problems = [f"{k} must be an integer >= 1, got {v!r}" for k, v in values.items() if not _positive_int(v)]
    if not (_positive_int(smoothing) or smoothing == 0):
        problems.append(f"smoothing must be an integer >= 0, got {smoothing!r}")
    if problems:
        raise ConfigError("block_length", problems)
    dependence = math.ceil((window + horizon + smoothing) / stride)
    return min(n_windows, max(dependence, math.ceil(n_windows ** (1.0 / 3.0))))


def lift_interval(
    y_true: np.ndarray,
    model_preds: np.ndarray,
    baselines: Mapping[str, np.ndarray],
    *,
    block: int,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Paired block-bootstrap interval of the macro-F1 lift of a model over the best baseline.

    y_true: (M,) class indices of the evaluation windows in time order; model_preds: (M,) or
    (r, M) predictions (one row per seed; the model's score is the mean over seeds); baselines:
    name -> (M,) predictions. estimate: the lift on all windows; low / high: percentiles of the
    resampled lifts. Seeded: the same inputs give the same interval. Raises ConfigError for
    bad settings; DataError for bad shapes or fewer than MIN_BLOCKS blocks.
    """
    _check_bootstrap(block, n_boot, level)
    y_true = _classes("y_true", y_true, None, 1)
    preds = _classes("model_preds", np.atleast_2d(model_preds), y_true.size, 2)
    if not baselines:
        raise DataError("lift_interval: name at least one baseline")
    base = np.stack([_classes(f"baseline {k!r}", v, y_true.size, 1) for k, v in baselines.items()])
    n_blocks = math.ceil(y_true.size / block)
    if n_blocks < MIN_BLOCKS:
        raise DataError(f"lift_interval: {y_true.size} windows make {n_blocks} blocks of {block}; "
                        f"a block bootstrap needs >= {MIN_BLOCKS}: use a shorter block or more windows")
    n_seeds = preds.shape[0]
    full = _macro_f1(_block_counts(y_true, np.concatenate([preds, base]), y_true.size)[:, 0])
    lifts = _resampled_lifts(y_true, preds, base, block, n_boot, np.random.default_rng(seed))
    low, high = np.quantile(lifts, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    method = (f"block bootstrap, {n_boot} resamples of {n_blocks} blocks of {block} windows over {y_true.size} "
              f"windows, {n_seeds} seed(s) resampled, against the best baseline of each resample "
              f"(on all windows: {list(baselines)[int(full[n_seeds:].argmax())]!r})")
    return Interval(float(full[:n_seeds].mean() - full[n_seeds:].max()), float(low), float(high), level, method)


def verdict(lift: Interval, *, metric: str = "macro-F1") -> Verdict:
    """The one-line verdict on a lift interval over the best naive baseline.

    ``lift`` comes from ``lift_interval`` (recommended: it covers the evaluation windows' noise
    and, given every seed's predictions, the seeds'), or from ``mean_interval`` of per-seed
    lifts (training noise only, so too narrow when the test set is small). The line begins
    ``verdict: `` and then says POSITIVE or NEGATIVE; NEGATIVE contains POSITIVE, so a reader
    checks for ``no lift``. Raises DataError for a non-finite interval.
    """
    values = (lift.estimate, lift.low, lift.high)
    if not all(math.isfinite(v) for v in values):
        raise DataError(f"verdict: the lift interval must be finite, got {values}")
    distinguishable = lift.low > 0.0
    phrase = POSITIVE if distinguishable else NEGATIVE
    line = (f"verdict: {phrase}: {metric} lift {lift.estimate:+.4f} over the best naive baseline, "
            f"{lift.level:.0%} interval [{lift.low:+.4f}, {lift.high:+.4f}] ({lift.method})")
    return Verdict(distinguishable, line, lift)


def _resampled_lifts(y, preds, base, block: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot,) lifts: blocks drawn with replacement (the same for every predictor), seeds too."""
    counts = _block_counts(y, np.concatenate([preds, base]), block)  # (P, n_blocks, 9)
    n_predictors, n_blocks = counts.shape[:2]
    by_block = counts.transpose(1, 0, 2).reshape(n_blocks, -1)
    n_seeds = preds.shape[0]
    lifts = np.empty(n_boot)
    for start in range(0, n_boot, 256):
        size = min(256, n_boot - start)
        drawn = rng.integers(0, n_blocks, (size, n_blocks)) + n_blocks * np.arange(size)[:, None]
        weights = np.bincount(drawn.ravel(), minlength=size * n_blocks).reshape(size, n_blocks).astype(np.float64)
        f1 = _macro_f1((weights @ by_block).reshape(size, n_predictors, -1))  # (size, P)
        seeds = rng.integers(0, n_seeds, (size, n_seeds))
        model = np.take_along_axis(f1[:, :n_seeds], seeds, axis=1).mean(axis=1)
        lifts[start:start + size] = model - f1[:, n_seeds:].max(axis=1)
    return lifts


def _block_counts(y: np.ndarray, preds: np.ndarray, block: int) -> np.ndarray:
    """(P, n_blocks, 9) float64 confusion counts (true * 3 + predicted) of consecutive blocks."""
    codes = y[None, :] * N_CLASSES + preds
    which = np.arange(y.size) // block
    n_blocks = int(which[-1]) + 1
    flat = (np.arange(preds.shape[0])[:, None] * n_blocks + which) * N_CLASSES**2 + codes
    counts = np.bincount(flat.ravel(), minlength=preds.shape[0] * n_blocks * N_CLASSES**2)
    return counts.reshape(preds.shape[0], n_blocks, N_CLASSES**2).astype(np.float64)


def _macro_f1(counts: np.ndarray) -> np.ndarray:
    """Macro-F1 of (..., 9) flattened confusion counts (rows = true), 0 where undefined, as
    ``metrics.classification_metrics``."""
    cm = counts.reshape(counts.shape[:-1] + (N_CLASSES, N_CLASSES))
    hits = np.diagonal(cm, axis1=-2, axis2=-1)
    denominator = cm.sum(axis=-1) + cm.sum(axis=-2)
    f1 = np.divide(2 * hits, denominator, out=np.zeros_like(hits), where=denominator > 0)
    return f1.mean(axis=-1)


def _classes(name: str, values: np.ndarray, size: int | None, ndim: int) -> np.ndarray:
    """``values`` as int64 class indices with ``ndim`` axes, the last of ``size`` (any if None)."""
    array = np.asarray(values)
    wrong_size = array.size == 0 or (size is not None and array.shape[-1] != size)
    if array.ndim != ndim or wrong_size or not np.issubdtype(array.dtype, np.integer):
        raise DataError(f"lift_interval: {name} must be {ndim}-D integer class indices over "
                        f"{size if size is not None else '>= 1'} windows, got shape {array.shape} dtype {array.dtype}")
    outside = array[(array < 0) | (array >= N_CLASSES)]
    if outside.size:
        raise DataError(f"lift_interval: {name} must be class indices in [0, {N_CLASSES}), got {outside[0]}")
    return array.astype(np.int64)


def _finite(name: str, values: Sequence[float]) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.size < 2 or not np.isfinite(array).all():
        raise DataError(f"{name}: needs >= 2 finite scores (one per seed), got {array.tolist()}")
    return array


def _sign(mode: str) -> int:
    if mode not in ("max", "min"):
        raise ConfigError("selection", [f"mode must be 'max' or 'min', got {mode!r}"])
    return 1 if mode == "max" else -1


def _positive_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 1


def _check_df(df: int) -> None:
    if not _positive_int(df):
        raise ConfigError("t distribution", [f"degrees of freedom must be an integer >= 1, got {df!r}"])


def _check_level(level: float) -> None:
    if not (isinstance(level, (int, float)) and 0.0 < level < 1.0):
        raise ConfigError("selection", [f"level must be in (0, 1), e.g. 0.95, got {level!r}"])


def _check_bootstrap(block: int, n_boot: int, level: float) -> None:
    problems = []
    if not _positive_int(block):
        problems.append(f"block must be an integer >= 1 (windows), got {block!r}")
    if not _positive_int(n_boot) or n_boot < 100:
        problems.append(f"n_boot must be an integer >= 100, got {n_boot!r}")
    if not (isinstance(level, (int, float)) and 0.0 < level < 1.0):
        problems.append(f"level must be in (0, 1), e.g. 0.95, got {level!r}")
    if problems:
        raise ConfigError("lift_interval", problems)
