"""The scheduler's choice of a trial to start, found from the controller's own sets rather than by
a scan of every trial.

Ray Tune 2.60's controller asks its scheduler for a trial to start at every step (each event it
handles: about 2.4 per epoch of each trial in ``bench/scale.py``), and
``FIFOScheduler.choose_trial_to_run``, which ASHA inherits, answers by scanning every trial of the
search for the first PENDING one, then for the first PAUSED one. A search of N trials thus does
O(N) work per event and O(N^2) in all: at 1,000 trials, 32 at a time, 4.6 % of the driver's event
loop (py-spy), 2.5 s of the driver's time in one search (docs/benchmarks.md "Scale").

The controller already keeps its PENDING and PAUSED trials in sets (``add_trial`` and
``_set_trial_status`` are the only places a status changes, and Tune asserts the sets agree with
the statuses). ``install`` answers from them: none when both are empty (the usual case, every slot
busy), else the waiting trial that comes first in the search's order, found by walking the trials
from the newest until every waiting one is seen (a waiting trial is almost always among the
newest). The trial chosen is Tune's own choice; a private part of Tune (hence this module, its
tests and the pinned Ray).
"""

from __future__ import annotations

from typing import Any

_PATCHED = "_lobsearch_trialchoice"


def first_in_order(trials: list, waiting: set) -> Any:
    """The trial of ``waiting`` that comes first in ``trials`` (None when ``waiting`` is empty);
    walks ``trials`` from the end until every member of ``waiting`` has been seen."""
    first, left = None, len(waiting)
    if not left:
        return None
    for trial in reversed(trials):
        if trial in waiting:
            first, left = trial, left - 1
            if not left:
                break
    return first


def install() -> None:
    """Patch ``ray.tune.schedulers.FIFOScheduler.choose_trial_to_run`` (idempotent); ASHA and
    every scheduler that does not choose for itself inherit it."""
    from ray.tune.schedulers import FIFOScheduler

    if getattr(FIFOScheduler, _PATCHED, False):
        return
    choose = FIFOScheduler.choose_trial_to_run

    def choose_from_the_sets(self: Any, tune_controller: Any) -> Any:
        controller = getattr(tune_controller, "_tune_controller", tune_controller)  # Tune passes a wrapper
        pending, paused = getattr(controller, "_pending_trials", None), getattr(controller, "_paused_trials", None)
        if pending is None or paused is None:
            return choose(self, tune_controller)
        if not pending and not paused:
            return None
        return first_in_order(tune_controller.get_trials(), pending or paused)

    FIFOScheduler.choose_trial_to_run = choose_from_the_sets
    setattr(FIFOScheduler, _PATCHED, True)
