"""lobsearch.tpe against Optuna's own TPE: equal arrays, and equal suggestions for a seeded study."""

from __future__ import annotations

import pickle

import numpy as np
import optuna
import pytest
from optuna.samplers._tpe import _truncnorm

from lobsearch import tpe


def _optuna_log_ndtr(a: np.ndarray) -> np.ndarray:
    _truncnorm._log_ndtr_single.cache_clear()  # its own cache cannot hide a difference
    return tpe._OPTUNA_LOG_NDTR(a)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # Optuna's own, at NaN
def test_log_ndtr_equals_optunas_bit_for_bit_on_every_branch_and_edge():
    rng = np.random.default_rng(0)
    edges = [6.0, np.nextafter(6.0, 7), -20.0, np.nextafter(-20.0, 0), -1.0, np.nextafter(-1.0, 0), 1.0,
             np.nextafter(1.0, 0), 0.0, -0.0, 40.0, -40.0, -1e4, np.inf, -np.inf, np.nan]
    # the far tail (a <= -20, Optuna's asymptotic series) as often as the rest: a third of a TPE's calls
    a = np.concatenate([rng.normal(0, 8, 50_000), rng.uniform(-30, 10, 50_000), rng.uniform(-2_000, -20, 50_000),
                        edges])
    ours, theirs = tpe.log_ndtr(a), _optuna_log_ndtr(a)
    assert ours.dtype == theirs.dtype == np.float64 and ours.shape == a.shape
    np.testing.assert_array_equal(ours, theirs)  # NaN where theirs is NaN, every other value equal
    grid = a[:600].reshape(20, 30)  # any shape, as _log_gauss_mass passes 2-D arrays
    np.testing.assert_array_equal(tpe.log_ndtr(grid), _optuna_log_ndtr(grid))
    assert tpe.log_ndtr(np.array([])).shape == (0,)


def _objective_params(trial: optuna.Trial) -> dict:
    return {
        "layers": trial.suggest_int("layers", 1, 4),
        "hidden": trial.suggest_int("hidden", 16, 256, log=True),
        "window": trial.suggest_int("window", 20, 200, step=10),
        "lr": trial.suggest_float("lr", 1e-5, 1e-1, log=True),
        "dropout": trial.suggest_float("dropout", 0.0, 0.5),
        "batch": trial.suggest_categorical("batch", [64, 128, 256]),
    }


def _score(params: dict) -> float:
    return -((np.log10(params["lr"]) + 3) ** 2) - (params["layers"] - 2) ** 2 + params["dropout"] - abs(
        params["window"] - 100) / 100 + np.log(params["hidden"]) / 10 + params["batch"] / 1000


def _suggestions(sampler: optuna.samplers.BaseSampler, trials: int = 80, pending: int = 6) -> list[dict]:
    """A search as a cluster runs it: ``pending`` trials asked before any is told (the constant
    liar counts them), then one told and one asked at a time; some trials pruned."""
    study = optuna.create_study(direction="maximize", sampler=sampler)
    running, asked = [], []
    for number in range(trials):
        trial = study.ask()
        running.append((trial, _objective_params(trial)))
        asked.append(running[-1][1])
        if len(running) > pending:
            trial, params = running.pop(0)
            if number % 7 == 0:
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            else:
                study.tell(trial, _score(params))
    return asked


def test_the_sampler_suggests_what_optunas_tpe_suggests_with_the_same_seed(monkeypatch):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    settings = {"seed": 3, "n_startup_trials": 5, "constant_liar": True}
    ours = _suggestions(tpe.Sampler(**settings))
    assert _truncnorm._log_ndtr is tpe.log_ndtr  # installed by the sampler
    monkeypatch.setattr(_truncnorm, "_log_ndtr", tpe._OPTUNA_LOG_NDTR)
    theirs = _suggestions(optuna.samplers.TPESampler(**settings))
    assert len(ours) == 80 and len({str(p) for p in ours}) > 70
    assert ours == theirs


def test_finished_trials_are_converted_once_and_running_ones_every_ask(monkeypatch):
    sampler = tpe.Sampler(seed=0, n_startup_trials=2, constant_liar=True)
    read = []  # the trials whose parameters the sampler read and converted
    get_params = sampler._get_params
    monkeypatch.setattr(sampler, "_get_params", lambda trial, study: read.append(trial.number) or get_params(trial, study))
    study = optuna.create_study(sampler=sampler)
    for value in (0.1, 0.2, 0.3):
        study.enqueue_trial({"x": value})
        trial = study.ask()
        trial.suggest_float("x", 0, 1)
        study.tell(trial, value)
    running = study.ask()
    running.suggest_float("x", 0, 1)
    assert sorted(set(read)) == [0, 1, 2]
    read.clear()
    for _ in range(3):
        trial = study.ask()
        trial.suggest_float("x", 0, 1)
    # each ask reads the trials still running (trial 3, then those just asked), not the three
    # finished ones: their converted values were kept when first read
    assert read == [3, 3, 4, 3, 4, 5]
    assert sum(len(rows) for rows in sampler._finished_reprs.values()) == 3


def test_a_pickled_sampler_carries_no_cache_and_goes_on_suggesting_the_same():
    sampler = tpe.Sampler(seed=1, n_startup_trials=3, constant_liar=True)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    for _ in range(12):
        trial = study.ask()
        study.tell(trial, _score(_objective_params(trial)))
    assert sampler._finished_reprs
    copy = pickle.loads(pickle.dumps(study))
    assert copy.sampler._finished_reprs == {}
    trial, again = study.ask(), copy.ask()
    assert _objective_params(trial) == _objective_params(again)


def test_one_sampler_in_two_studies_of_their_own_storages_suggests_for_each_from_its_own_trials():
    """Two in-memory studies both number their trials from 0: a cache keyed by trial id alone
    would hand the second study the first one's parameters."""
    shared = tpe.Sampler(seed=5, n_startup_trials=3, constant_liar=True)
    studies = [optuna.create_study(direction=direction, sampler=shared) for direction in ("maximize", "minimize")]
    for study in studies:
        for _ in range(10):
            trial = study.ask()
            study.tell(trial, _score(_objective_params(trial)))
    for study in studies:  # each study's next ask, against a sampler that saw only that study
        own = tpe.Sampler(seed=9, n_startup_trials=3, constant_liar=True)
        alone = optuna.create_study(direction=study.direction, sampler=own)
        alone.add_trials(study.trials)
        shared._rng.rng.seed(9)
        own._rng.rng.seed(9)
        assert _objective_params(study.ask()) == _objective_params(alone.ask())

