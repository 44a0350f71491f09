"""The Ray Data pipeline: same output as the pure steps, no leakage, windows, cache, modes, errors."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from functools import reduce
from pathlib import Path

import numpy as np
import pytest

from lobsearch.config import PrepConfig
from lobsearch.contract import MISSING_LABEL
from lobsearch.data import pipeline
from lobsearch.data.days import discover_export, load_day
from lobsearch.data.gating import gate_rows, window_gate_counts
from lobsearch.data.layout import WindowLayout
from lobsearch.data.normalize import Moments, day_moments, norm_stats, normalize_day
from lobsearch.data.windows import build_window_set, window_ends
from lobsearch.errors import DataError

TRAIN = PrepConfig()


def prep(**sections) -> PrepConfig:
    return PrepConfig.model_validate(sections)


def run(export, config=TRAIN, cache=None, engine="local", tmp=None):
    return pipeline.prepare(export, config, cache_dir=cache or (tmp / "cache"), engine=engine)


def copy_export(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def day_files(export: Path) -> list:
    """Every DayFile of ``export``, chronological."""
    return sorted(discover_export(export).days(), key=lambda d: d.date)


def passing_rows(features: np.ndarray) -> np.ndarray:
    return gate_rows(features).row_ok


def rewrite_features(path: Path, change) -> None:
    """Load a features file, apply ``change(x)`` in place, save it back (a new mtime and content)."""
    x = np.load(path)
    change(x)
    np.save(path, x)


def edit_manifest(export: Path, change) -> None:
    """Apply ``change(manifest)`` to the export's manifest in place, so that it tells the folders' truth."""
    path = export / "dataset_manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


def by_date(prepared) -> dict:
    return {d.date: d for days in prepared.splits.values() for d in days}


def assert_days_identical(a, b) -> None:
    assert (a.date, a.split) == (b.date, b.split)
    assert (a.quotes is None) == (b.quotes is None), a.date
    for part in ("x", "labels", "row_ok") + (("quotes",) if a.quotes is not None else ()):
        left, right = np.asarray(getattr(a, part)), np.asarray(getattr(b, part))
        assert left.dtype == right.dtype and left.shape == right.shape, (a.date, part)
        np.testing.assert_array_equal(left, right, err_msg=f"{a.date} {part}")


def assert_prepared_identical(a, b) -> None:
    assert list(a.splits) == list(b.splits)
    for split in a.splits:
        assert [d.date for d in a.splits[split]] == [d.date for d in b.splits[split]]
        for x, y in zip(a.splits[split], b.splits[split]):
            assert_days_identical(x, y)
    assert (a.stats is None) == (b.stats is None)
    if a.stats is not None:
        for name in ("mean", "std", "scaled"):
            np.testing.assert_array_equal(getattr(a.stats, name), getattr(b.stats, name))
    assert a.gate_report == b.gate_report
    assert (a.horizons, a.n_features) == (b.horizons, b.n_features)


def reference_days(export: Path, stats_of) -> dict:
    """Each day prepared by calling days/gating/normalize directly: date -> (x, labels, row_ok).

    ``stats_of(days)`` returns the NormStats (or None) each loaded day uses, in order.
    """
    days = [load_day(f) for f in day_files(export)]
    out = {}
    for day, stats in zip(days, stats_of(days)):
        ok = gate_rows(day.features).row_ok
        x = normalize_day(day.features, stats, schema_version=day.schema_version, row_ok=ok)
        out[day.date] = (x, day.labels, ok)
    return out


def moments(day) -> Moments:
    return day_moments(day.features, gate_rows(day.features).row_ok, day.schema_version)


def train_stats(days):
    total = reduce(Moments.combine, [moments(d) for d in days if d.split == "train"])
    return [norm_stats(total)] * len(days)


def assert_matches_reference(prepared, reference: dict) -> None:
    days = by_date(prepared)
    assert sorted(days) == sorted(reference)
    for date, (x, labels, ok) in reference.items():
        np.testing.assert_array_equal(days[date].x, x)
        np.testing.assert_array_equal(days[date].labels, labels)
        np.testing.assert_array_equal(days[date].row_ok, ok)


@pytest.fixture(scope="module")
def local_prepared(small_export, tmp_path_factory):
    return pipeline.prepare(small_export, TRAIN, cache_dir=tmp_path_factory.mktemp("local"), engine="local")


# ---------------------------------------------------------------- equal to the pure steps


def test_local_engine_equals_the_pure_steps_bit_for_bit(small_export, local_prepared):
    days = [load_day(f) for f in day_files(small_export)]
    expected = train_stats(days)[0]
    for name in ("mean", "std", "scaled"):
        np.testing.assert_array_equal(getattr(local_prepared.stats, name), getattr(expected, name))
    assert_matches_reference(local_prepared, reference_days(small_export, train_stats))
    assert all(d.x.dtype == np.float32 and d.labels.dtype == np.int8 for d in by_date(local_prepared).values())
    assert local_prepared.n_features == 98 and local_prepared.horizons == (10, 20, 50, 100)


@pytest.mark.ray
def test_ray_engine_equals_the_local_engine_and_the_pure_steps(ray_session, small_export, local_prepared, tmp_path):
    prepared = run(small_export, engine="ray", tmp=tmp_path)
    assert not prepared.from_cache
    assert_prepared_identical(prepared, local_prepared)
    assert_matches_reference(prepared, reference_days(small_export, train_stats))


@pytest.mark.ray
def test_ray_engine_shipping_day_files_through_the_object_store_gives_the_same_output(
    ray_session, small_export, local_prepared, tmp_path, monkeypatch
):
    monkeypatch.setattr(pipeline, "_ship_files", lambda: True)  # as on a multi-node cluster
    assert_prepared_identical(run(small_export, engine="ray", tmp=tmp_path), local_prepared)


def test_arrays_travel_back_when_a_worker_cannot_see_the_cache_folder(
    small_export, local_prepared, tmp_path, monkeypatch
):
    real = pipeline._run_task
    returned = []

    def unseen_folder(fn, task, steps, out):
        result = real(fn, task, steps, None if out is None else str(tmp_path / "not-on-this-node"))
        returned.append("x" in result)
        return result

    monkeypatch.setattr(pipeline, "_run_task", unseen_folder)
    assert_prepared_identical(run(small_export, tmp=tmp_path), local_prepared)
    assert returned.count(True) == 6  # pass 2 returned every day's arrays; the driver wrote them


def test_a_day_written_into_the_cache_folder_equals_the_day_returned_in_memory(small_export, tmp_path):
    day_file = day_files(small_export)[0]
    steps = pipeline.day_steps(TRAIN)
    stats = norm_stats(moments(load_day(day_file)))
    in_memory = pipeline.day_arrays(day_file, steps, stats)
    written = pipeline.day_arrays(day_file, steps, stats, into=tmp_path / "0000_day")
    assert not set(pipeline.ARRAYS) & set(written)
    assert {k: v for k, v in in_memory.items() if k not in pipeline.ARRAYS} == written
    for part in pipeline.ARRAYS:
        on_disk = np.load(tmp_path / f"0000_day_{part}.npy")
        assert on_disk.dtype == in_memory[part].dtype and on_disk.tobytes() == in_memory[part].tobytes()


def test_a_day_that_fails_midway_leaves_no_file_in_the_cache_folder(small_export, tmp_path):
    export = copy_export(small_export, tmp_path / "export")
    day_file = day_files(export)[0]
    rewrite_features(day_file.features, lambda x: x.__setitem__((-1, 3), np.nan))  # in a passing row
    steps = pipeline.day_steps(TRAIN)
    stats = norm_stats(moments(load_day(day_files(small_export)[0])))
    out = tmp_path / "cache"
    out.mkdir()
    with pytest.raises(DataError, match=rf"{day_file.features.name}: .*non-finite value"):
        pipeline.day_arrays(day_file, steps, stats, into=out / "0000_day")
    assert list(out.iterdir()) == []


def test_gate_report_counts_rows_and_windows_per_day_and_rule(small_export, local_prepared):
    report = local_prepared.gate_report
    days = {f.date: load_day(f) for f in day_files(small_export)}
    assert [d["date"] for d in report["days"]] == sorted(days)
    for entry in report["days"]:
        gates = gate_rows(days[entry["date"]].features)
        assert entry["rows_dropped"] == gates.failed
        assert entry["rows_kept"] == int(gates.row_ok.sum())
        assert entry["windows_dropped"] == window_gate_counts(gates, report["report_window"], 1)
        labels = days[entry["date"]].labels
        assert entry["label_balance"]["10"] == np.bincount(labels[:, 0][labels[:, 0] >= 0], minlength=3).tolist()
    assert report["totals"]["rows"] == sum(d.num_samples for d in days.values())
    assert report["totals"]["rows_dropped"] == sum(e["rows"] - e["rows_kept"] for e in report["days"])
    assert report["totals"]["rows_dropped"] > 0 and report["days_dropped"] == []


# ---------------------------------------------------------------- no leakage from val/test days


@pytest.fixture
def leakage_variants(small_export, tmp_path):
    """Copies of the small export: a val day changed, the test day removed, a val day added."""
    val_day = next(f for f in day_files(small_export) if f.split == "val")
    test_day = next(f for f in day_files(small_export) if f.split == "test")

    changed = copy_export(small_export, tmp_path / "changed")
    rewrite_features(changed / "val" / val_day.features.name, lambda x: np.multiply(x[:, :92], 3, out=x[:, :92]))
    removed = copy_export(small_export, tmp_path / "removed")
    for path in (removed / "test").iterdir():
        path.unlink()
    edit_manifest(removed, lambda m: m["splits"].pop("test"))
    added = copy_export(small_export, tmp_path / "added")
    for path in (small_export / "val").iterdir():  # a Saturday: after the last train day, before val's
        shutil.copy(path, added / "val" / path.name.replace(val_day.date, "20240106"))
    edit_manifest(added, lambda m: m["splits"]["val"].update(days=m["splits"]["val"]["days"] + 1,
                                                             dates=["20240106", *m["splits"]["val"]["dates"]]))
    rewrite_features(added / "val" / "20240106_features.npy", lambda x: np.add(x[:, 50], 1e3, out=x[:, 50]))
    assert test_day.date not in {f.date for f in day_files(removed)}
    return {"changed": changed, "removed": removed, "added": added}


def test_val_and_test_days_never_change_training_statistics_or_values(local_prepared, leakage_variants, tmp_path):
    base_train = local_prepared.splits["train"]
    for name, export in leakage_variants.items():
        prepared = run(export, tmp=tmp_path)
        assert prepared.key != local_prepared.key, name
        for field in ("mean", "std", "scaled"):
            np.testing.assert_array_equal(getattr(prepared.stats, field), getattr(local_prepared.stats, field))
        assert len(prepared.splits["train"]) == len(base_train)
        for a, b in zip(prepared.splits["train"], base_train):
            assert_days_identical(a, b)
    changed = run(leakage_variants["changed"], tmp=tmp_path).splits["val"][0]
    assert not np.array_equal(changed.x, local_prepared.splits["val"][0].x)  # the change itself shows
    assert [d.date for d in run(leakage_variants["added"], tmp=tmp_path).splits["val"]] == ["20240106", "20240108"]


# ---------------------------------------------------------------- windows on prepared days


def test_windows_take_their_end_row_label_stay_in_one_day_and_skip_gated_rows(small_export, tmp_path):
    prepared = run(small_export, prep(labels={"source": "computed"}), tmp=tmp_path)
    days = prepared.splits["train"]
    window, stride, horizon = 40, 3, 1
    ws = build_window_set(days, columns="full", horizon_index=horizon, window=window, stride=stride)
    starts = np.cumsum([0] + [d.num_samples for d in days])
    ends = ws.ends.numpy()
    day_of_end = np.searchsorted(starts, ends, side="right") - 1
    assert np.all(ends - (window - 1) >= starts[day_of_end])  # no window crosses a day
    labels = np.concatenate([np.asarray(d.labels)[:, horizon] for d in days])
    row_ok = np.concatenate([np.asarray(d.row_ok) for d in days])
    np.testing.assert_array_equal(ws.y.numpy(), labels[ends])  # the end row's label
    assert np.all(ws.y.numpy() != MISSING_LABEL)
    assert all(row_ok[e - window + 1 : e + 1].all() for e in ends)  # no gated row in any window
    expected = sum(len(window_ends(d.row_ok, np.asarray(d.labels)[:, horizon], window, stride)) for d in days)
    assert len(ws) == expected and (~row_ok).any() and (labels == MISSING_LABEL).any()
    x, y = ws.batch(np.arange(min(len(ws), 8)))
    np.testing.assert_array_equal(x[:, -1].numpy(), np.concatenate([d.x for d in days])[ends[:8]])


# ---------------------------------------------------------------- cache


def test_a_second_prepare_reads_the_cache_and_runs_no_step(small_export, tmp_path, monkeypatch):
    first = run(small_export, tmp=tmp_path)
    assert not first.from_cache

    def fail(*args, **kwargs):
        raise AssertionError("a per-day step ran on a cache hit")

    monkeypatch.setattr(pipeline, "day_partials", fail)
    monkeypatch.setattr(pipeline, "day_arrays", fail)
    second = run(small_export, tmp=tmp_path)
    assert second.from_cache and second.key == first.key
    assert_prepared_identical(first, second)
    assert isinstance(second.splits["train"][0].x, np.memmap)


def test_the_default_cache_lives_under_lobsearch_cache(small_export):
    prepared = pipeline.prepare(small_export, prep(gates={"last_row": True}), engine="local")
    folder = pipeline.cache_root() / "prepared" / prepared.key
    assert pipeline.cache_root() == Path(os.environ["LOBSEARCH_CACHE"]).resolve()
    assert (folder / "prepared.json").is_file() and (folder / "gate_report.json").is_file()
    assert json.loads((folder / "gate_report.json").read_text()) == prepared.gate_report


def test_a_touched_or_modified_file_misses_the_cache(small_export, tmp_path):
    export = copy_export(small_export, tmp_path / "export")
    first = run(export, tmp=tmp_path)
    train_file = day_files(export)[0].features
    stat = train_file.stat()
    os.utime(train_file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    touched = run(export, tmp=tmp_path)
    assert not touched.from_cache and touched.key != first.key
    rewrite_features(train_file, lambda x: x.__setitem__((slice(None), 0), x[:, 0] + 0.01))
    modified = run(export, tmp=tmp_path)
    assert not modified.from_cache and modified.key not in (first.key, touched.key)
    assert not np.array_equal(modified.stats.mean, first.stats.mean)


def test_a_changed_config_misses_the_cache(small_export, tmp_path):
    base = run(small_export, tmp=tmp_path)
    others = (prep(normalization={"clip": 5.0}), prep(gates={"invalidity": False}), prep(labels={"source": "computed"}))
    for config in others:
        other = run(small_export, config, tmp=tmp_path)
        assert not other.from_cache and other.key != base.key
    assert run(small_export, tmp=tmp_path).from_cache


def test_half_written_caches_are_ignored_and_rebuilt(small_export, tmp_path):
    root = tmp_path / "cache"
    key = pipeline.cache_key(discover_export(small_export), TRAIN)
    stale_tmp = root / f"{key}.tmp-deadbeef"
    stale_tmp.mkdir(parents=True)
    (stale_tmp / "0000_train_20240102_x.npy").write_bytes(b"partial")
    unfinished = root / key
    unfinished.mkdir()
    (unfinished / "0000_train_20240102_x.npy").write_bytes(b"partial")
    prepared = run(small_export, cache=root)
    assert not prepared.from_cache and prepared.key == key
    assert not stale_tmp.exists() and (unfinished / "prepared.json").is_file()
    assert prepared.splits["train"][0].x.shape == (3000, 98)
    assert run(small_export, cache=root).from_cache


def test_concurrent_requests_for_one_key_compute_once(small_export, tmp_path, monkeypatch):
    computed = []
    real = pipeline._compute

    def counting(*args, **kwargs):
        computed.append(threading.get_ident())
        time.sleep(0.3)  # widen the window in which the other request arrives
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "_compute", counting)
    start = threading.Barrier(2)
    results, errors = [], []

    def request():
        start.wait()
        try:
            results.append(run(small_export, tmp=tmp_path))
        except Exception as error:  # surfaced by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=request) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == [] and len(results) == 2
    assert len(computed) == 1
    assert sorted(r.from_cache for r in results) == [False, True]
    assert_prepared_identical(*results)


# ---------------------------------------------------------------- normalization modes


def test_per_day_mode_scales_each_day_with_its_own_statistics(small_export, tmp_path):
    prepared = run(small_export, prep(normalization={"mode": "per_day"}), tmp=tmp_path)
    assert prepared.stats is None
    own = reference_days(small_export, lambda days: [norm_stats(moments(d)) for d in days])
    assert_matches_reference(prepared, own)


def test_prior_days_mode_drops_and_reports_the_first_k_days(small_export, tmp_path):
    k = 2
    prepared = run(small_export, prep(normalization={"mode": "prior_days", "prior_days": k}), tmp=tmp_path)
    files = day_files(small_export)
    dropped = prepared.gate_report["days_dropped"]
    assert [d["date"] for d in dropped] == [f.date for f in files[:k]]
    assert all("prior_days" in d["reason"] for d in dropped)
    assert [d.date for d in prepared.splits["train"]] == [f.date for f in files[k:] if f.split == "train"]
    assert len(prepared.gate_report["days"]) == len(files)  # dropped days still have their gate counts

    def prior(days):
        combined = [reduce(Moments.combine, map(moments, days[i - k : i])) for i in range(k, len(days))]
        return [None] * k + [norm_stats(m) for m in combined]

    reference = reference_days(small_export, prior)
    assert_matches_reference(prepared, {f.date: reference[f.date] for f in files[k:]})


def test_prior_days_that_leave_no_day_is_a_data_error(small_export, tmp_path):
    with pytest.raises(DataError, match="prior_days"):
        run(small_export, prep(normalization={"mode": "prior_days", "prior_days": 6}), tmp=tmp_path)


def test_mode_none_keeps_raw_values_as_float32(small_export, tmp_path):
    prepared = run(small_export, prep(normalization={"mode": "none"}), tmp=tmp_path)
    assert prepared.stats is None
    for f in day_files(small_export):
        np.testing.assert_array_equal(by_date(prepared)[f.date].x, np.load(f.features).astype(np.float32))


def test_an_already_normalized_export_passes_through_unscaled(small_export, tmp_path):
    export = copy_export(small_export, tmp_path / "normalized")
    for meta in export.glob("*/*_metadata.json"):
        data = json.loads(meta.read_text())
        meta.write_text(json.dumps({**data, "normalization": {"applied": True}}))
    for config in (TRAIN, prep(normalization={"mode": "per_day"})):
        prepared = run(export, config, tmp=tmp_path)
        assert prepared.stats is None
        for f in day_files(export):
            np.testing.assert_array_equal(by_date(prepared)[f.date].x, np.load(f.features).astype(np.float32))


def test_every_prepared_row_keeps_its_raw_mid_price_and_spread(small_export, local_prepared, tmp_path):
    assert local_prepared.quotes_note is None
    for f in day_files(small_export):
        day, raw = by_date(local_prepared)[f.date], np.load(f.features)
        assert day.quotes.shape == (raw.shape[0], 2) and day.quotes.dtype == raw.dtype
        np.testing.assert_array_equal(day.mid, raw[:, 40])
        np.testing.assert_array_equal(day.spread, raw[:, 41])
    assert (by_date(local_prepared)[f.date].spread >= 0).all()


def test_an_export_without_raw_quotes_is_prepared_with_a_note(small_export, tmp_path):
    narrow = copy_export(small_export, tmp_path / "narrow")
    for path in narrow.glob("*/*_features.npy"):
        np.save(path, np.load(path)[:, :40])
    for path in [*narrow.glob("*/*_metadata.json"), narrow / "dataset_manifest.json"]:
        text = json.loads(path.read_text())
        path.write_text(json.dumps({k: 40 if k in ("n_features", "feature_count") else v for k, v in text.items()}))
    prepared = run(narrow, tmp=tmp_path)
    assert prepared.n_features == 40 and all(d.quotes is None and d.mid is None for d in by_date(prepared).values())
    assert "40 columns, so no MID_PRICE and SPREAD (columns 40 and 41)" in prepared.quotes_note
    assert pipeline.quotes_note(98, np.zeros(98, bool)) is None
    normalized = np.zeros(98, bool)
    normalized[41] = True
    assert "normalized column(s) [41]" in pipeline.quotes_note(98, normalized)
    assert pipeline.raw_quotes(np.ones((5, 98)), normalized).shape == (5, 0)
    independent, overlapping = WindowLayout(window=10, stride=10, count=5), WindowLayout(window=10, stride=2, count=5)
    assert "windows do not overlap (stride 10 >= T = 10)" in pipeline.quotes_note(98, np.zeros(98, bool), independent)
    assert pipeline.quotes_note(98, np.zeros(98, bool), overlapping) is None
    assert pipeline.raw_quotes(np.ones((50, 98), np.float32), np.zeros(98, bool), independent).shape == (50, 0)


def test_schema_2_0_flow_signs_are_fixed_before_any_statistic(tmp_path):
    from lobsearch.synth import write_synthetic_export

    export = write_synthetic_export(tmp_path / "old", days=4, rows=1500, seed=3, schema="2.0")
    prepared = run(export, tmp=tmp_path)
    assert_matches_reference(prepared, reference_days(export, train_stats))
    raw = run(export, prep(normalization={"mode": "none"}), tmp=tmp_path)
    first = day_files(export)[0]
    np.testing.assert_array_equal(by_date(raw)[first.date].x[:, 55], -np.load(first.features)[:, 55].astype(np.float32))


# ---------------------------------------------------------------- errors


@pytest.fixture
def nan_export(small_export, tmp_path):
    """A copy whose val day holds NaN in a row that passes every gate."""
    export = copy_export(small_export, tmp_path / "nan")
    val = next(f for f in day_files(export) if f.split == "val").features

    def poison(x):
        x[np.flatnonzero(passing_rows(x))[10], 50] = np.nan

    rewrite_features(val, poison)
    return export, val


def test_nan_in_a_passing_row_is_a_data_error_naming_the_file(nan_export, tmp_path):
    export, val = nan_export
    with pytest.raises(DataError, match=str(val)):
        run(export, tmp=tmp_path)
    assert not list((tmp_path / "cache").glob("*/prepared.json"))


@pytest.mark.ray
def test_ray_engine_raises_the_workers_data_error_naming_the_file(ray_session, nan_export, tmp_path):
    export, val = nan_export
    with pytest.raises(DataError, match=str(val)):
        run(export, engine="ray", tmp=tmp_path)


def test_labels_source_file_without_labels_files_is_a_data_error(small_export, tmp_path):
    export = copy_export(small_export, tmp_path / "nolabels")
    for path in export.glob("*/*_labels.npy"):
        path.unlink()
    with pytest.raises(DataError, match=r"_features\.npy: no labels file.*'file'"):
        run(export, prep(labels={"source": "file"}), tmp=tmp_path)
    computed = run(export, prep(labels={"source": "auto"}), tmp=tmp_path)
    assert computed.horizons == (10, 20, 50, 100)


def test_an_unknown_engine_is_refused(small_export, tmp_path):
    with pytest.raises(DataError, match="engine: unknown engine 'spark'; choices: auto, local, ray"):
        run(small_export, engine="spark", tmp=tmp_path)


# ---------------------------------------------------------------- choosing the engine


def test_auto_prepares_a_small_export_in_this_process_and_says_so(small_export, local_prepared, tmp_path):
    prepared = run(small_export, engine="auto", tmp=tmp_path)
    assert prepared.engine == "local" and not prepared.from_cache
    assert_prepared_identical(prepared, local_prepared)
    again = run(small_export, engine="auto", tmp=tmp_path)
    assert again.from_cache and again.engine == "cache"


def test_auto_chooses_ray_data_only_where_the_work_outweighs_its_fixed_cost(small_export, monkeypatch):
    export = discover_export(small_export)
    monkeypatch.setattr(pipeline, "_ray_data_cost", lambda: (2.0, 2))
    assert pipeline.choose_engine(export) == "local"  # 6 days of 3,000 rows: milliseconds
    monkeypatch.setattr(pipeline, "LOCAL_BYTES_PER_S", 1e5)  # the same bytes, as if 10,000 times slower
    assert pipeline.choose_engine(export) == "ray"
    monkeypatch.setattr(pipeline, "_ray_data_cost", lambda: (2.0, 1))  # one CPU: nothing to gain
    assert pipeline.choose_engine(export) == "local"


def test_a_windowed_day_counts_the_rows_it_lays_out_not_its_windows(tmp_path):
    from lobsearch.data.days import rows_bytes
    from lobsearch.synth import write_synthetic_export

    export = discover_export(write_synthetic_export(tmp_path / "w", days=1, rows=1000, seed=0, fmt="windowed",
                                                    window=50, stride=10, splits=(1.0, 0.0, 0.0)))
    day = export.days()[0]
    windows = (1000 - 50) // 10 + 1
    assert rows_bytes(day) == (50 + (windows - 1) * 10) * 98 * 4  # float32 rows, recovered once
    assert rows_bytes(day) < day.features.stat().st_size / 4


# ---------------------------------------------------------------- trials holding every CPU


@pytest.mark.ray
def test_prepare_finishes_while_trials_hold_every_cpu(ray_session, small_export, tmp_path):
    from ray.util.placement_group import placement_group, remove_placement_group

    group = placement_group([{"CPU": 2}])
    ray_session.get(group.ready(), timeout=60)
    outcome = {}

    def prepare_in_thread():
        try:
            outcome["prepared"] = run(small_export, engine="ray", tmp=tmp_path)
        except Exception as error:  # reported by the assertion below
            outcome["error"] = error

    try:
        deadline = time.monotonic() + 30
        while ray_session.available_resources().get("CPU", 0) > 0 and time.monotonic() < deadline:
            time.sleep(0.2)  # the resource view catches up with the reservation
        assert ray_session.available_resources().get("CPU", 0) == 0
        worker = threading.Thread(target=prepare_in_thread, daemon=True)
        worker.start()
        worker.join(120)
        assert not worker.is_alive(), "prepare(engine='ray') hung while every CPU was reserved"
    finally:
        remove_placement_group(group)
    assert "error" not in outcome, outcome.get("error")
    assert sum(len(days) for days in outcome["prepared"].splits.values()) == 6


class _FakeContext:
    gcs_address = "10.0.0.1:6379"

    def get_job_id(self) -> str:
        return "01000000"


def _fake_ray(monkeypatch: pytest.MonkeyPatch, free_cpus: float) -> list[str]:
    """Ray's calls the warm-up makes, recorded instead of run."""
    import ray

    calls: list[str] = []

    class Remote:
        def remote(self) -> str:
            calls.append("import task")
            return "ref"

    monkeypatch.setattr(ray, "get_runtime_context", lambda: _FakeContext())
    monkeypatch.setattr(ray, "available_resources", lambda: calls.append("resources") or {"CPU": free_cpus})
    monkeypatch.setattr(ray, "remote", lambda **options: (lambda fn: Remote()))
    monkeypatch.setattr(pipeline, "_WARMED", set())
    monkeypatch.setattr(pipeline, "_WARM_UP_TASKS", [])
    return calls


def test_ray_data_warm_up_runs_once_per_session_on_the_free_cpus(monkeypatch: pytest.MonkeyPatch):
    import ray
    from ray.data._internal import stats

    actors: list[str] = []
    monkeypatch.setattr(stats, "get_or_create_stats_actor", lambda: actors.append("stats actor"))
    calls = _fake_ray(monkeypatch, free_cpus=2.0)
    pipeline._warm_up_ray_data()
    assert calls == ["resources", "import task", "import task"] and actors == ["stats actor"]
    assert pipeline._WARM_UP_TASKS == ["ref", "ref"]
    pipeline._warm_up_ray_data()
    assert len(calls) == 3 and len(actors) == 1  # the same session: nothing more
    waited: list[tuple] = []
    monkeypatch.setattr(ray, "wait", lambda refs, **kw: waited.append((list(refs), kw)) or (list(refs), []))
    assert pipeline._data_resources() == {"num_cpus": 1}
    assert waited == [(["ref", "ref"], {"num_returns": 2, "timeout": pipeline.WARM_UP_WAIT_S})]
    assert pipeline._WARM_UP_TASKS == []


def test_warm_up_tasks_that_never_got_a_cpu_are_cancelled_and_not_counted(monkeypatch: pytest.MonkeyPatch):
    """Trials took the CPUs between the warm-up and the first dataset: its imports never ran."""
    import ray
    from ray.data._internal import stats

    monkeypatch.setattr(stats, "get_or_create_stats_actor", lambda: None)
    _fake_ray(monkeypatch, free_cpus=2.0)
    pipeline._warm_up_ray_data()
    monkeypatch.setattr(ray, "available_resources", lambda: {"CPU": 0.0})
    monkeypatch.setattr(ray, "wait", lambda refs, **kw: ([], list(refs)))
    cancelled: list[str] = []
    monkeypatch.setattr(ray, "cancel", cancelled.append)
    monkeypatch.setattr(pipeline, "FREE_CPU_WAIT_S", 0.2)
    resources = pipeline._data_resources()
    assert resources["num_cpus"] == 0 and cancelled == ["ref", "ref"] and pipeline._WARM_UP_TASKS == []


def test_ray_data_warm_up_stays_away_when_trials_hold_every_cpu(monkeypatch: pytest.MonkeyPatch):
    calls = _fake_ray(monkeypatch, free_cpus=0.0)
    pipeline._warm_up_ray_data()
    assert calls == ["resources"]


def test_warm_up_imports_what_the_day_tasks_need():
    pipeline._import_data_modules()
    import sys

    assert "ray.data" in sys.modules and "lobsearch.data.pipeline" in sys.modules
