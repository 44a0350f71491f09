"""lobsearch.results: each trial's status from Tune's record and its last reported epoch."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from lobsearch.results import _status


def result(error=None, **last) -> SimpleNamespace:
    return SimpleNamespace(error=error, metrics=last)


@pytest.mark.parametrize("found, tune_status, expected", [
    (result(), "PENDING", "not_started"),
    # Tune loads a trial saved RUNNING (a Ctrl-C stopped it) as PENDING
    (result(epoch=2, fit_status="running"), "PENDING", "interrupted"),
    (result(epoch=2, fit_status="running"), "RUNNING", "interrupted"),
    # its last epoch was reported before Tune stopped: trained to the end, whatever Tune's record says
    (result(epoch=10, fit_status="completed"), "PENDING", "completed"),
    (result(epoch=6, fit_status="early_stopped"), "TERMINATED", "early_stopped"),
    (result(epoch=2, fit_status="running"), "TERMINATED", "pruned"),
    (result(epoch=10, fit_status="running"), "TERMINATED", "completed"),
    (result(error=RuntimeError("boom"), epoch=3), "ERROR", "failed"),
    # Tune's record says errored but its error file could not be read: failed, never pruned
    (result(), "ERROR", "failed"),
    (result(epoch=2, fit_status="running"), "ERROR", "failed"),
])
def test_a_trials_status_follows_its_last_epoch_and_tunes_record(found, tune_status, expected):
    assert _status(found, max_epochs=10, tune_status=tune_status) == expected
