"""Recurrent classifiers: LSTM and GRU over the window's time steps.

LSTM: Hochreiter and Schmidhuber (1997), "Long Short-Term Memory", Neural Computation 9(8).
GRU: Cho et al. (2014), "Learning Phrase Representations using RNN Encoder-Decoder for
Statistical Machine Translation", EMNLP. On limit order books: Sirignano and Cont (2019),
"Universal features of price formation in financial markets: perspectives from deep learning",
Quantitative Finance 19(9). Attention pooling is the additive score of Bahdanau, Cho and Bengio
(2015), "Neural Machine Translation by Jointly Learning to Align and Translate", ICLR.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from lobsearch.models.registry import Backend, Dropout, PositiveInt, register


class AttentionPool(nn.Module):
    """Additive attention over time: (B,T,D) -> (B,D), weights softmax_t(v . tanh(W h_t))."""

    def __init__(self, width: int):
        super().__init__()
        self.score = nn.Sequential(
            nn.Linear(width, width), nn.Tanh(), nn.Linear(width, 1, bias=False)
        )

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        weights = torch.softmax(self.score(h), dim=1)
        return (weights * h).sum(dim=1)


class RecurrentClassifier(nn.Module):
    """An LSTM or GRU, pooled over time, then dropout and a linear head: (B,T,F) -> (B,C).

    ``pooling="last"`` takes the forward direction's output at the last step and, when
    bidirectional, the backward direction's output at the first step (its final state).
    """

    def __init__(self, cell: str, n_features: int, n_classes: int, hidden_size: int,
                 num_layers: int, dropout: float, bidirectional: bool, pooling: str):
        super().__init__()
        rnn = nn.LSTM if cell == "lstm" else nn.GRU
        # torch applies RNN dropout between layers only, and warns when there is one layer
        self.rnn = rnn(n_features, hidden_size, num_layers, batch_first=True,
                       dropout=dropout if num_layers > 1 else 0.0, bidirectional=bidirectional)
        self.hidden_size, self.bidirectional = hidden_size, bidirectional
        width = hidden_size * (2 if bidirectional else 1)
        self.pool = AttentionPool(width) if pooling == "attention" else None
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(width, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        if self.pool is not None:
            pooled = self.pool(out)
        elif self.bidirectional:
            size = self.hidden_size
            pooled = torch.cat([out[:, -1, :size], out[:, 0, size:]], dim=-1)
        else:
            pooled = out[:, -1]
        return self.head(self.dropout(pooled))


TINY = {"hidden_size": 8, "num_layers": 1}
# cuDNN RNNs got slower with the global switches that sped up DeepLOB (design.md), so none of
# them here; a CUDA graph removes the launch overhead that bounds small recurrent steps
RECURRENT_BACKEND = Backend(cuda_graphs=True)


@register("lstm", tiny=TINY, backend=RECURRENT_BACKEND)
def lstm(n_features: int, window: int, n_classes: int = 3, *,
         hidden_size: PositiveInt = 64, num_layers: PositiveInt = 2, dropout: Dropout = 0.1,
         bidirectional: bool = False,
         pooling: Literal["last", "attention"] = "last") -> nn.Module:
    """LSTM classifier; ``dropout`` acts between layers and before the head."""
    return RecurrentClassifier("lstm", n_features, n_classes, hidden_size, num_layers, dropout,
                               bidirectional, pooling)


@register("gru", tiny=TINY, backend=RECURRENT_BACKEND)
def gru(n_features: int, window: int, n_classes: int = 3, *,
        hidden_size: PositiveInt = 64, num_layers: PositiveInt = 2, dropout: Dropout = 0.1,
        bidirectional: bool = False,
        pooling: Literal["last", "attention"] = "last") -> nn.Module:
    """GRU classifier; ``dropout`` acts between layers and before the head."""
    return RecurrentClassifier("gru", n_features, n_classes, hidden_size, num_layers, dropout,
                               bidirectional, pooling)
