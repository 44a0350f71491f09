"""lobsearch.journal: trials that finished after Tune's last experiment-state save are kept by a
resume (not run again, not lost), the searcher told their results, the trial count unchanged."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from ray import tune

from lobsearch import journal
from lobsearch.replay import load_replay, searched_names
from lobsearch.space import load_space

ROOT = Path(__file__).resolve().parents[1]
LSTM = ROOT / "search_spaces" / "lstm.yaml"
RECORDED = ROOT / "docs" / "bench" / "scale_source_results.json"
SAVED = ("experiment_state-*.json", "searcher-state-*.pkl", "search_gen_state-*.json")


def fake_trial(trial_id: str, status: str = "RUNNING") -> SimpleNamespace:
    static = json.dumps({"trial_id": trial_id, "status": status, "config": {"a": 1}})
    return SimpleNamespace(trial_id=trial_id, get_json_state=lambda: (static, json.dumps({"last_result": {}})))


def test_the_journal_records_trials_terminated_and_skips_a_partly_written_last_line(tmp_path: Path):
    journal.record(tmp_path, fake_trial("a"))
    journal.record(tmp_path, fake_trial("b"))
    with open(tmp_path / journal.FILE, "a") as f:
        f.write('{"trial_id": "c", "sta')  # the driver killed mid-line
    found = journal.read(tmp_path)
    assert list(found) == ["a", "b"]
    assert json.loads(found["a"]["state"])["status"] == "TERMINATED"
    journal.start(tmp_path)
    assert journal.read(tmp_path) == {}


def test_without_a_journal_or_a_saved_state_nothing_changes(tmp_path: Path):
    assert not journal.reconcile(tmp_path, tmp_path)
    journal.record(tmp_path, fake_trial("a"))
    assert not journal.reconcile(tmp_path / "no-experiment", tmp_path)


def run_record(iteration: int) -> str:
    """A Tune runtime record whose last result is epoch ``iteration``."""
    from ray.tune.trainable.metadata import _TrainingRunMetadata

    record = _TrainingRunMetadata()
    record.last_result = {"training_iteration": iteration}
    return record.get_json_state()


def checkpointed(trial_id: str, iteration: int) -> SimpleNamespace:
    from ray.tune.trainable.metadata import _TrainingRunMetadata

    record = _TrainingRunMetadata()
    record.last_result = {"training_iteration": iteration}
    record.update_metric("score", iteration / 10, step=iteration)
    static = json.dumps({"trial_id": trial_id, "status": "RUNNING", "config": {"a": iteration}})
    return SimpleNamespace(trial_id=trial_id, run_metadata=record, get_json_state=lambda: (static, "unused"))


def started(trial_id: str) -> SimpleNamespace:
    """A trial as Tune starts it: no result, no checkpoint."""
    from ray.tune.trainable.metadata import _TrainingRunMetadata

    static = json.dumps({"trial_id": trial_id, "status": "RUNNING", "config": {"a": 0}})
    return SimpleNamespace(trial_id=trial_id, run_metadata=_TrainingRunMetadata(),
                           get_json_state=lambda: (static, "unused"))


def test_a_journaled_checkpoint_reads_back_as_tunes_own_record_of_it(tmp_path: Path):
    from ray.tune.trainable.metadata import _TrainingRunMetadata

    trial = checkpointed("a", 3)
    journal.record_checkpoint(tmp_path, trial, segment=1)
    run = journal.read_checkpoints(tmp_path)["a"]["run"]
    assert json.loads(run) == json.loads(trial.run_metadata.get_json_state())
    again = _TrainingRunMetadata.from_json_state(run)
    assert again.last_result == {"training_iteration": 3} and again.metric_analysis == trial.run_metadata.metric_analysis
    with open(tmp_path / journal.CHECKPOINTS.format(1), "a") as f:  # a record no Ray here can read
        f.write(json.dumps({"trial_id": "b", "run_pickle": "bm90IGEgcGlja2xl"}) + "\n")
    assert list(journal.read_checkpoints(tmp_path)) == ["a"], "the saved state's checkpoint of b stands"


def saved_state(folder: Path, trials: dict[str, tuple[str, int]]) -> Path:
    """An experiment_state file holding ``trials`` as {id: (status, epoch of its last result)}."""
    folder.mkdir(parents=True, exist_ok=True)
    data = [[json.dumps({"trial_id": t, "status": status}), run_record(it)] for t, (status, it) in trials.items()]
    path = folder / "experiment_state-2026-12-03_00-00-00.json"
    path.write_text(json.dumps({"trial_data": data}))
    return path


def saved_epochs(path: Path) -> dict[str, int]:
    from ray.tune.utils.serialization import _loads_with_cloudpickle

    return {json.loads(static)["trial_id"]: _loads_with_cloudpickle(run)["last_result"].get("training_iteration", 0)
            for static, run in json.loads(path.read_text())["trial_data"]}


def test_a_running_trial_resumes_from_its_last_journaled_checkpoint_when_later_than_the_save(tmp_path: Path):
    state = saved_state(tmp_path / "exp", {"a": ("RUNNING", 2), "b": ("RUNNING", 3), "c": ("TERMINATED", 4),
                                           "d": ("PENDING", 0)})
    journal.record_checkpoint(tmp_path, checkpointed("a", 3), segment=5)
    journal.record_checkpoint(tmp_path, checkpointed("a", 4), segment=6)  # the later segment wins
    journal.record_checkpoint(tmp_path, checkpointed("b", 3), segment=6)  # the save's own epoch: kept as saved
    journal.record_checkpoint(tmp_path, checkpointed("c", 4), segment=6)  # finished in the save: left alone
    journal.record_checkpoint(tmp_path, checkpointed("e", 1), segment=6)  # started after the save, no static part
    journal.record_checkpoint(tmp_path, checkpointed("f", 1), segment=5, with_state=True)  # started after the save
    journal.record_checkpoint(tmp_path, checkpointed("f", 2), segment=6)  # its static part is in segment 5's line
    journal.record_checkpoint(tmp_path, started("g"), segment=6, with_state=True)  # started after it, no checkpoint
    journal.record_checkpoint(tmp_path, started("d"), segment=6, with_state=True)  # saved pending, started since
    journal.record_checkpoint(tmp_path, started("h"), segment=6, with_state=True)  # started after the save,
    journal.record_checkpoint(tmp_path, checkpointed("h", 1), segment=6)  # and checkpointed in the same segment
    with open(tmp_path / journal.CHECKPOINTS.format(6), "a") as f:
        f.write('{"trial_id": "d", "ru')  # the driver killed mid-line
    assert list(journal.read_checkpoints(tmp_path)) == ["a", "f", "b", "c", "e", "g", "d", "h"]
    assert json.loads(journal.read_checkpoints(tmp_path)["f"]["state"])["config"] == {"a": 1}
    kept = journal.reconcile(tmp_path / "exp", tmp_path)
    assert kept.advanced == ("a",) and kept.restarted == ("f", "g", "h") and not kept.finished and not kept.added
    assert "1 running trials resume from their last journaled checkpoint" in kept.line()
    assert "3 running trials that started after the save resume under their own id" in kept.line()
    assert saved_epochs(state) == {"a": 4, "b": 3, "c": 4, "d": 0, "f": 2, "g": 0, "h": 1}, "e starts anew as a new trial"
    assert [json.loads(static)["status"] for static, _ in json.loads(state.read_text())["trial_data"]] == [
        "RUNNING", "RUNNING", "TERMINATED", "PENDING", "RUNNING", "RUNNING", "RUNNING"]
    assert journal.read_checkpoints(tmp_path) == {}, "applied: the segments are removed"
    assert not journal.reconcile(tmp_path / "exp", tmp_path), "a second resume changes nothing"


def test_the_journal_keeps_the_checkpoints_of_the_last_two_saves_only(tmp_path: Path, monkeypatch):
    import lobsearch.tuner
    from lobsearch import snapshots

    recorder = lobsearch.tuner.TrialJournal(tmp_path)
    for saves, (trial, iteration) in enumerate([("a", 1), ("b", 1), ("a", 2), ("a", 3)]):
        monkeypatch.setattr(snapshots, "saves_begun", lambda saves=saves: saves)
        recorder.on_trial_save(0, [], checkpointed(trial, iteration))
        recorder.on_trial_save(0, [], checkpointed("z", saves))
    # save 3 has begun, so save 2 (which holds everything journaled before it) is in the folder
    assert sorted(p.name for p in tmp_path.iterdir()) == [journal.CHECKPOINTS.format(2), journal.CHECKPOINTS.format(3)]
    found = journal.read_checkpoints(tmp_path)
    assert {t: json.loads(e["run"])["last_result"]["training_iteration"] for t, e in found.items()} == {"a": 3, "z": 3}
    journal.start(tmp_path)
    assert list(tmp_path.iterdir()) == []


class CopyTheSaveAt(tune.Callback):
    """Copies Tune's saved state files when the ``at``-th trial finishes: a save older than the
    end, as a driver killed then would leave it."""

    def __init__(self, folder: str, keep: str, at: int):
        self.folder, self.keep, self.at, self.done = folder, keep, at, 0

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        self.done += 1
        if self.done == self.at:
            Path(self.keep).mkdir()
            for pattern in SAVED:
                for path in Path(self.folder).glob(pattern):
                    shutil.copy2(path, self.keep)


def epochs_reported(run_dir: Path) -> dict[str, int]:
    return {p.parent.name: len(p.read_text().splitlines()) for p in run_dir.glob("*/result.json")}


def rows(run_dir: Path, trial_id: str) -> list[dict]:
    (path,) = run_dir.glob(f"*_{trial_id}_*/result.json")
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.ray
@pytest.mark.parametrize("killed", ["after-it-finished", "mid-trial", "before-its-first-checkpoint"])
def test_a_resume_from_an_older_save_keeps_every_journaled_trial_and_runs_none_again(ray_session, tmp_path: Path,
                                                                                     monkeypatch, killed: str):
    """``mid-trial``: one of the trials started after the older save is, at the kill, at its first
    checkpoint (not finished): it resumes from it under its own id, its searcher trial is told its
    end, and its result.json has each epoch once. ``before-its-first-checkpoint``: that trial had
    only started: it trains again from its first epoch, under its own id, in its own folder."""
    import lobsearch.tuner
    from lobsearch.search import Outcome, run_search

    raw = yaml.safe_load(LSTM.read_text())
    raw["search"].pop("time_budget_s")
    raw["search"].pop("reeval_top", None)
    raw["search"].update({"num_samples": 6, "max_concurrent": 2})
    raw["tracking"] = {"wandb": "disabled"}
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(raw))
    space = load_space(tmp_path / "space.yaml")
    replay = load_replay(RECORDED, metric="val_macro_f1", searched=searched_names(space), epoch_s=0.01)
    run_dir, keep = tmp_path / "runs" / "j", tmp_path / "older-save"
    callbacks, drop_checkpoints, segments = lobsearch.tuner._callbacks, journal.drop_checkpoints, []
    append, lines = journal._append, []
    monkeypatch.setattr(lobsearch.tuner, "_callbacks",
                        lambda plan: [*callbacks(plan), CopyTheSaveAt(str(run_dir), str(keep), at=3)])
    monkeypatch.setattr(journal, "drop_checkpoints",  # what the search's end removes, counted first
                        lambda folder, **kw: segments.append(journal.read_checkpoints(folder)) or drop_checkpoints(
                            folder, **kw))
    monkeypatch.setattr(journal, "_append", lambda path, line: lines.append((path.name, line)) or append(path, line))
    storage = str(tmp_path / "runs")
    assert run_search(space, export=None, name="j", storage=storage, quiet=True, replay=replay) is Outcome.FINISHED
    first = json.loads((run_dir / "results.json").read_text())
    epochs = epochs_reported(run_dir)
    assert len(journal.read(run_dir)) == 6 and len(epochs) == 6
    assert segments[-1] and set(segments[-1]) <= {t["trial_id"] for t in first["trials"]}, \
        "Tune's trial checkpoints were journaled"
    assert journal.read_checkpoints(run_dir) == {}, "the search's end removes them: its final save holds them"

    for pattern in SAVED:  # the older save back in place, as if the driver had been killed then
        for path in run_dir.glob(pattern):
            path.unlink()
        for path in keep.glob(pattern):
            shutil.copy2(path, run_dir)
    (run_dir / "results.json").unlink()
    older = json.loads(next(run_dir.glob("experiment_state-*.json")).read_text())
    saved = {json.loads(static)["trial_id"]: json.loads(static)["status"] for static, _ in older["trial_data"]}
    unfinished = {t for t, status in saved.items() if status != "TERMINATED"}
    missing = set(journal.read(run_dir)) - set(saved)
    assert missing, "the older save lacks the trials started after it"
    victim = None
    first_pids = {row["pid"] for trial in first["trials"] for row in rows(run_dir, trial["trial_id"])}
    if killed != "after-it-finished":  # not finished at the kill: the journal's lines up to then
        victim = sorted(missing)[0]
        ended = [line for line in (run_dir / journal.FILE).read_text().splitlines() if victim not in line]
        (run_dir / journal.FILE).write_text("".join(line + "\n" for line in ended))
        start, first_checkpoint = [line for name, line in lines if name.startswith("trial_checkpoints")
                                   and json.loads(line)["trial_id"] == victim][:2]
        assert "state" in json.loads(start), "a trial's first record in a segment, at its start, has its static part"
        kept = [start, first_checkpoint] if killed == "mid-trial" else [start]
        (run_dir / journal.CHECKPOINTS.format(99)).write_text("".join(line + "\n" for line in kept))
        if killed == "mid-trial":
            (folder,) = run_dir.glob(f"*_{victim}_*")  # its checkpoint, pruned when it finished, back as it was
            (folder / "checkpoint_000000").mkdir(exist_ok=True)
            (folder / "checkpoint_000000" / "replay.json").write_text(json.dumps({"epoch": 1}))

    monkeypatch.setattr(lobsearch.tuner, "_callbacks", callbacks)
    assert run_search(space, export=None, name="j", storage=storage, quiet=True, resume=True) is Outcome.FINISHED
    after = json.loads((run_dir / "results.json").read_text())
    assert sorted(t["trial_id"] for t in after["trials"]) == sorted(t["trial_id"] for t in first["trials"])
    others = {t["trial_id"] for t in first["trials"]} - {victim}
    assert {k: v for k, v in epochs_reported(run_dir).items() if f"_{victim}_" not in k} == {
        k: v for k, v in epochs.items() if f"_{victim}_" not in k}, "no other trial trained again"
    assert len(epochs_reported(run_dir)) == 6, "no trial folder left behind"
    assert ({t["trial_id"]: t["status"] for t in after["trials"] if t["trial_id"] in others}
            == {t["trial_id"]: t["status"] for t in first["trials"] if t["trial_id"] in others})
    if victim is not None:
        resumed = rows(run_dir, victim)
        assert [row["training_iteration"] for row in resumed] == list(range(1, len(resumed) + 1)), resumed
        trained_after = [row["pid"] not in first_pids for row in resumed]
        assert trained_after == ([False] + [True] * (len(resumed) - 1) if killed == "mid-trial"
                                 else [True] * len(resumed)) and len(resumed) >= 2, trained_after
    state = json.loads(max(run_dir.glob("experiment_state-*.json")).read_text())  # the resumed driver's
    assert all(json.loads(static)["status"] == "TERMINATED" for static, _ in state["trial_data"])
    assert len(state["trial_data"]) == 6 and unfinished | missing <= {t["trial_id"] for t in first["trials"]}
    searcher = pickle.loads(max(run_dir.glob("searcher-state-*.pkl")).read_bytes())
    study = searcher["_ot_study"].trials
    assert len(study) == 6 and all(t.state.is_finished() and t.state.name != "RUNNING" for t in study)
    best = {round(v, 9) for t in study for v in (t.values or [])}
    assert {round(t["history"][-1]["val_macro_f1"], 9) for t in first["trials"] if t["trial_id"] in others} <= \
        best | {None}
