"""Loss, optimizer, learning-rate schedule and one optimizer step; the batches of an epoch.

``make_train_step`` builds the step ``loop.fit`` runs for every batch (and
``bench/train_step.py`` times): AdamW over the model's parameters, a warm-up + cosine schedule,
cross-entropy or focal loss with optional class weights; replayed from a CUDA graph
(``lobsearch.graphs``) or compiled when the backend says so.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from lobsearch.backend import Backend
from lobsearch.contract import N_CLASSES
from lobsearch.data.windows import WindowSet
from lobsearch.graphs import GraphedStep

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class StepSettings:
    """The optimizer step of a run: AdamW's learning rate and weight decay, the schedule
    ("cosine" after ``warmup_epochs`` of linear warm-up, or "none"), the loss ("cross_entropy"
    or "focal" with ``focal_gamma``) and the gradient-norm clip (None: no clipping)."""

    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    schedule: str = "cosine"
    warmup_epochs: int = 0
    loss: str = "cross_entropy"
    focal_gamma: float = 2.0
    grad_clip: float | None = 1.0


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


def make_loss(settings: StepSettings, weight: torch.Tensor | None) -> LossFn:
    """The training loss of ``settings.loss``: (logits (B,C), y (B,)) -> scalar."""
    if settings.loss == "focal":
        gamma = float(settings.focal_gamma)
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


def make_train_step(
    model: nn.Module, settings: StepSettings, backend: Backend, weight: torch.Tensor | None,
    *, steps_per_epoch: int, epochs: int,
) -> TrainStep | GraphedStep:
    """AdamW, the LR schedule over ``epochs * steps_per_epoch`` steps and the loss, around
    ``model`` (already placed on the device); compiled, or replayed from a CUDA graph, when the
    backend says so."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        params, lr=settings.learning_rate, weight_decay=float(settings.weight_decay), fused=True
    )
    warmup, total = settings.warmup_epochs * steps_per_epoch, epochs * steps_per_epoch
    cosine = settings.schedule == "cosine"
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, warmup=warmup, total=total, cosine=cosine)
    )
    runner = torch.compile(model, mode=backend.compile_mode) if backend.compile_mode else model
    clip = None if settings.grad_clip is None else float(settings.grad_clip)
    step = TrainStep(runner, optimizer, scheduler, make_loss(settings, weight), backend, clip, params)
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
