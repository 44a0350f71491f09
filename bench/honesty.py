"""Honesty: does the verdict say "no lift" where there is nothing to learn, and "lift" where there is?

    python bench/honesty.py [--seeds 10] [--num-samples 4] [--time-budget 60] [--out docs/bench/honesty.json]

For each seed s: a search of ``search_spaces/lstm.yaml`` (search.seed s), followed by the
re-evaluation of its best configurations with fresh seeds, on two exports of the demo's layout
(12 days x 6,000 rows):

- a null export, ``lobsearch.synth --signal 0 --seed s``: no drift, labels independent of the
  rows. Target: the verdict says "no lift distinguishable from zero" in at least 9 of 10 seeds;
- the demo export (planted look-back of 20 rows). Target: "lift distinguishable from zero" in
  10 of 10.

The searches are shortened alike (``--num-samples``, ``--time-budget``, ``--reeval-top``,
``--reeval-seeds``), W&B off, one Ray for all of them. Prints one line per search and the
counts; writes every search's verdict, lift interval and winner to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import yaml
from searches import ROOT, local_ray, run

from lobsearch.synth import DEMO_DAYS, DEMO_LAG, DEMO_ROWS, demo_export, write_synthetic_export

SPACE = ROOT / "search_spaces" / "lstm.yaml"


def _space(folder: Path, seed: int) -> Path:
    """lstm.yaml with ``search.seed`` = ``seed`` (the sampler's and the trials' seed)."""
    body = yaml.safe_load(SPACE.read_text())
    body["search"]["seed"] = seed
    body["fixed"].setdefault("train", {})["seed"] = seed
    path = folder / f"lstm-seed{seed}.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def _search(space: Path, export: Path, storage: Path, name: str, args: argparse.Namespace) -> dict:
    results, code, wall = run(space, storage, name, "--data", str(export), "--num-samples", str(args.num_samples),
                              "--time-budget", str(args.time_budget), "--reeval-top", str(args.reeval_top),
                              "--reeval-seeds", str(args.reeval_seeds))
    if results is None:
        return {"name": name, "exit_code": code, "wall_s": round(wall, 1)}
    verdict = results["best"]["verdict"]
    return {
        "name": name, "exit_code": code, "wall_s": round(wall, 1), "trials": len(results["trials"]),
        "distinguishable": verdict["distinguishable"], "estimate": verdict.get("estimate"),
        "low": verdict.get("low"), "high": verdict.get("high"), "line": verdict["line"],
        "winner": results["best"]["trial_id"], "test_macro_f1": results["best"]["test"]["macro_f1"],
        "reeval": [{k: row.get(k) for k in ("trial_id", "mean", "low", "high")} for row in results["reeval"]["rows"]],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--num-samples", type=int, default=4)
    parser.add_argument("--time-budget", type=float, default=60)
    parser.add_argument("--reeval-top", type=int, default=2)
    parser.add_argument("--reeval-seeds", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    demo = demo_export()
    runs: dict[str, list[dict]] = {"null": [], "demo": []}
    with local_ray(), tempfile.TemporaryDirectory(prefix="lobsearch-honesty-") as scratch:
        folder = Path(scratch)
        for seed in range(args.seeds):
            space = _space(folder, seed)
            null = write_synthetic_export(folder / f"null-{seed}", days=DEMO_DAYS, rows=DEMO_ROWS, seed=seed,
                                          lag=DEMO_LAG, signal=0.0)
            for kind, export in (("null", null), ("demo", demo)):
                found = _search(space, export, folder / "runs", f"{kind}-{seed}", args)
                runs[kind].append(found)
                print(f"{kind} seed {seed}: {found.get('line', 'exit code ' + str(found['exit_code']))} "
                      f"[{found['wall_s']:.0f} s]", flush=True)
    null_negative = sum(not r.get("distinguishable", True) for r in runs["null"])
    demo_positive = sum(bool(r.get("distinguishable")) for r in runs["demo"])
    summary = {
        "command": "python bench/honesty.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "settings": vars(args) | {"out": str(args.out) if args.out else None},
        "null_no_lift": f"{null_negative}/{args.seeds}", "null_target": f">= {args.seeds - args.seeds // 10}/{args.seeds}",
        "demo_lift": f"{demo_positive}/{args.seeds}", "demo_target": f"{args.seeds}/{args.seeds}",
        "runs": runs,
    }
    print(f"\nnull export (--signal 0): 'no lift distinguishable from zero' in {summary['null_no_lift']} "
          f"(target {summary['null_target']})")
    print(f"demo export: 'lift distinguishable from zero' in {summary['demo_lift']} (target {summary['demo_target']})")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
