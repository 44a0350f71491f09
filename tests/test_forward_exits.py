"""Trading on exports whose windows do not overlap: the exits come from the export's forward
prices, and every trade is priced as the day's own rows price it (``upstream_export``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from upstream_export import Upstream, write_upstream_export

from lobsearch.config import PrepConfig
from lobsearch.data.pipeline import prepare
from lobsearch.errors import ConfigError, DataError
from lobsearch.recipe import split_quotes
from lobsearch.trading import BPS, WindowExits, backtest, backtest_forward

RAW = PrepConfig.model_validate({"normalization": {"mode": "none"}})
APART = Upstream(window_size=20, stride=30, horizons=(10, 50), rows=1500, forward_prices=True)
"""Windows of 20 rows every 30 rows: 10 rows of the day between two windows are in no window."""


def run(root: Path, tmp_path: Path):
    return prepare(root, RAW, cache_dir=tmp_path / "cache", engine="local")


@pytest.fixture(scope="module")
def apart(tmp_path_factory):
    root = tmp_path_factory.mktemp("apart") / "export"
    return root, write_upstream_export(root, APART)


def test_a_day_of_windows_apart_keeps_its_forward_prices_from_column_k(apart, tmp_path):
    root, written = apart
    prepared = run(root, tmp_path)
    assert prepared.quotes_note is None
    for day in (d for days in prepared.splits.values() for d in days):
        assert not day.layout.overlapping
        file = np.load(root / day.split / f"{day.date}_forward_prices.npy")
        np.testing.assert_array_equal(day.forward, file[:, APART.smoothing_window:])
        np.testing.assert_allclose(day.forward[:, 0], day.mid[day.layout.ends()], rtol=1e-6)


@pytest.mark.parametrize("horizon", [10, 50])
def test_every_trade_is_priced_as_the_days_own_rows_price_it(apart, tmp_path, horizon):
    """Long on every window: the trades' entries and exits are the mids of the whole day's rows
    (which no exported window holds between windows), and a position held 50 rows blocks the next
    window 30 rows later."""
    root, written = apart
    prepared = run(root, tmp_path)
    quotes = split_quotes(prepared, "train")
    ends = np.concatenate([quotes.starts[d] + day.layout.ends() for d, day in enumerate(prepared.splits["train"])])
    result = backtest(np.full(ends.size, 2), ends, quotes, horizon, fee_bps=0.0)
    days = [d for d in written if d.split == "train"]
    expected_gross, expected_rows = [], []
    for day in days:
        window_ends = day.first_start + APART.window_size - 1 + APART.stride * np.arange(len(day.sequences))
        ahead = window_ends[window_ends + horizon < len(day.rows)]
        taken, free_at = [], -1
        for end in ahead:
            if end >= free_at:
                taken.append(end)
                free_at = end + horizon
        mid = day.rows[:, 40]
        expected_gross += [(mid[e + horizon] - mid[e]) / mid[e] * BPS for e in taken]
        expected_rows += [e - day.first_start for e in taken]
    assert result.n_trades == len(expected_gross) > 0
    np.testing.assert_allclose(result.gross_bps, expected_gross, rtol=1e-12)
    np.testing.assert_array_equal(result.entry_row, expected_rows)  # the day's time, from its first window
    gaps = np.diff(result.entry_row)[np.diff(result.day) == 0]
    assert gaps.min() == (60 if horizon > APART.stride else 30)  # held 50 rows: the next window 30 rows on waits


def test_trades_on_the_prepared_days_equal_trades_on_the_exports_own_forward_prices(apart, tmp_path):
    root, _ = apart
    prepared = run(root, tmp_path)
    days = prepared.splits["val"]
    quotes = split_quotes(prepared, "val")
    rng = np.random.default_rng(0)
    ends = np.concatenate([quotes.starts[d] + day.layout.ends() for d, day in enumerate(days)])
    pred = rng.integers(0, 3, ends.size)
    ours = backtest(pred, ends, quotes, 10, fee_bps=1.0)
    files = [np.load(root / "val" / f"{day.date}_forward_prices.npy") for day in days]
    theirs = backtest_forward(
        pred, np.concatenate([day.layout.ends() // 20 * 30 + 19 for day in days]),
        np.concatenate([np.full(day.layout.count, d) for d, day in enumerate(days)]),
        np.concatenate(files), APART.smoothing_window, quotes.spread[ends], 10, fee_bps=1.0)
    np.testing.assert_array_equal(ours.net_bps, theirs.net_bps)
    assert ours.n_trades == theirs.n_trades > 0


def test_windows_apart_without_forward_prices_say_why_they_cannot_trade(tmp_path):
    root = tmp_path / "e"
    write_upstream_export(root, Upstream(window_size=20, stride=30, horizons=(10,)))
    prepared = run(root, tmp_path)
    assert "no _forward_prices.npy" in prepared.quotes_note
    assert all(day.forward is None and day.quotes is None for days in prepared.splits.values() for day in days)


def test_overlapping_windows_trade_on_their_rows_whatever_forward_prices_they_have(tmp_path):
    root = tmp_path / "e"
    write_upstream_export(root, Upstream(window_size=20, stride=5, horizons=(10,), forward_prices=True))
    prepared = run(root, tmp_path)
    assert prepared.quotes_note is None
    assert all(day.forward is None and day.quotes is not None for days in prepared.splits.values() for day in days)


def test_forward_prices_of_other_windows_are_an_error_naming_the_file_and_window(apart, tmp_path):
    root = tmp_path / "e"
    write_upstream_export(root, APART)
    path = root / "val" / "20250205_forward_prices.npy"
    prices = np.load(path)
    np.save(path, np.roll(prices, 1, axis=0))  # each window given its predecessor's prices
    with pytest.raises(DataError, match=r"20250205_forward_prices.npy: window \d+: forward price at its end "
                                        r"\(column 10\) is .* but MID_PRICE of its last row is"):
        run(root, tmp_path)


def test_forward_prices_without_a_stated_k_take_it_from_the_longest_horizon(tmp_path):
    root = tmp_path / "e"
    write_upstream_export(root, APART)
    for meta in root.glob("*/*_metadata.json"):
        data = json.loads(meta.read_text())
        data["forward_prices"] = {"exported": True}
        meta.write_text(json.dumps(data))
    prepared = run(root, tmp_path)
    day = prepared.splits["train"][0]
    np.testing.assert_allclose(day.forward[:, 0], day.mid[day.layout.ends()], rtol=1e-6)


def test_window_exits_refuse_a_row_that_ends_no_window_and_a_horizon_beyond_their_reach():
    exits = WindowExits(np.arange(12.0).reshape(3, 4) + 100, window=5, stride=8)
    np.testing.assert_array_equal(exits.windows(np.array([4, 9, 14])), [0, 1, 2])
    with pytest.raises(DataError, match="row 5 .* is not the end of one of its 3 windows"):
        exits.windows(np.array([5]))
    with pytest.raises(ConfigError, match="horizon 4 needs forward prices 4 rows ahead; the export's reach 3"):
        exits.exit_mid(np.array([0]), 4)
