"""A resumed search restored without the work nothing reads: 3 s of a 1,000-trial resume.

Restoring a 1,000-trial experiment, Ray Tune 2.60 spends seconds of the driver, before the
first trial runs again, on work that is thrown away or repeated (``bench/scale.py``, profiled;
docs/benchmarks.md "Scale"):

- ``tune.Tuner.restore`` loads every trial's results into pandas frames (an
  ``ExperimentAnalysis``) for a ``Tuner.get_results()`` before ``fit``, which lobsearch never
  calls; ``fit`` builds its own from the trials it ran. 2.0 s for 1,000 trials.
- the controller re-queues every saved trial, and each looks its trainable up in the cluster's
  key-value store and unpickles it: four round trips to the GCS per trial, for one and the same
  trainable. 1.1 s for 1,000 trials.

``install`` patches both (hence this module, its tests and the pinned Ray; each patched method's
``__wrapped__`` is Tune's own): the Tuner's restore
reads no results (``get_results()`` before ``fit`` then raises Tune's own "has not been run"
error, never stale results), and the controller's restore looks each trainable up once. The
lookup is cached only while the controller restores: nothing registers a trainable meanwhile,
and a later search in the same process registers its own.

A resumed experiment may have been moved (copied off a cluster, another ``--storage``): the
controller's restore also points the searcher's new trials at the folder resumed from
(``new_trials_in_this_storage``), and ``use_callbacks`` gives the restored Tuner this driver's
callbacks (``use_stopper`` its stopper).
"""

from __future__ import annotations

import functools
from typing import Any

_PATCHED = "_lobsearch_restore"


def install() -> None:
    """Patch ``ray.tune.impl.tuner_internal.TunerInternal`` and ``TuneController.resume``
    (idempotent)."""
    from ray.tune.execution.tune_controller import TuneController
    from ray.tune.experiment import trial as trial_module
    from ray.tune.impl import tuner_internal

    internal = tuner_internal.TunerInternal
    if getattr(internal, _PATCHED, False):
        return
    restore_from_path, resume = internal._restore_from_path_or_uri, TuneController.resume

    @functools.wraps(restore_from_path)
    def restore_reading_no_results(self: Any, *args: Any, **kwargs: Any) -> None:
        analysis = tuner_internal.ExperimentAnalysis
        tuner_internal.ExperimentAnalysis = _no_analysis
        try:
            restore_from_path(self, *args, **kwargs)
        finally:
            tuner_internal.ExperimentAnalysis = analysis

    @functools.wraps(resume)
    def resume_looking_up_once(self: Any, *args: Any, **kwargs: Any) -> None:
        lookup = trial_module.get_trainable_cls
        trial_module.get_trainable_cls = functools.cache(lookup)
        try:
            resume(self, *args, **kwargs)
        finally:
            trial_module.get_trainable_cls = lookup
        new_trials_in_this_storage(self)

    internal._restore_from_path_or_uri = restore_reading_no_results
    TuneController.resume = resume_looking_up_once
    setattr(internal, _PATCHED, True)


def new_trials_in_this_storage(controller: Any) -> None:
    """Trials the resumed searcher creates go where the restored ones do: the experiment folder
    this driver resumed from. Tune moves each restored trial's storage there, but the search
    algorithm comes back with the experiment spec it pickled, storage included, so a moved
    experiment folder got every later trial in its old place (which Tune made again), and each
    such trial failed its first checkpoint there ("Unable to set up cluster storage").
    A fresh run's spec holds the controller's own storage: so does this one's now."""
    experiment = getattr(controller._search_alg, "_experiment", None)
    if experiment is not None and "storage" in experiment.spec:
        experiment.spec["storage"] = experiment.storage = controller._storage


def use_callbacks(tuner: Any, callbacks: list[Any]) -> None:
    """Run a restored ``tuner`` with ``callbacks`` rather than those pickled when its search
    started: those hold that driver's run folder and W&B settings, and a moved experiment
    folder then got the journal and W&B files in its old place. None of lobsearch's callbacks
    keeps state across a resume (``get_state`` is Tune's None), so nothing is lost."""
    tuner._local_tuner._run_config.callbacks = list(callbacks)


def use_stopper(tuner: Any, stopper: Any) -> None:
    """Run a restored ``tuner`` with ``stopper`` rather than the one pickled when its search
    started (``tuner.FoldGate.seen_before``: the peers it had seen)."""
    tuner._local_tuner._run_config.stop = stopper


def _no_analysis(*args: Any, **kwargs: Any) -> None:
    """Tune's own outcome when the results cannot be read: no analysis until ``fit``."""
    return None
