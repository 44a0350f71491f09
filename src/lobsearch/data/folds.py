"""Walk-forward folds over the training days: which days each fold trains and validates on.

The export's training days (chronological) are cut into a first training block and ``folds``
validation blocks of equal size after it (the first block takes the remainder). Fold k
(1-based) validates on block k and trains on every day before it (an expanding window) except
the ``embargo_days`` days just before the block, which neither side uses: labels look ahead,
so the last training rows would otherwise peek into the block. The export's own val and test
days belong to no fold.

A fold is prepared as an export of its own (``fold_export``): its training days under
``train``, its block under ``val``, so normalization statistics come from that fold's training
days only, and a day after the fold can change neither its statistics nor its windows.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from lobsearch.data.days import Export
from lobsearch.errors import ConfigError


@dataclass(frozen=True)
class Fold:
    """Fold ``index`` (1-based) of ``count``: the dates it trains on, skips and validates on."""

    index: int
    count: int
    train: tuple[str, ...]
    embargo: tuple[str, ...]
    val: tuple[str, ...]

    def describe(self) -> str:
        gap = f", {len(self.embargo)} embargoed" if self.embargo else ""
        return (f"fold {self.index}/{self.count}: train {len(self.train)} days ({self.train[0]}..{self.train[-1]}){gap}, "
                f"validate {len(self.val)} days ({self.val[0]}..{self.val[-1]})")


def walk_forward(dates: list[str] | tuple[str, ...], *, folds: int, embargo_days: int,
                 source: str = "objective") -> list[Fold]:
    """The folds of chronological training ``dates``; ConfigError naming ``objective.folds`` and
    ``objective.embargo_days``, the rule and the values when a fold would have no training or
    no validation day."""
    dates = tuple(dates)
    block = len(dates) // (folds + 1)
    first_train = len(dates) - folds * block
    if block < 1 or first_train - embargo_days < 1:
        need = folds + 1 + embargo_days
        raise ConfigError(source, [
            f"objective.folds / objective.embargo_days: {folds} folds with an embargo of {embargo_days} day(s) need "
            f"at least {need} training days (each fold validates on >= 1 day and the first trains on >= 1 day "
            f"before its embargo); the export has {len(dates)} training day(s): lower objective.folds or "
            "objective.embargo_days"
        ])
    out = []
    for k in range(1, folds + 1):
        start = first_train + (k - 1) * block
        out.append(Fold(index=k, count=folds, train=dates[:start - embargo_days],
                        embargo=dates[start - embargo_days:start], val=dates[start:start + block]))
    return out


def fold_export(export: Export, fold: Fold) -> Export:
    """``export`` seen by one fold: its training days under ``train``, its block under ``val``,
    nothing else (the days keep their files; only their split changes)."""
    by_date = {day.date: day for day in export.splits.get("train", ())}
    missing = [d for d in fold.train + fold.val if d not in by_date]
    if missing:
        raise ConfigError("objective", [f"walk-forward fold {fold.index}: days {missing[:3]} are not training days "
                                        f"of {export.root}"])
    splits = {
        "train": tuple(dataclasses.replace(by_date[d], split="train") for d in fold.train),
        "val": tuple(dataclasses.replace(by_date[d], split="val") for d in fold.val),
    }
    return dataclasses.replace(export, splits=splits)


def fold_key(digest: str, index: int) -> str:
    """The key of fold ``index``'s prepared days beside the holdout ones (keyed by ``digest``)."""
    return f"{digest}/fold{index}"
