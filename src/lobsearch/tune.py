"""``python -m lobsearch.tune SPACE.yaml``: a Ray Tune search with Optuna's TPE and ASHA.

The driver validates the space and the export before Ray starts, prepares the data once per data
config with Ray Data, hands it to the trials through the object store, runs the Tuner, and ends
with the results a user acts on: a short table of the best trials, ``results.csv`` and
``results.json``, ``best_config.yaml`` (a run config ``python -m lobsearch.train`` accepts), the best
model's test metrics, and ``report.html``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lobsearch.errors import DataError, LobsearchError
from lobsearch.replay import DEFAULT_EPOCH_S, DRAWS, Replay
from lobsearch.space import SearchSpace, load_space

EXIT_OK = 0
EXIT_ALL_FAILED = 1
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
    parser.add_argument(
        "--reeval-top", type=int, metavar="K",
        help="after the search, train the best K configurations again with fresh seeds and pick the best "
        "mean (default: search.reeval_top, else 5 or fewer when the search has fewer trials; 0: the best "
        "single trial wins)",
    )
    parser.add_argument("--reeval-seeds", type=int, metavar="R",
                        help="seeds per re-evaluated configuration, at least 2 (default: search.reeval_seeds, else 3)")
    parser.add_argument("--name", help="search name (default: <space>-<timestamp>); an existing name resumes")
    parser.add_argument(
        "--storage",
        help="where trials and results go: a local folder (default ./runs, or $LOBSEARCH_STORAGE) "
        "or shared storage such as s3://bucket/path on a cluster",
    )
    parser.add_argument("--resume", action="store_true", help="continue the search named by --name")
    parser.add_argument("--smoke", action="store_true", help="a tiny end-to-end search: 2 trials, 2 epochs, tiny data; "
                        "the winner re-evaluated with 2 seeds")
    parser.add_argument("--dry-run", action="store_true", help="sample a few configs and build each model; no training")
    parser.add_argument(
        "--wandb",
        choices=["auto", "online", "offline", "disabled"],
        help="W&B mode (default: tracking.wandb of the space; auto = online with an API key, else offline)",
    )
    parser.add_argument(
        "--replay", type=Path, metavar="RESULTS.json",
        help="replay the learning curves a search recorded in its results.json instead of training: each "
        "trial waits --replay-epoch-s per epoch and reports a recorded curve (see --replay-curves), "
        "through the same Tuner, searcher, scheduler, W&B, checkpoints, results and report; no data is "
        "prepared, trials never load torch, the best trial is not evaluated on test and not re-evaluated; "
        "--gpus-per-trial auto means 0 (give a number to place trials on GPUs)",
    )
    parser.add_argument("--replay-epoch-s", type=float, metavar="S",
                        help=f"seconds each replayed epoch takes (default {DEFAULT_EPOCH_S:g}); needs --replay")
    parser.add_argument("--replay-curves", choices=DRAWS,
                        help="recorded: the nearest recorded curve as recorded (the default); model: a curve drawn "
                        "from a model fitted to the recorded ones (a blend of the 3 nearest, plus noise); needs --replay")
    parser.add_argument("--address", help="the Ray cluster's GCS address, HOST:6379 or 'auto' (default: "
                        "$RAY_ADDRESS, else a local Ray); a ray:// or dashboard http:// URL is refused: run the "
                        "driver on the cluster with `ray job submit`")
    parser.add_argument("--quiet", action="store_true", help="print only the final summary")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m lobsearch.tune``; returns the exit status: 0 the search
    finished, 1 every trial failed, 2 bad input (one ``error:`` message), 130 interrupted."""
    args = build_parser().parse_args(argv)
    try:
        space = _apply_overrides(load_space(args.space), args)
        if args.dry_run:
            from lobsearch.search import dry_run

            dry_run(space, export=args.data)
            return EXIT_OK
        from lobsearch.search import Outcome, run_search

        outcome = run_search(
            space, export=args.data.resolve() if args.data else None, name=args.name,
            storage=args.storage, resume=args.resume, address=args.address, quiet=args.quiet,
            replay=_replay(space, args),
        )
    except LobsearchError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:  # before the Tuner runs (starting Ray, preparing data): nothing to keep
        print("interrupted before any trial started; nothing was kept", file=sys.stderr)
        return EXIT_INTERRUPTED
    if outcome is Outcome.ALL_FAILED:
        print("error: every trial failed (see the errors above and in results.json)", file=sys.stderr)
    return {Outcome.FINISHED: EXIT_OK, Outcome.INTERRUPTED: EXIT_INTERRUPTED,
            Outcome.ALL_FAILED: EXIT_ALL_FAILED}[outcome]


def _apply_overrides(space: SearchSpace, args: argparse.Namespace) -> SearchSpace:
    """The space with command-line overrides (and the smoke preset) applied, validated again."""
    search = space.spec.search.model_dump()
    fixed, params = dict(space.spec.fixed), space.spec.model_dump(mode="python")["params"]
    if args.smoke:
        search.update(num_samples=2, max_concurrent=min(2, search.get("max_concurrent") or 2), grace_period=1,
                      reeval_top=0 if search.get("reeval_top") == 0 else 1, reeval_seeds=2)
        train = {**fixed.get("train", {}), "epochs": 2, "steps_per_epoch": 5, "max_eval_windows": 2000}
        fixed, params = {**fixed, "train": train}, {k: v for k, v in params.items() if k != "train.epochs"}
    for field, value in (
        ("num_samples", args.num_samples),
        ("max_concurrent", args.max_concurrent),
        ("gpus_per_trial", args.gpus_per_trial),
        ("cpus_per_trial", args.cpus_per_trial),
        ("time_budget_s", args.time_budget),
        ("reeval_top", args.reeval_top),
        ("reeval_seeds", args.reeval_seeds),
    ):
        if value is not None:
            search[field] = value
    tracking = space.spec.tracking.model_dump()
    if args.wandb:
        tracking["wandb"] = args.wandb
    raw = {**space.spec.model_dump(mode="python"), "search": search, "fixed": fixed, "params": params,
           "tracking": tracking}
    from lobsearch.schema import validate
    from lobsearch.space import SpaceFile

    spec = validate(SpaceFile, raw, f"{space.source} (with command-line options)")
    return SearchSpace(name=space.name, source=space.source, spec=spec)


def _replay(space: SearchSpace, args: argparse.Namespace) -> Replay | None:
    """The validated ``--replay`` (DataError naming the file and the rule), or None without it."""
    from lobsearch.replay import load_replay, searched_names

    if args.replay is None:
        for flag, value in (("--replay-epoch-s", args.replay_epoch_s), ("--replay-curves", args.replay_curves)):
            if value is not None:
                raise DataError(f"{flag}: only applies to a replay; add --replay RESULTS.json")
        return None
    if args.data is not None:
        raise DataError(f"--data {args.data}: a replay reads no export (its curves come from --replay {args.replay})")
    return load_replay(args.replay, metric=space.spec.objective.metric, searched=searched_names(space),
                       epoch_s=DEFAULT_EPOCH_S if args.replay_epoch_s is None else args.replay_epoch_s,
                       draw=args.replay_curves or "recorded", seed=space.spec.search.seed)


def _gpus(text: str) -> float | str:
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of GPUs or 'auto', got {text!r}") from None


if __name__ == "__main__":
    sys.exit(main())
