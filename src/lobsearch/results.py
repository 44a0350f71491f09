"""What a finished search leaves: per-trial records, the best configuration, its test metrics.

Files in the run folder (each written atomically):

- ``results.json``: the search, every trial (parameters, status, best and per-epoch metrics,
  durations, error) and the best trial with its validation and test metrics, naive baselines,
  trading metrics net of costs, calibration and verdict (``lobsearch.evaluation``); the
  verdict's line and finding also at the top level, under ``verdict``;
- ``results.csv``: one row per trial (parameters, best metrics, status, duration);
- ``best_config.yaml``: the best trial's run config, accepted by ``python -m lobsearch.train``;
- ``best_model/checkpoint.pt``: the re-evaluation winner's model (its first seed), when it ran;
- ``report.html``: the local report (see ``lobsearch.report``).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from lobsearch.console import fmt
from lobsearch.evaluation import format_calibration, format_trading, verdict_line
from lobsearch.files import dump_json, plain, write_text
from lobsearch.plan import Plan
from lobsearch.provenance import KEYS as PROVENANCE_KEYS

EPOCH_KEYS = ("epoch", "train_loss", "val_loss", "val_macro_f1", "val_accuracy", "val_mcc", "val_net_bps_per_day",
              "samples_per_s", "lr")


@dataclass
class Summary:
    name: str
    space: str
    objective: dict[str, Any]
    export: str
    started_at: str
    stopped_by: str
    trials: list[dict[str, Any]]
    best: dict[str, Any] | None = None
    best_checkpoint: str | None = None
    best_run_config: Any = None
    gate_report: dict[str, Any] | None = None
    oracle_macro_f1: dict[str, float] | None = None
    pareto: list[dict[str, Any]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "space": self.space,
            "objective": self.objective,
            "export": self.export,
            "started_at": self.started_at,
            "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "stopped_by": self.stopped_by,
            "oracle_macro_f1": self.oracle_macro_f1,
            "trials": self.trials,
            "best": self.best,
            "gate_report": self.gate_report,
            "pareto": self.pareto,
            "verdict": self.verdict(),
            **self.extra,
        }

    def verdict(self) -> dict[str, Any]:
        """{"line": the ``verdict:`` line, "distinguishable": bool} of the best model's test lift;
        a NEGATIVE line saying why when no best model was evaluated."""
        line = verdict_line(self.best)
        return {"line": line, "distinguishable": bool(((self.best or {}).get("verdict") or {}).get("distinguishable"))}


def _status(result: Any, max_epochs: int, tune_status: str = "") -> str:
    """failed, not_started, interrupted, completed, early_stopped or pruned (stopped by ASHA)."""
    if result.error is not None or tune_status == "ERROR":  # Tune's record, when its error file is unreadable
        return "failed"
    last = result.metrics or {}
    fit_status = last.get("fit_status", "running")
    if fit_status in ("completed", "early_stopped"):
        return fit_status  # its last epoch reported, even when a Ctrl-C stopped Tune before it ended the trial
    if not last and tune_status != "TERMINATED":
        return "not_started"
    if tune_status in ("PENDING", "RUNNING", "PAUSED"):  # a saved RUNNING trial loads as PENDING
        return "interrupted"
    return "pruned" if last.get("epoch", 0) < max_epochs else "completed"


def _history(result: Any) -> list[dict[str, Any]]:
    frame = result.metrics_dataframe
    if frame is None or frame.empty:
        return []
    keep = [k for k in EPOCH_KEYS if k in frame.columns] + (["time_total_s"] if "time_total_s" in frame else [])
    rows = [{("time_s" if k == "time_total_s" else k): plain(v, finite=True) for k, v in row.items()}
            for row in frame[keep].to_dict("records")]
    # a trial retried from its last checkpoint may report an epoch twice: the later one counts
    return list({row.get("epoch", i): row for i, row in enumerate(rows)}.values())


def _trial_record(number: int, result: Any, plan: Plan, t0: float | None,
                  tune_trials: dict[str, tuple[str, int]]) -> dict[str, Any]:
    metric = plan.metric
    history = _history(result)
    last = result.metrics or {}
    best_row = max(
        (row for row in history if row.get(metric) is not None), key=lambda r: plan.sign * r[metric], default=None
    )
    if last.get("folds") and history:  # walk-forward: the mean over the folds done, as last reported
        best_row = {**history[-1], "folds_done": last.get("folds_done", 0), "folds": last["folds"]}
    params = {k: plain(v, finite=True) for k, v in (result.config or {}).items()}
    end = last.get("timestamp")
    duration = last.get("time_total_s")
    start = end - duration if end is not None and duration is not None else None
    trial_id = last.get("trial_id", result.path.rsplit("/", 1)[-1] if result.path else str(number))
    tune_status, retries = tune_trials.get(result.path, ("", 0))
    return {
        "trial_id": trial_id,
        "number": number,
        "status": _status(result, plan.max_epochs, tune_status),
        "retries": retries,
        "params": params,
        "best": ({"epoch": best_row.get("epoch"), **{k: v for k, v in best_row.items()
                                                     if k.startswith("val_") or k in ("folds_done", "folds")}}
                 if best_row else None),
        "fold_scores": [plain(v, finite=True) for v in last.get("fold_scores") or []] or None,
        "epochs": len(history),
        "duration_s": plain(duration, finite=True),
        "start_s": None if start is None or t0 is None else round(start - t0, 3),
        "end_s": None if end is None or t0 is None else round(end - t0, 3),
        "n_params": last.get("n_params"),
        "node_id": last.get("node_id"),
        "provenance": {key: last[key] for key in PROVENANCE_KEYS if key in last},
        "latency_ms": plain(last.get("latency_ms"), finite=True),
        "history": history,
        "error": None if result.error is None else str(result.error).strip().splitlines()[-1][:500],
        "checkpoint": result.checkpoint.path if result.checkpoint is not None else None,
    }


def collect(grid: Any, plan: Plan, export: Any, prepared: dict[str, Any], *,
            tune_trials: dict[str, tuple[str, int]] | None = None) -> Summary:
    """Turn Tune's ResultGrid into a Summary with the best trial picked on validation.

    ``tune_trials`` maps a trial's folder to Tune's status of it and the times Tune restarted it
    after a failure: a trial still PENDING never started, one RUNNING or PAUSED was interrupted.
    """
    results = list(grid)
    starts = [
        r.metrics["timestamp"] - r.metrics.get("time_total_s", 0)
        for r in results
        if r.metrics and "timestamp" in r.metrics
    ]
    t0 = min(starts) if starts else None
    trials = sorted(
        (_trial_record(i, r, plan, t0, tune_trials or {}) for i, r in enumerate(results)),
        key=lambda t: (t["start_s"] is None, t["start_s"] or 0),
    )
    for number, trial in enumerate(trials):
        trial["number"] = number
    spec = plan.space.spec
    summary = Summary(
        name=plan.name,
        space=plan.space.source,
        objective={"metric": plan.metric, "mode": plan.mode},
        export=str(export.root),
        started_at=plan.started_at,
        stopped_by=_stopped_by(trials, plan),
        trials=trials,
        oracle_macro_f1=(export.manifest or {}).get("oracle_macro_f1"),
    )
    summary.gate_report = next(iter(prepared.values())).gate_report if prepared else None
    horizon = spec.fixed.get("data", {}).get("horizon")
    summary.extra["horizon"] = horizon if "data.horizon" not in spec.params else None
    _pick_best(summary, plan)
    if spec.objective.multi:
        summary.pareto = pareto_front(trials, spec.objective)
    return summary


def _stopped_by(trials: list[dict[str, Any]], plan: Plan) -> str:
    settings = plan.space.spec.search
    unfinished = any(t["status"] in ("not_started", "interrupted") or not t["epochs"] for t in trials
                     if t["status"] != "failed")
    if len(trials) >= settings.num_samples and not unfinished:
        return "completed"
    return "time_budget" if settings.time_budget_s else "interrupted"


def every_fold(trial: dict[str, Any]) -> bool:
    """Whether a trial's score covers all its folds (always, under holdout): a walk-forward
    trial stopped between folds has a mean over fewer folds and cannot be the winner."""
    best = trial.get("best") or {}
    return best.get("folds_done", 0) == best.get("folds", 0)


def _pick_best(summary: Summary, plan: Plan) -> None:
    metric = plan.metric
    scored = [t for t in summary.trials if t["best"] and t["best"].get(metric) is not None and every_fold(t)]
    if not scored:
        return
    best = max(scored, key=lambda t: plan.sign * t["best"][metric])
    summary.best = {"trial_id": best["trial_id"], "params": best["params"], "search_val": dict(best["best"]),
                    "chosen_by": "search"}
    summary.best_checkpoint = best["checkpoint"]
    summary.best_run_config = plan.space.run_config(best["params"])


def pareto_front(trials: list[dict[str, Any]], objective: Any) -> list[dict[str, Any]]:
    """Trials not dominated on (objective metric, every `also` objective)."""
    terms = [(objective.metric, objective.direction)] + [(t.metric, t.mode) for t in objective.also]

    def values(trial: dict[str, Any]) -> list[float] | None:
        row = {**(trial["best"] or {}), "n_params": trial.get("n_params"), "latency_ms": trial.get("latency_ms")}
        out = [row.get(m) for m, _ in terms]
        if any(v is None for v in out):
            return None
        return [v if mode == "max" else -v for v, (_, mode) in zip(out, terms)]

    scored = [(t, values(t)) for t in summary_trials(trials)]
    scored = [(t, v) for t, v in scored if v is not None]
    front = []
    for trial, v in scored:
        dominated = any(all(o >= s for o, s in zip(w, v)) and any(o > s for o, s in zip(w, v)) for _, w in scored)
        if not dominated:
            front.append({"trial_id": trial["trial_id"], **{m: (x if mode == "max" else -x) for x, (m, mode) in zip(v, terms)}})
    return front


def summary_trials(trials: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [t for t in trials if t["status"] != "failed"]


def evaluate_best(summary: Summary, prepared: dict[str, Any]) -> None:
    """Evaluate the best trial's best model once on validation and test, with naive baselines,
    and judge it (``recipe.judge``: trading net of costs, calibration, verdict)."""
    from lobsearch.recipe import evaluate_checkpoint

    if summary.best_checkpoint is None or summary.best_run_config is None:
        return
    run = summary.best_run_config
    outcome = evaluate_checkpoint(run, prepared[run.data.prep().digest()], Path(summary.best_checkpoint))
    summary.best.update(outcome)


def adopt_winner(summary: Summary, found: Any) -> None:
    """Make the re-evaluation's winner (``reeval.Reevaluation``) the search's best: its
    configuration with its first fresh seed (the one ``best_config.yaml`` trains again), its
    row of the re-evaluation table, and the search trial it came from."""
    winner = found.winner
    trial = next((t for t in summary.trials if t["trial_id"] == winner.trial_id), {})
    summary.best = {"trial_id": winner.trial_id, "params": winner.params, "search_val": dict(trial.get("best") or {}),
                    "chosen_by": "reeval", "seed": found.winner_seeds[0], "reeval": found.winner_row}
    summary.best_checkpoint = None
    summary.best_run_config = found.winner_run


def evaluate_winner(summary: Summary, found: Any, prepared: dict[str, Any], run_dir: Path) -> None:
    """Evaluate the re-evaluation's winner once on validation and test (``recipe.evaluate_seeds``:
    its first seed's model in full, every seed's macro-F1, the verdict over all its seeds); its
    first seed's model is saved as ``run_dir/best_model/checkpoint.pt``."""
    from lobsearch.recipe import evaluate_seeds

    run, runs = summary.best_run_config, found.winner_runs
    folder = run_dir / "best_model"
    summary.best.update(evaluate_seeds(run, prepared[run.data.prep().digest()], [r["state"] for r in runs],
                                       best_epoch=runs[0]["best_epoch"], save_to=folder))
    summary.best_checkpoint = None if "checkpoint_note" in summary.best else str(folder)


def write_results(summary: Summary, run_dir: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    dump_json(run_dir / "results.json", summary.to_json())
    write_text(run_dir / "results.csv", _csv(summary.trials))
    if summary.best_run_config is not None:
        config = summary.best_run_config.model_dump(mode="json")
        config["model"] = {"name": config["model"]["name"], **config["model"]["params"]}
        config["data"]["export"] = config["data"].get("export") or summary.export  # train on what was searched
        header = f"# Best configuration of search {summary.name!r}; run it with:\n"
        header += f"#   python -m lobsearch.train {run_dir / 'best_config.yaml'}\n"
        write_text(run_dir / "best_config.yaml", header + yaml.safe_dump(config, sort_keys=False))
    try:
        from lobsearch.report import write_report

        write_report(run_dir)
    except Exception as error:  # the report is a view; results are already safe on disk
        print(f"warning: the HTML report could not be written: {error}")


def upload_results(run_dir: Path, uri: str) -> None:
    """Copy the results files to shared storage beside Tune's trials (``s3://...`` and the like)."""
    import pyarrow.fs

    filesystem, root = pyarrow.fs.FileSystem.from_uri(uri)
    for name in ("results.json", "results.csv", "best_config.yaml", "report.html"):
        if (run_dir / name).is_file():
            pyarrow.fs.copy_files(str(run_dir / name), f"{root}/{name}", destination_filesystem=filesystem)
    print(f"  results copied to {uri}")


def _csv(trials: list[dict[str, Any]]) -> str:
    params = sorted({k for t in trials for k in t["params"]})
    metrics = sorted({k for t in trials for k in (t["best"] or {})})
    columns = ["number", "trial_id", "status", "retries", "epochs", "duration_s", *params, *metrics, "n_params",
               "error"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for trial in trials:
        writer.writerow({**trial, **trial["params"], **(trial["best"] or {})})
    return buffer.getvalue()


def _fold_text(trial: dict[str, Any]) -> str:
    """``2/3: 0.41 0.44``: folds done of all, and each done fold's score."""
    best = trial.get("best") or {}
    scores = " ".join(f"{v:.2f}" for v in trial.get("fold_scores") or [])
    return f"{best.get('folds_done', 0)}/{best.get('folds', 0)}: {scores}".rstrip(": ")


def format_reeval(reeval: dict[str, Any] | None, search_cost: dict[str, Any] | None) -> list[str]:
    """The re-evaluation table as printable lines ([] when there was none)."""
    if not reeval:
        return []
    cost, search = reeval.get("cost") or {}, search_cost or {}
    lines = [f"\n  re-evaluation: the best {len(reeval['rows'])} configuration(s) x {len(reeval['seeds'])} fresh seeds "
             f"on the full training days ({cost.get('runs', 0)} runs, {cost.get('epochs', 0)} epochs, "
             f"{cost.get('wall_s', 0):.0f} s; the search: {search.get('trial_epochs', 0)} trial-epochs, "
             f"{search.get('wall_s', 0):.0f} s)" + ("; interrupted, the search's winner stands" if reeval["interrupted"] else ""),
             f"  {'rank':<4} {'trial':<14} {'search':>8} {'mean ' + reeval['metric']:>18} {'interval':>19} "
             f"{'P(beats rival)':>14}"]
    for row in reeval["rows"]:
        if row["rank"] is None:
            lines.append(f"  {'-':<4} {row['trial_id']:<14} {row['search_score']:>8.4f} {row['note']}")
            continue
        interval = f"[{row['low']:.4f}, {row['high']:.4f}]"
        rival = "" if row["p_beats_rival"] is None else f"{row['p_beats_rival']:.2f} vs {row['rival']}"
        lines.append(f"  {row['rank']:<4} {row['trial_id']:<14} {row['search_score']:>8.4f} "
                     f"{row['mean']:>18.4f} {interval:>19} {rival:>14}")
    lines += [f"  note: {note}" for note in reeval.get("notes") or []]
    return lines


def print_summary(summary: Summary, run_dir: Path, *, quiet: bool = False) -> None:
    """The short table a user reads at the end of a search (one line with ``quiet``)."""
    metric = summary.objective["metric"]
    if quiet:
        value = (summary.best or {}).get("search_val", {}).get(metric)
        print(f"search {summary.name!r}: {len(summary.trials)} trials, best {metric} {value}; {run_dir / 'results.json'}")
        return
    by_status: dict[str, int] = {}
    for trial in summary.trials:
        by_status[trial["status"]] = by_status.get(trial["status"], 0) + 1
    print(f"\nsearch {summary.name!r} finished ({summary.stopped_by.replace('_', ' ')}): "
          + ", ".join(f"{n} {s}" for s, n in sorted(by_status.items())))
    if summary.stopped_by == "time_budget":
        print("  the time budget ended the search before every planned trial ran")
    ranked = sorted(
        (t for t in summary.trials if t["best"] and t["best"].get(metric) is not None),
        key=lambda t: t["best"][metric],
        reverse=summary.objective["mode"] == "max",
    )[:5]
    if ranked:
        folds = any(t["best"].get("folds") for t in ranked)  # walk-forward: the mean over the folds done
        print(f"\n  {'trial':<14} {metric:>13} {'epochs':>6} {'status':<13} " + ("folds (each fold's score)  " if folds else "")
              + "params")
        for trial in ranked:
            params = ", ".join(f"{k}={fmt(v)}" for k, v in trial["params"].items())
            shown = f"{_fold_text(trial):<26} " if folds else ""
            print(f"  {trial['trial_id']:<14} {trial['best'][metric]:>13.4f} {trial['epochs']:>6} {trial['status']:<13} "
                  f"{shown}{params}")
    for line in format_reeval(summary.extra.get("reeval"), summary.extra.get("search_cost")):
        print(line)
    best = summary.best
    if best and best.get("test"):
        test, lift = best["test"], best.get("lift", {})
        who = (f"winner (trial {best['trial_id']}, seed {best['seed']})" if best.get("chosen_by") == "reeval"
               else "best trial")
        print(f"\n  {who} on test: macro-F1 {test['macro_f1']:.4f}, accuracy {test['accuracy']:.4f}, "
              f"MCC {test['mcc']:.4f}; lift over the best naive baseline {lift.get('test', float('nan')):+.4f}")
        seeds = (best.get("seeds") or {}).get("test_macro_f1")
        if seeds:
            print(f"  test macro-F1 of each seed: {', '.join(f'{v:.4f}' for v in seeds)}")
    if summary.oracle_macro_f1:
        print(f"  oracle macro-F1 of this export (ceiling): {summary.oracle_macro_f1}")
    if best and best.get("verdict"):
        print("")
        for line in [*format_trading(best.get("trading")), format_calibration(best.get("calibration"))]:
            print(f"  {line}")
    print(f"\n  {summary.verdict()['line']}")
    print(f"\n  results: {run_dir / 'results.csv'}, {run_dir / 'results.json'}")
    if best:
        print(f"  best config: {run_dir / 'best_config.yaml'}")
    if (run_dir / "report.html").exists():
        print(f"  report: {run_dir / 'report.html'}")
    if summary.extra.get("wandb_sync"):
        print(f"  W&B runs are offline; upload them with:\n    {summary.extra['wandb_sync']}")
