"""When Tune saves the experiment state a resume starts from: after each trial checkpoint, within
5 % of the driver's time.

Ray Tune 2.60 saves the experiment state (every trial's status and latest checkpoint, the
searcher, the callbacks; O(trials) bytes) at most every 10 s, and with
``CheckpointConfig(num_to_keep=K)`` also after every K checkpoints of one trial. Both break at
scale (``bench/scale.py``, docs/benchmarks.md "Scale"):

- with K = 1 every trial checkpoint forces a save: 64 trials reporting each second ask for 64
  saves a second of a state that grows with every trial, so the driver's work is quadratic in
  the trial count;
- Tune deletes a trial's older checkpoint when it registers a newer one, before the save that
  stops referencing it: a driver killed in between resumes that trial from a checkpoint that no
  longer exists, and the trial fails every retry;
- with no forced save, trials that end in the 10 s before a driver is killed are run again
  after the resume, or lost from the results when they started in that window too.

lobsearch keeps every checkpoint (nothing is deleted before a save) and patches Tune's
experiment checkpoint manager, a private class of Ray 2.60 (hence this module, its tests, and
the pinned Ray): every trial checkpoint asks for a save, and an asked-for save waits until the
last save is ``BUDGET`` times its own duration old (Tune's rule for its periodic saves: 5 % of
the driver's time), however quick the save. A small search so saves within a second of a trial
checkpoint, a 1,000-trial one every minute or so, and the driver's share of saving stays bounded
at any size. What a driver killed between two saves would lose is in the journal
(``lobsearch.journal``: every finished trial, and every trial checkpoint since the save before
last), applied to the last save before the resume.

Keeping every checkpoint costs disk (a search of 1,000 trials x 10 epochs would keep 10,000), so
``prune_checkpoints`` deletes a finished trial's checkpoints but its last once a save has begun
after the trial finished (``last_save_started``): the saved state then records it finished, and
no resume goes back to them. The last one holds the trial's best weights (``loop.fit``).

Each save re-serializes the runtime record of every trial that reported since the last one, and
Tune writes it as indented JSON (Python's pure-Python encoder) with the running means of every
numeric metric cloudpickled deque by deque: 2.4 ms and 21 KB per trial (the 200-trial replay of
``bench/scale.py``). ``install`` also makes that record compact JSON with the deques as lists
(0.67 ms and 10 KB, the same content; ``compact_run_metadata``).
"""

from __future__ import annotations

import collections
import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

BUDGET = 19.0
"""Seconds between saves per second a save takes: 19 keeps saving to 5 % of the driver's time."""

_PATCHED = "_lobsearch_snapshots"

_last_save_started = -math.inf
_saves_begun = 0


def last_save_started() -> float:
    """``time.monotonic()`` at which this process's last experiment-state save began (-inf: none yet)."""
    return _last_save_started


def saves_begun() -> int:
    """How many forced experiment-state saves (those after a trial checkpoint) this process has
    made. Tune uploads a save to the experiment folder while the driver goes on, and a forced save
    first waits for the upload before it: once ``n`` have begun, the ``n - 1``-th is in the folder."""
    return _saves_begun


def prune_checkpoints(keep: str | Path) -> int:
    """Delete the ``checkpoint_*`` folders beside ``keep`` (a trial's last checkpoint) except it;
    returns the bytes freed. A path that is not a local folder (remote storage) is left alone."""
    keep = Path(keep)
    if not keep.is_dir():
        return 0
    freed = 0
    for old in keep.parent.glob("checkpoint_*"):
        if old != keep and old.is_dir():
            freed += sum(f.stat().st_size for f in old.rglob("*") if f.is_file())
            shutil.rmtree(old, ignore_errors=True)
    return freed


def install() -> None:
    """Patch ``ray.tune.execution.experiment_state._ExperimentCheckpointManager`` (idempotent).

    Applies to Tune's automatic period only; ``TUNE_GLOBAL_CHECKPOINT_S`` set to a number keeps
    Tune's fixed period and its own forced saves.
    """
    from ray.tune.execution.experiment_state import _ExperimentCheckpointManager as manager

    if getattr(manager, _PATCHED, False):
        return
    on_trial_checkpoint, sync_up = manager.on_trial_checkpoint, manager.sync_up_experiment_state

    def ask_for_a_save(self: Any, trial: Any) -> None:
        if not self.auto_checkpoint_enabled:
            return on_trial_checkpoint(self, trial)
        self._should_force_sync_up = True

    def save_within_budget(self: Any, save_fn: Any, force: bool = False, wait: bool = False) -> None:
        if not self.auto_checkpoint_enabled:
            return sync_up(self, save_fn, force=force, wait=wait)
        wait_s = getattr(self, "_lobsearch_wait_s", 0.0)
        if not force and time.monotonic() - self._last_save_time < wait_s:
            return  # too soon after the last save: the request stands until the budget allows it
        global _last_save_started, _saves_begun
        last, started, forced = self._last_save_time, time.monotonic(), force or self._should_force_sync_up
        sync_up(self, save_fn, force=force, wait=wait)
        if self._last_save_time != last:  # it saved (Tune's period had not expired otherwise)
            _last_save_started = started
            _saves_begun += forced  # a forced save first waits for the upload of the one before
            self._lobsearch_wait_s = BUDGET * (time.monotonic() - started)

    manager.on_trial_checkpoint = ask_for_a_save
    manager.sync_up_experiment_state = save_within_budget
    setattr(manager, _PATCHED, True)
    compact_run_metadata()


def compact_run_metadata() -> None:
    """Patch ``ray.tune.trainable.metadata._TrainingRunMetadata`` (idempotent): its JSON written
    unindented, the last-n deques of ``metric_n_steps`` as lists, and lists made deques of
    ``maxlen=n`` again on loading (an older state's cloudpickled deques load as before)."""
    from ray.tune.trainable.metadata import _TrainingRunMetadata as metadata
    from ray.tune.utils.serialization import TuneFunctionEncoder

    if getattr(metadata, _PATCHED, False):
        return
    from_json_state = metadata.from_json_state.__func__

    class Encoder(TuneFunctionEncoder):
        def default(self, value: Any) -> Any:
            return list(value) if isinstance(value, collections.deque) else super().default(value)

    def get_json_state(self: Any) -> str:
        if self._cached_json is None:
            data = {k: v for k, v in self.__dict__.items() if k != "_cached_json"}
            self._cached_json = json.dumps(data, cls=Encoder)
        return self._cached_json

    def load(cls: Any, json_state: str) -> Any:
        record = from_json_state(cls, json_state)
        record.metric_n_steps = {metric: {n: collections.deque(values, maxlen=int(n)) for n, values in steps.items()}
                                 for metric, steps in record.metric_n_steps.items()}
        return record

    metadata.get_json_state = get_json_state
    metadata.from_json_state = classmethod(load)
    setattr(metadata, _PATCHED, True)
