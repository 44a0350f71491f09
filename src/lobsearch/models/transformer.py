"""A small Transformer encoder over the window's time steps, optionally with dual attention.

Vaswani et al. (2017), "Attention Is All You Need", NeurIPS (pre-norm layers as in Xiong et al.
(2020), "On Layer Normalization in the Transformer Architecture", ICML). ``dual_attention``
follows TLOB: Berti and Kasneci (2025), "TLOB: A Novel Transformer Model with Dual Attention for
Stock Price Trend Prediction with Limit Order Book Data": each layer over time steps is
followed by one over features, whose tokens are the d_model channels, each a vector of T values.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

import torch
from torch import nn

from lobsearch.models.recurrent import AttentionPool
from lobsearch.models.registry import Backend, Dropout, PositiveInt, register


def sinusoidal_positions(length: int, width: int) -> torch.Tensor:
    """(length, width) float32 table of Vaswani et al.: sin on even, cos on odd channels."""
    position = torch.arange(length, dtype=torch.float32).unsqueeze(1)
    rate = torch.exp(torch.arange(0, width, 2, dtype=torch.float32) * (-math.log(10000.0) / width))
    table = torch.zeros(length, width + width % 2)
    table[:, 0::2] = torch.sin(position * rate)
    table[:, 1::2] = torch.cos(position * rate)
    return table[:, :width]


def _layer(width: int, nhead: int, dim_feedforward: int, dropout: float) -> nn.Module:
    return nn.TransformerEncoderLayer(width, nhead, dim_feedforward, dropout, activation="gelu",
                                      batch_first=True, norm_first=True)


class DualLayer(nn.Module):
    """Attention over time (tokens: T steps of width d), then over features (tokens: d
    channels of width T, one head): (B,T,d) -> (B,T,d)."""

    def __init__(self, window: int, d_model: int, nhead: int, dim_feedforward: int, dropout: float):
        super().__init__()
        self.over_time = _layer(d_model, nhead, dim_feedforward, dropout)
        self.over_features = _layer(window, 1, dim_feedforward, dropout)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = self.over_time(h)
        return self.over_features(h.transpose(1, 2)).transpose(1, 2)


class TimeTransformer(nn.Module):
    """Linear projection F -> d_model, positions, encoder layers, final LayerNorm, pooling,
    linear head: (B,T,F) with T <= window -> (B,C); ``dual_attention`` needs T == window."""

    def __init__(self, n_features: int, window: int, n_classes: int, d_model: int, nhead: int,
                 num_layers: int, dim_feedforward: int, dropout: float, positions: str,
                 pooling: str, dual_attention: bool):
        super().__init__()
        self.window, self.pooling, self.dual = window, pooling, dual_attention
        self.project = nn.Linear(n_features, d_model)
        if positions == "learned":
            self.positions = nn.Parameter(0.02 * torch.randn(window, d_model))
        else:
            table = sinusoidal_positions(window, d_model)
            self.register_buffer("positions", table, persistent=False)
        self.dropout = nn.Dropout(dropout)
        self.layers = nn.ModuleList(
            DualLayer(window, d_model, nhead, dim_feedforward, dropout) if dual_attention
            else _layer(d_model, nhead, dim_feedforward, dropout)
            for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(d_model)
        self.pool = AttentionPool(d_model) if pooling == "attention" else None
        self.head = nn.Linear(d_model, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        steps = x.shape[1]
        if steps > self.window or (self.dual and steps != self.window):
            raise ValueError(
                f"transformer: input has {steps} time steps, built for window={self.window}"
            )
        h = self.dropout(self.project(x) + self.positions[:steps])
        for layer in self.layers:
            h = layer(h)
        h = self.norm(h)
        if self.pool is not None:
            return self.head(self.pool(h))
        return self.head(h[:, -1] if self.pooling == "last" else h.mean(dim=1))


def _check(hp: Mapping[str, Any], n_features: int | None) -> list[str]:
    if hp["d_model"] % hp["nhead"]:
        return [f"d_model={hp['d_model']} must be divisible by nhead={hp['nhead']}"]
    return []


@register(
    "transformer",
    tiny={"d_model": 8, "nhead": 2, "num_layers": 1, "dim_feedforward": 16},
    backend=Backend(bf16=True, cuda_graphs=True),
    check=_check,
)
def transformer(n_features: int, window: int, n_classes: int = 3, *,
                d_model: PositiveInt = 64, nhead: PositiveInt = 4, num_layers: PositiveInt = 2,
                dim_feedforward: PositiveInt = 128, dropout: Dropout = 0.1,
                positions: Literal["sinusoidal", "learned"] = "sinusoidal",
                pooling: Literal["mean", "last", "attention"] = "mean",
                dual_attention: bool = False) -> nn.Module:
    """Pre-norm Transformer encoder classifier; ``dual_attention`` makes it TLOB-style."""
    return TimeTransformer(n_features, window, n_classes, d_model, nhead, num_layers,
                           dim_feedforward, dropout, positions, pooling, dual_attention)
