"""Restore: a resumed driver's own work on a large experiment, Tune alone against lobsearch.restore.

    python bench/restore.py EXPERIMENT [--rounds 2] [--out docs/bench/restore.json]

EXPERIMENT is a finished replayed search's Tune folder, for example the 1,000-trial one that
``bench/scale.py --work W`` leaves in ``W/runs/scale``. Each round copies it twice and, in a fresh
process each (a local Ray of 1 CPU), runs ``tune.Tuner.restore(...)`` and then ``fit()`` on the
copy: every trial finished, so the fit is the controller's resume and Tune's end (its last save
and the ResultGrid), with no trial run; the copy keeps Tune's own result loggers as its only
callbacks (lobsearch's need the driver's plan and open W&B runs, the scale bench's write its
events). Once with Ray Tune alone, once with
``lobsearch.restore.install()``; the order alternates between rounds. Printed: seconds of each
part (wall, and the process's CPU), per variant the median, and the ratio Tune / lobsearch.
"""

from __future__ import annotations

import argparse
import json
import pickle
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("tune", "lobsearch")


def one(variant: str, experiment: str) -> dict[str, float]:
    """Restore and fit ``experiment`` in this process; seconds of each part."""
    import os

    os.environ.update(RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled", TUNE_DISABLE_AUTO_CALLBACK_LOGGERS="1")
    import ray
    from ray import tune

    sys.path.insert(0, str(ROOT / "src"))
    from lobsearch import restore

    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False)
    if variant == "lobsearch":
        restore.install()

    def replay_trial(config):  # the recorded trainable's name; no trial is left to run
        raise AssertionError("a finished experiment runs no trial")

    out = {}
    wall, cpu = time.perf_counter(), time.process_time()
    tuner = tune.Tuner.restore(experiment, trainable=replay_trial)
    out["restore_s"], out["restore_cpu_s"] = time.perf_counter() - wall, time.process_time() - cpu
    wall, cpu = time.perf_counter(), time.process_time()
    grid = tuner.fit()
    out["fit_s"], out["fit_cpu_s"] = time.perf_counter() - wall, time.process_time() - cpu
    out["trials"] = len(grid)
    ray.shutdown()
    return out


def keep_tune_loggers_only(experiment: Path) -> None:
    """Drop every callback but Tune's result loggers from the experiment's ``tuner.pkl``."""
    sys.path[:0] = [str(ROOT / "src"), str(ROOT / "bench")]  # the pickled callbacks' modules
    path = experiment / "tuner.pkl"
    state = pickle.loads(path.read_bytes())
    run_config = state["_run_config"]
    run_config.callbacks = [c for c in run_config.callbacks or [] if type(c).__module__.startswith("ray.tune.logger")]
    path.write_bytes(pickle.dumps(state))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_one"]:
        print(json.dumps(one(argv[1], argv[2])))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment", type=Path)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if not list(args.experiment.glob("experiment_state-*.json")):
        parser.error(f"{args.experiment}: no experiment_state-*.json, not a Tune experiment folder")
    runs: dict[str, list[dict[str, float]]] = {v: [] for v in VARIANTS}
    for round_ in range(args.rounds):
        for variant in VARIANTS if round_ % 2 == 0 else VARIANTS[::-1]:
            with tempfile.TemporaryDirectory() as work:
                copy = Path(work) / args.experiment.name
                shutil.copytree(args.experiment, copy)
                keep_tune_loggers_only(copy)
                done = subprocess.run([sys.executable, __file__, "_one", variant, str(copy)], capture_output=True,
                                      text=True, check=True)
                found = json.loads(done.stdout.strip().splitlines()[-1])
                runs[variant].append(found)
                print(f"round {round_ + 1} {variant:>9}: " + ", ".join(f"{k} {v:.2f}" for k, v in found.items()),
                      flush=True)
    keys = [k for k in runs["tune"][0] if k.endswith("_s")]
    median = {v: {k: round(statistics.median(r[k] for r in runs[v]), 2) for k in keys} for v in VARIANTS}
    ratio = {k: round(median["tune"][k] / median["lobsearch"][k], 2) for k in keys if median["lobsearch"][k]}
    record = {"experiment": str(args.experiment), "trials": runs["tune"][0]["trials"], "rounds": args.rounds,
              "runs": runs, "median": median, "ratio_tune_over_lobsearch": ratio}
    print(json.dumps({k: record[k] for k in ("trials", "median", "ratio_tune_over_lobsearch")}, indent=2))
    if args.out:
        args.out.write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
