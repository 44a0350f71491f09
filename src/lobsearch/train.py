"""``python -m lobsearch.train RUN.yaml``: train one model, evaluate it, write its files.

    python -m lobsearch.train configs/baseline_lstm.yaml [--data EXPORT] [--epochs N]
                              [--device cpu|cuda] [--out DIR]

The command, top to bottom: load the run config; resolve the export (``--data``, else
``data.export``, else the built-in demo export); prepare the days (gates, normalization,
labels); build and train the run with the recipe the search trial shares (``lobsearch.recipe``)
with a progress line per epoch; evaluate the best epoch's weights on validation and test
against the naive baselines, in trading terms net of costs (``eval.fee_bps``), with
calibration and a ``verdict:`` line on the test lift; write ``best.pt``, ``metrics.json`` and
``config.yaml`` under ``--out`` (default ``runs/train/<timestamp>``).

Exit status: 0 trained, 1 training failed (NaN loss before any epoch finished), 2 the config
or the data is wrong (every problem is printed, without a traceback).
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import yaml

from lobsearch.config import RunConfig, TrainConfig, load_run_config, trading_problems
from lobsearch.errors import ConfigError, DataError
from lobsearch.evaluation import format_calibration, format_trading, verdict_line
from lobsearch.files import atomic_write, dump_json, write_text
from lobsearch.loop import EpochResult, FitResult
from lobsearch.recipe import BuiltRun, build_run, evaluate_model, fit_run, pick_device
from lobsearch.schema import validate

if TYPE_CHECKING:
    from lobsearch.data.pipeline import Prepared


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m lobsearch.train``; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        return _train(args)
    except (ConfigError, DataError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m lobsearch.train", description=__doc__.split("\n")[0])
    parser.add_argument("config", type=Path, help="run config YAML (sections data, model, train)")
    parser.add_argument("--data", type=Path, help="export folder (overrides data.export)")
    parser.add_argument("--epochs", type=int, help="overrides train.epochs")
    parser.add_argument("--device", choices=("cpu", "cuda"), help="overrides train.device")
    parser.add_argument("--out", type=Path, help="output folder (default runs/train/<timestamp>)")
    return parser


def _train(args: argparse.Namespace) -> int:
    config = _with_overrides(load_run_config(args.config), args)
    device = pick_device(config.train.device)
    config = _with_export(config, args.config)
    out = (args.out or Path("runs/train") / datetime.now().strftime("%Y%m%d-%H%M%S")).resolve()
    from lobsearch.data.pipeline import prepare

    prepared = prepare(config.data.export, config.data.prep(), engine="local")
    problems = trading_problems(config.eval, prepared.n_features, prepared.quotes_note)
    if problems:
        raise ConfigError(str(args.config), problems)
    built = build_run(config, prepared, device=device, with_test=True)
    _say_plan(built, prepared)
    result = fit_run(built, on_epoch=_progress_printer(config.train))
    if result.best_state is None:
        print(f"training failed: {result.message}", file=sys.stderr)
        return 1
    report = evaluate_model(built, result.best_state)
    print(f"\n{_ending(result)}\n\n{format_table(report)}")
    _write_outputs(out, built, prepared, result, report)
    print(f"\nwrote {out / 'best.pt'}, {out / 'metrics.json'}, {out / 'config.yaml'}")
    return 0


def _with_overrides(config: RunConfig, args: argparse.Namespace) -> RunConfig:
    """The config with the command-line overrides (--epochs, --device, --data) applied."""
    train = config.train.model_dump()
    if args.epochs is not None:
        train["epochs"] = args.epochs
    if args.device is not None:
        train["device"] = args.device
    train_cfg = validate(TrainConfig, train, "command line", prefix="train.")
    data = config.data
    if args.data is not None:
        data = data.model_copy(update={"export": args.data.resolve()})
    return config.model_copy(update={"data": data, "train": train_cfg})


def _with_export(config: RunConfig, source: Path) -> RunConfig:
    """The config with the demo export filled in when it names none (and saying so)."""
    if config.data.export is not None:
        return config
    from lobsearch.synth import demo_export

    export = demo_export().resolve()
    print(f"no --data and no data.export in {source}: using the built-in demo export {export}")
    return config.model_copy(update={"data": config.data.model_copy(update={"export": export})})


def _say_plan(built: BuiltRun, prepared: Prepared) -> None:
    config = built.config
    sizes = ", ".join(f"{s} {len(getattr(built, s)):,}" for s in ("train", "val", "test")
                      if getattr(built, s) is not None)
    print(f"export {config.data.export} (horizons {list(prepared.horizons)}, {prepared.n_features} features)")
    print(f"data: {prepared.summary()}")
    print(f"windows: {sizes} (T={config.data.window}, F'={built.n_features}, "
          f"horizon {config.data.horizon})")
    print(f"model {config.model.name}: {built.n_params:,} parameters")
    print(f"backend {built.backend.describe()} ({'; '.join(built.backend.notes)})")


def _progress_printer(cfg: TrainConfig) -> Any:
    """on_epoch callback printing one line per epoch; never stops the run."""
    started = time.perf_counter()
    best = {"f1": -1.0, "epoch": 0}

    def show(epoch: EpochResult) -> None:
        f1 = epoch.val["macro_f1"]
        if f1 > best["f1"]:
            best.update(f1=f1, epoch=epoch.epoch)
        print(f"epoch {epoch.epoch:>3}/{cfg.epochs}  loss {epoch.train_loss:.4f}  "
              f"val macro-F1 {f1:.4f} (best {best['f1']:.4f} @ {best['epoch']})  "
              f"{epoch.samples_per_s:,.0f} samples/s  lr {epoch.lr:.2e}  "
              f"elapsed {time.perf_counter() - started:.1f}s", flush=True)

    return show


def _ending(result: FitResult) -> str:
    why = f": {result.message}" if result.message else ""
    return (f"{result.status}{why}\nbest epoch {result.best_epoch}; "
            f"{result.samples_per_s:,.0f} training samples/s")


def format_table(report: dict[str, Any]) -> str:
    """The final table: val and test columns of accuracy, macro-F1, per-class F1, MCC,
    the naive baselines' macro-F1 and the model's lift over each; then, when the report has
    them, the trading table net of costs, the calibration line and the ``verdict:`` line."""
    splits = [s for s in ("val", "test") if s in report]
    rows = [("accuracy", lambda s: report[s]["accuracy"]),
            ("macro-F1", lambda s: report[s]["macro_f1"])]
    rows += [(f"F1 {c}", lambda s, c=c: report[s][f"f1_{c}"]) for c in ("down", "stable", "up")]
    rows.append(("MCC", lambda s: report[s]["mcc"]))
    for name, key in (("majority", "majority_macro_f1"), ("previous known label", "previous_macro_f1")):
        rows.append((f"{name} macro-F1", lambda s, k=key: report["baselines"][s][k]))
        rows.append((f"lift over {name}", lambda s, k=key: report[s]["macro_f1"] - report["baselines"][s][k]))
    lines = [f"{'':<32}" + "".join(f"{s:>10}" for s in splits)]
    for label, value in rows:
        sign = "+" if label.startswith("lift") else ""
        lines.append(f"{label:<32}" + "".join(f"{value(s):>{sign}10.4f}" for s in splits))
    if "verdict" in report:
        lines += ["", *format_trading(report.get("trading")), format_calibration(report.get("calibration")),
                  verdict_line(report)]
    return "\n".join(lines)


def resolved_config(config: RunConfig) -> dict[str, Any]:
    """The config as YAML-ready data, model hyperparameters written flat beside the name."""
    data = config.model_dump(mode="json")
    data["model"] = {"name": config.model.name, **config.model.params}
    return data


def _write_outputs(
    out: Path, built: BuiltRun, prepared: Prepared, result: FitResult, report: dict[str, Any]
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    config = resolved_config(built.config)
    stats = prepared.stats
    atomic_write(out / "best.pt", lambda tmp: torch.save({
        "model": result.best_state,
        "config": config,
        "n_features": built.n_features,
        "data_hash": built.data_hash,
        "norm_stats": None if stats is None else {
            "mean": torch.from_numpy(np.asarray(stats.mean, dtype=np.float64)),
            "std": torch.from_numpy(np.asarray(stats.std, dtype=np.float64)),
        },
    }, tmp))
    metrics = {
        "status": result.status, "message": result.message, "best_epoch": result.best_epoch,
        "samples_per_s": result.samples_per_s, "n_params": built.n_params,
        "latency_ms": built.latency_ms, "backend": built.backend.describe(),
        "data_hash": built.data_hash, **report, "history": result.history,
    }
    dump_json(out / "metrics.json", metrics)
    header = (f"# Resolved configuration of the run in this folder; rerun it with:\n"
              f"#   python -m lobsearch.train {out / 'config.yaml'}\n")
    write_text(out / "config.yaml", header + yaml.safe_dump(config, sort_keys=False))


if __name__ == "__main__":
    sys.exit(main())
