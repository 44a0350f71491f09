"""DeepLOB: convolutions over the book, an inception module, an LSTM.

Zhang, Zohren and Roberts (2019), "DeepLOB: Deep Convolutional Neural Networks for Limit Order
Books", IEEE Transactions on Signal Processing 67(11). The book enters as the paper's
interleaved layout, per level (ask price, ask size, bid price, bid size); three conv blocks
merge (price, size) pairs, then the two sides of each level, then all ten levels; an inception
module mixes time scales; an LSTM of 64 units reads the result. The paper's Leaky-ReLU (0.01)
follows every convolution, each followed by batch normalization.

The (4, 1) convolutions have no padding along time, as in the authors' PyTorch code: each
removes 3 rows, so a window of T rows leaves T - 18 steps for the LSTM and T must be >= 19.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from lobsearch.contract import ASK_PRICES, ASK_SIZES, BID_PRICES, BID_SIZES, BOOK_LEVELS
from lobsearch.models.registry import Backend, PositiveInt, register

BOOK_COLUMNS = 4 * BOOK_LEVELS
PAPER_ORDER = tuple(
    column
    for level in range(BOOK_LEVELS)
    for column in (ASK_PRICES[level], ASK_SIZES[level], BID_PRICES[level], BID_SIZES[level])
)
"""Contract column of each input position of the paper's layout, level by level."""

TIME_KERNEL = 4
TIME_CONVS = 6
TIME_SHRINK = TIME_CONVS * (TIME_KERNEL - 1)
MIN_WINDOW = TIME_SHRINK + 1


def _conv(c_in: int, c_out: int, kernel: tuple[int, int], **kwargs: Any) -> list[nn.Module]:
    """Conv2d -> LeakyReLU(0.01) -> BatchNorm2d, the unit every DeepLOB layer is made of."""
    return [nn.Conv2d(c_in, c_out, kernel, **kwargs), nn.LeakyReLU(0.01), nn.BatchNorm2d(c_out)]


def _conv_block(c_in: int, channels: int, width: int, stride: int) -> nn.Sequential:
    """(1 x width) conv across book columns, then two unpadded (4 x 1) convs along time."""
    return nn.Sequential(
        *_conv(c_in, channels, (1, width), stride=(1, stride)),
        *_conv(channels, channels, (TIME_KERNEL, 1)),
        *_conv(channels, channels, (TIME_KERNEL, 1)),
    )


class Inception(nn.Module):
    """Three branches concatenated on channels, time length kept: (B,C,T,1) -> (B,3*I,T,1).

    1x1 -> 3x1; 1x1 -> 5x1; 3x1 max-pool -> 1x1 (all padded along time to keep T).
    """

    def __init__(self, c_in: int, channels: int):
        super().__init__()
        self.branches = nn.ModuleList([
            nn.Sequential(*_conv(c_in, channels, (1, 1)),
                          *_conv(channels, channels, (3, 1), padding=(1, 0))),
            nn.Sequential(*_conv(c_in, channels, (1, 1)),
                          *_conv(channels, channels, (5, 1), padding=(2, 0))),
            nn.Sequential(nn.MaxPool2d((3, 1), stride=(1, 1), padding=(1, 0)),
                          *_conv(c_in, channels, (1, 1))),
        ])

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.cat([branch(h) for branch in self.branches], dim=1)


class DeepLOB(nn.Module):
    """(B,T,F) float32, F == n_features >= 40, book in contract order -> logits (B,C).

    With ``extra_features`` the columns 40+ of each time step are appended to the inception
    output of the step whose receptive field ends at that row (rows T-18.. of the window:
    no look-ahead), and the LSTM reads both.
    """

    def __init__(self, n_features: int, n_classes: int, conv_channels: int,
                 inception_channels: int, lstm_hidden: int, extra_features: bool):
        super().__init__()
        self.n_features, self.extra_features = n_features, extra_features
        self.register_buffer("book_order", torch.tensor(PAPER_ORDER), persistent=False)
        self.convs = nn.Sequential(
            _conv_block(1, conv_channels, width=2, stride=2),
            _conv_block(conv_channels, conv_channels, width=2, stride=2),
            _conv_block(conv_channels, conv_channels, width=BOOK_LEVELS, stride=1),
        )
        self.inception = Inception(conv_channels, inception_channels)
        extra = n_features - BOOK_COLUMNS if extra_features else 0
        self.lstm = nn.LSTM(3 * inception_channels + extra, lstm_hidden, batch_first=True)
        self.head = nn.Linear(lstm_hidden, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.n_features:
            raise ValueError(
                f"deeplob: input has {x.shape[-1]} features, "
                f"the model was built for {self.n_features}"
            )
        book = x.index_select(-1, self.book_order).unsqueeze(1)
        h = self.inception(self.convs(book))
        h = h.squeeze(-1).transpose(1, 2)
        if self.extra_features:
            h = torch.cat([h, x[:, TIME_SHRINK:, BOOK_COLUMNS:].to(h.dtype)], dim=-1)
        out, _ = self.lstm(h)
        return self.head(out[:, -1])


def _check(hp: Mapping[str, Any], n_features: int | None) -> list[str]:
    if n_features is None:
        return []
    if n_features < BOOK_COLUMNS:
        return [
            f"n_features={n_features}: deeplob needs the 40 book columns first (ASK_PRICE 0-9, "
            "ASK_SIZE 10-19, BID_PRICE 20-29, BID_SIZE 30-39), so n_features >= 40"
        ]
    if hp["extra_features"] and n_features == BOOK_COLUMNS:
        return [
            "extra_features=True appends columns 40+, but n_features=40 has none; select more "
            "features or set extra_features=False"
        ]
    return []


# measured on an H100: fp32 23,300 samples/s -> 60,800 with bf16 + channels-last + cuDNN autotune
@register(
    "deeplob",
    tiny={"conv_channels": 4, "inception_channels": 4, "lstm_hidden": 8},
    backend=Backend(channels_last=True, bf16=True, cudnn_benchmark=True, cuda_graphs=True),
    min_window=MIN_WINDOW,
    window_rule=f"six unpadded ({TIME_KERNEL}, 1) convolutions remove {TIME_SHRINK} rows",
    check=_check,
)
def deeplob(n_features: int, window: int, n_classes: int = 3, *,
            conv_channels: PositiveInt = 32, inception_channels: PositiveInt = 64,
            lstm_hidden: PositiveInt = 64, extra_features: bool = False) -> nn.Module:
    """DeepLOB with the paper's widths as defaults; without ``extra_features`` columns 40+ of
    the input are not used."""
    return DeepLOB(n_features, n_classes, conv_channels, inception_channels, lstm_hidden,
                   extra_features)
