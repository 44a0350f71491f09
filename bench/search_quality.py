"""Search quality: TPE + ASHA against random search, both through lobsearch, same trials and seed.

    python bench/search_quality.py [--trials 16] [--out docs/bench/search_quality.json]

Runs ``python -m lobsearch.tune`` twice on a synthetic export with a planted look-back (the
demo export unless --data is given): once with the shipped space's TPE sampler and ASHA
scheduler, once with Optuna's random sampler and no early stopping, with the same number of
trials, the same seed and the same fixed training settings. Prints, for each: best validation
macro-F1 against trials and against wall time, the fraction of the export's oracle macro-F1
reached, whether the best window covers the planted look-back, and the wall time ASHA saved.
Target: TPE + ASHA reaches random search's final best in at most half of random's wall time.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from lobsearch.tune import main as tune_main  # noqa: E402

SPACE = {
    "name": "quality",
    "objective": {"metric": "val_macro_f1"},
    "fixed": {
        "data": {"horizon": 20, "stride": 1, "features": "full"},
        # 9 epochs = grace period x reduction factor^2: ASHA's rungs at epochs 1, 3 and 9
        "train": {"epochs": 9, "steps_per_epoch": 30, "max_eval_windows": 3000, "patience": 9},
    },
    # ranges as wide as a user who does not know the answer would search: windows shorter than
    # the planted 20-row look-back, learning rates too small for 270 steps and too large
    "params": {
        "data.window": {"type": "int", "low": 2, "high": 60, "step": 2},
        "train.learning_rate": {"type": "float", "low": 1.0e-4, "high": 3.0e-2, "log": True},
    },
    "models": {
        "lstm": {
            "fixed": {"num_layers": 1},
            "params": {"hidden_size": {"type": "int", "low": 4, "high": 64, "log": True}},
        }
    },
    "search": {"grace_period": 1, "reduction_factor": 3, "max_concurrent": 2},
    "tracking": {"wandb": "disabled"},
}


def run(kind: str, trials: int, seed: int, data: Path | None, storage: Path) -> dict:
    """One search; returns its results.json plus the wall time of the whole command."""
    space = json.loads(json.dumps(SPACE))
    space["search"].update(num_samples=trials, seed=seed)
    if kind == "random":
        space["search"].update(searcher="random", scheduler="none")
    path = storage / f"{kind}.yaml"
    path.write_text(yaml.safe_dump(space))
    args = [str(path), "--name", kind, "--storage", str(storage), "--quiet"]
    if data is not None:
        args += ["--data", str(data)]
    started = time.monotonic()
    code = tune_main(args)
    wall = time.monotonic() - started
    if code != 0:
        raise SystemExit(f"{kind} search failed with exit code {code}")
    results = json.loads((storage / kind / "results.json").read_text())
    return {"kind": kind, "wall_s": wall, "results": results}


def curve(results: dict) -> list[dict]:
    """Best-so-far validation macro-F1 by trial end time (seconds since the first trial began)."""
    best, points = None, []
    trials = sorted((t for t in results["trials"] if t["best"] and t["end_s"] is not None), key=lambda t: t["end_s"])
    for i, trial in enumerate(trials, start=1):
        value = trial["best"]["val_macro_f1"]
        best = value if best is None else max(best, value)
        points.append({"trials": i, "time_s": trial["end_s"], "best": best, "window": trial["params"].get("data.window")})
    return points


def time_to_reach(points: list[dict], target: float) -> float | None:
    return next((p["time_s"] for p in points if p["best"] >= target - 1e-12), None)


def describe(run_: dict, points: list[dict], oracle: float | None, lag: int | None) -> dict:
    results = run_["results"]
    best = results.get("best") or {}
    window = (best.get("params") or {}).get("data.window")
    epochs = sum(t["epochs"] for t in results["trials"])
    return {
        "kind": run_["kind"],
        "trials": len(results["trials"]),
        "epochs_trained": epochs,
        "search_s": points[-1]["time_s"] if points else None,
        "command_s": round(run_["wall_s"], 1),
        "best_val_macro_f1": points[-1]["best"] if points else None,
        "oracle_fraction": (points[-1]["best"] / oracle) if points and oracle else None,
        "best_window": window,
        "window_covers_lag": (window >= lag) if window is not None and lag else None,
        "curve": points,
    }


def compare(trials: int, seed: int, data: Path | None) -> dict:
    """One TPE + ASHA search and one random search with the same seed; the figures of both."""
    with tempfile.TemporaryDirectory(prefix="lobsearch-quality-") as folder:
        runs = [run(kind, trials, seed, data, Path(folder)) for kind in ("tpe_asha", "random")]
    manifest = json.loads((Path(runs[0]["results"]["export"]) / "dataset_manifest.json").read_text())
    oracle = manifest.get("oracle_macro_f1", {}).get("20")
    lag = manifest.get("planted_lag")
    tpe, rnd = (describe(r, curve(r["results"]), oracle, lag) for r in runs)
    reach = time_to_reach(tpe["curve"], rnd["best_val_macro_f1"]) if rnd["best_val_macro_f1"] is not None else None
    return {
        "seed": seed,
        "oracle_macro_f1_h20": oracle,
        "planted_lag": lag,
        "tpe_asha_time_to_random_best_s": reach,
        "random_total_s": rnd["search_s"],
        "ratio": (reach / rnd["search_s"]) if reach is not None and rnd["search_s"] else None,
        "asha_epochs_saved": rnd["epochs_trained"] - tpe["epochs_trained"],
        "asha_wall_saved_s": (rnd["search_s"] or 0) - (tpe["search_s"] or 0),
        "runs": [tpe, rnd],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--data", type=Path, help="export (default: the demo export)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "bench" / "search_quality.json")
    args = parser.parse_args()
    comparisons = [compare(args.trials, seed, args.data) for seed in args.seeds]
    ratios = sorted(c["ratio"] if c["ratio"] is not None else float("inf") for c in comparisons)
    summary = {"trials_each": args.trials, "seeds": args.seeds, "median_ratio": ratios[len(ratios) // 2],
               "comparisons": comparisons}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2))
    print(f"\n{'seed':>4} {'search':<10} {'trials':>6} {'epochs':>6} {'wall s':>7} {'best F1':>8} {'% oracle':>8} "
          f"{'window':>6} {'covers lag':>10}")
    for comparison in comparisons:
        for row in comparison["runs"]:
            frac = f"{100 * row['oracle_fraction']:.0f}%" if row["oracle_fraction"] else "-"
            print(f"{comparison['seed']:>4} {row['kind']:<10} {row['trials']:>6} {row['epochs_trained']:>6} "
                  f"{row['search_s'] or 0:>7.0f} {row['best_val_macro_f1'] or 0:>8.4f} {frac:>8} "
                  f"{row['best_window']!s:>6} {row['window_covers_lag']!s:>10}")
        ratio = comparison["ratio"]
        shown = f"{ratio:.2f}x" if ratio is not None else "never"
        print(f"     TPE + ASHA reached random's final best at {shown} of random's wall time; "
              f"ASHA saved {comparison['asha_epochs_saved']} epochs ({comparison['asha_wall_saved_s']:.0f} s)")
    print(f"median ratio over seeds {args.seeds}: {summary['median_ratio']:.2f}x (target <= 0.5x). Figures: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
