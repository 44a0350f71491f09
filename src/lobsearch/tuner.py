"""Builds the Ray Tune ``Tuner`` for a search (or restores an interrupted one) and shows progress.

One owner per concern: Optuna samples (TPE, or random for comparison), ASHA stops trials early,
Tune retries failed trials and keeps checkpoints, W&B only observes (a driver-side callback).
"""

from __future__ import annotations

import json
import logging
import math
import statistics
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from lobsearch import actorcache, journal, restore, snapshots, tpe, trialchoice, trialfiles
from lobsearch.console import elapsed, fmt
from lobsearch.plan import Plan
from lobsearch.tracking import last_error_line
from lobsearch.trial import run_trial


AUTOSCALE_CONCURRENCY = 8
"""Trials allowed at once on a cluster joined by address when the space sets no limit."""


def trial_resources(cpus: float, gpus: float) -> dict[str, float]:
    """Ray resources of one trial; fractional GPUs let several trials share one device."""
    resources = {"cpu": cpus}
    if gpus:
        resources["gpu"] = gpus
    return resources


def default_concurrency(cluster: dict[str, float], cpus: float, gpus: float) -> int:
    """How many trials fit the cluster at once: bounded by CPUs, and by GPUs when trials use them.

    >>> default_concurrency({"CPU": 16, "GPU": 1}, cpus=1, gpus=0.125)
    8
    """
    fits = [math.floor(cluster.get("CPU", 1) / cpus)]
    if gpus:
        fits.append(math.floor(cluster.get("GPU", 0) / gpus + 1e-9))
    return max(1, min(fits))


_LOCKS = (type(threading.Lock()), type(threading.RLock()))


class _LockFree:
    """Pickles a sampler without its thread locks and makes them anew on unpickling: Tune pickles
    the searcher with the experiment, and Optuna 5.1's NSGA-II sampler holds a ``threading.Lock``
    (``cannot pickle '_thread.lock' object``)."""

    def __getstate__(self) -> dict:
        state = {k: v for k, v in self.__dict__.items() if not isinstance(v, _LOCKS)}
        state["_lobsearch_locks"] = [(k, isinstance(v, _LOCKS[1])) for k, v in self.__dict__.items()
                                     if isinstance(v, _LOCKS)]
        return state

    def __setstate__(self, state: dict) -> None:
        locks = state.pop("_lobsearch_locks", [])
        self.__dict__.update(state)
        for name, reentrant in locks:
            setattr(self, name, threading.RLock() if reentrant else threading.Lock())


class NSGAIISampler(_LockFree, optuna.samplers.NSGAIISampler):
    """Optuna's NSGA-II sampler, picklable (``_LockFree``)."""


def quiet_slow_sampling() -> None:
    """Ray warns at every suggestion whose define-by-run function takes over 1 s, meaning user
    code that trains in it; lobsearch's only asks the sampler, so a slow one is the sampler's time
    (TPE at 1,000 trials on a busy driver; ``bench/scale.py`` measures it), not a misuse."""
    warnings.filterwarnings("ignore", message="Define-by-run function passed in the `space` argument took",
                            category=UserWarning)


def _searcher(plan: Plan) -> Any:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = plan.space.spec
    objective = spec.objective
    seed = spec.search.seed
    if spec.search.searcher == "random":
        sampler = optuna.samplers.RandomSampler(seed=seed)
    elif objective.multi:
        sampler = NSGAIISampler(seed=seed)
    else:
        # constant_liar (Optuna 5's default, stated so it stays): trials still running count as bad
        # results, so the concurrent trials a wide cluster asks for at once are not suggested alike;
        # tpe.Sampler: Optuna's TPE, the same suggestions in half its time at 1,000 trials
        sampler = tpe.Sampler(seed=seed, n_startup_trials=min(5, max(2, spec.search.num_samples // 4)),
                                             constant_liar=True)
    metrics = [objective.metric] + [t.metric for t in objective.also]
    modes = [objective.direction] + [t.mode for t in objective.also]
    quiet_slow_sampling()
    searcher = OptunaSearch(
        space=plan.space.define_by_run,
        metric=metrics if objective.multi else metrics[0],
        mode=modes if objective.multi else modes[0],
        sampler=sampler,
        points_to_evaluate=[dict(p) for p in spec.search.enqueue] or None,
    )
    return searcher


def _scheduler(plan: Plan) -> Any:
    spec = plan.space.spec
    if spec.search.scheduler == "none":
        return FIFOScheduler()
    return ASHAScheduler(
        time_attr="training_iteration",
        max_t=max(plan.max_epochs, spec.search.grace_period),
        grace_period=spec.search.grace_period,
        reduction_factor=spec.search.reduction_factor,
    )


class FoldGate(tune.Stopper):
    """Fold-level early stopping for walk-forward trials, on top of ASHA's epochs: at the end of
    fold k < K a trial goes on only if its mean over folds 1..k is at least the median of the
    trials that ended fold k before it (itself included), once ``min_seen`` others have; so weak
    trials stop after their first fold and the protocol costs far less than K times holdout.

    The median (not ASHA's top 1/reduction_factor) because the folds are few and each score is one
    noisy block of days: a trial is dropped only for being worse than half its peers.
    """

    def __init__(self, metric: str, sign: int, folds: int, min_seen: int = 2):
        self.metric, self.sign, self.folds, self.min_seen = metric, sign, folds, min_seen
        self.seen: dict[int, list[float]] = {}

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        if not self._judged(result):
            return False
        peers = self.seen.setdefault(result["folds_done"], [])
        peers.append(self.sign * float(result[self.metric]))
        if len(peers) <= self.min_seen:
            return False
        return peers[-1] < statistics.median(peers)

    def _judged(self, result: dict[str, Any]) -> bool:
        """A fold's end with folds still to run: what the gate decides on."""
        return bool(result.get("fold_end")) and 0 < result.get("folds_done", 0) < self.folds

    def seen_before(self, experiment: Path) -> FoldGate:
        """The gate with every fold end the trials in ``experiment`` reported before a resume
        (their ``result.json`` rows): Tune restores the stopper pickled when the search began,
        with no peers, and would let weak trials after the resume run every fold until the
        peers were seen again. Returns self."""
        for path in sorted(experiment.glob("*/result.json")):
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line being written at the kill
                if self._judged(row) and isinstance(row.get(self.metric), (int, float)):
                    self.seen.setdefault(row["folds_done"], []).append(self.sign * float(row[self.metric]))
        return self

    def stop_all(self) -> bool:
        return False


def build_tuner(plan: Plan, prepared: dict[str, Any]) -> tune.Tuner:
    """A new Tuner for ``plan``, or the restored one when its storage already holds the experiment."""
    import ray

    snapshots.install()  # experiment state saved after each trial checkpoint, within 5 % of the driver
    actorcache.install()  # finished trials' actors kept for the next trials, none killed while starting
    restore.install()  # a resume reads no trial's results and looks the trainable up once
    trialchoice.install()  # no scan of every trial for one to start when none waits
    spec = plan.space.spec
    trainable = tune.with_resources(
        _trainable(plan, prepared), trial_resources(spec.search.cpus_per_trial, plan.gpus_per_trial),
    )
    path = plan.experiment_path
    ACTIVE_PLANS[plan.name] = plan
    if tune.Tuner.can_restore(path):
        plan.say(f"resuming {plan.name!r} from {path}: finished trials are kept")
        if plan.remote_storage:
            journal.drop_checkpoints(plan.run_dir)  # not applied: the resumed driver numbers its segments anew
        else:
            started = time.monotonic()
            kept = journal.reconcile(path, plan.run_dir)
            if kept:
                plan.say(f"{kept.line()} ({time.monotonic() - started:.1f} s)")
        # Tune's restore warns of each trial that had not reported yet (no result file): expected, noise here
        logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=True)
        restore.use_callbacks(tuner, _callbacks(plan))  # this driver's run folder, W&B settings and clock
        if spec.objective.protocol == "walk_forward" and not plan.remote_storage:
            restore.use_stopper(tuner, _fold_gate(plan).seen_before(Path(path)))
        return tuner
    journal.start(plan.run_dir)
    concurrency = spec.search.max_concurrent or default_concurrency(
        ray.cluster_resources(), spec.search.cpus_per_trial, plan.gpus_per_trial
    )
    if plan.address and not spec.search.max_concurrent:
        # an autoscaling cluster starts with few workers: let pending trials ask for more nodes
        concurrency = max(concurrency, min(spec.search.num_samples, AUTOSCALE_CONCURRENCY))
    plan.say(f"running up to {concurrency} trials at once")
    objective = spec.objective
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            metric=None if objective.multi else objective.metric,
            mode=None if objective.multi else objective.direction,
            num_samples=spec.search.num_samples,
            search_alg=ConcurrencyLimiter(_searcher(plan), max_concurrent=concurrency),
            scheduler=_scheduler(plan) if not objective.multi else FIFOScheduler(),
            time_budget_s=spec.search.time_budget_s,
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=plan.name,
            storage_path=plan.storage,
            verbose=0,
            callbacks=_callbacks(plan),
            failure_config=tune.FailureConfig(max_failures=spec.search.max_failures),
            stop=_fold_gate(plan) if objective.protocol == "walk_forward" else None,
            # every checkpoint kept: Tune deletes an old one before the experiment state stops
            # pointing at it, and a driver killed in between resumes that trial from nothing
            # (lobsearch.snapshots)
            checkpoint_config=tune.CheckpointConfig(num_to_keep=None),
        ),
    )


def _fold_gate(plan: Plan) -> FoldGate:
    objective = plan.space.spec.objective
    return FoldGate(objective.metric, objective.sign, objective.folds)


def _trainable(plan: Plan, prepared: dict[str, Any]) -> Any:
    """``trial.run_trial`` with the prepared data, or for a replay ``replay.replay_trial`` with
    the recorded curves (its trial processes never import torch)."""
    if plan.replay is None:
        return tune.with_parameters(run_trial, data=prepared, space=plan.space)
    from lobsearch.replay import replay_trial

    objective = plan.space.spec.objective
    return tune.with_parameters(replay_trial, replay=plan.replay, epochs=plan.space.max_epochs,
                                family=plan.space.families[0], metric=objective.metric, sign=objective.sign,
                                folds=objective.folds if objective.protocol == "walk_forward" else 0)


def _callbacks(plan: Plan) -> list[Any]:
    from lobsearch.tracking import WandbCallback

    # result.json and progress.csv (what the results and resume read), written into the experiment
    # folder as each result comes (lobsearch.trialfiles); Tune adds a TensorBoard logger too unless
    # told not to (search.RAY_ENVIRONMENT)
    callbacks: list[Any] = [Progress(plan), *trialfiles.callbacks(plan.remote_storage), CheckpointPruner(),
                            TrialJournal(plan.run_dir)]
    wandb = WandbCallback.for_search(plan)
    if wandb is not None:
        callbacks.append(wandb)
    return callbacks


ACTIVE_PLANS: dict[str, Plan] = {}
"""The plan of each search this driver runs, by name. Tune pickles the callbacks into the
experiment's ``tuner.pkl``: ``Progress`` holds the name and looks its plan up here, so the pickle
carries no plan (a resume then runs with new callbacks, ``restore.use_callbacks``)."""


class CheckpointPruner(tune.Callback):
    """A finished trial's checkpoints but its last deleted once an experiment-state save has
    recorded it finished (``snapshots.prune_checkpoints``); the end of the search prunes the rest
    (``prune_finished``). Holds paths only: Tune pickles its callbacks into every save."""

    def __init__(self) -> None:
        self.waiting: list[tuple[float, str]] = []  # (monotonic time it finished, its last checkpoint)
        self.freed = 0

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if trial.checkpoint is not None:
            self.waiting.append((time.monotonic(), trial.checkpoint.path))

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        saved = snapshots.last_save_started()
        if not self.waiting or self.waiting[0][0] >= saved:
            return
        ready = [path for finished, path in self.waiting if finished < saved]
        self.waiting = [(finished, path) for finished, path in self.waiting if finished >= saved]
        self.freed += sum(snapshots.prune_checkpoints(path) for path in ready)


class TrialJournal(tune.Callback):
    """Each trial Tune starts or ends, and each trial checkpoint it registers, appended to the
    journal in ``folder`` (``lobsearch.journal``), so a driver killed before the next
    experiment-state save resumes without running a finished trial or a checkpointed epoch again,
    and without losing a trial started since."""

    def __init__(self, folder: Any) -> None:
        self.folder = str(folder)
        self.segment = -1  # the checkpoint segment written to last (a resumed driver counts anew)
        self.stated: set[str] = set()  # trials whose static part that segment holds

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._record(trial)

    def on_trial_save(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._record(trial)

    def _record(self, trial: Any) -> None:
        segment = snapshots.saves_begun()
        if segment != self.segment:  # save `segment - 1` is in the experiment folder: it holds the older ones
            journal.drop_checkpoints(self.folder, before=segment - 1)
            self.segment, self.stated = segment, set()
        journal.record_checkpoint(self.folder, trial, segment, with_state=trial.trial_id not in self.stated)
        self.stated.add(trial.trial_id)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        journal.record(self.folder, trial)


def prune_finished(grid: Any) -> int:
    """Prune every finished trial of a search Tune has ended (its final state saved); bytes freed."""
    return sum(snapshots.prune_checkpoints(result.checkpoint.path) for result in grid
               if result.checkpoint is not None and result.error is None)


class Progress(tune.Callback):
    """One status line every few seconds: trials done / running / pruned / failed, best so far."""

    def __init__(self, plan: Plan, every_s: float = 10.0):
        ACTIVE_PLANS[plan.name] = plan
        self.name = plan.name
        self.every_s = every_s
        self.last = 0.0
        self.best: float | None = None
        self.best_trial = ""

    @property
    def plan(self) -> Plan:
        """The plan of the driver running the search now."""
        return ACTIVE_PLANS[self.name]

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        value = result.get(self.plan.metric)
        if result.get("folds_done", 0) != result.get("folds", 0):  # a walk-forward trial between folds
            return
        if isinstance(value, (int, float)) and math.isfinite(value) and self.plan.better(value, self.best):
            self.best, self.best_trial = value, trial.trial_id

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.plan.say(f"trial {trial.trial_id} failed: {last_error_line(trial)} (the search goes on)")

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        now = time.monotonic()
        if now - self.last < self.every_s:
            return
        self.last = now
        self.plan.say(self.line(trials))

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.plan.say(self.line(trials))

    def line(self, trials: list) -> str:
        counts = trial_counts(trials)
        metric = self.plan.metric
        best = f"best {metric} {fmt(self.best)} ({self.best_trial})" if self.best is not None else "no result yet"
        spec = self.plan.space.spec
        stoppers = [name for name, used in (("ASHA", spec.search.scheduler != "none"),
                                            ("the fold gate", spec.objective.protocol == "walk_forward")) if used]
        return (
            f"trials {counts['done']}/{spec.search.num_samples} done "
            f"({counts['pruned']} stopped early{' by ' + ' or '.join(stoppers) if stoppers else ''}), "
            f"{counts['running']} running, {counts['failed']} failed | {best} | elapsed {elapsed(self.plan.started)}"
        )


def trial_counts(trials: list) -> dict[str, int]:
    """Counts by state; a terminated trial that stopped before its last epoch on its own was pruned."""
    counts = {"done": 0, "pruned": 0, "running": 0, "failed": 0, "pending": 0}
    for trial in trials:
        if trial.status == "RUNNING":
            counts["running"] += 1
        elif trial.status == "ERROR":
            counts["failed"] += 1
        elif trial.status == "TERMINATED":
            counts["done"] += 1
            last = trial.last_result or {}
            if last.get("fit_status") == "running":
                counts["pruned"] += 1
        else:
            counts["pending"] += 1
    return counts
