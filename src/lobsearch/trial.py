"""The function Ray Tune runs for one sampled configuration: a recipe, read top to bottom.

1. turn the sampled flat parameters into a validated run config;
2. take the prepared days of its data config (handed over through the object store);
3. cut windows and build the model (``lobsearch.recipe``, as ``python -m lobsearch.train`` does);
4. resume from the trial's last checkpoint when Tune restarts it;
5. train, reporting every epoch's metrics with a checkpoint, so the scheduler can stop it early.

A loss that goes NaN or infinite fails the trial (Tune records it) and the search goes on; so
does a trial that runs out of GPU memory, with a message saying how much it held and what to
change. On a GPU each epoch's report carries the trial's peak device memory (``gpu_mem_mb``).
"""

from __future__ import annotations

import shutil
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
    prepared = data[run.data.prep().digest()]
    _threads_from_resources(run.train.num_threads)
    device = pick_device(run.train.device)
    message = None
    try:
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
