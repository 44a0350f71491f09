"""Baselines: multinomial logistic regression and a multilayer perceptron.

The reference point is the FI-2010 benchmark of Ntakaris, Magris, Kanniainen, Gabbouj and
Iosifidis (2018), "Benchmark dataset for mid-price forecasting of limit order book data with
machine learning methods", Journal of Forecasting 37(8), whose baselines are a linear model and
a single-hidden-layer feed-forward network. A deep model that does not beat these is not
learning anything the last book snapshot does not already show.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

from lobsearch.models.registry import Backend, Dropout, PositiveInt, register


class Logistic(nn.Module):
    """Linear layer on the window's last row or on its mean over time: (B,T,F) -> (B,C)."""

    def __init__(self, n_features: int, n_classes: int, pool: str):
        super().__init__()
        self.pool = pool
        self.linear = nn.Linear(n_features, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x[:, -1] if self.pool == "last" else x.mean(dim=1)
        return self.linear(h)


class MLP(nn.Module):
    """ReLU layers over the last ``lookback`` rows, flattened or averaged: (B,T,F) -> (B,C)."""

    def __init__(self, n_features: int, n_classes: int, hidden_size: int, num_layers: int,
                 dropout: float, lookback: int, pool: str):
        super().__init__()
        self.lookback, self.pool = lookback, pool
        width = n_features * lookback if pool == "flatten" else n_features
        layers: list[nn.Module] = []
        for _ in range(num_layers):
            layers += [nn.Linear(width, hidden_size), nn.ReLU(), nn.Dropout(dropout)]
            width = hidden_size
        layers.append(nn.Linear(width, n_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        recent = x[:, -self.lookback:]
        h = recent.flatten(1) if self.pool == "flatten" else recent.mean(dim=1)
        return self.net(h)


# a step of these is a handful of tiny kernels: on a GPU, launches are all it costs
GRAPHED = Backend(cuda_graphs=True)


@register("logistic", tiny={}, backend=GRAPHED)
def logistic(n_features: int, window: int, n_classes: int = 3, *,
             pool: Literal["last", "mean"] = "last") -> nn.Module:
    """Multinomial logistic regression: one linear layer, softmax in the loss."""
    return Logistic(n_features, n_classes, pool)


def _mlp_min_window(hp: dict[str, Any]) -> int:
    return hp["lookback"]


@register("mlp", tiny={"hidden_size": 8, "num_layers": 1, "lookback": 2}, backend=GRAPHED,
          min_window=_mlp_min_window, window_rule="the MLP reads the last `lookback` rows")
def mlp(n_features: int, window: int, n_classes: int = 3, *,
        hidden_size: PositiveInt = 128, num_layers: PositiveInt = 2, dropout: Dropout = 0.1,
        lookback: PositiveInt = 10, pool: Literal["flatten", "mean"] = "flatten") -> nn.Module:
    """Feed-forward network: ``num_layers`` hidden layers of ``hidden_size`` units each."""
    return MLP(n_features, n_classes, hidden_size, num_layers, dropout, lookback, pool)
