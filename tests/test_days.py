"""Day files: discovery, validation with clear errors, memory-mapped loading and labels."""

import json
import os
import shutil
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lobsearch.contract import MISSING_LABEL, FeatureIndex as FI
from lobsearch.data import days as days_module
from lobsearch.data.days import (
    DataWarning,
    LabelRule,
    compute_labels,
    discover_export,
    load_day,
    load_split_data,
    read_npy_header,
    validate_export,
)
from lobsearch.errors import DataError

META = {"schema_version": "2.2", "n_features": 98, "label_strategy": "tlob",
        "labeling": {"horizons": [10, 20]}, "normalization": {"applied": False}}
LAYOUT = {"train": ("20240102", "20240103"), "val": ("20240104",), "test": ("20240105",)}


def book(rows, n_features=98, seed=0, dtype=np.float64):
    """(rows, F) finite rows that pass the gates, with a positive mid-price random walk."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, n_features))
    mid = 100 * np.exp(np.cumsum(rng.normal(0, 1e-3, rows)))
    x[:, FI.ASK_PRICE_L0], x[:, FI.BID_PRICE_L0] = mid + 0.005, mid - 0.005
    if n_features > FI.MID_PRICE:
        x[:, FI.MID_PRICE] = mid
    if n_features > FI.SCHEMA_VERSION:
        x[:, [FI.BOOK_VALID, FI.MBO_READY, FI.INVALIDITY_DELTA, FI.SCHEMA_VERSION]] = (1, 1, 0, 2.2)
    return x.astype(dtype)


def signed_labels(rows, horizons=2, seed=0):
    return np.random.default_rng(seed).integers(-1, 2, (rows, horizons)).astype(np.int8)


def write_day(folder, date, features, labels=None, metadata=None, kind="features"):
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / f"{date}_{kind}.npy", features)
    if labels is not None:
        np.save(folder / f"{date}_labels.npy", labels)
    if metadata is not None:
        (folder / f"{date}_metadata.json").write_text(json.dumps(metadata))


def make_export(root, layout=LAYOUT, rows=60, meta=META, manifest=None):
    for i, (split, dates) in enumerate((s, d) for s, d in layout.items()):
        for j, date in enumerate(dates):
            seed = 10 * i + j
            write_day(root / split, date, book(rows, seed=seed), signed_labels(rows, seed=seed), meta)
    if manifest is not None:
        (root / "dataset_manifest.json").write_text(json.dumps(manifest))
    return root


def day_file(root, split="train", index=0):
    return discover_export(root).splits[split][index]


def raises(match, fn, *args, **kwargs):
    with pytest.raises(DataError, match=match) as info:
        fn(*args, **kwargs)
    return str(info.value)


# ------------------------------------------------------------------ discovery


def test_discovery_sorts_days_and_accepts_both_spellings(tmp_path):
    write_day(tmp_path / "train", "2024-01-03", book(20))
    write_day(tmp_path / "train", "20240102", book(20))
    write_day(tmp_path / "test", "20240110", book(20))
    export = discover_export(tmp_path)
    assert [d.date for d in export.splits["train"]] == ["20240102", "20240103"]
    assert set(export.splits) == {"train", "test"}
    assert export.root.is_absolute() and export.manifest is None
    assert export.splits["train"][1].features.name == "2024-01-03_features.npy"


def test_fingerprint_follows_file_size_and_mtime(tmp_path):
    make_export(tmp_path)
    before = discover_export(tmp_path).fingerprint()
    assert before == discover_export(tmp_path).fingerprint() and len(before) == 16
    path = tmp_path / "val" / "20240104_features.npy"
    os.utime(path, ns=(1, 1))
    assert discover_export(tmp_path).fingerprint() != before


@pytest.mark.parametrize("make", [lambda root: None, lambda root: (root / "train").mkdir()])
def test_empty_export_is_an_error(tmp_path, make):
    make(tmp_path)
    raises("empty export", discover_export, tmp_path)


def test_missing_export_is_an_error(tmp_path):
    raises("no such folder", discover_export, tmp_path / "nowhere")


def test_day_in_two_splits_is_an_error(tmp_path):
    make_export(tmp_path, {"train": ("20240102", "20240103"), "val": ("20240103",)})
    message = raises("both train/ and val/", discover_export, tmp_path)
    assert "20240103" in message and "leak" in message


@pytest.mark.parametrize("layout", [
    {"train": ("20240102", "20240105"), "val": ("20240104",)},
    {"train": ("20240102",), "val": ("20240108",), "test": ("20240105",)},
])
def test_splits_out_of_chronological_order_are_an_error(tmp_path, layout):
    make_export(tmp_path, layout)
    raises("comes on or before the last", discover_export, tmp_path)


def test_misspelled_split_folder_is_an_error(tmp_path):
    make_export(tmp_path, {"train": ("20240102",), "valid": ("20240103",)})
    (tmp_path / "logs").mkdir()
    message = raises("valid: holds day files, but unknown split folder 'valid'; did you mean 'val'", discover_export,
                     tmp_path)
    assert "logs" not in message


def test_one_day_spelled_two_ways_is_an_error(tmp_path):
    write_day(tmp_path / "train", "20240102", book(20))
    write_day(tmp_path / "train", "2024-01-02", book(20))
    message = raises("also spelled", discover_export, tmp_path)
    assert "2024-01-02_features.npy" in message and "20240102_features.npy" in message


def test_not_a_calendar_date_is_an_error(tmp_path):
    write_day(tmp_path / "train", "20241399", book(20))
    raises("'20241399' is not a calendar date", discover_export, tmp_path)


def test_labels_without_features_is_an_error(tmp_path):
    write_day(tmp_path / "train", "20240102", book(20))
    np.save(tmp_path / "train" / "20240103_labels.npy", signed_labels(20))
    raises("20240103_labels.npy: no 20240103_features.npy", discover_export, tmp_path)


def test_flat_and_windowed_files_for_one_day_is_an_error(tmp_path):
    write_day(tmp_path / "train", "20240102", book(20))
    write_day(tmp_path / "train", "20240102", book(20)[None], kind="sequences")
    raises("one features file per day", discover_export, tmp_path)


def test_unreadable_manifest_is_an_error(tmp_path):
    make_export(tmp_path)
    (tmp_path / "dataset_manifest.json").write_text("{not json")
    raises("dataset_manifest.json: unreadable JSON", discover_export, tmp_path)


# ------------------------------------------------------------------ loading


def test_good_export_loads_memory_mapped_without_warnings(tmp_path):
    make_export(tmp_path, manifest={"feature_count": 98, "horizons": [10, 20]})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = validate_export(tmp_path)
        train = load_split_data(tmp_path, "train")
    assert report.warnings == () and report.n_features == 98 and not report.windowed
    assert report.days == {"train": ("20240102", "20240103"), "val": ("20240104",), "test": ("20240105",)}
    assert report.rows == {"train": 120, "val": 60, "test": 60}
    day = train[0]
    assert (day.date, day.split, day.num_samples, day.horizons) == ("20240102", "train", 60, (10, 20))
    assert isinstance(day.features, np.memmap) and not day.features.flags.writeable
    assert day.schema_version == 2.2 and day.normalized is False and day.metadata == META
    np.testing.assert_array_equal(day.labels, signed_labels(60, seed=0) + 1)
    assert day.labels.dtype == np.int8


def test_float32_features_stay_float32(tmp_path):
    write_day(tmp_path / "train", "20240102", book(30, dtype=np.float32), signed_labels(30), META)
    day = load_day(day_file(tmp_path))
    assert day.features.dtype == np.float32 and isinstance(day.features, np.memmap)


def test_triple_barrier_labels_are_class_indices_already(tmp_path):
    labels = signed_labels(30) + 1
    write_day(tmp_path / "train", "20240102", book(30), labels, {**META, "label_strategy": "triple_barrier"})
    np.testing.assert_array_equal(load_day(day_file(tmp_path)).labels, labels)


def test_one_column_labels_named_by_the_manifest(tmp_path):
    write_day(tmp_path / "train", "20240102", book(30), signed_labels(30)[:, 0])
    (tmp_path / "dataset_manifest.json").write_text(json.dumps({"horizons": [50]}))
    day = load_day(day_file(tmp_path))
    assert day.labels.shape == (30, 1) and day.horizons == (50,)


def test_unnamed_label_columns_are_an_error_even_when_a_rule_has_as_many_horizons(tmp_path):
    write_day(tmp_path / "train", "20240102", book(30), signed_labels(30))
    for rule in (None, LabelRule(horizons=(5, 7))):
        message = raises("2 label column\\(s\\), but no file names their horizons", load_day, day_file(tmp_path),
                         rule=rule)
        assert "labeling.horizons" in message and "export_config.toml" in message


def test_top_level_metadata_horizons_name_the_label_columns(tmp_path):
    write_day(tmp_path / "train", "20240102", book(30), signed_labels(30, 3), {"horizons": [5, 15, 45]})
    assert load_day(day_file(tmp_path)).horizons == (5, 15, 45)


def test_an_empty_manifest_horizons_list_states_nothing(tmp_path):
    write_day(tmp_path / "train", "20240102", book(30), signed_labels(30)[:, 0])
    (tmp_path / "dataset_manifest.json").write_text(json.dumps({"horizons": []}))
    raises("no file names their horizons", load_day, day_file(tmp_path))
    (tmp_path / "export_config.toml").write_text("[labels]\nstrategy = \"tlob\"\nhorizon = 50\n")
    assert load_day(day_file(tmp_path)).horizons == (50,)


def test_an_unreadable_export_config_is_an_error_naming_it(tmp_path):
    make_export(tmp_path)
    (tmp_path / "export_config.toml").write_text("[labels\nhorizon = ")
    raises("export_config.toml: unreadable TOML", discover_export, tmp_path)


def test_the_flat_exporters_row_count_in_n_features_is_read_as_a_row_count(tmp_path):
    legacy = {"day": "2024-01-02", "n_features": 30, "n_feature_dim": 98, "n_labels": 30, "n_sequences": 3}
    write_day(tmp_path / "train", "20240102", book(30), signed_labels(30), {**META, **legacy})
    assert load_day(day_file(tmp_path)).features.shape == (30, 98)
    write_day(tmp_path / "train", "20240102", book(30), signed_labels(30), {**META, **legacy, "n_feature_dim": 84})
    raises("98 features, but .*n_feature_dim is 84", load_day, day_file(tmp_path))
    write_day(tmp_path / "train", "20240102", book(30), signed_labels(30), {**META, **legacy, "n_features": 31})
    raises("30 rows, but .*n_features is 31", load_day, day_file(tmp_path))


def test_metadata_horizons_must_match_the_label_columns(tmp_path):
    write_day(tmp_path / "train", "20240102", book(30), signed_labels(30, 3), META)
    raises("3 label column\\(s\\), but .*names 2", load_day, day_file(tmp_path))


def test_labels_of_another_length_are_an_error(tmp_path):
    write_day(tmp_path / "train", "20240102", book(30), signed_labels(29), META)
    raises("29 labels for 30 rows of 20240102_features.npy", load_day, day_file(tmp_path))


def test_label_values_outside_the_encoding_are_an_error(tmp_path):
    labels = signed_labels(30)
    labels[7, 1] = 2
    write_day(tmp_path / "train", "20240102", book(30), labels, META)
    message = raises("outside \\[-1, 1\\], first 2 at row 7, column 1", load_day, day_file(tmp_path))
    assert "20240102_labels.npy" in message and "triple_barrier" in message


def test_float_labels_are_an_error(tmp_path):
    write_day(tmp_path / "train", "20240102", book(30), signed_labels(30).astype(np.float32), META)
    raises("dtype float32 \\(rule: labels are integers", load_day, day_file(tmp_path))


def test_unknown_label_strategy_is_an_error_with_a_close_match(tmp_path):
    write_day(tmp_path / "train", "20240102", book(30), signed_labels(30), {**META, "label_strategy": "tlobb"})
    raises("did you mean 'tlob'", load_day, day_file(tmp_path))


def test_labels_are_computed_from_mid_price_when_missing(tmp_path):
    meta = {"labeling": {"horizons": [5, 10], "smoothing": 3, "threshold": 0.001}}
    x = book(80)
    write_day(tmp_path / "train", "20240102", x, metadata=meta)
    day = load_day(day_file(tmp_path))
    assert day.horizons == (5, 10)
    np.testing.assert_array_equal(day.labels, compute_labels(x[:, FI.MID_PRICE], (5, 10), 3, 0.001))
    ruled = load_day(day_file(tmp_path), rule=LabelRule(horizons=(4,), smoothing=2, threshold=0.002))
    np.testing.assert_array_equal(ruled.labels, compute_labels(x[:, FI.MID_PRICE], (4,), 2, 0.002))


def test_book_only_layout_takes_the_mid_from_best_bid_and_ask(tmp_path):
    x = book(80, n_features=40)
    write_day(tmp_path / "train", "20240102", x)
    mid = (x[:, FI.ASK_PRICE_L0] + x[:, FI.BID_PRICE_L0]) / 2
    np.testing.assert_array_equal(load_day(day_file(tmp_path)).labels, compute_labels(mid, (10, 20, 50, 100)))


def test_normalized_flag_and_schema_version_sources(tmp_path):
    write_day(tmp_path / "train", "20240102", book(20), metadata={"normalization": {"applied": True},
                                                                  "schema_version": "2.0"})
    write_day(tmp_path / "train", "20240103", book(20))
    first, second = (load_day(d) for d in discover_export(tmp_path).splits["train"])
    assert first.normalized is True and first.schema_version == 2.0
    assert second.normalized is False and second.schema_version == 2.2  # from the SCHEMA_VERSION column


@pytest.mark.parametrize("block,columns,noted", [
    ({"applied": False, "strategy": "market_structure_zscore"}, [], False),
    ({"applied": True}, list(range(98)), False),
    ({"applied": True, "strategy": "market_structure_zscore", "levels": 10,
      "feature_layout": "ask_prices_10_ask_sizes_10_bid_prices_10_bid_sizes_10"}, list(range(40)), False),
    ({"applied": True, "strategy": "per_feature_zscore", "levels": 5}, list(range(20)), False),
    ({"applied": True, "strategy": "none", "feature_layout": "raw_ask_prices_10_ask_sizes_10"}, [], True),
    ({"applied": True, "strategy": "global_zscore", "feature_layout": "raw_ask_prices_10"}, [], True),
])
def test_the_columns_an_export_normalized_follow_strategy_and_layout(block, columns, noted):
    normalized, note = days_module.exported_normalization("m.json", {"normalization": block}, 98)
    assert np.flatnonzero(normalized).tolist() == columns
    assert (note is not None) == noted
    if noted:
        assert note.startswith("m.json: normalization.applied is true, but ") and "read as raw" in note


def test_bad_normalization_flag_is_an_error(tmp_path):
    write_day(tmp_path / "train", "20240102", book(20), metadata={"normalization": {"applied": "yes"}})
    raises("normalization.applied is 'yes'", load_day, day_file(tmp_path))


# ------------------------------------------------------------------ broken files


def test_truncated_npy_is_an_error(tmp_path):
    write_day(tmp_path / "train", "20240102", book(50))
    path = tmp_path / "train" / "20240102_features.npy"
    path.write_bytes(path.read_bytes()[:1000])
    raises("20240102_features.npy: truncated: 1000 bytes", validate_export, tmp_path)


def test_file_that_is_not_npy_is_an_error(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "20240102_features.npy").write_text("day,price\n1,2\n")
    raises("not a readable .npy file", validate_export, tmp_path)


def test_pickled_object_array_is_an_error(tmp_path):
    write_day(tmp_path / "train", "20240102", np.array([[{"a": 1}]], dtype=object))
    raises("pickled object array \\(dtype object\\)", validate_export, tmp_path)


@pytest.mark.parametrize("kind,array,found", [
    ("features", np.zeros((4, 5, 98)), "3-D array of shape \\(4, 5, 98\\)"),
    ("features", np.zeros(98), "1-D array"),
    ("sequences", np.zeros((4, 98)), "2-D array of shape \\(4, 98\\)"),
])
def test_wrong_dimensions_are_an_error(tmp_path, kind, array, found):
    write_day(tmp_path / "train", "20240102", array, kind=kind)
    raises(found, validate_export, tmp_path)


def test_integer_features_are_an_error(tmp_path):
    write_day(tmp_path / "train", "20240102", np.zeros((5, 98), dtype=np.int64))
    raises("dtype int64 \\(rule: features are float32 or float64", validate_export, tmp_path)


def test_feature_count_disagreeing_with_metadata_is_an_error(tmp_path):
    write_day(tmp_path / "train", "20240102", book(20), signed_labels(20), {**META, "n_features": 96})
    raises("98 features, but .*20240102_metadata.json n_features is 96", validate_export, tmp_path)


def test_feature_count_disagreeing_with_manifest_is_an_error(tmp_path):
    make_export(tmp_path, manifest={"feature_count": 116})
    message = raises("feature_count is 116, but the day files have 98", validate_export, tmp_path, deep=False)
    assert "dataset_manifest.json" in message
    raises("feature_count is 116", load_day, day_file(tmp_path))


def test_days_disagreeing_on_the_feature_count_are_an_error(tmp_path):
    make_export(tmp_path)
    write_day(tmp_path / "test", "20240105", book(60, n_features=84), signed_labels(60), {**META, "n_features": 84})
    for check in (validate_export, lambda root: load_split_data(root, "train")):
        message = raises("days disagree on the feature count", check, tmp_path)
        assert "84: test/20240105" in message and "98: train/20240102" in message


def test_nan_in_a_row_that_passes_the_gates_is_an_error(tmp_path):
    x = book(40)
    x[17, FI.TRUE_OFI] = np.nan
    x[30, FI.SPREAD] = np.inf
    write_day(tmp_path / "train", "20240102", x, signed_labels(40), META)
    message = raises("2 row\\(s\\) that pass the gates hold NaN or inf; first at row 17, column 84 \\(TRUE_OFI\\)",
                     load_day, day_file(tmp_path))
    assert "20240102_features.npy" in message
    assert "(rule: rows with BOOK_VALID >= 0.5, MBO_READY >= 0.5 and INVALIDITY_DELTA == 0 are finite)" in message


@pytest.mark.parametrize("gate,value", [(FI.BOOK_VALID, 0.0), (FI.MBO_READY, 0.0), (FI.INVALIDITY_DELTA, 2.0)])
def test_nan_in_a_gated_row_is_fine(tmp_path, gate, value):
    x = book(40)
    x[17, gate] = value
    x[17, [FI.TRUE_OFI, FI.MID_PRICE]] = np.nan
    write_day(tmp_path / "train", "20240102", x, signed_labels(40), META)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_day(day_file(tmp_path)).num_samples == 40


def test_nan_check_without_gate_columns_covers_every_row(tmp_path):
    x = book(40, n_features=48)
    x[3, 45] = np.nan
    write_day(tmp_path / "train", "20240102", x)
    raises("first at row 3, column 45 \\(VOLUME_IMBALANCE\\)", load_day, day_file(tmp_path))


def test_nan_scan_reads_in_chunks_and_finds_a_late_row(tmp_path, monkeypatch):
    monkeypatch.setattr(days_module, "_CHUNK_VALUES", 98 * 7)
    x = book(50)
    x[45, 3] = np.nan
    write_day(tmp_path / "train", "20240102", x, signed_labels(50), META)
    raises("1 row\\(s\\) .* first at row 45, column 3", load_day, day_file(tmp_path))


def test_empty_day_is_a_counted_warning_and_skipped(tmp_path):
    make_export(tmp_path)
    write_day(tmp_path / "train", "20240103", np.zeros((0, 98)), np.zeros((0, 2), np.int8), META)
    with pytest.warns(DataWarning, match="20240103_features.npy: day 20240103 has 0 rows"):
        report = validate_export(tmp_path)
    assert len(report.warnings) == 1 and report.days["train"] == ("20240102",)
    with pytest.warns(DataWarning):
        assert [d.date for d in load_split_data(tmp_path, "train")] == ["20240102"]


def test_problems_of_several_days_are_reported_together(tmp_path):
    make_export(tmp_path)
    for date, split in (("20240102", "train"), ("20240105", "test")):
        np.save(tmp_path / split / f"{date}_labels.npy", signed_labels(59))
    message = raises("2 problems in the export", validate_export, tmp_path)
    assert "train/20240102_labels.npy" in message and "test/20240105_labels.npy" in message


def test_unknown_split_names_the_choices_and_a_missing_split_is_empty(tmp_path):
    make_export(tmp_path, {"train": ("20240102",)})
    raises("unknown split 'valid'; did you mean 'val'", load_split_data, tmp_path, "valid")
    assert load_split_data(tmp_path, "test") == []


def test_read_npy_header_reads_only_the_header(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((7, 3), np.float32))
    header = read_npy_header(tmp_path / "a.npy")
    assert header.shape == (7, 3) and header.dtype == np.float32 and header.offset > 0


# ------------------------------------------------------------------ windowed format


def windowed(x, width):
    return np.ascontiguousarray(np.lib.stride_tricks.sliding_window_view(x, width, axis=0).transpose(0, 2, 1))


def test_windowed_day_becomes_flat_rows_with_labels_at_window_ends(tmp_path):
    x = book(30, dtype=np.float32)
    labels = signed_labels(26)
    write_day(tmp_path / "train", "20240102", windowed(x, 5), labels, META, kind="sequences")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = validate_export(tmp_path)
        day = load_day(day_file(tmp_path))
    assert report.windowed and report.rows == {"train": 30}
    np.testing.assert_array_equal(day.features, x)
    assert not day.features.flags.writeable
    assert (day.labels[:4] == MISSING_LABEL).all()
    np.testing.assert_array_equal(day.labels[4:], labels + 1)


def test_windows_that_do_not_overlap_as_the_stated_stride_says_are_an_error(tmp_path):
    x = book(40, dtype=np.float32)
    write_day(tmp_path / "train", "20240102", windowed(x, 5)[::2], signed_labels(18), {**META, "stride": 1},
              kind="sequences")
    message = raises("day 20240102: windows 0 and 1 show stride 2, but the stride is 1", load_day, day_file(tmp_path))
    assert "20240102_metadata.json stride" in message and "overlap by T - stride = 4 rows" in message


def test_a_windowed_day_at_stride_two_recovers_its_rows_once(tmp_path):
    x = book(41, dtype=np.float32)
    write_day(tmp_path / "train", "20240102", windowed(x, 5)[::2], signed_labels(19), META, kind="sequences")
    day = load_day(day_file(tmp_path))
    assert (day.layout.window, day.layout.stride, day.layout.count) == (5, 2, 19)
    np.testing.assert_array_equal(day.features, x)
    np.testing.assert_array_equal(np.flatnonzero(day.labels[:, 0] != MISSING_LABEL), 4 + 2 * np.arange(19))


def test_a_stated_window_size_other_than_the_files_is_an_error(tmp_path):
    write_day(tmp_path / "train", "20240102", windowed(book(30, dtype=np.float32), 5), signed_labels(26),
              {**META, "window_size": 100}, kind="sequences")
    raises("windows of 5 rows, but .*window_size is 100", load_day, day_file(tmp_path))


def test_windowed_labels_count_windows_not_rows(tmp_path):
    write_day(tmp_path / "train", "20240102", windowed(book(30, dtype=np.float32), 5), signed_labels(30), META,
              kind="sequences")
    raises("30 labels for 26 rows of 20240102_sequences.npy", load_day, day_file(tmp_path))


# ------------------------------------------------------------------ regression exports


REGRESSION_META = {"schema_version": "3.0", "label_strategy": "regression", "horizons": [10, 20],
                   "forward_prices": {"exported": True, "smoothing_window_offset": 2, "max_horizon": 20,
                                      "n_columns": 23, "units": "USD"}}


def regression_day(tmp_path, returns=None, forward=None, meta=REGRESSION_META):
    x = book(41, dtype=np.float32)
    returns = np.random.default_rng(1).normal(0, 8, (19, 2)) if returns is None else returns
    write_day(tmp_path / "train", "20240102", windowed(x, 5)[::2], metadata=meta, kind="sequences")
    np.save(tmp_path / "train" / "20240102_regression_labels.npy", returns)
    if forward is not None:
        np.save(tmp_path / "train" / "20240102_forward_prices.npy", forward)
    return returns


def test_regression_returns_become_classes_by_a_threshold_in_bps(tmp_path):
    returns = regression_day(tmp_path)
    returns[3, 1] = np.nan
    np.save(tmp_path / "train" / "20240102_regression_labels.npy", returns)
    message = raises("forward returns in bps, and no threshold_bps", load_day, day_file(tmp_path))
    assert "data.labels.threshold_bps" in message and "20240102_regression_labels.npy" in message
    day = load_day(day_file(tmp_path), rule=LabelRule(threshold_bps=5.0))
    assert day.label_strategy == "regression" and day.horizons == (10, 20)
    classes = day.labels[day.layout.ends()]
    expected = np.where(returns > 5, 2, np.where(returns < -5, 0, 1))
    expected[3, 1] = MISSING_LABEL
    np.testing.assert_array_equal(classes, expected)


def test_regression_labels_must_be_floats_one_row_per_window(tmp_path):
    regression_day(tmp_path, returns=np.zeros((18, 2)))
    raises("18 regression labels for 19 rows", load_day, day_file(tmp_path), rule=LabelRule(threshold_bps=5.0))
    regression_day(tmp_path, returns=np.zeros((19, 2), np.int8))
    raises("dtype int8 \\(rule: regression labels are floats", load_day, day_file(tmp_path),
           rule=LabelRule(threshold_bps=5.0))


def good_forward(rows=19, columns=23):
    prices = 100 + np.random.default_rng(2).random((rows, columns))
    prices[-1, -3:] = np.nan
    prices[-2, -1:] = np.nan
    return prices


def test_forward_prices_are_read_and_nan_only_past_the_days_end(tmp_path):
    regression_day(tmp_path, forward=good_forward())
    day = load_day(day_file(tmp_path), rule=LabelRule(threshold_bps=5.0))
    assert day.forward_prices.shape == (19, 23) and isinstance(day.forward_prices, np.memmap)


@pytest.mark.parametrize("change,found", [
    (lambda f: f.__setitem__((4, 7), np.nan), "row 4: NaN before a later finite price \\(NaN in columns \\[7\\]\\)"),
    (lambda f: f.__setitem__((-1, slice(None)), np.nan), "row 18: NaN at column 2, the price at t"),
    (lambda f: f.__setitem__((-1, slice(-3, None)), 1.0), "row 18: fewer NaN at its end than an earlier row"),
])
def test_forward_prices_with_nan_before_the_days_end_are_an_error(tmp_path, change, found):
    forward = good_forward()
    change(forward)
    regression_day(tmp_path, forward=forward)
    raises(found, load_day, day_file(tmp_path), rule=LabelRule(threshold_bps=5.0))


def test_forward_prices_of_other_columns_or_rows_are_an_error(tmp_path):
    regression_day(tmp_path, forward=good_forward(columns=22))
    raises("22 columns, but .*forward_prices states 23", load_day, day_file(tmp_path),
           rule=LabelRule(threshold_bps=5.0))
    regression_day(tmp_path, forward=good_forward(rows=20))
    raises("20 rows for 19 of 20240102_sequences.npy", load_day, day_file(tmp_path),
           rule=LabelRule(threshold_bps=5.0))


# ------------------------------------------------------------------ labels from the mid


def naive_labels(mid, h, k, theta):
    out = np.full(len(mid), MISSING_LABEL)
    for t in range(k, len(mid) - h - k):
        past, future = mid[t - k:t + 1].mean(), mid[t + h - k:t + h + 1].mean()
        ret = (future - past) / past
        out[t] = 2 if ret > theta else 0 if ret < -theta else 1
    return out


@settings(max_examples=40, deadline=None)
@given(n=st.integers(0, 120), h=st.integers(1, 30), k=st.integers(0, 12), seed=st.integers(0, 2**16))
def test_compute_labels_matches_the_definition(n, h, k, seed):
    rng = np.random.default_rng(seed)
    mid = 50 * np.exp(np.cumsum(rng.normal(0, 2e-3, n)))
    got = compute_labels(mid, (h,), k, 1e-3)[:, 0]
    expected = naive_labels(mid, h, k, 1e-3)
    assert got.dtype == np.int8 and got.shape == (n,)
    np.testing.assert_array_equal(got, expected)


def test_compute_labels_marks_windows_with_a_bad_price_missing():
    mid = np.linspace(100, 101, 60)
    mid[30] = 0.0
    labels = compute_labels(mid, (5,), 2, 1e-4)[:, 0]
    assert (labels[[25, 26, 27, 30, 31, 32]] == MISSING_LABEL).all()
    assert (labels[[2, 24, 28, 29, 33, 52]] == 2).all() and labels[53] == MISSING_LABEL


def test_compute_labels_rejects_bad_parameters():
    with pytest.raises(ValueError, match="horizons"):
        compute_labels(np.ones(10), (0,))


@pytest.mark.parametrize("entry", ["loop_split", "self_link_day", "folder_day", "folder_labels", "dangling_day"])
def test_broken_entries_are_errors_never_skipped(tmp_path, entry):
    """A split folder that loops, a day file that links to itself or nowhere, and folders named
    like day files (or like a day's labels) are each refused by name; nothing is skipped."""
    from lobsearch.synth import write_synthetic_export

    root = write_synthetic_export(tmp_path / "e", days=4, rows=400, seed=0)
    train = root / "train"
    day = sorted(train.glob("*_features.npy"))[0].name.split("_")[0]
    if entry == "loop_split":
        shutil.rmtree(root / "test")
        (root / "test").symlink_to(root / "test")
        bad = root / "test"
    elif entry == "self_link_day":
        bad = train / "20991231_features.npy"
        bad.symlink_to(bad)
    elif entry == "dangling_day":
        bad = train / "20991231_features.npy"
        bad.symlink_to(tmp_path / "nowhere.npy")
    elif entry == "folder_day":
        bad = train / "20991231_features.npy"
        bad.mkdir()
    else:
        bad = train / f"{day}_labels.npy"
        bad.unlink()
        bad.mkdir()
    with pytest.raises(DataError, match="named as a (split folder|day file), but it is") as info:
        discover_export(root)
    assert str(bad) in str(info.value)
