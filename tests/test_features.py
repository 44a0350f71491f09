import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lobsearch.contract import FEATURE_PRESETS, FeatureIndex
from lobsearch.data.features import (
    feature_columns,
    n_selected,
    select_features,
    time_regime_onehot_codes,
)
from lobsearch.errors import ConfigError

REGIME = int(FeatureIndex.TIME_REGIME)


def features(n=6, n_features=98):
    """(n, F) float32 where x[r, c] = 1000 r + c, and TIME_REGIME holds codes 0..6."""
    x = (1000 * np.arange(n)[:, None] + np.arange(n_features)[None, :]).astype(np.float32)
    if n_features > REGIME:
        x[:, REGIME] = np.arange(n) % 7
    return x


@pytest.mark.parametrize("name", sorted(FEATURE_PRESETS))
def test_presets_select_the_contract_columns_in_order(name):
    columns = feature_columns(name, 98)
    assert columns.dtype == np.int64 and columns.tolist() == list(FEATURE_PRESETS[name])
    x = features()
    out = select_features(x, name)
    assert out.dtype == np.float32 and out.flags.c_contiguous
    np.testing.assert_array_equal(out, x[:, list(FEATURE_PRESETS[name])])


def test_index_lists_keep_their_order():
    x = features()
    np.testing.assert_array_equal(select_features(x, [5, 0, 41]), x[:, [5, 0, 41]])
    assert feature_columns(np.array([3, 1]), 4).tolist() == [3, 1]


def test_an_unknown_preset_names_the_field_value_closest_and_choices():
    with pytest.raises(ConfigError) as info:
        feature_columns("lob_onyl", 98)
    message = str(info.value)
    assert message.startswith("features:")
    assert "unknown feature preset 'lob_onyl'; did you mean 'lob_only'?" in message
    assert all(name in message for name in FEATURE_PRESETS)


def test_a_preset_needing_more_columns_than_the_export_has_is_an_error():
    assert feature_columns("lob_only", 40).tolist() == list(range(40))
    with pytest.raises(ConfigError, match="feature preset 'full': index 40 is out of range"):
        feature_columns("full", 40)


@pytest.mark.parametrize(
    "spec,match",
    [
        ([0, 98], "index 98 is out of range for an export of 98 features"),
        ([-1], "index -1 is out of range"),
        ([1, 2, 1], r"index\(es\) \[1\] selected more than once"),
        ([], "selects no columns"),
        ([1.5], "index 1.5 is not an integer"),
        ([True], "index True is not an integer"),
        ([1, True], "index True is not an integer"),
        (np.array([[1, 2]]), "expected a preset name or a list of column indices"),
        (7, "expected a preset name or a list of column indices"),
    ],
)
def test_bad_index_lists_are_config_errors_naming_the_value(spec, match):
    with pytest.raises(ConfigError, match=match):
        feature_columns(spec, 98)


def test_every_problem_is_reported_at_once():
    with pytest.raises(ConfigError) as info:
        feature_columns([99, 100, 3, 3], 98)
    assert len(info.value.problems) == 3


def test_time_regime_onehot_replaces_the_column_in_place():
    x = features(n=9)
    x[7, REGIME] = 7.0
    x[8, REGIME] = 2.5
    out = select_features(x, [0, REGIME, 1], time_regime_onehot=True)
    assert out.shape == (9, 9)
    np.testing.assert_array_equal(out[:, 0], x[:, 0])
    np.testing.assert_array_equal(out[:, 8], x[:, 1])
    expected = np.zeros((9, 7), dtype=np.float32)
    expected[np.arange(7), np.arange(7)] = 1.0
    np.testing.assert_array_equal(out[:, 1:8], expected)


def test_onehot_codes_outside_0_to_6_give_all_zeros():
    out = time_regime_onehot_codes(np.array([0.0, 6.0, -1.0, 7.0, np.nan, np.inf, 3.5]))
    assert out.sum(axis=1).tolist() == [1, 1, 0, 0, 0, 0, 0]
    assert out[0, 0] == 1 and out[1, 6] == 1


def test_onehot_is_a_no_op_when_time_regime_is_not_selected():
    x = features()
    np.testing.assert_array_equal(
        select_features(x, "lob_only", time_regime_onehot=True), x[:, :40]
    )


@settings(max_examples=60, deadline=None)
@given(onehot=st.booleans(), n_features=st.sampled_from([98, 116]), data=st.data())
def test_n_selected_is_the_width_of_the_selection(onehot, n_features, data):
    spec = data.draw(
        st.one_of(
            st.sampled_from(sorted(FEATURE_PRESETS)),
            st.lists(st.integers(0, n_features - 1), min_size=1, max_size=20, unique=True),
        )
    )
    x = features(n=3, n_features=n_features)
    assert select_features(x, spec, time_regime_onehot=onehot).shape == (
        3,
        n_selected(spec, n_features, onehot),
    )
