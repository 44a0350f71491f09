"""The scheduler's choice of a trial to start, without a scan of every trial when none waits.

Ray Tune 2.60's controller asks its scheduler for a trial to start at every step (every event it
handles: each epoch's result of each trial), and ``FIFOScheduler.choose_trial_to_run``, which
ASHA inherits, answers by scanning every trial of the search twice (for a PENDING one, then a
PAUSED one). A search of N trials thus does O(N) work per event and O(N^2) in all: at 1,000
trials, 32 at a time, the scan took 4.6 % of the driver's event loop (py-spy, ``bench/scale.py``;
docs/benchmarks.md "Scale"), and at 10,000 it would take most of it.

The controller already keeps its PENDING and PAUSED trials in sets (``_set_trial_status`` and
``add_trial`` are the only places a status changes, and Tune asserts the sets agree with the
statuses). ``install`` makes the scan return at once when both sets are empty, the usual case
(every slot busy); otherwise it scans as before, so the trial chosen is the same one. A private
part of Tune (hence this module, its tests and the pinned Ray).
"""

from __future__ import annotations

from typing import Any

_PATCHED = "_lobsearch_trialchoice"


def install() -> None:
    """Patch ``ray.tune.schedulers.FIFOScheduler.choose_trial_to_run`` (idempotent); ASHA and
    every scheduler that does not choose for itself inherit it."""
    from ray.tune.schedulers import FIFOScheduler

    if getattr(FIFOScheduler, _PATCHED, False):
        return
    choose = FIFOScheduler.choose_trial_to_run

    def choose_unless_none_waits(self: Any, tune_controller: Any) -> Any:
        controller = getattr(tune_controller, "_tune_controller", tune_controller)  # Tune passes a wrapper
        pending, paused = getattr(controller, "_pending_trials", None), getattr(controller, "_paused_trials", None)
        if pending is not None and paused is not None and not pending and not paused:
            return None
        return choose(self, tune_controller)

    FIFOScheduler.choose_trial_to_run = choose_unless_none_waits
    setattr(FIFOScheduler, _PATCHED, True)
