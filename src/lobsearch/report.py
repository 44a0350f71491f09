"""The local report of a search: one self-contained HTML file, for readers without a W&B account.

``python -m lobsearch.report RUN_DIR`` reads ``RUN_DIR/results.json`` (written by
``lobsearch.tune``), writes ``RUN_DIR/report.html`` and prints its path. Figures are PNGs
embedded as base64: the optimization history, parameter importance and Pareto front are Optuna's
matplotlib plots of a study rebuilt from the results (pyplot on the Agg backend), the others are
drawn on pyplot-free matplotlib Figures. The page loads nothing from anywhere (its
Content-Security-Policy forbids it). Every missing piece of the results (no finished trial, no
test metrics, no gate report) renders as a note.

Sections: header (with the verdict on the best model's test lift), best trials, optimization
history, parallel coordinates, parameter importance (Optuna), learning curves, best model
(confusion matrices, lift over naive baselines), trading net of costs (the model, the naive
baselines and the oracle), calibration (before and after temperature, reliability diagrams),
data gates, Pareto front, failures.
"""

from __future__ import annotations

import argparse
import base64
import functools
import io
import json
import math
import sys
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from html import escape
from pathlib import Path
from typing import Any

import numpy as np

from lobsearch.console import duration, fmt
from lobsearch.contract import CLASS_NAMES
from lobsearch.errors import DataError
from lobsearch.evaluation import PREDICTOR_NAMES
from lobsearch.files import write_text

TOP_TRIALS = 10
NOT_APPLICABLE = -0.15
"""Where a parallel-coordinates line crosses the axis of a parameter its trial does not have."""
CURVE_TRIALS = 5
PARALLEL_COLORED = 100
"""Trials a parallel-coordinates figure colors by objective; the others are drawn gray beneath them."""
STATUS_COLORS = {
    "completed": "#2a9d8f",
    "early_stopped": "#8ab17d",
    "pruned": "#e9c46a",
    "stopped": "#f4a261",
    "failed": "#e76f51",
    "interrupted": "#9c6644",
    "not_started": "#adb5bd",
}
METRIC_ROWS = ("accuracy", "macro_f1", "f1_down", "f1_stable", "f1_up", "mcc", "kappa", "log_loss")
CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d2327;margin:0;background:#f6f7f9}
main{max-width:1180px;margin:0 auto;padding:24px 28px 48px;background:#fff}
h1{font-size:24px;margin:0 0 4px}h2{font-size:18px;margin:32px 0 8px;border-bottom:1px solid #dde1e6;padding-bottom:4px}
.sub{color:#5a6570}.grid{display:grid;grid-template-columns:max-content 1fr;gap:3px 16px;margin:12px 0}
.grid dt{color:#5a6570}.grid dd{margin:0}code{background:#f0f2f4;padding:1px 4px;border-radius:3px}
nav a{margin-right:12px;color:#2a6f97}table{border-collapse:collapse;font-size:13px;margin:8px 0}
th,td{padding:3px 9px;border-bottom:1px solid #e6e9ec;text-align:right;white-space:nowrap}
th{background:#f0f2f4}td.l,th.l{text-align:left}.scroll{overflow-x:auto}
.note{background:#fff8e1;border-left:4px solid #e9c46a;padding:8px 12px;margin:8px 0}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;color:#fff;margin-right:6px;font-size:12px}
img{max-width:100%;display:block;margin:8px 0}footer{margin-top:40px;color:#8a949e;font-size:12px}
"""
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
PNG_OPTIONS = {"metadata": {"Software": None}, "pil_kwargs": {"compress_level": 3}}


def main(argv: list[str] | None = None) -> int:
    """CLI: write ``RUN_DIR/report.html`` and print its path; exit 2 when results cannot be read."""
    parser = argparse.ArgumentParser(prog="python -m lobsearch.report", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a search's run folder (holds results.json)")
    args = parser.parse_args(argv)
    try:
        path = write_report(args.run_dir)
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(path)
    return 0


def write_report(run_dir: Path) -> Path:
    """Render ``run_dir/results.json`` into ``run_dir/report.html``; returns the absolute path."""
    run_dir = Path(run_dir).resolve()
    results = load_results(run_dir)
    if results.get("horizon") is None:
        results["horizon"] = horizon_of_best_config(run_dir)
    out = run_dir / "report.html"
    return write_text(out, render(results, run_dir))


def horizon_of_best_config(run_dir: Path) -> int | None:
    """``data.horizon`` of ``run_dir/best_config.yaml`` (the searched label horizon), or None."""
    import yaml

    try:
        config = yaml.safe_load((Path(run_dir) / "best_config.yaml").read_text())
        horizon = config["data"]["horizon"]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return None
    return horizon if isinstance(horizon, int) else None


def load_results(run_dir: Path) -> dict:
    """The parsed ``results.json`` of a run folder. Raises DataError naming the file and problem."""
    path = Path(run_dir) / "results.json"
    if not path.is_file():
        raise DataError(f"{path}: not found (a search writes it when it ends: python -m lobsearch.tune SPACE.yaml)")
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(results, dict) or not isinstance(results.get("trials", []), list):
        raise DataError(f"{path}: must be an object with a 'trials' list (got {type(results).__name__})")
    return results


def render(results: dict, run_dir: Path | None = None) -> str:
    """The report page of ``results`` (the results.json schema) as one HTML string."""
    sections = [
        ("best-trials", "Best trials", section_best_trials),
        ("history", "Optimization history", section_history),
        ("parallel", "Parameters", section_parallel),
        ("importance", "Parameter importance", section_importance),
        ("curves", "Learning curves", section_curves),
        ("reeval", "Re-evaluation with fresh seeds", section_reeval),
        ("best-model", "Best model", section_best_model),
        ("trading", "Trading, net of costs", section_trading),
        ("calibration", "Calibration", section_calibration),
        ("gates", "Data gates", section_gates),
        ("pareto", "Pareto front", section_pareto),
        ("failures", "Failures", section_failures),
    ]
    nav = " ".join(f'<a href="#{key}">{title}</a>' for key, title, _ in sections)
    body = "".join(f'<section id="{key}"><h2>{title}</h2>{_guarded(build, results)}</section>' for key, title, build in sections)
    title = escape(str(results.get("name", "search")))
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        f"<title>lobsearch report: {title}</title><style>{CSS}</style></head><body><main>"
        f"{section_header(results, run_dir)}<nav>{nav}</nav>{body}"
        f"<footer>Generated by lobsearch on {datetime.now():%Y-%m-%d %H:%M} from results.json.</footer>"
        f"</main></body></html>"
    )


def _guarded(build: Any, results: dict) -> str:
    """A section's HTML; results it cannot handle give a note instead of losing the whole report."""
    try:
        return build(results)
    except Exception as error:
        return note(f"This section could not be drawn from results.json: {escape(type(error).__name__)}: {escape(str(error))}")


# ---- reading the results -------------------------------------------------------------------


def objective(results: dict) -> tuple[str, str]:
    """(metric, mode) of the search; ``("val_macro_f1", "max")`` when absent."""
    spec = results.get("objective") or {}
    return str(spec.get("metric", "val_macro_f1")), str(spec.get("mode", "max"))


def trial_value(trial: dict, metric: str, mode: str = "max") -> float | None:
    """A trial's best value of ``metric``: from ``best``, else its history's best; None if none."""
    value = (trial.get("best") or {}).get(metric)
    if value is None:
        values = [row[metric] for row in trial.get("history") or [] if _finite(row.get(metric))]
        value = (max if mode == "max" else min)(values, default=None)
    return float(value) if _finite(value) else None


def ranked(results: dict) -> list[tuple[dict, float]]:
    """Trials that have an objective value, best first, each with its value."""
    metric, mode = objective(results)
    scored = [(t, v) for t in results.get("trials") or [] if (v := trial_value(t, metric, mode)) is not None]
    return sorted(scored, key=lambda tv: -tv[1] if mode == "max" else tv[1])


def param_names(trials: list[dict]) -> list[str]:
    """Every parameter name seen, ``model.name`` first, then data.*, train.*, the rest (sorted)."""
    names = {name for t in trials for name in t.get("params") or {}}
    order = {"model": 0, "data": 1, "train": 2}
    return sorted(names, key=lambda n: (n != "model.name", order.get(n.split(".")[0], 3), n))


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


# ---- small HTML pieces ---------------------------------------------------------------------


def note(text: str) -> str:
    return f'<p class="note">{text}</p>'


def table(header: list[str], rows: list[list[Any]], left: int = 1) -> str:
    """An HTML table; the first ``left`` columns are left-aligned, cells are ``console.fmt``, escaped."""
    cls = [' class="l"' if i < left else "" for i in range(len(header))]
    head = "".join(f"<th{c}>{escape(h)}</th>" for c, h in zip(cls, header))
    body = "".join("<tr>" + "".join(f"<td{c}>{escape(fmt(v))}</td>" for c, v in zip(cls, row)) + "</tr>" for row in rows)
    return f'<div class="scroll"><table><tr>{head}</tr>{body}</table></div>'


def image(fig: Any, alt: str) -> str:
    """A matplotlib Figure as an embedded PNG ``<img>``."""
    return img(png(fig), alt)


def img(data: bytes, alt: str) -> str:
    """PNG bytes as an embedded ``<img>``."""
    return f'<img alt="{escape(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode("ascii")}">'


def png(fig: Any, bbox_inches: str | None = None) -> bytes:
    """``fig`` encoded as PNG at 100 dpi; ``bbox_inches="tight"`` crops or grows it to what is drawn."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches=bbox_inches, **PNG_OPTIONS)
    return buffer.getvalue()


def figure(width: float, height: float, ncols: int = 1) -> tuple[Any, list[Any]]:
    """A pyplot-free Figure (no global state, Agg on save) and its ``ncols`` axes."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, list(axes)


def pyplot() -> Any:
    """``matplotlib.pyplot`` (which Optuna's plots draw with) on the Agg backend: no window ever opens.

    Selecting Agg is process-wide; a process that already drew with another backend has its
    pyplot figures closed by the switch.
    """
    import matplotlib

    matplotlib.use("agg")
    import matplotlib.pyplot as plt

    return plt


def optuna_png(draw: Callable[[], Any], size: tuple[float, float]) -> bytes:
    """The PNG of the figure of the Axes that ``draw()`` returns (an Optuna plot).

    Drawn and encoded in one scope: figures ``size`` inches by default, rcParams restored after
    (Optuna applies the ggplot style globally, which would restyle the report's own figures),
    Optuna's ExperimentalWarning silenced, and every pyplot figure opened in it closed after,
    drawn or failed (pyplot keeps its figures until closed). Saved with a tight bounding box, as
    Optuna's importance plot has no layout and would clip its parameter names.
    """
    import matplotlib
    from optuna.exceptions import ExperimentalWarning

    plt = pyplot()
    opened_before = set(plt.get_fignums())
    try:
        with matplotlib.rc_context({"figure.figsize": size}), warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            return png(draw().figure, bbox_inches="tight")
    finally:
        for number in set(plt.get_fignums()) - opened_before:
            plt.close(number)


def stacked(pngs: list[bytes]) -> bytes:
    """PNGs one above the other, left-aligned on white, as one PNG.

    Hand-written: Optuna draws each plot on a figure of its own, and matplotlib cannot move Axes
    between figures.
    """
    from matplotlib import image as mpimg

    layers = [mpimg.imread(io.BytesIO(data)) for data in pngs]
    width = max(layer.shape[1] for layer in layers)
    padded = [np.pad(layer, ((0, 0), (0, width - layer.shape[1]), (0, 0)), constant_values=1.0) for layer in layers]
    buffer = io.BytesIO()
    mpimg.imsave(buffer, np.concatenate(padded), format="png", **PNG_OPTIONS)
    return buffer.getvalue()


# ---- header --------------------------------------------------------------------------------


def section_header(results: dict, run_dir: Path | None) -> str:
    """Name, objective, export, timing, trial counts by status, best value and oracle ceiling."""
    metric, mode = objective(results)
    best = ranked(results)
    rows = [
        ("Objective", f"<code>{escape(metric)}</code> ({'maximize' if mode == 'max' else 'minimize'})"),
        ("Search space", escape(str(results.get("space", "—")))),
        ("Export", f"<code>{escape(str(results.get('export', '—')))}</code>"),
        ("Ran", _timing(results)),
        ("Stopped by", escape(str(results.get("stopped_by", "—")))),
        ("Trials", _status_badges(results.get("trials") or [])),
        ("Best", f"<b>{escape(fmt(best[0][1]))}</b> (trial {escape(fmt(best[0][0].get('trial_id')))})" if best else "no finished trial"),
        ("Oracle ceiling", _oracle_text(results)),
        ("Verdict", _verdict_text(results)),
    ]
    command = _sync_command(run_dir)
    if command:
        rows.append(("W&B", f"offline runs; upload with <code>{escape(command)}</code>"))
    items = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in rows)
    name = escape(str(results.get("name", "search")))
    return f'<header><h1>{name}</h1><div class="sub">lobsearch search report</div><dl class="grid">{items}</dl></header>'


def _timing(results: dict) -> str:
    start, end = results.get("started_at"), results.get("finished_at")
    try:
        took = (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()
    except (TypeError, ValueError):
        return f"{escape(str(start or '—'))} to {escape(str(end or '—'))}"
    return f"{escape(start)} to {escape(end)} ({duration(took)})"


def _status_badges(trials: list[dict]) -> str:
    counts = Counter(str(t.get("status", "unknown")) for t in trials)
    badges = "".join(
        f'<span class="badge" style="background:{STATUS_COLORS.get(s, "#6c757d")}">{escape(s)} {n}</span>'
        for s, n in sorted(counts.items(), key=lambda sn: -sn[1])
    )
    return f"{len(trials)} {badges}"


def oracle_for(results: dict) -> tuple[str, float] | None:
    """(horizon, oracle macro-F1) for the searched horizon when it is known, else None."""
    oracle = results.get("oracle_macro_f1") or {}
    horizon = results.get("horizon") or ((results.get("best") or {}).get("params") or {}).get("data.horizon")
    if horizon is None and len(oracle) == 1:
        horizon = next(iter(oracle))
    value = oracle.get(str(horizon)) if horizon is not None else None
    return (str(horizon), float(value)) if _finite(value) else None


def _oracle_text(results: dict) -> str:
    oracle = results.get("oracle_macro_f1")
    if not oracle:
        return "unknown (the export has no planted signal; only synthetic exports know their ceiling)"
    searched = (oracle_for(results) or ("",))[0]
    parts = [f"h={escape(str(h))}: {escape(fmt(v))}" for h, v in oracle.items()]
    parts = [f"<b>{p}</b>" if str(h) == searched else p for p, h in zip(parts, oracle)]
    return "macro-F1 of a model that knows the planted signal, by horizon: " + ", ".join(parts)


def _verdict_text(results: dict) -> str:
    """The ``verdict:`` line of the best model (top level of results.json, else its evaluation)."""
    line = (results.get("verdict") or {}).get("line") or ((results.get("best") or {}).get("verdict") or {}).get("line")
    if not line:
        return "none recorded (the best model was not judged on test)"
    positive = bool((results.get("verdict") or (results.get("best") or {}).get("verdict") or {}).get("distinguishable"))
    return f"<b>{escape(line)}</b>" if positive else escape(line)


def _sync_command(run_dir: Path | None) -> str | None:
    if run_dir is None:
        return None
    from lobsearch.tracking import sync_command

    return sync_command(run_dir)


# ---- best trials ---------------------------------------------------------------------------


def section_best_trials(results: dict) -> str:
    """The top trials by objective, with their status, epochs, duration and parameters."""
    scored = ranked(results)
    if not scored:
        return note(_no_values(results))
    metric, _ = objective(results)
    top = scored[:TOP_TRIALS]
    names = param_names([t for t, _ in top])
    folds = any((t.get("best") or {}).get("folds") for t, _ in top)
    header = ["#", "trial", "status", metric, "best epoch", "epochs", "duration"] + (["folds", "fold scores"] if folds
                                                                                    else []) + names
    rows = [
        [rank, t.get("trial_id"), t.get("status"), value, (t.get("best") or {}).get("epoch"), t.get("epochs"),
         duration(t.get("duration_s"))] + (_fold_cells(t) if folds else [])
        + [(t.get("params") or {}).get(n) for n in names]
        for rank, (t, value) in enumerate(top, start=1)
    ]
    shown = f"top {len(top)} of {len(scored)}" if len(scored) > len(top) else f"all {len(scored)}"
    protocol = (" Walk-forward: a trial's value is the mean over its folds done of each fold's best epoch; only "
                "trials that ran every fold can win." if folds else "")
    return f"<p>Trials with a value, {shown}, best first.{protocol}</p>" + table(header, rows, left=3)


def _fold_cells(trial: dict) -> list[Any]:
    """[folds done / folds, each done fold's score] of a walk-forward trial."""
    best = trial.get("best") or {}
    scores = " ".join(fmt(v) for v in trial.get("fold_scores") or [])
    return [f"{best.get('folds_done', 0)}/{best.get('folds', 0)}", scores]


def _no_values(results: dict) -> str:
    trials = results.get("trials") or []
    if not trials:
        return "No trials ran."
    failed = sum(t.get("status") == "failed" for t in trials)
    return f"No trial produced a value ({len(trials)} trials, {failed} failed; see Failures)."


# ---- optimization history ------------------------------------------------------------------


def section_history(results: dict) -> str:
    scored = ranked(results)
    if not scored:
        return note(_no_values(results))
    return img(optuna_png(functools.partial(fig_history, results), (11, 3.6)), "objective against trial number and time")


def fig_history(results: dict) -> Any:
    """Optuna's optimization history (objective and best so far by trial number) and, beside it,
    the objective against finish time colored by status (custom: Optuna plots by number only)."""
    from optuna.visualization.matplotlib import plot_optimization_history

    ax = plot_optimization_history(history_study(results), target_name=objective(results)[0])
    grid = ax.figure.add_gridspec(1, 2)
    ax.set_subplotspec(grid[0])
    draw_by_finish_time(ax.figure.add_subplot(grid[1]), results)
    return ax


def history_study(results: dict) -> Any:
    """A study of every trial in search order (``number``) so that Optuna's trial numbers are the
    search's: a trial with a value is complete with that value, any other is failed."""
    import optuna

    values = {id(t): v for t, v in ranked(results)}
    study = new_study(results)
    for trial in sorted(results.get("trials") or [], key=lambda t: (_number(t) is None, _number(t) or 0)):
        if id(trial) in values:
            study.add_trial(optuna.trial.create_trial(value=values[id(trial)]))
        else:
            study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL))
    return study


def draw_by_finish_time(ax: Any, results: dict) -> None:
    """The objective of each trial with a value against its finish time, by status, with best so far."""
    metric, mode = objective(results)
    points = sorted((_finish_s(t), v, str(t.get("status"))) for t, v in ranked(results) if _finish_s(t) is not None)
    ax.set_title("Objective by finish time")
    if not points:
        ax.text(0.5, 0.5, "no finish times recorded", ha="center", transform=ax.transAxes)
        return
    xs, ys, statuses = zip(*points)
    for status in dict.fromkeys(statuses):
        mask = [s == status for s in statuses]
        ax.scatter(np.array(xs)[mask], np.array(ys)[mask], s=22, label=status, color=STATUS_COLORS.get(status, "#6c757d"))
    running = np.maximum.accumulate(ys) if mode == "max" else np.minimum.accumulate(ys)
    ax.step(xs, running, where="post", color="#264653", lw=1.5, label="best so far")
    ax.set_xlabel("finished at (s)")
    ax.set_ylabel(metric)
    ax.legend(fontsize=8, loc="best")


def _number(trial: dict) -> float | None:
    return trial.get("number") if _finite(trial.get("number")) else None


def _finish_s(trial: dict) -> float | None:
    if _finite(trial.get("end_s")):
        return float(trial["end_s"])
    start, took = trial.get("start_s"), trial.get("duration_s")
    return float(start + took) if _finite(start) and _finite(took) else None


# ---- parallel coordinates ------------------------------------------------------------------


def section_parallel(results: dict) -> str:
    scored = ranked(results)
    names = param_names([t for t, _ in scored])
    if len(scored) < 2 or not names:
        return note("Not enough trials with a value to compare parameters (need 2).")
    shown = (f"The best {PARALLEL_COLORED} of the {len(scored)} trials are colored by the objective, the others "
             "drawn thin and gray beneath them; " if len(scored) > PARALLEL_COLORED else "Lines are colored by the objective; ")
    return (
        "<p>One line per trial with a value; each axis spans the values tried (log scale where they span "
        f"20x or more), and a parameter of another model family is n/a. {shown}"
        "the best trial is drawn in red.</p>"
        + image(fig_parallel(results), "parallel coordinates of parameters and objective")
    )


def fig_parallel(results: dict) -> Any:
    """Parallel coordinates: one normalized axis per parameter plus the objective, lines by objective."""
    import matplotlib
    from matplotlib.cm import ScalarMappable
    from matplotlib.collections import LineCollection
    from matplotlib.colors import Normalize

    metric, mode = objective(results)
    scored = ranked(results)
    names = param_names([t for t, _ in scored])
    columns = [[(t.get("params") or {}).get(n) for t, _ in scored] for n in names] + [[v for _, v in scored]]
    axes = [axis_positions(values) for values in columns]
    values = np.array([v for _, v in scored])
    shown = values[:PARALLEL_COLORED]  # the color scale spans the colored lines only
    norm = Normalize(shown.min(), shown.max()) if np.ptp(shown) > 0 else Normalize(shown.min() - 1, shown.max() + 1)
    cmap = matplotlib.colormaps["viridis" if mode == "max" else "viridis_r"]
    fig, (ax,) = figure(max(7.0, 1.3 * len(axes) + 1), 4.2)
    xs = np.arange(len(axes))
    lines = np.stack([np.broadcast_to(xs, (len(scored), len(xs))), np.column_stack([p for p, _ in axes])], axis=-1)
    # one collection per layer (a thousand ax.plot calls take seconds and draw noise): the rest gray,
    # the best PARALLEL_COLORED by objective (worst first, so better lines lie on top), the best in red
    rest, top = lines[PARALLEL_COLORED:], lines[1:PARALLEL_COLORED][::-1]
    ax.add_collection(LineCollection(rest, colors="#b8bec4", linewidths=0.5, alpha=0.35, zorder=1))
    ax.add_collection(LineCollection(top, colors=cmap(norm(values[1:PARALLEL_COLORED][::-1])), linewidths=1.1,
                                     alpha=0.85, zorder=2))
    ax.plot(xs, lines[0, :, 1], color="#d62828", lw=2.4, alpha=0.85, zorder=3)
    _draw_axes(ax, xs, [ticks for _, ticks in axes], names + [metric])
    fig.colorbar(ScalarMappable(norm, cmap), ax=ax, label=metric, shrink=0.85)
    return fig


def axis_positions(values: list[Any]) -> tuple[np.ndarray, list[tuple[float, str]]]:
    """Values mapped into [0, 1] and the axis ticks as (position, label).

    Numbers are min-max scaled (log10 when positive and spanning 20x or more); anything else is
    categorical: each distinct value gets an evenly spaced position. A value that is absent (a
    parameter of another model family) sits at ``NOT_APPLICABLE``, below the axis, ticked "n/a".
    """
    present = [v for v in values if v is not None]
    if present and all(_finite(v) for v in present):
        positions, ticks = _numeric_axis(values)
    else:
        choices = sorted({str(v) for v in present})
        spots = {c: (i / (len(choices) - 1) if len(choices) > 1 else 0.5) for i, c in enumerate(choices)}
        positions = np.array([spots[str(v)] if v is not None else np.nan for v in values])
        ticks = [(p, c) for c, p in spots.items()]
    if len(present) < len(values):
        positions = np.where(np.isnan(positions), NOT_APPLICABLE, positions)
        ticks.append((NOT_APPLICABLE, "n/a"))
    return positions, ticks


def _numeric_axis(values: list[Any]) -> tuple[np.ndarray, list[tuple[float, str]]]:
    raw = np.array([np.nan if v is None else float(v) for v in values])
    low, high = np.nanmin(raw), np.nanmax(raw)
    log = low > 0 and high / low >= 20
    scaled = np.log10(raw) if log else raw
    lo, hi = (math.log10(low), math.log10(high)) if log else (low, high)
    if hi == lo:
        return np.where(np.isnan(raw), np.nan, 0.5), [(0.5, fmt(float(low)))]
    mid = 10 ** ((lo + hi) / 2) if log else (lo + hi) / 2
    return (scaled - lo) / (hi - lo), [(0.0, fmt(float(low))), (0.5, fmt(float(mid))), (1.0, fmt(float(high)))]


def _draw_axes(ax: Any, xs: np.ndarray, ticks: list[list[tuple[float, str]]], names: list[str]) -> None:
    for x, axis_ticks in zip(xs, ticks):
        ax.axvline(x, color="#333", lw=0.8, zorder=1)
        for position, label in axis_ticks:
            ax.text(x + 0.04, position, label, fontsize=7.5, va="center", zorder=4,
                    bbox={"facecolor": "white", "alpha": 0.7, "pad": 0.5, "edgecolor": "none"})
    ax.set_xticks(xs, names, rotation=20, ha="right", fontsize=8.5)
    ax.set_xlim(xs[0] - 0.15, xs[-1] + 0.6)
    ax.set_ylim(NOT_APPLICABLE - 0.06, 1.06)
    ax.set_yticks([])
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)


# ---- parameter importance ------------------------------------------------------------------


def section_importance(results: dict) -> str:
    scopes = importance_scopes(results)
    n = len(scopes[0][1])
    if n < 2:
        return note(f"Not enough trials to estimate importance ({n} with a value; need 2).")
    if len({v for _, v in scopes[0][1]}) == 1:
        return note(f"No parameter explains the spread of the objective: every trial reached {escape(fmt(scopes[0][1][0][1]))}.")
    found, method = {}, ""
    try:
        for title, scored in scopes:
            found[title], method = param_importances(results, scored)
    except Exception as error:  # Optuna's evaluators raise on degenerate studies
        return note(f"Importance could not be computed: {escape(type(error).__name__)}: {escape(str(error))}")
    scopes = [(title, scored) for title, scored in scopes if any(v > 0 for v in found[title].values())]
    if not scopes:
        return note(f"No parameter explains the spread of the objective ({escape(method)} found none).")
    caution = f" With only {n} trials these are rough." if n < 10 else ""
    text = (f"<p>{escape(method)} over the trials with a value (those stopped early count with the best value "
            "they reached), for the parameters that every trial of a group has and that vary; each group's "
            "importances sum to 1. "
            f"The parameters of one model family are assessed within that family.{caution}</p>")
    return text + img(fig_importance(results, scopes), "parameter importance")


def importance_scopes(results: dict) -> list[tuple[str, list[tuple[dict, float]]]]:
    """Groups of scored trials to assess: all of them, then each model family with 3 or more."""
    scored = ranked(results)
    scopes = [(f"all {len(scored)} trials", scored)]
    families = Counter((t.get("params") or {}).get("model.name") for t, _ in scored)
    if len(families) > 1:
        for family, count in sorted(families.items(), key=lambda fc: str(fc[0])):
            if family is not None and count >= 3:
                members = [(t, v) for t, v in scored if (t.get("params") or {}).get("model.name") == family]
                scopes.append((f"model.name = {family} ({count} trials)", members))
    return scopes


def param_importances(results: dict, scored: list[tuple[dict, float]] | None = None) -> tuple[dict[str, float], str]:
    """Optuna's importances of the parameters shared by all ``scored`` trials, and the method's name.

    ``scored`` defaults to every trial with a value. fANOVA (seed 0) when scikit-learn is
    installed, else PED-ANOVA (no scikit-learn needed).
    """
    from optuna.importance import get_param_importances

    scored = ranked(results) if scored is None else scored
    shared = shared_params(scored)
    if not shared:
        return {}, ""
    study = build_study(results, scored)
    evaluator, method = _evaluator(len(scored))
    with _quiet_importance():
        return dict(get_param_importances(study, evaluator=evaluator, params=shared)), method


def shared_params(scored: list[tuple[dict, float]]) -> list[str]:
    """The parameters that every one of ``scored`` has and that vary among them (``param_names`` order)."""
    trials = [t for t, _ in scored]
    return [n for n in param_names(trials) if _varies_in_all(n, trials)]


@contextmanager
def _quiet_importance() -> Iterator[None]:
    """Silence the evaluators' small-study warnings: the section states its caution in words."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _varies_in_all(name: str, trials: list[dict]) -> bool:
    """Whether every trial has parameter ``name`` and it takes more than one value."""
    values = [(t.get("params") or {}).get(name) for t in trials]
    return None not in values and len({str(v) for v in values}) > 1


def _evaluator(n_trials: int) -> tuple[Any, str]:
    from optuna.importance import FanovaImportanceEvaluator, PedAnovaImportanceEvaluator

    try:
        import sklearn  # noqa: F401  (fANOVA's random forest)
    except ImportError:
        quantile = min(0.5, max(0.1, 3 / n_trials))  # at least ~3 trials in the top group
        return PedAnovaImportanceEvaluator(target_quantile=quantile), "PED-ANOVA"
    return FanovaImportanceEvaluator(seed=0), "fANOVA"


def build_study(results: dict, scored: list[tuple[dict, float]] | None = None) -> Any:
    """An in-memory Optuna study holding one complete trial per scored trial (default: all with a value)."""
    import optuna

    scored = ranked(results) if scored is None else scored
    distributions = infer_distributions([t for t, _ in scored])
    study = new_study(results)
    for trial, value in scored:
        params = {k: v for k, v in (trial.get("params") or {}).items() if v is not None}
        dists = {k: distributions[k] for k in params}
        study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=value))
    return study


def new_study(results: dict) -> Any:
    """An empty in-memory Optuna study in the search's direction (Optuna's info logs silenced)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(direction="maximize" if objective(results)[1] == "max" else "minimize")


def infer_distributions(trials: list[dict]) -> dict[str, Any]:
    """An Optuna distribution per parameter from the values observed (conditional ones included).

    Whole numbers -> IntDistribution, other numbers -> FloatDistribution (log when positive and
    spanning 20x or more), anything else (strings, booleans, mixed) -> CategoricalDistribution.
    """
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    out = {}
    for name in param_names(trials):
        seen = [v for t in trials if (v := (t.get("params") or {}).get(name)) is not None]
        if not all(_finite(v) for v in seen):
            out[name] = CategoricalDistribution(sorted(set(seen), key=str))
            continue
        low, high = min(seen), max(seen)
        log = low > 0 and high / low >= 20
        if all(isinstance(v, int) for v in seen):
            out[name] = IntDistribution(int(low), int(high), log=log)
        else:
            out[name] = FloatDistribution(float(low), float(high), log=log)
    return out


def fig_importance(results: dict, scopes: list[tuple[str, list[tuple[dict, float]]]]) -> bytes:
    """Optuna's importance plot of each group of trials, titled by the group, stacked in one PNG.

    Optuna computes the importances again, with the evaluator and parameters of ``param_importances``.
    """
    metric = objective(results)[0]
    pngs = []
    with _quiet_importance():
        for title, scored in scopes:
            shared = shared_params(scored)
            draw = functools.partial(_importance_plot, build_study(results, scored), _evaluator(len(scored))[0],
                                     shared, metric, title)
            pngs.append(optuna_png(draw, (8, 0.4 * len(shared) + 1.4)))
    return stacked(pngs)


def _importance_plot(study: Any, evaluator: Any, params: list[str], metric: str, title: str) -> Any:
    from optuna.visualization.matplotlib import plot_param_importances

    ax = plot_param_importances(study, evaluator=evaluator, params=params, target_name=metric)
    ax.set_title(title, loc="left")
    return ax


# ---- learning curves -----------------------------------------------------------------------


def section_curves(results: dict) -> str:
    best = [(t, v) for t, v in ranked(results) if t.get("history")][:CURVE_TRIALS]
    if not best:
        return note("No trial recorded a training history.")
    return f"<p>The best {len(best)} trials, epoch by epoch.</p>" + image(fig_curves(results, best), "learning curves")


def fig_curves(results: dict, best: list[tuple[dict, float]]) -> Any:
    """The objective (left) and the losses (right: train solid, validation dashed) per epoch."""
    metric, _ = objective(results)
    fig, (left, right) = figure(11, 3.6, ncols=2)
    for rank, (trial, value) in enumerate(best):
        rows = trial["history"]
        epochs = [row.get("epoch") for row in rows]
        style = {"marker": "o", "ms": 3, "lw": 2.4 if rank == 0 else 1.4, "color": f"C{rank}"}
        left.plot(epochs, _column(rows, metric), label=f"#{rank + 1} {trial.get('trial_id')} ({value:.4g})", **style)
        right.plot(epochs, _column(rows, "train_loss"), **style)
        if any(_finite(row.get("val_loss")) for row in rows):
            right.plot(epochs, _column(rows, "val_loss"), ls="--", **style)
    for ax, label in ((left, metric), (right, "loss (train solid, val dashed)")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    left.legend(fontsize=8)
    return fig


def _column(rows: list[dict], key: str) -> list[float]:
    return [row[key] if _finite(row.get(key)) else np.nan for row in rows]


# ---- best model ----------------------------------------------------------------------------


def section_reeval(results: dict) -> str:
    """The top configurations trained again with fresh seeds: each one's mean, interval and
    chance of beating its rival, and what the re-evaluation cost beside the search."""
    reeval = results.get("reeval")
    if not reeval:
        return note("No re-evaluation: it was turned off (search.reeval_top 0), or the search had no scored trial "
                    "or was interrupted; the best single trial is the winner.")
    metric, cost, search = reeval["metric"], reeval.get("cost") or {}, results.get("search_cost") or {}
    rows = [[r["rank"] if r["rank"] is not None else "-", r["trial_id"], r["search_score"], r.get("mean"),
             r.get("low"), r.get("high"), r.get("p_beats_rival"), r.get("rival") or "", ", ".join(fmt(v) for v in r["scores"])]
            for r in reeval["rows"]]
    level = next((r["level"] for r in reeval["rows"] if r.get("level")), 0.95)
    parts = [
        f"<p>The best {len(reeval['rows'])} configuration(s) of the search, each trained again with the fresh seeds "
        f"{escape(', '.join(str(s) for s in reeval['seeds']))} on the full training days and scored by {escape(metric)} "
        f"of its best epoch on validation. The winner is the best mean; the interval is a {level:.0%} t interval of "
        "the mean over seeds; P(beats rival) is the chance its mean beats the rival's (the runner-up for the winner, "
        "the winner for the others, Welch's approximation).</p>",
        table(["rank", "trial", "search score", f"mean {metric}", "low", "high", "P(beats rival)", "rival",
               "per seed"], rows, left=2),
        f"<p>Cost: {cost.get('runs', 0)} runs, {cost.get('epochs', 0)} epochs, {fmt(cost.get('wall_s'))} s; the search "
        f"itself: {search.get('trials', 0)} trials, {search.get('trial_epochs', 0)} trial-epochs, "
        f"{fmt(search.get('wall_s'))} s.</p>",
    ]
    if reeval.get("interrupted"):
        parts.append(note("The re-evaluation was interrupted: the search's best trial stands as the winner."))
    parts += [note(escape(line)) for line in reeval.get("notes") or []]
    return "".join(parts)


def section_best_model(results: dict) -> str:
    best = results.get("best")
    if not best or not best.get("val"):
        return note("No best model was evaluated (no trial finished with a checkpoint).")
    if best.get("chosen_by") == "reeval":
        seeds = (best.get("seeds") or {}).get("test_macro_f1") or []
        intro = (f"<p>The winner of the re-evaluation, trial <b>{escape(fmt(best.get('trial_id')))}</b>'s configuration, "
                 f"trained with seed {escape(fmt(best.get('seed')))} and evaluated once on test"
                 + (f"; the test macro-F1 of each of its seeds: {escape(', '.join(fmt(v) for v in seeds))}" if seeds else "")
                 + ".</p>")
    else:
        intro = f"<p>The best trial, <b>{escape(fmt(best.get('trial_id')))}</b>, evaluated with its best checkpoint.</p>"
    parts = [intro, _scores_table(best)]
    if not best.get("test"):
        parts.append(note("No test metrics: the export has no test split, or the search did not evaluate on it."))
    if any((best.get(s) or {}).get("confusion") for s in ("val", "test")):
        parts.append(image(fig_confusion(best), "confusion matrices of the best model"))
    else:
        parts.append(note("No confusion matrix: the best checkpoint was not evaluated again after the search."))
    if _baseline_scores(best, "val"):
        parts.append(image(fig_lift(best, oracle_for(results)), "macro-F1 of the model, naive baselines and oracle"))
    else:
        parts.append(note("No naive baselines recorded, so no lift."))
    return "".join(parts)


def _scores_table(best: dict) -> str:
    """Metrics of validation and test side by side, then the naive baselines and the lift."""
    splits = [s for s in ("val", "test") if best.get(s)]
    baselines = {s: (best.get("baselines") or {}).get(s) or {} for s in splits}
    keys = [k for k in METRIC_ROWS if any(k in best[s] for s in splits)]
    if not keys:  # metrics as the trial reported them (val_macro_f1, ..., epoch)
        keys = list(dict.fromkeys(k for s in splits for k, v in best[s].items() if _finite(v)))
    rows = [[key] + [best[s].get(key) for s in splits] for key in keys]
    keys = dict.fromkeys(k for s in splits for k in baselines[s] if k.endswith(("_macro_f1", "_accuracy")))
    rows += [[f"baseline {key}"] + [baselines[s].get(key) for s in splits] for key in keys]
    if best.get("lift"):
        rows.append(["lift (macro-F1 over the best baseline)"] + [best["lift"].get(s) for s in splits])
    return table(["metric"] + [{"val": "validation", "test": "test"}[s] for s in splits], rows)


def _baseline_scores(best: dict, split: str) -> dict[str, float]:
    scores = (best.get("baselines") or {}).get(split) or {}
    return {k.removesuffix("_macro_f1"): float(v) for k, v in scores.items() if k.endswith("_macro_f1") and _finite(v)}


def fig_confusion(best: dict) -> Any:
    """Row-normalized confusion matrices (true class in rows) of validation and, if present, test."""
    splits = [s for s in ("val", "test") if (best.get(s) or {}).get("confusion")]
    fig, axes = figure(5.2 * len(splits), 4.2, ncols=len(splits))
    for ax, split in zip(axes, splits):
        counts = np.array(best[split]["confusion"], dtype=float)
        share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
        ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
        for (i, j), n in np.ndenumerate(counts):
            ax.text(j, i, f"{int(n):,}\n{share[i, j]:.0%}", ha="center", va="center", fontsize=9,
                    color="white" if share[i, j] > 0.6 else "#1d2327")
        labels = list(CLASS_NAMES)[: len(counts)]
        ax.set_xticks(range(len(counts)), labels)
        ax.set_yticks(range(len(counts)), labels)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        lift = (best.get("lift") or {}).get(split)
        extra = f", lift {lift:+.3f}" if _finite(lift) else ""
        ax.set_title(f"{'validation' if split == 'val' else 'test'}: macro-F1 {best[split].get('macro_f1', float('nan')):.3f}{extra}", fontsize=10)
    return fig


def fig_lift(best: dict, oracle: tuple[str, float] | None) -> Any:
    """Macro-F1 of the naive baselines, the model and (when known) the oracle, per split."""
    splits = [s for s in ("val", "test") if best.get(s) and _baseline_scores(best, s)]
    fig, axes = figure(5.2 * len(splits), 2.6, ncols=len(splits))
    for ax, split in zip(axes, splits):
        bars = {f"{k} baseline": v for k, v in _baseline_scores(best, split).items()}
        bars["model"] = float(best[split].get("macro_f1", float("nan")))
        if oracle:
            bars[f"oracle (h={oracle[0]})"] = oracle[1]
        colors = ["#adb5bd"] * (len(bars) - 1 - bool(oracle)) + ["#2a9d8f"] + ["#6c757d"] * bool(oracle)
        drawn = ax.barh(list(bars), list(bars.values()), color=colors)
        ax.bar_label(drawn, fmt="%.3f", fontsize=8, padding=3)
        ax.invert_yaxis()
        ax.set_xlim(0, max(1e-9, *bars.values()) * 1.2)
        ax.set_xlabel("macro-F1")
        ax.set_title("validation" if split == "val" else "test", fontsize=10)
    return fig


# ---- trading and calibration ---------------------------------------------------------------

TRADING_COLUMNS = (
    ("n_trades", "trades"), ("trades_per_day", "trades/day"), ("net_bps_per_trade", "net bps/trade"),
    ("gross_bps_per_trade", "gross bps/trade"), ("hit_rate", "hit rate"), ("net_bps_per_day", "net bps/day"),
    ("max_drawdown_bps", "max drawdown bps"), ("coverage", "coverage"),
)


def section_trading(results: dict) -> str:
    """The backtest table of the best model, the naive baselines and the oracle, per split."""
    trading = _judged(results, "trading")
    if isinstance(trading, str):
        return trading
    splits = [s for s in ("val", "test") if trading.get(s)]
    if not splits:
        return note("No backtest was recorded.")
    rows = [[split, PREDICTOR_NAMES.get(name, name)] + [row.get(key) for key, _ in TRADING_COLUMNS]
            for split in splits for name, row in trading[split].items()]
    header = ["split", "predictor"] + [label for _, label in TRADING_COLUMNS]
    return _trading_text(trading) + table(header, rows, left=2) + _trading_notes(trading)


def _trading_text(trading: dict) -> str:
    fee, horizon, tau = trading.get("fee_bps"), trading.get("horizon"), trading.get("tau")
    rules = (f"<p>At each evaluated window end a predicted Up goes long and Down short for the label's horizon "
             f"({escape(fmt(horizon))} rows), Stable stays flat, and an open position blocks new entries until it "
             f"closes. Entry and exit each cross half the spread and pay a fee of <b>{escape(fmt(fee))} bps</b> of "
             "notional (<code>eval.fee_bps</code>). Figures are net of these costs, in bps of the entry mid; the "
             "oracle trades the true label of each window, the ceiling.</p>")
    if tau is None:
        threshold = escape(str(trading.get("tau_note") or "No action threshold was tuned."))
    else:
        threshold = (f"Action threshold tau = <b>{escape(fmt(tau))}</b> (act only when the predicted class has "
                     f"probability &ge; tau), tuned on validation days (coverage there "
                     f"{escape(fmt(trading.get('val_tau_coverage')))}) and applied once to test; the validation row "
                     "of <i>model, p &ge; tau</i> is the tuning's own score.")
    return rules + f"<p>{threshold}</p>"


def _trading_notes(trading: dict) -> str:
    parts = []
    unpriced = {s: n for s, n in (trading.get("unpriced") or {}).items() if n}
    if unpriced:
        counts = ", ".join(f"{escape(s)} {n:,}" for s, n in unpriced.items())
        parts.append(note(f"Windows whose entry or exit row has no usable quote open no position: {counts}."))
    classes = trading.get("classes")
    if classes and list(classes) != list(CLASS_NAMES):
        parts.append(note(f"The export's classes are {escape(', '.join(map(str, classes)))}: class 2 trades long "
                          "and class 0 short."))
    return "".join(parts)


def section_calibration(results: dict) -> str:
    """Log loss, Brier score and ECE before and after temperature scaling, and the reliability diagrams."""
    calibration = _judged(results, "calibration")
    if isinstance(calibration, str):
        return calibration
    before, after = calibration.get("before") or {}, calibration.get("after") or {}
    rows = [[label, before.get(key), after.get(key)] for key, label in
            (("log_loss", "log loss (nats)"), ("brier", "Brier score"), ("ece", "expected calibration error"))]
    split = "test" if calibration.get("split") == "test" else "validation"
    text = (f"<p>A temperature T = <b>{escape(fmt(calibration.get('temperature')))}</b> fitted on validation days "
            f"divides the model's logits; scored on {split} windows. It never changes the predicted class.</p>")
    parts = [text, table(["", "before", "after temperature"], rows)]
    if calibration.get("in_sample"):
        parts.append(note("No test split: the temperature is scored on the validation days it was fitted on."))
    if calibration.get("reliability_before") and calibration.get("reliability_after"):
        parts.append(image(fig_reliability(calibration), "reliability diagram before and after temperature"))
    return "".join(parts)


def _judged(results: dict, key: str) -> dict | str:
    """The best model's ``key`` report, or the note that stands for it when it is missing."""
    best = results.get("best")
    if not best or not best.get("val"):
        return note("No best model was evaluated (no trial finished with a checkpoint).")
    value = best.get(key)
    if not value:
        return note(f"No {key} figures: the best model was not judged after the search.")
    if value.get("note"):
        return note(f"No {key} figures: {escape(str(value['note']).rstrip('.'))}.")
    return value


def fig_reliability(calibration: dict) -> Any:
    """Accuracy against mean confidence per bin before and after temperature (left, with the
    diagonal of perfect calibration) and the windows per bin (right)."""
    fig, (left, right) = figure(11, 3.8, ncols=2)
    left.plot([0, 1], [0, 1], color="#adb5bd", ls="--", lw=1, label="perfectly calibrated")
    for offset, (key, label, color) in enumerate((("reliability_before", "before", "#e76f51"),
                                                  ("reliability_after", "after temperature", "#2a9d8f"))):
        diagram = calibration[key]
        confidence, accuracy = _column_of(diagram, "confidence"), _column_of(diagram, "accuracy")
        count = np.asarray(diagram.get("count") or [], dtype=float)
        left.plot(confidence, accuracy, marker="o", ms=4, color=color, label=label)
        edges = np.linspace(0, 1, count.size + 1)
        width = 0.4 / max(count.size, 1)
        right.bar(edges[:-1] + width * (offset + 0.5), count, width, color=color, label=label)
    left.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (probability of the predicted class)", ylabel="accuracy")
    right.set(xlim=(0, 1), xlabel="confidence bin", ylabel="windows")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return fig


def _column_of(diagram: dict, key: str) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in diagram.get(key) or []], dtype=float)


# ---- data gates ----------------------------------------------------------------------------


def section_gates(results: dict) -> str:
    report = results.get("gate_report")
    days = (report or {}).get("days") or []
    if not days:
        return note("No gate report: the data preparation did not record one.")
    rules = sorted({rule for d in days for rule in d.get("rows_dropped") or {}})
    header = ["split", "date", "rows"] + [f"fail {r}" for r in rules] + ["kept", "kept %"]
    rows = [
        [d.get("split"), d.get("date"), d.get("rows")] + [(d.get("rows_dropped") or {}).get(r) for r in rules]
        + [d.get("rows_kept"), _percent(d.get("rows_kept"), d.get("rows"))]
        for d in days
    ]
    parts = [image(fig_gates(days, rules), "rows kept and dropped by the gates per day"), table(header, rows, left=2)]
    dropped = report.get("days_dropped") or []
    if dropped:
        listed = ", ".join(f"{escape(str(d.get('split')))} {escape(str(d.get('date')))} ({escape(str(d.get('reason')))})" for d in dropped)
        parts.append(note(f"Days left out of the data: {listed}."))
    return "<p>A row is kept only when it passes every enabled gate; a row can fail several.</p>" + "".join(parts)


def _percent(part: Any, whole: Any) -> str:
    return f"{100 * part / whole:.1f}" if _finite(part) and _finite(whole) and whole else "—"


def fig_gates(days: list[dict], rules: list[str]) -> Any:
    """Per day: rows kept (colored by split) stacked under rows dropped (left); rows failing each rule (right)."""
    split_colors = {"train": "#2a9d8f", "val": "#e9c46a", "test": "#e76f51"}
    fig, (left, right) = figure(11, 3.8, ncols=2)
    xs = np.arange(len(days))
    kept = np.array([d.get("rows_kept") or 0 for d in days], dtype=float)
    total = np.array([d.get("rows") or 0 for d in days], dtype=float)
    left.bar(xs, kept, color=[split_colors.get(d.get("split"), "#6c757d") for d in days])
    left.bar(xs, total - kept, bottom=kept, color="#ced4da", label="dropped")
    handles = [left.bar(0, 0, color=c, label=f"kept ({s})") for s, c in split_colors.items() if any(d.get("split") == s for d in days)]
    left.legend(fontsize=8, handles=[*handles, left.containers[1]])
    width = 0.8 / max(len(rules), 1)
    for k, rule in enumerate(rules):
        right.bar(xs + k * width - 0.4 + width / 2, [(d.get("rows_dropped") or {}).get(rule, 0) for d in days], width, label=rule)
    if rules:
        right.legend(fontsize=8)
    for ax, title in ((left, "rows per day"), (right, "rows failing each gate")):
        ax.set_xticks(xs, [str(d.get("date")) for d in days], rotation=60, ha="right", fontsize=7)
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    return fig


# ---- pareto front and failures ------------------------------------------------------------


def section_pareto(results: dict) -> str:
    front = results.get("pareto")
    if not front:
        return note("Single-objective search: no Pareto front.")
    keys = [k for k in dict.fromkeys(k for row in front for k in row) if k != "trial_id"]
    rows = [[row.get("trial_id")] + [row.get(k) for k in keys] for row in front]
    parts = [f"<p>{len(front)} trials that no other trial beats on every objective.</p>", table(["trial"] + keys, rows)]
    numeric = [k for k in keys if all(_finite(row.get(k)) for row in front)]
    if len(numeric) >= 2:
        draw = functools.partial(fig_pareto, results, front, numeric[0], numeric[1])
        parts.append(img(optuna_png(draw, (6, 4)), "Pareto front"))
    return "".join(parts)


def fig_pareto(results: dict, front: list[dict], x_key: str, y_key: str) -> Any:
    """Optuna's Pareto-front plot of two objectives of the front, each point labeled with its trial id."""
    from optuna.visualization.matplotlib import plot_pareto_front

    ax = plot_pareto_front(pareto_study(results, front, [x_key, y_key]), target_names=[x_key, y_key])
    for row in front:
        ax.annotate(str(row.get("trial_id")), (row[x_key], row[y_key]), xytext=(4, 4), textcoords="offset points",
                    fontsize=7)
    return ax


def pareto_study(results: dict, front: list[dict], keys: list[str]) -> Any:
    """A study of the front's rows on ``keys``: the search's direction for its metric, minimize for
    the others (the extra objectives, ``n_params`` and ``latency_ms``, are costs; results.json
    does not record their direction)."""
    import optuna

    metric, mode = objective(results)
    directions = ["maximize" if key == metric and mode == "max" else "minimize" for key in keys]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=directions)
    for row in front:
        study.add_trial(optuna.trial.create_trial(values=[float(row[key]) for key in keys]))
    return study


def section_failures(results: dict) -> str:
    failed = [t for t in results.get("trials") or [] if t.get("status") == "failed" or t.get("error")]
    if not failed:
        return "<p>No trial failed.</p>"
    by_error: dict[str, list[str]] = {}
    for trial in failed:
        lines = str(trial.get("error") or "no message").strip().splitlines() or ["no message"]
        by_error.setdefault(lines[-1][:300], []).append(str(trial.get("trial_id")))
    rows = [[error, len(ids), ", ".join(ids[:8]) + (" ..." if len(ids) > 8 else "")] for error, ids in by_error.items()]
    rows.sort(key=lambda row: -row[1])
    return f"<p>{len(failed)} trial(s) failed; the last line of each error:</p>" + table(["error", "trials", "ids"], rows)


if __name__ == "__main__":
    raise SystemExit(main())
