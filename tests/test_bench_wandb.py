"""The W&B driver benchmark runs end to end at a tiny size: both sides close every offline run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "wandb_driver.py"


@pytest.mark.integration
def test_the_wandb_driver_benchmark_closes_every_run_on_both_sides(tmp_path: Path) -> None:
    out = tmp_path / "figures.json"
    env = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "WANDB_CONFIG_DIR": str(tmp_path / "config"),
           "WANDB_DATA_DIR": str(tmp_path / "data"), "WANDB_CACHE_DIR": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, str(BENCH), "--trials", "10", "--epochs", "2", "--out", str(out)],
                          capture_output=True, text=True, timeout=300, env=env, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    figures = json.loads(out.read_text())
    assert {side["complete_runs"] for side in figures["sides"].values()} == {10}
    assert figures["sides"]["child"]["drained"] and figures["inline_over_child"] > 0 and figures["driver_cpu_inline_over_child"] > 0
    assert "time in the hooks, inline / child" in done.stdout
