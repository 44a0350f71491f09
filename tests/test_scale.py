"""bench/scale.py: its figures computed right from events, and the scale test at reduced size
(200 trials, 16 at a time, on a simulated 2-node cluster with half a GPU per trial, a node lost
and the driver killed and resumed) within its targets."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench" / "scale.py"


@pytest.fixture(scope="module")
def scale():
    spec = importlib.util.spec_from_file_location("bench_scale", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def settings(**overrides) -> argparse.Namespace:
    base = {"trials": 4, "concurrent": 2, "epochs": 10, "epoch_s": 1.0, "gpus_per_trial": 0.5}
    return argparse.Namespace(**{**base, **overrides})


def test_percentile_and_slope(scale):
    assert scale.percentile([5, 1, 4, 2, 3], 0.5) == 3 and scale.percentile([1, 2, 3, 4], 0.95) == 4
    assert scale.percentile([], 0.5) is None
    assert scale.slope([1, 2, 3], [2, 4, 6]) == pytest.approx(2) and scale.slope([1, 1], [0, 1]) is None


def test_utilization_is_epochs_times_epoch_time_over_slot_time(scale):
    events = [{"kind": "start", "t": 0.0}, {"kind": "start", "t": 0.0}]
    events += [{"kind": "epoch", "t": float(t)} for t in (1, 1, 2, 2, 3)]
    found = scale.utilization(events, {}, settings())
    assert found["ratio"] == pytest.approx(5 / (2 * 3), abs=1e-4) and found["span_s"] == 3.0
    killed = scale.utilization(events, {"driver_killed_at": 2.0}, settings())
    assert killed["ratio"] == pytest.approx(4 / (2 * 2))


def test_the_utilization_after_the_first_wave_counts_from_the_last_slot_started(scale):
    # 2 slots, 1 s epochs: a starts at 0, b at 3 (a slow first process); both then busy to the kill at 9
    events = [{"kind": "start", "trial": "a", "t": 0.0}, {"kind": "start", "trial": "b", "t": 3.0},
              *({"kind": "epoch", "trial": "a", "t": float(t)} for t in range(1, 10)),
              *({"kind": "epoch", "trial": "b", "t": t + 0.5} for t in range(4, 10))]  # 9.5: after the kill
    found = scale.utilization_after_first_wave(events, {"driver_killed_at": 9.0}, settings(epoch_s=1.0, concurrent=2))
    # window (4, 9]: a's epochs at 5..9 and b's at 4.5..8.5 = 10 epochs in 2 slots x 5 s
    assert found == {"first_wave_s": 3.0, "span_s": 5.0, "epochs": 10, "ratio": 1.0}
    whole = scale.utilization(events, {"driver_killed_at": 9.0}, settings(epoch_s=1.0, concurrent=2))
    assert whole["ratio"] < found["ratio"], "the whole span counts b's slot idle while its process started"
    assert scale.utilization_after_first_wave(events[:1], {}, settings(epoch_s=1.0, concurrent=2)) == {}


def test_slot_losses_split_what_the_utilization_misses_into_its_parts(scale):
    # 2 slots over 0 .. 10 s (the kill at 10), 1 s epochs: trial a holds slot 1 throughout, b
    # starts at 2 and ends at 6, c starts at 7 and is still running at the kill
    events = [{"kind": "start", "trial": "a", "t": 0.0}, {"kind": "start", "trial": "b", "t": 2.0},
              *({"kind": "epoch", "trial": "a", "t": t} for t in (1.5, 2.5, 3.5, 4.5, 5.5, 6.5, 7.5, 8.5, 9.5)),
              *({"kind": "epoch", "trial": "b", "t": t} for t in (3.2, 4.4, 5.4)),
              {"kind": "complete", "trial": "b", "t": 6.0}, {"kind": "start", "trial": "c", "t": 7.0},
              {"kind": "epoch", "trial": "c", "t": 8.0}, {"kind": "epoch", "trial": "c", "t": 9.0},
              {"kind": "epoch", "trial": "c", "t": 11.0}]  # after the kill: not counted
    found = scale.slot_losses(events, {"driver_killed_at": 10.0}, settings(epoch_s=1.0, concurrent=2))
    # setup: a 0.5, b 0.2, c 0; lateness: b 0.2; ending: b 0.6, a 0.5, c 1.0; no trial: 0..2 and 6..7
    assert found["setup"] == pytest.approx(0.7 / 20) and found["epoch_lateness"] == pytest.approx(0.2 / 20)
    assert found["ending"] == pytest.approx(2.1 / 20) and found["no_trial"] == pytest.approx(3.0 / 20)
    assert found["epoch_lateness_ms_mean"] == pytest.approx(200 / 11, abs=0.1)
    assert sum(found[k] for k in ("setup", "epoch_lateness", "ending", "no_trial")) == pytest.approx(
        1 - 14 / 20), "the parts add up to what the utilization misses (14 epochs in 20 slot seconds)"


def test_scheduler_choice_is_the_first_drivers_count_at_its_last_trial_end(scale):
    events = [{"kind": "driver_start", "pid": 1, "t": 0.0},
              {"kind": "epoch", "pid": 1, "t": 1.0}, {"kind": "epoch", "pid": 1, "t": 2.0},
              {"kind": "complete", "pid": 1, "t": 2.5, "choices": 10, "choice_s": 0.001},
              {"kind": "epoch", "pid": 1, "t": 3.0},
              {"kind": "complete", "pid": 1, "t": 3.5, "choices": 30, "choice_s": 0.003},
              {"kind": "epoch", "pid": 2, "t": 4.0},  # the resumed driver counts from 0 again
              {"kind": "complete", "pid": 2, "t": 4.5, "choices": 2, "choice_s": 0.5}]
    assert scale.scheduler_choice(events) == {"calls": 30, "total_s": 0.003, "calls_per_epoch": 10.0,
                                              "us_per_call": 100.0}


def test_placement_counts_trials_sharing_a_logical_gpu_at_one_time(scale):
    def epochs(trial: str, gpu: str, start: float, end: float, pid: int = 1) -> list[dict]:
        return [{"kind": "epoch", "trial": trial, "node": "n1", "gpus": gpu, "t": t, "pid": pid} for t in (start, end)]

    events = epochs("a", "0", 0, 10) + epochs("b", "0", 1, 5) + epochs("c", "0", 6, 9) + epochs("d", "1", 0, 10)
    trials = [{"node_id": "n1"}] * 4
    found = scale.placement(events, trials, {}, settings())
    assert found["most_trials_on_one_gpu"] == 2 and found["allowed_per_gpu"] == 2
    assert found["trials_per_node"] == [4]
    crowded = events + epochs("e", "0", 2, 3)
    assert scale.placement(crowded, trials, {}, settings())["most_trials_on_one_gpu"] == 3


def test_resume_figures_count_finished_trials_lost_and_rerun(scale):
    before = [{"kind": "start", "trial": t} for t in ("a", "b", "c", "f", "g")] + [
        {"kind": "complete", "trial": t} for t in ("a", "b", "c")]  # f and g running at the kill
    after = [{"kind": "suggest", "t": 12.0}, {"kind": "start", "trial": "c", "t": 13.0},
             {"kind": "epoch", "trial": "c", "t": 14.0}, {"kind": "start", "trial": "a", "t": 13.0},
             {"kind": "start", "trial": "f", "t": 13.5}]
    history = [{"epoch": 1}, {"epoch": 2}]
    trials = [{"trial_id": "a", "status": "completed", "history": history},
              {"trial_id": "c", "status": "pruned", "history": history[1:]},  # epoch 1 missing
              {"trial_id": "d", "status": "pruned", "history": []},  # no epoch at all
              {"trial_id": "e", "status": "failed", "history": []}]
    found = scale.resume_figures(before, after, {"resume_relaunched_at": 10.0}, trials)
    assert found == {"finished_before_kill": 3, "lost": 1, "histories_with_gaps": 2, "rerun": 1,
                     "restored_without_rerun": 1, "running_at_kill": 2, "running_resumed_under_own_id": 1,
                     "to_first_suggest_s": 2.0, "to_first_epoch_s": 4.0}


def test_repeated_epochs_count_result_files_holding_an_iteration_twice_and_orphan_folders(scale, tmp_path: Path):
    def folder(name: str, iterations: list[int]) -> None:
        (tmp_path / name).mkdir()
        (tmp_path / name / "result.json").write_text(
            "".join(json.dumps({"training_iteration": i}) + "\n" for i in iterations) + '{"torn')
    folder("run_trial_aa_1_x", [1, 2, 3])
    folder("run_trial_bb_2_x", [1, 2, 2, 3])
    folder("run_trial_cc_3_x", [1])  # not in the results: a trial lost at the kill
    trials = [{"trial_id": "aa"}, {"trial_id": "bb"}]
    assert scale.repeated_epochs(tmp_path, trials) == {"result_files_with_an_epoch_twice": 1, "orphan_trial_folders": 1}


def test_the_wait_at_the_end_runs_from_the_last_trial_to_the_report_written(scale, tmp_path: Path):
    (tmp_path / "report.html").write_text("r")
    (tmp_path / "results.json").write_text("{}")
    events = [{"kind": "complete", "t": 10.0}, {"kind": "error", "t": 12.0}, {"kind": "complete", "t": 11.0},
              {"kind": "write_results", "t": 14.5, "s": 2.0}, {"kind": "write_report", "t": 14.0, "s": 1.5},
              {"kind": "finish", "t": 15.0, "s": 2.5}]
    found = scale.writes(events, tmp_path)
    assert found["after_last_trial_s"] == 2.0
    assert (found["finish_s"], found["results_and_report_s"], found["report_s"]) == (2.5, 2.0, 1.5)


def test_searcher_figures_take_the_late_suggestions_wall_and_cpu_times_and_count_duplicates(scale):
    events = [{"kind": "suggest", "n": n, "s": 0.1 * n, "cpu_s": 0.01 * n} for n in range(10)]
    trials = [{"number": i, "params": {"x": i % 3}} for i in range(4)]
    found = scale.searcher_figures(events, trials, settings(trials=10, concurrent=3))
    assert found["late_suggests"] == 1 and found["suggest_ms_p95_last10pct"] == pytest.approx(900)
    assert found["suggest_cpu_ms_p95_last10pct"] == pytest.approx(90)
    assert found["duplicates_first_concurrent"] == 0 and found["duplicates_all"] == 1


def test_the_searcher_probe_asks_pending_trials_with_and_without_the_constant_liar_and_with_lobsearchs_sampler(scale):
    found = scale.searcher_probe(settings(trials=30, concurrent=8, source=scale.SOURCE))
    assert found["finished"] == 30 and found["pending"] == 8
    for sampler in ("constant_liar_false", "constant_liar_true", "lobsearch"):
        assert found[sampler]["duplicates"] == 0 and 0 <= found[sampler]["near_duplicates"] < 8
        assert 0 < found[sampler]["ask_ms_p50"] <= found[sampler]["ask_ms_p95"]
    assert found["lobsearch"]["same_suggestions_as_optuna"] is True and found["lobsearch"]["optuna_over_lobsearch_p50"] > 0


HANG_S = 600


@pytest.mark.ray
@pytest.mark.slow
def test_the_scale_test_at_reduced_size_meets_its_targets(tmp_path: Path, without_shared_ray):
    """200 replayed trials of up to 4 epochs, 16 at a time, 2 nodes x 8 logical GPUs at 0.5 GPU
    per trial, W&B offline; a node lost at 40 % of the trials, the driver SIGKILLed at 90 % and
    resumed. The counts are exact; its time (the issue's 3 minutes) is the benchmark's to measure
    (docs/benchmarks.md "Scale": 130-140 s here alone, over 175 s once within the whole test run),
    so the timeout only guards against a hang."""
    out = tmp_path / "scale.json"
    command = [sys.executable, str(BENCH), "--trials", "200", "--concurrent", "16", "--epochs", "4", "--epoch-s", "0.1",
               "--nodes", "2", "--gpus-per-node", "8", "--gpus-per-trial", "0.5", "--wandb", "offline",
               "--lose-node-at", "0.4", "--kill-driver-at", "0.9", "--fresh-ray-on-resume", "--no-searcher-probe",
               "--work", str(tmp_path / "work"),
               "--out", str(out)]
    started = time.monotonic()
    # a session of its own: on a timeout, the simulated cluster's processes go with the bench
    bench = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                             start_new_session=True)
    try:
        stdout, stderr = bench.communicate(timeout=HANG_S)
    except subprocess.TimeoutExpired:
        os.killpg(bench.pid, signal.SIGKILL)
        bench.communicate()
        pytest.fail(f"the reduced scale test hung: still running after {HANG_S} s")
    assert bench.returncode == 0, stdout[-3000:] + stderr[-3000:]
    print(f"reduced scale test: {time.monotonic() - started:.0f} s")
    found = json.loads(out.read_text())
    assert found["trials"] == 200 and set(found["status"]) <= {"completed", "pruned", "early_stopped"}
    assert found["torch_in_trial"].get("True", 0) == 0 and found["torch_in_trial"]["False"] > 200
    searcher = found["searcher"]
    assert searcher["duplicates_first_concurrent"] == 0 and searcher["suggest_ms_p95_last10pct"] < 500
    assert found["driver_memory"]["peak_mb_per_trial"] < 1.0
    assert found["processes"]["peak"]["wandb_procs"] <= 1 and found["processes"]["peak"]["driver_procs"] <= 3
    writes = found["writes"]
    assert writes["results_and_report_s"] < 10 and writes["after_last_trial_s"] < 10 and writes["report_mb"] < 10
    placement = found["placement"]
    assert placement["most_trials_on_one_gpu"] <= placement["allowed_per_gpu"] == 2
    assert placement["node_loss"]["failed"] == 0 and placement["nodes_used"] >= 2
    # trials that ended after the last experiment-state save before the kill are kept from the
    # journal (lobsearch.journal): none lost, none run again
    resume = found["resume"]
    assert resume["finished_before_kill"] > 100 and resume["lost"] == resume["rerun"] == 0, resume
    assert resume["histories_with_gaps"] == 0, resume
    # every trial running at the kill, also one started after that save, resumed under its own id
    assert resume["running_resumed_under_own_id"] == resume["running_at_kill"] > 0, resume
    assert resume["orphan_trial_folders"] == resume["result_files_with_an_epoch_twice"] == 0, resume
    assert resume["to_first_epoch_s"] < HANG_S / 3
    # budgeted (quick saves follow each checkpoint, slower ones wait), not one per trial checkpoint
    assert found["experiment_save"]["count"] < found["torch_in_trial"]["False"] / 3
