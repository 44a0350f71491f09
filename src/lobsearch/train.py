"""``python -m lobsearch.train RUN.yaml``: train one model, evaluate it, write its files.

    python -m lobsearch.train configs/baseline_lstm.yaml [--data EXPORT] [--epochs N]
                              [--device cpu|cuda] [--out DIR]

The recipe, top to bottom: load the run config; resolve the export (``--data``, else
``data.export``, else the built-in demo export); prepare the days (gates, normalization,
labels); cut windows and build the model (``build_run``, which the search trial reuses);
train (``loop.fit``) with a progress line per epoch; evaluate the best epoch's weights on
validation and test against the naive baselines; write ``best.pt``, ``metrics.json`` and
``config.yaml`` under ``--out`` (default ``runs/train/<timestamp>``).

Exit status: 0 trained, 1 training failed (NaN loss before any epoch finished), 2 the config
or the data is wrong (every problem is printed, without a traceback).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import yaml
from torch import nn

from lobsearch.config import RunConfig, TrainConfig, load_run_config, validate
from lobsearch.contract import MISSING_LABEL
from lobsearch.data.features import feature_columns, n_selected
from lobsearch.data.windows import WindowSet, build_window_set
from lobsearch.errors import ConfigError, DataError
from lobsearch.loop import (
    Backend,
    EpochResult,
    FitResult,
    device_setup,
    epoch_steps,
    evaluate,
    fit,
    load_checkpoint,
    plain,
    seed_everything,
    subsample,
)
from lobsearch.metrics import lift, naive_baselines
from lobsearch.models import create_model, model_spec

if TYPE_CHECKING:
    from lobsearch.data.pipeline import Prepared


# --------------------------------------------------------------------------- the shared recipe


@dataclass
class BuiltRun:
    """Windows and model of one run config, ready for ``loop.fit``.

    train/val/test: WindowSets on the CPU (test None unless asked for, or when the export has
    no test split); n_features: width F' of every window; n_params: trainable parameters;
    latency_ms: median forward time of one window on the device; data_hash: identifies the
    data (prepared key, data config, normalization statistics) for checkpoints.
    """

    config: RunConfig
    model: nn.Module
    train: WindowSet
    val: WindowSet
    test: WindowSet | None
    n_features: int
    n_params: int
    latency_ms: float
    data_hash: str
    backend: Backend


def build_run(
    config: RunConfig, prepared: Prepared, *, device: str | torch.device, with_test: bool = False
) -> BuiltRun:
    """Cut the windows of ``prepared`` for ``config.data`` and build ``config.model`` (seeded).

    Train windows are capped at ``data.max_train_windows`` (evenly spaced). The backend is
    decided here (``loop.device_setup``) from the model's registry settings and the planned
    number of optimizer steps. Raises ConfigError for a horizon the export has no labels for
    (naming the available ones), bad features or model settings; DataError for a missing split.
    """
    data, device = config.data, torch.device(device)
    cut = {
        "columns": feature_columns(data.features, prepared.n_features),
        "horizon_index": horizon_index(data.horizon, prepared.horizons),
        "window": data.window,
        "stride": data.stride,
        "last_row": data.gates.last_row,
        "time_regime_onehot": data.time_regime_onehot,
    }
    names = ("train", "val", "test") if with_test else ("train", "val")
    windows = {name: build_window_set(_split_days(prepared, name), **cut) for name in names
               if name in ("train", "val") or prepared.splits.get(name)}
    train = subsample(windows["train"], data.max_train_windows)
    width = n_selected(cut["columns"], prepared.n_features, data.time_regime_onehot)
    seed_everything(config.train.seed)
    model = create_model(config.model.name, width, data.window, **config.model.params)
    steps = epoch_steps(len(train), config.train.batch_size, config.train.steps_per_epoch)
    backend = device_setup(model_spec(config.model.name).backend, config.train, device,
                           planned_steps=steps * config.train.epochs)
    return BuiltRun(
        config, model, train, windows["val"], windows.get("test"), width,
        sum(p.numel() for p in model.parameters() if p.requires_grad),
        forward_latency_ms(model, width, data.window, backend),
        data_hash(config, prepared), backend,
    )


def horizon_index(horizon: int, horizons: tuple[int, ...]) -> int:
    """Column of ``horizon`` in the labels; ConfigError naming the available horizons."""
    if horizon not in horizons:
        available = ", ".join(str(h) for h in horizons)
        raise ConfigError("run config", [
            f"data.horizon: the export has no labels for horizon {horizon} (available: {available})"
        ])
    return horizons.index(horizon)


def _split_days(prepared: Prepared, name: str) -> list:
    days = prepared.splits.get(name)
    if not days:
        raise DataError(f"export: the {name!r} split has no days; training needs train and val days")
    return days


def data_hash(config: RunConfig, prepared: Prepared) -> str:
    """16 hex digits identifying the data a model is trained on: the prepared data's key, the
    data config (the export path aside: the key fingerprints the files) and the normalization
    statistics."""
    digest = hashlib.sha256()
    digest.update(str(prepared.key).encode())
    settings = config.data.model_dump(mode="json", exclude={"export"})
    digest.update(json.dumps(settings, sort_keys=True).encode())
    digest.update(prepared.stats_digest().encode())
    return digest.hexdigest()[:16]


def forward_latency_ms(model: nn.Module, n_features: int, window: int, backend: Backend, reps: int = 5) -> float:
    """Median wall time in ms of one forward pass on a single window (1, T, F) on the device."""
    model = model.to(backend.device)
    was_training = model.training
    model.eval()
    x = torch.zeros(1, window, n_features, device=backend.device)
    times = []
    with torch.inference_mode(), backend.autocast():
        for _ in range(reps + 1):
            started = time.perf_counter()
            model(x)
            if backend.device.type == "cuda":
                torch.cuda.synchronize(backend.device)
            times.append((time.perf_counter() - started) * 1e3)
    model.train(was_training)
    return float(statistics.median(times[1:]))


def pick_device(choice: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU. Raises ConfigError for ``cuda`` without CUDA."""
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device", ["cuda: no CUDA device is available (torch "
                                           f"{torch.__version__}); use cpu or auto"])
    return torch.device(choice)


# --------------------------------------------------------------------------- evaluation report


def previous_known_labels(windows: WindowSet, horizon: int) -> np.ndarray:
    """(M,) for each window, the label of the latest earlier window whose label is already known
    at its end row e, i.e. whose end is <= e - horizon; MISSING_LABEL (-1) where none is.

    The label of row t looks ``horizon`` rows ahead, so the immediately preceding window's label
    is not known yet when a window is predicted: with overlapping horizons it nearly equals the
    window's own label (a macro-F1 near 0.9 on the demo export), a baseline no honest model can beat.
    """
    ends = windows.ends.cpu().numpy()
    latest = np.searchsorted(ends, ends - horizon, side="right") - 1
    y = windows.y.cpu().numpy()
    return np.where(latest >= 0, y[np.maximum(latest, 0)], MISSING_LABEL)


def split_report(built: BuiltRun, name: str, model: nn.Module) -> dict[str, Any]:
    """Metrics of ``model`` on split ``name``, its naive baselines and the lift over them.

    The previous-label baseline predicts each window with ``previous_known_labels`` (the
    majority class of the training windows where there is none).
    """
    windows = getattr(built, name)
    cfg = built.config.train
    metrics, y_true, _, _ = evaluate(model, windows, device=built.backend.device,
                                     batch_size=cfg.eval_batch_size, backend=built.backend)
    y_prev = previous_known_labels(windows, built.config.data.horizon)
    baselines = plain(naive_baselines(y_true, y_prev, y_train=built.train.y.numpy()))
    return {"metrics": metrics, "baselines": baselines, "lift": plain(lift(metrics, baselines))}


def evaluate_model(built: BuiltRun, state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Load ``state`` into the model and report on val and (when built) test.

    Returns {"val": metrics, "test": metrics, "baselines": {split: ...}, "lift": {split: lift
    of macro-F1 over the best naive baseline}, "lift_detail": {split: ...}}.
    """
    built.model.load_state_dict(state)
    splits = [s for s in ("val", "test") if getattr(built, s) is not None]
    reports = {s: split_report(built, s, built.model) for s in splits}
    return {
        **{s: r["metrics"] for s, r in reports.items()},
        "baselines": {s: r["baselines"] for s, r in reports.items()},
        "lift": {s: r["lift"]["lift_macro_f1"] for s, r in reports.items()},
        "lift_detail": {s: r["lift"] for s, r in reports.items()},
    }


def evaluate_checkpoint(config: RunConfig, prepared: Prepared, checkpoint: Path) -> dict[str, Any]:
    """Rebuild the run of ``config``, load the best weights of a ``fit`` checkpoint (its folder
    or file) and report on val and test as ``evaluate_model`` does; adds best_epoch.

    Raises DataError when the checkpoint holds no finished epoch or another data hash.
    """
    device = pick_device(config.train.device)
    built = build_run(config, prepared, device=device, with_test=True)
    payload = load_checkpoint(checkpoint, built.data_hash)
    state = payload["progress"]["best_state"]
    if state is None:
        raise DataError(f"evaluate: checkpoint {checkpoint} holds no finished epoch")
    return {**evaluate_model(built, state), "best_epoch": payload["progress"]["best_epoch"]}


# --------------------------------------------------------------------------- the command


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
    built = build_run(config, prepared, device=device, with_test=True)
    _say_plan(built, prepared)
    result = fit(built.model, built.train, built.val, config.train, device=device,
                 on_epoch=_progress_printer(config.train), data_hash=built.data_hash,
                 backend=built.backend)
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
    the naive baselines' macro-F1 and the model's lift over each."""
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
    _atomic(out / "best.pt", lambda tmp: torch.save({
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
    _atomic(out / "metrics.json", lambda tmp: tmp.write_text(json.dumps(plain(metrics), indent=2)))
    header = (f"# Resolved configuration of the run in this folder; rerun it with:\n"
              f"#   python -m lobsearch.train {out / 'config.yaml'}\n")
    _atomic(out / "config.yaml", lambda tmp: tmp.write_text(header + yaml.safe_dump(config, sort_keys=False)))


def _atomic(path: Path, write: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
