"""Kill the driver of a real search partway through, resume it, and check nothing was lost."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lobsearch import journal
import yaml

ROOT = Path(__file__).resolve().parents[1]
TRIALS = 5
EPOCHS = 4


def finished_trials(experiment: Path) -> dict[str, list[dict]]:
    """Trial folder name -> its reported rows, for trials that reported their last epoch.

    (Patience 3 cannot stop a 4-epoch run before its last epoch, so every finished trial has 4.)
    """
    done = {}
    for result in experiment.glob("run_trial_*/result.json"):
        rows = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        if rows and rows[-1]["training_iteration"] == EPOCHS:
            done[result.parent.name] = rows
    return done


def command(space: Path, export: Path, storage: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "lobsearch.tune", str(space), "--data", str(export),
            "--storage", str(storage), "--name", "killed", "--wandb", "disabled", *extra]


@pytest.mark.slow
@pytest.mark.integration
def test_killed_search_resumes_without_losing_or_rerunning_trials(small_export: Path, tmp_path: Path) -> None:
    body = yaml.safe_load((ROOT / "search_spaces" / "smoke.yaml").read_text())
    body["fixed"]["train"].update(epochs=EPOCHS, steps_per_epoch=10, patience=3)
    body["search"].update(num_samples=TRIALS, max_concurrent=1, scheduler="none", time_budget_s=None)
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(body))
    storage = tmp_path / "runs"
    experiment = storage / "killed"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(tmp_path / "first.log", "w") as log:
        first = subprocess.Popen(command(space, small_export, storage), stdout=log, stderr=subprocess.STDOUT,
                                 env=env, start_new_session=True)
        deadline = time.monotonic() + 300
        while len(finished_trials(experiment)) < 2 and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        assert first.poll() is None, "the search ended before it could be killed"
        os.killpg(first.pid, signal.SIGKILL)  # the driver and the local Ray it started
        first.wait()
    # the trials Tune ended before the kill (its journal): one whose last epoch was written but that
    # Tune had not ended resumes from its checkpoint and may report that epoch again (the later counts)
    ended = set(journal.read(experiment))
    before = {name: rows for name, rows in finished_trials(experiment).items() if name.split("_")[2] in ended}
    assert 2 <= len(before) < TRIALS, (tmp_path / "first.log").read_text()[-3000:]

    second = subprocess.run(command(space, small_export, storage, "--resume"), capture_output=True, text=True,
                            env=env, timeout=600)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "resuming 'killed'" in second.stdout

    results = json.loads((experiment / "results.json").read_text())
    assert len(results["trials"]) == TRIALS
    assert all(t["status"] != "failed" for t in results["trials"])
    after = finished_trials(experiment)
    for name, rows in before.items():
        assert after[name] == rows, f"finished trial {name} was rerun or changed"

    from ray.tune.search.optuna import OptunaSearch

    searcher = OptunaSearch()
    searcher.restore_from_dir(str(experiment))
    study_trials = searcher._ot_study.trials
    assert len(study_trials) == TRIALS, "the searcher kept what it learned before the kill"
    for rows in before.values():
        config = rows[-1]["config"]
        matches = [t for t in study_trials if all(config.get(k) == v for k, v in t.params.items())]
        assert len(matches) == 1 and matches[0].values is not None, "each finished trial is told to the searcher once"


@pytest.mark.slow
@pytest.mark.integration
def test_ctrl_c_stops_cleanly_and_says_how_to_resume(small_export: Path, tmp_path: Path) -> None:
    body = yaml.safe_load((ROOT / "search_spaces" / "smoke.yaml").read_text())
    body["fixed"]["train"].update(epochs=EPOCHS, steps_per_epoch=10)
    body["search"].update(num_samples=30, max_concurrent=1, time_budget_s=None)
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(body))
    storage = tmp_path / "runs"
    search = subprocess.Popen(command(space, small_export, storage), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + 300
    while len(finished_trials(storage / "killed")) < 1 and time.monotonic() < deadline:
        time.sleep(0.5)
    search.send_signal(signal.SIGINT)
    out, _ = search.communicate(timeout=300)
    assert search.returncode == 130, out[-3000:]
    assert "Resume with:" in out and "--name killed" in out and "--resume" in out
    results = json.loads((storage / "killed" / "results.json").read_text())
    assert results["stopped_by"] == "interrupted"
    assert 1 <= len(results["trials"]) < 30
