"""The t distribution against tables, ranking over seeds, the block bootstrap and the verdict."""

from __future__ import annotations

import itertools
import math
from statistics import NormalDist

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lobsearch.errors import ConfigError, DataError
from lobsearch.metrics import classification_metrics
from lobsearch.selection import (
    NEGATIVE,
    POSITIVE,
    Interval,
    block_length,
    lift_interval,
    mean_interval,
    p_beats,
    rank_configurations,
    t_cdf,
    t_quantile,
    verdict,
)


@pytest.mark.parametrize(("df", "table"), [(1, 12.706), (2, 4.303), (3, 3.182), (4, 2.776), (5, 2.571),
                                           (9, 2.262), (10, 2.228), (20, 2.086), (30, 2.042), (120, 1.980)])
def test_t_quantiles_match_the_table(df, table):
    assert t_quantile(0.975, df) == pytest.approx(table, abs=5e-4)


def test_other_levels_and_the_normal_limit():
    assert t_quantile(0.95, 1) == pytest.approx(6.314, abs=5e-4)
    assert t_quantile(0.995, 4) == pytest.approx(4.604, abs=5e-4)
    assert t_quantile(0.025, 2) == pytest.approx(-4.303, abs=5e-4)
    assert t_quantile(0.5, 7) == 0.0
    assert t_quantile(0.975, 5000) == pytest.approx(NormalDist().inv_cdf(0.975))
    assert t_cdf(1.0, 1) == pytest.approx(0.75), "Cauchy: 1/2 + atan(1)/pi"
    assert t_cdf(math.sqrt(2), 2) == pytest.approx(0.5 + math.sqrt(2) / (2 * math.sqrt(4))), "t / (2 sqrt(t^2 + 2))"


@settings(max_examples=60, deadline=None)
@given(p=st.floats(0.001, 0.999), df=st.integers(1, 1500))
def test_the_quantile_inverts_the_cdf(p, df):
    assert t_cdf(t_quantile(p, df), df) == pytest.approx(p, abs=1e-9)
    assert t_cdf(-t_quantile(p, df), df) == pytest.approx(1 - p, abs=1e-9)


def test_t_quantiles_shrink_toward_the_normal():
    values = [t_quantile(0.975, df) for df in range(1, 60)]
    assert all(a > b for a, b in itertools.pairwise(values))
    assert values[-1] > NormalDist().inv_cdf(0.975)


def test_mean_interval_by_hand():
    interval = mean_interval([1.0, 2.0, 3.0])
    half = t_quantile(0.975, 2) / math.sqrt(3)  # sample std 1
    assert (interval.estimate, interval.low, interval.high) == pytest.approx((2.0, 2.0 - half, 2.0 + half))
    assert interval.low == pytest.approx(2 - 2.484, abs=1e-3) and interval.method == "t interval over 3 seeds"
    assert mean_interval([0.5, 0.5]).low == mean_interval([0.5, 0.5]).high == 0.5


def test_welch_probability_by_hand():
    # difference 1, se^2 = 1/3 + 1/3, Welch df = (2/3)^2 / (2 * (1/3)^2 / 2) = 4
    t = 1 / math.sqrt(2 / 3)
    theta = math.atan(t / 2)
    by_series = 0.5 + 0.5 * math.sin(theta) * (1 + 0.5 * math.cos(theta) ** 2)  # A&S 26.7.4, df 4
    assert p_beats([1, 2, 3], [0, 1, 2]) == pytest.approx(by_series)
    assert by_series == pytest.approx(0.856, abs=1e-3)
    assert p_beats([1, 2, 3], [0, 1, 2], mode="min") == pytest.approx(1 - by_series)
    assert p_beats([1, 2, 3], [1, 2, 3]) == 0.5
    assert (p_beats([2, 2], [1, 1]), p_beats([1, 1], [2, 2]), p_beats([1, 1], [1, 1])) == (1.0, 0.0, 0.5)


@settings(max_examples=40, deadline=None)
@given(a=st.lists(st.floats(-5, 5), min_size=2, max_size=8), b=st.lists(st.floats(-5, 5), min_size=2, max_size=8))
def test_beating_is_complementary(a, b):
    assert p_beats(a, b) + p_beats(b, a) == pytest.approx(1.0)


def test_the_winner_is_the_best_mean_and_each_has_a_rival():
    ranked = rank_configurations({"b": [0.50, 0.52, 0.54], "a": [0.60, 0.62, 0.64], "c": [0.49, 0.50, 0.51]})
    assert [r.name for r in ranked] == ["a", "b", "c"] and [r.rank for r in ranked] == [1, 2, 3]
    assert [r.rival for r in ranked] == ["b", "a", "a"]
    assert ranked[0].mean == pytest.approx(0.62) and ranked[0].std == pytest.approx(0.02)
    assert ranked[0].p_beats_rival == pytest.approx(p_beats([0.60, 0.62, 0.64], [0.50, 0.52, 0.54]))
    assert ranked[0].p_beats_rival > 0.99 and ranked[1].p_beats_rival < 0.01
    assert ranked[0].interval.contains(0.62) and not ranked[0].interval.contains(0.53)
    losses = rank_configurations({"x": [0.9, 1.0], "y": [0.7, 0.8]}, mode="min")
    assert [r.name for r in losses] == ["y", "x"] and losses[0].p_beats_rival > 0.5
    lone = rank_configurations({"only": [1.0, 2.0]})
    assert lone[0].rival is None and lone[0].p_beats_rival is None


def test_ranking_rejects_what_cannot_be_ranked():
    with pytest.raises(DataError, match="configuration 'a': needs >= 2 finite scores \\(one per seed\\), got \\[0.5"):
        rank_configurations({"a": [0.5], "b": [0.4, 0.5]})
    with pytest.raises(DataError, match="got \\[0.5, nan\\]"):
        rank_configurations({"a": [0.5, float("nan")]})
    with pytest.raises(ConfigError, match="mode must be 'max' or 'min', got 'best'"):
        rank_configurations({"a": [0.5, 0.6]}, mode="best")
    with pytest.raises(DataError, match="no configuration to rank"):
        rank_configurations({})


def test_block_length_covers_the_dependence_of_neighbouring_windows():
    # window 100 + horizon 50 + smoothing 10 = 160 rows, stride 10 -> 16 windows; 1000^(1/3) = 10
    assert block_length(1000, window=100, horizon=50, smoothing=10, stride=10) == 16
    assert block_length(1_000_000, window=100, horizon=50, smoothing=10, stride=10) == 100
    assert block_length(12, window=100, horizon=50, smoothing=10, stride=1) == 12
    with pytest.raises(ConfigError) as caught:
        block_length(0, window=100, horizon=50, smoothing=-1, stride=0)
    assert len(caught.value.problems) == 3


def sticky(rng: np.random.Generator, n: int, stay: float) -> np.ndarray:
    """Classes that persist (mean run 1 / (1 - stay) windows), like labels of overlapping windows."""
    values = rng.integers(0, 3, n)
    keep = rng.random(n) < stay
    keep[0] = False
    starts = np.maximum.accumulate(np.where(keep, 0, np.arange(n)))
    return values[starts]


def noisy(rng: np.random.Generator, y: np.ndarray, right: float) -> np.ndarray:
    return np.where(rng.random(y.size) < right, y, rng.integers(0, 3, y.size))


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**16))
def test_the_lift_on_all_windows_is_the_metrics_modules_macro_f1_difference(seed):
    rng = np.random.default_rng(seed)
    y, pred = rng.integers(0, 3, 30), rng.integers(0, 3, 30)
    if seed % 3 == 0:
        pred[:] = 1
    base = rng.integers(0, 3, 30)
    lift = lift_interval(y, pred, {"b": base}, block=1, n_boot=100)
    expected = classification_metrics(y, pred)["macro_f1"] - classification_metrics(y, base)["macro_f1"]
    assert lift.estimate == pytest.approx(expected)


def test_a_planted_lift_is_detected():
    rng = np.random.default_rng(0)
    y = sticky(rng, 6000, 0.9)
    seeds = np.stack([noisy(rng, y, 0.5) for _ in range(3)])
    baselines = {"majority": np.ones_like(y), "weak": noisy(rng, y, 0.2)}
    lift = lift_interval(y, seeds, baselines, block=50, n_boot=500, seed=1)
    assert lift.low > 0.15 and lift.low <= lift.estimate <= lift.high
    assert "3 seed(s) resampled" in lift.method and "'weak'" in lift.method
    decided = verdict(lift)
    assert decided.distinguishable and decided.line.startswith(f"verdict: {POSITIVE}:")
    assert NEGATIVE not in decided.line
    assert lift == lift_interval(y, seeds, baselines, block=50, n_boot=500, seed=1), "seeded: reproducible"


def test_identical_predictors_have_an_interval_at_zero():
    rng = np.random.default_rng(1)
    y = sticky(rng, 3000, 0.9)
    pred = noisy(rng, y, 0.4)
    lift = lift_interval(y, pred, {"same": pred.copy()}, block=30, n_boot=300)
    assert (lift.estimate, lift.low, lift.high) == (0.0, 0.0, 0.0) and lift.contains(0.0)
    decided = verdict(lift)
    assert not decided.distinguishable and decided.line.startswith(f"verdict: {NEGATIVE}:")


def test_without_signal_the_verdict_says_no_lift_nearly_always():
    positives = 0
    for seed in range(40):
        rng = np.random.default_rng(seed)
        y = sticky(rng, 3000, 0.95)
        model, baseline = sticky(rng, 3000, 0.95), sticky(rng, 3000, 0.95)
        lift = lift_interval(y, model, {"b": baseline}, block=100, n_boot=300, seed=seed)
        positives += verdict(lift).distinguishable
    assert positives <= 4, f"{positives} of 40 null runs claimed a lift (about 1 expected)"


def test_blocks_widen_the_interval_of_correlated_windows():
    rng = np.random.default_rng(5)
    y = sticky(rng, 4000, 0.98)
    model, baseline = sticky(rng, 4000, 0.98), sticky(rng, 4000, 0.98)
    narrow = lift_interval(y, model, {"b": baseline}, block=1, n_boot=400)
    wide = lift_interval(y, model, {"b": baseline}, block=200, n_boot=400)
    assert wide.high - wide.low > 2 * (narrow.high - narrow.low)


def test_a_model_worse_than_the_baseline_has_no_lift():
    worse = Interval(-0.05, -0.08, -0.02, 0.95, "t interval over 5 seeds")
    decided = verdict(worse, metric="test macro-F1")
    assert not decided.distinguishable
    assert decided.line == ("verdict: no lift distinguishable from zero: test macro-F1 lift -0.0500 over the best "
                            "naive baseline, 95% interval [-0.0800, -0.0200] (t interval over 5 seeds)")
    distinguishable, line, interval = verdict(Interval(0.03, 0.01, 0.05, 0.95, "m"))
    assert distinguishable and interval.low == 0.01 and "no lift" not in line


@settings(max_examples=60, deadline=None)
@given(low=st.floats(-1, 1), width=st.floats(0, 1))
def test_the_verdict_line_always_names_exactly_one_finding(low, width):
    decided = verdict(Interval(low + width / 2, low, low + width, 0.95, "m"))
    assert decided.line.startswith("verdict: ")
    assert decided.distinguishable == (low > 0)
    assert (NEGATIVE in decided.line) != decided.distinguishable
    assert decided.line.count(POSITIVE) == 1


def test_lift_interval_rejects_what_it_cannot_resample():
    y = np.zeros(100, dtype=int)
    with pytest.raises(DataError, match="100 windows make 4 blocks of 30; a block bootstrap needs >= 10"):
        lift_interval(y, y, {"b": y}, block=30)
    with pytest.raises(DataError, match="baseline 'b' must be 1-D integer class indices over 100 windows"):
        lift_interval(y, y, {"b": y[:50]}, block=5)
    with pytest.raises(DataError, match="name at least one baseline"):
        lift_interval(y, y, {}, block=5)
    with pytest.raises(ConfigError) as caught:
        lift_interval(y, y, {"b": y}, block=0, n_boot=10, level=95)
    assert len(caught.value.problems) == 3
    with pytest.raises(DataError, match="must be finite"):
        verdict(Interval(float("nan"), 0.0, 1.0, 0.95, "m"))


def test_seeds_that_disagree_widen_the_interval_to_both_of_them():
    rng = np.random.default_rng(7)
    y = sticky(rng, 4000, 0.5)
    good, bad = noisy(rng, y, 0.9), noisy(rng, y, 0.3)
    baselines = {"b": noisy(rng, y, 0.6)}
    alone = [lift_interval(y, seed, baselines, block=20, n_boot=200).estimate for seed in (good, bad)]
    both = lift_interval(y, np.stack([good, bad]), baselines, block=20, n_boot=1000)
    assert both.estimate == pytest.approx(sum(alone) / 2)
    # a resample draws (good, good) or (bad, bad) a quarter of the time each
    assert both.low < alone[1] + 0.03 and both.high > alone[0] - 0.03
    assert both.low < 0 < both.high
