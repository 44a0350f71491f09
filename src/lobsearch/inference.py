"""Predictions of a trained model on a window set, and their metrics.

Runs in eval mode under ``torch.inference_mode`` in batches of windows gathered on the device
(``WindowSet.batch``): the (M, T, F) tensor of every window is never built.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from lobsearch.backend import Backend
from lobsearch.contract import N_CLASSES
from lobsearch.data.windows import WindowSet
from lobsearch.errors import DataError
from lobsearch.files import plain
from lobsearch.metrics import classification_metrics
from lobsearch.steps import LossFn

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
