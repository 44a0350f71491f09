"""Plain PyTorch training and evaluation: one explicit loop, read top to bottom.

``fit`` trains a model on the windows of the training split and selects the epoch with the best
validation macro-F1. Each epoch: draw a seeded random order of window indices, gather each batch
on the training device (``WindowSet.batch``), take one optimizer step per batch, sum the loss on
the device (one host sync per epoch), evaluate on validation, keep the best weights, write a
checkpoint, report. The loop ends when the epochs run out ("completed"), validation macro-F1 has
not improved for ``patience`` epochs ("early_stopped"), ``on_epoch`` returns True ("stopped"), or
the training loss is NaN or infinite ("nan_loss": a status, not an exception, so a search goes on).

Backend decisions (precision, channels-last, cuDNN autotune, TF32, ``torch.compile``, CUDA
graphs) are made per model by ``device_setup`` from the registry's ``Backend`` and the train
config. With CUDA graphs the optimizer step (forward, backward, clipping, AdamW) is captured once
after a few eager warm-up steps and replayed for every later batch (``GraphedStep``): one launch
per step instead of hundreds, which is what small LOB models are bound by on a GPU.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lobsearch.config import TrainConfig
from lobsearch.contract import N_CLASSES
from lobsearch.data.windows import WindowSet
from lobsearch.errors import DataError
from lobsearch.metrics import classification_metrics

log = logging.getLogger(__name__)

STATUSES = ("completed", "early_stopped", "nan_loss", "stopped")

COMPILE_MIN_STEPS = 20_000
"""``compile: auto`` compiles only a run of at least this many optimizer steps.

``torch.compile`` costs about 30 s (mode "default") to minutes (max-autotune) before the first
step and saved about 10 % of the step time of DeepLOB on an H100 (60,800 -> 67,300 samples/s at
batch 1024, about 60 steps/s). A 10 % saving repays 30 s after 300 s of training, about 18,000
steps at that rate; shorter trials (most of a search, which ASHA stops early) run eagerly.
"""

CHECKPOINT_NAME = "checkpoint.pt"
_CHECKPOINT_VERSION = 1
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# --------------------------------------------------------------------------- backend decisions


@dataclass(frozen=True)
class Backend:
    """How one run uses its device; made by ``device_setup``.

    autocast_dtype: ``torch.bfloat16`` to run forward and loss under autocast, None for fp32.
    compile_mode: the ``torch.compile`` mode, None to run eagerly. ``notes`` say why.
    """

    device: torch.device
    autocast_dtype: torch.dtype | None = None
    channels_last: bool = False
    cudnn_benchmark: bool = False
    tf32: bool = False
    compile_mode: str | None = None
    cuda_graphs: bool = False
    num_threads: int | None = None
    notes: tuple[str, ...] = ()

    def autocast(self, *, cache: bool = True) -> torch.autocast:
        """The autocast context of the forward pass (disabled for fp32). ``cache=False`` for a
        CUDA graph capture, which must not keep autocast's casted weights across replays."""
        dtype = self.autocast_dtype or torch.float32
        return torch.autocast(self.device.type, dtype=dtype, enabled=self.autocast_dtype is not None,
                              cache_enabled=cache and self.autocast_dtype is not None)

    def describe(self) -> str:
        """One line for logs: ``cuda bf16 channels_last cudnn_benchmark tf32 cuda_graphs compile=off``."""
        flags = ["bf16" if self.autocast_dtype else "fp32"]
        flags += [n for n in ("channels_last", "cudnn_benchmark", "tf32", "cuda_graphs") if getattr(self, n)]
        flags.append(f"compile={self.compile_mode or 'off'}")
        return f"{self.device} " + " ".join(flags)


def device_setup(
    spec_backend: Any, cfg: TrainConfig, device: str | torch.device, *, planned_steps: int | None = None
) -> Backend:
    """Decide and apply the backend settings of one run; returns the decisions.

    ``spec_backend`` is the model's ``ModelSpec.backend`` (channels_last, bf16, cudnn_benchmark,
    compile flags; None means all off). ``cfg.precision``: fp32 / bf16 force, auto = bf16 only on
    CUDA for models that gain from it. ``cfg.compile``: off / a mode forces, auto = "default" only
    on CUDA for models flagged for it and runs of >= COMPILE_MIN_STEPS ``planned_steps``.
    ``cfg.cuda_graphs``: on / off force (on is ignored off CUDA), auto = on for CUDA runs of
    models flagged for it that are not compiled (a compiled model's graphs are the compiler's
    business: its "reduce-overhead" mode). The CUDA switches are set only when ``device`` is CUDA, and set both ways (a previous trial in the
    same process must not leak into this one); ``cfg.num_threads`` sets torch's CPU threads.
    """
    device = torch.device(device)
    cuda = device.type == "cuda"
    bf16, bf16_note = _choose_bf16(cfg.precision, _flag(spec_backend, "bf16"), cuda)
    mode, mode_note = _choose_compile(cfg.compile, _flag(spec_backend, "compile"), cuda, planned_steps)
    graphs, graphs_note = _choose_graphs(cfg.cuda_graphs, _flag(spec_backend, "cuda_graphs"), cuda, mode)
    backend = Backend(
        device=device,
        autocast_dtype=torch.bfloat16 if bf16 else None,
        channels_last=cuda and _flag(spec_backend, "channels_last"),
        cudnn_benchmark=cuda and _flag(spec_backend, "cudnn_benchmark"),
        tf32=cuda,
        compile_mode=mode,
        cuda_graphs=graphs,
        num_threads=cfg.num_threads,
        notes=(bf16_note, mode_note, graphs_note),
    )
    apply_backend(backend)
    return backend


def _flag(spec_backend: Any, name: str) -> bool:
    if spec_backend is None:
        return False
    if isinstance(spec_backend, Mapping):
        return bool(spec_backend.get(name, False))
    return bool(getattr(spec_backend, name, False))


def _choose_bf16(precision: str, model_gains: bool, cuda: bool) -> tuple[bool, str]:
    if precision != "auto":
        return precision == "bf16", f"precision {precision} (set in train.precision)"
    if cuda and model_gains:
        return True, "precision auto -> bf16 (CUDA, the model gains from it)"
    why = "the model does not gain from bf16" if cuda else "not on CUDA"
    return False, f"precision auto -> fp32 ({why})"


def _choose_compile(
    choice: str, model_gains: bool, cuda: bool, planned_steps: int | None
) -> tuple[str | None, str]:
    if choice != "auto":
        mode = None if choice == "off" else choice
        return mode, f"compile {choice} (set in train.compile)"
    if not (cuda and model_gains):
        why = "not flagged for this model" if cuda else "not on CUDA"
        return None, f"compile auto -> off ({why})"
    if planned_steps is None or planned_steps < COMPILE_MIN_STEPS:
        return None, f"compile auto -> off ({planned_steps} steps < {COMPILE_MIN_STEPS})"
    return "default", f"compile auto -> default ({planned_steps} steps >= {COMPILE_MIN_STEPS})"


def _choose_graphs(choice: str, model_gains: bool, cuda: bool, compile_mode: str | None) -> tuple[bool, str]:
    if not cuda:
        return False, f"cuda_graphs {choice} -> off (not on CUDA)"
    if compile_mode is not None:
        # measured on an H100: capturing a compiled DeepLOB step left the CUDA generator's
        # state unusable for the next eager random draw; the compiler's own graphs are
        # compile: reduce-overhead
        return False, f"cuda_graphs {choice} -> off (compiled; use compile: reduce-overhead)"
    if choice != "auto":
        return choice == "on", f"cuda_graphs {choice} (set in train.cuda_graphs)"
    if not model_gains:
        return False, "cuda_graphs auto -> off (not flagged for this model)"
    return True, "cuda_graphs auto -> on (CUDA, the model gains from it)"


def apply_backend(backend: Backend) -> None:
    """Set the process-wide switches the decisions need (CUDA ones only on CUDA)."""
    if backend.num_threads is not None:
        torch.set_num_threads(backend.num_threads)
    if backend.device.type != "cuda":
        return
    torch.backends.cudnn.benchmark = backend.cudnn_benchmark
    torch.backends.cudnn.allow_tf32 = backend.tf32
    torch.set_float32_matmul_precision("high" if backend.tf32 else "highest")


def place_model(model: nn.Module, backend: Backend) -> nn.Module:
    """Move ``model`` to the backend's device (channels-last when chosen); returns it."""
    model = model.to(backend.device)
    if backend.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


# --------------------------------------------------------------------------- loss, optimizer, step


def class_weights(y: torch.Tensor, n_classes: int = N_CLASSES) -> torch.Tensor:
    """Inverse-frequency class weights (n_classes,) float32 from training labels ``y`` (M,).

    Normalized to a mean of 1 over the classes present; a class absent from ``y`` gets 0.
    Fit them on the training windows only.
    """
    counts = torch.bincount(y.detach().long().cpu(), minlength=n_classes)[:n_classes].double()
    inverse = torch.where(counts > 0, 1.0 / counts.clamp(min=1), torch.zeros_like(counts))
    present = int((counts > 0).sum())
    return (inverse * present / inverse.sum().clamp(min=1e-300)).float()


def focal_loss(
    logits: torch.Tensor, y: torch.Tensor, *, gamma: float, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Focal loss (Lin et al. 2017): mean of -(1 - p_y)^gamma * log p_y, weighted like
    ``cross_entropy`` (divided by the summed weights of the targets). gamma 0 = cross-entropy.

    logits: (B, C) float; y: (B,) int64 class indices. Returns a scalar.
    """
    log_p = torch.log_softmax(logits, dim=-1).gather(1, y[:, None]).squeeze(1)
    loss = -((1.0 - log_p.exp()).pow(gamma)) * log_p
    if weight is None:
        return loss.mean()
    w = weight[y]
    return (w * loss).sum() / w.sum()


def make_loss(cfg: TrainConfig, weight: torch.Tensor | None) -> LossFn:
    """The training loss of ``cfg.loss``: (logits (B,C), y (B,)) -> scalar."""
    if cfg.loss == "focal":
        gamma = float(cfg.focal_gamma)
        return lambda logits, y: focal_loss(logits, y, gamma=gamma, weight=weight)
    return nn.CrossEntropyLoss(weight=weight)


def lr_factor(step: int, *, warmup: int, total: int, cosine: bool) -> float:
    """Learning-rate multiplier before optimizer step ``step`` (0-based).

    Linear warm-up from 1/warmup to 1 over ``warmup`` steps, then cosine decay towards 0 at
    ``total`` steps (or constant 1 when not ``cosine``).
    """
    if step < warmup:
        return (step + 1) / warmup
    if not cosine:
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass
class TrainStep:
    """One optimizer step on a batch: the code path ``fit`` runs and ``bench/train_step.py`` times.

    Calling it with x (B, T, F) float32 and y (B,) int64 on the device runs forward (under the
    backend's autocast), loss, backward, gradient clipping, the AdamW step and the LR schedule
    step, and returns the detached loss (a 0-d tensor on the device: no host sync).
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    loss_fn: LossFn
    backend: Backend
    grad_clip: float | None
    params: list[nn.Parameter] = field(default_factory=list)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = self.update(x, y)
        self.scheduler.step()
        return loss

    def update(self, x: torch.Tensor, y: torch.Tensor, *, autocast_cache: bool = True) -> torch.Tensor:
        """Everything of a step but the LR schedule (host-side): the part a CUDA graph captures."""
        self.optimizer.zero_grad(set_to_none=True)
        with self.backend.autocast(cache=autocast_cache):
            logits = self.model(x)
        loss = self.loss_fn(logits.float(), y)
        loss.backward()
        if self.grad_clip is not None:
            nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        self.optimizer.step()
        return loss.detach()


GRAPH_WARMUP_STEPS = 3
"""Eager steps before capture: they create the optimizer state, cuDNN's autotuned algorithms and
the cuBLAS/cuDNN workspaces, none of which may be created while a graph is being captured."""


@dataclass
class GraphedStep:
    """A ``TrainStep`` replayed from one CUDA graph; called like it, with the same results.

    The first ``GRAPH_WARMUP_STEPS`` calls run eagerly; the next captures ``TrainStep.update`` on
    static input buffers (the optimizer turned capturable, its learning rate a device tensor that
    the LR schedule fills each step) and every later call copies x (B, T, F) and y (B,) into those
    buffers and replays the graph. A batch of another shape runs eagerly. If capture fails (an
    operation that cannot be captured), the run goes on eagerly and ``note`` says why.
    """

    step: TrainStep
    graph: torch.cuda.CUDAGraph | None = None
    static: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
    addresses: tuple[int, ...] = ()
    calls: int = 0
    note: str = ""

    def __getattr__(self, name: str) -> Any:
        # optimizer, scheduler, loss_fn, backend, model: the wrapped step's
        step = self.__dict__.get("step")
        if step is None:
            raise AttributeError(name)
        return getattr(step, name)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.graph is not None and self._addresses() != self.addresses:
            self.graph = None  # the weights moved (an RNN re-packed them): capture them again
        if self.graph is None and not self.note and self.calls > GRAPH_WARMUP_STEPS:
            self._capture(x, y)
        if self.graph is None or x.shape != self.static[0].shape or y.shape != self.static[1].shape:
            return self.step(x, y)
        static_x, static_y, static_loss = self.static
        static_x.copy_(x)
        static_y.copy_(y)
        self.graph.replay()
        self.step.scheduler.step()
        return static_loss.clone()

    def _capture(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Record ``update`` on static copies of (x, y); leaves ``graph`` None and sets ``note``
        when the step cannot be captured."""
        for group in self.step.optimizer.param_groups:
            if "capturable" in group:
                group["capturable"] = True
            if not torch.is_tensor(group["lr"]):
                group["lr"] = torch.tensor(float(group["lr"]), device=x.device)
        static_x, static_y = x.clone(), y.clone()
        graph = torch.cuda.CUDAGraph()
        torch.cuda.synchronize(x.device)
        try:
            self.step.optimizer.zero_grad(set_to_none=True)
            with torch.cuda.graph(graph):
                static_loss = self.step.update(static_x, static_y, autocast_cache=False)
        except RuntimeError as error:
            torch.cuda.synchronize(x.device)
            cause = error.__context__ or error  # capture's own error can hide the one that broke it
            self.note = f"CUDA graph capture failed, running eagerly: {str(cause).splitlines()[0]}"
            log.warning(self.note)
            return
        self.graph, self.static = graph, (static_x, static_y, static_loss)
        self.addresses = self._addresses()

    def _addresses(self) -> tuple[int, ...]:
        """Where the parameters live: the graph reads and updates them there."""
        return tuple(p.data_ptr() for p in self.step.params)


def make_train_step(
    model: nn.Module, cfg: TrainConfig, backend: Backend, weight: torch.Tensor | None, steps_per_epoch: int
) -> TrainStep | GraphedStep:
    """AdamW, the LR schedule over ``cfg.epochs * steps_per_epoch`` steps and the loss, around
    ``model`` (already placed on the device); compiled, or replayed from a CUDA graph, when the
    backend says so."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        params, lr=cfg.learning_rate, weight_decay=float(cfg.weight_decay), fused=True
    )
    warmup, total = cfg.warmup_epochs * steps_per_epoch, cfg.epochs * steps_per_epoch
    cosine = cfg.schedule == "cosine"
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, warmup=warmup, total=total, cosine=cosine)
    )
    runner = torch.compile(model, mode=backend.compile_mode) if backend.compile_mode else model
    clip = None if cfg.grad_clip is None else float(cfg.grad_clip)
    step = TrainStep(runner, optimizer, scheduler, make_loss(cfg, weight), backend, clip, params)
    return GraphedStep(step) if backend.cuda_graphs else step


def epoch_steps(n_windows: int, batch_size: int, cap: int | None) -> int:
    """Optimizer steps per epoch: full batches of the windows (at least 1), at most ``cap``."""
    full = max(1, n_windows // batch_size)
    return full if cap is None else min(cap, full)


def epoch_batches(
    n_windows: int, batch_size: int, steps: int, generator: torch.Generator, device: torch.device
) -> Sequence[torch.Tensor]:
    """Window indices of one epoch, one (B,) int64 tensor per step, on ``device``.

    A seeded permutation of all windows cut into ``steps`` batches of ``batch_size`` (windows
    beyond ``steps * batch_size`` are left out this epoch; fewer windows than a batch make one
    smaller batch). The permutation is drawn on the CPU generator and moved once.
    """
    order = torch.randperm(n_windows, generator=generator)[: steps * batch_size]
    return order.to(device).split(batch_size)


def train_batches(step: TrainStep | GraphedStep, windows: WindowSet, batches: Sequence[torch.Tensor]) -> torch.Tensor:
    """Run ``step`` on each batch of window indices; the summed loss x batch size, a 0-d tensor
    on the device (the caller syncs once). This is the inner loop of an epoch."""
    loss_sum = torch.zeros((), device=windows.x.device)
    for idx in batches:
        x, y = windows.batch(idx)
        loss_sum += step(x, y) * len(idx)
    return loss_sum


# --------------------------------------------------------------------------- evaluation


def predict(
    model: nn.Module, windows: WindowSet, *, device: str | torch.device, batch_size: int = 2048,
    backend: Backend | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Class predictions (M,) int64 and probabilities (M, C) float32 for every window, in order.

    Runs in eval mode under ``torch.inference_mode`` in batches of ``batch_size`` windows gathered
    on ``device`` (the model and windows are moved there).
    """
    probs = _probabilities(model, windows.to(device), torch.device(device), batch_size, backend)
    probs = probs.cpu().numpy()
    return probs.argmax(axis=1).astype(np.int64), probs


def evaluate(
    model: nn.Module, windows: WindowSet, *, device: str | torch.device, batch_size: int = 2048,
    backend: Backend | None = None, loss_fn: LossFn | None = None,
) -> tuple[dict[str, Any], np.ndarray, np.ndarray, np.ndarray]:
    """(metrics, y_true (M,), y_pred (M,), probs (M, C)) of ``model`` on ``windows``.

    ``metrics`` is ``classification_metrics`` as plain Python values (log_loss left out when a
    probability is not finite), plus ``loss`` (the mean of ``loss_fn``, e.g. the training loss
    on validation windows) when ``loss_fn`` is given.
    Raises DataError when ``windows`` is empty.
    """
    if len(windows) == 0:
        raise DataError("evaluate: the window set is empty (no windows passed the gates and labels)")
    device = torch.device(device)
    windows = windows.to(device)
    probs = _probabilities(model, windows, device, batch_size, backend)
    extra = {}
    if loss_fn is not None:
        with torch.inference_mode():
            extra["loss"] = float(loss_fn(torch.log(probs.clamp_min(1e-12)), windows.y))
    finite = bool(torch.isfinite(probs).all())
    y_true, probs = windows.y.cpu().numpy(), probs.cpu().numpy()
    y_pred = probs.argmax(axis=1).astype(np.int64)
    # a diverged model's NaN probabilities have no log loss; its other metrics still tell
    metrics = plain(classification_metrics(y_true, y_pred, probs if finite else None)) | extra
    return metrics, y_true, y_pred, probs


def _probabilities(
    model: nn.Module, windows: WindowSet, device: torch.device, batch_size: int, backend: Backend | None
) -> torch.Tensor:
    """Softmax probabilities (M, C) float32 on ``device``."""
    model = on_device(model, device)
    was_training = model.training
    model.eval()
    autocast = backend.autocast() if backend is not None else torch.autocast(device.type, enabled=False)
    chunks = []
    with torch.inference_mode(), autocast:
        for idx in torch.arange(len(windows), device=device).split(batch_size):
            x, _ = windows.batch(idx)
            chunks.append(torch.softmax(model(x).float(), dim=-1))
    model.train(was_training)
    return torch.cat(chunks) if chunks else torch.empty(0, N_CLASSES, device=device)


def on_device(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` on ``device``, moved only when some parameter is elsewhere: ``.to()`` on an RNN
    always re-packs its weights into a new cuDNN buffer, which would leave a captured CUDA graph
    training the old one."""
    if all(p.device.type == device.type and device.index in (None, p.device.index)
           for p in model.parameters()):
        return model
    return model.to(device)


def plain(value: Any) -> Any:
    """``value`` with numpy scalars and arrays turned into Python numbers and lists (JSON-ready)."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


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
    cfg: TrainConfig,
    *,
    device: str | torch.device,
    on_epoch: Callable[[EpochResult], bool | None] | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: str | Path | None = None,
    data_hash: str = "",
    backend: Backend | None = None,
) -> FitResult:
    """Train ``model`` on ``train``, select the epoch with the best validation macro-F1.

    ``on_epoch`` runs after each epoch's checkpoint is written; returning True stops the run
    (status "stopped"); an exception it raises propagates. ``checkpoint_dir`` receives
    ``checkpoint.pt`` each epoch (atomic replace); ``resume`` (that folder or file) continues a
    run to the same result as an uninterrupted one. ``data_hash`` identifies the data (config and
    normalization statistics); resuming with another one raises DataError naming both.
    ``backend`` defaults to ``device_setup(None, cfg, device, ...)``. Raises DataError when
    ``train`` or ``val`` has no windows. Seeds python, numpy and torch with ``cfg.seed``.
    """
    _require_windows(train, val)
    device = torch.device(device)
    steps = epoch_steps(len(train), cfg.batch_size, cfg.steps_per_epoch)
    backend = backend or device_setup(None, cfg, device, planned_steps=steps * cfg.epochs)
    seed_everything(cfg.seed)
    model = place_model(model, backend)
    train, val = train.to(device), subsample(val, cfg.max_eval_windows).to(device)
    weight = class_weights(train.y).to(device) if cfg.class_weights else None
    step = make_train_step(model, cfg, backend, weight, steps)
    progress = _Progress(generator=torch.Generator().manual_seed(cfg.seed))
    if resume is not None:
        _restore(load_checkpoint(resume, data_hash), model, step, progress)
    while progress.status is None and progress.epoch < cfg.epochs:
        result = _run_epoch(model, step, train, val, cfg, steps, progress)
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
    model: nn.Module, step: TrainStep, train: WindowSet, val: WindowSet, cfg: TrainConfig,
    steps: int, progress: _Progress,
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
    val_metrics = evaluate(
        model, val, device=train.x.device, batch_size=cfg.eval_batch_size,
        backend=step.backend, loss_fn=step.loss_fn,
    )[0]
    result = EpochResult(epoch, train_loss, val_metrics, n_samples / train_seconds, lr,
                         time.perf_counter() - started, train_samples=n_samples)
    _record(progress, result, model, cfg, n_samples, train_seconds)
    return result


def _record(
    progress: _Progress, result: EpochResult, model: nn.Module, cfg: TrainConfig,
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


# --------------------------------------------------------------------------- checkpoints


def save_checkpoint(directory: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` to ``directory/checkpoint.pt`` atomically (temporary file + os.replace)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / CHECKPOINT_NAME
    tmp = directory / f".{CHECKPOINT_NAME}.{os.getpid()}.tmp"
    torch.save(payload, tmp)
    os.replace(tmp, final)
    return final


def load_checkpoint(path: str | Path, data_hash: str) -> dict[str, Any]:
    """Read a checkpoint (its file, or the folder holding ``checkpoint.pt``) onto the CPU.

    Raises DataError when it is missing, unreadable, or written for another ``data_hash``
    (naming both hashes).
    """
    path = Path(path)
    file = path / CHECKPOINT_NAME if path.is_dir() else path
    if not file.is_file():
        raise DataError(f"resume: no checkpoint at {file}")
    payload = torch.load(file, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("version") != _CHECKPOINT_VERSION:
        raise DataError(f"resume: {file} is not a lobsearch checkpoint (version {_CHECKPOINT_VERSION})")
    if payload["data_hash"] != data_hash:
        raise DataError(
            f"resume: {file} was written for data hash {payload['data_hash']!r}, but this run's "
            f"data hash is {data_hash!r}: the export, data config or normalization statistics "
            "differ; resume with the same data or start a new run"
        )
    return payload


def _checkpoint(model: nn.Module, step: TrainStep, progress: _Progress, data_hash: str) -> dict[str, Any]:
    fields = {f.name: getattr(progress, f.name) for f in dataclasses.fields(progress)}
    fields.pop("generator")
    return {
        "version": _CHECKPOINT_VERSION,
        "data_hash": data_hash,
        "model": model.state_dict(),
        "optimizer": step.optimizer.state_dict(),
        "scheduler": step.scheduler.state_dict(),
        "progress": fields,
        "rng": _rng_states(progress.generator),
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
    _set_rng_states(payload["rng"], progress.generator)


def _rng_states(generator: torch.Generator) -> dict[str, Any]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    states = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
        "torch": torch.get_rng_state(),
        "sampler": generator.get_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _set_rng_states(states: dict[str, Any], generator: torch.Generator) -> None:
    random.setstate(_as_tuples(states["python"]))
    kind, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(states["torch"])
    generator.set_state(states["sampler"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _as_tuples(value: Any) -> Any:
    """random.setstate needs tuples; a checkpoint round trip may hand back lists."""
    return tuple(_as_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


__all__ = [
    "Backend", "COMPILE_MIN_STEPS", "EpochResult", "FitResult", "GRAPH_WARMUP_STEPS", "GraphedStep",
    "STATUSES", "TrainStep", "apply_backend", "class_weights", "device_setup", "epoch_batches", "epoch_steps", "evaluate", "fit",
    "focal_loss", "load_checkpoint", "lr_factor", "make_loss", "make_train_step", "place_model",
    "plain", "predict", "save_checkpoint", "seed_everything", "subsample", "train_batches",
]
