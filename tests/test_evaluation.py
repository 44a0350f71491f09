"""The trained model judged in trading terms: backtests net of costs, calibration, the verdict,
and how results.json, the summary, the report and the train command show them."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from lobsearch.config import DataConfig, EvalConfig, trading_problems, validate_run
from lobsearch.errors import ConfigError
from lobsearch.evaluation import (
    net_bps_per_day,
    PREDICTORS,
    Seen,
    calibration_report,
    format_calibration,
    format_trading,
    trading_report,
    verdict_line,
    verdict_report,
)
from lobsearch.recipe import build_run, evaluate_model, fit_run, predict_split, split_quotes, val_trading
from lobsearch.selection import NEGATIVE, POSITIVE
from lobsearch.trading import Quotes, tune_threshold

RUN = """
data: {features: lob_signals, window: 10, stride: 3, horizon: 20}
model: {name: lstm_tiny}
train: {epochs: 2, batch_size: 32, steps_per_epoch: 10, max_eval_windows: 300, device: cpu, patience: null}
"""
DOWN, STABLE, UP = 0, 1, 2


def run_config(text: str = RUN, **eval_settings):
    raw = yaml.safe_load(text)
    raw["eval"] = eval_settings
    return validate_run(raw, "test run")


def prepare_local(export: Path, cache: Path):
    from lobsearch.data.pipeline import prepare

    return prepare(export, DataConfig().prep(), engine="local", cache_dir=cache)


@pytest.fixture(scope="module")
def trained(small_export, tmp_path_factory):
    """A tiny LSTM trained on the small synthetic export: (built run, best weights, its evaluation)."""
    prepared = prepare_local(small_export, tmp_path_factory.mktemp("prepared"))
    built = build_run(run_config(), prepared, device="cpu", with_test=True)
    result = fit_run(built)
    return built, result.best_state, evaluate_model(built, result.best_state)


@pytest.fixture(scope="module")
def seen(trained):
    built, state, _ = trained
    built.model.load_state_dict(state)
    return {split: predict_split(built, split, built.model)[1] for split in ("val", "test")}


@pytest.fixture(scope="module")
def narrow_export(small_export, tmp_path_factory):
    """The small export cut to its 40 book columns: no MID_PRICE, no SPREAD."""
    narrow = tmp_path_factory.mktemp("narrow") / "export"
    shutil.copytree(small_export, narrow)
    for path in narrow.glob("*/*_features.npy"):
        np.save(path, np.load(path)[:, :40])
    for path in [*narrow.glob("*/*_metadata.json"), narrow / "dataset_manifest.json"]:
        text = json.loads(path.read_text())
        path.write_text(json.dumps({k: 40 if k in ("n_features", "feature_count") else v for k, v in text.items()}))
    return narrow


# ------------------------------------------------------------------ trading


def test_the_oracle_beats_the_model_which_beats_always_stable(trained):
    trading = trained[2]["trading"]
    assert trading["fee_bps"] == 0.5 and trading["horizon"] == 20
    for split in ("val", "test"):
        rows = trading[split]
        assert list(rows) == list(PREDICTORS)
        assert rows["stable"]["n_trades"] == 0 and rows["stable"]["net_bps_per_day"] == 0
        assert rows["oracle"]["net_bps_per_day"] > rows["model"]["net_bps_per_day"] > 0, split
        assert rows["oracle"]["net_bps_per_trade"] > rows["model"]["net_bps_per_trade"] > 0, split
        assert 0 <= rows["model"]["hit_rate"] <= 1 and rows["model"]["max_drawdown_bps"] >= 0


def test_the_threshold_tuned_on_validation_is_applied_once_to_test(trained, seen):
    built, _, outcome = trained
    trading = outcome["trading"]
    tau = trading["tau"]
    assert tau in trading["tau_grid"] and trading["tau_note"] is None
    choice = tune_threshold(seen["val"].probs, seen["val"].ends, split_quotes(built.prepared, "val"), 20,
                            fee_bps=0.5)
    assert choice.tau == tau and trading["val"]["model_tau"]["net_bps_per_day"] == pytest.approx(max(choice.scores))
    test = trading["test"]
    assert test["model_tau"]["tau"] == tau and test["model"]["tau"] == 0
    assert 0 < test["model_tau"]["coverage"] <= test["model"]["coverage"] <= 1
    assert trading["val_tau_coverage"] == pytest.approx(trading["val"]["model_tau"]["coverage"])


def test_a_huge_fee_makes_every_trade_lose(trained, seen):
    built, _, _ = trained
    quotes = {split: split_quotes(built.prepared, split) for split in seen}
    trading = trading_report(seen, quotes, horizon=20, fee_bps=5000.0, majority_class=STABLE)
    for split in seen:
        for name in ("model", "oracle", "previous"):
            row = trading[split][name]
            assert row["n_trades"] > 0 and row["net_bps_per_trade"] < 0 and row["hit_rate"] == 0, (split, name)


def one_day(mid, spread=0.02) -> Quotes:
    mid = np.asarray(mid, dtype=np.float64)
    return Quotes.from_days([mid], [np.broadcast_to(np.asarray(spread, dtype=np.float64), mid.shape)])


def certain(pred) -> np.ndarray:
    """Probabilities of 0.9 on each predicted class."""
    probs = np.full((len(pred), 3), 0.05)
    probs[np.arange(len(pred)), pred] = 0.9
    return probs


def seen_of(y_true, y_pred, ends=None, probs=None) -> Seen:
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    ends = np.arange(y_true.size) if ends is None else np.asarray(ends)
    return Seen(y_true, y_pred, certain(y_pred) if probs is None else probs, np.full(y_true.size, -1), ends)


def test_a_window_whose_exit_has_no_usable_quote_opens_no_position():
    mid = np.linspace(100, 101, 12)
    mid[4] = np.nan  # a gated row at the exit of the window ending at row 2
    quotes = {"val": one_day(mid)}
    view = seen_of([UP, UP, UP, UP], [UP, UP, UP, UP], ends=[0, 2, 6, 8])
    trading = trading_report({"val": view}, quotes, horizon=2, fee_bps=0.0, majority_class=STABLE)
    assert trading["unpriced"] == {"val": 1}
    assert trading["val"]["model"]["n_trades"] == 3 == trading["val"]["oracle"]["n_trades"]
    assert any("without a usable quote" in line and "val 1" in line for line in format_trading(trading))


def test_a_model_that_never_acts_has_no_threshold_and_no_trade():
    quotes = {s: one_day(np.linspace(100, 101, 40)) for s in ("val", "test")}
    stable = {s: seen_of(np.full(30, UP), np.full(30, STABLE)) for s in quotes}
    trading = trading_report(stable, quotes, horizon=5, fee_bps=0.5, majority_class=STABLE)
    assert trading["tau"] is None and "no threshold" in trading["tau_note"] and "model_tau" not in trading["test"]
    assert trading["test"]["model"]["n_trades"] == 0 and trading["test"]["oracle"]["n_trades"] > 0
    assert "no threshold" in format_trading(trading)[0]


# ------------------------------------------------------------------ calibration and verdict


def test_calibration_before_and_after_a_positive_temperature(trained):
    calibration = trained[2]["calibration"]
    assert calibration["split"] == "test" and not calibration["in_sample"] and calibration["temperature"] > 0
    for when in ("before", "after"):
        assert set(calibration[when]) == {"log_loss", "brier", "ece"}
        assert 0 <= calibration[when]["ece"] <= 1 and 0 <= calibration[when]["brier"] <= 2
        diagram = calibration[f"reliability_{when}"]
        assert len(diagram["confidence"]) == len(diagram["accuracy"]) == len(diagram["count"]) == 15
        assert sum(diagram["count"]) == len(trained[0].test)
    line = format_calibration(calibration)
    assert line.startswith("calibration on test: log loss") and "fitted on val" in line


def test_an_overconfident_model_is_cooled_by_its_temperature():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 4000)
    logits = rng.normal(size=(4000, 3))
    logits[np.arange(4000), y] += 1.0
    probs = np.exp(4 * logits) / np.exp(4 * logits).sum(axis=1, keepdims=True)  # 4x too sharp
    val, test = seen_of(y[:2000], probs[:2000].argmax(1), probs=probs[:2000]), seen_of(
        y[2000:], probs[2000:].argmax(1), probs=probs[2000:])
    calibration = calibration_report(val, test, split="test")
    assert calibration["temperature"] == pytest.approx(4, rel=0.2)
    assert calibration["after"]["log_loss"] < calibration["before"]["log_loss"]
    assert calibration["after"]["ece"] < calibration["before"]["ece"]


def test_the_verdict_line_names_exactly_one_finding(trained):
    verdict = trained[2]["verdict"]
    line = verdict["line"]
    assert line.startswith("verdict: ") and verdict["split"] == "test"
    assert (NEGATIVE in line) != line.startswith(f"verdict: {POSITIVE}")
    assert verdict["distinguishable"] == (verdict["low"] > 0) == line.startswith(f"verdict: {POSITIVE}")
    assert verdict["estimate"] == pytest.approx(trained[2]["lift"]["test"])
    assert verdict["low"] <= verdict["estimate"] <= verdict["high"] and verdict["block"] >= 4


def test_a_perfect_model_has_a_lift_and_missing_test_windows_have_none():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 3000)
    shape = {"majority_class": STABLE, "window": 10, "horizon": 20, "smoothing": 10, "stride": 3}
    perfect = verdict_report(seen_of(y, y), **shape, n_boot=200)
    assert perfect["distinguishable"] and perfect["line"].startswith(f"verdict: {POSITIVE}: macro-F1 lift +")
    missing = verdict_report(None, **shape)
    assert missing == {"line": f"verdict: {NEGATIVE}: the export has no test split, and a verdict needs windows "
                               "the search never chose on", "distinguishable": False, "split": None}
    few = verdict_report(seen_of(y[:50], y[:50]), **shape)
    assert not few["distinguishable"] and "too few for a block bootstrap" in few["line"]
    assert verdict_line(None) == f"verdict: {NEGATIVE}: no model was evaluated"


# ------------------------------------------------------------------ settings and exports without quotes


def test_bad_eval_settings_name_the_key_the_rule_and_the_value():
    cases = (({"fee_bps": -1}, r"eval\.fee_bps: .*greater than or equal to 0 \(got -1\)"),
             ({"fee_bps": 1e4}, r"eval\.fee_bps: .*less than 10000 \(got 10000\.0\)"),
             ({"tau_grid": [0.5, 1.5]}, r"eval\.tau_grid: .*probabilities in \[0, 1\] \(got \[0\.5, 1\.5\]\)"),
             ({"trading": "yes"}, r"eval\.trading: unknown value 'yes'; choices: auto, off, on"))
    for settings, expected in cases:
        with pytest.raises(ConfigError, match=expected):
            run_config(**settings)
    assert run_config().eval == EvalConfig() and EvalConfig().fee_bps == 0.5


def test_a_bad_fee_in_a_space_is_an_error_before_ray(tmp_path, capsys, monkeypatch):
    import ray

    from lobsearch.tune import main

    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("Ray started"))
    space = tmp_path / "space.yaml"
    space.write_text("fixed: {eval: {fee_bps: 20000}}\nmodels: {lstm_tiny: {}}\n")
    assert main([str(space), "--dry-run"]) == 2
    assert "eval.fee_bps: Input should be less than 10000 (got 20000)" in capsys.readouterr().err


def test_trading_asked_of_an_export_without_quotes_is_an_error_naming_the_key():
    on = EvalConfig(trading="on")
    assert trading_problems(EvalConfig(), 40) == [] == trading_problems(on, 98)
    (problem,) = trading_problems(on, 40)
    assert problem.startswith("eval.trading: 'on' asks for trading metrics") and "40 columns" in problem
    assert "(got 'on'" in problem
    assert "normalized" in trading_problems(on, 98, "the export normalized column(s) [40]")[0]


def test_without_quotes_trading_is_a_note_unless_asked_for(narrow_export, tmp_path, capsys):
    from lobsearch.train import main

    prepared = prepare_local(narrow_export, tmp_path / "cache")
    text = RUN.replace("lob_signals", "lob_only")
    built = build_run(run_config(text), prepared, device="cpu", with_test=True)
    outcome = evaluate_model(built, fit_run(built).best_state)
    assert outcome["trading"] == {"note": "the export has 40 columns, so no MID_PRICE and SPREAD (columns 40 and 41)"}
    assert outcome["calibration"]["temperature"] > 0 and outcome["verdict"]["line"].startswith("verdict: ")
    assert format_trading(outcome["trading"]) == [f"trading: none ({outcome['trading']['note']})"]
    config = tmp_path / "on.yaml"
    config.write_text(text + "eval: {trading: 'on'}\n")
    assert main([str(config), "--data", str(narrow_export), "--out", str(tmp_path / "out")]) == 2
    printed = capsys.readouterr()
    assert "eval.trading: 'on' asks for trading metrics" in printed.err and "epoch" not in printed.out


def test_trading_off_is_a_note(trained):
    built, state, _ = trained
    off = dataclasses.replace(built, config=built.config.model_copy(update={"eval": EvalConfig(trading="off")}))
    assert evaluate_model(off, state)["trading"] == {"note": "eval.trading is off"}


# ------------------------------------------------------------------ results, summary, report


def summary_with(best: dict):
    from lobsearch.results import Summary

    trial = {"trial_id": "t1", "number": 0, "status": "completed", "params": {"data.window": 10}, "epochs": 2,
             "best": {"val_macro_f1": best["val"]["macro_f1"], "epoch": 2}, "history": [], "error": None}
    return Summary(name="s", space="space.yaml", objective={"metric": "val_macro_f1", "mode": "max"}, export="e",
                   started_at="2026-01-01T00:00:00+00:00", stopped_by="completed", trials=[trial],
                   best={"trial_id": "t1", "params": trial["params"], **best})


def test_results_json_and_the_summary_carry_the_trading_table_and_the_verdict(trained, tmp_path, capsys):
    from lobsearch.files import dump_json
    from lobsearch.results import print_summary

    outcome = trained[2]
    summary = summary_with(outcome)
    dump_json(tmp_path / "results.json", summary.to_json())
    saved = json.loads((tmp_path / "results.json").read_text())
    verdict = outcome["verdict"]
    assert saved["verdict"] == {"line": verdict["line"], "distinguishable": verdict["distinguishable"]}
    assert saved["best"]["trading"]["test"]["oracle"]["n_trades"] > 0
    assert saved["best"]["calibration"]["temperature"] > 0
    print_summary(summary, tmp_path)
    printed = capsys.readouterr().out
    for text in ("trading, net of costs: fee 0.5 bps per side", "test  oracle (true label)", "val   always Stable",
                 "calibration on test: log loss", "\n  verdict: "):
        assert text in printed, text
    assert [line for line in printed.splitlines() if line.strip().startswith("verdict:")] == [
        f"  {outcome['verdict']['line']}"]


def test_a_search_without_an_evaluated_model_still_has_a_verdict_line(capsys, tmp_path):
    from lobsearch.results import Summary, print_summary

    summary = Summary(name="s", space="x", objective={"metric": "val_macro_f1", "mode": "max"}, export="e",
                      started_at="", stopped_by="completed", trials=[])
    assert summary.to_json()["verdict"] == {"line": f"verdict: {NEGATIVE}: no model was evaluated",
                                            "distinguishable": False}
    print_summary(summary, tmp_path)
    assert f"verdict: {NEGATIVE}: no model was evaluated" in capsys.readouterr().out


def test_the_report_renders_a_real_evaluation(trained):
    from lobsearch.files import plain
    from lobsearch.report import render, section_calibration, section_trading

    results = json.loads(json.dumps(plain(summary_with(trained[2]).to_json(), finite=True)))
    trading, calibration = section_trading(results), section_calibration(results)
    assert "oracle (true label)" in trading and "0.5 bps</b>" in trading and "tau = <b>" in trading
    assert "reliability diagram" in calibration and "T = <b>" in calibration
    html = render(results)
    assert "could not be drawn" not in html and results["verdict"]["line"].split(":")[1].strip() in html


# ------------------------------------------------------------------ the trading objective


def test_net_bps_per_day_is_the_trading_tables_model_row(trained, seen):
    """What a trial reports every epoch as val_net_bps_per_day is what the final table says."""
    built, _, outcome = trained
    view = seen["val"]
    quotes = split_quotes(built.prepared, "val")
    value = net_bps_per_day(view.y_pred, view.ends, quotes, built.config.data.horizon, 0.5)
    assert value == pytest.approx(outcome["trading"]["val"]["model"]["net_bps_per_day"])
    assert net_bps_per_day(view.y_pred, view.ends, quotes, built.config.data.horizon, 50.0) < value


def test_every_epoch_reports_validation_net_bps_per_day_unless_trading_is_off(trained):
    built = trained[0]
    assert val_trading(built) is not None
    result = fit_run(build_run(run_config(), built.prepared, device="cpu"))
    assert all(math.isfinite(row["val"]["net_bps_per_day"]) for row in result.history)
    off = build_run(run_config(trading="off"), built.prepared, device="cpu")
    assert val_trading(off) is None and "net_bps_per_day" not in fit_run(off).history[0]["val"]


@pytest.mark.parametrize("fixed, words", [
    ({"eval": {"trading": "off"}}, ["objective.metric: val_net_bps_per_day trades", "eval.trading is off"]),
    ({}, ["eval.trading: 'on' asks for trading metrics", "40 columns", "objective.metric val_net_bps_per_day needs"]),
])
def test_a_trading_objective_the_export_or_the_config_cannot_serve_is_refused_before_ray(
        fixed, words, narrow_export, tmp_path, capsys, monkeypatch):
    import ray

    from lobsearch.tune import main

    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("Ray started"))
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"objective": {"metric": "val_net_bps_per_day"},
                                     "fixed": {"data": {"features": "lob_only"}, **fixed},
                                     "models": {"lstm_tiny": {}}}))
    assert main([str(space), "--data", str(narrow_export), "--storage", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert all(word in err for word in words), err
