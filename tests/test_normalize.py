import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lobsearch.contract import NEVER_NORMALIZE, FeatureIndex
from lobsearch.data.normalize import (
    DROP,
    NORM_MODES,
    Moments,
    NormStats,
    day_moments,
    norm_stats,
    normalize_day,
    normalized_chunks,
    scaled_columns,
    sign_fix,
    stats_for_days,
)
from lobsearch.errors import ConfigError, DataError

DT = FeatureIndex.DT_SECONDS
CANCEL, TRADE = FeatureIndex.NET_CANCEL_FLOW, FeatureIndex.NET_TRADE_FLOW
KEPT = sorted(int(i) for i in NEVER_NORMALIZE)


def raw(n=200, n_features=98, seed=0):
    """(n, F) float32 raw-looking features: every column on its own scale and offset."""
    rng = np.random.default_rng(seed)
    scale = rng.uniform(0.1, 100, size=n_features)
    offset = rng.uniform(-50, 50, size=n_features)
    x = rng.normal(size=(n, n_features)) * scale + offset
    return x.astype(np.float32)


def moments_of(x, row_ok=None, schema_version=None):
    ok = np.ones(len(x), dtype=bool) if row_ok is None else row_ok
    return day_moments(x, ok, schema_version)


def assert_same(a: Moments, b: Moments, exact=False):
    assert a.count == b.count
    check = np.testing.assert_array_equal if exact else np.testing.assert_allclose
    check(a.mean, b.mean)
    check(a.m2, b.m2)


# Moments and their combination


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), cuts=st.lists(st.integers(0, 60), min_size=1, max_size=5))
def test_combining_partials_equals_one_shot_moments_in_any_grouping(seed, cuts):
    x = raw(60, 6, seed).astype(np.float64)
    bounds = [0, *sorted(cuts), 60]
    parts = [moments_of(x[a:b]) for a, b in zip(bounds, bounds[1:])]
    left = parts[0]
    for p in parts[1:]:
        left = left.combine(p)
    right = parts[-1]
    for p in reversed(parts[:-1]):
        right = p.combine(right)
    one_shot = Moments(60, x.mean(0), ((x - x.mean(0)) ** 2).sum(0))
    assert_same(left, one_shot)
    assert_same(right, one_shot)


def test_empty_moments_are_the_identity_of_combine():
    m = moments_of(raw(10, 4))
    assert_same(m.combine(Moments.empty(4)), m, exact=True)
    assert_same(Moments.empty(4).combine(m), m, exact=True)


def test_combining_different_widths_is_a_data_error():
    with pytest.raises(DataError, match="cannot combine 4 with 5"):
        Moments.empty(4).combine(moments_of(raw(3, 5)))


def test_gated_rows_do_not_reach_the_statistics_even_as_nan():
    x = raw(50)
    ok = np.arange(50) % 3 != 0
    polluted = x.copy()
    polluted[~ok] = np.nan
    polluted[0, 5] = 1e30
    assert_same(moments_of(polluted, ok), moments_of(x[ok]), exact=True)


def test_a_non_finite_value_in_a_passing_row_is_a_data_error_naming_the_row():
    x = raw(10)
    x[7, 3] = np.inf
    ok = np.array([True] * 2 + [False] * 3 + [True] * 5)
    with pytest.raises(DataError, match="first at row 7, column 3"):
        moments_of(x, ok)


def test_a_day_without_passing_rows_has_empty_moments():
    m = moments_of(raw(5), np.zeros(5, dtype=bool))
    assert m.count == 0 and m.mean.shape == (98,)


def test_moments_are_float64_after_float32_input():
    m = moments_of(raw(5))
    assert m.mean.dtype == np.float64 and m.m2.dtype == np.float64


# Chunked work equals the same steps on the whole day, bit for bit


def whole_day_moments(x, ok, version):
    rows = np.array(x[ok], dtype=np.float64)
    sign_fix(rows, version)
    mean = rows.mean(axis=0)
    return rows.shape[0], mean, ((rows - mean) ** 2).sum(axis=0)


def whole_day_normalize(x, stats, version, clip, ok):
    z = np.array(x, dtype=np.float64)
    bad = ~np.isfinite(z)
    sign_fix(z, version)
    z -= np.where(stats.scaled, stats.mean, 0.0)
    z /= np.where(stats.scaled, stats.std, 1.0)
    bound = np.where(stats.scaled, clip, np.inf)
    np.clip(z, -bound, bound, out=z)
    z[bad] = 0.0
    return z.astype(np.float32)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 300), chunk=st.sampled_from([1, 2, 7, 64, 299, 4096]),
       version=st.sampled_from([2.0, 2.1]), gated=st.floats(0.0, 0.9), as_float32=st.booleans())
def test_chunked_moments_and_normalization_equal_the_whole_day_steps_bit_for_bit(seed, n, chunk, version, gated,
                                                                                    as_float32):
    rng = np.random.default_rng(seed)
    x = raw(n, 98, seed).astype(np.float32 if as_float32 else np.float64)
    ok = rng.random(n) >= gated
    x[~ok & (rng.random(n) < 0.5), 5] = np.nan
    if not ok.any():
        assert day_moments(x, ok, version, chunk_rows=chunk).count == 0
        return
    m = day_moments(x, ok, version, chunk_rows=chunk)
    count, mean, m2 = whole_day_moments(x, ok, version)
    assert m.count == count
    assert m.mean.tobytes() == mean.tobytes() and m.m2.tobytes() == m2.tobytes()
    stats = norm_stats(m)
    z = normalize_day(x, stats, schema_version=version, clip=3.0, row_ok=ok, chunk_rows=chunk)
    assert z.tobytes() == whole_day_normalize(x, stats, version, 3.0, ok).tobytes()


@pytest.mark.parametrize("chunk", [1, 3, 4096])
def test_a_non_finite_passing_value_is_named_whatever_the_chunk(chunk):
    x = raw(10).astype(np.float64)
    x[7, 4], x[8, 6] = np.inf, np.nan
    ok = np.ones(10, dtype=bool)
    for call in (lambda: day_moments(x, ok, None, chunk_rows=chunk),
                 lambda: normalize_day(x, None, schema_version=None, row_ok=ok, chunk_rows=chunk)):
        with pytest.raises(DataError, match=r"2 non-finite value\(s\) .*first at row 7, column 4"):
            call()


def test_finite_values_whose_sum_overflows_are_not_an_error():
    x = np.full((4, 98), 1e308)
    with np.errstate(over="ignore"):
        m = day_moments(x, np.ones(4, dtype=bool), None)
        z = normalize_day(x, None, schema_version=None)
    assert m.count == 4 and np.isposinf(m.mean).all() and np.isposinf(m.m2).all()
    assert z.dtype == np.float32 and np.isposinf(z).all()


def test_an_overflowed_mean_with_gated_rows_gives_the_whole_day_m2():
    x = np.full((6, 98), 1e308)
    ok = np.array([True, False, True, True, False, True])
    x[1], x[4, :3] = np.inf, np.nan
    with np.errstate(over="ignore"):
        m = day_moments(x, ok, None, chunk_rows=2)
        count, mean, m2 = whole_day_moments(x, ok, None)
    assert m.count == count and m.mean.tobytes() == mean.tobytes() and m.m2.tobytes() == m2.tobytes()


def test_opposite_infinities_in_a_passing_row_raise_without_a_warning():
    x = raw(6).astype(np.float64)
    x[1, 3], x[2, 3] = np.inf, -np.inf
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(DataError, match="2 non-finite value"):
            day_moments(x, np.ones(6, dtype=bool), None)


@pytest.mark.parametrize("chunk", [0, -3, 2.5, True])
def test_a_chunk_size_below_one_row_is_refused_before_any_work(chunk):
    x = raw(5).astype(np.float64)
    for call in (lambda: day_moments(x, np.ones(5, dtype=bool), None, chunk_rows=chunk),
                 lambda: normalized_chunks(x, None, schema_version=None, chunk_rows=chunk)):
        with pytest.raises(ValueError, match="chunk_rows: must be an integer >= 1"):
            call()


def test_array_likes_are_accepted_as_before():
    rows = raw(3, 40).astype(np.float64).tolist()
    np.testing.assert_array_equal(normalize_day(rows, None, schema_version=None), np.asarray(rows, np.float32))


# Statistics and normalize_day


def test_zero_variance_columns_get_std_one_and_no_nan():
    x = raw(100)
    x[:, 3] = 101.37
    x[:, 4] = 0.0
    stats = norm_stats(moments_of(x[:50]).combine(moments_of(x[50:])))
    assert stats.std[3] == 1.0 and stats.std[4] == 1.0
    z = normalize_day(x, stats, schema_version=None)
    assert np.isfinite(z).all()
    np.testing.assert_allclose(z[:, 3], 0.0, atol=1e-6)
    np.testing.assert_array_equal(z[:, 4], 0.0)


def test_scaled_columns_give_zero_mean_unit_std_on_the_fitted_rows():
    x = raw(500)
    z = normalize_day(x, norm_stats(moments_of(x)), schema_version=None, clip=None)
    scaled = scaled_columns(98)
    np.testing.assert_allclose(z[:, scaled].mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(z[:, scaled].std(0), 1.0, rtol=1e-4)


def test_never_normalize_columns_pass_through_bit_for_bit():
    x = raw(100)
    x[:, KEPT] = np.random.default_rng(1).integers(0, 30, size=(100, len(KEPT)))
    x[:, FeatureIndex.SCHEMA_VERSION] = 2.0
    z = normalize_day(x, norm_stats(moments_of(x)), schema_version=2.0, clip=1.0)
    np.testing.assert_array_equal(z[:, KEPT], x[:, KEPT])
    assert not np.array_equal(z[:, DT], x[:, DT])


def test_dt_seconds_is_scaled_only_by_choice():
    x = raw(100)
    stats = norm_stats(moments_of(x), normalize_dt=False)
    assert not stats.scaled[DT] and not stats.scaled[KEPT].any() and stats.scaled.sum() == 98 - 6
    np.testing.assert_array_equal(normalize_day(x, stats, schema_version=None)[:, DT], x[:, DT])


@pytest.mark.parametrize(
    "version,flipped", [(2.0, True), (2.1, False), (2.2, False), (0.0, False), (None, False)]
)
def test_sign_fix_negates_cancel_and_trade_flow_for_schema_2_0_only(version, flipped):
    x = raw(20)
    out = normalize_day(x, None, schema_version=version)
    sign = -1.0 if flipped else 1.0
    np.testing.assert_array_equal(out[:, [CANCEL, TRADE]], sign * x[:, [CANCEL, TRADE]])
    others = np.setdiff1d(np.arange(98), [CANCEL, TRADE])
    np.testing.assert_array_equal(out[:, others], x[:, others])


def test_sign_fix_happens_before_the_statistics():
    x = raw(100)
    m20, m21 = moments_of(x, schema_version=2.0), moments_of(x, schema_version=2.1)
    np.testing.assert_array_equal(m20.mean[[CANCEL, TRADE]], -m21.mean[[CANCEL, TRADE]])
    z20 = normalize_day(x, norm_stats(m20), schema_version=2.0)
    z21 = normalize_day(x, norm_stats(m21), schema_version=2.1)
    np.testing.assert_allclose(z20[:, [CANCEL, TRADE]], -z21[:, [CANCEL, TRADE]], atol=1e-6)
    np.testing.assert_array_equal(z20[:, :CANCEL], z21[:, :CANCEL])


def test_sign_fix_is_skipped_when_the_columns_do_not_exist():
    x = raw(5, 40)
    np.testing.assert_array_equal(normalize_day(x, None, schema_version=2.0), x)


@pytest.mark.parametrize("clip", [10.0, 3.0, 0.5])
def test_scaled_values_are_clipped_to_plus_minus_clip(clip):
    x = raw(100)
    x[0, 7] = 1e6
    x[1, 7] = -1e6
    z = normalize_day(x, norm_stats(moments_of(x[2:])), schema_version=None, clip=clip)
    assert z[0, 7] == np.float32(clip) and z[1, 7] == np.float32(-clip)
    assert np.abs(z[:, scaled_columns(98)]).max() <= clip


def test_clip_none_disables_clipping_and_a_non_positive_clip_is_a_config_error():
    x = raw(100)
    x[0, 7] = 1e6
    stats = norm_stats(moments_of(x[1:]))
    assert normalize_day(x, stats, schema_version=None, clip=None)[0, 7] > 10
    with pytest.raises(ConfigError, match="clip must be > 0"):
        normalize_day(x, None, schema_version=None, clip=0.0)


def test_non_finite_values_in_gated_rows_become_zero():
    x = raw(20)
    ok = np.ones(20, dtype=bool)
    ok[[3, 9]] = False
    x[3, :] = np.nan
    x[9, [0, FeatureIndex.BOOK_VALID]] = [np.inf, np.nan]
    for stats in (norm_stats(moments_of(x, ok)), None):
        z = normalize_day(x, stats, schema_version=None, row_ok=ok)
        assert np.isfinite(z).all()
        assert (z[3] == 0).all() and z[9, 0] == 0 and z[9, FeatureIndex.BOOK_VALID] == 0


def test_non_finite_values_in_passing_rows_are_a_data_error():
    x = raw(20)
    x[4, 2] = np.nan
    with pytest.raises(DataError, match="row 4, column 2"):
        normalize_day(x, None, schema_version=None)


def test_no_stats_only_casts_and_never_modifies_the_input(tmp_path):
    np.save(tmp_path / "d.npy", raw(30).astype(np.float64))
    mapped = np.load(tmp_path / "d.npy", mmap_mode="r")
    before = np.array(mapped)
    out = normalize_day(mapped, None, schema_version=2.0)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(np.delete(out, [CANCEL, TRADE], 1),
                                  np.delete(before, [CANCEL, TRADE], 1).astype(np.float32))
    normalize_day(mapped, norm_stats(moments_of(mapped)), schema_version=2.0)
    np.testing.assert_array_equal(mapped, before)


def test_chunks_are_the_day_in_row_order_and_bad_arguments_fail_before_the_first():
    x = raw(30).astype(np.float64)
    stats = norm_stats(moments_of(x))
    chunks = [c.copy() for c in normalized_chunks(x, stats, schema_version=2.0, chunk_rows=7)]
    assert [len(c) for c in chunks] == [7, 7, 7, 7, 2] and all(c.dtype == np.float64 for c in chunks)
    whole = normalize_day(x, stats, schema_version=2.0)
    assert np.concatenate(chunks).astype(np.float32).tobytes() == whole.tobytes()
    with pytest.raises(ConfigError, match="clip must be > 0"):
        normalized_chunks(x, stats, schema_version=None, clip=-1.0)
    with pytest.raises(DataError, match="statistics of 98 features applied to 40"):
        normalized_chunks(raw(5, 40), stats, schema_version=None)


def test_stats_of_another_width_are_a_data_error():
    with pytest.raises(DataError, match="statistics of 40 features applied to 98"):
        normalize_day(raw(5), norm_stats(moments_of(raw(5, 40))), schema_version=None)


def test_no_rows_means_no_statistics():
    with pytest.raises(DataError, match="no rows pass the gates"):
        norm_stats(Moments.empty(98))


@pytest.mark.parametrize("n_features", [40, 48, 84, 116, 148])
def test_column_rules_apply_only_to_columns_that_exist(n_features):
    scaled = scaled_columns(n_features)
    expected = np.ones(n_features, dtype=bool)
    expected[[i for i in KEPT if i < n_features]] = False
    np.testing.assert_array_equal(scaled, expected)
    x = raw(50, n_features)
    z = normalize_day(x, norm_stats(moments_of(x)), schema_version=None, clip=None)
    assert z.shape == x.shape and z.dtype == np.float32
    np.testing.assert_allclose(z[:, scaled].mean(0), 0.0, atol=1e-5)


# Which statistics each day uses


def day_list(specs, n_features=4):
    """(split, Moments) per (split, seed, rows) spec."""
    return [(split, moments_of(raw(rows, n_features, seed))) for split, seed, rows in specs]


def test_train_mode_uses_training_days_only_and_the_same_stats_everywhere():
    days = day_list([("train", 1, 20), ("train", 2, 30), ("val", 3, 10), ("test", 4, 10)])
    stats = stats_for_days("train", days)
    assert all(s is stats[0] for s in stats)
    expected = norm_stats(days[0][1].combine(days[1][1]))
    np.testing.assert_array_equal(stats[0].mean, expected.mean)
    np.testing.assert_array_equal(stats[0].std, expected.std)


day_specs = st.lists(
    st.tuples(st.sampled_from(["train", "val", "test"]), st.integers(0, 10**6), st.integers(1, 20)),
    max_size=8,
)


@settings(max_examples=50, deadline=None)
@given(specs=day_specs, data=st.data())
def test_train_statistics_ignore_every_validation_day_bit_for_bit(specs, data):
    specs = [("train", 7, 5), *specs]
    edited = []
    for spec in specs:
        if spec[0] == "val":
            action = data.draw(st.sampled_from(["keep", "drop", "change"]))
            if action == "change":
                edited.append(("val", spec[1] + 1, spec[2] + 3))
            elif action == "keep":
                edited.append(spec)
        else:
            edited.append(spec)
        if data.draw(st.booleans()):
            edited.append(("val", data.draw(st.integers(0, 10**6)), data.draw(st.integers(1, 20))))
    before = stats_for_days("train", day_list(specs))[0]
    after = stats_for_days("train", day_list(edited))[0]
    assert before.mean.tobytes() == after.mean.tobytes()
    assert before.std.tobytes() == after.std.tobytes()


def test_train_mode_without_usable_training_rows_is_a_data_error():
    with pytest.raises(DataError, match="no training day"):
        stats_for_days("train", day_list([("val", 1, 5)]))
    with pytest.raises(DataError, match="no training day"):
        stats_for_days("train", [("train", Moments.empty(4)), *day_list([("val", 1, 5)])])


def test_per_day_mode_uses_each_days_own_statistics():
    days = [*day_list([("train", 1, 20), ("val", 2, 10)]), ("test", Moments.empty(4))]
    stats = stats_for_days("per_day", days)
    for (_, m), s in zip(days[:2], stats[:2]):
        np.testing.assert_array_equal(s.mean, m.mean)
    assert stats[2] is DROP


def test_none_mode_scales_nothing():
    assert stats_for_days("none", day_list([("train", 1, 5), ("val", 2, 5)])) == [None, None]


@pytest.mark.parametrize("k", [1, 2, 3])
def test_prior_days_drops_the_first_k_days_and_combines_the_k_before(k):
    days = day_list([(s, i, 10 + i) for i, s in enumerate(["train"] * 4 + ["val"] * 2 + ["test"])])
    stats = stats_for_days("prior_days", days, k)
    assert stats[:k] == [DROP] * k
    for i in range(k, len(days)):
        prior = days[i - k][1]
        for _, m in days[i - k + 1 : i]:
            prior = prior.combine(m)
        np.testing.assert_array_equal(stats[i].mean, norm_stats(prior).mean)
        np.testing.assert_array_equal(stats[i].std, norm_stats(prior).std)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 8), k=st.integers(1, 4), data=st.data())
def test_prior_days_statistics_use_only_the_k_earlier_days(n, k, data):
    j = data.draw(st.integers(0, n - 1))
    specs = [("train", i, 6) for i in range(n)]
    changed = [*specs[:j], ("train", 1000 + j, 9), *specs[j + 1 :]]
    before = stats_for_days("prior_days", day_list(specs), k)
    after = stats_for_days("prior_days", day_list(changed), k)
    for i, (b, a) in enumerate(zip(before, after)):
        if i < k:
            assert b is DROP and a is DROP
        elif j < i <= j + k:
            assert not np.array_equal(b.mean, a.mean)
        else:
            assert b.mean.tobytes() == a.mean.tobytes()


def test_prior_days_drops_a_day_whose_prior_days_have_no_rows():
    days = [("train", Moments.empty(4)), *day_list([("train", 1, 5), ("val", 2, 5)])]
    stats = stats_for_days("prior_days", days, 1)
    assert stats[0] is DROP and stats[1] is DROP and isinstance(stats[2], NormStats)


def test_an_unknown_mode_is_a_config_error_with_the_closest_choice():
    with pytest.raises(ConfigError) as info:
        stats_for_days("per-day", [])
    message = str(info.value)
    assert "did you mean 'per_day'?" in message
    assert all(mode in message for mode in NORM_MODES)


@pytest.mark.parametrize("k", [0, -1, 1.5])
def test_prior_days_needs_a_positive_integer_k(k):
    with pytest.raises(ConfigError, match="k must be an integer >= 1"):
        stats_for_days("prior_days", [], k)
