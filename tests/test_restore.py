"""lobsearch.restore on Ray 2.60's private Tuner and Tune controller: a resume reads no trial's
results before ``fit`` and looks the trainable up once, and the resumed fit's results are whole."""

from __future__ import annotations

from pathlib import Path

import pytest

from lobsearch import restore

pytestmark = pytest.mark.ray

SCORES = (0.1, 0.2, 0.3, 0.4)


def finished_experiment(storage: Path):
    """A Tune experiment of 4 trials, each reporting its ``x`` as ``score`` over 2 iterations."""
    from ray import tune
    from ray.tune.logger import JsonLoggerCallback

    def trainable(config):
        for step in range(2):
            tune.report({"score": config["x"] * (step + 1)})

    tuner = tune.Tuner(trainable, param_space={"x": tune.grid_search(list(SCORES))},
                       tune_config=tune.TuneConfig(reuse_actors=True),
                       run_config=tune.RunConfig(name="exp", storage_path=str(storage), verbose=0,
                                                 callbacks=[JsonLoggerCallback()]))  # whatever the environment says
    tuner.fit()
    return trainable, str(storage / "exp")


@pytest.fixture
def analyses(monkeypatch: pytest.MonkeyPatch) -> list:
    """Every ExperimentAnalysis built while the test runs (the trial results it read)."""
    from ray.tune.analysis.experiment_analysis import ExperimentAnalysis

    built, init = [], ExperimentAnalysis.__init__

    def counted(self, *args, **kwargs):
        built.append(args[0] if args else kwargs.get("experiment_checkpoint_path"))
        init(self, *args, **kwargs)

    monkeypatch.setattr(ExperimentAnalysis, "__init__", counted)
    return built


@pytest.fixture
def lookups(monkeypatch: pytest.MonkeyPatch) -> list:
    """Every trainable lookup a Trial makes while the test runs."""
    from ray.tune.experiment import trial as trial_module

    found, lookup = [], trial_module.get_trainable_cls

    def counted(name):
        found.append(name)
        return lookup(name)

    monkeypatch.setattr(trial_module, "get_trainable_cls", counted)
    return found


def test_a_restored_tuner_reads_no_results_until_its_fit_which_reads_them_whole(ray_session, tmp_path, analyses):
    from ray import tune
    from ray.tune.impl import tuner_internal

    trainable, path = finished_experiment(tmp_path)
    restore.install()
    analyses.clear()
    tuner = tune.Tuner.restore(path, trainable=trainable)
    assert analyses == [], "no trial's results read for a get_results() nobody calls"
    with pytest.raises(RuntimeError, match="has not been run"):
        tuner.get_results()  # Tune's own error, never stale results
    grid = tuner.fit()
    assert sorted(r.metrics["score"] for r in grid) == [2 * x for x in SCORES]
    assert all(len(r.metrics_dataframe) == 2 for r in grid)
    analyses.clear()
    tuner_internal.TunerInternal._restore_from_path_or_uri.__wrapped__(
        tuner._local_tuner, path, trainable, None, tuner._local_tuner._resume_config, None)
    assert len(analyses) == 1, "Tune's own restore reads every trial's results"


def test_a_resumed_controller_looks_the_trainable_up_once_for_all_its_trials(ray_session, tmp_path, lookups,
                                                                             monkeypatch):
    from ray import tune
    from ray.tune.execution.tune_controller import TuneController

    trainable, path = finished_experiment(tmp_path)
    restore.install()
    lookups.clear()
    grid = tune.Tuner.restore(path, trainable=trainable).fit()  # every trial finished: a resume, no trial runs
    assert len(grid) == len(SCORES) and grid.num_terminated == len(SCORES)
    assert len(lookups) == 1, lookups
    monkeypatch.setattr(TuneController, "resume", TuneController.resume.__wrapped__)
    lookups.clear()
    tune.Tuner.restore(path, trainable=trainable).fit()
    assert len(lookups) >= len(SCORES), "Tune's own resume looks it up for each trial"
