"""Window layouts of windowed days: the stride seen on the data, rows recovered once, end rows."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lobsearch.data.layout import (
    WindowLayout,
    check_stride,
    labels_at_ends,
    laid_out_rows,
    observed_stride,
    window_layout,
)
from lobsearch.errors import ConfigError, DataError


def cut(rows: np.ndarray, window: int, stride: int) -> np.ndarray:
    """(M, T, F) windows starting at rows 0, stride, 2*stride, ... as the exporter cuts them."""
    starts = range(0, len(rows) - window + 1, stride)
    return np.stack([rows[s : s + window] for s in starts]).astype(np.float32)


@settings(max_examples=60, deadline=None)
@given(window=st.integers(1, 12), stride=st.integers(1, 15), count=st.integers(1, 9), seed=st.integers(0, 2**16))
def test_rows_windows_and_ends_line_up_at_any_stride(window, stride, count, seed):
    rows = np.random.default_rng(seed).normal(size=((count - 1) * stride + window, 3))
    sequences = cut(rows, window, stride)
    stated = stride if stride < window else None
    layout = window_layout(__file__, "20250203", sequences, stated, "a test")
    assert layout.count == count and layout.window == window
    assert layout.stride == min(stride, window)
    laid = laid_out_rows(sequences, layout)
    assert laid.shape == (layout.rows, 3) and not laid.flags.writeable
    if stride < window:
        np.testing.assert_array_equal(laid, rows.astype(np.float32))
    for j, end in enumerate(layout.ends()):
        np.testing.assert_array_equal(laid[end - window + 1 : end + 1], sequences[j])
    labels = np.arange(count, dtype=np.int8)[:, None]
    placed = labels_at_ends(labels, layout, -1)
    np.testing.assert_array_equal(placed[layout.ends(), 0], labels[:, 0])
    assert (placed != -1).sum() == count


@settings(max_examples=60, deadline=None)
@given(window=st.integers(2, 12), stride=st.integers(1, 15), seed=st.integers(0, 2**16))
def test_the_observed_stride_is_the_cut_stride_or_none_without_overlap(window, stride, seed):
    rows = np.random.default_rng(seed).normal(size=(stride + window, 4))
    first, second = cut(rows, window, stride)[:2]
    assert observed_stride(first, second) == (stride if stride < window else None)


def test_nan_equals_nan_when_windows_are_compared():
    rows = np.arange(40, dtype=np.float64).reshape(20, 2)
    rows[7, 1] = np.nan
    first, second = cut(rows, 10, 3)[:2]
    assert observed_stride(first, second) == 3


def test_a_stated_stride_the_data_contradicts_names_day_window_and_both_strides():
    rows = np.random.default_rng(0).normal(size=(60, 2))
    sequences = cut(rows, 10, 5)
    sequences[6] = sequences[6] + 1.0
    with pytest.raises(DataError, match="day 20250203: windows 5 and 6 show no overlap \\(stride >= T\\), but the "
                                        "stride is 5 \\(the manifest\\)"):
        check_stride("day.npy", "20250203", sequences, 5, "the manifest")


def test_a_searched_window_and_stride_on_a_layout():
    layout = WindowLayout(window=20, stride=5, count=10)
    np.testing.assert_array_equal(layout.ends(), 19 + 5 * np.arange(10))
    np.testing.assert_array_equal(layout.candidate_ends(12, 1), layout.ends())
    np.testing.assert_array_equal(layout.candidate_ends(20, 11), layout.ends()[::3])
    separate = WindowLayout(window=20, stride=30, count=4)
    assert (separate.pitch, separate.rows) == (20, 80)
    np.testing.assert_array_equal(separate.candidate_ends(5, 30), [19, 39, 59, 79])
    np.testing.assert_array_equal(separate.candidate_ends(5, 31), [19, 59])
    with pytest.raises(ConfigError, match="window 21 is longer than the 20 rows of each exported window of day X"):
        layout.candidate_ends(21, 1, "day X")
    with pytest.raises(ConfigError, match="stride must be an integer >= 1"):
        layout.candidate_ends(5, 0)
    assert WindowLayout.from_json(layout.to_json()) == layout and WindowLayout.from_json(None) is None


def test_windows_that_do_not_overlap_are_a_view_of_the_file(tmp_path):
    np.save(tmp_path / "s.npy", np.random.default_rng(0).normal(size=(4, 5, 3)).astype(np.float32))
    sequences = np.load(tmp_path / "s.npy", mmap_mode="r")
    layout = WindowLayout(window=5, stride=5, count=4)
    rows = laid_out_rows(sequences, layout)
    assert isinstance(rows, np.memmap) and np.shares_memory(rows, sequences)


def test_overlaps_that_differ_only_in_bits_that_compare_equal_fit_the_stride():
    """All sampled pairs are compared at once on their bits; values whose bits differ but that
    are equal as numbers (0.0 and -0.0, NaNs of other payloads) still fit, as ``_rows_equal`` says."""
    rows = np.random.default_rng(1).normal(size=(20 + 59 * 5, 3))  # 60 windows: every pair is sampled
    rows[55:75, 0], rows[160, 1] = 0.0, np.nan
    sequences = cut(rows, 20, 5)
    sequences[11, :15, 0] = -0.0  # rows 55-69 of the day, +0.0 in windows 10 and 12
    sequences[30, 10, 1] = np.array([0x7FC00001], dtype=np.uint32).view(np.float32)[0]  # row 160: another NaN
    check_stride("day.npy", "20250203", sequences, 5, "the manifest")
    sequences[30, 7, 2] += 1.0  # row 157: also in windows 29 and 31
    with pytest.raises(DataError, match="windows 29 and 30 show no overlap"):
        check_stride("day.npy", "20250203", sequences, 5, "the manifest")


@pytest.mark.parametrize("bad", [1, 40, 70])
def test_the_first_sampled_pair_that_misfits_is_named_among_many(bad):
    rows = np.random.default_rng(2).normal(size=(10 + 71 * 10, 2))
    sequences = cut(rows, 20, 10)  # 72 windows: the 64 sampled pairs skip some
    sequences[bad:, :, 0] += np.float32(3.0)  # every pair from (bad - 1, bad) on breaks only at bad
    from lobsearch.data.layout import sampled_pairs

    first = next(int(i) for i in sampled_pairs(len(sequences)) if i + 1 == bad or i == bad - 1)
    with pytest.raises(DataError, match=f"windows {first} and {first + 1} show"):
        check_stride("day.npy", "20250203", sequences, 10, "the manifest")
