"""The synthetic export: the contract, realism, determinism, the planted signal, the demo and the CLI."""

import json
import os
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest

from lobsearch import synth
from lobsearch.contract import CATEGORICAL, FeatureIndex as FI
from lobsearch.data.days import compute_labels, load_split_data, validate_export
from lobsearch.errors import ConfigError, DataError

ROWS, LAG = 4000, 20


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    return synth.write_synthetic_export(tmp_path_factory.mktemp("synth") / "export", days=5, rows=ROWS,
                                        seed=3, lag=LAG)


@pytest.fixture(scope="module")
def days(export):
    return {split: load_split_data(export, split) for split in ("train", "val", "test")}


def all_rows(days):
    return np.concatenate([np.asarray(d.features) for split in days.values() for d in split])


def test_export_passes_its_own_validation_without_warnings(export):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = validate_export(export)
    assert report.n_features == 98 and report.warnings == ()
    assert {s: len(d) for s, d in report.days.items()} == {"train": 3, "val": 1, "test": 1}
    assert report.rows == {"train": 3 * ROWS, "val": ROWS, "test": ROWS}


def test_files_follow_the_contract(export):
    features = np.load(export / "train" / "20240102_features.npy")
    labels = np.load(export / "train" / "20240102_labels.npy")
    meta = json.loads((export / "train" / "20240102_metadata.json").read_text())
    manifest = json.loads((export / "dataset_manifest.json").read_text())
    assert features.shape == (ROWS, 98) and features.dtype == np.float64
    assert labels.shape == (ROWS, 4) and labels.dtype == np.int8 and set(np.unique(labels)) == {-1, 0, 1}
    assert meta["schema_version"] == "2.2" and meta["n_features"] == 98 and meta["label_strategy"] == "tlob"
    assert meta["labeling"] == {"horizons": [10, 20, 50, 100], "smoothing": 10, "threshold": 0.0008}
    assert meta["normalization"] == {"applied": False}
    assert manifest["symbol"] == "SYNTH" and manifest["feature_count"] == 98 and manifest["planted_lag"] == LAG
    assert manifest["horizons"] == [10, 20, 50, 100] and manifest["schema_version"] == "2.2"
    assert manifest["splits"]["val"] == {"days": 1, "dates": ["20240105"], "rows": ROWS}
    assert manifest["splits"]["test"]["dates"] == ["20240108"]  # weekdays only
    assert set(manifest["oracle_macro_f1"]) == {"10", "20", "50", "100"}


def test_book_is_a_plausible_ten_level_book(days):
    x = all_rows(days)
    ask, bid = x[:, FI.ASK_PRICE_L0:FI.ASK_PRICE_L9 + 1], x[:, FI.BID_PRICE_L0:FI.BID_PRICE_L9 + 1]
    assert (np.diff(ask, axis=1) > 0).all() and (np.diff(bid, axis=1) < 0).all()
    for prices in (ask, bid):
        np.testing.assert_allclose(prices * 100, np.rint(prices * 100), atol=1e-6)
    sizes = np.concatenate([x[:, FI.ASK_SIZE_L0:FI.ASK_SIZE_L9 + 1], x[:, FI.BID_SIZE_L0:FI.BID_SIZE_L9 + 1]], axis=1)
    assert (sizes >= 1).all() and (sizes == np.rint(sizes)).all()
    assert np.quantile(sizes, 0.999) > 8 * np.median(sizes)  # heavy tail
    valid = x[:, FI.BOOK_VALID] == 1
    assert (ask[valid, 0] > bid[valid, 0]).all() and (ask[~valid, 0] == bid[~valid, 0]).all()


def test_derived_columns_are_computed_from_the_book(days):
    x = all_rows(days)
    ask0, bid0, ask_s0, bid_s0 = (x[:, c] for c in (FI.ASK_PRICE_L0, FI.BID_PRICE_L0, FI.ASK_SIZE_L0, FI.BID_SIZE_L0))
    mid = (ask0 + bid0) / 2
    total_bid, total_ask = x[:, FI.BID_SIZE_L0:FI.BID_SIZE_L9 + 1].sum(1), x[:, FI.ASK_SIZE_L0:FI.ASK_SIZE_L9 + 1].sum(1)
    micro = (ask0 * bid_s0 + bid0 * ask_s0) / (bid_s0 + ask_s0)
    expected = {FI.MID_PRICE: mid, FI.SPREAD: ask0 - bid0, FI.SPREAD_BPS: (ask0 - bid0) / mid * 1e4,
                FI.TOTAL_BID_VOLUME: total_bid, FI.TOTAL_ASK_VOLUME: total_ask,
                FI.VOLUME_IMBALANCE: (total_bid - total_ask) / (total_bid + total_ask),
                FI.WEIGHTED_MID_PRICE: micro, FI.PRICE_IMPACT: np.abs(mid - micro),
                FI.SIGNED_MP_DELTA_BPS: (micro - mid) / mid * 1e4}
    for column, values in expected.items():
        np.testing.assert_allclose(x[:, column], values, rtol=1e-12, err_msg=column.name)


def test_session_columns_and_gates_look_like_real_data(days):
    for day in days["train"] + days["val"] + days["test"]:
        x = np.asarray(day.features)
        regime = x[:, FI.TIME_REGIME]
        assert (np.diff(regime) >= 0).all() and set(np.unique(regime)) == set(range(CATEGORICAL[FI.TIME_REGIME]))
        assert (x[:, FI.DT_SECONDS] > 0).all() and 20000 < x[:, FI.DT_SECONDS].sum() < synth.SESSION_SECONDS
        ready = x[:, FI.MBO_READY]
        warmup = int(np.argmax(ready))
        assert warmup >= 5 and (ready[warmup:] == 1).all()
        assert (x[:warmup, FI.ADD_RATE_BID:FI.ACTIVE_ORDER_COUNT + 1] == 0).all()
        assert (x[:, FI.SCHEMA_VERSION] == 2.2).all()
    x = all_rows(days)
    assert 0.0005 < np.mean(x[:, FI.BOOK_VALID] == 0) < 0.01
    assert 0.0005 < np.mean(x[:, FI.INVALIDITY_DELTA] > 0) < 0.01
    assert np.abs(x[:, [FI.VOLUME_IMBALANCE, FI.NET_ORDER_FLOW, FI.TRADE_ASYMMETRY]]).max() <= 1
    assert (x[:, [FI.AVG_QUEUE_POSITION, FI.QUEUE_SIZE_AHEAD]] == 0).all()


def test_labels_are_the_smoothed_return_labels_of_the_mid(days):
    for day in days["val"]:
        recomputed = compute_labels(day.features[:, FI.MID_PRICE], day.horizons, 10, 0.0008)
        valid = recomputed >= 0
        assert np.mean(recomputed[valid] == day.labels[valid]) > 0.999
        assert (day.labels >= 0).all()


def test_classes_are_reasonably_balanced(days):
    labels = np.concatenate([d.labels for d in days["train"]])
    for j, horizon in enumerate(days["train"][0].horizons):
        shares = np.bincount(labels[:, j], minlength=3) / len(labels)
        assert shares[1] <= 0.6 and shares.min() >= 0.05, (horizon, shares)


def average_ranks(values):
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    return (np.cumsum(counts) - counts + (counts - 1) / 2)[inverse]


def rank_ic(days, look_back, horizon_index=0):
    """Spearman correlation of TRUE_OFI summed over the previous ``look_back`` rows with the label."""
    signal, label = [], []
    for day in days:
        sums = np.concatenate([[0.0], np.cumsum(day.features[:, FI.TRUE_OFI])])
        ok = day.features[look_back - 1:, FI.MBO_READY] >= 0.5
        signal.append((sums[look_back:] - sums[:-look_back])[ok])
        label.append(day.labels[look_back - 1:, horizon_index][ok])
    return np.corrcoef(average_ranks(np.concatenate(signal)), average_ranks(np.concatenate(label)))[0, 1]


def test_planted_lag_is_the_look_back_that_predicts_on_held_out_days(days):
    held_out = days["val"] + days["test"]
    ic = {look_back: rank_ic(held_out, look_back) for look_back in (2, LAG, 8 * LAG)}
    assert ic[LAG] > 0.3
    assert ic[LAG] > ic[2] + 0.1 and ic[LAG] > ic[8 * LAG] + 0.1, ic


def _past_move_ic(days, horizon_index=0):
    """Rank correlation of the mid's move over the previous 10 rows with the label: what a
    smoothed-return label leans on even when the mid is a random walk."""
    move, label = [], []
    for day in days:
        mid = day.features[:, FI.MID_PRICE]
        move.append(mid[10:] - mid[:-10])
        label.append(day.labels[10:, horizon_index])
    return np.corrcoef(average_ranks(np.concatenate(move)), average_ranks(np.concatenate(label)))[0, 1]


def test_signal_zero_leaves_nothing_to_learn_in_the_same_layout(tmp_path, days):
    null = synth.write_synthetic_export(tmp_path / "null", days=5, rows=ROWS, seed=3, lag=LAG, signal=0.0)
    null_days = {split: load_split_data(null, split) for split in ("train", "val", "test")}
    assert [len(d) for d in null_days.values()] == [len(d) for d in days.values()]
    held_out = null_days["val"] + null_days["test"]
    # sums over overlapping rows leave ~8,000 / look-back independent samples: a sampling error near 0.05
    for look_back in (2, LAG, 8 * LAG):
        assert abs(rank_ic(held_out, look_back)) < 0.1, look_back
    assert abs(_past_move_ic(held_out)) < 0.1 < 0.2 < _past_move_ic(days["val"] + days["test"])
    labels = np.concatenate([d.labels[:, 0] for d in held_out]).astype(int)
    assert abs(np.corrcoef(labels[1:], labels[:-1])[0, 1]) < 0.04, "labels carry no memory of their own"
    assert min(np.bincount(labels, minlength=3)) > 0.1 * labels.size, "every class is still there"
    manifest = json.loads((null / "dataset_manifest.json").read_text())
    assert manifest["planted_signal"] == 0.0 and max(manifest["oracle_macro_f1"].values()) < 0.4


def test_oracle_macro_f1_is_recorded_and_falls_with_the_horizon(export):
    oracle = json.loads((export / "dataset_manifest.json").read_text())["oracle_macro_f1"]
    assert 0.55 < oracle["10"] < 0.9 and 0.34 < oracle["100"] < oracle["10"]


def test_same_seed_same_files_other_seed_other_data(tmp_path):
    paths = [synth.write_synthetic_export(tmp_path / name, days=2, rows=300, seed=seed)
             for name, seed in (("a", 5), ("b", 5), ("c", 6))]
    files = sorted(p.relative_to(paths[0]) for p in paths[0].rglob("*") if p.is_file())
    assert len(files) == 7
    for name in files:
        assert (paths[0] / name).read_bytes() == (paths[1] / name).read_bytes(), name
    first = "train/20240102_features.npy"
    assert not np.array_equal(np.load(paths[0] / first), np.load(paths[2] / first))


def test_windowed_format_loads_to_the_same_rows(tmp_path):
    flat = synth.write_synthetic_export(tmp_path / "flat", days=2, rows=300, seed=1)
    win = synth.write_synthetic_export(tmp_path / "win", days=2, rows=300, seed=1, fmt="windowed", window=8)
    sequences = np.load(win / "train" / "20240102_sequences.npy", mmap_mode="r")
    assert sequences.shape == (293, 8, 98) and sequences.dtype == np.float32
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        validate_export(win)
        (day_w,), (day_f,) = load_split_data(win, "train"), load_split_data(flat, "train")
    np.testing.assert_array_equal(day_w.features, np.asarray(day_f.features, np.float32))
    np.testing.assert_array_equal(day_w.labels[7:], day_f.labels[7:])
    assert (day_w.labels[:7] == -1).all()


def test_windowed_format_at_stride_10_is_an_exporter_style_schema_3_export(tmp_path):
    flat = synth.write_synthetic_export(tmp_path / "flat", days=3, rows=800, seed=4, schema="3.0")
    win = synth.write_synthetic_export(tmp_path / "win", days=3, rows=800, seed=4, fmt="windowed", window=100,
                                       stride=10, schema="3.0")
    sequences = np.load(win / "train" / "20240102_sequences.npy")
    labels = np.load(win / "train" / "20240102_labels.npy")
    forward = np.load(win / "train" / "20240102_forward_prices.npy")
    meta = json.loads((win / "train" / "20240102_metadata.json").read_text())
    assert sequences.shape == (71, 100, 98) and labels.shape == (71, 4) and labels.dtype == np.int8
    assert meta["horizons"] == [10, 20, 50, 100] and meta["stride"] == 10 and meta["contract_version"] == "3.0"
    assert forward.shape == (71, 10 + 100 + 1) and forward.dtype == np.float64
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = validate_export(win)
    assert report.layouts == ((100, 10),) and report.horizons == (10, 20, 50, 100)
    (day_w,), (day_f,) = load_split_data(win, "train")[:1], load_split_data(flat, "train")[:1]
    np.testing.assert_array_equal(day_w.features, np.asarray(day_f.features, np.float32))
    ends = day_w.layout.ends()
    np.testing.assert_array_equal(ends, 99 + 10 * np.arange(71))
    np.testing.assert_array_equal(day_w.labels[ends], day_f.labels[ends])
    mid = np.asarray(day_f.features[:, 40])
    np.testing.assert_array_equal(forward[:, 10], mid[ends])
    np.testing.assert_array_equal(forward[3, :], mid[ends[3] - 10 : ends[3] + 101])
    assert np.isfinite(forward).all() and day_w.forward_prices.shape == forward.shape
    manifest = json.loads((win / "dataset_manifest.json").read_text())
    assert manifest["stride"] == 10 and set(manifest["oracle_macro_f1"]) == {"10", "20", "50", "100"}
    assert (day_w.features[:, 97] == 0).all() and day_w.schema_version == 3.0


def test_schema_2_0_flips_the_two_flow_signs(tmp_path):
    new = synth.write_synthetic_export(tmp_path / "new", days=2, rows=300, seed=2)
    old = synth.write_synthetic_export(tmp_path / "old", days=2, rows=300, seed=2, schema="2.0")
    (day_new,), (day_old,) = load_split_data(new, "train"), load_split_data(old, "train")
    assert day_old.schema_version == 2.0 and day_new.schema_version == 2.2
    flipped = [FI.NET_CANCEL_FLOW, FI.NET_TRADE_FLOW]
    np.testing.assert_array_equal(day_old.features[:, flipped], -day_new.features[:, flipped])
    same = [c for c in range(97) if c not in flipped]
    np.testing.assert_array_equal(day_old.features[:, same], day_new.features[:, same])


def test_nan_in_gated_rows_still_validates(tmp_path):
    out = synth.write_synthetic_export(tmp_path / "x", days=2, rows=2000, seed=4, nan_in_gated=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        validate_export(out)
    x = np.load(out / "train" / "20240102_features.npy")
    assert np.isnan(x[x[:, FI.BOOK_VALID] == 0, FI.SPREAD_BPS]).all()


def test_bad_arguments_are_listed_together(tmp_path):
    with pytest.raises(ConfigError) as info:
        synth.write_synthetic_export(tmp_path / "x", days=0, rows=100, lag=0, splits=(0.5, 0.2, 0.2),
                                     fmt="csv", schema="4.0", stride=2, signal=1.0)
    assert len(info.value.problems) == 8 and "stride: 2" in str(info.value) and "signal: 1.0" in str(info.value)
    assert "rows: 100 (rule: at least 240" in str(info.value) and "fmt: 'csv'" in str(info.value)


def test_a_non_empty_folder_is_not_overwritten(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="exists and is not an empty folder"):
        synth.write_synthetic_export(tmp_path, days=1, rows=300)


@pytest.mark.parametrize("days,shares,counts", [
    (20, (0.6, 0.2, 0.2), (12, 4, 4)), (6, (0.6, 0.2, 0.2), (4, 1, 1)), (12, (0.6, 0.2, 0.2), (7, 3, 2)),
    (1, (0.6, 0.2, 0.2), (1, 0, 0)), (3, (1.0, 0.0, 0.0), (3, 0, 0)), (2, (0.1, 0.45, 0.45), (1, 1, 0)),
])
def test_splits_are_whole_days_in_order(days, shares, counts):
    names = synth._assign_splits(days, shares)
    assert tuple(names.count(s) for s in ("train", "val", "test")) == counts
    assert names == sorted(names, key=["train", "val", "test"].index)


def test_ar1_matches_the_recursion():
    shocks = np.random.default_rng(0).normal(size=(1000, 2))
    got = synth._ar1(shocks, 0.97, start=np.array([1.0, -2.0]))
    expected, carry = np.empty_like(shocks), np.array([1.0, -2.0])
    for t, shock in enumerate(shocks):
        carry = expected[t] = 0.97 * carry + shock
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)


def test_demo_export_is_generated_once_atomically(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(synth, "DEMO_DAYS", 3)
    monkeypatch.setattr(synth, "DEMO_ROWS", 300)
    monkeypatch.setenv("LOBSEARCH_CACHE", str(tmp_path / "cache"))
    first = synth.demo_export()
    assert "generating the demo export (3 days x 300 rows)" in capsys.readouterr().err
    assert first == tmp_path / "cache" / f"demo-{synth.demo_key()}"
    assert synth.demo_export() == first and capsys.readouterr().err == ""
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [first.name]
    validate_export(first)
    monkeypatch.setattr(synth, "DEMO_ROWS", 400)
    assert synth.demo_export(tmp_path / "other").parent == tmp_path / "other"
    assert synth.demo_key() not in first.name


@pytest.fixture
def tiny_demo(monkeypatch):
    monkeypatch.setattr(synth, "DEMO_DAYS", 2)
    monkeypatch.setattr(synth, "DEMO_ROWS", 300)


def test_demo_cache_defaults_to_home_and_expands_the_variable(tmp_path, monkeypatch, tiny_demo):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("LOBSEARCH_CACHE")
    assert synth.demo_export().parent == tmp_path / ".cache" / "lobsearch"
    monkeypatch.setenv("LOBSEARCH_CACHE", "~/elsewhere")
    assert synth.demo_export().parent == tmp_path / "elsewhere"


def test_a_cache_variable_naming_a_file_is_a_data_error(tmp_path, monkeypatch, capsys, tiny_demo):
    (tmp_path / "f").write_text("")
    monkeypatch.setenv("LOBSEARCH_CACHE", str(tmp_path / "f"))
    with pytest.raises(DataError, match=f"^LOBSEARCH_CACHE={tmp_path / 'f'}: not a directory \\(a file is there\\); "
                                        "point LOBSEARCH_CACHE at a folder"):
        synth.demo_export()
    monkeypatch.setenv("LOBSEARCH_CACHE", str(tmp_path / "f" / "sub"))
    with pytest.raises(DataError, match=f"LOBSEARCH_CACHE=.*: cannot be created \\({tmp_path / 'f'} is a file\\)"):
        synth.demo_export()
    assert synth.demo_export(tmp_path / "ok").parent == tmp_path / "ok", "the argument wins over the variable"
    with pytest.raises(SystemExit):
        synth.main(["--demo"])
    assert "LOBSEARCH_CACHE=" in capsys.readouterr().err


def test_a_cache_argument_naming_a_file_is_a_data_error_naming_the_argument(tmp_path, tiny_demo):
    (tmp_path / "f").write_text("")
    with pytest.raises(DataError, match=f"^cache folder {tmp_path / 'f'}: not a directory.*; pass a folder") as info:
        synth.demo_export(tmp_path / "f")
    assert "LOBSEARCH_CACHE" not in str(info.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_cache_folder_that_cannot_be_written_is_a_data_error(tmp_path, monkeypatch, tiny_demo):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        monkeypatch.setenv("LOBSEARCH_CACHE", str(locked))
        with pytest.raises(DataError, match=f"LOBSEARCH_CACHE={locked}: not writable"):
            synth.demo_export()
        monkeypatch.setenv("LOBSEARCH_CACHE", str(locked / "sub"))
        with pytest.raises(DataError, match="LOBSEARCH_CACHE=.*: cannot be created \\(Permission denied"):
            synth.demo_export()
    finally:
        locked.chmod(0o700)


def test_cli_writes_an_export_and_prints_the_oracle(tmp_path, capsys):
    assert synth.main([str(tmp_path / "out"), "--days", "2", "--rows", "300", "--seed", "1", "--lag", "5"]) == 0
    out = capsys.readouterr().out
    assert str(tmp_path / "out") in out and "planted lag 5" in out and "oracle macro-F1" in out
    with pytest.raises(SystemExit):
        synth.main([str(tmp_path / "bad"), "--days", "0"])
    assert "days: 0" in capsys.readouterr().err


def test_cli_help_names_every_option():
    result = subprocess.run([sys.executable, "-m", "lobsearch.synth", "--help"], capture_output=True, text=True,
                            check=True)
    for option in ("OUT_DIR", "--days", "--rows", "--seed", "--lag", "--format",
                   "--window", "--stride", "--schema", "--splits", "--nan-in-gated", "--demo"):
        assert option in result.stdout


@pytest.mark.slow
def test_twenty_days_of_twenty_thousand_rows_take_seconds(tmp_path):
    start = time.perf_counter()
    synth.write_synthetic_export(tmp_path / "big", days=20, rows=20000, seed=0)
    assert time.perf_counter() - start < 30
