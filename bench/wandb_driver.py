"""W&B on the driver: the time Tune's event loop spends in lobsearch's W&B callback, and the
driver's CPU, against the same W&B calls made where Tune calls them.

    python bench/wandb_driver.py [--trials 100] [--epochs 10] [--out docs/bench/wandb_driver.json]

Both sides record the same ``--trials`` offline W&B runs of ``--epochs`` epochs each (one run per
trial: start with the trial's config, one ``log`` per epoch, finish with the best epoch's
summary), with trials started in waves of 8 as a search's slots free up, after one run that
imports W&B and starts its service (timed by neither side):

- ``inline``: the reference, ``tracking.TrialTracker`` calls made on the calling thread (Ray's
  ``WandbLoggerCallback`` also makes the driver wait for each ``wandb.init``);
- ``child``: ``tracking.WandbCallback``'s hooks, as Tune calls them, which send the W&B calls to
  the callback's child process (``lobsearch.callprocess``), and then ``wait`` for it to run them.

Reported per side: the seconds spent inside the hooks (what blocks Tune's event loop: the
trials waiting to start, their results waiting to be processed), per trial and per epoch; the
CPU seconds of this process, all its threads (what the W&B work takes from the driver's GIL and
core); the wall time until every run is closed; the ratios; and that both sides wrote
``--trials`` complete runs. W&B runs offline into a temporary folder; nothing leaves the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # wandb_offline: the reader of offline runs the tests use
WAVE = 8


def _metrics(trial: int, epoch: int) -> dict[str, float]:
    return {"epoch": epoch, "val_macro_f1": 0.3 + 0.01 * epoch + 0.001 * trial, "val_loss": 1.0 - 0.02 * epoch,
            "train_loss": 1.1 - 0.03 * epoch, "val_accuracy": 0.5, "n_params": 12_345.0}


def run_inline(folder: Path, trials: int, epochs: int) -> dict:
    from lobsearch.tracking import TrialTracker, WandbSettings

    settings = WandbSettings(mode="offline", project="lobsearch-bench", entity=None, dir=folder)
    blocked, started, cpu = 0.0, time.perf_counter(), time.process_time()
    for wave in range(0, trials, WAVE):
        ids = range(wave, min(trials, wave + WAVE))
        begin = time.perf_counter()
        trackers = {i: TrialTracker.start(settings, group="bench", job_type="lstm", name=f"t{i:05d}",
                                          config={"params": {"i": i}}) for i in ids}
        for epoch in range(1, epochs + 1):
            for i in ids:
                trackers[i].log_epoch(_metrics(i, epoch), step=epoch)
        for i in ids:
            trackers[i].finish({"best_val_macro_f1": _metrics(i, epochs)["val_macro_f1"]})
        blocked += time.perf_counter() - begin
    return {"hook_s": blocked, "wall_s": time.perf_counter() - started, "driver_cpu_s": time.process_time() - cpu}


def run_child(folder: Path, trials: int, epochs: int) -> dict:
    from lobsearch.space import Objective, Tracking
    from lobsearch.tracking import WandbCallback

    space = SimpleNamespace(spec=SimpleNamespace(tracking=Tracking(wandb="offline", project="lobsearch-bench"),
                                                 objective=Objective()),
                            families=["lstm"], run_config=lambda params: SimpleNamespace(model_dump=lambda mode: {}))
    plan = SimpleNamespace(space=space, name="bench", run_dir=folder, metric="val_macro_f1", sign=1)
    callback = WandbCallback.for_search(plan)
    blocked, started, cpu = 0.0, time.perf_counter(), time.process_time()
    for wave in range(0, trials, WAVE):
        wave_trials = [SimpleNamespace(trial_id=f"t{i:05d}", config={"i": i}, checkpoint=None)
                       for i in range(wave, min(trials, wave + WAVE))]
        begin = time.perf_counter()
        for trial in wave_trials:
            callback.on_trial_start(iteration=0, trials=wave_trials, trial=trial)
        for epoch in range(1, epochs + 1):
            for i, trial in enumerate(wave_trials, start=wave):
                result = {**_metrics(i, epoch), "training_iteration": epoch, "trial_id": trial.trial_id}
                callback.on_trial_result(iteration=epoch, trials=wave_trials, trial=trial, result=result)
        for trial in wave_trials:
            callback.on_trial_complete(iteration=epochs, trials=wave_trials, trial=trial)
        blocked += time.perf_counter() - begin
    drained = callback.wait(600)
    wall, driver_cpu = time.perf_counter() - started, time.process_time() - cpu
    return {"hook_s": blocked, "wall_s": wall, "driver_cpu_s": driver_cpu, "drained": drained and callback.runs.close(60)}


def complete_runs(folder: Path) -> int:
    from wandb_offline import read_offline_run

    runs = [read_offline_run(path) for path in (folder / "wandb").glob("offline-run-*")]
    return sum(1 for run in runs if run.get("exit_code") == 0 and run.get("history"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--out", type=Path, help="write the figures here as JSON")
    args = parser.parse_args(argv)
    os.environ.update(WANDB_MODE="offline", WANDB_SILENT="true", WANDB_DISABLE_GIT="true")
    with tempfile.TemporaryDirectory(prefix="lobsearch-bench-wandb-warm-") as scratch:
        run_inline(Path(scratch), 1, 1)  # wandb imported and its service started before either side is timed
    sides = {}
    for name, run in (("inline", run_inline), ("child", run_child)):
        with tempfile.TemporaryDirectory(prefix=f"lobsearch-bench-wandb-{name}-") as scratch:
            print(f"{name}: {args.trials} trials x {args.epochs} epochs ...", flush=True)
            sides[name] = {**run(Path(scratch), args.trials, args.epochs), "complete_runs": complete_runs(Path(scratch))}
    for name, side in sides.items():
        side.update(hook_ms_per_trial=1e3 * side["hook_s"] / args.trials,
                    hook_ms_per_epoch=1e3 * side["hook_s"] / (args.trials * args.epochs))
        print(f"{name:7} hooks {side['hook_s']:7.2f} s ({side['hook_ms_per_trial']:6.1f} ms per trial), "
              f"driver CPU {side['driver_cpu_s']:6.2f} s, every run closed after {side['wall_s']:6.2f} s, "
              f"complete runs {side['complete_runs']}/{args.trials}")
    ratio = sides["inline"]["hook_s"] / sides["child"]["hook_s"]
    cpu_ratio = sides["inline"]["driver_cpu_s"] / sides["child"]["driver_cpu_s"]
    print(f"time in the hooks, inline / child: {ratio:.1f}x; driver CPU, inline / child: {cpu_ratio:.1f}x")
    ok = all(side["complete_runs"] == args.trials for side in sides.values()) and sides["child"]["drained"]
    if args.out:
        args.out.write_text(json.dumps({"command": " ".join([Path(sys.executable).name, *sys.argv]),
                                        "trials": args.trials, "epochs": args.epochs, "sides": sides,
                                        "inline_over_child": ratio,
                                        "driver_cpu_inline_over_child": cpu_ratio, "load_average": os.getloadavg()}, indent=1))
        print(f"figures written to {args.out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
