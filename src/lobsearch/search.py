"""The search driver: Ray at the edge of lobsearch.

``run_search`` resolves what the search is (the export, its name and storage, the GPUs per
trial) into a frozen ``Plan``, starts (or joins) Ray, prepares each data config once with Ray
Data, runs a Tune ``Tuner`` (``lobsearch.tuner``) over ``trial.run_trial``, and finishes: the
results files (``lobsearch.results``), the best model's test metrics, the W&B best run. A
search whose storage already holds an experiment of the same name is resumed: finished trials
are kept, unfinished ones continue from their checkpoints, and the searcher's state is restored.
"""

from __future__ import annotations

import os
import shlex
import time
from collections.abc import Callable
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import Any

from lobsearch import runfolder
from lobsearch.console import elapsed, fmt
from lobsearch.errors import DataError
from lobsearch.plan import Plan
from lobsearch.space import SearchSpace


class Outcome(str, Enum):
    """How a search ended: every trial it ran finished (some may have failed), it was
    interrupted (Ctrl-C; finished trials kept), or no trial produced a result at all."""

    FINISHED = "finished"
    INTERRUPTED = "interrupted"
    ALL_FAILED = "all_failed"


def run_search(
    space: SearchSpace,
    *,
    export: Path | None,
    name: str | None = None,
    storage: str | None = None,
    resume: bool = False,
    address: str | None = None,
    quiet: bool = False,
    replay: Any = None,
) -> Outcome:
    """Run (or resume) the search of ``space`` on ``export`` (None: the built-in demo export).

    With ``replay`` (a ``lobsearch.replay.Replay``; a resumed replay takes the one it recorded)
    trials replay recorded learning curves instead of training, and no export is read.

    ``name`` defaults to ``<space name>-<timestamp>``, ``storage`` to ``$LOBSEARCH_STORAGE`` or
    ./runs, ``address`` to ``$RAY_ADDRESS`` (else a local Ray). A name whose run folder holds a
    search record resumes that search with the space and export it recorded (``runfolder``).
    Raises DataError for an export that breaks the contract, a ``resume`` with nothing to
    continue, another export than the one recorded, a folder in use or not lobsearch's, and
    trial resources this Ray can never provide; all before any trial starts.
    """
    from lobsearch.data.days import discover_export, validate_export

    from lobsearch import interrupts

    interrupts.install()
    started = time.monotonic()
    say = _printer(started, quiet)
    address = cluster_address(address)
    if resume and not name:
        raise DataError("--resume needs --name NAME: the search to continue (see the run folder under --storage)")
    name = name or default_name(space)
    storage = _absolute(storage or default_storage())
    run_dir = _run_dir(storage, name)
    with runfolder.claimed(run_dir):
        recorded = runfolder.read_record(run_dir)
        if recorded is not None:
            space, export = _recorded(recorded, space, export, say)
            replay = _recorded_replay(recorded, space, replay)
        elif resume:
            raise DataError(f"--resume: no search named {name!r} under {storage} (nothing to continue)")
        if replay is not None:
            return _run_replay(space, replay, name=name, storage=storage, run_dir=run_dir, recorded=recorded,
                               address=address, started=started, say=say, quiet=quiet)
        if export is None:
            from lobsearch.synth import demo_export

            export = demo_export()
            say(f"no --data given: using the built-in synthetic demo export at {export}")
        found = discover_export(export)
        report = validate_export(found, deep=False)  # headers now; every row is checked as it is prepared
        _check_export_fits(space, report)
        _say_start(space, name, say)
        with _ray_session(address) as joined:
            interrupts.check()  # a Ctrl-C while Ray started may have been dropped (``interrupts``)
            prepared = _prepare(space, found, say)
            interrupts.check()
            for data in prepared.values():  # the prepared days know which price columns stay raw
                _check_trading(space, data.n_features, data.quotes_note)
            plan = Plan(
                space=space, export=Path(export).resolve(), name=name, storage=storage,
                run_dir=run_dir, resume=recorded is not None, address=joined,
                metric=space.spec.objective.metric, mode=space.spec.objective.direction,
                sign=space.spec.objective.sign, max_epochs=space.max_trial_epochs,
                gpus_per_trial=_gpus_per_trial(space, prepared, autoscaling=bool(joined), say=say),
                started=started, started_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                say=say, quiet=quiet,
            )
            _check_resources(plan)
            if recorded is None:
                runfolder.write_record(run_dir, name=name, space_source=space.source, space_name=space.name,
                                       space=space.spec.model_dump(mode="json"), export=plan.export,
                                       storage=storage)
            grid, interrupted = _fit(plan, prepared)
            return _finish(plan, grid, prepared, found, interrupted)


def _recorded(record: dict[str, Any], given: SearchSpace, export: Path | None,
              say: Callable[[str], None]) -> tuple[SearchSpace, Path]:
    """The space and export a resumed search recorded; DataError for another ``export``."""
    from lobsearch.schema import validate
    from lobsearch.space import SpaceFile

    recorded_export = Path(record["export"])
    if export is not None and Path(export).resolve() != recorded_export.resolve():
        raise DataError(
            f"--data {export}: this search was started on {recorded_export} (recorded in "
            f"{runfolder.RECORD}); resume without --data, or start a new search with another --name"
        )
    where = f"{record.get('space_source')} (recorded in {runfolder.RECORD})"
    space = SearchSpace(name=record["space_name"], source=record["space_source"],
                        spec=validate(SpaceFile, record["space"], where))
    if given.spec != space.spec:
        say("resuming with the space and options recorded when this search started; "
            "the space file and options given now differ and are not used")
    return space, recorded_export


def _recorded_replay(record: dict[str, Any], space: SearchSpace, given: Any) -> Any:
    """The replay a resumed search recorded (None for a search that trained); DataError when
    ``given`` asks another replay than the one recorded, or a replay of a search that trained."""
    from lobsearch.replay import from_record, searched_names

    if record.get("replay") is None:
        if given is not None:
            raise DataError(f"--replay {given.source}: search {record['name']!r} trained its trials (recorded in "
                            f"{runfolder.RECORD}); start a replay with another --name")
        return None
    replay = from_record(record["replay"], metric=space.spec.objective.metric, searched=searched_names(space))
    if given is not None and given.record() != replay.record():
        raise DataError(f"--replay {given.source}: search {record['name']!r} replays {replay.describe()} (recorded "
                        f"in {runfolder.RECORD}); resume without --replay, or start a new search with another --name")
    return replay


def _run_replay(space: SearchSpace, replay: Any, *, name: str, storage: str, run_dir: Path,
                recorded: dict[str, Any] | None, address: str | None, started: float,
                say: Callable[[str], None], quiet: bool) -> Outcome:
    """``run_search`` for a replay: no export to check and no data to prepare; trials hold
    ``search.gpus_per_trial`` GPUs (``auto``: none, a replayed trial uses no device)."""
    _say_start(space, name, say)
    say(replay.describe())
    gpus = space.spec.search.gpus_per_trial
    with _ray_session(address) as joined:
        plan = Plan(
            space=space, export=replay.source, name=name, storage=storage, run_dir=run_dir,
            resume=recorded is not None, address=joined, metric=space.spec.objective.metric,
            mode=space.spec.objective.direction, sign=space.spec.objective.sign, max_epochs=space.max_trial_epochs,
            gpus_per_trial=0.0 if gpus == "auto" else float(gpus), started=started,
            started_at=datetime.now(timezone.utc).isoformat(timespec="seconds"), say=say, quiet=quiet,
            replay=replay,
        )
        _check_resources(plan)
        if recorded is None:
            runfolder.write_record(run_dir, name=name, space_source=space.source, space_name=space.name,
                                   space=space.spec.model_dump(mode="json"), export=replay.source,
                                   storage=storage, replay=replay.record())
        grid, interrupted = _fit(plan, {})
        return _finish(plan, grid, {}, replay, interrupted)


def _check_export_fits(space: SearchSpace, report: Any) -> None:
    """What a trial would find out too late, checked before Ray starts: the export has train and
    val days, and every feature set the space can sample exists in its columns (ConfigError
    naming the preset and the export's width)."""
    from lobsearch.config import DataConfig
    from lobsearch.data.features import feature_columns

    for split in ("train", "val"):
        if not report.days.get(split):
            raise DataError(f"{report.root}: the {split!r} split has no days; a search needs train and val days")
    searched = space.spec.params.get("data.features")
    fixed = space.spec.fixed.get("data", {}).get("features", DataConfig().features)
    for choice in searched.choices if searched is not None else (fixed,):
        feature_columns(choice, report.n_features)
    _check_trading(space, report.n_features)
    _folds(space, report.days["train"])


def _folds(space: SearchSpace, train_dates: Any) -> list[Any]:
    """The walk-forward folds of the training days ([] under holdout); ConfigError naming
    objective.folds and embargo_days when a fold would have no day to train or validate on."""
    from lobsearch.data.folds import walk_forward

    objective = space.spec.objective
    if objective.protocol != "walk_forward":
        return []
    return walk_forward(sorted(train_dates), folds=objective.folds, embargo_days=objective.embargo_days,
                        source=space.source)


def _check_trading(space: SearchSpace, n_features: int, quotes_note: str | None = None) -> None:
    """ConfigError when ``eval.trading: on``, or an objective that trades, asks for trading
    metrics the data cannot give (or that ``eval.trading: off`` turns off)."""
    from lobsearch.config import EvalConfig, trading_problems
    from lobsearch.contract import TRADING_OBJECTIVES
    from lobsearch.errors import ConfigError

    evaluation = EvalConfig.model_validate(space.spec.fixed.get("eval", {}))
    metric = space.spec.objective.metric
    if metric in TRADING_OBJECTIVES and evaluation.trading == "off":
        raise ConfigError(space.source, [f"objective.metric: {metric} trades on the validation days, but "
                                         "eval.trading is off; set eval.trading to auto or on, or optimize another metric"])
    if metric in TRADING_OBJECTIVES:
        evaluation = evaluation.model_copy(update={"trading": "on"})
    problems = trading_problems(evaluation, n_features, quotes_note)
    if problems:
        where = f" (objective.metric {metric} needs them)" if metric in TRADING_OBJECTIVES else ""
        raise ConfigError(space.source, [problem + where for problem in problems])


def _check_resources(plan: Plan) -> None:
    """DataError when no node of a local Ray can ever hold one trial (an autoscaling cluster may
    add such nodes, so a joined cluster is only told what is asked)."""
    import ray

    settings = plan.space.spec.search
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    fits = any(n.get("CPU", 0) >= settings.cpus_per_trial and n.get("GPU", 0) >= plan.gpus_per_trial
               for n in nodes)
    if fits:
        return
    asked = f"{settings.cpus_per_trial:g} CPU(s) and {plan.gpus_per_trial:g} GPU(s) per trial"
    largest = max(nodes, key=lambda n: (n.get("CPU", 0), n.get("GPU", 0)), default={})
    if plan.address:
        plan.say(f"waiting for nodes: no node has {asked} yet (the largest has {largest.get('CPU', 0):g} "
                 f"CPUs, {largest.get('GPU', 0):g} GPUs); the autoscaler must add one")
        return
    raise DataError(
        f"search.cpus_per_trial / gpus_per_trial: {asked} fit on no node of this machine's Ray "
        f"({largest.get('CPU', 0):g} CPUs, {largest.get('GPU', 0):g} GPUs); lower them "
        "(--cpus-per-trial, --gpus-per-trial) or join a cluster with --address"
    )


def default_name(space: SearchSpace) -> str:
    """``<space name>-<YYYYmmdd-HHMMSS>``."""
    return f"{space.name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def default_storage() -> str:
    """``$LOBSEARCH_STORAGE`` or ./runs."""
    return os.environ.get("LOBSEARCH_STORAGE") or "runs"


def _absolute(storage: str) -> str:
    """A local storage folder made absolute (Tune changes each trial's directory); URIs kept."""
    return storage if "://" in storage else str(Path(storage).resolve())


def _run_dir(storage: str, name: str) -> Path:
    """Where results files go: the experiment folder, or ./runs/NAME for remote storage."""
    return Path("runs").resolve() / name if "://" in storage else Path(storage) / name


def _printer(started: float, quiet: bool) -> Callable[[str], None]:
    def say(message: str) -> None:
        if not quiet:
            print(f"[{elapsed(started)}] {message}", flush=True)

    return say


def _say_start(space: SearchSpace, name: str, say: Callable[[str], None]) -> None:
    settings, objective = space.spec.search, space.spec.objective
    say(f"search {name!r}: {settings.num_samples} trials of {space.source}, "
        f"objective {objective.metric} ({objective.direction})")
    if settings.time_budget_s:
        say(f"time budget {settings.time_budget_s:.0f} s: the search stops then, even if fewer trials have run")


def _prepare(space: SearchSpace, export: Any, say: Callable[[str], None]) -> dict[str, Any]:
    """Each data config of the space prepared once (Ray Data where it pays, ``pipeline.
    choose_engine``): {prep digest: Prepared}, and
    under walk_forward each fold of each too ({``folds.fold_key(digest, k)``: Prepared})."""
    from lobsearch.data.folds import fold_export, fold_key
    from lobsearch.data.pipeline import prepare

    folds = _folds(space, [day.date for day in export.splits.get("train", ())])
    for fold in folds:
        say(fold.describe())
    prepared = {}
    for prep in space.prep_configs():
        views = [(prep.digest(), export, "")] + [(fold_key(prep.digest(), f.index), fold_export(export, f),
                                                   f" fold {f.index}") for f in folds]
        for key, view, label in views:
            started = time.monotonic()
            result = prepare(view, prep, engine="auto")
            how = "Ray Data" if result.engine == "ray" else "in this process"
            origin = "from cache" if result.from_cache else f"in {time.monotonic() - started:.1f} s, {how}"
            say(f"data config {prep.digest()}{label}: {result.summary()} ({origin})")
            prepared[key] = result
    return prepared


def _gpus_per_trial(space: SearchSpace, prepared: dict[str, Any], *, autoscaling: bool,
                    say: Callable[[str], None]) -> float:
    """``gpu.decide_gpus_per_trial`` on the cluster's alive nodes, probing on one of its GPUs."""
    import ray

    from lobsearch.gpu import decide_gpus_per_trial

    settings = space.spec.search
    return decide_gpus_per_trial(
        settings.gpus_per_trial, [n["Resources"] for n in ray.nodes() if n.get("Alive")],
        cpus_per_trial=settings.cpus_per_trial, autoscaling=autoscaling,
        probe=lambda: _probe(space, prepared), say=say,
    )


def _fit(plan: Plan, prepared: dict[str, Any]) -> tuple[Any, bool]:
    from lobsearch import journal
    from lobsearch.tuner import build_tuner, prune_finished

    tuner = build_tuner(plan, prepared)
    try:
        grid = tuner.fit()
    except KeyboardInterrupt:
        return None, True
    except Exception as error:
        written = _storage_error(error)
        if written is None:
            raise
        raise DataError(
            f"{plan.experiment_path}: the storage stopped accepting writes ({written.strerror or written}); "
            f"the trials finished before that are kept. Once it is writable, resume with:\n  "
            f"{resume_command(plan)}"
        ) from None
    journal.drop_checkpoints(plan.run_dir)  # Tune's final save, waited for, holds what they held
    freed = prune_finished(grid)
    if freed:
        plan.say(f"checkpoints: each finished trial keeps only its last (its best weights); {freed / 2**20:,.1f} MiB "
                 "of earlier ones deleted at the end (the others as the search went)")
    return grid, _was_interrupted(grid)


def _storage_error(error: BaseException) -> OSError | None:
    """The OSError behind a failed fit: Tune's own write of its experiment state, or a trial's
    result files (``lobsearch.trialfiles``) failing in a callback, which Tune re-raises as a
    TuneError whose context is the OSError. None for any other failure."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, OSError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def resume_command(plan: Plan) -> str:
    """The command that continues this search, quoted for a POSIX shell (the record supplies the
    space's options and the export, so it needs no --data)."""
    parts = ["python", "-m", "lobsearch.tune", plan.space.source, "--name", plan.name,
             "--storage", plan.storage, "--resume"]
    return " ".join(shlex.quote(part) for part in parts)


def _finish(plan: Plan, grid: Any, prepared: dict[str, Any], export: Any, interrupted: bool) -> Outcome:
    from lobsearch.provenance import code_versions
    from lobsearch.reeval import reevaluate
    from lobsearch.results import (adopt_winner, collect, evaluate_best, evaluate_winner, print_summary,
                                   upload_results, write_results)

    resume_hint = resume_command(plan)
    if grid is None:
        print(f"interrupted; finished trials are kept. Resume with:\n  {resume_hint}")
        return Outcome.INTERRUPTED
    tune_trials = {trial.path: (trial.status, trial.num_failures) for trial in _trial_states(grid)}
    summary = collect(grid, plan, export, prepared, tune_trials=tune_trials)
    # Ctrl-C between two trials leaves none pending: fewer trials than planned, no time budget
    interrupted = interrupted or summary.stopped_by == "interrupted"
    if interrupted:
        summary.stopped_by = "interrupted"
    summary.extra.update(export_fingerprint=export.fingerprint(), code=code_versions(),
                         search_cost=_search_cost(plan, summary.trials))
    if plan.replay is not None:
        summary.extra["replay"] = plan.replay.record()
    trained = plan.replay is None  # replayed curves have no model to re-evaluate or test
    found = None if interrupted or summary.best is None or not trained else reevaluate(plan, summary.trials, prepared)
    if found is not None:
        summary.extra["reeval"] = found.table()
        interrupted = found.interrupted
    if found is not None and found.winner is not None and not found.interrupted:
        adopt_winner(summary, found)
        plan.say(f"evaluating the winner once on the test split (each of its {len(found.winner_runs)} seeds)")
        evaluate_winner(summary, found, prepared, plan.run_dir)
    elif summary.best is not None and trained:
        plan.say("evaluating the best configuration once on the test split")
        evaluate_best(summary, prepared)
    if interrupted:
        summary.stopped_by = "interrupted"
    try:
        write_results(summary, plan.run_dir)
    except OSError as error:
        raise DataError(
            f"{plan.run_dir}: the results could not be written ({error.strerror or error}); the "
            f"{len(summary.trials)} trials are kept in {plan.experiment_path}. Once it is writable, "
            f"write them with:\n  {resume_hint}"
        ) from None
    _record_best(plan, summary)
    if plan.remote_storage:
        upload_results(plan.run_dir, plan.experiment_path)
    print_summary(summary, plan.run_dir, quiet=plan.quiet)
    if plan.replay is not None and not plan.quiet:
        print(f"  replay of {plan.replay.source}: curves replayed, no data prepared, no model trained, "
              "no test-split evaluation")
    if interrupted:
        print(f"interrupted; finished trials are kept. Resume with:\n  {resume_hint}")
        return Outcome.INTERRUPTED
    if summary.trials and all(t["status"] == "failed" for t in summary.trials):
        return Outcome.ALL_FAILED
    return Outcome.FINISHED


def _search_cost(plan: Plan, trials: list[dict[str, Any]]) -> dict[str, Any]:
    """What the search itself cost: trials, trial-epochs and the driver's seconds so far."""
    return {"trials": len(trials), "trial_epochs": sum(t["epochs"] for t in trials),
            "wall_s": round(time.monotonic() - plan.started, 1)}


def _record_best(plan: Plan, summary: Any) -> None:
    """The best configuration and its test metrics as one more W&B run of the search's group."""
    from lobsearch.tracking import record_best, settings_for_search, sync_command

    settings = settings_for_search(plan)
    if settings is None or summary.best is None:
        return
    checkpoint = Path(summary.best_checkpoint) if summary.best_checkpoint else None
    config = summary.best_run_config.model_dump(mode="json") if summary.best_run_config else {}
    record_best(settings, group=plan.name, best=summary.best, config=config,
                checkpoint=checkpoint if checkpoint and checkpoint.is_dir() else None)
    command = sync_command(plan.run_dir)
    if command:
        summary.extra["wandb_sync"] = command


def _trial_states(grid: Any) -> list[Any]:
    """Tune's record of every trial of the fit (status, failures): the trials ``tune.run`` handed
    its ResultGrid. A Result carries neither, and reading them again from the experiment state
    (``ExperimentAnalysis``) loads every trial's results once more: 2 s for 1,000 trials."""
    return list(grid._experiment_analysis.trials)


def _was_interrupted(grid: Any) -> bool:
    """True when the fit returned with trials still pending, running or paused: Ctrl-C stopped it
    (a time budget ends every started trial, and the searcher then starts no more)."""
    return grid.num_terminated + grid.num_errors < len(grid)


RAY_ENVIRONMENT = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "WANDB_SILENT": "true",
    "RAY_AUTH_MODE": "disabled",
    "RAY_AIR_NEW_OUTPUT": "0",
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
    "TUNE_ONLY_STORE_CHECKPOINT_SCORE_ATTRIBUTE": "1",
}
"""Set (unless already set) before Ray starts: no usage reporting, no auth prompt, Tune's own
console output off (lobsearch prints its status line), no checkpoint-sync warning, only the
result loggers lobsearch reads (``tuner._callbacks``: no TensorBoard files, 4 ms of the driver
per epoch in bench/scale.py), and no copy of each epoch's metrics beside each kept checkpoint in
the experiment state (every checkpoint is kept, ``lobsearch.snapshots``; the results read the
trials' own result files, the latest checkpoint keeps its metrics)."""


def cluster_address(address: str | None) -> str | None:
    """The Ray cluster to join: ``address``, else ``$RAY_ADDRESS``, else None (a local Ray).
    Raises DataError for a URL (``ray://``, a dashboard's ``http://``): the driver runs on the
    cluster and joins it by its GCS address; Ray Client would run Tune elsewhere than the
    driver's run folder and callbacks."""
    source = "--address"
    if not address:
        source, address = "$RAY_ADDRESS", os.environ.get("RAY_ADDRESS") or None
    if address is None or "://" not in address:
        return address
    scheme = address.split("://", 1)[0].lower()
    kind = {"ray": "a Ray Client address", "http": "a Ray dashboard's address (for `ray job submit`)",
            "https": "a Ray dashboard's address (for `ray job submit`)"}.get(scheme, f"a {scheme}:// URL")
    raise DataError(
        f"{source}: {address!r} is {kind}, not a cluster's GCS address; lobsearch's driver runs on the "
        "cluster and joins it as HOST:6379 (or 'auto' on a cluster node): submit the search with "
        "`ray job submit ... -- python -m lobsearch.tune ...` (README, \"Cluster\"), where Ray sets "
        "RAY_ADDRESS for it")


class _ray_session:
    """Join the cluster at ``address`` or start a local Ray sized to this machine; shut down
    after. Entering yields the address joined (None for a local Ray)."""

    def __init__(self, address: str | None):
        self.address = address
        self.started_here = False

    def __enter__(self) -> str | None:
        import ray

        from lobsearch.data.pipeline import start_ray

        for key, value in RAY_ENVIRONMENT.items():
            os.environ.setdefault(key, value)
        if ray.is_initialized():
            return self.address
        start_ray(self.address)
        self.started_here = True
        return self.address

    def __exit__(self, *exc: Any) -> None:
        import ray

        if self.started_here:
            ray.shutdown()


PROBE_TIMEOUT_S = 600.0
"""How long the search waits for the probe before it falls back to one trial per GPU."""


def _probe(space: SearchSpace, prepared: dict[str, Any]) -> Any:
    """Run the probe of ``PROBE_CONFIGS`` sampled configurations in a Ray task holding one GPU;
    a ``gpu.ProbeOutcome`` (with ``error`` set when it did not finish in time)."""
    import ray

    from lobsearch.gpu import PROBE_CONFIGS, ProbeOutcome

    runs = [run for _, run in sample_points(space, PROBE_CONFIGS)]
    task = _probe_remote().remote(runs, [prepared[run.data.prep().digest()] for run in runs])
    try:
        profiles, device_memory, failures = ray.get(task, timeout=PROBE_TIMEOUT_S)
    except Exception as error:  # a timeout, or the probe's worker died
        ray.cancel(task, force=True)
        first = str(error).splitlines()[0] if str(error) else ""
        return ProbeOutcome(error=f"{type(error).__name__}: {first}")
    return ProbeOutcome(tuple(profiles), device_memory, tuple(failures))


def _probe_remote() -> Any:
    """A Ray task holding one GPU that measures ``gpu.probe_step`` for each run config and
    returns (profiles, the device's memory in bytes, one line per configuration that failed)."""
    import ray

    @ray.remote(num_gpus=1, num_cpus=1, max_retries=0, max_calls=1)  # exit after: free the GPU
    def probe(runs: list[Any], prepared: list[Any]) -> tuple[list[Any], int, list[str]]:
        import torch

        from lobsearch.gpu import probe_step, release_memory

        profiles, failures = [], []
        for run, data in zip(runs, prepared):
            try:
                profiles.append(probe_step(run, data))
            except Exception as error:  # this configuration's trial would fail alike; measure the rest
                failures.append(f"{run.model.name}: {type(error).__name__}: {str(error).splitlines()[0]}")
            release_memory("cuda")
        return profiles, torch.cuda.mem_get_info()[1], failures

    return probe


def sample_points(space: SearchSpace, n: int) -> list[tuple[dict[str, Any], Any]]:
    """``n`` points drawn at random from ``space`` (seeded by ``search.seed``): each its flat
    parameters (Optuna names) and its run config."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=space.spec.search.seed))
    points = []
    for _ in range(n):
        trial = study.ask()
        flat = {**space.define_by_run(trial), **trial.params}
        points.append((flat, space.run_config(flat)))
        study.tell(trial, 0.0)
    return points


def dry_run(space: SearchSpace, *, export: Path | None = None, n: int = 5) -> list[Any]:
    """Sample ``n`` configurations and build each model on a dummy batch; no data, no training.

    The feature count is the export's when ``export`` is given, else the 98-column layout.
    Returns the run configs; raises ConfigError for a configuration whose model cannot be built.
    """
    import torch

    from lobsearch.contract import FEATURE_COUNT
    from lobsearch.data.features import n_selected
    from lobsearch.errors import ConfigError
    from lobsearch.models import create_model

    n_columns = FEATURE_COUNT
    if export is not None:
        from lobsearch.data.days import discover_export, validate_export

        n_columns = validate_export(discover_export(export), deep=False).n_features
    configs = []
    print(f"dry run of {space.source}: {n} sampled configurations, each model built on a dummy batch")
    for i, (flat, run) in enumerate(sample_points(space, n)):
        width = n_selected(run.data.features, n_columns, run.data.time_regime_onehot)
        try:
            model = create_model(run.model.name, n_features=width, window=run.data.window, **run.model.params)
            logits = model.eval()(torch.zeros(2, run.data.window, width))
        except ValueError as error:
            raise ConfigError(space.source, [f"sampled configuration {i} {flat}: {error}"]) from None
        params = sum(p.numel() for p in model.parameters())
        shown = ", ".join(f"{k}={fmt(v)}" for k, v in flat.items())
        print(f"  {i}: {run.model.name:<11} {params:>9,} params, logits {tuple(logits.shape)} | {shown}")
        configs.append(run)
    return configs
