"""Holdout against walk-forward: what the protocol costs and what its winner is worth on test.

    python bench/protocols.py [--seeds 5] [--num-samples 8] [--folds 3] [--out docs/bench/protocols.json]

For each seed, two searches of ``search_spaces/lstm.yaml`` on the demo export with the same trial
budget (``--num-samples``, no time budget) and the same shortened training (``--epochs`` of
``--steps`` steps), run one after the other so that both see the same machine load:
``objective.protocol: holdout`` and ``walk_forward`` with ``--folds`` folds. Each ends with the
same re-evaluation (``--reeval-top`` configurations x ``--reeval-seeds`` fresh seeds on every
training day, chosen on the val days) and one test evaluation of its winner.

Reported per protocol (mean over seeds): the search's trial-epochs and wall seconds (target:
walk-forward <= 2x holdout), the re-evaluation's runs and seconds beside them, and the winner's
test macro-F1 and test net bps per day.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import yaml
from searches import ROOT, local_ray, run

from lobsearch.synth import demo_export

SPACE = ROOT / "search_spaces" / "lstm.yaml"


def _space(folder: Path, seed: int, protocol: str, args: argparse.Namespace) -> Path:
    body = yaml.safe_load(SPACE.read_text())
    body["objective"] = {"metric": "val_macro_f1", "protocol": protocol,
                         **({"folds": args.folds} if protocol == "walk_forward" else {})}
    body["fixed"]["train"].update(epochs=args.epochs, steps_per_epoch=args.steps, seed=seed)
    body["search"].update(seed=seed, num_samples=args.num_samples, reeval_top=args.reeval_top,
                          reeval_seeds=args.reeval_seeds)
    body["search"].pop("time_budget_s", None)
    path = folder / f"{protocol}-{seed}.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def _search(space: Path, storage: Path, name: str) -> dict:
    results, code, wall = run(space, storage, name)
    if results is None:
        return {"name": name, "exit_code": code}
    best, reeval, cost = results["best"], results["reeval"], results["search_cost"]
    model = ((best.get("trading") or {}).get("test") or {}).get("model") or {}
    return {
        "name": name, "exit_code": 0, "wall_s": round(wall, 1), "search_wall_s": cost["wall_s"],
        "trial_epochs": cost["trial_epochs"], "trials": cost["trials"],
        "reeval_runs": reeval["cost"]["runs"], "reeval_epochs": reeval["cost"]["epochs"],
        "reeval_wall_s": reeval["cost"]["wall_s"], "winner": best["trial_id"],
        "test_macro_f1": best["test"]["macro_f1"], "test_net_bps_per_day": model.get("net_bps_per_day"),
        "verdict": best["verdict"]["distinguishable"],
    }


def _mean(runs: list[dict], key: str) -> float | None:
    values = [r[key] for r in runs if r.get(key) is not None]
    return round(statistics.fmean(values), 4) if values else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--num-samples", type=int, default=8)
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--reeval-top", type=int, default=2)
    parser.add_argument("--reeval-seeds", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    demo_export()
    runs: dict[str, list[dict]] = {"holdout": [], "walk_forward": []}
    with local_ray(), tempfile.TemporaryDirectory(prefix="lobsearch-protocols-") as scratch:
        folder = Path(scratch)
        for seed in range(args.seeds):
            for protocol in runs:
                found = _search(_space(folder, seed, protocol, args), folder / "runs", f"{protocol}-{seed}")
                runs[protocol].append(found)
                print(f"{protocol} seed {seed}: {json.dumps(found)}", flush=True)
    table = {p: {k: _mean(r, k) for k in ("trial_epochs", "search_wall_s", "reeval_runs", "reeval_wall_s",
                                          "test_macro_f1", "test_net_bps_per_day")} for p, r in runs.items()}
    ratio = {k: round(table["walk_forward"][k] / table["holdout"][k], 2) for k in ("trial_epochs", "search_wall_s")
             if table["holdout"][k]}
    summary = {"command": "python bench/protocols.py " + " ".join(argv if argv is not None else sys.argv[1:]),
               "settings": {k: v for k, v in vars(args).items() if k != "out"}, "mean": table,
               "walk_forward_over_holdout": ratio, "target": "walk_forward <= 2x holdout (trial-epochs, wall)",
               "runs": runs}
    print(f"\n{'protocol':<13} {'trial-epochs':>12} {'search s':>9} {'reeval runs':>11} {'reeval s':>9} "
          f"{'test F1':>8} {'test bps/day':>12}")
    for protocol, row in table.items():
        print(f"{protocol:<13} {row['trial_epochs']:>12} {row['search_wall_s']:>9} {row['reeval_runs']:>11} "
              f"{row['reeval_wall_s']:>9} {row['test_macro_f1']:>8} {row['test_net_bps_per_day']:>12}")
    print(f"walk-forward / holdout: {ratio} (target <= 2)")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
