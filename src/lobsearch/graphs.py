"""The training step replayed from one CUDA graph: one launch per step instead of hundreds.

Small LOB models are bound by kernel launches on a GPU. ``GraphedStep`` wraps a ``TrainStep``
(``lobsearch.steps``): after a few eager warm-up steps it captures the step's forward, backward,
clipping and AdamW update once, then copies each batch into static buffers and replays.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

log = logging.getLogger(__name__)

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

    step: Any
    """The wrapped ``steps.TrainStep`` (its ``update``, ``optimizer``, ``scheduler``, ``params``)."""
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
