"""``python -m lobsearch.train``: shipped configs, config errors, the shared recipe, the command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from lobsearch.config import load_run_config
from lobsearch.data.features import n_selected
from lobsearch.data.windows import WindowSet
from lobsearch.errors import ConfigError
from lobsearch.models import model_spec
from lobsearch.recipe import (
    build_run,
    evaluate_checkpoint,
    evaluate_model,
    fit_run,
    horizon_index,
    previous_known_labels,
)
from lobsearch.train import format_table, main, resolved_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))

TINY = """
data: {features: lob_signals, window: 10, stride: 3, horizon: 20}
model: {name: lstm_tiny}
train: {epochs: 2, batch_size: 32, steps_per_epoch: 5, max_eval_windows: 300, device: cpu,
        patience: null}
"""


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def prepared(small_export, tmp_path_factory):
    from lobsearch.config import DataConfig
    from lobsearch.data.pipeline import prepare

    cache = tmp_path_factory.mktemp("prepared")
    return prepare(small_export, DataConfig().prep(), engine="local", cache_dir=cache)


# ------------------------------------------------------------------ configs


def test_configs_are_shipped():
    assert {p.name for p in CONFIGS} >= {"baseline_lstm.yaml", "baseline_deeplob.yaml", "smoke.yaml"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads_and_builds_its_model(path):
    config = load_run_config(path)
    text = path.read_text()
    assert text.startswith("# ") and f"python -m lobsearch.train configs/{path.name}" in text
    width = n_selected(config.data.features, 98, config.data.time_regime_onehot)
    spec = model_spec(config.model.name)
    assert spec.problems(config.model.params, n_features=width, window=config.data.window) == []


def test_legacy_spellings_are_accepted():
    config = load_run_config(ROOT / "configs" / "baseline_deeplob.yaml")
    assert config.model.name == "deeplob" and config.data.window == 100 and config.data.stride == 1


def test_resolved_config_round_trips(tmp_path):
    config = load_run_config(ROOT / "configs" / "baseline_lstm.yaml")
    again = load_run_config(_write(tmp_path / "r.yaml", yaml.safe_dump(resolved_config(config))))
    assert again == config


def test_bad_config_exits_2_listing_every_problem(tmp_path, capsys):
    bad = _write(tmp_path / "bad.yaml", """
data: {window: 0, horizon: 10}
model: {name: lstm, hiden_size: 8}
train: {epochs: -1, learning_rate: .nan, shedule: cosine}
""")
    assert main([str(bad)]) == 2
    err = capsys.readouterr().err
    for needle in ("data.window", "hiden_size", "did you mean 'hidden_size'", "train.epochs",
                   "train.learning_rate", "shedule"):
        assert needle in err, needle
    assert "Traceback" not in err


def test_command_line_overrides_are_validated(tmp_path, capsys):
    config = _write(tmp_path / "tiny.yaml", TINY)
    assert main([str(config), "--epochs", "0"]) == 2
    assert "train.epochs" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without CUDA")
def test_cuda_without_a_gpu_exits_2(tmp_path, capsys):
    config = _write(tmp_path / "tiny.yaml", TINY)
    assert main([str(config), "--device", "cuda"]) == 2
    assert "no CUDA device" in capsys.readouterr().err


# ------------------------------------------------------------------ recipe pieces


def test_unknown_horizon_names_the_available_ones():
    assert horizon_index(20, (10, 20, 50)) == 1
    with pytest.raises(ConfigError, match=r"horizon 30 \(available: 10, 20, 50\)"):
        horizon_index(30, (10, 20, 50))


def test_previous_known_labels_wait_for_the_horizon():
    ends = torch.tensor([9, 10, 11, 19, 21, 40])
    windows = WindowSet(torch.zeros(41, 2), ends, torch.tensor([0, 1, 2, 0, 1, 2]), 10)
    # end 19 knows the label of end 9; 21 of 11; 40 of 21; the first three know none yet
    assert previous_known_labels(windows, 10).tolist() == [-1, -1, -1, 0, 2, 1]


def test_format_table_has_every_row():
    metrics = {"accuracy": 0.5, "macro_f1": 0.4, "f1_down": 0.3, "f1_stable": 0.2, "f1_up": 0.1, "mcc": 0.0}
    base = {"majority_macro_f1": 0.2, "previous_macro_f1": 0.45}
    table = format_table({"val": metrics, "test": metrics, "baselines": {"val": base, "test": base}})
    assert "lift over majority" in table and "-0.0500" in table and "+0.2000" in table
    assert table.splitlines()[0].split() == ["val", "test"] and "verdict" not in table
    judged = format_table({"val": metrics, "test": metrics, "baselines": {"val": base, "test": base},
                           "trading": {"note": "the export has 40 columns"},
                           "calibration": {"note": "diverged"},
                           "verdict": {"line": "verdict: no lift distinguishable from zero: because"}})
    assert judged.splitlines()[-3:] == ["trading: none (the export has 40 columns)", "calibration: none (diverged)",
                                        "verdict: no lift distinguishable from zero: because"]


def test_build_run_cuts_windows_and_builds_the_model(prepared, tmp_path):
    config = load_run_config(_write(tmp_path / "tiny.yaml", TINY))
    built = build_run(config, prepared, device="cpu", with_test=True)
    assert built.train.window == 10 and built.n_features == 48 == built.train.n_features
    assert len(built.train) > len(built.val) > 0 and built.test is not None
    x, _ = built.train.batch(torch.arange(4))
    assert built.model(x).shape == (4, 3) and built.n_params > 0 and built.latency_ms > 0
    assert build_run(config, prepared, device="cpu").test is None
    again = build_run(config, prepared, device="cpu").data_hash
    wider = config.model_copy(update={"data": config.data.model_copy(update={"window": 12})})
    assert again == built.data_hash != build_run(wider, prepared, device="cpu").data_hash


def test_max_train_windows_caps_training_windows(prepared, tmp_path):
    text = TINY.replace("horizon: 20}", "horizon: 20, max_train_windows: 100}")
    built = build_run(load_run_config(_write(tmp_path / "cap.yaml", text)), prepared, device="cpu")
    assert len(built.train) == 100


def test_evaluate_checkpoint_reports_val_and_test(prepared, tmp_path):
    config = load_run_config(_write(tmp_path / "tiny.yaml", TINY))
    built = build_run(config, prepared, device="cpu")
    result = fit_run(built, checkpoint_dir=tmp_path / "ck")
    outcome = evaluate_checkpoint(config, prepared, tmp_path / "ck")
    assert {"val", "test", "baselines", "lift", "best_epoch", "trading", "calibration", "verdict"} <= set(outcome)
    assert outcome["best_epoch"] == result.best_epoch >= 1
    # the checkpoint's best weights, evaluated on a freshly built run (not its random initial ones)
    fresh = build_run(config, prepared, device="cpu", with_test=True)
    expected = evaluate_model(fresh, result.best_state)
    for split in ("val", "test"):
        assert outcome[split] == expected[split], split
        assert sum(outcome[split]["support"]) == len(getattr(fresh, split))
        base = outcome["baselines"][split]
        best = max(base["majority_macro_f1"], base["previous_macro_f1"])
        assert np.isclose(outcome["lift"][split], outcome[split]["macro_f1"] - best), split


# ------------------------------------------------------------------ the command


def test_cli_trains_and_writes_its_files(small_export, tmp_path, capsys):
    config = _write(tmp_path / "tiny.yaml", TINY)
    out = tmp_path / "run"
    assert main([str(config), "--data", str(small_export), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "epoch   2/2" in printed and "lift over previous known label" in printed
    for text in ("trading, net of costs: fee 0.5 bps per side", "test  oracle (true label)",
                 "calibration on test: log loss", "\nverdict: "):
        assert text in printed, text
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "completed" and len(metrics["history"]) == 2
    assert {"val", "test", "baselines", "lift", "trading", "calibration", "verdict"} <= set(metrics)
    assert metrics["verdict"]["line"] in printed
    saved = load_run_config(out / "config.yaml")
    assert saved.data.export == small_export.resolve() and saved.model.name == "lstm_tiny"
    best = torch.load(out / "best.pt", weights_only=True)
    assert best["n_features"] == 48 and "model" in best


@pytest.mark.slow
@pytest.mark.integration
def test_smoke_config_beats_both_naive_baselines_on_the_demo_export(tmp_path):
    out = tmp_path / "smoke"
    done = subprocess.run(
        [sys.executable, "-m", "lobsearch.train", str(ROOT / "configs" / "smoke.yaml"), "--out", str(out)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "using the built-in demo export" in done.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    val, baselines = metrics["val"]["macro_f1"], metrics["baselines"]["val"]
    assert val > baselines["majority_macro_f1"] + 0.05
    assert val > baselines["previous_macro_f1"] + 0.02
