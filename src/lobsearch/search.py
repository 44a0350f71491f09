"""The search driver: Ray at the edge of lobsearch.

``Search.run`` starts (or joins) Ray, prepares each data config once with Ray Data, runs a Tune
``Tuner`` (OptunaSearch + ASHA) over ``trial.run_trial``, and writes the results. A search whose
storage already holds an experiment of the same name is resumed: finished trials are kept,
unfinished ones continue from their checkpoints, and the searcher's state is restored.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from datetime import datetime, timezone
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lobsearch.errors import DataError
from lobsearch.space import SearchSpace
from lobsearch.tune import EXIT_INTERRUPTED, default_name, default_storage, elapsed, fmt


@dataclass
class Search:
    space: SearchSpace
    export: Path | None
    name: str
    storage: str
    resume: bool = False
    address: str | None = None
    quiet: bool = False
    gpus_per_trial: float = 0.0
    """Resolved from the space's ``search.gpus_per_trial`` (``auto`` is measured) before the Tuner."""
    started: float = field(default_factory=time.monotonic)
    started_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    @classmethod
    def from_args(cls, space: SearchSpace, args: argparse.Namespace) -> Search:
        storage = args.storage or default_storage()
        if "://" not in storage:
            storage = str(Path(storage).resolve())
        if args.resume and not args.name:
            raise DataError("--resume needs --name NAME: the search to continue (see the run folder under --storage)")
        return cls(
            space=space,
            export=args.data.resolve() if args.data else None,
            name=args.name or default_name(space),
            storage=storage,
            resume=args.resume,
            address=args.address or os.environ.get("RAY_ADDRESS"),
            quiet=args.quiet,
        )

    @property
    def run_dir(self) -> Path:
        """Where results files go: the experiment folder, or ./runs/NAME for remote storage."""
        if "://" in self.storage:
            return Path("runs").resolve() / self.name
        return Path(self.storage) / self.name

    def say(self, message: str) -> None:
        if not self.quiet:
            print(f"[{elapsed(self.started)}] {message}", flush=True)

    def run(self) -> int:
        from lobsearch.data.days import discover_export, validate_export
        from lobsearch.synth import demo_export

        if self.export is None:
            self.export = demo_export()
            self.say(f"no --data given: using the built-in synthetic demo export at {self.export}")
        export = discover_export(self.export)
        validate_export(export, deep=False)  # headers now; every row is checked as it is prepared
        self.run_dir.mkdir(parents=True, exist_ok=True)
        settings = self.space.spec.search
        self.say(
            f"search {self.name!r}: {settings.num_samples} trials of {self.space.source}, "
            f"objective {self.space.spec.objective.metric} ({self.space.spec.objective.direction})"
        )
        if settings.time_budget_s:
            self.say(
                f"time budget {settings.time_budget_s:.0f} s: the search stops then, "
                "even if fewer trials have run"
            )
        with _ray_session(self.address):
            prepared = self._prepare(export)
            self.gpus_per_trial = self._gpus_per_trial(prepared)
            grid, interrupted = self._fit(prepared)
            return self._finish(grid, prepared, export, interrupted)

    def _prepare(self, export: Any) -> dict[str, Any]:
        from lobsearch.data.pipeline import prepare

        prepared = {}
        for prep in self.space.prep_configs():
            started = time.monotonic()
            result = prepare(export, prep, engine="ray")
            origin = "from cache" if result.from_cache else f"in {time.monotonic() - started:.1f} s"
            self.say(f"data config {prep.digest()}: {result.summary()} ({origin})")
            prepared[prep.digest()] = result
        return prepared

    def _gpus_per_trial(self, prepared: dict[str, Any]) -> float:
        """The space's GPUs per trial; ``auto``: 0 without GPUs, else the packing that a probe of
        a few sampled configurations on one GPU supports (``gpu.trials_per_gpu``)."""
        import ray

        from lobsearch.gpu import heaviest, trials_per_gpu

        settings = self.space.spec.search
        if settings.gpus_per_trial != "auto":
            return float(settings.gpus_per_trial)
        gpu_nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive") and n["Resources"].get("GPU")]
        if not gpu_nodes:
            hint = (" (no GPU node is up yet: if the autoscaler adds GPU nodes, give "
                    "--gpus-per-trial, or keep one GPU node up with min_workers)") if self.address else ""
            self.say(f"gpus_per_trial auto: no GPU in the cluster, trials run on CPUs{hint}")
            return 0.0
        runs = [run for _, run in sample_points(self.space, PROBE_CONFIGS)]
        self.say(f"gpus_per_trial auto: measuring {len(runs)} sampled configurations on one GPU")
        task = _probe_remote().remote(runs, [prepared[run.data.prep().digest()] for run in runs])
        try:
            profiles, device_memory, failures = ray.get(task, timeout=PROBE_TIMEOUT_S)
        except Exception as error:  # a timeout, or the probe's worker died
            ray.cancel(task, force=True)
            self.say(f"gpus_per_trial auto -> 1: the probe did not finish ({type(error).__name__}: "
                     f"{str(error).splitlines()[0] if str(error) else ''}); one trial per GPU")
            return 1.0
        for failure in failures:
            self.say(f"  probe skipped a configuration: {failure}")
        if not profiles:
            self.say("gpus_per_trial auto -> 1: no sampled configuration could be measured; one trial per GPU")
            return 1.0
        node = max(gpu_nodes, key=lambda r: r["GPU"])
        packing = trials_per_gpu(
            heaviest(profiles), device_memory_bytes=device_memory,
            cpus_per_gpu=node.get("CPU", 1) / node["GPU"], cpus_per_trial=settings.cpus_per_trial,
        )
        for profile in profiles:
            self.say(f"  {profile.label}: {profile.samples_per_s:,.0f} samples/s alone, GPU busy "
                     f"{profile.busy:.0%}, peak {profile.peak_memory_bytes / 2**20:,.0f} MiB")
        self.say(f"gpus_per_trial auto -> {packing.gpus_per_trial:g}: {packing.reason}")
        return packing.gpus_per_trial

    def _fit(self, prepared: dict[str, Any]) -> tuple[Any, bool]:
        from lobsearch.tuner import build_tuner

        tuner = build_tuner(self, prepared)
        try:
            grid = tuner.fit()
        except KeyboardInterrupt:
            return None, True
        return grid, _was_interrupted(grid, self)

    def _finish(self, grid: Any, prepared: dict[str, Any], export: Any, interrupted: bool) -> int:
        from lobsearch.results import collect, evaluate_best, print_summary, upload_results, write_results

        resume_hint = (
            f"python -m lobsearch.tune {self.space.source} --name {self.name} --storage {self.storage} --resume"
        )
        if grid is None:
            print(f"interrupted; finished trials are kept. Resume with:\n  {resume_hint}")
            return EXIT_INTERRUPTED
        summary = collect(grid, self, export, prepared)
        if interrupted:
            summary.stopped_by = "interrupted"
        if summary.best is not None:
            self.say("evaluating the best configuration once on the test split")
            evaluate_best(summary, prepared)
        write_results(summary, self.run_dir)
        self._record_best(summary)
        if "://" in self.storage:
            upload_results(self.run_dir, f"{self.storage.rstrip('/')}/{self.name}")
        print_summary(summary, self.run_dir, quiet=self.quiet)
        if interrupted:
            print(f"interrupted; finished trials are kept. Resume with:\n  {resume_hint}")
            return EXIT_INTERRUPTED
        return 0


    def _record_best(self, summary: Any) -> None:
        """The best configuration and its test metrics as one more W&B run of the search's group."""
        from lobsearch.tracking import record_best, settings_for_search, sync_command

        settings = settings_for_search(self)
        if settings is None or summary.best is None:
            return
        checkpoint = Path(summary.best_checkpoint) if summary.best_checkpoint else None
        config = summary.best_run_config.model_dump(mode="json") if summary.best_run_config else {}
        record_best(settings, group=self.name, best=summary.best, config=config,
                    checkpoint=checkpoint if checkpoint and checkpoint.is_dir() else None)
        command = sync_command(self.run_dir)
        if command:
            summary.extra["wandb_sync"] = command


def _was_interrupted(grid: Any, search: Search) -> bool:
    """True when the fit returned with trials still pending, running or paused: Ctrl-C stopped it
    (a time budget ends every started trial, and the searcher then starts no more)."""
    from ray.tune import ExperimentAnalysis

    try:
        trials = ExperimentAnalysis(f"{search.storage.rstrip('/')}/{search.name}").trials
    except Exception:  # no readable experiment state: nothing suggests an interruption
        return False
    return any(trial.status not in ("TERMINATED", "ERROR") for trial in trials)


class _ray_session:
    """Join the cluster at ``address`` or start a local Ray sized to this machine; shut down after."""

    def __init__(self, address: str | None):
        self.address = address
        self.started_here = False

    def __enter__(self) -> None:
        import ray

        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        os.environ.setdefault("WANDB_SILENT", "true")
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
        os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
        if ray.is_initialized():
            return
        if self.address:
            ray.init(address=self.address, log_to_driver=False)
        else:
            ray.init(address="local", include_dashboard=False, log_to_driver=False, configure_logging=False)
        self.started_here = True

    def __exit__(self, *exc: Any) -> None:
        import ray

        if self.started_here:
            ray.shutdown()


PROBE_CONFIGS = 3
"""Sampled configurations ``gpus_per_trial: auto`` measures; the heaviest decides."""

PROBE_TIMEOUT_S = 600.0
"""How long the search waits for the probe before it falls back to one trial per GPU."""


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


def dump_json(path: Path, payload: Any) -> None:
    """Write JSON atomically (tmp + rename): a crash never leaves a half-written file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str))
    os.replace(tmp, path)




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
