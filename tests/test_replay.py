"""Replay: recorded learning curves validated, chosen and drawn; the command line refuses a bad
--replay before Ray starts; a replayed search runs the real driver without torch in its trials."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from lobsearch.errors import DataError
from lobsearch.replay import DRAWS, flat_config, load_replay, searched_names
from lobsearch.space import load_space
from lobsearch.tune import EXIT_BAD_INPUT, main

ROOT = Path(__file__).resolve().parents[1]
LSTM = ROOT / "search_spaces" / "lstm.yaml"
RECORDED = ROOT / "docs" / "bench" / "scale_source_results.json"
SEARCHED = ["data.window", "train.learning_rate", "lstm.pooling"]


def curve(trial_id: str, window: int, lr: float, pooling: str, f1: list[float], **extra) -> dict:
    history = [{"epoch": e, "val_macro_f1": v, "train_loss": 1.0 - v, "time_s": 9.0} for e, v in enumerate(f1, 1)]
    params = {"data.window": window, "train.learning_rate": lr, "lstm.pooling": pooling, "model.name": "lstm"}
    return {"trial_id": trial_id, "params": params, "history": history, "n_params": 1000, "latency_ms": 0.5, **extra}


@pytest.fixture
def recorded(tmp_path: Path) -> Path:
    trials = [
        curve("a", 10, 1e-3, "last", [0.40, 0.45, 0.50]),
        curve("b", 80, 1e-2, "attention", [0.30, 0.32]),
        curve("c", 40, 3e-4, "last", [0.50, 0.55, 0.60, 0.62]),
        {"trial_id": "never-ran", "params": {"data.window": 20}, "history": []},
    ]
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"export": "/data/export", "oracle_macro_f1": {"20": 0.7}, "trials": trials}))
    return path


def test_the_nearest_recorded_curve_is_replayed_as_recorded_and_held_past_its_end(recorded: Path):
    replay = load_replay(recorded, metric="val_macro_f1", searched=SEARCHED)
    assert [c.trial_id for c in replay.curves] == ["a", "b", "c"]  # the trial without epochs is left out
    rows, nearest = replay.curve_for({"data.window": 75, "train.learning_rate": 9e-3, "lstm.pooling": "attention"}, 4)
    assert nearest.trial_id == "b"
    assert [r["val_macro_f1"] for r in rows] == [0.30, 0.32, 0.32, 0.32]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4] and "time_s" not in rows[0]
    assert nearest.constants == {"n_params": 1000.0, "latency_ms": 0.5}
    assert replay.root == "/data/export" and replay.manifest == {"oracle_macro_f1": {"20": 0.7}}


def test_distance_scales_numbers_over_the_recorded_range_and_compares_choices(recorded: Path):
    replay = load_replay(recorded, metric="val_macro_f1", searched=SEARCHED)
    a = {"data.window": 10, "train.learning_rate": 1e-3, "lstm.pooling": "last"}
    assert replay.distance(a, a) == 0.0
    assert replay.axes["train.learning_rate"].log and not replay.axes["data.window"].log
    far = {"data.window": 80, "train.learning_rate": 1e-2, "lstm.pooling": "attention"}
    lr = math.log10(1e-2 / 1e-3) / math.log10(1e-2 / 3e-4)  # log scale over the recorded 3e-4 .. 1e-2
    assert replay.distance(a, far) == pytest.approx(math.sqrt((1 + lr ** 2 + 1) / 3))
    assert replay.distance(a, {}) == 1.0  # a parameter only one side has counts fully


def test_the_model_draw_blends_neighbours_with_noise_seeded_by_the_configuration(recorded: Path):
    replay = load_replay(recorded, metric="val_macro_f1", searched=SEARCHED, draw="model")
    params = {"data.window": 30, "train.learning_rate": 5e-4, "lstm.pooling": "last"}
    first, _ = replay.curve_for(params, 5)
    again, _ = replay.curve_for(params, 5)
    other, _ = replay.curve_for({**params, "data.window": 50}, 5)
    assert first == again != other  # a trial restored from its checkpoint continues the same curve
    assert replay.noise["val_macro_f1"] > 0
    values = [r["val_macro_f1"] for r in first]
    assert 0.25 < min(values) and max(values) < 0.75


@pytest.mark.parametrize(("content", "rule"), [
    (None, "not found"),
    ("{not json", "not valid JSON"),
    ("[1, 2]", "not a lobsearch results.json"),
    ('{"trials": {}}', "not a lobsearch results.json"),
    ('{"trials": [{"trial_id": "x", "history": []}]}', "no trial records a learning curve of 'val_macro_f1'"),
    ('{"trials": [{"params": {"a": 1}, "history": [{"epoch": 1, "val_mcc": 0.1}]}]}', "metrics recorded: val_mcc"),
    ('{"trials": [{"params": {"other": 1}, "history": [{"epoch": 1, "val_macro_f1": 0.1}]}]}',
     "share no searched parameter"),
])
def test_a_bad_replay_file_is_an_error_naming_the_file_and_the_rule(tmp_path: Path, content: str | None, rule: str):
    path = tmp_path / "results.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(DataError, match="--replay .*results.json") as error:
        load_replay(path, metric="val_macro_f1", searched=SEARCHED)
    assert rule in str(error.value)


def test_replay_settings_are_checked(recorded: Path):
    with pytest.raises(DataError, match=r"--replay-epoch-s: .* >= 0 \(got -1\)"):
        load_replay(recorded, metric="val_macro_f1", searched=SEARCHED, epoch_s=-1)
    with pytest.raises(DataError, match="--replay-curves: unknown curve draw 'modle'; did you mean 'model'"):
        load_replay(recorded, metric="val_macro_f1", searched=SEARCHED, draw="modle")
    assert DRAWS == ("recorded", "model")


@pytest.mark.parametrize(("extra", "message"), [
    (["--replay", "missing.json"], "--replay missing.json: not found"),
    (["--replay-epoch-s", "0.1"], "--replay-epoch-s: only applies to a replay"),
    (["--replay-curves", "model"], "--replay-curves: only applies to a replay"),
    (["--replay", str(RECORDED), "--data", "/some/export"], "a replay reads no export"),
])
def test_the_command_line_refuses_a_bad_replay_before_ray_starts(capsys, monkeypatch, extra: list[str],
                                                                 message: str):
    import lobsearch.search

    # refused before the driver runs at all, so before any Ray (another test's may be running)
    monkeypatch.setattr(lobsearch.search, "run_search", lambda *a, **k: pytest.fail("the search started"))
    assert main([str(LSTM), *extra]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err


def test_help_describes_the_replay_flags(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    for phrase in ("--replay RESULTS.json", "never load torch", "--replay-epoch-s S", "--replay-curves {recorded,model}"):
        assert phrase in out


def test_the_shipped_recording_replays_the_lstm_space():
    space = load_space(LSTM)
    names = searched_names(space)
    assert len(names) == 9 and "lstm.hidden_size" in names
    replay = load_replay(RECORDED, metric=space.spec.objective.metric, searched=names)
    assert len(replay.curves) >= 10 and set(replay.axes) == set(names)
    assert flat_config({"data": {"window": 3}, "lstm.pooling": "last"}) == {"data.window": 3, "lstm.pooling": "last"}


def _space(tmp_path: Path, **search) -> object:
    import yaml

    raw = yaml.safe_load(LSTM.read_text())
    raw["search"].pop("time_budget_s")
    raw["search"].pop("reeval_top", None)  # bounded by num_samples; a replay re-evaluates nothing anyway
    raw["search"].update({"num_samples": 6, "max_concurrent": 2, **search})
    raw["tracking"] = {"wandb": "disabled"}
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_space(path)


@pytest.mark.ray
def test_a_replayed_search_runs_the_driver_without_torch_in_its_trials(ray_session, tmp_path: Path, capsys):
    from lobsearch.search import Outcome, run_search

    space = _space(tmp_path)
    replay = load_replay(RECORDED, metric="val_macro_f1", searched=searched_names(space), epoch_s=0.01)
    storage = tmp_path / "runs"
    outcome = run_search(space, export=None, name="replayed", storage=str(storage), quiet=False, replay=replay)
    assert outcome is Outcome.FINISHED
    out = capsys.readouterr().out
    assert "no data is prepared" in out and "no test-split evaluation" in out
    assert "evaluating" not in out and "data config" not in out
    run_dir = storage / "replayed"
    results = json.loads((run_dir / "results.json").read_text())
    assert len(results["trials"]) == 6 and results["replay"]["source"] == str(RECORDED)
    assert results["export"] == replay.root and "test" not in (results["best"] or {})
    assert all(t["history"] and t["status"] in ("completed", "pruned") for t in results["trials"])
    for trial in results["trials"]:  # every earlier checkpoint deleted, the one the results name kept
        kept = Path(trial["checkpoint"])
        assert sorted(kept.parent.glob("checkpoint_*")) == [kept] and kept.name != "checkpoint_000000"
    assert (run_dir / "report.html").is_file() and replay.root in (run_dir / "best_config.yaml").read_text()
    flags = {json.loads(line)["torch_in_trial"] for path in run_dir.glob("*/result.json")
             for line in path.read_text().splitlines()}
    assert flags == {False}
    record = json.loads((run_dir / "lobsearch-search.json").read_text())
    assert record["replay"] == replay.record()


@pytest.mark.ray
def test_a_replay_resumes_with_the_replay_it_recorded_and_refuses_another(ray_session, tmp_path: Path, recorded: Path):
    from lobsearch.search import Outcome, run_search

    space = _space(tmp_path, num_samples=2)
    replay = load_replay(RECORDED, metric="val_macro_f1", searched=searched_names(space), epoch_s=0.01)
    storage = str(tmp_path / "runs")
    assert run_search(space, export=None, name="r", storage=storage, quiet=True, replay=replay) is Outcome.FINISHED
    assert run_search(space, export=None, name="r", storage=storage, quiet=True, resume=True) is Outcome.FINISHED
    other = load_replay(RECORDED, metric="val_macro_f1", searched=searched_names(space), epoch_s=0.5)
    with pytest.raises(DataError, match="search 'r' replays"):
        run_search(space, export=None, name="r", storage=storage, quiet=True, replay=other)


@pytest.mark.ray
def test_a_walk_forward_replay_reports_folds_as_a_trained_trial_does_and_the_fold_gate_stops_weak_ones(
        ray_session, tmp_path: Path):
    from lobsearch.search import Outcome, run_search

    # one trial at a time: which trials reach a fold's end before which is then fixed by the seeded
    # searcher, so the gate's decisions are too (two at a time, the weakest trial was sometimes
    # among the first two to end fold 1, which the gate never stops)
    space = _space(tmp_path, num_samples=8, max_concurrent=1, scheduler="none")
    raw = yaml.safe_load(Path(space.source).read_text())
    raw["objective"] = {"metric": "val_macro_f1", "protocol": "walk_forward", "folds": 3}
    raw["fixed"]["train"]["epochs"] = 2
    Path(space.source).write_text(yaml.safe_dump(raw))
    space = load_space(space.source)
    replay = load_replay(RECORDED, metric="val_macro_f1", searched=searched_names(space), epoch_s=0.01, draw="model")
    storage = tmp_path / "runs"
    assert run_search(space, export=None, name="wf", storage=str(storage), quiet=True, replay=replay) is Outcome.FINISHED
    run_dir = storage / "wf"
    results = json.loads((run_dir / "results.json").read_text())
    assert len(results["trials"]) == 8
    reports = [[json.loads(line) for line in path.read_text().splitlines()] for path in run_dir.glob("*/result.json")]
    folds_done = []
    for rows in reports:
        assert [r["epoch"] for r in rows] == list(range(1, len(rows) + 1))  # counted across folds
        assert [(r["fold"], r["fold_epoch"]) for r in rows] == [(1 + i // 2, 1 + i % 2) for i in range(len(rows))]
        for row in rows:
            if row["fold_end"]:  # the objective is the mean of each done fold's best epoch
                assert len(row["fold_scores"]) == row["folds_done"] == row["fold"]
                assert row["val_macro_f1"] == pytest.approx(sum(row["fold_scores"]) / row["folds_done"])
        folds_done.append(rows[-1]["folds_done"])
        assert rows[-1]["folds"] == 3 and len(rows) == 2 * rows[-1]["folds_done"]
    assert 3 in folds_done and min(folds_done) < 3, "every fold run by some trials, weak ones stopped between folds"
    every_fold = [rows[-1]["fold_scores"] for rows in reports if rows[-1]["folds_done"] == 3]
    assert all(len(set(scores)) == 3 for scores in every_fold)  # the model draw: each fold its own noise
    best = results["best"]
    assert best is not None and best["search_val"]["folds_done"] == best["search_val"]["folds"] == 3
