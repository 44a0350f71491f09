"""The backtest against trades priced by hand, and against a window-by-window reference walk."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lobsearch.errors import ConfigError, DataError
from lobsearch.trading import (
    DEFAULT_TAU_GRID,
    Quotes,
    backtest,
    backtest_forward,
    backtest_many,
    naive_predictions,
    predicted_class,
    tune_threshold,
)

DOWN, STABLE, UP = 0, 1, 2


def one_day(mid, spread=0.02) -> Quotes:
    mid = np.asarray(mid, dtype=np.float64)
    return Quotes.from_days([mid], [np.full(mid.size, spread)])


def test_a_long_and_two_shorts_priced_by_hand():
    quotes = one_day([100, 100, 101, 101, 99, 99, 99, 99])
    pred = np.array([UP, UP, DOWN, STABLE, DOWN, UP])
    run = backtest(pred, np.arange(6), quotes, 2, fee_bps=1.0)
    # row 0 long: buy the ask 100.01, sell the bid 100.99 at row 2 -> 98 bps of 100, less 2 fees
    # row 1 blocked (exit at 2); row 2 short: sell the bid 100.99, buy the ask 99.01 at row 4
    # row 4 short: 99 -> 99, pays one spread; row 5 blocked (exit at 6)
    expected = [96.0, (1.98 / 101) * 1e4 - 2, -(0.02 / 99) * 1e4 - 2]
    np.testing.assert_allclose(run.net_bps, expected)
    np.testing.assert_allclose(run.gross_bps, [100.0, 2e4 / 101, 0.0])
    np.testing.assert_array_equal(run.entry_row, [0, 2, 4])
    np.testing.assert_array_equal(run.side, [1, -1, -1])
    m = run.summary()
    assert m["n_trades"] == 3 and m["trades_per_day"] == 3 and m["n_days"] == 1
    assert m["hit_rate"] == pytest.approx(2 / 3)
    assert m["net_bps_per_trade"] == pytest.approx(sum(expected) / 3)
    assert m["net_bps_per_day"] == pytest.approx(sum(expected))
    assert m["max_drawdown_bps"] == pytest.approx(-expected[2])
    assert m["coverage"] == pytest.approx(5 / 6)
    assert (m["fee_bps"], m["tau"]) == (1.0, 0.0)


def test_an_entry_may_share_the_exit_row_but_not_precede_it():
    quotes = one_day(np.linspace(100, 101, 12), spread=0.0)
    run = backtest(np.full(3, UP), np.array([0, 2, 3]), quotes, 3, fee_bps=0.0)
    np.testing.assert_array_equal(run.entry_row, [0, 3])
    run = backtest(np.full(2, UP), np.array([0, 2]), quotes, 3, fee_bps=0.0)
    np.testing.assert_array_equal(run.entry_row, [0])


def test_positions_never_cross_days_and_a_late_window_does_not_block():
    quotes = Quotes.from_days([np.full(4, 100.0), np.full(4, 50.0)], [np.zeros(4), np.zeros(4)])
    # global rows 0-3 are day 0, 4-7 day 1; with h = 3 row 3 has no exit in its day, so it opens
    # nothing and blocks nothing: row 4, the next day's first, opens
    run = backtest(np.full(3, UP), np.array([0, 3, 4]), quotes, 3, fee_bps=0.5)
    np.testing.assert_array_equal(run.entry_row, [0, 4])
    np.testing.assert_array_equal(run.day, [0, 1])
    np.testing.assert_allclose(run.net_bps, [-1.0, -1.0])
    assert run.summary()["trades_per_day"] == 1.0 and run.summary()["net_bps_per_day"] == -1.0
    assert run.coverage == 1.0, "acting windows count whether or not a trade could open"


def test_the_order_of_the_windows_does_not_matter():
    quotes = one_day([100, 100, 101, 101, 99, 99, 99, 99])
    pred, ends = np.array([UP, UP, DOWN, STABLE, DOWN, UP]), np.arange(6)
    shuffled = np.array([5, 0, 3, 1, 4, 2])
    a = backtest(pred, ends, quotes, 2, fee_bps=1.0)
    b = backtest(pred[shuffled], ends[shuffled], quotes, 2, fee_bps=1.0)
    np.testing.assert_array_equal(a.entry_row, b.entry_row)
    np.testing.assert_allclose(a.net_bps, b.net_bps)


def test_a_threshold_keeps_only_confident_signals():
    quotes = one_day(np.arange(100, 110, dtype=np.float64), spread=0.0)
    pred, prob = np.array([UP, UP, DOWN, UP]), np.array([0.5, 0.9, 0.95, 0.4])
    run = backtest(pred, np.array([0, 1, 4, 6]), quotes, 1, fee_bps=0.0, prob=prob, tau=0.9)
    np.testing.assert_array_equal(run.entry_row, [1, 4])
    assert run.coverage == 0.5 and run.tau == 0.9
    untouched = backtest(pred, np.array([0, 1, 4, 6]), quotes, 1, fee_bps=0.0, prob=prob, tau=None)
    assert untouched.n_trades == 4 and untouched.coverage == 1.0


def test_always_stable_makes_no_trade_and_scores_zero():
    run = backtest(np.full(5, STABLE), np.arange(5), one_day(np.full(10, 100.0)), 2, fee_bps=3.0)
    m = run.summary()
    assert m["n_trades"] == 0 and m["coverage"] == 0.0
    assert m["net_bps_per_trade"] == m["net_bps_per_day"] == m["hit_rate"] == m["max_drawdown_bps"] == 0.0


def reference_walk(pred, ends, mid, spread, starts, h, fee, prob, tau):
    """A window-by-window restatement of the rules, for the property test."""
    nets, blocked_until = [], -1
    for i in np.lexsort((ends, np.searchsorted(starts, ends, side="right"))):
        e = int(ends[i])
        day_end = starts[np.searchsorted(starts, e, side="right")]
        if pred[i] == STABLE or prob[i] < tau or e + h >= day_end or e < blocked_until:
            continue
        side = 1 if pred[i] == UP else -1
        entry = mid[e] + side * spread[e] / 2
        exit_ = mid[e + h] - side * spread[e + h] / 2
        nets.append(side * (exit_ - entry) / mid[e] * 1e4 - 2 * fee)
        blocked_until = e + h
    return nets


@settings(max_examples=80, deadline=None)
@given(seed=st.integers(0, 2**16), days=st.integers(1, 3), h=st.integers(1, 6),
       tau=st.sampled_from([0.0, 0.5, 0.8]), fee=st.sampled_from([0.0, 0.7]))
def test_the_backtest_matches_a_reference_walk(seed, days, h, tau, fee):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 30, days)
    mids = [100 + np.cumsum(rng.normal(0, 0.05, n)) for n in lengths]
    quotes = Quotes.from_days(mids, [rng.uniform(0, 0.03, n) for n in lengths])
    ends = rng.choice(quotes.mid.size, size=int(rng.integers(1, quotes.mid.size + 1)), replace=False)
    pred, prob = rng.integers(0, 3, ends.size), rng.uniform(0.34, 1.0, ends.size)
    run = backtest(pred, ends, quotes, h, fee_bps=fee, prob=prob, tau=tau)
    expected = reference_walk(pred, ends, quotes.mid, quotes.spread, quotes.starts, h, fee, prob, tau)
    np.testing.assert_allclose(run.net_bps, expected, atol=1e-9)
    same_day = run.day[1:] == run.day[:-1]
    assert np.all(run.entry_row[1:][same_day] >= run.entry_row[:-1][same_day] + h)
    assert np.all(run.entry_row + h < quotes.starts[run.day + 1])
    assert run.n_days == np.unique(quotes.day_of(ends)).size
    costly = backtest(pred, ends, quotes, h, fee_bps=fee + 2.5, prob=prob, tau=tau)
    np.testing.assert_allclose(costly.net_bps, run.net_bps - 5.0)


def test_forward_prices_give_the_same_trades_as_rows():
    rng = np.random.default_rng(3)
    mid, past, max_h, h = 100 + np.cumsum(rng.normal(0, 0.05, 40)), 2, 5, 3
    padded = np.concatenate([np.full(past, np.nan), mid, np.full(max_h, np.nan)])
    forward = np.stack([padded[t : t + past + max_h + 1] for t in range(40)])
    ends = np.arange(2, 40, 2)
    pred = rng.integers(0, 3, ends.size)
    rows = backtest(pred, ends, Quotes.from_days([mid], [np.full(40, 0.01)]), h, fee_bps=0.5)
    fwd = backtest_forward(pred, ends, np.zeros(ends.size, dtype=int), forward[ends], past,
                           np.full(ends.size, 0.01), h, fee_bps=0.5)
    np.testing.assert_array_equal(fwd.entry_row, rows.entry_row)
    np.testing.assert_allclose(fwd.net_bps, rows.net_bps)
    assert rows.entry_row.max() + h <= 39, "a NaN exit (past the day's end) opens no position"
    with pytest.raises(ConfigError, match="horizon 6 with past 2 needs forward columns > 8; the file has 8"):
        backtest_forward(pred, ends, np.zeros(ends.size, dtype=int), forward[ends], past,
                         np.full(ends.size, 0.01), 6, fee_bps=0.5)


def test_quotes_from_raw_rows_read_mid_and_spread_columns():
    rows = np.zeros((3, 98))
    rows[:, 40], rows[:, 41] = [10.0, 11.0, 12.0], [0.1, 0.2, 0.3]
    quotes = Quotes.from_rows([rows, rows[:2]])
    np.testing.assert_array_equal(quotes.mid, [10, 11, 12, 10, 11])
    np.testing.assert_array_equal(quotes.spread, [0.1, 0.2, 0.3, 0.1, 0.2])
    np.testing.assert_array_equal(quotes.starts, [0, 3, 5])
    np.testing.assert_array_equal(quotes.day_of(np.array([0, 2, 3, 4])), [0, 0, 1, 1])
    with pytest.raises(DataError, match="day 1: rows must be \\(N, F\\) with F >= 42"):
        Quotes.from_rows([rows, rows[:, :41]])


def test_the_threshold_tuned_on_validation_skips_the_unconfident_losers():
    quotes = one_day(np.array([100, 101, 100, 101, 100, 101, 100, 101], dtype=np.float64), spread=0.0)
    # every call is Up: the confident ones (rows 0, 2) before a rise, the unconfident before a fall
    probs = np.array([[0.1, 0.1, 0.8], [0.3, 0.2, 0.5], [0.1, 0.1, 0.8], [0.4, 0.15, 0.45]])
    choice = tune_threshold(probs, np.array([0, 1, 2, 3]), quotes, 1, fee_bps=0.0,
                            grid=(0.0, 0.45, 0.5, 0.6, 0.8, 0.9))
    assert choice.tau == 0.8, "0.6 and 0.8 tie on the same two trades: the larger tau wins"
    assert choice.net_bps_per_day == pytest.approx(200.0)
    assert choice.coverage == 0.5
    assert choice.coverages == (1.0, 1.0, 0.75, 0.5, 0.5, 0.0)
    loss = -1 / 101 * 1e4
    assert choice.scores[:3] == pytest.approx((200.0 + 2 * loss, 200.0 + 2 * loss, 200.0 + loss))
    assert choice.scores[-1] == 0.0
    assert 0.0 in DEFAULT_TAU_GRID and max(DEFAULT_TAU_GRID) == 0.95


def test_a_model_that_never_acts_has_no_threshold():
    probs = np.tile([0.2, 0.6, 0.2], (4, 1))
    with pytest.raises(DataError, match="no tau of .* acts on any of the 4 validation windows"):
        tune_threshold(probs, np.arange(4), one_day(np.full(8, 100.0)), 1, fee_bps=0.0)
    with pytest.raises(ConfigError, match="grid value 1.5 must be in \\[0, 1\\]"):
        tune_threshold(probs, np.arange(4), one_day(np.full(8, 100.0)), 1, fee_bps=0.0, grid=(0.5, 1.5))


def test_predicted_class_is_the_argmax_and_its_probability():
    pred, prob = predicted_class(np.array([[0.2, 0.3, 0.5], [0.7, 0.2, 0.1]]))
    np.testing.assert_array_equal(pred, [2, 0])
    np.testing.assert_allclose(prob, [0.5, 0.7])


def test_naive_baselines_are_backtested_beside_the_model():
    quotes = one_day([100, 101, 102, 103, 104, 105], spread=0.0)
    naive = naive_predictions(np.array([-1, UP, UP, DOWN]), majority_class=UP)
    np.testing.assert_array_equal(naive["previous"], [UP, UP, UP, DOWN])
    np.testing.assert_array_equal(naive["stable"], [STABLE] * 4)
    np.testing.assert_array_equal(naive["majority"], [UP] * 4)
    runs = backtest_many({"model": np.array([UP, STABLE, UP, STABLE]), **naive}, np.arange(4), quotes, 2, fee_bps=0.0)
    assert set(runs) == {"model", "stable", "majority", "previous"}
    assert runs["stable"].n_trades == 0
    np.testing.assert_array_equal(runs["majority"].entry_row, [0, 2])
    np.testing.assert_array_equal(runs["previous"].side, [1, 1])


def test_bad_settings_are_reported_together():
    quotes = one_day(np.full(5, 100.0))
    with pytest.raises(ConfigError) as caught:
        backtest(np.array([UP]), np.array([0]), quotes, 0, fee_bps=-1.0, tau=1.5)
    problems = caught.value.problems
    assert len(problems) == 4
    assert "horizon must be an integer >= 1 (rows), got 0" in problems[0]
    assert "fee_bps must be a number in [0, 10000) (bps per side), got -1.0" in problems[1]
    assert "tau must be a probability in [0, 1], got 1.5" in problems[2]
    assert "needs prob" in problems[3]


def test_data_that_cannot_be_traded_is_named():
    quotes = Quotes.from_days([np.array([100.0, 100.0, 0.0])], [np.array([0.01, 0.01, 0.01])])
    with pytest.raises(DataError, match="day 0 row 2 \\(exit of a trade\\): mid must be > 0 .* got mid 0.0"):
        backtest(np.array([UP]), np.array([0]), quotes, 2, fee_bps=0.0)
    assert backtest(np.array([STABLE]), np.array([0]), quotes, 2, fee_bps=0.0).n_trades == 0
    with pytest.raises(DataError, match="ends must be rows in \\[0, 3\\), got 1..3"):
        backtest(np.array([UP, UP]), np.array([1, 3]), quotes, 1, fee_bps=0.0)
    with pytest.raises(DataError, match="pred has 1 windows, ends 2"):
        backtest(np.array([UP]), np.array([0, 1]), quotes, 1, fee_bps=0.0)
    with pytest.raises(DataError, match="pred must be class indices in \\[0, 3\\), got 3"):
        backtest(np.array([3]), np.array([0]), quotes, 1, fee_bps=0.0)
    with pytest.raises(DataError, match="no windows to evaluate"):
        backtest(np.array([], dtype=int), np.array([], dtype=int), quotes, 1, fee_bps=0.0)
