import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lobsearch.contract import FeatureIndex
from lobsearch.data.gating import (
    ROW_RULE,
    RULES,
    candidate_ends,
    gate_rows,
    window_gate_counts,
    window_ok,
)
from lobsearch.errors import ConfigError, DataError

BOOK, MBO, INVALID = FeatureIndex.BOOK_VALID, FeatureIndex.MBO_READY, FeatureIndex.INVALIDITY_DELTA


def day(book, mbo, invalid, n_features=98):
    """(N, F) float32 features with the given gate columns and noise elsewhere."""
    n = len(book)
    x = np.random.default_rng(0).normal(size=(n, n_features)).astype(np.float32)
    x[:, BOOK], x[:, MBO], x[:, INVALID] = book, mbo, invalid
    return x


def test_rules_use_contract_thresholds_and_nan_fails():
    book = [1.0, 0.5, 0.4999, np.nan, 1.0, 1.0, 1.0, 1.0]
    mbo = [1.0, 1.0, 1.0, 1.0, 0.0, np.nan, 1.0, 1.0]
    invalid = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, np.nan]
    result = gate_rows(day(book, mbo, invalid))
    assert result.row_ok.tolist() == [True, True, False, False, False, False, False, False]
    assert result.failed == {"book_valid": 2, "mbo_ready": 2, "invalidity": 2}
    assert result.dropped == 6


def test_a_row_failing_several_rules_counts_under_each_but_drops_once():
    result = gate_rows(day([0.0, 1.0], [0.0, 1.0], [3.0, 0.0]))
    assert result.failed == {"book_valid": 1, "mbo_ready": 1, "invalidity": 1}
    assert result.dropped == 1


@pytest.mark.parametrize("rule", list(RULES))
def test_each_gate_can_be_switched_off(rule):
    x = day([0.0, 1.0, 1.0], [1.0, 0.0, 1.0], [0.0, 0.0, 2.0])
    result = gate_rows(x, **{rule: False})
    assert result.failed[rule] == 0
    assert rule not in result.rule_ok
    assert result.dropped == 2
    assert gate_rows(x, book_valid=False, mbo_ready=False, invalidity=False).row_ok.all()


@pytest.mark.parametrize("n_features", [40, 48, 76, 84, 96])
def test_exports_without_gate_columns_pass_every_row(n_features):
    x = np.zeros((5, n_features), dtype=np.float32)
    result = gate_rows(x)
    assert result.row_ok.all() and result.dropped == 0
    assert result.failed == {"book_valid": 0, "mbo_ready": 0, "invalidity": 0}
    assert window_gate_counts(result, 2, 1)["total"] == 0


@pytest.mark.parametrize("n_features", [97, 98, 116, 148])
def test_exports_with_gate_columns_are_gated(n_features):
    assert gate_rows(day([0.0, 1.0], [1.0, 1.0], [0.0, 0.0], n_features)).dropped == 1


def test_read_only_memmap_input_is_not_modified(tmp_path):
    x = day([0.0, 1.0, np.nan], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0])
    np.save(tmp_path / "d.npy", x)
    mapped = np.load(tmp_path / "d.npy", mmap_mode="r")
    assert gate_rows(mapped).row_ok.tolist() == [False, True, False]
    np.testing.assert_array_equal(mapped, x)


def test_the_rule_in_words_lists_every_contract_rule():
    assert ROW_RULE == "BOOK_VALID >= 0.5, MBO_READY >= 0.5 and INVALIDITY_DELTA == 0"


def test_blocks_of_rows_are_gated_as_the_whole_day():
    rng = np.random.default_rng(2)
    x = day(*(rng.choice([0.0, 0.4, 0.5, 1.0, 3.0, np.nan], size=300) for _ in range(3)))
    whole = gate_rows(x).row_ok
    blocks = np.concatenate([gate_rows(x[start:start + 70]).row_ok for start in range(0, len(x), 70)])
    np.testing.assert_array_equal(blocks, whole)
    assert 0 < whole.sum() < len(x)


def test_non_2d_features_are_a_data_error():
    with pytest.raises(DataError, match="2-D"):
        gate_rows(np.zeros(98))


@pytest.mark.parametrize("window,stride", [(0, 1), (5, 0), (2.5, 1), (True, 1)])
def test_window_and_stride_must_be_positive_integers(window, stride):
    with pytest.raises(ConfigError, match="must be an integer >= 1"):
        candidate_ends(10, window, stride)


def test_candidate_ends_start_at_window_minus_one_and_step_by_stride():
    assert candidate_ends(10, 3, 2).tolist() == [2, 4, 6, 8]
    assert candidate_ends(2, 3, 1).tolist() == []


def naive_dropped(ok, window, stride, last_row):
    ends = range(window - 1, len(ok), stride)
    if last_row:
        return sum(not ok[e] for e in ends)
    return sum(not all(ok[e - window + 1 : e + 1]) for e in ends)


gate_values = st.lists(
    st.tuples(
        st.sampled_from([0.0, 1.0, np.nan]),
        st.sampled_from([0.0, 1.0]),
        st.sampled_from([0.0, 2.0]),
    ),
    max_size=40,
)


@settings(max_examples=60, deadline=None)
@given(
    rows=gate_values,
    window=st.integers(1, 8),
    stride=st.integers(1, 4),
    last_row=st.booleans(),
    enabled=st.fixed_dictionaries({name: st.booleans() for name in RULES}),
)
def test_window_gate_counts_match_a_naive_count(rows, window, stride, last_row, enabled):
    book, mbo, invalid = (list(c) for c in zip(*rows)) if rows else ([], [], [])
    result = gate_rows(day(book, mbo, invalid), **enabled)
    counts = window_gate_counts(result, window, stride, last_row)
    rule_ok = {
        "book_valid": [b >= 0.5 for b in book],
        "mbo_ready": [m >= 0.5 for m in mbo],
        "invalidity": [i == 0 for i in invalid],
    }
    for name, ok in rule_ok.items():
        expected = naive_dropped(ok, window, stride, last_row) if enabled[name] else 0
        assert counts[name] == expected
    row_ok = [all(rule_ok[n][i] for n in RULES if enabled[n]) for i in range(len(book))]
    assert counts["total"] == naive_dropped(row_ok, window, stride, last_row)


def test_window_gate_counts_accept_raw_features():
    x = day([1.0, 0.0, 1.0, 1.0, 1.0], [1.0] * 5, [0.0, 0.0, 0.0, 0.0, 1.0])
    counts = window_gate_counts(x, 2, 1)
    assert counts == {"book_valid": 2, "mbo_ready": 0, "invalidity": 1, "total": 3}
    assert counts == window_gate_counts(gate_rows(x), 2, 1)
    assert window_gate_counts(x, 2, 1, last_row=True) == {
        "book_valid": 1, "mbo_ready": 0, "invalidity": 1, "total": 2
    }


def test_window_ok_needs_every_row_or_only_the_end_row():
    ok = np.array([True, False, True, True, True])
    ends = np.array([1, 2, 3, 4])
    assert window_ok(ok, ends, 2).tolist() == [False, False, True, True]
    assert window_ok(ok, ends, 2, last_row=True).tolist() == [False, True, True, True]
