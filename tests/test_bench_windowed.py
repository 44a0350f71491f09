"""The windowed preprocessing benchmark's reference does the same steps as lobsearch: identical outputs."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lobsearch.config import PrepConfig
from lobsearch.data.layout import WindowLayout, laid_out_rows
from lobsearch.data.pipeline import ARRAYS, prepare, prepared_root

BENCH = Path(__file__).resolve().parents[1] / "bench" / "windowed.py"
DAYS, WINDOWS, T, STRIDE = 4, 30, 100, 10
ROWS = T + (WINDOWS - 1) * STRIDE


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_windowed", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def windowed_export(bench, tmp_path_factory):
    """4 days x 30 windows x 100 x 98 float32 at stride 10 (train 2 / val 1 / test 1), as the benchmark writes it."""
    folder = tmp_path_factory.mktemp("bench-windowed") / "export"
    facts = bench.ensure_export(folder, DAYS, WINDOWS, T, STRIDE, seed=0)
    return folder, facts


def test_the_export_has_the_asked_windows_per_day(windowed_export):
    _, facts = windowed_export
    assert facts["windows_per_day"] == WINDOWS and facts["windows"] == DAYS * WINDOWS
    assert facts["days_per_split"] == {"train": 2, "val": 1, "test": 1}
    assert (facts["window"], facts["stride"], facts["dtype"]) == (T, STRIDE, "float32")
    assert facts["rows_recovered"] == DAYS * ROWS
    assert facts["sequences_bytes"] == DAYS * (WINDOWS * T * 98 * 4 + 128)


def test_the_export_is_reused_and_another_size_refused(bench, windowed_export):
    folder, facts = windowed_export
    assert bench.ensure_export(folder, DAYS, WINDOWS, T, STRIDE, seed=0) == facts
    with pytest.raises(SystemExit, match="holds another export"):
        bench.ensure_export(folder, DAYS, WINDOWS + 1, T, STRIDE, seed=0)


@pytest.mark.parametrize("stride", [1, 3, 10, 99, 100, 130])
def test_recovered_rows_are_lobsearchs_laid_out_rows(bench, stride):
    sequences = np.random.default_rng(stride).standard_normal((7, 100, 5)).astype(np.float32)
    if stride < 100:  # windows that overlap, as an export's do
        day = np.random.default_rng(0).standard_normal((100 + 6 * stride, 5)).astype(np.float32)
        sequences = np.stack([day[j * stride: j * stride + 100] for j in range(7)])
    rows, ends = bench.recovered_rows(sequences, stride)
    layout = WindowLayout(window=100, stride=stride, count=7)
    np.testing.assert_array_equal(rows, laid_out_rows(sequences, layout))
    np.testing.assert_array_equal(ends, layout.ends())


def test_the_numpy_reference_writes_what_lobsearch_writes(bench, windowed_export, tmp_path):
    export, facts = windowed_export
    reference = tmp_path / "numpy"
    reference.mkdir()
    done = bench.windowed_reference(export, reference, bench.cache_arrays())
    prepared = prepare(export, PrepConfig(), cache_dir=tmp_path / "cache", engine="local")
    assert done == {"rows": DAYS * ROWS, "windows": DAYS * WINDOWS}
    assert sum(d.num_samples for days in prepared.splits.values() for d in days) == DAYS * ROWS
    folder = prepared_root(tmp_path / "cache") / prepared.key
    assert bench.pre.compare_outputs(reference, folder) == {"files": DAYS * len(ARRAYS), "identical": True}
    # the cache holds the recovered rows, not the windows: about 1/stride of the export
    assert bench.folder_bytes(folder) / facts["export_bytes"] < 0.15


def test_the_comparison_notices_one_changed_label(bench, windowed_export, tmp_path):
    export, _ = windowed_export
    reference = tmp_path / "numpy"
    reference.mkdir()
    bench.windowed_reference(export, reference, bench.cache_arrays())
    key = prepare(export, PrepConfig(), cache_dir=tmp_path / "cache", engine="local").key
    folder = prepared_root(tmp_path / "cache") / key
    first = min(folder.glob("*_labels.npy"))
    labels = np.load(first)
    labels[T - 1 + STRIDE, 0] = (labels[T - 1 + STRIDE, 0] + 1) % 3  # window 1's end row
    np.save(first, labels)
    assert bench.pre.compare_outputs(reference, folder)["identical"] is False


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.integration
def test_the_benchmark_runs_end_to_end_at_a_tiny_size(windowed_export, tmp_path):
    export, _ = windowed_export
    out = tmp_path / "figures.json"
    command = [sys.executable, str(BENCH), "--export-dir", str(export), "--days", str(DAYS), "--windows", str(WINDOWS),
               "--rounds", "1", "--settle", "0", "--out", str(out)]
    done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    figures = json.loads(out.read_text())
    same = {"files": DAYS * len(ARRAYS), "identical": True}
    assert figures["outputs_identical"] == {"ray-2": same, "auto-2": same}
    table = figures["summary"]["table"]
    assert set(table) == {"numpy reference, 1 process", "lobsearch Ray Data, 2 CPUs, cold",
                          "lobsearch Ray Data, 2 CPUs, warm", "lobsearch default (auto: local), 2 CPUs, cold",
                          "lobsearch default (auto: local), 2 CPUs, warm"}  # a tiny export: distributing it costs more
    assert set(figures["targets"]) >= {"lobsearch default (auto: local), 2 CPUs, cold: throughput >= 1.0x numpy"}
    assert figures["summary"]["bytes"]["cache_vs_export"] < 0.15
    assert "| lobsearch Ray Data, 2 CPUs, warm |" in done.stdout
