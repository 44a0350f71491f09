"""Trial actors kept warm for the next trial, and none killed while it starts.

With ``reuse_actors=True`` Ray Tune 2.60 hands a finished trial's actor (its worker process,
imports done) to the next trial, but its controller keeps at most one such actor when no trial
is waiting for it, and a trial still waiting for its own new actor takes a cached one the moment
it appears, killing its own. At scale both waste worker starts (``bench/scale.py``,
docs/benchmarks.md "Scale"): the concurrency limiter creates a trial's successor only after the
trial ends, so of several trials ending in one step all actors but one are killed, and their
successors start new worker processes; each such start takes seconds of a node's CPU (Ray's
worker and Tune's trainable imported), and a trial that ends meanwhile hands its actor to the
waiting trial, whose new actor is then killed as soon as it has started. In the 200-trial
replay, 42 to 71 worker processes were started and killed that way against 29 to 31 that ran
trials.

``install`` patches two private parts of Tune (hence this module, its tests and the pinned Ray):

- the controller's actor cache keeps every finished trial's actor until the search has created
  its last trial (Tune then evicts them as before): the next trial starts on a warm actor;
- a trial whose own actor is already starting on a node keeps it, and leaves any cached actor to
  the next trial. A trial whose actor still waits for resources takes a cached one as before
  (cancelling a resource request wastes nothing).

A kept actor holds its trial's resources (one slot) until the next trial takes it, one
controller step later as long as trials remain to be created.
"""

from __future__ import annotations

from typing import Any

_PATCHED = "_lobsearch_actorcache"


def install() -> None:
    """Patch ``ray.tune.execution.tune_controller`` (idempotent)."""
    from ray.tune.execution import tune_controller
    from ray.tune.utils.object_cache import _ObjectCache

    controller = tune_controller.TuneController
    if getattr(controller, _PATCHED, False):
        return

    class KeptWarm(_ObjectCache):
        """Caches every object offered; evicts only what ``flush_cached_objects(force_all=True)``
        asks for (Tune forces that once the search has created its last trial)."""

        def cache_object(self, key: Any, obj: Any) -> bool:
            self._cached_objects[key].append(obj)
            self._num_cached_objects += 1
            return True

        def flush_cached_objects(self, force_all: bool = False) -> Any:
            if force_all:
                yield from super().flush_cached_objects(force_all=True)

    reuse = controller._maybe_reuse_cached_actor

    def reuse_unless_starting(self: Any, trial: Any) -> bool:
        own = self._trial_to_actor.get(trial)
        if (own is not None and trial not in self._resetting_trials
                and own in self._actor_manager._live_actors_to_ray_actors_resources):
            return False  # its own actor is being created on a node: killing it would waste that start
        return reuse(self, trial)

    tune_controller._ObjectCache = KeptWarm
    controller._maybe_reuse_cached_actor = reuse_unless_starting
    setattr(controller, _PATCHED, True)
