"""Exports as the upstream exporter writes them (``upstream_export``): read, prepared and windowed
so that rows, windows and labels line up with what was written, at every stride and label layout."""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from upstream_export import LAGGED, PLANTED, Upstream, write_upstream_export

from lobsearch.config import PrepConfig
from lobsearch.contract import MISSING_LABEL
from lobsearch.data import load_split_data, validate_export
from lobsearch.data.__main__ import main as data_main
from lobsearch.data.days import DataWarning, LabelRule, discover_export, load_day
from lobsearch.data.pipeline import prepare, prepared_root
from lobsearch.data.windows import build_window_set
from lobsearch.errors import ConfigError, DataError

RAW = PrepConfig.model_validate({"normalization": {"mode": "none"}})

EXPORTS = {
    "default T100 stride10 single tlob": Upstream(),
    "T20 stride5 multi tlob": Upstream(window_size=20, stride=5, horizons=(10, 20, 50)),
    "T20 stride5 multi triple barrier": Upstream(window_size=20, stride=5, horizons=(10, 30), strategy="triple_barrier"),
    "T20 stride20 single triple barrier": Upstream(window_size=20, stride=20, horizons=(25,), strategy="triple_barrier"),
    "T100 stride10 multi opportunity": Upstream(horizons=(20, 60), strategy="opportunity", rows=1200),
    "T20 stride1 multi tlob schema 3.0": Upstream(window_size=20, stride=1, horizons=(10, 20), rows=400, schema="3.0"),
}


@pytest.fixture(scope="module", params=list(EXPORTS))
def upstream(request, tmp_path_factory):
    cfg = EXPORTS[request.param]
    root = tmp_path_factory.mktemp("upstream") / "export"
    return cfg, root, write_upstream_export(root, cfg)


def class_indices(labels: np.ndarray, cfg: Upstream) -> np.ndarray:
    return labels if cfg.strategy == "triple_barrier" else labels + 1


def ends_of(day, cfg: Upstream) -> np.ndarray:
    pitch = min(cfg.stride, cfg.window_size)
    return cfg.window_size - 1 + pitch * np.arange(len(day.sequences))


def run(root: Path, tmp_path: Path, config: PrepConfig = RAW):
    return prepare(root, config, cache_dir=tmp_path / "cache", engine="local")


def raises(match, fn, *args, **kwargs) -> str:
    with pytest.raises(DataError, match=match) as info:
        fn(*args, **kwargs)
    return str(info.value)


# ---------------------------------------------------------------- every layout reads and lines up


def test_the_export_validates_with_its_stride_horizons_and_strategy(upstream):
    cfg, root, _ = upstream
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = validate_export(root)
    assert report.windowed and report.layouts == ((cfg.window_size, cfg.stride),)
    assert report.horizons == cfg.horizons and report.label_strategy == cfg.strategy
    assert report.days["train"] == ("20250203", "20250204")


def test_rows_are_recovered_once_and_every_exported_window_and_label_sits_on_them(upstream):
    cfg, root, days = upstream
    loaded = {d.date: d for split in ("train", "val", "test") for d in load_split_data(root, split)}
    for written in days:
        day = loaded[written.date]
        count, width = written.sequences.shape[:2]
        assert (day.layout.window, day.layout.stride, day.layout.count) == (cfg.window_size, cfg.stride, count)
        if cfg.stride < cfg.window_size:
            span = width + (count - 1) * cfg.stride
            expected = written.rows[written.first_start : written.first_start + span].astype(np.float32)
            np.testing.assert_array_equal(day.features, expected)
        else:
            assert day.num_samples == count * width
        ends = ends_of(written, cfg)
        for j, end in enumerate(ends):
            np.testing.assert_array_equal(day.features[end - width + 1 : end + 1], written.sequences[j])
        np.testing.assert_array_equal(day.labels[ends], class_indices(written.labels, cfg))
        others = np.setdiff1d(np.arange(day.num_samples), ends)
        assert (day.labels[others] == MISSING_LABEL).all()


@pytest.mark.parametrize("shorter", [0, 1, 7])
def test_every_window_lobsearch_cuts_is_the_end_of_an_exported_window_with_its_label(upstream, tmp_path, shorter):
    cfg, root, days = upstream
    prepared = run(root, tmp_path)
    assert prepared.horizons == cfg.horizons and prepared.label_strategy == cfg.strategy
    window = cfg.window_size - shorter
    for split in ("train", "val"):
        written = [d for d in days if d.split == split]
        sequences = np.concatenate([d.sequences for d in written])
        labels = np.concatenate([class_indices(d.labels, cfg) for d in written])
        for h in range(len(cfg.horizons)):
            ws = build_window_set(prepared.splits[split], columns="full", horizon_index=h, window=window, stride=1)
            assert len(ws) == len(sequences)
            x, y = ws.batch(np.arange(len(ws)))
            np.testing.assert_array_equal(x.numpy(), sequences[:, cfg.window_size - window :])
            np.testing.assert_array_equal(y.numpy(), labels[:, h])


def test_the_planted_label_is_recovered_exactly_from_each_windows_end_row_and_lagged_row(upstream, tmp_path):
    cfg, root, _ = upstream
    prepared = run(root, tmp_path)
    for h in range(min(len(cfg.horizons), len(PLANTED))):
        ws = build_window_set(prepared.splits["train"], columns="full", horizon_index=h,
                              window=cfg.window_size, stride=1)
        x, y = ws.batch(np.arange(len(ws)))
        np.testing.assert_array_equal(np.sign(x[:, -1, PLANTED[h]].numpy()) + 1, y.numpy())
        if h == 0 and cfg.lag < cfg.window_size:
            np.testing.assert_array_equal(np.sign(x[:, -1 - cfg.lag, LAGGED].numpy()) + 1, y.numpy())


def test_a_searched_stride_takes_every_kth_exported_window(upstream, tmp_path):
    cfg, root, days = upstream
    prepared = run(root, tmp_path)
    first = prepared.splits["train"][0]
    step = -(-3 * cfg.stride // cfg.stride)
    ws = build_window_set([first], columns="full", horizon_index=0, window=cfg.window_size, stride=3 * cfg.stride)
    np.testing.assert_array_equal(ws.ends.numpy(), ends_of(days[0], cfg)[::step])


def test_a_window_longer_than_the_exports_t_is_refused_naming_t(upstream, tmp_path):
    cfg, root, _ = upstream
    prepared = run(root, tmp_path)
    with pytest.raises(ConfigError, match=f"window {cfg.window_size + 1} is longer than the {cfg.window_size} rows"):
        build_window_set(prepared.splits["train"], columns="full", horizon_index=0, window=cfg.window_size + 1,
                         stride=1)


# ---------------------------------------------------------------- labels as the export states them


def test_a_single_horizon_is_named_by_export_config_toml_alone(tmp_path):
    days = write_upstream_export(tmp_path / "e", Upstream(horizons=(50,)))
    manifest = json.loads((tmp_path / "e" / "dataset_manifest.json").read_text())
    assert manifest["horizons"] == [] and "horizons" not in days[0].meta["labeling"]
    day = load_day(discover_export(tmp_path / "e").splits["train"][0])
    assert day.horizons == (50,) and day.labels.shape[1] == 1
    prepared = run(tmp_path / "e", tmp_path)
    assert prepared.horizons == (50,)
    from lobsearch.recipe import horizon_index

    with pytest.raises(ConfigError, match=r"data.horizon: the export has no labels for horizon 10 \(available: 50\)"):
        horizon_index(10, prepared.horizons)


def strip(root: Path, *, manifest_keys=(), config_horizons=False, horizons_files=False, meta_keys=()) -> None:
    """Remove what names the horizons from chosen places of an export."""
    path = root / "dataset_manifest.json"
    path.write_text(json.dumps({k: v for k, v in json.loads(path.read_text()).items() if k not in manifest_keys}))
    if config_horizons:
        text = (root / "export_config.toml").read_text().splitlines()
        (root / "export_config.toml").write_text("\n".join(t for t in text if not t.startswith("horizon")))
    for meta in root.glob("*/*_metadata.json"):
        data = json.loads(meta.read_text())
        meta.write_text(json.dumps({k: v for k, v in data.items() if k not in meta_keys}))
    if horizons_files:
        for path in root.glob("*/*_horizons.json"):
            path.unlink()


def test_top_level_metadata_horizons_name_the_columns_not_the_configs_defaults(tmp_path):
    root = tmp_path / "e"
    write_upstream_export(root, Upstream(window_size=20, stride=5, horizons=(10, 30, 60, 120), schema="3.0"))
    strip(root, manifest_keys=("horizons",), config_horizons=True, horizons_files=True)
    for meta in root.glob("*/*_metadata.json"):
        data = json.loads(meta.read_text())
        data["labeling"].pop("horizons")
        meta.write_text(json.dumps(data))
    assert load_split_data(root, "train")[0].horizons == (10, 30, 60, 120)
    assert run(root, tmp_path, PrepConfig()).horizons == (10, 30, 60, 120)


def test_label_columns_nothing_names_are_refused_even_when_the_config_has_as_many_horizons(tmp_path):
    root = tmp_path / "e"
    write_upstream_export(root, Upstream(window_size=20, stride=5, horizons=(10, 30, 60, 120)))
    strip(root, manifest_keys=("horizons",), config_horizons=True, horizons_files=True)
    for meta in root.glob("*/*_metadata.json"):
        data = json.loads(meta.read_text())
        data["labeling"].pop("horizons")
        meta.write_text(json.dumps(data))
    assert len(PrepConfig().labels.horizons) == 4
    raises("4 label column\\(s\\), but no file names their horizons", run, root, tmp_path, PrepConfig())
    assert not list((tmp_path / "cache").glob("*/prepared.json"))


def test_horizons_that_disagree_between_two_files_are_an_error_naming_both(tmp_path):
    root = tmp_path / "e"
    write_upstream_export(root, Upstream(window_size=20, stride=5, horizons=(10, 20)))
    path = root / "train" / "20250203_horizons.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "horizons": [10, 30]}))
    message = raises("labeling.horizons is \\[10, 20\\], but .*20250203_horizons.json horizons is \\[10, 30\\]",
                     validate_export, root)
    assert "the same label horizons" in message


def test_a_metadata_horizon_that_disagrees_with_export_config_toml_is_an_error_naming_both(tmp_path):
    root = tmp_path / "e"
    write_upstream_export(root, Upstream(window_size=20, stride=5, horizons=(50,)))
    meta = root / "train" / "20250204_metadata.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "horizons": [60]}))
    for check in (lambda: load_split_data(root, "train"), lambda: validate_export(root)):
        raises("20250204_metadata.json horizons is \\[60\\], but .*export_config.toml \\[labels\\] horizon is 50",
               check)


def test_days_that_name_other_horizons_are_an_error_naming_both_days(tmp_path):
    root = tmp_path / "e"
    write_upstream_export(root, Upstream(window_size=20, stride=5, horizons=(50,)))
    strip(root, config_horizons=True)
    for date, horizon in (("20250203", 50), ("20250204", 60)):
        meta = root / "train" / f"{date}_metadata.json"
        meta.write_text(json.dumps({**json.loads(meta.read_text()), "horizons": [horizon]}))
    message = raises("20250204_sequences.npy: label horizons \\[60\\], but .*20250203_sequences.npy has \\[50\\]",
                     load_split_data, root, "train")
    assert "every day of an export has the same label horizons" in message


def test_triple_barrier_labels_stay_class_indices_whatever_spelling_names_the_strategy(tmp_path):
    root = tmp_path / "e"
    days = write_upstream_export(root, Upstream(window_size=20, stride=5, horizons=(10, 30), strategy="triple_barrier"))
    assert json.loads((root / "dataset_manifest.json").read_text())["labeling_strategy"] == "triplebarrier"
    strip(root, meta_keys=("label_strategy",))
    for meta in root.glob("*/*_metadata.json"):
        data = json.loads(meta.read_text())
        del data["labeling"]["strategy"], data["labeling"]["label_encoding"]
        meta.write_text(json.dumps(data))
    for path in root.glob("*/*_horizons.json"):
        path.write_text(json.dumps({**json.loads(path.read_text()), "labeling_strategy": "TripleBarrier"}))
    day = load_split_data(root, "train")[0]
    assert day.label_strategy == "triple_barrier"
    np.testing.assert_array_equal(day.labels[day.layout.ends()], days[0].labels)
    assert set(np.unique(days[0].labels)) <= {0, 1, 2} and 0 in days[0].labels


def test_a_strategy_and_a_label_format_that_disagree_are_an_error(tmp_path):
    root = tmp_path / "e"
    write_upstream_export(root, Upstream(window_size=20, stride=5, horizons=(10, 30), strategy="triple_barrier"))
    meta = root / "train" / "20250203_metadata.json"
    data = json.loads(meta.read_text())
    data["labeling"]["label_encoding"]["format"] = "signed_int8"
    meta.write_text(json.dumps(data))
    raises("label_strategy is 'triple_barrier', which stores labels as class indices .* labeling.label_encoding.format "
           "states signed", validate_export, root)


def test_the_data_report_names_triple_barrier_classes(tmp_path, capsys):
    root = tmp_path / "e"
    write_upstream_export(root, Upstream(window_size=20, stride=5, horizons=(10, 30), strategy="triple_barrier"))
    assert data_main(["report", str(root)]) == 0
    out = capsys.readouterr().out
    assert "h10 SL/T/PT %" in out and "D/S/U" not in out and "T=20, stride 1" in out
    assert data_main(["report", str(root), "--json", "--window", "20"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["classes"] == ["stop_loss", "timeout", "profit_target"]
    assert set(report["splits"]["train"]["label_balance_percent"]["30"]) == set(report["classes"])
    windows = {d["date"]: d["windows"]["windows"] for d in report["days"]}
    assert windows["20250203"] == load_day(discover_export(root).splits["train"][0]).layout.count


def test_the_data_report_refuses_a_window_longer_than_t(tmp_path, capsys):
    root = tmp_path / "e"
    write_upstream_export(root, Upstream(window_size=20, stride=5, horizons=(10,)))
    assert data_main(["report", str(root), "--window", "100"]) == 2
    assert "window 100 is longer than the 20 rows of each exported window" in capsys.readouterr().err


# ---------------------------------------------------------------- bad input: a clear error, nothing written


def test_strides_that_disagree_between_metadata_and_manifest_are_an_error(tmp_path):
    root = tmp_path / "e"
    write_upstream_export(root, Upstream(window_size=20, stride=5, horizons=(10,)))
    meta = root / "val" / "20250205_metadata.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "stride": 10}))
    message = raises("20250205_metadata.json stride is 10, but .*dataset_manifest.json stride is 5", run, root, tmp_path)
    assert "the same stride" in message
    assert not list((tmp_path / "cache").glob("*/prepared.json"))


def test_windows_that_do_not_overlap_as_the_stride_says_are_an_error_naming_both_strides(tmp_path):
    root = tmp_path / "e"
    write_upstream_export(root, Upstream(window_size=20, stride=5, horizons=(10,)))
    for name in ("dataset_manifest.json",):
        path = root / name
        path.write_text(json.dumps({**json.loads(path.read_text()), "stride": 4}))
    config = root / "export_config.toml"
    config.write_text(config.read_text().replace("stride = 5", "stride = 4"))
    message = raises("day 20250203: windows 0 and 1 show stride 5, but the stride is 4", validate_export, root)
    assert "20250203_sequences.npy" in message and "dataset_manifest.json stride" in message


def test_windows_stated_not_to_overlap_that_do_are_an_error(tmp_path):
    root = tmp_path / "e"
    write_upstream_export(root, Upstream(window_size=20, stride=5, horizons=(10,)))
    for path in (root / "dataset_manifest.json",):
        path.write_text(json.dumps({**json.loads(path.read_text()), "stride": 20}))
    config = root / "export_config.toml"
    config.write_text(config.read_text().replace("stride = 5", "stride = 20"))
    raises("windows 0 and 1 show stride 5, but the stride is 20 .*do not overlap", validate_export, root)


def test_a_stride_no_file_states_is_observed_on_the_data(tmp_path):
    root = tmp_path / "e"
    written = write_upstream_export(root, Upstream(window_size=20, stride=5, horizons=(10,)))
    strip(root, manifest_keys=("stride",))
    config = root / "export_config.toml"
    config.write_text(config.read_text().replace("stride = 5\n", ""))
    day = load_split_data(root, "train")[0]
    assert day.layout.stride == 5
    np.testing.assert_array_equal(day.labels[day.layout.ends()], written[0].labels + 1)


def test_windows_that_do_not_overlap_and_no_file_strides_stay_independent(tmp_path):
    root = tmp_path / "e"
    write_upstream_export(root, Upstream(window_size=20, stride=30, horizons=(10,)))
    strip(root, manifest_keys=("stride",))
    config = root / "export_config.toml"
    config.write_text(config.read_text().replace("stride = 30\n", ""))
    day = load_split_data(root, "train")[0]
    assert (day.layout.stride, day.layout.overlapping) == (20, False)


def test_a_deeplob_tensor_export_is_refused_naming_the_exporter_option(tmp_path):
    root = tmp_path / "e"
    write_upstream_export(root, Upstream(window_size=20, stride=5, horizons=(10,),
                                         tensor_format="DeepLOB { levels: 10 }"))
    message = raises("4-D array of shape \\(\\d+, 20, 4, 10\\): a DeepLOB", validate_export, root)
    assert "tensor_format option, metadata tensor_format 'DeepLOB { levels: 10 }'" in message
    assert "tensor_format Flat" in message


def test_labels_with_more_columns_than_named_horizons_are_an_error(tmp_path):
    root = tmp_path / "e"
    write_upstream_export(root, Upstream(window_size=20, stride=5, horizons=(10, 20)))
    path = root / "test" / "20250206_labels.npy"
    labels = np.load(path)
    np.save(path, np.concatenate([labels, labels[:, :1]], axis=1))
    raises("3 label column\\(s\\), but .*names 2: \\[10, 20\\]", validate_export, root)


def test_labels_cannot_be_computed_over_windows_that_do_not_overlap(tmp_path):
    root = tmp_path / "e"
    write_upstream_export(root, Upstream(window_size=20, stride=20, horizons=(25,), strategy="triple_barrier"))
    config = PrepConfig.model_validate({"labels": {"source": "computed"}})
    raises("windows that do not overlap \\(stride 20 >= T = 20\\)", run, root, tmp_path, config)


# ---------------------------------------------------------------- gates and normalization as for flat days


def flat_twin(days, root: Path) -> None:
    """The recovered rows of each stride-5 windowed day as a flat export (no labels file)."""
    for day in days:
        folder = root / day.split
        folder.mkdir(parents=True, exist_ok=True)
        span = day.sequences.shape[1] + (len(day.sequences) - 1) * 5
        rows = day.rows[day.first_start : day.first_start + span].astype(np.float32)
        np.save(folder / f"{day.date}_features.npy", rows)


def test_gates_and_train_statistics_are_those_of_the_same_rows_read_flat(tmp_path):
    cfg = Upstream(window_size=20, stride=5, horizons=(10,), gated_rows=(300, 301, 777))
    days = write_upstream_export(tmp_path / "win", cfg)
    windowed = run(tmp_path / "win", tmp_path, PrepConfig())
    first = windowed.splits["train"][0]
    recovered = days[0].rows[days[0].first_start :][: first.x.shape[0]]
    np.testing.assert_array_equal(first.row_ok, recovered[:, 92] >= 0.5)
    ws = build_window_set(windowed.splits["train"], columns="full", horizon_index=0, window=20, stride=1)
    all_windows = sum(len(d.sequences) for d in days if d.split == "train")
    gated_windows = sum(int((d.sequences[:, :, 92] < 0.5).any(axis=1).sum()) for d in days if d.split == "train")
    assert gated_windows > 0 and len(ws) == all_windows - gated_windows
    report = windowed.gate_report["days"][0]
    assert report["windows_dropped"]["book_valid"] == int((days[0].sequences[:, :, 92] < 0.5).any(axis=1).sum())
    flat_root = tmp_path / "flat"
    flat_twin(days, flat_root)
    flat = run(flat_root, tmp_path, PrepConfig())
    np.testing.assert_array_equal(windowed.stats.mean, flat.stats.mean)
    np.testing.assert_array_equal(windowed.stats.std, flat.stats.std)
    np.testing.assert_array_equal(first.x, flat.splits["train"][0].x)


def test_the_older_trainers_import_works():
    from lobsearch import data

    assert data.load_split_data is load_split_data and callable(data.validate_export)
    assert dataclasses.is_dataclass(data.WindowLayout)


# ---------------------------------------------------------------- normalization as the export states it


def prepared_columns(prepared, tmp_path: Path) -> dict:
    folder = prepared_root(tmp_path / "cache") / prepared.key
    return json.loads((folder / "prepared.json").read_text())["columns"]


def test_book_columns_the_exporter_normalized_stay_as_they_are_and_the_others_are_z_scored(tmp_path):
    root = tmp_path / "e"
    days = write_upstream_export(root, Upstream(window_size=20, stride=5, horizons=(10,), normalization="book_zscore"))
    assert days[0].meta["normalization"]["applied"] is True
    prepared = run(root, tmp_path, PrepConfig())
    first = prepared.splits["train"][0]
    exported = days[0].rows[days[0].first_start :][: first.num_samples].astype(np.float32)
    np.testing.assert_array_equal(first.x[:, :40], exported[:, :40])
    assert not prepared.stats.scaled[:40].any() and prepared.stats.scaled[40:92].all()
    train_x = np.concatenate([d.x for d in prepared.splits["train"]])
    np.testing.assert_allclose(train_x[:, 41:92].mean(axis=0), 0, atol=1e-4)
    columns = prepared_columns(prepared, tmp_path)
    assert columns["export_normalized"] == list(range(40))
    assert columns["left_raw"] == [92, 93, 94, 96, 97] and 95 in columns["z_scored"]
    assert sorted(c for listed in columns.values() for c in listed) == list(range(98))


def test_metadata_claiming_normalization_on_raw_values_is_one_warning_and_its_columns_are_normalized(tmp_path):
    claimed = tmp_path / "claimed"
    write_upstream_export(claimed, Upstream(window_size=20, stride=5, horizons=(10,), normalization="claimed"))
    write_upstream_export(tmp_path / "raw", Upstream(window_size=20, stride=5, horizons=(10,)))
    with pytest.warns(DataWarning) as caught:
        prepared = run(claimed, tmp_path, PrepConfig())
    notes = [str(w.message) for w in caught if "state normalization they do not have" in str(w.message)]
    assert len(notes) == 1 and "4 day(s)" in notes[0] and "strategy 'none'" in notes[0] and "raw_ask" in notes[0]
    raw = run(tmp_path / "raw", tmp_path, PrepConfig())
    for a, b in zip(prepared.splits["train"], raw.splits["train"]):
        np.testing.assert_array_equal(a.x, b.x)
    assert prepared_columns(prepared, tmp_path)["export_normalized"] == []
    with pytest.warns(DataWarning):
        report = validate_export(claimed)
    assert len(report.warnings) == 1


def test_days_normalized_in_other_columns_are_an_error(tmp_path):
    root = tmp_path / "e"
    write_upstream_export(root, Upstream(window_size=20, stride=5, horizons=(10,), normalization="book_zscore"))
    meta = root / "val" / "20250205_metadata.json"
    data = json.loads(meta.read_text())
    data["normalization"].update(applied=False)
    meta.write_text(json.dumps(data))
    message = raises("the export normalized columns none, but in .*20250203_sequences.npy columns 0-39", run, root,
                     tmp_path, PrepConfig())
    assert "20250205_sequences.npy" in message


# ---------------------------------------------------------------- regression exports


def as_regression(root: Path, days) -> None:
    """The export rewritten as a regression export: forward returns in bps instead of class labels."""
    for day in days:
        folder = root / day.split
        (folder / f"{day.date}_labels.npy").unlink()
        horizons = len(day.meta["labeling"]["horizons"])
        returns = np.random.default_rng(3).normal(0, 10, (len(day.sequences), horizons))
        np.save(folder / f"{day.date}_regression_labels.npy", returns)
        meta = folder / f"{day.date}_metadata.json"
        meta.write_text(json.dumps({**json.loads(meta.read_text()), "label_strategy": "regression"}))
    config = root / "export_config.toml"
    config.write_text(config.read_text().replace('strategy = "tlob"', 'strategy = "regression"'))
    manifest = root / "dataset_manifest.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "labeling_strategy": "regression"}))


def test_a_regression_export_needs_a_threshold_and_is_never_labelled_from_the_mid_silently(tmp_path):
    root = tmp_path / "e"
    days = write_upstream_export(root, Upstream(window_size=20, stride=5, horizons=(10, 20)))
    as_regression(root, days)
    raises("no threshold_bps to make classes of them", run, root, tmp_path, PrepConfig())
    computed = run(root, tmp_path, PrepConfig.model_validate({"labels": {"source": "computed"}}))
    assert computed.horizons == PrepConfig().labels.horizons and computed.label_strategy == "tlob"
    day = load_day(discover_export(root).splits["train"][0], rule=LabelRule(threshold_bps=4.0))
    assert day.label_strategy == "regression" and day.horizons == (10, 20)
    returns = np.load(root / "train" / "20250203_regression_labels.npy")
    expected = np.where(returns > 4, 2, np.where(returns < -4, 0, 1))
    np.testing.assert_array_equal(day.labels[day.layout.ends()], expected)


def test_a_regression_export_prepares_with_the_configured_threshold(tmp_path):
    root = tmp_path / "e"
    days = write_upstream_export(root, Upstream(window_size=20, stride=5, horizons=(10, 20)))
    as_regression(root, days)
    prepared = run(root, tmp_path, PrepConfig.model_validate({"labels": {"threshold_bps": 4.0}}))
    assert prepared.horizons == (10, 20) and prepared.label_strategy == "regression"
    first = days[0]
    returns = np.load(root / first.split / f"{first.date}_regression_labels.npy")
    day = next(d for d in prepared.splits[first.split] if d.date == first.date)
    labels = np.asarray(day.labels)[day.layout.ends()]
    np.testing.assert_array_equal(labels, np.where(returns > 4, 2, np.where(returns < -4, 0, 1)))


# ---------------------------------------------------------------- schema 3.0 manifests: split summary, skipped days

ACCOUNTED = Upstream(window_size=20, stride=5, horizons=(10, 20), rows=300, schema="3.0",
                     days=(("train", "20250203"), ("train", "20250205"), ("val", "20250207"), ("test", "20250210")),
                     skipped=(("train", "20250204", "no MBO file for the day"),),
                     failed=(("val", "20250206", "Label error: short session"),))


def rewrite_manifest(root: Path, **changes) -> None:
    path = root / "dataset_manifest.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_days_the_manifest_skipped_are_reported_by_validation_loading_preparing_and_the_data_report(
        tmp_path, capsys):
    root = tmp_path / "e"
    write_upstream_export(root, ACCOUNTED)
    manifest = json.loads((root / "dataset_manifest.json").read_text())
    assert manifest["splits"]["train"]["days"] == 3 and manifest["skipped_days"][0]["day"] == "20250204"
    with pytest.warns(DataWarning) as caught:
        report = validate_export(root)
    assert [(s.date, s.split) for s in report.skipped.skipped] == [("20250204", "train"), ("20250206", "val")]
    assert "train: 2 day(s)" in report.summary() and "not exported: 20250204" in report.summary()
    assert "val: 1 day(s)" in report.summary() and "not exported: 20250206" in report.summary()
    notes = [str(w.message) for w in caught if "not exported" in str(w.message)]
    assert len(notes) == 1 and notes[0] in report.warnings
    assert "no MBO file for the day" in notes[0] and "export failed: Label: Label error: short session" in notes[0]
    with pytest.warns(DataWarning, match="1 day\\(s\\) were not exported, so they are missing from train/: "
                      "20250204 \\(train\\): no MBO file for the day"):
        assert [d.date for d in load_split_data(root, "train")] == ["20250203", "20250205"]
    prepared = run(root, tmp_path, PrepConfig())
    gone = prepared.gate_report["days_skipped_by_export"]
    assert [(g["date"], g["split"], g["manifest_key"]) for g in gone] == [
        ("20250204", "train", "skipped_days"), ("20250206", "val", "partial_failure.failed_partitions")]
    assert "2 day(s) not exported" in prepared.summary()
    assert data_main(["report", str(root)]) == 0
    out = capsys.readouterr().out
    assert "day 20250204 (train) not exported, as the manifest's skipped_days says: no MBO file for the day" in out
    assert "day 20250206 (val) not exported, as the manifest's partial_failure.failed_partitions says" in out
    assert data_main(["report", str(root), "--json"]) == 0
    assert [g["date"] for g in json.loads(capsys.readouterr().out)["days_skipped_by_export"]] == ["20250204", "20250206"]


def test_a_bare_count_of_skipped_days_is_reported_and_the_exporters_split_spelling_is_read(tmp_path):
    root = tmp_path / "e"
    write_upstream_export(root, dataclasses.replace(ACCOUNTED, split_key="split", skipped_as_count=True))
    assert "split" in json.loads((root / "dataset_manifest.json").read_text())
    with pytest.warns(DataWarning, match="skipped_days counts 1 more skipped day\\(s\\) without naming them"):
        report = validate_export(root)
    assert report.skipped.unnamed == 1 and [s.date for s in report.skipped.skipped] == ["20250206"]
    assert run(root, tmp_path, PrepConfig()).gate_report["days_skipped_unnamed"] == 1


def test_a_split_count_the_folders_do_not_make_up_is_an_error_naming_the_manifest_and_both_counts(tmp_path):
    root = tmp_path / "e"
    write_upstream_export(root, ACCOUNTED)
    for path in (root / "train").glob("20250205_*"):
        path.unlink()
    message = raises("splits.train.days is 3, but train/ holds 1 day\\(s\\) and the manifest says 1 more were "
                     "not exported", discover_export, root)
    assert str(root / "dataset_manifest.json") in message
    raises("splits.train.days is 3", run, root, tmp_path, PrepConfig())
    assert not list((tmp_path / "cache").glob("*/prepared.json"))


def test_a_day_the_manifest_lists_in_another_split_is_an_error_naming_the_day_and_both_splits(tmp_path):
    root = tmp_path / "e"
    write_upstream_export(root, dataclasses.replace(ACCOUNTED, split_dates=True))
    (root / "val").mkdir(exist_ok=True)
    for path in (root / "train").glob("20250205_*"):
        path.rename(root / "val" / path.name)
    message = raises("splits.train lists day 20250205, but it is on disk in val/ \\(20250205_sequences.npy\\)",
                     validate_export, root)
    assert str(root / "dataset_manifest.json") in message
    for check in (lambda: load_split_data(root, "val"), lambda: run(root, tmp_path, PrepConfig())):
        raises("splits.train lists day 20250205", check)


def test_a_listed_day_missing_on_disk_is_an_error_unless_the_manifest_skipped_it(tmp_path):
    root = tmp_path / "e"
    write_upstream_export(root, dataclasses.replace(ACCOUNTED, split_dates=True))
    with pytest.warns(DataWarning, match="2 day\\(s\\) were not exported"):
        assert validate_export(root, deep=False).skipped.skipped  # the skipped days are listed and fine
    for path in (root / "test").glob("20250210_*"):
        path.unlink()
    message = raises("splits.test lists day 20250210, but test/ has no day files for it and the manifest does not "
                     "say it was skipped", discover_export, root)
    assert str(root / "dataset_manifest.json") in message


def test_a_day_on_disk_its_split_does_not_list_is_an_error(tmp_path):
    root = tmp_path / "e"
    write_upstream_export(root, dataclasses.replace(ACCOUNTED, split_dates=True))
    manifest = json.loads((root / "dataset_manifest.json").read_text())
    manifest["splits"]["test"] = {"days": 0, "dates": []}
    rewrite_manifest(root, splits=manifest["splits"])
    raises("splits.test does not list day 20250210, which is in test/ \\(20250210_sequences.npy\\)",
           discover_export, root)
    del manifest["splits"]["test"]
    rewrite_manifest(root, splits=manifest["splits"])
    raises("splits has no test entry, but day 20250210 is in test/", discover_export, root)


def test_a_day_the_manifest_skipped_that_is_on_disk_is_an_error(tmp_path):
    root = tmp_path / "e"
    write_upstream_export(root, ACCOUNTED)
    manifest = json.loads((root / "dataset_manifest.json").read_text())
    rewrite_manifest(root, skipped_days=[*manifest["skipped_days"], {"day": "20250207", "split": "val"}])
    raises("skipped_days names day 20250207 \\(val\\) as not exported, but it is on disk in val/ "
           "\\(20250207_sequences.npy\\)", discover_export, root)


@pytest.mark.parametrize("changes, match", [
    ({"skipped_days": "2"}, "skipped_days is '2'"),
    ({"skipped_days": [{"split": "train"}]}, "skipped_days\\[0\\] is \\{'split': 'train'\\}"),
    ({"skipped_days": [{"day": "2025-02-30"}]}, "skipped_days\\[0\\].day holds '2025-02-30'"),
    ({"skipped_days": [{"day": "20250204", "split": "tarin"}]}, "unknown split 'tarin'; did you mean 'train'"),
    ({"splits": {"train": {"days": "3"}}}, "splits.train is \\{'days': '3'\\}"),
    ({"splits": {"validation": {"days": 1}}}, "splits key: unknown split 'validation'"),
    ({"splits": {"train": {"days": 2, "dates": ["20250203"]}}}, "splits.train.days is 2, but splits.train.dates "
                                                                 "lists 1 day"),
    ({"partial_failure": {"failed_partitions": [{"error_msg": "x"}]}}, "a failed partition names its partition_key"),
])
def test_a_malformed_manifest_accounting_is_an_error_naming_the_key_and_value(tmp_path, changes, match):
    root = tmp_path / "e"
    write_upstream_export(root, ACCOUNTED)
    rewrite_manifest(root, **changes)
    message = raises(match, discover_export, root)
    assert str(root / "dataset_manifest.json") in message


@pytest.mark.parametrize("date", ["20250204", "20250205"])
@pytest.mark.parametrize("config", [PrepConfig(), RAW], ids=["mode train", "mode none"])
def test_prepare_checks_the_stride_of_every_day_once_whichever_pass_reads_it_first(tmp_path, date, config):
    root = tmp_path / "e"
    write_upstream_export(root, Upstream(window_size=20, stride=5, horizons=(10,), rows=400))
    split = "train" if date == "20250204" else "val"
    path = root / split / f"{date}_sequences.npy"
    sequences = np.load(path)
    sequences[-1, 0, 50] += 1.0  # the last pair is always sampled
    np.save(path, sequences)
    raises(f"day {date}: windows {len(sequences) - 2} and {len(sequences) - 1} show", run, root, tmp_path, config)
    assert not list((tmp_path / "cache").glob("*/prepared.json"))


def test_listed_days_missing_on_disk_are_matched_to_a_bare_count_of_skipped_days_while_it_lasts(tmp_path):
    root = tmp_path / "e"
    write_upstream_export(root, dataclasses.replace(ACCOUNTED, split_dates=True, skipped_as_count=True))
    with pytest.warns(DataWarning):
        skipped = validate_export(root, deep=False).skipped
    assert skipped.unnamed == 0 and [(s.date, s.split) for s in skipped.skipped] == [("20250204", "train"),
                                                                                      ("20250206", "val")]
    assert "one of the days skipped_days counts" in skipped.skipped[0].reason
    for path in (root / "train").glob("20250205_*"):
        path.unlink()
    raises("splits.train lists day 20250205, but train/ has no day files for it", discover_export, root)
