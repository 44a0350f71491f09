"""The HTML report: written, self-contained, every section present, partial results still render."""

from __future__ import annotations

import base64
import json
import math
import random
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from lobsearch.errors import DataError
from lobsearch.report import (
    NOT_APPLICABLE,
    axis_positions,
    history_study,
    importance_scopes,
    infer_distributions,
    main,
    param_importances,
    optuna_png,
    pareto_study,
    ranked,
    render,
    section_best_model,
    section_best_trials,
    section_calibration,
    section_failures,
    section_curves,
    section_gates,
    section_header,
    section_importance,
    section_parallel,
    section_pareto,
    section_reeval,
    section_trading,
    write_report,
)

SECTIONS = ("best-trials", "history", "parallel", "importance", "curves", "reeval", "best-model", "trading", "calibration",
            "gates", "pareto", "failures")
VERDICT = ("verdict: no lift distinguishable from zero: macro-F1 lift +0.0120 over the best naive baseline, "
           "95% interval [-0.0040, +0.0290] (block bootstrap, 2000 resamples of 40 blocks of 38 windows)")


def make_results(n_trials: int = 16, seed: int = 0, *, families=("lstm", "deeplob"), failed: int = 1) -> dict:
    """A results.json as ``lobsearch.tune`` writes it: an ASHA search over two model families.

    The planted truth: the objective rises with ``data.window``, LSTM beats DeepLOB by 0.04 and
    a learning rate near 1e-3 is best. ``failed`` trials end with an error and no value.
    """
    rng = random.Random(seed)
    trials, clock = [], [0.5, 0.7]
    for number in range(n_trials):
        slot = clock.index(min(clock))
        trial = _make_trial(rng, number, families, failed=number in range(3, 3 + failed), start_s=clock[slot])
        clock[slot] = trial["end_s"] + 0.2
        trials.append(trial)
    results = {
        "name": "lstm-20261126-1200",
        "space": "search_spaces/lstm.yaml",
        "objective": {"metric": "val_macro_f1", "mode": "max"},
        "started_at": "2026-11-26T12:00:00",
        "finished_at": "2026-11-26T12:08:03",
        "export": "/data/exports/nvda_98feat",
        "horizon": 10,
        "oracle_macro_f1": {"10": 0.61, "20": 0.58, "50": 0.52, "100": 0.47},
        "stopped_by": "time_budget",
        "trials": trials,
        "gate_report": make_gate_report(rng),
        "pareto": None,
    }
    results["best"] = make_best(results)
    results["verdict"] = {"line": VERDICT, "distinguishable": False}
    results["reeval"] = make_reeval(results)
    results["search_cost"] = {"trials": n_trials, "trial_epochs": sum(len(t["history"]) for t in trials), "wall_s": 483.0}
    return results


def make_reeval(results: dict) -> dict | None:
    """The top three trials re-evaluated with three seeds; the runner-up of the search wins."""
    top = [trial for trial, _ in ranked(results)[:3]]
    if len(top) < 3:
        return None
    means = (0.47, 0.49, 0.44)
    rows = [{"trial_id": t["trial_id"], "params": t["params"], "search_score": t["best"]["val_macro_f1"],
             "scores": [m - 0.01, m, m + 0.01], "mean": m, "std": 0.01, "low": m - 0.0248, "high": m + 0.0248,
             "level": 0.95} for t, m in zip(top, means)]
    rows.sort(key=lambda r: -r["mean"])
    for rank, row in enumerate(rows, start=1):
        row.update(rank=rank, rival=rows[1 if rank == 1 else 0]["trial_id"], p_beats_rival=0.93 if rank == 1 else 0.07)
    return {"metric": "val_macro_f1", "seeds": [1, 2, 3], "rows": rows, "winner": rows[0]["trial_id"],
            "cost": {"runs": 9, "epochs": 81, "wall_s": 95.5}, "interrupted": False, "notes": []}


def _make_trial(rng: random.Random, number: int, families, *, failed: bool, start_s: float) -> dict:
    family = rng.choice(families)
    params = {
        "data.window": rng.choice([20, 40, 60, 80, 100]),
        "train.learning_rate": 10 ** rng.uniform(-4, -2),
        "train.batch_size": rng.choice([128, 256, 512]),
        "model.name": family,
    }
    if family == "lstm":
        params |= {"lstm.hidden_size": rng.choice([16, 32, 64, 128]), "lstm.bidirectional": rng.choice([True, False])}
    else:
        params |= {"deeplob.conv_channels": rng.choice([16, 32]), "deeplob.dropout": round(rng.uniform(0, 0.5), 3)}
    ceiling = (0.34 + params["data.window"] / 1000 + 0.04 * (family == "lstm")
               - 0.03 * abs(math.log10(params["train.learning_rate"]) + 3) + rng.gauss(0, 0.004))
    status = "failed" if failed else rng.choice(["pruned", "pruned", "completed", "early_stopped", "stopped"])
    epochs = {"failed": 0, "pruned": rng.choice([1, 3]), "completed": 8}.get(status, rng.randint(4, 7))
    history = [
        {"epoch": e, "train_loss": round(1.1 - 0.05 * e + rng.gauss(0, 0.01), 4),
         "val_loss": round(1.08 - 0.03 * e + 0.006 * e * e + rng.gauss(0, 0.01), 4),
         "val_macro_f1": round(ceiling - 0.08 / e + rng.gauss(0, 0.003), 4),
         "val_accuracy": round(0.45 + ceiling / 4 - 0.02 / e, 4), "time_s": round(2.5 + rng.random(), 2)}
        for e in range(1, epochs + 1)
    ]
    best_row = max(history, key=lambda row: row["val_macro_f1"], default=None)
    took = sum(row["time_s"] for row in history) + (1.5 if failed else 0.8)
    return {
        "trial_id": f"a1b2_{number:05d}",
        "number": number,
        "status": status,
        "params": params,
        "best": None if best_row is None else {k: best_row[k] for k in ("val_macro_f1", "val_accuracy", "epoch")},
        "epochs": epochs,
        "duration_s": round(took, 2),
        "start_s": round(start_s, 2),
        "end_s": round(start_s + took, 2),
        "history": history,
        "error": "Traceback (most recent call last):\n  ...\ntorch.OutOfMemoryError: CUDA out of memory" if failed else None,
    }


def _metrics(rng: random.Random, n: int, skill: float) -> dict:
    """Classification metrics of a confusion matrix whose diagonal holds about ``skill`` of each row."""
    confusion = []
    for true in range(3):
        hit = int(n * (skill + rng.gauss(0, 0.01)))
        wrong = rng.randint((n - hit) // 3, 2 * (n - hit) // 3)
        row = [wrong, n - hit - wrong]
        row.insert(true, hit)
        confusion.append(row)
    f1 = [2 * confusion[i][i] / (sum(confusion[i]) + sum(r[i] for r in confusion)) for i in range(3)]
    accuracy = sum(confusion[i][i] for i in range(3)) / (3 * n)
    return {
        "accuracy": accuracy, "macro_f1": sum(f1) / 3, "f1_down": f1[0], "f1_stable": f1[1], "f1_up": f1[2],
        "mcc": (accuracy - 1 / 3) * 1.4, "kappa": (accuracy - 1 / 3) * 1.5, "confusion": confusion,
    }


def make_best(results: dict) -> dict | None:
    scored = ranked(results)
    if not scored:
        return None
    rng = random.Random(1)
    trial, value = scored[0]
    val, test = _metrics(rng, 1500, value), _metrics(rng, 1500, value - 0.02)
    baselines = {split: {"majority_class": 1, "majority_macro_f1": 0.21, "majority_accuracy": 0.46,
                         "previous_macro_f1": 0.33, "previous_accuracy": 0.41} for split in ("val", "test")}
    return {
        "trial_id": trial["trial_id"], "params": trial["params"], "val": val, "test": test, "baselines": baselines,
        "lift": {"val": val["macro_f1"] - 0.33, "test": test["macro_f1"] - 0.33},
        "trading": make_trading(rng), "calibration": make_calibration(rng),
        "verdict": {"line": VERDICT, "distinguishable": False, "split": "test", "estimate": 0.012, "low": -0.004,
                    "high": 0.029, "level": 0.95, "block": 38, "method": "block bootstrap"},
    }


def _backtest(rng: random.Random, trades: float, per_trade: float, tau: float = 0.0) -> dict:
    """A ``trading.Backtest.summary()`` over 2 days."""
    return {"n_trades": trades, "net_bps_per_trade": per_trade, "gross_bps_per_trade": per_trade + 2.1,
            "trades_per_day": trades / 2, "hit_rate": 0.5 + per_trade / 40 if trades else 0.0,
            "net_bps_per_day": trades * per_trade / 2, "max_drawdown_bps": rng.uniform(20, 90) if trades else 0.0,
            "coverage": min(1.0, trades / 400), "n_days": 2.0, "fee_bps": 0.5, "tau": tau}


def make_trading(rng: random.Random) -> dict:
    """A ``evaluation.trading_report``: the model beats the naive baselines, the oracle beats it."""
    def split(skill: float) -> dict:
        return {"model": _backtest(rng, 180, skill), "model_tau": _backtest(rng, 60, skill + 1.5, 0.55),
                "stable": _backtest(rng, 0, 0.0), "majority": _backtest(rng, 0, 0.0),
                "previous": _backtest(rng, 150, -0.8), "oracle": _backtest(rng, 160, 17.5)}
    return {"fee_bps": 0.5, "horizon": 20, "tau": 0.55, "tau_grid": [0.0, 0.35, 0.55], "tau_note": None,
            "val_tau_coverage": 0.16, "classes": ["Down", "Stable", "Up"], "unpriced": {"val": 0, "test": 12},
            "val": split(2.2), "test": split(1.1)}


def make_calibration(rng: random.Random) -> dict:
    """A ``evaluation.calibration_report`` of an overconfident model (temperature > 1)."""
    bins = 15
    confidence = [None] * 5 + [(b + 0.5) / bins for b in range(5, bins)]
    def diagram(shrink: float) -> dict:
        accuracy = [None if c is None else 0.34 + shrink * (c - 0.34) for c in confidence]
        return {"confidence": confidence, "accuracy": accuracy,
                "count": [0] * 5 + [rng.randint(20, 400) for _ in range(5, bins)]}
    return {"split": "test", "in_sample": False, "temperature": 1.8,
            "before": {"log_loss": 1.12, "brier": 0.66, "ece": 0.091},
            "after": {"log_loss": 1.06, "brier": 0.64, "ece": 0.018},
            "reliability_before": diagram(0.55), "reliability_after": diagram(0.95)}


def make_gate_report(rng: random.Random) -> dict:
    days = []
    for i, split in enumerate(["train"] * 8 + ["val"] * 2 + ["test"] * 2):
        rows = rng.randint(18000, 22000)
        failed = {"book_valid": rng.randint(0, 300), "mbo_ready": rng.randint(500, 1500), "invalidity": rng.randint(0, 80)}
        days.append({"split": split, "date": f"202401{i + 2:02d}", "rows": rows, "rows_dropped": failed,
                     "rows_kept": rows - max(failed.values()) - rng.randint(0, 60),
                     "windows_dropped": {"total": 2000}, "label_balance": {"10": [5000, 9000, 5000]}})
    return {"days": days, "totals": {"rows": sum(d["rows"] for d in days)},
            "days_dropped": [{"split": "train", "date": "20240101", "reason": "prior_days"}], "report_window": 100}


def write_run(tmp_path: Path, results: dict) -> Path:
    run_dir = tmp_path / "run"
    run_dir.mkdir(exist_ok=True)
    (run_dir / "results.json").write_text(json.dumps(results))
    return run_dir


def images(html: str) -> list[bytes]:
    return [base64.b64decode(data) for data in re.findall(r'src="data:image/png;base64,([^"]+)"', html)]


@pytest.fixture(scope="module")
def full_html(tmp_path_factory) -> str:
    run_dir = write_run(tmp_path_factory.mktemp("full"), make_results())
    return write_report(run_dir).read_text()


def test_cli_writes_the_report_and_prints_its_path(tmp_path, capsys):
    run_dir = write_run(tmp_path, make_results(n_trials=6))
    assert main([str(run_dir)]) == 0
    printed = Path(capsys.readouterr().out.strip())
    assert printed == (run_dir / "report.html").resolve() and printed.stat().st_size > 10_000


def test_module_runs_as_a_script(tmp_path):
    run_dir = write_run(tmp_path, make_results(n_trials=3))
    done = subprocess.run([sys.executable, "-m", "lobsearch.report", str(run_dir)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str((run_dir / "report.html").resolve())


def test_the_report_is_self_contained(full_html):
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", full_html, re.IGNORECASE)
    assert not re.search(r"<(script|link|iframe)\b", full_html, re.IGNORECASE)
    assert "Content-Security-Policy" in full_html and "img-src data:" in full_html
    pngs = images(full_html)
    assert len(pngs) == 8 and all(png.startswith(b"\x89PNG\r\n\x1a\n") for png in pngs)


def test_every_section_and_the_header_facts_are_there(full_html):
    for key in SECTIONS:
        assert f'<section id="{key}">' in full_html
    assert "could not be drawn" not in full_html
    results = make_results()
    best_id = ranked(results)[0][0]["trial_id"]
    for text in ("lstm-20261126-1200", "val_macro_f1", "/data/exports/nvda_98feat", "time_budget",
                 "<b>h=10: 0.61</b>", best_id, "CUDA out of memory", "20240102", "prior_days", "lift"):
        assert text in full_html, text
    assert re.search(r"16 <span class=\"badge\"", full_html)
    assert VERDICT.replace("'", "&#x27;") in full_html
    assert "Single-objective search: no Pareto front." in full_html


def _without_test(r):
    r["best"]["test"] = None
    r["best"]["lift"].pop("test")


def _all_failed(r):
    for t in r["trials"]:
        t.update(status="failed", best=None, history=[], error="ValueError: window 100 > day length")
    r["best"] = r["pareto"] = None


PARTIAL = {  # what is missing -> (edit, the section it shows in, the note it shows)
    "no test metrics": (_without_test, section_best_model, "No test metrics"),
    "no baselines": (lambda r: r["best"].update(baselines=None, lift=None), section_best_model, "No naive baselines"),
    "no best model": (lambda r: r.update(best=None), section_best_model, "No best model was evaluated"),
    "best not evaluated again": (lambda r: r.update(best={"trial_id": "a1b2_00002", "params": {}, "val": {
        "epoch": 3, "val_macro_f1": 0.41, "val_accuracy": 0.5}}), section_best_model, "No confusion matrix"),
    "no trading": (lambda r: r["best"].pop("trading"), section_trading, "No trading figures: the best model was not"),
    "no quotes": (lambda r: r["best"].update(trading={"note": "the export has 40 columns"}),
                  section_trading, "No trading figures: the export has 40 columns."),
    "never acts": (lambda r: r["best"]["trading"].update(tau=None, tau_note="no threshold: no tau acts"),
                   section_trading, "no threshold: no tau acts"),
    "trading, no best": (lambda r: r.update(best=None), section_trading, "No best model was evaluated"),
    "no calibration": (lambda r: r["best"].pop("calibration"), section_calibration, "No calibration figures"),
    "diverged": (lambda r: r["best"].update(calibration={"note": "the probabilities are not finite"}),
                 section_calibration, "No calibration figures: the probabilities are not finite."),
    "in sample": (lambda r: r["best"]["calibration"].update(split="val", in_sample=True), section_calibration,
                  "scored on the validation days it was fitted on"),
    "no verdict": (lambda r: [r.pop("verdict"), r["best"].pop("verdict")], lambda r: section_header(r, None),
                   "none recorded"),
    "no gate report": (lambda r: r.update(gate_report=None), section_gates, "No gate report"),
    "no reeval": (lambda r: r.pop("reeval"), section_reeval, "No re-evaluation: it was turned off"),
    "reeval interrupted": (lambda r: r["reeval"].update(interrupted=True), section_reeval,
                           "The re-evaluation was interrupted"),
    "no oracle": (lambda r: r.update(oracle_macro_f1=None), lambda r: section_header(r, None), "unknown (the export"),
    "one trial": (lambda r: r.update(trials=[t for t in r["trials"] if t["best"]][:1]), section_importance,
                  "Not enough trials to estimate importance (1 with a value; need 2)"),
    "one trial, parallel": (lambda r: r.update(trials=[t for t in r["trials"] if t["best"]][:1]), section_parallel,
                            "Not enough trials with a value"),
    "no history": (lambda r: [t.update(history=[]) for t in r["trials"]], section_curves, "No trial recorded a training history"),
    "constant objective": (lambda r: [t["best"] and t["best"].update(val_macro_f1=0.4) for t in r["trials"]],
                           section_importance, "No parameter explains the spread"),
}


@pytest.mark.parametrize("case", PARTIAL, ids=list(PARTIAL))
def test_a_missing_piece_renders_a_note(case):
    edit, section, expected = PARTIAL[case]
    results = make_results(n_trials=8)
    edit(results)
    html = section(results)
    assert expected in html
    assert all(png.startswith(b"\x89PNG") for png in images(html))


@pytest.mark.parametrize(
    ("edit", "expected"),
    [(_all_failed, "No trial produced a value (16 trials, 16 failed"),
     (lambda r: r.update(trials=[], best=None), "No trials ran."),
     (lambda r: [r.pop(k) for k in list(r) if k != "trials"], "Single-objective search")],
    ids=["all failed", "no trials", "only trials"],
)
def test_partial_results_render_every_section(edit, expected, tmp_path):
    results = make_results()
    edit(results)
    html = write_report(write_run(tmp_path, results)).read_text()
    assert expected in html and "could not be drawn" not in html
    assert all(f'<section id="{key}">' in html for key in SECTIONS)
    assert all(png.startswith(b"\x89PNG") for png in images(html))


def test_the_trading_section_states_the_costs_and_compares_model_baselines_and_oracle(full_html):
    html = section_trading(make_results())
    for text in ("0.5 bps</b>", "<code>eval.fee_bps</code>", "half the spread", "tau = <b>0.55</b>",
                 "coverage there 0.16", "model, p &gt;= tau", "always Stable", "previous known label",
                 "oracle (true label)", "net bps/trade", "max drawdown bps", "test 12"):
        assert text in html, text
    assert html.count("<tr>") == 1 + 2 * 6
    assert "Trading, net of costs" in full_html


def test_the_reeval_section_ranks_by_the_mean_with_intervals_and_the_cost_beside_the_search():
    results = make_results()
    html = section_reeval(results)
    winner = results["reeval"]["rows"][0]
    assert winner["mean"] == 0.49 and html.index(winner["trial_id"]) < html.index(results["reeval"]["rows"][1]["trial_id"])
    for text in ("fresh seeds 1, 2, 3", "95% t interval", "P(beats rival)", "0.4652", "0.5148", "0.93",
                 "9 runs, 81 epochs, 95.5 s", "16 trials", "483 s"):
        assert text in html, text
    assert html.count("<tr>") == 1 + 3


def test_walk_forward_trials_show_their_folds_and_each_folds_score():
    results = make_results(n_trials=6, failed=0)
    for i, trial in enumerate(results["trials"]):
        trial["best"].update(folds=3, folds_done=3 if i % 2 else 1)
        trial["fold_scores"] = [0.41, 0.43, 0.45][:trial["best"]["folds_done"]]
    html = section_best_trials(results)
    assert "Walk-forward" in html and "3/3" in html and "1/3" in html and "0.41 0.43 0.45" in html
    assert "Walk-forward" not in section_best_trials(make_results(n_trials=6))


def test_the_calibration_section_shows_both_temperatures_and_the_reliability_diagram():
    html = section_calibration(make_results())
    for text in ("T = <b>1.8</b>", "test windows", "log loss (nats)", "Brier score", "expected calibration error",
                 "0.091", "0.018"):
        assert text in html, text
    assert len(images(html)) == 1


def test_a_minimized_multi_objective_search_ranks_low_first_and_shows_the_front():
    results = make_results(n_trials=8)
    results["objective"] = {"metric": "val_loss", "mode": "min"}
    for t in results["trials"]:
        for row in t["history"]:
            row["val_loss"] = 1.2 - row["val_macro_f1"]
        t["best"] = None
    results["pareto"] = [{"trial_id": "a1b2_00001", "val_loss": 0.8, "n_params": 12000},
                         {"trial_id": "a1b2_00004", "val_loss": 0.75, "n_params": 56000}]
    values = [v for _, v in ranked(results)]
    assert len(values) == 7 and values == sorted(values)
    html = section_pareto(results)
    assert "2 trials that no other trial beats" in html and "56000" in html and len(images(html)) == 1
    assert "minimize" in section_header(results, None)


def test_a_section_that_cannot_read_its_data_becomes_a_note_not_a_crash():
    results = make_results(n_trials=3)
    results["gate_report"] = {"days": [{"split": "train", "date": "20240102", "rows": "many", "rows_kept": 5}]}
    html = render(results)
    assert "This section could not be drawn from results.json: ValueError" in html
    assert html.count("could not be drawn") == 1 and '<section id="failures">' in html


def test_the_searched_horizon_comes_from_best_config_when_results_lack_it(tmp_path):
    results = make_results(n_trials=3)
    del results["horizon"]
    results["best"] = None
    run_dir = write_run(tmp_path, results)
    (run_dir / "best_config.yaml").write_text("# Best configuration\ndata:\n  horizon: 20\nmodel:\n  name: lstm\n")
    assert "<b>h=20: 0.58</b>" in write_report(run_dir).read_text()


def test_the_header_tells_how_to_upload_offline_wandb_runs(tmp_path):
    results = make_results(n_trials=3)
    assert "wandb sync" not in section_header(results, tmp_path)
    (tmp_path / "wandb" / "offline-run-20261126_120000-abc123").mkdir(parents=True)
    assert f"<code>wandb sync {tmp_path.resolve()}/wandb/offline-run-*</code>" in section_header(results, tmp_path)


def test_text_from_the_results_is_escaped():
    results = make_results(n_trials=3)
    results["name"] = "<script>alert(1)</script>"
    results["trials"][0].update(status="failed", error="<img src=x onerror=alert(1)>")
    html = section_header(results, None) + section_failures(results)
    assert "<script>alert" not in html and "<img src=x" not in html
    assert "&lt;script&gt;" in html and "&lt;img src=x" in html


def test_distributions_are_inferred_from_the_observed_values():
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    trials = [{"params": {"w": 20, "lr": 1e-4, "name": "lstm", "bi": True, "drop": 0.1}},
              {"params": {"w": 100, "lr": 1e-2, "name": "deeplob", "drop": 0.3}},
              {"params": {"w": 60, "lr": 3e-3, "name": "lstm", "bi": False, "drop": None}}]
    d = infer_distributions(trials)
    assert d["w"] == IntDistribution(20, 100)
    assert d["lr"] == FloatDistribution(1e-4, 1e-2, log=True)
    assert d["drop"] == FloatDistribution(0.1, 0.3)
    assert d["name"] == CategoricalDistribution(["deeplob", "lstm"])
    assert d["bi"] == CategoricalDistribution([False, True])


def test_importance_finds_the_planted_parameters_overall_and_per_family():
    results = make_results(n_trials=40, failed=0)
    for t in results["trials"]:  # the planted truth, without the noise of trials stopped early
        p = t["params"]
        t["best"]["val_macro_f1"] = 0.3 + p["data.window"] / 1000 + 0.01 * (p["model.name"] == "lstm")
    scopes = importance_scopes(results)
    counts = {f: sum(t["params"]["model.name"] == f for t in results["trials"]) for f in ("deeplob", "lstm")}
    assert [title for title, _ in scopes] == ["all 40 trials"] + [f"model.name = {f} ({n} trials)" for f, n in counts.items()]
    for title, scored in scopes:
        importances, method = param_importances(results, scored)
        assert method in ("fANOVA", "PED-ANOVA")
        assert math.isclose(sum(importances.values()), 1.0, rel_tol=1e-6)
        assert max(importances, key=importances.get) == "data.window", (title, importances)
        assert "model.name" not in importances or title.startswith("all")
    assert "lstm.hidden_size" in param_importances(results, scopes[2][1])[0]


def test_axes_scale_numbers_log_when_wide_and_place_categories_evenly():
    positions, ticks = axis_positions([1e-4, 1e-3, None, 1e-2])
    assert positions.tolist() == pytest.approx([0, 0.5, NOT_APPLICABLE, 1])
    assert [label for _, label in ticks] == ["0.0001", "0.001", "0.01", "n/a"]
    positions, ticks = axis_positions(["lstm", "deeplob", "lstm"])
    assert positions.tolist() == [1.0, 0.0, 1.0] and ticks == [(0.0, "deeplob"), (1.0, "lstm")]


def test_optuna_figures_use_agg_close_their_figures_and_leave_the_style_and_warnings_alone():
    import matplotlib

    results = make_results()
    results["pareto"] = [{"trial_id": "a1b2_00001", "val_macro_f1": 0.38, "n_params": 12000},
                         {"trial_id": "a1b2_00004", "val_macro_f1": 0.36, "n_params": 5600}]
    before = dict(matplotlib.rcParams)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Optuna's ExperimentalWarning included
        html = render(results)
    import matplotlib.pyplot as plt

    assert len(images(html)) == 9 and "could not be drawn" not in html
    assert matplotlib.get_backend().lower() == "agg" and plt.get_fignums() == []
    changed = {k: v for k, v in matplotlib.rcParams.items() if before.get(k) != v}
    assert changed.keys() <= {"backend", "backend_fallback"}, changed  # selecting Agg, and no ggplot style


def test_a_plot_that_fails_leaves_no_figure_open():
    import matplotlib.pyplot as plt

    def broken_plot():
        plt.subplots()
        raise ValueError("degenerate study")

    with pytest.raises(ValueError, match="degenerate study"):
        optuna_png(broken_plot, (4, 3))
    assert plt.get_fignums() == []


def test_the_history_study_keeps_the_search_numbers_and_the_pareto_study_the_directions():
    from optuna.trial import TrialState

    results = make_results(n_trials=8, failed=2)
    study = history_study(results)
    values = dict((t["number"], v) for t, v in ranked(results))
    assert [t.number for t in study.trials] == list(range(8))
    assert {t.number: t.value for t in study.trials if t.state is TrialState.COMPLETE} == values
    assert [t.number for t in study.trials if t.state is TrialState.FAIL] == [3, 4]
    results["objective"] = {"metric": "val_loss", "mode": "min"}
    front = [{"trial_id": "a", "val_loss": 0.8, "n_params": 12000}, {"trial_id": "b", "val_loss": 0.75, "n_params": 56000}]
    study = pareto_study(results, front, ["val_loss", "n_params"])
    assert [d.name for d in study.directions] == ["MINIMIZE", "MINIMIZE"] and len(study.best_trials) == 2


def test_missing_or_broken_results_are_named(tmp_path, capsys):
    with pytest.raises(DataError, match=r"results.json: not found"):
        write_report(tmp_path)
    (tmp_path / "results.json").write_text("{not json")
    assert main([str(tmp_path)]) == 2
    assert "results.json: not valid JSON" in capsys.readouterr().err


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PROBE = """<script>addEventListener("load", () => { for (const img of document.images)
  img.dataset.decoded = img.complete && img.naturalWidth > 0 ? "yes" : "no"; });</script>"""


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if not found:
        pytest.skip("headless Chromium not installed (Debian: apt-get install chromium)")
    return found


@pytest.mark.integration
def test_every_figure_decodes_in_a_headless_browser(full_html, tmp_path):
    browser = chromium()
    page = tmp_path / "probe.html"
    page.write_text(full_html.replace("<head>", "<head>" + PROBE, 1))  # before the CSP, which forbids scripts
    done = subprocess.run(
        [browser, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    decoded = re.findall(r'data-decoded="(\w+)"', done.stdout)
    assert decoded == ["yes"] * len(images(full_html)), done.stderr[-2000:]
