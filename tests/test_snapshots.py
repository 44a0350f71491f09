"""lobsearch.snapshots on Ray 2.60's private experiment checkpoint manager: a save after each trial
checkpoint, none sooner than 19 x the last save's duration, Tune's fixed period left alone."""

from __future__ import annotations

import time
from types import SimpleNamespace

from lobsearch import snapshots


class Syncer:
    def sync_up(self, local: str, remote: str, exclude=None) -> bool:
        return True

    def wait(self) -> None:
        pass


def manager(tmp_path, period="auto"):
    from ray.tune.execution.experiment_state import _ExperimentCheckpointManager

    snapshots.install()
    storage = SimpleNamespace(experiment_driver_staging_path=str(tmp_path), experiment_fs_path=str(tmp_path),
                              syncer=Syncer())
    return _ExperimentCheckpointManager(storage=storage, checkpoint_period=period, sync_every_n_trial_checkpoints=None)


def test_each_trial_checkpoint_asks_for_a_save_that_waits_for_its_budget(tmp_path):
    saves = []

    def save() -> None:
        time.sleep(0.02)
        saves.append(time.monotonic())

    found, begun = manager(tmp_path), snapshots.saves_begun()
    found.sync_up_experiment_state(save)  # the first save is due at once
    assert len(saves) == 1 and found._lobsearch_wait_s >= snapshots.BUDGET * 0.02
    assert snapshots.saves_begun() == begun, "Tune's periodic save is not forced: not counted"
    found.on_trial_checkpoint(SimpleNamespace())
    found.sync_up_experiment_state(save)
    assert len(saves) == 1 and found._should_force_sync_up, "too soon: the request waits"
    time.sleep(found._lobsearch_wait_s)
    found.sync_up_experiment_state(save)
    assert len(saves) == 2 and not found._should_force_sync_up
    assert snapshots.saves_begun() == begun + 1
    found.sync_up_experiment_state(save)
    assert len(saves) == 2, "no checkpoint since: Tune's own period (10 s or more) applies"


def test_even_a_quick_save_sets_a_wait_of_its_budget(tmp_path):
    saves = []
    found = manager(tmp_path)
    found.sync_up_experiment_state(lambda: saves.append(1))
    assert 0.0 < found._lobsearch_wait_s < 1.0
    found.on_trial_checkpoint(SimpleNamespace())
    found.sync_up_experiment_state(lambda: saves.append(1))
    assert saves == [1] and found._should_force_sync_up, "the request waits for the budget"
    time.sleep(found._lobsearch_wait_s)
    found.sync_up_experiment_state(lambda: saves.append(1))
    assert saves == [1, 1] and not found._should_force_sync_up


def test_a_fixed_period_keeps_tunes_behaviour_and_install_is_idempotent(tmp_path):
    from ray.tune.execution.experiment_state import _ExperimentCheckpointManager

    snapshots.install()
    patched = _ExperimentCheckpointManager.sync_up_experiment_state
    snapshots.install()
    assert _ExperimentCheckpointManager.sync_up_experiment_state is patched
    saves = []
    found = manager(tmp_path, period=3600)
    found.sync_up_experiment_state(lambda: saves.append(1))
    found.on_trial_checkpoint(SimpleNamespace())  # Tune's: no forced save without num_to_keep
    found.sync_up_experiment_state(lambda: saves.append(1))
    assert saves == [1] and not found._should_force_sync_up


def checkpoints(folder, count: int):
    folder.mkdir()
    for i in range(count):
        (folder / f"checkpoint_{i:06d}").mkdir()
        (folder / f"checkpoint_{i:06d}" / "fit.pt").write_bytes(b"w" * 100)
    (folder / "result.json").write_text("{}")
    return [folder / f"checkpoint_{i:06d}" for i in range(count)]


def test_pruning_keeps_the_last_checkpoint_and_everything_else_of_the_trial(tmp_path):
    kept = checkpoints(tmp_path / "trial", 4)[-1]
    assert snapshots.prune_checkpoints(kept) == 300
    assert sorted(p.name for p in (tmp_path / "trial").iterdir()) == ["checkpoint_000003", "result.json"]
    assert snapshots.prune_checkpoints(tmp_path / "elsewhere" / "checkpoint_000001") == 0  # not a local folder


def test_a_finished_trial_is_pruned_only_once_a_save_has_begun_after_it_finished(tmp_path, monkeypatch):
    from lobsearch.tuner import CheckpointPruner

    saved = [float("-inf")]
    monkeypatch.setattr(snapshots, "last_save_started", lambda: saved[0])
    first, second = checkpoints(tmp_path / "a", 3), checkpoints(tmp_path / "b", 2)
    pruner = CheckpointPruner()
    trial = SimpleNamespace(checkpoint=SimpleNamespace(path=str(first[-1])))
    pruner.on_trial_complete(iteration=1, trials=[], trial=trial)
    pruner.on_step_end(iteration=1, trials=[])
    assert all(p.is_dir() for p in first), "no save has recorded it finished: a resume may still need them"
    saved[0] = time.monotonic()
    pruner.on_trial_complete(iteration=2, trials=[], trial=SimpleNamespace(checkpoint=SimpleNamespace(path=str(second[-1]))))
    pruner.on_step_end(iteration=2, trials=[])
    assert [p.is_dir() for p in first] == [False, False, True] and all(p.is_dir() for p in second)
    assert pruner.freed == 200 and len(pruner.waiting) == 1


def test_the_run_record_is_compact_json_and_loads_back_the_same_with_bounded_deques():
    from collections import deque

    from ray.tune.trainable.metadata import _TrainingRunMetadata
    from ray.tune.utils.serialization import TuneFunctionEncoder

    snapshots.install()
    record = _TrainingRunMetadata()
    for step, value in enumerate([0.5, 0.25, 0.75, 1.0, 0.125, 0.5, 2.0], start=1):
        record.update_metric("val_loss", value, step=step)
    record.last_result = {"val_loss": 0.5, "epoch": 7}
    text = record.get_json_state()
    assert "\n" not in text and "deque" not in text  # one line, no cloudpickled deque
    back = _TrainingRunMetadata.from_json_state(text)
    assert back.metric_analysis == record.metric_analysis and back.last_result == record.last_result
    assert {n: list(q) for n, q in back.metric_n_steps["val_loss"].items()} == \
        {n: list(q) for n, q in record.metric_n_steps["val_loss"].items()}
    back.update_metric("val_loss", 3.0, step=8)  # the deques stay bounded at n after a resume
    assert [q.maxlen for q in back.metric_n_steps["val_loss"].values()] == [5, 10]
    assert back.metric_analysis["val_loss"]["last-5-avg"] == (0.125 + 0.5 + 2.0 + 1.0 + 3.0) / 5
    import json
    old = json.dumps({k: v for k, v in record.__dict__.items() if k != "_cached_json"}, indent=2,
                     cls=TuneFunctionEncoder)  # Tune's own format, deques cloudpickled
    assert isinstance(_TrainingRunMetadata.from_json_state(old).metric_n_steps["val_loss"]["5"], deque)
    assert len(text) < len(old) / 1.5

