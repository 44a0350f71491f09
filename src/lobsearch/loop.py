"""Plain PyTorch training: one explicit loop, read top to bottom.

``fit`` trains a model on the windows of the training split and selects the epoch with the best
validation macro-F1. Each epoch: draw a seeded random order of window indices, gather each batch
on the training device (``WindowSet.batch``), take one optimizer step per batch
(``steps.make_train_step``), sum the loss on the device (one host sync per epoch), evaluate on
validation (``inference.evaluate``), keep the best weights, write a checkpoint
(``checkpoints``), report. The loop ends when the epochs run out ("completed"), validation
macro-F1 has not improved for ``patience`` epochs ("early_stopped"), ``on_epoch`` returns True
("stopped"), or the training loss is NaN or infinite ("nan_loss": a status, not an exception, so
a search goes on).

The loop takes plain values (``FitSettings``); how a run config becomes them is
``lobsearch.recipe``'s business, and how the device is used is the ``Backend``'s.
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lobsearch.backend import Backend, place_model
from lobsearch.checkpoints import load_checkpoint, rng_states, save_checkpoint, set_rng_states
from lobsearch.data.windows import WindowSet
from lobsearch.errors import DataError
from lobsearch.inference import evaluate
from lobsearch.steps import (
    StepSettings,
    TrainStep,
    class_weights,
    epoch_batches,
    epoch_steps,
    make_train_step,
    train_batches,
)

STATUSES = ("completed", "early_stopped", "nan_loss", "stopped")


@dataclass(frozen=True)
class FitSettings:
    """What ``fit`` needs to know of a run, as plain values.

    epochs: at most this many; batch_size: windows per optimizer step; steps_per_epoch: cap on
    the steps of an epoch (None: every full batch); patience: epochs without a better
    validation macro-F1 before stopping (None: never); seed: seeds python, numpy, torch and the
    batch order; class_weights: inverse-frequency weights of the training labels in the loss;
    eval_batch_size and max_eval_windows: validation batches and the cap on validation windows
    (evenly spaced); step: the optimizer step.
    """

    epochs: int = 10
    batch_size: int = 256
    steps_per_epoch: int | None = None
    patience: int | None = 5
    seed: int = 0
    class_weights: bool = True
    eval_batch_size: int = 2048
    max_eval_windows: int | None = None
    step: StepSettings = StepSettings()

def subsample(windows: WindowSet, limit: int | None) -> WindowSet:
    """At most ``limit`` windows, evenly spaced in time (all of them when ``limit`` is None)."""
    if limit is None or len(windows) <= limit:
        return windows
    keep = torch.linspace(0, len(windows) - 1, limit, device=windows.ends.device).round().long()
    return dataclasses.replace(windows, ends=windows.ends[keep], y=windows.y[keep])


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class EpochResult:
    """What ``on_epoch`` receives after each epoch.

    epoch: 1-based; train_loss: mean training loss; val: validation metrics (macro_f1, accuracy,
    mcc, ..., loss); samples_per_s: training windows per second (training part of the epoch);
    lr: learning rate after the epoch's last step; seconds: wall time of train + evaluation;
    status: "running", or how the run ends after this epoch ("completed", "early_stopped");
    train_samples: training windows of the epoch.
    """

    epoch: int
    train_loss: float
    val: dict[str, Any]
    samples_per_s: float
    lr: float
    seconds: float
    status: str = "running"
    train_samples: int = 0

    def metrics(self) -> dict[str, float]:
        """Flat scalars for a tracker: epoch, train_loss, lr, samples_per_s, train_samples,
        seconds, val_<name>."""
        flat = {"epoch": self.epoch, "train_loss": self.train_loss, "lr": self.lr,
                "samples_per_s": self.samples_per_s, "train_samples": self.train_samples,
                "seconds": self.seconds}
        for key, value in self.val.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                flat[f"val_{key}"] = value
        return flat


@dataclass
class FitResult:
    """The outcome of ``fit``.

    status: one of STATUSES; best_epoch: 1-based, 0 when no epoch finished; best_val: validation
    metrics of the best epoch; history: ``dataclasses.asdict`` of every EpochResult; best_state:
    the best epoch's ``state_dict`` on the CPU (None when no epoch finished); samples_per_s:
    training windows per second over the whole run; message: why it ended early, if it did.
    """

    status: str
    best_epoch: int
    best_val: dict[str, Any]
    history: list[dict[str, Any]]
    best_state: dict[str, torch.Tensor] | None
    samples_per_s: float
    message: str = ""
    backend: Backend | None = None


@dataclass
class _Progress:
    """Everything besides model, optimizer and scheduler that a checkpoint must restore."""

    generator: torch.Generator
    epoch: int = 0
    best_metric: float = -math.inf
    best_epoch: int = 0
    best_val: dict[str, Any] = field(default_factory=dict)
    best_state: dict[str, torch.Tensor] | None = None
    bad_epochs: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    status: str | None = None
    message: str = ""
    train_samples: int = 0
    train_seconds: float = 0.0


# --------------------------------------------------------------------------- the loop


def fit(
    model: nn.Module,
    train: WindowSet,
    val: WindowSet,
    cfg: FitSettings,
    *,
    device: str | torch.device,
    on_epoch: Callable[[EpochResult], bool | None] | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: str | Path | None = None,
    data_hash: str = "",
    backend: Backend | None = None,
    val_extra: Callable[[np.ndarray, np.ndarray], dict[str, float]] | None = None,
) -> FitResult:
    """Train ``model`` on ``train``, select the epoch with the best validation macro-F1.

    ``on_epoch`` runs after each epoch's checkpoint is written; returning True stops the run
    (status "stopped"); an exception it raises propagates. ``checkpoint_dir`` receives
    ``checkpoint.pt`` each epoch (atomic replace); ``resume`` (that folder or file) continues a
    run to the same result as an uninterrupted one. ``data_hash`` identifies the data (config and
    normalization statistics); resuming with another one raises DataError naming both.
    ``backend`` defaults to plain fp32 on ``device`` (``backend.device_setup`` decides more).
    ``val_extra(ends, y_pred)`` adds metrics of each epoch's validation predictions (M,) at the
    windows' global end rows (M,) to its ``val`` (e.g. ``net_bps_per_day``).
    Raises DataError when ``train`` or ``val`` has no windows. Seeds python, numpy and torch with ``cfg.seed``.
    """
    _require_windows(train, val)
    device = torch.device(device)
    steps = epoch_steps(len(train), cfg.batch_size, cfg.steps_per_epoch)
    backend = backend or Backend(device=device)
    seed_everything(cfg.seed)
    model = place_model(model, backend)
    train, val = train.to(device), subsample(val, cfg.max_eval_windows).to(device)
    weight = class_weights(train.y).to(device) if cfg.class_weights else None
    step = make_train_step(model, cfg.step, backend, weight, steps_per_epoch=steps, epochs=cfg.epochs)
    progress = _Progress(generator=torch.Generator().manual_seed(cfg.seed))
    if resume is not None:
        _restore(load_checkpoint(resume, data_hash), model, step, progress)
    while progress.status is None and progress.epoch < cfg.epochs:
        result = _run_epoch(model, step, train, val, cfg, steps, progress, val_extra)
        if result is None:
            break
        ending = "completed" if progress.epoch >= cfg.epochs else "running"
        result = dataclasses.replace(result, status=progress.status or ending)
        if checkpoint_dir is not None:
            save_checkpoint(checkpoint_dir, _checkpoint(model, step, progress, data_hash))
        if on_epoch is not None and on_epoch(result) and progress.status is None:
            progress.status, progress.message = "stopped", f"stopped by on_epoch after epoch {result.epoch}"
    return _result(progress, backend)


def _run_epoch(
    model: nn.Module, step: TrainStep, train: WindowSet, val: WindowSet, cfg: FitSettings,
    steps: int, progress: _Progress, val_extra: Callable[[np.ndarray, np.ndarray], dict[str, float]] | None = None,
) -> EpochResult | None:
    """Train one epoch, evaluate, update best and patience; None when the loss went NaN/inf."""
    epoch = progress.epoch + 1
    started = time.perf_counter()
    model.train()
    batches = epoch_batches(len(train), cfg.batch_size, steps, progress.generator, train.x.device)
    n_samples = sum(len(idx) for idx in batches)
    train_loss = float(train_batches(step, train, batches)) / n_samples  # the epoch's one sync
    train_seconds = time.perf_counter() - started
    lr = float(step.scheduler.get_last_lr()[0])
    if not math.isfinite(train_loss):
        progress.status = "nan_loss"
        progress.message = (
            f"training loss became {train_loss} in epoch {epoch} (lr {lr:.3g}); stopped; "
            f"the best epoch so far ({progress.best_epoch}) is kept"
        )
        return None
    val_metrics, _, y_pred, _ = evaluate(
        model, val, device=train.x.device, batch_size=cfg.eval_batch_size,
        backend=step.backend, loss_fn=step.loss_fn,
    )
    if val_extra is not None:
        val_metrics |= val_extra(val.ends.cpu().numpy(), y_pred)
    result = EpochResult(epoch, train_loss, val_metrics, n_samples / train_seconds, lr,
                         time.perf_counter() - started, train_samples=n_samples)
    _record(progress, result, model, cfg, n_samples, train_seconds)
    return result


def _record(
    progress: _Progress, result: EpochResult, model: nn.Module, cfg: FitSettings,
    n_samples: int, train_seconds: float,
) -> None:
    """Append the epoch to the history; keep the best weights; count epochs without progress."""
    progress.epoch = result.epoch
    progress.history.append(dataclasses.asdict(result))
    progress.train_samples += n_samples
    progress.train_seconds += train_seconds
    score = result.val["macro_f1"]
    if score > progress.best_metric:
        progress.best_metric, progress.best_epoch, progress.best_val = score, result.epoch, result.val
        progress.best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        progress.bad_epochs = 0
        return
    progress.bad_epochs += 1
    if cfg.patience is not None and progress.bad_epochs >= cfg.patience:
        progress.status = "early_stopped"
        progress.message = (
            f"validation macro-F1 did not improve for {progress.bad_epochs} epochs "
            f"(patience {cfg.patience}); best {progress.best_metric:.4f} at epoch {progress.best_epoch}"
        )


def _result(progress: _Progress, backend: Backend) -> FitResult:
    rate = progress.train_samples / progress.train_seconds if progress.train_seconds else 0.0
    return FitResult(
        status=progress.status or "completed",
        best_epoch=progress.best_epoch,
        best_val=progress.best_val,
        history=progress.history,
        best_state=progress.best_state,
        samples_per_s=rate,
        message=progress.message,
        backend=backend,
    )


def _require_windows(train: WindowSet, val: WindowSet) -> None:
    for name, windows in (("train", train), ("val", val)):
        if len(windows) == 0:
            raise DataError(
                f"fit: the {name} split has no windows (every window failed the gates or has no "
                "label); check the export, data.gates and data.window"
            )


def seed_everything(seed: int) -> None:
    """Seed python's ``random``, numpy's global generator and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _checkpoint(model: nn.Module, step: TrainStep, progress: _Progress, data_hash: str) -> dict[str, Any]:
    fields = {f.name: getattr(progress, f.name) for f in dataclasses.fields(progress)}
    fields.pop("generator")
    return {
        "data_hash": data_hash,
        "model": model.state_dict(),
        "optimizer": step.optimizer.state_dict(),
        "scheduler": step.scheduler.state_dict(),
        "progress": fields,
        "rng": rng_states(progress.generator),
    }


def _restore(payload: dict[str, Any], model: nn.Module, step: TrainStep, progress: _Progress) -> None:
    model.load_state_dict(payload["model"])
    step.optimizer.load_state_dict(payload["optimizer"])
    for group in step.optimizer.param_groups:  # a graphed run saved its LR as a device tensor
        if torch.is_tensor(group["lr"]):
            group["lr"] = float(group["lr"])
        if group.get("capturable"):
            group["capturable"] = False  # set again at capture; eager steps are faster without
    step.scheduler.load_state_dict(payload["scheduler"])
    for name, value in payload["progress"].items():
        setattr(progress, name, value)
    set_rng_states(payload["rng"], progress.generator)
