"""The function Ray Tune runs for one sampled configuration: a recipe, read top to bottom.

1. turn the sampled flat parameters into a validated run config;
2. take the prepared days of its data config (handed over through the object store);
3. cut windows and build the model (``lobsearch.recipe``, as ``python -m lobsearch.train`` does);
4. resume from the trial's last checkpoint when Tune restarts it;
5. train, reporting every epoch's metrics with a checkpoint, so the scheduler can stop it early.

Under ``objective.protocol: walk_forward`` step 3-5 run once per fold, in order, each fold on
its own prepared days (``data.folds``): every report carries the mean over the folds so far of
each fold's best epoch under the objective's name (the current fold's own value under
``fold_<metric>``), the epoch counted across folds, and at a fold's last epoch ``fold_end`` with
the scores of the folds done, which ``tuner.FoldGate`` reads to stop weak trials between folds.
A restarted trial continues in the fold its checkpoint was written in.

A loss that goes NaN or infinite fails the trial (Tune records it) and the search goes on; so
does a trial that runs out of GPU memory, with a message saying how much it held and what to
change. On a GPU each epoch's report carries the trial's peak device memory (``gpu_mem_mb``).
"""

from __future__ import annotations

import json
import shutil
import statistics
import tempfile
from pathlib import Path
from typing import Any

from lobsearch.config import RunConfig
from lobsearch.data.pipeline import Prepared
from lobsearch.space import SearchSpace


class TrialFailed(RuntimeError):
    """A trial ended without a usable model (NaN loss, too few windows); the search goes on."""


def run_trial(config: dict[str, Any], *, data: dict[str, Prepared], space: SearchSpace) -> None:
    """Train one configuration and report to Tune every epoch.

    ``config`` holds the sampled parameters (Optuna names); ``data`` maps a prep-config digest to
    its prepared days. Raises TrialFailed when training cannot produce a model or the GPU's
    memory runs out.
    """
    from lobsearch.gpu import is_out_of_memory, out_of_memory_message, release_memory
    from lobsearch.recipe import pick_device

    run = space.run_config(config)
    prepared = data[run.data.prep().digest()]  # every training day (the folds' days are beside it)
    _threads_from_resources(run.train.num_threads)
    device = pick_device(run.train.device)
    message = None
    try:
        if space.spec.objective.protocol == "walk_forward":
            _train_folds(run, data, device, space)
        else:
            _train(run, prepared, device)
    except RuntimeError as error:
        if not is_out_of_memory(error):
            raise
        message = out_of_memory_message(error, device, gpus_per_trial=_assigned("GPU"),
                                        batch_size=run.train.batch_size)
    finally:
        # after the except clause: the error's frames (and the tensors they hold) are gone, so
        # the reused trial process gives this trial's memory back to the GPU
        release_memory(device)
    if message is not None:
        raise TrialFailed(message)


def _assigned(resource: str) -> float | None:
    """This trial's share of ``resource`` from Ray, None outside a Ray worker."""
    import ray

    try:
        return ray.get_runtime_context().get_assigned_resources().get(resource)
    except Exception:  # not in a Ray worker
        return None


def _train(run: RunConfig, prepared: Prepared, device: Any) -> None:
    """Build the run, resume from Tune's checkpoint, fit and report every epoch; raises
    TrialFailed for a NaN loss."""
    import ray
    from ray import tune

    from lobsearch.gpu import memory_metrics
    from lobsearch.provenance import trial_provenance
    from lobsearch.recipe import build_run, fit_run

    built = build_run(run, prepared, device=device)
    work = Path(tempfile.mkdtemp(prefix="lobsearch-trial-"))
    resume = _restore(tune.get_checkpoint(), work / "restored")
    constants = {
        "n_params": built.n_params,
        "latency_ms": built.latency_ms,
        "model_family": run.model.name,
        "node_id": ray.get_runtime_context().get_node_id(),
        **trial_provenance(device=_device_label(device), data_hash=built.data_hash, seed=run.train.seed),
    }

    def report(epoch: Any) -> None:
        metrics = {**epoch.metrics(), **constants, "fit_status": epoch.status, **memory_metrics(device)}
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(work / "checkpoint"))

    try:
        result = fit_run(built, on_epoch=report, checkpoint_dir=work / "checkpoint", resume=resume)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if result.status == "nan_loss":
        raise TrialFailed(result.message)


FOLDS_FILE = "folds.json"
"""Beside a walk-forward trial's checkpoint: the scores of the folds done, the fold under way,
the epochs run before it, and the fold the checkpoint's model belongs to."""


def _train_folds(run: RunConfig, data: dict[str, Prepared], device: Any, space: SearchSpace) -> None:
    """Walk-forward: fit fold after fold (each from a fresh model of the same seed), reporting
    every epoch; raises TrialFailed for a NaN loss in any fold."""
    import ray
    from ray import tune

    from lobsearch.data.folds import fold_key
    from lobsearch.gpu import memory_metrics
    from lobsearch.provenance import trial_provenance
    from lobsearch.recipe import build_run, fit_run

    objective = space.spec.objective
    metric, sign = objective.metric, objective.sign
    work = Path(tempfile.mkdtemp(prefix="lobsearch-trial-"))
    restored = _restore(tune.get_checkpoint(), work / "restored")
    progress = _fold_progress(restored)
    try:
        for index in range(progress["fold"], objective.folds + 1):
            built = build_run(run, data[fold_key(run.data.prep().digest(), index)], device=device)
            constants = {
                "n_params": built.n_params, "latency_ms": built.latency_ms, "model_family": run.model.name,
                "node_id": ray.get_runtime_context().get_node_id(), "fold": index, "folds": objective.folds,
                **trial_provenance(device=_device_label(device), data_hash=built.data_hash, seed=run.train.seed),
            }
            resume = restored if progress.get("checkpoint_fold") == index else None
            fold_values: list[float] = list(progress.get("fold_values", [])) if resume else []
            done = list(progress["scores"])
            before = progress["epochs_before"]

            def report(epoch: Any, index: int = index, done: list[float] = done, before: int = before,
                       fold_values: list[float] = fold_values, constants: dict = constants) -> None:
                fold_values.append(float(epoch.val[metric.removeprefix("val_")]))
                scores = done + [max(fold_values, key=lambda v: sign * v)]
                last = epoch.status != "running"
                state = ({"scores": scores, "fold": index + 1, "epochs_before": before + epoch.epoch} if last else
                         {"scores": done, "fold": index, "epochs_before": before, "fold_values": fold_values})
                (work / "checkpoint").mkdir(exist_ok=True)
                (work / "checkpoint" / FOLDS_FILE).write_text(json.dumps({**state, "checkpoint_fold": index}))
                metrics = {**epoch.metrics(), **constants, **memory_metrics(device),
                           "epoch": before + epoch.epoch, "fold_epoch": epoch.epoch,
                           f"fold_{metric}": fold_values[-1], metric: statistics.fmean(scores),
                           "fold_end": last, "folds_done": len(state["scores"]), "fold_scores": state["scores"],
                           "fold_std": statistics.stdev(scores) if len(scores) > 1 else 0.0,
                           "fit_status": epoch.status if last and index == objective.folds else "running"}
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(work / "checkpoint"))

            result = fit_run(built, on_epoch=report, checkpoint_dir=work / "checkpoint", resume=resume)
            if result.status == "nan_loss":
                raise TrialFailed(f"walk-forward fold {index}: {result.message}")
            progress = json.loads((work / "checkpoint" / FOLDS_FILE).read_text())
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _fold_progress(restored: Path | None) -> dict[str, Any]:
    """Where a walk-forward trial stands: from its restored checkpoint, else fold 1."""
    if restored is not None and (restored / FOLDS_FILE).is_file():
        return json.loads((restored / FOLDS_FILE).read_text())
    return {"scores": [], "fold": 1, "epochs_before": 0, "checkpoint_fold": None}


def _device_label(device: Any) -> str:
    """``cpu``, or ``cuda:0 (NVIDIA H100 80GB HBM3)``."""
    import torch

    device = torch.device(device)
    if device.type != "cuda":
        return str(device)
    return f"{device} ({torch.cuda.get_device_name(device)})"


def _threads_from_resources(asked: int | None) -> None:
    """torch's CPU threads = the trial's CPUs (unless the config sets them), so trials sharing a
    node do not oversubscribe its cores."""
    import ray
    import torch

    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
    threads = asked or (max(1, int(cpus)) if cpus else None)
    if threads:
        torch.set_num_threads(threads)


def _restore(checkpoint: Any, into: Path) -> Path | None:
    """Copy Tune's checkpoint (possibly remote) to a local folder; None on a first start."""
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        shutil.copytree(folder, into)
    return into
