"""Calibration scores by hand, and temperature scaling against a planted temperature."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lobsearch.calibration import (
    TEMPERATURE_BOUNDS,
    apply_temperature,
    brier,
    calibrate,
    check_probs,
    expected_calibration_error,
    fit_temperature,
    reliability,
    softmax,
)
from lobsearch.errors import ConfigError, DataError
from lobsearch.metrics import log_loss as metrics_log_loss

TWO = np.array([[0.5, 0.25, 0.25], [0.1, 0.8, 0.1]])


def planted(seed: int, n: int, temperature: float) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels drawn from softmax(logits / temperature): T is the right answer."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 2.0, (n, 3))
    p = softmax(logits / temperature)
    y = (rng.random(n)[:, None] > np.cumsum(p, axis=1)).sum(axis=1)
    return logits, y


def test_log_loss_and_brier_by_hand():
    y = np.array([0, 1])
    assert metrics_log_loss(y, TWO) == pytest.approx((math.log(2) - math.log(0.8)) / 2)
    # (0.5 - 1)^2 + 0.25^2 + 0.25^2 = 0.375; 0.1^2 + 0.2^2 + 0.1^2 = 0.06
    assert brier(TWO, y) == pytest.approx((0.375 + 0.06) / 2)
    assert brier(np.eye(3), np.arange(3)) == 0.0
    assert brier(np.eye(3), np.array([1, 2, 0])) == 2.0


def test_reliability_and_ece_by_hand():
    probs = np.array([[0.85, 0.1, 0.05], [0.05, 0.85, 0.1], [0.65, 0.3, 0.05], [0.3, 0.05, 0.65]])
    y = np.array([0, 1, 1, 2])  # both 0.85 right, one 0.65 right and one wrong
    confidence, accuracy, count = reliability(probs, y, bins=10)
    np.testing.assert_array_equal(count, [0, 0, 0, 0, 0, 0, 2, 0, 2, 0])
    assert confidence[6] == pytest.approx(0.65) and accuracy[6] == 0.5
    assert confidence[8] == pytest.approx(0.85) and accuracy[8] == 1.0
    assert np.isnan(confidence[0]) and np.isnan(accuracy[9])
    # 2/4 * |1 - 0.85| + 2/4 * |0.5 - 0.65|
    assert expected_calibration_error(probs, y, bins=10) == pytest.approx(0.15)


def test_a_certain_prediction_lands_in_the_last_bin():
    _, accuracy, count = reliability(np.eye(3), np.arange(3), bins=15)
    assert count[-1] == 3 and count.sum() == 3 and accuracy[-1] == 1.0
    assert expected_calibration_error(np.eye(3), np.arange(3)) == 0.0


def test_labels_drawn_from_the_probabilities_are_nearly_calibrated():
    logits, y = planted(0, 40_000, 1.0)
    probs = softmax(logits)
    assert expected_calibration_error(probs, y) < 0.015
    assert expected_calibration_error(softmax(3 * logits), y) > 0.1, "overconfidence must show"


def test_the_fitted_temperature_recovers_the_planted_one():
    logits, y = planted(1, 30_000, 2.5)
    fitted = fit_temperature(logits, y)
    assert fitted == pytest.approx(2.5, rel=0.05)
    grid = np.exp(np.linspace(np.log(2.2), np.log(2.8), 121))
    nll = [metrics_log_loss(y, softmax(logits / t)) for t in grid]
    assert fitted == pytest.approx(grid[int(np.argmin(nll))], rel=2e-3)


def test_log_probabilities_and_scaled_logits_give_the_matching_temperature():
    logits, y = planted(2, 5_000, 1.7)
    fitted = fit_temperature(logits, y)
    log_probs = np.log(softmax(logits))
    assert fit_temperature(log_probs, y) == pytest.approx(fitted, rel=1e-4)
    assert fit_temperature(3.0 * logits, y) == pytest.approx(3.0 * fitted, rel=1e-4)


def test_an_optimum_beyond_a_bound_is_the_bound():
    logits = np.array([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 2.0]])
    # every argmax right: the sharper the better, down to the lower bound
    assert fit_temperature(logits, np.arange(3)) == pytest.approx(TEMPERATURE_BOUNDS[0], rel=1e-4)
    assert fit_temperature(logits, np.arange(3), bounds=(0.5, 3.0)) == pytest.approx(0.5, rel=1e-4)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**16), n=st.integers(5, 200), scale=st.floats(0.2, 5.0))
def test_temperature_never_worsens_the_validation_log_loss_nor_moves_the_argmax(seed, n, scale):
    rng = np.random.default_rng(seed)
    logits, y = rng.normal(0, scale, (n, 3)), rng.integers(0, 3, n)
    fitted = fit_temperature(logits, y)
    after = apply_temperature(logits, fitted)
    assert metrics_log_loss(y, after) <= metrics_log_loss(y, softmax(logits)) + 1e-7
    np.testing.assert_array_equal(after.argmax(axis=1), logits.argmax(axis=1))
    np.testing.assert_allclose(after.sum(axis=1), 1.0)


def test_calibrate_fixes_an_overconfident_model_on_held_out_windows():
    logits_val, y_val = planted(3, 20_000, 3.0)
    logits_test, y_test = planted(4, 20_000, 3.0)
    result = calibrate(logits_val, y_val, logits_test, y_test)
    assert result.temperature == pytest.approx(3.0, rel=0.06)
    assert result.after["log_loss"] < result.before["log_loss"]
    assert result.after["brier"] < result.before["brier"]
    assert result.after["ece"] < 0.02 and result.before["ece"] > 0.1
    assert result.reliability_after.count.sum() == 20_000
    assert set(result.before) == {"log_loss", "brier", "ece"}


def test_bad_inputs_are_named():
    with pytest.raises(DataError, match="rows must sum to 1 \\(softmax outputs\\); row 1 sums to 0.9"):
        check_probs(np.array([[0.2, 0.3, 0.5], [0.2, 0.2, 0.5]]))
    with pytest.raises(DataError, match="probs: expected shape \\(M, 3\\) with M >= 1, got \\(2, 2\\)"):
        brier(np.full((2, 2), 0.5), np.array([0, 1]))
    with pytest.raises(DataError, match="y: class indices must be in \\[0, 3\\), got -1"):
        brier(TWO, np.array([0, -1]))
    with pytest.raises(DataError, match="y: expected \\(2,\\) integer class indices"):
        brier(TWO, np.array([0.0, 1.0]))
    with pytest.raises(DataError, match="every row is a probability distribution; pass logits or np.log"):
        fit_temperature(TWO, np.array([0, 1]))
    with pytest.raises(DataError, match="logits: every value must be finite \\(row 0\\)"):
        fit_temperature(np.array([[np.nan, 0.0, 1.0]]), np.array([0]))
    with pytest.raises(ConfigError, match="temperature must be a finite number > 0, got 0.0"):
        apply_temperature(np.zeros((1, 3)), 0.0)
    with pytest.raises(ConfigError, match="bounds must satisfy 0 < low < high < inf, got \\(2.0, 1.0\\)"):
        fit_temperature(np.zeros((1, 3)), np.array([0]), bounds=(2.0, 1.0))
    with pytest.raises(ConfigError, match="bins must be an integer >= 1, got 0"):
        reliability(TWO, np.array([0, 1]), bins=0)
