"""After the search: the best configurations trained again with fresh seeds, the best mean wins.

The best of N noisy trials is biased upward by selection alone: its one score carries the luck of
its seed and of being picked. So the top k distinct configurations (by the objective on
validation, ``search.reeval_top``) are trained again with r fresh seeds each
(``search.reeval_seeds``; seeds the search never used), on the full training days, in parallel
as Ray tasks holding a trial's CPUs and GPUs, and each seed is scored by its best epoch's
objective on validation. ``selection.rank_configurations`` ranks them: the winner is the best
mean, and each of the k gets a 95 % t interval of its mean and the probability that it beats its
rival. Only the winner then meets the test split, once (``recipe.evaluate_seeds``).

A seed that fails (a NaN loss, an error) is recorded and left out; a configuration with fewer
than 2 scored seeds cannot be ranked and is listed without an interval. Ctrl-C during the
re-evaluation ends it: the search's own winner stands, and the summary says so.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lobsearch.config import RunConfig
from lobsearch.console import fmt
from lobsearch.files import plain
from lobsearch.plan import Plan
from lobsearch.selection import rank_configurations


@dataclass(frozen=True)
class Candidate:
    """One configuration to re-evaluate: the search trial it came from, its sampled parameters,
    its search score (the objective of its best epoch) and its run config."""

    trial_id: str
    params: dict[str, Any]
    search_score: float
    run: RunConfig


@dataclass
class Reevaluation:
    """What the re-evaluation found.

    rows: one JSON-plain dict per candidate, best mean first (``table``); winner: the winning
    candidate (None when no candidate had 2 scored seeds); seeds: the fresh seeds, in order;
    winner_seeds and winner_runs: the winner's scored seeds and their ``recipe.train_once``
    outcomes (weights under "state", "best_epoch"), in seed order; cost: runs, epochs and wall
    seconds; interrupted: Ctrl-C ended it early; notes: seeds that failed.
    """

    metric: str
    seeds: list[int]
    rows: list[dict[str, Any]] = field(default_factory=list)
    winner: Candidate | None = None
    winner_seeds: list[int] = field(default_factory=list)
    winner_runs: list[dict[str, Any]] = field(default_factory=list)
    cost: dict[str, Any] = field(default_factory=dict)
    interrupted: bool = False
    notes: list[str] = field(default_factory=list)

    def table(self) -> dict[str, Any]:
        """The record results.json keeps under ``reeval``."""
        return plain({"metric": self.metric, "seeds": self.seeds, "rows": self.rows,
                      "winner": None if self.winner is None else self.winner.trial_id,
                      "cost": self.cost, "interrupted": self.interrupted, "notes": self.notes}, finite=True)

    @property
    def winner_run(self) -> RunConfig | None:
        """The winner's run config with its first scored seed (what ``best_config.yaml`` holds)."""
        return None if self.winner is None else with_seed(self.winner.run, self.winner_seeds[0])

    @property
    def winner_row(self) -> dict[str, Any] | None:
        """The winner's row of ``rows``, None without a winner."""
        return next((row for row in self.rows if row["rank"] == 1), None)


def candidates(trials: list[dict[str, Any]], plan: Plan, top: int) -> list[Candidate]:
    """The ``top`` best trials of the search by the objective of their best epoch, one per
    distinct configuration (an enqueued point sampled again counts once); failed trials, trials
    with no scored epoch and walk-forward trials stopped between folds are not candidates."""
    from lobsearch.results import every_fold

    if top < 1:
        return []
    scored = [t for t in trials if t["status"] != "failed" and (t["best"] or {}).get(plan.metric) is not None
              and every_fold(t)]
    scored.sort(key=lambda t: -plan.sign * t["best"][plan.metric])
    chosen, seen = [], set()
    for trial in scored:
        key = json.dumps(trial["params"], sort_keys=True, default=str)
        if key in seen:
            continue
        seen.add(key)
        chosen.append(Candidate(trial["trial_id"], trial["params"], trial["best"][plan.metric],
                                plan.space.run_config(trial["params"])))
        if len(chosen) == top:
            break
    return chosen


def fresh_seeds(run: RunConfig, count: int) -> list[int]:
    """``count`` seeds after the run's own (the search trained with that one)."""
    return [run.train.seed + 1 + i for i in range(count)]


def with_seed(run: RunConfig, seed: int) -> RunConfig:
    """``run`` with ``train.seed`` set to ``seed``."""
    return run.model_copy(update={"train": run.train.model_copy(update={"seed": seed})})


def reevaluate(plan: Plan, trials: list[dict[str, Any]], prepared: dict[str, Any]) -> Reevaluation | None:
    """Re-evaluate the search's top configurations (see the module); None when it is off
    (``reeval_top`` 0) or no trial has a score. Needs a running Ray."""
    settings = plan.space.spec.search
    chosen = candidates(trials, plan, settings.top_to_reevaluate)
    if not chosen:
        return None
    seeds = fresh_seeds(chosen[0].run, settings.reeval_seeds)
    found = Reevaluation(metric=plan.metric, seeds=seeds)
    plan.say(f"re-evaluating the best {len(chosen)} configuration(s) with {len(seeds)} fresh seeds each "
             f"({len(chosen) * len(seeds)} runs on the full training days; Ctrl-C keeps the search's winner)")
    started = time.monotonic()
    outcomes = _run_all(plan, chosen, seeds, prepared, found)
    found.cost = {"runs": len(outcomes), "epochs": sum(o.get("epochs", 0) for o in outcomes.values()),
                  "wall_s": round(time.monotonic() - started, 1)}
    _rank(found, chosen, seeds, outcomes, plan)
    return found


def _run_all(plan: Plan, chosen: list[Candidate], seeds: list[int], prepared: dict[str, Any],
             found: Reevaluation) -> dict[tuple[int, int], dict[str, Any]]:
    """Every (candidate, seed) run as a Ray task; {(candidate index, seed): outcome}. Ctrl-C
    cancels those still running and marks ``found`` interrupted."""
    import ray

    settings = plan.space.spec.search
    task = _remote().options(num_cpus=settings.cpus_per_trial, num_gpus=plan.gpus_per_trial)
    threads = max(1, int(settings.cpus_per_trial))
    needed = {c.run.data.prep().digest() for c in chosen}  # every training day: not a fold's
    refs = {digest: ray.put(prepared[digest]) for digest in needed}
    pending = {}
    for index, candidate in enumerate(chosen):
        for seed in seeds:
            run = with_seed(candidate.run, seed)
            pending[task.remote(run, refs[run.data.prep().digest()], threads)] = (index, seed)
    outcomes: dict[tuple[int, int], dict[str, Any]] = {}
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            index, seed = pending.pop(done[0])
            outcomes[(index, seed)] = _outcome(done[0])
            _say_done(plan, chosen[index], seed, outcomes[(index, seed)], len(outcomes), len(outcomes) + len(pending))
    except KeyboardInterrupt:
        for ref in pending:
            ray.cancel(ref, force=True)
        found.interrupted = True
    return outcomes


def _outcome(ref: Any) -> dict[str, Any]:
    """The task's result, or {"status": "failed", "message"} when it raised."""
    import ray

    try:
        return ray.get(ref)
    except Exception as error:  # a failed seed is recorded; the others still rank
        lines = str(error).strip().splitlines()
        return {"status": "failed", "message": lines[-1][:300] if lines else type(error).__name__, "epochs": 0}


def _say_done(plan: Plan, candidate: Candidate, seed: int, outcome: dict[str, Any], done: int, total: int) -> None:
    score = _score(outcome, plan.metric)
    shown = "failed: " + outcome.get("message", "") if score is None else f"{plan.metric} {fmt(score)}"
    plan.say(f"re-evaluation {done}/{total}: trial {candidate.trial_id} seed {seed}: {shown}")


def _score(outcome: dict[str, Any], metric: str) -> float | None:
    """The objective of the run's best epoch (``val_macro_f1`` is ``val["macro_f1"]``)."""
    if outcome.get("status") == "failed" or outcome.get("state") is None:
        return None
    value = (outcome.get("val") or {}).get(metric.removeprefix("val_"))
    return None if value is None else float(value)


def _rank(found: Reevaluation, chosen: list[Candidate], seeds: list[int],
          outcomes: dict[tuple[int, int], dict[str, Any]], plan: Plan) -> None:
    """Fill ``found``'s rows and winner from the scored seeds."""
    scores: dict[str, list[float]] = {}
    for index, candidate in enumerate(chosen):
        for seed in seeds:
            outcome = outcomes.get((index, seed))
            if outcome is not None and _score(outcome, plan.metric) is None:
                found.notes.append(f"trial {candidate.trial_id} seed {seed}: {outcome.get('message') or 'no epoch finished'}")
        values = [_score(outcomes[(index, s)], plan.metric) for s in seeds if (index, s) in outcomes]
        scores[candidate.trial_id] = [v for v in values if v is not None]
    rankable = {name: values for name, values in scores.items() if len(values) >= 2}
    level = chosen[0].run.eval.level
    ranked = rank_configurations(rankable, mode=plan.mode, level=level) if rankable else []
    by_name = {c.trial_id: (i, c) for i, c in enumerate(chosen)}
    for row in ranked:
        index, candidate = by_name[row.name]
        found.rows.append({
            "rank": row.rank, "trial_id": row.name, "params": candidate.params, "search_score": candidate.search_score,
            "scores": scores[row.name], "mean": row.mean, "std": row.std, "low": row.interval.low,
            "high": row.interval.high, "level": row.interval.level, "rival": row.rival,
            "p_beats_rival": row.p_beats_rival,
        })
    for name, values in scores.items():
        if name not in rankable:
            found.rows.append({"rank": None, "trial_id": name, "params": by_name[name][1].params,
                               "search_score": by_name[name][1].search_score, "scores": values,
                               "note": f"{len(values)} of {len(seeds)} seeds scored; 2 are needed to rank"})
    if ranked:
        index, found.winner = by_name[ranked[0].name]
        found.winner_seeds = [s for s in seeds if _score(outcomes.get((index, s), {}), plan.metric) is not None]
        found.winner_runs = [outcomes[(index, s)] for s in found.winner_seeds]


def _remote() -> Callable[..., Any]:
    """The Ray task that trains one (configuration, seed): ``recipe.train_once`` with torch held
    to the task's CPUs."""
    import ray

    @ray.remote(max_retries=0)
    def train_seed(run: RunConfig, prepared: Any, threads: int) -> dict[str, Any]:
        import torch

        from lobsearch.recipe import train_once

        torch.set_num_threads(threads)
        return train_once(run, prepared)

    return train_seed
