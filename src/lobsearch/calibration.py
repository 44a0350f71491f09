"""Calibration of class probabilities: scores, a reliability diagram and temperature scaling.

Probabilities are (M, 3) float arrays, one row per window (Down, Stable, Up), each row summing
to 1; labels are (M,) int class indices. Logits may be raw model outputs or log-probabilities:
softmax(z / T) is the same for both, since they differ by a constant per row.

Temperature scaling (Guo et al. 2017) divides the logits by one scalar T > 0 fitted on
validation days; it changes confidence, never the predicted class. The validation log loss is
convex in 1 / T, hence unimodal in log T, and a golden-section search on log T over
``TEMPERATURE_BOUNDS`` finds its minimum (an optimum beyond a bound is returned as the bound).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from lobsearch.contract import N_CLASSES
from lobsearch.errors import ConfigError, DataError
from lobsearch.metrics import log_loss

TEMPERATURE_BOUNDS = (0.05, 20.0)
"""The search interval of T: sharpening 20x to flattening 20x covers any useful correction."""

TEMPERATURE_TOLERANCE = 1e-5
"""Width in log T at which the golden-section search stops (T known to 0.001 %)."""

SUM_TOLERANCE = 1e-3
"""A probability row may miss 1 by this much (float32 softmax), as in ``metrics.log_loss``."""

DEFAULT_BINS = 15


class Reliability(NamedTuple):
    """A reliability diagram: per equal-width confidence bin b of [0, 1] (holding confidences in
    (b / B, (b + 1) / B]), the mean confidence, the accuracy and the count, each (B,).
    Confidence and accuracy are NaN in an empty bin (nothing to draw there)."""

    confidence: np.ndarray
    accuracy: np.ndarray
    count: np.ndarray


@dataclass(frozen=True)
class Calibration:
    """Scores on the evaluation windows before and after the temperature fitted on validation.

    before / after: ``{"log_loss": nats, "brier": in [0, 2], "ece": in [0, 1]}``.
    """

    temperature: float
    before: dict[str, float]
    after: dict[str, float]
    reliability_before: Reliability
    reliability_after: Reliability


def check_probs(probs: np.ndarray, name: str = "probs") -> np.ndarray:
    """``probs`` as a (M, 3) float64 array of finite probabilities whose rows sum to 1 within
    1e-3; raises DataError naming ``name``, the rule and the first bad row otherwise."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] != N_CLASSES or probs.shape[0] == 0:
        raise DataError(f"{name}: expected shape (M, {N_CLASSES}) with M >= 1, got {probs.shape}")
    bad = np.flatnonzero(~np.isfinite(probs).all(axis=1) | (probs < 0).any(axis=1) | (probs > 1).any(axis=1))
    if bad.size:
        raise DataError(f"{name}: every value must be a probability in [0, 1]; row {bad[0]} is {probs[bad[0]]}")
    sums = probs.sum(axis=1)
    bad = np.flatnonzero(np.abs(sums - 1.0) > SUM_TOLERANCE)
    if bad.size:
        raise DataError(f"{name}: rows must sum to 1 (softmax outputs); row {bad[0]} sums to {sums[bad[0]]:.6g}")
    return probs


def brier(probs: np.ndarray, y: np.ndarray) -> float:
    """Mean over windows of sum over classes of (p - onehot)^2, in [0, 2]."""
    probs, y = _checked(probs, y)
    onehot = np.eye(N_CLASSES)[y]
    return float(((probs - onehot) ** 2).sum(axis=1).mean())


def reliability(probs: np.ndarray, y: np.ndarray, bins: int = DEFAULT_BINS) -> Reliability:
    """Confidence (max probability) against accuracy (argmax == y) in ``bins`` equal bins."""
    probs, y = _checked(probs, y)
    _check_bins(bins)
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == y).astype(np.float64)
    which = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.bincount(which, weights=confidence, minlength=bins) / count
        accuracy = np.bincount(which, weights=correct, minlength=bins) / count
    return Reliability(mean_confidence, accuracy, count)


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, bins: int = DEFAULT_BINS) -> float:
    """Sum over bins of (count / M) * |accuracy - confidence|, in [0, 1] (see ``reliability``)."""
    confidence, accuracy, count = reliability(probs, y, bins)
    used = count > 0
    return float((count[used] / count.sum() * np.abs(accuracy[used] - confidence[used])).sum())


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of (M, C) logits, computed stably."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def apply_temperature(logits: np.ndarray, temperature: float) -> np.ndarray:
    """(M, 3) probabilities softmax(logits / T); raises ConfigError unless T is finite and > 0."""
    if not (isinstance(temperature, (int, float, np.number)) and math.isfinite(temperature) and temperature > 0):
        raise ConfigError("apply_temperature", [f"temperature must be a finite number > 0, got {temperature!r}"])
    return softmax(_logits(logits) / float(temperature))


def fit_temperature(
    logits: np.ndarray, y: np.ndarray, *, bounds: tuple[float, float] = TEMPERATURE_BOUNDS
) -> float:
    """The T in ``bounds`` minimising the log loss of softmax(logits / T) against ``y`` (M,).

    logits: (M, 3) logits or log-probabilities of validation windows (not probabilities).
    Raises ConfigError for bounds other than 0 < low < high < inf; DataError for bad inputs.
    """
    low, high = bounds
    if not (math.isfinite(low) and math.isfinite(high) and 0 < low < high):
        raise ConfigError("fit_temperature", [f"bounds must satisfy 0 < low < high < inf, got {bounds!r}"])
    logits = _logits(logits)
    y = _labels(y, logits.shape[0])
    log_t = _golden_section(lambda u: _nll(logits, y, math.exp(u)), math.log(low), math.log(high))
    return float(min(max(math.exp(log_t), low), high))


def calibrate(
    logits_val: np.ndarray, y_val: np.ndarray, logits_eval: np.ndarray, y_eval: np.ndarray, *, bins: int = DEFAULT_BINS
) -> Calibration:
    """Fit T on the validation windows, then score the evaluation (test) windows before and after."""
    temperature = fit_temperature(logits_val, y_val)
    raw, scaled = softmax(_logits(logits_eval, "logits_eval")), apply_temperature(logits_eval, temperature)
    return Calibration(temperature, _scores(raw, y_eval, bins), _scores(scaled, y_eval, bins),
                       reliability(raw, y_eval, bins), reliability(scaled, y_eval, bins))


def _scores(probs: np.ndarray, y: np.ndarray, bins: int) -> dict[str, float]:
    """Log loss (``metrics.log_loss``), Brier score and ECE of ``probs`` on labels ``y``."""
    probs, y = _checked(probs, y)
    return {"log_loss": log_loss(y, probs), "brier": brier(probs, y), "ece": expected_calibration_error(probs, y, bins)}


def _nll(logits: np.ndarray, y: np.ndarray, temperature: float) -> float:
    """Mean negative log-likelihood (nats) of softmax(logits / T)."""
    z = logits / temperature
    top = z.max(axis=1)
    log_norm = top + np.log(np.exp(z - top[:, None]).sum(axis=1))
    return float((log_norm - z[np.arange(y.size), y]).mean())


def _golden_section(f, low: float, high: float) -> float:
    """The minimiser of a unimodal f on [low, high], to TEMPERATURE_TOLERANCE."""
    ratio = (math.sqrt(5.0) - 1.0) / 2.0
    c, d = high - ratio * (high - low), low + ratio * (high - low)
    fc, fd = f(c), f(d)
    while high - low > TEMPERATURE_TOLERANCE:
        if fc <= fd:
            high, d, fd = d, c, fc
            c = high - ratio * (high - low)
            fc = f(c)
        else:
            low, c, fc = c, d, fd
            d = low + ratio * (high - low)
            fd = f(d)
    return (low + high) / 2.0


def _logits(logits: np.ndarray, name: str = "logits") -> np.ndarray:
    """(M, 3) finite float64 logits; probabilities passed by mistake are an error."""
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim != 2 or logits.shape[1] != N_CLASSES or logits.shape[0] == 0:
        raise DataError(f"{name}: expected shape (M, {N_CLASSES}) with M >= 1, got {logits.shape}")
    if not np.isfinite(logits).all():
        raise DataError(f"{name}: every value must be finite (row {np.flatnonzero(~np.isfinite(logits).all(1))[0]})")
    if ((logits >= 0) & (logits <= 1)).all() and np.allclose(logits.sum(axis=1), 1.0, atol=1e-6):
        raise DataError(f"{name}: every row is a probability distribution; pass logits or np.log(probs)")
    return logits


def _checked(probs: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    probs = check_probs(probs)
    return probs, _labels(y, probs.shape[0])


def _labels(y: np.ndarray, size: int) -> np.ndarray:
    y = np.asarray(y)
    if y.shape != (size,) or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"y: expected ({size},) integer class indices, got shape {y.shape} dtype {y.dtype}")
    outside = y[(y < 0) | (y >= N_CLASSES)]
    if outside.size:
        raise DataError(f"y: class indices must be in [0, {N_CLASSES}), got {outside[0]} (drop MISSING_LABEL rows)")
    return y.astype(np.int64)


def _check_bins(bins: int) -> None:
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 1:
        raise ConfigError("reliability", [f"bins must be an integer >= 1, got {bins!r}"])
