"""The search: dry run, command-line errors, a smoke search on a local Ray, failing trials."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from lobsearch.config import load_run_config
from lobsearch.errors import DataError
from lobsearch.search import cluster_address, dry_run
from lobsearch.space import load_space
from lobsearch.tune import main

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "search_spaces" / "smoke.yaml"


def test_dry_run_builds_every_sampled_model(capsys: pytest.CaptureFixture[str]) -> None:
    configs = dry_run(load_space(ROOT / "search_spaces" / "all.yaml"), n=6)
    assert len(configs) == 6
    out = capsys.readouterr().out
    assert out.count("logits (2, 3)") == 6


def test_dry_run_command_needs_no_ray(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    def no_ray(*args: object, **kwargs: object) -> None:
        raise AssertionError("the dry run started Ray")

    monkeypatch.setattr(ray, "init", no_ray)
    assert main([str(SMOKE), "--dry-run"]) == 0
    assert "lstm_tiny" in capsys.readouterr().out


def test_bad_space_exits_2_before_ray(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("models: {lstn: {}}\nsearch: {num_sample: 3}\n")
    assert main([str(path)]) == 2
    err = capsys.readouterr().err
    assert "did you mean 'lstm'" in err and "did you mean 'num_samples'" in err and str(path) in err


def test_command_line_overrides_are_validated(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(SMOKE), "--num-samples", "0", "--dry-run"]) == 2
    assert "search.num_samples" in capsys.readouterr().err


def _walk_forward_space(tmp_path: Path, **objective: object) -> Path:
    body = yaml.safe_load(SMOKE.read_text())
    body["objective"] = {"metric": "val_macro_f1", "protocol": "walk_forward", **objective}
    path = tmp_path / "wf.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


@pytest.mark.parametrize("objective, argv, words", [
    ({"folds": 3, "embargo_days": 2}, [], ["objective.folds / objective.embargo_days", "3 folds", "embargo of 2",
                                          "at least 6 training days", "has 4 training day(s)"]),
    ({"folds": 1}, [], ["objective.folds", "greater than or equal to 2", "1"]),
    ({"embargo_days": -1}, [], ["objective.embargo_days", "-1"]),
    ({}, ["--reeval-top", "0"], ["search.reeval_top", "walk_forward needs it >= 1", "got 0"]),
])
def test_bad_walk_forward_settings_exit_2_before_ray_naming_the_key_and_the_value(
        objective, argv, words, small_export: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("Ray started"))
    space = _walk_forward_space(tmp_path, **objective)
    assert main([str(space), "--data", str(small_export), "--storage", str(tmp_path / "runs"), *argv]) == 2
    err = capsys.readouterr().err
    assert all(word in err for word in words), err


@pytest.mark.ray
@pytest.mark.slow
def test_a_walk_forward_search_scores_each_trial_by_the_mean_over_its_folds(ray_session, small_export: Path,
                                                                           tmp_path: Path) -> None:
    """4 training days, 2 folds: fold 1 trains on days 1-2 and validates on day 3, fold 2 trains
    on days 1-3 and validates on day 4; the winner is trained again on all 4 and chosen on val."""
    space = _walk_forward_space(tmp_path, folds=2)
    code = main([str(space), "--data", str(small_export), "--storage", str(tmp_path / "runs"), "--name", "wf",
                 "--quiet"])
    assert code == 0
    results = json.loads((tmp_path / "runs" / "wf" / "results.json").read_text())
    complete = [t for t in results["trials"] if t["best"] and t["best"]["folds_done"] == 2]
    assert complete
    for trial in complete:
        assert len(trial["fold_scores"]) == 2 and trial["best"]["folds"] == 2
        assert trial["best"]["val_macro_f1"] == pytest.approx(sum(trial["fold_scores"]) / 2)
        assert [h["epoch"] for h in trial["history"]] == list(range(1, len(trial["history"]) + 1))
        assert len(trial["history"]) > 3, "epochs count on across the folds (3 per fold)"
    best = results["best"]
    assert best["chosen_by"] == "reeval" and best["trial_id"] in {t["trial_id"] for t in complete}
    assert best["test"]["macro_f1"] > 0 and results["reeval"]["rows"][0]["rank"] == 1


@pytest.mark.ray
@pytest.mark.slow
def test_a_search_can_optimize_validation_net_bps_per_day(ray_session, small_export: Path, tmp_path: Path) -> None:
    body = yaml.safe_load(SMOKE.read_text())
    body["objective"] = {"metric": "val_net_bps_per_day"}
    body["search"].update(num_samples=3, reeval_top=2)
    path = tmp_path / "bps.yaml"
    path.write_text(yaml.safe_dump(body))
    assert main([str(path), "--data", str(small_export), "--storage", str(tmp_path / "runs"), "--name", "bps",
                 "--quiet"]) == 0
    results = json.loads((tmp_path / "runs" / "bps" / "results.json").read_text())
    assert results["objective"] == {"metric": "val_net_bps_per_day", "mode": "max"}
    for trial in results["trials"]:
        assert trial["best"]["val_net_bps_per_day"] == max(h["val_net_bps_per_day"] for h in trial["history"])
    rows = results["reeval"]["rows"]
    assert results["reeval"]["metric"] == "val_net_bps_per_day" and rows[0]["mean"] >= rows[-1]["mean"]
    assert results["best"]["trading"]["val"]["model"]["net_bps_per_day"] == pytest.approx(rows[0]["scores"][0])


def test_the_cluster_address_is_a_gcs_address_and_a_url_is_refused_naming_where_it_came_from(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert cluster_address(None) is None
    assert cluster_address("10.0.0.5:6379") == "10.0.0.5:6379"
    monkeypatch.setenv("RAY_ADDRESS", "auto")  # what `ray job submit` gives its entrypoint
    assert cluster_address(None) == "auto" and cluster_address("head:6379") == "head:6379"
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:8265")
    with pytest.raises(DataError, match=r"^\$RAY_ADDRESS: 'http://127.0.0.1:8265' is a Ray dashboard's address"):
        cluster_address(None)
    with pytest.raises(DataError, match=r"^--address: 'ray://head:10001' is a Ray Client address.*HOST:6379"):
        cluster_address("ray://head:10001")


def test_resume_needs_a_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(SMOKE), "--resume", "--storage", str(tmp_path)]) == 2
    assert "--resume needs --name" in capsys.readouterr().err


def _space(tmp_path: Path, **search: object) -> Path:
    body = yaml.safe_load(SMOKE.read_text())
    body["search"].update(search)
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


@pytest.mark.ray
@pytest.mark.slow
def test_smoke_search_leaves_results_a_user_can_act_on(ray_session, small_export: Path, tmp_path: Path) -> None:
    import tempfile

    leftovers = set(Path(tempfile.gettempdir()).glob("lobsearch-trial-*"))
    space = _space(tmp_path, num_samples=4, reduction_factor=2)
    code = main([str(space), "--data", str(small_export), "--storage", str(tmp_path / "runs"), "--name", "smoke"])
    assert code == 0
    assert set(Path(tempfile.gettempdir()).glob("lobsearch-trial-*")) <= leftovers, "a trial left its work folder"
    run_dir = tmp_path / "runs" / "smoke"
    results = json.loads((run_dir / "results.json").read_text())
    assert len(results["trials"]) == 4
    statuses = {t["status"] for t in results["trials"]}
    assert statuses <= {"completed", "early_stopped", "pruned"}
    assert "pruned" in statuses, "ASHA with reduction factor 2 stops some of 4 trials early"
    assert results["export_fingerprint"] and results["code"]["torch_version"].startswith("2.13")
    assert results["verdict"]["line"].startswith("verdict: ")
    assert {t["provenance"]["data_hash"] for t in results["trials"]} and all(
        t["provenance"]["device"] == "cpu" and t["provenance"]["seed"] == "0" for t in results["trials"])
    for trial in results["trials"]:
        assert trial["history"] and trial["history"][0]["epoch"] == 1
        assert trial["best"]["val_macro_f1"] == max(h["val_macro_f1"] for h in trial["history"])
    best, reeval = results["best"], results["reeval"]
    # the best two trials, each trained again with two fresh seeds; the best mean wins
    by_score = sorted(results["trials"], key=lambda t: -t["best"]["val_macro_f1"])
    assert {r["trial_id"] for r in reeval["rows"]} == {t["trial_id"] for t in by_score[:2]}
    assert reeval["seeds"] == [1, 2] and reeval["cost"]["runs"] == 4 and results["search_cost"]["trial_epochs"] > 0
    winner = reeval["rows"][0]
    assert winner["rank"] == 1 and winner["mean"] == max(r["mean"] for r in reeval["rows"])
    assert winner["low"] <= winner["mean"] <= winner["high"] and 0 <= winner["p_beats_rival"] <= 1
    assert (best["chosen_by"], best["trial_id"], best["seed"]) == ("reeval", winner["trial_id"], 1)
    assert best["val"]["macro_f1"] == pytest.approx(winner["scores"][0], abs=1e-6)
    assert len(best["seeds"]["test_macro_f1"]) == 2 and "2 seed(s) resampled" in best["verdict"]["method"]
    for split in ("val", "test"):
        assert set(best[split]) >= {"macro_f1", "accuracy", "mcc", "confusion"}
        assert set(best["baselines"][split]) >= {"majority_macro_f1", "previous_macro_f1"}
    run = load_run_config(run_dir / "best_config.yaml")
    assert run.data.window == best["params"]["data.window"] and run.train.seed == 1
    assert run.model.name == "lstm_tiny"
    csv_lines = (run_dir / "results.csv").read_text().strip().splitlines()
    assert len(csv_lines) == 5
    assert (run_dir / "report.html").is_file()


@pytest.mark.ray
@pytest.mark.slow
def test_a_failing_trial_is_marked_failed_and_the_search_goes_on(ray_session, small_export: Path, tmp_path: Path) -> None:
    body = yaml.safe_load(SMOKE.read_text())
    # a 5,000-row window cannot fit in a 3,000-row day: that trial has no windows and fails
    body["params"]["data.window"] = {"type": "categorical", "choices": [20, 5000]}
    body["search"].update(num_samples=4, max_failures=0, enqueue=[{"data.window": 5000}, {"data.window": 20}])
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(body))
    code = main([str(path), "--data", str(small_export), "--storage", str(tmp_path / "runs"), "--name", "fails"])
    assert code == 0
    results = json.loads((tmp_path / "runs" / "fails" / "results.json").read_text())
    by_window = {}
    for trial in results["trials"]:
        by_window.setdefault(trial["params"]["data.window"], set()).add(trial["status"])
    assert by_window[5000] == {"failed"}
    assert by_window[20] <= {"completed", "early_stopped", "pruned"}
    failed = next(t for t in results["trials"] if t["status"] == "failed")
    assert "window" in failed["error"]
    assert results["best"]["params"]["data.window"] == 20


@pytest.mark.ray
@pytest.mark.slow
def test_a_search_whose_every_trial_failed_exits_1(ray_session, small_export: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    body = yaml.safe_load(SMOKE.read_text())
    body["params"]["data.window"] = {"type": "categorical", "choices": [5000]}
    body["search"].update(num_samples=2, max_failures=0)
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(body))
    code = main([str(path), "--data", str(small_export), "--storage", str(tmp_path / "runs"), "--name", "none",
                 "--wandb", "disabled"])
    assert code == 1
    assert "every trial failed" in capsys.readouterr().err
    results = json.loads((tmp_path / "runs" / "none" / "results.json").read_text())
    assert [t["status"] for t in results["trials"]] == ["failed", "failed"] and results["best"] is None


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.integration
def test_wandb_offline_records_what_the_trials_reported(ray_session, small_export: Path, tmp_path: Path) -> None:
    from wandb_offline import read_offline_run

    space = _space(tmp_path, num_samples=2, scheduler="none")
    storage = tmp_path / "runs"
    code = main([str(space), "--data", str(small_export), "--storage", str(storage), "--name", "wb", "--wandb", "offline"])
    assert code == 0
    run_dir = storage / "wb"
    results = json.loads((run_dir / "results.json").read_text())
    runs = [read_offline_run(p) for p in sorted((run_dir / "wandb").glob("offline-run-*"))]
    by_name = {r["name"]: r for r in runs}
    assert len(runs) == 3, "one run per trial plus the best configuration's run"
    for trial in results["trials"]:
        run = by_name[trial["trial_id"]]
        assert run["group"] == "wb" and run["job_type"] == "lstm_tiny"
        assert run["config"]["data"]["window"] == trial["params"]["data.window"]
        logged = [row["val_macro_f1"] for row in run["history"] if "val_macro_f1" in row]
        assert logged == [row["val_macro_f1"] for row in trial["history"]]
        assert run["summary"]["best_val_macro_f1"] == trial["best"]["val_macro_f1"]
        assert run["exit_code"] == 0
    best = by_name["wb-best"]
    assert best["job_type"] == "best" and best["summary"]["trial_id"] == results["best"]["trial_id"]
    assert best["summary"]["test_macro_f1"] == results["best"]["test"]["macro_f1"]
    assert best["summary"]["reeval_mean"] == pytest.approx(results["reeval"]["rows"][0]["mean"])
    assert best["summary"]["seed"] == results["best"]["seed"]
    assert [a["type"] for a in best["artifacts"]] == ["model"]


@pytest.mark.ray
@pytest.mark.slow
def test_multi_objective_search_reports_the_pareto_front(ray_session, small_export: Path, tmp_path: Path) -> None:
    body = yaml.safe_load(SMOKE.read_text())
    body["objective"] = {"metric": "val_macro_f1", "also": [{"metric": "n_params", "mode": "min"}]}
    body["search"].update(num_samples=4)
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(body))
    code = main([str(path), "--data", str(small_export), "--storage", str(tmp_path / "runs"), "--name", "pareto"])
    assert code == 0
    results = json.loads((tmp_path / "runs" / "pareto" / "results.json").read_text())
    front = results["pareto"]
    assert front
    scored = [(t["best"]["val_macro_f1"], t["n_params"]) for t in results["trials"] if t["best"]]
    for point in front:
        f1, size = point["val_macro_f1"], point["n_params"]
        assert not any(o_f1 >= f1 and o_size <= size and (o_f1, o_size) != (f1, size) for o_f1, o_size in scored)
    best_f1 = max(f1 for f1, _ in scored)
    assert any(p["val_macro_f1"] == best_f1 for p in front), "the most accurate trial is always on the front"


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.parametrize("space", sorted(p.name for p in (ROOT / "search_spaces").glob("*.yaml")))
def test_every_space_runs_end_to_end_in_smoke_mode(ray_session, small_export: Path, tmp_path: Path, space: str) -> None:
    code = main([str(ROOT / "search_spaces" / space), "--smoke", "--data", str(small_export),
                 "--storage", str(tmp_path), "--name", "s", "--wandb", "disabled", "--quiet"])
    assert code == 0
    results = json.loads((tmp_path / "s" / "results.json").read_text())
    assert len(results["trials"]) == 2 and results["best"] is not None
    assert all(t["epochs"] <= 2 for t in results["trials"])


@pytest.mark.ray
@pytest.mark.slow
def test_best_config_reproduces_the_winners_validation_macro_f1(ray_session, small_export: Path,
                                                                tmp_path: Path) -> None:
    """``python -m lobsearch.train runs/<name>/best_config.yaml``, as the search prints it (no
    --data: the config names the searched export), trains the winner again to its macro-F1."""
    from lobsearch.train import main as train_main

    space = _space(tmp_path, num_samples=2, scheduler="none")
    code = main([str(space), "--data", str(small_export), "--storage", str(tmp_path / "runs"), "--name", "again",
                 "--wandb", "disabled", "--quiet"])
    assert code == 0
    run_dir = tmp_path / "runs" / "again"
    results = json.loads((run_dir / "results.json").read_text())
    assert load_run_config(run_dir / "best_config.yaml").data.export == small_export.resolve()
    assert train_main([str(run_dir / "best_config.yaml"), "--device", "cpu", "--out", str(tmp_path / "train")]) == 0
    again = json.loads((tmp_path / "train" / "metrics.json").read_text())
    assert again["val"]["macro_f1"] == pytest.approx(results["best"]["val"]["macro_f1"], abs=0.01)
    assert again["best_epoch"] == results["best"]["best_epoch"]


@pytest.mark.ray
@pytest.mark.slow
def test_a_smoke_search_runs_on_an_exporter_style_windowed_export(ray_session, tmp_path: Path) -> None:
    """Windows of T=100 at stride 10 (the exporter's default), schema 3.0: the search's windows
    (10-80 rows) end only on labelled rows and the best model is evaluated on test."""
    from lobsearch.synth import write_synthetic_export

    export = write_synthetic_export(tmp_path / "windowed", days=6, rows=2500, seed=1, fmt="windowed",
                                    stride=10, schema="3.0")
    code = main([str(ROOT / "search_spaces" / "lstm.yaml"), "--smoke", "--data", str(export),
                 "--storage", str(tmp_path / "runs"), "--name", "w", "--wandb", "disabled", "--quiet"])
    assert code == 0
    results = json.loads((tmp_path / "runs" / "w" / "results.json").read_text())
    assert len(results["trials"]) == 2 and results["best"]["test"]["macro_f1"] > 0


@pytest.mark.parametrize(
    "cluster, cpus, gpus, expected",
    [
        ({"CPU": 2}, 1, 0, 2),
        ({"CPU": 2}, 2, 0, 1),
        ({"CPU": 16, "GPU": 1}, 1, 0.125, 8),
        ({"CPU": 16, "GPU": 1}, 1, 0.25, 4),
        ({"CPU": 4, "GPU": 2}, 1, 0.25, 4),
        ({"CPU": 16, "GPU": 2}, 2, 1, 2),
        ({"CPU": 1}, 1, 0.5, 1),
    ],
)
def test_concurrency_follows_cpus_and_fractional_gpus(cluster: dict, cpus: float, gpus: float, expected: int) -> None:
    from lobsearch.tuner import default_concurrency, trial_resources

    assert default_concurrency(cluster, cpus, gpus) == expected
    assert trial_resources(cpus, gpus) == ({"cpu": cpus, "gpu": gpus} if gpus else {"cpu": cpus})


def test_every_searcher_pickles_with_a_working_lock_as_tune_saves_it() -> None:
    """Tune pickles the searcher into the experiment at the start and at every save; Optuna 5.1's
    NSGA-II sampler holds a thread lock (fast tier: the slow pareto search covers it end to end)."""
    import pickle

    import optuna

    from lobsearch.tuner import NSGAIISampler

    fresh = NSGAIISampler(seed=3)
    sampler = pickle.loads(pickle.dumps(fresh))
    assert isinstance(sampler, optuna.samplers.NSGAIISampler) and set(vars(sampler)) == set(vars(fresh))
    assert all(type(getattr(sampler, k)) is type(v) for k, v in vars(fresh).items())  # the locks made anew
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    study.optimize(lambda t: (t.suggest_float("x", 0, 1), t.suggest_int("n", 1, 9)), n_trials=3)
    assert len(study.trials) == 3
    for sampler in (optuna.samplers.TPESampler(seed=0, constant_liar=True), optuna.samplers.RandomSampler(seed=0)):
        pickle.loads(pickle.dumps(sampler))
