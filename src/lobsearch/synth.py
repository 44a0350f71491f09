"""Synthetic exports in the day-file contract, with a planted signal of known look-back.

The planted signal: a latent order flow f_t (AR(1), unit variance, persistence ``FLOW_PERSISTENCE``)
moves the mid. The log-return at row t is ``scale * mean(f[t-L+1 .. t]) + noise``, with L the
planted lag, so the drift at t is the mean flow of the previous L rows and a model must look back
about L rows. The flow shows, with noise, in TRUE_OFI (and DEPTH_NORM_OFI, its depth-normalized
twin) and in the size imbalance of the top three levels (VOLUME_IMBALANCE); the order-flow
columns lean with it weakly. Everything else is plausible noise: a 10-level book on a 0.01 tick
grid around the mid, heavy-tailed (Pareto) sizes, derived columns 40-47 computed from the book,
TIME_REGIME following the session clock, and gates failing like real data (an MBO warm-up at the
start of each day, a few locked books, a few invalidity events).

Labels are the exporter's smoothed-return labels (``compute_labels``) of MID_PRICE, stored signed
(``label_strategy`` "tlob"); every exported row has a label for every horizon (the simulated day
is longer by the label margins, as an exporter trims it). The manifest records ``planted_lag`` and
``oracle_macro_f1``: the macro-F1, on the val and test days, of a classifier that knows the latent
flow and mid (it predicts from the expected smoothed return, with a threshold fitted on the train
days), an upper reference for what a model can reach (on a windowed export, at the windows' end
rows: what a model sees).

The windowed format is written as the upstream exporter writes it: window j covers rows
``j*stride .. j*stride + T - 1``, one int8 label row per window, the stride and window size in the
metadata, the manifest and an ``export_config.toml``, a ``_horizons.json``, and a
``_forward_prices.npy`` per day: (windows, k + max(horizons) + 1) float64 mids, column k at the
window's end row (the simulated day covers every column: none is NaN). Schema "3.0" adds its metadata keys (top-level
horizons, label_encoding, contract_version, provenance) and stores 0.0 in SCHEMA_VERSION.

``python -m lobsearch.synth OUT_DIR --days D --rows N --seed S [--lag L]``; ``--help`` for the rest
(``--format windowed --stride 10 --schema 3.0`` for an export like the exporter's default).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lobsearch import __version__
from lobsearch.contract import (
    DEFAULT_HORIZONS,
    DEFAULT_SMOOTHING,
    DEFAULT_THRESHOLD,
    FEATURE_COUNT,
    SIGN_FLIP_SCHEMA_2_0,
)
from lobsearch.contract import (
    FeatureIndex as FI,
)
from lobsearch.data.claims import EXPORT_CONFIG_NAME
from lobsearch.data.days import MANIFEST_NAME, SPLITS, compute_labels
from lobsearch.data.gating import gate_rows
from lobsearch.data.pipeline import cache_root as resolve_cache_root
from lobsearch.errors import ConfigError, DataError
from lobsearch.metrics import classification_metrics

SYNTH_VERSION = 2
"""Bumped whenever the generated data changes; part of the demo export's cache key."""

DEMO_DAYS = 12
DEMO_ROWS = 6000
DEMO_SEED = 0
DEMO_LAG = 20
"""The demo export: 7 train, 3 val and 2 test days, about 40,000 training windows at stride 1."""

TICK = 0.01
SESSION_SECONDS = 6.5 * 3600
REGIME_STARTS = (0, 900, 3600, 9000, 14400, 19800, 22500)
"""Seconds after the 09:30 open at which TIME_REGIME 0..6 begin (open, first hour, late morning,
midday, afternoon, run-up to the close, closing minutes)."""

FLOW_PERSISTENCE = 0.9
"""AR(1) coefficient of the latent flow: its memory is about 10 rows, shorter than the lag."""
SIGNAL_SHARE = 0.35
"""Share of a row's return standard deviation carried by the planted drift."""
ROW_VOLATILITY = 3.0e-4
"""Standard deviation of a row's log-return (3 bp): with the default labeling, Stable is about
half of the rows at horizon 10, a quarter at 20 and a tenth at 100."""
OFI_NOISE = 1.5
"""Standard deviation of the noise in TRUE_OFI, in units of the flow's standard deviation."""
PLANTED_FEATURES = tuple(sorted({
    FI.TRUE_OFI, FI.DEPTH_NORM_OFI, FI.VOLUME_IMBALANCE,
    *range(FI.ASK_SIZE_L0, FI.ASK_SIZE_L2 + 1), *range(FI.BID_SIZE_L0, FI.BID_SIZE_L2 + 1),
    *range(FI.TOTAL_BID_VOLUME, FI.AGGRESSIVE_ORDER_RATIO + 1), FI.FLOW_REGIME_INDICATOR,
    FI.LARGE_ORDER_IMBALANCE, *range(FI.EXECUTED_PRESSURE, FI.DEPTH_ASYMMETRY + 1),
}))
"""Columns built from the latent flow (the planted signal): TRUE_OFI, DEPTH_NORM_OFI and
VOLUME_IMBALANCE by design, the top-3 level sizes that lean with the flow and what derives from
them, the order rates and net flows, and the asymmetry signals. Every other column is noise.
The manifest lists them by name under ``planted_features``."""

_REGIME_VOLATILITY = np.array([1.5, 1.2, 1.0, 0.85, 0.95, 1.1, 1.35])
_REGIME_ACTIVITY = np.array([3.0, 1.8, 1.2, 0.8, 1.0, 1.4, 2.5])
_SCHEMAS = ("3.0", "2.2", "2.1", "2.0")
_FORMATS = ("flat", "windowed")


@dataclass(frozen=True)
class _Spec:
    days: int
    rows: int
    seed: int
    lag: int
    splits: tuple[float, float, float]
    horizons: tuple[int, ...]
    smoothing: int
    threshold: float
    fmt: str
    window: int
    schema: str
    nan_in_gated: bool
    symbol: str
    stride: int = 1
    signal: float = SIGNAL_SHARE

    @property
    def margin(self) -> int:
        """Rows simulated beyond ``rows`` so that every exported row has every label."""
        return 2 * self.smoothing + max(self.horizons)


@dataclass(frozen=True)
class _SimDay:
    features: np.ndarray   # (rows, 98) float64, as exported
    labels: np.ndarray     # (rows, H) int8 class indices, none missing
    expected: np.ndarray   # (rows, H) float64, the oracle's expected smoothed return
    usable: np.ndarray     # (rows,) bool, passes the three gates
    mid_path: np.ndarray   # (rows + margin,) float64, the simulated mid: exported row r is mid_path[r + smoothing]


def write_synthetic_export(out_dir: str | Path, *, days: int = 20, rows: int = 20000, seed: int = 0,
                           lag: int = 20, splits: tuple[float, float, float] = (0.6, 0.2, 0.2),
                           horizons: tuple[int, ...] = DEFAULT_HORIZONS, smoothing: int = DEFAULT_SMOOTHING,
                           threshold: float = DEFAULT_THRESHOLD, fmt: str = "flat", window: int = 100,
                           schema: str = "2.2", nan_in_gated: bool = False, symbol: str = "SYNTH",
                           stride: int = 1, signal: float = SIGNAL_SHARE) -> Path:
    """Write a synthetic export into ``out_dir`` (new or empty) and return its absolute path.

    ``days`` weekdays from 2024-01-02 of ``rows`` rows each, split chronologically by whole days in
    the proportions ``splits`` (a split with no day is left out). ``fmt`` "flat" writes
    ``_features.npy`` (rows, 98) float64; "windowed" writes ``_sequences.npy``
    ((rows - window) // stride + 1, window, 98) float32 with one label per window (large: about
    window / stride times the flat size) and the exporter's other files (see the module
    docstring). ``schema`` "2.0" stores NET_CANCEL_FLOW and NET_TRADE_FLOW with the old sign.
    ``nan_in_gated`` writes NaN into some columns of the rows that fail BOOK_VALID. ``signal`` is
    the share of a row's return standard deviation the planted drift carries; 0 writes an export
    with nothing to learn: no drift, and each day's label rows shuffled (smoothed-return labels
    of a random walk still lean on the past mids through their past mean), so that labels are
    independent of every row a model sees.
    Deterministic for a seed. Raises ConfigError listing every bad argument.
    """
    spec = _Spec(days, rows, seed, lag, tuple(splits), tuple(horizons), smoothing, threshold, fmt,
                 window, schema, nan_in_gated, symbol, stride, float(signal))
    out = Path(out_dir).expanduser().resolve()
    _check_spec(spec, out)
    dates = _trading_dates(days)
    split_of = _assign_splits(days, spec.splits)
    day_rngs = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(days)]
    price = float(np.random.default_rng(seed).uniform(50, 150))
    oracle_inputs = {split: [] for split in SPLITS}
    for date, split, rng in zip(dates, split_of, day_rngs):
        sim, price = _simulate_day(rng, spec, price)
        _write_day(out / split, date, sim, spec)
        oracle_inputs[split].append(_seen_by_a_model(sim, spec))
    oracle = _oracle_macro_f1(oracle_inputs, len(spec.horizons))
    _write_json(out / MANIFEST_NAME, _manifest(spec, dates, split_of, oracle))
    if spec.fmt == "windowed":
        (out / EXPORT_CONFIG_NAME).write_text(_export_config(spec))
    return out


def _check_spec(spec: _Spec, out: Path) -> None:
    problems = []
    if spec.days < 1:
        problems.append(f"days: {spec.days} (rule: at least 1)")
    if spec.horizons and spec.smoothing >= 0 and spec.rows < 2 * spec.margin:
        problems.append(f"rows: {spec.rows} (rule: at least {2 * spec.margin}, twice "
                        f"(max(horizons) + 2 * smoothing))")
    if spec.seed < 0:
        problems.append(f"seed: {spec.seed} (rule: a non-negative integer)")
    if spec.lag < 1:
        problems.append(f"lag: {spec.lag} (rule: at least 1 row)")
    if not 0 <= spec.signal < 1:
        problems.append(f"signal: {spec.signal} (rule: a share of the return's standard deviation in [0, 1))")
    if len(spec.splits) != 3 or min(spec.splits) < 0 or abs(sum(spec.splits) - 1) > 1e-6 or spec.splits[0] <= 0:
        problems.append(f"splits: {spec.splits} (rule: three shares (train, val, test) >= 0 summing to 1, "
                        f"train > 0)")
    if not spec.horizons or min(spec.horizons) < 1:
        problems.append(f"horizons: {spec.horizons} (rule: one or more horizons >= 1 row)")
    if spec.smoothing < 0 or spec.threshold <= 0:
        problems.append(f"smoothing {spec.smoothing}, threshold {spec.threshold} (rule: smoothing >= 0, "
                        f"threshold > 0)")
    if spec.fmt not in _FORMATS:
        problems.append(f"fmt: {spec.fmt!r} (rule: one of {', '.join(_FORMATS)})")
    if spec.fmt == "windowed" and not 1 <= spec.window <= spec.rows:
        problems.append(f"window: {spec.window} (rule: 1 <= window <= rows)")
    if spec.stride < 1 or (spec.stride > 1 and spec.fmt != "windowed"):
        problems.append(f"stride: {spec.stride} (rule: at least 1 row; above 1 only with fmt 'windowed')")
    if spec.schema not in _SCHEMAS:
        problems.append(f"schema: {spec.schema!r} (rule: one of {', '.join(_SCHEMAS)})")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        problems.append(f"out_dir: {out} exists and is not an empty folder (rule: a new or empty folder)")
    if problems:
        raise ConfigError("write_synthetic_export", problems)


def _trading_dates(days: int) -> list[str]:
    """``days`` weekdays from 2024-01-02 as YYYYMMDD."""
    dates = np.busday_offset(np.datetime64("2024-01-02"), np.arange(days), roll="forward")
    return [str(d).replace("-", "") for d in dates]


def _assign_splits(days: int, shares: tuple[float, float, float]) -> list[str]:
    """Chronological split names, one per day: whole days, largest remainders get the extra day."""
    exact = np.array(shares) * days
    counts = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - counts), kind="stable")[: days - counts.sum()]:
        counts[i] += 1
    if counts[0] == 0:
        counts[len(counts) - 1 - np.argmax(counts[::-1])] -= 1  # the largest split, test before val
        counts[0] = 1
    return [split for split, n in zip(SPLITS, counts) for _ in range(n)]


# --------------------------------------------------------------------------- simulation


def _ar1(shocks: np.ndarray, phi: float, start: float | np.ndarray = 0.0) -> np.ndarray:
    """y_t = phi * y_{t-1} + shocks_t along axis 0 (y_{-1} = start), vectorized in blocks.

    Within a block y_{b+i} = phi^i (phi y_{b-1} + sum_{j<=i} phi^-j x_{b+j}); blocks are short
    enough that phi^-j stays below e^20, which keeps the cumulative sum accurate.
    """
    if phi == 0:
        return np.array(shocks, dtype=np.float64)
    block = max(1, min(len(shocks), int(20 / -np.log(phi))))
    powers = (phi ** np.arange(block)).reshape(-1, *([1] * (shocks.ndim - 1)))
    out = np.empty(shocks.shape, dtype=np.float64)
    carry = np.asarray(start, dtype=np.float64)
    for begin in range(0, len(shocks), block):
        part = shocks[begin:begin + block]
        scale = powers[: len(part)]
        out[begin:begin + len(part)] = scale * (phi * carry + np.cumsum(part / scale, axis=0))
        carry = out[begin + len(part) - 1]
    return out


def _smooth_noise(rng: np.random.Generator, n: int, columns: int, phi: float = 0.97) -> np.ndarray:
    """(n, columns) independent unit-variance AR(1) series."""
    shocks = rng.standard_normal((n, columns)) * np.sqrt(1 - phi**2)
    return _ar1(shocks, phi, rng.standard_normal(columns))


def _mean_flow_std(lag: int, phi: float) -> float:
    """Standard deviation of the mean of ``lag`` consecutive values of a unit-variance AR(1)."""
    m = np.arange(1, lag)
    return float(np.sqrt(lag + 2 * np.sum((lag - m) * phi**m)) / lag)


def _session_clock(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(n,) DT_SECONDS and (n,) TIME_REGIME: sampling is denser at the open and the close."""
    position = (np.arange(n) + 0.5) / n
    intensity = 1 + 2.0 * (2 * position - 1) ** 2
    gaps = rng.exponential(1.0, n) / intensity
    elapsed = np.cumsum(gaps) * (SESSION_SECONDS / gaps.sum())
    dt = np.diff(elapsed, prepend=0.0)
    regime = np.searchsorted(REGIME_STARTS, elapsed, side="right") - 1
    return dt, regime.astype(np.float64)


def _latent(rng: np.random.Generator, n: int, lag: int, regime: np.ndarray,
            price: float, signal: float) -> tuple[np.ndarray, np.ndarray, float]:
    """Flow (n + lag,) with ``lag`` rows of history first, latent log-mid (n,), and the drift scale.

    log-return_t = scale * mean(flow over the previous ``lag`` rows) + noise, the drift a share
    ``signal`` of the return's standard deviation; the noise is larger at the open and the close.
    """
    phi = FLOW_PERSISTENCE
    flow = _ar1(rng.standard_normal(n + lag) * np.sqrt(1 - phi**2), phi, rng.standard_normal())
    sums = np.concatenate([[0.0], np.cumsum(flow)])
    mean_flow = (sums[lag + 1:] - sums[1:-lag]) / lag
    scale = ROW_VOLATILITY * signal / _mean_flow_std(lag, phi)
    noise = ROW_VOLATILITY * np.sqrt(1 - signal**2) * rng.standard_normal(n)
    noise *= _REGIME_VOLATILITY[regime.astype(int)]
    return flow, np.log(price) + np.cumsum(scale * mean_flow + noise), scale


def _book_ticks(rng: np.random.Generator, log_mid: np.ndarray, locked: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n, 10) ask and bid prices in ticks around the mid; ``locked`` rows get ask0 == bid0."""
    n = len(log_mid)
    spread = rng.geometric(0.65, n)
    bid0 = np.floor(np.exp(log_mid) / TICK - spread / 2 + 0.5).astype(np.int64)
    ask0 = np.where(locked, bid0, bid0 + spread)
    steps = np.zeros((n, 10), dtype=np.int64)
    steps[:, 1:] = np.cumsum(rng.geometric(0.7, (n, 9)), axis=1)
    ask = ask0[:, None] + steps
    ask[locked, 1:] += 1
    steps[:, 1:] = np.cumsum(rng.geometric(0.7, (n, 9)), axis=1)
    return ask, bid0[:, None] - steps


def _book_sizes(rng: np.random.Generator, flow: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n, 10) ask and bid sizes in shares: Pareto tails, deeper levels larger, the top three
    levels leaning with the flow (bid side up when the flow is positive)."""
    n = len(flow)
    depth = 1 + 0.15 * np.arange(10)
    lean = np.zeros((n, 10))
    lean[:, :3] = 0.35 * flow[:, None]
    sizes = [np.maximum(1, np.rint(80 * (0.3 + rng.pareto(1.7, (n, 10))) * depth * np.exp(sign * lean)))
             for sign in (-1, 1)]
    return sizes[0], sizes[1]


def _sizes(x: np.ndarray) -> np.ndarray:
    """(n, 20) the ask then bid sizes of the ten levels."""
    return np.concatenate([x[:, FI.ASK_SIZE_L0:FI.ASK_SIZE_L9 + 1], x[:, FI.BID_SIZE_L0:FI.BID_SIZE_L9 + 1]], axis=1)


def _raw_book(x: np.ndarray, ask_t: np.ndarray, bid_t: np.ndarray, ask_s: np.ndarray, bid_s: np.ndarray) -> None:
    """Columns 0-47: prices (USD) and sizes, then the derived columns computed from them."""
    ask, bid = ask_t / round(1 / TICK), bid_t / round(1 / TICK)
    x[:, FI.ASK_PRICE_L0:FI.ASK_PRICE_L9 + 1] = ask
    x[:, FI.ASK_SIZE_L0:FI.ASK_SIZE_L9 + 1] = ask_s
    x[:, FI.BID_PRICE_L0:FI.BID_PRICE_L9 + 1] = bid
    x[:, FI.BID_SIZE_L0:FI.BID_SIZE_L9 + 1] = bid_s
    mid = (ask[:, 0] + bid[:, 0]) / 2
    total_bid, total_ask = bid_s.sum(axis=1), ask_s.sum(axis=1)
    micro = (ask[:, 0] * bid_s[:, 0] + bid[:, 0] * ask_s[:, 0]) / (bid_s[:, 0] + ask_s[:, 0])
    x[:, FI.MID_PRICE] = mid
    x[:, FI.SPREAD] = ask[:, 0] - bid[:, 0]
    x[:, FI.SPREAD_BPS] = x[:, FI.SPREAD] / mid * 1e4
    x[:, FI.TOTAL_BID_VOLUME] = total_bid
    x[:, FI.TOTAL_ASK_VOLUME] = total_ask
    x[:, FI.VOLUME_IMBALANCE] = (total_bid - total_ask) / (total_bid + total_ask)
    x[:, FI.WEIGHTED_MID_PRICE] = micro
    x[:, FI.PRICE_IMPACT] = np.abs(mid - micro)


def _rates(x: np.ndarray, s: np.ndarray, flow: np.ndarray, activity: np.ndarray) -> None:
    """Columns 48-59: per-second add/cancel/trade rates by side and the flows made from them."""
    for side, sign, col in (("BID", 1.0, 0), ("ASK", -1.0, 3)):
        add = 40 * activity * np.exp(0.3 * s[:, col] + 0.2 * sign * flow)
        x[:, FI[f"ADD_RATE_{side}"]] = add
        x[:, FI[f"CANCEL_RATE_{side}"]] = 0.85 * add * np.exp(0.2 * s[:, col + 1] - 0.35 * sign * flow)
        x[:, FI[f"TRADE_RATE_{side}"]] = 4 * activity * np.exp(0.4 * s[:, col + 2] - 0.3 * sign * flow)
    add_b, add_a = x[:, FI.ADD_RATE_BID], x[:, FI.ADD_RATE_ASK]
    can_b, can_a = x[:, FI.CANCEL_RATE_BID], x[:, FI.CANCEL_RATE_ASK]
    trd_b, trd_a = x[:, FI.TRADE_RATE_BID], x[:, FI.TRADE_RATE_ASK]
    x[:, FI.NET_ORDER_FLOW] = (add_b - add_a) / (add_b + add_a)
    x[:, FI.NET_CANCEL_FLOW] = (can_a - can_b) / (can_a + can_b)
    x[:, FI.NET_TRADE_FLOW] = (trd_a - trd_b) / (trd_a + trd_b)
    x[:, FI.AGGRESSIVE_ORDER_RATIO] = (trd_a + trd_b) / (trd_a + trd_b + add_a + add_b)
    x[:, FI.ORDER_FLOW_VOLATILITY] = 0.2 * np.exp(0.3 * s[:, 6])
    x[:, FI.FLOW_REGIME_INDICATOR] = np.clip(10 * _ar1(0.05 * x[:, FI.NET_ORDER_FLOW], 0.95), -10, 10)


def _order_stats(x: np.ndarray, s: np.ndarray, flow: np.ndarray, activity: np.ndarray) -> None:
    """Columns 60-83: order-size distribution, queue and lifetime statistics (plausible noise)."""
    mu, spread = np.log(100) + 0.3 * s[:, 7], 0.9
    for col, z in zip((FI.SIZE_P25, FI.SIZE_P50, FI.SIZE_P75, FI.SIZE_P90), (-0.674, 0.0, 0.674, 1.2816)):
        x[:, col] = np.rint(np.exp(mu + z * spread))
    sizes = _sizes(x)
    shares = sizes / sizes.sum(axis=1, keepdims=True)
    x[:, FI.SIZE_ZSCORE] = s[:, 8]
    x[:, FI.LARGE_ORDER_RATIO] = 1 / (1 + np.exp(2.5 - 0.5 * s[:, 9]))
    x[:, FI.SIZE_SKEWNESS] = 2 + 0.5 * s[:, 10]
    x[:, FI.SIZE_CONCENTRATION] = np.sum(shares**2, axis=1)
    x[:, FI.ORDERS_PER_LEVEL] = sizes.mean(axis=1) / x[:, FI.SIZE_P50]
    x[:, FI.LEVEL_CONCENTRATION] = shares[:, 0] + shares[:, 10]
    x[:, FI.DEPTH_TICKS_BID] = np.rint((x[:, FI.BID_PRICE_L0] - x[:, FI.BID_PRICE_L9]) / TICK)
    x[:, FI.DEPTH_TICKS_ASK] = np.rint((x[:, FI.ASK_PRICE_L9] - x[:, FI.ASK_PRICE_L0]) / TICK)
    x[:, FI.LARGE_ORDER_FREQUENCY] = 0.4 * activity * x[:, FI.LARGE_ORDER_RATIO]
    x[:, FI.LARGE_ORDER_IMBALANCE] = np.tanh(0.3 * flow + 0.5 * s[:, 11])
    x[:, FI.MODIFICATION_SCORE] = 0.1 * np.exp(0.3 * s[:, 12])
    x[:, FI.ICEBERG_PROXY] = 1 / (1 + np.exp(3 - 0.5 * s[:, 13]))
    x[:, FI.AVG_ORDER_AGE] = 30 * np.exp(0.4 * s[:, 14])
    x[:, FI.MEDIAN_ORDER_LIFETIME] = 5 * np.exp(0.5 * s[:, 15])
    x[:, FI.AVG_FILL_RATIO] = 1 / (1 + np.exp(1 - 0.3 * s[:, 16]))
    x[:, FI.AVG_TIME_TO_FIRST_FILL] = 8 * np.exp(0.4 * s[:, 17])
    adds = x[:, FI.ADD_RATE_BID] + x[:, FI.ADD_RATE_ASK]
    x[:, FI.CANCEL_TO_ADD_RATIO] = np.clip((x[:, FI.CANCEL_RATE_BID] + x[:, FI.CANCEL_RATE_ASK]) / adds, 0, 10)
    x[:, FI.ACTIVE_ORDER_COUNT] = np.rint(20 * x[:, FI.ORDERS_PER_LEVEL])


def _signals(rng: np.random.Generator, x: np.ndarray, s: np.ndarray, flow: np.ndarray) -> None:
    """Columns 84-91: TRUE_OFI is the flow plus noise, in shares; the rest follow the book."""
    top_depth = (x[:, FI.BID_SIZE_L0] + x[:, FI.ASK_SIZE_L0]) / 2
    x[:, FI.TRUE_OFI] = np.rint(150 * (flow + OFI_NOISE * rng.standard_normal(len(flow))))
    x[:, FI.DEPTH_NORM_OFI] = x[:, FI.TRUE_OFI] / top_depth
    x[:, FI.EXECUTED_PRESSURE] = x[:, FI.TRADE_RATE_ASK] - x[:, FI.TRADE_RATE_BID]
    mid = x[:, FI.MID_PRICE]
    x[:, FI.SIGNED_MP_DELTA_BPS] = (x[:, FI.WEIGHTED_MID_PRICE] - mid) / mid * 1e4
    x[:, FI.TRADE_ASYMMETRY] = np.tanh(0.2 * flow + 0.5 * s[:, 18])
    x[:, FI.CANCEL_ASYMMETRY] = np.tanh(0.15 * flow + 0.5 * s[:, 19])
    x[:, FI.FRAGILITY_SCORE] = top_depth / _sizes(x).mean(axis=1)
    x[:, FI.DEPTH_ASYMMETRY] = np.log(x[:, FI.TOTAL_BID_VOLUME] / x[:, FI.TOTAL_ASK_VOLUME])


def _simulate_day(rng: np.random.Generator, spec: _Spec, price: float) -> tuple[_SimDay, float]:
    """One day: ``rows + margin`` rows simulated, labelled, trimmed to ``rows``; returns the next
    day's opening price too (the close with a small overnight gap)."""
    n = spec.rows + spec.margin
    dt, regime = _session_clock(rng, n)
    flow_all, log_mid, scale = _latent(rng, n, spec.lag, regime, price, spec.signal)
    flow = flow_all[spec.lag:]
    locked = rng.random(n) < 0.003
    x = np.zeros((n, FEATURE_COUNT), order="F")  # built column by column
    _raw_book(x, *_book_ticks(rng, log_mid, locked), *_book_sizes(rng, flow))
    noise = _smooth_noise(rng, n, 20)
    activity = _REGIME_ACTIVITY[regime.astype(int)]
    _rates(x, noise, flow, activity)
    _order_stats(x, noise, flow, activity)
    _signals(rng, x, noise, flow)
    x[:, FI.BOOK_VALID] = ~locked
    x[:, FI.TIME_REGIME] = regime
    x[:, FI.DT_SECONDS] = dt
    labels = compute_labels(x[:, FI.MID_PRICE], spec.horizons, spec.smoothing, spec.threshold)
    expected = _expected_returns(flow_all, log_mid, x[:, FI.MID_PRICE], scale, spec)
    keep = slice(spec.smoothing, spec.smoothing + spec.rows)
    features = np.ascontiguousarray(_finish_rows(rng, x[keep], spec))
    kept = labels[keep] if spec.signal else labels[keep][rng.permutation(spec.rows)]  # no signal: no past in the labels
    sim = _SimDay(features, kept, expected[keep], gate_rows(features).row_ok, x[:, FI.MID_PRICE].copy())
    return sim, float(np.exp(log_mid[-1] + rng.normal(0, 0.005)))


def _finish_rows(rng: np.random.Generator, x: np.ndarray, spec: _Spec) -> np.ndarray:
    """The exported rows' gates and version: an MBO warm-up, rare invalidity events, the schema
    column, the schema-2.0 sign, and NaN in rows failing BOOK_VALID when asked."""
    n = len(x)
    warmup = max(5, round(0.015 * n))
    x[:warmup, FI.ADD_RATE_BID:FI.ACTIVE_ORDER_COUNT + 1] = 0.0
    x[:, FI.MBO_READY] = np.arange(n) >= warmup
    events = rng.random(n) < 0.002
    x[:, FI.INVALIDITY_DELTA] = np.where(events, 1 + rng.poisson(1.0, n), 0)
    x[:, FI.SCHEMA_VERSION] = 0.0 if spec.schema == "3.0" else float(spec.schema)
    if spec.schema == "2.0":
        x[:, list(SIGN_FLIP_SCHEMA_2_0)] *= -1
    if spec.nan_in_gated:
        invalid = ~gate_rows(x, mbo_ready=False, invalidity=False).row_ok
        x[np.ix_(invalid, [FI.SPREAD_BPS, FI.SIGNED_MP_DELTA_BPS, FI.DEPTH_NORM_OFI])] = np.nan
    return x


# --------------------------------------------------------------------------- oracle


def _expected_returns(flow_all: np.ndarray, log_mid: np.ndarray, mid: np.ndarray, scale: float,
                      spec: _Spec) -> np.ndarray:
    """(n, H) expected smoothed return at each row given the latent flow and mid up to that row.

    E[flow_{t+m}] = phi^m flow_t, so the expected drift i rows ahead is
    scale / L * (sum of the known flow in its window + flow_t * sum of phi^m over the unknown
    part); the past window of the label is the observed mid, as the label's.
    """
    lag, k, phi = spec.lag, spec.smoothing, FLOW_PERSISTENCE
    n = len(log_mid)
    sums = np.concatenate([[0.0], np.cumsum(flow_all)])
    now = np.arange(n) + lag
    flow = flow_all[lag:]
    future = {h: np.zeros(n) for h in spec.horizons}
    drift = np.zeros(n)
    for i in range(1, max(spec.horizons) + 1):
        known = sums[now + 1] - sums[now + i - lag + 1] if i < lag else 0.0
        drift += scale / lag * (known + flow * np.sum(phi ** np.arange(max(1, i - lag + 1), i + 1)))
        for h in spec.horizons:
            if h - k <= i <= h:
                future[h] += np.exp(log_mid + drift)
    past = _trailing_mean(mid, k + 1)
    columns = []
    for h in spec.horizons:
        for j in range(h - k, 1):
            future[h] += np.roll(mid, -j)
        columns.append((future[h] / (k + 1) - past) / past)
    return np.stack(columns, axis=1)


def _trailing_mean(values: np.ndarray, width: int) -> np.ndarray:
    """mean(values[t-width+1 .. t]); the first width-1 rows average what there is."""
    sums = np.concatenate([[0.0], np.cumsum(values)])
    counts = np.minimum(np.arange(1, len(values) + 1), width)
    return (sums[1:] - sums[np.arange(1, len(values) + 1) - counts]) / counts


def _classify(expected: np.ndarray, cut: float) -> np.ndarray:
    return 1 + (expected > cut).astype(np.int64) - (expected < -cut).astype(np.int64)


def _oracle_macro_f1(days: dict[str, list[_SimDay]], n_horizons: int) -> list[float]:
    """Per horizon: fit the cut on train rows that pass the gates, score val + test (train if none)."""
    def rows(split_days, j):
        expected = np.concatenate([d.expected[d.usable, j] for d in split_days])
        return expected, np.concatenate([d.labels[d.usable, j] for d in split_days]).astype(np.int64)

    held_out = days["val"] + days["test"] or days["train"]
    scores = []
    for j in range(n_horizons):
        fit_e, fit_y = rows(days["train"], j)
        cuts = np.quantile(np.abs(fit_e), np.linspace(0.02, 0.98, 49))
        best = max(cuts, key=lambda c: classification_metrics(fit_y, _classify(fit_e, c))["macro_f1"])
        test_e, test_y = rows(held_out, j)
        scores.append(round(classification_metrics(test_y, _classify(test_e, best))["macro_f1"], 4))
    return scores


# --------------------------------------------------------------------------- writing


def _write_json(path: Path, value: dict) -> None:
    path.write_text(json.dumps(value, indent=2) + "\n")


def _labeling(spec: _Spec) -> dict:
    return {"horizons": list(spec.horizons), "smoothing": spec.smoothing, "threshold": spec.threshold}


def _window_ends(spec: _Spec) -> np.ndarray:
    """(M,) end rows of the windows of a windowed export: T-1, T-1+stride, ... < rows."""
    return np.arange(spec.window - 1, spec.rows, spec.stride)


def _seen_by_a_model(sim: _SimDay, spec: _Spec) -> _SimDay:
    """The day with ``usable`` limited to the rows a model predicts: every row of a flat export,
    the windows' end rows of a windowed one."""
    if spec.fmt == "flat":
        return sim
    ends = np.zeros(spec.rows, dtype=bool)
    ends[_window_ends(spec)] = True
    return dataclasses.replace(sim, usable=sim.usable & ends)


def _forward_prices(mid_path: np.ndarray, ends: np.ndarray, spec: _Spec) -> np.ndarray:
    """(M, k + max(horizons) + 1) float64: the simulated mid at rows e-k .. e+max(h) of each end
    row e (the simulation runs k rows before the day and its label margin after, so none is NaN)."""
    return mid_path[ends[:, None] + np.arange(spec.smoothing + max(spec.horizons) + 1)]


def _write_day(folder: Path, date: str, sim: _SimDay, spec: _Spec) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    signed = (sim.labels.astype(np.int8) - 1).astype(np.int8)
    meta = {
        "day": f"{date[:4]}-{date[4:6]}-{date[6:]}", "symbol": spec.symbol, "schema_version": spec.schema,
        "n_features": FEATURE_COUNT, "n_samples": spec.rows, "label_strategy": "tlob",
        "labeling": _labeling(spec), "normalization": {"applied": False}, "format": spec.fmt,
        "generator": "lobsearch.synth", "planted_lag": spec.lag,
    }
    if spec.fmt == "flat":
        np.save(folder / f"{date}_features.npy", sim.features)
        np.save(folder / f"{date}_labels.npy", signed)
    else:
        ends = _window_ends(spec)
        windows = np.lib.stride_tricks.sliding_window_view(sim.features.astype(np.float32), spec.window, axis=0)
        np.save(folder / f"{date}_sequences.npy", np.ascontiguousarray(windows[:: spec.stride].transpose(0, 2, 1)))
        np.save(folder / f"{date}_labels.npy", signed[ends])
        np.save(folder / f"{date}_forward_prices.npy", _forward_prices(sim.mid_path, ends, spec))
        _write_json(folder / f"{date}_horizons.json", _horizons_file(spec))
        meta.update(_windowed_metadata(spec, len(ends)))
    _write_json(folder / f"{date}_metadata.json", meta)


def _horizons_file(spec: _Spec) -> dict:
    return {"horizons": list(spec.horizons), "num_horizons": len(spec.horizons),
            "smoothing_window": spec.smoothing, "threshold_strategy": "Fixed"}


def _windowed_metadata(spec: _Spec, windows: int) -> dict:
    """The exporter's keys of a windowed day's metadata (and schema 3.0's)."""
    meta = {"n_sequences": windows, "window_size": spec.window, "sequence_length": spec.window,
            "stride": spec.stride, "tensor_format": None,
            "forward_prices": {"exported": True, "smoothing_window_offset": spec.smoothing,
                               "max_horizon": max(spec.horizons),
                               "n_columns": spec.smoothing + max(spec.horizons) + 1, "units": "USD"}}
    if spec.schema == "3.0":
        meta.update(contract_version="3.0", horizons=list(spec.horizons),
                    label_encoding={"format": "signed_int8", "values": [-1, 0, 1]},
                    provenance={"generator": "lobsearch.synth", "version": SYNTH_VERSION, "seed": spec.seed},
                    export_timestamp="2024-01-01T00:00:00+00:00")
    return meta


def _export_config(spec: _Spec) -> str:
    """The windowed export's ``export_config.toml``: the sequence and labels tables the exporter writes."""
    horizons = ", ".join(map(str, spec.horizons))
    return (f"[sequence]\nwindow_size = {spec.window}\nstride = {spec.stride}\n\n"
            f"[labels]\nstrategy = \"tlob\"\nhorizons = [{horizons}]\nsmoothing_window = {spec.smoothing}\n"
            f"threshold = {spec.threshold!r}\n")


def _manifest(spec: _Spec, dates: list[str], split_of: list[str], oracle: list[float]) -> dict:
    splits = {}
    for split in SPLITS:
        chosen = [d for d, s in zip(dates, split_of) if s == split]
        if chosen:
            splits[split] = {"days": len(chosen), "dates": chosen, "rows": len(chosen) * spec.rows}
    return {
        "symbol": spec.symbol, "feature_count": FEATURE_COUNT, "schema_version": spec.schema,
        "horizons": list(spec.horizons), "label_strategy": "tlob", "labeling": _labeling(spec),
        "format": spec.fmt, "splits": splits, "planted_lag": spec.lag, "planted_signal": spec.signal,
        **({"sequence_length": spec.window, "stride": spec.stride, "labeling_strategy": "tlob"}
           if spec.fmt == "windowed" else {}),
        **({"skipped_days": []} if spec.schema == "3.0" else {}),
        "planted_features": [FI(i).name for i in PLANTED_FEATURES],
        "oracle_macro_f1": {str(h): f1 for h, f1 in zip(spec.horizons, oracle)},
        "oracle_evaluated_on": [s for s in ("val", "test") if s in splits] or ["train"],
        "generator": {"name": "lobsearch.synth", "version": SYNTH_VERSION, "seed": spec.seed,
                      "days": spec.days, "rows": spec.rows},
    }


# --------------------------------------------------------------------------- demo and CLI


def demo_key() -> str:
    """12 hex chars naming the demo export's version: lobsearch, generator and demo size."""
    text = json.dumps([__version__, SYNTH_VERSION, DEMO_DAYS, DEMO_ROWS, DEMO_SEED, DEMO_LAG])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def demo_export(cache_root: str | Path | None = None) -> Path:
    """The demo export, generated once into ``<cache>/demo-<version-hash>/`` and then reused.

    ``cache`` is ``cache_root``, else ``$LOBSEARCH_CACHE``, else ``~/.cache/lobsearch``. The export
    is written to a temporary folder beside it and renamed into place, so a reader never sees a
    partial export and two concurrent callers both end with the same complete one.
    Raises DataError when the cache is not a folder lobsearch can create and write.
    """
    root = resolve_cache_root(cache_root)
    target = root / f"demo-{demo_key()}"
    if (target / MANIFEST_NAME).is_file():
        return target
    print(f"lobsearch: generating the demo export ({DEMO_DAYS} days x {DEMO_ROWS} rows) once, "
          f"into {target}", file=sys.stderr)
    scratch = Path(tempfile.mkdtemp(prefix=".demo-", dir=root))
    try:
        write_synthetic_export(scratch, days=DEMO_DAYS, rows=DEMO_ROWS, seed=DEMO_SEED, lag=DEMO_LAG)
        scratch.chmod(0o755)
        os.rename(scratch, target)
    except OSError:
        if not (target / MANIFEST_NAME).is_file():
            raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lobsearch.synth",
        description="Write a synthetic limit-order-book export in the day-file contract (98 features, "
                    "signed labels, metadata, manifest) with a planted signal: the mid drifts with the "
                    "mean latent order flow of the previous LAG rows, which TRUE_OFI shows with noise.")
    parser.add_argument("out_dir", nargs="?", metavar="OUT_DIR",
                        help="new or empty folder for the export (not with --demo)")
    parser.add_argument("--days", type=int, default=20, help="trading days (default: 20)")
    parser.add_argument("--rows", type=int, default=20000, help="rows per day (default: 20000)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; same seed, same files (default: 0)")
    parser.add_argument("--lag", type=int, default=20, help="planted look-back in rows (default: 20)")
    parser.add_argument("--signal", type=float, default=SIGNAL_SHARE, metavar="SHARE",
                        help="share of a row's return standard deviation the planted drift carries, in [0, 1) "
                             f"(default: {SIGNAL_SHARE}); 0: nothing to learn, labels independent of the rows "
                             "(each day's labels shuffled)")
    parser.add_argument("--splits", type=float, nargs=3, default=(0.6, 0.2, 0.2), metavar=("TRAIN", "VAL", "TEST"),
                        help="shares of whole days per split, chronological (default: 0.6 0.2 0.2)")
    parser.add_argument("--format", choices=_FORMATS, default="flat", dest="fmt",
                        help="flat: _features.npy (N, 98) float64; windowed: _sequences.npy "
                             "((N-T)//stride+1, T, 98) float32, as the exporter writes it (default: flat)")
    parser.add_argument("--window", type=int, default=100, help="T of the windowed format (default: 100)")
    parser.add_argument("--stride", type=int, default=1,
                        help="rows between the starts of consecutive windows of the windowed format (default: 1)")
    parser.add_argument("--schema", choices=_SCHEMAS, default="2.2",
                        help="schema version; 2.0 stores NET_CANCEL_FLOW and NET_TRADE_FLOW with the "
                             "opposite sign, 3.0 adds its metadata keys (default: 2.2)")
    parser.add_argument("--nan-in-gated", action="store_true",
                        help="write NaN into a few columns of the rows that fail BOOK_VALID")
    parser.add_argument("--demo", action="store_true",
                        help=f"generate the cached demo export once ({DEMO_DAYS} days x {DEMO_ROWS} rows, "
                             "in $LOBSEARCH_CACHE or ~/.cache/lobsearch) and print its path; the other "
                             "options are ignored")
    return parser


def main(argv: list[str] | None = None) -> int:
    """The CLI; prints the export's path, its splits and the oracle macro-F1 per horizon."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.demo == (args.out_dir is not None):
        parser.error("give either OUT_DIR or --demo")
    start = time.perf_counter()
    try:
        out = demo_export() if args.demo else write_synthetic_export(
            args.out_dir, days=args.days, rows=args.rows, seed=args.seed, lag=args.lag,
            splits=tuple(args.splits), fmt=args.fmt, window=args.window, schema=args.schema,
            nan_in_gated=args.nan_in_gated, stride=args.stride, signal=args.signal)
    except (ConfigError, DataError) as exc:
        parser.error(str(exc))
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    print(out)
    for split in (s for s in SPLITS if s in manifest["splits"]):
        info = manifest["splits"][split]
        print(f"  {split}: {info['days']} day(s), {info['rows']} rows")
    oracle = ", ".join(f"h={h}: {f1:.3f}" for h, f1 in manifest["oracle_macro_f1"].items())
    print(f"  planted lag {manifest['planted_lag']} rows; oracle macro-F1 {oracle}")
    print(f"  {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
