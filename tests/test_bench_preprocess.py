"""The preprocessing benchmark's reference does the same steps as lobsearch: identical outputs."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from lobsearch.config import PrepConfig
from lobsearch.data.pipeline import prepare, prepared_root

BENCH = Path(__file__).resolve().parents[1] / "bench" / "preprocess.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_preprocess", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_numpy_reference_writes_what_lobsearch_writes(bench, small_export, tmp_path):
    reference = tmp_path / "numpy"
    reference.mkdir()
    rows = bench.numpy_reference(small_export, reference)
    prepared = prepare(small_export, PrepConfig(), cache_dir=tmp_path / "cache", engine="local")
    assert rows == sum(d.num_samples for days in prepared.splits.values() for d in days) == 6 * 3000
    check = bench.compare_outputs(reference, prepared_root(tmp_path / "cache") / prepared.key)
    assert check == {"files": 30, "identical": True}  # 6 days x (x, labels, row_ok, quotes, forward)


def test_the_comparison_notices_one_changed_value(bench, small_export, tmp_path):
    reference = tmp_path / "numpy"
    reference.mkdir()
    bench.numpy_reference(small_export, reference)
    key = prepare(small_export, PrepConfig(), cache_dir=tmp_path / "cache", engine="local").key
    folder = prepared_root(tmp_path / "cache") / key  # the Prepared (and its memory maps) is gone
    first = sorted(folder.glob("*_x.npy"))[0]
    x = np.load(first)
    x[0, 0] = np.nextafter(x[0, 0], np.float32(np.inf))
    np.save(first, x)
    assert bench.compare_outputs(reference, folder)["identical"] is False
