"""``python -m lobsearch.tune SPACE.yaml``: a Ray Tune search with Optuna's TPE and ASHA.

The driver validates the space and the export before Ray starts, prepares the data once per data
config with Ray Data, hands it to the trials through the object store, runs the Tuner, and ends
with the results a user acts on: a short table of the best trials, ``results.csv`` and
``results.json``, ``best_config.yaml`` (a run config ``python -m lobsearch.train`` accepts), the best
model's test metrics, and ``report.html``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from lobsearch.errors import LobsearchError
from lobsearch.space import SearchSpace, load_space

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lobsearch.tune",
        description="Search model and window settings for LOB direction models with Ray Tune "
        "(Optuna TPE + ASHA). With no --data it runs on the built-in synthetic demo export.",
    )
    parser.add_argument("space", type=Path, help="search-space YAML (see search_spaces/)")
    parser.add_argument("--data", type=Path, help="export directory (default: the demo export)")
    parser.add_argument("--num-samples", type=int, help="number of trials (overrides search.num_samples)")
    parser.add_argument("--max-concurrent", type=int, help="trials running at once (default: from resources)")
    parser.add_argument(
        "--gpus-per-trial", type=_gpus, metavar="F|auto",
        help="GPUs per trial; fractions share a GPU (0.25 = 4 per GPU); auto (the default) measures "
        "a few sampled configurations on a GPU and packs as many as its memory and idle time allow "
        "(0 without GPUs)",
    )
    parser.add_argument("--cpus-per-trial", type=float, help="CPUs per trial (overrides search.cpus_per_trial)")
    parser.add_argument("--time-budget", type=float, help="seconds after which no new trial starts and running ones stop")
    parser.add_argument("--name", help="search name (default: <space>-<timestamp>); an existing name resumes")
    parser.add_argument(
        "--storage",
        help="where trials and results go: a local folder (default ./runs, or $LOBSEARCH_STORAGE) "
        "or shared storage such as s3://bucket/path on a cluster",
    )
    parser.add_argument("--resume", action="store_true", help="continue the search named by --name")
    parser.add_argument("--smoke", action="store_true", help="a tiny end-to-end search: 2 trials, 2 epochs, tiny data")
    parser.add_argument("--dry-run", action="store_true", help="sample a few configs and build each model; no training")
    parser.add_argument(
        "--wandb",
        choices=["auto", "online", "offline", "disabled"],
        help="W&B mode (default: tracking.wandb of the space; auto = online with an API key, else offline)",
    )
    parser.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray)")
    parser.add_argument("--quiet", action="store_true", help="print only the final summary")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        space = _apply_overrides(load_space(args.space), args)
        if args.dry_run:
            from lobsearch.search import dry_run

            dry_run(space, export=args.data)
            return 0
        from lobsearch.search import Search

        return Search.from_args(space, args).run()
    except LobsearchError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT


def _apply_overrides(space: SearchSpace, args: argparse.Namespace) -> SearchSpace:
    """The space with command-line overrides (and the smoke preset) applied, validated again."""
    search = space.spec.search.model_dump()
    fixed = dict(space.spec.fixed)
    if args.smoke:
        search.update(num_samples=2, max_concurrent=min(2, search.get("max_concurrent") or 2), grace_period=1)
        train = {**fixed.get("train", {}), "epochs": 2, "steps_per_epoch": 5, "max_eval_windows": 2000}
        fixed = {**fixed, "train": train}
    for field, value in (
        ("num_samples", args.num_samples),
        ("max_concurrent", args.max_concurrent),
        ("gpus_per_trial", args.gpus_per_trial),
        ("cpus_per_trial", args.cpus_per_trial),
        ("time_budget_s", args.time_budget),
    ):
        if value is not None:
            search[field] = value
    tracking = space.spec.tracking.model_dump()
    if args.wandb:
        tracking["wandb"] = args.wandb
    raw = {**space.spec.model_dump(mode="python"), "search": search, "fixed": fixed, "tracking": tracking}
    from lobsearch.config import validate
    from lobsearch.space import SpaceFile

    spec = validate(SpaceFile, raw, f"{space.source} (with command-line options)")
    return SearchSpace(name=space.name, source=space.source, spec=spec)


def _gpus(text: str) -> float | str:
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of GPUs or 'auto', got {text!r}") from None


def default_name(space: SearchSpace) -> str:
    return f"{space.name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def default_storage() -> str:
    """``$LOBSEARCH_STORAGE`` or ./runs, made absolute (Tune changes each trial's directory)."""
    value = os.environ.get("LOBSEARCH_STORAGE") or "runs"
    return value if "://" in value else str(Path(value).resolve())


def elapsed(start: float) -> str:
    seconds = int(time.monotonic() - start)
    return f"{seconds // 60:02d}:{seconds % 60:02d}"


def fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


if __name__ == "__main__":
    sys.exit(main())
