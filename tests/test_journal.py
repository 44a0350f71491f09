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


@pytest.mark.ray
def test_a_resume_from_an_older_save_keeps_every_journaled_trial_and_runs_none_again(ray_session, tmp_path: Path,
                                                                                     monkeypatch):
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
    callbacks = lobsearch.tuner._callbacks
    monkeypatch.setattr(lobsearch.tuner, "_callbacks",
                        lambda plan: [*callbacks(plan), CopyTheSaveAt(str(run_dir), str(keep), at=3)])
    storage = str(tmp_path / "runs")
    assert run_search(space, export=None, name="j", storage=storage, quiet=True, replay=replay) is Outcome.FINISHED
    first = json.loads((run_dir / "results.json").read_text())
    epochs = epochs_reported(run_dir)
    assert len(journal.read(run_dir)) == 6 and len(epochs) == 6

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

    monkeypatch.setattr(lobsearch.tuner, "_callbacks", callbacks)
    assert run_search(space, export=None, name="j", storage=storage, quiet=True, resume=True) is Outcome.FINISHED
    after = json.loads((run_dir / "results.json").read_text())
    assert sorted(t["trial_id"] for t in after["trials"]) == sorted(t["trial_id"] for t in first["trials"])
    assert epochs_reported(run_dir) == epochs, "no trial trained again"
    assert {t["trial_id"]: t["status"] for t in after["trials"]} == {t["trial_id"]: t["status"] for t in first["trials"]}
    state = json.loads(next(run_dir.glob("experiment_state-*.json")).read_text())
    assert all(json.loads(static)["status"] == "TERMINATED" for static, _ in state["trial_data"])
    assert len(state["trial_data"]) == 6 and unfinished | missing <= {t["trial_id"] for t in first["trials"]}
    searcher = pickle.loads(next(run_dir.glob("searcher-state-*.pkl")).read_bytes())
    study = searcher["_ot_study"].trials
    assert len(study) == 6 and all(t.state.is_finished() and t.state.name != "RUNNING" for t in study)
    best = {round(v, 9) for t in study for v in (t.values or [])}
    assert {round(t["history"][-1]["val_macro_f1"], 9) for t in first["trials"]} <= best | {None}
