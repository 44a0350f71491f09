"""lobsearch.tuner: what the Tuner it builds prints."""

from __future__ import annotations


def test_slow_sampling_is_not_warned_at_every_suggestion_and_other_warnings_still_are():
    import warnings

    from lobsearch.tuner import quiet_slow_sampling

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        quiet_slow_sampling()
        warnings.warn("Define-by-run function passed in the `space` argument took 1.31 seconds to run.", UserWarning)
        warnings.warn("something else", UserWarning)
    assert [str(w.message) for w in caught] == ["something else"]
