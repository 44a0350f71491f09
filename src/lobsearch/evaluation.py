"""The trained model judged in trading terms: backtests net of costs, calibration, the verdict.

The recipe hands each split's predictions over as a ``Seen`` (plain numpy, windows in time
order); this module needs no torch. Three reports, each a JSON-plain dict that results.json,
the summary and the HTML report read:

- ``trading_report``: ``trading.backtest`` of the model (argmax, and with the action threshold
  tau tuned on validation and applied once to test), the naive predictors (always Stable, the
  training majority class, the previous known label) and the oracle (the true label of each
  window: the ceiling), on raw MID_PRICE and SPREAD, ``fee_bps`` per side. A window whose entry
  or exit row has no usable quote (mid not > 0 or spread not >= 0: a gated row) opens no
  position for any predictor; they are counted as ``unpriced``.
- ``calibration_report``: log loss, Brier score and ECE of the model on the evaluation split
  before and after the temperature fitted on validation (``calibration.calibrate``), with both
  reliability diagrams.
- ``verdict_report``: whether the macro-F1 lift over the best naive baseline (majority or
  previous known label, as ``metrics.lift``) is distinguishable from zero on the test windows:
  a block-bootstrap interval (``selection.lift_interval``) read by ``selection.verdict``. Too
  few windows for a bootstrap, or no test split, is "no lift distinguishable from zero".

``format_trading``, ``format_calibration`` and ``verdict_line`` turn the reports into the lines
the search's summary and ``python -m lobsearch.train`` print.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lobsearch.calibration import calibrate
from lobsearch.contract import N_CLASSES, Label
from lobsearch.errors import DataError
from lobsearch.files import plain
from lobsearch.selection import NEGATIVE, block_length, lift_interval, verdict
from lobsearch.trading import (
    DEFAULT_TAU_GRID,
    Quotes,
    backtest,
    naive_predictions,
    predicted_class,
    tune_threshold,
)

PREDICTORS = ("model", "model_tau", "stable", "majority", "previous", "oracle")
"""The rows of the trading table, in order; ``model_tau`` is the model with the tuned threshold."""

PREDICTOR_NAMES = {
    "model": "model",
    "model_tau": "model, p >= tau",
    "stable": "always Stable",
    "majority": "majority class",
    "previous": "previous known label",
    "oracle": "oracle (true label)",
}

TRADING_FIGURES = ("trades_per_day", "net_bps_per_trade", "hit_rate", "net_bps_per_day", "max_drawdown_bps",
                   "coverage")
"""The figures of each predictor that the summary and the report show, in order."""

LOG_FLOOR = 1e-12
"""Probabilities are floored here before the log that makes them logits for temperature scaling."""


@dataclass(frozen=True)
class Seen:
    """One split's evaluation, per window (M,) in time order: y_true (int64 classes), y_pred
    (int64, the model's argmax), probs (M, 3) softmax probabilities, y_prev (int64, the label
    known at the window's end, MISSING_LABEL where none) and ends (int64 global end rows into
    the split's days, as ``WindowSet.ends``)."""

    y_true: np.ndarray
    y_pred: np.ndarray
    probs: np.ndarray
    y_prev: np.ndarray
    ends: np.ndarray


def trading_report(
    seen: Mapping[str, Seen],
    quotes: Mapping[str, Quotes],
    *,
    horizon: int,
    fee_bps: float,
    majority_class: int,
    tau_grid: Sequence[float] | None = None,
    class_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Backtests of every predictor (``PREDICTORS``) on each split of ``seen`` (val, test).

    quotes: the Quotes of each split's days (rows as ``Seen.ends`` count them); horizon: the
    label's horizon in rows (how long a position is held); fee_bps: bps of notional per side.
    tau is tuned on ``seen["val"]`` over ``tau_grid`` (None: ``trading.DEFAULT_TAU_GRID``) and
    applied to every split. Returns {"fee_bps", "horizon", "tau" (None when the model never acts
    on validation), "tau_note", "val_tau_coverage", "classes", "unpriced": {split: windows},
    split: {predictor: ``Backtest.summary()``}}; the val row of ``model_tau`` is the tuning's own
    (in-sample) score. Raises ConfigError for bad settings.
    """
    grid = DEFAULT_TAU_GRID if tau_grid is None else tuple(tau_grid)
    priced = {s: _priced(v.ends, quotes[s], horizon) for s, v in seen.items()}
    probs = {s: _stable_where_unpriced(v.probs, priced[s]) for s, v in seen.items()}
    choice, tau_note = _tune(probs["val"], seen["val"].ends, quotes["val"], horizon, fee_bps, grid)
    out: dict[str, Any] = {
        "fee_bps": float(fee_bps), "horizon": int(horizon), "tau": None if choice is None else choice.tau,
        "tau_grid": list(grid), "tau_note": tau_note,
        "val_tau_coverage": None if choice is None else choice.coverage,
        "classes": list(class_names) if class_names else None,
        "unpriced": {s: int(np.count_nonzero(~p)) for s, p in priced.items()},
    }
    tau = None if choice is None else choice.tau
    for split, view in seen.items():
        out[split] = _backtests(view, probs[split], priced[split], quotes[split], horizon, fee_bps, majority_class, tau)
    return plain(out, finite=True)


def _backtests(view: Seen, probs: np.ndarray, priced: np.ndarray, quotes: Quotes, horizon: int, fee_bps: float,
               majority_class: int, tau: float | None) -> dict[str, dict[str, float]]:
    """{predictor: ``Backtest.summary()``} of one split, in ``PREDICTORS`` order; every
    predictor stays flat on the unpriced windows (``probs`` already say Stable there)."""
    pred, prob = predicted_class(probs)
    flat = int(Label.STABLE)
    naive = naive_predictions(view.y_prev, majority_class)
    runs = {"model": pred, **{k: np.where(priced, p, flat) for k, p in naive.items()},
            "oracle": np.where(priced, view.y_true, flat)}
    table = {name: backtest(p, view.ends, quotes, horizon, fee_bps=fee_bps).summary() for name, p in runs.items()}
    if tau is not None:
        table["model_tau"] = backtest(pred, view.ends, quotes, horizon, fee_bps=fee_bps, prob=prob, tau=tau).summary()
    return {name: table[name] for name in PREDICTORS if name in table}


def _tune(probs, ends, quotes, horizon, fee_bps, grid) -> tuple[Any, str | None]:
    """The threshold choice on validation, or (None, why) when no tau of the grid acts."""
    try:
        return tune_threshold(probs, ends, quotes, horizon, fee_bps=fee_bps, grid=grid), None
    except DataError as error:
        return None, f"no threshold: {error}"


def net_bps_per_day(pred: np.ndarray, ends: np.ndarray, quotes: Quotes, horizon: int, fee_bps: float) -> float:
    """Net basis points per day of trading the predictions ``pred`` (M,) of windows ending at
    ``ends`` (M,) as ``trading_report``'s "model" row does (argmax, no threshold, flat where a
    window has no usable quote): the ``val_net_bps_per_day`` a trial reports every epoch."""
    priced = _priced(ends, quotes, horizon)
    flat = np.where(priced, pred, int(Label.STABLE))
    return float(backtest(flat, ends, quotes, horizon, fee_bps=fee_bps).summary()["net_bps_per_day"])


def _priced(ends: np.ndarray, quotes: Quotes, horizon: int) -> np.ndarray:
    """(M,) bool: ``Quotes.priced`` of the windows ending at ``ends``."""
    return quotes.priced(np.asarray(ends, dtype=np.int64), horizon)


def _stable_where_unpriced(probs: np.ndarray, priced: np.ndarray) -> np.ndarray:
    """``probs`` with the rows of unpriced windows set to a certain Stable, so that no threshold acts there."""
    out = np.asarray(probs, dtype=np.float64).copy()
    out[~priced] = np.eye(N_CLASSES)[int(Label.STABLE)]
    return out


def calibration_report(val: Seen, evaluated: Seen, *, split: str) -> dict[str, Any]:
    """Log loss (nats), Brier score and ECE of ``evaluated`` (the ``split`` named) before and
    after the temperature fitted on ``val``, with the reliability diagrams (per bin: mean
    confidence, accuracy, count; None in an empty bin). ``in_sample`` is True when the
    evaluated split is validation itself. Raises DataError for non-finite probabilities."""
    fitted = calibrate(_logits(val.probs), val.y_true, _logits(evaluated.probs), evaluated.y_true)
    return plain({
        "split": split, "in_sample": split == "val", "temperature": fitted.temperature,
        "before": fitted.before, "after": fitted.after,
        "reliability_before": fitted.reliability_before._asdict(),
        "reliability_after": fitted.reliability_after._asdict(),
    }, finite=True)


def _logits(probs: np.ndarray) -> np.ndarray:
    """Log-probabilities of (M, 3) ``probs``; DataError naming the first row that is not finite."""
    probs = np.asarray(probs, dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(probs).all(axis=1))
    if bad.size:
        raise DataError(f"calibration: the model's probabilities are not finite (row {bad[0]}: {probs[bad[0]]}); "
                        "a diverged model cannot be calibrated")
    return np.log(np.maximum(probs, LOG_FLOOR))


def verdict_report(
    test: Seen | None,
    *,
    majority_class: int,
    window: int,
    horizon: int,
    smoothing: int,
    stride: int,
    n_boot: int = 2000,
    level: float = 0.95,
) -> dict[str, Any]:
    """The verdict on the macro-F1 lift of the model over the best naive baseline on ``test``;
    its ``y_pred`` may be (r, M), one row per seed of the same configuration (the interval then
    resamples the seeds too).

    window, horizon, smoothing and stride (rows) size the bootstrap blocks
    (``selection.block_length``). Returns {"line" (begins ``verdict:``), "distinguishable",
    "split", and, when a bootstrap ran, "estimate", "low", "high", "level", "block",
    "method"}. Without a test split or with fewer than ``selection.MIN_BLOCKS`` blocks the
    line says NEGATIVE and why.
    """
    if test is None:
        return no_verdict("the export has no test split, and a verdict needs windows the search never chose on")
    naive = naive_predictions(test.y_prev, majority_class)
    block = block_length(int(test.y_true.size), window=int(window), horizon=int(horizon),
                         smoothing=int(smoothing), stride=int(stride))
    try:
        interval = lift_interval(test.y_true, test.y_pred, {k: naive[k] for k in ("majority", "previous")},
                                 block=block, n_boot=n_boot, level=level)
    except DataError as error:
        return no_verdict(f"the test windows are too few for a block bootstrap ({error})")
    found = verdict(interval)
    return plain({
        "line": found.line, "distinguishable": found.distinguishable, "split": "test",
        "estimate": interval.estimate, "low": interval.low, "high": interval.high, "level": interval.level,
        "block": block, "method": interval.method,
    }, finite=True)


def no_verdict(why: str) -> dict[str, Any]:
    """A NEGATIVE verdict that says ``why`` there is nothing to judge (no test split, no model)."""
    return {"line": f"verdict: {NEGATIVE}: {why}", "distinguishable": False, "split": None}


# ---- what the summary prints ---------------------------------------------------------------


def format_trading(trading: dict[str, Any] | None) -> list[str]:
    """The trading table of a ``trading_report`` as printable lines; a report that is
    {"note": why} (the export has no raw quotes, eval.trading is off) is one line saying why."""
    if not trading:
        return ["trading: not evaluated"]
    if trading.get("note"):
        return [f"trading: none ({trading['note']})"]
    tau = trading.get("tau")
    tau_text = (f"tau {tau:g} tuned on val (val coverage {trading['val_tau_coverage']:.3f})" if tau is not None
                else trading.get("tau_note") or "no threshold")
    lines = [f"trading, net of costs: fee {trading['fee_bps']:g} bps per side plus half the spread each way, "
             f"held {trading['horizon']} rows; {tau_text}",
             f"  {'split':<5} {'predictor':<22} {'trades/day':>10} {'net bps/trade':>13} {'hit rate':>8} "
             f"{'net bps/day':>11} {'max DD bps':>10} {'coverage':>8}"]
    for split in ("val", "test"):
        for name, row in (trading.get(split) or {}).items():
            values = [row.get(k) for k in TRADING_FIGURES]
            if any(v is None for v in values):
                continue
            per_day, per_trade, hit, net_day, drawdown, coverage = values
            lines.append(f"  {split:<5} {PREDICTOR_NAMES.get(name, name):<22} {per_day:>10.2f} {per_trade:>+13.2f} "
                         f"{hit:>8.3f} {net_day:>+11.2f} {drawdown:>10.2f} {coverage:>8.3f}")
    unpriced = {s: n for s, n in (trading.get("unpriced") or {}).items() if n}
    if unpriced:
        lines.append("  windows without a usable quote at entry or exit (no position): "
                     + ", ".join(f"{s} {n:,}" for s, n in unpriced.items()))
    return lines


def format_calibration(calibration: dict[str, Any] | None) -> str:
    """One line: log loss, Brier and ECE before -> after the temperature, or the note."""
    if not calibration:
        return "calibration: not evaluated"
    if calibration.get("note"):
        return f"calibration: none ({calibration['note']})"
    before, after = calibration["before"], calibration["after"]
    where = " (in sample: no test split)" if calibration.get("in_sample") else ""
    scores = ", ".join(f"{name} {before[key]:.4f} -> {after[key]:.4f}"
                       for key, name in (("log_loss", "log loss"), ("brier", "Brier"), ("ece", "ECE")))
    return (f"calibration on {calibration['split']}{where}: {scores} "
            f"(temperature {calibration['temperature']:.3f} fitted on val)")


def verdict_line(report: dict[str, Any] | None) -> str:
    """The ``verdict:`` line of an evaluation (a NEGATIVE one when there is none)."""
    if report and report.get("verdict"):
        return report["verdict"]["line"]
    return no_verdict("no model was evaluated")["line"]
