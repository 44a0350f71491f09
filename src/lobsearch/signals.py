"""Signal analysis: what each feature says about the price direction, on training days only.

``python -m lobsearch.signals EXPORT_DIR`` prints, per label horizon, the features ranked by
|rank IC| with their mutual information, the sign check of the bullish features and the
(nearly) constant features; it writes ``signals.png`` (IC heatmap, features x horizons) and
``signals.json`` to ``--out`` (default ``runs/signals/<export folder name>`` under the
current directory).

Rows: the training days only (validation and test days are never read), the rows passing every
gate (``data.gating.gate_rows``), and only those whose forward return and label are defined for
every analyzed horizon (so the first k and the last ``max(h) + k`` rows of a day are left out
at every horizon). ``analyze(max_rows_per_day=M)`` keeps M evenly spaced rows of those per day;
the CLI keeps at most 50,000 (``--max-rows-per-day``). One day is in memory at a time.
Columns 55 and 56 are negated first on schema-2.0 days (``contract.SIGN_FLIP_SCHEMA_2_0``).
Features are read as float32, the precision the models see (so float64 rounding noise such as
0.01 vs 0.0099999 in a spread does not break ties); the return is computed in float64.

Measures, each computed within a day and then pooled over days (a feature that only moves
between days carries no within-day signal and scores 0 here):

- rank IC: Spearman correlation (tied values share their mean rank) between the feature and the
  forward smoothed return of the label rule, past = mean(p[t-k..t]), future = mean(p[t+h-k..t+h]),
  r = (future - past) / past on MID_PRICE; the row-weighted mean of the daily ICs; NaN where the
  feature is constant on every day.
- mutual information with the label class, in bits: the feature is cut into ``bins`` quantile
  bins of its day (ties share a bin), the (bin, class) counts of all days are pooled and the
  plug-in estimate is taken. Its upward bias is about (bins - 1) * 2 / (2 n ln 2) bits.
- sign check: a bullish feature (``contract.BULLISH_FEATURES``) is ok when its IC is > 0 at
  every horizon; ``None`` when it is constant.
- constant: pooled within-day std <= 1e-10 * max(1, |mean|), or the most common value of each day
  covers > 99% of the rows (row-weighted over days).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from lobsearch.contract import (
    BULLISH_FEATURES,
    DEFAULT_SMOOTHING,
    FEATURE_COUNT,
    N_CLASSES,
    FeatureIndex,
)
from lobsearch.data.days import Day, discover_export, load_day
from lobsearch.data.gating import gate_rows
from lobsearch.data.normalize import sign_fix
from lobsearch.errors import ConfigError, DataError, unknown_choice
from lobsearch.files import dump_json, plain

TRAIN_SPLIT = "train"
DEFAULT_BINS = 10
MI_UNIT = "bits"
NEAR_CONSTANT_SHARE = 0.99
"""A feature whose most common value covers more than this share of the rows is constant."""
ZERO_STD_RTOL = 1e-10
DEFAULT_TOP = 15
CLI_MAX_ROWS_PER_DAY = 50_000
"""The CLI's default cap on analyzed rows per day (evenly spaced); the API has no cap."""
REPORT_ROOT = Path("runs") / "signals"
"""Default parent of report folders, relative to the working directory (beside runs/train/)."""


def feature_name(index: int) -> str:
    """The contract name of column ``index`` (``TRUE_OFI``), or ``f<index>`` beyond the layout."""
    return FeatureIndex(index).name if index < FEATURE_COUNT else f"f{index}"


@dataclass(frozen=True, eq=False)
class SignalReport:
    """Per-feature, per-horizon signal measures of an export's training days.

    names: (F,) feature names; ic: (F, H) float64 rank IC, NaN where undefined; mi: (F, H)
    float64 mutual information with the class in bits; sign_ok: name -> True / False / None for
    the bullish features present; constant: names of (nearly) constant features; days: training
    dates analyzed; rows: rows analyzed over all days.
    """

    export: Path
    horizons: tuple[int, ...]
    names: tuple[str, ...]
    ic: np.ndarray
    mi: np.ndarray
    sign_ok: dict[str, bool | None]
    constant: tuple[str, ...]
    days: tuple[str, ...]
    rows: int
    smoothing: int
    bins: int = DEFAULT_BINS
    rows_per_day: dict[str, int] = field(default_factory=dict)

    def horizon_index(self, horizon: int) -> int:
        """Column of ``horizon`` in ``ic``/``mi``; ConfigError when it was not analyzed."""
        if horizon not in self.horizons:
            choices = map(str, self.horizons)
            raise ConfigError("horizon", [unknown_choice("horizon", horizon, choices)])
        return self.horizons.index(horizon)

    def top(self, horizon: int, n: int = DEFAULT_TOP) -> list[int]:
        """Indices of the ``n`` features with the largest |IC| at ``horizon``, NaN last."""
        ic = np.abs(self.ic[:, self.horizon_index(horizon)])
        order = np.argsort(-np.nan_to_num(ic, nan=-1.0), kind="stable")
        return [int(i) for i in order[:n]]

    def ic_noise(self) -> float:
        """About two standard errors of an IC over ``rows`` independent rows: 2 / sqrt(rows).

        Neighbouring rows are correlated, so the real noise level is higher.
        """
        return 2.0 / math.sqrt(max(self.rows, 1))

    def to_json(self) -> dict:
        """A JSON-ready dict (NaN becomes null)."""
        return {
            "export": str(self.export),
            "split": TRAIN_SPLIT,
            "horizons": list(self.horizons),
            "smoothing": self.smoothing,
            "mi_unit": MI_UNIT,
            "mi_bins": self.bins,
            "days": list(self.days),
            "rows": self.rows,
            "rows_per_day": self.rows_per_day,
            "ic_noise": self.ic_noise(),
            "features": [self._feature_json(i) for i in range(len(self.names))],
            "top": {str(h): [self.names[i] for i in self.top(h)] for h in self.horizons},
            "sign_ok": self.sign_ok,
            "constant": list(self.constant),
        }

    def _feature_json(self, i: int) -> dict:
        def values(a: np.ndarray) -> dict[str, float | None]:
            return plain({str(h): float(v) for h, v in zip(self.horizons, a[i])}, finite=True)

        return {"index": i, "name": self.names[i], "ic": values(self.ic), "mi": values(self.mi)}


def average_ranks(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ranks of each column of (n, K) ``x``, and each column's largest run of equal values.

    Returns (n, K) float64 0-based ranks, tied values sharing their mean rank, and (K,) int64
    counts of the most common value. Vectorized: one argsort, no Python loop over columns.
    """
    n = x.shape[0]
    order = np.argsort(x, axis=0)
    xs = np.take_along_axis(x, order, axis=0)
    pos = np.broadcast_to(np.arange(n)[:, None], x.shape)
    starts = np.ones(x.shape, dtype=bool)
    starts[1:] = xs[1:] != xs[:-1]
    ends = np.ones(x.shape, dtype=bool)
    ends[:-1] = starts[1:]
    first = np.maximum.accumulate(np.where(starts, pos, 0), axis=0)
    last = np.minimum.accumulate(np.where(ends, pos, n)[::-1], axis=0)[::-1]
    ranks = np.empty(x.shape, dtype=np.float64)
    np.put_along_axis(ranks, order, (first + last) / 2.0, axis=0)
    runs = (last - first + 1).max(axis=0) if n else np.zeros(x.shape[1], dtype=np.int64)
    return ranks, runs.astype(np.int64)


def forward_returns(mid: np.ndarray, horizons: Sequence[int], smoothing: int) -> np.ndarray:
    """(N,) mid prices -> (N, H) float64 smoothed forward returns, NaN where undefined.

    The label rule: past = mean(p[t-k..t]), future = mean(p[t+h-k..t+h]), r = (future - past) /
    past, defined for k <= t < N - h - k (k = ``smoothing``, h and k in rows).
    """
    p = np.asarray(mid, dtype=np.float64)
    n = p.size
    out = np.full((n, len(horizons)), np.nan)
    if n <= smoothing:
        return out
    means = sliding_window_view(p, smoothing + 1).mean(axis=1)
    for j, h in enumerate(horizons):
        t = np.arange(smoothing, max(smoothing, n - h - smoothing))
        past, future = means[t - smoothing], means[t + h - smoothing]
        with np.errstate(divide="ignore", invalid="ignore"):
            out[t, j] = (future - past) / past
    return out


def mid_prices(features: np.ndarray) -> np.ndarray:
    """(N,) MID_PRICE column, or (best ask + best bid) / 2 for book-only exports (< 41 columns).

    Raises DataError when the export has no best-bid column either (< 21 columns).
    """
    n_features = features.shape[1]
    if n_features > FeatureIndex.MID_PRICE:
        return np.asarray(features[:, FeatureIndex.MID_PRICE], dtype=np.float64)
    if n_features > FeatureIndex.BID_PRICE_L0:
        ask = np.asarray(features[:, FeatureIndex.ASK_PRICE_L0], dtype=np.float64)
        return (ask + np.asarray(features[:, FeatureIndex.BID_PRICE_L0], dtype=np.float64)) / 2
    raise DataError(
        f"features: {n_features} columns hold neither MID_PRICE (column 40) nor the best ask and "
        "bid (columns 0 and 20); the forward return needs one of them"
    )


@dataclass(frozen=True, eq=False)
class _DayRows:
    """The analyzed rows of one day: x (n, F) float32 sign-fixed, returns (n, H), labels (n, H)."""

    x: np.ndarray
    returns: np.ndarray
    labels: np.ndarray


def _label_columns(day: Day, horizons: Sequence[int]) -> list[int]:
    """Columns of ``day.labels`` for ``horizons``.

    Raises DataError when the day has no labels, ConfigError naming each horizon it lacks.
    """
    if day.labels is None:
        raise DataError(f"{day.source}: no labels file and no book columns to compute labels from "
                        "(rule: the mutual information needs a class label per row)")
    choices = [str(h) for h in day.horizons]
    problems = [unknown_choice("horizon", h, choices) for h in horizons if h not in day.horizons]
    if problems:
        raise ConfigError(f"horizons (labels of {day.source})", problems)
    return [day.horizons.index(h) for h in horizons]


def _smoothing(day: Day) -> int:
    """k of the day's labeling (metadata ``labeling.smoothing``), else the contract default."""
    labeling = day.metadata.get("labeling")
    value = labeling.get("smoothing") if isinstance(labeling, dict) else None
    if value is None:
        return DEFAULT_SMOOTHING
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise DataError(f"{day.source}: metadata labeling.smoothing is {value!r} "
                        "(rule: an integer >= 0)")
    return value


def _keep_rows(ok: np.ndarray, max_rows: int | None) -> np.ndarray:
    """Indices of the rows where ``ok``, thinned to ``max_rows`` evenly spaced ones when set."""
    rows = np.flatnonzero(ok)
    if max_rows is not None and rows.size > max_rows:
        rows = rows[np.linspace(0, rows.size - 1, max_rows).round().astype(np.int64)]
    return rows


def _day_rows(day: Day, horizons: Sequence[int], smoothing: int, max_rows: int | None) -> _DayRows:
    """The gated rows of ``day`` with a defined return and label at every horizon.

    Raises DataError when an analyzed row holds NaN or inf.
    """
    labels = np.asarray(day.labels)[:, _label_columns(day, horizons)]
    returns = forward_returns(mid_prices(day.features), horizons, smoothing)
    ok = gate_rows(day.features).row_ok
    ok &= np.isfinite(returns).all(axis=1) & (labels >= 0).all(axis=1)
    rows = _keep_rows(ok, max_rows)
    x = np.asarray(day.features[rows], dtype=np.float32)
    bad = np.argwhere(~np.isfinite(x))
    if bad.size:
        raise DataError(
            f"{day.source}: {len(bad)} non-finite feature value(s) in rows that pass the gates "
            f"(first at row {rows[bad[0, 0]]}, column {bad[0, 1]})"
        )
    sign_fix(x, day.schema_version)
    return _DayRows(x, returns[rows], labels[rows].astype(np.int64))


class _Totals:
    """Sums over days from which the report's measures are finished."""

    def __init__(self, n_features: int, n_horizons: int, bins: int):
        self.bins = bins
        self.ic_sum = np.zeros((n_features, n_horizons))
        self.ic_rows = np.zeros((n_features, n_horizons))
        self.joint = np.zeros((n_horizons, n_features, bins, N_CLASSES), dtype=np.int64)
        self.rows = 0
        self.mode_rows = np.zeros(n_features, dtype=np.int64)
        self.sum = np.zeros(n_features)
        self.sq_dev = np.zeros(n_features)

    def add(self, day: _DayRows) -> None:
        """Fold one day's rows in (nothing happens for a day without rows)."""
        n = day.x.shape[0]
        if n == 0:
            return
        ranks, runs = average_ranks(day.x)
        ic = _spearman(ranks, average_ranks(day.returns)[0])
        defined = np.isfinite(ic)
        self.ic_sum += np.where(defined, ic, 0.0) * n
        self.ic_rows += defined * n
        bins = np.minimum((ranks * self.bins / n).astype(np.int64), self.bins - 1)
        for j in range(day.labels.shape[1]):
            self.joint[j] += _joint_counts(bins, day.labels[:, j], self.bins)
        self.rows += n
        self.mode_rows += runs
        self.sum += day.x.sum(axis=0, dtype=np.float64)
        self.sq_dev += day.x.var(axis=0, dtype=np.float64) * n

    def ic(self) -> np.ndarray:
        """(F, H) row-weighted mean of the daily ICs; NaN where no day defines it."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(self.ic_rows > 0, self.ic_sum / self.ic_rows, np.nan)

    def mi(self) -> np.ndarray:
        """(F, H) plug-in mutual information in bits of the pooled (bin, class) counts."""
        return np.stack([_mutual_information(counts) for counts in self.joint], axis=1)

    def constant(self) -> np.ndarray:
        """(F,) bool: within-day std ~ 0, or one value per day in > 99% of the rows."""
        mean = self.sum / self.rows
        std = np.sqrt(self.sq_dev / self.rows)
        flat = std <= ZERO_STD_RTOL * np.maximum(1.0, np.abs(mean))
        return flat | (self.mode_rows > NEAR_CONSTANT_SHARE * self.rows)


def _spearman(x_ranks: np.ndarray, y_ranks: np.ndarray) -> np.ndarray:
    """(F, H) Pearson correlation of (n, F) and (n, H) ranks; NaN where a column is constant."""
    xc = x_ranks - x_ranks.mean(axis=0)
    yc = y_ranks - y_ranks.mean(axis=0)
    norms = np.outer(np.sqrt((xc**2).sum(axis=0)), np.sqrt((yc**2).sum(axis=0)))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(norms > 0, (xc.T @ yc) / norms, np.nan)


def _joint_counts(bins: np.ndarray, labels: np.ndarray, n_bins: int) -> np.ndarray:
    """(F, bins, classes) counts of (n, F) bin indices against (n,) class indices."""
    n_features = bins.shape[1]
    cell = (np.arange(n_features) * n_bins + bins) * N_CLASSES + labels[:, None]
    counts = np.bincount(cell.ravel(), minlength=n_features * n_bins * N_CLASSES)
    return counts.reshape(n_features, n_bins, N_CLASSES)


def _mutual_information(counts: np.ndarray) -> np.ndarray:
    """(F,) plug-in MI in bits of (F, bins, classes) joint counts; 0 for a feature with none."""
    total = counts.sum(axis=(1, 2), keepdims=True).astype(np.float64)
    p = np.divide(counts, total, out=np.zeros(counts.shape), where=total > 0)
    expected = p.sum(axis=2, keepdims=True) * p.sum(axis=1, keepdims=True)
    ratio = np.divide(p, expected, out=np.ones(p.shape), where=p > 0)
    return (p * np.log2(ratio)).sum(axis=(1, 2))


def _sign_check(ic: np.ndarray, names: Sequence[str]) -> dict[str, bool | None]:
    """Bullish feature present -> IC > 0 at every horizon (None when IC is undefined)."""
    checks: dict[str, bool | None] = {}
    for column in (int(c) for c in BULLISH_FEATURES if c < len(names)):
        values = ic[column]
        checks[names[column]] = None if np.isnan(values).all() else bool((values > 0).all())
    return checks


def analyze(
    export_dir: str | Path,
    *,
    horizons: Sequence[int] | None = None,
    max_rows_per_day: int | None = None,
    smoothing: int | None = None,
    bins: int = DEFAULT_BINS,
) -> SignalReport:
    """Signal measures of every feature on the training days of the export at ``export_dir``.

    horizons: label horizons (rows) to analyze, default every horizon of the labels; each must
    be one of the labels' horizons. max_rows_per_day: analyze at most this many evenly spaced
    rows per day (default all). smoothing: k of the forward-return rule in rows (default the
    first training day's metadata ``labeling.smoothing``, else 10). bins: quantile bins for MI.
    Reads one day at a time, memory-mapped. Raises DataError (no training days, no usable rows,
    broken files) or ConfigError (bad argument, a horizon the labels lack).
    """
    _check_arguments(max_rows_per_day, smoothing, bins)
    export = discover_export(export_dir)
    files = export.splits.get(TRAIN_SPLIT, ())
    if not files:
        raise DataError(
            f"{export.root}: no {TRAIN_SPLIT!r} days; signal analysis reads the training split "
            f"only (splits found: {', '.join(export.splits)})"
        )
    totals = _Fold(horizons, max_rows_per_day, smoothing, bins)
    for file in files:
        day = load_day(file)
        if day.layout is not None and not day.layout.overlapping:
            raise DataError(
                f"{file.features}: windows of {day.layout.window} rows at stride {day.layout.stride} do not "
                "overlap, so the day's rows are not one series; signal analysis needs forward returns "
                "along contiguous rows (flat days, or windows at a stride below their length)"
            )
        totals.add(day)
    return totals.report(export.root)


def _check_arguments(max_rows: int | None, smoothing: int | None, bins: int) -> None:
    """ConfigError listing every argument that is not an integer at or above its minimum."""
    values = {"max_rows_per_day": (max_rows, 1), "smoothing": (smoothing, 0), "bins": (bins, 2)}
    problems = [
        f"{name} must be an integer >= {minimum}, got {value!r}"
        for name, (value, minimum) in values.items()
        if value is not None
        and (isinstance(value, bool) or not isinstance(value, int) or value < minimum)
    ]
    if problems:
        raise ConfigError("signal analysis", problems)


class _Fold:
    """Folds training days in one at a time; the first day fixes horizons, smoothing, width."""

    def __init__(self, horizons, max_rows: int | None, smoothing: int | None, bins: int):
        self.horizons = None if horizons is None else tuple(int(h) for h in horizons)
        self.max_rows, self.smoothing, self.bins = max_rows, smoothing, bins
        self.totals: _Totals | None = None
        self.names: tuple[str, ...] = ()
        self.rows_per_day: dict[str, int] = {}

    def add(self, day: Day) -> None:
        """Fold in one loaded day; DataError when its width differs from the first day's."""
        if self.totals is None:
            self.horizons = self.horizons or tuple(day.horizons)
            self.smoothing = _smoothing(day) if self.smoothing is None else self.smoothing
            self.names = tuple(feature_name(i) for i in range(day.features.shape[1]))
            self.totals = _Totals(len(self.names), len(self.horizons), self.bins)
        if day.features.shape[1] != len(self.names):
            raise DataError(f"{day.source}: {day.features.shape[1]} features, but the first "
                            f"training day has {len(self.names)} (rule: one width per export)")
        rows = _day_rows(day, self.horizons, self.smoothing, self.max_rows)
        self.totals.add(rows)
        self.rows_per_day[day.date] = rows.x.shape[0]

    def report(self, root: Path) -> SignalReport:
        """The finished report; DataError when no row of any day was usable."""
        if self.totals is None or self.totals.rows == 0:
            raise DataError(f"{root}: no training row passes the gates with a defined label "
                            f"and forward return at horizons {self.horizons}")
        ic = self.totals.ic()
        constant = tuple(n for n, c in zip(self.names, self.totals.constant()) if c)
        return SignalReport(
            root, self.horizons, self.names, ic, self.totals.mi(), _sign_check(ic, self.names),
            constant, tuple(self.rows_per_day), self.totals.rows, self.smoothing, self.bins,
            dict(self.rows_per_day),
        )


def format_report(report: SignalReport, top: int = DEFAULT_TOP) -> str:
    """The terminal table: top features by |IC| per horizon, sign check, constant features."""
    lines = [
        f"Signals of {report.export.name}: {len(report.days)} training day(s), "
        f"{report.rows:,} rows after gating; forward return smoothing {report.smoothing} rows; "
        f"MI in {MI_UNIT} over {report.bins} within-day quantile bins",
    ]
    for h in report.horizons:
        lines += ["", *_top_lines(report, h, top)]
    lines += ["", *_sign_lines(report)]
    constant = ", ".join(report.constant) or "none"
    lines += ["", f"constant or nearly constant ({len(report.constant)}): {constant}"]
    return "\n".join(lines)


def _top_lines(report: SignalReport, horizon: int, top: int) -> list[str]:
    j = report.horizon_index(horizon)
    lines = [f"horizon {horizon}: top {top} features by |IC|",
             f"  rank  {'feature':<30} {'IC':>8}  {'MI (bits)':>9}"]
    for rank, i in enumerate(report.top(horizon, top), start=1):
        label = f"{report.names[i]} ({i})"
        lines.append(f"  {rank:>4}  {label:<30} {report.ic[i, j]:+8.4f}  {report.mi[i, j]:9.5f}")
    return lines


def _sign_lines(report: SignalReport) -> list[str]:
    noise = report.ic_noise()
    lines = [f"sign check (bullish features need IC > 0 at every horizon; |IC| < {noise:.4f} is "
             "within the noise of independent rows):"]
    for name, ok in report.sign_ok.items():
        ic = report.ic[report.names.index(name)]
        verdict = {True: "ok", False: "FLAGGED", None: "constant"}[ok]
        weak = " (within noise)" if ok is False and np.nanmax(np.abs(ic)) < noise else ""
        ics = " ".join(f"{v:+.4f}" for v in ic)
        lines.append(f"  {verdict:<8} {name:<22} IC {ics}{weak}")
    return lines


def plot_ic(report: SignalReport, path: Path) -> None:
    """Write the IC heatmap (features x horizons, grey where undefined) as a PNG at ``path``."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    n_features = len(report.names)
    fig = Figure(figsize=(2.5 + 0.9 * len(report.horizons), 1.5 + 0.16 * n_features))
    ax = fig.subplots()
    limit = float(np.nanmax(np.abs(report.ic))) if np.isfinite(report.ic).any() else 1.0
    cmap = colormaps["RdBu_r"].with_extremes(bad="0.8")
    image = ax.imshow(np.ma.masked_invalid(report.ic), aspect="auto", cmap=cmap, vmin=-limit,
                      vmax=limit, interpolation="nearest")
    ax.set_xticks(range(len(report.horizons)), [str(h) for h in report.horizons])
    ax.set_yticks(range(n_features), [f"{n} ({i})" for i, n in enumerate(report.names)], fontsize=6)
    ax.set_xlabel("horizon (rows)")
    ax.set_title(f"rank IC, {report.export.name}, train ({report.rows:,} rows)", fontsize=9)
    fig.colorbar(image, ax=ax, shrink=0.5, label="Spearman IC")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def write_report(report: SignalReport, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``signals.png`` and ``signals.json`` into ``out_dir`` (created); return both paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    png, js = out / "signals.png", out / "signals.json"
    plot_ic(report, png)
    dump_json(js, report.to_json())
    return png, js


def _positive(text: str) -> int:
    """argparse type: an integer >= 1."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return int(text)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lobsearch.signals",
        description="Rank IC, mutual information, sign check and constant features of an "
        "export's training days (after gating).",
    )
    parser.add_argument("export_dir", metavar="EXPORT_DIR", type=Path)
    parser.add_argument("--out", type=Path,
                        help=f"report folder (default {REPORT_ROOT}/<export folder name>)")
    parser.add_argument("--horizons", type=_positive, nargs="+",
                        help="label horizons in rows (default every horizon of the labels)")
    parser.add_argument("--top", type=_positive, default=DEFAULT_TOP,
                        help=f"features per horizon in the table (default {DEFAULT_TOP})")
    parser.add_argument("--max-rows-per-day", type=_positive, default=CLI_MAX_ROWS_PER_DAY,
                        help="evenly spaced rows analyzed per day "
                        f"(default {CLI_MAX_ROWS_PER_DAY})")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The CLI: analyze, print the table, write the report; exit 2 on a data or config error."""
    args = _parser().parse_args(argv)
    try:
        report = analyze(args.export_dir, horizons=args.horizons,
                         max_rows_per_day=args.max_rows_per_day)
    except (DataError, ConfigError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    out = args.out or REPORT_ROOT / Path(args.export_dir).resolve().name
    print(format_report(report, args.top))
    png, js = write_report(report, out)
    print(f"\nwrote {png} and {js}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
