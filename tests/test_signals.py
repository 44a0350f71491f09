"""Signal analysis: rank IC, mutual information, sign check and constant features of train days."""

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lobsearch.contract import FeatureIndex as FI
from lobsearch.data.days import compute_labels
from lobsearch.errors import ConfigError, DataError
from lobsearch.signals import (
    analyze,
    average_ranks,
    format_report,
    forward_returns,
    main,
)
from lobsearch.synth import PLANTED_FEATURES, write_synthetic_export

PLANTED = (FI.TRUE_OFI, FI.DEPTH_NORM_OFI, FI.VOLUME_IMBALANCE)
FLOW_DRIVEN = set(PLANTED_FEATURES)


def write_day(folder, date, x, meta):
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / f"{date}_features.npy", x.astype(np.float32))
    (folder / f"{date}_metadata.json").write_text(json.dumps(meta))


def planted_day(rng, rows, n_features, signal_column, sign=1.0):
    """(rows, n_features) noise whose ``signal_column`` drives the next row's mid-price return."""
    x = rng.normal(size=(rows, n_features))
    signal = rng.normal(size=rows)
    returns = np.concatenate([[0.0], signal[:-1]]) * 5e-4 + rng.normal(size=rows) * 2e-4
    x[:, FI.MID_PRICE] = 100.0 * np.exp(np.cumsum(returns))
    x[:, signal_column] = sign * signal
    if n_features >= 98:
        x[:, [FI.BOOK_VALID, FI.MBO_READY, FI.INVALIDITY_DELTA]] = (1.0, 1.0, 0.0)
        x[:, FI.SCHEMA_VERSION] = 2.2
        x[:, FI.AVG_QUEUE_POSITION] = 0.0
    return x


def hand_export(root, *, n_features=98, rows=1500, signal_column=FI.TRUE_OFI, sign=1.0,
                schema=2.2, horizons=(10, 20), train=3, seed=0, smoothing=None):
    """An export of ``train`` train days and one val day whose planted column leads the mid."""
    rng = np.random.default_rng(seed)
    labeling = {"horizons": list(horizons)}
    if smoothing is not None:
        labeling["smoothing"] = smoothing
    meta = {"schema_version": schema, "labeling": labeling}
    for i in range(train + 1):
        split = "train" if i < train else "val"
        x = planted_day(rng, rows, n_features, signal_column, sign)
        write_day(root / split, f"202401{i + 2:02d}", x, meta)
    return root


@pytest.fixture(scope="module")
def synth_export(tmp_path_factory):
    return write_synthetic_export(tmp_path_factory.mktemp("synth") / "export", days=6, rows=3000,
                                  seed=0)


@pytest.fixture(scope="module")
def synth_report(synth_export):
    return analyze(synth_export)


# ------------------------------------------------------------------ the measures themselves


def test_average_ranks_give_ties_their_mean_rank_and_count_the_longest_run():
    x = np.array([[3.0, 1.0, 5.0], [1.0, 1.0, 5.0], [3.0, 2.0, 5.0], [2.0, 1.0, 5.0]])
    ranks, runs = average_ranks(x)
    assert ranks[:, 0].tolist() == [2.5, 0.0, 2.5, 1.0]
    assert ranks[:, 1].tolist() == [1.0, 1.0, 3.0, 1.0]
    assert ranks[:, 2].tolist() == [1.5] * 4
    assert runs.tolist() == [2, 3, 4]


def test_ranks_are_invariant_to_a_monotone_transform():
    x = np.random.default_rng(1).normal(size=(500, 2))
    assert np.array_equal(average_ranks(x)[0], average_ranks(np.exp(3 * x) - 7)[0])


def test_forward_returns_follow_the_label_rule():
    rng = np.random.default_rng(2)
    mid = 50 * np.exp(np.cumsum(rng.normal(scale=1e-3, size=400)))
    horizons, k, theta = (5, 30), 4, 8e-4
    returns = forward_returns(mid, horizons, k)
    labels = compute_labels(mid, horizons, k, theta)
    assert np.array_equal(np.isnan(returns), labels == -1)
    defined = ~np.isnan(returns)
    expected = 1 + (returns > theta).astype(int) - (returns < -theta).astype(int)
    assert np.array_equal(expected[defined], labels[defined])
    t, h = 100, 30
    past, future = mid[t - k:t + 1].mean(), mid[t + h - k:t + h + 1].mean()
    assert returns[t, 1] == pytest.approx((future - past) / past)


# ------------------------------------------------------------------ hand-made exports


def test_planted_column_leads_and_ic_is_invariant_to_monotone_transforms(tmp_path):
    root = hand_export(tmp_path / "e")
    for path in (root / "train").glob("*_features.npy"):
        x = np.load(path)
        x[:, FI.FRAGILITY_SCORE] = np.exp(x[:, FI.TRUE_OFI])
        np.save(path, x)
    report = analyze(root)
    assert set(report.top(10, 2)) == {FI.TRUE_OFI, FI.FRAGILITY_SCORE}
    j = report.horizon_index(10)
    assert report.ic[FI.TRUE_OFI, j] == pytest.approx(report.ic[FI.FRAGILITY_SCORE, j])
    assert report.ic[FI.TRUE_OFI, j] > 0.2
    assert report.mi[FI.TRUE_OFI, j] > 10 * np.median(report.mi[:, j])


def test_mutual_information_of_the_class_itself_is_its_entropy_in_bits(tmp_path):
    root = hand_export(tmp_path / "e", horizons=(10,), train=1)
    path = next((root / "train").glob("*_features.npy"))
    x = np.load(path)
    labels = compute_labels(x[:, FI.MID_PRICE], (10,))[:, 0]
    x[:, FI.FRAGILITY_SCORE] = labels
    np.save(path, x)
    report = analyze(root)
    share = np.bincount(labels[labels >= 0], minlength=3) / np.count_nonzero(labels >= 0)
    entropy = -sum(p * math.log2(p) for p in share if p > 0)
    assert report.mi[FI.FRAGILITY_SCORE, 0] == pytest.approx(entropy)
    assert np.nanmax(np.delete(report.mi[:, 0], [FI.FRAGILITY_SCORE, FI.TRUE_OFI])) < 0.05


def test_gated_rows_are_left_out(tmp_path):
    root = hand_export(tmp_path / "e", horizons=(10,), train=1)
    path = next((root / "train").glob("*_features.npy"))
    x = np.load(path)
    gated = np.arange(len(x)) % 2 == 0
    x[gated, FI.BOOK_VALID] = 0.0
    x[gated, FI.DEPTH_ASYMMETRY] = forward_returns(x[:, FI.MID_PRICE], (10,), 10)[gated, 0]
    np.save(path, x)
    report = analyze(root)
    kept = ~gated & ~np.isnan(forward_returns(x[:, FI.MID_PRICE], (10,), 10)[:, 0])
    assert report.rows == np.count_nonzero(kept)
    assert abs(report.ic[FI.DEPTH_ASYMMETRY, 0]) < 0.1


def test_constant_features_are_listed_and_have_no_ic(tmp_path):
    root = hand_export(tmp_path / "e")
    for i, path in enumerate(sorted((root / "train").glob("*_features.npy"))):
        x = np.load(path)
        x[:, FI.TIME_REGIME] = np.where(np.arange(len(x)) < 5, 3.0, 1.0)
        x[:, FI.DT_SECONDS] = float(i)
        np.save(path, x)
    report = analyze(root)
    gates = {"BOOK_VALID", "MBO_READY", "INVALIDITY_DELTA"}
    assert set(report.constant) == gates | {"AVG_QUEUE_POSITION", "SCHEMA_VERSION", "TIME_REGIME",
                                            "DT_SECONDS"}
    assert np.isnan(report.ic[FI.SCHEMA_VERSION]).all()
    assert np.abs(report.mi[FI.SCHEMA_VERSION]).max() < 1e-12
    assert report.to_json()["features"][FI.SCHEMA_VERSION]["ic"] == {"10": None, "20": None}


@pytest.mark.parametrize(("schema", "sign_ok"), [(2.0, True), (2.2, False)])
def test_sign_check_applies_the_schema_2_0_fix(tmp_path, schema, sign_ok):
    root = hand_export(tmp_path / "e", signal_column=FI.NET_CANCEL_FLOW, sign=-1.0, schema=schema)
    report = analyze(root)
    assert report.sign_ok[FI.NET_CANCEL_FLOW.name] is sign_ok
    assert report.top(10, 1) == [FI.NET_CANCEL_FLOW]
    assert bool((report.ic[FI.NET_CANCEL_FLOW] > 0).all()) is sign_ok
    section = format_report(report).split("sign check")[1]
    line = next(s for s in section.splitlines() if "NET_CANCEL_FLOW" in s)
    assert line.split()[0] == ("ok" if sign_ok else "FLAGGED")


@pytest.mark.parametrize("n_features", [48, 116])
def test_narrow_and_wide_exports_are_named_by_index(tmp_path, n_features):
    root = hand_export(tmp_path / "e", n_features=n_features, signal_column=FI.VOLUME_IMBALANCE)
    report = analyze(root)
    assert len(report.names) == n_features
    assert report.names[45] == "VOLUME_IMBALANCE"
    assert report.top(10, 1) == [FI.VOLUME_IMBALANCE]
    assert report.sign_ok[FI.VOLUME_IMBALANCE.name] is True
    if n_features > 98:
        assert report.names[98:] == tuple(f"f{i}" for i in range(98, n_features))
    else:
        assert list(report.sign_ok) == ["VOLUME_IMBALANCE"]
        assert report.rows == 3 * (1500 - 20 - 2 * 10)


def test_smoothing_comes_from_the_labeling_metadata(tmp_path):
    root = hand_export(tmp_path / "e", n_features=48, signal_column=FI.VOLUME_IMBALANCE,
                       smoothing=3, train=1)
    report = analyze(root)
    assert report.smoothing == 3
    assert report.rows == 1500 - 20 - 2 * 3
    assert analyze(root, smoothing=5).rows == 1500 - 20 - 2 * 5


def test_windowed_export_matches_its_flat_twin(tmp_path):
    # a window shorter than the MBO warm-up: the rows without a label are gated anyway
    kwargs = dict(days=2, rows=600, seed=3, splits=(0.5, 0.5, 0.0), horizons=(10, 20))
    flat = analyze(write_synthetic_export(tmp_path / "flat", **kwargs))
    windowed = analyze(write_synthetic_export(tmp_path / "win", fmt="windowed", window=5, **kwargs))
    assert (windowed.days, windowed.rows) == (flat.days, flat.rows)
    np.testing.assert_allclose(windowed.ic, flat.ic, atol=1e-3)


def test_max_rows_per_day_thins_each_day(tmp_path):
    report = analyze(hand_export(tmp_path / "e"), max_rows_per_day=400)
    assert set(report.rows_per_day.values()) == {400}
    assert report.top(10, 1) == [FI.TRUE_OFI]


def test_bad_arguments_and_missing_training_days_are_errors(tmp_path):
    root = hand_export(tmp_path / "e")
    hint = r"unknown horizon 200; did you mean '20'\? choices: 10, 20"
    with pytest.raises(ConfigError, match=hint):
        analyze(root, horizons=[10, 200])
    with pytest.raises(ConfigError) as error:
        analyze(root, max_rows_per_day=0, bins=1)
    assert len(error.value.problems) == 2
    shutil.rmtree(root / "train")
    with pytest.raises(DataError, match="no 'train' days.*splits found: val"):
        analyze(root)


# ------------------------------------------------------------------ the synthetic export


def test_flow_driven_features_lead_on_the_synthetic_export(synth_report):
    for horizon in (10, 20):
        assert set(synth_report.top(horizon, 10)) <= FLOW_DRIVEN
        assert {FI.TRUE_OFI, FI.DEPTH_NORM_OFI} <= set(synth_report.top(horizon, 12))
    assert (synth_report.ic[FI.VOLUME_IMBALANCE] > 2 * synth_report.ic_noise()).all()


def test_planted_bullish_features_pass_the_sign_check(synth_report):
    assert all(synth_report.sign_ok[column.name] for column in PLANTED)


def test_constant_synthetic_columns_are_found(synth_report):
    constant = set(synth_report.constant)
    assert {"SCHEMA_VERSION", "AVG_QUEUE_POSITION", "QUEUE_SIZE_AHEAD"} <= constant


def test_only_training_days_are_read(synth_export, synth_report, tmp_path):
    copy = Path(shutil.copytree(synth_export, tmp_path / "copy"))
    for split in ("val", "test"):
        for path in (copy / split).glob("*_features.npy"):
            x = np.load(path)
            np.save(path, np.random.default_rng(5).permutation(x))
    report = analyze(copy)
    assert report.days == synth_report.days
    np.testing.assert_array_equal(report.ic, synth_report.ic)
    np.testing.assert_array_equal(report.mi, synth_report.mi)


@pytest.mark.integration
def test_cli_prints_the_table_and_writes_the_report(synth_export, synth_report, tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "lobsearch.signals", str(synth_export), "--top", "12"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60, check=True,
    )
    assert "horizon 10: top 12 features by |IC|" in done.stdout
    assert "TRUE_OFI (84)" in done.stdout and "sign check" in done.stdout
    out = tmp_path / "runs" / "signals" / synth_export.name
    assert (out / "signals.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((out / "signals.json").read_text())
    assert saved["mi_unit"] == "bits" and saved["days"] == list(synth_report.days)
    assert saved["top"]["20"] == [synth_report.names[i] for i in synth_report.top(20)]


def test_cli_reports_a_missing_export_and_writes_nothing(tmp_path, capsys):
    assert main([str(tmp_path / "nope"), "--out", str(tmp_path / "out")]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_windows_that_do_not_overlap_are_refused_not_read_as_one_series(tmp_path):
    from upstream_export import Upstream, write_upstream_export

    from lobsearch.signals import analyze

    root = tmp_path / "e"
    write_upstream_export(root, Upstream(window_size=20, stride=20, horizons=(10,)))
    with pytest.raises(DataError, match="windows of 20 rows at stride 20 do not overlap"):
        analyze(root)
