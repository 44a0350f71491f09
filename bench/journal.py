"""The journal's per-epoch record: lobsearch's pickled line against Tune's JSON of the same record.

``journal.record_checkpoint`` runs on the driver's event loop at every checkpoint of every trial.
This measures it on real runtime records (one local Tune run of ``--trials`` trials of
``--epochs`` epochs, each reporting a replayed trial's 25 metrics with a checkpoint, the
checkpoint settings and metadata patches of a lobsearch search), alternating, per record: the
JSON line Tune's record makes (``_TrainingRunMetadata.get_json_state``, its cache cleared, as a
new result clears it) and the line lobsearch writes; then reads every line back as a resume does.

    .venv/bin/python bench/journal.py --out docs/bench/journal.json
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


def records(trials: int, epochs: int, work: Path) -> list[Any]:
    """The runtime records (``Trial.run_metadata``) of a finished local Tune run."""
    import ray
    from ray import tune
    from ray.tune.logger import JsonLoggerCallback

    from lobsearch import search, snapshots

    for key, value in search.RAY_ENVIRONMENT.items():
        os.environ.setdefault(key, value)
    snapshots.compact_run_metadata()

    def trainable(config: dict) -> None:
        folder = Path(tempfile.mkdtemp())
        for epoch in range(1, epochs + 1):
            (folder / "state.json").write_text(json.dumps({"epoch": epoch}))
            metrics = {f"val_metric_{i}": config["x"] * epoch / (i + 1) for i in range(25)}
            tune.report({**metrics, "epoch": epoch, "fit_status": "running"},
                        checkpoint=tune.Checkpoint.from_directory(folder))

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        grid = tune.Tuner(trainable, param_space={"x": tune.grid_search([i / trials for i in range(trials)])},
                          tune_config=tune.TuneConfig(reuse_actors=True),
                          run_config=tune.RunConfig(storage_path=str(work), name="journal", verbose=0,
                                                    callbacks=[JsonLoggerCallback()],
                                                    checkpoint_config=tune.CheckpointConfig(num_to_keep=None))).fit()
        return [trial.run_metadata for trial in grid._experiment_analysis.trials]
    finally:
        ray.shutdown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=200, help="records written per trial and way")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    from lobsearch import journal

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        runs = records(args.trials, args.epochs, work / "tune")
        tune_s, ours_s = [], []
        folder = work / "journal"
        for round_ in range(args.rounds):
            for number, run in enumerate(runs):
                trial = SimpleNamespace(trial_id=f"t{number}", run_metadata=run)
                run.invalidate_cache()
                started = time.perf_counter()
                line = json.dumps({"trial_id": trial.trial_id, "run": run.get_json_state()})
                journal._append(folder / "tune.jsonl", line)
                tune_s.append(time.perf_counter() - started)
                run.invalidate_cache()
                started = time.perf_counter()
                journal.record_checkpoint(folder, trial, segment=round_)
                ours_s.append(time.perf_counter() - started)
        tune_line = len(json.dumps({"trial_id": "t0", "run": runs[0].get_json_state()}))
        started = time.perf_counter()
        read = journal.read_checkpoints(folder)
        read_s = time.perf_counter() - started
        same = all(json.loads(read[f"t{n}"]["run"]) == json.loads(run.get_json_state()) for n, run in enumerate(runs))
        ours_line = max(len(line) for line in Path(folder, journal.CHECKPOINTS.format(0)).read_text().splitlines())

    result = {
        "trials": args.trials, "epochs": args.epochs, "records_per_way": len(tune_s),
        "tune_json_ms_median": round(statistics.median(tune_s) * 1000, 3),
        "lobsearch_ms_median": round(statistics.median(ours_s) * 1000, 3),
        "ratio": round(statistics.median(tune_s) / statistics.median(ours_s), 2),
        "tune_json_line_bytes": tune_line, "lobsearch_line_bytes": ours_line,
        # a resume reads every line and makes Tune's JSON of each trial's last one
        "read_back_s": round(read_s, 3), "lines_read_back": len(ours_s), "read_back_equal_to_tunes_json": same,
    }
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
