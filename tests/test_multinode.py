"""Multi-node behaviour on a simulated Ray cluster: trials spread, and a lost node is survived."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(__file__).with_name("multinode_search.py")


def run_cluster(mode: str, tmp_path: Path, export: Path, *, trials: int, epochs: int, steps: int = 10) -> dict:
    body = yaml.safe_load((ROOT / "search_spaces" / "smoke.yaml").read_text())
    body["fixed"]["train"].update(epochs=epochs, steps_per_epoch=steps, patience=epochs)
    body["search"].update(num_samples=trials, scheduler="none", time_budget_s=None, max_failures=2)
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(body))
    out = tmp_path / "out.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), mode, str(space), str(export), str(tmp_path / "runs"), str(out), str(epochs)],
        capture_output=True, text=True, timeout=900,
    )
    assert done.returncode == 0 and out.is_file(), done.stdout[-3000:] + done.stderr[-3000:]
    log = json.loads(out.read_text())
    log["results"] = json.loads((tmp_path / "runs" / mode / "results.json").read_text())
    return log


@pytest.mark.slow
@pytest.mark.integration
def test_trials_spread_over_worker_nodes(small_export: Path, tmp_path: Path) -> None:
    log = run_cluster("spread", tmp_path, small_export, trials=4, epochs=2)
    assert log["code"] == 0
    trials = log["results"]["trials"]
    assert len(trials) == 4 and all(t["status"] == "completed" for t in trials)
    nodes = {t["node_id"] for t in trials}
    assert nodes == set(log["workers"]), "trials ran on both workers and never on the CPU-less head"


@pytest.mark.slow
@pytest.mark.integration
def test_search_survives_losing_a_worker_node(small_export: Path, tmp_path: Path) -> None:
    epochs = 6
    log = run_cluster("lose-node", tmp_path, small_export, trials=4, epochs=epochs, steps=30)
    assert log["code"] == 0
    assert log.get("interrupted"), "the node was removed while one of its trials was running"
    trials = log["results"]["trials"]
    assert len(trials) == 4, "the search completed with the asked number of trials"
    assert all(t["status"] == "completed" and t["epochs"] == epochs for t in trials)
    for name, rows in log["finished_before"].items():
        assert log["rows"][name] == rows, f"{name} finished before the loss and was not rerun"
    lost, survivor = log["workers"][1], log["workers"][0]
    moved = {n: rows for n, rows in log["rows"].items() if len({row["node_id"] for row in rows}) > 1}
    assert set(log["interrupted"]) <= set(moved), "the interrupted trial was retried on the other node"
    for name in moved:
        nodes = [row["node_id"] for row in log["rows"][name]]
        assert nodes[0] == lost and nodes[-1] == survivor
        epochs_seen = [row["epoch"] for row in log["rows"][name]]
        resumed_at = epochs_seen[nodes.index(survivor)]
        assert resumed_at > 1, "the retry continued from the trial's last checkpoint, not from epoch 1"
        assert epochs_seen[-1] == epochs
