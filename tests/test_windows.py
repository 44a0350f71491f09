from dataclasses import dataclass

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lobsearch.contract import FeatureIndex
from lobsearch.data.windows import WindowSet, build_window_set, gather_windows, window_ends
from lobsearch.errors import ConfigError, DataError


@dataclass(frozen=True)
class Day:
    """Stands in for pipeline.PreparedDay: only the attributes build_window_set reads."""

    date: str
    x: np.ndarray
    labels: np.ndarray
    row_ok: np.ndarray
    layout: object = None


def make_day(rng, n_rows, n_features=5, horizons=2, p_gated=0.2, p_missing=0.1, date="20250101"):
    x = rng.normal(size=(n_rows, n_features)).astype(np.float32)
    labels = rng.integers(0, 3, size=(n_rows, horizons)).astype(np.int8)
    labels[rng.random((n_rows, horizons)) < p_missing] = -1
    return Day(date, x, labels, rng.random(n_rows) >= p_gated)


def naive_ends(row_ok, label, window, stride, last_row):
    ends = []
    for e in range(window - 1, len(row_ok), stride):
        rows = row_ok[e : e + 1] if last_row else row_ok[e - window + 1 : e + 1]
        if all(rows) and label[e] != -1:
            ends.append(e)
    return ends


@settings(max_examples=80, deadline=None)
@given(
    seed=st.integers(0, 10**6),
    n_rows=st.integers(0, 40),
    window=st.integers(1, 10),
    stride=st.integers(1, 5),
    last_row=st.booleans(),
)
def test_window_ends_match_a_naive_scan(seed, n_rows, window, stride, last_row):
    day = make_day(np.random.default_rng(seed), n_rows)
    ends = window_ends(day.row_ok, day.labels[:, 0], window, stride, last_row=last_row)
    assert ends.dtype == np.int64
    assert ends.tolist() == naive_ends(day.row_ok, day.labels[:, 0], window, stride, last_row)


def test_window_ends_example():
    row_ok = np.array([True, True, False, True, True, True, True])
    label = np.array([1, 1, 1, 1, 1, -1, 2])
    assert window_ends(row_ok, label, 2, 1).tolist() == [1, 4, 6]
    assert window_ends(row_ok, label, 2, 1, last_row=True).tolist() == [1, 3, 4, 6]
    assert window_ends(row_ok, label, 3, 2).tolist() == [6]


def test_window_ends_on_a_windowed_day_are_its_exported_windows_ends():
    from lobsearch.data.layout import WindowLayout

    layout = WindowLayout(window=4, stride=2, count=4)
    row_ok = np.ones(layout.rows, bool)
    label = np.full(layout.rows, -1)
    label[layout.ends()] = 1
    row_ok[4] = False
    assert window_ends(row_ok, label, 3, 1, layout=layout).tolist() == [3, 7, 9]
    assert window_ends(row_ok, label, 1, 1, layout=layout).tolist() == [3, 5, 7, 9]
    with pytest.raises(ConfigError, match="window 5 is longer than the 4 rows .* of day X"):
        window_ends(row_ok, label, 5, 1, layout=layout, name="day X")


def test_window_ends_reject_bad_arguments():
    with pytest.raises(ConfigError, match="stride must be an integer >= 1"):
        window_ends(np.ones(5, bool), np.zeros(5), 2, 0)
    with pytest.raises(DataError, match="must both be"):
        window_ends(np.ones(5, bool), np.zeros(4), 2, 1)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10**6), n_rows=st.integers(1, 30), window=st.integers(1, 8))
def test_gather_equals_a_naive_slice_loop(seed, n_rows, window):
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(rng.normal(size=(n_rows + window, 3)).astype(np.float32))
    ends = torch.from_numpy(rng.integers(window - 1, n_rows + window, size=7))
    out = gather_windows(x, ends, window)
    assert out.shape == (7, window, 3)
    expected = torch.stack([x[e - window + 1 : e + 1] for e in ends.tolist()])
    assert torch.equal(out, expected)


def test_gather_of_no_windows_is_empty():
    out = gather_windows(torch.zeros(10, 4), torch.zeros(0, dtype=torch.long), 3)
    assert out.shape == (0, 3, 4)


@settings(max_examples=50, deadline=None)
@given(
    seed=st.integers(0, 10**6),
    sizes=st.lists(st.integers(0, 30), min_size=1, max_size=4),
    window=st.integers(1, 8),
    stride=st.integers(1, 4),
    last_row=st.booleans(),
    horizon=st.integers(0, 1),
)
def test_window_set_properties(seed, sizes, window, stride, last_row, horizon):
    rng = np.random.default_rng(seed)
    days = [make_day(rng, n, date=f"2025010{i}") for i, n in enumerate(sizes)]
    ws = build_window_set(days, columns=[4, 0, 2], horizon_index=horizon, window=window,
                          stride=stride, last_row=last_row)
    day_of_row = np.repeat(np.arange(len(days)), sizes)
    row_ok = np.concatenate([d.row_ok for d in days])
    labels = np.concatenate([d.labels[:, horizon] for d in days])
    ends = ws.ends.numpy()
    starts = ends - window + 1
    assert ws.x.shape == (sum(sizes), 3) and ws.ends.dtype == torch.int64
    assert (day_of_row[starts] == day_of_row[ends]).all()
    assert (ws.y.numpy() == labels[ends]).all() and (ws.y.numpy() >= 0).all()
    for s, e in zip(starts, ends):
        assert row_ok[e] if last_row else row_ok[s : e + 1].all()
    offsets = np.cumsum([0, *sizes])
    expected = [e + offsets[i] for i, d in enumerate(days)
                for e in naive_ends(d.row_ok, d.labels[:, horizon], window, stride, last_row)]
    assert ends.tolist() == expected
    xb, yb = ws.batch(torch.arange(len(ws)))
    full = np.concatenate([d.x[:, [4, 0, 2]] for d in days])
    naive = np.stack([full[s : e + 1] for s, e in zip(starts, ends)]) if len(ws) else None
    assert xb.shape == (len(ws), window, 3) and torch.equal(yb, ws.y)
    if naive is not None:
        np.testing.assert_array_equal(xb.numpy(), naive)


def small_set(**kwargs):
    rng = np.random.default_rng(0)
    days = [make_day(rng, 50, p_gated=0.0, p_missing=0.0), make_day(rng, 40, p_gated=0.0)]
    args = dict(columns=[0, 1, 2, 3, 4], horizon_index=1, window=4, stride=2)
    return days, build_window_set(days, **{**args, **kwargs})


def test_batch_returns_float32_windows_and_int64_labels():
    _, ws = small_set()
    xb, yb = ws.batch(torch.tensor([0, 3, 3]))
    assert xb.dtype == torch.float32 and xb.shape == (3, 4, 5)
    assert yb.dtype == torch.int64 and yb.shape == (3,)
    assert torch.equal(xb[1], xb[2])
    assert ws.n_features == 5 and ws.window == 4


def test_class_counts_count_the_window_labels():
    _, ws = small_set()
    counts = ws.class_counts()
    assert counts.shape == (3,) and counts.dtype == torch.int64
    assert counts.tolist() == [int((ws.y == c).sum()) for c in range(3)]
    assert int(counts.sum()) == len(ws)


def test_to_moves_every_tensor():
    _, ws = small_set()
    moved = ws.to("cpu")
    assert isinstance(moved, WindowSet) and moved.window == ws.window
    assert moved.x.device.type == moved.ends.device.type == moved.y.device.type == "cpu"


def test_presets_and_time_regime_onehot_pass_through_to_the_selection():
    rng = np.random.default_rng(0)
    day = make_day(rng, 30, n_features=98)
    day.x[:, FeatureIndex.TIME_REGIME] = rng.integers(0, 7, size=30)
    ws = build_window_set([day], columns="signals", horizon_index=0, window=3, stride=1)
    assert ws.n_features == 8
    ws = build_window_set([day], columns=[0, int(FeatureIndex.TIME_REGIME)], horizon_index=0,
                          window=3, stride=1, time_regime_onehot=True)
    assert ws.n_features == 8
    assert torch.equal(ws.x[:, 1:].sum(1), torch.ones(30))


def test_horizon_index_out_of_range_is_a_config_error():
    with pytest.raises(ConfigError, match="horizon_index 2 is out of range for 2 horizon"):
        small_set(horizon_index=2)


def test_days_of_different_widths_or_no_days_are_data_errors():
    rng = np.random.default_rng(0)
    days = [make_day(rng, 10, n_features=5), make_day(rng, 10, n_features=6)]
    with pytest.raises(DataError, match=r"different feature counts \[5, 6\]"):
        build_window_set(days, columns=[0], horizon_index=0, window=2, stride=1)
    with pytest.raises(DataError, match="no days"):
        build_window_set([], columns=[0], horizon_index=0, window=2, stride=1)


def test_a_label_that_is_not_a_class_index_is_a_data_error_naming_the_day():
    day = make_day(np.random.default_rng(0), 10, p_gated=0.0, p_missing=0.0, date="20250314")
    day.labels[5, 0] = 3
    with pytest.raises(DataError, match="20250314: label 3 is not a class index"):
        build_window_set([day], columns=[0], horizon_index=0, window=2, stride=1)


@pytest.mark.gpu
def test_batches_are_gathered_on_the_gpu():
    _, ws = small_set()
    cuda = ws.to("cuda")
    xb, yb = cuda.batch(torch.arange(len(ws), device="cuda"))
    assert xb.device.type == "cuda" and yb.device.type == "cuda"
    cpu_x, cpu_y = ws.batch(torch.arange(len(ws)))
    assert torch.equal(xb.cpu(), cpu_x) and torch.equal(yb.cpu(), cpu_y)
    assert torch.equal(cuda.class_counts().cpu(), ws.class_counts())
