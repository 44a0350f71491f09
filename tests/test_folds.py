"""Walk-forward folds: which days each fold sees, and that no later day reaches a fold."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lobsearch.config import PrepConfig, validate_run
from lobsearch.data.days import discover_export
from lobsearch.data.folds import fold_export, fold_key, walk_forward
from lobsearch.data.pipeline import cache_key, prepare
from lobsearch.errors import ConfigError
from lobsearch.recipe import build_run, fit_run
from lobsearch.tuner import FoldGate

from upstream_export import Upstream, write_upstream_export

DATES = tuple(f"202401{d:02d}" for d in range(2, 12))  # 10 training days


def test_blocks_follow_a_first_training_block_and_each_fold_trains_on_everything_before_its_block() -> None:
    folds = walk_forward(DATES, folds=3, embargo_days=0)
    assert [f.val for f in folds] == [DATES[4:6], DATES[6:8], DATES[8:10]]  # 10 // 4 = 2 days each
    assert [f.train for f in folds] == [DATES[:4], DATES[:6], DATES[:8]]
    assert all(f.count == 3 and not f.embargo for f in folds)


def test_the_embargo_removes_the_days_just_before_each_block_from_training() -> None:
    folds = walk_forward(DATES, folds=2, embargo_days=2)
    for fold in folds:
        assert fold.embargo == DATES[len(fold.train):len(fold.train) + 2]
        assert fold.train[-1] < fold.embargo[0] <= fold.embargo[-1] < fold.val[0]
        assert not set(fold.train) & set(fold.val)
    assert "2 embargoed" in folds[0].describe()


@pytest.mark.parametrize("folds, embargo, days", [(3, 0, 3), (2, 2, 4), (5, 0, 5)])
def test_folds_that_leave_a_fold_without_days_are_refused_naming_the_keys_and_values(folds, embargo, days) -> None:
    with pytest.raises(ConfigError) as caught:
        walk_forward(DATES[:days], folds=folds, embargo_days=embargo, source="space.yaml")
    message = str(caught.value)
    for text in ("space.yaml", "objective.folds / objective.embargo_days", f"{folds} folds",
                 f"embargo of {embargo} day", f"at least {folds + 1 + embargo} training days", f"has {days} training"):
        assert text in message, message


def test_a_fold_export_moves_days_between_splits_and_gets_its_own_cache_key(small_export: Path) -> None:
    export = discover_export(small_export)
    train = [d.date for d in export.splits["train"]]
    fold = walk_forward(train, folds=2, embargo_days=0)[0]
    view = fold_export(export, fold)
    assert [d.date for d in view.splits["train"]] == list(fold.train)
    assert [(d.split, d.date) for d in view.splits["val"]] == [("val", d) for d in fold.val]
    assert "test" not in view.splits and view.root == export.root
    keys = {cache_key(export, PrepConfig())} | {cache_key(fold_export(export, f), PrepConfig())
                                                for f in walk_forward(train, folds=2, embargo_days=0)}
    assert len(keys) == 3
    assert fold_key("abc", 2) == "abc/fold2"


def _tiny_run(export: Path, horizon: int) -> object:
    return validate_run({
        "data": {"export": str(export), "window": 20, "horizon": horizon, "stride": 5},
        "model": {"name": "lstm_tiny", "hidden_size": 4},
        "train": {"epochs": 2, "steps_per_epoch": 3, "batch_size": 16, "device": "cpu", "seed": 3,
                  "max_eval_windows": 200, "num_threads": 1},
    }, "test")


def _fold_view(root: Path, cache: Path, index: int, horizon: int) -> dict:
    """Fold ``index`` of 2 (embargo 1) prepared and trained briefly: what must not move."""
    export = discover_export(root)
    folds = walk_forward([d.date for d in export.splits["train"]], folds=2, embargo_days=1)
    prepared = prepare(fold_export(export, folds[index - 1]), PrepConfig(), engine="local", cache_dir=cache)
    built = build_run(_tiny_run(root, horizon), prepared, device="cpu")
    trained = []  # the weights after every epoch (which epoch is *best* is the block's to say)
    fit_run(built, on_epoch=lambda _: trained.append({k: v.clone() for k, v in built.model.state_dict().items()}))
    return {"fold": folds[index - 1], "mean": prepared.stats.mean, "std": prepared.stats.std,
            "train": (built.train.x, built.train.ends, built.train.y), "val_x": built.val.x, "trained": trained}


def _shift_day(root: Path, date: str) -> None:
    """Rewrite one day's features with every book, derived and flow value moved (columns 0-83;
    its gates, categorical columns and labels kept)."""
    for path in root.glob(f"*/{date}_*.npy"):
        if path.name.endswith(("_features.npy", "_sequences.npy")):
            values = np.load(path)
            values[..., :84] = values[..., :84] * 1.5 + 3.0
            np.save(path, values)


def _check_fold_is_blind_to_later_days(root: Path, tmp_path: Path, horizon: int) -> None:
    before = _fold_view(root, tmp_path / "cache", 1, horizon)
    fold = before["fold"]
    later = [*fold.embargo, *fold.val] + [p.name.split("_")[0] for p in sorted(root.glob("*/*_*.npy"))
                                          if p.name.split("_")[0] > fold.val[-1]]
    for date in dict.fromkeys(later):
        _shift_day(root, date)
    after = _fold_view(root, tmp_path / "cache", 1, horizon)
    assert after["fold"] == fold
    np.testing.assert_array_equal(after["mean"], before["mean"])
    np.testing.assert_array_equal(after["std"], before["std"])
    for a, b in zip(after["train"], before["train"]):
        assert torch.equal(a, b)
    assert len(after["trained"]) == len(before["trained"]) == 2
    for a, b in zip(after["trained"], before["trained"]):
        assert all(torch.equal(a[k], b[k]) for k in b)
    assert not torch.equal(after["val_x"], before["val_x"]), "the shifted validation block is seen by validation"


def test_changing_fold_ks_block_or_any_later_day_never_moves_its_statistics_windows_or_weights(
        tmp_path: Path) -> None:
    from lobsearch.synth import write_synthetic_export

    root = write_synthetic_export(tmp_path / "flat", days=8, rows=1200, seed=2, splits=(0.75, 0.125, 0.125))
    _check_fold_is_blind_to_later_days(root, tmp_path, horizon=20)


def test_the_same_holds_on_an_exporter_style_windowed_export(tmp_path: Path) -> None:
    days = tuple(("train", f"202502{d:02d}") for d in (3, 4, 5, 6, 7)) + (("val", "20250210"), ("test", "20250211"))
    root = tmp_path / "upstream"
    write_upstream_export(root, Upstream(days=days, rows=900, stride=10, horizons=(10,)))
    _check_fold_is_blind_to_later_days(root, tmp_path, horizon=10)


def test_the_fold_gate_stops_a_trial_weaker_than_its_peers_after_a_fold_and_never_after_the_last() -> None:
    gate = FoldGate("val_macro_f1", sign=1, folds=3, min_seen=2)

    def end(score: float, done: int) -> dict:
        return {"fold_end": True, "folds_done": done, "val_macro_f1": score}

    assert not gate("a", end(0.50, 1)) and not gate("b", end(0.40, 1))  # too few peers yet
    assert gate("c", end(0.30, 1))  # below the median of 0.50, 0.40, 0.30
    assert not gate("d", end(0.60, 1))
    assert not gate("e", {"fold_end": False, "folds_done": 0, "val_macro_f1": 0.1})  # mid-fold: ASHA's job
    assert not gate("f", end(0.0, 3))  # the last fold: nothing left to save
    assert gate.seen == {1: [0.5, 0.4, 0.3, 0.6]}


def test_a_resumed_fold_gate_has_seen_the_fold_ends_reported_before_and_judges_as_the_first_would(
        tmp_path: Path) -> None:
    import json

    def rows(scores: list[float]) -> list[dict]:  # 2 epochs per fold; fold ends carry the mean so far
        return [{"fold_end": epoch % 2 == 0, "folds_done": epoch // 2 if epoch % 2 == 0 else (epoch - 1) // 2,
                 "val_macro_f1": scores[(epoch - 1) // 2]} for epoch in range(1, 2 * len(scores) + 1)]

    reported = {"a": rows([0.50, 0.55, 0.60]), "b": rows([0.40, 0.45]), "c": rows([0.30])}
    before = FoldGate("val_macro_f1", sign=1, folds=3, min_seen=2)
    for trial_id, trial_rows in reported.items():
        for row in trial_rows:
            before(trial_id, row)
        folder = tmp_path / f"replay_trial_{trial_id}"
        folder.mkdir()
        lines = [json.dumps(row) for row in trial_rows]
        (folder / "result.json").write_text("\n".join(lines) + ("\n" if trial_id != "c" else '\n{"fold_e'))
    resumed = FoldGate("val_macro_f1", sign=1, folds=3, min_seen=2).seen_before(tmp_path)
    assert resumed.seen == {1: [0.50, 0.40, 0.30], 2: [0.55, 0.45]} and sorted(before.seen[1]) == sorted(resumed.seen[1])
    weak = {"fold_end": True, "folds_done": 1, "val_macro_f1": 0.35}
    assert resumed("d", dict(weak)) == before("d", dict(weak)) is True  # a fresh gate would let it run on
    assert not FoldGate("val_macro_f1", sign=1, folds=3, min_seen=2)("d", dict(weak))


def test_the_fold_gate_follows_a_minimized_objective() -> None:
    gate = FoldGate("val_loss", sign=-1, folds=2, min_seen=1)
    assert not gate("a", {"fold_end": True, "folds_done": 1, "val_loss": 0.9})
    assert not gate("b", {"fold_end": True, "folds_done": 1, "val_loss": 0.7})
    assert gate("c", {"fold_end": True, "folds_done": 1, "val_loss": 1.2})
