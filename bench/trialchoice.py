"""The scheduler's choice of a trial to start: Tune's scan of every trial against lobsearch's check.

Ray Tune's controller calls ``FIFOScheduler.choose_trial_to_run`` (ASHA's too) at every step of
its event loop; Tune scans every trial of the search for a PENDING one, then a PAUSED one.
``lobsearch.trialchoice`` answers from the controller's own sets when no trial waits, and scans as
before when one does. This times both on the same controller, alternating in rounds, for searches
of ``--sizes`` trials (real ``ray.tune.experiment.Trial`` objects, 32 running and the rest
finished, as in a search with every slot busy; then with one trial pending), and counts the calls
a real search makes (a replayed search of ``--trials`` trials, 8 at a time, on a local Ray).

    .venv/bin/python bench/trialchoice.py --out docs/bench/trialchoice.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def controller(size: int, pending: int) -> Any:
    """Tune's wrapper around a controller of ``size`` trials: 32 RUNNING, ``pending`` PENDING (the
    last ones), the rest TERMINATED, with the status sets Tune keeps."""
    from ray.tune.execution.tune_controller import TrialRunnerWrapper
    from ray.tune.experiment import Trial

    trials = [Trial("replay", stub=True) for _ in range(size)]
    for i, trial in enumerate(trials):
        trial.set_status(Trial.PENDING if i >= size - pending else Trial.RUNNING if i < 32 else Trial.TERMINATED)
    inner = SimpleNamespace(_trials=trials, get_trials=lambda: trials,
                            _pending_trials={t for t in trials if t.status == Trial.PENDING},
                            _paused_trials=set())
    return TrialRunnerWrapper(inner, trial_executor=None, runner_whitelist_attr={"get_trials"})


def per_call_us(choose: Any, scheduler: Any, wrapped: Any, calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        choose(scheduler, wrapped)
    return (time.perf_counter() - started) / calls * 1e6


def timings(sizes: list[int], rounds: int) -> list[dict[str, Any]]:
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from lobsearch import trialchoice

    scan = FIFOScheduler.choose_trial_to_run
    trialchoice.install()
    check = FIFOScheduler.choose_trial_to_run
    assert check is not scan, "lobsearch.trialchoice was already installed: no reference to time"
    scheduler, rows = ASHAScheduler(metric="m", mode="max"), []
    for size in sizes:
        for pending in (0, 1):
            wrapped = controller(size, pending)
            assert check(scheduler, wrapped) is scan(scheduler, wrapped)
            calls = max(20, 200_000 // size)
            tune_us, lobsearch_us = [], []
            for _ in range(rounds):
                tune_us.append(per_call_us(scan, scheduler, wrapped, calls))
                lobsearch_us.append(per_call_us(check, scheduler, wrapped, calls))
            row = {"trials": size, "pending": pending, "calls_per_round": calls,
                   "tune_scan_us": round(statistics.median(tune_us), 3),
                   "lobsearch_us": round(statistics.median(lobsearch_us), 3)}
            row["ratio"] = round(row["tune_scan_us"] / row["lobsearch_us"], 2)
            rows.append(row)
            print(f"{size:6d} trials, {pending} pending: Tune's scan {row['tune_scan_us']:9.2f} us, "
                  f"lobsearch {row['lobsearch_us']:9.2f} us per call, ratio {row['ratio']:.2f}", flush=True)
    return rows


def calls_in_a_search(trials: int) -> dict[str, Any]:
    """How often a replayed search of ``trials`` trials (10 epochs, ASHA) asks the scheduler, and
    how many of those asks found no trial waiting."""
    import yaml
    from ray.tune.schedulers import FIFOScheduler

    from lobsearch.replay import load_replay, searched_names
    from lobsearch.search import run_search
    from lobsearch.space import load_space

    check, answers = FIFOScheduler.choose_trial_to_run, []
    FIFOScheduler.choose_trial_to_run = lambda self, wrapped: answers.append(check(self, wrapped)) or answers[-1]
    work = Path(tempfile.mkdtemp(prefix="bench-trialchoice-"))
    raw = yaml.safe_load((ROOT / "search_spaces" / "lstm.yaml").read_text())
    raw["search"].pop("time_budget_s")
    raw["search"].pop("reeval_top", None)
    raw["search"].update({"num_samples": trials, "max_concurrent": 8, "cpus_per_trial": 0.25})
    raw["tracking"] = {"wandb": "disabled"}
    (work / "space.yaml").write_text(yaml.safe_dump(raw))
    space = load_space(work / "space.yaml")
    replay = load_replay(ROOT / "docs" / "bench" / "scale_source_results.json", metric="val_macro_f1",
                         searched=searched_names(space), epoch_s=0.05)
    started = time.perf_counter()
    run_search(space, export=None, name="c", storage=str(work / "runs"), quiet=True, replay=replay)
    FIFOScheduler.choose_trial_to_run = check
    epochs = sum(len(path.read_text().splitlines()) for path in (work / "runs" / "c").glob("*/result.json"))
    return {"trials": trials, "epochs": epochs, "wall_s": round(time.perf_counter() - started, 1),
            "calls": len(answers), "calls_per_epoch": round(len(answers) / max(epochs, 1), 2),
            "calls_with_none_waiting": sum(a is None for a in answers)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 10000])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--trials", type=int, default=48, help="trials of the replayed search; 0: none")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    from lobsearch import search

    for key, value in search.RAY_ENVIRONMENT.items():
        os.environ.setdefault(key, value)
    record: dict[str, Any] = {"command": " ".join(["bench/trialchoice.py", *sys.argv[1:]]),
                              "per_call": timings(args.sizes, args.rounds)}
    if args.trials:
        import ray

        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        record["search"] = calls_in_a_search(args.trials)
        ray.shutdown()
        print(json.dumps(record["search"]), flush=True)
    if args.out:
        args.out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
